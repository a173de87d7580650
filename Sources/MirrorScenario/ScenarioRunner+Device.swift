#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import MirrorPolicy
import MirrorKernel
import KernelDmirror
import PageTables

/// The device side of a scenario: simulated devices, their accesses, and
/// what they are checked against (pagemap, the kernel's own dmirror).
extension ScenarioRunner {
    func mirror(_ name: String, as deviceName: String?, untracked: Bool, writeBit: DeviceMirror.WriteBitSource?,
                number: Int = 0) throws -> [(String, JSON)] {
        let m = try region(name)
        let device = deviceName ?? name
        guard mirrors[device] == nil else { throw ScenarioError(.EEXIST, "device \(device) exists") }
        // userfaultfd allows one registration per range: a second device on
        // the same memory hears the first one's events.
        let other = deviceRegion.first { $0.value == name }?.key
        let track = tracking && !untracked && other == nil
        if truth == nil { truth = try CPUTruth(scanAvailable: kernel.pagemapScan) }
        let mirror = try DeviceMirror(region: m.region, tracking: track, dax: m.mapSync, truth: truth, kernel: kernel,
                                      writeBit: writeBit, device: number, sharing: other.flatMap { mirrors[$0] })
        // A private mapping of a DAX file has no MAP_SYNC, but its VMA is DAX all the same.
        if case .file(let path, _, false) = m.backing {
            var sx = dm_statx_result()
            if dm_statx(AT_FDCWD, path, 0, &sx) == 0, sx.attributes_mask & DM_STATX_ATTR_DAX != 0,
               sx.attributes & DM_STATX_ATTR_DAX != 0 { mirror.mapsDAX = true }
        }
        mirrors[device] = mirror
        deviceRegion[device] = name
        if againstKernel { kernelDevices[device] = try KernelDmirror(path: "/dev/hmm_dmirror\(number)") }
        return [("region", .string(name)), ("device", .string(device)),
                ("events", .string(mirror.tracker.map { $0.mechanism.rawValue }
                                   ?? (other.flatMap { o in mirrors[o]?.tracker.map { "\($0.mechanism.rawValue) (\(o)'s registration)" } } ?? "none"))),
                ("huge_visible", .bool(mirror.cpu.seesMapOrder)), ("write_bit", .string(mirror.writeBit.rawValue)),
                ("layout", .string(mirror.cpu.layoutMethod)), ("device_number", .int(Int64(number))),
                ("device_private", .string(mirror.cpu.devicePrivateRefusal == nil ? mirror.cpu.devicePrivateMechanism : "none"))]
    }

    /// `migrate D OFF LEN`: pages to D's device, and what it read back.
    func migrate(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        try readBackCommand(s) { (mirror, at) throws(MirrorError) in
            let r = try mirror.migrateToDevice(at, s.length)
            return (r.cpages, r.bytes)
        } kernel: { (twin, at) throws(MirrorError) in try twin.migrateToDevice(at, s.length) }
    }

    /// `exclusive D OFF LEN`: the pages held for D's exclusive access.
    func exclusive(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        try readBackCommand(s) { (mirror, at) throws(MirrorError) in
            let r = try mirror.makeExclusive(at, s.length)
            return (r.cpages, r.bytes)
        } kernel: { (twin, at) throws(MirrorError) in try twin.makeExclusive(at, s.length) }
    }

    /// A command whose device reads the range back (migrate, exclusive):
    /// cpages and the bytes' digest; in twin mode the kernel's twin does the
    /// same on the twin region and must agree (errno, cpages, bytes).
    private func readBackCommand(_ s: ScenarioCommand.Span,
                                 _ ours: (DeviceMirror, UInt64) throws(MirrorError) -> (Int, [UInt8]),
                                 kernel: (KernelDmirror, UInt64) throws(MirrorError) -> (cpages: Int, bytes: [UInt8])) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let mirror = try mirrorOf(s.region)
        let mine = Result { () throws(MirrorError) in try ours(mirror, m.address + s.offset) }
        var extra: [(String, JSON)] = []
        if let twin = try twinOnly(s.region) {
            let theirs = Result { () throws(MirrorError) in try kernel(twin, kernelBase(s.region, m) + s.offset) }
            try agree(mine.map(\.1), theirs.map(\.bytes), mine.map(\.0), theirs.map(\.cpages), counting: "pages read back")
            if case .success(let k) = theirs { extra.append(("kernel_cpages", .int(Int64(k.cpages)))) }
            _ = try sharedOutcome(mine)
        }
        let (cpages, bytes) = try mine.get()
        var out: [(String, JSON)] = [("cpages", .int(Int64(cpages)))] + extra
        bytes.withUnsafeBytes { out += ByteDigest.of($0) }
        return out
    }

    /// `check-exclusive D OFF LEN`: EPERM while D holds a page there.
    func checkExclusive(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let mirror = try mirrorOf(s.region)
        let mine = Result { () throws(MirrorError) in try mirror.checkExclusive(m.address + s.offset, s.length) }
        if let twin = try twinOnly(s.region) {
            let theirs = Result { () throws(MirrorError) in try twin.checkExclusive(kernelBase(s.region, m) + s.offset, s.length) }
            try agree(mine.map { _ in [] }, theirs.map { _ in [] }, mine.map { _ in 0 }, theirs.map { _ in 0 })
            try sharedOutcome(mine)
        }
        try mine.get()
        return []
    }

    /// `migrate-back D OFF LEN`: D's device's pages there come home.
    func migrateBack(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let mirror = try mirrorOf(s.region)
        let mine = Result { () throws(MirrorError) in try mirror.migrateToSystem(m.address + s.offset, s.length) }
        var extra: [(String, JSON)] = []
        if let twin = try twinOnly(s.region) {
            let theirs = Result { () throws(MirrorError) in try twin.migrateToSystem(kernelBase(s.region, m) + s.offset, s.length) }
            try agree(mine.map { _ in [] }, theirs.map { _ in [] }, mine, theirs, counting: "pages brought home")
            if case .success(let k) = theirs { extra.append(("kernel_cpages", .int(Int64(k)))) }
            _ = try sharedOutcome(mine)
        }
        return [("cpages", .int(Int64(try mine.get())))] + extra
    }

    /// `release D`: every page of D's device, in every region, comes home.
    func release(_ name: String) throws -> [(String, JSON)] {
        let device = try mirrorOf(name).device
        var home = 0
        var regionsDone: Set<UInt64> = []
        for (_, mirror) in mirrors.sorted(by: { $0.key < $1.key }) where mirror.device == device {
            guard regionsDone.insert(mirror.region.base).inserted else { continue }
            home += try mirror.releaseDevicePages()
        }
        if let twin = try twinOnly(name) { try twin.release() }
        return [("pages", .int(Int64(home)))]
    }

    /// The kernel's twin of R's device where device-private commands are
    /// compared: twin regions only (on the region itself the kernel's device
    /// would take daxmirror's device pages home through its faults).
    private func twinOnly(_ name: String) throws -> KernelDmirror? {
        twinRegions ? try kernelTwin(name) : nil
    }

    /// Where the kernel's twin device works for region (or device) `name`:
    /// the twin region in twin mode, else the region itself.
    func kernelBase(_ name: String, _ m: MappedMemory) -> UInt64 {
        twins[deviceRegion[name] ?? name]?.address ?? m.address
    }

    func devRead(_ s: ScenarioCommand.Span) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let mirror = try mirrorOf(s.region)
        let ours = Result { () throws(MirrorError) in try mirror.read(m.address + s.offset, Int(s.length)) }
        var out: [(String, JSON)] = []
        if let twin = try kernelTwin(s.region) {
            let theirs = Result { () throws(MirrorError) in try twin.read(kernelBase(s.region, m) + s.offset, Int(s.length)) }
            try agree(ours.map { [UInt8]($0.bytes) }, theirs.map(\.bytes), ours.map(\.faults), theirs.map(\.faults))
            if case .success(let k) = theirs { out.append(("kernel_faults", .int(Int64(k.faults)))) }
            _ = try sharedOutcome(ours)
        }
        let (data, faults) = try ours.get()
        out.insert(("faults", .int(Int64(faults))), at: 0)
        data.withUnsafeBytes { out += ByteDigest.of($0) }
        return out
    }

    func devWrite(_ s: ScenarioCommand.Span, _ byte: UInt8) throws -> [(String, JSON)] {
        let m = try resolve(s)
        let mirror = try mirrorOf(s.region)
        let data = [UInt8](repeating: byte, count: Int(s.length))
        let ours = Result { () throws(MirrorError) in try mirror.write(m.address + s.offset, data) }
        var extra: [(String, JSON)] = []
        let wholePages = (m.address + s.offset) % pageSize == 0 && s.length % pageSize == 0
        if let twin = try kernelTwin(s.region) {
            if wholePages {
                let theirs = Result { () throws(MirrorError) in try twin.write(kernelBase(s.region, m) + s.offset, data) }
                try agree(ours.map { _ in [] }, theirs.map { _ in [] }, ours, theirs)
                if case .success(let k) = theirs { extra.append(("kernel_faults", .int(Int64(k)))) }
                _ = try sharedOutcome(ours)
            } else {
                extra.append(("kernel", .string("not compared: the kernel's dmirror writes whole pages only")))
            }
        }
        let faults = try ours.get()
        return [("faults", .int(Int64(faults)))] + extra + [("durable", .bool(m.backing.sharedFD != nil && (m.backing.kind == .file || m.backing.kind == .devdax))),
                                                           ("device_path", .string(mirror.writePath))]
    }

    func snapshot(_ name: String, _ range: ScenarioCommand.ByteRange?) throws -> [(String, JSON)] {
        let m = try region(name)
        let (at, len) = try bounds(m, name, range)
        let mirror = try mirrorOf(name)
        let cpu = try mirror.snapshot(at, len)
        let dev = try mirror.deviceSnapshot(at, len)
        var kernelCodes: [(String, JSON)] = []
        if let twin = try kernelTwin(name) {
            let theirs = try twin.snapshot(kernelBase(name, m) + (at - m.address), len)
            try agree(snapshot: cpu, theirs)
            kernelCodes = [("kernel_codes", .string(theirs.runLengthHex))]
        }
        return [("pages", .int(Int64(cpu.count))), ("codes", .string(cpu.runLengthHex)),
                ("device", .string(dev.runLengthHex))] + kernelCodes
    }

    /// An optional [OFF, OFF+LEN) of region `m` as an address and length; the whole region without one.
    private func bounds(_ m: MappedMemory, _ name: String, _ range: ScenarioCommand.ByteRange?) throws -> (UInt64, UInt64) {
        guard let range else { return (m.address, UInt64(m.length)) }
        _ = try resolve(.init(region: name, offset: range.offset, length: range.length))
        return (m.address + range.offset, range.length)
    }

    func check(_ name: String, _ range: ScenarioCommand.ByteRange?, strict: Bool, kernel useKernel: Bool) throws -> [(String, JSON)] {
        let mirror = try mirrorOf(name)
        let m = try region(name)
        let (s, n) = try bounds(m, name, range)
        let (found, revalidated) = try mirror.check(range == nil ? nil : s, range == nil ? nil : n, strict: strict)
        let list: [JSON] = found.prefix(50).map {
            .object([("start", .string("0x" + String($0.start, radix: 16))),
                     ("end", .string("0x" + String($0.end, radix: 16))),
                     ("reason", .string($0.reason)), ("device", .string($0.device)), ("kernel", .string($0.kernel))])
        }
        if !found.isEmpty {
            throw CheckFailed(disagreements: found.count, list: list)
        }
        // The kernel's SNAPSHOT as a second oracle for the CPU side.
        var oracle: [(String, JSON)] = []
        if useKernel || againstKernel, let twin = try kernelTwin(name, open: useKernel) {
            try agree(snapshot: try mirror.snapshot(s, n), try twin.snapshot(kernelBase(name, m) + (s - m.address), n))
            oracle.append(("kernel_snapshot", .string("agrees")))
        }
        return oracle + [("disagreements", .int(0)), ("revalidated", .int(Int64(revalidated))),
                         ("entries", .int(Int64(mirror.table.entryCount))),
                         ("mirrored_pages", .uint(mirror.table.mirroredPages))]
    }

    func stats(_ name: String) throws -> [(String, JSON)] {
        let mirror = try mirrorOf(name)
        return [("entries", .int(Int64(mirror.table.entryCount))),
                ("mirrored_pages", .uint(mirror.table.mirroredPages)),
                ("table_bytes", .int(Int64(mirror.table.heapBytes))),
                ("faults", .int(Int64(mirror.faults))),
                ("stale_dropped", .int(Int64(mirror.staleDropped))),
                ("invalidated_pages", .uint(mirror.invalidatedPages))]
    }

    /// An unmet requirement is the answer `skipped`, which ends the scenario.
    func require(_ what: ScenarioCommand.Requirement) throws -> [(String, JSON)] {
        var missing: String?
        switch what {
        case .pagemapScan:
            if !kernel.pagemapScan { missing = "this kernel has no PAGEMAP_SCAN (6.7+): map orders are not visible" }
        case .thp:
            let mode = readSysfsAttribute("/sys/kernel/mm/transparent_hugepage/enabled") ?? "[never]"
            if mode.contains("[never]") { missing = "transparent huge pages are disabled" }
        case .devdax(let align):
            // A device in $DAXMIRROR_DEVDAX, with that alignment.
            if let dev = environment("DAXMIRROR_DEVDAX"), let name = dev.split(separator: "/").last {
                if let want = align {
                    let have = readSysfsAttribute("/sys/bus/dax/devices/\(name)/align").flatMap { UInt64($0) }
                    if have != want { missing = "\(dev) is aligned to \(have.map(String.init) ?? "?") bytes, not \(want)" }
                }
            } else {
                missing = "no device-dax device here (run in the guest with --nsmode devdax; DAXMIRROR_DEVDAX)"
            }
        case .dax(let name):
            if !(try region(name)).mapSync { missing = "\(name) is not on a DAX filesystem (MAP_SYNC refused)" }
        }
        return missing.map { [("skipped", .string($0))] } ?? []
    }
}
