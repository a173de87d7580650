#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import MirrorPolicy
import FaultTracking
import PageTables

/// The CPU side as the kernel tells it: PROCMAP_QUERY (or the maps text) for
/// VMAs, pagemap and PAGEMAP_SCAN for pages (CPUTruth), madvise to fault
/// in, /proc/self/clear_refs, the region's FaultTracker for events, and the
/// Aperture for the device's own access. Every system call the mirror makes
/// goes through here.
public final class KernelCPU: CPUSide, @unchecked Sendable {
    public let region: Region
    public let truth: CPUTruth
    public let vmaQuery: VMAQuery
    public let tracker: FaultTracker?
    let aperture: Aperture
    public let pageSize = UInt64(Syscall.pageSize)
    public let sharedWithoutPageMkwrite: Bool

    /// With `tracking`, a FaultTracker in events-only mode delivers the
    /// kernel's invalidation events (where this kernel can register the
    /// memory; else none arrive and revalidation alone keeps a mirror honest).
    /// Where the region's device-private pages live, and the tracker whose
    /// userfaultfd brings them home (shared by every mirror of the region).
    public let devicePages: DevicePages?
    public let migrationWalks: MigrationWalks
    /// The tracker of the mirror this one shares its region with (no registration of its own).
    let sharedTracker: FaultTracker?

    /// `sharing`: another mirror's CPU side on the same region, whose
    /// tracker holds the region's userfaultfd registration (one per range).
    public init(region: Region, tracking: Bool = true, dax: Bool = false,
                truth: CPUTruth? = nil, kernel: KernelFeatures = .probe(), sharing: KernelCPU? = nil) throws(Failure) {
        self.region = region
        switch region.backing {
        case .shmem: sharedWithoutPageMkwrite = true
        case .file(_, let fd, true): sharedWithoutPageMkwrite = dm_fs_magic(fd) == DM_TMPFS_MAGIC
        default: sharedWithoutPageMkwrite = false
        }
        if let truth { self.truth = truth } else { self.truth = try CPUTruth(scanAvailable: kernel.pagemapScan) }
        vmaQuery = try Failure.wrapping("open /proc/self/maps") { () throws(SystemCallError) in try VMAQuery() }
        if case .devdax(_, _, _, let size, _) = region.backing {
            aperture = Aperture(fd: region.backing.sharedFD, knownSize: size)
        } else {
            aperture = Aperture(fd: region.backing.sharedFD)
        }
        var tracker: FaultTracker?
        if tracking {
            let backing = TrackedMemory(kind: region.backing.kind, dax: dax)
            // Events only: a tracker that resolved faults itself would change
            // what the kernel maps (no THP, no huge zero page under MISSING).
            if TrackingMechanism.eventsOnly.refusal(for: backing, kernel: kernel) == nil {
                // Anonymous memory can hold device-private pages: their
                // MISSING faults are this tracker's to serve.
                var pool: DevicePrivatePool?
                if case .anonymous = region.backing {
                    pool = try Failure.wrapping("reserve the device-private pool") { () throws(SystemCallError) in
                        try DevicePrivatePool(base: region.base, length: Int(region.length))
                    }
                }
                tracker = try FaultTracker(base: UnsafeMutableRawPointer(bitPattern: UInt(region.base))!,
                                           length: Int(region.length), backing: backing,
                                           mechanism: .eventsOnly, kernel: kernel, devicePrivate: pool)
            }
        }
        self.tracker = tracker
        migrationWalks = sharing.flatMap { $0.region.base == region.base ? $0.migrationWalks : nil } ?? MigrationWalks()
        sharedTracker = sharing.flatMap { $0.region.base == region.base ? $0.eventSource : nil }
        if let shared = sharing?.devicePages, shared.pool.base == region.base {
            devicePages = shared
        } else if let tracker, let pool = tracker.devicePrivate {
            devicePages = DevicePages(pool: pool, tracker: tracker)
        } else {
            devicePages = nil
        }
    }

    deinit { stop() }

    /// The device reaches anonymous memory through process_vm_readv/writev,
    /// never a guarded memcpy and its signal handlers: for a process that is
    /// not daxmirror's (`daxmirror emulate`). Set before the first mirror.
    public static var ownMemoryThroughKernel: Bool {
        get { Aperture.ownMemoryThroughKernel }
        set { Aperture.ownMemoryThroughKernel = newValue }
    }

    public func stop() {
        // As closing the kernel's mirror evicts its device's pages: nothing
        // stays on a device once the tracker that brings pages home stops.
        if let d = devicePages, d.tracker === tracker, d.pool.count > 0, let uffd = d.tracker.userfaultfd {
            for i in 0..<d.pool.pages { _ = try? d.pool.bringHome(i, uffd: uffd) }
        }
        tracker?.stop()
        aperture.unmap()
    }

    public var seesMapOrder: Bool { truth.scanAvailable }
    public var layoutMethod: String { vmaQuery.method == .procmapQuery ? "procmap_query" : "maps" }
    public var softDirtyAvailable: Bool { SoftDirty.available }
    public var softDirtyEpoch: Int { SoftDirty.epoch }

    public func vmas(overlapping start: UInt64, _ end: UInt64, into out: inout [VMA]) throws(MirrorError) {
        do { try vmaQuery.vmas(overlapping: start, end, into: &out) }
        catch { throw MirrorError(error.errno, "reading the region's VMAs (\(vmaQuery.method.rawValue))") }
    }

    public func pages(_ startVPN: UInt64, _ endVPN: UInt64, vmas: [VMA], detail: TruthDetail,
                      into out: inout [CPUPage]) throws(MirrorError) {
        do { try truth.read(startVPN, endVPN, vmas: vmas, detail: detail, into: &out) }
        catch { throw MirrorError(error.errno ?? .EIO, error.message) }
        overlayDevicePages(startVPN, endVPN, into: &out)
    }

    public func populate(_ address: UInt64, _ length: UInt64, write: Bool) -> Errno? {
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return .EFAULT }
        return madvise(p, Int(length), write ? DM_MADV_POPULATE_WRITE : DM_MADV_POPULATE_READ) == 0 ? nil : Errno.current
    }

    public func clearSoftDirty() throws(MirrorError) {
        do { try SoftDirty.clear() } catch { throw MirrorError(error.errno, "clearing soft-dirty bits: \(error)") }
    }

    /// Where this CPU side hears the kernel's invalidations: its own tracker,
    /// or the one holding the region's registration for another mirror of it
    /// (the kernel's notifiers reach every mirror alike; it also serves the
    /// region's device pages).
    var eventSource: FaultTracker? { tracker ?? sharedTracker }

    public var eventSequence: Int { eventSource?.invalidationSequence ?? 0 }

    public func settleEvents() {
        // The tracker whose handler frees device pages at an unmap, too.
        eventSource?.settle()
        if let d = devicePages, let uffd = d.tracker.userfaultfd { d.pool.mapReturned(uffd: uffd) }
    }

    public func events(since: Int) -> (events: [Invalidation], overflowed: Bool) {
        guard let source = eventSource, source.invalidationSequence != since else { return ([], false) }
        return source.invalidations(since: since)
    }

    public func registerAgain(start: UInt64, end: UInt64) {
        tracker?.registerAgain(start: start, end: end)
    }

    public func deviceRead(_ address: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if reachesThroughFile {
            try aperture.read(fileOffset: region.fileOffset + (address - region.base), into: buffer, count: count)
        } else {
            try Aperture.readOwn(address: address, into: buffer, count: count)
        }
    }

    /// The device opens its own mapping of the backing (shared memory with a
    /// descriptor); otherwise it reaches the pages through this process's.
    private var reachesThroughFile: Bool { (region.backing.sharedFD ?? -1) >= 0 }

    public func deviceWrite(_ address: UInt64, from buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if reachesThroughFile {
            try aperture.write(fileOffset: region.fileOffset + (address - region.base), from: buffer, count: count)
        } else {
            try Aperture.writeOwn(address: address, from: buffer, count: count)
        }
    }

    public var writePath: String {
        switch region.backing {
        case .anonymous, .file(_, _, false): return "memcpy (guarded)"
        case .shmem: return "pwrite"
        case .file: return aperture.base == nil ? "aperture" : (aperture.isPersistentMemory ? "pwrite (DAX)" : (sharedWithoutPageMkwrite ? "pwrite" : "pwrite+fdatasync"))
        case .devdax: return aperture.base == nil ? "aperture" : (aperture.isPersistentMemory ? "pmem_memcpy_persist" : "memcpy+msync")
        }
    }

    // MARK: - device-private memory

    public var devicePrivateRefusal: String? {
        if devicePages != nil { return nil }
        switch region.backing {
        case .file(_, _, false):
            return "a MAP_PRIVATE file mapping accepts no userfaultfd MISSING registration, so its copy-on-write pages could not be caught on their way back from a device"
        case .anonymous:
            return "device-private pages need userfaultfd on the region (this mirror is untracked, or this kernel or user has no userfaultfd)"
        default:
            return "only anonymous memory moves to device-private memory"
        }
    }

    /// "move" (UFFDIO_MOVE, 6.8+), "copy" (UFFDIO_COPY) or "none".
    public var devicePrivateMechanism: String {
        guard let uffd = devicePages?.tracker.userfaultfd else { return "none" }
        return DevicePrivatePool.mechanism(uffd)
    }

    public var devicePrivateCount: Int { devicePages?.pool.count ?? 0 }

    public func migrateToDevice(_ moves: [DeviceMove], owner: Int, exclusive: Bool) throws(MirrorError) -> Int {
        guard let d = devicePages, let uffd = d.tracker.userfaultfd else {
            throw MirrorError(.EOPNOTSUPP, devicePrivateRefusal ?? "no device-private memory here")
        }
        let first = region.base / pageSize
        let indexed = moves.map { DevicePrivatePool.Move(index: Int($0.vpn - first), present: $0.present, writable: $0.writable,
                                                          vmaWritable: $0.vmaWritable, softDirty: $0.softDirty) }
        do { return try d.pool.migrate(indexed, device: owner, exclusive: exclusive, uffd: uffd, settle: { d.tracker.settle() }) }
        catch { throw MirrorError(error.errno, "moving pages to the device: \(error)") }
    }

    public func migrateHome(_ vpn: UInt64) throws(MirrorError) -> Bool {
        guard let d = devicePages, let uffd = d.tracker.userfaultfd else { return false }
        do { return try d.pool.bringHome(Int(vpn - region.base / pageSize), uffd: uffd) }
        catch { throw MirrorError(error.errno, "bringing a page home from the device: \(error)") }
    }

    public func devicePages(owner: Int) -> [UInt64] {
        guard let pool = devicePages?.pool, pool.count > 0 else { return [] }
        let first = region.base / pageSize
        return (0..<pool.pages).compactMap { i in
            pool.owner(ofPage: i).map { $0.device == owner && !$0.exclusive } == true ? first + UInt64(i) : nil
        }
    }

    public func deviceVMAWritable(_ startVPN: UInt64, _ endVPN: UInt64, _ writable: Bool) {
        guard let d = devicePages else { return }
        let first = region.base / pageSize
        let lo = max(startVPN, first), hi = min(endVPN, first + UInt64(d.pool.pages))
        guard lo < hi else { return }
        d.pool.vmaWritable(Int(lo - first)..<Int(hi - first), writable, uffd: d.tracker.userfaultfd)
    }

    public func devicePageRead(_ vpn: UInt64, offset: Int, into buffer: UnsafeMutableRawPointer, count: Int) {
        guard let d = devicePages else { return }
        buffer.copyMemory(from: d.pool.slot(Int(vpn - region.base / pageSize)) + offset, byteCount: count)
    }

    public func devicePageWrite(_ vpn: UInt64, offset: Int, from buffer: UnsafeRawPointer, count: Int) {
        guard let d = devicePages else { return }
        (d.pool.slot(Int(vpn - region.base / pageSize)) + offset).copyMemory(from: buffer, byteCount: count)
    }

    /// Marks the pages devices hold, which pagemap shows as absent.
    func overlayDevicePages(_ startVPN: UInt64, _ endVPN: UInt64, into out: inout [CPUPage]) {
        guard let pool = devicePages?.pool, pool.count > 0 else { return }
        let first = region.base / pageSize
        let lo = max(startVPN, first), hi = min(endVPN, first + UInt64(pool.pages))
        guard lo < hi else { return }
        for vpn in lo..<hi where out[Int(vpn - startVPN)].state == .notPresent {
            guard let (device, writable, exclusive) = pool.owner(ofPage: Int(vpn - first)) else { continue }
            out[Int(vpn - startVPN)].state = exclusive ? .deviceExclusive(owner: device) : .devicePrivate(owner: device)
            out[Int(vpn - startVPN)].pfn = vpn - first
            out[Int(vpn - startVPN)].devicePrivateWritable = writable
        }
    }
}

/// A region's device-private pool and the tracker serving its faults.
public struct DevicePages: @unchecked Sendable {
    public let pool: DevicePrivatePool
    public let tracker: FaultTracker
}
