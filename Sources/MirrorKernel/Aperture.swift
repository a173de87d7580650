#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import CPmem
import DaxCore
import MirrorPolicy

/// The device's own way to its memory, never the CPU's virtual address when
/// one exists: for a shared file or shmem, its own MAP_SHARED mapping of the
/// same file, addressed by file offset (so a stale device entry would be
/// visible as stale data, which is what the tests look for). A device write
/// to a file is durable when it returns: on a DAX file it is a pwrite, the
/// kernel's DAX write path (a flush-cache copy into blocks the device's write
/// fault allocated and synced), as the kernel's dmirror writes through the
/// kernel's own mapping. Not a store through the aperture: the aperture is
/// MAP_SYNC, so its write fault fsyncs the page, and that writeback
/// write-protects the CPU's mapping of it and invalidates every device's
/// entries (dax_entry_mkclean) — side effects no device write has. Other
/// files: pwrite + fdatasync; shmem: pwrite. Reads copy out of the aperture
/// through a guarded memcpy (CDaxShim): a page truncated away by another
/// process is EFAULT, never SIGBUS. Device-dax has no write(2):
/// pmem_memcpy_persist there.
///
/// Anonymous and private-file memory have no file to map, and need none:
/// the mirrored pages are this process's own. The device copies them with
/// a guarded memcpy, after the mirror has checked (pagemap) that the address
/// still maps the entry's PFN — the user-space equivalent of a physical
/// access; a page another thread unmapped or protected meanwhile (SIGSEGV)
/// is EFAULT, as process_vm_readv would answer, at memcpy's speed.
final class Aperture: @unchecked Sendable {
    let fd: Int32?
    private(set) var base: UnsafeMutableRawPointer?
    private(set) var length = 0
    private(set) var isPersistentMemory = false

    /// A character device has no st_size: its size comes from sysfs.
    let knownSize: UInt64?
    init(fd: Int32?, knownSize: UInt64? = nil) {
        self.fd = fd
        self.knownSize = knownSize
    }
    deinit { unmap() }

    func unmap() {
        if let b = base { pmem_unmap(b, length) }
        base = nil
        length = 0
    }

    /// The aperture covering file bytes [offset, offset+count), remapping
    /// when the file grew past what is mapped.
    private func window(_ offset: UInt64, _ count: Int) throws(MirrorError) -> UnsafeMutableRawPointer {
        guard let fd else { throw MirrorError(.EINVAL, "no aperture for this memory") }
        if base == nil || offset + UInt64(count) > UInt64(length) {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw MirrorError(Errno.current, "fstat of the mirrored file") }
            let size = knownSize.map(Int.init) ?? Int(st.st_size)
            if size == 0 { throw MirrorError(.EFAULT, "the mirrored file is empty") }
            guard offset + UInt64(count) <= UInt64(size) else {
                throw MirrorError(.EFAULT, "offset \(offset) is beyond the end of the file (\(size) bytes)")
            }
            unmap()
            // libpmem maps it (MAP_SYNC on DAX) and then knows it for
            // pmem_is_pmem; through /proc/self/fd so it is the same inode.
            var mapped = 0
            var pmem: Int32 = 0
            guard let p = pmem_map_file("/proc/self/fd/\(fd)", 0, 0, 0, &mapped, &pmem) else {
                throw MirrorError(Errno.current, "mapping the device aperture")
            }
            base = p
            length = mapped
            isPersistentMemory = pmem != 0
            // libpmem maps the file's size at that moment, which another
            // party's truncate may have made smaller since the fstat above:
            // never hand out an address past the mapping (SIGSEGV there, not
            // the guarded SIGBUS of a page past the end of the file).
            guard offset + UInt64(count) <= UInt64(mapped) else {
                throw MirrorError(.EFAULT, "offset \(offset)+\(count) is beyond the end of the file (\(mapped) bytes: truncated meanwhile)")
            }
        }
        return base! + Int(offset)
    }

    /// Reads copy out of the aperture (a load, as a device's DMA would be:
    /// no system call, PMD-mapped where the file is), guarded: a page another
    /// process truncated away is EFAULT, as dmirror gives, not SIGBUS. A file
    /// the aperture cannot map (opened read-only) is read with pread.
    func read(fileOffset: UInt64, into dst: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if let fd, knownSize == nil, apertureRefused || !canMap(fd) {
            return try preadAll(fd, fileOffset, dst, count)
        }
        let src = try window(fileOffset, count)
        guard dm_copy_guarded(dst, src, count) == 0 else {
            let at = dm_guard_fault_address().map { UInt64(UInt(bitPattern: $0) - UInt(bitPattern: base!)) }
            throw MirrorError(.EFAULT, "offset \(at ?? fileOffset) is beyond the end of the file (truncated meanwhile)")
        }
    }

    /// A file the device may not map read-write: pread, learned once.
    private var apertureRefused = false
    private func canMap(_ fd: Int32) -> Bool {
        if base != nil { return true }
        let flags = fcntl(fd, F_GETFL)
        apertureRefused = flags >= 0 && flags & O_ACCMODE != O_RDWR
        return !apertureRefused
    }

    private func preadAll(_ fd: Int32, _ fileOffset: UInt64, _ dst: UnsafeMutableRawPointer, _ count: Int) throws(MirrorError) {
        // Nothing read is the end of the file: the rest was truncated away.
        try Self.transferAll("pread", count, nothing: { MirrorError(.EFAULT, "offset \(fileOffset + UInt64($0)) is beyond the end of the file (truncated)") }) {
            pread(fd, dst + $0, count - $0, off_t(fileOffset) + off_t($0))
        }
    }

    /// All `count` bytes through `call` (pread, pwrite), `body` given the
    /// bytes done so far; a call that moves nothing ends it with `nothing`.
    private static func transferAll(_ call: String, _ count: Int, nothing: (Int) -> MirrorError,
                                    _ body: (Int) -> Int) throws(MirrorError) {
        var done = 0
        while done < count {
            let n: Int
            do { n = try Syscall.retrying(call) { body(done) } } catch { throw MirrorError(error.errno, "\(call) of the device access") }
            guard n > 0 else { throw nothing(done) }
            done += n
        }
    }

    /// A file is written with pwrite, within its size (a device never grows
    /// a file; a store through the aperture past a truncation is SIGBUS):
    /// on DAX the kernel's DAX write path, durable on return; on other files
    /// followed by fdatasync. Device-dax has no write(2): pmem_memcpy_persist.
    func write(fileOffset: UInt64, from src: UnsafeRawPointer, count: Int) throws(MirrorError) {
        let p = try window(fileOffset, count)  // maps (and learns is-pmem) on first use
        guard knownSize == nil, let fd else {
            if isPersistentMemory { pmem_memcpy_persist(p, src, count) } else {
                memcpy(p, src, count)
                guard pmem_msync(p, count) == 0 else { throw MirrorError(Errno.current, "msync of the device write") }
            }
            return
        }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw MirrorError(Errno.current, "fstat of the mirrored file") }
        guard fileOffset + UInt64(count) <= UInt64(st.st_size) else {
            throw MirrorError(.EFAULT, "offset \(fileOffset)+\(count) is beyond the end of the file (\(st.st_size) bytes: truncated)")
        }
        try Self.transferAll("pwrite", count, nothing: { _ in MirrorError(.EIO, "pwrite of the device write wrote nothing") }) {
            pwrite(fd, src + $0, count - $0, off_t(fileOffset) + off_t($0))
        }
        if !isPersistentMemory && !onTmpfs { guard fdatasync(fd) == 0 else { throw MirrorError(Errno.current, "fdatasync of the device write") } }
    }

    /// shmem and tmpfs files have nothing to sync.
    private lazy var onTmpfs: Bool = fd.map { dm_fs_magic($0) == DM_TMPFS_MAGIC } ?? false

    /// The device reaches this process's own memory through the kernel
    /// (process_vm_readv/writev: no signal can arise, so no handler is
    /// installed) instead of a guarded memcpy. Set once, before any mirror,
    /// where the process is not ours: `daxmirror emulate`'s program, whose
    /// SIGSEGV and SIGBUS dispositions are its own.
    nonisolated(unsafe) public static var ownMemoryThroughKernel = false

    /// The device reads this process's memory at `address`.
    static func readOwn(address: UInt64, into dst: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if ownMemoryThroughKernel {
            return try throughKernel("read", address, count) { dm_gup_read(dst + $0, UnsafeRawPointer(bitPattern: UInt(address))! + $0, count - $0) }
        }
        let src = UnsafeRawPointer(bitPattern: UInt(address))
        guard dm_copy_guarded(dst, src, count) == 0 else { throw ownFailure("read", address) }
    }

    /// A process_vm transfer to its end; a page it cannot get is EFAULT there.
    private static func throughKernel(_ what: String, _ address: UInt64, _ count: Int,
                                      _ step: (Int) -> Int) throws(MirrorError) {
        var done = 0
        while done < count {
            let n = step(done)
            if n > 0 { done += n; continue }
            if n < 0 && Errno.current == .EINTR { continue }
            let at = (address + UInt64(done)) & ~(Syscall.pageBytes - 1)
            throw MirrorError(n < 0 ? Errno.current : .EFAULT, "device \(what) of 0x\(String(at, radix: 16)): the kernel could not get the page")
        }
    }

    /// The device writes this process's memory at `address`.
    static func writeOwn(address: UInt64, from src: UnsafeRawPointer, count: Int) throws(MirrorError) {
        if ownMemoryThroughKernel {
            return try throughKernel("write", address, count) { dm_gup_write(UnsafeMutableRawPointer(bitPattern: UInt(address))! + $0, src + $0, count - $0) }
        }
        let dst = UnsafeMutableRawPointer(bitPattern: UInt(address))
        guard dm_copy_guarded(dst, src, count) == 0 else { throw ownFailure("write", address) }
    }

    private static func ownFailure(_ what: String, _ address: UInt64) -> MirrorError {
        let e = Errno.current
        guard e == .EFAULT, let at = dm_guard_fault_address() else {
            return MirrorError(e, "device \(what) of 0x\(String(address, radix: 16)): the copy's signal guard is unavailable")
        }
        // The page, not the byte: where in it the copy faulted is memcpy's
        // choice (from the end, under emulation).
        let page = UInt64(UInt(bitPattern: at)) & ~(Syscall.pageBytes - 1)
        return MirrorError(.EFAULT, "device \(what) of 0x\(String(address, radix: 16)): the page at 0x\(String(page, radix: 16)) was unmapped or protected meanwhile")
    }
}
