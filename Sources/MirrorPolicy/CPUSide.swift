import DaxCore
import PageTables

/// Everything a Mirror learns from, or does to, the CPU side of the process:
/// the VMAs of a range, each page's truth, faulting pages in, the soft-dirty
/// clear, the invalidation events, and the device's own way to the memory.
/// The Mirror holds the policy (HMM's rules); this is the page table it
/// applies them to. `KernelCPU` speaks to the kernel; a fake one (an
/// in-memory page table, in the tests) lets the policy be tested without
/// root or a kernel.
public protocol CPUSide: AnyObject {
    var pageSize: UInt64 { get }
    /// The mapping order and the huge zero page are visible (PAGEMAP_SCAN);
    /// without it every page reads as order 0.
    var seesMapOrder: Bool { get }
    /// How the VMAs are read: "procmap_query" (the range only) or "maps".
    var layoutMethod: String { get }
    /// The process keeps soft-dirty bits (where the write bit comes from).
    var softDirtyAvailable: Bool { get }
    /// Clears of this process's soft-dirty bits so far, by any mirror in it:
    /// each one invalidated every device of the process.
    var softDirtyEpoch: Int { get }
    /// The region is a shared mapping whose backing has no page_mkwrite
    /// (shmem, memfd, tmpfs): see Mirror.writeRestoreProtectsAll.
    var sharedWithoutPageMkwrite: Bool { get }

    /// The VMAs overlapping [start, end), sorted, whole, into `out`.
    func vmas(overlapping start: UInt64, _ end: UInt64, into out: inout [VMA]) throws(MirrorError)
    /// The truth of pages [startVPN, endVPN), given the VMAs there, into `out`.
    func pages(_ startVPN: UInt64, _ endVPN: UInt64, vmas: [VMA], detail: TruthDetail,
               into out: inout [CPUPage]) throws(MirrorError)
    /// Faults [address, address+length) in as MADV_POPULATE_READ/WRITE would:
    /// nil, or the errno it failed with.
    func populate(_ address: UInt64, _ length: UInt64, write: Bool) -> Errno?
    /// Clears the process's soft-dirty bits (write-protects every PTE).
    func clearSoftDirty() throws(MirrorError)

    /// Grows with every invalidation event (unmap, remove, remap, fork).
    var eventSequence: Int { get }
    /// Waits until the events of every CPU-side change that has returned are
    /// counted in `eventSequence` (the kernel's notifiers are synchronous;
    /// user space hears of them a moment later).
    func settleEvents()
    /// Events numbered `since` and later; `overflowed`: some were lost.
    func events(since: Int) -> (events: [Invalidation], overflowed: Bool)
    /// A new VMA in [start, end) must deliver events too.
    func registerAgain(start: UInt64, end: UInt64)

    /// The device's own access to the bytes at `address` (never a CPU load:
    /// see Aperture), `count` bytes within one page.
    func deviceRead(_ address: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError)
    func deviceWrite(_ address: UInt64, from buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError)
    /// How device writes reach memory (see Mirror.writePath).
    var writePath: String { get }

    // Device-private memory (the kernel's ZONE_DEVICE pages, lib/test_hmm.c).
    /// Why no page of this region can move to a device here (nil: they can).
    var devicePrivateRefusal: String? { get }
    /// How a page moves ("copy": UFFDIO_COPY back on the CPU's touch).
    var devicePrivateMechanism: String { get }
    /// Pages devices hold in the region now; `pages` reports each as
    /// `.devicePrivate(owner:)` or `.deviceExclusive(owner:)`, absent to the CPU.
    var devicePrivateCount: Int { get }
    /// Moves `moves` (sorted) to device `owner` (`exclusive`: held for its
    /// exclusive access instead): the CPU loses them until it touches them.
    /// Returns how many moved.
    func migrateToDevice(_ moves: [DeviceMove], owner: Int, exclusive: Bool) throws(MirrorError) -> Int
    /// The migrations' walks over this region, shared by every mirror of it.
    var migrationWalks: MigrationWalks { get }
    /// The pages device `owner` holds in the region, whatever their VMA now.
    func devicePages(owner: Int) -> [UInt64]
    /// An mprotect took write permission from [startVPN, endVPN)
    /// (`writable` false: the device pages there become read-only) or gave
    /// it back (true: they stay read-only, as the kernel upgrades no
    /// device-private entry, but come home into a writable VMA; and pages
    /// that came home from a device without a soft-dirty bit stay read-only
    /// too, as the kernel's do after a soft-dirty clear). Called for every
    /// write restore, device pages or not.
    func deviceVMAWritable(_ startVPN: UInt64, _ endVPN: UInt64, _ writable: Bool)
    /// Brings page `vpn` home from the device holding it (the kernel's
    /// migrate_to_ram); false if no device held it.
    func migrateHome(_ vpn: UInt64) throws(MirrorError) -> Bool
    /// The device's own access to its private page at `vpn`: `count` bytes
    /// from `offset` within the page.
    func devicePageRead(_ vpn: UInt64, offset: Int, into buffer: UnsafeMutableRawPointer, count: Int)
    func devicePageWrite(_ vpn: UInt64, offset: Int, from buffer: UnsafeRawPointer, count: Int)
    /// Stops event delivery and unmaps the device's own view.
    func stop()
}

/// One page a migration moves to a device.
public struct DeviceMove: Sendable, Equatable {
    public var vpn: UInt64
    /// The CPU has the page (else the device page starts zeroed).
    public var present: Bool
    /// The device may write it.
    public var writable: Bool
    /// Its VMA is writable, and its PTE carries a soft-dirty bit an
    /// mprotect may upgrade by (a write-protected page's does not count):
    /// how the page may come home (see DevicePrivatePool).
    public var vmaWritable: Bool
    public var softDirty: Bool
    public init(vpn: UInt64, present: Bool, writable: Bool, vmaWritable: Bool = true, softDirty: Bool? = nil) {
        self.vpn = vpn
        self.present = present
        self.writable = writable
        self.vmaWritable = vmaWritable
        self.softDirty = softDirty ?? present
    }
}

/// The kernel's MMU_NOTIFY_MIGRATE: each window a migration walks (to the
/// device or back) invalidates [start, end) for every device but the one
/// migrating, whether or not a page moved. One log per region, shared by its
/// mirrors (which are used from one thread, as a scenario is).
public final class MigrationWalks: @unchecked Sendable {
    public struct Walk: Sendable, Equatable {
        public var startVPN: UInt64
        public var endVPN: UInt64
        public var owner: Int
    }
    public private(set) var walks: [Walk] = []
    public init() {}
    public func note(_ startVPN: UInt64, _ endVPN: UInt64, owner: Int) {
        walks.append(Walk(startVPN: startVPN, endVPN: endVPN, owner: owner))
    }
}
