#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import DaxDetection
import FaultTracking
import NVDIMMInventory
import PageTables
import Userfaultfd

/// The memory types a trial registration is made on.
/// The registration modes tried on each memory type.
public enum TrialMode: String, CaseIterable, Sendable {
    case missing = "MISSING", minor = "MINOR", wp = "WP", wpAsync = "WP+WP_ASYNC"
    var mode: RegisterMode {
        switch self {
        case .missing: return .missing
        case .minor: return .minor
        case .wp, .wpAsync: return .writeProtect
        }
    }
}

/// What this kernel and machine offer daxmirror, each fact probed, never assumed.
public struct CapabilityReport: Sendable, JSONRepresentable {
    public var kernelRelease: String
    public var userfaultfdSyscall: ProbeResult
    public var userfaultfdUserModeOnly: ProbeResult
    public var userfaultfdDevice: ProbeResult
    public var unprivilegedUserfaultfd: String?
    /// Raw UFFDIO_API features (nil if no descriptor could be opened).
    public var features: UserfaultfdFeatures?
    public var featuresError: String?
    /// registrations[kind][mode]
    public var registrations: [(TrackedMemory, [(TrialMode, ProbeResult)])]
    public var fileProbeDirectory: String
    public var pagemapScan: ProbeResult
    /// PROCMAP_QUERY (6.11+): the mirror asks for its region's VMAs only.
    public var procmapQuery: ProbeResult
    public var pagemapShowsPFNs: ProbeResult
    public var populateRead: ProbeResult
    public var populateWrite: ProbeResult
    public var thpEnabled: String?
    public var daxMounts: [MountEntry]
    public var namespaces: [Inventory.Namespace]
    /// The regions holding them, each with what backs it (survives power-off?).
    public var regions: [Inventory.Region] = []
    public var inventoryError: String?
    /// Whether --dir is on DAX (decides the file row of the tracker choice).
    public var directoryIsDAX: Bool = false
    /// The DAX write-protect probe, run only when --dir is on DAX.
    public var daxWriteProtect: DaxWriteProtectProbe?
    /// The fault tracker's choice per memory type (the file row for --dir).
    public var trackerChoices: [(String, TrackerChoice)] = []

    /// Probes everything; `probeExecutable` (the daxmirror binary) runs the
    /// DAX write-protect probe in a child process when `directory` is on DAX.
    public static func gather(directory: String, probeExecutable: String? = nil) -> CapabilityReport {
        var r = CapabilityReport(
            kernelRelease: Syscall.kernelRelease,
            userfaultfdSyscall: probeOpen { dm_userfaultfd(O_CLOEXEC | O_NONBLOCK) },
            userfaultfdUserModeOnly: probeOpen { dm_userfaultfd(O_CLOEXEC | O_NONBLOCK | DM_UFFD_USER_MODE_ONLY) },
            userfaultfdDevice: probeDevice(),
            unprivilegedUserfaultfd: readSysfsAttribute("/proc/sys/vm/unprivileged_userfaultfd"),
            registrations: [], fileProbeDirectory: directory,
            pagemapScan: probePagemapScan(), procmapQuery: probeProcmapQuery(), pagemapShowsPFNs: probePFNs(),
            populateRead: probeMadvise(DM_MADV_POPULATE_READ),
            populateWrite: probeMadvise(DM_MADV_POPULATE_WRITE),
            thpEnabled: readSysfsAttribute("/sys/kernel/mm/transparent_hugepage/enabled").flatMap(bracketed),
            daxMounts: (try? MountTable.current().daxMounts) ?? [], namespaces: [])
        do {
            r.features = try Userfaultfd.supportedFeatures()
        } catch {
            r.featuresError = "\(error)"
        }
        r.registrations = [TrackedMemory.anonymous, .shmem, .file(dax: false)].map { kind in
            (kind, TrialMode.allCases.map { mode in (mode, probeRegistration(kind, mode, r.features, directory)) })
        }
        do {
            let inventory = try Inventory.read()
            r.namespaces = inventory.namespaces
            r.regions = inventory.buses.flatMap(\.regions)
        } catch {
            r.inventoryError = "\(error)"
        }
        if let table = try? MountTable.current(), let status = try? DaxStatus.inspect(path: directory, mounts: table, inventory: nil) {
            r.directoryIsDAX = status.mountMode == .always || status.mountMode == .inode
        }
        if r.directoryIsDAX, let exe = probeExecutable {
            r.daxWriteProtect = DaxWriteProtectProbe.run(executable: exe, directory: directory)
        }
        let kernel = KernelFeatures(userfaultfd: r.features, pagemapScan: r.pagemapScan.isOK,
                                    daxWriteProtectSafe: r.daxWriteProtect?.isSafe ?? false)
        r.trackerChoices = [TrackedMemory.anonymous, .shmem, .file(dax: r.directoryIsDAX)].map {
            ($0.name, TrackingMechanism.choose(for: $0, kernel: kernel))
        }
        return r
    }

    /// How anonymous pages move to a simulated device on this kernel (the
    /// mirror's `migrate`, `exclusive`), from the probes above, and why.
    public var devicePrivate: (mechanism: String, reason: String) {
        guard let f = features else {
            return ("none", "no userfaultfd: nothing would catch the CPU's touch of a migrated page")
        }
        let anonymous = registrations.first { $0.0.kind == .anonymous }?.1
        let missing = anonymous?.first { $0.0 == .missing }?.1.isOK ?? false
        let wp = anonymous?.first { $0.0 == .wp }?.1.isOK ?? false
        guard missing && wp else {
            return ("none", "anonymous memory takes no MISSING and WP registration here")
        }
        guard f.contains(.move) else {
            return ("copy", "pages are copied to the device's memory; the CPU's touch is a MISSING fault served with UFFDIO_COPY (this kernel has no UFFDIO_MOVE, 6.8+)")
        }
        return ("move", "pages are copied to the device's memory; the CPU's touch is a MISSING fault served with UFFDIO_MOVE, the device's page itself mapped back without a copy (UFFDIO_COPY for a page that comes home read-only or that a fork shares)")
    }

    // MARK: probes

    static func probeOpen(_ body: () -> Int32) -> ProbeResult {
        switch Syscall.probe("open", body) {
        case .success(let fd): close(fd); return .ok(nil)
        case .failure(let e): return .failed(e)
        }
    }

    static func probeDevice() -> ProbeResult {
        var st = stat()
        guard stat("/dev/userfaultfd", &st) == 0 else { return .failed(.current) }
        let mode = "mode " + String(st.st_mode & 0o777, radix: 8)
        switch Userfaultfd.openDevice(flags: O_CLOEXEC | O_NONBLOCK) {
        case .success: return .ok(mode)
        case .failure(let e): return .failed(e)
        }
    }

    static func probeRegistration(_ kind: TrackedMemory, _ mode: TrialMode, _ supported: UserfaultfdFeatures?,
                                  _ directory: String) -> ProbeResult {
        guard let supported else { return .skipped("no userfaultfd") }
        if mode == .wpAsync && !supported.contains(.wpAsync) { return .skipped("kernel lacks WP_ASYNC") }
        let length = 2 << 20
        let region: ScratchMapping
        do {
            switch kind.kind {
            case .anonymous: region = try .anonymous(length: length)
            case .shmem: region = try .shmem(length: length)
            case .file, .devdax: region = try .file(in: directory, length: length)
            }
        } catch {
            return .skipped("cannot map a \(kind.name) region: \(error)")
        }
        do {
            let uffd = try Userfaultfd(features: mode == .wpAsync ? [.wpAsync] : [])
            let ioctls = try uffd.register(start: region.base, length: length, mode: mode.mode)
            return .ok(ioctls.names.joined(separator: ","))
        } catch let e as SystemCallError {
            return .failed(e.errno)
        } catch {
            return .skipped("\(error)")
        }
    }

    static func probePagemapScan() -> ProbeResult {
        do {
            let region = try ScratchMapping.anonymous(length: 4 * Syscall.pageSize)
            region.base.storeBytes(of: 1, as: UInt8.self)
            let pm = try Pagemap()
            let start = UInt64(UInt(bitPattern: region.base))
            let (regions, _) = try pm.scan(start: start, end: start + UInt64(region.length), report: .all)
            return regions.first?.categories.contains(.present) == true
                ? .ok("return_mask 0xff") : .failed(.EIO)
        } catch {
            return .failed(error.errno)
        }
    }

    static func probeProcmapQuery() -> ProbeResult {
        do {
            let q = try VMAQuery()
            guard q.method == .procmapQuery else { return .failed(.ENOTTY) }
            // The answer must be right, not only accepted: this stack's VMA.
            var probe: UInt8 = 0
            let here = withUnsafeMutablePointer(to: &probe) { UInt64(UInt(bitPattern: $0)) }
            let vmas = try q.vmas(overlapping: here, here + 1)
            return vmas.count == 1 && vmas[0].contains(here) ? .ok("one VMA per ioctl") : .failed(.EIO)
        } catch {
            return .failed(error.errno)
        }
    }

    static func probePFNs() -> ProbeResult {
        do {
            let region = try ScratchMapping.anonymous(length: Syscall.pageSize)
            region.base.storeBytes(of: 1, as: UInt8.self)
            let e = try Pagemap().entry(at: UInt64(UInt(bitPattern: region.base)))
            guard e.present else { return .failed(.EIO) }
            return (e.pfn ?? 0) != 0 ? .ok(nil) : .skipped("PFNs read as 0: needs CAP_SYS_ADMIN")
        } catch {
            return .failed(error.errno)
        }
    }

    static func probeMadvise(_ advice: Int32) -> ProbeResult {
        do {
            let region = try ScratchMapping.anonymous(length: Syscall.pageSize)
            switch Syscall.probe("madvise", { madvise(region.base, region.length, advice) }) {
            case .success: return .ok(nil)
            case .failure(let e): return .failed(e)
            }
        } catch {
            return .failed(error.errno)
        }
    }

    /// "always [madvise] never" -> "madvise".
    static func bracketed(_ s: String) -> String? {
        guard let open = s.firstIndex(of: "["), let close = s.firstIndex(of: "]"), open < close else { return nil }
        return String(s[s.index(after: open)..<close])
    }

    // MARK: output

    public var json: JSON {
        .object([
            "kernel_release": .string(kernelRelease),
            "userfaultfd": .object([
                "syscall": userfaultfdSyscall.json,
                "syscall_user_mode_only": userfaultfdUserModeOnly.json,
                "dev_userfaultfd": userfaultfdDevice.json,
                "unprivileged_userfaultfd": unprivilegedUserfaultfd.map { .string($0) },
                "features": features.map { .uint($0.rawValue) },
                "feature_names": features.map { .array($0.names.map { .string($0) }) },
                "error": featuresError.map { .string($0) },
            ]),
            "registration_directory": .string(fileProbeDirectory),
            "registration": .object(registrations.map { kind, modes in
                (kind.name, JSON.object(modes.map { ($0.0.rawValue, $0.1.json) }))
            }),
            "pagemap_scan": pagemapScan.json,
            "procmap_query": procmapQuery.json,
            "pagemap_pfns": pagemapShowsPFNs.json,
            "madv_populate_read": populateRead.json,
            "madv_populate_write": populateWrite.json,
            "thp_enabled": thpEnabled.map { .string($0) },
            "dax_mounts": .array(daxMounts.map { m in
                .object(["mount_point": .string(m.mountPoint), "fs_type": .string(m.fsType),
                         "source": .string(m.source), "dax": .string(m.daxMode.rawValue)])
            }),
            "namespaces": .array(namespaces.map(\.json)),
            "regions": .array(regions.map(\.json)),
            "inventory_error": inventoryError.map { .string($0) },
            "registration_directory_dax": .bool(directoryIsDAX),
            "dax_write_protect": daxWriteProtect.map { p in
                .object(["read": .string(p.read.rawValue), "write": .string(p.write.rawValue),
                         "safe": .bool(p.isSafe), "detail": p.detail.isEmpty ? nil : .string(p.detail)])
            },
            "device_private": .object(["mechanism": .string(devicePrivate.mechanism), "reason": .string(devicePrivate.reason),
                                       "uffdio_move": .bool(features?.contains(.move) ?? false)]),
            "tracker": .object(trackerChoices.map { kind, choice in
                (kind, .object(["mechanism": .string(choice.mechanism.rawValue), "reason": .string(choice.reason)]))
            }),
        ])
    }
}
