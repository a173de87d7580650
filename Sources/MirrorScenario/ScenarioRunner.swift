#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import FaultTracking
import MirrorPolicy
import MirrorKernel
import KernelDmirror
import PageTables

/// The scenario language (README "Scenarios"): one command per line, `#`
/// comments, each command answered with one JSON object. Trailing
/// `key=value` words are expectations on the answer (e.g. `faults=1`,
/// `uniform=0x00`, `codes=11*2,02*62`); an unmet one makes the command fail.
/// Lines are parsed into typed commands first (ScenarioCommand); each has
/// one handler (ScenarioRunner+Memory, +Device).
public final class ScenarioRunner {
    public internal(set) var memory: [String: MappedMemory] = [:]
    public internal(set) var mirrors: [String: DeviceMirror] = [:]
    /// Device name -> the region it mirrors (a device is named after its
    /// region unless `mirror R as D` names it).
    var deviceRegion: [String: String] = [:]
    /// Under which relative file paths in `map R file PATH` resolve: each run
    /// has a private directory there (workingDirectory), so two runs of one
    /// scenario with the same --dir never share a file.
    public let directory: String
    /// The run's private directory, made at the first relative file path.
    var privateDirectory: String?
    /// Files this run created: only those may be resized by a later `map`.
    var ownFiles: Set<String> = []
    public let tracking: Bool
    /// Differential mode: every device gets a twin in the kernel's own HMM
    /// test driver, driven with the same commands and compared after each.
    public let againstKernel: Bool
    var kernelDevices: [String: KernelDmirror] = [:]
    /// Twin regions (differential with device-private memory): each region
    /// has a twin of the same kind and size that every CPU command also
    /// acts on, and the kernel's twin device works on the twin — a page has
    /// one owner, so daxmirror's device and the kernel's cannot share memory
    /// once pages migrate. Same process: a soft-dirty clear write-protects
    /// both alike.
    public let twinRegions: Bool
    var twins: [String: MappedMemory] = [:]
    let kernel: KernelFeatures
    var truth: CPUTruth?
    let pageSize = UInt64(Syscall.pageSize)
    let environment: (String) -> String?

    public init(directory: String = ".", tracking: Bool = true, againstKernel: Bool = false, twinRegions: Bool = false,
                kernel: KernelFeatures = .probe(),
                environment: @escaping (String) -> String? = ScenarioLine.processEnvironment) {
        self.directory = directory
        self.tracking = tracking
        self.againstKernel = againstKernel
        self.twinRegions = againstKernel && twinRegions
        self.kernel = kernel
        self.environment = environment
    }

    /// The run's private directory under `directory` (mkdtemp), made once.
    func workingDirectory() throws(ScenarioError) -> String {
        if let privateDirectory { return privateDirectory }
        var template = Array((directory + "/.daxmirror-run.XXXXXX").utf8CString)
        let made = template.withUnsafeMutableBufferPointer { mkdtemp($0.baseAddress!) }
        guard made != nil else { throw ScenarioError(Errno.current, "cannot make the run's directory in \(directory)") }
        let path = String(decoding: template.prefix { $0 != 0 }.map { UInt8(bitPattern: $0) }, as: UTF8.self)
        privateDirectory = path
        return path
    }

    /// Ends the run: unmaps everything and removes the private directory
    /// with the files the run made in it.
    public func finish() {
        mirrors.removeAll()
        kernelDevices.removeAll()
        memory.removeAll()
        twins.removeAll()
        guard let dir = privateDirectory else { return }
        for f in ownFiles where f.hasPrefix(dir + "/") { unlink(f) }
        rmdir(dir)
        privateDirectory = nil
    }

    deinit { finish() }

    /// Usage line and help text of every command (from ScenarioCommand.specs).
    public static var commands: [(String, String)] {
        ScenarioCommand.specs.map { ("\($0.name) \($0.usage)", $0.summary) }
    }

    /// Runs one line. Returns nil for blank lines and comments.
    public func run(line: String) -> JSON? {
        let parsed: ScenarioLine
        do {
            guard let p = try ScenarioLine.parse(line, environment: environment) else { return nil }
            parsed = p
        } catch {
            return failure(error.op, error.error.errno, error.error.message)
        }
        let result = execute(parsed.command)
        guard !parsed.expectations.isEmpty, case .object(var pairs) = result else { return result }
        var unmet: [(String, JSON)] = []
        for (key, want) in parsed.expectations {
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
        return .object(pairs)
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
            PoolTrace.line(n + 1)
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

    // MARK: - dispatch

    /// Runs a parsed command: its answer, `ok` and `op` first.
    public func execute(_ command: ScenarioCommand) -> JSON {
        let op = command.name
        if case .expectFail(let inner) = command {
            let answer = execute(inner)
            guard case .object(let pairs) = answer else { return answer }
            let innerOK = pairs.first { $0.0 == "ok" }?.1 == .bool(true)
            var out: [(String, JSON)] = [("op", .string(op)), ("ok", .bool(!innerOK))]
            if let e = pairs.first(where: { $0.0 == "errno" }) { out.append(e) }
            if innerOK { out.append(("error", .string("\(inner.name) succeeded but was expected to fail"))) }
            out.append(("inner", answer))
            return .object(out)
        }
        do {
            var fields = try perform(command)
            fields.insert(("ok", .bool(true)), at: 0)
            fields.insert(("op", .string(op)), at: 0)
            return .object(fields)
        } catch let e as MirrorError {
            return failure(op, e.errno, e.message)
        } catch let e as ScenarioError {
            return failure(op, e.errno, e.message)
        } catch let e as CPUSignal {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string("EFAULT")),
                            ("signal", .string("SIGBUS")), ("error", .string(e.message))])
        } catch let e as FailedAlike {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string(e.error.errno.name)),
                            ("kernel_errno", .string(e.error.errno.name)), ("error", .string(e.error.message))])
        } catch let e as KernelDisagrees {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string("EDOM")),
                            ("error", .string("the kernel's dmirror disagrees: " + e.what))])
        } catch let e as CheckFailed {
            return .object([("op", .string(op)), ("ok", .bool(false)), ("disagreements", .int(Int64(e.disagreements))),
                            ("list", .array(e.list))])
        } catch let e as Failure {
            // The kernel's errno where there is one (EPERM for "needs
            // CAP_SYS_ADMIN", EMFILE, ENOMEM…), never a blanket EIO.
            return failure(op, e.errno ?? Self.errno(of: e.code), e.message)
        } catch let e as SystemCallError {
            return failure(op, e.errno, e.description)
        } catch {
            return failure(op, .EIO, "\(error)")
        }
    }

    /// The errno a Failure without one stands for (its exit cause's).
    static func errno(of cause: ExitCause) -> Errno {
        switch cause {
        case .notFound: return .ENOENT
        case .notRegularFile: return .EISDIR
        case .permissionDenied: return .EPERM
        case .alreadyExists: return .EEXIST
        case .symlinkRefused: return .ELOOP
        case .noSpace: return .ENOSPC
        case .invalidArgument, .usage: return .EINVAL
        case .notDAX, .unsupported: return .EOPNOTSUPP
        case .cannotEmulate: return Errno(ENOEXEC)
        case .processGone: return .ESRCH
        case .busy: return .EBUSY
        case .success, .failure, .systemError: return .EIO
        }
    }

    /// One handler per command; the CPU's commands act on a region's twin too (twin regions).
    private func perform(_ command: ScenarioCommand) throws -> [(String, JSON)] {
        switch command {
        case .map(let r): return try map(r)
        case .mirror(let r, let d, let untracked, let writeBit, let n): return try mirror(r, as: d, untracked: untracked, writeBit: writeBit, number: n)
        case .cpuRead(let s): return try onTwins(s.region, compare: true) { () throws in try cpuRead(s) }
        case .cpuWrite(let s, let b): return try onTwins(s.region) { () throws in try cpuWrite(s, b) }
        case .protect(let s, let p): return try onTwins(s.region) { () throws in try protect(s, p) }
        case .unmap(let s): return try onTwins(s.region) { () throws in try unmap(s) }
        case .remap(let s): return try onTwins(s.region) { () throws in try remap(s) }
        case .discard(let s): return try onTwins(s.region) { () throws in try discard(s) }
        case .forkWrite(let s, let b): return try onTwins(s.region) { () throws in try forkWrite(s, b) }
        case .forkRead(let s): return try onTwins(s.region, compare: true) { () throws in try forkRead(s) }
        case .gup(let s): return try onTwins(s.region, compare: true) { () throws in try gup(s) }
        case .truncate(let r, let size): return try onTwins(r) { () throws in try truncate(r, size) }
        case .persist(let s): return try onTwins(s.region) { () throws in try persist(s) }
        case .pwrite(let s, let b): return try onTwins(s.region) { () throws in try pwrite(s, b) }
        case .pread(let s): return try onTwins(s.region, compare: true) { () throws in try pread(s) }
        case .devRead(let s): return try devRead(s)
        case .devWrite(let s, let b): return try devWrite(s, b)
        case .snapshot(let r, let range): return try snapshot(r, range)
        case .check(let r, let range, let strict, let k): return try check(r, range, strict: strict, kernel: k)
        case .stats(let r): return try stats(r)
        case .require(let what): return try require(what)
        case .migrate(let s): return try migrate(s)
        case .migrateBack(let s): return try migrateBack(s)
        case .release(let d): return try release(d)
        case .exclusive(let s): return try exclusive(s)
        case .checkExclusive(let s): return try checkExclusive(s)
        case .expectFail: return []  // execute() handles it
        }
    }

    /// Runs a CPU command on the region, then (twin regions) on its twin;
    /// `compare`: the two must have read the same bytes.
    private func onTwins(_ name: String, compare: Bool = false, _ body: () throws -> [(String, JSON)]) throws -> [(String, JSON)] {
        let ours = try body()
        let key = deviceRegion[name] ?? name
        guard let twin = twins[key], let mine = memory[key] else { return ours }
        memory[key] = twin
        defer { memory[key] = mine }
        let theirs = try body()
        if compare, !ours.elementsEqual(theirs, by: { $0.0 == $1.0 && $0.1 == $1.1 }) {
            throw KernelDisagrees(what: "the CPU read different bytes in the region and its twin")
        }
        return ours
    }

    func failure(_ op: String, _ errno: Errno, _ message: String) -> JSON {
        .object([("op", .string(op)), ("ok", .bool(false)), ("errno", .string(errno.name)), ("error", .string(message))])
    }

    struct CheckFailed: Error {
        let disagreements: Int
        let list: [JSON]
    }

    /// The CPU's own access got SIGBUS (a page truncated away): the answer.
    struct CPUSignal: Error {
        let message: String
    }

    // MARK: - names and bounds

    func region(_ name: String) throws(ScenarioError) -> MappedMemory {
        guard let m = memory[deviceRegion[name] ?? name] else { throw ScenarioError(.ENOENT, "no region named \(name) (map it first)") }
        return m
    }

    func mirrorOf(_ name: String) throws(ScenarioError) -> DeviceMirror {
        _ = try region(name)
        if mirrors[name] == nil, let d = deviceRegion.first(where: { $0.value == name })?.key, let m = mirrors[d] { return m }
        guard let m = mirrors[name] else { throw ScenarioError(.ENOENT, "\(name) is not mirrored (mirror \(name) first)") }
        return m
    }

    /// The span inside its region (numbers are below 2^56: the sum cannot
    /// overflow), and not over a part an `unmap` gave back that another
    /// mapping of this process now holds (a command there would touch the
    /// runner's own memory).
    func resolve(_ s: ScenarioCommand.Span) throws -> MappedMemory {
        let m = try region(s.region)
        guard s.offset + s.length <= UInt64(m.length) else {
            throw ScenarioError(.EINVAL, "\(s.offset)+\(s.length) is outside \(s.region) (\(m.length) bytes)")
        }
        let parts = m.holeParts(of: s.offset..<(s.offset + s.length))
        if !parts.isEmpty {
            let vmas = try Maps.read()
            for p in parts {
                let lo = m.address + p.lowerBound, hi = m.address + p.upperBound
                if let v = vmas.first(where: { $0.start < hi && lo < $0.end }) {
                    throw ScenarioError(.EBUSY, "\(s.region)+\(p.lowerBound) was unmapped and the process has mapped something else there since (0x\(String(v.start, radix: 16))-0x\(String(v.end, radix: 16))): remap it first or use another range")
                }
            }
        }
        return m
    }

    func sys(_ what: String, _ body: () -> Int32) throws(MirrorError) {
        guard body() == 0 else { throw MirrorError(Errno.current, what) }
    }
}

/// Checksum (FNV-1a) and uniform byte of what was read, fed in pieces.
struct ByteDigest {
    private var hash: UInt64 = 0xcbf29ce484222325
    private var first: UInt8?
    private var uniform = true

    mutating func add(_ p: UnsafeRawBufferPointer) {
        for b in p { hash = (hash ^ UInt64(b)) &* 0x100000001b3 }
        guard let f = p.first else { return }
        if first == nil { first = f }
        if uniform, let first { uniform = p.allSatisfy { $0 == first } }
    }

    var fields: [(String, JSON)] {
        let hex = String(first ?? 0, radix: 16)
        return [("checksum", .string(String(hash, radix: 16))),
                ("uniform", uniform ? .string("0x" + (hex.count == 1 ? "0" + hex : hex)) : .null)]
    }

    static func of(_ p: UnsafeRawBufferPointer) -> [(String, JSON)] {
        var d = ByteDigest()
        d.add(p)
        return d.fields
    }
}
