/// The per-page codes of `lib/test_hmm_uapi.h` (HMM_DMIRROR_PROT_*).
public struct SnapshotCode: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt8
    public init(rawValue: UInt8) { self.rawValue = rawValue }
    public static let none: SnapshotCode = []
    public static let read = SnapshotCode(rawValue: 0x01)
    public static let write = SnapshotCode(rawValue: 0x02)
    public static let pmd = SnapshotCode(rawValue: 0x04)
    public static let pud = SnapshotCode(rawValue: 0x08)
    public static let zero = SnapshotCode(rawValue: 0x10)
    public static let error = SnapshotCode(rawValue: 0xFF)
    /// A page in the asking device's own private memory (with READ or WRITE).
    /// The kernel's REMOTE (0x30) never appears in a snapshot: another
    /// device's private page is not present to this one (NONE).
    public static let devicePrivateLocal = SnapshotCode(rawValue: 0x20)

    public var description: String {
        if self == .error { return "ERROR" }
        if isEmpty { return "NONE" }
        var names = [(SnapshotCode.read, "READ"), (.write, "WRITE"), (.pmd, "PMD"), (.pud, "PUD"), (.zero, "ZERO")]
            .filter { contains($0.0) }.map(\.1)
        if contains(.devicePrivateLocal) { names.insert("DEV_PRIVATE_LOCAL", at: 0) }
        return names.joined(separator: "|")
    }
}

extension SnapshotCode {
    /// dmirror's code for a mapped page: WRITE or READ; ZERO for the 4 KiB
    /// zero page only (is_zero_pfn(): the huge zero page — a DAX hole, an
    /// anonymous THP read — is READ|PMD, as the kernel's own
    /// HMM_DMIRROR_SNAPSHOT reports it); PMD for order 9, PUD for order 18.
    /// The one place this rule is written.
    public static func mapped(writable: Bool, zero: Bool, order: UInt8) -> SnapshotCode {
        var c: SnapshotCode = writable ? .write : .read
        if zero && order == 0 { c.insert(.zero) }
        if order == 9 { c.insert(.pmd) } else if order == 18 { c.insert(.pud) }
        return c
    }

    /// dmirror's code for a device-private page its owner asks about.
    public static func devicePrivate(writable: Bool) -> SnapshotCode {
        [.devicePrivateLocal, writable ? .write : .read]
    }
}

/// When the CPU may write a page without a fault: only in a writable VMA,
/// and there only if the mapping is shared or the page is a private
/// anonymous page no other process maps (anything else is copy-on-write
/// first). The one place this rule is written — the mirror's CPU pages and
/// inspect's codes both ask it; the write bit's source (soft-dirty,
/// pagemap) narrows it.
public func cpuMayWriteWithoutCopyOnWrite(vmaWritable: Bool, vmaShared: Bool, exclusive: Bool, fileOrShared: Bool) -> Bool {
    vmaWritable && (vmaShared || (exclusive && !fileOrShared))
}

extension Array where Element == SnapshotCode {
    /// Run-length hex, e.g. "16*512,00*3,ff*1": code (two hex digits) * count.
    public var runLengthHex: String {
        var out: [String] = []
        var i = 0
        while i < count {
            var j = i
            while j < count && self[j] == self[i] { j += 1 }
            let hex = String(self[i].rawValue, radix: 16)
            out.append("\(hex.count == 1 ? "0" + hex : hex)*\(j - i)")
            i = j
        }
        return out.joined(separator: ",")
    }
}
