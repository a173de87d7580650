#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import MirrorPolicy
import PageTables

/// The kernel's own simulated device (lib/test_hmm.c, `/dev/hmm_dmirrorN`):
/// it mirrors this process through the kernel's hmm_range_fault and mmu
/// notifiers. The differential runner drives it beside a `DeviceMirror` and
/// compares answers; it exists only on kernels built with CONFIG_TEST_HMM
/// (Scripts/guest/build-hmm-kernel.sh). One instance is one device table.
public final class KernelDmirror {
    public let path: String
    private let fd: Int32
    private let pageSize = UInt64(Syscall.pageSize)

    public static let defaultPath = "/dev/hmm_dmirror0"

    public init(path: String = KernelDmirror.defaultPath) throws(Failure) {
        self.path = path
        let fd = open(path, O_RDWR | O_CLOEXEC)
        guard fd >= 0 else {
            let e = Errno.current
            if e == .ENOENT {
                throw Failure(.unsupported, "no \(path): this kernel has no HMM test driver (CONFIG_TEST_HMM); boot the guest with `Scripts/guest.sh --kernel hmm`")
            }
            throw Failure(e == .EACCES || e == .EPERM ? .permissionDenied : .systemError, "cannot open \(path): \(e.name)")
        }
        self.fd = fd
    }

    deinit { close(fd) }

    /// HMM_DMIRROR_READ of `count` bytes (whole pages) at `address`.
    public func read(_ address: UInt64, _ count: Int) throws(MirrorError) -> (bytes: [UInt8], faults: Int) {
        // The driver reads whole pages from a page-aligned address and copies
        // npages × PAGE_SIZE bytes out: read the page hull, return the slice.
        let start = address / pageSize * pageSize
        let hull = Int((address + UInt64(count) + pageSize - 1) / pageSize * pageSize - start)
        var buffer = [UInt8](repeating: 0, count: hull)
        let r = buffer.withUnsafeMutableBytes { b in command(dm_hmm_read, "HMM_DMIRROR_READ", start, b.baseAddress!, hull) }
        let skip = Int(address - start)
        return (Array(buffer[skip..<(skip + count)]), try r.get().faults)
    }

    /// HMM_DMIRROR_WRITE of `bytes` (whole pages) at `address`.
    public func write(_ address: UInt64, _ bytes: [UInt8]) throws(MirrorError) -> Int {
        // It writes whole pages: a partial page would be clobbered past the data.
        guard address % pageSize == 0, UInt64(bytes.count) % pageSize == 0 else {
            throw MirrorError(.EINVAL, "the kernel's dmirror writes whole pages only (0x\(String(address, radix: 16))+\(bytes.count))")
        }
        var copy = bytes
        return try copy.withUnsafeMutableBytes { b in command(dm_hmm_write, "HMM_DMIRROR_WRITE", address, b.baseAddress!, bytes.count) }
            .get().faults
    }

    /// HMM_DMIRROR_SNAPSHOT: the CPU table as the kernel's walk sees it.
    public func snapshot(_ address: UInt64, _ length: UInt64) throws(MirrorError) -> [SnapshotCode] {
        let pages = Int((length + pageSize - 1) / pageSize)
        var codes = [UInt8](repeating: 0, count: pages)
        _ = try codes.withUnsafeMutableBytes { b in
            command(dm_hmm_snapshot, "HMM_DMIRROR_SNAPSHOT", address, b.baseAddress!, pages * Int(pageSize))
        }.get()
        return codes.map(SnapshotCode.init(rawValue:))
    }

    /// HMM_DMIRROR_MIGRATE_TO_DEV of whole pages: the pages read back and their bytes.
    public func migrateToDevice(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> (cpages: Int, bytes: [UInt8]) {
        try readBackCommand(DM_HMM_MIGRATE_TO_DEV, "HMM_DMIRROR_MIGRATE_TO_DEV", address, count)
    }

    /// HMM_DMIRROR_EXCLUSIVE of whole pages: the pages read back and their bytes.
    public func makeExclusive(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> (cpages: Int, bytes: [UInt8]) {
        try readBackCommand(DM_HMM_EXCLUSIVE, "HMM_DMIRROR_EXCLUSIVE", address, count)
    }

    /// HMM_DMIRROR_MIGRATE_TO_SYS: the pages that came home.
    public func migrateToSystem(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> Int {
        var none: UInt8 = 0
        return try command(DM_HMM_MIGRATE_TO_SYS, "HMM_DMIRROR_MIGRATE_TO_SYS", address, &none, Int(count)).get().pages
    }

    /// HMM_DMIRROR_CHECK_EXCLUSIVE: throws EPERM while a page is held.
    public func checkExclusive(_ address: UInt64, _ count: UInt64) throws(MirrorError) {
        var none: UInt8 = 0
        _ = try command(DM_HMM_CHECK_EXCLUSIVE, "HMM_DMIRROR_CHECK_EXCLUSIVE", address, &none, Int(count)).get()
    }

    /// HMM_DMIRROR_RELEASE: every page the device holds comes home.
    public func release() throws(MirrorError) {
        var none: UInt8 = 0
        _ = try command(DM_HMM_RELEASE, "HMM_DMIRROR_RELEASE", pageSize, &none, Int(pageSize)).get()  // the range is checked, not used
    }

    private func readBackCommand(_ request: dm_hmm_request, _ name: String, _ address: UInt64,
                                 _ count: UInt64) throws(MirrorError) -> (cpages: Int, bytes: [UInt8]) {
        var buffer = [UInt8](repeating: 0, count: Int(count))
        let r = buffer.withUnsafeMutableBytes { b in command(request, name, address, b.baseAddress!, Int(count)) }
        return (try r.get().pages, buffer)
    }

    private func command(_ request: dm_hmm_request, _ name: String, _ address: UInt64, _ buffer: UnsafeMutableRawPointer,
                         _ bytes: Int) -> Result<(pages: Int, faults: Int), MirrorError> {
        command({ dm_hmm_command($0, request, $1) }, name, address, buffer, bytes)
    }

    private func command(_ call: (Int32, UnsafeMutablePointer<dm_hmm_dmirror_cmd>?) -> Int32, _ name: String,
                         _ address: UInt64, _ buffer: UnsafeMutableRawPointer, _ bytes: Int) -> Result<(pages: Int, faults: Int), MirrorError> {
        var cmd = dm_hmm_dmirror_cmd(addr: address, ptr: UInt64(UInt(bitPattern: buffer)),
                                     npages: (UInt64(bytes) + pageSize - 1) / pageSize, cpages: 0, faults: 0)
        guard call(fd, &cmd) == 0 else {
            let e = Errno.current
            return .failure(MirrorError(e, "\(name) at 0x\(String(address, radix: 16)) failed in the kernel's dmirror"))
        }
        return .success((Int(cmd.cpages), Int(cmd.faults)))
    }
}
