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

    @Argument(help: "The file to map (a directory with --tmpfile).")
    var path: String

    @Option(name: .customLong("size"), parsing: .unconditional,
            help: "Size for --create / --tmpfile: bytes or with K, M, G suffix (64M).")
    var sizeText: NumberArgument?

    @Flag(help: "Create the file if it does not exist (needs --size).") var create = false
    @Flag(help: "Allow --create to truncate and resize an existing file (its contents are lost).") var overwrite = false
    @Flag(help: "Fail if the file exists, even with --overwrite.") var exclusive = false
    @Flag(help: "Size a new file with holes (ftruncate) instead of allocating blocks.") var sparse = false
    @Flag(help: "PATH is a directory: map an unnamed temporary file in it (needs --size).") var tmpfile = false

    @Option(name: .customLong("fill"), parsing: .unconditional,
            help: "Write this byte to the whole mapping and persist it (e.g. 0xab).")
    var fillText: NumberArgument?

    @Flag(help: "Exit with code 10 unless the mapping is real persistent memory.") var requirePmem = false
    @Flag(help: "Print JSON.") var json = false

    func validate() throws {
        // A file of at most 2^56 bytes: no sum or Int conversion of it overflows.
        _ = try sizeText?.size("--size", 1...(1 << 56))
        _ = try fillText?.byte("--fill")
        if (create || tmpfile) && size == nil { throw ValidationError("--create and --tmpfile need --size") }
        if create && tmpfile { throw ValidationError("--create and --tmpfile are exclusive") }
        if size != nil && !(create || tmpfile) {
            throw ValidationError("--size is only used with --create or --tmpfile (an existing file is mapped whole)")
        }
    }

    // Checked in validate().
    var size: UInt64? { sizeText.flatMap { try? $0.size("--size", 1...(1 << 56)) } }
    var fill: UInt8? { fillText.flatMap { try? $0.byte("--fill") } }

    func run() throws {
        // Checked here, not left to open(2), so the message can name the cause.
        if !create && !tmpfile && access(path, F_OK) != 0 && errno == ENOENT {
            throw Failure(.notFound, "\(path) does not exist; add --create --size BYTES to create it")
        }
        var options: MapOptions = []
        if create { options.insert(.create) }
        if overwrite { options.insert(.overwrite) }
        if exclusive { options.insert(.exclusive) }
        if sparse { options.insert(.sparse) }
        if tmpfile { options.insert(.tmpfile) }
        if requirePmem { options.insert(.requirePersistentMemory) }

        let mounts = try? MountTable.current()
        let map = try PersistentMapping(path: path, size: size.map { Int($0) }, options: options, mounts: mounts)
        // A file this command created goes again on any failure from here on.
        var done = false
        defer { if !done && map.created && !tmpfile { unlink(path) } }
        guard let base = map.base else { throw Failure(.systemError, "mapping vanished") }

        let touchedBy: String
        if let fill {
            // In pieces, so that SIGINT/SIGTERM/SIGHUP end it between two
            // (the file it created goes, then the signal takes its course).
            // Each piece's blocks first, with the kernel saying why not: a store
            // into a block the filesystem cannot allocate (a full tmpfs, a
            // sparse file) would be SIGBUS; before 5.14 (no
            // MADV_POPULATE_WRITE) the guarded store says it instead.
            let signals = InterruptingSignals()
            let noRoom = Failure(.noSpace, "no room for \(map.length) bytes in \(path): --fill writes every block (free space on its filesystem, or map a smaller --size)")
            var off = 0
            while off < map.length {
                if let s = signals.received {
                    throw Interrupted(signal: s, what: map.created && !tmpfile ? "filling \(path); the file it created was removed" : "filling \(path)")
                }
                let n = min(16 << 20, map.length - off)
                if madvise(base + off, n, DM_MADV_POPULATE_WRITE) != 0 {
                    let e = Errno.current
                    if e == .EINTR { continue }
                    if e == .EFAULT || e == .ENOSPC || e == .ENOMEM { throw noRoom }
                    if e != .EINVAL { throw Failure.from(SystemCallError("madvise(MADV_POPULATE_WRITE)", path, errno: e), doing: "fill") }
                }
                guard dm_fill_guarded(base + off, Int32(fill), n) == 0 else { throw noRoom }
                off += n
            }
            try map.persist()
            touchedBy = "fill+persist"
        } else {
            switch Syscall.probe({ madvise(base, map.length, DM_MADV_POPULATE_READ) }) {
            case .success: touchedBy = "madv_populate_read"
            case .failure(.EINVAL):
                // Kernels before 5.14: touch each page with a load instead, and say so.
                var sum: UInt8 = 0
                for off in stride(from: 0, to: map.length, by: Syscall.pageSize) {
                    sum &+= base.load(fromByteOffset: off, as: UInt8.self)
                }
                withExtendedLifetime(sum) {}
                touchedBy = "loads (no MADV_POPULATE_READ)"
            case .failure(let e):
                throw Failure.from(SystemCallError("madvise", path, errno: e), doing: "populate")
            }
        }

        let start = UInt64(UInt(bitPattern: base))
        let view = try KernelView.read(start: start, length: UInt64(map.length))
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
                "path": .string(path), "created": .bool(map.created), "length": .uint(UInt64(map.length)),
                "is_pmem": .bool(map.isPersistentMemory), "reason": .string(map.reason),
                "persist_method": .string(map.persistMethod.rawValue),
                "map_sync": .string(map.mapSyncError.map(\.name) ?? "accepted"),
                "touched_by": .string(touchedBy),
                "dax": dax?.json, "kernel_view": view.json, "persistence": backing?.json,
            ]).render())
            return
        }
        var t = TextReport()
        t.section(path)
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
        emit(t.text)
    }
}

/// The kernel's view of one mapping: its smaps VMA, and its pages from pagemap
/// (present count) and PAGEMAP_SCAN (huge runs) where the kernel has it.
struct KernelView {
    var vma: SmapsEntry?
    var presentPages: Int
    var totalPages: Int
    /// Pages inside huge (PMD or larger) mappings; nil without PAGEMAP_SCAN.
    var hugePages: Int?
    var zeroPages: Int?
    var scanError: Errno?

    static func read(start: UInt64, length: UInt64) throws(Failure) -> KernelView {
        let page = UInt64(Syscall.pageSize)
        let smaps: [SmapsEntry]
        do {
            smaps = try Smaps.parse(try Smaps.read())
        } catch let e as SystemCallError {
            throw Failure.from(e, doing: "read")
        } catch {
            throw Failure(.systemError, "\(error)")
        }
        let pm: Pagemap
        let entries: [PagemapEntry]
        do {
            pm = try Pagemap()
            entries = try pm.entries(at: start, count: Int((length + page - 1) / page))  // a partial last page counts
        } catch {
            throw Failure.from(error, doing: "read")
        }
        var view = KernelView(vma: smaps.first { $0.contains(start) },
                              presentPages: entries.filter(\.present).count, totalPages: entries.count)
        do {
            let regions = try pm.scanAll(start: start, end: start + length, anyOf: [.huge, .pfnZero],
                                         report: [.huge, .pfnZero])
            view.hugePages = 0
            view.zeroPages = 0
            for r in regions {
                let n = Int((r.end - r.start) / page)
                if r.categories.contains(.huge) { view.hugePages! += n }
                if r.categories.contains(.pfnZero) { view.zeroPages! += n }
            }
        } catch {
            view.scanError = error.errno
        }
        return view
    }

    var json: JSON {
        .object([
            "pages": .int(Int64(totalPages)), "present_pages": .int(Int64(presentPages)),
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
        t.row("pages present", "\(presentPages) of \(totalPages) (pagemap)")
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
