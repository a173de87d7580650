#if canImport(Glibc)
import Glibc
#endif
import DaxCore

/// What arming userfaultfd write protection on a DAX file does on this kernel,
/// learned in a child process that is killed if it hangs.
public enum DaxWriteProtectOutcome: String, Sendable {
    case safe
    case hangs
    case sigbus
    /// The kernel cannot even register a DAX file for WP (no WP_ASYNC).
    case notApplicable = "not_applicable"
    /// Not tried: the read probe already showed the bug (each hung child can
    /// leave the kernel busy, so we do not provoke it twice).
    case notProbed = "not_probed"
    case failed
}

public struct DaxWriteProtectProbe: Sendable {
    public var read: DaxWriteProtectOutcome
    public var write: DaxWriteProtectOutcome
    public var detail: String

    public var isSafe: Bool { read == .safe && write == .safe }
    public var summary: String {
        if read == write { return read.rawValue }
        return "read \(read.rawValue), write \(write.rawValue)"
    }

    /// Runs `executable probe-dax-wp --dir DIR --access read`, killed after
    /// `timeout` seconds, then the same with `write` unless the read already hung.
    public static func run(executable: String, directory: String, timeout: Double = 10) -> DaxWriteProtectProbe {
        let r = once(executable, directory, "read", timeout)
        let w = r.0 == .hangs ? (DaxWriteProtectOutcome.notProbed, "") : once(executable, directory, "write", timeout)
        return DaxWriteProtectProbe(read: r.0, write: w.0, detail: [r.1, w.1].filter { !$0.isEmpty }.joined(separator: "; "))
    }

    static func once(_ exe: String, _ dir: String, _ access: String, _ timeout: Double) -> (DaxWriteProtectOutcome, String) {
        var pipeFDs: [Int32] = [0, 0]
        guard pipe(&pipeFDs) == 0 else { return (.failed, "pipe: \(Errno.current)") }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_adddup2(&actions, pipeFDs[1], 1)
        posix_spawn_file_actions_addopen(&actions, 2, "/dev/null", O_WRONLY, 0)
        let args = [exe, "probe-dax-wp", "--dir", dir, "--access", access]
        var argv: [UnsafeMutablePointer<CChar>?] = args.map { strdup($0) } + [nil]
        defer { argv.forEach { free($0) } }
        // The child starts with default dispositions: this process ignores
        // SIGPIPE and SIGXFSZ (dm_process_start), which exec would pass on.
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var defaults = sigset_t()
        sigemptyset(&defaults)
        for s in [SIGPIPE, SIGXFSZ, SIGQUIT] { sigaddset(&defaults, s) }
        posix_spawnattr_setsigdefault(&attributes, &defaults)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGDEF))
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, exe, &actions, &attributes, &argv, environ)
        close(pipeFDs[1])
        let out = OwnedFD(pipeFDs[0])
        guard rc == 0 else { return (.failed, "spawn \(exe): \(Errno(rc))") }
        // Wait with a deadline; a hung child is killed.
        var status: Int32 = 0
        let deadline = monotonicSeconds() + timeout
        var hung = false
        while waitpid(pid, &status, WNOHANG) == 0 {
            if monotonicSeconds() > deadline {
                hung = true
                kill(pid, SIGKILL)
                waitpid(pid, &status, 0)
                break
            }
            usleep(20_000)
        }
        var buf = [UInt8](repeating: 0, count: 4096)
        _ = fcntl(out.rawValue, F_SETFL, O_NONBLOCK)
        let n = Glibc.read(out.rawValue, &buf, buf.count)
        let text = n > 0 ? String(decoding: buf[0..<n], as: UTF8.self) : ""
        if text.contains("not-applicable") {
            return (.notApplicable, text.split(separator: "\n").first.map(String.init) ?? "")
        }
        if hung { return text.contains("armed") ? (.hangs, "") : (.failed, "timed out before arming") }
        let signaled = status & 0x7f
        if signaled == SIGBUS { return (.sigbus, "") }
        if signaled == 0 && (status >> 8) & 0xff == 0 && text.contains("ok") { return (.safe, "") }
        return (.failed, "exit status \(status): \(text)")
    }
}

