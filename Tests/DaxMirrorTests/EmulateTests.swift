import Foundation
import Testing
import DaxCore

/// `daxmirror emulate`: a C client of the HMM test driver (Fixtures/hmm-probe.c,
/// compiled here) run under it, its checks written against the module's
/// documented behaviour; the same program without emulate, where no kernel
/// module is loaded, cannot even open the device (so the answers are
/// emulate's). The refusals, and the program's own environment and status.
@Suite("emulate: the HMM test driver served to an unmodified program", .serialized)
struct EmulateTests {
    static let fixture = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("Fixtures/hmm-probe.c").path

    /// The C compiler the machine has (the test command installs gcc).
    static var compiler: String? {
        for c in ["cc", "gcc", "clang"] {
            for dir in (ProcessInfo.processInfo.environment["PATH"] ?? "/usr/bin").split(separator: ":") where access("\(dir)/\(c)", X_OK) == 0 {
                return "\(dir)/\(c)"
            }
        }
        return nil
    }

    /// hmm-probe.c built once per run (dynamically, and statically for the
    /// refusal), in a directory that lives as long as the run.
    nonisolated(unsafe) static var built: [Bool: String] = [:]
    nonisolated(unsafe) static var buildDirectory: ScratchDirectory?

    static func probe(static linked: Bool = false) throws -> String {
        if let p = built[linked] { return p }
        guard let cc = compiler else { try skip("no C compiler on this machine to build Fixtures/hmm-probe.c") }
        if buildDirectory == nil { buildDirectory = try ScratchDirectory() }
        let out = buildDirectory!.file(linked ? "hmm-probe-static" : "hmm-probe")
        let r = try CLI.run(cc, ["-O1", "-o", out, fixture] + (linked ? ["-static"] : []), timeout: 120)
        if linked && r.status != 0 && r.stderr.contains("cannot find -lc") { try skip("no static libc to link with") }
        try #require(r.status == 0, "\(cc) hmm-probe.c: \(r.stderr)")
        built[linked] = out
        return out
    }

    @Test func aProgramGetsTheDriversAnswersInItsOwnProcess() throws {
        let probe = try Self.probe()
        if access("/dev/hmm_dmirror0", F_OK) != 0 {
            let bare = try CLI.run(probe, [], timeout: 60)
            #expect(bare.stdout.hasPrefix("FAIL open"), "without emulate there is no device here: \(bare.stdout)")
        }
        let r = try CLI.daxmirror(["emulate", "--", probe], timeout: 120)
        let lines = r.stdout.split(separator: "\n")
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(!lines.contains { $0.hasPrefix("FAIL") }, "\(r.stdout)")
        for name in ["read", "read-again-no-fault", "write-through-dup", "dup2", "f-dupfd", "closed-ebadf", "unknown-einval",
                     "bad-cmd-efault", "snapshot", "migrate", "migrate-snapshot", "migrate-cpu-touch", "migrate-home",
                     "mmap-device", "mmap-snapshot", "coherent-absent", "openat-relative", "open-odd-spelling", "fopen", "stale-descriptor",
                     "hole-snapshot", "hole-read-efault", "hole-migrate-einval", "hole-neighbour-intact"] {
            #expect(lines.contains { $0 == "ok \(name)" }, "check \(name) did not run: \(r.stdout)")
        }
    }

    @Test func verboseSaysWhyACommandFailed() throws {
        let probe = try Self.probe()
        let r = try CLI.daxmirror(["emulate", "--verbose", "--", probe], timeout: 120)
        #expect(r.status == 0, "\(r.stdout)\n\(r.stderr)")
        #expect(r.stderr.contains("is not page-aligned (EINVAL)"), "\(r.stderr)")
        #expect(r.stderr.contains("not an HMM_DMIRROR request"), "\(r.stderr)")
        let quiet = try CLI.daxmirror(["emulate", "--", probe], timeout: 120)
        #expect(!quiet.stderr.contains("daxmirror emulate:"), "\(quiet.stderr)")
    }

    @Test func whatEmulationCannotReachIsRefused() throws {
        let dir = try ScratchDirectory()
        let probe = try Self.probe()
        let staticProbe = try Self.probe(static: true)
        let s = try CLI.daxmirror(["emulate", "--", staticProbe])
        #expect(s.status == 16 && s.stderr.contains("statically linked"), "\(s.status) \(s.stderr)")
        let missing = try CLI.daxmirror(["emulate", "--", dir.file("no-such-program")])
        #expect(missing.status == 3 && missing.stderr.contains("does not exist"), "\(missing.status) \(missing.stderr)")
        let none = try CLI.daxmirror(["emulate"])
        #expect(none.status == 64, "\(none.status) \(none.stderr)")
        let lib = try CLI.daxmirror(["emulate", "--library", dir.file("nothing.so"), "--", probe])
        #expect(lib.status == 3 && lib.stderr.contains("is not there"), "\(lib.status) \(lib.stderr)")
        // Another architecture: a 32-bit ELF header is enough to be refused.
        let elf32 = dir.file("elf32")
        var header = [UInt8](repeating: 0, count: 64)
        header.replaceSubrange(0..<5, with: [0x7F, 0x45, 0x4C, 0x46, 1])
        _ = FileManager.default.createFile(atPath: elf32, contents: Data(header), attributes: [.posixPermissions: 0o755])
        let other = try CLI.daxmirror(["emulate", "--", elf32])
        #expect(other.status == 16 && other.stderr.contains("another architecture"), "\(other.status) \(other.stderr)")
    }

    /// What daxmirror changes for itself at start (SIGPIPE ignored, closed
    /// standard streams filled) is put back before the program runs; its
    /// exit status and its death by a signal are emulate's.
    @Test func theProgramKeepsItsEnvironmentAndStatus() throws {
        let probe = try Self.probe()
        let r = try CLI.run("/bin/sh", ["-c", "exec 2>&-; exec \"$0\" emulate -- \"$1\" env 7", CLI.binary, probe], timeout: 60)
        #expect(r.status == 7, "\(r.status) \(r.stdout)")
        #expect(r.stdout.contains("sigpipe default"), "\(r.stdout)")
        #expect(r.stdout.contains("stderr-open 0"), "\(r.stdout)")
        #expect(r.stdout.contains("sigint-blocked 0"), "\(r.stdout)")
        #expect(r.stdout.contains("opened 1"), "\(r.stdout)")
        let ignored = try CLI.run("/bin/sh", ["-c", "trap '' PIPE; exec \"$0\" emulate -- \"$1\" env 0", CLI.binary, probe], timeout: 60)
        #expect(ignored.stdout.contains("sigpipe ignored"), "\(ignored.stdout)")
        let killed = try CLI.daxmirror(["emulate", "--", probe, "env", "TERM"], timeout: 60)
        #expect(killed.status == 128 + SIGTERM, "\(killed.status)")
    }
}
