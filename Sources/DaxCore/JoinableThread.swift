#if canImport(Glibc)
import Glibc
#endif
import CDaxShim

/// A POSIX thread running one closure, joined explicitly (no Foundation).
public final class JoinableThread: @unchecked Sendable {
    private var thread = pthread_t()
    private var joined = false

    public init(_ body: @escaping @Sendable () -> Void) throws(SystemCallError) {
        final class Box { let body: @Sendable () -> Void; init(_ b: @escaping @Sendable () -> Void) { body = b } }
        let box = Unmanaged.passRetained(Box(body)).toOpaque()
        let rc = pthread_create(&thread, nil, { arg in
            let b = Unmanaged<Box>.fromOpaque(arg!).takeRetainedValue()
            b.body()
            return nil
        }, box)
        if rc != 0 {
            Unmanaged<Box>.fromOpaque(box).release()
            throw SystemCallError("pthread_create", errno: Errno(rc))
        }
    }

    public func join() {
        guard !joined else { return }
        joined = true
        pthread_join(thread, nil)
    }

    deinit { join() }
}

/// An eventfd used to wake a thread blocked in poll(2).
public final class WakeupEvent: @unchecked Sendable {
    public let fd: OwnedFD
    public init() throws(SystemCallError) {
        fd = OwnedFD(try Syscall.retrying("eventfd") { dm_eventfd() })
    }
    public func signal() {
        var one: UInt64 = 1
        _ = write(fd.rawValue, &one, 8)
    }
}
