#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// One 64-bit entry of /proc/PID/pagemap (Documentation/admin-guide/mm/pagemap.rst).
public struct PagemapEntry: Sendable, Equatable, Hashable {
    public let raw: UInt64
    public init(raw: UInt64) { self.raw = raw }

    public var present: Bool { raw & (1 << 63) != 0 }
    public var swapped: Bool { raw & (1 << 62) != 0 }
    /// The page is file-backed or shared anonymous.
    public var fileOrShared: Bool { raw & (1 << 61) != 0 }
    public var uffdWriteProtected: Bool { raw & (1 << 57) != 0 }
    public var exclusive: Bool { raw & (1 << 56) != 0 }
    public var softDirty: Bool { raw & (1 << 55) != 0 }
    /// Bits 0–54 when present; zero when the reader lacks CAP_SYS_ADMIN.
    public var pfn: UInt64? { present ? raw & ((1 << 55) - 1) : nil }
}

/// An open /proc/PID/pagemap.
public final class Pagemap: @unchecked Sendable {
    public let fd: OwnedFD
    public let pid: String

    public init(pid: String = "self") throws(SystemCallError) {
        self.pid = pid
        fd = try OwnedFD.open("/proc/\(pid)/pagemap", O_RDONLY)
    }

    /// Entries for `count` pages from the page holding `address`, in one pread.
    public func entries(at address: UInt64, count: Int) throws(SystemCallError) -> [PagemapEntry] {
        let page = UInt64(Syscall.pageSize)
        var raw = [UInt64](repeating: 0, count: count)
        let want = count * 8
        let offset = off_t(bitPattern: UInt(address / page * 8))
        let got = try Syscall.retrying("pread", "/proc/\(pid)/pagemap") {
            raw.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, want, offset) }
        }
        return raw.prefix(got / 8).map(PagemapEntry.init(raw:))
    }

    /// The raw entries for `count` pages from the page holding `address`, into
    /// `raw` (resized, its storage kept between calls). Returns how many the
    /// kernel gave (fewer past the end of the address space).
    @discardableResult
    public func read(at address: UInt64, count: Int, into raw: inout [UInt64]) throws(SystemCallError) -> Int {
        if raw.count < count { raw.append(contentsOf: repeatElement(0, count: count - raw.count)) }
        let page = UInt64(Syscall.pageSize)
        let offset = off_t(bitPattern: UInt(address / page * 8))
        let got = try Syscall.retrying("pread", "/proc/\(pid)/pagemap") {
            raw.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, count * 8, offset) }
        }
        return got / 8
    }

    /// How many of `count` pages from the page holding `address` are present,
    /// read in pieces of 64 Ki entries: memory bounded (512 KiB) whatever
    /// the range (a 1 TiB mapping is 2 GiB of entries).
    public func presentCount(at address: UInt64, count: Int) throws(SystemCallError) -> Int {
        try tally(at: address, count: count).present
    }

    /// Present pages, and those present or swapped with soft-dirty set
    /// (written since the last clear), counted the same bounded way.
    public func tally(at address: UInt64, count: Int) throws(SystemCallError) -> (present: Int, written: Int) {
        let page = UInt64(Syscall.pageSize)
        let piece = 1 << 16
        var raw: [UInt64] = []
        var present = 0, written = 0
        var done = 0
        while done < count {
            let want = min(piece, count - done)
            let got = try read(at: address + UInt64(done) * page, count: want, into: &raw)
            for i in 0..<got {
                let e = PagemapEntry(raw: raw[i])
                if e.present { present += 1 }
                if (e.present || e.swapped) && e.softDirty { written += 1 }
            }
            if got < want { break }
            done += want
        }
        return (present, written)
    }

    public func entry(at address: UInt64) throws(SystemCallError) -> PagemapEntry {
        guard let e = try entries(at: address, count: 1).first else {
            throw SystemCallError("pread", "/proc/\(pid)/pagemap", errno: .EIO)
        }
        return e
    }
}
