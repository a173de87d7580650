/// The simulated device's page table: sparse, keyed by virtual page number.
///
/// Two levels, like a real radix page table but hashed: a PUD-level map holds
/// 1 GiB entries; a PMD-level map holds, per 2 MiB span, either ONE huge entry
/// or a block of 512 packed 8-byte PTE entries. So a densely mirrored 4 KiB
/// region costs about 8 bytes per page and a PMD costs one entry, whatever
/// part of it is looked up.
public final class DeviceTable: @unchecked Sendable {
    static let pmdShift: UInt64 = 9
    static let pudShift: UInt64 = 18
    static let ptesPerBlock = 512

    final class PTEBlock: @unchecked Sendable {
        let slots: UnsafeMutablePointer<UInt64>
        var used = 0
        init() {
            slots = .allocate(capacity: DeviceTable.ptesPerBlock)
            slots.initialize(repeating: 0, count: DeviceTable.ptesPerBlock)
        }
        deinit { slots.deallocate() }
    }

    enum Slot {
        case huge(UInt64)
        case ptes(PTEBlock)
    }

    private var puds: [UInt64: UInt64] = [:]
    private var pmds: [UInt64: Slot] = [:]
    /// Pages covered by entries (a PMD entry counts 512).
    public private(set) var mirroredPages: UInt64 = 0
    /// Entries stored (a PMD entry counts 1).
    public private(set) var entryCount = 0

    public init() {}

    /// The entry covering `vpn` and the page's index inside it.
    public func lookup(_ vpn: UInt64) -> (entry: DeviceEntry, index: UInt64)? {
        if !puds.isEmpty, let p = puds[vpn >> Self.pudShift], let e = DeviceEntry(packed: p) {
            return (e, vpn & ((1 << Self.pudShift) - 1))
        }
        switch pmds[vpn >> Self.pmdShift] {
        case .huge(let p)?:
            guard let e = DeviceEntry(packed: p) else { return nil }
            return (e, vpn & ((1 << Self.pmdShift) - 1))
        case .ptes(let block)?:
            guard let e = DeviceEntry(packed: block.slots[Int(vpn & 511)]) else { return nil }
            return (e, 0)
        case nil:
            return nil
        }
    }

    /// Stores `entry` for the span starting at `vpn` (aligned to its order),
    /// replacing whatever the span held.
    public func insert(_ entry: DeviceEntry, at vpn: UInt64) {
        precondition(vpn & (entry.pages - 1) == 0, "entry not aligned to its order")
        remove(vpn, vpn + entry.pages)
        switch entry.order {
        case 18:
            puds[vpn >> Self.pudShift] = entry.packed
        case 9:
            pmds[vpn >> Self.pmdShift] = .huge(entry.packed)
        default:
            let key = vpn >> Self.pmdShift
            let block: PTEBlock
            if case .ptes(let b)? = pmds[key] {
                block = b
            } else {
                block = PTEBlock()
            }
            block.slots[Int(vpn & 511)] = entry.packed
            block.used += 1
            if block.used == 1 { pmds[key] = .ptes(block) }
        }
        entryCount += 1
        mirroredPages += entry.pages
    }

    /// Stores 4 KiB entries for the pages [lo, hi) of one 2 MiB span (`entry`
    /// nil: that page gets none), replacing what the span held there: one
    /// hash lookup for the span, not three a page as `insert` takes.
    public func insertPTEs(_ lo: UInt64, _ hi: UInt64, _ entry: (UInt64) -> DeviceEntry?) {
        guard lo < hi else { return }
        precondition(lo >> Self.pmdShift == (hi - 1) >> Self.pmdShift, "a run of PTEs within one 2 MiB span")
        remove(lo, hi)
        let key = lo >> Self.pmdShift
        let block: PTEBlock
        if case .ptes(let b)? = pmds[key] { block = b } else { block = PTEBlock() }
        let before = block.used
        for vpn in lo..<hi {
            guard let e = entry(vpn) else { continue }
            precondition(e.order == 0, "insertPTEs takes 4 KiB entries")
            block.slots[Int(vpn & 511)] = e.packed
            block.used += 1
        }
        let added = block.used - before
        entryCount += added
        mirroredPages += UInt64(added)
        if before == 0 && added > 0 { pmds[key] = .ptes(block) }
    }

    /// Removes every page in [startVPN, endVPN); huge entries that straddle a
    /// bound are split so the pages outside the range stay mirrored (what a
    /// partial invalidation of a huge mapping leaves). Returns pages removed.
    @discardableResult
    public func remove(_ startVPN: UInt64, _ endVPN: UInt64) -> UInt64 {
        guard startVPN < endVPN, entryCount > 0 else { return 0 }
        var removed: UInt64 = 0
        if !puds.isEmpty {
            for key in (startVPN >> Self.pudShift)...((endVPN - 1) >> Self.pudShift) {
                guard let p = puds.removeValue(forKey: key), let e = DeviceEntry(packed: p) else { continue }
                entryCount -= 1
                mirroredPages -= e.pages
                let base = key << Self.pudShift
                // Keep the parts outside the range as PMD-order pieces of the same mapping.
                var piece = base
                while piece < base + e.pages {
                    let pEnd = piece + (1 << Self.pmdShift)
                    if pEnd <= startVPN || piece >= endVPN {
                        var sub = e
                        sub.order = 9
                        sub.pfn = e.pfn + (piece - base)
                        insertRaw(sub, at: piece)
                    } else {
                        keepOutside(e, base: base, from: piece, to: pEnd, removing: startVPN, endVPN)
                    }
                    piece = pEnd
                }
                removed += min(endVPN, base + e.pages) - max(startVPN, base)
            }
        }
        var key = startVPN >> Self.pmdShift
        let lastKey = (endVPN - 1) >> Self.pmdShift
        // Sparse tables: walk the stored keys instead of every 2 MiB of a huge range.
        if lastKey - key > UInt64(pmds.count) * 4 {
            for k in pmds.keys.filter({ $0 >= key && $0 <= lastKey }).sorted() {
                removed += removePMDSlot(k, startVPN, endVPN)
            }
            return removed
        }
        while key <= lastKey {
            removed += removePMDSlot(key, startVPN, endVPN)
            key += 1
        }
        return removed
    }

    private func removePMDSlot(_ key: UInt64, _ startVPN: UInt64, _ endVPN: UInt64) -> UInt64 {
        let base = key << Self.pmdShift
        let lo = max(startVPN, base), hi = min(endVPN, base + 512)
        switch pmds[key] {
        case .huge(let p)?:
            pmds.removeValue(forKey: key)
            guard let e = DeviceEntry(packed: p) else { return 0 }
            entryCount -= 1
            mirroredPages -= e.pages
            keepOutside(e, base: base, from: base, to: base + 512, removing: startVPN, endVPN)
            return hi - lo
        case .ptes(let b)?:
            let block = b
            var removed: UInt64 = 0
            for vpn in lo..<hi where block.slots[Int(vpn & 511)] != 0 {
                block.slots[Int(vpn & 511)] = 0
                block.used -= 1
                removed += 1
            }
            entryCount -= Int(removed)
            mirroredPages -= removed
            if block.used == 0 { pmds.removeValue(forKey: key) }
            return removed
        case nil:
            return 0
        }
    }

    /// Re-inserts, as 4 KiB entries, the pages of [from, to) of huge entry `e`
    /// (whose span starts at `base`) that lie outside [startVPN, endVPN).
    private func keepOutside(_ e: DeviceEntry, base: UInt64, from: UInt64, to: UInt64,
                                      removing startVPN: UInt64, _ endVPN: UInt64) {
        for vpn in from..<to where vpn < startVPN || vpn >= endVPN {
            insertRaw(DeviceEntry(pfn: e.pfn + (vpn - base), order: 0, writable: e.writable, zero: e.zero), at: vpn)
        }
    }

    private func insertRaw(_ e: DeviceEntry, at vpn: UInt64) {
        insert(e, at: vpn)
    }

    /// The first and last pages of [startVPN, endVPN) that have an entry, nil
    /// if none: a lookup per 2 MiB slot (or per stored slot, for a sparse
    /// table and a long range), not per page.
    public func occupied(_ startVPN: UInt64, _ endVPN: UInt64) -> (first: UInt64, last: UInt64)? {
        guard startVPN < endVPN, entryCount > 0 else { return nil }
        if !puds.isEmpty {
            // Rare (device-dax in 1 GiB entries): the plain way.
            var lo = startVPN, hi = endVPN
            while lo < hi && lookup(lo) == nil { lo += 1 }
            while hi > lo && lookup(hi - 1) == nil { hi -= 1 }
            return lo < hi ? (lo, hi - 1) : nil
        }
        let firstKey = startVPN >> Self.pmdShift, lastKey = (endVPN - 1) >> Self.pmdShift
        func pages(_ key: UInt64) -> (UInt64, UInt64)? {
            let base = key << Self.pmdShift
            let lo = max(startVPN, base), hi = min(endVPN, base + 512)
            switch pmds[key] {
            case .huge?: return (lo, hi - 1)
            case .ptes(let block)?:
                guard let f = (lo..<hi).first(where: { block.slots[Int($0 & 511)] != 0 }),
                      let l = (lo..<hi).reversed().first(where: { block.slots[Int($0 & 511)] != 0 }) else { return nil }
                return (f, l)
            case nil: return nil
            }
        }
        // A device access asks this on every hit: no allocation on the dense
        // path (the sparse one, a long range over few slots, sorts their keys).
        if lastKey - firstKey > UInt64(pmds.count) * 4 {
            let keys = pmds.keys.filter { $0 >= firstKey && $0 <= lastKey }.sorted()
            guard let first = keys.lazy.compactMap(pages).first,
                  let last = keys.reversed().lazy.compactMap(pages).first else { return nil }
            return (first.0, last.1)
        }
        var key = firstKey
        var first: (UInt64, UInt64)?
        while key <= lastKey, first == nil { first = pages(key); key += 1 }
        guard let first else { return nil }
        key = lastKey
        var last = pages(key)
        while last == nil, key > firstKey { key -= 1; last = pages(key) }
        return (first.0, (last ?? first).1)
    }

    /// Every entry overlapping [startVPN, endVPN), with the VPN its span starts at.
    public func entries(_ startVPN: UInt64, _ endVPN: UInt64) -> [(vpn: UInt64, entry: DeviceEntry)] {
        guard startVPN < endVPN, entryCount > 0 else { return [] }
        var out: [(UInt64, DeviceEntry)] = []
        if !puds.isEmpty {
            for key in (startVPN >> Self.pudShift)...((endVPN - 1) >> Self.pudShift) {
                if let p = puds[key], let e = DeviceEntry(packed: p) { out.append((key << Self.pudShift, e)) }
            }
        }
        let first = startVPN >> Self.pmdShift, last = (endVPN - 1) >> Self.pmdShift
        let keys: [UInt64] = last - first > UInt64(pmds.count) * 4
            ? pmds.keys.filter { $0 >= first && $0 <= last }.sorted()
            : Array(first...last)
        for key in keys {
            switch pmds[key] {
            case .huge(let p)?:
                if let e = DeviceEntry(packed: p) { out.append((key << Self.pmdShift, e)) }
            case .ptes(let block)?:
                let base = key << Self.pmdShift
                for vpn in max(startVPN, base)..<min(endVPN, base + 512) {
                    if let e = DeviceEntry(packed: block.slots[Int(vpn & 511)]) { out.append((vpn, e)) }
                }
            case nil:
                break
            }
        }
        return out.sorted { $0.0 < $1.0 }
    }

    public func removeAll() {
        puds.removeAll()
        pmds.removeAll()
        mirroredPages = 0
        entryCount = 0
    }

    /// Bytes this table holds on the heap, by its own accounting (hash table
    /// capacity × slot size, plus 4 KiB per PTE block). The benchmark checks it
    /// against malloc's own count.
    public var heapBytes: Int {
        var blocks = 0
        for slot in pmds.values { if case .ptes = slot { blocks += 1 } }
        return puds.capacity * (8 + 8) + pmds.capacity * (8 + MemoryLayout<Slot>.stride)
            + blocks * (Self.ptesPerBlock * 8 + 32)
    }
}
