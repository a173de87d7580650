#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import CPmem
import DaxCore
import MirrorPolicy
import MirrorKernel
import PageTables

/// The CPU side of a scenario: mappings and what the CPU does to them.
extension ScenarioRunner {
    func map(_ r: ScenarioCommand.MapRequest) throws -> [(String, JSON)] {
        guard memory[r.region] == nil else { throw ScenarioError(.EEXIST, "\(r.region) is already mapped") }
        var path = r.path
        if let p = path, !p.hasPrefix("/"), r.kind == .file { path = try workingDirectory() + "/" + p }
        var options = MappedMemory.Options()
        options.huge = r.huge
        options.prot = r.protection.prot
        options.privateFile = r.privateFile
        options.mayResizeExisting = path.map { ownFiles.contains($0) } ?? false
        let m = try MappedMemory(name: r.region, kind: r.kind, path: path, size: Int(r.size), options: options)
        memory[r.region] = m
        if m.createdFile, let path { ownFiles.insert(path) }
        if twinRegions {
            guard r.kind != .devdax else { throw ScenarioError(.EINVAL, "twin regions: a device-dax device has no twin") }
            let twinPath = path.map { $0 + ".twin" }
            options.mayResizeExisting = twinPath.map { ownFiles.contains($0) } ?? false
            let twin = try MappedMemory(name: r.region + "'", kind: r.kind, path: twinPath, size: Int(r.size), options: options)
            twins[r.region] = twin
            if twin.createdFile, let twinPath { ownFiles.insert(twinPath) }
        }
        return [("region", .string(r.region)), ("kind", .string(m.backing.name)),
                ("address", .string("0x" + String(m.address, radix: 16))), ("size", .uint(r.size)),
                ("map_sync", .bool(m.mapSync)), ("pmem", .bool(m.mapSync)),
                ("extent_hint", m.extentHint.map { .string($0) } ?? .null)]
    }

    /// The CPU loads through its mapping, in pieces (a 1 GiB read needs no
    /// 1 GiB buffer), guarded: a page truncated away is the answer (SIGBUS).
    func cpuRead(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try cpuAccessible(m, s.offset, s.length, write: false)
        return try digestInPieces(m, s) { into, from, n in
            guard dm_copy_guarded(into, from, n) == 0 else { throw sigbus(m, "load") }
        }
    }

    /// Reads [offset, offset+length) of `m` a MiB at a time through `read`
    /// (destination, source, count) and digests it (checksum, uniform byte).
    private func digestInPieces(_ m: MappedMemory, _ s: ScenarioCommand.Span,
                                _ read: (UnsafeMutableRawPointer, UnsafeRawPointer, Int) throws -> Void) throws -> [(String, JSON)] {
        var digest = ByteDigest()
        var scratch = [UInt8](repeating: 0, count: min(Int(s.length), 1 << 20))
        var done = 0
        while done < Int(s.length) {
            let n = min(scratch.count, Int(s.length) - done)
            try scratch.withUnsafeMutableBytes { try read($0.baseAddress!, m.base + Int(s.offset) + done, n) }
            scratch.withUnsafeBytes { digest.add(UnsafeRawBufferPointer(rebasing: $0[..<n])) }
            done += n
        }
        return digest.fields
    }

    func cpuWrite(_ s: ScenarioCommand.Span, _ byte: UInt8) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try cpuAccessible(m, s.offset, s.length, write: true)
        guard dm_fill_guarded(m.base + Int(s.offset), Int32(byte), Int(s.length)) == 0 else { throw sigbus(m, "store") }
        return []
    }

    private func sigbus(_ m: MappedMemory, _ access: String) -> CPUSignal {
        let at = dm_guard_fault_address().map { UInt(bitPattern: $0) - UInt(bitPattern: m.base) }
        return CPUSignal(message: "the CPU's \(access) got SIGBUS at offset \(at.map { String($0) } ?? "?") of \(m.name) (its file was truncated)")
    }

    func protect(_ s: ScenarioCommand.Span, _ protection: ScenarioCommand.Protection) throws -> [(String, JSON)] {
        let m = try resolve(s)
        // The kernel's notifier hears of every mprotect that changes a
        // VMA's permissions; tell the mirrors of this region (a change
        // undone before the next device access leaves no trace in the VMAs).
        let addr = m.address + s.offset
        let watching = deviceRegion.filter { $0.value == s.region }.compactMap { mirrors[$0.key] }
        let before = try watching.first?.vmasBeforeProtect(addr, s.length) ?? []
        try sys("mprotect") { mprotect(m.base + Int(s.offset), Int(s.length), protection.prot) }
        for mirror in watching {
            mirror.protectionChanged(addr, s.length, readable: protection != .none, writable: protection == .rw, before: before)
        }
        return []
    }

    func unmap(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try sys("munmap") { munmap(m.base + Int(s.offset), Int(s.length)) }
        let end = min((s.offset + s.length + pageSize - 1) / pageSize * pageSize, UInt64(m.length))
        m.gaveBack(s.offset..<end)
        return []
    }

    /// Maps that part again: fresh anonymous memory, or the same file pages.
    /// Over the region's own mapping MAP_FIXED; over a hole an `unmap` left,
    /// MAP_FIXED_NOREPLACE (EEXIST if something else took it meanwhile).
    func remap(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let whole = s.offset..<(s.offset + s.length)
        var cuts = [whole.lowerBound, whole.upperBound]
        for h in m.holeParts(of: whole) { cuts += [h.lowerBound, h.upperBound] }
        cuts = Array(Set(cuts)).sorted()
        let holes = m.holeParts(of: whole)
        for (lo, hi) in zip(cuts, cuts.dropFirst()) {
            let inHole = holes.contains { $0.contains(lo) }
            let at = m.base + Int(lo), len = Int(hi - lo), off = off_t(lo)
            let fixed = inHole ? DM_MAP_FIXED_NOREPLACE : MAP_FIXED
            let p: UnsafeMutableRawPointer?
            switch m.backing {
            case .anonymous:
                p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | fixed, -1, 0)
            case .shmem(let fd), .file(_, let fd, true), .devdax(_, let fd, _, _, _):
                p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | fixed, fd, off)
            case .file(_, let fd, false):
                p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | fixed, fd, off)
            }
            guard p != MAP_FAILED else { throw MirrorError(Errno.current, inHole ? "mmap MAP_FIXED_NOREPLACE" : "mmap MAP_FIXED") }
            if inHole { m.tookBack(lo..<hi) }
        }
        return []
    }

    func discard(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try sys("madvise(MADV_DONTNEED)") { madvise(m.base + Int(s.offset), Int(s.length), MADV_DONTNEED) }
        return []
    }

    func truncate(_ name: String, _ size: UInt64) throws -> [(String, JSON)] {
        let m = try region(name)
        guard let fd = m.fileDescriptor else { throw ScenarioError(.EINVAL, "\(name) has no file to truncate") }
        try sys("ftruncate") { ftruncate(fd, off_t(size)) }
        for (d, r) in deviceRegion where r == name { mirrors[d]?.fileTruncated(to: size) }
        return [("size", .uint(size))]
    }

    func persist(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        if m.mapSync {
            pmem_persist(m.base + Int(s.offset), Int(s.length))
        } else {
            try sys("msync") { pmem_msync(m.base + Int(s.offset), Int(s.length)) }
        }
        return [("method", .string(m.mapSync ? "pmem_persist" : "msync"))]
    }

    func forkWrite(_ s: ScenarioCommand.Span, _ byte: UInt8) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try cpuAccessible(m, s.offset, s.length, write: true)
        let status = dm_fork_fill(m.base + Int(s.offset), Int(s.length), Int32(byte))
        guard status >= 0 else { throw MirrorError(Errno.current, "fork") }
        // The kernel lets fork return once the FORK event is read, which
        // can be before the handler thread logged it: the next command sees
        // the fork as the kernel did once every tracker has settled.
        for mirror in mirrors.values { mirror.tracker?.settle() }
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            throw ScenarioError(.EIO, "the child did not exit cleanly (wait status \(status))")
        }
        return []
    }

    /// The child's view of the range (device pages included: the parent's
    /// handler serves them to it).
    func forkRead(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        try cpuAccessible(m, s.offset, s.length, write: false)
        var hash: UInt64 = 0
        var uniform: Int32 = 0
        let status = dm_fork_read(m.base + Int(s.offset), Int(s.length), &hash, &uniform)
        guard status >= 0 else { throw MirrorError(Errno.current, "fork") }
        for mirror in mirrors.values { mirror.tracker?.settle() }
        guard status & 0x7f == 0, (status >> 8) & 0xff == 0 else {
            throw ScenarioError(.EIO, "the child did not exit cleanly (wait status \(status))")
        }
        let hex = String(UInt8(truncatingIfNeeded: uniform), radix: 16)
        return [("checksum", .string(String(hash, radix: 16))),
                ("uniform", uniform < 0 ? .null : .string("0x" + (hex.count == 1 ? "0" + hex : hex)))]
    }

    /// The kernel reads the range for the process (GUP), a MiB at a time:
    /// no access of the process's own, so no SIGSEGV or SIGBUS, only EFAULT.
    func gup(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        var done = 0
        return try digestInPieces(m, s) { into, from, want in
            let n = dm_gup_read(into, from, want)
            guard n >= 0 else { throw MirrorError(Errno.current, "process_vm_readv of \(s.region)") }
            guard n == want else { throw MirrorError(.EFAULT, "the kernel could get only \(done + n) bytes of \(s.region) at offset \(s.offset)") }
            done += n
        }
    }

    func pwrite(_ s: ScenarioCommand.Span, _ byte: UInt8) throws -> [(String, JSON)] {
        let m = try resolve(s)
        guard let fd = m.fileDescriptor else { throw ScenarioError(.EINVAL, "\(s.region) has no file") }
        let buf = [UInt8](repeating: byte, count: Int(s.length))
        let n = buf.withUnsafeBytes { Glibc.pwrite(fd, $0.baseAddress, $0.count, off_t(s.offset)) }
        guard n >= 0 else { throw MirrorError(Errno.current, "pwrite") }
        return [("bytes", .int(Int64(n)))]
    }

    func pread(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        guard let fd = m.fileDescriptor else { throw ScenarioError(.EINVAL, "\(s.region) has no file") }
        var buf = [UInt8](repeating: 0, count: Int(s.length))
        let n = buf.withUnsafeMutableBytes { Glibc.pread(fd, $0.baseAddress, $0.count, off_t(s.offset)) }
        guard n >= 0 else { throw MirrorError(Errno.current, "pread") }
        return [("bytes", .int(Int64(n)))] + buf.prefix(n).withUnsafeBytes { ByteDigest.of($0) }
    }

    /// The CPU is about to touch memory directly: refuse (instead of dying of
    /// SIGSEGV) where the mapping would not allow it, and say SIGBUS before
    /// it happens where the file is too short (the guarded copy catches a
    /// truncate that races this check).
    func cpuAccessible(_ m: MappedMemory, _ off: UInt64, _ len: UInt64, write: Bool) throws {
        let vmas = try Maps.read()
        var at = m.address + off
        let end = at + len
        while at < end {
            guard let v = vmas.first(where: { $0.start <= at && at < $0.end }) else {
                throw ScenarioError(.EFAULT, "the CPU would fault: nothing mapped at 0x\(String(at, radix: 16))")
            }
            if !v.readable || (write && !v.writable) {
                throw ScenarioError(.EFAULT, "the CPU would fault: 0x\(String(at, radix: 16)) is \(v.perms)")
            }
            at = v.end
        }
        if let fd = m.fileDescriptor, m.backing.name != "devdax" {  // a device has no end of file
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw MirrorError(Errno.current, "fstat of \(m.name)'s file") }
            let lastPageEnd = (UInt64(st.st_size) + pageSize - 1) / pageSize * pageSize
            if off + len > lastPageEnd {
                throw ScenarioError(.EFAULT, "the CPU would get SIGBUS: beyond the end of the file (\(st.st_size) bytes)")
            }
        }
    }
}
