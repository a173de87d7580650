import CDaxctl
import CNdctl
import DaxCore

/// What the kernel's libnvdimm and device-dax subsystems expose, read through
/// libndctl / libdaxctl (the libraries behind `ndctl list` and `daxctl list`),
/// with the key names those tools print.
public struct Inventory: Sendable, JSONRepresentable {
    public var buses: [Bus]
    public var daxDevices: [DaxDevice]

    public struct Bus: Sendable, JSONRepresentable {
        public var dev: String
        public var provider: String
        public var regions: [Region]
        public var dimms: [Dimm] = []
        public var json: JSON {
            .object(["provider": .string(provider), "dev": .string(dev),
                     "regions": .array(regions.map(\.json))])
        }
    }

    public struct Region: Sendable, JSONRepresentable {
        public var dev: String
        public var size: UInt64
        public var availableSize: UInt64
        public var type: String
        public var persistenceDomain: String
        public var numaNode: Int?
        public var namespaces: [Namespace]
        /// What backs it (its bus's kind): whether data survives power-off.
        public var persistence: Persistence = .unknown
        public var json: JSON {
            .object([
                "dev": .string(dev), "size": .uint(size), "available_size": .uint(availableSize),
                "type": .string(type), "numa_node": numaNode.map { .int(Int64($0)) },
                "persistence_domain": .string(persistenceDomain),
                "persistence": persistence.json,
                "namespaces": .array(namespaces.map(\.json)),
            ])
        }
    }

    public struct Namespace: Sendable, JSONRepresentable {
        public var dev: String
        public var mode: String
        public var size: UInt64
        public var uuid: String?
        public var sectorSize: UInt32?
        public var align: UInt64?
        public var blockdev: String?
        public var chardev: String?
        public var numaNode: Int?
        public var json: JSON {
            .object([
                "dev": .string(dev), "mode": .string(mode), "size": .uint(size),
                "uuid": uuid.map { .string($0) },
                "sector_size": sectorSize.map { .uint(UInt64($0)) },
                "align": align.map { .uint($0) },
                "blockdev": blockdev.map { .string($0) },
                "chardev": chardev.map { .string($0) },
                "numa_node": numaNode.map { .int(Int64($0)) },
            ])
        }
    }

    /// An NVDIMM and, where its platform answers the SMART command, its
    /// health (QEMU's emulated NVDIMM does not: health is then nil).
    public struct Dimm: Sendable {
        public var dev: String
        public var health: Health?
        /// The DIMM supports SMART but the command failed: why (EACCES when
        /// the caller may not open /dev/nmemN read-write, as libndctl does).
        public var healthError: Errno?

        public struct Health: Sendable {
            /// "ok", "non-critical", "critical" or "fatal" (ndctl's names).
            public var state: String?
            public var temperatureCelsius: Double?
            public var sparesPercent: UInt32?
            public var lifeUsedPercent: UInt32?
        }
    }

    public struct DaxDevice: Sendable, JSONRepresentable {
        public var chardev: String
        public var size: UInt64
        public var align: UInt64
        /// Physical address of the device's first byte (the truth for PUD mappings,
        /// which pagemap cannot show).
        public var resource: UInt64
        public var targetNode: Int?
        public var major: Int32
        public var minor: Int32
        public var json: JSON {
            .object([
                "chardev": .string(chardev), "size": .uint(size), "align": .uint(align),
                "resource": .uint(resource), "target_node": targetNode.map { .int(Int64($0)) },
                "mode": .string("devdax"),
            ])
        }
    }

    public var json: JSON {
        .object(["buses": .array(buses.map(\.json)), "dax_devices": .array(daxDevices.map(\.json))])
    }

    /// Every namespace on every bus.
    public var namespaces: [Namespace] { buses.flatMap { $0.regions.flatMap(\.namespaces) } }

    /// The region holding the namespace named `dev` (e.g. "namespace0.0").
    public func region(ofNamespace dev: String) -> Region? {
        buses.flatMap(\.regions).first { $0.namespaces.contains { $0.dev == dev } }
    }

    /// The namespace whose block device is `name` (e.g. "pmem0"; a partition
    /// "pmem0p1" belongs to "pmem0").
    public func namespace(forBlockDevice name: String) -> Namespace? {
        namespaces.first { ns in
            guard let b = ns.blockdev else { return false }
            return name == b || (name.hasPrefix(b + "p") && name.dropFirst(b.count + 1).allSatisfy(\.isNumber))
        }
    }

    public init(buses: [Bus] = [], daxDevices: [DaxDevice] = []) {
        self.buses = buses
        self.daxDevices = daxDevices
    }
}

/// Failure to open the libndctl / libdaxctl context (not "no NVDIMM here",
/// which is an empty inventory).
public struct InventoryError: Error, CustomStringConvertible {
    public let library: String
    public let errno: Errno
    public var description: String { "\(library): cannot open a context: \(errno)" }
}

extension Inventory {
    /// Walks libndctl and libdaxctl. A machine with no NVDIMM gives an empty
    /// inventory; only a library that cannot start at all is an error.
    public static func read() throws(InventoryError) -> Inventory {
        var ctx: OpaquePointer?
        let rc = ndctl_new(&ctx)
        guard rc == 0, let ctx else { throw InventoryError(library: "libndctl", errno: Errno(-rc)) }
        defer { ndctl_unref(ctx) }
        ndctl_set_log_priority(ctx, 0)  // its own warnings would pollute our stderr contract

        var inv = Inventory()
        var bus = ndctl_bus_get_first(ctx)
        let hypervisor = Persistence.underHypervisor
        while let b = bus {
            let provider = string(ndctl_bus_get_provider(b))
            var regions = regions(of: b)
            for i in regions.indices { regions[i].persistence = .of(busProvider: provider, underHypervisor: hypervisor) }
            inv.buses.append(Bus(dev: string(ndctl_bus_get_devname(b)), provider: provider, regions: regions,
                                 dimms: dimms(of: b)))
            bus = ndctl_bus_get_next(b)
        }

        var dctx: OpaquePointer?
        let drc = daxctl_new(&dctx)
        guard drc == 0, let dctx else { throw InventoryError(library: "libdaxctl", errno: Errno(-drc)) }
        defer { daxctl_unref(dctx) }
        daxctl_set_log_priority(dctx, 0)
        var region = daxctl_region_get_first(dctx)
        while let r = region {
            var dev = daxctl_dev_get_first(r)
            while let d = dev {
                if daxctl_dev_is_enabled(d) != 0 {
                    let node = daxctl_dev_get_target_node(d)
                    inv.daxDevices.append(DaxDevice(
                        chardev: string(daxctl_dev_get_devname(d)), size: daxctl_dev_get_size(d),
                        align: UInt64(daxctl_dev_get_align(d)), resource: daxctl_dev_get_resource(d),
                        targetNode: node >= 0 ? Int(node) : nil,
                        major: daxctl_dev_get_major(d), minor: daxctl_dev_get_minor(d)))
                }
                dev = daxctl_dev_get_next(d)
            }
            region = daxctl_region_get_next(r)
        }
        return inv
    }

    /// Every DIMM of the bus, with SMART health where the DIMM supports it.
    private static func dimms(of bus: OpaquePointer) -> [Dimm] {
        var out: [Dimm] = []
        var dimm = ndctl_dimm_get_first(bus)
        while let d = dimm {
            defer { dimm = ndctl_dimm_get_next(d) }
            var item = Dimm(dev: string(ndctl_dimm_get_devname(d)))
            if ndctl_dimm_is_cmd_supported(d, 1 /* ND_CMD_SMART, linux/ndctl.h */) != 0, let cmd = ndctl_dimm_cmd_new_smart(d) {
                defer { ndctl_cmd_unref(cmd) }
                let rc = ndctl_cmd_submit(cmd)
                if rc < 0 { item.healthError = Errno(-rc) } else {
                    let flags = ndctl_cmd_smart_get_flags(cmd)
                    var h = Dimm.Health()
                    if flags & UInt32(ND_SMART_HEALTH_VALID) != 0 {
                        let v = ndctl_cmd_smart_get_health(cmd)
                        h.state = v & UInt32(ND_SMART_FATAL_HEALTH) != 0 ? "fatal"
                            : v & UInt32(ND_SMART_CRITICAL_HEALTH) != 0 ? "critical"
                            : v & UInt32(ND_SMART_NON_CRITICAL_HEALTH) != 0 ? "non-critical" : "ok"
                    }
                    if flags & UInt32(ND_SMART_MTEMP_VALID) != 0 {
                        // 1/16 degree Celsius, bit 15 the sign (ndctl's decoding).
                        let t = ndctl_cmd_smart_get_temperature(cmd)
                        h.temperatureCelsius = Double(t & 0x7fff) / 16 * (t & 0x8000 != 0 ? -1 : 1)
                    }
                    if flags & UInt32(ND_SMART_SPARES_VALID) != 0 { h.sparesPercent = ndctl_cmd_smart_get_spares(cmd) }
                    if flags & UInt32(ND_SMART_USED_VALID) != 0 { h.lifeUsedPercent = ndctl_cmd_smart_get_life_used(cmd) }
                    item.health = h
                }
            }
            out.append(item)
        }
        return out
    }

    private static func regions(of bus: OpaquePointer) -> [Region] {
        var out: [Region] = []
        var region = ndctl_region_get_first(bus)
        while let r = region {
            defer { region = ndctl_region_get_next(r) }
            let node = ndctl_region_get_numa_node(r)
            out.append(Region(
                dev: string(ndctl_region_get_devname(r)), size: ndctl_region_get_size(r),
                availableSize: ndctl_region_get_available_size(r),
                type: string(ndctl_region_get_type_name(r)),
                persistenceDomain: persistenceDomainName(ndctl_region_get_persistence_domain(r)),
                numaNode: node >= 0 ? Int(node) : nil,
                namespaces: namespaces(of: r)))
        }
        return out
    }

    private static func namespaces(of region: OpaquePointer) -> [Namespace] {
        var out: [Namespace] = []
        var ns = ndctl_namespace_get_first(region)
        while let n = ns {
            defer { ns = ndctl_namespace_get_next(n) }
            // Like `ndctl list`: idle namespaces (the unused seed) are not listed.
            guard ndctl_namespace_is_active(n) else { continue }
            let node = ndctl_namespace_get_numa_node(n)
            var item = Namespace(dev: string(ndctl_namespace_get_devname(n)), mode: "raw",
                                 size: ndctl_namespace_get_size(n),
                                 numaNode: node >= 0 ? Int(node) : nil)
            item.uuid = uuidString { ndctl_namespace_get_uuid(n, $0) }
            let mode = ndctl_namespace_get_mode(n)
            if mode == NDCTL_NS_MODE_FSDAX, let pfn = ndctl_namespace_get_pfn(n) {
                item.mode = "fsdax"
                item.size = ndctl_pfn_get_size(pfn)
                item.align = UInt64(ndctl_pfn_get_align(pfn))
                item.blockdev = optionalString(ndctl_pfn_get_block_device(pfn))
            } else if mode == NDCTL_NS_MODE_DEVDAX, let dax = ndctl_namespace_get_dax(n) {
                item.mode = "devdax"
                item.size = ndctl_dax_get_size(dax)
                item.align = UInt64(ndctl_dax_get_align(dax))
                if let dr = ndctl_dax_get_daxctl_region(dax), let dev = daxctl_dev_get_first(dr) {
                    item.chardev = optionalString(daxctl_dev_get_devname(dev))
                }
            } else if mode == NDCTL_NS_MODE_SECTOR, let btt = ndctl_namespace_get_btt(n) {
                item.mode = "sector"
                item.blockdev = optionalString(ndctl_btt_get_block_device(btt))
            } else {
                // Raw namespaces, and legacy memmap= / e820 pmem which the kernel
                // runs in fsdax mode without a pfn device ("map": "mem").
                item.mode = mode == NDCTL_NS_MODE_FSDAX ? "fsdax" : "raw"
                item.blockdev = optionalString(ndctl_namespace_get_block_device(n))
                let sector = ndctl_namespace_get_sector_size(n)
                if sector > 0 { item.sectorSize = sector }
            }
            out.append(item)
        }
        return out
    }

    private static func persistenceDomainName(_ d: ndctl_persistence_domain) -> String {
        switch d {
        case PERSISTENCE_NONE: return "none"
        case PERSISTENCE_MEM_CTRL: return "memory_controller"
        case PERSISTENCE_CPU_CACHE: return "cpu_cache"
        default: return "unknown"
        }
    }
}

private func string(_ p: UnsafePointer<CChar>?) -> String { p.map { String(cString: $0) } ?? "" }
private func optionalString(_ p: UnsafePointer<CChar>?) -> String? {
    guard let p, p.pointee != 0 else { return nil }
    return String(cString: p)
}

/// Formats a uuid_t filled by `fill`; nil when it is all zeros (legacy pmem has none).
private func uuidString(_ fill: (UnsafeMutablePointer<UInt8>) -> Void) -> String? {
    var bytes = [UInt8](repeating: 0, count: 16)
    bytes.withUnsafeMutableBufferPointer { fill($0.baseAddress!) }
    guard bytes.contains(where: { $0 != 0 }) else { return nil }
    let hex = bytes.map { b -> String in
        let s = String(b, radix: 16)
        return s.count == 1 ? "0" + s : s
    }
    return [0..<4, 4..<6, 6..<8, 8..<10, 10..<16].map { hex[$0].joined() }.joined(separator: "-")
}
