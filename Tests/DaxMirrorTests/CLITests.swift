import DaxCore
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
        #expect(bad.status == 3)
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
        let dir = try ScratchDirectory()
        let r = try CLI.daxmirror(["map", dir.file("f"), "--create", "--size", "4M", "--fill", "1", "--json"])
        #expect(r.status == 0, "\(r.stderr)")
        let j = try CLI.json(r)
        #expect(j["is_pmem"] as? Bool == false)
        #expect((j["reason"] as? String)?.isEmpty == false)
        #expect(j["persist_method"] as? String == "msync")
        #expect(j["map_sync"] as? String == "EOPNOTSUPP")
        let view = try #require(j["kernel_view"] as? [String: Any])
        #expect(view["pages"] as? Int == 1024)
        #expect(view["present_pages"] as? Int == 1024)  // every page written by --fill
        #expect(view["touched_pages"] as? Int == 1024)
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
                                         "map", path, "--fill", "0xab", "--overwrite", "--json"], env: env)
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
            ("--size 0", ["map", dir.file("new"), "--create", "--size", "0"], 9),
            ("unparsable size", ["map", dir.file("new"), "--create", "--size", "lots"], 9),
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
        for (name, args, code) in cases {
            let r = args.first?.hasPrefix("/") == true
                ? try CLI.run(args[0], Array(args.dropFirst())) : try CLI.daxmirror(args)
            #expect(r.status == code, "\(name): exit \(r.status), stderr \(r.stderr)")
            #expect(r.stderrLines.count == 1, "\(name): \(r.stderr)")
            #expect(r.stderr.hasPrefix("daxmirror: "), "\(name)")
            #expect(r.stdout.isEmpty, "\(name)")
        }
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

/// `--overwrite` touches nothing before every check has passed, and one
/// process at a time creates or overwrites a file.
@Suite("map --overwrite", .serialized)
struct OverwriteTests {
    /// A file of 8 KiB of 0x11: what must still be there after each refusal.
    func existingFile(_ dir: ScratchDirectory) throws -> String {
        let path = dir.file("existing")
        try Data(repeating: 0x11, count: 8192).write(to: URL(fileURLWithPath: path))
        return path
    }

    @Test func aRefusedOverwriteLeavesTheFileAsItWas() throws {
        let dir = try ScratchDirectory()
        let path = try existingFile(dir)
        // Not persistent memory (a host or guest /tmp): refused before the truncate.
        let pmem = try CLI.daxmirror(["map", path, "--create", "--overwrite", "--size", "64K", "--require-pmem"])
        #expect(pmem.status == 10 && pmem.stderrLines.count == 1, "\(pmem.stderr)")
        #expect(pmem.stderr.contains("left as it was"), "\(pmem.stderr)")
        #expect(try fileBytes(path) == [UInt8](repeating: 0x11, count: 8192))
        // Past the filesystem's largest file (ext4: 16 TiB), --sparse so no
        // space check comes first: refused before the truncate.
        var sf = statfs()
        if statfs(dir.path, &sf) == 0 && sf.f_type == 0xEF53 {
            let big = try CLI.daxmirror(["map", path, "--create", "--overwrite", "--sparse", "--size", "32T"])
            #expect(big.status == 9 && big.stderr.contains("largest file"), "\(big.stderr)")
            #expect(try fileBytes(path) == [UInt8](repeating: 0x11, count: 8192))
        }
    }

    @Test func aSecondOverwriteOfTheSameFileIsRefusedWhileTheFirstHoldsIt() throws {
        let dir = try ScratchDirectory()
        let path = try existingFile(dir)
        // The first: a persist-writer that holds its mapping (and the lock) after writing.
        let holder = try Spawned(CLI.binary, ["persist-writer", path, "--overwrite", "--records", "2", "--record-size", "4096", "--hold"])
        defer { holder.kill() }
        try #require(holder.waitForOutput(containing: "done", timeout: 30), "the first writer did not finish: \(holder.output)")
        let written = try fileBytes(path)
        let second = try CLI.daxmirror(["map", path, "--create", "--overwrite", "--size", "64K", "--fill", "0x22"])
        #expect(second.status == 15 && second.stderrLines.count == 1 && second.stderr.contains("another process"), "\(second.stderr)")
        #expect(try fileBytes(path) == written, "the second overwrite touched the file")
        holder.kill()
        let third = try CLI.daxmirror(["map", path, "--create", "--overwrite", "--size", "64K", "--fill", "0x22"])
        #expect(third.status == 0, "after the first let go: \(third.stderr)")
    }

    /// SIGINT arriving during --fill (here pending from the start, so the
    /// timing is certain): the created file is removed, and the process dies
    /// of the signal.
    @Test func aSignalDuringFillRemovesTheCreatedFile() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("filled")
        let script = """
            import os, signal, sys
            signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGINT])
            os.kill(os.getpid(), signal.SIGINT)
            os.execv(sys.argv[1], sys.argv[1:])
            """
        let r = try CLI.run("/usr/bin/env", ["python3", "-c", script, CLI.binary, "map", path, "--create", "--size", "64M", "--fill", "0xab"])
        #expect(r.status == 128 + SIGINT, "exit \(r.status): \(r.stderr)")
        #expect(r.stderr.contains("removed"), "\(r.stderr)")
        #expect(access(path, F_OK) != 0, "the file is still there")
    }
}

/// The README's exit-code table, walked: every code it lists is produced by
/// the cause it names (one line on stderr where it is a failure), and the
/// table lists exactly the codes the program has.
@Suite("exit codes")
struct ExitCodeTableTests {
    /// (code, cause) pairs of the README's table.
    static func readmeTable() throws -> [(Int32, String)] {
        let readme = try readTextFile(CLI.buildDirectory.appendingPathComponent("../../../README.md").standardizedFileURL.path)
        let start = try #require(readme.range(of: "| code | cause | code | cause |"))
        var rows: [(Int32, String)] = []
        for line in readme[start.upperBound...].split(separator: "\n").dropFirst(1) {
            guard line.hasPrefix("|") else { break }
            let cells = line.split(separator: "|", omittingEmptySubsequences: false).map { $0.trimmingCharacters(in: .whitespaces) }
            for i in stride(from: 1, to: cells.count - 1, by: 2) {
                if let code = Int32(cells[i]) { rows.append((code, cells[i + 1])) }
            }
        }
        return rows
    }

    @Test func theTableListsTheProgramsCodes() throws {
        let listed = Set(try Self.readmeTable().map(\.0))
        #expect(listed == Set(DaxCore.ExitCause.allCases.map(\.rawValue)))
    }

    @Test func everyCodeInTheTableComesFromItsCause() throws {
        let dir = try ScratchDirectory()
        let existing = dir.file("existing")
        try Data(repeating: 0x11, count: 8192).write(to: URL(fileURLWithPath: existing))
        symlink(existing, dir.file("link"))
        let locked = dir.file("locked")
        try Data(repeating: 0, count: 4096).write(to: URL(fileURLWithPath: locked))
        chmod(locked, 0)
        chmod(dir.path, 0o755)
        let zombie = try ZombieProcess()
        // Another process holding the lock of a file (as a running map --overwrite does).
        let held = dir.file("held")
        try Data(repeating: 0x33, count: 4096).write(to: URL(fileURLWithPath: held))
        let locker = try Spawned("/usr/bin/python3", ["-c", "import fcntl, sys; f = open(sys.argv[1], 'r+'); fcntl.flock(f, fcntl.LOCK_EX); print('locked', flush=True); sys.stdin.read()", held], inputPipe: true)
        try #require(locker.waitForOutput(containing: "locked", timeout: 30), "\(locker.errorOutput)")
        // An ELF header of another class (32-bit): no library of daxmirror's loads into it.
        let elf32 = dir.file("elf32")
        _ = FileManager.default.createFile(atPath: elf32, contents: Data([0x7F, 0x45, 0x4C, 0x46, 1] + [UInt8](repeating: 0, count: 59)),
                                           attributes: [.posixPermissions: 0o755])
        let me = CLI.binary
        var triggers: [Int32: (String, [String], String?)] = [  // code: (program, args, stdin)
            0: (me, ["caps"], nil),
            1: (me, ["run", "-"], "map A anon 64K\ncpu-read A 0 4K uniform=0x01\n"),
            3: (me, ["map", dir.file("nope")], nil),
            4: (me, ["map", dir.path], nil),
            6: (me, ["map", existing, "--create", "--size", "4096"], nil),
            7: (me, ["map", dir.file("link"), "--create", "--size", "4096", "--overwrite"], nil),
            8: (me, ["map", dir.file("new"), "--create", "--size", "900T"], nil),
            9: (me, ["map", dir.file("new"), "--create", "--size", "0"], nil),
            10: (me, ["map", dir.file("new"), "--create", "--size", "4096", "--require-pmem"], nil),
            12: (me, ["inspect", String(zombie.pid)], nil),
            13: ("/bin/sh", ["-c", "printf 'map A anon 64K\\n' | '\(me)' run - >&-"], nil),
            15: (me, ["map", held, "--create", "--overwrite", "--size", "8192"], nil),
            16: (me, ["emulate", "--", elf32], nil),
            64: (me, ["map", "--no-such-option"], nil),
        ]
        var notWalked: [Int32: String] = [:]
        if access("/dev/hmm_dmirror0", F_OK) != 0 {
            triggers[11] = (me, ["run", "--against-kernel", "-"], "map A anon 64K\n")
        } else {
            notWalked[11] = "this kernel has the HMM test driver, so --against-kernel is not refused"
        }
        if getuid() == 0, let setpriv = which("setpriv") {
            triggers[5] = (setpriv, ["--reuid=65534", "--regid=65534", "--clear-groups", me, "map", locked], nil)
        } else if getuid() != 0 {
            triggers[5] = (me, ["map", locked], nil)
        } else {
            notWalked[5] = "root without setpriv cannot meet a permission error"
        }
        for (code, cause) in try Self.readmeTable() {
            guard let (program, args, stdin) = triggers[code] else {
                if let why = notWalked[code] { print("exit \(code) (\(cause)) not walked here: \(why)") }
                else { Issue.record("exit \(code) (\(cause)) is in the README but no test produces it") }
                continue
            }
            let r = try CLI.run(program, args, stdin: stdin)
            #expect(r.status == code, "exit \(code) (\(cause)): got \(r.status), \(r.stderr)")
            if code != 0 && code != 1 {
                #expect(r.stderrLines.count == 1 && r.stderr.hasPrefix("daxmirror: "), "exit \(code): \(r.stderr)")
            }
        }
        #expect(access(dir.file("new"), F_OK) != 0, "a refused map left its file")
    }
}
