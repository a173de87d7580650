import PageTables
/// What the kernel's page table says of one page right now, read without
/// faulting anything in (the CPU side that `check` and SNAPSHOT compare with).
public struct CPUPage: Sendable, Equatable {
    public enum State: Sendable, Equatable {
        /// No VMA: hmm_range_fault would report ERROR / EFAULT.
        case unmapped
        /// A VMA without read permission (PROT_NONE): ERROR / EFAULT.
        case inaccessible
        /// Mapped VMA, no page table entry yet.
        case notPresent
        case present
        /// Migrated to device `owner`'s private memory: not present to the
        /// CPU (the kernel keeps a device-private swap entry), `pfn` is the
        /// device page, `devicePrivateWritable` its permission.
        case devicePrivate(owner: Int)
        /// Held for device `owner`'s exclusive access (make_device_exclusive):
        /// not present to the CPU, whose next access takes it back; `pfn` is
        /// the device's copy.
        case deviceExclusive(owner: Int)
    }
    public var state: State
    public var pfn: UInt64 = 0
    /// The order the kernel maps the page with (0, 9, 18).
    public var order: UInt8 = 0
    public var zero = false
    /// pagemap PM_MMAP_EXCLUSIVE: an anonymous page no other process maps.
    public var exclusive = false
    /// pagemap PM_FILE: page cache / shmem / DAX rather than anonymous.
    public var fileOrShared = false
    /// pagemap bit 55: written since the last clear (or the VMA is new).
    public var softDirty = false
    /// pagemap bit 57: write-protected by userfaultfd.
    public var uffdWriteProtected = false
    public var vmaWritable = false
    public var vmaShared = false
    /// For a device-private page: the device may write it.
    public var devicePrivateWritable = false

    public init(state: State) { self.state = state }

    /// What the VMA and the page's sharing allow (cpuMayWriteWithoutCopyOnWrite).
    public var writableWithoutCopyOnWrite: Bool {
        cpuMayWriteWithoutCopyOnWrite(vmaWritable: vmaWritable, vmaShared: vmaShared, exclusive: exclusive, fileOrShared: fileOrShared)
    }
}

/// How much of a page's truth a reader needs.
public enum TruthDetail: Sendable {
    /// Presence, PFN and the pagemap bits: one pagemap read.
    case presence
    /// Also the mapping order and the huge zero page (PAGEMAP_SCAN, where the kernel has it).
    case full
}
