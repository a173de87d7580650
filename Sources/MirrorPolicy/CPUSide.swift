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
    /// Stops event delivery and unmaps the device's own view.
    func stop()
}
