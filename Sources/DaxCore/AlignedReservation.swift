#if canImport(Glibc)
import Glibc
#endif

/// `length` bytes of address space starting at a multiple of `alignment`
/// (2 MiB so the kernel may use PMD entries, a device-dax's alignment),
/// reserved PROT_NONE and MAP_NORESERVE. What is mapped there must be mapped
/// with MAP_FIXED over the reservation: an address given as a hint alone may
/// be ignored by the kernel, and the reservation would then leak. The
/// unaligned ends of the larger range it asked for are given back at once.
public struct AlignedReservation: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int

    public init(length: Int, alignment: Int) throws(SystemCallError) {
        precondition(alignment > 0 && alignment & (alignment - 1) == 0, "alignment must be a power of two")
        let (asked, overflow) = length.addingReportingOverflow(alignment)
        guard !overflow else { throw SystemCallError("mmap", "an aligned reservation of \(length) bytes", errno: .ENOMEM) }
        guard let raw = mmap(nil, asked, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0), raw != MAP_FAILED else {
            throw SystemCallError("mmap", "an aligned reservation of \(length) bytes")
        }
        let start = UInt(bitPattern: raw)
        let aligned = (start + UInt(alignment - 1)) & ~UInt(alignment - 1)
        let head = Int(aligned - start)
        if head > 0 { munmap(raw, head) }
        let tail = asked - head - length
        if tail > 0 { munmap(UnsafeMutableRawPointer(bitPattern: aligned + UInt(length))!, tail) }
        base = UnsafeMutableRawPointer(bitPattern: aligned)!
        self.length = length
    }

    /// Gives the whole range back (whatever was mapped over it too).
    public func release() { munmap(base, length) }
}
