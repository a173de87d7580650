import CDaxShim
import PageTables

/// The fault handler's bookkeeping, in memory allocated up front and updated
/// with atomics only: the handler thread never allocates or locks (see
/// `FaultHandler` on fork). Readers on other threads see a consistent-enough
/// view: each word and each ring slot is published with release/acquire.
final class HandlerLog: @unchecked Sendable {
    /// One bit per page of the tracked region: faulted (and not invalidated since).
    private let bitmap: UnsafeMutablePointer<UInt64>
    private let words: Int
    let pages: Int
    /// [0] faults, [1] handler errors, [2] invalidations written, [3] last errno.
    private let counters: UnsafeMutablePointer<UInt64>
    /// Invalidations: a ring of (kind, a, b, c) quadruples.
    private let ring: UnsafeMutablePointer<UInt64>
    static let ringCapacity = 1024

    init(pages: Int) {
        self.pages = pages
        words = (pages + 63) / 64
        bitmap = .allocate(capacity: words)
        bitmap.initialize(repeating: 0, count: words)
        counters = .allocate(capacity: 4)
        counters.initialize(repeating: 0, count: 4)
        ring = .allocate(capacity: HandlerLog.ringCapacity * 4)
        ring.initialize(repeating: 0, count: HandlerLog.ringCapacity * 4)
    }

    deinit {
        bitmap.deallocate()
        counters.deallocate()
        ring.deallocate()
    }

    // MARK: handler side (no allocation)

    func recordFault(page: Int) {
        if page >= 0 && page < pages { dm_atomic_or_u64(bitmap + page / 64, 1 << UInt64(page % 64)) }
        dm_atomic_add_u64(counters, 1)
    }

    /// A fault recorded but not resolved because the range was changing
    /// (EAGAIN): the kernel delivers it again once the faulter retries, and
    /// it is counted then.
    func retractFault() {
        dm_atomic_add_u64(counters, UInt64.max)  // -1, modulo 2^64
    }

    func recordError(_ errno: Int32) {
        dm_atomic_store_u64(counters + 3, UInt64(UInt32(bitPattern: errno)))
        dm_atomic_add_u64(counters + 1, 1)
    }

    /// Forgets faulted pages in [first, last) (region-relative page numbers, clamped).
    func clear(first: Int, last: Int) {
        var p = max(first, 0)
        let end = min(last, pages)
        while p < end {
            if p % 64 == 0 && end - p >= 64 {
                dm_atomic_store_u64(bitmap + p / 64, 0)
                p += 64
            } else {
                dm_atomic_and_u64(bitmap + p / 64, ~(1 << UInt64(p % 64)))
                p += 1
            }
        }
    }

    func record(_ invalidation: Invalidation) {
        let n = Int(dm_atomic_load_u64(counters + 2))
        let slot = ring + (n % HandlerLog.ringCapacity) * 4
        let w = invalidation.words
        dm_atomic_store_u64(slot + 1, w.1)
        dm_atomic_store_u64(slot + 2, w.2)
        dm_atomic_store_u64(slot + 3, w.3)
        dm_atomic_store_u64(slot, w.0)
        dm_atomic_add_u64(counters + 2, 1)  // only the handler thread writes: no lost update
    }

    // MARK: reader side

    var faults: Int { Int(dm_atomic_load_u64(counters)) }
    var errorCount: Int { Int(dm_atomic_load_u64(counters + 1)) }
    var lastErrno: Int32 { Int32(bitPattern: UInt32(truncatingIfNeeded: dm_atomic_load_u64(counters + 3))) }
    var invalidationCount: Int { Int(dm_atomic_load_u64(counters + 2)) }

    func faultedPages() -> [Int] {
        var out: [Int] = []
        for w in 0..<words {
            var bits = dm_atomic_load_u64(bitmap + w)
            while bits != 0 {
                let b = bits.trailingZeroBitCount
                out.append(w * 64 + b)
                bits &= bits - 1
            }
        }
        return out
    }

    /// Invalidation records from number `since` on (older ones may have been
    /// overwritten: `overflowed` says so, and the reader must revalidate all).
    func invalidations(since: Int) -> (events: [Invalidation], overflowed: Bool) {
        let n = invalidationCount
        let first = max(since, n - HandlerLog.ringCapacity)
        var out: [Invalidation] = []
        for i in first..<n {
            let slot = ring + (i % HandlerLog.ringCapacity) * 4
            out.append(Invalidation(words: (dm_atomic_load_u64(slot), dm_atomic_load_u64(slot + 1),
                                            dm_atomic_load_u64(slot + 2), dm_atomic_load_u64(slot + 3))))
        }
        return (out, first > since)
    }
}

/// An invalidation as the ring holds it: four words, the kind first (written
/// last, so a reader never sees a kind with another record's range).
extension Invalidation {
    var words: (UInt64, UInt64, UInt64, UInt64) {
        switch self {
        case .unmap(let s, let e): return (1, s, e, 0)
        case .remove(let s, let e): return (2, s, e, 0)
        case .remap(let from, let to, let length): return (3, from, to, length)
        case .fork: return (4, 0, 0, 0)
        }
    }

    init(words w: (UInt64, UInt64, UInt64, UInt64)) {
        switch w.0 {
        case 1: self = .unmap(start: w.1, end: w.2)
        case 2: self = .remove(start: w.1, end: w.2)
        case 3: self = .remap(from: w.1, to: w.2, length: w.3)
        default: self = .fork
        }
    }
}
