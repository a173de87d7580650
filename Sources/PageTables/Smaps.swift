import DaxCore

/// One VMA's record in /proc/PID/smaps (see proc(5)): the VMA itself (the
/// one type for a VMA, as PROCMAP_QUERY gives it too) plus what only smaps
/// and maps say: the path and the counters. Sizes are in bytes.
public struct SmapsEntry: Sendable, Equatable {
    public var vma: VMA
    /// The permissions as the kernel printed them ("rw-s").
    public var perms: String
    /// File path, or a pseudo name ("[heap]", "[anon:...]"), or "" for anonymous.
    public var path: String
    /// Every "Key: N kB" field, in bytes.
    public var fields: [String: UInt64]
    public var vmFlags: [String]

    public var start: UInt64 { vma.start }
    public var end: UInt64 { vma.end }
    public var offset: UInt64 { vma.offset }
    public var inode: UInt64 { vma.inode }
    /// "major:minor" in hex, as maps prints it.
    public var device: String {
        func hex2(_ v: UInt64) -> String { let h = String(v, radix: 16); return h.count < 2 ? "0" + h : h }
        return hex2(vma.device >> 32) + ":" + hex2(vma.device & 0xffff_ffff)
    }
    public var size: UInt64 { end - start }
    public var rss: UInt64 { fields["Rss"] ?? 0 }
    public var kernelPageSize: UInt64 { fields["KernelPageSize"] ?? 0 }
    public var mmuPageSize: UInt64 { fields["MMUPageSize"] ?? 0 }
    public var anonHugePages: UInt64 { fields["AnonHugePages"] ?? 0 }
    public var filePmdMapped: UInt64 { fields["FilePmdMapped"] ?? 0 }
    /// "sf": mapped with MAP_SYNC (synchronous page faults, i.e. DAX).
    public var isSync: Bool { vmFlags.contains("sf") }
    public var isShared: Bool { vma.shared }
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
    /// "VmFlags:" belong to the current one. Works on the UTF-8 bytes: a
    /// process with 10,000 VMAs has a quarter of a million smaps lines.
    public static func parse(_ text: String) throws(SmapsParseError) -> [SmapsEntry] {
        var text = text
        let result: Result<[SmapsEntry], SmapsParseError> = text.withUTF8 { buf in
            var out: [SmapsEntry] = []
            var lineNo = 0
            var at = 0
            while at < buf.count {
                var line = ProcLine(buf, from: at)
                at = line.end + 1
                lineNo += 1
                if line.isEmpty { continue }
                if let key = line.fieldName() {
                    guard !out.isEmpty else { return .failure(.malformedHeader(line: lineNo, text: line.text)) }
                    if key == "VmFlags" {
                        var flags: [String] = []
                        while let f = line.token() { flags.append(f) }
                        out[out.count - 1].vmFlags = flags
                    } else if let n = line.decimal() {
                        out[out.count - 1].fields[key] = line.token() == "kB" ? n * 1024 : n
                    }
                    continue
                }
                guard let e = line.header() else { return .failure(.malformedHeader(line: lineNo, text: line.text)) }
                out.append(e)
            }
            return .success(out)
        }
        return try result.get()
    }

    public static func read(pid: String = "self") throws(SystemCallError) -> String {
        try readTextFile("/proc/\(pid)/smaps")
    }

}

/// One line of a /proc text file, read with a cursor over its bytes.
struct ProcLine {
    let buf: UnsafeBufferPointer<UInt8>
    let end: Int
    var i: Int

    init(_ buf: UnsafeBufferPointer<UInt8>, from start: Int) {
        self.buf = buf
        var e = start
        while e < buf.count && buf[e] != 10 { e += 1 }
        end = e
        i = start
    }

    var isEmpty: Bool { i >= end }
    var text: String { String(decoding: UnsafeBufferPointer(rebasing: buf[i..<end]), as: UTF8.self) }

    mutating func skipSpaces() { while i < end && (buf[i] == 32 || buf[i] == 9) { i += 1 } }

    /// "Name:" at the cursor (letters, digits, underscores, then a colon):
    /// returns the name and moves past the colon. A header's first token has
    /// a "-", so it never is one.
    mutating func fieldName() -> String? {
        var j = i
        while j < end {
            let c = buf[j]
            if (c >= 65 && c <= 90) || (c >= 97 && c <= 122) || (c >= 48 && c <= 57) || c == 95 { j += 1; continue }
            break
        }
        guard j > i, j < end, buf[j] == 58 else { return nil }
        let name = String(decoding: UnsafeBufferPointer(rebasing: buf[i..<j]), as: UTF8.self)
        i = j + 1
        return name
    }

    mutating func token() -> String? {
        skipSpaces()
        guard i < end else { return nil }
        let s = i
        while i < end && buf[i] != 32 && buf[i] != 9 { i += 1 }
        return String(decoding: UnsafeBufferPointer(rebasing: buf[s..<i]), as: UTF8.self)
    }

    mutating func decimal() -> UInt64? {
        skipSpaces()
        let s = i
        var v: UInt64 = 0
        while i < end, buf[i] >= 48, buf[i] <= 57 { v = v &* 10 &+ UInt64(buf[i] - 48); i += 1 }
        return i > s ? v : nil
    }

    mutating func hex() -> UInt64? {
        let s = i
        var v: UInt64 = 0
        while i < end {
            let c = buf[i]
            let d: UInt8
            switch c {
            case 48...57: d = c - 48
            case 97...102: d = c - 87
            case 65...70: d = c - 55
            default: return i > s ? v : nil
            }
            v = v << 4 | UInt64(d)
            i += 1
        }
        return i > s ? v : nil
    }

    /// A maps/smaps header: "start-end perms offset dev inode [path]".
    mutating func header() -> SmapsEntry? {
        guard let s = hex(), i < end, buf[i] == 45 else { return nil }
        i += 1
        guard let e = hex(), let perms = token() else { return nil }
        skipSpaces()
        guard let o = hex(), let dev = token(), let ino = decimal() else { return nil }
        if i < end && buf[i] != 32 { return nil }
        skipSpaces()
        let p = Array(perms.utf8)
        let colon = dev.firstIndex(of: ":")
        let major = colon.flatMap { UInt64(dev[..<$0], radix: 16) } ?? 0
        let minor = colon.flatMap { UInt64(dev[dev.index(after: $0)...], radix: 16) } ?? 0
        let vma = VMA(start: s, end: e, readable: p.first == UInt8(ascii: "r"), writable: p.count > 1 && p[1] == UInt8(ascii: "w"),
                      executable: p.count > 2 && p[2] == UInt8(ascii: "x"), shared: p.count > 3 && p[3] == UInt8(ascii: "s"),
                      offset: o, device: major << 32 | minor, inode: ino)
        return SmapsEntry(vma: vma, perms: perms, path: text, fields: [:], vmFlags: [])
    }
}

/// /proc/PID/maps: the VMA headers alone, which is all a permission check
/// needs and much cheaper for the kernel to produce than smaps.
public enum Maps {
    public static func parse(_ text: String) -> [SmapsEntry] {
        headers(text) { _, _ in true }
    }

    public static func read(pid: String = "self") throws(SystemCallError) -> [SmapsEntry] {
        parse(try readTextFile("/proc/\(pid)/maps"))
    }

    /// Only the VMAs overlapping [start, end): the rest of the lines are
    /// skipped after their addresses are read (a process can have thousands).
    public static func read(pid: String = "self", overlapping start: UInt64, _ end: UInt64) throws(SystemCallError) -> [SmapsEntry] {
        // maps is sorted by address: stop at the first VMA at or past `end`.
        headers(try readTextFile("/proc/\(pid)/maps"), stopAt: end) { s, e in e > start && s < end }
    }

    /// The headers whose [start, end) `keep` accepts; lines are addressed
    /// first and parsed whole only when kept; none at or past `stopAt`.
    private static func headers(_ text: String, stopAt: UInt64 = .max, keep: (UInt64, UInt64) -> Bool) -> [SmapsEntry] {
        var text = text
        return text.withUTF8 { buf in
            var out: [SmapsEntry] = []
            var at = 0
            while at < buf.count {
                var line = ProcLine(buf, from: at)
                at = line.end + 1
                let first = line.i
                guard let s = line.hex(), line.i < line.end, buf[line.i] == 45 else { continue }
                if s >= stopAt { break }
                line.i += 1
                guard let e = line.hex(), keep(s, e) else { continue }
                line.i = first
                if let entry = line.header() { out.append(entry) }
            }
            return out
        }
    }
}

extension SmapsEntry {
    public var readable: Bool { vma.readable }
    public var writable: Bool { vma.writable }
    public var executable: Bool { vma.executable }
}
