import Foundation
import Testing
import NVDIMMInventory
@testable import DaxCore
@testable import DaxDetection
@testable import PageTables

@Suite("mountinfo")
struct MountInfoTests {
    static let fixture = """
        22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw
        25 22 0:5 / /dev rw,nosuid shared:2 - devtmpfs devtmpfs rw,size=4096k
        31 22 259:0 / /mnt/pmem rw,relatime shared:9 - ext4 /dev/pmem0 rw,dax=always
        32 22 259:1 / /mnt/x\\040fs rw,relatime - xfs /dev/pmem1 rw,attr2,dax=inode,noquota
        33 22 259:2 / /mnt/old rw - ext4 /dev/pmem2 rw,dax
        34 22 0:40 / /mnt/pmem/sub rw - tmpfs tmpfs rw
        this line is not mountinfo
        """

    @Test func parsesFieldsAndEscapes() throws {
        let t = MountTable(parsing: Self.fixture)
        #expect(t.entries.count == 6)
        let xfs = try #require(t.entries.first { $0.fsType == "xfs" })
        #expect(xfs.mountPoint == "/mnt/x fs")
        #expect(xfs.major == 259 && xfs.minor == 1)
        #expect(xfs.daxMode == .inode)
        #expect(t.entries.first { $0.source == "/dev/pmem0" }?.daxMode == .always)
        #expect(t.entries.first { $0.source == "/dev/pmem2" }?.daxMode == .always)  // old-style "dax"
        #expect(t.entries.first { $0.source == "/dev/vda" }?.daxMode == DaxMountMode.none)
        #expect(t.daxMounts.map(\.mountPoint) == ["/mnt/pmem", "/mnt/x fs", "/mnt/old"])
    }

    @Test func longestPrefixWins() {
        let t = MountTable(parsing: Self.fixture)
        #expect(t.entry(containing: "/mnt/pmem/file")?.source == "/dev/pmem0")
        #expect(t.entry(containing: "/mnt/pmem/sub/file")?.fsType == "tmpfs")
        #expect(t.entry(containing: "/mnt/pmemx")?.source == "/dev/vda")  // not a path prefix
        #expect(t.entry(containing: "/mnt/x fs/a")?.fsType == "xfs")
    }

    /// Against the kernel: every mount in our parse of /proc/self/mountinfo is
    /// also in /proc/self/mounts (a different kernel file) with the same type.
    @Test func liveMountinfoAgreesWithProcMounts() throws {
        let table = try MountTable.current()
        let mounts = try String(contentsOfFile: "/proc/self/mounts", encoding: .utf8)
            .split(separator: "\n").map { $0.split(separator: " ") }
        #expect(table.entries.count == mounts.count)
        for e in table.entries {
            let escaped = e.mountPoint.replacingOccurrences(of: " ", with: "\\040")
            #expect(mounts.contains { $0.count > 2 && $0[1] == escaped && $0[2] == e.fsType },
                    "\(e.mountPoint) (\(e.fsType)) not in /proc/self/mounts")
        }
        #expect(table.entry(containing: "/proc/self/status")?.fsType == "proc")
    }
}

@Suite("smaps")
struct SmapsTests {
    static let fixture = """
        7f0000000000-7f0000200000 rw-s 00000000 103:00 12 /mnt/pmem/data file
        Size:               2048 kB
        KernelPageSize:        4 kB
        MMUPageSize:           4 kB
        Rss:                   0 kB
        FilePmdMapped:         0 kB
        VmFlags: rd wr sh mr mw me ms sf
        7fff00000000-7fff00021000 rw-p 00000000 00:00 0 
        Size:                132 kB
        Rss:                  12 kB
        AnonHugePages:         0 kB
        VmFlags: rd wr mr mw me ac um uw
        """

    @Test func parsesFixture() throws {
        let v = try Smaps.parse(Self.fixture)
        #expect(v.count == 2)
        #expect(v[0].path == "/mnt/pmem/data file")
        #expect(v[0].size == 2 << 20)
        #expect(v[0].isSync && v[0].isShared && v[0].rss == 0)
        #expect(v[0].device == "103:00" && v[0].inode == 12)
        #expect(v[1].path == "" && v[1].rss == 12 * 1024)
        #expect(v[1].userfaultfdFlags == ["um", "uw"])
        #expect(!v[1].isShared && !v[1].isSync)
    }

    @Test func rejectsGarbage() {
        #expect(throws: SmapsParseError.self) { try Smaps.parse("Rss: 4 kB\n") }
        #expect(throws: SmapsParseError.self) { try Smaps.parse("not a header at all\n") }
    }

    /// Against the kernel: map 16 anonymous pages, touch 5, and find exactly
    /// that VMA with Rss 5 pages in our parse of the live smaps.
    @Test func liveSmapsSeesOurMapping() throws {
        let p = try mapped(mmap(nil, 16 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(p, 16 * page) }
        // A guard page on each side keeps the kernel from merging neighbours into our VMA.
        mprotect(p, page, PROT_NONE)
        mprotect(p + 15 * page, page, PROT_NONE)
        for i in [1, 2, 3, 7, 14] { p.storeBytes(of: 0x5a, toByteOffset: i * page, as: UInt8.self) }
        let start = UInt64(UInt(bitPattern: p)) + UInt64(page)
        let vma = try #require(try Smaps.parse(try Smaps.read()).first { $0.start == start })
        #expect(vma.end == start + UInt64(14 * page))
        #expect(vma.rss == UInt64(5 * page))
        #expect(vma.perms == "rw-p")
    }
}

@Suite("pagemap")
struct PagemapTests {
    /// Our decoded entries equal a direct pread of /proc/self/pagemap.
    @Test func decodedEntriesEqualRawPread() throws {
        let p = try mapped(mmap(nil, 8 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        defer { munmap(p, 8 * page) }
        for i in [0, 2, 5] { p.storeBytes(of: 1, toByteOffset: i * page, as: UInt8.self) }
        let addr = UInt64(UInt(bitPattern: p))
        let ours = try Pagemap().entries(at: addr, count: 8)
        let fd = open("/proc/self/pagemap", O_RDONLY)
        defer { close(fd) }
        var raw = [UInt64](repeating: 0, count: 8)
        let n = raw.withUnsafeMutableBytes { pread(fd, $0.baseAddress, 64, off_t(addr / UInt64(page) * 8)) }
        #expect(n == 64)
        #expect(ours.map(\.raw) == raw)
        #expect(ours.enumerated().filter { $0.element.present }.map(\.offset) == [0, 2, 5])
        if getuid() == 0 { #expect(ours[0].pfn != 0) }
    }
}

@Suite("values")
struct ValueTests {
    @Test func byteSizes() {
        #expect(ByteSize.parse("4096") == 4096)
        #expect(ByteSize.parse("64M") == 64 << 20)
        #expect(ByteSize.parse("2MiB") == 2 << 20)
        #expect(ByteSize.parse("1G") == 1 << 30)
        #expect(ByteSize.parse("1.5K") == 1536)
        for bad in ["", "-1", "12Q", "M", "0x10", "99999999999999999999"] { #expect(ByteSize.parse(bad) == nil, "\(bad)") }
        #expect(ByteSize.human(2 << 20) == "2 MiB")
        #expect(ByteSize.human(1536) == "1.5 KiB")
    }

    @Test func jsonEscapesAndOrder() throws {
        let j = JSON.object(["b": .string("q\"\\\n\u{1}"), "a": .uint(UInt64.max), "n": nil, "z": .array([])])
        let text = j.render(pretty: false)
        #expect(text == #"{"b":"q\"\\\n\u0001","a":18446744073709551615,"z":[]}"#)
        let back = try JSONSerialization.jsonObject(with: Data(j.render().utf8)) as? [String: Any]
        #expect(back?["b"] as? String == "q\"\\\n\u{1}")
    }
}

@Suite("PROCMAP_QUERY")
struct VMAQueryTests {
    /// The ioctl's answer for a range is exactly the maps text's VMAs there
    /// (start, end, permissions, offset, device, inode), over mappings of every
    /// kind — anonymous, shared, read-only, PROT_NONE, a file — with holes
    /// between them, and ranges that start and end inside VMAs and holes.
    @Test(.enabled(if: VMAQuery.available, "this kernel has no PROCMAP_QUERY (before 6.11): the maps text serves"))
    func answersAsTheMapsTextDoes() throws {
        let query = try VMAQuery()
        try #require(query.method == .procmapQuery)
        let page = Syscall.pageSize
        // 42 pages reserved; the first and last are shared anonymous guards (each
        // its own object, so no neighbour's VMA can merge into the range: other
        // tests map and unmap beside us while this one compares two readings).
        // Between them, 40 pages mapped in pieces of different kinds with holes.
        let reservation = try mapped(mmap(nil, 42 * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
        try #require(reservation != MAP_FAILED)
        defer { munmap(reservation, 42 * page) }
        for guardPage in [0, 41] {
            let r = mmap(reservation + guardPage * page, page, PROT_NONE, MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0)
            try #require(r != MAP_FAILED, "guard page \(guardPage)")
        }
        let base = reservation + page
        let fd = open("/proc/self/exe", O_RDONLY)
        try #require(fd >= 0)
        defer { close(fd) }
        let pieces: [(Int, Int, Int32, Int32, Int32)] = [  // (page, count, prot, flags, fd)
            (0, 3, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1),
            (4, 2, PROT_READ, MAP_SHARED | MAP_ANONYMOUS, -1),
            (6, 5, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1),
            (13, 4, PROT_READ, MAP_PRIVATE, fd),
            (20, 2, PROT_READ | PROT_EXEC, MAP_PRIVATE, fd),
        ]
        munmap(base + 3 * page, page)  // holes at 3, 11-12 (PROT_NONE stays), 17-19 unmapped
        munmap(base + 17 * page, 3 * page)
        for (p, n, prot, flags, f) in pieces {
            let r = mmap(base + p * page, n * page, prot, flags | MAP_FIXED, f, f < 0 ? 0 : off_t(p * page))
            try #require(r != MAP_FAILED, "mmap piece at page \(p)")
        }
        let b = UInt64(UInt(bitPattern: base)), pg = UInt64(page)
        // Every range stays inside the guards, so both readings see only our VMAs.
        let first = b - pg, last = b + 41 * pg
        var rng = SystemRandomNumberGenerator()
        for i in 0..<300 {
            let s = i == 0 ? b : b + UInt64.random(in: 0..<40, using: &rng) * pg + UInt64.random(in: 0..<pg, using: &rng)
            let e = i == 0 ? b + 40 * pg : min(last, s + UInt64.random(in: 1...(42 * pg), using: &rng))
            let fromIoctl = try query.vmas(overlapping: s, e)
            let fromText = try Maps.read(overlapping: s, e).map(\.vma)
            #expect(fromIoctl == fromText, "range 0x\(String(s, radix: 16))-0x\(String(e, radix: 16))")
        }
        #expect(try query.vmas(overlapping: first, last + pg) == (try Maps.read(overlapping: first, last + pg).map(\.vma)))
        // The whole reservation: every piece, hole and PROT_NONE remainder is there.
        #expect(try query.vmas(overlapping: b, b + 40 * pg).count >= 7)
    }
}

/// What backs a pmem region, from its bus: memmap= RAM is never called durable.
@Suite("pmem persistence")
struct PersistenceTests {
    @Test func theBusSaysWhatBacksTheRegion() {
        #expect(Persistence.of(busProvider: "e820", underHypervisor: false) == .memmapRAM)
        #expect(Persistence.of(busProvider: "e820", underHypervisor: true) == .memmapRAM)
        #expect(Persistence.of(busProvider: "ACPI.NFIT", underHypervisor: false) == .nvdimm)
        #expect(Persistence.of(busProvider: "ACPI.NFIT", underHypervisor: true) == .emulatedNVDIMM)
        #expect(Persistence.of(busProvider: "nfit_test.0", underHypervisor: false) == .emulatedNVDIMM)
        #expect(Persistence.of(busProvider: "something new", underHypervisor: false) == .unknown)
        #expect(Persistence.memmapRAM.survivesPowerOff == false && Persistence.memmapRAM.sentence.contains("LOST AT POWER-OFF"))
        #expect(Persistence.nvdimm.survivesPowerOff == true)
        #expect(Persistence.emulatedNVDIMM.survivesPowerOff == nil && Persistence.unknown.survivesPowerOff == nil)
    }

    /// The inventory of this machine against the kernel's own word: every
    /// region's backing from its bus's provider as sysfs names it and the
    /// CPU's hypervisor flag as /proc/cpuinfo shows it, read here, not by
    /// the code under test; and an e820 region is /proc/iomem's
    /// "Persistent Memory (legacy)".
    @Test func theInventoryNamesEachRegionsBacking() throws {
        let inventory = try Inventory.read()
        guard !inventory.buses.isEmpty else { try skip("no NVDIMM bus here (the pmem guests run this)") }
        let cpuinfo = try String(contentsOfFile: "/proc/cpuinfo", encoding: .utf8)
        let hypervisor = cpuinfo.split(separator: "\n").contains { $0.hasPrefix("flags") && $0.split(separator: " ").contains("hypervisor") }
        let iomem = (try? String(contentsOfFile: "/proc/iomem", encoding: .utf8)) ?? ""
        for bus in inventory.buses {
            let provider = try #require(readSysfsAttribute("/sys/bus/nd/devices/\(bus.dev)/provider"))
            for region in bus.regions {
                switch (provider, hypervisor) {
                case ("e820", _):
                    #expect(region.persistence == .memmapRAM)
                    #expect(iomem.contains("Persistent Memory (legacy)"), "an e820 region without its /proc/iomem range")
                case ("ACPI.NFIT", true): #expect(region.persistence == .emulatedNVDIMM)
                case ("ACPI.NFIT", false): #expect(region.persistence == .nvdimm)
                default: #expect(region.persistence == .emulatedNVDIMM || region.persistence == .unknown, "\(provider)")
                }
            }
        }
    }
}
