import DaxCore
import PageTables

/// The user-space hmm_range_fault, and what the CPU's page table says of a page.
extension DeviceMirror {
    /// Whether the CPU's PTE for `p` lets it write (HMM's WRITE bit).
    ///
    /// With soft-dirty (`writeBit == .softDirty`, see SoftDirty): writable is
    /// soft-dirty since the mirror's last clear, not write-protected by
    /// userfaultfd, and for a private page anonymous and exclusive.
    ///
    /// With pagemap alone, as far as pagemap tells: a private page only when
    /// it is anonymous and exclusive (otherwise a write would copy it); a
    /// shared file page only when the device faulted it for writing (its PTE
    /// starts write-protected for dirty tracking, and pagemap has no write
    /// bit); shmem has no dirty tracking.
    func cpuWritable(_ p: CPUPage, deviceWritable: Bool) -> Bool {
        guard p.state == .present, p.vmaWritable, !p.zero else { return false }
        if writeBit == .softDirty {
            guard p.softDirty, !p.uffdWriteProtected else { return false }
            return p.writableWithoutCopyOnWrite
        }
        if !p.vmaShared { return p.exclusive && !p.fileOrShared && !p.uffdWriteProtected }
        if case .shmem = region.backing { return true }
        if case .devdax = region.backing { return true }  // no page cache, no dirty tracking
        return deviceWritable
    }

    /// Faults [startVPN, endVPN) in on the CPU (MADV_POPULATE_READ/WRITE),
    /// reads what the kernel mapped, and fills the table. Errors as
    /// hmm_range_fault: EFAULT for an unmapped or PROT_NONE page (or one the
    /// CPU could not fault in, e.g. beyond EOF), EPERM for a write to a
    /// read-only mapping; pages before the failing 64-page window are
    /// mirrored, as dmirror's windowed walk leaves them.
    /// `synchronized`: the VMAs of a synchronization just made (the
    /// access's), used for the first walk instead of another.
    func rangeFault(_ startVPN: UInt64, _ endVPN: UInt64, write: Bool, synchronized: [VMA]? = nil) throws(MirrorError) {
        let deadline = monotonicSeconds() + busyTimeout
        var given = synchronized
        while true {
            let vmas: [VMA]
            if let g = given { vmas = g; given = nil } else { vmas = try synchronize() }
            // After synchronize: what it applied is no race; anything from
            // here to the store is (HMM's mmu_interval_read_begin).
            let seq = sequence
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
            if goodEnd > startVPN, let e = try populate(startVPN, goodEnd, vmas, write: write) {
                if e == .EINTR || e == .EAGAIN || e == .ENOMEM || e == .EINVAL {
                    // The layout changed under us (or a signal): walk again.
                    if monotonicSeconds() > deadline { throw MirrorError(.EBUSY, "the range kept changing while faulting it in") }
                    continue
                }
                throw MirrorError(.EFAULT, "the CPU cannot fault in 0x\(String(startVPN * pageSize, radix: 16))+\((goodEnd - startVPN) * pageSize): \(e.name)")
            }
            if storeEnd > startVPN {
                let hullMask: UInt64 = devdaxOrder == 18 ? (1 << 18) - 1 : 511
                let hullStart = startVPN & ~hullMask, hullEnd = (storeEnd + hullMask) & ~hullMask
                if devdaxOrder == 18 {
                    for span in (startVPN >> 18)...((goodEnd - 1) >> 18) { populatedPUDs.insert(span) }
                }
                let truthPages = try readTruth(hullStart, hullEnd, vmas, detail: .full)
                if sequence != seq {
                    if monotonicSeconds() > deadline { throw MirrorError(.EBUSY, "invalidations kept racing the range fault") }
                    continue
                }
                store(truthPages, hullStart: hullStart, startVPN, storeEnd, write: write)
            }
            if let bad { throw MirrorError(bad.errno, bad.why) }
            return
        }
    }

    /// Faults [s, e) in on the CPU, except this device's own private pages:
    /// hmm_range_fault reports those without a fault (for a write, only the
    /// writable ones; a read-only one comes home to be written).
    private func populate(_ s: UInt64, _ e: UInt64, _ vmas: [VMA], write: Bool) throws(MirrorError) -> Errno? {
        guard cpu.devicePrivateCount > 0 else { return cpu.populate(s * pageSize, (e - s) * pageSize, write: write) }
        let truth = try readTruth(s, e, vmas, detail: .presence)
        func own(_ vpn: UInt64) -> Bool {
            let p = truth[Int(vpn - s)]
            return p.state == .devicePrivate(owner: device) && (!write || p.devicePrivateWritable)
        }
        var vpn = s
        while vpn < e {
            while vpn < e && own(vpn) { vpn += 1 }
            var end = vpn
            while end < e && !own(end) { end += 1 }
            if end > vpn, let failed = cpu.populate(vpn * pageSize, (end - vpn) * pageSize, write: write) { return failed }
            vpn = end
        }
        return nil
    }

    /// One entry per CPU mapping: a PUD, a PMD or a PTE, as the CPU maps it;
    /// this device's own private pages as device-private entries.
    private func store(_ cpu: [CPUPage], hullStart: UInt64, _ s: UInt64, _ e: UInt64, write: Bool) {
        var vpn = s
        while vpn < e {
            let p = cpu[Int(vpn - hullStart)]
            if p.state == .devicePrivate(owner: device) {
                table.insert(DeviceEntry(pfn: p.pfn, writable: p.devicePrivateWritable, devicePrivate: true), at: vpn)
            }
            guard p.state == .present else { vpn += 1; continue }
            let w = write || cpuWritable(p, deviceWritable: false)
            if p.order == 18 {
                let span = vpn & ~((1 << 18) - 1)
                table.insert(DeviceEntry(pfn: p.pfn - (vpn - span), order: 18, writable: w), at: span)
                vpn = span + (1 << 18)
            } else if p.order == 9 {
                let span = vpn & ~511
                table.insert(DeviceEntry(pfn: p.pfn - (vpn - span), order: 9, writable: w, zero: p.zero), at: span)
                vpn = span + 512
            } else {
                // Present 4 KiB pages to the end of this 2 MiB span: one table
                // update for the run.
                let spanEnd = min((vpn & ~511) + 512, e)
                var runEnd = vpn + 1
                while runEnd < spanEnd, case let q = cpu[Int(runEnd - hullStart)], q.state == .present, q.order == 0 { runEnd += 1 }
                table.insertPTEs(vpn, runEnd) { v in
                    let q = cpu[Int(v - hullStart)]
                    return DeviceEntry(pfn: q.pfn, writable: write || self.cpuWritable(q, deviceWritable: false), zero: q.zero)
                }
                vpn = runEnd
            }
        }
    }

    /// Faults [address, address+count) in and mirrors it without a device
    /// access (the range fault alone: what the benchmark measures).
    public func faultIn(_ address: UInt64, _ count: UInt64, write: Bool) throws(MirrorError) {
        let (s, e) = try pages(address, count)
        try rangeFault(s, e, write: write)
    }

    /// The CPU's truth of [s, e), with device-dax's 1 GiB entries filled in.
    func readTruth(_ s: UInt64, _ e: UInt64, _ vmas: [VMA], detail: TruthDetail) throws(MirrorError) -> [CPUPage] {
        var out: [CPUPage] = []
        try readTruth(s, e, vmas, detail: detail, into: &out)
        return out
    }

    func readTruth(_ s: UInt64, _ e: UInt64, _ vmas: [VMA], detail: TruthDetail, into out: inout [CPUPage]) throws(MirrorError) {
        try cpu.pages(s, e, vmas: vmas, detail: detail, into: &out)
        // Device-dax in 1 GiB entries: pagemap is blind there (see populatedPUDs).
        guard devdaxOrder == 18, case .devdax(_, _, let physBase, _, _) = region.backing else { return }
        for i in out.indices where out[i].state == .notPresent {
            let vpn = s + UInt64(i)
            let addr = vpn * pageSize
            guard addr >= region.base, addr < region.end, populatedPUDs.contains(vpn >> 18) else { continue }
            out[i].state = .present
            out[i].pfn = (physBase + region.fileOffset + (addr - region.base)) / pageSize
            out[i].order = 18
            out[i].fileOrShared = true
        }
    }

    /// The pages of [address, address+count), which must lie in the region.
    func pages(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> (UInt64, UInt64) {
        guard count > 0 else { throw MirrorError(.EINVAL, "empty range") }
        guard region.contains(address, count) else {
            throw MirrorError(.EINVAL, "0x\(String(address, radix: 16))+\(count) is outside the mirrored region")
        }
        return (address / pageSize, (address + count + pageSize - 1) / pageSize)
    }

}
