import ArgumentParser
import CDaxShim
import DaxCore
#if canImport(Glibc)
import Glibc
#endif

@main
struct DaxMirror: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "daxmirror",
        abstract: "Mirror and inspect CPU page tables of files on DAX (persistent memory) filesystems.",
        discussion: """
            daxmirror maps files through libpmem, tracks the pages the CPU faults in, and \
            compares what it sees with the kernel's own truth (/proc/PID/pagemap, smaps).

            Start with `daxmirror caps` to see what this kernel offers, `daxmirror devices` \
            for the NVDIMM inventory, and `daxmirror map FILE` to map a file and see whether \
            it is real persistent memory.

            Exit codes: 0 ok, 1 an operation failed, 3 not found, 4 not a regular file, \
            5 permission denied, 6 already exists, 7 symlink refused, 8 no space, \
            9 invalid argument, 10 not DAX, 11 kernel lacks a feature, 12 process gone, \
            13 other system error, 15 busy (a file being overwritten, a port in use), 16 a program \
            `emulate` cannot reach (statically linked, another architecture), 64 usage error.
            """,
        version: Version.text,
        subcommands: [CapsCommand.self, DevicesCommand.self, MapCommand.self, RunCommand.self, InspectCommand.self, WatchCommand.self,
                      MetricsCommand.self, EmulateCommand.self, PersistWriterCommand.self, PersistVerifyCommand.self, ProbeDaxWPCommand.self])

    static func main() {
        // Before anything opens a file: see dm_process_start (closed standard
        // streams, SIGPIPE, SIGXFSZ, SIGQUIT).
        _ = dm_process_start()
        do {
            var command = try parseAsRoot()
            try command.run()
        } catch let failure as Failure {
            fail(failure)
        } catch let interrupted as Interrupted {
            end(interrupted)
        } catch {
            if let pendingFailure { fail(pendingFailure) }
            // --help and --version arrive here as "errors" with exit code 0.
            let code = exitCode(for: error)
            if code == .success { exit(withError: error) }
            // Usage errors: one line, like every other failure, plus where to look.
            let text = message(for: error).split(separator: "\n").first.map(String.init) ?? "invalid usage"
            writeStderr("daxmirror: \(text.inert) (see 'daxmirror help')\n")
            Glibc.exit(code.rawValue)
        }
    }

    /// Work stopped by SIGINT/SIGTERM/SIGHUP: one line, the cleanups, then
    /// the signal's own end (exit status 128+N to a shell).
    static func end(_ interrupted: Interrupted) -> Never {
        writeStderr("daxmirror: interrupted by signal \(interrupted.signal) while \(interrupted.what.inert)\n")
        ExitCleanup.run(failed: true)
        signal(interrupted.signal, SIG_DFL)
        raise(interrupted.signal)
        Glibc.exit(128 + interrupted.signal)
    }

    /// One line on stderr, the distinct exit code, nothing else.
    static func fail(_ failure: Failure) -> Never {
        writeStderr("daxmirror: \(PathAliases.shown(failure.message).inert)\n")
        ExitCleanup.run(failed: true)
        Glibc.exit(failure.code.rawValue)
    }
}

/// What must happen however a command ends, exit() included (a scenario
/// run's private directory; a file `map` created, if it then fails to
/// report): run once, on the way out. `failureOnly` actions are skipped when
/// the command ends well (a reader that went away).
enum ExitCleanup {
    nonisolated(unsafe) private static var actions: [(failureOnly: Bool, run: () -> Void)] = []
    static func register(failureOnly: Bool = false, _ action: @escaping () -> Void) {
        actions.append((failureOnly, action))
    }
    static func run(failed: Bool) {
        let a = actions
        actions = []
        for x in a.reversed() where failed || !x.failureOnly { x.run() }
    }
}

func writeStderr(_ s: String) { _ = writeAll(2, s) }

/// Writes a line to stdout unbuffered, so a parent reading a pipe sees each
/// line when it is printed (the crash tests rely on this for their acks).
/// Output that cannot be written (a full disk, a closed stdout) ends the
/// command with one line on stderr and its exit code: never a silent exit 0,
/// never a loop that keeps producing into nowhere (`watch`).
/// Control characters in what it prints (a process's name, a file's) are
/// escaped: output never drives the terminal (String.terminalSafe).
func emit(_ s: String) { emitRaw(s.terminalSafe + "\n") }

/// Writes without a newline, as is: for the terminal control sequences of
/// `watch` (whose text goes through String.terminalSafe first).
/// A reader that went away (EPIPE: `daxmirror … | head`) ends the command
/// at once, quietly, with exit 0: the reader has what it wanted, and more
/// work would only produce into nowhere. Every subcommand writes through
/// here, so every one ends the same way (README "Output and signals").
func emitRaw(_ s: String) {
    guard let e = writeAll(1, s) else { return }
    if e == .EPIPE {
        ExitCleanup.run(failed: false)
        Glibc.exit(0)
    }
    DaxMirror.fail(Failure.from(SystemCallError("write", "standard output", errno: e), doing: "write to"))
}

