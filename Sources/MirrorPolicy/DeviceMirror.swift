import DaxCore
import PageTables

/// A simulated device that mirrors one region of this process's address
/// space, with the semantics of the kernel's HMM test driver (lib/test_hmm.c,
/// "dmirror"): device reads and writes go through the device's own table;
/// a missing entry (or a read-only one, for a write) makes the device fault
/// the range in — the user-space `hmm_range_fault` — and counts one fault;
/// anything that changes the CPU mapping removes the affected entries before
/// the device uses them again.
///
/// How invalidations reach the table (the kernel's mmu notifier, here):
///  1. events from the CPU side (userfaultfd): UNMAP, REMOVE, REMAP, FORK
///     (FORK drops every entry of a private region: the CPU write-protected
///     its pages for copy-on-write);
///  2. no event exists for mprotect or mremap-in-place: before every device
///     operation the region's VMA layout is compared with the one last seen
///     and changed ranges are dropped, as the kernel's notifier would have
///     dropped them (DeviceMirror+Layout.swift);
///  3. no event exists for truncate, hole punch, writeback, COW or page
///     migration (compaction) either: before using entries, the device
///     checks each against the page table (same PFN, still present, still
///     exclusive for a private writable page) and drops what disagrees
///     (`staleDropped` counts them). This is what makes a stale entry
///     impossible to use, whatever the CPU did.
/// Every question to the kernel goes through `cpu` (a `CPUSide`): this class
/// and its extensions hold the policy only, in a module that cannot call
/// the kernel (it imports neither Glibc nor the C shim nor libpmem; the
/// test command checks). MirrorKernel makes the mirror for a region of
/// this process (`DeviceMirror(region:)`, KernelCPU). The cost of an access follows
/// the pages it touches: one VMA query of the region, one pagemap read of
/// the pages used, and the copy (DeviceMirror+Access.swift).
public final class DeviceMirror: @unchecked Sendable {
    public let region: Region
    /// The device this mirror belongs to (the kernel's dmirror minor): pages
    /// migrated through any mirror of it are this device's private pages.
    public let device: Int
    public let table = DeviceTable()
    public let cpu: any CPUSide
    let pageSize: UInt64

    /// Faults taken by device operations since the mirror was created.
    public internal(set) var faults = 0
    /// Entries found stale by revalidation before use (no event had removed them).
    public internal(set) var staleDropped = 0
    /// Pages removed by invalidations (events, VMA changes, notifications).
    public internal(set) var invalidatedPages: UInt64 = 0
    /// Soft-dirty clears this mirror made (each one invalidates every device).
    public internal(set) var softDirtyClears = 0
    /// How long a range fault keeps retrying against concurrent invalidations.
    public var busyTimeout: Double = 2.0

    /// For device-dax: the order the kernel maps it with (smaps KernelPageSize).
    public let devdaxOrder: UInt8?
    /// 1 GiB device-dax spans the mirror faulted in: pagemap and PAGEMAP_SCAN
    /// report nothing for PUD mappings, so presence there is the mirror's own
    /// record (dropped by any invalidation); the PFN is the device's physical
    /// base + offset (sysfs), the order smaps' KernelPageSize.
    var populatedPUDs = Set<UInt64>()
    var ownSequence = 0
    var eventsSeen = 0
    /// Migration walks (MigrationWalks) already applied.
    var walksSeen = 0
    var lastLayout: [VMA] = []
    /// The CPU side's soft-dirty epoch when the table last dropped everything for a clear.
    var softDirtySeen = 0
    /// Kept between accesses so that a hit allocates nothing.
    var vmaScratch: [VMA] = []
    var layoutScratch: [VMA] = []
    var pageScratch: [CPUPage] = []

    /// Where the mirror learns the CPU's write bit from (HMM's WRITE code).
    public enum WriteBitSource: String, Sendable, CaseIterable {
        /// Soft-dirty bits the mirror clears (at start, after a fork, after
        /// its VMAs change): exact, except after the writeback of a DAX file,
        /// which write-protects pages and tells nobody in user space. Each
        /// clear write-protects every PTE of the process and invalidates
        /// every device mapping of it: the observer's cost.
        case softDirty = "soft-dirty"
        /// pagemap alone (no soft-dirty in this kernel, device-dax, or chosen
        /// to spare the process the clears): private pages WRITE from
        /// pagemap's exclusive bit, shared file pages only where the device
        /// faulted them for writing, shmem and device-dax always.
        case pagemap = "pagemap"
    }
    public let writeBit: WriteBitSource
    /// The region maps a file on a DAX filesystem (MAP_SYNC worked).
    let fileDAX: Bool
    /// The region's VMAs are DAX (vma_is_dax): a shared or a private mapping
    /// of a DAX file, or device-dax. Such memory is mirrored, never migrated.
    public var mapsDAX = false
    /// A shared mapping whose backing has no page_mkwrite (shmem, memfd,
    /// tmpfs files): when mprotect gives write permission back, the kernel
    /// upgrades none of its PTEs (mprotect_fixup asks vma_wants_writenotify
    /// with the old, read-only vm_page_prot), so every page stays
    /// write-protected until it is written again, while its soft-dirty bit
    /// still says "written". DAX and disk files have page_mkwrite: their
    /// dirty, soft-dirty PTEs become writable again, as the rule expects.
    let writeRestoreProtectsAll: Bool
    /// Soft-dirty must be cleared before the write bit means anything again.
    var softDirtyStale = false

    /// Starts mirroring `region` as `cpu` shows it (the kernel, or a fake).
    public init(region: Region, cpu: any CPUSide, dax: Bool = false, devdaxOrder: UInt8? = nil,
                writeBit: WriteBitSource? = nil, device: Int = 0) throws(Failure) {
        self.region = region
        self.device = device
        self.cpu = cpu
        pageSize = cpu.pageSize
        if case .file = region.backing { fileDAX = dax } else { fileDAX = false }
        writeRestoreProtectsAll = cpu.sharedWithoutPageMkwrite
        self.devdaxOrder = devdaxOrder
        if case .devdax = region.backing { mapsDAX = true }
        if case .file = region.backing, dax { mapsDAX = true }
        // Device-dax keeps pagemap: its 1 GiB entries are invisible to soft-dirty.
        let softDirtyUsable = devdaxOrder == nil && cpu.softDirtyAvailable
        switch writeBit {
        case .softDirty? where !softDirtyUsable:
            throw Failure(.unsupported, devdaxOrder != nil
                          ? "write-bit soft-dirty: device-dax maps in entries soft-dirty cannot see; use write-bit pagemap"
                          : "write-bit soft-dirty: this kernel keeps no soft-dirty bits (CONFIG_MEM_SOFT_DIRTY); use write-bit pagemap")
        case let chosen?: self.writeBit = chosen
        case nil: self.writeBit = softDirtyUsable ? .softDirty : .pagemap
        }
        eventsSeen = cpu.eventSequence
        walksSeen = cpu.migrationWalks.walks.count
        do {
            try cpu.vmas(overlapping: region.base, region.end, into: &vmaScratch)
            lastLayout = layout(vmaScratch)
            if self.writeBit == .softDirty { try clearSoftDirty() }
        } catch {
            throw Failure.from(SystemCallError("start the mirror", nil, errno: error.errno), doing: "start the mirror (\(error.message))")
        }
        softDirtySeen = cpu.softDirtyEpoch
    }

    deinit { cpu.stop() }

    /// Grows with every invalidation the mirror learns of; a range fault that
    /// sees it change while it walked retries (HMM's sequence rule).
    public var sequence: Int { ownSequence + cpu.eventSequence + cpu.softDirtyEpoch }

    func clearSoftDirty() throws(MirrorError) {
        try cpu.clearSoftDirty()
        softDirtyClears += 1
    }
}
