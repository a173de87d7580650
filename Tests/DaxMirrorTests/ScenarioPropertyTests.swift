import Foundation
import Testing

/// The scenario language against a hostile writer: a seeded generator of
/// lines — real commands with extreme numbers, random arity, junk words,
/// bytes that are not text, undefined `$NAME`s, CRLF ends — run through
/// `daxmirror run`. Every line gets exactly one JSON answer, in order, and
/// the process never dies of a signal. DAXMIRROR_PROPERTY_SEED replays a
/// seed; DAXMIRROR_PROPERTY_LINES sizes the run (100,000 by default).
@Suite("scenario language property")
struct ScenarioPropertyTests {
    @Test func everyLineGetsOneAnswerAndTheRunnerLives() throws {
        let env = ProcessInfo.processInfo.environment
        let seed = env["DAXMIRROR_PROPERTY_SEED"].flatMap { UInt64($0) } ?? UInt64.random(in: 1..<UInt64(UInt32.max))
        let count = env["DAXMIRROR_PROPERTY_LINES"].flatMap { Int($0) } ?? 100_000
        print("scenario property: seed \(seed), \(count) lines (DAXMIRROR_PROPERTY_SEED=\(seed) replays)")
        var generator = ScenarioLineGenerator(seed: seed)
        var script: [UInt8] = []
        for _ in 0..<count { script += generator.line() + (generator.coin(0.1) ? [0x0D, 0x0A] : [0x0A]) }
        let dir = try ScratchDirectory(base: DaxEnvironment.directory ?? NSTemporaryDirectory())  // files on DAX in the guest
        let r = try CLI.run(CLI.binary, ["run", "--dir", dir.path, "-"], timeout: 1500, stdinBytes: script)
        #expect(!r.timedOut, "seed \(seed): the run did not finish")
        #expect(r.status == 0 || r.status == 1, "seed \(seed): exit \(r.status) (over 128 is a signal): \(r.stderr.suffix(500))")
        let answers = r.stdout.split(separator: "\n", omittingEmptySubsequences: false).dropLast()
        #expect(answers.count == count, "seed \(seed): \(answers.count) answers for \(count) lines")
        var expected = 1
        for answer in answers {
            guard let object = try? JSONSerialization.jsonObject(with: Data(answer.utf8)) as? [String: Any],
                  let line = object["line"] as? Int, object["ok"] is Bool else {
                Issue.record("seed \(seed): answer \(expected) is not a JSON answer: \(answer.prefix(300))")
                break
            }
            guard line == expected else {
                Issue.record("seed \(seed): answer for line \(line) where line \(expected) was due")
                break
            }
            expected += 1
        }
    }

    @Test func theGeneratorReplaysItsSeed() {
        var a = ScenarioLineGenerator(seed: 42), b = ScenarioLineGenerator(seed: 42)
        let x = (0..<500).map { _ in a.line() }, y = (0..<500).map { _ in b.line() }
        #expect(x == y)
        #expect(Set(x).count > 400, "the lines vary")
    }
}

/// Lines of the scenario language, well-formed and not: the commands of
/// `daxmirror run --help` (but `require`, whose unmet answer ends a scenario
/// by design) with the right word count most of the time, numbers from the
/// edges of every range, and junk. Every size that can succeed stays within
/// 4 MiB (the extremes either fail to parse or exceed the address space, 2^47
/// and up), so that a run cannot exhaust memory; file paths are plain names,
/// so the run stays in its directory.
struct ScenarioLineGenerator {
    var rng: SplitMix64
    init(seed: UInt64) { rng = SplitMix64(seed: seed) }

    mutating func coin(_ p: Double) -> Bool { Double.random(in: 0..<1, using: &rng) < p }
    mutating func pick<T>(_ xs: [T]) -> T { xs[Int.random(in: 0..<xs.count, using: &rng)] }

    static let commands = ["map", "mirror", "cpu-read", "cpu-write", "dev-read", "dev-write", "snapshot", "protect",
                           "unmap", "remap", "discard", "truncate", "persist", "fork-write", "pwrite", "pread",
                           "check", "stats", "expect-fail", "migrate", "migrate-back", "release",
                           "exclusive", "check-exclusive", "fork-read", "gup"]
    static let keywords = ["huge", "ro", "none", "private", "as", "untracked", "write-bit", "soft-dirty", "pagemap",
                           "strict", "kernel", "anon", "shmem", "file", "devdax", "read", "rw", "x=1", "faults=0"]
    static let extremes = ["0", "1", "4095", "4097", "-1", "-4096", "0x", "0xzz", "1.5M", "0b101", "1P", "16383P", "4E",
                           "0x7ffffffffffff000", "0xffffffffffffffff", "18446744073709551615", "18446744073709551616",
                           "99999999999999999999999999", "72057594037927935", "72057594037927936", "9223372036854775807",
                           "0x100000000000000", "4096K", "0x800000000000", "0xffffffffffffff", "256", "255", "0xff", "0x100"]

    /// A size a command may well accept: within 4 MiB, page multiples mostly.
    mutating func small() -> String {
        switch Int.random(in: 0..<4, using: &rng) {
        case 0: return pick(["4K", "8K", "64K", "2M", "4M", "0x1000", "0x200000"])
        case 1: return String(4096 * Int.random(in: 1...1024, using: &rng))
        case 2: return String(Int.random(in: 0...(4 << 20), using: &rng))
        default: return pick(["0", "4096", "2M"])
        }
    }

    mutating func number() -> String { coin(0.7) ? small() : pick(Self.extremes) }
    mutating func region() -> String { coin(0.95) ? pick(["A", "B", "C", "D"]) : junk() }

    /// A word of printable bytes (no `#`, which starts a comment, no `/`, so
    /// no path leaves the run's directory), sometimes multi-byte text.
    mutating func junk() -> String {
        if coin(0.2) { return pick(["é", "∞", "😀", "$HOME", "$DAXMIRROR_SURELY_UNDEFINED", "$", "=", "a=b=c", "\t"]) }
        let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_.:=$%&*+,;<>?@[]^{}|~!\"'()`\\")
        return String((0..<Int.random(in: 1...8, using: &rng)).map { _ in pick(alphabet) })
    }

    /// The words a command's usage line asks for, filled in.
    mutating func words(for op: String) -> [String] {
        let byte = coin(0.9) ? String(Int.random(in: 0...255, using: &rng)) : pick(["256", "-1", "0x1ff", "0x", "x"])
        switch op {
        case "map":
            let kind = coin(0.9) ? pick(["anon", "shmem", "file", "file"]) : pick(["devdax", "hugetlb", junk()])
            var w = [region(), kind]
            if kind == "file" { w.append(pick(["f1.dat", "f2.dat", "f3.dat"])) }
            if kind == "devdax" { w.append("/dev/dax9.9") }
            w.append(coin(0.85) ? pick(["64K", "1M", "2M", "4M", "16K"]) : pick(Self.extremes))
            while coin(0.3) { w.append(pick(["huge", "ro", "none", "private", junk()])) }
            return w
        case "mirror":
            var w = [region()]
            if coin(0.2) { w += ["as", pick(["D1", "D2", "A"])] }
            if coin(0.2) { w.append("untracked") }
            if coin(0.3) { w += ["device", coin(0.9) ? pick(["0", "1"]) : pick(["2", "-1", junk()])] }
            if coin(0.3) { w += ["write-bit", pick(["soft-dirty", "pagemap", junk()])] }
            return w
        case "cpu-read", "dev-read", "unmap", "remap", "discard", "persist", "pread", "migrate", "migrate-back",
             "exclusive", "check-exclusive", "fork-read", "gup":
            return [region(), number(), number()]
        case "cpu-write", "dev-write", "fork-write", "pwrite":
            return [region(), number(), number(), byte]
        case "protect": return [region(), number(), number(), pick(["none", "read", "rw", junk()])]
        case "snapshot": return coin(0.5) ? [region()] : [region(), number(), number()]
        case "truncate": return [region(), number()]
        case "check":
            var w = [region()]
            if coin(0.4) { w += [number(), number()] }
            if coin(0.3) { w.append(pick(["strict", "kernel"])) }
            return w
        case "stats", "release": return [region()]
        case "expect-fail":
            let inner = pick(Self.commands.filter { $0 != "expect-fail" && !$0.hasPrefix("fork-") })
            return [inner] + words(for: inner)
        default: return []
        }
    }

    /// One line, as bytes (no line end).
    mutating func line() -> [UInt8] {
        // (Never a word that could leave the line blank: "\t", an empty $NAME.)
        var op = coin(0.95) ? pick(Self.commands) : String(junk().filter { $0.isLetter || $0.isNumber || $0 == "-" }.prefix(8))
        if op.isEmpty { op = "x" }
        // Forks are slow (a process each): keep them rare.
        if op == "fork-write" && !coin(0.05) { op = "cpu-write" }
        if op == "fork-read" && !coin(0.05) { op = "cpu-read" }
        var w = [op] + words(for: op)
        if coin(0.15) {  // the wrong number of words
            if coin(0.5), w.count > 1 { w.removeLast(Int.random(in: 1...(w.count - 1), using: &rng)) }
            else { for _ in 0..<Int.random(in: 1...3, using: &rng) { w.append(coin(0.5) ? number() : junk()) } }
        }
        if coin(0.1) { w[Int.random(in: 0..<w.count, using: &rng)] = pick(Self.keywords + Self.extremes) }
        if coin(0.05) { w.append(pick(["faults=0", "uniform=0x00", "ok=true", "codes=02*1"])) }
        var bytes = Array(w.joined(separator: coin(0.1) ? "  \t" : " ").utf8)
        if coin(0.03) {  // bytes that are not text: each makes the line an error
            let bad: [UInt8] = pick([[0x00], [0x0D], [0x1B, 0x5B, 0x32, 0x4A], [0xFF], [0xC3], [0x7F], [0xED, 0xA0, 0x80]])
            bytes.insert(contentsOf: bad, at: Int.random(in: 1...bytes.count, using: &rng))
        }
        return bytes
    }
}
