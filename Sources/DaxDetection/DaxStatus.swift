#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import NVDIMMInventory

/// Everything the kernel says about whether a path is on DAX, from four
/// independent sources, so that a "no" comes with the reason.
public struct DaxStatus: Sendable, JSONRepresentable {
    /// The path with symlinks resolved.
    public var path: String
    public var mount: MountEntry?
    /// The filesystem's dax option.
    public var mountMode: DaxMountMode
    /// STATX_ATTR_DAX; nil when the filesystem does not report the attribute.
    public var fileDAX: Bool?
    /// The block device under the filesystem (e.g. "pmem0"), if any.
    public var blockDevice: String?
    /// /sys/block/DEV/queue/dax: the device can do DAX at all.
    public var blockDeviceDAX: Bool?
    /// The ndctl namespace behind the block device, where libndctl knows one.
    public var namespace: Inventory.Namespace?

    /// True when the file itself is in DAX state (the only fact that decides
    /// whether loads and stores reach persistent memory without a page cache).
    public var isDAX: Bool { fileDAX ?? mountMode.isDAX }

    /// Why the file is not DAX, naming the first source that says no; nil if it is.
    public var notDAXReason: String? {
        if isDAX { return nil }
        guard let mount else { return "no mount found for \(path)" }
        let fs = "\(mount.fsType) filesystem at \(mount.mountPoint) (\(mount.source))"
        if blockDeviceDAX != true {
            return "\(fs) is not on a DAX-capable block device"
        }
        switch mountMode {
        case .always: return "file is not in DAX state although \(fs) is mounted dax"
        case .inode: return "\(fs) is mounted dax=inode and this file lacks the DAX flag"
        case .never, .none: return "\(fs) is not mounted with -o dax"
        }
    }

    public var json: JSON {
        .object([
            "path": .string(path), "dax": .bool(isDAX),
            "reason": notDAXReason.map { .string($0) },
            "mount_point": mount.map { .string($0.mountPoint) },
            "fs_type": mount.map { .string($0.fsType) },
            "source": mount.map { .string($0.source) },
            "mount_dax": .string(mountMode.rawValue),
            "statx_dax": fileDAX.map { .bool($0) },
            "blockdev": blockDevice.map { .string($0) },
            "blockdev_dax": blockDeviceDAX.map { .bool($0) },
            "namespace": namespace.map { .string($0.dev) },
            "namespace_mode": namespace.map { .string($0.mode) },
        ])
    }
}

extension DaxStatus {
    /// Inspects `path` (which must exist). `inventory` maps the block device to
    /// its ndctl namespace; pass nil to skip that lookup.
    public static func inspect(path: String, mounts: MountTable, inventory: Inventory?) throws(SystemCallError) -> DaxStatus {
        var sx = dm_statx_result()
        try Syscall.retrying("statx", path) { dm_statx(AT_FDCWD, path, 0, &sx) }
        let real = realPath(path) ?? path
        let mount = mounts.entry(major: sx.dev_major, minor: sx.dev_minor, path: real) ?? mounts.entry(containing: real)
        var status = DaxStatus(path: real, mount: mount, mountMode: mount?.daxMode ?? .none)
        if sx.attributes_mask & DM_STATX_ATTR_DAX != 0 {
            status.fileDAX = sx.attributes & DM_STATX_ATTR_DAX != 0
        }
        // The filesystem's device, from the file (not from the mount table, which
        // can disagree for btrfs subvolumes and overlay).
        let (maj, min) = (sx.dev_major, sx.dev_minor)
        if let dev = blockDeviceName(major: maj, minor: min) {
            status.blockDevice = dev.name
            status.blockDeviceDAX = dev.dax
            status.namespace = inventory?.namespace(forBlockDevice: dev.name)
        }
        return status
    }

    /// Name and queue/dax of the block device MAJ:MIN, via /sys/dev/block.
    /// A partition has no queue of its own: its parent's queue decides.
    static func blockDeviceName(major: UInt32, minor: UInt32) -> (name: String, dax: Bool?)? {
        let link = "/sys/dev/block/\(major):\(minor)"
        guard let target = readLink(link) else { return nil }
        let name = String(target.split(separator: "/").last ?? "")
        let dax = readSysfsAttribute(link + "/queue/dax") ?? readSysfsAttribute(link + "/../queue/dax")
        return (name, dax.map { $0 == "1" })
    }
}

public func realPath(_ path: String) -> String? {
    guard let p = realpath(path, nil) else { return nil }
    defer { free(p) }
    return String(cString: p)
}

public func readLink(_ path: String) -> String? {
    var buf = [CChar](repeating: 0, count: 4096)
    let n = readlink(path, &buf, buf.count - 1)
    guard n >= 0 else { return nil }
    return String(decoding: buf[0..<n].map { UInt8(bitPattern: $0) }, as: UTF8.self)
}
