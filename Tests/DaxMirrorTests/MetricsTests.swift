import Foundation
import Testing
import DaxCore

/// `daxmirror metrics`: the exposition checked by Prometheus's own promtool,
/// its numbers against the kernel's truth (a process's pagemap through
/// `inspect`, /sys/bus/nd), the textfile written atomically, and the HTTP
/// server under concurrent scrapes and bad addresses.
@Suite("metrics (Prometheus)", .serialized)
struct MetricsTests {
    /// Sample lines of `family` as (labels, value).
    static func samples(_ text: String, _ family: String) -> [(labels: String, value: Double)] {
        text.split(separator: "\n").compactMap { line in
            guard line.hasPrefix(family + "{") || line.hasPrefix(family + " ") else { return nil }
            let parts = line.split(separator: " ")
            guard let v = parts.last.flatMap({ Double($0) }) else { return nil }
            return (String(line.dropLast(parts.last!.count + 1)), v)
        }
    }

    @Test func promtoolAcceptsTheExposition() throws {
        let promtool = try #require(which("promtool"), "promtool is missing: Scripts/setup.sh installs Debian's prometheus")
        let r = try CLI.daxmirror(["metrics"])
        #expect(r.status == 0, "\(r.stderr)")
        let check = try CLI.run(promtool, ["check", "metrics"], stdin: r.stdout)
        #expect(check.status == 0, "promtool: \(check.stdout) \(check.stderr)")
        for family in ["daxmirror_kernel_info", "daxmirror_scrape_duration_seconds", "daxmirror_scrape_errors_total"] {
            #expect(r.stdout.contains("# HELP \(family) ") && r.stdout.contains("# TYPE \(family) "), "\(family)")
        }
        let release = try #require(Self.samples(r.stdout, "daxmirror_kernel_info").first)
        #expect(release.labels.contains("release=\"\(Syscall.kernelRelease)\""), "\(release.labels)")
        // Namespaces: exactly those the kernel lists (fsdax/devdax/raw namespaces under /sys/bus/nd).
        let sys = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/nd/devices")) ?? [])
            .filter { $0.hasPrefix("namespace") && ((try? readTextFile("/sys/bus/nd/devices/\($0)/size")).flatMap { UInt64($0.trimmingSpaces()) } ?? 0) > 0 }
        #expect(Self.samples(r.stdout, "daxmirror_namespace_size_bytes").count == sys.count, "\(sys)")
    }

    /// `--version` and daxmirror_build_info name the commit git says the
    /// tree is at ("-dirty" with uncommitted changes; "unknown" outside git).
    @Test func theBuildIsNamedAsGitNamesIt() throws {
        let root = URL(fileURLWithPath: #filePath).deletingLastPathComponent().appendingPathComponent("../..").standardized.path
        var want = "unknown"
        if let git = which("git"), case let head = try CLI.run(git, ["-C", root, "rev-parse", "--short=12", "HEAD"]), head.status == 0 {
            want = head.stdout.trimmingSpaces()
            let status = try CLI.run(git, ["-C", root, "status", "--porcelain", "--untracked-files=no"])
            if !status.stdout.trimmingSpaces().isEmpty { want += "-dirty" }
        }
        let version = try CLI.daxmirror(["--version"])
        #expect(version.status == 0)
        #expect(version.stdout.hasPrefix("daxmirror ") && version.stdout.hasSuffix(" (commit \(want))\n"), "\(version.stdout) vs git: \(want)")
        let number = version.stdout.split(separator: " ")[1]
        let r = try CLI.daxmirror(["metrics"])
        let info = try #require(Self.samples(r.stdout, "daxmirror_build_info").first)
        #expect(info.labels == "daxmirror_build_info{version=\"\(number)\",commit=\"\(want)\"}" && info.value == 1, "\(info)")
    }

    /// A process mapping a DAX file (in the guest): its mapped, present and
    /// PMD-mapped bytes are what its own pagemap says (through `inspect`).
    @Test(.enabled(if: DaxEnvironment.directory != nil, Comment(rawValue: DaxEnvironment.skipMessage)))
    func aProcessMappingDAXIsCountedAsItsPagemapSays() throws {
        let dir = try ScratchDirectory(base: DaxEnvironment.directory!)
        let child = try InspectTests.Child(path: dir.file("metrics.dat"))
        let m = try CLI.daxmirror(["metrics"])
        let i = try CLI.json(try CLI.daxmirror(["inspect", String(child.pid), "--json"]))
        let vma = try #require((i["vmas"] as? [[String: Any]])?.first { ($0["path"] as? String)?.hasSuffix("metrics.dat") == true })
        let mine = { (family: String) in Self.samples(m.stdout, family).first { $0.labels.contains("pid=\"\(child.pid)\"") }?.value }
        #expect(mine("daxmirror_process_mapped_bytes") == Double(vma["size"] as? Int ?? -1))
        #expect(mine("daxmirror_process_present_bytes") == Double((vma["present_pages"] as? Int ?? -1) * 4096))
        if let pmd = vma["pmd"] as? Int {
            #expect(mine("daxmirror_process_pmd_mapped_bytes") == Double(pmd * (2 << 20)), "inspect: \(pmd) PMDs")
        } else {
            #expect(mine("daxmirror_process_pmd_mapped_bytes") == nil, "no PAGEMAP_SCAN: the family is absent, not zero")
        }
    }

    @Test func theTextfileIsWrittenWholeOrNotAtAll() throws {
        let dir = try ScratchDirectory()
        let r = try CLI.daxmirror(["metrics", "--textfile", dir.path])
        #expect(r.status == 0 && r.stdout.isEmpty, "\(r.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path) == ["daxmirror.prom"], "a temporary file was left")
        #expect(try readTextFile(dir.file("daxmirror.prom")).contains("# TYPE daxmirror_kernel_info gauge"))
        let missing = try CLI.daxmirror(["metrics", "--textfile", dir.file("nope")])
        #expect(missing.status == 3 && missing.stderrLines.count == 1, "\(missing.stderr)")
        if getuid() == 0, let setpriv = which("setpriv") {
            chmod(dir.path, 0o755)
            let denied = try CLI.run(setpriv, ["--reuid=65534", "--regid=65534", "--clear-groups", CLI.binary, "metrics", "--textfile", dir.path])
            #expect(denied.status == 5 && denied.stderrLines.count == 1, "\(denied.status) \(denied.stderr)")
        }
    }

    /// The server: concurrent scrapes all answered (one scrape at a time, the
    /// same answer to those that came together), other paths and methods
    /// refused, and a port in use or out of range one line with its code.
    @Test func theServerAnswersConcurrentScrapesAndRefusesBadAddresses() throws {
        let curl = try #require(which("curl"), "curl is missing")
        var server: Spawned?
        var port = 0
        for attempt in 0..<5 {  // a free port among a few
            port = 20000 + Int(getpid() % 20000) + attempt
            let s = try Spawned(CLI.binary, ["metrics", "--listen", "127.0.0.1:\(port)"])
            let deadline = Date().addingTimeInterval(30)
            while s.isRunning && !s.errorOutput.contains("serving") && Date() < deadline { usleep(20_000) }
            if s.errorOutput.contains("serving") { server = s; break }
            s.kill()
        }
        let running = try #require(server, "no port to listen on")
        defer { running.kill() }
        #expect(running.errorOutput.contains("http://127.0.0.1:\(port)/metrics"))
        let url = "http://127.0.0.1:\(port)/metrics"
        let many = try CLI.run("/bin/sh", ["-c", "for i in $(seq 16); do '\(curl)' -s -o /dev/null -w '%{http_code}\\n' --max-time 20 '\(url)' & done; wait"])
        let codes = many.stdout.split(separator: "\n")
        #expect(codes.count == 16 && codes.allSatisfy { $0 == "200" }, "\(many.stdout)")
        let body = try CLI.run(curl, ["-s", "--max-time", "20", url])
        #expect(body.stdout.contains("# TYPE daxmirror_scrape_duration_seconds gauge"))
        #expect(try CLI.run(curl, ["-s", "-o", "/dev/null", "-w", "%{http_code}", "http://127.0.0.1:\(port)/other"]).stdout == "404")
        #expect(try CLI.run(curl, ["-s", "-X", "POST", "-o", "/dev/null", "-w", "%{http_code}", url]).stdout == "405")
        let busy = try CLI.daxmirror(["metrics", "--listen", "127.0.0.1:\(port)"])
        #expect(busy.status == 15 && busy.stderrLines.count == 1 && busy.stderr.contains("in use"), "\(busy.stderr)")
        #expect(running.isRunning, "the server keeps serving")
        let bad = try CLI.daxmirror(["metrics", "--listen", "70000"])
        #expect(bad.status == 9 && bad.stderrLines.count == 1, "\(bad.stderr)")
    }
}
