import Foundation
import Testing

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
