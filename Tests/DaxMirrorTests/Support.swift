import Foundation
import Testing

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

    static func run(_ program: String, _ args: [String], env: [String: String] = [:],
                    timeout: TimeInterval = 120, stdin: String? = nil) throws -> RunResult {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: program)
        p.arguments = args
        var environment = ProcessInfo.processInfo.environment
        environment.removeValue(forKey: "PMEM_IS_PMEM_FORCE")
        for (k, v) in env { environment[k] = v }
        p.environment = environment
        // Output goes to files, so a chatty child never blocks on a full pipe.
        let dir = try ScratchDirectory()
        _ = FileManager.default.createFile(atPath: dir.file("out"), contents: nil)
        _ = FileManager.default.createFile(atPath: dir.file("err"), contents: nil)
        let out = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("out")))
        let err = try FileHandle(forWritingTo: URL(fileURLWithPath: dir.file("err")))
        p.standardOutput = out
        p.standardError = err
        if let stdin {
            try stdin.write(toFile: dir.file("in"), atomically: true, encoding: .utf8)
            p.standardInput = FileHandle(forReadingAtPath: dir.file("in"))
        } else {
            p.standardInput = FileHandle.nullDevice
        }
        try p.run()
        let deadline = Date().addingTimeInterval(timeout)
        var timedOut = false
        while p.isRunning {
            if Date() > deadline {
                timedOut = true
                kill(p.processIdentifier, SIGKILL)
                break
            }
            usleep(2000)
        }
        p.waitUntilExit()
        try out.close()
        try err.close()
        return RunResult(status: p.terminationStatus,
                         stdout: try String(contentsOfFile: dir.file("out"), encoding: .utf8),
                         stderr: try String(contentsOfFile: dir.file("err"), encoding: .utf8), timedOut: timedOut)
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
