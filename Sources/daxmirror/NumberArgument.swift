import ArgumentParser
import DaxCore

/// A number from the command line, kept as typed: the command reads it with
/// checked arithmetic and a range, so a bad one — not a number, negative,
/// past its type, past what the command can do — is exit 9 (invalid
/// argument) with a sentence that names the option, never a Swift trap and
/// never ArgumentParser's usage error. Options that take one parse
/// `.unconditional`ly, so `--count -5` reaches the check instead of reading
/// as a missing value.
struct NumberArgument: ExpressibleByArgument, Sendable {
    let text: String
    init?(argument: String) { text = argument }
    init(_ text: String) { self.text = text }
    var defaultValueDescription: String { text }

    /// A whole number in decimal, as people write PIDs, ports and counts:
    /// digits only (a minus sign where `range` has negatives), no leading
    /// zero, no `+`, no `0x` — `inspect 0x10` is not PID 16 and `019113` is
    /// not a port — within `range`.
    func integer<T: FixedWidthInteger>(_ name: String, _ range: ClosedRange<T>) throws -> T {
        let digits = range.lowerBound < 0 && text.hasPrefix("-") ? text.dropFirst() : Substring(text)
        let plain = Self.isDigits(digits) && (digits.count == 1 || digits.first != "0")
        guard plain, let v = T(text), range.contains(v) else {
            throw invalidArgument("\(name) \(text) is not a whole number from \(range.lowerBound) to \(range.upperBound) (decimal digits only)")
        }
        return v
    }

    /// ASCII decimal digits only, at least one.
    private static func isDigits<S: StringProtocol>(_ s: S) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { (0x30...0x39).contains($0) }
    }

    /// `0x` and hex digits only (no sign): the value, or nil.
    private static func hex<T: FixedWidthInteger>(_ text: String, as: T.Type) -> T? {
        let digits = text.dropFirst(2)
        guard text.hasPrefix("0x"), !digits.isEmpty, digits.allSatisfy(\.isHexDigit), digits.allSatisfy(\.isASCII) else { return nil }
        return T(digits, radix: 16)
    }

    /// A size (4096, 64K, 2M, 1G, 0x hex) within `range`.
    func size(_ name: String, _ range: ClosedRange<UInt64>) throws -> UInt64 {
        // As typed: no space or sign around it (ByteSize.parse forgives those).
        let plain = text.first.map { ("0"..."9").contains($0) } == true && !text.contains(where: \.isWhitespace)
        let v = !plain ? nil : text.hasPrefix("0x") ? Self.hex(text, as: UInt64.self) : ByteSize.parse(text)
        guard let v else { throw invalidArgument("\(name) \(text) is not a size (examples: 4096, 64M, 1G)") }
        guard range.contains(v) else {
            throw invalidArgument("\(name) \(text) is outside \(ByteSize.human(range.lowerBound))-\(ByteSize.human(range.upperBound))")
        }
        return v
    }

    /// A byte: 0-255 or 0x00-0xff.
    func byte(_ name: String) throws -> UInt8 {
        let v = text.hasPrefix("0x") ? Self.hex(text, as: UInt8.self) : Self.isDigits(text) ? UInt8(text) : nil
        guard let v else { throw invalidArgument("\(name) \(text) is not a byte (0-255 or 0x00-0xff)") }
        return v
    }
}

/// A check in `validate()` that fails is an argument error: exit 9 with its
/// sentence, not ArgumentParser's usage error (64). ArgumentParser keeps
/// only an ExitCode from `validate()`, so the sentence waits here for main.
nonisolated(unsafe) var pendingFailure: Failure?

func invalidArgument(_ message: String) -> ArgumentParser.ExitCode { rejected(.invalidArgument, message) }

/// A refusal from `validate()` with its own exit status (see pendingFailure).
func rejected(_ status: ExitCause, _ message: String) -> ArgumentParser.ExitCode {
    pendingFailure = Failure(status, message)
    return ArgumentParser.ExitCode(status.rawValue)
}
