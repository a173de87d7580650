#if canImport(Glibc)
import Glibc
#endif

/// A path as the kernel sees it: bytes, not text. A Linux file name is any
/// bytes but `/` and NUL, and a Swift `String` cannot hold bytes that are not
/// UTF-8 (they become U+FFFD, a different name). Paths given by the user go
/// to the kernel exactly as given through `withCString`, and are shown to
/// people through `description`, escaped (`\xNN` for a byte that is not
/// UTF-8 and for every character String.inert escapes).
public struct FilePath: Hashable, Sendable, CustomStringConvertible, ExpressibleByStringLiteral {
    /// Without a terminating NUL; never contains one.
    public let bytes: [UInt8]

    public init(bytes: [UInt8]) { self.bytes = bytes }
    public init(_ string: String) { bytes = Array(string.utf8) }
    public init(stringLiteral value: String) { self.init(value) }

    /// The path as text when its bytes are UTF-8 (exactly those bytes).
    public var string: String? { String(validating: bytes, as: UTF8.self) }

    /// For a person: UTF-8 as itself, any other byte as `\xNN`, control
    /// characters and direction overrides escaped (String.inert).
    public var description: String { String(escapingInvalidUTF8: bytes).inert }

    /// Calls `body` with the path as a NUL-terminated C string.
    public func withCString<R, E: Error>(_ body: (UnsafePointer<CChar>) throws(E) -> R) throws(E) -> R {
        var z = bytes
        z.append(0)
        return try z.withUnsafeBufferPointer { (buf) throws(E) -> R in
            try buf.withMemoryRebound(to: CChar.self) { (c) throws(E) -> R in try body(c.baseAddress!) }
        }
    }

    /// The directory holding the last component: "." for a bare name, "/"
    /// for a name in the root.
    public var parent: FilePath {
        guard let slash = bytes.lastIndex(of: UInt8(ascii: "/")) else { return "." }
        return slash == 0 ? "/" : FilePath(bytes: Array(bytes[..<slash]))
    }

    /// `self/component`.
    public func appending(_ component: String) -> FilePath {
        var b = bytes
        if b.last != UInt8(ascii: "/") { b.append(UInt8(ascii: "/")) }
        b.append(contentsOf: component.utf8)
        return FilePath(bytes: b)
    }
}

extension OwnedFD {
    /// open(2) of a path given as bytes, with O_CLOEXEC added.
    public static func open(_ path: FilePath, _ flags: Int32, mode: mode_t = 0) throws(SystemCallError) -> OwnedFD {
        let fd = try Syscall.retrying("open", path.description) {
            path.withCString { Glibc.open($0, flags | O_CLOEXEC, mode) }
        }
        return OwnedFD(fd)
    }
}

extension String {
    /// Bytes as text without losing any: valid UTF-8 as itself, every other
    /// byte as `\xNN` (never U+FFFD, which would make two names one). For
    /// what the kernel hands over as bytes: a path in /proc/PID/maps.
    public init<C: Collection>(escapingInvalidUTF8 bytes: C) where C.Element == UInt8 {
        if let s = String(validating: bytes, as: UTF8.self) { self = s; return }
        let b = Array(bytes)
        var out = ""
        var i = 0
        while i < b.count {
            var j = i
            while j < b.count, let n = Self.utf8SequenceLength(b, at: j) { j += n }
            if j > i {
                out += String(decoding: b[i..<j], as: UTF8.self)
                i = j
            } else {
                let h = String(b[i], radix: 16)
                out += "\\x" + (h.count == 1 ? "0" : "") + h
                i += 1
            }
        }
        self = out
    }

    /// The length of the valid UTF-8 sequence starting at `i`, or nil.
    private static func utf8SequenceLength(_ b: [UInt8], at i: Int) -> Int? {
        let len: Int
        switch b[i] {
        case 0x00...0x7F: return 1
        case 0xC2...0xDF: len = 2
        case 0xE0...0xEF: len = 3
        case 0xF0...0xF4: len = 4
        default: return nil
        }
        guard i + len <= b.count, String(validating: b[i..<(i + len)], as: UTF8.self) != nil else { return nil }
        return len
    }
}
