#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import DaxDetection
import NVDIMMInventory
import PageTables

/// One VMA of another process, tied to its filesystem, DAX state, NVDIMM
/// namespace and page-table truth (what `daxmirror inspect` prints).
public struct InspectedVMA: Sendable {
    public var vma: SmapsEntry
    public var kind: MemoryKind
    public var filesystem: String?
    public var mountDAX: Bool?
    public var fileDAX: Bool?
    public var blockDevice: String?
    public var namespace: String?
    public var region: String?
    /// What backs that region: whether the data survives power-off.
    public var persistence: Persistence?
    public var presentPages: UInt64 = 0
    /// Soft-dirty pages (written since the last --rearm); nil without PAGEMAP_SCAN.
    public var writtenPages: UInt64?
    public var pmdMappings = 0
    /// False where the PMD count cannot be known: a DAX mapping on a kernel
    /// without PAGEMAP_SCAN (smaps counts no DAX pages, pagemap has no size bit).
    public var pmdKnown = true
    public var pudMappings = 0
    public var runs: [PageRun] = []
    /// One snapshot code per page (with `pages`).
    public var codes: [SnapshotCode] = []

    public var isDAX: Bool { fileDAX ?? mountDAX ?? (kind == .devdax) }

    /// As the table and JSON name it: the kind, or the kernel's name for an
    /// anonymous VMA it named ([heap], [stack], [vdso], ...).
    public var backing: String { kind == .anonymous && !vma.path.isEmpty ? vma.path : kind.displayName }

    /// What backs the file: its mount, DAX state, block device, namespace
    /// and the namespace's region.
    mutating func describe(_ st: DaxStatus, _ inventory: Inventory?) {
        filesystem = st.mount?.fsType
        mountDAX = st.mountMode.isDAX
        fileDAX = st.fileDAX
        blockDevice = st.blockDevice
        namespace = st.namespace?.dev
        let region = st.namespace.flatMap { ns in inventory?.region(ofNamespace: ns.dev) }
        self.region = region?.dev
        persistence = region?.persistence
    }

    /// A device-dax's namespace and region, by its character device's name.
    mutating func describeDeviceDAX(_ inventory: Inventory) {
        let name = String(vma.path.split(separator: "/").last ?? "")
        for region in inventory.buses.flatMap(\.regions) {
            if let ns = region.namespaces.first(where: { $0.chardev == name }) {
                namespace = ns.dev; self.region = region.dev; persistence = region.persistence
            }
        }
    }

    /// One PAGEMAP_SCAN region's pages [lo, hi) inside this VMA.
    mutating func count(_ reg: PageRegion, _ lo: UInt64, _ hi: UInt64) {
        let n = (hi - lo) / Syscall.pageBytes
        if reg.categories.contains(.present) {
            presentPages += n
            if reg.categories.contains(.huge) {
                // The 2 MiB spans this huge run covers.
                pmdMappings += Int(((hi - 1) >> 21) - (lo >> 21) + 1)
            }
        }
        if reg.categories.contains(.softDirty) { writtenPages = (writtenPages ?? 0) + n }
    }
}

/// A run of pages with the same snapshot code and consecutive PFNs.
public struct PageRun: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    public var pfn: UInt64?
    /// dmirror's SNAPSHOT code.
    public var code: SnapshotCode
}

public struct Inspection: Sendable {
    public var pid: Int32
    public var command: String
    public var vmas: [InspectedVMA]
    public var pagemapScan: Bool
    /// The kernel tracks soft-dirty bits (CONFIG_MEM_SOFT_DIRTY): "written" means something.
    public var softDirty: Bool
    /// A kernel thread (PF_KTHREAD): it has no user memory, so no VMAs.
    public var kernelThread = false

    /// `--pages` lists at most this many pages (16 GiB of mappings).
    public static let maxPagesShown: UInt64 = 4 << 20

    /// Reads /proc/PID/{smaps,mountinfo,pagemap} once each and ties them
    /// together. `range` limits the VMAs; `pages` adds per-page runs;
    /// `rearm` clears soft-dirty afterwards so the next `written` counts
    /// only later writes.
    public static func read(pid: Int32, range: ClosedRange<UInt64>? = nil, pages: Bool = false,
                            rearm: Bool = false, inventory: Inventory? = nil) throws(Failure) -> Inspection {
        let watch = try ExitWatch(pid)
        let command = (try? readTextFile("/proc/\(pid)/comm"))?.trimmingSpaces() ?? "?"
        // A zombie has exited (its memory is gone) though its PID remains; a
        // kernel thread never had user memory. Neither is "exited meanwhile".
        let (state, flags) = try processState(pid)
        if state == "Z" || state == "X" {
            throw Failure(.processGone, "process \(pid) has exited (a zombie its parent has not reaped yet): it has no memory left to inspect")
        }
        if ExitWatch.exiting(flags) {
            throw Failure(.processGone, "process \(pid) is exiting (killed or ending): its memory is being torn down, nothing left to inspect")
        }
        if flags & 0x0020_0000 != 0 {  // PF_KTHREAD
            return Inspection(pid: pid, command: command, vmas: [], pagemapScan: PagemapScanSupport.available,
                              softDirty: SoftDirty.available, kernelThread: true)
        }
        var out = try describeVMAs(pid, range: range, inventory: inventory)
        let pagemap: Pagemap
        do { pagemap = try Pagemap(pid: String(pid)) } catch { throw procFailure(error, pid, "pagemap") }
        let scan = PagemapScanSupport.available
        let softDirty = SoftDirty.available
        var regions: [PageRegion] = []
        if scan {
            regions = try countScanned(&out, pagemap, pid, softDirty: softDirty)
        } else {
            try countFromPagemap(&out, pagemap, pid, softDirty: softDirty)
        }
        if pages { try addPageViews(&out, pagemap, pid, regions: regions, softDirty: softDirty) }
        // A process that exited (or whose PID was reused) mid-read is not a
        // table to present as complete.
        guard !watch.exited else { throw Failure(.processGone, "process \(pid) exited while it was being inspected") }
        if rearm { try clearSoftDirty(pid) }
        return Inspection(pid: pid, command: command, vmas: out, pagemapScan: scan, softDirty: softDirty)
    }

    /// Knows whether the process exited (or its PID was reused) since it was
    /// made: a pidfd polls readable then; kernels before 5.3 have none, and
    /// the start time in /proc/PID/stat is compared instead. A process that
    /// has only begun to exit counts too: its memory is torn down before
    /// its pidfd polls readable (60,000 VMAs took seconds in a 6.1 guest),
    /// and what smaps and pagemap gave meanwhile was cut short without an
    /// error (both read as empty once the mm is gone).
    struct ExitWatch: ~Copyable {

        let pid: Int32
        let pidfd: Int32
        var startTime: String?

        init(_ pid: Int32) throws(Failure) {
            self.pid = pid
            pidfd = dm_pidfd_open(pid)
            guard pidfd < 0 else { return }
            let e = Errno.current
            if e == .ESRCH { throw Failure(.notFound, "no process \(pid) (see `ps`)") }
            guard e == .ENOSYS else { throw Failure(.systemError, "pidfd_open(\(pid)) failed: \(e.name)") }
            do { startTime = try readTextFile("/proc/\(pid)/stat") } catch { throw procFailure(error, pid, "stat-first") }
        }

        deinit { if pidfd >= 0 { close(pidfd) } }

        var exited: Bool {
            if pidfd >= 0 {
                var p = pollfd(fd: pidfd, events: Int16(POLLIN), revents: 0)
                if poll(&p, 1, 0) != 0 { return true }
            } else if (try? processStartTime(pid)) != (try? processStartTime(text: startTime ?? "", pid)) {
                return true
            }
            guard let (state, flags) = try? processState(pid) else { return true }
            return state == "Z" || state == "X" || Self.exiting(flags)
        }

        /// PF_EXITING in the flags of /proc/PID/stat: set as do_exit begins,
        /// before the memory goes.
        static func exiting(_ flags: UInt64) -> Bool { flags & 0x4 != 0 }
    }

    /// The process's VMAs (those overlapping `range`), each with what backs
    /// it: filesystem, DAX mode and attribute, block device, namespace,
    /// region and its persistence.
    static func describeVMAs(_ pid: Int32, range: ClosedRange<UInt64>?, inventory: Inventory?) throws(Failure) -> [InspectedVMA] {
        let proc = "/proc/\(pid)"
        let smapsText = try readProc(pid, "smaps")
        var all: [SmapsEntry]
        do { all = try Smaps.parse(smapsText) } catch { throw Failure(.systemError, "cannot parse \(proc)/smaps: \(error)") }
        if let range { all = all.filter { $0.end > range.lowerBound && $0.start <= range.upperBound } }
        if range != nil && all.isEmpty {
            throw Failure(.invalidArgument, "no mapping of process \(pid) overlaps the range; see `daxmirror inspect \(pid)` for its mappings")
        }
        let mounts = MountTable(parsing: (try? readTextFile("\(proc)/mountinfo")) ?? "")
        var statusCache: [String: DaxStatus] = [:]
        return all.map { v in
            var r = InspectedVMA(vma: v, kind: kind(of: v))
            if r.kind == .shmem {
                r.filesystem = "tmpfs"
                r.mountDAX = false
            } else if v.inode != 0 {
                let key = "\(v.device):\(v.inode)"
                if statusCache[key] == nil {
                    // The mapped file itself (root: map_files), else its path.
                    let mapFile = "\(proc)/map_files/\(String(v.start, radix: 16))-\(String(v.end, radix: 16))"
                    statusCache[key] = (try? DaxStatus.inspect(path: mapFile, mounts: mounts, inventory: inventory))
                        ?? (try? DaxStatus.inspect(path: v.path, mounts: mounts, inventory: inventory))
                }
                if let st = statusCache[key] { r.describe(st, inventory) }
                if r.kind == .devdax, let inv = inventory { r.describeDeviceDAX(inv) }
            }
            if v.kernelPageSize >= 1 << 30 { r.pudMappings = Int(v.size >> 30) }  // pagemap cannot see PUDs
            return r
        }
    }

    /// Page-table truth from one PAGEMAP_SCAN walk over all the VMAs
    /// (which refuses ranges outside the user address space: [vsyscall]):
    /// present, PMD-mapped and written pages. Returns the scan's regions.
    static func countScanned(_ out: inout [InspectedVMA], _ pagemap: Pagemap, _ pid: Int32,
                             softDirty: Bool) throws(Failure) -> [PageRegion] {
        let userVMAs = out.filter { $0.vma.end <= 1 << 56 && !$0.vma.path.hasPrefix("[vsyscall]") }
        guard let first = userVMAs.first?.vma.start, let last = userVMAs.last?.vma.end else { return [] }
        let regions: [PageRegion]
        do {
            regions = try pagemap.scanAll(start: first, end: last, anyOf: [.present, .swapped],
                                          report: [.present, .huge, .softDirty, .pfnZero])
        } catch { throw procFailure(error, pid, "pagemap") }
        var vi = 0
        for reg in regions {
            var s = reg.start
            while s < reg.end {
                while vi < out.count && out[vi].vma.end <= s { vi += 1 }
                guard vi < out.count else { break }
                let v = out[vi].vma
                if v.start >= reg.end { break }
                let lo = max(s, v.start), hi = min(reg.end, v.end)
                if lo < hi { out[vi].count(reg, lo, hi) }
                s = hi
            }
        }
        for i in out.indices { out[i].writtenPages = softDirty ? (out[i].writtenPages ?? 0) : nil }
        return regions
    }

    /// No PAGEMAP_SCAN (before 6.7): pagemap, a VMA at a time; PMDs from
    /// smaps, which sees anonymous and page-cache THPs but not DAX. Counted
    /// in bounded pieces: a VMA of any size costs 512 KiB of memory, and
    /// time in its size (8 bytes of pagemap per page). A mapping past 4 GiB
    /// that smaps says holds nothing resident or swapped (an address-space
    /// reservation) is not read: off DAX, where smaps sees every page but
    /// the shared zero page.
    static func countFromPagemap(_ out: inout [InspectedVMA], _ pagemap: Pagemap, _ pid: Int32, softDirty: Bool) throws(Failure) {
        for i in out.indices where out[i].vma.end <= 1 << 56 {
            let v = out[i].vma
            if v.size > 4 << 30 && !out[i].isDAX && v.rss == 0 && (v.fields["Swap"] ?? 0) == 0 {
                out[i].pmdKnown = true
                if softDirty { out[i].writtenPages = 0 }
                continue
            }
            let t: (present: Int, written: Int)
            do { t = try pagemap.tally(at: v.start, count: Int(v.size / Syscall.pageBytes)) } catch { throw procFailure(error, pid, "pagemap") }
            out[i].presentPages = UInt64(t.present)
            if softDirty { out[i].writtenPages = UInt64(t.written) }
            out[i].pmdMappings = Int((v.anonHugePages + v.filePmdMapped) >> 21)
            out[i].pmdKnown = !out[i].isDAX
        }
    }

    /// `--pages`: one entry and one code per page, bounded by what is asked.
    static func addPageViews(_ out: inout [InspectedVMA], _ pagemap: Pagemap, _ pid: Int32,
                             regions: [PageRegion], softDirty: Bool) throws(Failure) {
        let asked = out.reduce(UInt64(0)) { $0 + $1.vma.size / Syscall.pageBytes }
        guard asked <= maxPagesShown else {
            throw Failure(.invalidArgument, "--pages would list \(asked) pages (\(ByteSize.human(asked * Syscall.pageBytes)) of mappings), more than \(maxPagesShown) (\(ByteSize.human(maxPagesShown * Syscall.pageBytes))): narrow it with --range START-END")
        }
        for i in out.indices {
            let v = out[i].vma
            let entries: [PagemapEntry]
            do { entries = try pagemap.entries(at: v.start, count: Int(v.size / Syscall.pageBytes)) } catch { throw procFailure(error, pid, "pagemap") }
            let codes = pageCodes(out[i], entries, regions: regions, softDirty: softDirty)
            out[i].runs = runs(codes, entries, base: v.start)
            out[i].codes = codes
        }
    }

    /// `--rearm`: the process's soft-dirty bits cleared (clear_refs 4).
    static func clearSoftDirty(_ pid: Int32) throws(Failure) {
        let path = "/proc/\(pid)/clear_refs"
        let fd = open(path, O_WRONLY | O_CLOEXEC)
        guard fd >= 0 else { throw procFailure(SystemCallError("open", path, errno: .current), pid, "clear_refs") }
        defer { close(fd) }
        guard write(fd, "4", 1) == 1 else { throw Failure(.systemError, "cannot clear soft-dirty bits of process \(pid): \(Errno.current.name)") }
    }

    /// dmirror's SNAPSHOT codes for the CPU side of one VMA, from pagemap
    /// and the PAGEMAP_SCAN regions: the picture language `daxmirror run`
    /// uses for the mirror. WRITE means the CPU can write the page without a
    /// fault: a private page must be anonymous and exclusive; a shared page
    /// of shmem or device-dax always is; a shared file page once written
    /// (soft-dirty; where the kernel keeps no soft-dirty bits it shows READ).
    static func pageCodes(_ v: InspectedVMA, _ entries: [PagemapEntry], regions: [PageRegion], softDirty: Bool) -> [SnapshotCode] {
        var codes = [SnapshotCode](repeating: .none, count: entries.count)
        let base = v.vma.start
        let pud = v.vma.kernelPageSize >= 1 << 30
        let order: UInt8 = pud ? 18 : 0
        for (i, e) in entries.enumerated() {
            guard e.present || (pud && v.vma.readable) else { continue }
            var writable = cpuMayWriteWithoutCopyOnWrite(vmaWritable: v.vma.writable, vmaShared: v.vma.isShared,
                                                         exclusive: e.exclusive, fileOrShared: e.fileOrShared)
            if v.vma.isShared && v.kind == .file { writable = writable && softDirty && e.softDirty }
            codes[i] = .mapped(writable: writable, zero: false, order: order)
        }
        // HUGE and PFNZERO come from PAGEMAP_SCAN (regions are sorted).
        // The first region ending past this VMA (binary search: --pages visits
        // every VMA, and a process can have thousands of regions).
        var lo = 0, hi = regions.count
        while lo < hi { let mid = (lo + hi) / 2; if regions[mid].end > base { hi = mid } else { lo = mid + 1 } }
        var r = lo
        while r < regions.count, regions[r].start < v.vma.end {
            let reg = regions[r]
            let lo = Int((max(reg.start, base) - base) / Syscall.pageBytes), hi = Int((min(reg.end, v.vma.end) - base) / Syscall.pageBytes)
            let zero = reg.categories.contains(.pfnZero)
            let huge = reg.categories.contains(.huge) && !pud
            for i in lo..<hi where codes[i] != .none {
                codes[i] = .mapped(writable: codes[i].contains(.write) && !zero, zero: zero, order: huge ? 9 : order)
            }
            r += 1
        }
        return codes
    }

    /// Runs of pages with one code and consecutive PFNs.
    static func runs(_ codes: [SnapshotCode], _ entries: [PagemapEntry], base: UInt64) -> [PageRun] {
        var out: [PageRun] = []
        for (i, e) in entries.enumerated() {
            let addr = base + UInt64(i) * Syscall.pageBytes
            let code = codes[i]
            let pfn = e.pfn.flatMap { $0 == 0 ? nil : $0 }
            if var last = out.last, last.end == addr, last.code == code,
               (pfn == nil && last.pfn == nil) || (pfn != nil && last.pfn.map { $0 + (addr - last.start) / Syscall.pageBytes } == pfn) {
                last.end += Syscall.pageBytes
                out[out.count - 1] = last
            } else {
                out.append(PageRun(start: addr, end: addr + Syscall.pageBytes, pfn: pfn, code: code))
            }
        }
        return out
    }

    static func kind(of v: SmapsEntry) -> MemoryKind {
        if v.inode == 0 { return .anonymous }
        if v.path.hasPrefix("/dev/dax") { return .devdax }
        if v.path.hasPrefix("/memfd:") || v.path.hasPrefix("/dev/shm/") || v.path.hasPrefix("/SYSV")
            || v.path == "/dev/zero (deleted)" { return .shmem }
        return .file
    }

    /// Fields 3 (state) and 9 (flags) of /proc/PID/stat.
    static func processState(_ pid: Int32) throws(Failure) -> (state: Character, flags: UInt64) {
        let text: String
        do { text = try readTextFile("/proc/\(pid)/stat") } catch { throw procFailure(error, pid, "stat-first") }
        guard let close = text.lastIndex(of: ")") else { throw Failure(.processGone, "process \(pid) has no stat") }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 6, let state = fields[0].first, let flags = UInt64(fields[6]) else {
            throw Failure(.processGone, "process \(pid) exited")
        }
        return (state, flags)
    }

    /// Field 22 of /proc/PID/stat: tells a PID reuse from the same process.
    static func processStartTime(_ pid: Int32) throws(Failure) -> String {
        try processStartTime(text: try readProc(pid, "stat"), pid)
    }

    static func processStartTime(text: String, _ pid: Int32) throws(Failure) -> String {
        guard let close = text.lastIndex(of: ")") else { throw Failure(.processGone, "process \(pid) has no stat") }
        let fields = text[text.index(after: close)...].split(separator: " ")
        guard fields.count > 19 else { throw Failure(.processGone, "process \(pid) exited") }
        return String(fields[19])
    }

    static func readProc(_ pid: Int32, _ file: String) throws(Failure) -> String {
        do { return try readTextFile("/proc/\(pid)/\(file)") } catch { throw procFailure(error, pid, file) }
    }

    static func procFailure(_ e: SystemCallError, _ pid: Int32, _ file: String) -> Failure {
        switch e.errno {
        case .ENOENT, .ESRCH:
            // Gone before we read anything is "no such process"; gone after the
            // first read (stat) is an exit during the inspection.
            return file == "stat-first"
                ? Failure(.notFound, "no process \(pid) (see `ps`)")
                : Failure(.processGone, "process \(pid) exited while it was being inspected")
        case .EACCES, .EPERM:
            // Root that is refused gains nothing from "run as root".
            let fix = geteuid() == 0
                ? "even root is refused by the kernel's ptrace access check (a process of another user namespace or container, Yama ptrace_scope 3, lockdown): inspect it from where it runs"
                : "inspecting another user's process needs ptrace read access (run as that user or as root)"
            return Failure(.permissionDenied, "cannot read /proc/\(pid)/\(file): permission denied; \(fix)")
        default:
            return Failure.from(e, doing: "read /proc/\(pid)/\(file)")
        }
    }
}
