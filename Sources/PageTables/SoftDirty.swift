#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import Synchronization

/// This process's soft-dirty bits (CONFIG_MEM_SOFT_DIRTY;
/// Documentation/admin-guide/mm/soft-dirty.rst): pagemap bit 55, cleared for
/// the whole process by writing 4 to /proc/self/clear_refs.
///
/// Why the mirror cares: HMM reports a page WRITE when the CPU's PTE is
/// writable, and no user-space interface shows that bit. Clearing soft-dirty
/// write-protects every PTE of the process and clears its soft-dirty bit; from
/// then on the kernel makes a PTE writable only in a write fault, which also
/// sets soft-dirty (and turns on write-notify for shared mappings, so read
/// faults map read-only). So after a clear, "writable" is "soft-dirty" (for a
/// private page: and exclusive), until something write-protects a page
/// without clearing the bit: fork (copy-on-write) and the writeback of a DAX
/// file (write-protects dirty pages; periodic, every dirty_writeback_centisecs).
///
/// A clear is also an invalidation: the kernel calls every mmu notifier of the
/// process for the whole address space (MMU_NOTIFY_SOFT_DIRTY), so each device
/// drops every entry. `epoch` counts the clears this process made through here
/// so that every DeviceMirror in it can do the same.
public enum SoftDirty {
    /// Whether this kernel keeps soft-dirty bits: a page written after a clear
    /// must show bit 55. (Probing clears once, and counts in `epoch`.)
    public static let available: Bool = {
        let size = Syscall.pageSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return false }
        defer { munmap(p, size) }
        p.storeBytes(of: 1, as: UInt8.self)
        guard (try? writeClearRefs()) != nil else { return false }
        p.storeBytes(of: 2, as: UInt8.self)
        return (try? Pagemap().entry(at: UInt64(UInt(bitPattern: p))))?.softDirty ?? false
    }()

    private static let clears = Atomic<Int>(0)

    /// How many times this process cleared its soft-dirty bits through `clear()`.
    public static var epoch: Int { clears.load(ordering: .acquiring) }

    /// Clears the soft-dirty bits of the whole process (and write-protects all
    /// its PTEs). Every device mirroring the process must drop its entries.
    public static func clear() throws(SystemCallError) {
        try writeClearRefs()
    }

    private static func writeClearRefs() throws(SystemCallError) {
        let fd = try OwnedFD.open("/proc/self/clear_refs", O_WRONLY)
        _ = try Syscall.retrying("write", "/proc/self/clear_refs") { Glibc.write(fd.rawValue, "4", 1) }
        clears.add(1, ordering: .releasing)
    }
}
