#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import PageTables
import Userfaultfd

/// How MISSING faults are resolved.
public enum MissingResolver: @unchecked Sendable {
    /// UFFDIO_ZEROPAGE: the page reads as zeros.
    case zero
    /// UFFDIO_COPY from the same offset of `source` (at least as long as the region).
    case copy(from: UnsafeRawPointer)
}

/// A page range [start, end) with what the kernel says of it.
/// A run of pages with the same categories: PAGEMAP_SCAN's own region.
public typealias TrackedRun = PageRegion

/// One tracker interface over every userfaultfd / pagemap mechanism: which
/// pages of a region the CPU faulted in (or wrote), and the invalidating
/// events. It chooses the mechanism from the backing and the kernel (or takes
/// the one asked for, refusing what the kernel would not do) and says why.
public final class FaultTracker: @unchecked Sendable {
    public let base: UnsafeMutableRawPointer
    public let length: Int
    public let backing: TrackedMemory
    public let choice: TrackerChoice
    public var mechanism: TrackingMechanism { choice.mechanism }

    private let uffd: Userfaultfd?
    private var registeredMode: RegisterMode = []
    /// Opened on the first scan and kept: a re-arm should cost one walk, not an open too.
    private var pagemap: Pagemap?
    private var handler: FaultHandler?
    private let log: HandlerLog
    private let pageSize = UInt64(Syscall.pageSize)
    /// From the probed features given at init: never re-probed per read.
    private let pagemapScanAvailable: Bool
    /// Pages of the region on a simulated device (events-only tracking of
    /// anonymous memory): its MISSING faults and discards go through it.
    public private(set) var devicePrivate: DevicePrivatePool?
    /// The tracker's userfaultfd (nil when pagemap is polled).
    public var userfaultfd: Userfaultfd? { uffd }

    /// Starts tracking [base, base+length). Invalidating events (unmap,
    /// remove, remap, fork) are logged by the handler thread; the kernel lets
    /// the thread that caused one continue once it is read, which can be
    /// before it is logged: `settle()` waits for that. Read them with
    /// `invalidations(since:)` and compare `invalidationSequence`.
    public init(base: UnsafeMutableRawPointer, length: Int, backing: TrackedMemory,
                mechanism requested: TrackingMechanism? = nil, resolver: MissingResolver = .zero,
                kernel: KernelFeatures = .probe(), devicePrivate: DevicePrivatePool? = nil) throws(Failure) {
        self.base = base
        self.length = length
        self.backing = backing
        log = HandlerLog(pages: (length + Syscall.pageSize - 1) / Syscall.pageSize)
        pagemapScanAvailable = kernel.pagemapScan
        if let requested {
            if let why = requested.refusal(for: backing, kernel: kernel) {
                throw Failure(.unsupported, "cannot track \(backing.name) memory with \(requested.rawValue): \(why)")
            }
            choice = TrackerChoice(mechanism: requested, reason: "requested")
        } else {
            choice = TrackingMechanism.choose(for: backing, kernel: kernel)
        }
        guard choice.mechanism != .pagemapPolling, let supported = kernel.userfaultfd else {
            uffd = nil
            return
        }

        let (mode, features) = Self.registration(for: choice.mechanism, backing: backing, supported: supported)
        do {
            let u = try Userfaultfd(features: features)
            try u.register(start: base, length: length, mode: mode)
            uffd = u
            registeredMode = mode
        } catch let e as SystemCallError {
            throw Failure.from(e, doing: "register \(backing.name) memory with userfaultfd for \(choice.mechanism.rawValue)")
        } catch {
            throw Failure(.unsupported, "\(error)")
        }

        self.devicePrivate = choice.mechanism == .eventsOnly ? devicePrivate : nil
        let serve = Self.serve(mechanism: choice.mechanism, resolver: resolver, base: base,
                               pageSize: pageSize, log: log, pool: self.devicePrivate)
        do {
            let secondary = self.devicePrivate.map { pool in
                FaultHandler.Secondary(descriptor: pool.childDescriptor) { event, fd in pool.serveChild(event, descriptor: fd) }
            }
            handler = try FaultHandler(uffd: uffd!, onError: { [log] e in log.recordError(e.errno.rawValue) },
                                       secondary: secondary, onEvent: serve)
        } catch {
            throw Failure.from(error, doing: "start the fault handler")
        }
        // Arm: protect the whole range, so the first write to each page is seen.
        if choice.mechanism == .syncWriteProtect || choice.mechanism == .asyncWriteProtect {
            do { try uffd!.writeProtect(base, length: length, protect: true) } catch {
                handler?.stop()
                throw Failure.from(error, doing: "write-protect the tracked range")
            }
        }
    }

    /// The registration mode and the features (within what the kernel
    /// supports, plus the thread ID) a mechanism needs.
    private static func registration(for mechanism: TrackingMechanism, backing: TrackedMemory,
                                     supported: UserfaultfdFeatures) -> (RegisterMode, UserfaultfdFeatures) {
        var features = UserfaultfdFeatures.invalidationEvents.intersection(supported)
        features.insert(.threadID)
        let mode: RegisterMode
        switch mechanism {
        case .missing: mode = .missing
        case .minor: mode = .minor
        case .syncWriteProtect:
            mode = .writeProtect
            features.formUnion(supported.intersection(.wpUnpopulated))
        case .eventsOnly:
            mode = .writeProtect
            if backing.fileLike { features.insert(.wpAsync) }
            if backing.kind == .shmem { features.insert(.wpHugetlbfsShmem) }
        case .asyncWriteProtect, .daxEvents:
            mode = .writeProtect
            features.insert(.wpAsync)
            if mechanism == .asyncWriteProtect { features.formUnion(supported.intersection(.wpUnpopulated)) }
        case .pagemapPolling:
            mode = []  // never registered: init returns before
        }
        return (mode, features.intersection(supported.union(.threadID)))
    }

    /// The per-event work, on the handler thread: no allocation, no locks.
    private static func serve(mechanism: TrackingMechanism, resolver: MissingResolver, base: UnsafeMutableRawPointer,
                              pageSize: UInt64, log: HandlerLog,
                              pool: DevicePrivatePool?) -> @Sendable (UserfaultfdEvent, Userfaultfd) -> Void {
        let start = UInt64(UInt(bitPattern: base))
        @Sendable func relative(_ address: UInt64) -> Int {
            address >= start ? Int((address - start) / pageSize) : -1
        }
        return { event, uffd in
            switch event {
            case .pageFault(let address, let kind, _):
                let page = address & ~(pageSize - 1)
                // A MISSING fault in events-only mode: a range registered for
                // device-private pages (never counted as a tracked touch).
                if let pool {
                    // Events-only mode arms nothing: a MISSING fault is a device
                    // page's range, a WP fault a device page that came home read-only.
                    if kind.contains(.writeProtect) { pool.serveWrite(page, uffd: uffd) } else { pool.serveFault(page, uffd: uffd) }
                    return
                }
                let dst = UnsafeMutableRawPointer(bitPattern: UInt(page))!
                // Record before resolving: resolving wakes the faulter, which may
                // read the log at once.
                log.recordFault(page: relative(page))
                do throws(SystemCallError) {
                    switch mechanism {
                    case .missing:
                        switch resolver {
                        case .zero: try uffd.zeropage(at: dst, length: Int(pageSize))
                        case .copy(let source):
                            try uffd.copy(to: dst, from: source + Int(page - start), length: Int(pageSize))
                        }
                    case .minor: try uffd.continue(at: dst, length: Int(pageSize))
                    case .syncWriteProtect: try uffd.writeProtect(dst, length: Int(pageSize), protect: false)
                    default: try uffd.wake(dst, length: Int(pageSize))
                    }
                } catch {
                    // EEXIST: another thread's fault on the same page won the race and
                    // the page is there. EAGAIN: the range is changing (an event such
                    // as a fork anywhere in the process is pending): the woken faulter
                    // faults again and is counted then, not twice. Either way, and on
                    // real errors too, never leave the faulter asleep.
                    if error.errno == .EAGAIN { log.retractFault() }
                    if error.errno != .EEXIST && error.errno != .EAGAIN { log.recordError(error.errno.rawValue) }
                    try? uffd.wake(dst, length: Int(pageSize))
                }
            case .fork(let descriptor):
                // The child is not tracked: its faults run as if unregistered,
                // except where device pages must reach it (DevicePrivatePool).
                if let pool { pool.forked(descriptor, uffd: uffd) } else { close(descriptor) }
                log.record(.fork)
            case .remap(let from, let to, let len):
                pool?.removed(from, from + len)
                log.clear(first: relative(from), last: relative(from + len))
                log.record(.remap(from: from, to: to, length: len))
            case .remove(let s, let e):
                pool?.removed(s, e)
                log.clear(first: relative(s), last: relative(e))
                log.record(.remove(start: s, end: e))
            case .unmap(let s, let e):
                pool?.removed(s, e)
                log.clear(first: relative(s), last: relative(e))
                log.record(.unmap(start: s, end: e))
            case .unknown:
                break
            }
        }
    }

    /// Registers [start, end) of the tracked range again. Only registered
    /// VMAs deliver events, and a VMA created after registration (mmap
    /// MAP_FIXED over the range, munmap then mmap) starts unregistered; the
    /// kernel's own notifiers cover an address range whatever its VMAs, so a
    /// mirror re-registers where the layout changed. Returns false where the
    /// kernel refused (nothing mapped there, or an incompatible mapping).
    @discardableResult
    public func registerAgain(start: UInt64, end: UInt64) -> Bool {
        let lo = max(start, UInt64(UInt(bitPattern: base))) / pageSize * pageSize
        let hi = min(end, UInt64(UInt(bitPattern: base)) + UInt64(length))
        guard let uffd, lo < hi, let p = UnsafeMutableRawPointer(bitPattern: UInt(lo)) else { return false }
        return (try? uffd.register(start: p, length: Int((hi - lo + pageSize - 1) / pageSize * pageSize),
                                   mode: registeredMode)) != nil
    }

    /// Waits until every event the kernel has handed the handler is logged
    /// (see FaultHandler.settle): after it, `invalidationSequence` counts
    /// every munmap, mremap, madvise and fork that has returned.
    @discardableResult
    public func settle() -> Bool {
        guard let handler else { return true }
        if handler.settle() { return true }
        PoolTrace.record(.settleTimedOut, -1)
        return false
    }

    /// Faults the handler resolved (MISSING, MINOR, sync WP); 0 for mechanisms
    /// where the kernel resolves faults itself.
    public var faultCount: Int { log.faults }
    /// Grows by one with every invalidating event; a mirror that saw it change
    /// during a walk retries (HMM's sequence-count rule).
    public var invalidationSequence: Int { log.invalidationCount }
    /// Every invalidation logged so far (the most recent 1024).
    public var invalidations: [Invalidation] { invalidations(since: 0).events }

    /// Invalidations numbered `since` and later; `overflowed` means older ones
    /// were lost to the ring's size and the whole region must be revalidated.
    public func invalidations(since: Int) -> (events: [Invalidation], overflowed: Bool) {
        log.invalidations(since: since)
    }

    /// Errors the handler met resolving faults (should stay 0), and the last errno.
    public var handlerErrorCount: Int { log.errorCount }
    public var lastHandlerErrno: Errno? { log.errorCount == 0 ? nil : Errno(log.lastErrno) }

    /// The pages touched so far, as runs. For MISSING/MINOR/sync-WP: the pages
    /// the handler served. For async WP: pages written since the last `rearm`
    /// (reading does not re-arm). For DAX events and pagemap polling: pages the
    /// kernel maps now (PAGEMAP_SCAN, or pagemap on kernels without it).
    public func touchedRuns() throws(Failure) -> [TrackedRun] {
        switch mechanism {
        case .missing, .minor, .syncWriteProtect:
            let first = UInt64(UInt(bitPattern: base)) / pageSize
            return Self.runs(pages: log.faultedPages().map { first + UInt64($0) }, pageSize: pageSize, categories: [])
        case .asyncWriteProtect:
            return try scan(required: .written, report: [.written, .present, .huge], flags: 0)
        case .daxEvents, .eventsOnly:
            return try scan(required: [], anyOf: .present, report: [.present, .huge, .pfnZero], flags: 0)
        case .pagemapPolling:
            if pagemapScanAvailable {
                return try scan(required: [], anyOf: .present, report: [.present, .huge, .pfnZero], flags: 0)
            }
            do {
                let entries = try Pagemap().entries(at: UInt64(UInt(bitPattern: base)), count: length / Int(pageSize))
                let first = UInt64(UInt(bitPattern: base)) / pageSize
                let pages = entries.enumerated().filter { $0.element.present }.map { first + UInt64($0.offset) }
                return Self.runs(pages: pages, pageSize: pageSize, categories: .present)
            } catch {
                throw Failure.from(error, doing: "read")
            }
        }
    }

    /// Async WP: returns the pages written since the last epoch and starts a
    /// new one (PM_SCAN_WP_MATCHING re-protects exactly what it reports).
    public func rearm() throws(Failure) -> [TrackedRun] {
        guard mechanism == .asyncWriteProtect else {
            throw Failure(.unsupported, "rearm needs the async_wp mechanism (this tracker uses \(mechanism.rawValue))")
        }
        var runs: [TrackedRun] = []
        try rearm(into: &runs)
        return runs
    }

    /// `rearm()` into a caller's array (emptied first, its storage kept): a
    /// tracker re-armed every few milliseconds need not allocate each time.
    public func rearm(into runs: inout [TrackedRun]) throws(Failure) {
        guard mechanism == .asyncWriteProtect else {
            throw Failure(.unsupported, "rearm needs the async_wp mechanism (this tracker uses \(mechanism.rawValue))")
        }
        runs.removeAll(keepingCapacity: true)
        try scan(required: .written, report: [.written, .present, .huge],
                 flags: Pagemap.scanWPMatching | Pagemap.scanCheckWPAsync, into: &runs)
    }

    private func scan(required: PageCategories, anyOf: PageCategories = [], report: PageCategories,
                      flags: UInt64) throws(Failure) -> [TrackedRun] {
        var runs: [TrackedRun] = []
        try scan(required: required, anyOf: anyOf, report: report, flags: flags, into: &runs)
        return runs
    }

    private func scan(required: PageCategories, anyOf: PageCategories = [], report: PageCategories,
                      flags: UInt64, into runs: inout [TrackedRun]) throws(Failure) {
        let s = UInt64(UInt(bitPattern: base))
        do {
            if pagemap == nil { pagemap = try Pagemap() }
            try pagemap!.scanAll(start: s, end: s + UInt64(length), required: required, anyOf: anyOf,
                                 report: report, flags: flags, into: &runs)
        } catch {
            throw Failure.from(error, doing: "scan")
        }
    }

    static func runs(pages: [UInt64], pageSize: UInt64, categories: PageCategories) -> [TrackedRun] {
        var out: [TrackedRun] = []
        for p in pages {
            if let last = out.last, last.end == p * pageSize {
                out[out.count - 1].end += pageSize
            } else {
                out.append(TrackedRun(start: p * pageSize, end: (p + 1) * pageSize, categories: categories))
            }
        }
        return out
    }

    /// Stops the handler and closes the userfaultfd; threads blocked in a
    /// fault wake and fault normally.
    public func stop() {
        // Unregister first, while the handler still reads events: a forked
        // child holds a copy of the uffd, so closing ours does not release it,
        // and a VMA still registered to it would make the next munmap or fork
        // of this process wait for an event nobody will read.
        if let uffd, handler != nil, let p = UnsafeMutableRawPointer(bitPattern: UInt(bitPattern: base)) {
            try? uffd.unregister(start: p, length: length)
        }
        handler?.stop()
        handler = nil
        devicePrivate?.closeChild()
        uffd?.close()
    }

    deinit { stop() }
}
