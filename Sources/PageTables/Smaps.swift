import DaxCore

/// One VMA of /proc/PID/smaps (see proc(5)). Sizes are in bytes.
public struct SmapsEntry: Sendable, Equatable {
    public var start: UInt64
    public var end: UInt64
    public var perms: String
    public var offset: UInt64
    public var device: String
    public var inode: UInt64
    /// File path, or a pseudo name ("[heap]", "[anon:...]"), or "" for anonymous.
    public var path: String
    /// Every "Key: N kB" field, in bytes.
    public var fields: [String: UInt64]
    public var vmFlags: [String]

    public var size: UInt64 { end - start }
    public var rss: UInt64 { fields["Rss"] ?? 0 }
    public var kernelPageSize: UInt64 { fields["KernelPageSize"] ?? 0 }
    public var mmuPageSize: UInt64 { fields["MMUPageSize"] ?? 0 }
    public var anonHugePages: UInt64 { fields["AnonHugePages"] ?? 0 }
    public var filePmdMapped: UInt64 { fields["FilePmdMapped"] ?? 0 }
    /// "sf": mapped with MAP_SYNC (synchronous page faults, i.e. DAX).
    public var isSync: Bool { vmFlags.contains("sf") }
    public var isShared: Bool { perms.count >= 4 && perms.utf8.last == UInt8(ascii: "s") }
    /// uffd registration flags: um (missing), uw (wp), ui (minor).
    public var userfaultfdFlags: [String] { vmFlags.filter { ["um", "uw", "ui"].contains($0) } }

    public func contains(_ address: UInt64) -> Bool { address >= start && address < end }
}

public enum SmapsParseError: Error, CustomStringConvertible {
    case malformedHeader(line: Int, text: String)
    public var description: String {
        switch self {
        case .malformedHeader(let line, let text): return "smaps line \(line): not a VMA header: \(text)"
        }
    }
}

public enum Smaps {
    /// Parses smaps text. A header line starts a VMA; "Key: N kB" lines and
    /// "VmFlags:" belong to the current one.
    public static func parse(_ text: String) throws(SmapsParseError) -> [SmapsEntry] {
        var out: [SmapsEntry] = []
        var lineNo = 0
        for raw in text.split(separator: "\n") {
            lineNo += 1
            if let colon = raw.firstIndex(of: ":"), isFieldName(raw[raw.startIndex..<colon]) {
                guard !out.isEmpty else { throw .malformedHeader(line: lineNo, text: String(raw)) }
                let key = String(raw[raw.startIndex..<colon])
                let rest = raw[raw.index(after: colon)...]
                if key == "VmFlags" {
                    out[out.count - 1].vmFlags = rest.split(separator: " ").map(String.init)
                } else {
                    let parts = rest.split(separator: " ")
                    if let n = parts.first.flatMap({ UInt64($0) }) {
                        out[out.count - 1].fields[key] = parts.count > 1 && parts[1] == "kB" ? n * 1024 : n
                    }
                }
                continue
            }
            guard let e = parseHeader(raw) else { throw .malformedHeader(line: lineNo, text: String(raw)) }
            out.append(e)
        }
        return out
    }

    public static func read(pid: String = "self") throws(SystemCallError) -> String {
        try readTextFile("/proc/\(pid)/smaps")
    }

    /// A field name is one word of letters, digits and underscores (a header's
    /// first token is a hex range with a "-", so it never matches).
    private static func isFieldName(_ s: Substring) -> Bool {
        !s.isEmpty && s.utf8.allSatisfy { c in
            (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 95
        }
    }

    /// "7f12-7f34 rw-s 00000000 fd:01 1234   /path with spaces"
    static func parseHeader(_ line: Substring) -> SmapsEntry? {
        var rest = line[...]
        func token() -> Substring? {
            while rest.first == " " { rest.removeFirst() }
            guard !rest.isEmpty else { return nil }
            let end = rest.firstIndex(of: " ") ?? rest.endIndex
            defer { rest = rest[end...] }
            return rest[rest.startIndex..<end]
        }
        guard let range = token(), let perms = token(), let off = token(), let dev = token(),
              let ino = token() else { return nil }
        let bounds = range.split(separator: "-")
        guard bounds.count == 2, let s = UInt64(bounds[0], radix: 16), let e = UInt64(bounds[1], radix: 16),
              let o = UInt64(off, radix: 16), let i = UInt64(ino) else { return nil }
        while rest.first == " " { rest.removeFirst() }
        return SmapsEntry(start: s, end: e, perms: String(perms), offset: o, device: String(dev),
                          inode: i, path: String(rest), fields: [:], vmFlags: [])
    }
}

/// /proc/PID/maps: the VMA headers alone, which is all a permission check
/// needs and much cheaper for the kernel to produce than smaps.
public enum Maps {
    public static func parse(_ text: String) -> [SmapsEntry] {
        text.split(separator: "\n").compactMap { Smaps.parseHeader($0) }
    }

    public static func read(pid: String = "self") throws(SystemCallError) -> [SmapsEntry] {
        parse(try readTextFile("/proc/\(pid)/maps"))
    }

    /// Only the VMAs overlapping [start, end): the rest of the lines are
    /// skipped after their addresses are read (a process can have thousands).
    public static func read(pid: String = "self", overlapping start: UInt64, _ end: UInt64) throws(SystemCallError) -> [SmapsEntry] {
        let text = try readTextFile("/proc/\(pid)/maps")
        var out: [SmapsEntry] = []
        for line in text.utf8.split(separator: UInt8(ascii: "\n")) {
            var i = line.startIndex
            func hex() -> UInt64 {
                var v: UInt64 = 0
                while i < line.endIndex {
                    let c = line[i]
                    let d: UInt8
                    switch c {
                    case 48...57: d = c - 48
                    case 97...102: d = c - 87
                    default: return v
                    }
                    v = v << 4 | UInt64(d)
                    i = line.index(after: i)
                }
                return v
            }
            let s = hex()
            i = line.index(after: i)  // "-"
            let e = hex()
            if e <= start { continue }
            if s >= end { break }  // maps is sorted by address
            if let entry = Smaps.parseHeader(Substring(line)) { out.append(entry) }
        }
        return out
    }
}

extension SmapsEntry {
    public var readable: Bool { perms.utf8.first == UInt8(ascii: "r") }
    public var writable: Bool { perms.utf8.dropFirst().first == UInt8(ascii: "w") }
}
