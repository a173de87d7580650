#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import DaxDetection
import NVDIMMInventory
import PageTables
import Prometheus
import Userfaultfd

/// One look at the host, as Prometheus metrics (`daxmirror metrics`): its
/// pmem regions and namespaces, DIMM health where the platform reports it,
/// its DAX mounts, the processes that map DAX files or device-dax, and what
/// its kernel offers. Base units (bytes, seconds); names `daxmirror_…`. The
/// exposition format itself is swift-prometheus's.
public struct Scrape {
    /// Why a process could not be read (a counted error, never a silent gap).
    public enum ErrorReason: String, CaseIterable, Sendable {
        case vanished, permission, other
    }

    /// Errors over the scraper's life (a server keeps them across scrapes).
    public var errors: [ErrorReason: Int] = [:]
    /// Processes looked at and DAX mappings found in the last scrape.
    public private(set) var processesSeen = 0
    public private(set) var daxMappingsSeen = 0
    /// The write-protect-on-DAX probe's verdict ("read=…,write=…"), when the
    /// caller ran it once (`metrics --wp-probe-dir`); scrapes never run it.
    public var daxWriteProtect = "not_probed"
    /// The exporter's own version and commit (daxmirror_build_info), as the
    /// CLI knows them: which build a fleet runs, by query.
    public var build: (version: String, commit: String) = ("unknown", "unknown")
    /// What the kernel offers, probed once when the scraper starts: it does
    /// not change while the process lives, and a probe that runs out of file
    /// descriptors mid-scrape must never be reported as "the kernel has no".
    public let offer: KernelOffer

    /// Probes the kernel's offer; throws if the probe itself could not run.
    public init() throws(SystemCallError) { offer = try KernelOffer.probe() }

    /// Collects everything and renders the text exposition format. What
    /// cannot be read is never reported as a measurement: a process that
    /// cannot be read is counted in daxmirror_scrape_errors_total, and a
    /// failure to read the host itself (the process list, the mount table,
    /// the NVDIMM inventory for a reason other than having none) throws.
    public mutating func collect() throws(SystemCallError) -> [UInt8] {
        let started = monotonicSeconds()
        let registry = PrometheusCollectorRegistry()
        let inventory: Inventory?
        do { inventory = try Inventory.read() } catch {
            // No NVDIMM bus or no driver is an empty inventory; no descriptor
            // or no memory to look is a failed scrape.
            if Self.environmental(error.errno) { throw SystemCallError("ndctl_new", "the NVDIMM inventory", errno: error.errno) }
            inventory = nil
        }
        let daxMounts = try MountTable.current().daxMounts
        let pids = try Self.pids()
        regions(inventory, registry)
        mounts(daxMounts, registry)
        processes(pids, inventory, daxMounts, registry)
        kernel(registry)
        for reason in ErrorReason.allCases {
            registry.counter("daxmirror_scrape_errors_total", labels: [("reason", reason.rawValue)],
                                 help: "Processes whose mappings could not be read (vanished mid-scrape, no permission, other), since the scraper started")
                .increment(by: Int64(errors[reason] ?? 0))
        }
        registry.gauge("daxmirror_build_info", labels: [("version", build.version), ("commit", build.commit)],
                       help: "The exporter's version and the commit it was built from (1)").set(to: 1)
        registry.gauge("daxmirror_scrape_processes", help: "Processes looked at by the last scrape")
            .set(to: Double(processesSeen))
        registry.gauge("daxmirror_scrape_duration_seconds", help: "How long the scrape took")
            .set(to: monotonicSeconds() - started)
        return registry.emitToBuffer()
    }

    // MARK: - regions, namespaces, DIMMs

    private func regions(_ inventory: Inventory?, _ registry: PrometheusCollectorRegistry) {
        guard let inventory else { return }
        for bus in inventory.buses {
            for r in bus.regions {
                let labels = [("bus", bus.dev), ("region", r.dev)]
                registry.gauge("daxmirror_region_info",
                                   labels: labels + [("provider", bus.provider), ("type", r.type),
                                                     ("persistence_domain", r.persistenceDomain),
                                                     ("persistence", r.persistence.rawValue)],
                                   help: "A pmem region (1): its bus provider, type, persistence domain, and what backs it (nvdimm, emulated-nvdimm, memmap-ram: lost at power-off)")
                    .set(to: 1)
                registry.gauge("daxmirror_region_size_bytes", labels: labels, help: "Size of the region")
                    .set(to: Double(r.size))
                registry.gauge("daxmirror_region_available_size_bytes", labels: labels,
                                   help: "Space in the region not used by any namespace").set(to: Double(r.availableSize))
                if let survives = r.persistence.survivesPowerOff {
                    registry.gauge("daxmirror_region_survives_power_off", labels: labels,
                                       help: "1 if the region's contents survive a power-off, 0 if they are lost (memmap= RAM); absent where it depends on a hypervisor's backing")
                        .set(to: survives ? 1 : 0)
                }
                for ns in r.namespaces {
                    let nl = labels + [("namespace", ns.dev), ("mode", ns.mode),
                                       ("blockdev", ns.blockdev ?? ""), ("chardev", ns.chardev ?? "")]
                    registry.gauge("daxmirror_namespace_size_bytes", labels: nl, help: "Usable size of the namespace")
                        .set(to: Double(ns.size))
                    if let a = ns.align {
                        registry.gauge("daxmirror_namespace_align_bytes", labels: nl,
                                           help: "Alignment of the namespace's mappings (2 MiB: PMDs, 1 GiB: PUDs)").set(to: Double(a))
                    }
                }
            }
            // Only DIMMs that answer SMART: a platform without health (QEMU's
            // emulated NVDIMM) has no such series at all, never zeros.
            for d in bus.dimms {
                if let e = d.healthError {
                    registry.gauge("daxmirror_dimm_smart_error", labels: [("bus", bus.dev), ("dimm", d.dev), ("errno", e.name)],
                                   help: "1: the DIMM supports SMART but its health could not be read, for the errno named")
                        .set(to: 1)
                }
                guard let h = d.health else { continue }
                let labels = [("bus", bus.dev), ("dimm", d.dev)]
                if let s = h.state {
                    for state in ["ok", "non-critical", "critical", "fatal"] {
                        registry.gauge("daxmirror_dimm_health_state", labels: labels + [("state", state)],
                                           help: "1 for the DIMM's SMART health state, 0 for the others")
                            .set(to: s == state ? 1 : 0)
                    }
                }
                if let t = h.temperatureCelsius {
                    registry.gauge("daxmirror_dimm_temperature_celsius", labels: labels, help: "Media temperature (SMART)")
                        .set(to: t)
                }
                if let s = h.sparesPercent {
                    registry.gauge("daxmirror_dimm_spares_ratio", labels: labels, help: "Spare blocks left, 0 to 1 (SMART)")
                        .set(to: Double(s) / 100)
                }
                if let u = h.lifeUsedPercent {
                    registry.gauge("daxmirror_dimm_life_used_ratio", labels: labels, help: "Rated life used, 0 to 1 (SMART)")
                        .set(to: Double(u) / 100)
                }
            }
        }
    }

    // MARK: - DAX mounts

    private func mounts(_ daxMounts: [MountEntry], _ registry: PrometheusCollectorRegistry) {
        for m in daxMounts {
            registry.gauge("daxmirror_dax_mount_info",
                               labels: [("device", m.source), ("mountpoint", m.mountPoint), ("fstype", m.fsType),
                                        ("dax", m.daxMode.rawValue)],
                               help: "A filesystem mounted with DAX (1): its device, filesystem and dax= mode")
                .set(to: 1)
        }
    }

    // MARK: - processes

    /// One mapped DAX file (or device-dax) of one process.
    struct Mapping {
        var mapped: UInt64 = 0
        /// nil when the pagemap could not be read (counted as an error):
        /// absent from the exposition, never a zero.
        var present: UInt64? = 0
        var huge: UInt64?
        var pud = false
    }

    private mutating func processes(_ pids: [Int32], _ inventory: Inventory?, _ daxMounts: [MountEntry],
                                     _ registry: PrometheusCollectorRegistry) {
        // VMA.device is major << 32 | minor, as maps gives it.
        let daxDevices = Set(daxMounts.map { UInt64($0.major) << 32 | UInt64($0.minor) })
        let pudDevices = Set((inventory?.daxDevices ?? []).filter { $0.align >= 1 << 30 }.map { "/dev/" + $0.chardev })
        processesSeen = 0
        daxMappingsSeen = 0
        for pid in pids {
            processesSeen += 1
            let maps: [SmapsEntry]
            do { maps = try Maps.read(pid: String(pid)) } catch {
                count(error.errno)
                continue
            }
            let vmas = maps.filter { $0.path.hasPrefix("/dev/dax") || daxDevices.contains($0.vma.device) }
            guard !vmas.isEmpty else { continue }
            let command = ((try? readTextFile("/proc/\(pid)/comm")) ?? "?").trimmingSpaces()
            let found = measure(pid, vmas, pudDevices: pudDevices)
            for (path, m) in found {
                daxMappingsSeen += 1
                // Names are anyone's to choose: inert like every other output
                // (a newline or U+202E in a label would show in a terminal).
                report(m, labels: [("pid", String(pid)), ("command", command.inert), ("path", path.inert)], registry)
            }
        }
    }

    /// The process's DAX mappings by path: bytes mapped, and from its
    /// pagemap the bytes present and in PMD entries. What could not be read
    /// is counted as an error and left unknown (nil), never zero.
    private mutating func measure(_ pid: Int32, _ vmas: [SmapsEntry], pudDevices: Set<String>) -> [String: Mapping] {
        let pagemap: Pagemap?
        do { pagemap = try Pagemap(pid: String(pid)) } catch { count(error.errno); pagemap = nil }
        var found: [String: Mapping] = [:]
        for v in vmas {
            var m = found[v.path] ?? Mapping()
            m.mapped += v.end - v.start
            m.pud = pudDevices.contains(v.path)
            if let pagemap, let present = m.present {
                do {
                    let pages = try pagemap.presentCount(at: v.start, count: Int((v.end - v.start) / Syscall.pageBytes))
                    m.present = present + UInt64(pages) * Syscall.pageBytes
                    if offer.pagemapScan {
                        let regions = try pagemap.scanAll(start: v.start, end: v.end, anyOf: [.huge], report: [.huge])
                        m.huge = (m.huge ?? 0) + regions.reduce(0) { $0 + ($1.end - $1.start) }
                    }
                } catch {
                    count(error.errno)
                    m.present = nil
                }
            } else {
                m.present = nil
            }
            found[v.path] = m
        }
        return found
    }

    /// One mapping's series: mapped always; present, PUD or PMD bytes where known.
    private func report(_ m: Mapping, labels: [(String, String)], _ registry: PrometheusCollectorRegistry) {
        registry.gauge("daxmirror_process_mapped_bytes", labels: labels,
                           help: "Bytes of a DAX file or device-dax a process maps").set(to: Double(m.mapped))
        guard let present = m.present else { return }
        registry.gauge("daxmirror_process_present_bytes", labels: labels,
                           help: "Of those, bytes with a page table entry now (pagemap)").set(to: Double(present))
        if m.pud {
            registry.gauge("daxmirror_process_pud_mapped_bytes", labels: labels,
                               help: "Bytes of device-dax aligned to 1 GiB, which the kernel maps only in 1 GiB PUD entries")
                .set(to: Double(m.mapped))
        } else if let huge = m.huge {
            registry.gauge("daxmirror_process_pmd_mapped_bytes", labels: labels,
                               help: "Bytes mapped in 2 MiB PMD entries (PAGEMAP_SCAN; absent on kernels without it)")
                .set(to: Double(huge))
        }
    }

    private mutating func count(_ e: Errno) {
        let reason: ErrorReason = (e == .ENOENT || e == .ESRCH) ? .vanished : ((e == .EACCES || e == .EPERM) ? .permission : .other)
        errors[reason, default: 0] += 1
    }

    /// Errors of the scraper's own environment, not of what it looks at.
    static func environmental(_ e: Errno) -> Bool { e == .EMFILE || e == .ENFILE || e == .ENOMEM }

    /// Every process ID in /proc, now.
    static func pids() throws(SystemCallError) -> [Int32] {
        guard let dir = opendir("/proc") else { throw SystemCallError("opendir", "/proc") }
        defer { closedir(dir) }
        var out: [Int32] = []
        while let e = readdir(dir) {
            let name = withUnsafeBytes(of: e.pointee.d_name) { String(decoding: $0.prefix { $0 != 0 }, as: UTF8.self) }
            if let pid = Int32(name) { out.append(pid) }
        }
        return out
    }

    // MARK: - the kernel

    private func kernel(_ registry: PrometheusCollectorRegistry) {
        registry.gauge("daxmirror_kernel_info",
                           labels: [("release", offer.release), ("uffd_features", offer.userfaultfdFeatures),
                                    ("pagemap_scan", offer.pagemapScan ? "yes" : "no"),
                                    ("procmap_query", offer.procmapQuery ? "yes" : "no"),
                                    ("soft_dirty", offer.softDirty ? "yes" : "no"),
                                    ("wp_on_dax", daxWriteProtect)],
                           help: "What this kernel offers (1): userfaultfd features, PAGEMAP_SCAN, PROCMAP_QUERY, soft-dirty, and the write-protect-on-DAX probe's verdict if it was run at start (metrics --wp-probe-dir: it can wedge a kernel, so scrapes never run it)")
            .set(to: 1)
    }
}

/// What the kernel offers, each answer a probe's: "no" only where the kernel
/// said no (ENOTTY, EINVAL, ENOSYS), never where the probe could not run.
public struct KernelOffer: Sendable {
    public var release: String
    /// "0x…" (UFFDIO_API's bits), or "none (EPERM)": the kernel's refusal.
    public var userfaultfdFeatures: String
    public var pagemapScan: Bool
    public var procmapQuery: Bool
    public var softDirty: Bool

    public static func probe() throws(SystemCallError) -> KernelOffer {
        let features: String
        do {
            features = "0x" + String(try Userfaultfd.supportedFeatures().rawValue, radix: 16)
        } catch let e as UserfaultfdOpenError {
            if let env = e.attempts.first(where: { Scrape.environmental($0.1) }) {
                throw SystemCallError("userfaultfd", errno: env.1)
            }
            features = "none (" + (e.attempts.first?.1.name ?? "?") + ")"
        } catch let e as SystemCallError {
            if Scrape.environmental(e.errno) { throw e }
            features = "none (" + e.errno.name + ")"
        } catch {
            features = "none"
        }
        // Both open a file of our own first: that failing is the environment.
        _ = try Pagemap()
        let procmap = try VMAQuery().method == .procmapQuery
        return KernelOffer(release: Syscall.kernelRelease, userfaultfdFeatures: features,
                           pagemapScan: PagemapScanSupport.available, procmapQuery: procmap,
                           softDirty: SoftDirty.available)
    }
}

extension PrometheusCollectorRegistry {
    /// A gauge by its whole name (ours carry their unit: `_bytes`,
    /// `_seconds`), through swift-prometheus's descriptor.
    func gauge(_ name: String, labels: [(String, String)] = [], help: String) -> Gauge {
        let d = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        return labels.isEmpty ? makeGauge(descriptor: d) : makeGauge(descriptor: d, labels: labels)
    }

    /// A counter by its whole name (`_total` included).
    func counter(_ name: String, labels: [(String, String)] = [], help: String) -> Counter {
        let d = MetricNameDescriptor(metricName: name, unitName: "", helpText: help)
        return labels.isEmpty ? makeCounter(descriptor: d) : makeCounter(descriptor: d, labels: labels)
    }
}
