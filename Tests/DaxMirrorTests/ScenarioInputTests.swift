import Foundation
import Testing
@testable import MirrorScenario
import CDaxShim

/// What a scenario says is never dropped and never kills the runner: line
/// ends, bytes that are not text, undefined words, wrong arity, numbers past
/// any address space, input that is not a file, output that cannot be written.
@Suite("scenario input")
struct ScenarioInputTests {
    func run(_ script: String) throws -> (status: Int32, answers: [[String: Any]], stderr: String) {
        let r = try CLI.run(CLI.binary, ["run", "-"], stdin: script)
        let answers = r.stdout.split(separator: "\n").compactMap {
            try? JSONSerialization.jsonObject(with: Data($0.utf8)) as? [String: Any]
        }
        return (r.status, answers, r.stderr)
    }

    @Test(arguments: ["0x7ffffffffffff000", "0xffffffffffffffff", "16383P", "18446744073709551615", "0x100000000000000"])
    func aSizePastAnyAddressSpaceIsEINVAL(_ size: String) throws {
        let r = try run("map A anon \(size)\nmap B anon 64K\ndev-read B 0 \(size)\n")
        #expect(r.status == 1, "exit \(r.status) (132 is a Swift trap): \(r.stderr)")
        #expect(r.answers.count == 3)
        #expect(r.answers.first?["errno"] as? String == "EINVAL")
        #expect(r.answers.last?["errno"] as? String == "EINVAL")
    }

    @Test func crlfLineEndsRunEveryLine() throws {
        let r = try run("# a comment first\r\nmap A anon 64K\r\ncpu-write A 0 4K 0x2a\r\ncpu-read A 0 4K uniform=0x2b\r\n")
        #expect(r.answers.count == 3, "every line ran")
        #expect(r.status == 1, "the unmet expectation fails the run")
        #expect(r.answers.last?["unmet"] != nil)
    }

    @Test(arguments: [("map A anon 64K\0\n", "NUL"), ("map A anon 64K\rmirror A\n", "carriage return"),
                      ("map A anon \u{1b}[2J64K\n", "control character"), ("map A anon 64K \u{ff}\n", "")])
    func aLineThatIsNotTextIsAnError(_ script: String, _ why: String) throws {
        var bytes = Array(script.utf8)
        if why.isEmpty { bytes = Array("map A anon 64K ".utf8) + [0xff, 0x0a] }  // not UTF-8
        let r = try CLI.run(CLI.binary, ["run", "-"], stdinBytes: bytes)
        let answers = r.stdout.split(separator: "\n")
        #expect(r.status == 1)
        #expect(answers.count == 1 && answers[0].contains("\"line\":1") && answers[0].contains("EINVAL"), "\(r.stdout)")
        #expect(answers.first?.contains(why.isEmpty ? "not UTF-8" : why) == true, "\(r.stdout)")
    }

    @Test func anUndefinedNameIsAnError() throws {
        let r = try run("map A $DAXMIRROR_SURELY_UNSET_NAME 64K\n")
        #expect(r.status == 1)
        #expect((r.answers.first?["error"] as? String)?.contains("DAXMIRROR_SURELY_UNSET_NAME") == true)
    }

    @Test(arguments: ["map B anon 64K huge ro private extra", "map A anon", "cpu-read A 0 4K 9", "snapshot A 0",
                      "check A 0 4K strict kernel more", "require thp now", "stats A B"])
    func theWrongNumberOfWordsIsAnError(_ line: String) throws {
        let r = try run("map A anon 64K\nmirror A\n\(line)\n")
        #expect(r.status == 1)
        #expect(r.answers.last?["errno"] as? String == "EINVAL", "\(r.answers.last ?? [:])")
    }

    @Test func inputThatIsNotAFileIsRefusedBeforeReading() throws {
        let r = try CLI.daxmirror(["run", "/dev/zero"], timeout: 20)
        #expect(r.status == 4, "\(r.stderr)")
        #expect(r.stderr.split(separator: "\n").count == 1)
    }

    @Test func outputThatCannotBeWrittenFailsLoudly() throws {
        for (redirect, code) in [("> /dev/full", Int32(8)), (">&-", Int32(13))] {
            let r = try CLI.run("/bin/sh", ["-c", "printf 'map A anon 64K\\n' | '\(CLI.binary)' run - \(redirect)"])
            #expect(r.status == code, "\(redirect): exit \(r.status), \(r.stderr)")
            #expect(r.stderr.contains("standard output"), "\(redirect): \(r.stderr)")
        }
    }
}

/// The language as a typed command table: the words become typed commands
/// with checked numbers, and the usage a refusal quotes is the one
/// `run --help` prints.
@Suite("scenario language")
struct ScenarioLanguageTests {
    @Test func linesBecomeTypedCommands() throws {
        let map = try #require(try ScenarioLine.parse("map A file f.dat 2M huge private  faults=0"))
        #expect(map.command == .map(.init(region: "A", kind: .file, path: "f.dat", size: 2 << 20, huge: true, privateFile: true)))
        #expect(map.expectations.map(\.key) == ["faults"])
        #expect(try ScenarioLine.parse("check A 0x1000 4K kernel")?.command
                == .check(region: "A", range: .init(offset: 4096, length: 4096), strict: false, kernel: true))
        #expect(try ScenarioLine.parse("check A strict")?.command == .check(region: "A", range: nil, strict: true, kernel: false))
        #expect(try ScenarioLine.parse("expect-fail dev-read A 0 4K")?.command
                == .expectFail(.devRead(.init(region: "A", offset: 0, length: 4096))))
        #expect(try ScenarioLine.parse("mirror A write-bit pagemap as D")?.command
                == .mirror(region: "A", device: "D", untracked: false, writeBit: .pagemap, number: 0))
        #expect(try ScenarioLine.parse("  # only a comment") == nil)
    }

    @Test(arguments: [
        ("snapshot A 0", "OFF without LEN"), ("dev-read A 0 0", "LEN must be more than 0"),
        ("mirror A as", "D is missing"), ("map A anon 64K ro none", "ro and none"),
        ("check A strict strict", "strict twice"), ("protect A 0 4K write", "none, read or rw"),
        ("cpu-write A 0 4K 256", "BYTE 256"), ("dev-read A 0 0x100000000000000", "larger than any address space"),
        ("truncate A -1", "not a size"), ("stats", "R is missing"), ("require devdax 2M now", "too many words"),
    ])
    func aRefusalNamesItsCause(_ line: String, _ cause: String) {
        do {
            _ = try ScenarioLine.parse(line)
            Issue.record("\(line) parsed")
        } catch {
            #expect(error.error.errno == .EINVAL)
            #expect(error.error.message.contains(cause), "\(error.error.message)")
            #expect(error.op == String(line.split(separator: " ")[0]))
        }
    }

    @Test func theHelpListsEveryCommandFromTheTable() throws {
        let help = try CLI.daxmirror(["run", "--help"]).stdout
        #expect(ScenarioCommand.specs.count == 27)
        for spec in ScenarioCommand.specs {
            #expect(help.contains("\(spec.name) \(spec.usage)"), "\(spec.name) missing from run --help")
        }
        // A refusal quotes the same usage line.
        do { _ = try ScenarioLine.parse("protect A 0") } catch {
            #expect(error.error.message.hasSuffix("usage: protect R OFF LEN none|read|rw"), "\(error.error.message)")
        }
    }

    /// `unmap` gives the range back to the process; if the allocator maps
    /// something there before `remap`, the runner refuses to touch it (EBUSY),
    /// never remaps over it or writes into it.
    @Test func aHoleSomethingElseTookIsNeverTouched() throws {
        // Other tests run in this process at the same time and map memory
        // too: between giving the hole back and `remap`, one of them may take
        // it. Then EBUSY is the right answer (checked: the range is mapped,
        // and not by us) and the whole case runs again on a fresh region.
        var completed = false
        for _ in 0..<5 where !completed { completed = try holeCase() }
        #expect(completed, "five times in a row another thread took the hole first")
    }

    /// One run of the case; false if another thread took the hole in the
    /// window the test itself opened (after asserting that EBUSY was right).
    private func holeCase() throws -> Bool {
        let runner = ScenarioRunner()
        _ = runner.run(line: "map A anon 1M")
        _ = runner.run(line: "unmap A 512K 256K")
        let m = try #require(runner.memory["A"])
        let at = m.base + (512 << 10)
        let intruder = mmap(at, 256 << 10, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | DM_MAP_FIXED_NOREPLACE, -1, 0)
        guard intruder == at else {
            if intruder != MAP_FAILED { munmap(intruder, 256 << 10) }
            return false  // another thread was first into the hole
        }
        memset(at, 0x77, 256 << 10)
        for line in ["cpu-write A 0 1M 1", "remap A 512K 256K", "unmap A 0 1M", "discard A 512K 4K", "protect A 0 1M none"] {
            let answer = runner.run(line: line)?.render(pretty: false) ?? ""
            #expect(answer.contains("EBUSY"), "\(line): \(answer)")
        }
        #expect(UnsafeRawBufferPointer(start: at, count: 256 << 10).allSatisfy { $0 == 0x77 })
        munmap(at, 256 << 10)
        // Given back again: remap takes it (MAP_FIXED_NOREPLACE) and it is the region's once more.
        let remapped = runner.run(line: "remap A 512K 256K")?.render(pretty: false) ?? ""
        if remapped.contains("EBUSY") {
            // msync of an unmapped range is ENOMEM: the hole must be mapped (by someone else).
            #expect(msync(at, 4096, MS_ASYNC) == 0, "remap said EBUSY over an unmapped hole: \(remapped)")
            return false
        }
        #expect(remapped.contains("\"ok\":true"), "\(remapped)")
        #expect(runner.run(line: "cpu-write A 0 1M 1")?.render(pretty: false).contains("\"ok\":true") == true)
        #expect(m.holes.isEmpty)
        return true
    }
}
