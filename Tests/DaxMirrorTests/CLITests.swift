import DaxCore
import CDaxShim
import DaxDetection
import PageTables
import Foundation
import Testing

@Suite("daxmirror CLI")
struct CLITests {
    @Test func capsJSONMatchesKernel() throws {
        let dir = DaxEnvironment.directory ?? NSTemporaryDirectory()
        let r = try CLI.daxmirror(["caps", "--json", "--dir", dir])
        #expect(r.status == 0, "\(r.stderr)")
        let caps = try CLI.json(r)
        let uname = try CLI.run("/bin/uname", ["-r"])
        #expect(caps["kernel_release"] as? String == uname.stdout.trimmingCharacters(in: .whitespacesAndNewlines))

        // The same handshake done directly in C, without our Swift layer.
        let fd = dm_userfaultfd(O_CLOEXEC | O_NONBLOCK)
        try #require(fd >= 0, "userfaultfd(2) failed: errno \(errno)")
        defer { close(fd) }
        var api = uffdio_api(api: DM_UFFD_API, features: 0, ioctls: 0)
        #expect(dm_uffdio_api(fd, &api) == 0)
        // PROCMAP_QUERY as the kernel answers it (6.11+), not as the version says.
        let pq = try #require(caps["procmap_query"] as? [String: Any])
        #expect((pq["result"] as? String == "ok") == VMAQuery.available, "\(pq)")
        let uffd = try #require(caps["userfaultfd"] as? [String: Any])
        #expect((uffd["features"] as? NSNumber)?.uint64Value == api.features)
        let names = try #require(uffd["feature_names"] as? [String])
        #expect(names.count == api.features.nonzeroBitCount)

        // Registration table: anonymous MISSING always works where uffd does;
        // a file refuses MISSING (EINVAL) unless it lives on tmpfs (shmem).
        let reg = try #require(caps["registration"] as? [String: [String: [String: Any]]])
        #expect(reg["anonymous"]?["MISSING"]?["result"] as? String == "ok")
        let fsType = try MountTable.current().entry(containing: realPath(dir) ?? dir)?.fsType
        if fsType == "tmpfs" {
            #expect(reg["file"]?["MISSING"]?["result"] as? String == "ok")
        } else {
            #expect(reg["file"]?["MISSING"]?["errno"] as? String == "EINVAL")
        }
        #expect(reg["anonymous"]?["MINOR"]?["errno"] as? String == "EINVAL")
    }

    @Test func capsTextAndBadDir() throws {
        let r = try CLI.daxmirror(["caps"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("UFFDIO_API features"))
        let bad = try CLI.daxmirror(["caps", "--dir", "/nonexistent-dir"])
        #expect(bad.status == 3)
        #expect(bad.stderrLines.count == 1)
    }

    @Test func devicesOnThisMachine() throws {
        let r = try CLI.daxmirror(["devices", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let inv = try CLI.json(r)
        let buses = try #require(inv["buses"] as? [[String: Any]])
        let daxDevs = try #require(inv["dax_devices"] as? [[String: Any]])
        // The kernel's own list of NVDIMM buses: /sys/bus/nd/devices/ndbusN.
        let sysBuses = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/nd/devices")) ?? [])
            .filter { $0.hasPrefix("ndbus") }
        #expect(buses.count == sysBuses.count)
        let sysDax = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/dax/devices")) ?? [])
        #expect(daxDevs.count <= sysDax.count)
        if sysBuses.isEmpty { #expect(r.stdout.contains("\"buses\": []")) }
    }

    @Test func mapReportsNotPmemWithReasonOnHost() throws {
        try #require(DaxEnvironment.directory == nil || true)
        let dir = try ScratchDirectory()
        let r = try CLI.daxmirror(["map", dir.file("f"), "--create", "--size", "4M", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r)
        #expect(j["is_pmem"] as? Bool == false)
        #expect((j["reason"] as? String)?.isEmpty == false)
        #expect(j["persist_method"] as? String == "msync")
        #expect(j["map_sync"] as? String == "EOPNOTSUPP")
        let view = try #require(j["kernel_view"] as? [String: Any])
        #expect(view["pages"] as? Int == 1024)
        #expect(view["present_pages"] as? Int == 1024)  // touched by MADV_POPULATE_READ
        let req = try CLI.daxmirror(["map", dir.file("f"), "--require-pmem"])
        #expect(req.status == 10)
        #expect(req.stderrLines.count == 1)
    }

    /// The persist path, checked by the kernel's syscall trace rather than by
    /// what we report: msync on a non-DAX file, none when libpmem is forced.
    @Test func persistGoesThroughMsyncUnlessForced() throws {
        let strace = try #require(which("strace"), "strace is missing: run Scripts/setup.sh")
        let dir = try ScratchDirectory()
        let path = dir.file("f")
        func msyncCalls(_ env: [String: String]) throws -> (Int, [String: Any]) {
            let log = dir.file("trace-\(env.count)")
            let r = try CLI.run(strace, ["-f", "-qq", "-e", "trace=msync", "-o", log, CLI.binary,
                                         "map", path, "--fill", "0xab", "--json"], env: env)
            #expect(r.status == 0, "\(r.stderr)")
            let trace = try String(contentsOfFile: log, encoding: .utf8)
            return (trace.components(separatedBy: "msync(").count - 1, try CLI.json(r))
        }
        #expect(try CLI.daxmirror(["map", path, "--create", "--size", "2M"]).status == 0)
        let (plain, pj) = try msyncCalls([:])
        #expect(plain >= 1)
        #expect(pj["is_pmem"] as? Bool == false)
        let (forced, fj) = try msyncCalls(["PMEM_IS_PMEM_FORCE": "1"])
        #expect(forced == 0)
        #expect(fj["is_pmem"] as? Bool == true)
        #expect(fj["persist_method"] as? String == "cache_flush")
        #expect((fj["reason"] as? String)?.contains("PMEM_IS_PMEM_FORCE") == true)
        #expect(try fileBytes(path).allSatisfy { $0 == 0xab })
    }

    /// Each bad input: one line on stderr, its own exit code, nothing touched.
    @Test func badInputGivesOneLineAndDistinctCode() throws {
        let dir = try ScratchDirectory()
        let existing = dir.file("existing")
        try Data(repeating: 0x11, count: 8192).write(to: URL(fileURLWithPath: existing))
        let target = dir.file("target")
        try Data([42]).write(to: URL(fileURLWithPath: target))
        symlink(target, dir.file("link"))
        let locked = dir.file("locked")
        try Data(repeating: 0, count: 4096).write(to: URL(fileURLWithPath: locked))
        chmod(locked, 0)

        var cases: [(String, [String], Int32)] = [
            ("missing path", ["map", dir.file("nope")], 3),
            ("a directory", ["map", dir.path], 4),
            ("--size 0", ["map", dir.file("new"), "--create", "--size", "0"], 9),
            ("unparsable size", ["map", dir.file("new"), "--create", "--size", "lots"], 9),
            ("larger than free space", ["map", dir.file("new"), "--create", "--size", "900T"], 8),
            ("exists without consent", ["map", existing, "--create", "--size", "4096"], 6),
            ("symlink for creation", ["map", dir.file("link"), "--create", "--size", "4096", "--overwrite"], 7),
        ]
        if getuid() == 0, let setpriv = which("setpriv") {
            // root ignores file modes: drop to nobody to meet a real EACCES.
            chmod(dir.path, 0o755)
            cases.append(("no permission", [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                                            CLI.binary, "map", locked], 5))
        } else if getuid() != 0 {
            cases.append(("no permission", ["map", locked], 5))
        }
        for (name, args, code) in cases {
            let r = args.first?.hasPrefix("/") == true
                ? try CLI.run(args[0], Array(args.dropFirst())) : try CLI.daxmirror(args)
            #expect(r.status == code, "\(name): exit \(r.status), stderr \(r.stderr)")
            #expect(r.stderrLines.count == 1, "\(name): \(r.stderr)")
            #expect(r.stderr.hasPrefix("daxmirror: "), "\(name)")
            #expect(r.stdout.isEmpty, "\(name)")
        }
        #expect(try fileBytes(existing) == [UInt8](repeating: 0x11, count: 8192))
        #expect(try fileBytes(target) == [42])
        #expect(access(dir.file("new"), F_OK) != 0)
        #expect(access(dir.file("nope"), F_OK) != 0)
    }

    /// A failure after `map --create` leaves no file: a --fill that cannot
    /// get its blocks (a 1 MiB tmpfs, a 2 MiB sparse file: was SIGBUS and a
    /// 2 MiB file filling the filesystem) is exit 8, a --require-pmem refusal
    /// exit 10, and the directory is empty after both.
    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs"))
    func aFailedCreateLeavesNoFile() throws {
        let dir = try ScratchDirectory()
        try #require(mount("tmpfs", dir.path, "tmpfs", 0, "size=1M") == 0, "mount: errno \(errno)")
        defer { umount(dir.path) }
        let full = try CLI.daxmirror(["map", dir.file("f"), "--create", "--sparse", "--size", "2M", "--fill", "0xab"])
        #expect(full.status == 8, "\(full.stderr)")
        let refused = try CLI.daxmirror(["map", dir.file("g"), "--create", "--size", "64K", "--require-pmem"])
        #expect(refused.status == 10, "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        #expect(full.stderr.split(separator: "\n").count == 1 && refused.stderr.split(separator: "\n").count == 1)
    }
}

/// The README's exit-code table, walked: every code it lists is produced by
/// the cause it names (one line on stderr where it is a failure), and the
/// table lists exactly the codes the program has.
@Suite("exit codes")
struct ExitCodeTableTests {
    /// (code, cause) pairs of the README's table.
    static func readmeTable() throws -> [(Int32, String)] {
        let readme = try readTextFile(CLI.buildDirectory.appendingPathComponent("../../../README.md").standardizedFileURL.path)
        let start = try #require(readme.range(of: "| code | cause | code | cause |"))
        var rows: [(Int32, String)] = []
        for line in readme[start.upperBound...].split(separator: "\n").dropFirst(1) {
            guard line.hasPrefix("|") else { break }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            for i in stride(from: 1, to: cells.count - 1, by: 2) {
                if let code = Int32(cells[i]) { rows.append((code, cells[i + 1])) }
            }
        }
        return rows
    }

    @Test func theTableListsTheProgramsCodes() throws {
        let listed = Set(try Self.readmeTable().map(\.0))
        #expect(listed == Set(DaxCore.ExitCause.allCases.map(\.rawValue)))
    }

    @Test func everyCodeInTheTableComesFromItsCause() throws {
        let dir = try ScratchDirectory()
        let existing = dir.file("existing")
        try Data(repeating: 0x11, count: 8192).write(to: URL(fileURLWithPath: existing))
        symlink(existing, dir.file("link"))
        let locked = dir.file("locked")
        try Data(repeating: 0, count: 4096).write(to: URL(fileURLWithPath: locked))
        chmod(locked, 0)
        chmod(dir.path, 0o755)
        let zombie = try ZombieProcess()
        let me = CLI.binary
        var triggers: [Int32: (String, [String], String?)] = [  // code: (program, args, stdin)
            0: (me, ["caps"], nil),
            1: (me, ["run", "-"], "map A anon 64K\ncpu-read A 0 4K uniform=0x01\n"),
            3: (me, ["map", dir.file("nope")], nil),
            4: (me, ["map", dir.path], nil),
            6: (me, ["map", existing, "--create", "--size", "4096"], nil),
            7: (me, ["map", dir.file("link"), "--create", "--size", "4096", "--overwrite"], nil),
            8: (me, ["map", dir.file("new"), "--create", "--size", "900T"], nil),
            9: (me, ["map", dir.file("new"), "--create", "--size", "0"], nil),
            10: (me, ["map", dir.file("new"), "--create", "--size", "4096", "--require-pmem"], nil),
            12: (me, ["inspect", String(zombie.pid)], nil),
            13: ("/bin/sh", ["-c", "printf 'map A anon 64K\\n' | '\(me)' run - >&-"], nil),
            64: (me, ["map", "--no-such-option"], nil),
        ]
        var notWalked: [Int32: String] = [:]
        if access("/dev/hmm_dmirror0", F_OK) != 0 {
            triggers[11] = (me, ["run", "--against-kernel", "-"], "map A anon 64K\n")
        } else {
            notWalked[11] = "this kernel has the HMM test driver, so --against-kernel is not refused"
        }
        if getuid() == 0, let setpriv = which("setpriv") {
            triggers[5] = (setpriv, ["--reuid=65534", "--regid=65534", "--clear-groups", me, "map", locked], nil)
        } else if getuid() != 0 {
            triggers[5] = (me, ["map", locked], nil)
        } else {
            notWalked[5] = "root without setpriv cannot meet a permission error"
        }
        for (code, cause) in try Self.readmeTable() {
            guard let (program, args, stdin) = triggers[code] else {
                if let why = notWalked[code] { print("exit \(code) (\(cause)) not walked here: \(why)") }
                else { Issue.record("exit \(code) (\(cause)) is in the README but no test produces it") }
                continue
            }
            let r = try CLI.run(program, args, stdin: stdin)
            #expect(r.status == code, "exit \(code) (\(cause)): got \(r.status), \(r.stderr)")
            if code != 0 && code != 1 {
                #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("daxmirror: "), "exit \(code): \(r.stderr)")
            }
        }
        #expect(access(dir.file("new"), F_OK) != 0, "a refused map left its file")
    }
}

/// A child that has exited and is not reaped (a zombie) while this lives.
final class ZombieProcess {
    let pid: pid_t
    init() throws {
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var child: pid_t = 0
        let argv: [UnsafeMutablePointer<CChar>?] = [strdup("/bin/true"), nil]
        defer { argv.forEach { free($0) } }
        guard posix_spawn(&child, "/bin/true", nil, &attributes, argv, environ) == 0 else { throw POSIXError(.EAGAIN) }
        pid = child
        // Exited, not reaped: WNOWAIT leaves it a zombie.
        var info = siginfo_t()
        guard waitid(P_PID, id_t(child), &info, WEXITED | WNOWAIT) == 0 else { throw POSIXError(.ECHILD) }
    }
    deinit { var status: Int32 = 0; waitpid(pid, &status, 0) }
}
