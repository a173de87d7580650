#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// PAGE_IS_* categories of the PAGEMAP_SCAN ioctl (Linux 6.7+).
public struct PageCategories: OptionSet, Sendable, Hashable, CustomStringConvertible {
    public let rawValue: UInt64
    public init(rawValue: UInt64) { self.rawValue = rawValue }
    public static let wpAllowed = Self(rawValue: 1 << 0)
    public static let written = Self(rawValue: 1 << 1)
    public static let file = Self(rawValue: 1 << 2)
    public static let present = Self(rawValue: 1 << 3)
    public static let swapped = Self(rawValue: 1 << 4)
    public static let pfnZero = Self(rawValue: 1 << 5)
    public static let huge = Self(rawValue: 1 << 6)
    public static let softDirty = Self(rawValue: 1 << 7)
    /// The categories every PAGEMAP_SCAN kernel accepts in return_mask (6.12
    /// refuses a return_mask with bit 8, PAGE_IS_GUARD, with EINVAL).
    public static let all = Self(rawValue: 0xff)

    public var description: String {
        [(Self.wpAllowed, "WPALLOWED"), (.written, "WRITTEN"), (.file, "FILE"), (.present, "PRESENT"),
         (.swapped, "SWAPPED"), (.pfnZero, "PFNZERO"), (.huge, "HUGE"), (.softDirty, "SOFT_DIRTY")]
            .filter { contains($0.0) }.map(\.1).joined(separator: "|")
    }
}

/// A run of pages [start, end) that share `categories`.
public struct PageRegion: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    public var categories: PageCategories
    public init(start: UInt64, end: UInt64, categories: PageCategories) {
        self.start = start
        self.end = end
        self.categories = categories
    }
}

extension Pagemap {
    /// One PAGEMAP_SCAN call: regions matching `required` in [start, end),
    /// reporting `report`. Returns the regions and where the walk stopped
    /// (`walkEnd < end` means the vector filled: call again from there).
    public func scan(start: UInt64, end: UInt64, required: PageCategories = [],
                     anyOf: PageCategories = [], report: PageCategories = .all,
                     flags: UInt64 = 0, maxRegions: Int = 512) throws(SystemCallError) -> (regions: [PageRegion], walkEnd: UInt64) {
        var vec = [dm_page_region](repeating: dm_page_region(), count: maxRegions)
        var arg = dm_pm_scan_arg()
        arg.size = UInt64(MemoryLayout<dm_pm_scan_arg>.size)
        arg.flags = flags
        arg.start = start
        arg.end = end
        arg.category_mask = required.rawValue
        arg.category_anyof_mask = anyOf.rawValue
        arg.return_mask = report.rawValue
        let n = try vec.withUnsafeMutableBufferPointer { buf throws(SystemCallError) -> Int in
            arg.vec = UInt64(UInt(bitPattern: buf.baseAddress))
            arg.vec_len = UInt64(buf.count)
            return try Syscall.retrying("PAGEMAP_SCAN", "/proc/\(pid)/pagemap") { dm_pagemap_scan(fd.rawValue, &arg) }
        }
        let regions = vec.prefix(n).map {
            PageRegion(start: $0.start, end: $0.end, categories: PageCategories(rawValue: $0.categories))
        }
        return (regions, arg.walk_end)
    }
}

public enum PagemapScanSupport {
    /// Whether this kernel has the PAGEMAP_SCAN ioctl (6.7+): an empty scan of
    /// our own pagemap succeeds, where older kernels answer ENOTTY.
    public static var available: Bool {
        guard let pm = try? Pagemap() else { return false }
        let page = UInt64(Syscall.pageSize)
        // Scan the page holding this stack frame: always mapped.
        var probe: UInt8 = 0
        let here = withUnsafeMutablePointer(to: &probe) { UInt64(UInt(bitPattern: $0)) } & ~(page - 1)
        return (try? pm.scan(start: here, end: here + page, maxRegions: 1)) != nil
    }
}

extension Pagemap {
    /// A whole-range PAGEMAP_SCAN, resuming from `walk_end` each time the
    /// output vector fills (or the kernel stops early).
    public func scanAll(start: UInt64, end: UInt64, required: PageCategories = [], anyOf: PageCategories = [],
                        report: PageCategories = .all, flags: UInt64 = 0) throws(SystemCallError) -> [PageRegion] {
        var out: [PageRegion] = []
        try scanAll(start: start, end: end, required: required, anyOf: anyOf, report: report, flags: flags, into: &out)
        return out
    }

    /// `scanAll`, appending to `out`.
    public func scanAll(start: UInt64, end: UInt64, required: PageCategories = [], anyOf: PageCategories = [],
                        report: PageCategories = .all, flags: UInt64 = 0, into out: inout [PageRegion]) throws(SystemCallError) {
        // One output vector for every call of the walk.
        var vec = [dm_page_region](repeating: dm_page_region(), count: 512)
        var arg = dm_pm_scan_arg()
        arg.size = UInt64(MemoryLayout<dm_pm_scan_arg>.size)
        arg.flags = flags
        arg.category_mask = required.rawValue
        arg.category_anyof_mask = anyOf.rawValue
        arg.return_mask = report.rawValue
        var at = start
        while at < end {
            arg.start = at
            arg.end = end
            let n = try vec.withUnsafeMutableBufferPointer { buf throws(SystemCallError) -> Int in
                arg.vec = UInt64(UInt(bitPattern: buf.baseAddress))
                arg.vec_len = UInt64(buf.count)
                return try Syscall.retrying("PAGEMAP_SCAN", "/proc/\(pid)/pagemap") { dm_pagemap_scan(fd.rawValue, &arg) }
            }
            // One bulk append per call: it grows the array geometrically and
            // skips the per-element uniqueness check of append(_:) (an exact
            // reserveCapacity(count + n) would instead reallocate every call).
            vec.withUnsafeBufferPointer { buf in
                out.append(contentsOf: buf[0..<n].lazy.map {
                    PageRegion(start: $0.start, end: $0.end, categories: PageCategories(rawValue: $0.categories))
                })
            }
            if arg.walk_end <= at || arg.walk_end >= end { break }
            at = arg.walk_end
        }
    }

    public static let scanWPMatching: UInt64 = 1 << 0
    public static let scanCheckWPAsync: UInt64 = 1 << 1
}
