#if canImport(Glibc)
import Glibc
#endif

/// The thread the emulated driver runs on. The program's call (an open, an
/// ioctl) waits while the worker serves it, as the program waits in the
/// kernel for the module. Why a thread of its own: its memory comes from a
/// malloc arena of its own, so the driver's objects never sit in the
/// program's main heap, where they would move the program's allocations
/// and where the program's own overruns would land on them (hmm-tests'
/// `snapshot` case has MIGRATE_TO_DEV read 4 KiB back into a 7-byte
/// malloc: under the module that overrun lands on free heap). The worker
/// blocks every signal: the program's handlers run on its own threads.
final class Worker: @unchecked Sendable {
    enum Job {
        case open(device: Int32)
        case ioctl(id: Int32, request: UInt64, words: UnsafeMutablePointer<UInt64>)
        case retain(id: Int32)
        case release(id: Int32)
    }

    /// One caller at a time hands a job over.
    private let callers: UnsafeMutablePointer<pthread_mutex_t>
    /// Guards `job` and `result` between the caller and the worker.
    private let lock: UnsafeMutablePointer<pthread_mutex_t>
    private let wake: UnsafeMutablePointer<pthread_cond_t>
    private var job: Job?
    private var result: Int32?
    private let serve: (Job) -> Int32
    private var started = false

    init(serve: @escaping (Job) -> Int32) {
        callers = .allocate(capacity: 1)
        lock = .allocate(capacity: 1)
        wake = .allocate(capacity: 1)
        self.serve = serve
        resetLocks()
    }

    /// In a fork's child: the locks as new (a thread of the parent may have
    /// held them) and no worker (threads do not survive a fork).
    func forkedChild() {
        resetLocks()
        job = nil
        result = nil
        started = false
    }

    private func resetLocks() {
        pthread_mutex_init(callers, nil)
        pthread_mutex_init(lock, nil)
        pthread_cond_init(wake, nil)
    }

    /// Runs `job` on the worker and returns its answer (-errno on failure,
    /// -EAGAIN if no thread can be had).
    func run(_ job: Job) -> Int32 {
        pthread_mutex_lock(callers)
        defer { pthread_mutex_unlock(callers) }
        pthread_mutex_lock(lock)
        defer { pthread_mutex_unlock(lock) }
        if !started {
            guard start() else { return -EAGAIN }
            started = true
        }
        self.job = job
        result = nil
        pthread_cond_broadcast(wake)
        while result == nil { pthread_cond_wait(wake, lock) }
        return result!
    }

    private func start() -> Bool {
        var attributes = pthread_attr_t()
        pthread_attr_init(&attributes)
        defer { pthread_attr_destroy(&attributes) }
        pthread_attr_setdetachstate(&attributes, Int32(PTHREAD_CREATE_DETACHED))
        // Signals blocked before the thread exists: it never runs a handler.
        var all = sigset_t(), old = sigset_t()
        sigfillset(&all)
        pthread_sigmask(SIG_SETMASK, &all, &old)
        defer { pthread_sigmask(SIG_SETMASK, &old, nil) }
        var thread = pthread_t()
        let me = Unmanaged.passUnretained(self).toOpaque()
        return pthread_create(&thread, &attributes, { arg in
            Unmanaged<Worker>.fromOpaque(arg!).takeUnretainedValue().loop()
        }, me) == 0
    }

    private func loop() -> Never {
        pthread_mutex_lock(lock)
        while true {
            while job == nil { pthread_cond_wait(wake, lock) }
            let j = job!
            job = nil
            pthread_mutex_unlock(lock)
            let r = serve(j)
            pthread_mutex_lock(lock)
            result = r
            pthread_cond_broadcast(wake)
        }
    }
}
