import Testing
@testable import MirrorPolicy
@testable import MirrorKernel

@Suite("device table")
struct DeviceTableTests {
    @Test func hugeEntryIsOneEntryAndResolvesEveryPage() {
        let t = DeviceTable()
        t.insert(DeviceEntry(pfn: 0x40000, order: 9, writable: true), at: 0x12345 << 9)
        #expect(t.entryCount == 1 && t.mirroredPages == 512)
        for i: UInt64 in [0, 1, 255, 511] {
            let hit = t.lookup((0x12345 << 9) + i)
            #expect(hit?.entry.pfn(at: hit!.index) == 0x40000 + i)
            #expect(hit?.entry.code == [.write, .pmd])
        }
        #expect(t.lookup(0x12346 << 9) == nil)
        #expect(t.lookup((0x12345 << 9) - 1) == nil)
    }

    /// A run of 4 KiB entries stored at once leaves the table exactly as the
    /// same entries stored one by one: over empty spans, existing PTEs, a
    /// PMD it splits and a PUD it cuts into, with holes in the run.
    @Test func aRunOfPTEsEqualsThePagesOneByOne() {
        var rng = SystemRandomNumberGenerator()
        for round in 0..<100 {
            let (a, b) = (DeviceTable(), DeviceTable())
            let base: UInt64 = 5 << 18
            for t in [a, b] {
                t.insert(DeviceEntry(pfn: 0x200000, order: 18, writable: true), at: base)
                t.insert(DeviceEntry(pfn: 0x90000, order: 9, writable: false), at: base + (1 << 18))
                for v in UInt64(0)..<40 { t.insert(DeviceEntry(pfn: 0x7000 + v, writable: v % 2 == 0), at: base + (1 << 18) + 512 + v * 3) }
            }
            let span = base + UInt64.random(in: 0..<(1 << 9) + 3, using: &rng) * 512
            let lo = span + UInt64.random(in: 0..<512, using: &rng), hi = lo + UInt64.random(in: 1...(span + 512 - lo), using: &rng)
            func entry(_ v: UInt64) -> DeviceEntry? { v % 7 == 3 ? nil : DeviceEntry(pfn: 0x5_0000 + v, writable: v % 3 == 0, zero: v % 11 == 0) }
            a.insertPTEs(lo, hi, entry)
            for v in lo..<hi {
                if let e = entry(v) { b.insert(e, at: v) } else { b.remove(v, v + 1) }
            }
            // Pages the run leaves without an entry it removes, as insertPTEs does.
            #expect(a.entryCount == b.entryCount && a.mirroredPages == b.mirroredPages, "round \(round): \(lo)-\(hi)")
            for v in (lo - min(lo - base, 600))..<(hi + 600) where a.lookup(v).map({ $0.entry.pfn(at: $0.index) }) != b.lookup(v).map({ $0.entry.pfn(at: $0.index) }) {
                Issue.record("round \(round): page \(v - base) differs")
                break
            }
        }
    }

    /// The first and last mirrored pages of a range, found a slot at a time,
    /// are the ones a page-by-page lookup finds (sparse and dense tables,
    /// PMD and PTE entries, ranges long enough to take the sparse path).
    @Test func occupiedFindsWhatLookingUpEveryPageFinds() {
        var rng = SystemRandomNumberGenerator()
        for round in 0..<60 {
            let t = DeviceTable()
            let base: UInt64 = 9 << 18
            for _ in 0..<Int.random(in: 0..<12, using: &rng) {
                let slot = base + UInt64.random(in: 0..<64, using: &rng) * 512
                if Bool.random(using: &rng) {
                    t.insert(DeviceEntry(pfn: 0x40000, order: 9, writable: true), at: slot)
                } else {
                    t.insert(DeviceEntry(pfn: 0x1234, writable: false), at: slot + UInt64.random(in: 0..<512, using: &rng))
                }
            }
            let s = base + UInt64.random(in: 0..<(64 * 512), using: &rng)
            let e = s + UInt64.random(in: 1...(64 * 512), using: &rng)
            let pages = (s..<e).filter { t.lookup($0) != nil }
            let want = pages.first.map { ($0, pages.last!) }
            let got = t.occupied(s, e)
            #expect(got?.first == want?.0 && got?.last == want?.1, "round \(round): \(String(describing: got)) vs \(String(describing: want))")
        }
    }

    @Test func partialRemovalSplitsAHugeEntry() {
        let t = DeviceTable()
        let base: UInt64 = 7 << 9
        t.insert(DeviceEntry(pfn: 0x80000, order: 9, writable: false, zero: true), at: base)
        #expect(t.remove(base + 10, base + 20) == 10)
        #expect(t.mirroredPages == 502)
        #expect(t.lookup(base + 10) == nil && t.lookup(base + 19) == nil)
        let kept = t.lookup(base + 20)
        #expect(kept?.entry.order == 0 && kept?.entry.pfn == 0x80000 + 20 && kept?.entry.zero == true)
        #expect(t.lookup(base + 9)?.entry.pfn == 0x80000 + 9)
    }

    @Test func pudEntrySplitsIntoPMDsAndPages() {
        let t = DeviceTable()
        let base: UInt64 = 3 << 18
        t.insert(DeviceEntry(pfn: 0x100000, order: 18, writable: true), at: base)
        #expect(t.entryCount == 1 && t.lookup(base + 1000)?.entry.pfn(at: 1000) == 0x100000 + 1000)
        t.remove(base + 600, base + 601)
        #expect(t.mirroredPages == (1 << 18) - 1)
        #expect(t.lookup(base + 600) == nil)
        #expect(t.lookup(base + 5000).map { $0.entry.pfn(at: $0.index) } == 0x100000 + 5000)
        #expect(t.lookup(base + 5000)?.entry.order == 9)
        #expect(t.lookup(base + 601)?.entry.order == 0)
    }

    @Test func densePTEsCostAtMostSixteenBytesAPage() {
        let t = DeviceTable()
        for vpn: UInt64 in 0..<(64 * 512) { t.insert(DeviceEntry(pfn: vpn + 1, writable: false), at: 0x100000 + vpn) }
        #expect(t.mirroredPages == 64 * 512)
        #expect(t.heapBytes / Int(t.mirroredPages) <= 16, "\(t.heapBytes) bytes for \(t.mirroredPages) pages")
        #expect(t.entries(0x100000, 0x100000 + 64 * 512).count == 64 * 512)
        t.remove(0, 1 << 40)
        #expect(t.entryCount == 0 && t.mirroredPages == 0)
    }
}
