import Foundation
import Testing
import CDaxShim
import DaxCore

/// Trust at the edges, part 2: the environment as input (closed standard
/// streams, resource limits, a reader that goes away, SIGQUIT), paths as
/// bytes, options that must act or be refused, the exit-code table for every
/// kind of file, numbers and addresses read strictly, text that stays inert.
/// Each case names the class it checks; each fails on the code before it.

/// Runs a bash script with `$D` the daxmirror binary and `$T` a scratch
/// directory; the script's own exit status and output are the result.
func bash(_ script: String, in dir: ScratchDirectory, timeout: TimeInterval = 60) throws -> RunResult {
    try CLI.run("/bin/bash", ["-c", script, "bash"], env: ["D": CLI.binary, "T": dir.path], timeout: timeout)
}

@Suite("edges: closed standard streams", .serialized)
struct ClosedStreamTests {
    /// A user's file is never the report's destination: with stdout (or
    /// every stream) closed, whatever daxmirror opens cannot become fd 1.
    /// The output that cannot be written is exit 13 (EBADF), one line on
    /// stderr when stderr is open; the user's files keep their bytes.
    @Test(arguments: [">&-", ">&- 2>&-", ">&- 2>&- <&-", "<&-"])
    func nothingOpenedBecomesAStandardStream(_ redirection: String) throws {
        let dir = try ScratchDirectory()
        let precious = [UInt8](repeating: 0x5a, count: 8192)
        try Data(precious).write(to: URL(fileURLWithPath: dir.file("precious")))
        try FileManager.default.createDirectory(atPath: dir.file("prom"), withIntermediateDirectories: false)
        let stdoutClosed = redirection.hasPrefix(">&-")
        for command in ["map \"$T/precious\"", "map \"$T/precious\" --json", "caps --json", "devices",
                        "metrics --textfile \"$T/prom\"", "run --dir \"$T\" \"$T/s.scn\""] {
            try Data("map A file f.dat 8K\ncpu-write A 0 8K 7\n".utf8).write(to: URL(fileURLWithPath: dir.file("s.scn")))
            let r = try bash("exec 3>&1; \"$D\" \(command) \(redirection) 3>&-; echo \"status=$?\" >&3", in: dir)
            let status = r.fd3Status
            #expect(try fileBytes(dir.file("precious")) == precious, "\(command) \(redirection) wrote into the user's file")
            if stdoutClosed && !command.contains("--textfile") {
                #expect(status == 13, "\(command) \(redirection): status \(status), \(r.stderr)")
                if !redirection.contains("2>&-") {
                    #expect(r.stderrLines.count == 1 && r.stderr.contains("EBADF"), "\(command): \(r.stderr)")
                }
            } else {
                #expect(status == 0, "\(command) \(redirection): status \(status), \(r.stderr)")
            }
        }
        // A file `map --create` made is gone when its report could not be written.
        let r = try bash("exec 3>&1; \"$D\" map \"$T/made\" --create --size 8K >&- 3>&-; echo \"status=$?\" >&3", in: dir)
        #expect(r.fd3Status == 13)
        #expect(access(dir.file("made"), F_OK) != 0, "a failed map left the file it created")
    }

    /// Reading a closed stdin is an error, not an empty scenario.
    @Test func aClosedStdinIsAnErrorForRunDash() throws {
        let dir = try ScratchDirectory()
        let r = try bash("exec 3>&1; \"$D\" run - <&- 3>&-; echo \"status=$?\" >&3", in: dir)
        #expect(r.fd3Status != 0 && r.stderrLines.count == 1, "\(r.stderr)")
    }
}

@Suite("edges: signals and limits from the environment", .serialized)
struct EnvironmentSignalTests {
    /// RLIMIT_FSIZE is EFBIG (exit 8), never death by SIGXFSZ; nothing is
    /// left: no new file, an existing one unchanged, no temporary file.
    @Test func aFileSizeLimitIsNoSpaceAndLeavesNothing() throws {
        let prlimit = try #require(which("prlimit"), "prlimit (util-linux) is missing")
        let dir = try ScratchDirectory()
        let old = [UInt8](repeating: 0x11, count: 8192)
        try Data(old).write(to: URL(fileURLWithPath: dir.file("old")))
        try FileManager.default.createDirectory(atPath: dir.file("prom"), withIntermediateDirectories: false)
        let limited = { (args: [String]) in try CLI.run(prlimit, ["--fsize=65536", CLI.binary] + args) }
        for args in [["map", dir.file("new"), "--create", "--size", "1M", "--fill", "0x22"],
                     ["map", dir.file("new"), "--create", "--sparse", "--size", "1M", "--fill", "0x22"],
                     ["map", dir.file("new"), "--create", "--size", "1M"],
                     ["map", dir.file("old"), "--create", "--overwrite", "--size", "1M"],
                     ["map", dir.file("old"), "--create", "--overwrite", "--sparse", "--size", "1M", "--fill", "1"]] {
            let r = try limited(args)
            #expect(r.status == 8, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderrLines.count == 1, "\(args): \(r.stderr)")
            #expect(access(dir.file("new"), F_OK) != 0, "\(args) left a file")
            #expect(try fileBytes(dir.file("old")) == old, "\(args) changed the existing file")
        }
        // The exposition is larger than 512 bytes: EFBIG while writing it.
        let small = try CLI.run(prlimit, ["--fsize=512", CLI.binary, "metrics", "--textfile", dir.file("prom")])
        #expect(small.status == 8, "\(small.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.file("prom")).isEmpty)
    }

    /// A reader that goes away (EPIPE) ends every subcommand the same way:
    /// quietly, exit 0, never death by SIGPIPE (141). The pipe's read end is
    /// closed before daxmirror starts, so its first write meets EPIPE.
    @Test func aReaderThatGoesAwayIsAQuietEnd() throws {
        let dir = try ScratchDirectory()
        try Data(repeating: 1, count: 8192).write(to: URL(fileURLWithPath: dir.file("f")))
        for command in ["caps", "caps --json", "devices", "map \"$T/f\"", "map \"$T/f\" --json", "metrics",
                        "inspect $$", "inspect $$ --json", "watch $$ --once", "watch $$ --count 2 --interval 10",
                        "printf 'map A anon 64K\\n' | \"$D\" run - --text", "run --help", "--help"] {
            let line = command.contains("\"$D\"") ? command : "\"$D\" " + command
            try Data(line.utf8).write(to: URL(fileURLWithPath: dir.file("cmd.sh")))
            let r = try bash("""
                python3 -c 'import os,subprocess,sys
                r,w=os.pipe(); os.close(r)
                p=subprocess.run(["bash",sys.argv[1]],stdout=w,stderr=subprocess.PIPE)
                print("status=%d" % p.returncode); sys.stderr.buffer.write(p.stderr)' "$T/cmd.sh"
                """, in: dir)
            #expect(r.stdout.contains("status=0"), "\(command): \(r.stdout) \(r.stderr)")
            #expect(r.stderr.isEmpty, "\(command): \(r.stderr)")
        }
    }

    /// SIGQUIT ends `metrics --listen` as its default action says, with no
    /// runtime crash report on stderr, and frees the port.
    @Test func sigquitEndsTheExporterQuietly() throws {
        let port = 19_000 + Int(getpid() % 900)
        let server = try Spawned(CLI.binary, ["metrics", "--listen", "127.0.0.1:\(port)"])
        #expect(server.waitForErrorOutput(containing: "serving", timeout: 30), "\(server.errorOutput)")
        server.signal(SIGQUIT)
        let status = try #require(server.wait(timeout: 10), "still running 10 s after SIGQUIT")
        #expect(status & 0x7f == SIGQUIT, "status \(status)")
        #expect(!server.errorOutput.contains("Crash") && !server.errorOutput.contains("Thread 0"), "\(server.errorOutput)")
    }
}

@Suite("edges: work bounded by what is there", .serialized)
struct BoundedMapTests {
    /// A sparse file costs what its data costs: SEEK_DATA (the kernel's
    /// word) decides what is touched; holes are never populated.
    @Test func mapTouchesTheDataOfASparseFileOnly() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("sparse")
        let fd = open(path, O_RDWR | O_CREAT, 0o600)
        try #require(fd >= 0)
        defer { close(fd) }
        guard ftruncate(fd, 1 << 40) == 0 else { try skip("this filesystem holds no 1 TiB sparse file (errno \(errno))") }
        let r0 = try CLI.daxmirror(["map", path, "--json"])
        #expect(r0.status == 0, "\(r0.stderr)")
        let v0 = try #require(try CLI.json(r0)["kernel_view"] as? [String: Any])
        #expect(v0["pages"] as? Int == 1 << 28)
        #expect(v0["touched_pages"] as? Int == 0)
        #expect(v0["present_pages"] as? Int == 0)
        // 3 MiB of data at 5,000 MiB: exactly those pages (by SEEK_DATA/SEEK_HOLE).
        let data = [UInt8](repeating: 0x77, count: 3 << 20)
        #expect(pwrite(fd, data, data.count, off_t(5000) << 20) == data.count)
        var at = lseek(fd, 0, SEEK_DATA), expected = 0
        while at >= 0 {
            let hole = lseek(fd, at, SEEK_HOLE)
            expected += Int(hole - at) / 4096
            at = lseek(fd, hole, SEEK_DATA)
        }
        let r1 = try CLI.daxmirror(["map", path, "--json"])
        let v1 = try #require(try CLI.json(r1)["kernel_view"] as? [String: Any])
        #expect(v1["touched_pages"] as? Int == expected)
        #expect(v1["present_pages"] as? Int == expected)
    }
}

@Suite("edges: a failure is never a measurement", .serialized)
struct FailureNotMeasurementTests {
    /// With few descriptors (stdin closed so the loader can start), caps
    /// and metrics either report what the unlimited run reports about the
    /// kernel, or fail with one line: never "none" or "no" for "could not look".
    @Test func fewDescriptorsGiveTheTruthOrAnError() throws {
        let prlimit = try #require(which("prlimit"))
        let dir = try ScratchDirectory()
        let reference = try CLI.daxmirror(["metrics"])
        let kernelLine = { (text: String) in text.split(separator: "\n").first { $0.hasPrefix("daxmirror_kernel_info{") }.map(String.init) }
        let refKernel = try #require(kernelLine(reference.stdout))
        let refCaps = try CLI.json(try CLI.daxmirror(["caps", "--json"]))
        var outcomes: [String] = []
        // Only the standard streams: whatever else the test runner left open
        // without close-on-exec would count against the limit.
        let only012 = "exec python3 -c 'import os,sys; os.closerange(3, 1 << 16); os.execvp(sys.argv[1], sys.argv[1:])' "
        for n in [3, 4, 5, 6, 8, 12, 16, 18, 19, 24] {
            let m = try bash(only012 + "\(prlimit) --nofile=\(n) \"$D\" metrics <&-", in: dir)
            if m.status == 0 {
                #expect(kernelLine(m.stdout) == refKernel, "nofile \(n): \(kernelLine(m.stdout) ?? "no kernel_info")")
                let procs = m.stdout.split(separator: "\n").first { $0.hasPrefix("daxmirror_scrape_processes ") }
                #expect(procs != nil && procs != "daxmirror_scrape_processes 0.0", "nofile \(n): \(procs ?? "absent")")
            } else {
                #expect(m.stderrLines.count == 1 && m.stdout.isEmpty, "nofile \(n): \(m.stderr)")
            }
            let c = try bash(only012 + "\(prlimit) --nofile=\(n) \"$D\" caps --json <&-", in: dir)
            if c.status == 0 {
                let j = try CLI.json(c)
                #expect((j["features"] as? String) == (refCaps["features"] as? String), "nofile \(n)")
                #expect(!c.stdout.contains("EMFILE"), "nofile \(n): a probe failed for want of descriptors and was reported")
            } else {
                #expect(c.status == 13 && c.stderrLines.count == 1, "nofile \(n): \(c.stderr)")
            }
            outcomes.append("\(n):\(m.status)/\(c.status)")
        }
        print("nofile: metrics/caps exit: " + outcomes.joined(separator: " "))
    }

    /// --wp-probe-dir that cannot run the probe is an error, not a label.
    @Test func aProbeDirectoryThatCannotServeIsAnError() throws {
        let dir = try ScratchDirectory()
        try Data([1]).write(to: URL(fileURLWithPath: dir.file("file")))
        for (path, code) in [(dir.file("missing"), Int32(3)), (dir.file("file"), 4)] {
            let r = try CLI.daxmirror(["metrics", "--wp-probe-dir", path])
            #expect(r.status == code && r.stderrLines.count == 1 && r.stdout.isEmpty, "\(path): \(r.status) \(r.stderr)")
        }
        if DaxEnvironment.directory == nil {
            let r = try CLI.daxmirror(["metrics", "--wp-probe-dir", dir.path])
            #expect(r.status == 10 && r.stdout.isEmpty, "not DAX: \(r.status) \(r.stderr)")
        }
    }
}

extension BoundedMapTests {
    /// inspect of a process with a 1 TiB mapping (an address-space
    /// reservation, as runtimes make): the counts in bounded memory and
    /// time; --pages of it refused with the way out (--range).
    @Test func inspectOfAHugeMappingIsBounded() throws {
        let child = try Spawned("/usr/bin/python3", ["-c", """
            import mmap, sys
            m = mmap.mmap(-1, 1 << 40, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | 0x4000, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            print("mapped", flush=True); sys.stdin.read()
            """], inputPipe: true)
        guard child.waitForOutput(containing: "mapped", timeout: 30) else { try skip("no 1 TiB of address space here: \(child.errorOutput)") }
        let r = try CLI.daxmirror(["inspect", String(child.pid), "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let vmas = try #require(try CLI.json(r)["vmas"] as? [[String: Any]])
        let big = try #require(vmas.first { ($0["size"] as? Int ?? 0) >= 1 << 40 })
        #expect(big["present_pages"] as? Int == 0)
        let pages = try CLI.daxmirror(["inspect", String(child.pid), "--pages"])
        #expect(pages.status == 9 && pages.stderr.contains("--range"), "\(pages.stderr)")
        let start = try #require(big["start"] as? String)
        let from = try #require(UInt64(start.dropFirst(2), radix: 16))
        let narrow = try CLI.daxmirror(["inspect", String(child.pid), "--range",
                                        "\(String(from, radix: 16))-\(String(from + 4096, radix: 16))", "--json"])
        #expect(narrow.status == 0 || narrow.status == 9, "\(narrow.stderr)")
    }
}

@Suite("edges: paths are bytes", .serialized)
struct BytePathTests {
    /// A name that is not UTF-8 reaches the kernel as given: found when it
    /// exists, created as itself (no U+FFFD twin), printed escaped.
    @Test func aNameThatIsNotUTF8IsThatName() throws {
        let dir = try ScratchDirectory()
        let r = try bash("""
            cd "$T" || exit 99
            printf 'abc' > $'old\\xff'
            "$D" map $'old\\xff' >out.txt 2>err.txt; echo "existing=$?"
            grep -c 'old\\\\xff' out.txt
            "$D" map $'new\\xfe\\x80' --create --size 8K >/dev/null; echo "create=$?"
            "$D" map --create --size 8K $'n\\nl' --json | python3 -c 'import json,sys; print("json-path=" + json.load(sys.stdin)["path"])'
            "$D" map $'n\\nl' | head -n 1 | od -c | head -n 1
            mkdir $'dir\\xff' && "$D" caps --dir $'dir\\xff' >/dev/null; echo "caps=$?"
            "$D" metrics --textfile=$'dir\\xff' ; echo "textfile=$?"; test -s $'dir\\xff/daxmirror.prom' && echo prom-written
            printf 'map A file f.dat 8K\\ncpu-write A 0 8K 1\\n' | "$D" run - --dir $'dir\\xff' >/dev/null; echo "run=$?"
            "$D" map $'gone\\xfd'; echo "missing=$?"
            python3 -c 'import mmap,sys,time; f=open(sys.argv[1],"r+b"); m=mmap.mmap(f.fileno(),3); print("up",flush=True); time.sleep(30)' $'old\\xff' > up.txt &
            for i in $(seq 100); do grep -q up up.txt && break; sleep 0.1; done
            echo "inspect-escaped=$("$D" inspect $! | grep -cF 'old\\xff')"; kill $!
            ls | od -An -c | tr -d ' \\n'; echo
            """, in: dir)
        let out = r.stdout
        #expect(out.contains("existing=0"), "\(out) \(r.stderr)")
        #expect(out.contains("create=0"))
        #expect(out.contains("json-path=n\nl"), "JSON carries the name itself: \(out)")
        #expect(out.contains("caps=0") && out.contains("textfile=0") && out.contains("prom-written") && out.contains("run=0"), "\(out) \(r.stderr)")
        #expect(out.contains("missing=3"))
        // A mapped file's name from /proc/PID/maps, escaped, not U+FFFD.
        #expect(out.contains("inspect-escaped=1"), "\(out)")
        #expect(r.stderr.contains("gone\\xfd does not exist"), "\(r.stderr)")
        // The directory holds exactly the byte names given, and no U+FFFD (357 277 275) twin.
        let listing = try #require(out.split(separator: "\n").last.map(String.init))
        #expect(listing.contains("new376200") && listing.contains("old377"), "\(listing)")
        #expect(!listing.contains("357277275"), "a U+FFFD name was created: \(listing)")
        // The text report's first line is the name, escaped: one line.
        #expect(out.contains("n   \\   x   0   a   l  \\n"), "\(out)")
    }
}

@Suite("edges: options act or are refused", .serialized)
struct OptionConsentTests {
    /// An option that would be ignored is refused (usage, 64), and an
    /// existing file is never rewritten or resized without --overwrite.
    @Test func anIgnoredOptionIsRefusedAndNothingChanges() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("existing")
        let old = [UInt8](repeating: 0x11, count: 8192)
        try Data(old).write(to: URL(fileURLWithPath: path))
        for args in [["--exclusive", "--fill", "0x41"], ["--exclusive"], ["--sparse"], ["--overwrite"],
                     ["--create", "--size", "8K", "--exclusive", "--overwrite"], ["--tmpfile", "--size", "8K", "--overwrite"]] {
            let r = try CLI.daxmirror(["map", path] + args)
            #expect(r.status == 64, "\(args): \(r.status) \(r.stderr)")
            #expect(r.stderrLines.count == 1)
            #expect(try fileBytes(path) == old, "\(args) changed the file")
        }
        let fill = try CLI.daxmirror(["map", path, "--fill", "0x41"])
        #expect(fill.status == 6 && fill.stderr.contains("--overwrite"), "\(fill.stderr)")
        #expect(try fileBytes(path) == old)
        let consented = try CLI.daxmirror(["map", path, "--fill", "0x41", "--overwrite"])
        #expect(consented.status == 0, "\(consented.stderr)")
        #expect(try fileBytes(path) == [UInt8](repeating: 0x41, count: 8192))
        let listenOnly = try CLI.daxmirror(["metrics", "--max-connections", "4"])
        #expect(listenOnly.status == 64, "\(listenOnly.stderr)")
        let onceCount = try CLI.daxmirror(["watch", String(getpid()), "--once", "--count", "3"])
        #expect(onceCount.status == 64, "\(onceCount.stderr)")
    }

    /// A scenario never resizes a file it did not create; its relative
    /// files are its own (a private directory under --dir, gone at the end),
    /// so two runs of one scenario with one --dir do not meet.
    @Test func aScenarioOwnsItsFilesAndNoOthers() throws {
        let dir = try ScratchDirectory()
        let theirs = dir.file("theirs")
        try Data([1, 2, 3, 4, 5, 6, 7, 8]).write(to: URL(fileURLWithPath: theirs))
        let resize = try CLI.run(CLI.binary, ["run", "-", "--dir", dir.path], stdin: "map A file \(theirs) 8K\n")
        #expect(resize.status == 1)
        #expect(resize.stdout.contains("EINVAL"), "\(resize.stdout)")
        #expect(try fileBytes(theirs) == [1, 2, 3, 4, 5, 6, 7, 8])
        // Its own file it may map again, larger.
        let own = try CLI.run(CLI.binary, ["run", "-", "--dir", dir.path],
                                    stdin: "map A file mine.dat 8K\ncpu-write A 0 8K 3\nmap B file mine.dat 16K\ncpu-read B 0 8K uniform=0x03\n")
        #expect(own.status == 0, "\(own.stdout) \(own.stderr)")
        // Two runs at once, same scenario, same --dir: both succeed.
        let script = "map A file shared.dat 64K\ncpu-write A 0 64K 9\nmirror A\ndev-read A 0 64K\n"
        let runs = try (0..<2).map { _ in try Spawned(CLI.binary, ["run", "-", "--dir", dir.path], input: Array(script.utf8)) }
        for r in runs { #expect(r.wait(timeout: 60) == 0, "\(r.output) \(r.errorOutput)") }
        // A run ended by SIGTERM removes its private directory too.
        let long = "map A file gone.dat 64K\n" + String(repeating: "cpu-write A 0 64K 1\n", count: 500_000)
        let slow = try Spawned(CLI.binary, ["run", "-", "--dir", dir.path], input: Array(long.utf8))
        defer { slow.kill() }
        #expect(slow.waitForOutput(containing: "\"op\":\"cpu-write\"", timeout: 60))
        slow.signal(SIGTERM)
        let status = slow.wait(timeout: 30)
        #expect(status.map { $0 & 0x7f } == SIGTERM, "status \(String(describing: status))")
        // And nothing of theirs is left behind.
        let left = try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted()
        #expect(left == ["theirs"], "\(left)")
    }
}

@Suite("edges: exit codes by kind of file", .serialized)
struct FileKindExitTests {
    /// Whatever is not a regular file (or device-dax) is 4, one line.
    @Test func everyKindThatIsNotARegularFileIs4() throws {
        let dir = try ScratchDirectory()
        #expect(mkfifo(dir.file("fifo"), 0o600) == 0)
        let sock = socket(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0)
        defer { close(sock) }
        var addr = sockaddr_un()
        addr.sun_family = sa_family_t(AF_UNIX)
        withUnsafeMutableBytes(of: &addr.sun_path) { p in
            let b = Array(dir.file("sock").utf8)
            p.copyBytes(from: b.prefix(p.count - 1))
        }
        let bound = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(sock, $0, socklen_t(MemoryLayout<sockaddr_un>.size)) } }
        try #require(bound == 0)
        var kinds = [dir.file("fifo"), dir.file("sock"), "/dev/zero", "/dev/null", "/proc/self/mem", "/proc/self/maps",
                     "/proc/self/status"]
        if access("/sys/kernel/mm/transparent_hugepage/enabled", R_OK) == 0 { kinds.append("/sys/kernel/mm/transparent_hugepage/enabled") }
        for path in kinds {
            let r = try CLI.daxmirror(["map", path], timeout: 20)
            #expect(r.status == 4, "\(path): \(r.status) \(r.stderr)")
            #expect(r.stderrLines.count == 1 && !r.stderr.contains("--create"), "\(path): \(r.stderr)")
        }
    }

    /// Root that is refused is not told to run as root.
    @Test func rootRefusedIsNotToldToBeRoot() throws {
        guard getuid() == 0 else { try skip("needs root") }
        let r = try CLI.daxmirror(["inspect", "1"])
        guard r.status == 5 else { try skip("PID 1 is readable here") }
        #expect(!r.stderr.contains("or as root"), "\(r.stderr)")
    }
}

@Suite("edges: numbers and addresses read strictly")
struct StrictNumberTests {
    @Test func pidsAndPortsAreDecimal() throws {
        for pid in ["0x10", "+16", "016", " 16", "16 ", "1e3", "1_6", "\u{0663}", ""] {
            let r = try CLI.daxmirror(["inspect", pid])
            #expect(r.status == 9, "inspect '\(pid)': \(r.status) \(r.stderr)")
        }
        for listen in ["0x4a9c", "+19112", "019113", "127.0.0.1:19111:1", "[::1]", "[::1]19111", "::1:19111",
                       "nohost:19111", "127.0.0.1:", "[127.0.0.1]:19111", "127.0.0.1:0", "65536", "1.2.3:80"] {
            let r = try CLI.daxmirror(["metrics", "--listen", listen], timeout: 10)
            #expect(r.status == 9, "--listen '\(listen)': \(r.status) \(r.stderr)")
            #expect(!r.stderr.contains("Error") && !r.stderr.contains("error -"), "library internals: \(r.stderr)")
        }
        for size in [" 5M", "+5M", "5M ", "0x+5", "-5M", "5 M"] {
            let r = try CLI.daxmirror(["map", "/nonexistent-dir/f", "--create", "--size", size])
            #expect(r.status == 9, "--size '\(size)': \(r.status) \(r.stderr)")
        }
        for range in ["+10-20", "10-+20", "10-", "10-20-30", "0x-20"] {
            let r = try CLI.daxmirror(["inspect", String(getpid()), "--range", range])
            #expect(r.status == 9, "--range '\(range)': \(r.status)")
        }
    }
}

@Suite("edges: text output stays inert", .serialized)
struct InertTextTests {
    /// A process named with a newline or a direction override prints one
    /// header line, escaped, in inspect's and watch's text and in JSON.
    @Test(arguments: ["ab\ncd", "ab\u{202E}cd", "ab\tcd"])
    func aNameCannotForgeALine(_ name: String) throws {
        let child = try Spawned("/usr/bin/python3", ["-c", """
            import ctypes, sys
            ctypes.CDLL(None).prctl(15, sys.argv[1].encode()[:15], 0, 0, 0)
            print("named", flush=True); sys.stdin.read()
            """, name], inputPipe: true)
        try #require(child.waitForOutput(containing: "named", timeout: 30))
        let text = try CLI.daxmirror(["inspect", String(child.pid)])
        let first = try #require(text.stdout.split(separator: "\n", omittingEmptySubsequences: false).first)
        #expect(first.hasPrefix("\(child.pid):") && first.contains("ab\\x") || first.contains("ab\\u{202e}cd"), "\(first)")
        #expect(!text.stdout.contains(name), "raw name printed")
        let second = text.stdout.split(separator: "\n").dropFirst().first ?? ""
        #expect(second.hasPrefix("Address"), "the header split: \(second)")
        let json = try CLI.daxmirror(["inspect", String(child.pid), "--json"])
        #expect(!json.stdout.contains(name), "raw name in JSON")
        let watch = try CLI.daxmirror(["watch", String(child.pid), "--once"])
        #expect(!watch.stdout.contains(name), "raw name in watch")
        #expect(String.isDirectionControl("\u{202E}") && "a\u{202E}b\nc".inert == "a\\u{202e}b\\x0ac")
    }
}

extension RunResult {
    /// `status=N` that a script wrote to fd 3 (its stdout, `exec 3>&1`).
    var fd3Status: Int32 {
        let line = stdout.split(separator: "\n").last { $0.hasPrefix("status=") }
        return line.flatMap { Int32($0.dropFirst("status=".count)) } ?? -1
    }
}

/// Scripts/lib.sh's one rule for "is this a DAX mount": the exact option,
/// never a word that merely contains "dax" (`dax=never` is not DAX).
@Suite("scripts: is_dax_mount")
struct ScriptLibraryTests {
    @Test func onlyTheExactOptionIsDAX() throws {
        let dir = try ScratchDirectory()
        let lib = CLI.buildDirectory.appendingPathComponent("../../../Scripts/lib.sh").standardizedFileURL.path
        try FileManager.default.createDirectory(atPath: dir.file("m"), withIntermediateDirectories: false)
        let mountPoint = URL(fileURLWithPath: dir.file("m")).resolvingSymlinksInPath().path
        for (options, dax) in [("rw,dax", true), ("rw,relatime,dax=always", true), ("dax=never", false),
                               ("rw,nodax,relatime", false), ("rw,daxfoo", false), ("rw,dax=inode", false), ("rw", false)] {
            try Data("/dev/pmem0 / ext4 rw 0 0\n/dev/pmem1 \(mountPoint) xfs \(options) 0 0\n".utf8)
                .write(to: URL(fileURLWithPath: dir.file("mounts")))
            let r = try CLI.run("/bin/bash", ["-c", ". \"$1\"; is_dax_mount \"$2\" && echo yes || echo no; dax_label \"$2\"",
                                              "bash", lib, dir.file("m") + "/"], env: ["DAXMIRROR_MOUNTS": dir.file("mounts")])
            #expect(r.stdout == (dax ? "yes\nxfs-DAX\n" : "no\nxfs\n"), "\(options): \(r.stdout) \(r.stderr)")
        }
    }
}

/// Every JSON answer's errno is the one the kernel gave: EFAULT, EPERM,
/// EINVAL, ENOMEM provoked one by one, and "needs CAP_SYS_ADMIN" is EPERM,
/// not a blanket EIO.
@Suite("errno carried to every answer", .serialized)
struct ErrnoVocabularyTests {
    func answers(_ script: String, as program: [String] = []) throws -> [(op: String, errno: String?)] {
        let args = program.isEmpty ? ["run", "-"] : Array(program.dropFirst()) + [CLI.binary, "run", "-"]
        let r = try CLI.run(program.first ?? CLI.binary, args, stdin: script)
        return try r.stdout.split(separator: "\n").map { line in
            let j = try #require(try JSONSerialization.jsonObject(with: Data(line.utf8)) as? [String: Any])
            return (j["op"] as? String ?? "?", j["errno"] as? String)
        }
    }

    @Test func eachErrnoAsTheKernelGaveIt() throws {
        let a = try answers("""
            map A anon 64K
            mirror A
            unmap A 0 4K
            dev-read A 0 4K
            protect A 16K 4K read
            dev-write A 16K 4K 1
            map B anon 0x7f000000000000
            map C anon 5000
            """)
        #expect(a.map(\.errno) == [nil, nil, nil, "EFAULT", nil, "EPERM", "ENOMEM", "EINVAL"], "\(a)")
    }

    @Test func needingCapSysAdminIsEPERM() throws {
        guard getuid() == 0, let setpriv = which("setpriv") else { try skip("needs root and setpriv to become nobody") }
        let a = try answers("map A anon 64K\nmirror A\n", as: [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"])
        #expect(a.last?.op == "mirror" && a.last?.errno == "EPERM", "\(a)")
    }
}
