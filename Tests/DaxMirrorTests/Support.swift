import Foundation
import Testing
import DaxCore

/// Runs the built `daxmirror` (or any program) with a hard timeout and
/// collects its output. Tests drive the CLI as a user would.
struct RunResult {
    var status: Int32
    var stdout: String
    var stderr: String
    var timedOut: Bool
    var stderrLines: [Substring] { stderr.split(separator: "\n") }
}

enum CLI {
    /// The directory of the test bundle: `.build/debug` (host or guest alike).
    static var buildDirectory: URL {
        if let d = ProcessInfo.processInfo.environment["DAXMIRROR_BUILD_DIR"] { return URL(fileURLWithPath: d) }
        return URL(fileURLWithPath: CommandLine.arguments[0]).resolvingSymlinksInPath().deletingLastPathComponent()
    }
    static var binary: String { buildDirectory.appendingPathComponent("daxmirror").path }

    static func daxmirror(_ args: [String], env: [String: String] = [:], timeout: TimeInterval = 120) throws -> RunResult {
        try run(binary, args, env: env, timeout: timeout)
    }

    /// Runs `program` to its end (a Spawned child), SIGKILLed at `timeout`.
    static func run(_ program: String, _ args: [String], env: [String: String] = [:],
                    timeout: TimeInterval = 120, stdin: String? = nil, stdinBytes: [UInt8]? = nil) throws -> RunResult {
        let input = stdinBytes ?? stdin.map { Array($0.utf8) }
        let child = try Spawned(program, args, env: env, input: input)
        let status = child.wait(timeout: timeout)
        return RunResult(status: status ?? -1, stdout: child.output, stderr: status == nil ? child.stuckReport : child.errorOutput,
                         timedOut: child.timedOut)
    }

    /// Parses stdout as a JSON object, failing the test if it is not one.
    static func json(_ r: RunResult, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
        return try #require(obj as? [String: Any], "not a JSON object: \(r.stdout.prefix(200))", sourceLocation: sourceLocation)
    }
}

/// A child process, and the one way tests start one. posix_spawn, reaped
/// with waitpid here: Foundation's `Process` learns of an exit from SIGCHLD,
/// which is lost while the test runner's main thread sits in
/// `dispatch_main`'s sigsuspend with SIGCHLD ignored (seen with `tmux
/// new-session -d`: the zombie was never reaped). The child starts with no
/// signal blocked and default dispositions (a runner thread may hand it
/// SIGINT blocked); its stdout and stderr go to files, so a chatty child
/// never blocks on a full pipe; its stdin is the given bytes, or a pipe the
/// test closes (`closeInput`), or /dev/null.
final class Spawned {
    let pid: pid_t
    private let dir: ScratchDirectory
    private var inputFD: Int32 = -1
    private var status: Int32?
    private(set) var timedOut = false

    init(_ program: String, _ args: [String], env: [String: String] = [:], input: [UInt8]? = nil, inputPipe: Bool = false) throws {
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PMEM_IS_PMEM_FORCE")
        for (k, v) in env { environment[k] = v }
        dir = try ScratchDirectory()
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        var pipeFDs: [Int32] = [-1, -1]
        if let input {
            try Data(input).write(to: URL(fileURLWithPath: dir.file("in")))
            posix_spawn_file_actions_addopen(&actions, 0, dir.file("in"), O_RDONLY, 0)
        } else if inputPipe {
            guard pipe(&pipeFDs) == 0 else { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .EIO) }
            for fd in pipeFDs { _ = fcntl(fd, F_SETFD, FD_CLOEXEC) }  // no other child inherits the write end
            posix_spawn_file_actions_adddup2(&actions, pipeFDs[0], 0)
        } else {
            posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0)
        }
        posix_spawn_file_actions_addopen(&actions, 1, dir.file("out"), O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        posix_spawn_file_actions_addopen(&actions, 2, dir.file("err"), O_WRONLY | O_CREAT | O_TRUNC, 0o600)
        var attributes = posix_spawnattr_t()
        posix_spawnattr_init(&attributes)
        defer { posix_spawnattr_destroy(&attributes) }
        var none = sigset_t(), all = sigset_t()
        sigemptyset(&none)
        sigfillset(&all)
        posix_spawnattr_setsigmask(&attributes, &none)
        posix_spawnattr_setsigdefault(&attributes, &all)
        posix_spawnattr_setflags(&attributes, Int16(POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF))
        let argv = ([program] + args).map { strdup($0) } + [nil]
        let envp = environment.map { strdup("\($0.key)=\($0.value)") } + [nil]
        defer { (argv + envp).forEach { free($0) } }
        var child: pid_t = 0
        let rc = posix_spawn(&child, program, &actions, &attributes, argv, envp)
        if pipeFDs[0] >= 0 { close(pipeFDs[0]) }
        guard rc == 0 else {
            if pipeFDs[1] >= 0 { close(pipeFDs[1]) }
            throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO)
        }
        pid = child
        inputFD = pipeFDs[1]
    }

    deinit {
        closeInput()
        kill()
    }

    var output: String { (try? readTextFile(dir.file("out"))) ?? "" }
    var errorOutput: String { (try? readTextFile(dir.file("err"))) ?? "" }
    var isRunning: Bool { status == nil && reap(block: false) == nil }

    func closeInput() {
        if inputFD >= 0 { close(inputFD); inputFD = -1 }
    }

    func signal(_ sig: Int32) { if status == nil { Glibc.kill(pid, sig) } }

    /// Its exit status as a shell shows it (128+N for signal N), if it ended.
    private func reap(block: Bool) -> Int32? {
        if let status { return status }
        var raw: Int32 = 0
        var r: pid_t
        repeat { r = waitpid(pid, &raw, block ? 0 : WNOHANG) } while r < 0 && errno == EINTR
        guard r == pid else { return nil }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (macros are not imported).
        let sig = raw & 0x7f
        status = sig == 0 ? (raw >> 8) & 0xff : 128 + sig
        return status
    }

    /// Waits up to `timeout` for the end, then SIGKILLs it; nil if even
    /// SIGKILL did not end it within 30 s (a child stuck in the kernel).
    @discardableResult
    func wait(timeout: TimeInterval) -> Int32? {
        let deadline = Date().addingTimeInterval(timeout)
        while true {
            if let s = reap(block: false) { return s }
            if !timedOut && Date() > deadline {
                timedOut = true
                Glibc.kill(pid, SIGKILL)
            }
            if timedOut && Date() > deadline.addingTimeInterval(30) { return nil }
            usleep(2000)
        }
    }

    /// Where a child that survived SIGKILL waits in the kernel.
    var stuckReport: String {
        "(\(pid) did not die of SIGKILL within 30 s: it waits in the kernel at \((try? readTextFile("/proc/\(pid)/wchan")) ?? "?"))"
    }

    /// Waits until its stdout holds `text` (true), or it ended or `timeout` passed (false).
    func waitForOutput(containing text: String, timeout: TimeInterval) -> Bool {
        waitFor(text, in: { self.output }, timeout: timeout)
    }

    /// The same for its stderr.
    func waitForErrorOutput(containing text: String, timeout: TimeInterval) -> Bool {
        waitFor(text, in: { self.errorOutput }, timeout: timeout)
    }

    private func waitFor(_ text: String, in stream: () -> String, timeout: TimeInterval) -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if stream().contains(text) { return true }
            if !isRunning { return stream().contains(text) }
            usleep(10_000)
        }
        return false
    }

    /// SIGKILL and reap (nothing if it already ended).
    func kill() {
        guard status == nil else { return }
        Glibc.kill(pid, SIGKILL)
        _ = reap(block: true)
    }
}

/// A child that has exited and is not reaped (a zombie) while this lives.
final class ZombieProcess {
    let child: Spawned
    var pid: pid_t { child.pid }
    init() throws {
        child = try Spawned("/bin/true", [])
        // Exited, not reaped: WNOWAIT leaves it a zombie.
        var info = siginfo_t()
        guard waitid(P_PID, id_t(child.pid), &info, WEXITED | WNOWAIT) == 0 else { throw POSIXError(.ECHILD) }
    }
}

/// Skips the running test (or test case) at run time, with its reason
/// printed (the console shows a cancelled case without one) and recorded.
func skip(_ reason: String, sourceLocation: SourceLocation = #_sourceLocation) throws -> Never {
    print("skipped: \(reason)")
    try Test.cancel(Comment(rawValue: reason), sourceLocation: sourceLocation)
}

/// mmap's result, or a thrown error naming errno: mmap fails with
/// MAP_FAILED, never nil, so `#require(mmap(…))` would let a failure through.
func mapped(_ p: UnsafeMutableRawPointer?, sourceLocation: SourceLocation = #_sourceLocation) throws -> UnsafeMutableRawPointer {
    let e = errno
    guard let p, p != MAP_FAILED else {
        throw POSIXError(POSIXErrorCode(rawValue: e) ?? .EINVAL, userInfo: [NSLocalizedDescriptionKey: "mmap failed (errno \(e))"])
    }
    return p
}

/// A fresh directory under /tmp (or under `base`), removed at the end.
final class ScratchDirectory {
    let path: String
    init(base: String = NSTemporaryDirectory()) throws {
        let template = (base as NSString).appendingPathComponent("daxmirror-test-XXXXXX")
        var bytes = Array(template.utf8CString)
        guard let p = mkdtemp(&bytes) else { throw POSIXError(.init(rawValue: errno)!) }
        path = String(cString: p)
    }
    deinit { try? FileManager.default.removeItem(atPath: path) }
    func file(_ name: String) -> String { (path as NSString).appendingPathComponent(name) }
}

/// Where DAX tests write: $DAXMIRROR_DAX_DIR (set by Scripts/guest.sh inside
/// the guest), if it really is a DAX mount.
enum DaxEnvironment {
    static var directory: String? {
        guard let d = ProcessInfo.processInfo.environment["DAXMIRROR_DAX_DIR"], !d.isEmpty else { return nil }
        return d
    }
    /// The DAX mount's filesystem type (ext4, xfs), from /proc/mounts.
    static var filesystem: String? {
        guard let d = directory, let text = try? readTextFile("/proc/mounts") else { return nil }
        for line in text.split(separator: "\n") {
            let f = line.split(separator: " ")
            if f.count > 2 && String(f[1]) == d { return String(f[2]) }
        }
        return nil
    }
    static let skipMessage = "no DAX mount here: run the DAX suite in the pmem guest with `Scripts/test.sh` (or `Scripts/guest.sh -- Scripts/guest-tests.sh`)"
}

func fileBytes(_ path: String) throws -> [UInt8] {
    [UInt8](try Data(contentsOf: URL(fileURLWithPath: path)))
}

func which(_ program: String) -> String? {
    for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin:/bin").split(separator: ":") {
        let p = "\(dir)/\(program)"
        if access(p, X_OK) == 0 { return p }
    }
    return nil
}

/// Whether a `daxmirror run` answer line reports failure (its own "ok", not
/// the "ok" of the command inside an expect-fail).
func answerFailed(_ line: Substring) -> Bool {
    guard let r = line.range(of: "\"ok\":") else { return false }
    return line[r.upperBound...].hasPrefix("false")
}
