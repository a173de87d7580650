#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// The ioctls that resolve faults or change protection on a registered range.
/// Each returns normally or throws the kernel's errno; EAGAIN from COPY /
/// ZEROPAGE / CONTINUE means the range changed under us (an unmap or remap is
/// pending) and the fault will be re-raised or dropped by the kernel.
extension Userfaultfd {
    private func addr(_ p: UnsafeRawPointer) -> UInt64 { UInt64(UInt(bitPattern: p)) }

    /// UFFDIO_COPY: fills [dst, dst+length) from `source` and wakes the faulter.
    public func copy(to dst: UnsafeMutableRawPointer, from source: UnsafeRawPointer, length: Int,
                     writeProtect: Bool = false, wake: Bool = true) throws(SystemCallError) {
        try Self.copy(fd: fd.rawValue, to: addr(dst), from: source, length: length, writeProtect: writeProtect, wake: wake)
    }

    /// UFFDIO_COPY on a bare descriptor; `dst` is in the descriptor's
    /// process (a forked child's), `source` in this one.
    public static func copy(fd: Int32, to dst: UInt64, from source: UnsafeRawPointer, length: Int,
                            writeProtect: Bool = false, wake: Bool = true) throws(SystemCallError) {
        var c = uffdio_copy(dst: dst, src: UInt64(UInt(bitPattern: source)), len: UInt64(length),
                            mode: (wake ? 0 : UInt64(UFFDIO_COPY_MODE_DONTWAKE)) | (writeProtect ? UInt64(UFFDIO_COPY_MODE_WP) : 0),
                            copy: 0)
        try Syscall.retrying("UFFDIO_COPY") { dm_uffdio_copy(fd, &c) }
    }

    /// UFFDIO_ZEROPAGE: maps zeros (the zero page for a read fault on anon memory).
    public func zeropage(at dst: UnsafeMutableRawPointer, length: Int, wake: Bool = true) throws(SystemCallError) {
        try Self.zeropage(fd: fd.rawValue, at: addr(dst), length: length, wake: wake)
    }

    public static func zeropage(fd: Int32, at dst: UInt64, length: Int, wake: Bool = true) throws(SystemCallError) {
        var z = uffdio_zeropage(range: uffdio_range(start: dst, len: UInt64(length)),
                                mode: wake ? 0 : UInt64(UFFDIO_ZEROPAGE_MODE_DONTWAKE), zeropage: 0)
        try Syscall.retrying("UFFDIO_ZEROPAGE") { dm_uffdio_zeropage(fd, &z) }
    }

    public static func wake(fd: Int32, at start: UInt64, length: Int) {
        var r = uffdio_range(start: start, len: UInt64(length))
        _ = dm_uffdio_wake(fd, &r)
    }

    /// UFFDIO_CONTINUE: maps the page already in the page cache (MINOR faults).
    public func `continue`(at dst: UnsafeMutableRawPointer, length: Int, wake: Bool = true) throws(SystemCallError) {
        var c = uffdio_continue(range: uffdio_range(start: addr(dst), len: UInt64(length)),
                                mode: wake ? 0 : UInt64(UFFDIO_CONTINUE_MODE_DONTWAKE), mapped: 0)
        try Syscall.retrying("UFFDIO_CONTINUE") { dm_uffdio_continue(fd.rawValue, &c) }
    }

    /// UFFDIO_WRITEPROTECT: arms (`protect`) or lifts write protection; lifting wakes.
    public func writeProtect(_ start: UnsafeMutableRawPointer, length: Int, protect: Bool, wake: Bool = true) throws(SystemCallError) {
        var mode: UInt64 = protect ? UInt64(UFFDIO_WRITEPROTECT_MODE_WP) : 0
        if !wake { mode |= UInt64(UFFDIO_WRITEPROTECT_MODE_DONTWAKE) }
        var wp = uffdio_writeprotect(range: uffdio_range(start: addr(start), len: UInt64(length)), mode: mode)
        try Syscall.retrying("UFFDIO_WRITEPROTECT") { dm_uffdio_writeprotect(fd.rawValue, &wp) }
    }

    /// UFFDIO_WAKE: wakes threads blocked on faults in the range.
    public func wake(_ start: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        var r = uffdio_range(start: addr(start), len: UInt64(length))
        try Syscall.retrying("UFFDIO_WAKE") { dm_uffdio_wake(fd.rawValue, &r) }
    }

    /// UFFDIO_POISON (6.6+, needs the POISON feature): later accesses get SIGBUS.
    public func poison(_ start: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        var p = dm_uffdio_poison(range: uffdio_range(start: addr(start), len: UInt64(length)), mode: 0, updated: 0)
        try Syscall.retrying("UFFDIO_POISON") { dm_uffdio_poison(fd.rawValue, &p) }
    }

    /// UFFDIO_MOVE (6.8+, the MOVE feature): moves this process's anonymous
    /// pages from `source` to `dst` (a hole in a range registered here)
    /// without copying them; `wake`: as UFFDIO_COPY's.
    public func move(to dst: UnsafeMutableRawPointer, from source: UnsafeMutableRawPointer, length: Int,
                     wake: Bool = true) throws(SystemCallError) {
        var m = dm_uffdio_move(dst: addr(dst), src: addr(source), len: UInt64(length),
                               mode: wake ? 0 : DM_UFFDIO_MOVE_MODE_DONTWAKE, move: 0)
        try Syscall.retrying("UFFDIO_MOVE") { dm_uffdio_move(fd.rawValue, &m) }
    }
}
