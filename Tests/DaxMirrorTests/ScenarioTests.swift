import Foundation
import Testing
import DaxCore
import FaultTracking
import MirrorPolicy
import MirrorKernel
import KernelDmirror
import MirrorScenario

/// The shipped scenarios (one per hmm-tests case, plus the DAX cases), run
/// in-process on this machine's memory: in the guest, file scenarios land on
/// the DAX mount (DAXMIRROR_DAX_DIR), on the host in a scratch directory.
/// Not serialized: each scenario is a `daxmirror run` process of its own, so
/// they run side by side. DAXMIRROR_SCENARIOS=file keeps the scenarios that
/// map a file (what a second filesystem under the same kernel changes).
@Suite("scenarios (hmm-tests cases)")
struct ScenarioTests {
    static let directory = URL(fileURLWithPath: #filePath).deletingLastPathComponent()
        .appendingPathComponent("../../Scenarios").standardized.path
    static var shipped: [String] {
        ((try? FileManager.default.contentsOfDirectory(atPath: directory)) ?? []).filter { $0.hasSuffix(".scn") }.sorted()
    }
    static var names: [String] {
        guard ProcessInfo.processInfo.environment["DAXMIRROR_SCENARIOS"] == "file" else { return shipped }
        return shipped.filter { mapsAFile($0) }
    }

    /// Whether a scenario maps a file, as the scenario language reads its lines.
    static func mapsAFile(_ name: String) -> Bool {
        guard let text = try? String(contentsOfFile: "\(directory)/\(name)", encoding: .utf8) else { return false }
        return text.split(separator: "\n").contains { line in
            guard case .map(let request)? = (try? ScenarioLine.parse(String(line)))??.command else { return false }
            return request.kind == .file
        }
    }

    @Test func scenariosAreShipped() {
        for name in ["anon_read", "anon_read_prot", "anon_write", "anon_write_prot", "anon_write_child",
                     "anon_write_child_shared", "anon_write_huge", "file_read", "file_write", "anon_teardown",
                     "mixedmap", "snapshot", "compound", "compound_dax", "double_map", "open_close",
                     "dax_hole_zero", "dax_write_pmd", "dax_truncate", "migrate", "migrate_fault", "migrate_release",
                     "migrate_shared", "migrate_mixed", "migrate_multiple", "exclusive", "exclusive_mprotect",
                     "exclusive_cow", "hmm_cow_in_device", "hmm_gup_test"] {
            #expect(Self.shipped.contains(name + ".scn"), "Scenarios/\(name).scn is missing")
        }
    }

    /// Each scenario runs in a `daxmirror run` process of its own: a fork in
    /// any other test of this process would COW-share the scenario's memory
    /// and send its mirror FORK events (as it would the kernel's dmirror).
    @Test(arguments: ScenarioTests.names)
    func scenario(_ name: String) throws {
        let dir = try ScratchDirectory(base: DaxEnvironment.directory ?? NSTemporaryDirectory())
        let r = try CLI.daxmirror(["run", "--dir", dir.path, "\(Self.directory)/\(name)"], timeout: 300)
        let failures = r.stdout.split(separator: "\n").filter(answerFailed).joined(separator: "\n")
        #expect(r.status == 0, "\(name):\n\(failures)\n\(r.stderr)")
        // On DAX with PAGEMAP_SCAN, the DAX scenarios must really run, not skip.
        if DaxEnvironment.directory != nil && KernelFeatures.probe().pagemapScan && name.hasPrefix("dax_") {
            #expect(!r.stdout.contains("\"skipped\""), "\(name) skipped on DAX: \(r.stdout)")
        }
    }

    /// `caps` says how pages move to a device on this kernel; the mirror
    /// says the same of a region, and where it says "move" or "copy" a
    /// migration works.
    @Test func capsAndTheMirrorAgreeOnDevicePrivateMemory() throws {
        let caps = try CLI.daxmirror(["caps", "--json"])
        let report = try JSONSerialization.jsonObject(with: Data(caps.stdout.utf8)) as? [String: Any]
        let mechanism = (report?["device_private"] as? [String: Any])?["mechanism"] as? String
        #expect(["move", "copy", "none"].contains(mechanism), "\(caps.stdout)")
        let r = try CLI.run(CLI.binary, ["run", "-"], timeout: 60, stdin: "map A anon 64K\nmirror A\ncpu-write A 0 64K 7\nmigrate A 0 64K\n")
        #expect(r.stdout.contains("\"device_private\":\"\(mechanism ?? "?")\""), "\(r.stdout)")
        let migrated = r.stdout.contains("\"cpages\":16")
        #expect(migrated == (mechanism == "move" || mechanism == "copy"), "\(r.stdout)")
    }

    /// `check R kernel`: the kernel's own HMM_DMIRROR_SNAPSHOT as the oracle
    /// of the CPU side. Where /dev/hmm_dmirror0 exists (the hmm guest) the two
    /// must agree on a region with every kind of page; elsewhere the command
    /// must fail saying what is missing and where to get it.
    @Test func checkUsesTheKernelsSnapshotWhereTheDriverExists() throws {
        let dir = try ScratchDirectory()
        let script = "map A anon 64K\nmirror A\ncpu-write A 0 16K 0x5a\ncpu-read A 16K 16K\nprotect A 48K 16K none\n"
            + "dev-read A 0 32K\ncheck A kernel\n"
        let r = try CLI.run(CLI.binary, ["run", "--dir", dir.path, "-"], timeout: 120, stdin: script)
        let last = r.stdout.split(separator: "\n").last.map(String.init) ?? ""
        if access(KernelDmirror.defaultPath, F_OK) == 0 {
            #expect(r.status == 0 && last.contains("\"kernel_snapshot\":\"agrees\""), "\(r.stdout)\n\(r.stderr)")
        } else {
            #expect(r.status == 1)
            #expect(last.contains("\"ok\":false") && last.contains("CONFIG_TEST_HMM") && last.contains("--kernel hmm"), "\(last)")
        }
    }

    /// The CLI as a user runs it: one JSON object per line, exit 1 on a failed
    /// command, and the failing command's errno.
    @Test func cliReportsEachCommandAndFailsOnAnUnmetExpectation() throws {
        let dir = try ScratchDirectory()
        let scn = dir.file("s.scn")
        try "map A anon 64K\nmirror A\ndev-read A 0 64K faults=1\ndev-read A 0 64K faults=1\n"
            .write(toFile: scn, atomically: true, encoding: .utf8)
        let r = try CLI.daxmirror(["run", scn])
        #expect(r.status == 1)
        let lines = r.stdout.split(separator: "\n")
        #expect(lines.count == 4)
        #expect(lines[2].contains("\"faults\":1") && lines[2].contains("\"ok\":true"))
        #expect(lines[3].contains("\"ok\":false") && lines[3].contains("wanted 1, got 0"))
        #expect(r.stderrLines.count == 1)

        try "map A anon 64K\nexpect-fail dev-read A 0 4K\nprotect A 0 64K none\nmirror A\nexpect-fail dev-read A 0 4K errno=EFAULT\n"
            .write(toFile: scn, atomically: true, encoding: .utf8)
        let ok = try CLI.daxmirror(["run", scn])
        #expect(ok.status == 0, "\(ok.stdout)\(ok.stderr)")
    }
}
