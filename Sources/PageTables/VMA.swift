/// One VMA as a mirror needs it: bounds, permissions and what it maps (no
/// path, no smaps fields), in plain values so that reading one allocates
/// nothing. From PROCMAP_QUERY or a maps line.
public struct VMA: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    public var readable: Bool
    public var writable: Bool
    public var executable: Bool
    /// MAP_SHARED ("s" in maps).
    public var shared: Bool
    /// File offset of `start` (meaningless for anonymous memory).
    public var offset: UInt64
    /// The backing's device, major << 32 | minor (0 for anonymous memory).
    public var device: UInt64
    public var inode: UInt64

    public init(start: UInt64, end: UInt64, readable: Bool, writable: Bool, executable: Bool = false,
                shared: Bool, offset: UInt64 = 0, device: UInt64 = 0, inode: UInt64 = 0) {
        self.start = start
        self.end = end
        self.readable = readable
        self.writable = writable
        self.executable = executable
        self.shared = shared
        self.offset = offset
        self.device = device
        self.inode = inode
    }

    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
}
