import DaxCore
import PageTables

/// The mmu notifier's side of the mirror: what removes entries, and the
/// synchronization every device operation starts with.
extension DeviceMirror {
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
    public func vmasBeforeProtect(_ address: UInt64, _ length: UInt64) throws(MirrorError) -> [VMA] {
        var out: [VMA] = []
        try cpu.vmas(overlapping: address, address &+ length, into: &out)
        return out
    }

    /// The process changed the protection of [address, address+length) to
    /// `readable`/`writable` (an mprotect the mirror is told of, as a
    /// truncate is), `before` being the VMAs there just before. As the
    /// kernel's mprotect_fixup, every VMA part whose permissions changed is
    /// invalidated for every device — even a change undone before the device
    /// looks again, which no VMA layout shows — and one that kept them is not.
    public func protectionChanged(_ address: UInt64, _ length: UInt64, readable: Bool, writable: Bool,
                                  executable: Bool = false, before: [VMA]) {
        let end = address &+ length
        for v in before where v.end > address && v.start < end {
            guard v.readable != readable || v.writable != writable || v.executable != executable else { continue }
            let s = max(v.start, address), e = min(v.end, end)
            invalidate(s, e - s)
            if writable && !v.writable && writeRestoreProtectsAll { softDirtyStale = true }
            if writable != v.writable { devicePagesVMAWritable(s, e, writable) }
        }
    }

    /// Write permission taken from [s, e) or given back: as change_pte_range,
    /// device pages there become read-only (giving it back upgrades none,
    /// nor a page that came home from one without a soft-dirty bit).
    func devicePagesVMAWritable(_ s: UInt64, _ e: UInt64, _ writable: Bool) {
        let lo = max(s, region.base), hi = min(e, region.end)
        guard lo < hi, cpu.devicePrivateCount > 0 || writable else { return }
        cpu.deviceVMAWritable(lo / pageSize, (hi + pageSize - 1) / pageSize, writable)
    }

    /// Applies what changed since the last operation: events and VMA layout
    /// changes. Returns the VMAs that overlap the region now (whole: a huge
    /// page reaching out of the region lies in one of them, as a PMD never
    /// spans two VMAs, so the unrelated VMAs beside it never matter).
    @discardableResult
    public func synchronize() throws(MirrorError) -> [VMA] {
        var (replaced, forked) = applyEvents()
        applyMigrationWalks()
        try cpu.vmas(overlapping: region.base, region.end, into: &vmaScratch)
        layout(vmaScratch, into: &layoutScratch)
        let mappedAnew = applyLayoutChanges(&replaced)
        try clearSoftDirtyIfStale(forked: forked, mappedAnew: mappedAnew)
        if cpu.softDirtyEpoch != softDirtySeen {
            // Some clear of this process's soft-dirty bits (ours or another
            // mirror's): the kernel invalidated the whole address space.
            softDirtySeen = cpu.softDirtyEpoch
            invalidate(region.base, region.length)
        }
        // Register the new VMAs, one by one (a range spanning a hole is refused).
        for (s, e) in replaced {
            for v in layoutScratch where v.end > s && v.start < e {
                cpu.registerAgain(start: max(v.start, s), end: min(v.end, e))
            }
        }
        return vmaScratch
    }

    /// Other devices' migration walks since the last operation: their
    /// windows' entries go (the migrating device's own are spared).
    private func applyMigrationWalks() {
        let walks = cpu.migrationWalks.walks
        guard walksSeen < walks.count else { return }
        for w in walks[walksSeen...] where w.owner != device {
            invalidate(w.startVPN * pageSize, (w.endVPN - w.startVPN) * pageSize)
        }
        walksSeen = walks.count
    }

    /// The notifier events since the last operation, applied. Returns the
    /// ranges unmapped or moved (a new VMA may be there now: mmap MAP_FIXED
    /// unmaps first) and whether the process forked.
    private func applyEvents() -> (replaced: [(UInt64, UInt64)], forked: Bool) {
        var replaced: [(UInt64, UInt64)] = []
        var forked = false
        cpu.settleEvents()  // a munmap that returned has its event counted (one atomic load when idle)
        guard cpu.eventSequence != eventsSeen else { return (replaced, forked) }
        let (events, overflowed) = cpu.events(since: eventsSeen)
        eventsSeen = cpu.eventSequence
        if overflowed { invalidate(region.base, region.length) }
        for event in events {
            switch event {
            case .unmap(let s, let e):
                invalidate(s, e - s)
                replaced.append((s, e))
            case .remove(let s, let e):
                invalidate(s, e - s)
            case .remap(let from, let to, let len):
                invalidate(from, len)
                invalidate(to, len)
                replaced.append((from, from + len))
                replaced.append((to, to + len))
            case .fork:
                if region.backing.sharedFD == nil || fileDAX { invalidate(region.base, region.length) }
                forked = true
            }
        }
        return (replaced, forked)
    }

    /// The VMA layout now (`layoutScratch`) against the last one: every
    /// changed range invalidated and added to `replaced`. Returns whether a
    /// VMA was mapped anew — even where the layout reads the same (MAP_FIXED
    /// over itself, seen as an unmap event over a range with a VMA in it).
    private func applyLayoutChanges(_ replaced: inout [(UInt64, UInt64)]) -> Bool {
        var mappedAnew = replaced.contains { r in layoutScratch.contains { $0.start < r.1 && $0.end > r.0 } }
        guard layoutScratch != lastLayout else { return mappedAnew }
        for change in changedRanges(lastLayout, layoutScratch) {
            invalidate(change.start, change.end - change.start)
            replaced.append((change.start, change.end))
            // A new VMA (not one only unmapped or reprotected) counts as
            // soft-dirty all over (VM_SOFTDIRTY).
            mappedAnew = mappedAnew || change.mappedAnew
            if change.writeRestored && writeRestoreProtectsAll { softDirtyStale = true }
            if change.writeRemoved { devicePagesVMAWritable(change.start, change.end, false) }
            if change.writeRestored { devicePagesVMAWritable(change.start, change.end, true) }
        }
        lastLayout = layoutScratch
        return mappedAnew
    }

    /// Soft-dirty must mean "writable" again after:
    /// - a fork, which write-protects private pages without clearing their
    ///   soft-dirty bits (the kernel invalidated them anyway, copy-on-write);
    /// - a new VMA, which counts as soft-dirty all over;
    /// - a shmem range given write permission back: read-only PTEs with
    ///   their old soft-dirty bits (writeRestoreProtectsAll);
    /// - a forked child's writes to a MAP_SYNC DAX file, which can leave the
    ///   parent's PTE of a page read-only with its soft-dirty bit still set
    ///   (seen on ext4- and xfs-DAX; a write fault's fsync write-protects
    ///   the page in every mapping, dax_entry_mkclean): which pages, user
    ///   space cannot see, so after a fork soft-dirty is cleared again.
    /// Clearing is an invalidation of everything.
    private func clearSoftDirtyIfStale(forked: Bool, mappedAnew: Bool) throws(MirrorError) {
        let privateRegion = region.backing.sharedFD == nil
        if writeBit == .softDirty && ((forked && (privateRegion || fileDAX)) || mappedAnew || softDirtyStale) {
            try clearSoftDirty()
        }
        softDirtyStale = false
    }
}
