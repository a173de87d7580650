import CDaxShim
import DaxDetection
import PageTables
import Foundation
import Testing

@Suite("daxmirror CLI")
struct CLITests {
    @Test func capsJSONMatchesKernel() throws {
        let dir = DaxEnvironment.directory ?? NSTemporaryDirectory()
        let r = try CLI.daxmirror(["caps", "--json", "--dir", dir])
        #expect(r.status == 0, "\(r.stderr)")
        let caps = try CLI.json(r)
        let uname = try CLI.run("/bin/uname", ["-r"])
        #expect(caps["kernel_release"] as? String == uname.stdout.trimmingCharacters(in: .whitespacesAndNewlines))

        // The same handshake done directly in C, without our Swift layer.
        let fd = dm_userfaultfd(O_CLOEXEC | O_NONBLOCK)
        try #require(fd >= 0, "userfaultfd(2) failed: errno \(errno)")
        defer { close(fd) }
        var api = uffdio_api(api: DM_UFFD_API, features: 0, ioctls: 0)
        #expect(dm_uffdio_api(fd, &api) == 0)
        // PROCMAP_QUERY as the kernel answers it (6.11+), not as the version says.
        let pq = try #require(caps["procmap_query"] as? [String: Any])
        #expect((pq["result"] as? String == "ok") == VMAQuery.available, "\(pq)")
        let uffd = try #require(caps["userfaultfd"] as? [String: Any])
        #expect((uffd["features"] as? NSNumber)?.uint64Value == api.features)
        let names = try #require(uffd["feature_names"] as? [String])
        #expect(names.count == api.features.nonzeroBitCount)

        // Registration table: anonymous MISSING always works where uffd does;
        // a file refuses MISSING (EINVAL) unless it lives on tmpfs (shmem).
        let reg = try #require(caps["registration"] as? [String: [String: [String: Any]]])
        #expect(reg["anonymous"]?["MISSING"]?["result"] as? String == "ok")
        let fsType = try MountTable.current().entry(containing: realPath(dir) ?? dir)?.fsType
        if fsType == "tmpfs" {
            #expect(reg["file"]?["MISSING"]?["result"] as? String == "ok")
        } else {
            #expect(reg["file"]?["MISSING"]?["errno"] as? String == "EINVAL")
        }
        #expect(reg["anonymous"]?["MINOR"]?["errno"] as? String == "EINVAL")
    }

    @Test func capsTextAndBadDir() throws {
        let r = try CLI.daxmirror(["caps"])
        #expect(r.status == 0)
        #expect(r.stdout.contains("UFFDIO_API features"))
        let bad = try CLI.daxmirror(["caps", "--dir", "/nonexistent-dir"])
        #expect(bad.status == 64)
        #expect(bad.stderrLines.count == 1)
    }

    @Test func devicesOnThisMachine() throws {
        let r = try CLI.daxmirror(["devices", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let inv = try CLI.json(r)
        let buses = try #require(inv["buses"] as? [[String: Any]])
        let daxDevs = try #require(inv["dax_devices"] as? [[String: Any]])
        // The kernel's own list of NVDIMM buses: /sys/bus/nd/devices/ndbusN.
        let sysBuses = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/nd/devices")) ?? [])
            .filter { $0.hasPrefix("ndbus") }
        #expect(buses.count == sysBuses.count)
        let sysDax = ((try? FileManager.default.contentsOfDirectory(atPath: "/sys/bus/dax/devices")) ?? [])
        #expect(daxDevs.count <= sysDax.count)
        if sysBuses.isEmpty { #expect(r.stdout.contains("\"buses\": []")) }
    }

    @Test func mapReportsNotPmemWithReasonOnHost() throws {
        try #require(DaxEnvironment.directory == nil || true)
        let dir = try ScratchDirectory()
        let r = try CLI.daxmirror(["map", dir.file("f"), "--create", "--size", "4M", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r)
        #expect(j["is_pmem"] as? Bool == false)
        #expect((j["reason"] as? String)?.isEmpty == false)
        #expect(j["persist_method"] as? String == "msync")
        #expect(j["map_sync"] as? String == "EOPNOTSUPP")
        let view = try #require(j["kernel_view"] as? [String: Any])
        #expect(view["pages"] as? Int == 1024)
        #expect(view["present_pages"] as? Int == 1024)  // touched by MADV_POPULATE_READ
        let req = try CLI.daxmirror(["map", dir.file("f"), "--require-pmem"])
        #expect(req.status == 10)
        #expect(req.stderrLines.count == 1)
    }

    /// The persist path, checked by the kernel's syscall trace rather than by
    /// what we report: msync on a non-DAX file, none when libpmem is forced.
    @Test func persistGoesThroughMsyncUnlessForced() throws {
        let strace = try #require(which("strace"), "strace is missing: run Scripts/setup.sh")
        let dir = try ScratchDirectory()
        let path = dir.file("f")
        func msyncCalls(_ env: [String: String]) throws -> (Int, [String: Any]) {
            let log = dir.file("trace-\(env.count)")
            let r = try CLI.run(strace, ["-f", "-qq", "-e", "trace=msync", "-o", log, CLI.binary,
                                         "map", path, "--fill", "0xab", "--json"], env: env)
            #expect(r.status == 0, "\(r.stderr)")
            let trace = try String(contentsOfFile: log, encoding: .utf8)
            return (trace.components(separatedBy: "msync(").count - 1, try CLI.json(r))
        }
        #expect(try CLI.daxmirror(["map", path, "--create", "--size", "2M"]).status == 0)
        let (plain, pj) = try msyncCalls([:])
        #expect(plain >= 1)
        #expect(pj["is_pmem"] as? Bool == false)
        let (forced, fj) = try msyncCalls(["PMEM_IS_PMEM_FORCE": "1"])
        #expect(forced == 0)
        #expect(fj["is_pmem"] as? Bool == true)
        #expect(fj["persist_method"] as? String == "cache_flush")
        #expect((fj["reason"] as? String)?.contains("PMEM_IS_PMEM_FORCE") == true)
        #expect(try fileBytes(path).allSatisfy { $0 == 0xab })
    }

    /// Each bad input: one line on stderr, its own exit code, nothing touched.
    @Test func badInputGivesOneLineAndDistinctCode() throws {
        let dir = try ScratchDirectory()
        let existing = dir.file("existing")
        try Data(repeating: 0x11, count: 8192).write(to: URL(fileURLWithPath: existing))
        let target = dir.file("target")
        try Data([42]).write(to: URL(fileURLWithPath: target))
        symlink(target, dir.file("link"))
        let locked = dir.file("locked")
        try Data(repeating: 0, count: 4096).write(to: URL(fileURLWithPath: locked))
        chmod(locked, 0)

        var cases: [(String, [String], Int32)] = [
            ("missing path", ["map", dir.file("nope")], 3),
            ("a directory", ["map", dir.path], 4),
            ("--size 0", ["map", dir.file("new"), "--create", "--size", "0"], 64),
            ("unparsable size", ["map", dir.file("new"), "--create", "--size", "lots"], 64),
            ("larger than free space", ["map", dir.file("new"), "--create", "--size", "900T"], 8),
            ("exists without consent", ["map", existing, "--create", "--size", "4096"], 6),
            ("symlink for creation", ["map", dir.file("link"), "--create", "--size", "4096", "--overwrite"], 7),
        ]
        if getuid() == 0, let setpriv = which("setpriv") {
            // root ignores file modes: drop to nobody to meet a real EACCES.
            chmod(dir.path, 0o755)
            cases.append(("no permission", [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
                                            CLI.binary, "map", locked], 5))
        } else if getuid() != 0 {
            cases.append(("no permission", ["map", locked], 5))
        }
        var codes: [Int32: String] = [:]
        for (name, args, code) in cases {
            let r = args.first?.hasPrefix("/") == true
                ? try CLI.run(args[0], Array(args.dropFirst())) : try CLI.daxmirror(args)
            #expect(r.status == code, "\(name): exit \(r.status), stderr \(r.stderr)")
            #expect(r.stderrLines.count == 1, "\(name): \(r.stderr)")
            #expect(r.stderr.hasPrefix("daxmirror: "), "\(name)")
            #expect(r.stdout.isEmpty, "\(name)")
            if code != 64 { codes[code] = codes[code] ?? name }
        }
        #expect(Set(cases.map(\.2)).count == codes.count + 1)  // every non-usage cause has its own code
        #expect(try fileBytes(existing) == [UInt8](repeating: 0x11, count: 8192))
        #expect(try fileBytes(target) == [42])
        #expect(access(dir.file("new"), F_OK) != 0)
        #expect(access(dir.file("nope"), F_OK) != 0)
    }

    /// A failure after `map --create` leaves no file: a --fill that cannot
    /// get its blocks (a 1 MiB tmpfs, a 2 MiB sparse file: was SIGBUS and a
    /// 2 MiB file filling the filesystem) is exit 8, a --require-pmem refusal
    /// exit 10, and the directory is empty after both.
    @Test(.enabled(if: getuid() == 0, "needs root to mount a small tmpfs"))
    func aFailedCreateLeavesNoFile() throws {
        let dir = try ScratchDirectory()
        try #require(mount("tmpfs", dir.path, "tmpfs", 0, "size=1M") == 0, "mount: errno \(errno)")
        defer { umount(dir.path) }
        let full = try CLI.daxmirror(["map", dir.file("f"), "--create", "--sparse", "--size", "2M", "--fill", "0xab"])
        #expect(full.status == 8, "\(full.stderr)")
        let refused = try CLI.daxmirror(["map", dir.file("g"), "--create", "--size", "64K", "--require-pmem"])
        #expect(refused.status == 10, "\(refused.stderr)")
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).isEmpty)
        #expect(full.stderr.split(separator: "\n").count == 1 && refused.stderr.split(separator: "\n").count == 1)
    }
}
