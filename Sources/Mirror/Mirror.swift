#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import FaultTracking
import PageTables

/// A simulated device that mirrors one region of this process's address
/// space, with the semantics of the kernel's HMM test driver (lib/test_hmm.c,
/// "dmirror"): device reads and writes go through the device's own table;
/// a missing entry (or a read-only one, for a write) makes the device fault
/// the range in — the user-space `hmm_range_fault` — and counts one fault;
/// anything that changes the CPU mapping removes the affected entries before
/// the device uses them again.
///
/// How invalidations reach the table (the kernel's mmu notifier, here):
///  1. userfaultfd events from the region's FaultTracker: UNMAP, REMOVE,
///     REMAP, FORK (FORK drops every entry of a private region: the CPU
///     write-protected its pages for copy-on-write);
///  2. no event exists for mprotect or mremap-in-place: before every device
///     operation the region's VMA layout (/proc/self/maps) is compared with
///     the one last seen and changed ranges are dropped, as the kernel's
///     notifier would have dropped them;
///  3. no event exists for truncate, hole punch, writeback, COW or page
///     migration (compaction) either:
///     before using entries, the device checks each against pagemap (same
///     PFN, still present, still exclusive for a private writable page) and
///     drops what disagrees (`staleDropped` counts them). This is what makes
///     a stale entry impossible to use, whatever the CPU did.
public final class Mirror: @unchecked Sendable {
    public let region: Region
    public let table = DeviceTable()
    public let truth: CPUTruth
    /// Where the region's VMAs come from: PROCMAP_QUERY for the region only
    /// (6.11+), else the maps text (`vmaQuery.method`).
    public let vmaQuery: VMAQuery
    public let tracker: FaultTracker?
    let aperture: Aperture
    let pageSize = UInt64(Syscall.pageSize)

    /// Faults taken by device operations since the mirror was created.
    public private(set) var faults = 0
    /// Entries found stale by revalidation before use (no event had removed them).
    public private(set) var staleDropped = 0
    /// Pages removed by invalidations (events, VMA changes, notifications).
    public private(set) var invalidatedPages: UInt64 = 0
    /// How long a range fault keeps retrying against concurrent invalidations.
    public var busyTimeout: Double = 2.0

    /// For device-dax: the order the kernel maps it with (smaps KernelPageSize).
    public let devdaxOrder: UInt8?
    /// 1 GiB device-dax spans the mirror faulted in: pagemap and PAGEMAP_SCAN
    /// report nothing for PUD mappings, so presence there is the mirror's own
    /// record (dropped by any invalidation); the PFN is the device's physical
    /// base + offset (sysfs), the order smaps' KernelPageSize.
    private var populatedPUDs = Set<UInt64>()
    private var ownSequence = 0
    private var trackerSeen = 0
    private var lastLayout: [VMASlice] = []
    /// SoftDirty.epoch when the table last dropped everything for a clear.
    private var softDirtySeen = 0

    /// Where the mirror learns the CPU's write bit from (HMM's WRITE code).
    public enum WriteBitSource: String, Sendable {
        /// Soft-dirty bits the mirror clears (at start, after a fork, after
        /// its VMAs change): exact, except after the writeback of a DAX file,
        /// which write-protects pages and tells nobody in user space.
        case softDirty = "soft-dirty"
        /// No soft-dirty in this kernel (or device-dax): private pages from
        /// pagemap's exclusive bit, shared file pages WRITE only where the
        /// device faulted them for writing, shmem and device-dax always.
        case model = "pagemap model"
    }
    public let writeBit: WriteBitSource
    /// The region maps a file on a DAX filesystem (MAP_SYNC worked).
    let fileDAX: Bool
    /// A shared mapping whose backing has no page_mkwrite (shmem, memfd,
    /// tmpfs files): when mprotect gives write permission back, the kernel
    /// upgrades none of its PTEs (mprotect_fixup asks vma_wants_writenotify
    /// with the old, read-only vm_page_prot), so every page stays
    /// write-protected until it is written again, while its soft-dirty bit
    /// still says "written". DAX and disk files have page_mkwrite: their
    /// dirty, soft-dirty PTEs become writable again, as the rule expects.
    let writeRestoreProtectsAll: Bool
    /// Soft-dirty must be cleared before the write bit means anything again.
    private var softDirtyStale = false

    /// Starts mirroring `region`. With `tracking`, a FaultTracker delivers the
    /// kernel's invalidation events; without it (or where the kernel has no
    /// usable userfaultfd mode) revalidation alone keeps the table honest.
    public init(region: Region, tracking: Bool = true, dax: Bool = false,
                truth: CPUTruth? = nil, kernel: KernelFeatures = .probe()) throws(Failure) {
        self.region = region
        if case .file = region.backing { fileDAX = dax } else { fileDAX = false }
        switch region.backing {
        case .shmem: writeRestoreProtectsAll = true
        case .file(_, let fd, true): writeRestoreProtectsAll = Mirror.onTmpfs(fd)
        default: writeRestoreProtectsAll = false
        }
        if let truth { self.truth = truth } else { self.truth = try CPUTruth(scanAvailable: kernel.pagemapScan) }
        vmaQuery = try Failure.wrapping("open /proc/self/maps") { () throws(SystemCallError) in try VMAQuery() }
        if case .devdax(_, _, _, let size, _) = region.backing {
            aperture = Aperture(fd: region.backing.sharedFD, knownSize: size)
            // The kernel's word on the entry size: smaps KernelPageSize.
            let smaps = (try? Smaps.parse(Smaps.read())) ?? []
            let kps = smaps.first { $0.contains(region.base) }?.kernelPageSize ?? 4096
            devdaxOrder = kps >= 1 << 30 ? 18 : (kps >= 2 << 20 ? 9 : 0)
        } else {
            aperture = Aperture(fd: region.backing.sharedFD)
            devdaxOrder = nil
        }
        if tracking {
            let backing: MemoryBacking
            switch region.backing {
            case .anonymous: backing = .anonymous
            case .shmem: backing = .shmem
            case .file: backing = .file(dax: dax)
            case .devdax: backing = .file(dax: true)
            }
            // Events only: a tracker that resolved faults itself would change
            // what the kernel maps (no THP, no huge zero page under MISSING).
            if TrackingMechanism.eventsOnly.refusal(for: backing, kernel: kernel) == nil {
                tracker = try FaultTracker(base: UnsafeMutableRawPointer(bitPattern: UInt(region.base))!,
                                           length: Int(region.length), backing: backing,
                                           mechanism: .eventsOnly, kernel: kernel)
            } else {
                tracker = nil  // revalidation alone (reported by `trackingNote`)
            }
        } else {
            tracker = nil
        }
        // Device-dax keeps the model: its 1 GiB entries are invisible to pagemap.
        writeBit = devdaxOrder == nil && SoftDirty.available ? .softDirty : .model
        lastLayout = layout((try? vmaQuery.vmas(overlapping: region.base, region.end)) ?? [])
        if writeBit == .softDirty {
            try Failure.wrapping("clear soft-dirty bits (/proc/self/clear_refs)") { () throws(SystemCallError) in
                try SoftDirty.clear()
            }
        }
        softDirtySeen = SoftDirty.epoch
    }

    deinit {
        tracker?.stop()
        aperture.unmap()
    }

    /// Grows with every invalidation the mirror learns of; a range fault that
    /// sees it change while it walked retries (HMM's sequence rule).
    public var sequence: Int { ownSequence + (tracker?.invalidationSequence ?? 0) + SoftDirty.epoch }

    // MARK: - invalidation

    /// Removes [address, address+length) from the table: the notifier call for
    /// changes the mirror is told of (e.g. a truncate it performed). Exactly
    /// that range, as HMM's notifier ranges are exact. (The kernel's test
    /// driver as released also erases the page past the range, an off-by-one
    /// in its xa_for_each_range bound; the differential kernel is built with
    /// it fixed: Scripts/guest/build-hmm-kernel.sh says why.)
    public func invalidate(_ address: UInt64, _ length: UInt64) {
        let s = max(address, region.base), e = min(address &+ length, region.end)
        guard s < e else { return }
        ownSequence += 1
        if !populatedPUDs.isEmpty {
            let first = s / pageSize >> 18, last = ((e + pageSize - 1) / pageSize - 1) >> 18
            populatedPUDs = populatedPUDs.filter { $0 < first || $0 > last }
        }
        invalidatedPages += table.remove(s / pageSize, (e + pageSize - 1) / pageSize)
    }

    /// The file backing the region was truncated to `size` bytes (shrunk,
    /// grown or not changed). The page cache unmaps the pages beyond the new
    /// size. A DAX file first breaks its layouts: ext4 and xfs call
    /// dax_layout_busy_page() for every size change, which unmaps every
    /// mapping of the whole file, so the device loses the whole region (the
    /// CPU's next touch maps the same PFNs again: revalidation cannot tell).
    public func fileTruncated(to size: UInt64) {
        if fileDAX { invalidate(region.base, region.length); return }
        let firstGone = (size + pageSize - 1) / pageSize * pageSize
        guard firstGone < region.fileOffset + region.length else { return }
        let from = region.base + (firstGone > region.fileOffset ? firstGone - region.fileOffset : 0)
        invalidate(from, region.end - from)
    }

    /// The process is about to mprotect [address, address+length): the VMAs
    /// there now, for `protectionChanged` afterwards (PROCMAP_QUERY: cheap).
    public func vmasBeforeProtect(_ address: UInt64, _ length: UInt64) throws(MirrorError) -> [SmapsEntry] {
        do { return try vmaQuery.vmas(overlapping: address, address &+ length) }
        catch { throw MirrorError(error.errno, "reading the VMAs before mprotect (\(vmaQuery.method.rawValue))") }
    }

    /// The process changed the protection of [address, address+length) to
    /// `readable`/`writable` (an mprotect the mirror is told of, as a
    /// truncate is), `before` being the VMAs there just before. As the
    /// kernel's mprotect_fixup, every VMA part whose permissions changed is
    /// invalidated for every device — even a change undone before the device
    /// looks again, which no VMA layout shows — and one that kept them is not.
    public func protectionChanged(_ address: UInt64, _ length: UInt64, readable: Bool, writable: Bool,
                                  executable: Bool = false, before: [SmapsEntry]) {
        let end = address &+ length
        for v in before where v.end > address && v.start < end {
            guard v.readable != readable || v.writable != writable || v.executable != executable else { continue }
            let s = max(v.start, address), e = min(v.end, end)
            invalidate(s, e - s)
            if writable && !v.writable && writeRestoreProtectsAll { softDirtyStale = true }
        }
    }

    /// Whether `fd` is a file on tmpfs (shmem: no page_mkwrite).
    static func onTmpfs(_ fd: Int32) -> Bool {
        dm_fs_magic(fd) == DM_TMPFS_MAGIC
    }

    /// Applies what changed since the last operation: tracker events and VMA
    /// layout changes. Returns the current VMAs.
    @discardableResult
    public func synchronize() throws(MirrorError) -> [SmapsEntry] {
        var replaced: [(UInt64, UInt64)] = []
        var forked = false
        let privateRegion = region.backing.sharedFD == nil
        if let tracker {
            let (events, overflowed) = tracker.invalidations(since: trackerSeen)
            trackerSeen = tracker.invalidationSequence
            if overflowed { invalidate(region.base, region.length) }
            for event in events {
                switch event {
                case .unmap(let s, let e):
                    invalidate(s, e - s)
                    replaced.append((s, e))  // mmap MAP_FIXED unmaps first: a new VMA may be there now
                case .remove(let s, let e):
                    invalidate(s, e - s)
                case .remap(let from, let to, let len):
                    invalidate(from, len)
                    invalidate(to, len)
                    replaced.append((from, from + len))
                    replaced.append((to, to + len))
                case .fork:
                    if privateRegion || fileDAX { invalidate(region.base, region.length) }
                    forked = true
                }
            }
        }
        let vmas: [SmapsEntry]
        // The VMAs around the region (2 MiB either side, for huge-entry hulls).
        do { vmas = try vmaQuery.vmas(overlapping: (region.base & ~0x1fffff) &- 0x200000, (region.end | 0x1fffff) &+ 0x200001) }
        catch { throw MirrorError(error.errno, "reading the region's VMAs (\(vmaQuery.method.rawValue))") }
        let now = layout(vmas)
        // An unmapped (or moved-over) range with a VMA in it now was mapped
        // anew, even where the layout reads the same (MAP_FIXED over itself).
        var mappedAnew = replaced.contains { r in now.contains { $0.start < r.1 && $0.end > r.0 } }
        if now != lastLayout {
            for change in changedRanges(lastLayout, now) {
                invalidate(change.start, change.end - change.start)
                replaced.append((change.start, change.end))
                // A new VMA (not one only unmapped or reprotected) counts as
                // soft-dirty all over (VM_SOFTDIRTY).
                mappedAnew = mappedAnew || change.mappedAnew
                if change.writeRestored && writeRestoreProtectsAll { softDirtyStale = true }
            }
            lastLayout = now
        }
        // A fork write-protects private pages without clearing their
        // soft-dirty bits (the kernel invalidated them anyway, copy-on-write),
        // and a new VMA counts as soft-dirty all over: clear again, so that
        // soft-dirty means writable once more (an invalidation of everything).
        // And a shmem range given write permission back has read-only PTEs
        // with their old soft-dirty bits (writeRestoreProtectsAll).
        // And a forked child's writes to a MAP_SYNC DAX file can leave the
        // parent's PTE of a page read-only with its soft-dirty bit still set
        // (seen on ext4- and xfs-DAX; a write fault's fsync write-protects
        // the page in every mapping, dax_entry_mkclean): which pages, user
        // space cannot see, so after a fork soft-dirty is cleared again.
        if writeBit == .softDirty && ((forked && (privateRegion || fileDAX)) || mappedAnew || softDirtyStale) {
            do { try SoftDirty.clear() } catch { throw MirrorError(error.errno, "clearing soft-dirty bits: \(error)") }
        }
        softDirtyStale = false
        if SoftDirty.epoch != softDirtySeen {
            // Some clear of this process's soft-dirty bits (ours or another
            // mirror's): the kernel invalidated the whole address space.
            softDirtySeen = SoftDirty.epoch
            invalidate(region.base, region.length)
        }
        if let tracker {
            // Register the new VMAs, one by one (a range spanning a hole is refused).
            for (s, e) in replaced {
                for v in now where v.end > s && v.start < e {
                    tracker.registerAgain(start: max(v.start, s), end: min(v.end, e))
                }
            }
        }
        return vmas
    }

    /// A VMA clipped to the region, with what the kernel's notifier cares about.
    struct VMASlice: Equatable {
        var start: UInt64, end: UInt64
        var perms: String
        /// File offset of `start` (0 for anonymous).
        var offset: UInt64
        var device: String, inode: UInt64
        var writable: Bool { perms.utf8.dropFirst().first == UInt8(ascii: "w") }
    }

    private func layout(_ vmas: [SmapsEntry]) -> [VMASlice] {
        vmas.compactMap { v in
            let s = max(v.start, region.base), e = min(v.end, region.end)
            guard s < e else { return nil }
            // An anonymous VMA's offset means nothing (merges change it): only
            // a file's offset says which pages the range maps.
            return VMASlice(start: s, end: e, perms: v.perms, offset: v.inode == 0 ? 0 : v.offset + (s - v.start),
                            device: v.device, inode: v.inode)
        }
    }

    /// A range the two layouts map differently; `mappedAnew` if a VMA there
    /// now maps other memory than before (not only other permissions);
    /// `writeRestored` if the same memory is writable now and was not.
    struct LayoutChange { var start: UInt64, end: UInt64, mappedAnew: Bool, writeRestored: Bool }

    /// Ranges where the two layouts map the region differently.
    private func changedRanges(_ a: [VMASlice], _ b: [VMASlice]) -> [LayoutChange] {
        var cuts = Set<UInt64>([region.base, region.end])
        for v in a + b { cuts.insert(v.start); cuts.insert(v.end) }
        let points = cuts.sorted()
        func at(_ list: [VMASlice], _ x: UInt64) -> VMASlice? { list.first { $0.start <= x && x < $0.end } }
        var out: [LayoutChange] = []
        for (s, e) in zip(points, points.dropFirst()) where s < e {
            let va = at(a, s), vb = at(b, s)
            var sameBacking = va == nil && vb == nil
            if let va, let vb {
                sameBacking = va.device == vb.device && va.inode == vb.inode
                    && (va.inode == 0 || va.offset + (s - va.start) == vb.offset + (s - vb.start))
            }
            guard !sameBacking || va?.perms != vb?.perms else { continue }
            let anew = vb != nil && !sameBacking
            let restored = sameBacking && va?.writable != true && vb?.writable == true
            if let last = out.last, last.end == s {
                out[out.count - 1].end = e
                out[out.count - 1].mappedAnew = last.mappedAnew || anew
                out[out.count - 1].writeRestored = last.writeRestored || restored
            } else {
                out.append(LayoutChange(start: s, end: e, mappedAnew: anew, writeRestored: restored))
            }
        }
        return out
    }

    // MARK: - the CPU's view

    /// Whether the CPU's PTE for `p` lets it write (HMM's WRITE bit).
    ///
    /// With soft-dirty (`writeBit == .softDirty`, see SoftDirty): writable is
    /// soft-dirty since the mirror's last clear, not write-protected by
    /// userfaultfd, and for a private page anonymous and exclusive.
    ///
    /// Without it, as far as pagemap tells: a private page only when it is
    /// anonymous and exclusive (otherwise a write would copy it); a shared
    /// file page only when the device faulted it for writing (its PTE starts
    /// write-protected for dirty tracking, and pagemap has no write bit);
    /// shmem has no dirty tracking.
    func cpuWritable(_ p: CPUPage, deviceWritable: Bool) -> Bool {
        guard p.state == .present, p.vmaWritable, !p.zero else { return false }
        if writeBit == .softDirty {
            guard p.softDirty, !p.uffdWriteProtected else { return false }
            return p.vmaShared || (p.exclusive && !p.fileOrShared)
        }
        if !p.vmaShared { return p.exclusive && !p.fileOrShared }
        if case .shmem = region.backing { return true }
        if case .devdax = region.backing { return true }  // no page cache, no dirty tracking
        return deviceWritable
    }

    /// dmirror's SNAPSHOT: the CPU page table as the mirror's walk sees it,
    /// without faulting anything in — one code per page.
    public func snapshot(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> [SnapshotCode] {
        let (s, e) = try pages(address, count)
        let vmas = try synchronize()
        let cpu = try readTruth(s, e, vmas)
        return cpu.enumerated().map { i, p in
            switch p.state {
            case .unmapped, .inaccessible: return .error
            case .notPresent: return .none
            case .present:
                let dev = table.lookup(s + UInt64(i)).map { $0.entry.writable && $0.entry.pfn(at: $0.index) == p.pfn } ?? false
                var c: SnapshotCode = cpuWritable(p, deviceWritable: dev) ? .write : .read
                // dmirror's ZERO is is_zero_pfn(): the 4 KiB zero page only. The
                // huge zero page (a DAX hole, an anonymous THP read) is READ|PMD,
                // as the kernel's own HMM_DMIRROR_SNAPSHOT reports it.
                if p.zero && p.order == 0 { c.insert(.zero) }
                if p.order == 9 { c.insert(.pmd) } else if p.order == 18 { c.insert(.pud) }
                return c
            }
        }
    }

    /// The device table's own view, in the same codes (NONE where no entry).
    public func deviceSnapshot(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> [SnapshotCode] {
        let (s, e) = try pages(address, count)
        return (s..<e).map { table.lookup($0)?.entry.code ?? .none }
    }

    // MARK: - range fault

    /// The user-space hmm_range_fault: faults [startVPN, endVPN) in on the CPU
    /// (MADV_POPULATE_READ/WRITE), reads what the kernel mapped, and fills the
    /// table. Errors as hmm_range_fault: EFAULT for an unmapped or PROT_NONE
    /// page (or one the CPU could not fault in, e.g. beyond EOF), EPERM for a
    /// write to a read-only mapping; pages before the failing 64-page window
    /// are mirrored, as dmirror's windowed walk leaves them.
    func rangeFault(_ startVPN: UInt64, _ endVPN: UInt64, write: Bool) throws(MirrorError) {
        let deadline = now() + busyTimeout
        while true {
            let seq = sequence
            let vmas = try synchronize()
            var bad: (vpn: UInt64, errno: Errno, why: String)?
            var vpn = startVPN
            var vi = 0
            while vpn < endVPN, bad == nil {
                let addr = vpn * pageSize
                while vi < vmas.count && vmas[vi].end <= addr { vi += 1 }
                guard vi < vmas.count, vmas[vi].start <= addr else {
                    bad = (vpn, .EFAULT, "nothing is mapped at 0x\(String(addr, radix: 16))"); break
                }
                let v = vmas[vi]
                if !v.readable { bad = (vpn, .EFAULT, "0x\(String(addr, radix: 16)) is mapped PROT_NONE"); break }
                if write && !v.writable { bad = (vpn, .EPERM, "0x\(String(addr, radix: 16)) is mapped read-only"); break }
                vpn = min(endVPN, v.end / pageSize)
            }
            // The walk faults pages in order: pages before the first bad one are
            // faulted (a SIGBUS there is the error, as hmm_range_fault meets it
            // first); dmirror keeps only whole 64-page windows before the error.
            let goodEnd = bad?.vpn ?? endVPN
            let storeEnd = bad.map { startVPN + ($0.vpn - startVPN) / 64 * 64 } ?? endVPN
            if goodEnd > startVPN {
                let addr = UnsafeMutableRawPointer(bitPattern: UInt(startVPN * pageSize))!
                let len = Int((goodEnd - startVPN) * pageSize)
                if madvise(addr, len, write ? DM_MADV_POPULATE_WRITE : DM_MADV_POPULATE_READ) != 0 {
                    let e = Errno.current
                    if e == .EINTR || e == .EAGAIN || e == .ENOMEM || e == .EINVAL {
                        // The layout changed under us (or a signal): walk again.
                        if now() > deadline { throw MirrorError(.EBUSY, "the range kept changing while faulting it in") }
                        continue
                    }
                    throw MirrorError(.EFAULT, "the CPU cannot fault in 0x\(String(startVPN * pageSize, radix: 16))+\(len): \(e.name)")
                }
            }
            if storeEnd > startVPN {
                let hullMask: UInt64 = devdaxOrder == 18 ? (1 << 18) - 1 : 511
                let hullStart = startVPN & ~hullMask, hullEnd = (storeEnd + hullMask) & ~hullMask
                if devdaxOrder == 18 {
                    for span in (startVPN >> 18)...((goodEnd - 1) >> 18) { populatedPUDs.insert(span) }
                }
                let cpu = try readTruth(hullStart, hullEnd, vmas)
                if sequence != seq {
                    if now() > deadline { throw MirrorError(.EBUSY, "invalidations kept racing the range fault") }
                    continue
                }
                store(cpu, hullStart: hullStart, startVPN, storeEnd, write: write)
            }
            if let bad { throw MirrorError(bad.errno, bad.why) }
            return
        }
    }

    private func store(_ cpu: [CPUPage], hullStart: UInt64, _ s: UInt64, _ e: UInt64, write: Bool) {
        var vpn = s
        while vpn < e {
            let p = cpu[Int(vpn - hullStart)]
            guard p.state == .present else { vpn += 1; continue }
            if p.order == 18 {
                let span = vpn & ~((1 << 18) - 1)
                let w = write || cpuWritable(p, deviceWritable: false)
                table.insert(DeviceEntry(pfn: p.pfn - (vpn - span), order: 18, writable: w), at: span)
                vpn = span + (1 << 18)
            } else if p.order == 9 {
                let span = vpn & ~511
                let basePFN = p.pfn - (vpn - span)
                let w = write || cpuWritable(p, deviceWritable: false)
                table.insert(DeviceEntry(pfn: basePFN, order: 9, writable: w, zero: p.zero), at: span)
                vpn = span + 512
            } else {
                let w = write || cpuWritable(p, deviceWritable: false)
                table.insert(DeviceEntry(pfn: p.pfn, writable: w, zero: p.zero), at: vpn)
                vpn += 1
            }
        }
    }

    /// Faults [address, address+count) in and mirrors it without a device
    /// access (the range fault alone: what the benchmark measures).
    public func faultIn(_ address: UInt64, _ count: UInt64, write: Bool) throws(MirrorError) {
        let (s, e) = try pages(address, count)
        try rangeFault(s, e, write: write)
    }

    // MARK: - device access

    /// The device reads `count` bytes at `address` (dmirror READ). Returns the
    /// bytes and the faults this call took.
    public func read(_ address: UInt64, _ count: Int) throws(MirrorError) -> (bytes: [UInt8], faults: Int) {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: count, alignment: 16)
        defer { buf.deallocate() }
        let faults = try access(address, count, write: false) { (vpn, entry, index, lo, hi) throws(MirrorError) in
            try self.copyPage(vpn, entry, index, lo, hi, buffer: buf, bufferBase: address, write: false)
        }
        let out = [UInt8](buf)
        return (out, faults)
    }

    /// The device writes `bytes` at `address` (dmirror WRITE). Durable on
    /// return for a file (see Aperture). Returns the faults it took.
    @discardableResult
    public func write(_ address: UInt64, _ bytes: [UInt8]) throws(MirrorError) -> Int {
        let buf = UnsafeMutableRawBufferPointer.allocate(byteCount: bytes.count, alignment: 16)
        defer { buf.deallocate() }
        buf.copyBytes(from: bytes)
        return try access(address, bytes.count, write: true) { (vpn, entry, index, lo, hi) throws(MirrorError) in
            try self.copyPage(vpn, entry, index, lo, hi, buffer: buf, bufferBase: address, write: true)
        }
    }

    /// dmirror's loop: use entries from the front while they exist (and are
    /// writable, for a write); at the first missing one, fault the rest of the
    /// range in and count a fault; repeat.
    private func access(_ address: UInt64, _ count: Int, write: Bool,
                        copy: (UInt64, DeviceEntry, UInt64, UInt64, UInt64) throws(MirrorError) -> Void) throws(MirrorError) -> Int {
        let (s, e) = try pages(address, UInt64(count))
        let deadline = now() + busyTimeout
        var faults = 0
        var pos = s
        var lastFaultAt = UInt64.max
        while pos < e {
            let vmas = try synchronize()
            try revalidate(pos, e, vmas)
            var vpn = pos
            while vpn < e, let (entry, index) = table.lookup(vpn), !write || entry.writable {
                let lo = max(address, vpn * pageSize), hi = min(address + UInt64(count), (vpn + 1) * pageSize)
                try copy(vpn, entry, index, lo, hi)
                vpn += 1
            }
            // A fault that left the same page missing raced with an
            // invalidation: retry, but not forever.
            if vpn == lastFaultAt && now() > deadline {
                throw MirrorError(.EBUSY, "the range kept changing under the device")
            }
            pos = vpn
            if pos == e { break }
            try rangeFault(pos, e, write: write)
            lastFaultAt = pos
            faults += 1
            self.faults += 1
        }
        return faults
    }

    private func copyPage(_ vpn: UInt64, _ entry: DeviceEntry, _ index: UInt64, _ lo: UInt64, _ hi: UInt64,
                          buffer: UnsafeMutableRawBufferPointer, bufferBase: UInt64, write: Bool) throws(MirrorError) {
        let n = Int(hi - lo)
        let buf = buffer.baseAddress! + Int(lo - bufferBase)
        if !write && entry.zero {
            memset(buf, 0, n)
            return
        }
        if region.backing.sharedFD != nil {
            let off = region.fileOffset + (lo - region.base)
            if write { try aperture.write(fileOffset: off, from: buf, count: n) }
            else { try aperture.read(fileOffset: off, into: buf, count: n) }
        } else if write {
            try Aperture.writeProcess(address: lo, from: buf, count: n)
        } else {
            try Aperture.readProcess(address: lo, into: buf, count: n)
        }
    }

    /// Drops entries in [s, e) that no longer agree with the CPU (rule 3 above).
    private func revalidate(_ s: UInt64, _ e: UInt64, _ vmas: [SmapsEntry], truth given: [CPUPage]? = nil) throws(MirrorError) {
        let entries = table.entries(s, e)
        guard !entries.isEmpty else { return }
        let cpu: [CPUPage]
        if let given { cpu = given } else { cpu = try readTruth(s, e, vmas) }
        for (start, entry) in entries {
            let lo = max(start, s), hi = min(start + entry.pages, e)
            var vpn = lo
            while vpn < hi {
                let p = cpu[Int(vpn - s)]
                var ok = p.state == .present && p.pfn == entry.pfn(at: vpn - start) && p.zero == entry.zero
                if ok && entry.writable {
                    ok = p.vmaWritable && (p.vmaShared || (p.exclusive && !p.fileOrShared))
                }
                if !ok {
                    var runEnd = vpn + 1
                    while runEnd < hi {
                        let q = cpu[Int(runEnd - s)]
                        if q.state == .present && q.pfn == entry.pfn(at: runEnd - start) { break }
                        runEnd += 1
                    }
                    staleDropped += 1
                    invalidate(vpn * pageSize, (runEnd - vpn) * pageSize)
                    vpn = runEnd
                } else {
                    vpn += 1
                }
            }
        }
    }

    // MARK: - check

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
        let cpu = try readTruth(s, e, vmas)
        let before = staleDropped
        if !strict { try revalidate(s, e, vmas, truth: cpu) }
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
                let p = cpu[Int(vpn - s)]
                let want = entry.pfn(at: vpn - start)
                // A huge entry reaching outside the range is checked inside it only.
                let dev = "pfn 0x\(String(want, radix: 16)) \(entry.code)"
                guard p.state == .present else {
                    note(vpn, "the device maps a page the CPU does not", dev, "\(p.state)")
                    continue
                }
                let ker = "pfn 0x\(String(p.pfn, radix: 16)) order \(p.order)\(p.zero ? " zero" : "")"
                if p.pfn != want { note(vpn, "PFN differs", dev, ker) }
                // A device may map part of a huge page with smaller entries (an
                // invalidation split its entry); a larger entry than the CPU's
                // would reach pages the CPU no longer maps as one.
                else if truth.scanAvailable && entry.order > p.order { note(vpn, "map order differs", dev, ker) }
                else if p.zero != entry.zero { note(vpn, "zero page differs", dev, ker) }
                else if entry.writable && !(p.vmaWritable && (p.vmaShared || (p.exclusive && !p.fileOrShared))) {
                    note(vpn, "the device may write where the CPU may not", dev,
                         ker + (p.vmaWritable ? " shared-by-COW" : " read-only"))
                }
            }
        }
        return (out, revalidated)
    }

    /// How device writes reach memory: "pwrite (DAX)", "pmem_memcpy_persist"
    /// (device-dax), "memcpy+msync" (a file that is not pmem, or shmem) or
    /// "process_vm_writev" (anonymous memory). See Aperture.
    public var writePath: String {
        switch region.backing {
        case .anonymous, .file(_, _, false): return "process_vm_writev"
        case .shmem: return aperture.base == nil ? "aperture" : "memcpy+msync"
        case .file: return aperture.base == nil ? "aperture" : (aperture.isPmem ? "pwrite (DAX)" : "memcpy+msync")
        case .devdax: return aperture.base == nil ? "aperture" : (aperture.isPmem ? "pmem_memcpy_persist" : "memcpy+msync")
        }
    }

    // MARK: - helpers

    private func pages(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> (UInt64, UInt64) {
        guard count > 0 else { throw MirrorError(.EINVAL, "empty range") }
        guard region.contains(address, count) else {
            throw MirrorError(.EINVAL, "0x\(String(address, radix: 16))+\(count) is outside the mirrored region")
        }
        return (address / pageSize, (address + count + pageSize - 1) / pageSize)
    }

    private func readTruth(_ s: UInt64, _ e: UInt64, _ vmas: [SmapsEntry]) throws(MirrorError) -> [CPUPage] {
        var cpu: [CPUPage]
        do { cpu = try truth.read(s, e, vmas: vmas) } catch { throw MirrorError(.EIO, error.message) }
        // Device-dax in 1 GiB entries: pagemap is blind there (see populatedPUDs).
        if devdaxOrder == 18, case .devdax(_, _, let physBase, _, _) = region.backing {
            for i in cpu.indices where cpu[i].state == .notPresent {
                let vpn = s + UInt64(i)
                let addr = vpn * pageSize
                guard addr >= region.base, addr < region.end, populatedPUDs.contains(vpn >> 18) else { continue }
                cpu[i].state = .present
                cpu[i].pfn = (physBase + region.fileOffset + (addr - region.base)) / pageSize
                cpu[i].order = 18
                cpu[i].fileOrShared = true
            }
        }
        return cpu
    }

    private func now() -> Double {
        var ts = timespec()
        clock_gettime(CLOCK_MONOTONIC, &ts)
        return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9
    }
}
