import ArgumentParser
import DaxCore
import FaultTracking
import MirrorPolicy
import MirrorKernel
import KernelDmirror
import MirrorScenario
#if canImport(Glibc)
import Glibc
#endif

struct RunCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "run",
        abstract: "Run a mirror scenario: map memory, attach a simulated device, drive CPU and device.",
        discussion: """
            A scenario is a text file (or - for standard input) with one command per line; `#` \
            starts a comment. Each command prints one JSON object: {"line":N,"op":...,"ok":true,...} \
            or {"op":...,"ok":false,"errno":"EFAULT","error":...}. The exit status is 1 if any \
            command failed (a command inside `expect-fail` must fail instead).

            Trailing key=value words are expectations on the answer, e.g. `faults=1`, \
            `uniform=0x2a`, `codes=ff*2,11*1,01*1,02*3` (snapshot codes, run-length hex: \
            NONE 00, READ 01, WRITE 02, PMD 04, PUD 08, ZERO 10, ERROR ff, OR-ed).

            Commands:
            \(ScenarioRunner.commands.map { "  \($0.0)\n      \($0.1)" }.joined(separator: "\n"))

            SIZE, OFF and LEN take 4096, 64K, 2M, 1G or 0x hex. Relative file paths are \
            resolved against --dir. Scenarios for every case of the kernel's hmm-tests are \
            in Scenarios/ (they run on the host and, on DAX, in the guest).

            Examples:
              daxmirror run Scenarios/anon_read.scn
              printf 'map A anon 64K\\nmirror A\\ndev-read A 0 64K faults=1\\n' | daxmirror run -
              daxmirror run --dir /mnt Scenarios/compound_dax.scn     # on a DAX mount
              daxmirror run --text Scenarios/snapshot.scn              # for people: snapshot pictures
            """)

    @Argument(help: ArgumentHelp("The scenario file, or - for standard input.", valueName: "scenario"))
    var scenarioPath: PathArgument
    var scenario: FilePath { scenarioPath.path }

    @Option(name: .customLong("dir"), help: ArgumentHelp("Directory under which relative file paths in `map R file PATH` resolve: each run makes a private directory there and removes it, with its files, when it ends.", valueName: "dir"))
    var dirPath = PathArgument(argument: ".")!

    @Flag(help: "Do not register userfaultfd for invalidation events (revalidation only).")
    var untracked = false

    @Flag(help: ArgumentHelp("Differential: give every device a twin in the kernel's own HMM test driver (/dev/hmm_dmirror0, CONFIG_TEST_HMM) and fail any command where the two disagree (bytes, errno, fault rounds, snapshot codes).",
                             discussion: "Needs a kernel built with TEST_HMM: `Scripts/guest.sh --kernel hmm -- daxmirror run --against-kernel …`."))
    var againstKernel = false

    @Flag(help: ArgumentHelp("With --against-kernel: give every region a twin of the same kind and size that every CPU command also acts on, and let the kernel's device work on the twin.",
                             discussion: "Needed to compare device-private memory (migrate, migrate-back, release, exclusive, check-exclusive): a migrated page has one owner, so the two devices cannot share memory."))
    var twinRegions = false

    @Flag(help: "Pretty-print each answer instead of one line per command.")
    var pretty = false

    @Flag(help: "Readable lines for people, snapshots drawn as pictures (. none, r/w read/write, z zero, R/W/Z the same in a 2 MiB PMD, u/U PUD, ! error).")
    var text = false

    /// Larger than any scenario a person or a generator writes (100,000
    /// lines are ~3 MiB): the bound that keeps `run /dev/zero`-like input
    /// from eating the machine's memory.
    static let largestScenario = 64 << 20

    func validate() throws {
        try scenarioPath.check("SCENARIO")
        try dirPath.check("--dir")
    }

    func run() throws {
        let script = try readScenario()
        var st = stat()
        guard dirPath.path.withCString({ stat($0, &st) }) == 0 else {
            throw Failure.from(SystemCallError("stat", dirPath.description), doing: "use --dir")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw Failure(.notRegularFile, "--dir \(dirPath) is not a directory") }
        let dir = try dirPath.directoryForModules()
        if againstKernel && access(KernelDmirror.defaultPath, F_OK) != 0 {
            throw Failure(.unsupported, "--against-kernel needs \(KernelDmirror.defaultPath) (a kernel with CONFIG_TEST_HMM): run it in `Scripts/guest.sh --kernel hmm`")
        }
        if twinRegions && !againstKernel { throw Failure(.usage, "--twin-regions compares with the kernel's device: give --against-kernel too") }
        let runner = ScenarioRunner(directory: dir, tracking: !untracked, againstKernel: againstKernel, twinRegions: twinRegions)
        // The run's private directory goes however the command ends (a
        // reader that went away, a write error).
        ExitCleanup.register { runner.finish() }
        // SIGINT/SIGTERM/SIGHUP stop the run between two lines, so that the
        // private directory goes before the signal ends the process.
        let signals = InterruptingSignals()
        let failed = runner.run(script: script) { answer in
            emit(text ? ScenarioText.render(answer) : answer.render(pretty: pretty))
            if let s = signals.received { DaxMirror.end(Interrupted(signal: s, what: "running the scenario; its files were removed")) }
        }
        runner.finish()
        if failed > 0 {
            writeStderr("daxmirror: \(failed) scenario command\(failed == 1 ? "" : "s") failed\n")
            Glibc.exit(ExitCause.failure.rawValue)
        }
    }

    /// The scenario's bytes: a regular file or a pipe (standard input with
    /// `-`), at most `largestScenario` bytes; anything else is refused
    /// before a byte is read (a device, a directory).
    private func readScenario() throws -> [UInt8] {
        let fd: Int32
        let stdin = scenario == "-"
        let name = stdin ? "standard input" : scenario.description
        if stdin {
            fd = 0
        } else {
            fd = scenario.withCString { Glibc.open($0, O_RDONLY | O_CLOEXEC | O_NONBLOCK | O_NOCTTY) }
            guard fd >= 0 else { throw Failure.from(SystemCallError("open", name), doing: "read scenario") }
        }
        defer { if fd != 0 { Glibc.close(fd) } }
        var st = stat()
        guard fstat(fd, &st) == 0 else { throw Failure.from(SystemCallError("fstat", name), doing: "read scenario") }
        let type = st.st_mode & S_IFMT
        guard type == S_IFREG || type == S_IFIFO || type == S_IFSOCK || (stdin && type == S_IFCHR) else {
            throw Failure(.notRegularFile, "scenario \(name) is not a regular file or a pipe: give a scenario file, or - for standard input")
        }
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n: Int
            do { n = try Syscall.retrying("read", name) { chunk.withUnsafeMutableBytes { Glibc.read(fd, $0.baseAddress, $0.count) } } }
            catch where error.errno == .EAGAIN { waitReadable(fd); continue }  // a FIFO opened O_NONBLOCK
            catch { throw Failure.from(error, doing: "read scenario") }
            if n == 0 { break }
            guard bytes.count + n <= Self.largestScenario else {
                throw Failure(.invalidArgument, "scenario \(name) is larger than \(Self.largestScenario >> 20) MiB: split it")
            }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return bytes
    }

    private func waitReadable(_ fd: Int32) {
        var p = pollfd(fd: fd, events: Int16(POLLIN), revents: 0)
        _ = poll(&p, 1, -1)
    }
}
