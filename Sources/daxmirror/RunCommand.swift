import ArgumentParser
import DaxCore
import FaultTracking
import Mirror
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

    @Argument(help: "The scenario file, or - for standard input.")
    var scenario: String

    @Option(help: "Directory for relative file paths in `map R file PATH`.")
    var dir: String = "."

    @Flag(help: "Do not register userfaultfd for invalidation events (revalidation only).")
    var untracked = false

    @Flag(help: ArgumentHelp("Differential: give every device a twin in the kernel's own HMM test driver (/dev/hmm_dmirror0, CONFIG_TEST_HMM) and fail any command where the two disagree (bytes, errno, fault rounds, snapshot codes).",
                             discussion: "Needs a kernel built with TEST_HMM: `Scripts/guest.sh --kernel hmm -- daxmirror run --against-kernel …`."))
    var againstKernel = false

    @Flag(help: "Pretty-print each answer instead of one line per command.")
    var pretty = false

    @Flag(help: "Readable lines for people, snapshots drawn as pictures (. none, r/w read/write, z zero, R/W/Z the same in a 2 MiB PMD, u/U PUD, ! error).")
    var text = false

    func run() throws {
        let script: String
        if scenario == "-" {
            script = readStandardInput()
        } else {
            do { script = try readTextFile(scenario) } catch {
                throw Failure.from(error, doing: "read scenario")
            }
        }
        var st = stat()
        guard stat(dir, &st) == 0, st.st_mode & S_IFMT == S_IFDIR else {
            throw Failure(.notFound, "--dir \(dir) is not a directory")
        }
        if againstKernel && access(KernelDmirror.defaultPath, F_OK) != 0 {
            throw Failure(.unsupported, "--against-kernel needs \(KernelDmirror.defaultPath) (a kernel with CONFIG_TEST_HMM): run it in `Scripts/guest.sh --kernel hmm`")
        }
        let runner = ScenarioRunner(directory: dir, tracking: !untracked, againstKernel: againstKernel)
        let failed = runner.run(script: script) { answer in
            emit(text ? ScenarioText.render(answer) : answer.render(pretty: pretty))
        }
        if failed > 0 {
            writeStderr("daxmirror: \(failed) scenario command\(failed == 1 ? "" : "s") failed\n")
            Glibc.exit(DaxCore.ExitCode.failure.rawValue)
        }
    }

    private func readStandardInput() -> String {
        var bytes: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 65536)
        while true {
            let n = chunk.withUnsafeMutableBytes { Glibc.read(0, $0.baseAddress, $0.count) }
            if n < 0 && errno == EINTR { continue }
            if n <= 0 { break }
            bytes.append(contentsOf: chunk[0..<n])
        }
        return String(decoding: bytes, as: UTF8.self)
    }
}
