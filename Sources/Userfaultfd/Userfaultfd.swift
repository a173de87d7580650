#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// How a userfaultfd was obtained.
public enum UserfaultfdSource: String, Sendable {
    /// userfaultfd(2); needs CAP_SYS_PTRACE or vm.unprivileged_userfaultfd=1.
    case syscall
    /// userfaultfd(2) with UFFD_USER_MODE_ONLY: user-space faults only,
    /// which unprivileged users may open.
    case syscallUserModeOnly = "syscall_user_mode_only"
    /// /dev/userfaultfd + USERFAULTFD_IOC_NEW (6.1+), gated by the node's mode.
    case device
}

public struct UserfaultfdOpenError: Error, CustomStringConvertible {
    /// Every path tried, with its errno.
    public let attempts: [(UserfaultfdSource, Errno)]
    public var description: String {
        let tried = attempts.map { "\($0.0.rawValue): \($0.1.name)" }.joined(separator: ", ")
        var hint = ""
        if attempts.contains(where: { $0.1 == .EPERM }) {
            hint = "; run as root, or set vm.unprivileged_userfaultfd=1, or grant access to /dev/userfaultfd"
        } else if attempts.allSatisfy({ $0.1 == .ENOSYS || $0.1 == .ENOENT }) {
            hint = "; this kernel is built without CONFIG_USERFAULTFD"
        }
        return "cannot open a userfaultfd (\(tried))\(hint)"
    }
}

/// An open userfaultfd. The UFFDIO_API handshake is done once, in `init`,
/// because the kernel refuses a second one on the same descriptor.
public final class Userfaultfd: @unchecked Sendable {
    public let fd: OwnedFD
    public let source: UserfaultfdSource
    /// Features the kernel enabled for this descriptor.
    public let features: UserfaultfdFeatures
    /// ioctls allowed on the descriptor itself (UFFDIO_API's `ioctls`).
    public let ioctls: UInt64

    /// Opens a descriptor (syscall first, then /dev/userfaultfd) and negotiates
    /// `features`; throws if any requested feature is missing.
    public convenience init(features: UserfaultfdFeatures = [], nonBlocking: Bool = true,
                            userModeOnly: Bool = false) throws {
        let (fd, source) = try Userfaultfd.open(nonBlocking: nonBlocking, userModeOnly: userModeOnly)
        try self.init(fd: fd, source: source, features: features)
    }

    public init(fd: OwnedFD, source: UserfaultfdSource, features: UserfaultfdFeatures) throws(SystemCallError) {
        var api = uffdio_api(api: DM_UFFD_API, features: features.rawValue, ioctls: 0)
        try Syscall.retrying("UFFDIO_API", features.description) { dm_uffdio_api(fd.rawValue, &api) }
        self.fd = fd
        self.source = source
        self.features = UserfaultfdFeatures(rawValue: api.features)
        self.ioctls = api.ioctls
    }

    /// Tries userfaultfd(2) (plain, then user-mode-only when asked or when
    /// plain is EPERM), then /dev/userfaultfd. Reports every failure.
    public static func open(nonBlocking: Bool = true, userModeOnly: Bool = false) throws(UserfaultfdOpenError) -> (OwnedFD, UserfaultfdSource) {
        let base = O_CLOEXEC | (nonBlocking ? O_NONBLOCK : 0)
        var attempts: [(UserfaultfdSource, Errno)] = []
        if !userModeOnly {
            switch Syscall.probe("userfaultfd", { dm_userfaultfd(base) }) {
            case .success(let fd): return (OwnedFD(fd), .syscall)
            case .failure(let e): attempts.append((.syscall, e))
            }
        }
        switch Syscall.probe("userfaultfd", { dm_userfaultfd(base | DM_UFFD_USER_MODE_ONLY) }) {
        case .success(let fd): return (OwnedFD(fd), .syscallUserModeOnly)
        case .failure(let e): attempts.append((.syscallUserModeOnly, e))
        }
        switch openDevice(flags: base) {
        case .success(let fd): return (fd, .device)
        case .failure(let e): attempts.append((.device, e))
        }
        throw UserfaultfdOpenError(attempts: attempts)
    }

    /// /dev/userfaultfd + USERFAULTFD_IOC_NEW.
    public static func openDevice(flags: Int32) -> Result<OwnedFD, Errno> {
        let dev: OwnedFD
        do { dev = try OwnedFD.open("/dev/userfaultfd", O_RDWR) } catch { return .failure(error.errno) }
        return Syscall.probe("ioctl(USERFAULTFD_IOC_NEW)", { dm_userfaultfd_dev_new(dev.rawValue, flags) }).map(OwnedFD.init)
    }

    /// Every feature this kernel offers: UFFDIO_API with none requested
    /// reports the full set, on a throwaway descriptor.
    public static func supportedFeatures() throws -> UserfaultfdFeatures {
        try Userfaultfd(features: []).features
    }

    /// UFFDIO_REGISTER; returns the ioctls allowed on the range.
    @discardableResult
    public func register(start: UnsafeMutableRawPointer, length: Int, mode: RegisterMode) throws(SystemCallError) -> RangeIoctls {
        var reg = uffdio_register(range: uffdio_range(start: UInt64(UInt(bitPattern: start)), len: UInt64(length)),
                                  mode: mode.rawValue, ioctls: 0)
        try Syscall.retrying("UFFDIO_REGISTER", mode.description) { dm_uffdio_register(fd.rawValue, &reg) }
        return RangeIoctls(rawValue: reg.ioctls)
    }

    public func unregister(start: UnsafeMutableRawPointer, length: Int) throws(SystemCallError) {
        var range = uffdio_range(start: UInt64(UInt(bitPattern: start)), len: UInt64(length))
        try Syscall.retrying("UFFDIO_UNREGISTER") { dm_uffdio_unregister(fd.rawValue, &range) }
    }

    public func close() { fd.close() }
}
