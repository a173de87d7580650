#if canImport(Glibc)
import Glibc
#endif
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

    /// Starts serving `uffd`. `onEvent` runs on the handler thread, one event at a time.
    public init(uffd: Userfaultfd,
                onError: @escaping @Sendable (SystemCallError) -> Void = { _ in },
                onEvent: @escaping @Sendable (UserfaultfdEvent, Userfaultfd) -> Void) throws(SystemCallError) {
        self.uffd = uffd
        self.onEvent = onEvent
        self.onError = onError
        wakeup = try WakeupEvent()
        let (ufd, wfd) = (uffd.fd.rawValue, wakeup.fd.rawValue)
        thread = try JoinableThread { [onEvent, onError] in
            let buffer = Userfaultfd.eventBuffer()
            defer { buffer.deallocate() }
            var fds = [pollfd(fd: ufd, events: Int16(POLLIN), revents: 0),
                       pollfd(fd: wfd, events: Int16(POLLIN), revents: 0)]
            while true {
                fds[0].revents = 0
                fds[1].revents = 0
                let n = poll(&fds, 2, -1)  // the eventfd is the wake-up: no timeout needed
                if n < 0 {
                    if errno == EINTR { continue }
                    onError(SystemCallError("poll", "userfaultfd"))
                    return
                }
                if fds[1].revents != 0 { return }
                if fds[0].revents & Int16(POLLERR | POLLHUP | POLLNVAL) != 0 { return }
                do throws(SystemCallError) {
                    try uffd.forEachEvent(in: buffer) { onEvent($0, uffd) }
                } catch {
                    onError(error)
                    return
                }
            }
        }
    }

    /// Stops the loop, joins the thread, and (by default) closes the uffd so
    /// that no thread can stay blocked on a fault nobody will serve.
    public func stop(closeDescriptor: Bool = true) {
        wakeup.signal()
        thread?.join()
        thread = nil
        if closeDescriptor { uffd.close() }
    }

    deinit { stop() }
}
