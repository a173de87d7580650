#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import MirrorPolicy
import PageTables

/// Reads the CPU's page table for ranges of this process: /proc/self/maps for
/// permissions, pagemap for presence, PFN and exclusivity, PAGEMAP_SCAN (where
/// the kernel has it) for HUGE and PFNZERO. Without PAGEMAP_SCAN the order is
/// unknown and reported as 0, and only the 4 KiB zero page is recognised.
public final class CPUTruth: @unchecked Sendable {
    public let pagemap: Pagemap
    public let scanAvailable: Bool
    public let pageSize = UInt64(Syscall.pageSize)
    /// PFN of the kernel's 4 KiB zero page (learned by mapping it).
    public let zeroPFN: UInt64?
    /// pagemap's raw entries, kept between reads.
    private var raw: [UInt64] = []

    public init(scanAvailable: Bool = PagemapScanSupport.available) throws(Failure) {
        pagemap = try Failure.wrapping("open /proc/self/pagemap") { () throws(SystemCallError) in try Pagemap() }
        self.scanAvailable = scanAvailable
        zeroPFN = CPUTruth.probeZeroPFN(pagemap)
        guard CPUTruth.pfnsVisible(pagemap) else {
            throw Failure(.permissionDenied,
                          "pagemap hides PFNs from this process (needs CAP_SYS_ADMIN): run the mirror as root", errno: .EPERM)
        }
    }

    private static func probeZeroPFN(_ pm: Pagemap) -> UInt64? {
        let size = Syscall.pageSize
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return nil }
        defer { munmap(p, size) }
        guard madvise(p, size, DM_MADV_POPULATE_READ) == 0 else { return nil }
        return (try? pm.entry(at: UInt64(UInt(bitPattern: p))))?.pfn
    }

    private static func pfnsVisible(_ pm: Pagemap) -> Bool {
        let size = Syscall.pageSize
        guard let p = mmap(nil, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0), p != MAP_FAILED else { return false }
        defer { munmap(p, size) }
        p.storeBytes(of: 1, as: UInt8.self)
        return ((try? pm.entry(at: UInt64(UInt(bitPattern: p))))?.pfn ?? 0) != 0
    }

    /// The pages [startVPN, endVPN), given the VMAs (sorted, overlapping them).
    public func read(_ startVPN: UInt64, _ endVPN: UInt64, vmas: [VMA], detail: TruthDetail = .full) throws(Failure) -> [CPUPage] {
        var out: [CPUPage] = []
        try read(startVPN, endVPN, vmas: vmas, detail: detail, into: &out)
        return out
    }

    /// The same into `out` (its storage kept between calls). With `.presence`
    /// only pagemap is read (order 0, and only the 4 KiB zero page known):
    /// what revalidation needs, PFN and presence.
    public func read(_ startVPN: UInt64, _ endVPN: UInt64, vmas: [VMA], detail: TruthDetail,
                     into out: inout [CPUPage]) throws(Failure) {
        let count = Int(endVPN - startVPN)
        out.removeAll(keepingCapacity: true)
        out.append(contentsOf: repeatElement(CPUPage(state: .unmapped), count: count))
        guard count > 0 else { return }
        guard applyPermissions(startVPN, endVPN, vmas: vmas, into: &out) else { return }
        try readPresence(startVPN, count: count, into: &out)
        guard detail == .full, scanAvailable else { return }
        try readHugeAndZero(startVPN, endVPN, into: &out)
        keepOnlyWholePMDs(startVPN, endVPN, &out)
    }

    /// Each page's permissions from the VMAs. Returns whether any page is
    /// readable (else pagemap has nothing to add).
    private func applyPermissions(_ startVPN: UInt64, _ endVPN: UInt64, vmas: [VMA], into out: inout [CPUPage]) -> Bool {
        let startAddr = startVPN * pageSize, endAddr = endVPN * pageSize
        var anyMapped = false
        for vma in vmas where vma.end > startAddr && vma.start < endAddr {
            let lo = Int((max(vma.start, startAddr) - startAddr) / pageSize)
            let hi = Int((min(vma.end, endAddr) - startAddr) / pageSize)
            for i in lo..<hi {
                out[i].state = vma.readable ? .notPresent : .inaccessible
                out[i].vmaWritable = vma.writable
                out[i].vmaShared = vma.shared
            }
            anyMapped = anyMapped || vma.readable
        }
        return anyMapped
    }

    /// Presence, PFN and the entry's bits from one pagemap read.
    private func readPresence(_ startVPN: UInt64, count: Int, into out: inout [CPUPage]) throws(Failure) {
        let got = try Failure.wrapping("read /proc/self/pagemap") { () throws(SystemCallError) in
            try pagemap.read(at: startVPN * pageSize, count: count, into: &raw)
        }
        for i in 0..<min(got, count) where out[i].state == .notPresent {
            let e = PagemapEntry(raw: raw[i])
            guard e.present else { continue }
            out[i].state = .present
            out[i].pfn = e.pfn ?? 0
            out[i].exclusive = e.exclusive
            out[i].fileOrShared = e.fileOrShared
            out[i].softDirty = e.softDirty
            out[i].uffdWriteProtected = e.uffdWriteProtected
            if let z = zeroPFN, e.pfn == z { out[i].zero = true }
        }
    }

    /// Huge and zero-page pages from PAGEMAP_SCAN (pagemap alone does not
    /// say "huge", nor "zero" for the huge zero page), walked only over the
    /// 2 MiB spans whose PFNs could be one PMD: a huge page, the huge zero
    /// page included, is 512 consecutive PFNs from a 512-aligned one, and the
    /// 4 KiB zero page is known by its PFN. Memory of 4 KiB pages costs the
    /// one pagemap read alone, as the C baseline's range fault does.
    private func readHugeAndZero(_ startVPN: UInt64, _ endVPN: UInt64, into out: inout [CPUPage]) throws(Failure) {
        for (s, e) in pmdCandidates(startVPN, endVPN, out) {
            try scanHugeAndZero(s, e, startVPN, into: &out)
        }
    }

    /// The spans (merged, in VPNs) of [startVPN, endVPN) that may be PMD-mapped
    /// as pagemap shows them; the whole range where the zero page is unknown.
    private func pmdCandidates(_ startVPN: UInt64, _ endVPN: UInt64, _ out: [CPUPage]) -> [(UInt64, UInt64)] {
        guard zeroPFN != nil else { return [(startVPN, endVPN)] }
        var spans: [(UInt64, UInt64)] = []
        var span = startVPN & ~511
        while span < endVPN {
            let lo = max(span, startVPN), hi = min(span + 512, endVPN)
            let first = out[Int(lo - startVPN)]
            let basePFN = first.pfn &- (lo - span)
            var candidate = first.state == .present && basePFN & 511 == 0
            var vpn = lo
            while candidate && vpn < hi {
                let p = out[Int(vpn - startVPN)]
                candidate = p.state == .present && p.pfn == basePFN + (vpn - span)
                vpn += 1
            }
            if candidate {
                if let last = spans.last, last.1 == lo { spans[spans.count - 1].1 = hi } else { spans.append((lo, hi)) }
            }
            span += 512
        }
        return spans
    }

    private func scanHugeAndZero(_ s: UInt64, _ e: UInt64, _ startVPN: UInt64, into out: inout [CPUPage]) throws(Failure) {
        let startAddr = startVPN * pageSize
        let regions = try Failure.wrapping("scan /proc/self/pagemap") { () throws(SystemCallError) in
            try pagemap.scanAll(start: s * pageSize, end: e * pageSize, anyOf: [.huge, .pfnZero],
                                report: [.huge, .pfnZero, .present])
        }
        let endAddr = e * pageSize
        for r in regions {
            let lo = Int((max(r.start, startAddr) - startAddr) / pageSize)
            let hi = Int((min(r.end, endAddr) - startAddr) / pageSize)
            for i in lo..<hi where out[i].state == .present {
                if r.categories.contains(.pfnZero) { out[i].zero = true }
                if r.categories.contains(.huge) { out[i].order = 9 }
            }
        }
    }

    /// A HUGE page is a PMD only if its whole aligned 2 MiB is one PFN run;
    /// otherwise (a PTE-mapped THP, hugetlb of another size) call it 4 KiB.
    private func keepOnlyWholePMDs(_ startVPN: UInt64, _ endVPN: UInt64, _ out: inout [CPUPage]) {
        let count = Int(endVPN - startVPN)
        var i = 0
        while i < count {
            guard out[i].order == 9 else { i += 1; continue }
            let vpn = startVPN + UInt64(i)
            let spanStart = vpn & ~511, spanEnd = spanStart + 512
            let lo = Int(max(spanStart, startVPN) - startVPN), hi = Int(min(spanEnd, endVPN) - startVPN)
            let basePFN = out[i].pfn &- (vpn - spanStart)
            var ok = basePFN & 511 == 0
            for j in lo..<hi where ok {
                let p = out[j]
                ok = p.state == .present && p.order == 9 && p.pfn == basePFN + (startVPN + UInt64(j) - spanStart)
            }
            if !ok { for j in lo..<hi where out[j].order == 9 { out[j].order = 0 } }
            i = max(hi, i + 1)
        }
    }
}
