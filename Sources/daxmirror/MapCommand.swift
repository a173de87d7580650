import ArgumentParser
import CDaxShim
import DaxCore
import DaxDetection
import NVDIMMInventory
import PageTables
import PersistentMemory
#if canImport(Glibc)
import Glibc
#endif

struct MapCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "map",
        abstract: "Map a file through libpmem and report whether it is persistent memory, and how the kernel mapped it.",
        discussion: """
            Maps PATH with pmem_map_file, touches every page (MADV_POPULATE_READ, or \
            _WRITE with --fill), and reports: the mapped length; libpmem's is-pmem verdict \
            and the reason; whether the kernel accepted MAP_SYNC; the DAX status of the \
            file from four sources (mount options, statx STATX_ATTR_DAX, the block device's \
            queue/dax, the ndctl namespace); and the page sizes the kernel used, from \
            /proc/self/smaps and /proc/self/pagemap (smaps reports Rss 0 for DAX mappings, \
            so pagemap is the count that matters there).

            Files are created 0600, never through a symbolic link, and an existing file is \
            never truncated or resized without --overwrite.

            Examples:
              daxmirror map /mnt/pmem/data --create --size 64M
              daxmirror map /mnt/pmem/data --fill 0xab --json
              PMEM_IS_PMEM_FORCE=1 daxmirror map /tmp/file     # pretend: libpmem's test switch
            """)

    @Argument(help: ArgumentHelp("The file to map (a directory with --tmpfile).", valueName: "path"))
    var pathArgument: PathArgument
    var path: FilePath { pathArgument.path }

    @Option(name: .customLong("size"), parsing: .unconditional,
            help: "Size for --create / --tmpfile: bytes or with K, M, G suffix (64M).")
    var sizeText: NumberArgument?

    @Flag(help: "Create the file if it does not exist (needs --size).") var create = false
    @Flag(help: "Allow --create to truncate and resize an existing file, or --fill to rewrite one (its contents are lost).") var overwrite = false
    @Flag(help: "With --create: fail if the file exists.") var exclusive = false
    @Flag(help: "With --create or --tmpfile: size the new file with holes (ftruncate) instead of allocating blocks.") var sparse = false
    @Flag(help: "PATH is a directory: map an unnamed temporary file in it (needs --size).") var tmpfile = false

    @Option(name: .customLong("fill"), parsing: .unconditional,
            help: "Write this byte to the whole mapping and persist it (e.g. 0xab); an existing file needs --overwrite.")
    var fillText: NumberArgument?

    @Flag(help: "Exit with code 10 unless the mapping is real persistent memory.") var requirePmem = false
    @Flag(help: "Print JSON.") var json = false

    /// What `map` populates (MADV_POPULATE_READ) to see how the kernel maps
    /// the file: the file's data, at most this much; the rest is reported as
    /// not touched. Holes are touched only on DAX, where a hole is the
    /// kernel's zero page and costs no memory.
    static let touchLimit = 1 << 30
    /// Pieces of work: each is touched, counted and (on page cache) dropped
    /// from the mapping before the next, so memory stays bounded.
    static let window = 64 << 20

    func validate() throws {
        try pathArgument.check("PATH")
        // A file of at most 2^56 bytes: no sum or Int conversion of it overflows.
        _ = try sizeText?.size("--size", 1...(1 << 56))
        _ = try fillText?.byte("--fill")
        // Every option acts or is refused: none is silently ignored.
        if (create || tmpfile) && size == nil { throw ValidationError("--create and --tmpfile need --size") }
        if create && tmpfile { throw ValidationError("--create and --tmpfile are exclusive") }
        if size != nil && !(create || tmpfile) {
            throw ValidationError("--size is only used with --create or --tmpfile (an existing file is mapped whole)")
        }
        if exclusive && !create { throw ValidationError("--exclusive is only used with --create (it makes creating fail if the file exists)") }
        if exclusive && overwrite { throw ValidationError("--exclusive and --overwrite contradict each other") }
        if sparse && !(create || tmpfile) { throw ValidationError("--sparse is only used with --create or --tmpfile (it sizes a new file)") }
        if overwrite && !(create || fillText != nil) {
            throw ValidationError("--overwrite is only used with --create (to resize an existing file) or --fill (to rewrite one)")
        }
        if overwrite && tmpfile { throw ValidationError("--overwrite does nothing with --tmpfile (the file is always new)") }
    }

    // Checked in validate().
    var size: UInt64? { sizeText.flatMap { try? $0.size("--size", 1...(1 << 56)) } }
    var fill: UInt8? { fillText.flatMap { try? $0.byte("--fill") } }

    var options: MapOptions {
        var o: MapOptions = []
        if create { o.insert(.create) }
        if overwrite { o.insert(.overwrite) }
        if exclusive { o.insert(.exclusive) }
        if sparse { o.insert(.sparse) }
        if tmpfile { o.insert(.tmpfile) }
        if requirePmem { o.insert(.requirePersistentMemory) }
        return o
    }

    func run() throws {
        // Checked here, not left to open(2), so the message can name the cause.
        if !create && !tmpfile && path.withCString({ access($0, F_OK) }) != 0 && errno == ENOENT {
            throw Failure(.notFound, "\(path) does not exist; add --create --size BYTES to create it")
        }
        let mounts = try? MountTable.current()
        let map = try PersistentMapping(path: path, size: size.map { Int($0) }, options: options, mounts: mounts)
        // A file this command created goes again on any failure from here on.
        var done = false
        let remove = { [path] in _ = path.withCString { unlink($0) } }
        defer { if !done && map.created && !tmpfile { remove() } }
        // ...and if the report cannot be written (exit 13 from emit).
        if map.created && !tmpfile { ExitCleanup.register(failureOnly: true, remove) }
        if fill != nil && !map.created && !overwrite {
            throw Failure(.alreadyExists, "\(path) exists and --fill would rewrite all of it; add --overwrite to allow that (its contents are lost)")
        }
        let view: KernelView
        let touchedBy: String
        if let fill {
            view = try fillAndCount(map, byte: fill)
            touchedBy = "fill+persist"
        } else {
            (view, touchedBy) = try touchAndCount(map)
        }
        var dax = map.daxStatus
        // What backs the namespace: an NVDIMM, an emulated one, or memmap= RAM
        // that a power-off erases (never to be called durable).
        var backing: Persistence?
        if var d = dax, let blk = d.blockDevice, let inv = try? Inventory.read() {
            d.namespace = inv.namespace(forBlockDevice: blk)
            backing = d.namespace.flatMap { inv.region(ofNamespace: $0.dev)?.persistence }
            dax = d
        }
        done = true
        if json {
            emit(JSON.object([
                "path": .string(path.string ?? path.description), "created": .bool(map.created), "length": .uint(UInt64(map.length)),
                "is_pmem": .bool(map.isPersistentMemory), "reason": .string(map.reason),
                "persist_method": .string(map.persistMethod.rawValue),
                "map_sync": .string(map.mapSyncError.map(\.name) ?? "accepted"),
                "touched_by": .string(touchedBy),
                "dax": dax?.json, "kernel_view": view.json, "persistence": backing?.json,
            ]).render())
        } else {
            emit(report(map, view: view, dax: dax, backing: backing, touchedBy: touchedBy))
        }
    }

    /// --fill: every byte written and persisted, in pieces, so that
    /// SIGINT/SIGTERM/SIGHUP end it between two (the file it created goes,
    /// then the signal takes its course) and so that each piece is counted
    /// and, on page cache, dropped from the mapping before the next.
    private func fillAndCount(_ map: PersistentMapping, byte: UInt8) throws -> KernelView {
        guard let base = map.base else { throw Failure(.systemError, "mapping vanished") }
        let signals = InterruptingSignals()
        var census = try KernelView.Census(start: base, length: map.length)
        var off = 0
        while off < map.length {
            if let s = signals.received {
                throw Interrupted(signal: s, what: map.created && !tmpfile ? "filling \(path); the file it created was removed" : "filling \(path)")
            }
            let n = min(16 << 20, map.length - off)
            try fillPiece(map, base + off, n, byte)
            try map.persist(offset: off, count: n)
            try census.count(base + off, n, drop: !map.isDirectAccess)
            off += n
        }
        return try census.view(touched: map.length)
    }

    /// Each piece's blocks first, with the kernel saying why not: a store
    /// into a block the filesystem cannot allocate (a full tmpfs, a sparse
    /// file) would be SIGBUS; before 5.14 (no MADV_POPULATE_WRITE) the
    /// guarded store says it instead.
    private func fillPiece(_ map: PersistentMapping, _ p: UnsafeMutableRawPointer, _ n: Int, _ byte: UInt8) throws {
        let noRoom = Failure(.noSpace, "no room for \(map.length) bytes in \(path): --fill writes every block (free space on its filesystem, or map a smaller --size)")
        do { try Syscall.retrying("madvise(MADV_POPULATE_WRITE)", path.description) { madvise(p, n, DM_MADV_POPULATE_WRITE) } } catch {
            switch error.errno {
            case .EFAULT, .ENOSPC, .ENOMEM: throw noRoom
            case .EINVAL: break  // before 5.14: the guarded store below says it
            default: throw Failure.from(error, doing: "fill")
            }
        }
        guard dm_fill_guarded(p, Int32(byte), n) == 0 else { throw noRoom }
    }

    /// Without --fill: the file's data (and on DAX its holes), at most
    /// `touchLimit`, read in windows; each window counted, and on page cache
    /// dropped from the mapping, before the next. A sparse file of any size
    /// costs what its data costs.
    private func touchAndCount(_ map: PersistentMapping) throws -> (KernelView, String) {
        guard let base = map.base else { throw Failure(.systemError, "mapping vanished") }
        var census = try KernelView.Census(start: base, length: map.length)
        let extents = DataExtents(fd: map.fileDescriptor, length: map.length, everything: map.isDirectAccess)
        var touched = 0
        var method = "madv_populate_read"
        var windowStart = 0
        while windowStart < map.length && touched < Self.touchLimit {
            let windowEnd = min(windowStart + Self.window, map.length)
            guard let first = try extents.next(from: windowStart), first.lowerBound < map.length else { break }
            // Skip straight to the next window holding data (a sparse file).
            if first.lowerBound >= windowEnd { windowStart = first.lowerBound / Self.window * Self.window; continue }
            var at = first.lowerBound
            while at < windowEnd, touched < Self.touchLimit, let r = try extents.next(from: at), r.lowerBound < windowEnd {
                let end = min(r.upperBound, windowEnd, r.lowerBound + (Self.touchLimit - touched))
                method = try populate(base + r.lowerBound, end - r.lowerBound)
                touched += end - r.lowerBound
                at = end
            }
            try census.count(base + windowStart, windowEnd - windowStart, drop: !map.isDirectAccess)
            windowStart = windowEnd
        }
        let what = map.isDirectAccess ? "" : " of the file's data (holes left alone)"
        return (try census.view(touched: touched), method + what)
    }

    /// MADV_POPULATE_READ, or one load a page on kernels before 5.14 (said).
    private func populate(_ p: UnsafeMutableRawPointer, _ n: Int) throws -> String {
        switch Syscall.probe("madvise", { madvise(p, n, DM_MADV_POPULATE_READ) }) {
        case .success: return "madv_populate_read"
        case .failure(.EINVAL):
            var sum: UInt8 = 0
            for off in stride(from: 0, to: n, by: Syscall.pageSize) {
                var b: UInt8 = 0
                guard dm_copy_guarded(&b, p + off, 1) == 0 else { break }
                sum &+= b
            }
            withExtendedLifetime(sum) {}
            return "loads (no MADV_POPULATE_READ)"
        case .failure(let e):
            throw Failure.from(SystemCallError("madvise", path.description, errno: e), doing: "populate")
        }
    }

    private func report(_ map: PersistentMapping, view: KernelView, dax: DaxStatus?, backing: Persistence?, touchedBy: String) -> String {
        var t = TextReport()
        t.section(path.description)
        t.row("length", "\(ByteSize.human(UInt64(map.length))) (\(map.length) bytes)" + (map.created ? ", created" : ""))
        t.row("persistent memory", map.isPersistentMemory ? "yes" : "no")
        if let backing { t.row("survives power-off", (backing.survivesPowerOff.map { $0 ? "yes" : "NO" } ?? "as its backing does") + " — " + backing.sentence) }
        t.row("why", map.reason)
        t.row("persist via", map.persistMethod == .cacheFlush ? "CPU cache flush (pmem_persist)" : "msync (pmem_msync)")
        t.row("MAP_SYNC", map.mapSyncError.map { "refused (\($0.name))" } ?? "accepted")
        if let d = dax {
            t.row("filesystem", "\(d.mount?.fsType ?? "?") at \(d.mount?.mountPoint ?? "?") (\(d.mount?.source ?? "?")), dax=\(d.mountMode.rawValue)")
            t.row("statx DAX", d.fileDAX.map { $0 ? "yes" : "no" } ?? "not reported")
            t.row("block device", d.blockDevice.map { "\($0), queue/dax=\(d.blockDeviceDAX.map { $0 ? "1" : "0" } ?? "?")" } ?? "none")
            if let ns = d.namespace { t.row("namespace", "\(ns.dev) (\(ns.mode))") }
        }
        t.section("as the kernel mapped it (touched by \(touchedBy))")
        view.describe(into: &t)
        return t.text
    }
}

/// The file's data, as SEEK_DATA/SEEK_HOLE tell it (or all of it, for a
/// DAX mapping or a file without those: device-dax), page-aligned.
struct DataExtents {
    let fd: Int32
    let length: Int
    let everything: Bool

    /// The first run of data at or after `offset`, or nil: no more data.
    func next(from offset: Int) throws -> Range<Int>? {
        guard offset < length else { return nil }
        if everything { return offset..<length }
        let page = Syscall.pageSize
        let start = lseek(fd, off_t(offset), SEEK_DATA)
        if start < 0 {
            let e = Errno.current
            if e == .ENXIO { return nil }                        // no data past offset
            if e == .EINVAL || e.rawValue == ESPIPE { return offset..<length }  // no SEEK_DATA here
            throw Failure.from(SystemCallError("lseek(SEEK_DATA)", nil, errno: e), doing: "find the data of the file")
        }
        let hole = lseek(fd, start, SEEK_HOLE)
        let end = hole < 0 ? length : min(Int(hole), length)
        let lower = Int(start) / page * page
        let upper = min((end + page - 1) / page * page, length)
        return lower < upper ? max(lower, offset)..<upper : nil
    }
}

/// The kernel's view of one mapping: its smaps VMA, and its pages from
/// pagemap (present count) and PAGEMAP_SCAN (huge runs) where the kernel has
/// it, counted piece by piece as `map` touches them.
struct KernelView {
    var vma: SmapsEntry?
    var presentPages: Int
    var totalPages: Int
    /// Pages `map` populated (the rest of the file was not looked at).
    var touchedPages: Int
    /// Pages inside huge (PMD or larger) mappings; nil without PAGEMAP_SCAN.
    var hugePages: Int?
    var zeroPages: Int?
    var scanError: Errno?

    /// Counts pieces of one mapping; memory bounded whatever its size.
    struct Census {
        let start: UnsafeMutableRawPointer
        let length: Int
        let pagemap: Pagemap
        var present = 0, huge = 0, zero = 0
        var scanError: Errno?

        init(start: UnsafeMutableRawPointer, length: Int) throws {
            self.start = start
            self.length = length
            pagemap = try Failure.wrapping("read the page table of") { () throws(SystemCallError) in try Pagemap() }
        }

        /// Counts `n` bytes at `p`; `drop` then unmaps their pages from this
        /// mapping (page cache stays the kernel's, reclaimable, not ours).
        mutating func count(_ p: UnsafeMutableRawPointer, _ n: Int, drop: Bool) throws {
            let page = Syscall.pageSize
            let a = UInt64(UInt(bitPattern: p))
            let pages = (n + page - 1) / page  // a partial last page counts
            present += try Failure.wrapping("read the page table of") { () throws(SystemCallError) in
                try pagemap.presentCount(at: a, count: pages)
            }
            if scanError == nil {
                do {
                    let regions = try pagemap.scanAll(start: a, end: a + UInt64(pages * page), anyOf: [.huge, .pfnZero],
                                                      report: [.huge, .pfnZero])
                    for r in regions {
                        let k = Int((r.end - r.start) / UInt64(page))
                        if r.categories.contains(.huge) { huge += k }
                        if r.categories.contains(.pfnZero) { zero += k }
                    }
                } catch {
                    scanError = error.errno
                }
            }
            if drop { _ = madvise(p, pages * page, MADV_DONTNEED) }
        }

        func view(touched: Int) throws -> KernelView {
            let page = Syscall.pageSize
            let smaps: [SmapsEntry]
            do {
                smaps = try Smaps.parse(try Smaps.read())
            } catch let e as SystemCallError {
                throw Failure.from(e, doing: "read")
            } catch {
                throw Failure(.systemError, "\(error)")
            }
            let a = UInt64(UInt(bitPattern: start))
            return KernelView(vma: smaps.first { $0.contains(a) }, presentPages: present,
                              totalPages: (length + page - 1) / page, touchedPages: (touched + page - 1) / page,
                              hugePages: scanError == nil ? huge : nil, zeroPages: scanError == nil ? zero : nil,
                              scanError: scanError)
        }
    }

    var json: JSON {
        .object([
            "pages": .int(Int64(totalPages)), "touched_pages": .int(Int64(touchedPages)),
            "present_pages": .int(Int64(presentPages)),
            "huge_pages": hugePages.map { .int(Int64($0)) },
            "zero_pages": zeroPages.map { .int(Int64($0)) },
            "pagemap_scan": .string(scanError.map { $0.name } ?? "ok"),
            "kernel_page_size": vma.map { .uint($0.kernelPageSize) },
            "mmu_page_size": vma.map { .uint($0.mmuPageSize) },
            "rss": vma.map { .uint($0.rss) },
            "file_pmd_mapped": vma.map { .uint($0.filePmdMapped) },
            "vm_flags": vma.map { .array($0.vmFlags.map { .string($0) }) },
        ])
    }

    func describe(into t: inout TextReport) {
        if touchedPages < totalPages {
            t.row("pages touched", "\(touchedPages) of \(totalPages): the file's data" + (touchedPages * Syscall.pageSize >= MapCommand.touchLimit ? ", first \(ByteSize.human(UInt64(MapCommand.touchLimit)))" : "") + "; holes and the rest not populated")
        }
        t.row("pages present", "\(presentPages) of \(totalPages) (pagemap, counted as touched)")
        if let h = hugePages {
            t.row("in huge mappings", "\(h) pages = \(h / 512) PMD (PAGEMAP_SCAN)")
            t.row("zero page", "\(zeroPages ?? 0) pages")
        } else {
            t.row("in huge mappings", "unknown: PAGEMAP_SCAN \(scanError?.name ?? "unavailable") (needs Linux 6.7+)")
        }
        if let v = vma {
            t.row("smaps", "KernelPageSize \(ByteSize.human(v.kernelPageSize)), MMUPageSize \(ByteSize.human(v.mmuPageSize)), Rss \(ByteSize.human(v.rss)), FilePmdMapped \(ByteSize.human(v.filePmdMapped))")
            t.row("VmFlags", v.vmFlags.joined(separator: " ") + (v.isSync ? "   (sf: MAP_SYNC)" : ""))
        }
    }
}
