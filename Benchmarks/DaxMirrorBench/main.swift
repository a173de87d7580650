// The Swift side of Scripts/bench.sh: the same two workloads as
// Benchmarks/baseline/bench.c, through daxmirror's own modules.
//   daxmirror-bench missing PAGES        faults/s (FaultTracker, MISSING, zero-fill)
//   daxmirror-bench scan MIB PCT [ROUNDS] µs per PAGEMAP_SCAN re-arm, pages found
//   daxmirror-bench rangefault MIB        ns per page of Mirror.faultIn (write)
//   daxmirror-bench table MIB [huge]      heap bytes per mirrored page (malloc's count), entries
#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import FaultTracking
import Mirror
import PageTables

let page = Syscall.pageSize
let args = CommandLine.arguments

func now() -> Double { var ts = timespec(); clock_gettime(CLOCK_MONOTONIC, &ts); return Double(ts.tv_sec) + Double(ts.tv_nsec) / 1e9 }

func anonymous(_ length: Int) -> UnsafeMutableRawPointer {
    let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
    precondition(p != MAP_FAILED)
    return p
}

func benchMissing(pages: Int) throws {
    let p = anonymous(pages * page)
    let tracker = try FaultTracker(base: p, length: pages * page, backing: .anonymous, mechanism: .missing)
    let volatile = UnsafeMutablePointer<UInt8>(OpaquePointer(p))
    let t0 = now()
    var sum: UInt8 = 0
    for i in 0..<pages { sum &+= volatile.advanced(by: i * page).pointee }
    let dt = now() - t0
    if sum == 0xFF { print("", terminator: "") }  // keeps the loads
    if tracker.faultCount != pages { print("daxmirror-bench: \(tracker.faultCount) faults for \(pages) pages"); exit(1) }
    print(String(Int((Double(pages) / dt).rounded())))
    tracker.stop()
}

func benchScan(mib: Int, pct: Int, rounds: Int) throws {
    let length = mib << 20
    let pages = length / page
    let p = anonymous(length)
    madvise(p, length, DM_MADV_POPULATE_WRITE)
    let tracker = try FaultTracker(base: p, length: length, backing: .anonymous, mechanism: .asyncWriteProtect)
    let step = 100 / pct
    var total = 0.0
    var found = 0
    var runs: [TrackedRun] = []  // one array for every epoch, as a tracker re-armed often would keep
    for r in 0..<rounds {
        for i in stride(from: r % step, to: pages, by: step) { p.storeBytes(of: 1, toByteOffset: i * page, as: UInt8.self) }
        let t0 = now()
        try tracker.rearm(into: &runs)
        total += now() - t0
        found += runs.reduce(0) { $0 + Int($1.end - $1.start) / page }
    }
    print("\(String(format1(total / Double(rounds) * 1e6))) \(found / rounds)")
}

func benchRangeFault(mib: Int) throws {
    let length = mib << 20
    let p = anonymous(length)
    let mirror = try Mirror(region: Region(base: p, length: length, backing: .anonymous))
    let t0 = now()
    try mirror.faultIn(UInt64(UInt(bitPattern: p)), UInt64(length), write: true)
    let dt = now() - t0
    guard mirror.table.mirroredPages == UInt64(length / page) else {
        print("daxmirror-bench: mirrored \(mirror.table.mirroredPages) of \(length / page) pages"); exit(1)
    }
    print(format1(dt / Double(length / page) * 1e9))
}

func benchTable(mib: Int, huge: Bool) throws {
    let length = mib << 20
    let raw = anonymous(length + (2 << 20))
    let p = UnsafeMutableRawPointer(bitPattern: (UInt(bitPattern: raw) + (2 << 20) - 1) & ~UInt((2 << 20) - 1))!
    madvise(p, length, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)
    madvise(p, length, DM_MADV_POPULATE_WRITE)
    let mirror = try Mirror(region: Region(base: p, length: length, backing: .anonymous), tracking: false)
    let before = dm_heap_bytes_in_use()
    try mirror.faultIn(UInt64(UInt(bitPattern: p)), UInt64(length), write: true)
    let bytes = Int(dm_heap_bytes_in_use()) - Int(before)
    let pages = Int(mirror.table.mirroredPages)
    let entries = mirror.table.entryCount
    // bytes per page (malloc's count), bytes per entry (the table's own
    // accounting: a few hundred entries are below malloc's noise), entries, pages
    print("\(format1(Double(bytes) / Double(pages))) \(format1(Double(mirror.table.heapBytes) / Double(entries))) \(entries) \(pages)")
}

func format1(_ v: Double) -> String { String(Double(Int(v * 10)) / 10) }

do {
    if args.count >= 3 && args[1] == "missing" { try benchMissing(pages: Int(args[2])!) }
    else if args.count >= 4 && args[1] == "scan" { try benchScan(mib: Int(args[2])!, pct: Int(args[3])!, rounds: args.count > 4 ? Int(args[4])! : 20) }
    else if args.count >= 3 && args[1] == "rangefault" { try benchRangeFault(mib: Int(args[2])!) }
    else if args.count >= 3 && args[1] == "table" { try benchTable(mib: Int(args[2])!, huge: args.count > 3 && args[3] == "huge") }
    else { print("usage: daxmirror-bench missing PAGES | scan MIB PCT [ROUNDS] | rangefault MIB | table MIB [huge]"); exit(2) }
} catch {
    print("daxmirror-bench: \(error)")
    exit(1)
}
