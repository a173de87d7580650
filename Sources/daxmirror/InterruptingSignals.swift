#if canImport(Glibc)
import Glibc
#endif

/// SIGINT, SIGTERM and SIGHUP, caught while long work runs in pieces, so
/// that it can stop between two, clean up (a file it created goes) and then
/// die of the signal as the caller expects (`Interrupted` reaches main,
/// which re-raises it). Restores the default actions when released.
final class InterruptingSignals {
    nonisolated(unsafe) private static var caught: sig_atomic_t = 0
    private static let signals = [SIGINT, SIGTERM, SIGHUP]

    init() {
        Self.caught = 0
        for s in Self.signals { signal(s) { InterruptingSignals.caught = $0 } }
        // A parent may hand us these blocked (threads of a test runner block
        // signals, and the mask is inherited, pending ones too): unblock what
        // ends us, after the handlers are in place.
        var set = sigset_t()
        sigemptyset(&set)
        for s in Self.signals { sigaddset(&set, s) }
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
    }

    deinit { for s in Self.signals { signal(s, SIG_DFL) } }

    /// The signal that arrived, if one did.
    var received: Int32? { Self.caught == 0 ? nil : Self.caught }
}

/// Long work stopped by a signal: main says what was stopped, then lets the
/// signal end the process (exit status 128+N to a shell).
struct Interrupted: Error {
    let signal: Int32
    let what: String
}
