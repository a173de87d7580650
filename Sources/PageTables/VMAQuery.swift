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

    /// The VMAs overlapping [start, end), sorted, as maps lines would give
    /// them (no path, no smaps fields: what the mirror's layout uses).
    public func vmas(overlapping start: UInt64, _ end: UInt64) throws(SystemCallError) -> [SmapsEntry] {
        guard method == .procmapQuery else { return try Maps.read(pid: pid, overlapping: start, end) }
        var out: [SmapsEntry] = []
        var at = start
        while at < end {
            var q = dm_procmap_query()
            q.size = UInt64(MemoryLayout<dm_procmap_query>.size)
            q.query_flags = DM_PROCMAP_QUERY_COVERING_OR_NEXT_VMA
            q.query_addr = at
            if dm_procmap_query(maps.rawValue, &q) != 0 {
                let e = Errno.current
                if e == .ENOENT { break }  // nothing at or after `at`
                if e == .EINTR || e == .EAGAIN { continue }
                throw SystemCallError("ioctl(PROCMAP_QUERY)", "/proc/\(pid)/maps", errno: e)
            }
            guard q.vma_start < end else { break }
            out.append(SmapsEntry(vma: q))
            guard q.vma_end > at else { break }  // cannot happen; never loop forever
            at = q.vma_end
        }
        return out
    }
}

extension SmapsEntry {
    /// A maps line's worth of one PROCMAP_QUERY answer.
    init(vma q: dm_procmap_query) {
        let f = q.vma_flags
        var perms = ""
        perms.append(f & DM_PROCMAP_QUERY_VMA_READABLE != 0 ? "r" : "-")
        perms.append(f & DM_PROCMAP_QUERY_VMA_WRITABLE != 0 ? "w" : "-")
        perms.append(f & DM_PROCMAP_QUERY_VMA_EXECUTABLE != 0 ? "x" : "-")
        perms.append(f & DM_PROCMAP_QUERY_VMA_SHARED != 0 ? "s" : "p")
        // maps prints the device as %02x:%02x.
        func hex2(_ v: UInt32) -> String { let s = String(v, radix: 16); return s.count < 2 ? "0" + s : s }
        self.init(start: q.vma_start, end: q.vma_end, perms: perms, offset: q.vma_offset,
                  device: "\(hex2(q.dev_major)):\(hex2(q.dev_minor))", inode: q.inode, path: "",
                  fields: [:], vmFlags: [])
    }
}
