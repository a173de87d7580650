#if canImport(Glibc)
import Glibc
#endif
import CDaxShim

/// Debug builds only: `DAXMIRROR_POOL_TRACE=FILE` records what happens to
/// each device-private page — every move to a device and home, fault served,
/// copy refused, fork, discard — in a ring allocated up front (the handler
/// thread may not allocate), and writes it to FILE at exit, each record with
/// the scenario line it happened under and the thread that did it. For a race
/// no replay reproduces: the trace of the very run that met it. A `%p` in
/// FILE is the process's id (several traced processes side by side).
public enum PoolTrace {
    public enum Site: UInt64 {
        case migrate = 1, bringHome, serveFault, serveWrite, removed, forked, childCopy, serveChild, release,
             copyRefused, settleTimedOut, protect, moveRefused
    }

    /// 48 MiB when on: a 10,000-operation stream's whole history.
    private static let capacity = 1 << 20
    private static let width = 6
    /// Allocated by `start` when the variable is set (debug builds); nil: off.
    nonisolated(unsafe) private static var ring: UnsafeMutablePointer<UInt64>?
    nonisolated(unsafe) private static var cursor = UnsafeMutablePointer<UInt64>.allocate(capacity: 2)
    nonisolated(unsafe) private static var path = ""
    nonisolated(unsafe) private static var mainThread: pthread_t = 0

    /// The scenario line being run (set by the runner; 0 outside one).
    public static func line(_ n: Int) {
        guard ring != nil else { return }
        dm_atomic_store_u64(cursor + 1, UInt64(n))
    }

    /// Reads the variable once, on the thread that makes pools (before any
    /// handler thread could record).
    public static func start() {
        #if DEBUG
        guard ring == nil, let p = getenv("DAXMIRROR_POOL_TRACE"), p.pointee == 0x2F else { return }
        path = String(cString: p).replacing("%p", with: "\(getpid())")
        mainThread = pthread_self()
        cursor.initialize(repeating: 0, count: 2)
        let r = UnsafeMutablePointer<UInt64>.allocate(capacity: capacity * width)
        r.initialize(repeating: 0, count: capacity * width)
        ring = r
        atexit { PoolTrace.write() }
        #endif
    }

    /// One record: no allocation, no lock (the handler thread calls it).
    /// `a` and `b` are evaluated only when tracing: the fault path pays a load.
    @inline(__always)
    public static func record(_ site: Site, _ page: Int, _ a: @autoclosure () -> UInt64 = 0, _ b: @autoclosure () -> UInt64 = 0) {
        guard let ring else { return }
        let n = dm_atomic_add_u64(cursor, 1) % UInt64(capacity)
        let r = ring + Int(n) * width
        r[0] = n + 1
        r[1] = dm_atomic_load_u64(cursor + 1)
        r[2] = site.rawValue | (pthread_equal(pthread_self(), mainThread) != 0 ? 0 : 1 << 8)
        r[3] = UInt64(bitPattern: Int64(page))
        r[4] = a()
        r[5] = b()
    }

    private static func write() {
        guard let ring, let f = fopen(path, "w") else { return }
        defer { fclose(f) }
        var rows: [(UInt64, String)] = []
        for i in 0..<capacity where ring[i * width] != 0 {
            let r = ring + i * width
            let site = Site(rawValue: r[2] & 0xFF).map { "\($0)" } ?? "?"
            let thread = r[2] >> 8 == 0 ? "main" : "handler"
            rows.append((r[0], "\(r[0]) line \(r[1]) \(thread) \(site) page \(Int64(bitPattern: r[3])) a 0x\(String(r[4], radix: 16)) b \(Int64(bitPattern: r[5]))\n"))
        }
        for (_, text) in rows.sorted(by: { $0.0 < $1.0 }) { fputs(text, f) }
    }
}
