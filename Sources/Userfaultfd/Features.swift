import CDaxShim

/// UFFD_FEATURE_* bits (include/uapi/linux/userfaultfd.h), named as the kernel
/// names them, re-declared here so Swift sees one consistent set whatever the
/// installed headers' age.
public struct UserfaultfdFeatures: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }

    public static let pagefaultFlagWP = Self(rawValue: 1 << 0)
    public static let eventFork = Self(rawValue: 1 << 1)
    public static let eventRemap = Self(rawValue: 1 << 2)
    public static let eventRemove = Self(rawValue: 1 << 3)
    public static let missingHugetlbfs = Self(rawValue: 1 << 4)
    public static let missingShmem = Self(rawValue: 1 << 5)
    public static let eventUnmap = Self(rawValue: 1 << 6)
    public static let sigbus = Self(rawValue: 1 << 7)
    public static let threadID = Self(rawValue: 1 << 8)
    public static let minorHugetlbfs = Self(rawValue: 1 << 9)
    public static let minorShmem = Self(rawValue: 1 << 10)
    public static let exactAddress = Self(rawValue: 1 << 11)
    public static let wpHugetlbfsShmem = Self(rawValue: 1 << 12)
    public static let wpUnpopulated = Self(rawValue: 1 << 13)
    public static let poison = Self(rawValue: 1 << 14)
    public static let wpAsync = Self(rawValue: 1 << 15)
    public static let move = Self(rawValue: 1 << 16)

    /// Kernel names without the UFFD_FEATURE_ prefix, in bit order.
    public static let names: [(UserfaultfdFeatures, String)] = [
        (.pagefaultFlagWP, "PAGEFAULT_FLAG_WP"), (.eventFork, "EVENT_FORK"),
        (.eventRemap, "EVENT_REMAP"), (.eventRemove, "EVENT_REMOVE"),
        (.missingHugetlbfs, "MISSING_HUGETLBFS"), (.missingShmem, "MISSING_SHMEM"),
        (.eventUnmap, "EVENT_UNMAP"), (.sigbus, "SIGBUS"), (.threadID, "THREAD_ID"),
        (.minorHugetlbfs, "MINOR_HUGETLBFS"), (.minorShmem, "MINOR_SHMEM"),
        (.exactAddress, "EXACT_ADDRESS"), (.wpHugetlbfsShmem, "WP_HUGETLBFS_SHMEM"),
        (.wpUnpopulated, "WP_UNPOPULATED"), (.poison, "POISON"), (.wpAsync, "WP_ASYNC"),
        (.move, "MOVE"),
    ]

    /// Names of the set bits; unknown (future) bits as "bit N".
    public var names: [String] {
        var out = UserfaultfdFeatures.names.filter { contains($0.0) }.map(\.1)
        let known = UserfaultfdFeatures.names.reduce(UInt64(0)) { $0 | $1.0.rawValue }
        for bit in 0..<64 where rawValue & ~known & (1 << UInt64(bit)) != 0 { out.append("bit \(bit)") }
        return out
    }
    public var description: String { names.joined(separator: "|") }

    /// The events that drive invalidation of a mirror.
    public static let invalidationEvents: UserfaultfdFeatures = [.eventFork, .eventRemap, .eventRemove, .eventUnmap]
}

/// UFFDIO_REGISTER_MODE_* bits.
public struct RegisterMode: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let missing = Self(rawValue: 1 << 0)
    public static let writeProtect = Self(rawValue: 1 << 1)
    public static let minor = Self(rawValue: 1 << 2)
    public var description: String {
        [(Self.missing, "MISSING"), (.writeProtect, "WP"), (.minor, "MINOR")]
            .filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}

/// The ioctls the kernel allows on a registered range (the `ioctls` bits
/// UFFDIO_REGISTER returns, numbered by _UFFDIO_*).
public struct RangeIoctls: OptionSet, Sendable, Hashable {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let wake = Self(rawValue: 1 << 0x02)
    public static let copy = Self(rawValue: 1 << 0x03)
    public static let zeropage = Self(rawValue: 1 << 0x04)
    public static let move = Self(rawValue: 1 << 0x05)
    public static let writeprotect = Self(rawValue: 1 << 0x06)
    public static let `continue` = Self(rawValue: 1 << 0x07)
    public static let poison = Self(rawValue: 1 << 0x08)
    public var names: [String] {
        [(Self.wake, "wake"), (.copy, "copy"), (.zeropage, "zeropage"), (.move, "move"),
         (.writeprotect, "writeprotect"), (.continue, "continue"), (.poison, "poison")]
            .filter { contains($0.0) }.map(\.1)
    }
}
