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

    /// Spawns with posix_spawn and reaps with waitpid itself: Foundation's
    /// `Process` learns of an exit from SIGCHLD, which is lost while the test
    /// runner's main thread sits in `dispatch_main`'s sigsuspend with SIGCHLD
    /// ignored (seen with `tmux new-session -d`: the zombie was never
    /// reaped). The child starts with no signals blocked and default
    /// dispositions: a runner thread may hand it SIGINT blocked.
    static func run(_ program: String, _ args: [String], env: [String: String] = [:],
                    timeout: TimeInterval = 120, stdin: String? = nil, stdinBytes: [UInt8]? = nil) throws -> RunResult {
        let stdin = stdinBytes.map { String(decoding: $0, as: UTF8.self) } ?? stdin
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PMEM_IS_PMEM_FORCE")
        for (k, v) in env { environment[k] = v }
        // Output goes to files, so a chatty child never blocks on a full pipe.
        let dir = try ScratchDirectory()
        if let stdinBytes { try Data(stdinBytes).write(to: URL(fileURLWithPath: dir.file("in"))) }
        else if let stdin { try stdin.write(toFile: dir.file("in"), atomically: true, encoding: .utf8) }
        var actions = posix_spawn_file_actions_t()
        posix_spawn_file_actions_init(&actions)
        defer { posix_spawn_file_actions_destroy(&actions) }
        posix_spawn_file_actions_addopen(&actions, 0, stdin == nil ? "/dev/null" : dir.file("in"), O_RDONLY, 0)
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
        var pid: pid_t = 0
        let rc = posix_spawn(&pid, program, &actions, &attributes, argv, envp)
        guard rc == 0 else { throw POSIXError(POSIXErrorCode(rawValue: rc) ?? .EIO) }
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        var status: Int32 = 0
        while true {
            let r = waitpid(pid, &status, WNOHANG)
            if r == pid { break }
            if r < 0 && errno != EINTR { throw POSIXError(POSIXErrorCode(rawValue: errno) ?? .ECHILD) }
            if !timedOut && Date() > deadline {
                timedOut = true
                kill(pid, SIGKILL)
            }
            // A child stuck in the kernel survives SIGKILL: give up on it rather
            // than hold this test (and a thread of the runner's pool) forever.
            if timedOut && Date() > deadline.addingTimeInterval(30) {
                let stuck = (try? readTextFile("/proc/\(pid)/wchan")) ?? "?"
                return RunResult(status: -1, stdout: (try? readTextFile(dir.file("out"))) ?? "",
                                 stderr: "(\(program) did not die of SIGKILL within 30 s: it waits in the kernel at \(stuck))", timedOut: true)
            }
            usleep(2000)
        }
        // WIFEXITED / WEXITSTATUS / WTERMSIG, spelled out (macros are not imported).
        let signal = status & 0x7f
        let code: Int32 = signal == 0 ? (status >> 8) & 0xff : 128 + signal
        return RunResult(status: code, stdout: try readTextFile(dir.file("out")),
                         stderr: try readTextFile(dir.file("err")), timedOut: timedOut)
    }

    /// Parses stdout as a JSON object, failing the test if it is not one.
    static func json(_ r: RunResult, sourceLocation: SourceLocation = #_sourceLocation) throws -> [String: Any] {
        let obj = try JSONSerialization.jsonObject(with: Data(r.stdout.utf8))
        return try #require(obj as? [String: Any], "not a JSON object: \(r.stdout.prefix(200))", sourceLocation: sourceLocation)
    }
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
