/// What memory a mapping is: the one name for it across the package (the
/// scenario's `map` word, the mirror's region, the tracker's choice,
/// inspect's "backing" column). Whether a file's mapping reaches
/// persistent memory directly (DAX) is a property beside it, not a kind.
public enum MemoryKind: String, Sendable, CaseIterable {
    /// MAP_PRIVATE|MAP_ANONYMOUS (scenario word `anon`).
    case anonymous = "anon"
    /// shmem: a memfd, tmpfs or SysV segment mapped MAP_SHARED.
    case shmem
    /// A regular file, DAX or not.
    case file
    /// A device-dax character device (/dev/daxX.Y): no filesystem.
    case devdax

    /// As a person reads it ("anonymous", not "anon").
    public var displayName: String { self == .anonymous ? "anonymous" : rawValue }
}
