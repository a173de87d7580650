#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// The outcome of one trial: worked (with a detail) or the errno it got.
public enum ProbeResult: Sendable, Equatable {
    case ok(String?)
    case failed(Errno)
    /// Not tried, and why (e.g. the feature it needs is missing).
    case skipped(String)

    public var isOK: Bool { if case .ok = self { return true } else { return false } }

    public var text: String {
        switch self {
        case .ok(let d): return d.map { "ok (\($0))" } ?? "ok"
        case .failed(let e): return e.name
        case .skipped(let why): return "skipped: \(why)"
        }
    }

    public var json: JSON {
        switch self {
        case .ok(let d): return .object(["result": .string("ok"), "detail": d.map { .string($0) }])
        case .failed(let e): return .object(["result": .string("error"), "errno": .string(e.name)])
        case .skipped(let why): return .object(["result": .string("skipped"), "reason": .string(why)])
        }
    }
}

/// A scratch mapping used by probes, unmapped on release.
final class ScratchMapping {
    let base: UnsafeMutableRawPointer
    let length: Int
    private let fd: OwnedFD?

    init(length: Int, prot: Int32 = PROT_READ | PROT_WRITE, flags: Int32, fd: OwnedFD?) throws(SystemCallError) {
        let p = mmap(nil, length, prot, flags, fd?.rawValue ?? -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemCallError("mmap") }
        base = p
        self.length = length
        self.fd = fd
    }
    deinit { munmap(base, length) }

    static func anonymous(length: Int) throws(SystemCallError) -> ScratchMapping {
        try ScratchMapping(length: length, flags: MAP_PRIVATE | MAP_ANONYMOUS, fd: nil)
    }

    static func shmem(length: Int) throws(SystemCallError) -> ScratchMapping {
        let fd = OwnedFD(try Syscall.retrying("memfd_create") { dm_memfd_create("daxmirror-probe", DM_MFD_CLOEXEC) })
        try Syscall.retrying("ftruncate") { ftruncate(fd.rawValue, off_t(length)) }
        return try ScratchMapping(length: length, flags: MAP_SHARED, fd: fd)
    }

    /// An unnamed file in `directory` (O_TMPFILE), so a probe leaves nothing behind.
    static func file(in directory: String, length: Int) throws(SystemCallError) -> ScratchMapping {
        let fd = try OwnedFD.open(directory, DM_O_TMPFILE | O_RDWR, mode: 0o600)
        try Syscall.retrying("ftruncate", directory) { ftruncate(fd.rawValue, off_t(length)) }
        return try ScratchMapping(length: length, flags: MAP_SHARED, fd: fd)
    }
}
