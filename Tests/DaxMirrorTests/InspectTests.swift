import Foundation
import Testing
import DaxCore

/// `daxmirror inspect` against a process it did not create: a small Python
/// program maps anonymous memory and a shared file (on the DAX mount in the
/// guest), touches a known set of pages, and waits.
@Suite("inspect (another process)", .serialized)
struct InspectTests {
    static let program = #"""
import ctypes, mmap, os, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.mmap.restype = ctypes.c_void_p
libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
P, MB2 = 4096, 2 << 20
def aligned(size):  # a 2 MiB-aligned window for a PMD-mappable file mapping
    r = libc.mmap(None, size + MB2, 0, 0x22 | 0x4000, -1, 0)
    return (r + MB2 - 1) & ~(MB2 - 1)
anon = libc.mmap(None, 64 * P, 3, 0x22, -1, 0)               # PROT_READ|WRITE, MAP_PRIVATE|ANONYMOUS
for i in range(0, 64, 4): ctypes.memset(anon + i * P, 1, 1)   # 16 pages written
path = sys.argv[1]
fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
os.ftruncate(fd, 8 * MB2)
at = aligned(8 * MB2)
f = libc.mmap(at, 8 * MB2, 3, 0x01 | 0x10, fd, 0)            # MAP_SHARED|MAP_FIXED
for i in range(10): ctypes.memset(f + i * P, 2, 1)           # 10 pages in chunk 0
ctypes.memset(f + 3 * MB2 + 5 * P, 3, 1)                     # and one in chunk 3
print(os.getpid(), hex(anon), hex(f), flush=True)
sys.stdin.read()
"""#

    /// The program, started; it waits for its stdin to close.
    final class Child {
        let process: Spawned
        let pid: Int32, anon: UInt64, file: UInt64
        init(path: String) throws {
            process = try Spawned("/usr/bin/python3", ["-c", InspectTests.program, path], inputPipe: true)
            guard process.waitForOutput(containing: "\n", timeout: 60) else {
                throw POSIXError(.EIO, userInfo: [NSLocalizedDescriptionKey: "the program did not start: \(process.errorOutput)"])
            }
            let f = process.output.split(separator: " ").map { $0.trimmingCharacters(in: .whitespacesAndNewlines) }
            guard f.count == 3, let p = Int32(f[0]), let a = UInt64(f[1].dropFirst(2), radix: 16),
                  let m = UInt64(f[2].dropFirst(2), radix: 16) else { throw POSIXError(.EIO) }
            (pid, anon, file) = (p, a, m)
        }
        deinit {
            process.closeInput()
            process.wait(timeout: 30)
        }
    }

    static func smapsRss(pid: Int32, start: UInt64) throws -> UInt64 {
        let text = try readTextFile("/proc/\(pid)/smaps")  // (Foundation reads /proc files as empty)
        var inside = false
        for line in text.split(separator: "\n") {
            if let dash = line.firstIndex(of: "-"), let s = UInt64(line[..<dash], radix: 16), line.contains(" ") && !line.hasPrefix("Rss") {
                inside = s == start
            } else if inside && line.hasPrefix("Rss:") {
                return UInt64(line.split(separator: " ")[1])! * 1024
            }
        }
        throw POSIXError(.ENOENT)
    }

    @Test func reportsExactlyThePagesTheProgramTouched() throws {
        let dir = try ScratchDirectory(base: DaxEnvironment.directory ?? NSTemporaryDirectory())
        let child = try Child(path: dir.file("mapped.dat"))
        let r = try CLI.daxmirror(["inspect", String(child.pid), "--json"])
        try #require(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r)
        let vmas = try #require(j["vmas"] as? [[String: Any]])
        let anon = try #require(vmas.first { $0["start"] as? String == "0x" + String(child.anon, radix: 16) })
        let file = try #require(vmas.first { $0["start"] as? String == "0x" + String(child.file, radix: 16) })
        #expect(anon["present_pages"] as? Int == 16)
        #expect(anon["rss"] as? Int == Int(try Self.smapsRss(pid: child.pid, start: child.anon)))
        #expect(file["rss"] as? Int == Int(try Self.smapsRss(pid: child.pid, start: child.file)))
        if j["soft_dirty"] as? Bool == true {
            #expect(anon["written_pages"] as? Int == 16)
        }
        if let dax = DaxEnvironment.directory {
            _ = dax
            #expect(file["dax"] as? Bool == true)
            #expect(file["namespace"] as? String == "namespace0.0")
            // ext4 on a fresh filesystem maps a written sparse 2 MiB chunk with one PMD.
            if j["pagemap_scan"] as? Bool == false {
                // Without PAGEMAP_SCAN (6.1) nothing shows a DAX PMD: unknown, not 0.
                #expect(file["pmd"] is NSNull, "\(file)")
            } else if file["filesystem"] as? String == "ext4" {
                #expect(file["pmd"] as? Int == 2, "\(file)")
                #expect(file["present_pages"] as? Int == 1024, "\(file)")
            }
        } else {
            #expect(file["dax"] as? Bool == false)
            #expect(file["present_pages"] as? Int == 11)
        }
        // --pages: the anonymous VMA's snapshot codes are WRITE exactly on the
        // 16 pages the program wrote (private, exclusive), NONE elsewhere.
        if getuid() == 0 {
            let p = try CLI.json(try CLI.daxmirror(["inspect", String(child.pid), "--json", "--pages",
                                                     "--range", String(child.anon, radix: 16) + "-" + String(child.anon + 64 * 4096, radix: 16)]))
            let only = try #require((p["vmas"] as? [[String: Any]])?.first { $0["start"] as? String == "0x" + String(child.anon, radix: 16) })
            let expected = (0..<16).map { _ in "02*1,00*3" }.joined(separator: ",")
            #expect(only["codes"] as? String == expected, "\(only["codes"] ?? "-")")
            let t = try CLI.daxmirror(["inspect", String(child.pid), "--pages", "--range", String(child.anon, radix: 16) + "-" + String(child.anon + 4096, radix: 16)])
            #expect(t.stdout.contains(String(repeating: "w...", count: 16)), "\(t.stdout)")
        }
        // The human table has the same rows.
        let t = try CLI.daxmirror(["inspect", String(child.pid)])
        #expect(t.status == 0 && t.stdout.contains(String(child.file, radix: 16)) && t.stdout.contains("total ("))
    }

    /// A kernel thread is "no user memory" (exit 0, no mappings), not a
    /// process that exited; a zombie has exited (12), said as such.
    @Test func kernelThreadsAndZombiesAreNamedForWhatTheyAre() throws {
        let kthreadd = try CLI.daxmirror(["inspect", "2", "--json"])  // PID 2 is kthreadd on Linux
        let j = try CLI.json(kthreadd)
        #expect(kthreadd.status == 0 && j["kernel_thread"] as? Bool == true && (j["vmas"] as? [Any])?.isEmpty == true, "\(kthreadd.stderr)")
        let text = try CLI.daxmirror(["inspect", "2"])
        #expect(text.status == 0 && text.stdout.contains("kernel thread"), "\(text.stdout)")
        let zombie = try ZombieProcess()
        let z = try CLI.daxmirror(["inspect", String(zombie.pid)])
        #expect(z.status == 12 && z.stderr.contains("zombie"), "\(z.stderr)")
    }

    /// A process may name itself with terminal escapes; the text output
    /// shows them as \x1b, never sends them.
    @Test func controlCharactersInNamesAreEscaped() throws {
        let dir = try ScratchDirectory()
        let evil = dir.file("ev\u{1b}[2Jil")
        #expect(symlink("/bin/sleep", evil) == 0)
        let sleeper = try Spawned(evil, ["30"])
        let pid = sleeper.pid
        let named = Date().addingTimeInterval(30)  // the exec has happened once comm is the link's name
        while !((try? readTextFile("/proc/\(pid)/comm")) ?? "").hasPrefix("ev") && Date() < named { usleep(10_000) }
        for args in [["inspect", String(pid)], ["watch", String(pid), "--once"]] {
            let r = try CLI.daxmirror(args)
            #expect(r.status == 0, "\(args): \(r.stderr)")
            #expect(!r.stdout.unicodeScalars.contains { $0.value == 0x1b }, "\(args): an escape reached the output")
            #expect(r.stdout.contains("ev\\x1b[2Jil"), "\(args): \(r.stdout.prefix(200))")
        }
    }

    @Test func badInputIsOneLineWithADistinctCode() throws {
        let gone = try CLI.daxmirror(["inspect", "999999"])
        #expect(gone.status == 3 && gone.stderrLines.count == 1, "\(gone.stderr)")
        let garbage = try CLI.daxmirror(["inspect", "1", "--range", "nothex"])
        #expect(garbage.status == 9 && garbage.stderrLines.count == 1)
        let outside = try CLI.daxmirror(["inspect", String(getpid()), "--range", "10-20"])
        #expect(outside.status == 9 && outside.stderrLines.count == 1, "\(outside.stderr)")
        if getuid() == 0, which("setpriv") != nil {
            let denied = try CLI.run("/usr/bin/setpriv", ["--reuid=65534", "--regid=65534", "--clear-groups", CLI.binary, "inspect", "1"])
            #expect(denied.status == 5 && denied.stderrLines.count == 1, "\(denied.status) \(denied.stderr)")
            #expect(denied.stderr.contains("permission denied"))
        }
    }

    /// A process that exits around the inspection: the answer is a complete
    /// table (it was still there), "no process" (3) or "exited while being
    /// inspected" (12) — never another code, never a traceback.
    /// Whether process `pid` has a pidfd open (readlink of its fds).
    static func holdsPidfd(_ pid: pid_t) -> Bool {
        let dir = "/proc/\(pid)/fd"
        let fds = (try? FileManager.default.contentsOfDirectory(atPath: dir)) ?? []
        return fds.contains { (try? FileManager.default.destinationOfSymbolicLink(atPath: dir + "/" + $0)) == "anon_inode:[pidfd]" }
    }

    /// A process killed while inspect reads it (30,000 VMAs: the reading
    /// takes long enough to be cut) is exit 12 with one line, never a table.
    @Test func aProcessExitingDuringInspectionIsReportedNotHalfPrinted() throws {
        var seen: [Int32] = []
        for _ in 0..<5 {
            let p = try Spawned("/usr/bin/python3", ["-c", """
                import ctypes, mmap, sys
                libc = ctypes.CDLL(None, use_errno=True)
                libc.mmap.restype = ctypes.c_void_p
                libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
                n, page = 60000, mmap.PAGESIZE
                base = libc.mmap(None, n * page, 3, 0x22, -1, 0)
                for i in range(0, n, 2): libc.mprotect(ctypes.c_void_p(base + i * page), page, 1)
                print("ready", flush=True); sys.stdin.read()
                """], inputPipe: true)
            try #require(p.waitForOutput(containing: "ready", timeout: 60), "\(p.errorOutput)")
            let inspect = try Spawned(CLI.binary, ["inspect", String(p.pid), "--json"])
            // Killed once inspect holds the process's pidfd (it does from its
            // first look to its last), not after a guess at how long it
            // takes to start (under emulation it took longer than 0.1 s).
            let holding = Date().addingTimeInterval(60)
            while Date() < holding && !Self.holdsPidfd(inspect.pid) && inspect.isRunning { usleep(1000) }
            p.kill()
            let status = try #require(inspect.wait(timeout: 120))
            seen.append(status)
            #expect(status == 0 || status == 12, "\(status): \(inspect.errorOutput)")
            if status == 12 {
                #expect(inspect.output.isEmpty && inspect.errorOutput.split(separator: "\n").count == 1, "\(inspect.errorOutput)")
                break
            }
        }
        // 0 only where inspect finished its 30,000 VMAs before the kill, every time.
        #expect(seen.contains(12), "never cut mid-read: exit codes \(seen)")
        print("inspect of a process killed mid-read: exit codes \(seen)")
    }
}

@Suite("watch (another process)", .serialized)
struct WatchTests {
    @Test func onceJSONHasTheSameCountsAsInspect() throws {
        let dir = try ScratchDirectory(base: DaxEnvironment.directory ?? NSTemporaryDirectory())
        let child = try InspectTests.Child(path: dir.file("watched.dat"))
        let w = try CLI.daxmirror(["watch", String(child.pid), "--once", "--json"])
        let i = try CLI.daxmirror(["inspect", String(child.pid), "--json"])
        #expect(w.status == 0 && i.status == 0, "\(w.stderr) \(i.stderr)")
        let wt = try #require(try CLI.json(w)["totals"] as? [String: Any])
        let it = try #require(try CLI.json(i)["totals"] as? [String: Any])
        for key in ["vmas", "present_pages", "pmd", "pud"] {
            #expect(wt[key] as? Int == it[key] as? Int, "\(key): watch \(wt[key] ?? "-"), inspect \(it[key] ?? "-")")
        }
    }

    @Test func onAPipeItPrintsLinesAndStopsOnSIGINT() throws {
        let p = try Spawned(CLI.binary, ["watch", String(getpid()), "--interval", "100"])
        // SIGINT once three samples are out (a guest under emulation starts slowly).
        let started = Date().addingTimeInterval(60)
        while p.output.components(separatedBy: "daxmirror watch").count < 4 && Date() < started && p.isRunning { usleep(50_000) }
        p.signal(SIGINT)
        let status = p.wait(timeout: 5)
        #expect(status == 0, "watch did not stop cleanly on SIGINT: \(status.map(String.init) ?? "still running")")
        let text = p.output
        #expect(!text.contains("\u{1b}["), "no terminal control sequences on a pipe")
        #expect(text.components(separatedBy: "daxmirror watch").count - 1 >= 3, "several samples printed")
    }

    /// In a terminal (tmux): the view is redrawn in place, not scrolled, and
    /// Ctrl-C leaves the cursor visible and the shell usable.
    @Test(.enabled(if: which("tmux") != nil, "tmux is not installed (Scripts/setup.sh installs it)"))
    func inATerminalItRedrawsAndCtrlCLeavesItClean() throws {
        let session = "dmwatch\(getpid())"
        // Through sh, output to a file: the tmux server daemonizes from the
        // client and must not hold the runner's descriptors.
        func tmux(_ args: [String]) throws -> RunResult {
            let quoted = args.map { "'" + $0.replacingOccurrences(of: "'", with: "'\\''") + "'" }.joined(separator: " ")
            return try CLI.run("/bin/sh", ["-c", "tmux \(quoted) </dev/null 2>&1"])
        }
        _ = try tmux(["new-session", "-d", "-s", session, "-x", "160", "-y", "50",
                      "\(CLI.binary) watch \(getpid()) --interval 100; echo WATCH-EXIT=$?; sleep 30"])
        defer { _ = try? tmux(["kill-session", "-t", session]) }
        // Wait for the view, then let it redraw a few times.
        let shown = Date().addingTimeInterval(60)
        while try !tmux(["capture-pane", "-p", "-t", session]).stdout.contains("daxmirror watch") && Date() < shown { usleep(100_000) }
        // Until it has redrawn: the screen differs from the first view seen
        // (its rates and counts move every 100 ms sample), at most 10 s.
        let first = try tmux(["capture-pane", "-p", "-t", session]).stdout
        var screen1 = first
        let redrawn = Date().addingTimeInterval(10)
        while screen1 == first && Date() < redrawn {
            usleep(100_000)
            screen1 = try tmux(["capture-pane", "-p", "-t", session]).stdout
        }
        let history = try tmux(["display-message", "-p", "-t", session, "#{history_size}"]).stdout
        #expect(screen1.components(separatedBy: "daxmirror watch").count - 1 == 1, "one view on screen:\n\(screen1)")
        #expect(history.trimmingCharacters(in: .whitespacesAndNewlines) == "0", "the view scrolled: history \(history)")
        _ = try tmux(["send-keys", "-t", session, "C-c"])
        let exited = Date().addingTimeInterval(30)
        var screen2 = ""
        repeat {
            usleep(100_000)
            screen2 = try tmux(["capture-pane", "-p", "-t", session]).stdout
        } while !screen2.contains("WATCH-EXIT=") && Date() < exited
        #expect(screen2.contains("WATCH-EXIT=0"), "\(screen2)")
        let cursor = try tmux(["display-message", "-p", "-t", session, "#{cursor_flag}"]).stdout
        #expect(cursor.trimmingCharacters(in: .whitespacesAndNewlines) == "1", "cursor left hidden")
    }
}
