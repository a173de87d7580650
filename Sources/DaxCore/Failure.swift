/// The distinct exit codes of `daxmirror`, one per cause, so scripts can tell
/// a missing file from a full disk without parsing messages. Documented in the
/// README; never renumber one.
public enum ExitCause: Int32, Sendable, CaseIterable {
    case success = 0
    case failure = 1          // an operation reported failure (e.g. a scenario step)
    case notFound = 3         // no such file, directory or process
    case notRegularFile = 4   // a directory or device where a file was expected
    case permissionDenied = 5
    case alreadyExists = 6    // refusing to overwrite without --overwrite
    case symlinkRefused = 7   // refusing to create through a symbolic link
    case noSpace = 8          // not enough room on the filesystem
    case invalidArgument = 9  // a size or range the kernel would refuse
    case notDAX = 10          // DAX was required and the file is not DAX
    case unsupported = 11     // this kernel lacks a needed feature
    case processGone = 12     // the inspected process exited
    case systemError = 13     // any other failed system call
    case busy = 15            // another process holds the file (a concurrent --overwrite) or the port
    case cannotEmulate = 16   // `emulate`: a program a preloaded library cannot reach (static, another architecture)
    case usage = 64           // bad command line (swift-argument-parser's code)
}

/// An error meant for a person: one line that names the cause and, where one
/// exists, the fix; plus the exit code for its class.
public struct Failure: Error, CustomStringConvertible, Sendable {
    public let code: ExitCause
    public let message: String
    /// The kernel's errno behind it, where one is (a scenario answers with it).
    public let errno: Errno?
    public init(_ code: ExitCause, _ message: String, errno: Errno? = nil) {
        self.code = code
        self.message = message
        self.errno = errno
    }
    public var description: String { message }

    /// Classifies a failed system call on `subject` by its errno.
    public static func from(_ e: SystemCallError, doing what: String) -> Failure {
        let code: ExitCause
        switch e.errno {
        case .ENOENT, .ESRCH: code = e.errno == .ESRCH ? .processGone : .notFound
        case .EISDIR, .ENOTDIR: code = .notRegularFile
        case .EACCES, .EPERM: code = .permissionDenied
        case .EEXIST: code = .alreadyExists
        case .ELOOP: code = .symlinkRefused
        case .ENOSPC, .EFBIG, .EDQUOT: code = .noSpace
        case .EINVAL: code = .invalidArgument
        case .ENOTTY, .ENOSYS, .EOPNOTSUPP: code = .unsupported
        default: code = .systemError
        }
        let subject = e.subject.map { " \($0)" } ?? ""
        return Failure(code, "cannot \(what)\(subject): \(e.errno.message.lowercased()) (\(e.errno.name))" + (hint(e.errno).map { "; \($0)" } ?? ""),
                       errno: e.errno)
    }

    /// The fix for errnos that come from the environment rather than the input.
    static func hint(_ e: Errno) -> String? {
        switch e {
        case .EFBIG: return "a file-size limit (ulimit -f) or the filesystem's largest file is in the way"
        case .EMFILE: return "this process may open no more files: raise its limit (ulimit -n)"
        case .ENFILE: return "the system's table of open files is full: close files or raise fs.file-max"
        case .EDQUOT: return "the disk quota is used up: free space or raise the quota"
        default: return nil
        }
    }
}

extension Failure {
    /// Runs `body`, turning a failed system call into a Failure about `what`.
    public static func wrapping<T>(_ what: String, _ body: () throws(SystemCallError) -> T) throws(Failure) -> T {
        do { return try body() } catch { throw Failure.from(error, doing: what) }
    }
}
