import DaxCore
import PageTables

/// What the kernel's page table says against what the device holds: dmirror's
/// SNAPSHOT, and `check`, which lists every disagreement.
extension DeviceMirror {
    /// dmirror's SNAPSHOT: the CPU page table as the mirror's walk sees it,
    /// without faulting anything in — one code per page.
    public func snapshot(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> [SnapshotCode] {
        let (s, e) = try pages(address, count)
        let vmas = try synchronize()
        let truth = try readTruth(s, e, vmas, detail: .full)
        return truth.enumerated().map { i, p in
            switch p.state {
            case .unmapped, .inaccessible: return .error
            case .notPresent: return .none
            case .deviceExclusive:
                // A device-exclusive entry is not present to a snapshot's walk.
                return .none
            case .devicePrivate(let owner):
                // Another device's page is not present to this one.
                return owner == device ? .devicePrivate(writable: p.devicePrivateWritable) : .none
            case .present:
                let dev = table.lookup(s + UInt64(i)).map { $0.entry.writable && $0.entry.pfn(at: $0.index) == p.pfn } ?? false
                return .mapped(writable: cpuWritable(p, deviceWritable: dev), zero: p.zero, order: p.order)
            }
        }
    }

    /// The device table's own view, in the same codes (NONE where no entry).
    public func deviceSnapshot(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> [SnapshotCode] {
        let (s, e) = try pages(address, count)
        return (s..<e).map { table.lookup($0)?.entry.code ?? .none }
    }

    /// One disagreement between the device table and the kernel's page table,
    /// over a run of pages.
    public struct Disagreement: Sendable, Equatable, CustomStringConvertible {
        public var start: UInt64
        public var end: UInt64
        public var reason: String
        public var device: String
        public var kernel: String
        public var description: String {
            "0x\(String(start, radix: 16))-0x\(String(end, radix: 16)): \(reason) (device \(device), kernel \(kernel))"
        }
    }

    /// Compares the table's entries in [address, address+count) (default:
    /// the whole region) with pagemap / PAGEMAP_SCAN and the VMAs, and lists
    /// every disagreement. First it applies what the device would apply
    /// before any use — pending events and, unless `strict`, revalidation of
    /// every entry (`revalidated` counts the entries that dropped): changes
    /// that send no event (a CPU write replacing the zero page, a truncate
    /// behind the mirror's back) are caught there. With `strict`, such stale
    /// entries are reported as disagreements instead.
    public func check(_ address: UInt64? = nil, _ count: UInt64? = nil,
                      strict: Bool = false) throws(MirrorError) -> (disagreements: [Disagreement], revalidated: Int) {
        let vmas = try synchronize()
        let (s, e) = try pages(address ?? region.base, count ?? region.length)
        // One reading of the truth for both steps: pages move on their own
        // (khugepaged, compaction), and two readings could disagree.
        let truth = try readTruth(s, e, vmas, detail: .full)
        let before = staleDropped
        if !strict { try revalidate(s, e, vmas, truth: truth) }
        let revalidated = staleDropped - before
        var out: [Disagreement] = []
        func note(_ vpn: UInt64, _ reason: String, _ dev: String, _ ker: String) {
            if var last = out.last, last.end == vpn * pageSize, last.reason == reason {
                last.end += pageSize
                out[out.count - 1] = last
            } else {
                out.append(Disagreement(start: vpn * pageSize, end: (vpn + 1) * pageSize, reason: reason,
                                        device: dev, kernel: ker))
            }
        }
        for (start, entry) in table.entries(s, e) {
            for vpn in max(start, s)..<min(start + entry.pages, e) {
                let p = truth[Int(vpn - s)]
                let want = entry.pfn(at: vpn - start)
                // A huge entry reaching outside the range is checked inside it only.
                let dev = "pfn 0x\(String(want, radix: 16)) \(entry.code)"
                if entry.devicePrivate {
                    if p.state != heldState(entry) || p.pfn != want {
                        note(vpn, "the device maps a private page it does not hold", dev, "\(p.state)")
                    } else if entry.writable && !p.devicePrivateWritable {
                        note(vpn, "the device may write its page read-only", dev, "read-only")
                    }
                    continue
                }
                guard p.state == .present else {
                    note(vpn, "the device maps a page the CPU does not", dev, "\(p.state)")
                    continue
                }
                let ker = "pfn 0x\(String(p.pfn, radix: 16)) order \(p.order)\(p.zero ? " zero" : "")"
                if p.pfn != want { note(vpn, "PFN differs", dev, ker) }
                // A device may map part of a huge page with smaller entries (an
                // invalidation split its entry); a larger entry than the CPU's
                // would reach pages the CPU no longer maps as one.
                else if self.cpu.seesMapOrder && entry.order > p.order { note(vpn, "map order differs", dev, ker) }
                else if p.zero != entry.zero { note(vpn, "zero page differs", dev, ker) }
                else if entry.writable && !p.writableWithoutCopyOnWrite {
                    note(vpn, "the device may write where the CPU may not", dev,
                         ker + (p.vmaWritable ? " shared-by-COW" : " read-only"))
                }
            }
        }
        return (out, revalidated)
    }

    /// How device writes reach memory: "pwrite (DAX)", "pwrite+fdatasync" (a
    /// file that is not pmem), "pwrite" (shmem, tmpfs), "pmem_memcpy_persist"
    /// (device-dax) or "memcpy (guarded)" (anonymous memory). See Aperture.
    public var writePath: String { cpu.writePath }
}
