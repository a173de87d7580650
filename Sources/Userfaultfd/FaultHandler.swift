#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore

/// Serves a userfaultfd on its own thread: blocks in poll(2) on the uffd and
/// a wake-up eventfd, hands every event to `onEvent`, and stops when told.
///
/// `onEvent` must not allocate or take a lock that another thread may hold
/// across fork(): glibc's fork holds the allocator's locks while the kernel
/// makes the forking thread wait until every uffd with EVENT_FORK has had its
/// FORK event read, so an allocating handler can deadlock the process.
/// Stopping never strands a faulting thread: `stop()` closes the uffd after the
/// loop exits, and closing it wakes every thread still blocked on a fault
/// (the kernel then handles those faults as if no uffd were registered).
public final class FaultHandler: @unchecked Sendable {
    public let uffd: Userfaultfd
    private let wakeup: WakeupEvent
    private var thread: JoinableThread?
    private let onEvent: @Sendable (UserfaultfdEvent, Userfaultfd) -> Void
    private let onError: @Sendable (SystemCallError) -> Void
    /// 1 from before the handler reads the uffd until it has served all it
    /// read; raw memory and atomics, as the handler may not allocate or lock.
    private let busy: UnsafeMutablePointer<UInt64>

    /// A second descriptor the thread serves beside `uffd`: a forked child's
    /// uffd, which the handler of `uffd`'s FORK event stores (as fd + 1; 0:
    /// none), so it is polled from the next round on.
    public struct Secondary: @unchecked Sendable {
        public let descriptor: UnsafeMutablePointer<UInt64>
        public let onEvent: @Sendable (UserfaultfdEvent, Int32) -> Void
        public init(descriptor: UnsafeMutablePointer<UInt64>, onEvent: @escaping @Sendable (UserfaultfdEvent, Int32) -> Void) {
            self.descriptor = descriptor
            self.onEvent = onEvent
        }
    }

    /// Starts serving `uffd`. `onEvent` runs on the handler thread, one event at a time.
    public init(uffd: Userfaultfd,
                onError: @escaping @Sendable (SystemCallError) -> Void = { _ in },
                secondary: Secondary? = nil,
                onEvent: @escaping @Sendable (UserfaultfdEvent, Userfaultfd) -> Void) throws(SystemCallError) {
        self.uffd = uffd
        self.onEvent = onEvent
        self.onError = onError
        wakeup = try WakeupEvent()
        busy = .allocate(capacity: 1)
        busy.initialize(to: 0)
        let (ufd, wfd) = (uffd.fd.rawValue, wakeup.fd.rawValue)
        nonisolated(unsafe) let busy = busy
        let jitter = Self.jitterMicroseconds
        thread = try JoinableThread { [onEvent, onError] in
            var rng: UInt64 = 0x9E37_79B9_7F4A_7C15 ^ UInt64(UInt(bitPattern: Int(ufd)))
            func delay() {
                guard jitter > 0 else { return }
                rng ^= rng << 13; rng ^= rng >> 7; rng ^= rng << 17
                usleep(UInt32(rng % UInt64(jitter)))
            }
            let buffer = Userfaultfd.eventBuffer()
            defer { buffer.deallocate() }
            var fds = [pollfd(fd: ufd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wfd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: -1, events: Int16(POLLIN), revents: 0)]
            while true {
                let child = secondary.map { Int32(truncatingIfNeeded: dm_atomic_load_u64($0.descriptor)) - 1 } ?? -1
                fds[2].fd = child  // poll skips a negative descriptor
                for i in fds.indices { fds[i].revents = 0 }
                do throws(SystemCallError) {
                    try Syscall.retrying("poll", "userfaultfd") { poll(&fds, 3, -1) }  // the eventfd is the wake-up: no timeout needed
                } catch {
                    onError(error)
                    return
                }
                if fds[1].revents != 0 { return }
                if fds[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return }
                dm_atomic_store_u64(busy, 1)
                defer { dm_atomic_store_u64(busy, 0) }
                if let secondary, child >= 0, fds[2].revents & Int16(POLLIN) != 0 {
                    // A child's faults; an error here is the child's, never the loop's end.
                    _ = try? Userfaultfd.forEachEvent(fd: child, in: buffer) { delay(); secondary.onEvent($0, child) }
                }
                do throws(SystemCallError) {
                    try uffd.forEachEvent(in: buffer) { delay(); onEvent($0, uffd) }
                } catch {
                    onError(error)
                    return
                }
            }
        }
    }

    /// Debug builds only: DAXMIRROR_HANDLER_JITTER_US=N delays the serving of
    /// each event read by up to N µs, to widen any race between the handler
    /// and the threads whose munmap, madvise or fork returned once the event
    /// was read (`settle` must cover it).
    static var jitterMicroseconds: UInt32 { debugMicroseconds("DAXMIRROR_HANDLER_JITTER_US") }

    /// Waits (at most `timeout` seconds) until every event already read from
    /// the uffd has been served. The kernel lets munmap, mremap, madvise and
    /// fork return once their event is *read*, which can be before the
    /// handler served it; `busy` was set before that read, so once it is
    /// seen clear, the event has been served. True unless the wait timed out.
    @discardableResult
    public func settle(timeout: Double = 1) -> Bool {
        guard dm_atomic_load_u64(busy) != 0 else { return true }
        let deadline = monotonicSeconds() + timeout
        while dm_atomic_load_u64(busy) != 0 {
            if monotonicSeconds() > deadline { return false }
            sched_yield()
        }
        return true
    }

    /// Stops the loop, joins the thread, and (by default) closes the uffd so
    /// that no thread can stay blocked on a fault nobody will serve.
    public func stop(closeDescriptor: Bool = true) {
        wakeup.signal()
        thread?.join()
        thread = nil
        if closeDescriptor { uffd.close() }
    }

    deinit {
        stop()
        busy.deallocate()
    }
}
