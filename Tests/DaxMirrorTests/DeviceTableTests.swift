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
