import DaxCore
import FaultTracking
import MirrorPolicy
import MirrorKernel
import PageTables

/// An in-memory page table in place of the kernel: VMAs, one PTE per page
/// (a PMD is 512 PTEs of one order-9 mapping), page contents by PFN, and the
/// CPU-side operations a test drives (mmap, munmap, mprotect, fork, write,
/// migrate, truncate) with the effects and the events the kernel would give.
/// It lets the mirror's policy run without root or a kernel.
final class FakeCPU: CPUSide {
    struct PTE {
        var pfn: UInt64
        var order: UInt8 = 0
        var writable: Bool
        var softDirty = true
        var exclusive: Bool
        var zero = false
    }

    let pageSize: UInt64 = 4096
    var seesMapOrder = true
    let layoutMethod = "fake"
    var softDirtyAvailable = true
    private(set) var softDirtyEpoch = 0
    var sharedWithoutPageMkwrite = false
    /// Populate maps a whole aligned 2 MiB span inside one VMA as a PMD.
    var thp = false

    private(set) var vmaList: [VMA] = []
    private(set) var ptes: [UInt64: PTE] = [:]
    private var memory: [UInt64: [UInt8]] = [:]
    /// A shared backing's pages: (inode, page offset) -> PFN.
    private var filePages: [UInt64: [UInt64: UInt64]] = [:]
    private var fileSize: [UInt64: UInt64] = [:]
    private var nextPFN: UInt64 = 0x10000
    let zeroPFN: UInt64 = 0x1
    let hugeZeroPFN: UInt64 = 0x200
    private var log: [Invalidation] = []
    /// Pages on a device: vpn -> owner, permission, bytes (the device page's PFN is the vpn).
    private(set) var devicePages: [UInt64: (owner: Int, writable: Bool, exclusive: Bool, data: [UInt8])] = [:]
    /// Why migration is refused here (nil: it works).
    var devicePrivateRefusal: String?
    let devicePrivateMechanism = "fake"
    let migrationWalks = MigrationWalks()

    /// Runs at the start of every populate (a concurrent change).
    var onPopulate: (() -> Void)?
    private(set) var populateCalls = 0
    private(set) var vmaQueries = 0
    private(set) var lastQueryAnswered = 0
    private(set) var pagesRead = 0
    private(set) var truthReads = 0

    // MARK: - CPUSide

    func vmas(overlapping start: UInt64, _ end: UInt64, into out: inout [VMA]) throws(MirrorError) {
        vmaQueries += 1
        out.removeAll(keepingCapacity: true)
        out.append(contentsOf: vmaList.filter { $0.end > start && $0.start < end })
        lastQueryAnswered = out.count
    }

    func pages(_ s: UInt64, _ e: UInt64, vmas: [VMA], detail: TruthDetail, into out: inout [CPUPage]) throws(MirrorError) {
        pagesRead += Int(e - s)
        truthReads += 1
        out.removeAll(keepingCapacity: true)
        for vpn in s..<e {
            guard let v = vmas.first(where: { $0.contains(vpn * pageSize) }) else { out.append(CPUPage(state: .unmapped)); continue }
            var p = CPUPage(state: v.readable ? .notPresent : .inaccessible)
            p.vmaWritable = v.writable
            p.vmaShared = v.shared
            if v.readable, ptes[vpn] == nil, let d = devicePages[vpn] {
                p.state = d.exclusive ? .deviceExclusive(owner: d.owner) : .devicePrivate(owner: d.owner)
                p.pfn = vpn
                p.devicePrivateWritable = d.writable
            }
            if v.readable, let t = ptes[vpn] {
                p.state = .present
                p.pfn = t.pfn
                p.exclusive = t.exclusive
                p.fileOrShared = v.shared || v.inode != 0
                p.softDirty = t.softDirty
                let full = detail == .full && seesMapOrder
                p.order = full ? t.order : 0
                p.zero = t.pfn == zeroPFN || (full && t.zero)
            }
            out.append(p)
        }
    }

    func populate(_ address: UInt64, _ length: UInt64, write: Bool) -> Errno? {
        populateCalls += 1
        onPopulate?()
        var vpn = address / pageSize
        while vpn < (address + length) / pageSize {
            guard let v = vma(at: vpn), v.readable, !write || v.writable else { return .EFAULT }
            if v.shared, let size = fileSize[v.inode], fileOffset(v, vpn) >= size { return .EFAULT }  // SIGBUS
            vpn = fault(vpn, v, write: write)
        }
        return nil
    }

    func clearSoftDirty() throws(MirrorError) {
        for k in ptes.keys { ptes[k]!.softDirty = false; ptes[k]!.writable = false }
        softDirtyEpoch += 1
    }

    var eventSequence: Int { log.count }
    func events(since: Int) -> (events: [Invalidation], overflowed: Bool) { (Array(log[since...]), false) }
    func registerAgain(start: UInt64, end: UInt64) {}
    func settleEvents() {}

    func deviceRead(_ address: UInt64, into buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        try eachPage(address, count) { (pfn, offset, at, n) throws(MirrorError) in
            memory[pfn, default: [UInt8](repeating: 0, count: Int(pageSize))].withUnsafeBytes {
                (buffer + at).copyMemory(from: $0.baseAddress! + offset, byteCount: n)
            }
        }
    }

    func deviceWrite(_ address: UInt64, from buffer: UnsafeMutableRawPointer, count: Int) throws(MirrorError) {
        try eachPage(address, count) { (pfn, offset, at, n) throws(MirrorError) in
            guard pfn != zeroPFN, !(hugeZeroPFN..<hugeZeroPFN + 512).contains(pfn) else {
                throw MirrorError(.EIO, "fake: a device write to the zero page")
            }
            memory[pfn, default: [UInt8](repeating: 0, count: Int(pageSize))].withUnsafeMutableBytes {
                ($0.baseAddress! + offset).copyMemory(from: buffer + at, byteCount: n)
            }
        }
    }

    let writePath = "fake"
    func stop() {}

    var devicePrivateCount: Int { devicePages.count }

    /// The CPU loses each page (an invalidation for every mirror, as the
    /// kernel's migrate notifier); the device keeps its bytes.
    func migrateToDevice(_ moves: [DeviceMove], owner: Int, exclusive: Bool) throws(MirrorError) -> Int {
        for m in moves {
            let data = m.present ? (ptes[m.vpn].flatMap { memory[$0.pfn] } ?? zeros) : zeros
            devicePages[m.vpn] = (owner, m.writable, exclusive, data)
            ptes[m.vpn] = nil
            log.append(.remove(start: m.vpn * pageSize, end: (m.vpn + 1) * pageSize))
        }
        return moves.count
    }

    func devicePages(owner: Int) -> [UInt64] {
        devicePages.filter { $0.value.owner == owner && !$0.value.exclusive }.map(\.key).sorted()
    }

    func deviceVMAWritable(_ startVPN: UInt64, _ endVPN: UInt64, _ writable: Bool) {
        guard !writable else { return }
        for vpn in startVPN..<endVPN where devicePages[vpn] != nil { devicePages[vpn]!.writable = false }
    }

    /// migrate_to_ram: a new page with the device's bytes.
    func migrateHome(_ vpn: UInt64) throws(MirrorError) -> Bool {
        guard let d = devicePages.removeValue(forKey: vpn) else { return false }
        let pfn = newPFN()
        memory[pfn] = d.data
        ptes[vpn] = PTE(pfn: pfn, writable: d.writable, exclusive: true)
        return true
    }

    func devicePageRead(_ vpn: UInt64, offset: Int, into buffer: UnsafeMutableRawPointer, count: Int) {
        devicePages[vpn]?.data.withUnsafeBytes { buffer.copyMemory(from: $0.baseAddress! + offset, byteCount: count) }
    }

    func devicePageWrite(_ vpn: UInt64, offset: Int, from buffer: UnsafeRawPointer, count: Int) {
        devicePages[vpn]?.data.withUnsafeMutableBytes { ($0.baseAddress! + offset).copyMemory(from: buffer, byteCount: count) }
    }

    private var zeros: [UInt8] { [UInt8](repeating: 0, count: Int(pageSize)) }

    // MARK: - what the CPU side does (the test drives it)

    func map(_ start: UInt64, pages: UInt64, writable: Bool = true, shared: Bool = false, inode: UInt64 = 0, offset: UInt64 = 0) {
        let end = start + pages * pageSize
        if vmaList.contains(where: { $0.end > start && $0.start < end }) { unmap(start, pages * pageSize) }
        let vma = VMA(start: start, end: end, readable: true, writable: writable, shared: shared,
                      offset: offset, device: inode == 0 ? 0 : 0xfd << 32, inode: inode)
        vmaList.insert(vma, at: vmaList.firstIndex { $0.start > start } ?? vmaList.endIndex)
        if shared, fileSize[inode] == nil { fileSize[inode] = offset + pages * pageSize }
    }

    /// munmap: the VMA parts and their PTEs go; userfaultfd says UNMAP.
    func unmap(_ start: UInt64, _ length: UInt64) {
        let end = start + length
        vmaList = vmaList.flatMap { v -> [VMA] in cut(v, start, end).outside }
        dropPTEs(start, end)
        log.append(.unmap(start: start, end: end))
    }

    /// mprotect: no event; write taken away write-protects the PTEs, write
    /// given back upgrades none (they fault again).
    func protect(_ start: UInt64, _ length: UInt64, readable: Bool, writable: Bool) {
        let end = start + length
        vmaList = vmaList.flatMap { v -> [VMA] in
            let (outside, inside) = cut(v, start, end)
            return outside + inside.map { var w = $0; w.readable = readable; w.writable = writable; return w }
        }.sorted { $0.start < $1.start }
        if !writable { for vpn in start / pageSize..<end / pageSize { ptes[vpn]?.writable = false } }
    }

    /// fork: private pages become copy-on-write in both processes.
    func fork() {
        // As copy_nonpresent_pte: device pages turn read-only, exclusive ones come home.
        for (vpn, d) in devicePages {
            if d.exclusive { _ = try? migrateHome(vpn) } else { devicePages[vpn]!.writable = false }
        }
        for (vpn, _) in ptes where !(vma(at: vpn)?.shared ?? true) { ptes[vpn]!.writable = false; ptes[vpn]!.exclusive = false }
        log.append(.fork)
    }

    /// A CPU store to one page (faulting it in for writing).
    func cpuWrite(_ address: UInt64, _ byte: UInt8) {
        let vpn = address / pageSize
        guard let v = vma(at: vpn), v.writable else { return }
        if !(ptes[vpn]?.writable ?? false) { _ = fault(vpn, v, write: true) }
        memory[ptes[vpn]!.pfn, default: [UInt8](repeating: 0, count: Int(pageSize))][Int(address % pageSize)] = byte
    }

    /// Page migration (compaction): a new PFN, the same bytes, no event.
    func migrate(_ vpn: UInt64) {
        guard let t = ptes[vpn] else { return }
        let pfn = newPFN()
        memory[pfn] = memory[t.pfn]
        ptes[vpn]!.pfn = pfn
        ptes[vpn]!.order = 0
    }

    /// A PMD split into 512 PTEs of the same pages (as munmap of part of it does first).
    func split(_ vpn: UInt64) {
        let span = vpn & ~511
        for p in span..<span + 512 { ptes[p]?.order = 0 }
    }

    /// ftruncate of a shared backing: pages past the end go (no event).
    func truncate(inode: UInt64, to size: UInt64) {
        fileSize[inode] = size
        for (vpn, _) in ptes {
            if let v = vma(at: vpn), v.inode == inode, fileOffset(v, vpn) >= size { ptes[vpn] = nil }
        }
    }

    func bytes(at address: UInt64) -> UInt8? {
        ptes[address / pageSize].map { memory[$0.pfn]?[Int(address % pageSize)] ?? 0 }
    }

    /// A CPU load: a page on a device comes home first.
    func cpuRead(_ address: UInt64) -> UInt8? {
        if let v = vma(at: address / pageSize), v.readable { _ = fault(address / pageSize, v, write: false) }
        return bytes(at: address)
    }

    // MARK: - helpers

    private func vma(at vpn: UInt64) -> VMA? { vmaList.first { $0.contains(vpn * pageSize) } }
    private func fileOffset(_ v: VMA, _ vpn: UInt64) -> UInt64 { v.offset + vpn * pageSize - v.start }

    private func newPFN(aligned: UInt64 = 1) -> UInt64 {
        nextPFN = (nextPFN + aligned - 1) / aligned * aligned
        defer { nextPFN += aligned }
        return nextPFN
    }

    /// Maps `vpn` (or its whole 2 MiB span, with THP) and returns the next page to look at.
    private func fault(_ vpn: UInt64, _ v: VMA, write: Bool) -> UInt64 {
        if devicePages[vpn] != nil { _ = try? migrateHome(vpn) }
        if let t = ptes[vpn], t.writable || !write { return vpn + 1 }
        let span = vpn & ~511
        let huge = thp && !v.shared && span * pageSize >= v.start && (span + 512) * pageSize <= v.end
            && (span..<span + 512).allSatisfy { ptes[$0] == nil || (ptes[$0]!.zero && write) }
        if huge {
            let base = write ? newPFN(aligned: 512) : hugeZeroPFN
            for i in 0..<UInt64(512) {
                ptes[span + i] = PTE(pfn: base + i, order: 9, writable: write, softDirty: write || ptes[span + i] == nil,
                                     exclusive: write, zero: !write)
            }
            return span + 512
        }
        if v.shared {
            let off = fileOffset(v, vpn) / pageSize
            let pfn = filePages[v.inode, default: [:]][off] ?? newPFN()
            filePages[v.inode, default: [:]][off] = pfn
            ptes[vpn] = PTE(pfn: pfn, writable: write, softDirty: write || (ptes[vpn]?.softDirty ?? true), exclusive: false)
        } else if write {
            let pfn = newPFN()
            if let old = ptes[vpn], !old.zero, old.pfn != zeroPFN { memory[pfn] = memory[old.pfn] }
            ptes[vpn] = PTE(pfn: pfn, writable: true, softDirty: true, exclusive: true)
        } else {
            ptes[vpn] = PTE(pfn: zeroPFN, writable: false, exclusive: false, zero: true)
        }
        return vpn + 1
    }

    private func dropPTEs(_ start: UInt64, _ end: UInt64) {
        for vpn in start / pageSize..<end / pageSize { ptes[vpn] = nil; devicePages[vpn] = nil }
        // A PMD partly unmapped was split first.
        for edge in [start / pageSize, end / pageSize] where ptes[edge]?.order == 9 || ptes[edge &- 1]?.order == 9 {
            split(edge); split(edge &- 1)
        }
    }

    private func cut(_ v: VMA, _ start: UInt64, _ end: UInt64) -> (outside: [VMA], inside: [VMA]) {
        guard v.end > start && v.start < end else { return ([v], []) }
        var outside: [VMA] = [], inside = v
        if v.start < start { var l = v; l.end = start; outside.append(l); inside.start = start; inside.offset += start - v.start }
        if v.end > end { var r = v; r.offset += end - v.start; r.start = end; outside.append(r); inside.end = end }
        return (outside, [inside])
    }

    private func eachPage(_ address: UInt64, _ count: Int,
                          _ body: (UInt64, Int, Int, Int) throws(MirrorError) -> Void) throws(MirrorError) {
        var at = 0
        while at < count {
            let addr = address + UInt64(at)
            guard let t = ptes[addr / pageSize] else { throw MirrorError(.EFAULT, "fake: nothing mapped at 0x\(String(addr, radix: 16))") }
            let offset = Int(addr % pageSize), n = min(count - at, Int(pageSize) - offset)
            try body(t.pfn, offset, at, n)
            at += n
        }
    }
}
