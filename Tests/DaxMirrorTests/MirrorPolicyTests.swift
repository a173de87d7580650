import Testing
import DaxCore
import FaultTracking
@testable import MirrorPolicy
@testable import MirrorKernel
import PageTables

/// The mirror's rules against an in-memory page table (FakeCPU): no root,
/// no kernel. Each test drives the CPU side as the kernel would change it and
/// checks what the device does next — faults, hits, errors, entries, codes.
@Suite("mirror policy (fake CPU)")
struct MirrorPolicyTests {
    static let base: UInt64 = 0x7f00_0000_0000  // 1 GiB aligned
    let page: UInt64 = 4096

    func mirror(_ cpu: FakeCPU, pages: UInt64, shared: Bool = false, at base: UInt64 = MirrorPolicyTests.base) throws -> DeviceMirror {
        let backing: RegionBacking = shared ? .shmem(fd: -1) : .anonymous
        return try DeviceMirror(region: Region(base: UnsafeMutableRawPointer(bitPattern: UInt(base))!, length: Int(pages * page),
                                         backing: backing), cpu: cpu)
    }

    @Test func aHugeMappingIsOneEntryAndAPartialUnmapSplitsIt() throws {
        let cpu = FakeCPU()
        cpu.thp = true
        cpu.map(Self.base, pages: 1024)
        let m = try mirror(cpu, pages: 1024)
        let at = Self.base + 512 * page
        #expect(try m.write(at + page, [UInt8](repeating: 0x41, count: 8192)) == 1)
        #expect(m.table.entryCount == 1 && m.table.mirroredPages == 512, "one PMD entry for the span")
        #expect(m.table.lookup(at / page)?.entry.order == 9)
        #expect(try m.snapshot(at, 512 * page).allSatisfy { $0 == [.write, .pmd] })
        // munmap of one page inside the PMD: the CPU splits it, the event drops that page only.
        cpu.unmap(at + 8 * page, page)
        #expect(try m.read(at, 16).faults == 0, "the rest of the split entry is still mirrored")
        #expect(m.table.mirroredPages == 511)
        #expect(throws: MirrorError.self) { try m.read(at + 8 * page, 1) }
        #expect(try m.read(at + page, 4).bytes == [0x41, 0x41, 0x41, 0x41])
        #expect(try m.check().disagreements.isEmpty)
    }

    @Test func aForkOfAPrivateRegionDropsEveryEntry() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16)
        let m = try mirror(cpu, pages: 16)
        #expect(try m.write(Self.base, [UInt8](repeating: 7, count: Int(16 * page))) == 1)
        #expect(try m.read(Self.base, Int(16 * page)).faults == 0)
        let clears = cpu.softDirtyEpoch
        cpu.fork()
        // Copy-on-write: every page now reads READ for the CPU, and the device faults again.
        #expect(try m.snapshot(Self.base, 16 * page).allSatisfy { $0 == .read })
        #expect(try m.read(Self.base, Int(16 * page)).faults == 1)
        #expect(cpu.softDirtyEpoch == clears + 1, "soft-dirty cleared again after the fork")
        #expect(try m.write(Self.base, [1]) == 1, "a write after the fork faults for write (breaks COW)")
        #expect(try m.check(strict: true).disagreements.isEmpty)
    }

    @Test func aTruncateDropsThePagesBeyondTheEnd() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16, shared: true, inode: 7)
        let m = try mirror(cpu, pages: 16, shared: true)
        #expect(try m.write(Self.base, [UInt8](repeating: 9, count: Int(16 * page))) == 1)
        cpu.truncate(inode: 7, to: 8 * page)
        m.fileTruncated(to: 8 * page)
        #expect(m.table.mirroredPages == 8)
        #expect(try m.read(Self.base, Int(8 * page)).faults == 0)
        do { _ = try m.read(Self.base + 8 * page, 1); Issue.record("a read beyond the end succeeded") }
        catch { #expect(error.errno == .EFAULT) }
    }

    @Test func aTruncateNobodyToldOfIsCaughtByRevalidation() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16, shared: true, inode: 7)
        let m = try mirror(cpu, pages: 16, shared: true)
        _ = try m.read(Self.base, Int(16 * page))
        cpu.truncate(inode: 7, to: 8 * page)
        #expect(throws: MirrorError.self) { try m.read(Self.base + 12 * page, 1) }
        #expect(m.staleDropped >= 1, "the stale entries were dropped before use")
        #expect(try m.read(Self.base, 1).faults == 0)
    }

    @Test func aMappingOverItselfIsNewMemory() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16)
        let m = try mirror(cpu, pages: 16)
        #expect(try m.write(Self.base, [UInt8](repeating: 3, count: Int(16 * page))) == 1)
        let clears = cpu.softDirtyEpoch
        cpu.map(Self.base, pages: 16)  // MAP_FIXED over the region: the same layout, new memory
        let after = try m.read(Self.base, Int(16 * page))
        #expect(after.faults == 1)
        #expect(after.bytes.allSatisfy { $0 == 0 }, "the new mapping reads zeros, not the old pages")
        #expect(cpu.softDirtyEpoch > clears, "a new VMA counts as soft-dirty all over: cleared again")
    }

    @Test func aProtectionChangeBetweenTwoHitsIsSeen() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16)
        let m = try mirror(cpu, pages: 16)
        #expect(try m.write(Self.base, [UInt8](repeating: 5, count: Int(16 * page))) == 1)
        #expect(try m.write(Self.base, [6]) == 0, "a hit")
        cpu.protect(Self.base, 4 * page, readable: true, writable: false)  // nobody tells the mirror
        do { try m.write(Self.base, [7]); Issue.record("a device write to a read-only page succeeded") }
        catch { #expect(error.errno == .EPERM) }
        #expect(try m.write(Self.base + 8 * page, [7]) == 0, "pages whose VMA kept its permissions stay mirrored")
        // Write given back to pages the device holds read-only: revalidation
        // finds nothing wrong with them, but the kernel's notifier dropped them
        // on the mprotect, so the device faults again (the layout diff).
        cpu.protect(Self.base + 12 * page, 4 * page, readable: true, writable: false)
        #expect(try m.read(Self.base + 12 * page, Int(4 * page)).faults == 1)
        #expect(try m.read(Self.base + 12 * page, Int(4 * page)).faults == 0)
        cpu.protect(Self.base + 12 * page, 4 * page, readable: true, writable: true)
        #expect(try m.read(Self.base + 12 * page, Int(4 * page)).faults == 1)
        // A round trip the mirror is told of invalidates, though the layout ends as it began.
        let before = try m.vmasBeforeProtect(Self.base + 8 * page, page)
        cpu.protect(Self.base + 8 * page, page, readable: true, writable: false)
        cpu.protect(Self.base + 8 * page, page, readable: true, writable: true)
        m.protectionChanged(Self.base + 8 * page, page, readable: true, writable: false, before: before)
        #expect(try m.write(Self.base + 8 * page, [8]) == 1)
    }

    @Test func aRangeFaultRacingAnInvalidationRetries() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16)
        let m = try mirror(cpu, pages: 16)
        var raced = false
        cpu.onPopulate = {
            guard !raced else { return }
            raced = true
            cpu.unmap(Self.base + 15 * self.page, self.page)  // the event arrives during the walk
        }
        #expect(try m.read(Self.base, Int(8 * page)).faults == 1, "one fault round for the device")
        #expect(cpu.populateCalls == 2, "the walk saw the sequence change and ran again")
        #expect(try m.check(strict: true).disagreements.isEmpty)
        // An invalidation on every walk: the device gives up with EBUSY, in time.
        cpu.onPopulate = { cpu.migrate(Self.base / self.page); cpu.unmap(Self.base + 14 * self.page, self.page) }
        m.busyTimeout = 0.05
        do { _ = try m.read(Self.base + 8 * page, Int(4 * page)); Issue.record("a range fault that never settles succeeded") }
        catch { #expect(error.errno == .EBUSY) }
    }

    @Test func aMigratedPageIsStaleForCheckAndRevalidated() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4)
        let m = try mirror(cpu, pages: 4)
        _ = try m.write(Self.base, [UInt8](repeating: 1, count: Int(4 * page)))
        cpu.migrate(Self.base / page + 2)
        #expect(try m.check(strict: true).disagreements.first?.reason == "PFN differs")
        let r = try m.check()
        #expect(r.revalidated == 1 && r.disagreements.isEmpty)
        #expect(try m.read(Self.base + 2 * page, 1).faults == 1)
    }

    @Test func anAccessCostsThePagesItTouches() throws {
        let cpu = FakeCPU()
        // 300 unrelated VMAs around the region, within 2 MiB of it: none may be read.
        for i in 0..<UInt64(150) {
            cpu.map(Self.base - (i + 1) * 2 * page, pages: 1)
            cpu.map(Self.base + (512 + 1 + i * 2) * page, pages: 1)
        }
        cpu.map(Self.base, pages: 512)
        let m = try mirror(cpu, pages: 512)
        _ = try m.write(Self.base, [UInt8](repeating: 2, count: Int(512 * page)))
        let (queries, pages) = (cpu.vmaQueries, cpu.pagesRead)
        var buffer = [UInt8](repeating: 0, count: Int(page))
        #expect(try m.read(Self.base + 100 * page, into: &buffer) == 0)
        #expect(cpu.vmaQueries - queries == 1, "one VMA query per access")
        #expect(cpu.pagesRead - pages == 1, "one page of truth for a one-page hit")
        #expect(cpu.lastQueryAnswered == 1, "the region's VMA, not its neighbours")
        // N pages: one synchronization, N pages of truth.
        let (q2, p2) = (cpu.vmaQueries, cpu.pagesRead)
        #expect(try m.read(Self.base, Int(512 * page)).faults == 0)
        #expect(cpu.vmaQueries - q2 == 1 && cpu.pagesRead - p2 == 512)
    }

    /// A miss does its work once: one synchronization and one read of the
    /// page table (its range fault's), whether the table is empty or holds
    /// entries elsewhere; a miss after a hit reads the hit's pages once
    /// (revalidation) and the missing ones once (the fault).
    @Test func aMissSynchronizesOnceAndReadsThePageTableOnce() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 512)
        let m = try mirror(cpu, pages: 512)
        for (first, elsewhere) in [(UInt64(100), false), (200, true)] {
            if elsewhere { #expect(try m.read(Self.base + 400 * page, Int(page)).faults == 1) }
            let (q, r) = (cpu.vmaQueries, cpu.truthReads)
            #expect(try m.read(Self.base + first * page, Int(16 * page)).faults == 1)
            #expect(cpu.vmaQueries - q == 1, "one VMA query for a miss (table \(elsewhere ? "holding other entries" : "empty"))")
            #expect(cpu.truthReads - r == 1, "one page-table read for a miss")
        }
        // Pages 100..<116 are mirrored: reading 100..<132 revalidates those 16
        // and faults the other 16, one read each, one synchronization.
        let (q, r, p) = (cpu.vmaQueries, cpu.truthReads, cpu.pagesRead)
        #expect(try m.read(Self.base + 100 * page, Int(32 * page)).faults == 1)
        #expect(cpu.vmaQueries - q == 1 && cpu.truthReads - r == 2, "\(cpu.vmaQueries - q) queries, \(cpu.truthReads - r) reads")
        #expect(cpu.pagesRead - p == 16 + 512, "the hit's 16 pages, then the fault's 2 MiB hull")
    }

    @Test func theLayoutDiffNamesWhatChanged() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 16, shared: true, inode: 9)
        let m = try mirror(cpu, pages: 16, shared: true)
        func vma(_ s: UInt64, _ e: UInt64, w: Bool = true, offset: UInt64 = 0, inode: UInt64 = 9) -> VMA {
            VMA(start: Self.base + s * page, end: Self.base + e * page, readable: true, writable: w, shared: true,
                offset: offset, device: 1, inode: inode)
        }
        let a = [vma(0, 16)]
        #expect(m.changedRanges(a, a).isEmpty)
        #expect(m.changedRanges(a, [vma(0, 4), vma(4, 8, w: false, offset: 4 * page), vma(8, 16, offset: 8 * page)])
                == [.init(start: Self.base + 4 * page, end: Self.base + 8 * page, mappedAnew: false, writeRestored: false,
                          writeRemoved: true)])
        #expect(m.changedRanges([vma(0, 4, w: false)], [vma(0, 4)]).first?.writeRestored == true)
        #expect(m.changedRanges(a, [vma(0, 16, offset: page)]).first?.mappedAnew == true, "other file pages: new memory")
        let unmapped = m.changedRanges(a, [vma(0, 8)])
        #expect(unmapped.count == 1 && unmapped[0].start == Self.base + 8 * page && unmapped[0].end == Self.base + 16 * page)
    }
}
