import DaxCore

/// What a mirrored range of this process's memory is, which decides how the
/// device reaches its pages (see `Aperture`).
public enum RegionBacking: Sendable, Equatable {
    /// MAP_PRIVATE|MAP_ANONYMOUS.
    case anonymous
    /// A memfd / tmpfs file mapped MAP_SHARED; `fd` stays open while mirrored.
    /// With `fd` -1 (here and in `file`) there is no descriptor: the device
    /// reaches the pages through the process's own mapping (`daxmirror
    /// emulate`, which mirrors memory the program mapped).
    case shmem(fd: Int32)
    /// A regular file (DAX or not). `shared` = MAP_SHARED; a MAP_PRIVATE file
    /// mapping is reached like anonymous memory (its written pages are anonymous).
    case file(path: String, fd: Int32, shared: Bool)
    /// A device-dax character device (/dev/daxX.Y) mapped MAP_SHARED: no
    /// filesystem, `physicalBase` from sysfs `resource`, mapped by the kernel
    /// in `align`-sized entries (1 GiB: PUDs, which pagemap cannot see).
    case devdax(path: String, fd: Int32, physicalBase: UInt64, size: UInt64, align: UInt64)

    public var kind: MemoryKind {
        switch self {
        case .anonymous: return .anonymous
        case .shmem: return .shmem
        case .file: return .file
        case .devdax: return .devdax
        }
    }

    /// The kind's word; a MAP_PRIVATE file is "file-private".
    public var name: String {
        switch self {
        case .anonymous: return "anon"
        case .shmem: return "shmem"
        case .file(_, _, let shared): return shared ? "file" : "file-private"
        case .devdax: return "devdax"
        }
    }

    /// The descriptor the device opens its own mapping through, if any.
    public var sharedFD: Int32? {
        switch self {
        case .anonymous: return nil
        case .shmem(let fd): return fd
        case .file(_, let fd, let shared): return shared ? fd : nil
        case .devdax(_, let fd, _, _, _): return fd
        }
    }
}

/// A range of this process's address space to mirror: [base, base+length),
/// whose first byte is at `fileOffset` of the backing file (shared backings).
public struct Region: Sendable, Equatable {
    public var base: UInt64
    public var length: UInt64
    public var backing: RegionBacking
    public var fileOffset: UInt64

    public init(base: UnsafeMutableRawPointer, length: Int, backing: RegionBacking, fileOffset: UInt64 = 0) {
        self.base = UInt64(UInt(bitPattern: base))
        self.length = UInt64(length)
        self.backing = backing
        self.fileOffset = fileOffset
    }

    public var end: UInt64 { base + length }
    public func contains(_ address: UInt64, _ count: UInt64) -> Bool {
        address >= base && count <= length && address - base <= length - count
    }
}
