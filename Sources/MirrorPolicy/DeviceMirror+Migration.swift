import DaxCore
import PageTables

/// Device-private memory: pages moved to the device and back, with the
/// rules of the kernel's test driver (lib/test_hmm.c dmirror_migrate_*,
/// mm/migrate_device.c; docs/device-private.md). The CPU side moves the
/// bytes; this file decides which pages move, what the device's table
/// holds after, and what the caller is told (`cpages`, errno).
extension DeviceMirror {
    /// What a migration to the device answers: the pages the device then
    /// read back from its own table (`cpages`) and their bytes.
    public struct Migrated: Sendable {
        public var cpages: Int
        public var bytes: [UInt8]
    }

    /// HMM_DMIRROR_MIGRATE_TO_DEV of [address, address+count). Windows of 64
    /// pages cut at their VMA's end; a window with no VMA or no read
    /// permission, or on DAX or device-dax, is EINVAL (earlier windows stay
    /// moved). In a window: private anonymous pages move (an empty PTE or the
    /// zero page as a zeroed device page, writable if the VMA is; a page
    /// writable if its PTE is), as do the copy-on-write pages of a private
    /// file mapping; page-cache and shmem pages, and pages already on a
    /// device, stay. Other devices lose the moved pages; this device maps
    /// them. Then the read-back: a page this device has no entry for is
    /// ENOENT (`cpages` counts the pages before it).
    /// `readingBack` false leaves the read-back to the caller (`readBack`),
    /// for a command that spans several mirrors and reads back once all moved.
    public func migrateToDevice(_ address: UInt64, _ count: UInt64, readingBack: Bool = true) throws(MirrorError) -> Migrated {
        let (s, e) = try migrationPages(address, count)
        try forEachWindow(s, e) { (ws, we, vma, vmas) throws(MirrorError) in
            cpu.migrationWalks.note(ws, we, owner: device)
            let truth = try readTruth(ws, we, vmas, detail: .presence)
            let anonymousVMA = !vma.shared && vma.inode == 0
            var moves: [DeviceMove] = []
            for vpn in ws..<we {
                let p = truth[Int(vpn - ws)]
                switch p.state {
                case .notPresent where anonymousVMA:
                    moves.append(DeviceMove(vpn: vpn, present: false, writable: vma.writable, vmaWritable: vma.writable))
                case .present where !vma.shared && p.zero:
                    if anonymousVMA { moves.append(DeviceMove(vpn: vpn, present: false, writable: vma.writable, vmaWritable: vma.writable)) }
                case .present where !vma.shared && !p.fileOrShared:
                    moves.append(DeviceMove(vpn: vpn, present: true, writable: cpuWritable(p, deviceWritable: false),
                                            vmaWritable: vma.writable, softDirty: p.softDirty && !p.uffdWriteProtected))
                default:
                    break
                }
            }
            guard !moves.isEmpty else { return }
            if let why = cpu.devicePrivateRefusal { throw MirrorError(.EOPNOTSUPP, why) }
            _ = try cpu.migrateToDevice(moves, owner: device, exclusive: false)
            // The moves' own discards reach every mirror as events: apply
            // them before mapping the pages (the kernel's MMU_NOTIFY_MIGRATE
            // names the owner, whose entries it spares).
            let after = try synchronize()
            let now = try readTruth(ws, we, after, detail: .presence)
            for m in moves {
                let p = now[Int(m.vpn - ws)]
                guard p.state == .devicePrivate(owner: device) else { continue }
                table.insert(DeviceEntry(pfn: p.pfn, writable: p.devicePrivateWritable, devicePrivate: true), at: m.vpn)
            }
        }
        return readingBack ? try readBack(pages: s, e) : Migrated(cpages: 0, bytes: [])
    }

    /// dmirror_do_read of [address, address+count) from this device's table
    /// as it is: a page without an entry is ENOENT.
    public func readBack(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> Migrated {
        let (s, e) = try migrationPages(address, count)
        return try readBack(pages: s, e)
    }

    private func readBack(pages s: UInt64, _ e: UInt64) throws(MirrorError) -> Migrated {
        var cpages = 0
        var failure: MirrorError?
        // Read straight into the answer's storage (64 MiB read back is 64 MiB copied once).
        let bytes = [UInt8](unsafeUninitializedCapacity: Int((e - s) * pageSize)) { buffer, count in
            for vpn in s..<e {
                guard let (entry, _) = table.lookup(vpn) else {
                    failure = MirrorError(.ENOENT, "page 0x\(String(vpn * pageSize, radix: 16)) is neither on the device nor mirrored by it (\(cpages) pages read back before it)")
                    break
                }
                do throws(MirrorError) { try readEntry(entry, vpn, into: buffer.baseAddress! + cpages * Int(pageSize)) }
                catch { failure = error; break }
                cpages += 1
            }
            count = cpages * Int(pageSize)
        }
        if let failure { throw failure }
        return Migrated(cpages: cpages, bytes: bytes)
    }

    /// HMM_DMIRROR_EXCLUSIVE (make_device_exclusive_range) of [address,
    /// address+count), in windows of 64 pages. Each window is faulted in for
    /// writing as GUP does, which stops at the first page it cannot get (no
    /// VMA, no write permission); the anonymous pages it got are then held
    /// for this device's exclusive access — invisible to snapshots until the
    /// CPU's next access, an mprotect or a fork — and every device's entries
    /// for them go (the owner's too). Only a window GUP got whole, every page
    /// of it anonymous, gives this device ATOMIC entries; otherwise EBUSY,
    /// with the pages GUP got still held (as the kernel leaves them). Then
    /// the read-back.
    public func makeExclusive(_ address: UInt64, _ count: UInt64, readingBack: Bool = true) throws(MirrorError) -> Migrated {
        let (s, e) = try migrationPages(address, count)
        var vpn = s
        while vpn < e {
            let next = min(e, vpn + 64)
            let (got, vmas) = try faultInForWriting(vpn, next)
            let truth = try readTruth(vpn, next, vmas, detail: .presence)
            let anonymous = (vpn..<got).filter { v in
                let p = truth[Int(v - vpn)]
                return p.state == .present && !p.fileOrShared && !p.vmaShared && !p.zero
            }
            if !anonymous.isEmpty {
                if let why = cpu.devicePrivateRefusal { throw MirrorError(.EOPNOTSUPP, why) }
                _ = try cpu.migrateToDevice(anonymous.map { DeviceMove(vpn: $0, present: true, writable: true) },
                                            owner: device, exclusive: true)
                for v in anonymous { invalidate(v * pageSize, pageSize) }
            }
            guard got == next else {
                throw MirrorError(.EBUSY, "0x\(String(got * pageSize, radix: 16)) cannot be faulted in for writing (no VMA or no write permission)")
            }
            let after = try synchronize()
            let now = try readTruth(vpn, next, after, detail: .presence)
            for v in vpn..<next where now[Int(v - vpn)].state == .deviceExclusive(owner: device) {
                table.insert(DeviceEntry(pfn: now[Int(v - vpn)].pfn, writable: false, atomic: true), at: v)
            }
            guard anonymous.count == Int(next - vpn) else {
                let v = (vpn..<next).first { !anonymous.contains($0) } ?? vpn
                throw MirrorError(.EBUSY, "0x\(String(v * pageSize, radix: 16)) is not an anonymous page: only those can be held exclusively")
            }
            vpn = next
        }
        return readingBack ? try readBack(pages: s, e) : Migrated(cpages: 0, bytes: [])
    }

    /// GUP with FOLL_WRITE over [s, e): faults in, for writing, the pages up
    /// to the first it cannot get; returns that page (e: all of them) and the
    /// VMAs it walked (faulting in changes no VMA).
    private func faultInForWriting(_ s: UInt64, _ e: UInt64) throws(MirrorError) -> (UInt64, [VMA]) {
        let vmas = try synchronize()
        var got = s
        while got < e, let v = vmas.first(where: { $0.start <= got * pageSize && got * pageSize < $0.end }),
              v.readable && v.writable {
            got = min(e, v.end / pageSize)
        }
        if got > s, let failed = cpu.populate(s * pageSize, (got - s) * pageSize, write: true) {
            throw MirrorError(.EBUSY, "the pages at 0x\(String(s * pageSize, radix: 16)) cannot be faulted in for writing (\(failed.name))")
        }
        return (got, vmas)
    }

    /// HMM_DMIRROR_CHECK_EXCLUSIVE: EPERM while any page of the range still
    /// has this device's ATOMIC entry (after what revoked it is applied).
    public func checkExclusive(_ address: UInt64, _ count: UInt64) throws(MirrorError) {
        let (s, e) = try pages(address, count)
        let vmas = try synchronize()
        try revalidate(s, e, vmas)
        for vpn in s..<e where table.lookup(vpn)?.entry.atomic == true {
            throw MirrorError(.EPERM, "0x\(String(vpn * pageSize, radix: 16)) is still held for the device's exclusive access")
        }
    }

    /// HMM_DMIRROR_MIGRATE_TO_SYS: this device's pages in the range come
    /// home (counted); windows and EINVAL as for the way there.
    public func migrateToSystem(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> Int {
        let (s, e) = try migrationPages(address, count)
        var cpages = 0
        try forEachWindow(s, e) { (ws, we, _, vmas) throws(MirrorError) in
            cpu.migrationWalks.note(ws, we, owner: device)
            let truth = try readTruth(ws, we, vmas, detail: .presence)
            for vpn in ws..<we where truth[Int(vpn - ws)].state == .devicePrivate(owner: device) {
                if try cpu.migrateHome(vpn) { cpages += 1 }
                invalidate(vpn * pageSize, pageSize)
            }
        }
        return cpages
    }

    /// HMM_DMIRROR_RELEASE for this region: every page this device holds
    /// here comes home — by the device's own list, as the kernel evicts its
    /// chunks, whatever the VMA is now (PROT_NONE included). Returns how many.
    public func releaseDevicePages() throws(MirrorError) -> Int {
        guard cpu.devicePrivateCount > 0 else { return 0 }
        _ = try synchronize()
        var home = 0
        for vpn in cpu.devicePages(owner: device) where try cpu.migrateHome(vpn) { home += 1 }
        return home
    }

    /// The pages of a migration's range: page-aligned, inside the region.
    private func migrationPages(_ address: UInt64, _ count: UInt64) throws(MirrorError) -> (UInt64, UInt64) {
        guard address % pageSize == 0, count % pageSize == 0 else {
            throw MirrorError(.EINVAL, "a migration moves whole pages: 0x\(String(address, radix: 16))+\(count) is not page-aligned")
        }
        return try pages(address, count)
    }

    /// The kernel's walk: windows of up to 64 pages, each inside one VMA.
    private func forEachWindow(_ s: UInt64, _ e: UInt64,
                               _ body: (UInt64, UInt64, VMA, [VMA]) throws(MirrorError) -> Void) throws(MirrorError) {
        var vpn = s
        while vpn < e {
            let vmas = try synchronize()
            let addr = vpn * pageSize
            guard let vma = vmas.first(where: { $0.start <= addr && addr < $0.end }) else {
                throw MirrorError(.EINVAL, "nothing is mapped at 0x\(String(addr, radix: 16))")
            }
            guard vma.readable else { throw MirrorError(.EINVAL, "0x\(String(addr, radix: 16)) is mapped without read permission") }
            if mapsDAX {
                throw MirrorError(.EINVAL, "0x\(String(addr, radix: 16)) is DAX memory: mirrored, never migrated")
            }
            let next = min(e, vpn + 64, vma.end / pageSize)
            try body(vpn, next, vma, vmas)
            vpn = next
        }
    }

    /// The device's copy of one page it has an entry for (dmirror_do_read):
    /// its own private page, zeros, or the CPU page.
    func readEntry(_ entry: DeviceEntry, _ vpn: UInt64, into buffer: UnsafeMutableRawPointer) throws(MirrorError) {
        if entry.devicePrivate {
            cpu.devicePageRead(vpn, offset: 0, into: buffer, count: Int(pageSize))
        } else if entry.zero {
            buffer.initializeMemory(as: UInt8.self, repeating: 0, count: Int(pageSize))
        } else {
            try cpu.deviceRead(vpn * pageSize, into: buffer, count: Int(pageSize))
        }
    }
}
