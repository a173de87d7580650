import Synchronization

/// Address ranges this process mapped for daxmirror's own use (a device's
/// memory). Where daxmirror mirrors the memory of a program it lives in
/// (`daxmirror emulate`), its own mappings can land in a hole the program
/// just made; a command over that hole must still find a hole there, never
/// take daxmirror's memory for the program's.
public enum OwnMappings {
    private static let ranges = Mutex<[Range<UInt64>]>([])

    public static func add(_ r: Range<UInt64>) {
        ranges.withLock { $0.append(r) }
    }

    public static func remove(_ r: Range<UInt64>) {
        ranges.withLock { list in
            if let i = list.firstIndex(of: r) { list.remove(at: i) }
        }
    }

    /// [lo, hi) without the parts daxmirror mapped for itself, as ranges.
    public static func subtracted(from lo: UInt64, _ hi: UInt64) -> [Range<UInt64>] {
        var pieces = [lo..<hi]
        for own in ranges.withLock({ $0 }) where own.overlaps(lo..<hi) {
            pieces = pieces.flatMap { p -> [Range<UInt64>] in
                guard p.overlaps(own) else { return [p] }
                return [p.lowerBound..<max(p.lowerBound, own.lowerBound), min(p.upperBound, own.upperBound)..<p.upperBound].filter { !$0.isEmpty }
            }
        }
        return pieces
    }
}
