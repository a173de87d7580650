#if canImport(Glibc)
import Glibc
#endif

/// One line of a scenario, read: the command and the trailing `key=value`
/// expectations on its answer. A comment or blank line is nil.
public struct ScenarioLine: Equatable {
    public var command: ScenarioCommand
    public var expectations: [(key: String, value: String)]

    public static func == (a: ScenarioLine, b: ScenarioLine) -> Bool {
        a.command == b.command && a.expectations.elementsEqual(b.expectations) { $0 == $1 }
    }

    /// A parse failure names the command it was in ("(line)" before one).
    public struct Failure: Error {
        public let op: String
        public let error: ScenarioError
    }

    /// Reads `text`: `#` starts a comment; `$NAME` words take the value of
    /// `environment(NAME)` before the line is split (a value may be several
    /// words, "file f.dat"), and an undefined one is an error, never a word
    /// read as a path or a size.
    public static func parse(_ text: String, environment: (String) -> String? = ScenarioLine.processEnvironment)
        throws(Failure) -> ScenarioLine? {
        var body = Substring(text)
        if let hash = body.firstIndex(of: "#") { body = body[..<hash] }
        var expanded: [String] = []
        for w in body.split(separator: " ", omittingEmptySubsequences: false) {
            guard w.hasPrefix("$") else { expanded.append(String(w)); continue }
            guard let value = environment(String(w.dropFirst())) else {
                throw Failure(op: "(line)", error: ScenarioError(.EINVAL, "\(w) is not set in the environment"))
            }
            expanded.append(value)
        }
        var words = expanded.joined(separator: " ").split(whereSeparator: { $0 == " " || $0 == "\t" }).map(String.init)
        guard !words.isEmpty else { return nil }
        var expectations: [(key: String, value: String)] = []
        while let last = words.last, let eq = last.firstIndex(of: "="), words.count > 1 {
            expectations.insert((String(last[..<eq]), String(last[last.index(after: eq)...])), at: 0)
            words.removeLast()
        }
        do {
            return ScenarioLine(command: try ScenarioCommand.parse(words), expectations: expectations)
        } catch {
            throw Failure(op: words[0], error: error)
        }
    }

    public static func processEnvironment(_ name: String) -> String? { getenv(name).map { String(cString: $0) } }
}
