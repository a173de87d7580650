import DaxCore
import PageTables

/// Device reads and writes (dmirror READ / WRITE). An access of N pages costs
/// one synchronization (one VMA query of the region) and one copy per run of
/// contiguous pages; the page table is read once for the pages it holds
/// entries of (revalidation) and once per range fault for the rest — a miss
/// does not synchronize or revalidate again what its fault just stored —
/// as HMM_DMIRROR_READ of npages costs one ioctl.
extension DeviceMirror {
    /// The device reads `count` bytes at `address`. Returns the bytes and the
    /// faults this call took.
    public func read(_ address: UInt64, _ count: Int) throws(MirrorError) -> (bytes: [UInt8], faults: Int) {
        var out = [UInt8](repeating: 0, count: count)
        let faults = try read(address, into: &out)
        return (out, faults)
    }

    /// The device reads `bytes.count` bytes at `address` into `bytes`, which
    /// the caller keeps between reads (a hit allocates nothing). Returns the
    /// faults this call took.
    public func read(_ address: UInt64, into bytes: inout [UInt8]) throws(MirrorError) -> Int {
        // (withUnsafeMutableBytes has no typed throws: carry the error out.)
        let outcome: Result<Int, MirrorError> = bytes.withUnsafeMutableBytes { buf in
            do throws(MirrorError) { return .success(try read(address, into: buf)) } catch { return .failure(error) }
        }
        return try outcome.get()
    }

    /// The device reads `buffer.count` bytes at `address` into `buffer`.
    public func read(_ address: UInt64, into buffer: UnsafeMutableRawBufferPointer) throws(MirrorError) -> Int {
        guard let base = buffer.baseAddress else { throw MirrorError(.EINVAL, "empty range") }
        return try access(address, buffer.count, buffer: base, write: false)
    }

    /// The device writes `bytes` at `address`. Durable on return for a file
    /// (see Aperture). Returns the faults it took.
    @discardableResult
    public func write(_ address: UInt64, _ bytes: [UInt8]) throws(MirrorError) -> Int {
        let outcome: Result<Int, MirrorError> = bytes.withUnsafeBytes { buf in
            do throws(MirrorError) { return .success(try write(address, from: buf)) } catch { return .failure(error) }
        }
        return try outcome.get()
    }

    /// The device writes `buffer` at `address`; returns the faults it took.
    @discardableResult
    public func write(_ address: UInt64, from buffer: UnsafeRawBufferPointer) throws(MirrorError) -> Int {
        guard let base = buffer.baseAddress else { throw MirrorError(.EINVAL, "empty range") }
        // The aperture and the guarded copy only read from it.
        return try access(address, buffer.count, buffer: UnsafeMutableRawPointer(mutating: base), write: true)
    }

    /// dmirror's loop: use entries from the front while they exist (and are
    /// writable, for a write); at the first missing one, fault the rest of the
    /// range in and count a fault; repeat.
    private func access(_ address: UInt64, _ count: Int, buffer: UnsafeMutableRawPointer, write: Bool) throws(MirrorError) -> Int {
        let (s, e) = try pages(address, UInt64(count))
        let end = address + UInt64(count)
        let deadline = monotonicSeconds() + busyTimeout
        var faults = 0
        var pos = s
        var lastFaultAt = UInt64.max
        // The VMAs of this pass's synchronization; nil after a range fault,
        // whose entries are as fresh as a synchronization would make them.
        var synced: [VMA]?
        var fresh = false
        while pos < e {
            if !fresh {
                let vmas = try synchronize()
                try revalidate(pos, e, vmas)
                synced = vmas
            }
            fresh = false
            // The usable entries from `pos`, copied in runs of contiguous
            // bytes (a zero-page entry reads as zeros without a copy).
            // One lookup per entry, not per page: a PMD entry is 512 pages.
            var vpn = pos
            var runStart = max(address, pos * pageSize), runEnd = runStart
            while vpn < e, let (entry, index) = table.lookup(vpn), !write || entry.writable {
                let next = min(vpn - index + entry.pages, e)
                let lo = max(address, vpn * pageSize), hi = min(end, next * pageSize)
                if !write && entry.zero {
                    try copy(runStart, runEnd, buffer, address, write: write)
                    (buffer + Int(lo - address)).initializeMemory(as: UInt8.self, repeating: 0, count: Int(hi - lo))
                    runStart = hi
                } else if entry.devicePrivate {
                    // The device's own page: its memory, not the CPU's.
                    try copy(runStart, runEnd, buffer, address, write: write)
                    let offset = Int(lo - vpn * pageSize)
                    if write { cpu.devicePageWrite(vpn, offset: offset, from: buffer + Int(lo - address), count: Int(hi - lo)) }
                    else { cpu.devicePageRead(vpn, offset: offset, into: buffer + Int(lo - address), count: Int(hi - lo)) }
                    runStart = hi
                }
                runEnd = hi
                vpn = next
            }
            try copy(runStart, runEnd, buffer, address, write: write)
            // A fault that left the same page missing raced with an
            // invalidation: retry, but not forever.
            if vpn == lastFaultAt && monotonicSeconds() > deadline {
                throw MirrorError(.EBUSY, "the range kept changing under the device")
            }
            pos = vpn
            if pos == e { break }
            try rangeFault(pos, e, write: write, synchronized: synced)
            synced = nil
            fresh = true
            lastFaultAt = pos
            faults += 1
            self.faults += 1
        }
        return faults
    }

    /// The device's copy of [lo, hi) (one run of mirrored pages) to or from
    /// the caller's buffer, which holds `bufferBase` at its start.
    private func copy(_ lo: UInt64, _ hi: UInt64, _ buffer: UnsafeMutableRawPointer, _ bufferBase: UInt64,
                      write: Bool) throws(MirrorError) {
        guard hi > lo else { return }
        let buf = buffer + Int(lo - bufferBase)
        if write { try cpu.deviceWrite(lo, from: buf, count: Int(hi - lo)) }
        else { try cpu.deviceRead(lo, into: buf, count: Int(hi - lo)) }
    }

    /// What the CPU's page table shows of a page this device's `entry`
    /// holds in its own memory: device-private, or held exclusively.
    func heldState(_ entry: DeviceEntry) -> CPUPage.State {
        entry.atomic ? .deviceExclusive(owner: device) : .devicePrivate(owner: device)
    }

    /// Drops entries in [s, e) that no longer agree with the CPU (rule 3 of
    /// Mirror): the page is gone, maps another PFN, or a writable entry's
    /// page may no longer be written by the CPU. A PFN is the whole identity
    /// of a page (the zero page included), so presence and PFN are all it
    /// reads: one pagemap read of [s, e), into storage kept between calls.
    func revalidate(_ s: UInt64, _ e: UInt64, _ vmas: [VMA], truth given: [CPUPage]? = nil) throws(MirrorError) {
        guard table.entryCount > 0 else { return }
        // Only the pages from the first entry to the last are read: a miss
        // leaves the rest to its range fault, which reads them anyway.
        guard let (lo, last) = table.occupied(s, e) else { return }
        let hi = last + 1
        let origin: UInt64
        if let given { pageScratch = given; origin = s } else {
            try readTruth(lo, hi, vmas, detail: .presence, into: &pageScratch)
            origin = lo
        }
        var vpn = lo
        while vpn < hi {
            guard let (entry, index) = table.lookup(vpn) else { vpn += 1; continue }
            let start = vpn - index
            let entryEnd = min(start + entry.pages, hi)
            while vpn < entryEnd {
                let p = pageScratch[Int(vpn - origin)]
                var ok: Bool
                if entry.devicePrivate {
                    // Still this device's page (it went home at a CPU touch).
                    ok = p.state == heldState(entry) && p.pfn == entry.pfn
                        && (!entry.writable || p.devicePrivateWritable)
                } else {
                    ok = p.state == .present && p.pfn == entry.pfn(at: vpn - start)
                    if ok && entry.writable { ok = p.writableWithoutCopyOnWrite }
                }
                guard !ok else { vpn += 1; continue }
                var runEnd = vpn + 1
                while runEnd < entryEnd {
                    let q = pageScratch[Int(runEnd - origin)]
                    if q.state == .present && q.pfn == entry.pfn(at: runEnd - start) { break }
                    runEnd += 1
                }
                staleDropped += 1
                invalidate(vpn * pageSize, (runEnd - vpn) * pageSize)
                vpn = runEnd
                break  // the entry may be gone: look the next page up again
            }
        }
    }
}
