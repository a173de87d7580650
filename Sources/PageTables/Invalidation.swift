/// A change to the CPU mapping that a mirror must act on before it uses the
/// affected entries again. (Ranges are absolute addresses.)
public enum Invalidation: Sendable, Equatable {
    case unmap(start: UInt64, end: UInt64)
    case remove(start: UInt64, end: UInt64)
    case remap(from: UInt64, to: UInt64, length: UInt64)
    /// The process forked; the child's copy is not tracked (its uffd was closed).
    case fork
}
