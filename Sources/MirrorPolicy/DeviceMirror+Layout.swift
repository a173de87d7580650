import PageTables

/// The region's VMA layout, compared before every device operation: no event
/// exists for mprotect or mremap in place, so a range whose VMAs changed is
/// dropped as the kernel's notifier would have dropped it.
extension DeviceMirror {
    /// The VMAs clipped to the region, with what the kernel's notifier cares
    /// about, into `out` (its storage kept: a hit allocates nothing).
    func layout(_ vmas: [VMA], into out: inout [VMA]) {
        out.removeAll(keepingCapacity: true)
        for var v in vmas {
            let s = max(v.start, region.base), e = min(v.end, region.end)
            guard s < e else { continue }
            // An anonymous VMA's offset means nothing (merges change it): only
            // a file's offset says which pages the range maps.
            v.offset = v.inode == 0 ? 0 : v.offset + (s - v.start)
            v.start = s
            v.end = e
            out.append(v)
        }
    }

    func layout(_ vmas: [VMA]) -> [VMA] {
        var out: [VMA] = []
        layout(vmas, into: &out)
        return out
    }

    /// A range the two layouts map differently; `mappedAnew` if a VMA there
    /// now maps other memory than before (not only other permissions);
    /// `writeRestored` if the same memory is writable now and was not.
    /// `writeRemoved` if the same memory was writable and is not now.
    struct LayoutChange: Equatable { var start: UInt64, end: UInt64, mappedAnew: Bool, writeRestored: Bool, writeRemoved = false }

    /// Ranges where the two layouts map the region differently.
    func changedRanges(_ a: [VMA], _ b: [VMA]) -> [LayoutChange] {
        var cuts = Set<UInt64>([region.base, region.end])
        for v in a + b { cuts.insert(v.start); cuts.insert(v.end) }
        let points = cuts.sorted()
        func at(_ list: [VMA], _ x: UInt64) -> VMA? { list.first { $0.start <= x && x < $0.end } }
        func samePermissions(_ x: VMA?, _ y: VMA?) -> Bool {
            guard let x, let y else { return x == nil && y == nil }
            return x.readable == y.readable && x.writable == y.writable && x.executable == y.executable && x.shared == y.shared
        }
        var out: [LayoutChange] = []
        for (s, e) in zip(points, points.dropFirst()) where s < e {
            let va = at(a, s), vb = at(b, s)
            var sameBacking = va == nil && vb == nil
            if let va, let vb {
                sameBacking = va.device == vb.device && va.inode == vb.inode
                    && (va.inode == 0 || va.offset + (s - va.start) == vb.offset + (s - vb.start))
            }
            guard !sameBacking || !samePermissions(va, vb) else { continue }
            let anew = vb != nil && !sameBacking
            let restored = sameBacking && va?.writable != true && vb?.writable == true
            let removed = sameBacking && va?.writable == true && vb?.writable != true
            if let last = out.last, last.end == s, last.writeRemoved == removed {
                out[out.count - 1].end = e
                out[out.count - 1].mappedAnew = last.mappedAnew || anew
                out[out.count - 1].writeRestored = last.writeRestored || restored
            } else {
                out.append(LayoutChange(start: s, end: e, mappedAnew: anew, writeRestored: restored, writeRemoved: removed))
            }
        }
        return out
    }
}
