import DaxCore
/// A mirror operation's failure, with the errno dmirror would return
/// (EFAULT, EPERM, EBUSY, EINVAL) and a sentence for people.
public struct MirrorError: Error, Sendable, CustomStringConvertible {
    public let errno: Errno
    public let message: String
    public init(_ errno: Errno, _ message: String) {
        self.errno = errno
        self.message = message
    }
    public var description: String { "\(message) (\(errno.name))" }
}
