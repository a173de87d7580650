import ArgumentParser
import Capabilities
import DaxCore
import DaxDetection
#if canImport(Glibc)
import Glibc
#endif

struct CapsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "caps",
        abstract: "Report what this kernel and machine offer: userfaultfd, pagemap, THP, DAX mounts, pmem.",
        discussion: """
            Every line is probed now, never assumed from the kernel version: userfaultfd is \
            opened three ways (syscall, user-mode-only, /dev/userfaultfd), UFFDIO_API reports \
            its feature bits, and a trial registration is made for each memory type \
            (anonymous, shmem via memfd, a regular file in --dir) and mode (MISSING, MINOR, \
            WP, WP+WP_ASYNC). The file trial uses an unnamed O_TMPFILE in --dir, so point \
            --dir at a DAX mount to learn what that filesystem allows.

            When --dir is on DAX, a child process arms userfaultfd write protection on a DAX \
            file and touches an unmapped page (read, then write), and is killed after 10 s: \
            on many kernels this hangs or raises SIGBUS, and the fault tracker arms write \
            protection on DAX only when this probe reports "safe". The tracker's choice for \
            each memory type is listed with its reason.

            Examples:
              daxmirror caps
              daxmirror caps --dir /mnt/pmem --json | jq .registration.file
            """)

    @Option(name: .customLong("dir"), help: ArgumentHelp("Directory for the regular-file trial registration (a DAX mount is the interesting case).", valueName: "dir"))
    var dirPath = PathArgument(argument: "/tmp")!

    @Flag(help: "Print JSON instead of a table.")
    var json = false

    func validate() throws {
        try dirPath.check("--dir")
        var st = stat()
        guard dirPath.path.withCString({ stat($0, &st) }) == 0 else { throw rejected(.notFound, "--dir \(dirPath) does not exist: give an existing directory") }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw rejected(.notRegularFile, "--dir \(dirPath) is not a directory") }
    }

    func run() throws {
        let dir = try dirPath.directoryForModules()
        try Self.requireDescriptors(16)
        let report = CapabilityReport.gather(directory: dir, probeExecutable: readLink("/proc/self/exe"))
        if json {
            emit(report.json.render())
            return
        }
        var t = TextReport()
        t.section("kernel")
        t.row("release", report.kernelRelease)
        t.row("THP enabled", report.thpEnabled ?? "unknown")
        t.section("userfaultfd")
        t.row("userfaultfd(2)", report.userfaultfdSyscall.text)
        t.row("UFFD_USER_MODE_ONLY", report.userfaultfdUserModeOnly.text)
        t.row("/dev/userfaultfd", report.userfaultfdDevice.text)
        t.row("vm.unprivileged_userfaultfd", report.unprivilegedUserfaultfd ?? "absent")
        if let f = report.features {
            t.row("UFFDIO_API features", "0x" + String(f.rawValue, radix: 16))
            t.row("", f.names.joined(separator: " "))
        } else {
            t.row("UFFDIO_API features", report.featuresError ?? "unknown")
        }
        t.section("trial registration (file trial in \(report.fileProbeDirectory))")
        for (kind, modes) in report.registrations {
            for (mode, result) in modes { t.row("\(kind.name) \(mode.rawValue)", result.text) }
        }
        t.section("fault tracking (what the tracker would use)")
        for (kind, choice) in report.trackerChoices {
            t.row(kind, "\(choice.mechanism.rawValue): \(choice.reason)")
        }
        t.row("device-private memory", "\(report.devicePrivate.mechanism): \(report.devicePrivate.reason)")
        if let p = report.daxWriteProtect {
            t.row("DAX write-protect probe", p.summary + (p.detail.isEmpty ? "" : " (\(p.detail))"))
        } else {
            t.row("DAX write-protect probe", report.directoryIsDAX ? "not run" : "not run: --dir is not on DAX")
        }
        t.section("page-table truth")
        t.row("PAGEMAP_SCAN", report.pagemapScan.text)
        t.row("PROCMAP_QUERY", report.procmapQuery.text + (report.procmapQuery.isOK ? "" : " (the mirror reads the maps text)"))
        t.row("pagemap PFNs", report.pagemapShowsPFNs.text)
        t.row("MADV_POPULATE_READ", report.populateRead.text)
        t.row("MADV_POPULATE_WRITE", report.populateWrite.text)
        t.section("DAX")
        if report.daxMounts.isEmpty { t.row("dax mounts", "none") }
        for m in report.daxMounts { t.row(m.mountPoint, "\(m.fsType) on \(m.source), dax=\(m.daxMode.rawValue)") }
        if let e = report.inventoryError { t.row("pmem namespaces", "unreadable: \(e)") }
        else if report.namespaces.isEmpty { t.row("pmem namespaces", "none") }
        for ns in report.namespaces {
            t.row(ns.dev, "\(ns.mode) \(ByteSize.human(ns.size))" + (ns.blockdev.map { " /dev/\($0)" } ?? "")
                  + (ns.chardev.map { " /dev/\($0)" } ?? ""))
            if let r = report.regions.first(where: { $0.namespaces.contains { $0.dev == ns.dev } }) {
                t.row("  backing", "\(r.dev): \(r.persistence.sentence)")
            }
        }
        emit(t.text)
    }
}

/// A two-column report with section headings, aligned.
extension CapsCommand {
    /// Each probe opens a few descriptors; with fewer free than `n` a probe
    /// would fail for want of them and read as "the kernel has no". Checked
    /// first, so that caps reports the kernel or nothing.
    static func requireDescriptors(_ n: Int) throws {
        var opened: [Int32] = []
        defer { opened.forEach { _ = close($0) } }
        for _ in 0..<n {
            let fd = dup(2)
            if fd < 0 {
                throw Failure(.systemError, "cannot probe the kernel: \(opened.count) file descriptors are free and its probes need \(n) (\(Errno.current.name)); raise the open-file limit (ulimit -n)")
            }
            opened.append(fd)
        }
    }
}

struct TextReport {
    private var lines: [(String, String)?] = []  // nil key = heading marker
    private var headings: [Int: String] = [:]

    // Every title, key and value is one line, whatever it holds (a file's or
    // a process's name): String.inert.
    mutating func section(_ title: String) {
        headings[lines.count] = title.inert
        lines.append(nil)
    }
    mutating func row(_ key: String, _ value: String) { lines.append((key.inert, value.inert)) }

    var text: String {
        let width = lines.compactMap { $0?.0.count }.max() ?? 0
        var out: [String] = []
        for (i, line) in lines.enumerated() {
            if let (k, v) = line {
                out.append("  " + k + String(repeating: " ", count: width - k.count) + "  " + v)
            } else {
                if !out.isEmpty { out.append("") }
                out.append(headings[i] ?? "")
            }
        }
        return out.joined(separator: "\n")
    }
}
