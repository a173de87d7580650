#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// A decoded `struct uffd_msg`.
public enum UserfaultfdEvent: Sendable, Equatable {
    /// A thread faulted at `address` (page-aligned unless EXACT_ADDRESS).
    case pageFault(address: UInt64, kind: FaultKind, threadID: UInt32)
    /// The process forked; `descriptor` is a new uffd for the child's copy of
    /// the registered ranges (ours to own and close).
    case fork(descriptor: Int32)
    /// mremap moved [from, from+length) to `to`.
    case remap(from: UInt64, to: UInt64, length: UInt64)
    /// madvise(DONTNEED/REMOVE/FREE) dropped [start, end).
    case remove(start: UInt64, end: UInt64)
    /// munmap (or a shrinking mremap) removed [start, end).
    case unmap(start: UInt64, end: UInt64)
    /// An event number this code does not know.
    case unknown(UInt8)

    public struct FaultKind: OptionSet, Sendable, Hashable {
        public let rawValue: UInt64
        public init(rawValue: UInt64) { self.rawValue = rawValue }
        public static let write = Self(rawValue: 1 << 0)  // UFFD_PAGEFAULT_FLAG_WRITE
        public static let writeProtect = Self(rawValue: 1 << 1)  // UFFD_PAGEFAULT_FLAG_WP
        public static let minor = Self(rawValue: 1 << 2)  // UFFD_PAGEFAULT_FLAG_MINOR
    }

    init(_ m: UnsafePointer<uffd_msg>) {
        switch Int32(dm_uffd_msg_event(m)) {
        case Int32(UFFD_EVENT_PAGEFAULT):
            self = .pageFault(address: dm_uffd_msg_pf_address(m), kind: FaultKind(rawValue: dm_uffd_msg_pf_flags(m)),
                              threadID: dm_uffd_msg_pf_ptid(m))
        case Int32(UFFD_EVENT_FORK): self = .fork(descriptor: Int32(bitPattern: dm_uffd_msg_fork_ufd(m)))
        case Int32(UFFD_EVENT_REMAP):
            self = .remap(from: dm_uffd_msg_remap_from(m), to: dm_uffd_msg_remap_to(m), length: dm_uffd_msg_remap_len(m))
        case Int32(UFFD_EVENT_REMOVE): self = .remove(start: dm_uffd_msg_remove_start(m), end: dm_uffd_msg_remove_end(m))
        case Int32(UFFD_EVENT_UNMAP): self = .unmap(start: dm_uffd_msg_remove_start(m), end: dm_uffd_msg_remove_end(m))
        default: self = .unknown(dm_uffd_msg_event(m))
        }
    }
}

extension Userfaultfd {
    /// A buffer for `readEvents(into:)`, sized for `count` messages.
    public static func eventBuffer(count: Int = 64) -> UnsafeMutableRawBufferPointer {
        .allocate(byteCount: Int(DM_UFFD_MSG_SIZE) * count, alignment: 8)
    }

    /// Reads the pending messages into `buffer` without blocking (the
    /// descriptor is O_NONBLOCK) and hands each to `body` in place. Returns the
    /// number read (0: none queued).
    ///
    /// Nothing is allocated, on purpose: a thread that forks holds the
    /// allocator's locks (glibc's atfork handlers) while the kernel makes it
    /// wait for us to read the FORK event, so allocating before the read
    /// returns would deadlock the handler against the forker.
    @discardableResult
    public func forEachEvent(in buffer: UnsafeMutableRawBufferPointer,
                             _ body: (UserfaultfdEvent) throws(SystemCallError) -> Void) throws(SystemCallError) -> Int {
        try Self.forEachEvent(fd: fd.rawValue, in: buffer, body)
    }

    /// The same on a bare descriptor: a forked child's uffd, which arrives
    /// with its API handshake done (UFFD_EVENT_FORK).
    @discardableResult
    public static func forEachEvent(fd: Int32, in buffer: UnsafeMutableRawBufferPointer,
                                    _ body: (UserfaultfdEvent) throws(SystemCallError) -> Void) throws(SystemCallError) -> Int {
        let size = Int(DM_UFFD_MSG_SIZE)
        let n: Int
        switch Syscall.probe("read", { read(fd, buffer.baseAddress, buffer.count - buffer.count % size) }) {
        case .success(let got): n = got
        case .failure(.EAGAIN): return 0
        case .failure(let e): throw SystemCallError("read", "userfaultfd", errno: e)
        }
        for i in 0..<(n / size) {
            try body(UserfaultfdEvent((buffer.baseAddress! + i * size).assumingMemoryBound(to: uffd_msg.self)))
        }
        return n / size
    }
}
