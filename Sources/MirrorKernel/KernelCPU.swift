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
    public init(region: Region, tracking: Bool = true, dax: Bool = false,
                truth: CPUTruth? = nil, kernel: KernelFeatures = .probe()) throws(Failure) {
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
                tracker = try FaultTracker(base: UnsafeMutableRawPointer(bitPattern: UInt(region.base))!,
                                           length: Int(region.length), backing: backing,
                                           mechanism: .eventsOnly, kernel: kernel)
            }
        }
        self.tracker = tracker
    }

    deinit { stop() }

    public func stop() {
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
    }

    public func populate(_ address: UInt64, _ length: UInt64, write: Bool) -> Errno? {
        guard let p = UnsafeMutableRawPointer(bitPattern: UInt(address)) else { return .EFAULT }
        return madvise(p, Int(length), write ? DM_MADV_POPULATE_WRITE : DM_MADV_POPULATE_READ) == 0 ? nil : Errno.current
    }

    public func clearSoftDirty() throws(MirrorError) {
        do { try SoftDirty.clear() } catch { throw MirrorError(error.errno, "clearing soft-dirty bits: \(error)") }
    }

    public var eventSequence: Int { tracker?.invalidationSequence ?? 0 }

    public func settleEvents() { tracker?.settle() }

    public func events(since: Int) -> (events: [Invalidation], overflowed: Bool) {
        guard let tracker, tracker.invalidationSequence != since else { return ([], false) }
        return tracker.invalidations(since: since)
    }

    public func registerAgain(start: UInt64, end: UInt64) {
        tracker?.registerAgain(start: start, end: end)
    }

    public func deviceRead(_ address: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if region.backing.sharedFD != nil {
            try aperture.read(fileOffset: region.fileOffset + (address - region.base), into: buffer, count: count)
        } else {
            try Aperture.readOwn(address: address, into: buffer, count: count)
        }
    }

    public func deviceWrite(_ address: UInt64, from buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        if region.backing.sharedFD != nil {
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
}
