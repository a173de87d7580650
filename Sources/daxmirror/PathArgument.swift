import ArgumentParser
import CDaxShim
import DaxCore
#if canImport(Glibc)
import Glibc
#endif

/// A path from the command line, kept as the bytes the user gave.
///
/// ArgumentParser hands every argument over as a `String`, which replaces
/// bytes that are not UTF-8 with U+FFFD — a different name, so `map` would
/// report "does not exist" or, with `--create`, make another file. The bytes
/// are found again in argv: an argument that decodes to exactly this text
/// (alone, or after `--option=`). Two argv entries with different bytes and
/// the same text cannot be told apart: that is refused (exit 9), never
/// guessed.
struct PathArgument: ExpressibleByArgument, Sendable, CustomStringConvertible {
    let path: FilePath
    /// Set when the text came from more than one distinct byte string.
    let ambiguous: Bool

    init?(argument: String) {
        guard argument.unicodeScalars.contains("\u{FFFD}") else {
            path = FilePath(argument)
            ambiguous = false
            return
        }
        let found = Set(RawArguments.candidates.filter { String(decoding: $0, as: UTF8.self) == argument })
        path = found.first.map(FilePath.init(bytes:)) ?? FilePath(argument)
        ambiguous = found.count > 1
    }

    var description: String { path.description }
    var defaultValueDescription: String { path.description }

    /// For validate(): the one refusal a path argument can have by itself.
    func check(_ name: String) throws {
        if ambiguous {
            throw invalidArgument("\(name) \(path) matches two arguments whose bytes differ but read the same: give them one at a time")
        }
    }

    /// A name for this directory that modules taking `String` paths can use:
    /// itself when it is UTF-8; otherwise `/proc/self/fd/N` of a descriptor
    /// opened (O_PATH) on exactly these bytes and kept for the process's
    /// life, which the kernel resolves to the same directory — in a child
    /// process too (the write-protect probe): the descriptor is inherited, at
    /// the same number. Errors naming that alias are shown with the user's
    /// path (PathAliases).
    func directoryForModules() throws -> String {
        if let s = path.string { return s }
        let raw = path.withCString { Glibc.open($0, DM_O_PATH | O_DIRECTORY) }
        guard raw >= 0 else { throw Failure.from(SystemCallError("open", path.description), doing: "open") }
        let fd = OwnedFD(raw)
        let alias = "/proc/self/fd/\(fd.rawValue)"
        PathAliases.keep(fd, alias: alias, shown: path.description)
        return alias
    }
}

/// The process's arguments as bytes (argv), and the values of `--opt=VALUE`.
enum RawArguments {
    /// argv after the program name, as bytes.
    static let all: [[UInt8]] = (1..<Int(CommandLine.argc)).compactMap { i in
        CommandLine.unsafeArgv[i].map { Array(UnsafeBufferPointer(start: UnsafeRawPointer($0).assumingMemoryBound(to: UInt8.self), count: strlen($0))) }
    }

    static let candidates: [[UInt8]] = {
        var out: [[UInt8]] = []
        for i in 1..<Int(CommandLine.argc) {
            guard let p = CommandLine.unsafeArgv[i] else { continue }
            let bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(p).assumingMemoryBound(to: UInt8.self), count: strlen(p)))
            out.append(bytes)
            if bytes.starts(with: Array("--".utf8)), let eq = bytes.firstIndex(of: UInt8(ascii: "=")) {
                out.append(Array(bytes[(eq + 1)...]))
            }
        }
        return out
    }()
}

/// `/proc/self/fd/N` names standing for paths that are not UTF-8, and the
/// descriptors that keep them valid.
enum PathAliases {
    nonisolated(unsafe) private static var kept: [(fd: OwnedFD, alias: String, shown: String)] = []

    static func keep(_ fd: OwnedFD, alias: String, shown: String) { kept.append((fd, alias, shown)) }

    /// `text` with every alias replaced by the path it stands for.
    static func shown(_ text: String) -> String {
        var t = text
        for k in kept { t = t.replacing(k.alias, with: k.shown) }
        return t
    }
}
