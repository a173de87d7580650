#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#endif

/// A kernel error number with its symbolic name (`EINVAL`), the way the
/// kernel's documentation and our JSON output speak of it.
public struct Errno: Error, Equatable, Hashable, Sendable, CustomStringConvertible {
    public let rawValue: Int32
    public init(_ rawValue: Int32) { self.rawValue = rawValue }

    /// The calling thread's current errno.
    public static var current: Errno { Errno(errno) }

    public static let EPERM = Errno(1), ENOENT = Errno(2), ESRCH = Errno(3), EINTR = Errno(4)
    public static let EIO = Errno(5), EBADF = Errno(9), EAGAIN = Errno(11), ENOMEM = Errno(12)
    /// The same number as EAGAIN on Linux; the name flock(2) and non-blocking I/O document.
    public static let EWOULDBLOCK = EAGAIN
    public static let EACCES = Errno(13), EFAULT = Errno(14), EBUSY = Errno(16), EEXIST = Errno(17)
    public static let ENOTDIR = Errno(20), EISDIR = Errno(21), EINVAL = Errno(22), ENOSPC = Errno(28)
    public static let ENOSYS = Errno(38), ELOOP = Errno(40), ENOTTY = Errno(25)
    public static let EOPNOTSUPP = Errno(95), ETIMEDOUT = Errno(110), ENXIO = Errno(6)
    public static let EPIPE = Errno(32), EFBIG = Errno(27), EMFILE = Errno(24), ENFILE = Errno(23)
    public static let ENODEV = Errno(19), EROFS = Errno(30), ENAMETOOLONG = Errno(36), EDQUOT = Errno(122)

    private static let names: [Int32: String] = [
        1: "EPERM", 2: "ENOENT", 3: "ESRCH", 4: "EINTR", 5: "EIO", 6: "ENXIO", 7: "E2BIG",
        9: "EBADF", 11: "EAGAIN", 12: "ENOMEM", 13: "EACCES", 14: "EFAULT", 16: "EBUSY",
        17: "EEXIST", 18: "EXDEV", 19: "ENODEV", 20: "ENOTDIR", 21: "EISDIR", 22: "EINVAL",
        23: "ENFILE", 24: "EMFILE", 25: "ENOTTY", 26: "ETXTBSY", 27: "EFBIG", 28: "ENOSPC", 30: "EROFS", 32: "EPIPE",
        36: "ENAMETOOLONG", 38: "ENOSYS", 40: "ELOOP", 61: "ENODATA", 75: "EOVERFLOW",
        95: "EOPNOTSUPP", 110: "ETIMEDOUT", 122: "EDQUOT",
    ]

    /// `EINVAL`, or `errno 123` for numbers without a name here.
    public var name: String { Errno.names[rawValue] ?? "errno \(rawValue)" }
    /// The C library's message, e.g. "Invalid argument".
    public var message: String { String(cString: strerror(rawValue)) }
    public var description: String { "\(name) (\(message))" }
}

/// A failed system call: which call, on what, and the errno it gave.
public struct SystemCallError: Error, CustomStringConvertible, Sendable {
    public let call: String
    public let subject: String?
    public let errno: Errno
    public init(_ call: String, _ subject: String? = nil, errno: Errno = .current) {
        self.call = call
        self.subject = subject
        self.errno = errno
    }
    public var description: String {
        if let subject { return "\(call)(\(subject)): \(errno)" }
        return "\(call): \(errno)"
    }
}
