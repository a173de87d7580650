// The Swift side of Scripts/bench.sh: the same two workloads as
// Benchmarks/baseline/bench.c, through daxmirror's own modules.
//   daxmirror-bench missing PAGES        faults/s (FaultTracker, MISSING, zero-fill)
//   daxmirror-bench scan MIB PCT [ROUNDS] µs per PAGEMAP_SCAN re-arm, pages found
//   daxmirror-bench rangefault MIB        ns per page of DeviceMirror.faultIn (write), median of 5 fresh regions
//   daxmirror-bench table MIB [huge]      heap bytes per mirrored page (malloc's count), entries
//   daxmirror-bench hit anon|shmem VMAS N median ns of a device read of one mirrored
//                                         4 KiB page (a hit), with VMAS other VMAs mapped
//   daxmirror-bench observer MIB OTHER    the soft-dirty write bit's cost: a mirror of MIB (all
//                                         mirrored), a 64 KiB MAP_FIXED inside it, then the device
//                                         re-reads the region; OTHER MiB of the process's other
//                                         memory rewritten by the CPU after. Prints, for soft-dirty
//                                         then pagemap: pages invalidated, device faults, ms of
//                                         the CPU's rewrite
//   daxmirror-bench bulk-file PATH MIB    the same on a file (a DAX mount: MAP_SYNC, PMD faults)
//   daxmirror-bench devmem MIB            device-private memory: MIB of anonymous memory migrated
//                                         to the device (DeviceMirror.migrateToDevice), then every
//                                         page read back by the CPU. Prints ms: total, migrate, touch
//   daxmirror-bench bulk MIB              MB/s of a device read of MIB mirrored in PMD entries (THP),
//                                         median of 5; entries
#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import FaultTracking
import MirrorPolicy
import MirrorKernel
import PageTables

let page = Syscall.pageSize
let args = CommandLine.arguments

func now() -> Double { monotonicSeconds() }

func anonymous(_ length: Int) -> UnsafeMutableRawPointer {
    let p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
    precondition(p != MAP_FAILED)
    return p
}

/// Anonymous memory at a 2 MiB boundary (THP-capable), mapped over an
/// aligned reservation.
func alignedAnonymous(_ length: Int) throws -> UnsafeMutableRawPointer {
    let window = try AlignedReservation(length: length, alignment: 2 << 20)
    let p = mmap(window.base, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0)!
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

/// Five fresh regions, one timed range fault each (the mirror made, and its
/// tracking registered, before the clock starts); the median per page.
func benchRangeFault(mib: Int) throws {
    let length = mib << 20
    var per: [Double] = []
    for _ in 0..<5 {
        let p = anonymous(length)
        defer { munmap(p, length) }
        let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .anonymous))
        let t0 = now()
        try mirror.faultIn(UInt64(UInt(bitPattern: p)), UInt64(length), write: true)
        let dt = now() - t0
        guard mirror.table.mirroredPages == UInt64(length / page) else {
            print("daxmirror-bench: mirrored \(mirror.table.mirroredPages) of \(length / page) pages"); exit(1)
        }
        per.append(dt / Double(length / page) * 1e9)
    }
    print(format1(median(per)))
}

func benchTable(mib: Int, huge: Bool) throws {
    let length = mib << 20
    let p = try alignedAnonymous(length)
    madvise(p, length, huge ? MADV_HUGEPAGE : MADV_NOHUGEPAGE)
    madvise(p, length, DM_MADV_POPULATE_WRITE)
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .anonymous), tracking: false)
    let before = dm_heap_bytes_in_use()
    try mirror.faultIn(UInt64(UInt(bitPattern: p)), UInt64(length), write: true)
    let bytes = Int(dm_heap_bytes_in_use()) - Int(before)
    let pages = Int(mirror.table.mirroredPages)
    let entries = mirror.table.entryCount
    // bytes per page (malloc's count), bytes per entry (the table's own
    // accounting: a few hundred entries are below malloc's noise), entries, pages
    print("\(format1(Double(bytes) / Double(pages))) \(format1(Double(mirror.table.heapBytes) / Double(entries))) \(entries) \(pages)")
}

/// `count` VMAs that cannot merge (every other page of a reservation made
/// writable), mapped after the region so that they sit below it, where a
/// reader of the maps text meets them first.
func unrelatedVMAs(_ count: Int) {
    guard count > 0 else { return }
    let m = mmap(nil, 2 * count * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0)!
    precondition(m != MAP_FAILED)
    for i in stride(from: 0, to: 2 * count, by: 2) { precondition(mprotect(m + i * page, page, PROT_READ | PROT_WRITE) == 0) }
}

func median(_ xs: [Double]) -> Double { xs.sorted()[xs.count / 2] }

func benchHit(kind: String, vmas: Int, iterations: Int) throws {
    let length = 2 << 20
    let p: UnsafeMutableRawPointer, backing: RegionBacking
    if kind == "shmem" {
        let fd = dm_memfd_create("daxmirror-bench", DM_MFD_CLOEXEC)
        precondition(fd >= 0 && ftruncate(fd, off_t(length)) == 0)
        p = mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)!
        backing = .shmem(fd: fd)
    } else {
        p = anonymous(length)
        backing = .anonymous
    }
    precondition(p != MAP_FAILED)
    unrelatedVMAs(vmas)
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: backing))
    let at = UInt64(UInt(bitPattern: p)) + 64 * UInt64(page)
    p.storeBytes(of: 0x5a, toByteOffset: 64 * page, as: UInt8.self)
    var buffer = [UInt8](repeating: 0, count: page)
    guard try mirror.read(at, into: &buffer) == 1 else { print("daxmirror-bench: the first read did not fault"); exit(1) }
    var samples: [Double] = []
    samples.reserveCapacity(iterations)
    var faults = 0
    for _ in 0..<iterations {
        let t0 = now()
        faults += try mirror.read(at, into: &buffer)
        samples.append(now() - t0)
    }
    guard faults == 0, buffer[0] == 0x5a else { print("daxmirror-bench: \(faults) faults on hits, byte \(buffer[0])"); exit(1) }
    print(format1(median(samples) * 1e9))
}

func benchBulk(mib: Int) throws {
    let length = mib << 20
    let p = try alignedAnonymous(length)
    madvise(p, length, MADV_HUGEPAGE)
    memset(p, 0x33, length)
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .anonymous))
    var buffer = [UInt8](repeating: 0, count: length)
    _ = try mirror.read(UInt64(UInt(bitPattern: p)), into: &buffer)
    let entries = mirror.table.entryCount
    var samples: [Double] = []
    var faults = 0
    for _ in 0..<5 {  // the median of five, as the C baseline's memcpy
        let t0 = now()
        faults += try mirror.read(UInt64(UInt(bitPattern: p)), into: &buffer)
        samples.append(now() - t0)
    }
    guard faults == 0, buffer[length - 1] == 0x33 else { print("daxmirror-bench: bulk read faulted \(faults)"); exit(1) }
    print("\(Int(Double(length) / median(samples) / 1e6)) \(entries)")
}

/// A file of `mib` MiB, allocated, mapped shared (MAP_SYNC where it is DAX)
/// at a 2 MiB-aligned address and written by the CPU (PMD faults on DAX).
func mappedFile(_ path: String, _ length: Int) -> (UnsafeMutableRawPointer, Int32, Bool) {
    let fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0o600)
    precondition(fd >= 0 && posix_fallocate(fd, 0, off_t(length)) == 0, "cannot allocate \(path)")
    let at = try! AlignedReservation(length: length, alignment: 2 << 20).base
    var p = mmap(at, length, PROT_READ | PROT_WRITE, DM_MAP_SHARED_VALIDATE | DM_MAP_SYNC | MAP_FIXED, fd, 0)
    let sync = p != MAP_FAILED
    if !sync { p = mmap(at, length, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0) }
    precondition(p != MAP_FAILED)
    memset(p!, 0x33, length)
    return (p!, fd, sync)
}

func benchBulkFile(path: String, mib: Int) throws {
    let length = mib << 20
    let (p, fd, dax) = mappedFile(path, length)
    defer { unlink(path) }
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .file(path: path, fd: fd, shared: true)), dax: dax)
    var buffer = [UInt8](repeating: 0, count: length)
    _ = try mirror.read(UInt64(UInt(bitPattern: p)), into: &buffer)
    var samples: [Double] = []
    var faults = 0
    for _ in 0..<5 {
        let t0 = now()
        faults += try mirror.read(UInt64(UInt(bitPattern: p)), into: &buffer)
        samples.append(now() - t0)
    }
    guard faults == 0, buffer[length - 1] == 0x33 else { print("daxmirror-bench: bulk read faulted \(faults)"); exit(1) }
    print("\(Int(Double(length) / median(samples) / 1e6)) \(mirror.table.entryCount)")
}

func benchObserver(mib: Int, other: Int, writeBit: DeviceMirror.WriteBitSource) throws -> String {
    let length = mib << 20
    let p = anonymous(length), q = anonymous(other << 20)
    memset(p, 1, length)
    memset(q, 2, other << 20)
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .anonymous), writeBit: writeBit)
    let a = UInt64(UInt(bitPattern: p))
    var buffer = [UInt8](repeating: 0, count: length)
    _ = try mirror.read(a, into: &buffer)
    let before = mirror.invalidatedPages
    // A 64 KiB MAP_FIXED in the middle: a new VMA, soft-dirty all over.
    precondition(mmap(p + length / 2, 64 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED)
    let faults = try mirror.read(a, into: &buffer)
    let invalidated = mirror.invalidatedPages - before
    // The CPU writes its other memory again: after a clear, every page faults.
    let t0 = now()
    for i in stride(from: 0, to: other << 20, by: page) { q.storeBytes(of: 3, toByteOffset: i, as: UInt8.self) }
    let ms = (now() - t0) * 1e3
    return "\(invalidated) \(faults) \(format1(ms))"
}

func benchDeviceMemory(mib: Int) throws {
    let length = mib << 20
    let p = anonymous(length)
    memset(p, 0x44, length)
    let mirror = try DeviceMirror(region: Region(base: p, length: length, backing: .anonymous))
    let t0 = now()
    let migrated = try mirror.migrateToDevice(UInt64(UInt(bitPattern: p)), UInt64(length))
    let t1 = now()
    var sum = 0
    let volatile = UnsafeMutablePointer<UInt8>(OpaquePointer(p))
    for i in stride(from: 0, to: length, by: page) { sum += Int(volatile.advanced(by: i).pointee) }
    let t2 = now()
    guard migrated.cpages == length / page, sum == 0x44 * (length / page), migrated.bytes.last == 0x44 else {
        print("daxmirror-bench: \(migrated.cpages) of \(length / page) pages migrated, or wrong bytes"); exit(1)
    }
    print("\(format1((t2 - t0) * 1e3)) \(format1((t1 - t0) * 1e3)) \(format1((t2 - t1) * 1e3))")
}

func format1(_ v: Double) -> String { String(Double(Int(v * 10)) / 10) }

do {
    if args.count >= 3 && args[1] == "missing" { try benchMissing(pages: Int(args[2])!) }
    else if args.count >= 4 && args[1] == "scan" { try benchScan(mib: Int(args[2])!, pct: Int(args[3])!, rounds: args.count > 4 ? Int(args[4])! : 20) }
    else if args.count >= 3 && args[1] == "rangefault" { try benchRangeFault(mib: Int(args[2])!) }
    else if args.count >= 3 && args[1] == "table" { try benchTable(mib: Int(args[2])!, huge: args.count > 3 && args[3] == "huge") }
    else if args.count >= 5 && args[1] == "hit" { try benchHit(kind: args[2], vmas: Int(args[3])!, iterations: Int(args[4])!) }
    else if args.count >= 4 && args[1] == "observer" {
        // "- - -" where this kernel keeps no soft-dirty bits.
        let sd = SoftDirty.available ? try benchObserver(mib: Int(args[2])!, other: Int(args[3])!, writeBit: .softDirty) : "- - -"
        print(sd, try benchObserver(mib: Int(args[2])!, other: Int(args[3])!, writeBit: .pagemap))
    }
    else if args.count >= 4 && args[1] == "bulk-file" { try benchBulkFile(path: args[2], mib: Int(args[3])!) }
    else if args.count >= 3 && args[1] == "bulk" { try benchBulk(mib: Int(args[2])!) }
    else if args.count >= 3 && args[1] == "devmem" { try benchDeviceMemory(mib: Int(args[2])!) }
    else { print("usage: daxmirror-bench missing PAGES | scan MIB PCT [ROUNDS] | rangefault MIB | table MIB [huge] | hit anon|shmem VMAS N | bulk MIB | observer MIB OTHER | devmem MIB"); exit(2) }
} catch {
    print("daxmirror-bench: \(error)")
    exit(1)
}
