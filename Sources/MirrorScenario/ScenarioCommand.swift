#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import MirrorPolicy
import MirrorKernel

/// One scenario command, parsed: every word typed, every number checked
/// (below 2^56, so no sum, rounding or conversion downstream can overflow).
/// Nothing a line says is dropped: a word the command does not take is an
/// error, as is one it needs and lacks. `ScenarioCommand.specs` is the one
/// source of each command's name, usage line, help text and parser.
public indirect enum ScenarioCommand: Equatable {
    case map(MapRequest)
    case mirror(region: String, device: String?, untracked: Bool, writeBit: DeviceMirror.WriteBitSource?, number: Int = 0)
    case cpuRead(Span)
    case cpuWrite(Span, byte: UInt8)
    case devRead(Span)
    case devWrite(Span, byte: UInt8)
    case snapshot(region: String, range: ByteRange?)
    case protect(Span, Protection)
    case unmap(Span)
    case remap(Span)
    case discard(Span)
    case truncate(region: String, size: UInt64)
    case persist(Span)
    case forkWrite(Span, byte: UInt8)
    case pwrite(Span, byte: UInt8)
    case pread(Span)
    case check(region: String, range: ByteRange?, strict: Bool, kernel: Bool)
    case stats(region: String)
    case expectFail(ScenarioCommand)
    case require(Requirement)
    case migrate(Span)
    case migrateBack(Span)
    case release(device: String)
    case exclusive(Span)
    case checkExclusive(Span)
    case forkRead(Span)
    case gup(Span)

    public struct MapRequest: Equatable {
        public var region: String
        public var kind: MemoryKind
        public var path: String?
        public var size: UInt64
        public var huge = false
        public var protection: Protection = .rw
        public var privateFile = false
    }

    /// OFF and LEN inside a named region: both below 2^56, LEN > 0 (the
    /// region's own bounds are checked when it runs: the region may not
    /// exist yet when the line is read).
    public struct Span: Equatable {
        public var region: String
        public var offset: UInt64
        public var length: UInt64
    }

    public struct ByteRange: Equatable {
        public var offset: UInt64
        public var length: UInt64
    }

    public enum Protection: String, Equatable, CaseIterable {
        case none, read, rw
        public var prot: Int32 {
            switch self {
            case .none: return PROT_NONE
            case .read: return PROT_READ
            case .rw: return PROT_READ | PROT_WRITE
            }
        }
    }

    public enum Requirement: Equatable {
        case pagemapScan, thp
        case dax(region: String)
        case devdax(align: UInt64?)
    }

    /// The command's name as a scenario writes it.
    public var name: String {
        switch self {
        case .map: "map"
        case .mirror: "mirror"
        case .cpuRead: "cpu-read"
        case .cpuWrite: "cpu-write"
        case .devRead: "dev-read"
        case .devWrite: "dev-write"
        case .snapshot: "snapshot"
        case .protect: "protect"
        case .unmap: "unmap"
        case .remap: "remap"
        case .discard: "discard"
        case .truncate: "truncate"
        case .persist: "persist"
        case .forkWrite: "fork-write"
        case .pwrite: "pwrite"
        case .pread: "pread"
        case .check: "check"
        case .stats: "stats"
        case .expectFail: "expect-fail"
        case .require: "require"
        case .migrate: "migrate"
        case .migrateBack: "migrate-back"
        case .release: "release"
        case .exclusive: "exclusive"
        case .checkExclusive: "check-exclusive"
        case .forkRead: "fork-read"
        case .gup: "gup"
        }
    }
}

/// A command of the language: its name, the words after it, what it does,
/// and how its words become a typed command. Help and errors quote `usage`.
public struct ScenarioCommandSpec: Sendable {
    public let name: String
    public let usage: String
    public let summary: String
    let parse: @Sendable (inout ScenarioWords) throws(ScenarioError) -> ScenarioCommand
}

/// A scenario's refusal: the errno dmirror would give (EINVAL for words) and
/// a sentence.
public struct ScenarioError: Error {
    public let errno: Errno
    public let message: String
    public init(_ errno: Errno, _ message: String) {
        self.errno = errno
        self.message = message
    }
}

/// No mapping, offset or length can exceed the user address space (2^56
/// bytes with 5-level paging).
public let scenarioLargestSize: UInt64 = 1 << 56

/// The words of one command after its name, read front to back. Each read
/// names what it wanted; `finish()` refuses words left over.
public struct ScenarioWords {
    let spec: ScenarioCommandSpec
    private let words: [String]
    private var next = 0

    init(_ spec: ScenarioCommandSpec, _ words: [String]) {
        self.spec = spec
        self.words = words
    }

    var remaining: Int { words.count - next }
    var peek: String? { next < words.count ? words[next] : nil }

    private func usageError(_ what: String) -> ScenarioError {
        ScenarioError(.EINVAL, "\(what): usage: \(spec.name) \(spec.usage)")
    }

    mutating func word(_ what: String) throws(ScenarioError) -> String {
        guard let w = peek else { throw usageError("too few words (\(what) is missing)") }
        next += 1
        return w
    }

    /// The next word if it is `keyword` (consumed), else false.
    mutating func take(_ keyword: String) -> Bool {
        guard peek == keyword else { return false }
        next += 1
        return true
    }

    mutating func size(_ what: String) throws(ScenarioError) -> UInt64 {
        try ScenarioWords.size(try word(what), what)
    }

    static func size(_ text: String, _ what: String) throws(ScenarioError) -> UInt64 {
        let v: UInt64
        if text.hasPrefix("0x"), let h = UInt64(text.dropFirst(2), radix: 16) { v = h }
        else if let d = ByteSize.parse(text) { v = d }
        else { throw ScenarioError(.EINVAL, "\(what) \(text) is not a size (4096, 64K, 2M, 1G or 0x hex)") }
        guard v < scenarioLargestSize else {
            throw ScenarioError(.EINVAL, "\(what) \(text) is larger than any address space (2^56 bytes)")
        }
        return v
    }

    mutating func byte() throws(ScenarioError) -> UInt8 {
        let text = try word("BYTE")
        if text.hasPrefix("0x"), let v = UInt8(text.dropFirst(2), radix: 16) { return v }
        guard let v = UInt8(text) else { throw ScenarioError(.EINVAL, "BYTE \(text) is not 0-255 or 0x00-0xff") }
        return v
    }

    mutating func span() throws(ScenarioError) -> ScenarioCommand.Span {
        let region = try word("R")
        let (off, len) = try range()
        return .init(region: region, offset: off, length: len)
    }

    mutating func range() throws(ScenarioError) -> (UInt64, UInt64) {
        let off = try size("OFF"), len = try size("LEN")
        guard len > 0 else { throw ScenarioError(.EINVAL, "LEN must be more than 0") }
        return (off, len)
    }

    /// `[OFF LEN]` before optional keywords: both or neither.
    mutating func optionalRange(keywords: Set<String>) throws(ScenarioError) -> ScenarioCommand.ByteRange? {
        guard let w = peek, !keywords.contains(w) else { return nil }
        guard remaining >= 2, !keywords.contains(words[next + 1]) else { throw usageError("OFF without LEN") }
        let (off, len) = try range()
        return .init(offset: off, length: len)
    }

    /// The rest as keywords from `allowed`, each at most once.
    mutating func flags(_ allowed: [String]) throws(ScenarioError) -> Set<String> {
        var seen: Set<String> = []
        while let w = peek {
            guard allowed.contains(w) else {
                throw ScenarioError(.EINVAL, "unknown word \(w) (here: \(allowed.joined(separator: ", "))): usage: \(spec.name) \(spec.usage)")
            }
            guard seen.insert(w).inserted else { throw usageError("\(w) twice") }
            next += 1
        }
        return seen
    }

    /// Every word left.
    mutating func rest() -> [String] {
        defer { next = words.count }
        return Array(words[next...])
    }

    func finish() throws(ScenarioError) {
        if let w = peek { throw usageError("too many words (\(w)…)") }
    }
}

extension ScenarioCommand {
    /// The language, in the order `run --help` lists it.
    public static let specs: [ScenarioCommandSpec] = [
        .init(name: "map", usage: "R anon|shmem|file|devdax [PATH] SIZE [huge] [ro|none] [private]",
              summary: "map memory and name it R (file and devdax take a PATH; devdax: /dev/daxX.Y at its alignment)") { w throws(ScenarioError) in
            let region = try w.word("R")
            let kindWord = try w.word("the memory kind")
            guard let kind = MemoryKind(rawValue: kindWord) else {
                throw ScenarioError(.EINVAL, "unknown memory kind \(kindWord) (anon, shmem, file or devdax)")
            }
            let path = (kind == .file || kind == .devdax) ? try w.word("PATH") : nil
            var request = MapRequest(region: region, kind: kind, path: path, size: try w.size("SIZE"))
            let flags = try w.flags(["huge", "ro", "none", "private"])
            guard !(flags.contains("ro") && flags.contains("none")) else {
                throw ScenarioError(.EINVAL, "ro and none together: give one")
            }
            request.huge = flags.contains("huge")
            request.protection = flags.contains("ro") ? .read : (flags.contains("none") ? .none : .rw)
            request.privateFile = flags.contains("private")
            return .map(request)
        },
        .init(name: "mirror", usage: "R [as D] [device 0|1] [untracked] [write-bit soft-dirty|pagemap]",
              summary: "attach a simulated device's mirror to R, named R or D (device: which device it is a mirror of, default 0 — pages migrated through any mirror of a device are that device's; untracked: no userfaultfd events; write-bit: where HMM's WRITE comes from, default soft-dirty where the kernel has it)") { w throws(ScenarioError) in
            let region = try w.word("R")
            var device: String?, untracked = false, writeBit: DeviceMirror.WriteBitSource?, number: Int?
            while let word = w.peek {
                if w.take("as"), device == nil { device = try w.word("D") }
                else if w.take("device"), number == nil {
                    let v = try w.word("0|1")
                    guard let n = Int(v), n == 0 || n == 1 else {
                        throw ScenarioError(.EINVAL, "device takes 0 or 1 (the kernel's device-private dmirror0 and dmirror1), not \(v)")
                    }
                    number = n
                }
                else if w.take("untracked"), !untracked { untracked = true }
                else if w.take("write-bit"), writeBit == nil {
                    let v = try w.word("soft-dirty|pagemap")
                    guard let source = DeviceMirror.WriteBitSource(rawValue: v) else {
                        throw ScenarioError(.EINVAL, "write-bit takes soft-dirty or pagemap, not \(v)")
                    }
                    writeBit = source
                } else {
                    throw ScenarioError(.EINVAL, "unexpected word \(word): usage: mirror R [as D] [device 0|1] [untracked] [write-bit soft-dirty|pagemap]")
                }
            }
            return .mirror(region: region, device: device, untracked: untracked, writeBit: writeBit, number: number ?? 0)
        },
        .init(name: "cpu-read", usage: "R OFF LEN", summary: "the CPU reads: checksum and uniform byte (a SIGBUS is the answer, EFAULT)") { w throws(ScenarioError) in
            .cpuRead(try w.span())
        },
        .init(name: "cpu-write", usage: "R OFF LEN BYTE", summary: "the CPU stores BYTE") { w throws(ScenarioError) in
            .cpuWrite(try w.span(), byte: try w.byte())
        },
        .init(name: "dev-read", usage: "R OFF LEN", summary: "the device reads: faults, checksum, uniform byte") { w throws(ScenarioError) in
            .devRead(try w.span())
        },
        .init(name: "dev-write", usage: "R OFF LEN BYTE", summary: "the device writes BYTE (durable on return for files)") { w throws(ScenarioError) in
            .devWrite(try w.span(), byte: try w.byte())
        },
        .init(name: "snapshot", usage: "R [OFF LEN]",
              summary: "codes: the mirror's walk of the CPU table (dmirror SNAPSHOT); device: its table") { w throws(ScenarioError) in
            .snapshot(region: try w.word("R"), range: try w.optionalRange(keywords: []))
        },
        .init(name: "protect", usage: "R OFF LEN none|read|rw", summary: "mprotect") { w throws(ScenarioError) in
            let span = try w.span()
            let p = try w.word("none|read|rw")
            guard let prot = Protection(rawValue: p) else { throw ScenarioError(.EINVAL, "protection must be none, read or rw, not \(p)") }
            return .protect(span, prot)
        },
        .init(name: "unmap", usage: "R OFF LEN", summary: "munmap part of R") { w throws(ScenarioError) in .unmap(try w.span()) },
        .init(name: "remap", usage: "R OFF LEN", summary: "map that part again (fresh anonymous memory, or the same file pages)") { w throws(ScenarioError) in
            .remap(try w.span())
        },
        .init(name: "discard", usage: "R OFF LEN", summary: "madvise(MADV_DONTNEED)") { w throws(ScenarioError) in .discard(try w.span()) },
        .init(name: "truncate", usage: "R SIZE", summary: "ftruncate R's file (the mirror is told, as the kernel's notifier would be)") { w throws(ScenarioError) in
            .truncate(region: try w.word("R"), size: try w.size("SIZE"))
        },
        .init(name: "persist", usage: "R OFF LEN", summary: "pmem_persist (pmem) or msync") { w throws(ScenarioError) in .persist(try w.span()) },
        .init(name: "fork-write", usage: "R OFF LEN BYTE", summary: "fork; the child stores BYTE and exits; the parent waits") { w throws(ScenarioError) in
            .forkWrite(try w.span(), byte: try w.byte())
        },
        .init(name: "pwrite", usage: "R OFF LEN BYTE", summary: "write BYTE through the file descriptor, not the mapping") { w throws(ScenarioError) in
            .pwrite(try w.span(), byte: try w.byte())
        },
        .init(name: "pread", usage: "R OFF LEN", summary: "read through the file descriptor: bytes, checksum, uniform byte") { w throws(ScenarioError) in
            .pread(try w.span())
        },
        .init(name: "check", usage: "R [OFF LEN] [strict] [kernel]",
              summary: "compare the device table with pagemap; fails on any disagreement (strict: report stale entries instead of revalidating them first; kernel: also the snapshot against the kernel's own HMM_DMIRROR_SNAPSHOT)") { w throws(ScenarioError) in
            let region = try w.word("R")
            let range = try w.optionalRange(keywords: ["strict", "kernel"])
            let flags = try w.flags(["strict", "kernel"])
            return .check(region: region, range: range, strict: flags.contains("strict"), kernel: flags.contains("kernel"))
        },
        .init(name: "stats", usage: "R", summary: "table entries, mirrored pages, bytes, faults, stale entries dropped") { w throws(ScenarioError) in
            .stats(region: try w.word("R"))
        },
        .init(name: "migrate", usage: "D OFF LEN",
              summary: "move pages to device D's private memory (HMM_DMIRROR_MIGRATE_TO_DEV): cpages, and the checksum and uniform byte the device read back") { w throws(ScenarioError) in
            .migrate(try w.span())
        },
        .init(name: "migrate-back", usage: "D OFF LEN",
              summary: "bring device D's pages in the range home (HMM_DMIRROR_MIGRATE_TO_SYS): cpages") { w throws(ScenarioError) in
            .migrateBack(try w.span())
        },
        .init(name: "release", usage: "D", summary: "every page D's device holds comes home (HMM_DMIRROR_RELEASE): pages") { w throws(ScenarioError) in
            .release(device: try w.word("D"))
        },
        .init(name: "exclusive", usage: "D OFF LEN",
              summary: "hold the pages for device D's exclusive access until any CPU access, an mprotect or a fork (HMM_DMIRROR_EXCLUSIVE): cpages, checksum, uniform byte") { w throws(ScenarioError) in
            .exclusive(try w.span())
        },
        .init(name: "check-exclusive", usage: "D OFF LEN",
              summary: "fails with EPERM while D still holds a page of the range exclusively (HMM_DMIRROR_CHECK_EXCLUSIVE)") { w throws(ScenarioError) in
            .checkExclusive(try w.span())
        },
        .init(name: "gup", usage: "R OFF LEN", summary: "the kernel reads the range on the process's behalf (get_user_pages, by process_vm_readv): checksum and uniform byte; a page it cannot get is EFAULT") { w throws(ScenarioError) in
            .gup(try w.span())
        },
        .init(name: "fork-read", usage: "R OFF LEN", summary: "fork; the child reads (checksum, uniform byte) and exits; the parent waits") { w throws(ScenarioError) in
            .forkRead(try w.span())
        },
        .init(name: "expect-fail", usage: "CMD ...", summary: "CMD must fail (its errno is reported)") { w throws(ScenarioError) in
            let rest = w.rest()
            guard !rest.isEmpty else { throw ScenarioError(.EINVAL, "expect-fail needs a command: usage: expect-fail CMD ...") }
            return .expectFail(try ScenarioCommand.parse(rest))
        },
        .init(name: "require", usage: "pagemap-scan | thp | dax R | devdax [ALIGN]",
              summary: "end the scenario here, reported as skipped, unless this holds") { w throws(ScenarioError) in
            let what = try w.word("what is required")
            switch what {
            case "pagemap-scan": return .require(.pagemapScan)
            case "thp": return .require(.thp)
            case "dax": return .require(.dax(region: try w.word("R")))
            case "devdax": return .require(.devdax(align: w.peek == nil ? nil : try w.size("ALIGN")))
            default: throw ScenarioError(.EINVAL, "unknown requirement \(what) (pagemap-scan, thp, dax R, devdax [ALIGN])")
            }
        },
    ]

    private static let specByName: [String: ScenarioCommandSpec] =
        Dictionary(uniqueKeysWithValues: specs.map { ($0.name, $0) })

    /// Parses a command's words (name first).
    public static func parse(_ words: [String]) throws(ScenarioError) -> ScenarioCommand {
        guard let op = words.first else { throw ScenarioError(.EINVAL, "an empty command") }
        guard let spec = specByName[op] else {
            throw ScenarioError(.EINVAL, "unknown command \(op) (see `daxmirror run --help`)")
        }
        var cursor = ScenarioWords(spec, Array(words.dropFirst()))
        let command = try spec.parse(&cursor)
        try cursor.finish()
        return command
    }
}
