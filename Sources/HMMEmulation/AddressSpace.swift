import DaxCore
import DaxDetection
import FaultTracking
import MirrorKernel
import MirrorPolicy
import PageTables

/// The program's memory as the emulated driver mirrors it. The kernel's
/// mirrors watch all of memory through one notifier each; here memory is
/// mirrored by `Area`s made as the program's commands name ranges: one per
/// run of mappings a command touched, holding one `DeviceMirror` per open of
/// the device. In anonymous memory an area also holds the userfaultfd
/// registration that catches the CPU's touches of device-private pages
/// (`anchor`), which every open's mirror of the area shares, as every
/// mirror of the kernel's sees one page table. Used under the one lock
/// (DriverEntryPoints).
final class AddressSpace: @unchecked Sendable {
    static let shared = AddressSpace()

    final class Area {
        let region: Region
        let identity: Identity
        /// The mapped intervals of `region` when the area was made.
        let coverage: [Range<UInt64>]
        /// A mapping of a file on a DAX filesystem: mirrored, never migrated.
        let dax: Bool
        /// Holds the registration and the device-private pool (anonymous memory).
        let anchor: DeviceMirror?
        var byOpen: [Int32: DeviceMirror] = [:]
        /// The anchor's invalidations read so far.
        var eventsRead: Int

        init(region: Region, identity: Identity, coverage: [Range<UInt64>], dax: Bool, anchor: DeviceMirror?) {
            self.region = region
            self.dax = dax
            self.identity = identity
            self.coverage = coverage
            self.anchor = anchor
            eventsRead = anchor?.tracker?.invalidationSequence ?? 0
        }
    }

    /// What an area's memory is: its kind and file.
    struct Identity: Equatable {
        var kind: String
        var device: UInt64
        var inode: UInt64

        init(of vma: VMA) {
            kind = AddressSpace.backing(of: vma).name
            device = vma.device
            inode = vma.inode
        }
    }

    private var areas: [Area] = []
    /// Areas a fork's child inherited: their registrations and handler
    /// threads are the parent's, so the child never touches or frees them.
    private var inherited: [Area] = []
    private let layout: VMAQuery?
    private let truth: CPUTruth?
    private let kernel = KernelFeatures.probe()
    /// At most this many areas (least recently used out, its device pages home).
    static let kept = 32

    private init() {
        layout = try? VMAQuery()
        truth = try? CPUTruth(scanAvailable: PagemapScanSupport.available)
    }

    /// A piece of a command's range and the mirror that serves it; none
    /// where nothing was mapped when the command began (a hole: the
    /// kernel's walk finds no VMA there).
    struct Segment {
        let mirror: DeviceMirror?
        let start: UInt64
        let end: UInt64
    }

    /// The pieces of [start, end) for open `open` (of device `device`), in
    /// order, planned from ONE reading of the mappings taken before anything
    /// here maps memory: the emulation's own mappings (a new area's device
    /// pool) can land in a hole the program just made, and must never be
    /// taken for the program's memory. A piece is an area already over it
    /// whose memory is as it was (the others end first), a new area over the
    /// mappings of one kind around it, or a hole.
    func segments(open: Int32, device: Int, _ start: UInt64, _ end: UInt64) throws(MirrorError) -> [Segment] {
        guard let layout else { throw MirrorError(.EIO, "/proc/self/maps cannot be read") }
        // One reading covers the range and the areas over it, which it also checks.
        // (No reference to the areas is kept here: one that ends must end now,
        // its registration gone before a new area over its memory registers.)
        var lo = start, hi = end
        for a in areas where a.region.base < end && start < a.region.end {
            lo = min(lo, a.region.base)
            hi = max(hi, a.region.end)
        }
        let read = try programMappings(layout, lo, hi)
        let vmas = read.filter { $0.start < end && start < $0.end }
        areas.removeAll { $0.region.base < end && start < $0.region.end && !intact($0, now: read) }
        var out: [Segment] = []
        var pos = start
        while pos < end {
            if let i = areas.firstIndex(where: { $0.region.base <= pos && pos < $0.region.end }) {
                let area = areas.remove(at: i)
                areas.append(area)
                let next = min(end, area.region.end)
                out.append(Segment(mirror: try mirror(of: area, open: open, device: device), start: pos, end: next))
                pos = next
                continue
            }
            let ceiling = areas.map(\.region.base).filter { $0 > pos }.min() ?? Self.userSpaceEnd
            guard let i = vmas.firstIndex(where: { $0.start <= pos && pos < $0.end }) else {
                let next = min(end, ceiling, vmas.first(where: { $0.start > pos })?.start ?? end)
                out.append(Segment(mirror: nil, start: pos, end: next))
                pos = next
                continue
            }
            let floor = areas.map(\.region.end).filter { $0 <= pos }.max() ?? 0
            let area = try newArea(vmas, at: i, floor: floor, ceiling: ceiling)
            areas.append(area)
            let next = min(end, area.region.end)
            out.append(Segment(mirror: try mirror(of: area, open: open, device: device), start: pos, end: next))
            pos = next
        }
        if areas.count > Self.kept { areas.removeFirst(areas.count - Self.kept) }
        return out
    }

    /// The program's mappings over [start, end): every VMA there, less what
    /// daxmirror mapped for itself (`OwnMappings`).
    private func programMappings(_ layout: VMAQuery, _ start: UInt64, _ end: UInt64) throws(MirrorError) -> [VMA] {
        let vmas: [VMA]
        do { vmas = try layout.vmas(overlapping: start, end) } catch { throw MirrorError(error.errno, "reading this process's mappings") }
        return vmas.flatMap { v in
            OwnMappings.subtracted(from: v.start, v.end).map { r in
                var piece = v
                piece.offset += r.lowerBound - v.start
                piece.start = r.lowerBound
                piece.end = r.upperBound
                return piece
            }
        }
    }

    /// A new area over `vmas[i]` and the mappings of its kind joined to it,
    /// between the areas beside it.
    private func newArea(_ vmas: [VMA], at i: Int, floor: UInt64, ceiling: UInt64) throws(MirrorError) -> Area {
        let v = vmas[i]
        let backing = Self.backing(of: v)
        let identity = Identity(of: v)
        let same = { (w: VMA) in Identity(of: w) == identity }
        var j = i, k = i
        while j > 0, vmas[j - 1].end == vmas[j].start, same(vmas[j - 1]) { j -= 1 }
        while k + 1 < vmas.count, vmas[k + 1].start == vmas[k].end, same(vmas[k + 1]) { k += 1 }
        let lo = max(floor, vmas[j].start, Syscall.pageBytes), hi = min(ceiling, vmas[k].end)
        guard lo < hi, let base = UnsafeMutableRawPointer(bitPattern: UInt(lo)) else {
            throw MirrorError(.EFAULT, "0x\(String(v.start, radix: 16)) is not a user address")
        }
        let region = Region(base: base, length: Int(hi - lo), backing: backing)
        var anchor: DeviceMirror?
        if case .anonymous = backing, kernel.userfaultfd != nil {
            anchor = try? DeviceMirror(region: region, tracking: true, dax: false, truth: truth, kernel: kernel, writeBit: .pagemap)
        }
        return Area(region: region, identity: identity, coverage: Self.coverage(Array(vmas[j...k]), lo, hi), dax: isDAX(v), anchor: anchor)
    }

    /// The top of x86-64's user address space (4-level page tables; 5-level
    /// ones allow more, which no mapping here reaches unless asked for).
    static let userSpaceEnd: UInt64 = 0x7FFF_FFFF_F000

    private func mirror(of area: Area, open: Int32, device: Int) throws(MirrorError) -> DeviceMirror {
        if let m = area.byOpen[open] { return m }
        let m: DeviceMirror
        do {
            m = try DeviceMirror(region: area.region, tracking: false, dax: area.dax,
                                 truth: truth, kernel: kernel, writeBit: .pagemap, device: device, sharing: area.anchor)
        } catch {
            throw MirrorError(.ENOMEM, "mirroring 0x\(String(area.region.base, radix: 16)): \(error)")
        }
        area.byOpen[open] = m
        return m
    }

    /// Every mirror of device `device` open `open` can reach: one per area
    /// (made where missing), for RELEASE, which empties the whole device.
    func everyMirror(open: Int32, device: Int) throws(MirrorError) -> [DeviceMirror] {
        var out: [DeviceMirror] = []
        for area in areas where area.anchor != nil { out.append(try mirror(of: area, open: open, device: device)) }
        return out
    }

    /// An open closed: its mirrors go (the pages its device holds stay in
    /// the areas' pools, as the kernel's stay with the device).
    func closed(open: Int32) {
        for area in areas { area.byOpen[open] = nil }
    }

    /// In a fork's child: nothing inherited is used or freed (the handler
    /// threads are not here; the registrations belong to the parent's uffd).
    func forkedChild() {
        inherited += areas
        areas.removeAll()
    }

    /// The area's memory is still the mappings it was made over: none of it
    /// unmapped, moved or mapped anew (the registration holds), and nothing
    /// mapped into a hole it had. `now`: the program's mappings over it.
    private func intact(_ area: Area, now: [VMA]) -> Bool {
        let r = area.region
        if let tracker = area.anchor?.tracker {
            let (events, overflowed) = tracker.invalidations(since: area.eventsRead)
            if overflowed { return false }
            for e in events {
                switch e {
                case .unmap(let s, let t) where s < r.end && r.base < t: return false
                case .remap(let from, let to, let len)
                    where (from < r.end && r.base < from + len) || (to < r.end && r.base < to + len):
                    return false
                default: continue
                }
            }
        }
        let inside = now.filter { $0.start < r.end && r.base < $0.end }
        return Self.coverage(inside, r.base, r.end) == area.coverage && inside.allSatisfy { Identity(of: $0) == area.identity }
    }

    /// The mapped intervals of [lo, hi), adjacent mappings joined.
    static func coverage(_ vmas: [VMA], _ lo: UInt64, _ hi: UInt64) -> [Range<UInt64>] {
        var out: [Range<UInt64>] = []
        for v in vmas {
            let s = max(v.start, lo), e = min(v.end, hi)
            guard s < e else { continue }
            if let last = out.last, last.upperBound == s { out[out.count - 1] = last.lowerBound..<e } else { out.append(s..<e) }
        }
        return out
    }

    /// What a mapping is, in the mirror's terms. No descriptor: the device
    /// reaches the pages through the program's own mapping.
    static func backing(of vma: VMA) -> RegionBacking {
        if vma.inode == 0 { return vma.shared ? .shmem(fd: -1) : .anonymous }
        // Device major 0: an in-memory filesystem (tmpfs, memfd, shared
        // anonymous memory, hugetlbfs): shared pages with no page_mkwrite.
        let inMemory = vma.device >> 32 == 0
        if vma.shared { return inMemory ? .shmem(fd: -1) : .file(path: "", fd: -1, shared: true) }
        return .file(path: "", fd: -1, shared: false)
    }

    /// The mapping's filesystem is mounted for DAX (dax, dax=always).
    private func isDAX(_ vma: VMA) -> Bool {
        guard vma.inode != 0, vma.device >> 32 != 0, let mounts = try? MountTable.current() else { return false }
        let major = UInt32(vma.device >> 32), minor = UInt32(truncatingIfNeeded: vma.device)
        return mounts.entries.contains { $0.major == major && $0.minor == minor && $0.daxMode.isDAX }
    }
}
