#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// The VMAs of one range of a process, asked of the kernel for that range
/// only. With PROCMAP_QUERY (Linux 6.11+) each VMA is one ioctl on an open
/// /proc/PID/maps, found in O(log n): the cost follows the range, not the
/// process's thousands of other mappings. Older kernels (6.1) answer ENOTTY,
/// and the range is read from the maps text instead (`method` says which).
public final class VMAQuery: @unchecked Sendable {
    public enum Method: String, Sendable {
        case procmapQuery = "procmap_query"
        case mapsText = "maps text"
    }
    public let method: Method
    public let pid: String
    private let maps: OwnedFD

    /// Opens /proc/PID/maps and probes PROCMAP_QUERY on it.
    public init(pid: String = "self") throws(SystemCallError) {
        self.pid = pid
        maps = try OwnedFD.open("/proc/\(pid)/maps", O_RDONLY)
        var q = dm_procmap_query()
        q.size = UInt64(MemoryLayout<dm_procmap_query>.size)
        q.query_flags = DM_PROCMAP_QUERY_COVERING_OR_NEXT_VMA
        q.query_addr = 0
        // Any answer but ENOTTY/EINVAL means the kernel knows the ioctl.
        let known = dm_procmap_query(maps.rawValue, &q) == 0 || (errno != ENOTTY && errno != EINVAL)
        method = known ? .procmapQuery : .mapsText
    }

    /// Whether this kernel has PROCMAP_QUERY (what `caps` reports).
    public static var available: Bool { (try? VMAQuery())?.method == .procmapQuery }

    /// The size of the kernel's entries for the VMA covering `address`
    /// (PROCMAP_QUERY's vma_page_size: 1 GiB for such device-dax); nil
    /// without PROCMAP_QUERY or without a VMA there.
    public func pageSize(at address: UInt64) -> UInt64? {
        guard method == .procmapQuery else { return nil }
        var q = dm_procmap_query()
        q.size = UInt64(MemoryLayout<dm_procmap_query>.size)
        q.query_addr = address
        guard (try? query(&q)) != nil else { return nil }
        return q.vma_page_size
    }

    /// The VMAs overlapping [start, end), sorted.
    public func vmas(overlapping start: UInt64, _ end: UInt64) throws(SystemCallError) -> [VMA] {
        var out: [VMA] = []
        try vmas(overlapping: start, end, into: &out)
        return out
    }

    /// The same into `out` (emptied first, its storage kept): a caller that
    /// asks before every device access allocates nothing once it is warm.
    public func vmas(overlapping start: UInt64, _ end: UInt64, into out: inout [VMA]) throws(SystemCallError) {
        out.removeAll(keepingCapacity: true)
        guard method == .procmapQuery else {
            for e in try Maps.read(pid: pid, overlapping: start, end) { out.append(e.vma) }
            return
        }
        var at = start
        while at < end {
            var q = dm_procmap_query()
            q.size = UInt64(MemoryLayout<dm_procmap_query>.size)
            q.query_flags = DM_PROCMAP_QUERY_COVERING_OR_NEXT_VMA
            q.query_addr = at
            do { try query(&q) } catch where error.errno == .ENOENT { break }  // nothing at or after `at`
            guard q.vma_start < end else { break }
            out.append(VMA(vma: q))
            guard q.vma_end > at else { break }  // cannot happen; never loop forever
            at = q.vma_end
        }
    }
}

extension VMAQuery {
    /// One PROCMAP_QUERY, asked again while the kernel says EAGAIN (it could
    /// not take the mmap lock without waiting).
    private func query(_ q: inout dm_procmap_query) throws(SystemCallError) {
        while true {
            do {
                try Syscall.retrying("ioctl(PROCMAP_QUERY)", "/proc/\(pid)/maps") { dm_procmap_query(maps.rawValue, &q) }
                return
            } catch where error.errno == .EAGAIN { continue }
        }
    }
}

extension VMA {
    /// One PROCMAP_QUERY answer.
    init(vma q: dm_procmap_query) {
        let f = q.vma_flags
        self.init(start: q.vma_start, end: q.vma_end,
                  readable: f & DM_PROCMAP_QUERY_VMA_READABLE != 0, writable: f & DM_PROCMAP_QUERY_VMA_WRITABLE != 0,
                  executable: f & DM_PROCMAP_QUERY_VMA_EXECUTABLE != 0, shared: f & DM_PROCMAP_QUERY_VMA_SHARED != 0,
                  offset: q.vma_offset, device: UInt64(q.dev_major) << 32 | UInt64(q.dev_minor), inode: q.inode)
    }
}
