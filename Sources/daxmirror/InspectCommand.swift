import ArgumentParser
import DaxCore
import NVDIMMInventory
import PageTables
import MirrorPolicy
import MirrorKernel
import ProcessInspection
#if canImport(Glibc)
import Glibc
#endif

struct InspectCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "inspect",
        abstract: "Show a process's mappings: DAX or not, pages present and written, 2 MiB / 1 GiB entries, NVDIMM namespace.",
        discussion: """
            One row per mapping (VMA), in the style of `pmap -X`: address range, permissions, \
            size, Rss (smaps), pages present in the page table (pagemap), pages written since \
            the last --rearm (soft-dirty bits; "-" on kernels built without them), \
            PMD and PUD entries (PAGEMAP_SCAN HUGE; smaps KernelPageSize for device-dax; on a \
            kernel without PAGEMAP_SCAN, such as 6.1, smaps AnonHugePages/FilePmdMapped, and "?" \
            for DAX mappings, whose huge entries nothing else reveals), \
            whether the mapping is DAX (the file's STATX_ATTR_DAX, else the mount's dax option), \
            the filesystem, block device and ndctl namespace, and userfaultfd registration \
            (VmFlags um/uw/ui). Totals at the end.

            smaps reports Rss 0 for DAX mappings even when pages are mapped: "present" is the \
            page table's own count and is the one to trust there.

            --pages adds, per mapping, a picture of its pages in the language of the mirror's \
            snapshots (`daxmirror run --text`): . none, r read, w write (the CPU can write \
            without a fault), z zero page, R/W/Z the same in a 2 MiB PMD, u/U in a 1 GiB PUD; \
            one character per 4 KiB up to 256 pages, else per 2 MiB ("+" where they differ); \
            then the runs of pages with their code and PFN range. JSON gives the runs and \
            "codes", the snapshot's run-length form ("05*512": code 0x05, READ|PMD, for 512 pages).

            Needs the access the kernel asks for /proc/PID/pagemap: ptrace read (same user, or \
            root); PFNs (--pages) need CAP_SYS_ADMIN. A process that exits while being read \
            gives exit code 12, never a partial table.

            Examples:
              daxmirror inspect 1234
              daxmirror inspect 1234 --range 7f0000000000-7f0040000000 --pages
              daxmirror inspect 1234 --json | jq '.vmas[] | select(.dax) | {start, present_pages, pmd}'
              daxmirror inspect 1234 --rearm; sleep 5; daxmirror inspect 1234   # written in 5 s
            """)

    @Argument(help: "The process ID.") var pidText: NumberArgument
    @Flag(help: "Print JSON (ndctl list style: lower_snake keys, numbers as numbers).") var json = false
    @Option(help: "Only mappings overlapping START-END (hex addresses, 0x optional).") var range: String?
    @Flag(help: "Add the per-page view: runs of pages with PFN ranges and snapshot codes.") var pages = false
    @Flag(help: "After reading, clear the soft-dirty bits so the next inspect counts only later writes.") var rearm = false

    func validate() throws {
        _ = try pidText.integer("PID", 1...Int32.max)
        if let range, Self.parseRange(range) == nil {
            throw invalidArgument("--range \(range) is not START-END in hex with START < END (e.g. 7f0000000000-7f0000200000)")
        }
    }

    static func parseRange(_ text: String) -> ClosedRange<UInt64>? {
        let parts = text.split(separator: "-", omittingEmptySubsequences: false)
        guard parts.count == 2 else { return nil }
        func hex(_ s: Substring) -> UInt64? {
            let digits = s.hasPrefix("0x") ? s.dropFirst(2) : s
            guard !digits.isEmpty, digits.allSatisfy({ $0.isASCII && $0.isHexDigit }) else { return nil }
            return UInt64(digits, radix: 16)
        }
        guard let a = hex(parts[0]), let b = hex(parts[1]), a < b else { return nil }
        return a...(b - 1)
    }

    var pid: Int32 { (try? pidText.integer("PID", 1...Int32.max)) ?? 0 }  // checked in validate()

    func run() throws {
        let inventory = try? Inventory.read()
        let r = try Inspection.read(pid: pid, range: range.flatMap(Self.parseRange), pages: pages,
                                    rearm: rearm, inventory: inventory)
        if json { emit(Self.json(r).render()) } else { emit(Self.table(r)) }
    }

    static func hex(_ v: UInt64) -> String { String(v, radix: 16) }

    static func json(_ r: Inspection) -> JSON {
        var tp: UInt64 = 0, tw: UInt64 = 0, trss: UInt64 = 0, tpmd = 0, tpud = 0
        let vmas: [JSON] = r.vmas.map { v in
            tp += v.presentPages; tw += v.writtenPages ?? 0; trss += v.vma.rss; tpmd += v.pmdMappings; tpud += v.pudMappings
            var pairs: [(String, JSON)] = [
                ("start", .string("0x" + hex(v.vma.start))), ("end", .string("0x" + hex(v.vma.end))),
                ("perms", .string(v.vma.perms)), ("size", .uint(v.vma.size)), ("backing", .string(v.backing)),
            ]
            if !v.vma.path.isEmpty && v.vma.inode != 0 { pairs.append(("path", .string(v.vma.path))) }
            pairs.append(("offset", .uint(v.vma.offset)))
            if let fs = v.filesystem { pairs.append(("filesystem", .string(fs))) }
            pairs.append(("dax", .bool(v.isDAX)))
            if let m = v.mountDAX { pairs.append(("mount_dax", .bool(m))) }
            if let f = v.fileDAX { pairs.append(("file_dax", .bool(f))) }
            if let b = v.blockDevice { pairs.append(("blockdev", .string(b))) }
            if let n = v.namespace { pairs.append(("namespace", .string(n))) }
            if let g = v.region { pairs.append(("region", .string(g))) }
            if let p = v.persistence {
                pairs.append(("persistence", .string(p.rawValue)))
                pairs.append(("survives_power_off", p.survivesPowerOff.map { .bool($0) } ?? .null))
            }
            pairs += [("rss", .uint(v.vma.rss)), ("present_pages", .uint(v.presentPages)),
                      ("written_pages", v.writtenPages.map { .uint($0) } ?? .null),
                      ("pmd", v.pmdKnown ? .int(Int64(v.pmdMappings)) : .null), ("pud", .int(Int64(v.pudMappings))),
                      ("file_pmd_mapped", .uint(v.vma.filePmdMapped)), ("anon_huge_pages", .uint(v.vma.anonHugePages)),
                      ("kernel_page_size", .uint(v.vma.kernelPageSize)),
                      ("uffd", .array(v.vma.userfaultfdFlags.map { .string($0) }))]
            if !v.runs.isEmpty {
                pairs.append(("pages", .array(v.runs.map { run in
                    .object([("start", .string("0x" + hex(run.start))), ("end", .string("0x" + hex(run.end))),
                             ("pfn", run.pfn.map { .string("0x" + hex($0)) } ?? .null), ("code", .int(Int64(run.code.rawValue)))])
                })))
                pairs.append(("codes", .string(v.codes.runLengthHex)))
            }
            return .object(pairs)
        }
        return .object([("pid", .int(Int64(r.pid))), ("command", .string(r.command)),
                        ("pagemap_scan", .bool(r.pagemapScan)), ("soft_dirty", .bool(r.softDirty)),
                        ("kernel_thread", .bool(r.kernelThread)), ("vmas", .array(vmas)),
                        ("totals", .object([("vmas", .int(Int64(r.vmas.count))), ("rss", .uint(trss)),
                                            ("present_pages", .uint(tp)), ("written_pages", r.softDirty ? .uint(tw) : .null),
                                            ("pmd", r.vmas.allSatisfy(\.pmdKnown) ? .int(Int64(tpmd)) : .null), ("pud", .int(Int64(tpud)))]))])
    }

    static func table(_ r: Inspection) -> String {
        func pad(_ s: String, _ n: Int, right: Bool = false) -> String {
            s.count >= n ? s : (right ? String(repeating: " ", count: n - s.count) + s : s + String(repeating: " ", count: n - s.count))
        }
        if r.kernelThread {
            return "\(r.pid):   \(r.command.inert)\nprocess \(r.pid) is a kernel thread: it has no user memory to inspect"
        }
        var lines = ["\(r.pid):   \(r.command)",
                     pad("Address", 25) + " Perm " + pad("Size", 9, right: true) + pad("Rss", 9, right: true)
                        + pad("Present", 9, right: true) + pad("Written", 9, right: true) + pad("PMD", 5, right: true)
                        + pad("PUD", 4, right: true) + "  DAX  Mapping"]
        var tp: UInt64 = 0, tw: UInt64 = 0, trss: UInt64 = 0, tsize: UInt64 = 0, tpmd = 0, tpud = 0
        for v in r.vmas {
            tp += v.presentPages; tw += v.writtenPages ?? 0; trss += v.vma.rss; tsize += v.vma.size
            tpmd += v.pmdMappings; tpud += v.pudMappings
            var where_ = v.vma.inode != 0 ? v.vma.path : v.backing
            var detail: [String] = []
            if let fs = v.filesystem { detail.append(fs + (v.mountDAX == true ? " -o dax" : "")) }
            if let b = v.blockDevice { detail.append(b) }
            if let n = v.namespace { detail.append(n) }
            if let p = v.persistence, p.survivesPowerOff != true {
                detail.append(p == .memmapRAM ? "memmap= RAM: lost at power-off" : p.rawValue)
            }
            if !v.vma.userfaultfdFlags.isEmpty { detail.append("uffd " + v.vma.userfaultfdFlags.joined(separator: ",")) }
            if !detail.isEmpty && v.vma.inode != 0 { where_ += " (" + detail.joined(separator: ", ") + ")" }
            lines.append(pad(hex(v.vma.start) + "-" + hex(v.vma.end), 25) + " " + v.vma.perms + " "
                         + pad(ByteSize.human(v.vma.size), 9, right: true) + pad(ByteSize.human(v.vma.rss), 9, right: true)
                         + pad(String(v.presentPages), 9, right: true) + pad(v.writtenPages.map(String.init) ?? "-", 9, right: true)
                         + pad(v.pmdKnown ? String(v.pmdMappings) : "?", 5, right: true) + pad(String(v.pudMappings), 4, right: true)
                         + (v.isDAX ? "  yes  " : "  no   ") + where_)
            if !v.codes.isEmpty {
                lines += SnapshotPicture.rows(v.codes).map { "    " + $0 }
            }
            for run in v.runs where run.code != .none {
                let pfn = run.pfn.map { "pfn " + hex($0) + "-" + hex($0 + (run.end - run.start) / Syscall.pageBytes - 1) } ?? "pfn hidden"
                lines.append("    " + hex(run.start) + "-" + hex(run.end) + "  " + String((run.end - run.start) / Syscall.pageBytes) + " pages  "
                             + String(SnapshotPicture.glyph(run.code)) + "  " + pfn)
            }
        }
        if r.vmas.contains(where: { !$0.codes.isEmpty }) { lines.append("pages: " + SnapshotPicture.legend) }
        lines.append(pad("total (\(r.vmas.count) mappings)", 30) + pad(ByteSize.human(tsize), 9, right: true)
                     + pad(ByteSize.human(trss), 9, right: true) + pad(String(tp), 9, right: true)
                     + pad(r.softDirty ? String(tw) : "-", 9, right: true) + pad(String(tpmd), 5, right: true)
                     + pad(String(tpud), 4, right: true))
        // Each line is one line whatever a name holds (a newline, U+202E).
        return lines.map(\.inert).joined(separator: "\n")
    }
}
