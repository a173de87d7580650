import CDaxShim
import Foundation
import Testing
import DaxCore
import PageTables
@testable import FaultTracking
@testable import Userfaultfd

let page = Int(sysconf(Int32(_SC_PAGESIZE)))

/// Runs `body` on its own thread; if it has not finished after `seconds`,
/// runs `rescue` (which must unblock it, e.g. by closing the uffd) and
/// reports false. Tests never hang on a fault nobody serves.
func finishes(within seconds: Double, rescue: () -> Void = {}, _ body: @escaping @Sendable () -> Void) -> Bool {
    let done = DispatchSemaphore(value: 0)
    let t = Thread { body(); done.signal() }
    t.start()
    if done.wait(timeout: .now() + seconds) == .success { return true }
    rescue()
    _ = done.wait(timeout: .now() + 10)
    return false
}

func anonymous(_ length: Int) throws -> UnsafeMutableRawPointer {
    nonisolated(unsafe) let p = try mapped(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0))
    try #require(p != MAP_FAILED)
    return p
}

func pageSet(_ runs: [TrackedRun], base: UnsafeMutableRawPointer) -> Set<Int> {
    let b = UInt64(UInt(bitPattern: base))
    return Set(runs.flatMap { r in stride(from: r.start, to: r.end, by: page).map { Int(($0 - b) / UInt64(page)) } })
}

let uffdUsable = (try? Userfaultfd.supportedFeatures()) != nil
/// WP_ASYNC tracking needs both the uffd feature and PAGEMAP_SCAN (6.7+).
var asyncTrackingAvailable: Bool {
    let k = KernelFeatures.probe()
    return k.userfaultfd?.contains(.wpAsync) == true && k.pagemapScan
}

@Suite("fault tracking", .enabled(if: uffdUsable, "userfaultfd is not available to this user"))
struct FaultTrackingTests {
    @Test func anonymousMissingCopiesEveryPageOnce() throws {
        let length = 64 << 20
        let pages = length / page
        let source = UnsafeMutableRawBufferPointer.allocate(byteCount: length, alignment: page)
        defer { source.deallocate() }
        for i in 0..<pages { source.storeBytes(of: UInt64(i) &* 0x9E3779B97F4A7C15, toByteOffset: i * page, as: UInt64.self) }
        nonisolated(unsafe) let p = try anonymous(length)
        defer { munmap(p, length) }
        let tracker = try FaultTracker(base: p, length: length, backing: .anonymous,
                                       resolver: .copy(from: UnsafeRawPointer(source.baseAddress!)))
        #expect(tracker.mechanism == .missing)
        let ok = finishes(within: 120, rescue: { tracker.stop() }) {
            for i in 0..<pages {
                let v = p.load(fromByteOffset: i * page, as: UInt64.self)
                precondition(v == UInt64(i) &* 0x9E3779B97F4A7C15, "page \(i) read \(v)")
            }
        }
        #expect(ok)
        #expect(tracker.faultCount == pages)
        #expect(tracker.handlerErrorCount == 0)
        #expect(pageSet(try tracker.touchedRuns(), base: p).count == pages)
        // A second pass faults nothing new.
        for i in stride(from: 0, to: pages, by: 97) { _ = p.load(fromByteOffset: i * page, as: UInt8.self) }
        #expect(tracker.faultCount == pages)
    }

    @Test func minorOnMemfdThroughASecondMapping() throws {
        let length = 64 * page
        let fd = dm_memfd_create("minor", DM_MFD_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        #expect(ftruncate(fd, off_t(length)) == 0)
        let filler = try mapped(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        defer { munmap(filler, length) }
        nonisolated(unsafe) let tracked = try mapped(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0))
        defer { munmap(tracked, length) }
        for i in 0..<64 { filler.storeBytes(of: UInt8(i + 1), toByteOffset: i * page, as: UInt8.self) }  // page cache filled
        let tracker = try FaultTracker(base: tracked, length: length, backing: .shmem, mechanism: .minor)
        let touched = [0, 5, 6, 40, 63]
        #expect(finishes(within: 30, rescue: { tracker.stop() }) {
            for i in touched { precondition(tracked.load(fromByteOffset: i * page, as: UInt8.self) == UInt8(i + 1)) }
        })
        #expect(tracker.faultCount == touched.count)
        #expect(pageSet(try tracker.touchedRuns(), base: tracked) == Set(touched), "errors \(tracker.handlerErrorCount)")
    }

    @Test func syncWriteProtectCatchesExactlyTheWrittenPages() throws {
        let length = 256 * page
        nonisolated(unsafe) let p = try anonymous(length)
        defer { munmap(p, length) }
        #expect(madvise(p, length, DM_MADV_POPULATE_WRITE) == 0)
        let tracker = try FaultTracker(base: p, length: length, backing: .anonymous, mechanism: .syncWriteProtect)
        let written = [1, 2, 3, 100, 255]
        #expect(finishes(within: 30, rescue: { tracker.stop() }) {
            for i in written { p.storeBytes(of: 7, toByteOffset: i * page + 9, as: UInt8.self) }
            for i in [4, 50, 200] { _ = p.load(fromByteOffset: i * page, as: UInt8.self) }  // reads do not count
        })
        #expect(pageSet(try tracker.touchedRuns(), base: p) == Set(written))
        #expect(tracker.faultCount == written.count)
    }

    /// WP_ASYNC + PAGEMAP_SCAN on anonymous memory, a memfd and a regular file.
    @Test(.enabled(if: asyncTrackingAvailable, "this kernel lacks UFFD_FEATURE_WP_ASYNC or PAGEMAP_SCAN (Linux 6.7+)"),
          arguments: ["anonymous", "memfd", "file"])
    func asyncWriteProtectReportsWrittenPagesInEpochs(kind: String) throws {
        let length = 512 * page
        var fd: Int32 = -1
        let dir = try ScratchDirectory(base: DaxEnvironment.directory.map { _ in NSTemporaryDirectory() } ?? NSTemporaryDirectory())
        switch kind {
        case "memfd": fd = dm_memfd_create("async", DM_MFD_CLOEXEC)
        case "file": fd = open(dir.file("f"), O_RDWR | O_CREAT, 0o600)
        default: break
        }
        defer { if fd >= 0 { close(fd) } }
        if fd >= 0 { #expect(ftruncate(fd, off_t(length)) == 0) }
        nonisolated(unsafe) let p = fd >= 0 ? try mapped(mmap(nil, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)) : try anonymous(length)
        defer { munmap(p, length) }
        #expect(madvise(p, length, DM_MADV_POPULATE_WRITE) == 0)
        let backing: TrackedMemory = kind == "anonymous" ? .anonymous : kind == "memfd" ? .shmem : .file(dax: false)
        let tracker = try FaultTracker(base: p, length: length, backing: backing, mechanism: .asyncWriteProtect)
        let written = [0, 1, 77, 300, 511]
        for i in written { p.storeBytes(of: 1, toByteOffset: i * page, as: UInt8.self) }
        for i in [2, 3, 400] { _ = p.load(fromByteOffset: i * page, as: UInt8.self) }
        #expect(pageSet(try tracker.touchedRuns(), base: p) == Set(written))   // reading the set does not re-arm
        #expect(pageSet(try tracker.rearm(), base: p) == Set(written))        // ... re-arming does
        #expect(pageSet(try tracker.touchedRuns(), base: p).isEmpty)           // a clean epoch
        p.storeBytes(of: 2, toByteOffset: 77 * page, as: UInt8.self)
        p.storeBytes(of: 2, toByteOffset: 78 * page, as: UInt8.self)
        #expect(pageSet(try tracker.rearm(), base: p) == [77, 78])
    }

    @Test func fourThreadsFaultingConcurrently() throws {
        let length = 16 << 20
        nonisolated(unsafe) let p = try anonymous(length)
        defer { munmap(p, length) }
        let tracker = try FaultTracker(base: p, length: length, backing: .anonymous)
        let pages = length / page
        let group = DispatchGroup()
        for t in 0..<4 {
            group.enter()
            Thread {
                // Interleaved and overlapping: every thread touches every 3rd page from its own offset,
                // so neighbours race on the same pages.
                for i in stride(from: t, to: pages, by: 3) { _ = p.load(fromByteOffset: i * page, as: UInt8.self) }
                group.leave()
            }.start()
        }
        let inTime = group.wait(timeout: .now() + 120) == .success
        if !inTime { tracker.stop(); _ = group.wait(timeout: .now() + 10) }
        #expect(inTime, "a faulting thread was never woken")
        #expect(tracker.handlerErrorCount == 0)
        #expect(pageSet(try tracker.touchedRuns(), base: p).count == pages)
        #expect(tracker.faultCount >= pages)  // racing faults on one page may each be reported
    }

    @Test func eventsDeliverExactRanges() throws {
        let length = 64 * page
        nonisolated(unsafe) let p = try anonymous(length)
        let b = UInt64(UInt(bitPattern: p))
        nonisolated(unsafe) let target = try anonymous(16 * page)  // where mremap will move a piece
        let tracker = try FaultTracker(base: p, length: length, backing: .anonymous)
        #expect(finishes(within: 30, rescue: { tracker.stop() }) {
            for i in 0..<64 { p.storeBytes(of: 1, toByteOffset: i * page, as: UInt8.self) }
            madvise(p + 4 * page, 2 * page, MADV_DONTNEED)
            munmap(p + 60 * page, 4 * page)
            _ = dm_mremap(p + 10 * page, 8 * page, 8 * page, DM_MREMAP_MAYMOVE | DM_MREMAP_FIXED, target)
        })
        // The kernel lets the caller go once the handler has read an event,
        // not once it has logged it: wait for the handler, as a mirror does.
        #expect(tracker.settle())
        let seen = tracker.invalidations
        let pg = UInt64(page)
        #expect(seen.contains(.remove(start: b + 4 * pg, end: b + 6 * pg)), "\(seen)")
        #expect(seen.contains(.unmap(start: b + 60 * pg, end: b + 64 * pg)), "\(seen)")
        #expect(seen.contains(.remap(from: b + 10 * pg, to: UInt64(UInt(bitPattern: target)), length: 8 * pg)), "\(seen)")
        tracker.stop()
        // Only what is still ours: the holes left by munmap and mremap may
        // already hold another test's mappings (tests run in parallel).
        munmap(p, 10 * page)
        munmap(p + 18 * page, 42 * page)
        munmap(target, 16 * page)
    }

    @Test func forkDeliversAnEventAndTheChildRuns() throws {
        let length = 16 * page
        nonisolated(unsafe) let p = try anonymous(length)
        defer { munmap(p, length) }
        let tracker = try FaultTracker(base: p, length: length, backing: .anonymous)
        p.storeBytes(of: 3, as: UInt8.self)
        nonisolated(unsafe) var status: Int32 = 0
        let ok = finishes(within: 30, rescue: { tracker.stop() }) {
            let pid = dm_raw_fork()  // not glibc fork(): see dm_raw_fork
            if pid == 0 {
                // The child touches an untouched page: its uffd was closed by the tracker,
                // so the fault is handled normally instead of hanging.
                _ = p.load(fromByteOffset: 5 * page, as: UInt8.self)
                _exit(p.load(as: UInt8.self) == 3 ? 0 : 1)
            }
            waitpid(pid, &status, 0)
        }
        #expect(ok)
        #expect(status == 0)
        // fork returns once the handler has read the event, maybe before it
        // logged it (a slow guest showed that): wait for it, as a mirror does.
        #expect(tracker.settle())
        #expect(tracker.invalidations.contains(.fork))
    }

    @Test func stoppingTheHandlerReleasesABlockedFaulter() throws {
        let length = 4 * page
        nonisolated(unsafe) let p = try anonymous(length)
        defer { munmap(p, length) }
        let uffd = try Userfaultfd(features: [])
        try uffd.register(start: p, length: length, mode: .missing)
        let sawFault = DispatchSemaphore(value: 0)
        // A handler that never resolves: the toucher stays blocked until stop().
        let handler = try FaultHandler(uffd: uffd) { event, _ in
            if case .pageFault = event { sawFault.signal() }
        }
        let done = DispatchSemaphore(value: 0)
        Thread { _ = p.load(as: UInt8.self); done.signal() }.start()
        #expect(sawFault.wait(timeout: .now() + 30) == .success)
        #expect(done.wait(timeout: .now() + 0.3) == .timedOut)  // really blocked
        handler.stop()
        #expect(done.wait(timeout: .now() + 30) == .success)
    }

    @Test func explicitRequestsTheKernelWouldRefuseAreRefused() throws {
        nonisolated(unsafe) let p = try anonymous(4 * page)
        defer { munmap(p, 4 * page) }
        let e = #expect(throws: Failure.self) {
            try FaultTracker(base: p, length: 4 * page, backing: .anonymous, mechanism: .minor)
        }
        #expect(e?.code == .unsupported)
        let old = KernelFeatures(userfaultfd: [.eventFork, .eventRemap, .eventRemove, .eventUnmap], pagemapScan: false)
        let choice = TrackingMechanism.choose(for: .file(dax: true), kernel: old)
        #expect(choice.mechanism == .pagemapPolling)
        #expect(choice.reason.contains("WP_ASYNC") && choice.reason.contains("PAGEMAP_SCAN"))
        let new = KernelFeatures(userfaultfd: [.wpAsync], pagemapScan: true)
        #expect(TrackingMechanism.choose(for: .file(dax: true), kernel: new).mechanism == .daxEvents)
        var safe = new
        safe.daxWriteProtectSafe = true
        #expect(TrackingMechanism.choose(for: .file(dax: true), kernel: safe).mechanism == .asyncWriteProtect)
    }
}
