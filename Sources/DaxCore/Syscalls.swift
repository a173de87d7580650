#if canImport(Glibc)
import Glibc
#endif
import CDaxShim

/// The one layer system calls go through: EINTR retried, the error built in
/// one place, and failures a test can inject (`inject`, per thread, as
/// swift-system's Mocking.swift drives its syscalls) to reach error branches
/// without provoking the kernel.
public enum Syscall {
    /// Runs `body` until it stops failing with EINTR; throws on -1.
    /// `subject` (a path, usually interpolated) is built only for an error:
    /// hot loops such as the PAGEMAP_SCAN walk call this thousands of times.
    @inlinable @discardableResult
    public static func retrying<T: BinaryInteger>(
        _ call: String, _ subject: @autoclosure () -> String? = nil, _ body: () -> T
    ) throws(SystemCallError) -> T {
        while true {
            let rc: T
            if dm_inject_armed() != 0, let fake = injected(call) {
                guard let e = fake.errno else { return T(fake.result) }
                errno = e.rawValue
                rc = -1
            } else {
                rc = body()
            }
            if rc != -1 { return rc }
            let e = Errno.current
            if e == .EINTR { continue }
            throw SystemCallError(call, subject(), errno: e)
        }
    }

    /// A call that returns its error number instead of setting errno
    /// (posix_fallocate, pthread_*): 0 or throws; EINTR retried.
    public static func returningError(_ call: String, _ subject: @autoclosure () -> String? = nil,
                                      _ body: () -> Int32) throws(SystemCallError) {
        try retrying(call, subject()) {
            let rc = body()
            guard rc != 0 else { return Int32(0) }
            errno = rc
            return -1
        }
    }

    /// The result of a call as `Result`, for probes that report rather than throw.
    public static func probe<T: BinaryInteger>(_ call: String, _ body: () -> T) -> Result<T, Errno> {
        do throws(SystemCallError) { return .success(try retrying(call, nil, body)) } catch { return .failure(error.errno) }
    }

    /// The calling thread's next `times` calls named `call` fail with `errno`.
    public static func inject(_ call: String, _ errno: Errno, times: Int = 1) {
        dm_inject(call, errno.rawValue, 0, Int32(times))
    }

    /// The calling thread's next `times` calls named `call` return `result`
    /// without running (a short read: 0 is end of file).
    public static func inject(_ call: String, result: Int, times: Int = 1) {
        dm_inject(call, 0, result, Int32(times))
    }

    /// Nothing injected any more on this thread.
    public static func clearInjection() { dm_inject(nil, 0, 0, 0) }

    @usableFromInline static func injected(_ call: String) -> (errno: Errno?, result: Int)? {
        var err: Int32 = 0
        var result = 0
        guard dm_injected(call, &err, &result) != 0 else { return nil }
        return (err == 0 ? nil : Errno(err), result)
    }

    /// The base page size (one name for it: every page count in daxmirror is
    /// in these; huge entries are orders of it).
    public static let pageSize = Int(sysconf(Int32(_SC_PAGESIZE)))
    /// The same as UInt64, for address arithmetic.
    public static let pageBytes = UInt64(pageSize)

    /// `uname -r`.
    public static var kernelRelease: String {
        var u = utsname()
        uname(&u)
        return withUnsafeBytes(of: &u.release) { raw in
            String(decoding: raw.prefix(while: { $0 != 0 }), as: UTF8.self)
        }
    }
}

/// An owned file descriptor, closed when the owner goes away.
public final class OwnedFD: @unchecked Sendable {
    public private(set) var rawValue: Int32
    public init(_ fd: Int32) { rawValue = fd }
    deinit { if rawValue >= 0 { Glibc.close(rawValue) } }
    /// Closes now; later uses see -1 (EBADF), never a reused number.
    public func close() {
        if rawValue >= 0 { Glibc.close(rawValue); rawValue = -1 }
    }

    /// open(2) with O_CLOEXEC added.
    public static func open(_ path: String, _ flags: Int32, mode: mode_t = 0) throws(SystemCallError) -> OwnedFD {
        let fd = try Syscall.retrying("open", path) { Glibc.open(path, flags | O_CLOEXEC, mode) }
        return OwnedFD(fd)
    }
}

/// Reads a whole file (a /proc or /sys file, small config files) as text.
/// /proc files report size 0, so this reads until EOF.
public func readTextFile(_ path: String) throws(SystemCallError) -> String {
    let fd = try OwnedFD.open(path, O_RDONLY)
    var bytes: [UInt8] = []
    var chunk = [UInt8](repeating: 0, count: 65536)
    while true {
        let n = try Syscall.retrying("read", path) {
            chunk.withUnsafeMutableBytes { Glibc.read(fd.rawValue, $0.baseAddress, $0.count) }
        }
        if n == 0 { break }
        bytes.append(contentsOf: chunk[0..<n])
    }
    // Paths in /proc (maps, mountinfo) are bytes: keep every one.
    return String(escapingInvalidUTF8: bytes)
}

/// The trimmed first line of a sysfs attribute, or nil if it cannot be read.
public func readSysfsAttribute(_ path: String) -> String? {
    guard let text = try? readTextFile(path) else { return nil }
    return text.split(separator: "\n", omittingEmptySubsequences: false).first.map {
        String($0).trimmingSpaces()
    }
}

extension String {
    public func trimmingSpaces() -> String {
        var s = Substring(self)
        while let f = s.first, f == " " || f == "\t" || f == "\n" { s.removeFirst() }
        while let l = s.last, l == " " || l == "\t" || l == "\n" { s.removeLast() }
        return String(s)
    }
}

/// Writes all of `s`; nil, or the errno that stopped it.
public func writeAll(_ fd: Int32, _ s: String) -> Errno? {
    var s = s
    return s.withUTF8 { writeAll(fd, UnsafeRawBufferPointer($0)) }
}

/// Writes all of `buf` (retrying short writes and EINTR); nil, or the errno.
public func writeAll(_ fd: Int32, _ buf: UnsafeRawBufferPointer) -> Errno? {
    var done = 0
    while done < buf.count {
        let n: Int
        do { n = try Syscall.retrying("write") { Glibc.write(fd, buf.baseAddress! + done, buf.count - done) } }
        catch { return error.errno }
        if n == 0 { return .EIO }
        done += n
    }
    return nil
}

/// Debug builds only: the environment variable `name` as a count of
/// microseconds (0 when unset, malformed, or in a release build) — the knobs
/// that widen a race window on purpose for a test.
public func debugMicroseconds(_ name: String) -> UInt32 {
    #if DEBUG
    getenv(name).flatMap { UInt32(String(cString: $0)) } ?? 0
    #else
    0
    #endif
}
