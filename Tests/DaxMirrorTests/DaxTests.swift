import Foundation
import Testing
import DaxCore
import DaxDetection
import PageTables
@testable import PersistentMemory

/// Tests that need real DAX: they run in the pmem guest (Scripts/guest.sh sets
/// DAXMIRROR_DAX_DIR) and are reported as skipped, with how to run them, elsewhere.
@Suite("on a DAX filesystem", .enabled(if: DaxEnvironment.directory != nil, Comment(rawValue: DaxEnvironment.skipMessage)))
struct DaxTests {
    var daxDir: String { DaxEnvironment.directory! }

    /// The kernel's own word that the directory is a DAX mount.
    @Test func procMountsShowsDaxMount() throws {
        let mounts = try String(contentsOfFile: "/proc/mounts", encoding: .utf8).split(separator: "\n")
        let line = try #require(mounts.first { $0.split(separator: " ").dropFirst().first.map(String.init) == daxDir })
        let fields = line.split(separator: " ")
        #expect(fields[0].hasPrefix("/dev/pmem"))
        #expect(fields[3].split(separator: ",").contains { $0 == "dax" || $0 == "dax=always" })
    }

    @Test func mapOnDaxIsRealPmem() throws {
        let dir = try ScratchDirectory(base: daxDir)
        let r = try CLI.daxmirror(["map", dir.file("f"), "--create", "--size", "64M", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r)
        #expect(j["is_pmem"] as? Bool == true)
        #expect(j["map_sync"] as? String == "accepted")
        #expect(j["persist_method"] as? String == "cache_flush")
        #expect((j["reason"] as? String)?.contains("FORCE") == false)
        let dax = try #require(j["dax"] as? [String: Any])
        #expect(dax["statx_dax"] as? Bool == true)
        #expect(dax["blockdev_dax"] as? Bool == true)
        #expect((dax["blockdev"] as? String)?.hasPrefix("pmem") == true)
        #expect(dax["namespace_mode"] as? String == "fsdax")
        let view = try #require(j["kernel_view"] as? [String: Any])
        #expect(view["pages"] as? Int == 16384)
        #expect((view["vm_flags"] as? [String])?.contains("sf") == true)  // MAP_SYNC as the kernel recorded it

        let dev = try CLI.json(try CLI.daxmirror(["devices", "--json"]))
        let namespaces = ((dev["buses"] as? [[String: Any]]) ?? [])
            .flatMap { ($0["regions"] as? [[String: Any]]) ?? [] }
            .flatMap { ($0["namespaces"] as? [[String: Any]]) ?? [] }
        #expect(namespaces.contains { $0["mode"] as? String == "fsdax" && $0["dev"] as? String == dax["namespace"] as? String })
    }

    /// Persist on real pmem is a cache flush: no msync reaches the kernel.
    @Test func persistOnDaxNeedsNoMsync() throws {
        let strace = try #require(which("strace"))
        let dir = try ScratchDirectory(base: daxDir)
        #expect(try CLI.daxmirror(["map", dir.file("f"), "--create", "--size", "4M"]).status == 0)
        let log = dir.file("trace")
        let r = try CLI.run(strace, ["-f", "-qq", "-e", "trace=msync", "-o", log, CLI.binary, "map", dir.file("f"), "--fill", "0x5c", "--overwrite"])
        #expect(r.status == 0, "\(r.stderr)")
        #expect(try String(contentsOfFile: log, encoding: .utf8).components(separatedBy: "msync(").count == 1)
        #expect(try fileBytes(dir.file("f")).allSatisfy { $0 == 0x5c })
    }

    /// Written pages of a DAX mapping are pmem pages: their PFNs (pagemap)
    /// fall inside the NVDIMM region's physical range (sysfs).
    @Test func writtenPagesHavePmemPFNs() throws {
        let dir = try ScratchDirectory(base: daxDir)
        let m = try PersistentMapping(path: dir.file("p"), size: 4 << 20, options: [.create])
        #expect(m.isPersistentMemory)
        let base = try #require(m.base)
        for page in stride(from: 0, to: m.length, by: 4096 * 37) { base.storeBytes(of: 1, toByteOffset: page, as: UInt8.self) }
        try m.persist()
        let regions = try FileManager.default.contentsOfDirectory(atPath: "/sys/bus/nd/devices").filter { $0.hasPrefix("region") }
        let ranges = regions.compactMap { r -> ClosedRange<UInt64>? in
            guard let res = readSysfsAttribute("/sys/bus/nd/devices/\(r)/resource").flatMap({ UInt64($0.dropFirst(2), radix: 16) }),
                  let size = readSysfsAttribute("/sys/bus/nd/devices/\(r)/size").flatMap({ UInt64($0) }) else { return nil }
            return res...(res + size - 1)
        }
        try #require(!ranges.isEmpty)
        let entries = try Pagemap().entries(at: UInt64(UInt(bitPattern: base)), count: m.length / 4096)
        for page in stride(from: 0, to: m.length / 4096, by: 37) {
            let pfn = try #require(entries[page].pfn, "page \(page) not present after a write")
            #expect(ranges.contains { $0.contains(pfn * 4096) }, "page \(page): PFN 0x\(String(pfn, radix: 16)) outside pmem \(ranges)")
        }
    }
}
