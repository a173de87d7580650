#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import CPmem
import DaxCore
import FaultTracking
import Mirror
import PageTables

/// The scenario language (README "Scenarios"): one command per line, `#`
/// comments, each command answered with one JSON object. Trailing
/// `key=value` words are expectations on the answer (e.g. `faults=1`,
/// `uniform=0x00`, `codes=11*2,02*62`); an unmet one makes the command fail.
public final class ScenarioRunner {
    public private(set) var memory: [String: MappedMemory] = [:]
    public private(set) var mirrors: [String: Mirror] = [:]
    /// Device name -> the region it mirrors (a device is named after its
    /// region unless `mirror R as D` names it).
    private var deviceRegion: [String: String] = [:]
    /// Where relative file paths in `map R file PATH` resolve.
    public let directory: String
    public let tracking: Bool
    /// Differential mode: every device gets a twin in the kernel's own HMM
    /// test driver, driven with the same commands and compared after each.
    public let againstKernel: Bool
    private var kernelDevices: [String: KernelDmirror] = [:]
    private let kernel: KernelFeatures
    private var truth: CPUTruth?
    private let pageSize = UInt64(Syscall.pageSize)

    public init(directory: String = ".", tracking: Bool = true, againstKernel: Bool = false, kernel: KernelFeatures = .probe()) {
        self.directory = directory
        self.tracking = tracking
        self.againstKernel = againstKernel
        self.kernel = kernel
    }

    public static let commands: [(String, String)] = [
        ("map R anon|shmem|file|devdax [PATH] SIZE [huge] [ro|none] [private]", "map memory and name it R (devdax: /dev/daxX.Y at its alignment)"),
        ("mirror R [as D] [untracked] [write-bit soft-dirty|pagemap]",
         "attach a simulated device to R, named R or D (untracked: no userfaultfd events; write-bit: where HMM's WRITE comes from, default soft-dirty where the kernel has it)"),
        ("cpu-read R OFF LEN", "the CPU reads: checksum and uniform byte"),
        ("cpu-write R OFF LEN BYTE", "the CPU stores BYTE"),
        ("dev-read R OFF LEN", "the device reads: faults, checksum, uniform byte"),
        ("dev-write R OFF LEN BYTE", "the device writes BYTE (durable on return for files)"),
        ("snapshot R [OFF LEN]", "codes: the mirror's walk of the CPU table (dmirror SNAPSHOT); device: its table"),
        ("protect R OFF LEN none|read|rw", "mprotect"),
        ("unmap R OFF LEN", "munmap part of R"),
        ("remap R OFF LEN", "map that part again (fresh anonymous memory, or the same file pages)"),
        ("discard R OFF LEN", "madvise(MADV_DONTNEED)"),
        ("truncate R SIZE", "ftruncate R's file (the mirror is told, as the kernel's notifier would be)"),
        ("persist R OFF LEN", "pmem_persist (pmem) or msync"),
        ("fork-write R OFF LEN BYTE", "fork; the child stores BYTE and exits; the parent waits"),
        ("pwrite R OFF LEN BYTE / pread R OFF LEN", "through the file descriptor, not the mapping"),
        ("check R [OFF LEN] [strict] [kernel]", "compare the device table with pagemap; fails on any disagreement (strict: report stale entries instead of revalidating them first; kernel: also the snapshot against the kernel's own HMM_DMIRROR_SNAPSHOT)"),
        ("stats R", "table entries, mirrored pages, bytes, faults, stale entries dropped"),
        ("expect-fail CMD ...", "CMD must fail (its errno is reported)"),
        ("require pagemap-scan|thp|dax R|devdax [ALIGN]", "end the scenario here, reported as skipped, unless this holds"),
    ]

    /// Runs one line. Returns nil for blank lines and comments.
    public func run(line: String) -> JSON? {
        var text = Substring(line)
        if let hash = text.firstIndex(of: "#") { text = text[..<hash] }
        // $NAME words take the environment's value (e.g. $DAXMIRROR_DEVDAX),
        // before the line is split: a value may be several words ("file f.dat").
        var undefined: [String] = []
        let expanded = text.split(separator: " ", omittingEmptySubsequences: false).map { w -> String in
            guard w.hasPrefix("$") else { return String(w) }
            guard let value = environment(String(w.dropFirst())) else { undefined.append(String(w)); return String(w) }
            return value
        }.joined(separator: " ")
        // A word left as "$NAME" would be read as a path, a kind, a size: refuse it.
        if let name = undefined.first {
            return failure("(line)", .EINVAL, "\(name) is not set in the environment")
        }
        var words = expanded.split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard !words.isEmpty else { return nil }
        var expectations: [(String, String)] = []
        while let last = words.last, let eq = last.firstIndex(of: "="), words.count > 1 {
            expectations.insert((String(last[..<eq]), String(last[last.index(after: eq)...])), at: 0)
            words.removeLast()
        }
        var result = execute(words)
        if !expectations.isEmpty, case .object(var pairs) = result {
            var unmet: [(String, JSON)] = []
            for (key, want) in expectations {
                let got = pairs.first { $0.0 == key }?.1
                let gotText: String
                switch got {
                case .string(let s)?: gotText = s
                case let v?: gotText = v.render(pretty: false)
                case nil: gotText = "(absent)"
                }
                if gotText != want { unmet.append((key, .string("wanted \(want), got \(gotText)"))) }
            }
            if !unmet.isEmpty {
                if let i = pairs.firstIndex(where: { $0.0 == "ok" }) { pairs[i].1 = .bool(false) }
                pairs.append(("unmet", .object(unmet)))
            }
            result = .object(pairs)
        }
        return result
    }

    /// Runs a whole scenario; calls `emit` with each answer. Returns the
    /// number of commands that failed.
    public func run(script: String, emit: (JSON) -> Void) -> Int {
        run(script: Array(script.utf8), emit: emit)
    }

    /// Runs a scenario given as bytes. Lines end with LF or CRLF; a line that
    /// is not UTF-8, or holds a NUL, a lone CR or another control character
    /// (tab aside), is answered as a failure with its number: nothing a
    /// scenario says is dropped silently.
    public func run(script: [UInt8], emit: (JSON) -> Void) -> Int {
        var failed = 0
        for (n, raw) in script.split(separator: 0x0A, omittingEmptySubsequences: false).enumerated() {
            var bytes = raw[...]
            if bytes.last == 0x0D { bytes = bytes.dropLast() }
            let r: JSON?
            if let bad = bytes.first(where: { $0 < 0x20 && $0 != 0x09 || $0 == 0x7F }) {
                let name = bad == 0 ? "a NUL byte" : (bad == 0x0D ? "a carriage return" : "control character 0x\(String(bad, radix: 16))")
                r = failure("(line)", .EINVAL, "the line holds \(name)")
            } else if let line = String(validating: bytes, as: UTF8.self) {
                r = run(line: line)
            } else {
                r = failure("(line)", .EINVAL, "the line is not UTF-8")
            }
            guard let r else { continue }
            var answer = r
            if case .object(var pairs) = r {
                pairs.insert(("line", .int(Int64(n + 1))), at: 0)
                answer = .object(pairs)
                if pairs.contains(where: { $0.0 == "ok" && $0.1 == .bool(false) }) { failed += 1 }
            }
            emit(answer)
            // An unmet `require` ends the scenario, said, not failed.
            if case .object(let pairs) = answer, pairs.contains(where: { $0.0 == "skipped" }) { break }
        }
        return failed
    }

    // MARK: - commands

    struct Refusal: Error {
        let errno: Errno
        let message: String
    }

    private func execute(_ words: [String]) -> JSON {
        let op = words[0]
        if op == "expect-fail" {
            guard words.count > 1 else { return failure(op, .EINVAL, "expect-fail needs a command") }
            let inner = execute(Array(words.dropFirst()))
            guard case .object(let pairs) = inner else { return inner }
            let innerOK = pairs.first { $0.0 == "ok" }?.1 == .bool(true)
            var out: [(String, JSON)] = [("op", .string("expect-fail")), ("ok", .bool(!innerOK))]
            if let e = pairs.first(where: { $0.0 == "errno" }) { out.append(e) }
            if innerOK { out.append(("error", .string("\(words[1]) succeeded but was expected to fail"))) }
            out.append(("inner", inner))
            return .object(out)
        }
        do {
            var fields = try perform(op, Array(words.dropFirst()))
            fields.insert(("ok", .bool(true)), at: 0)
            fields.insert(("op", .string(op)), at: 0)
            return .object(fields)
        } catch let e as MirrorError {
            return failure(op, e.errno, e.message)
        } catch let e as Refusal {
            return failure(op, e.errno, e.message)
        } catch let e as KernelDisagrees {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string("EDOM")),
                            ("error", .string("the kernel's dmirror disagrees: " + e.what))])
        } catch let e as CheckFailed {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("disagreements", .int(Int64(e.disagreements))),
                            ("list", .array(e.list))])
        } catch {
            return failure(op, .EIO, "\(error)")
        }
    }

    private func failure(_ op: String, _ errno: Errno, _ message: String) -> JSON {
        .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string(errno.name)), ("error", .string(message))])
    }

    private func perform(_ op: String, _ args: [String]) throws -> [(String, JSON)] {
        // At least `n` words, and no more than the usage names (every word
        // in it, optional ones included), unless `max` says otherwise: an
        // extra word is a mistake, never ignored.
        func need(_ n: Int, _ usage: String, max: Int? = nil, checkMax: Bool = true) throws {
            let most = max ?? usage.split(separator: " ").count
            guard args.count >= n, !checkMax || args.count <= most else {
                throw Refusal(errno: .EINVAL, message: "\(args.count < n ? "too few" : "too many") words: usage: \(op) \(usage)")
            }
        }
        switch op {
        case "map":
            try need(3, "R anon|shmem|file [PATH] SIZE [huge] [ro|none] [private]")
            guard memory[args[0]] == nil else { throw Refusal(errno: .EEXIST, message: "\(args[0]) is already mapped") }
            guard let kind = MappedMemory.Kind(rawValue: args[1]) else {
                throw Refusal(errno: .EINVAL, message: "unknown memory kind \(args[1]) (anon, shmem, file or devdax)")
            }
            var rest = Array(args.dropFirst(2))
            var path: String?
            if kind == .file || kind == .devdax {
                try need(4, "R \(kind.rawValue) PATH SIZE", checkMax: false)
                path = rest.removeFirst()
                if let p = path, !p.hasPrefix("/") { path = directory + "/" + p }
            }
            let size = try bytes(rest.removeFirst(), "SIZE")
            var options = MappedMemory.Options()
            for flag in rest {
                switch flag {
                case "huge": options.huge = true
                case "ro": options.prot = PROT_READ
                case "none": options.prot = PROT_NONE
                case "private": options.privateFile = true
                default: throw Refusal(errno: .EINVAL, message: "unknown map flag \(flag) (huge, ro, none, private)")
                }
            }
            let m = try MappedMemory(name: args[0], kind: kind, path: path, size: Int(size), options: options)
            memory[args[0]] = m
            return [("region", .string(args[0])), ("kind", .string(m.backing.name)),
                    ("address", .string("0x" + String(m.address, radix: 16))), ("size", .uint(size)),
                    ("map_sync", .bool(m.mapSync)), ("pmem", .bool(m.isPmem)),
                    ("extent_hint", m.extentHint.map { .string($0) } ?? .null)]
        case "mirror":
            try need(1, "R [as D] [untracked] [write-bit soft-dirty|pagemap]")
            let m = try region(args[0])
            var device = args[0]
            if let i = args.firstIndex(of: "as"), i + 1 < args.count { device = args[i + 1] }
            var writeBit: Mirror.WriteBitSource?
            if let i = args.firstIndex(of: "write-bit") {
                guard i + 1 < args.count, let w = Mirror.WriteBitSource(rawValue: args[i + 1]) else {
                    throw Refusal(errno: .EINVAL, message: "write-bit takes soft-dirty or pagemap")
                }
                writeBit = w
            }
            guard mirrors[device] == nil else { throw Refusal(errno: .EEXIST, message: "device \(device) exists") }
            // userfaultfd allows one registration per range: a second device on
            // the same memory relies on revalidation alone.
            let other = deviceRegion.first { $0.value == args[0] }?.key
            let track = tracking && !args.contains("untracked") && other == nil
            if truth == nil { truth = try CPUTruth(scanAvailable: kernel.pagemapScan) }
            let mirror = try Mirror(region: m.region, tracking: track, dax: m.mapSync, truth: truth, kernel: kernel,
                                    writeBit: writeBit)
            mirrors[device] = mirror
            deviceRegion[device] = args[0]
            if againstKernel { kernelDevices[device] = try KernelDmirror() }
            return [("region", .string(args[0])), ("device", .string(device)),
                    ("events", .string(mirror.tracker.map { $0.mechanism.rawValue }
                                       ?? (other.map { "none (\($0) holds the registration)" } ?? "none"))),
                    ("huge_visible", .bool(mirror.cpu.seesMapOrder)), ("write_bit", .string(mirror.writeBit.rawValue)),
                    ("layout", .string(mirror.cpu.layoutMethod))]
        case "cpu-read":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            try cpuAccessible(m, off, len, write: false)
            let p = UnsafeRawBufferPointer(start: m.base + Int(off), count: Int(len))
            return summary(p)
        case "cpu-write":
            try need(4, "R OFF LEN BYTE")
            let (m, off, len) = try range(args)
            let b = try byte(args[3])
            try cpuAccessible(m, off, len, write: true)
            memset(m.base + Int(off), Int32(b), Int(len))
            return []
        case "dev-read":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            let mirror = try mirrorOf(args[0])
            let ours = Result { () throws(MirrorError) in try mirror.read(m.address + off, Int(len)) }
            var out: [(String, JSON)] = []
            if let twin = try kernelTwin(args[0]) {
                let theirs = Result { () throws(MirrorError) in try twin.read(m.address + off, Int(len)) }
                try agree(ours.map { [UInt8]($0.bytes) }, theirs.map(\.bytes), ours.map(\.faults), theirs.map(\.faults))
                if case .success(let k) = theirs { out.append(("kernel_faults", .int(Int64(k.faults)))) }
            }
            let (data, faults) = try ours.get()
            out.insert(("faults", .int(Int64(faults))), at: 0)
            data.withUnsafeBytes { out += summary($0) }
            return out
        case "dev-write":
            try need(4, "R OFF LEN BYTE")
            let (m, off, len) = try range(args)
            let mirror = try mirrorOf(args[0])
            let data = [UInt8](repeating: try byte(args[3]), count: Int(len))
            let ours = Result { () throws(MirrorError) in try mirror.write(m.address + off, data) }
            var extra: [(String, JSON)] = []
            let wholePages = (m.address + off) % UInt64(Syscall.pageSize) == 0 && len % UInt64(Syscall.pageSize) == 0
            if !wholePages, try kernelTwin(args[0]) != nil {
                extra.append(("kernel", .string("not compared: the kernel's dmirror writes whole pages only")))
            } else if let twin = try kernelTwin(args[0]) {
                let theirs = Result { () throws(MirrorError) in try twin.write(m.address + off, data) }
                try agree(ours.map { _ in [] }, theirs.map { _ in [] }, ours, theirs)
                if case .success(let k) = theirs { extra.append(("kernel_faults", .int(Int64(k)))) }
            }
            let faults = try ours.get()
            return [("faults", .int(Int64(faults)))] + extra + [ ("durable", .bool(m.backing.name == "file" || m.backing.name == "devdax")),
                    ("device_path", .string(mirror.writePath))]
        case "snapshot":
            try need(1, "R [OFF LEN]")
            guard args.count != 2 else { throw Refusal(errno: .EINVAL, message: "OFF without LEN: usage: snapshot R [OFF LEN]") }
            let m = try region(args[0])
            let (off, len) = args.count >= 3 ? (try bytes(args[1], "OFF"), try bytes(args[2], "LEN")) : (0, UInt64(m.length))
            let mirror = try mirrorOf(args[0])
            let cpu = try mirror.snapshot(m.address + off, len)
            let dev = try mirror.deviceSnapshot(m.address + off, len)
            var kernelCodes: [(String, JSON)] = []
            if let twin = try kernelTwin(args[0]) {
                let theirs = try twin.snapshot(m.address + off, len)
                try agree(snapshot: cpu, theirs)
                kernelCodes = [("kernel_codes", .string(theirs.runLengthHex))]
            }
            return [("pages", .int(Int64(cpu.count))), ("codes", .string(cpu.runLengthHex)),
                    ("device", .string(dev.runLengthHex))] + kernelCodes
        case "protect":
            try need(4, "R OFF LEN none|read|rw")
            let (m, off, len) = try range(args)
            let prot: Int32
            switch args[3] {
            case "none": prot = PROT_NONE
            case "read": prot = PROT_READ
            case "rw": prot = PROT_READ | PROT_WRITE
            default: throw Refusal(errno: .EINVAL, message: "protection must be none, read or rw")
            }
            // The kernel's notifier hears of every mprotect that changes a
            // VMA's permissions; tell the mirrors of this region (a change
            // undone before the next device access leaves no trace in the VMAs).
            let addr = UInt64(UInt(bitPattern: m.base)) + off
            let watching = deviceRegion.filter { $0.value == args[0] }.compactMap { mirrors[$0.key] }
            let before = try watching.first?.vmasBeforeProtect(addr, len) ?? []
            try sys("mprotect") { mprotect(m.base + Int(off), Int(len), prot) }
            for mirror in watching {
                mirror.protectionChanged(addr, len, readable: prot & PROT_READ != 0, writable: prot & PROT_WRITE != 0,
                                         before: before)
            }
            return []
        case "unmap":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            try sys("munmap") { munmap(m.base + Int(off), Int(len)) }
            return []
        case "remap":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            let at = m.base + Int(off)
            let p: UnsafeMutableRawPointer?
            switch m.backing {
            case .anonymous:
                p = mmap(at, Int(len), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            case .shmem(let fd), .file(_, let fd, true):
                p = mmap(at, Int(len), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off_t(off))
            case .file(_, let fd, false):
                p = mmap(at, Int(len), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_FIXED, fd, off_t(off))
            case .devdax(_, let fd, _, _, _):
                p = mmap(at, Int(len), PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, off_t(off))
            }
            guard p != MAP_FAILED else { throw MirrorError(Errno.current, "mmap MAP_FIXED") }
            return []
        case "discard":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            try sys("madvise(MADV_DONTNEED)") { madvise(m.base + Int(off), Int(len), MADV_DONTNEED) }
            return []
        case "truncate":
            try need(2, "R SIZE")
            let m = try region(args[0])
            let size = try bytes(args[1], "SIZE")
            guard let fd = m.fileDescriptor else { throw Refusal(errno: .EINVAL, message: "\(args[0]) has no file to truncate") }
            try sys("ftruncate") { ftruncate(fd, off_t(size)) }
            for (d, r) in deviceRegion where r == args[0] { mirrors[d]?.fileTruncated(to: size) }
            return [("size", .uint(size))]
        case "persist":
            try need(3, "R OFF LEN")
            let (m, off, len) = try range(args)
            if m.isPmem {
                pmem_persist(m.base + Int(off), Int(len))
            } else {
                try sys("msync") { pmem_msync(m.base + Int(off), Int(len)) }
            }
            return [("method", .string(m.isPmem ? "pmem_persist" : "msync"))]
        case "fork-write":
            try need(4, "R OFF LEN BYTE")
            let (m, off, len) = try range(args)
            let b = try byte(args[3])
            try cpuAccessible(m, off, len, write: true)
            let trackers = mirrors.values.compactMap { $0.tracker.map { ($0, $0.invalidationSequence) } }
            let status = dm_fork_fill(m.base + Int(off), Int(len), Int32(b))
            guard status >= 0 else { throw MirrorError(Errno.current, "fork") }
            // The kernel lets fork return once the FORK event is read, which
            // can be before the handler thread logged it: wait (briefly) for
            // the log, so the next command sees the fork as the kernel did.
            var waited = 0
            while trackers.contains(where: { $0.0.invalidationSequence == $0.1 }) && waited < 5000 { usleep(200); waited += 1 }
            guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
                throw Refusal(errno: .EIO, message: "the child did not exit cleanly (wait status \(status))")
            }
            return []
        case "pwrite", "pread":
            try need(op == "pwrite" ? 4 : 3, "R OFF LEN" + (op == "pwrite" ? " BYTE" : ""))
            let (m, off, len) = try range(args)
            guard let fd = m.fileDescriptor else { throw Refusal(errno: .EINVAL, message: "\(args[0]) has no file") }
            var buf = [UInt8](repeating: op == "pwrite" ? try byte(args[3]) : 0, count: Int(len))
            let n = buf.withUnsafeMutableBytes { b in
                op == "pwrite" ? Glibc.pwrite(fd, b.baseAddress, b.count, off_t(off)) : Glibc.pread(fd, b.baseAddress, b.count, off_t(off))
            }
            guard n >= 0 else { throw MirrorError(Errno.current, op) }
            if op == "pwrite" { return [("bytes", .int(Int64(n)))] }
            return [("bytes", .int(Int64(n)))] + buf.prefix(n).withUnsafeBytes { summary($0) }
        case "check":
            try need(1, "R [OFF LEN] [strict] [kernel]")
            let mirror = try mirrorOf(args[0])
            let strict = args.contains("strict")
            let bounds = args.filter { $0 != "strict" && $0 != "kernel" }
            guard bounds.count == 1 || bounds.count == 3 else {
                throw Refusal(errno: .EINVAL, message: "OFF without LEN: usage: check R [OFF LEN] [strict] [kernel]")
            }
            let m = try region(args[0])
            var at: UInt64?, count: UInt64?
            if bounds.count >= 3 {
                let (_, off, len) = try range(bounds)
                at = m.address + off
                count = len
            }
            let (found, revalidated) = try mirror.check(at, count, strict: strict)
            let list: [JSON] = found.prefix(50).map {
                .object([("start", .string("0x" + String($0.start, radix: 16))),
                         ("end", .string("0x" + String($0.end, radix: 16))),
                         ("reason", .string($0.reason)), ("device", .string($0.device)), ("kernel", .string($0.kernel))])
            }
            if !found.isEmpty {
                throw CheckFailed(disagreements: found.count, list: list)
            }
            // The kernel's SNAPSHOT as a second oracle for the CPU side.
            var oracle: [(String, JSON)] = []
            if args.contains("kernel") || againstKernel, let twin = try kernelTwin(args[0], open: args.contains("kernel")) {
                let s = at ?? m.address, n = count ?? UInt64(m.length)
                try agree(snapshot: try mirror.snapshot(s, n), try twin.snapshot(s, n))
                oracle.append(("kernel_snapshot", .string("agrees")))
            }
            return oracle + [("disagreements", .int(0)), ("revalidated", .int(Int64(revalidated))),
                    ("entries", .int(Int64(mirror.table.entryCount))),
                    ("mirrored_pages", .uint(mirror.table.mirroredPages))]
        case "require":
            try need(1, "pagemap-scan | thp | dax R | devdax [ALIGN]", max: 2)
            var missing: String?
            let arity: [String: ClosedRange<Int>] = ["pagemap-scan": 1...1, "thp": 1...1, "dax": 2...2, "devdax": 1...2]
            if let allowed = arity[args[0]], !allowed.contains(args.count) {
                throw Refusal(errno: .EINVAL, message: "wrong number of words: usage: require pagemap-scan | thp | dax R | devdax [ALIGN]")
            }
            switch args[0] {
            case "pagemap-scan":
                if !kernel.pagemapScan { missing = "this kernel has no PAGEMAP_SCAN (6.7+): map orders are not visible" }
            case "thp":
                let mode = readSysfsAttribute("/sys/kernel/mm/transparent_hugepage/enabled") ?? "[never]"
                if mode.contains("[never]") { missing = "transparent huge pages are disabled" }
            case "devdax":
                // require devdax [ALIGN]: a device in $DAXMIRROR_DEVDAX, with that alignment.
                if let dev = environment("DAXMIRROR_DEVDAX"), let name = dev.split(separator: "/").last {
                    if args.count > 1 {
                        let want = try bytes(args[1], "ALIGN")
                        let have = readSysfsAttribute("/sys/bus/dax/devices/\(name)/align").flatMap { UInt64($0) }
                        if have != want { missing = "\(dev) is aligned to \(have.map(String.init) ?? "?") bytes, not \(want)" }
                    }
                } else {
                    missing = "no device-dax device here (run in the guest with --nsmode devdax; DAXMIRROR_DEVDAX)"
                }
            case "dax":
                try need(2, "dax R", checkMax: false)
                if !(try region(args[1])).mapSync { missing = "\(args[1]) is not on a DAX filesystem (MAP_SYNC refused)" }
            default:
                throw Refusal(errno: .EINVAL, message: "unknown requirement \(args[0]) (pagemap-scan, thp, dax R, devdax [ALIGN])")
            }
            return missing.map { [("skipped", .string($0))] } ?? []
        case "stats":
            try need(1, "R")
            let mirror = try mirrorOf(args[0])
            return [("entries", .int(Int64(mirror.table.entryCount))),
                    ("mirrored_pages", .uint(mirror.table.mirroredPages)),
                    ("table_bytes", .int(Int64(mirror.table.heapBytes))),
                    ("faults", .int(Int64(mirror.faults))),
                    ("stale_dropped", .int(Int64(mirror.staleDropped))),
                    ("invalidated_pages", .uint(mirror.invalidatedPages))]
        default:
            throw Refusal(errno: .EINVAL, message: "unknown command \(op) (see `daxmirror run --help`)")
        }
    }

    // MARK: - the kernel's twin (differential mode)

    struct KernelDisagrees: Error {
        let what: String
    }

    /// The kernel twin of R's device: R's own in differential mode; for
    /// `check … kernel` outside it, opened on first use.
    private func kernelTwin(_ name: String, open: Bool = false) throws -> KernelDmirror? {
        let device = mirrors[name] != nil ? name : (deviceRegion.first { $0.value == name }?.key ?? name)
        if let k = kernelDevices[device] { return k }
        guard open else { return nil }
        let k = try KernelDmirror()
        kernelDevices[device] = k
        return k
    }

    /// Same outcome (errno), same bytes, same number of fault rounds.
    private func agree(_ ours: Result<[UInt8], MirrorError>, _ theirs: Result<[UInt8], MirrorError>,
                       _ ourFaults: Result<Int, MirrorError>, _ theirFaults: Result<Int, MirrorError>) throws {
        switch (ours, theirs) {
        case (.failure(let a), .failure(let b)):
            if a.errno != b.errno { throw KernelDisagrees(what: "ours failed with \(a.errno.name), the kernel's with \(b.errno.name)") }
        case (.failure(let a), .success):
            throw KernelDisagrees(what: "ours failed with \(a.errno.name) (\(a.message)), the kernel's succeeded")
        case (.success, .failure(let b)):
            throw KernelDisagrees(what: "ours succeeded, the kernel's failed with \(b.errno.name)")
        case (.success(let a), .success(let b)):
            if a != b {
                let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
                throw KernelDisagrees(what: "bytes differ first at offset \(i)")
            }
            if case .success(let f) = ourFaults, case .success(let g) = theirFaults, f != g {
                throw KernelDisagrees(what: "ours faulted \(f) times, the kernel's \(g)")
            }
        }
    }

    private func agree(snapshot ours: [SnapshotCode], _ theirs: [SnapshotCode]) throws {
        guard ours != theirs else { return }
        let i = (0..<min(ours.count, theirs.count)).first { ours[$0] != theirs[$0] } ?? min(ours.count, theirs.count)
        throw KernelDisagrees(what: "snapshot differs first at page \(i) (ours \(ours[i]), the kernel's \(theirs[i])): ours \(ours.runLengthHex), the kernel's \(theirs.runLengthHex)")
    }

    struct CheckFailed: Error {
        let disagreements: Int
        let list: [JSON]
    }

    // MARK: - argument helpers

    private func environment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }

    private func region(_ name: String) throws -> MappedMemory {
        guard let m = memory[deviceRegion[name] ?? name] else { throw Refusal(errno: .ENOENT, message: "no region named \(name) (map it first)") }
        return m
    }

    private func mirrorOf(_ name: String) throws -> Mirror {
        _ = try region(name)
        if mirrors[name] == nil, let d = deviceRegion.first(where: { $0.value == name })?.key { return mirrors[d]! }
        guard let m = mirrors[name] else { throw Refusal(errno: .ENOENT, message: "\(name) is not mirrored (mirror \(name) first)") }
        return m
    }

    /// No mapping, offset or length can exceed the user address space (2^56
    /// bytes with 5-level paging): a bound at parse time that keeps every
    /// sum, rounding and Int conversion downstream from overflowing.
    static let largestSize: UInt64 = 1 << 56

    private func bytes(_ text: String, _ what: String) throws -> UInt64 {
        let v: UInt64
        if text.hasPrefix("0x"), let h = UInt64(text.dropFirst(2), radix: 16) { v = h }
        else if let d = ByteSize.parse(text) { v = d }
        else { throw Refusal(errno: .EINVAL, message: "\(what) \(text) is not a size") }
        guard v < Self.largestSize else {
            throw Refusal(errno: .EINVAL, message: "\(what) \(text) is larger than any address space (2^56 bytes)")
        }
        return v
    }

    private func byte(_ text: String) throws -> UInt8 {
        if text.hasPrefix("0x"), let v = UInt8(text.dropFirst(2), radix: 16) { return v }
        guard let v = UInt8(text) else { throw Refusal(errno: .EINVAL, message: "BYTE \(text) is not 0-255 or 0x00-0xff") }
        return v
    }

    private func range(_ args: [String]) throws -> (MappedMemory, UInt64, UInt64) {
        let m = try region(args[0])
        let off = try bytes(args[1], "OFF"), len = try bytes(args[2], "LEN")
        guard len > 0, off <= UInt64(m.length), len <= UInt64(m.length) - off else {
            throw Refusal(errno: .EINVAL, message: "\(off)+\(len) is outside \(args[0]) (\(m.length) bytes)")
        }
        return (m, off, len)
    }

    private func sys(_ what: String, _ body: () -> Int32) throws {
        guard body() == 0 else { throw MirrorError(Errno.current, what) }
    }

    /// The CPU is about to touch memory directly: refuse (instead of dying of
    /// SIGSEGV/SIGBUS) where the mapping or the file would not allow it.
    private func cpuAccessible(_ m: MappedMemory, _ off: UInt64, _ len: UInt64, write: Bool) throws {
        let vmas = try Maps.read()
        var at = m.address + off
        let end = at + len
        while at < end {
            guard let v = vmas.first(where: { $0.start <= at && at < $0.end }) else {
                throw Refusal(errno: .EFAULT, message: "the CPU would fault: nothing mapped at 0x\(String(at, radix: 16))")
            }
            if !v.readable || (write && !v.writable) {
                throw Refusal(errno: .EFAULT, message: "the CPU would fault: 0x\(String(at, radix: 16)) is \(v.perms)")
            }
            at = v.end
        }
        if let fd = m.fileDescriptor, m.backing.name != "devdax" {  // a device has no end of file
            var st = stat()
            fstat(fd, &st)
            let lastPageEnd = (UInt64(st.st_size) + pageSize - 1) / pageSize * pageSize
            if off + len > lastPageEnd {
                throw Refusal(errno: .EFAULT, message: "the CPU would get SIGBUS: beyond the end of the file (\(st.st_size) bytes)")
            }
        }
    }

    private func summary(_ p: UnsafeRawBufferPointer) -> [(String, JSON)] {
        var h: UInt64 = 0xcbf29ce484222325
        for b in p { h = (h ^ UInt64(b)) &* 0x100000001b3 }
        let first = p.first ?? 0
        let uniform = p.allSatisfy { $0 == first }
        let hex = String(first, radix: 16)
        return [("checksum", .string(String(h, radix: 16))),
                ("uniform", uniform ? .string("0x" + (hex.count == 1 ? "0" + hex : hex)) : .null)]
    }
}
