import PageTables

/// One entry of the simulated device's page table: what `hmm_range_fault`
/// hands a driver for a page (PFN, WRITE, map order), plus whether the PFN is
/// the kernel's zero page. A huge entry (order 9 or 18) is ONE entry for its
/// whole 2 MiB / 1 GiB span; `pfn(at:)` resolves a page inside it.
public struct DeviceEntry: Sendable, Equatable, CustomStringConvertible {
    /// PFN of the first page the entry covers.
    public var pfn: UInt64
    /// log2(pages): 0 (4 KiB PTE), 9 (2 MiB PMD) or 18 (1 GiB PUD).
    public var order: UInt8
    public var writable: Bool
    /// The kernel's (huge) zero page: reads as zeros, never written.
    public var zero: Bool
    /// The page is in the device's own private memory (migrated there):
    /// `pfn` is the device page, not a CPU one.
    public var devicePrivate: Bool
    /// An ATOMIC entry (make_device_exclusive): the device holds the page for
    /// exclusive access (its bytes in the device's memory, as for
    /// `devicePrivate`) until any CPU access; it reads, and never writes:
    /// a device write faults, which ends the exclusivity.
    public var atomic: Bool

    public init(pfn: UInt64, order: UInt8 = 0, writable: Bool, zero: Bool = false, devicePrivate: Bool = false,
                atomic: Bool = false) {
        self.pfn = pfn
        self.order = order
        self.writable = writable && !atomic
        self.zero = zero
        self.devicePrivate = devicePrivate || atomic
        self.atomic = atomic
    }

    public var pages: UInt64 { 1 << UInt64(order) }

    /// The PFN of the page `index` pages into the entry's span.
    public func pfn(at index: UInt64) -> UInt64 { pfn + index }

    /// The dmirror snapshot code of any page of this entry.
    public var code: SnapshotCode {
        if atomic { return .read }
        return devicePrivate ? .devicePrivate(writable: writable) : .mapped(writable: writable, zero: zero, order: order)
    }

    public var description: String {
        "\(atomic ? "atomic " : "")\(devicePrivate ? "device page" : "pfn") 0x\(String(pfn, radix: 16)) order \(order) \(code)"
    }

    // Packed form used by the table: 8 bytes per entry.
    //   bits 0–53 PFN, 54 atomic, 55–59 order, 60 device-private, 61 write, 62 zero, 63 valid.
    static let validBit: UInt64 = 1 << 63
    var packed: UInt64 {
        (pfn & ((1 << 54) - 1)) | (atomic ? 1 << 54 : 0) | (UInt64(order) << 55) | (writable ? 1 << 61 : 0) | (zero ? 1 << 62 : 0)
            | (devicePrivate ? 1 << 60 : 0) | DeviceEntry.validBit
    }
    init?(packed p: UInt64) {
        guard p & DeviceEntry.validBit != 0 else { return nil }
        pfn = p & ((1 << 54) - 1)
        atomic = p & (1 << 54) != 0
        order = UInt8((p >> 55) & 0x1f)
        writable = p & (1 << 61) != 0
        zero = p & (1 << 62) != 0
        devicePrivate = p & (1 << 60) != 0
    }
}

