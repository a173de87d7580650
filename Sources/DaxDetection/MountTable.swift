import DaxCore

/// One line of /proc/PID/mountinfo (see proc(5)).
public struct MountEntry: Sendable, Equatable {
    public var mountID: Int
    public var parentID: Int
    public var major: UInt32
    public var minor: UInt32
    public var root: String
    public var mountPoint: String
    public var mountOptions: [String]
    public var fsType: String
    public var source: String
    public var superOptions: [String]

    /// How the filesystem's DAX option is set, from the superblock options
    /// (ext4 and xfs print "dax" / "dax=always" / "dax=inode" / "dax=never").
    public var daxMode: DaxMountMode {
        for opt in superOptions + mountOptions {
            switch opt {
            case "dax", "dax=always": return .always
            case "dax=inode": return .inode
            case "dax=never": return .never
            default: continue
            }
        }
        return .none
    }
}

public enum DaxMountMode: String, Sendable {
    /// Every regular file is DAX.
    case always
    /// Per file, by the FS_XFLAG_DAX inode flag: only statx tells.
    case inode
    /// Explicitly off.
    case never
    /// Not mentioned: off.
    case none

    public var isDAX: Bool { self == .always }
}

/// Parsed /proc/PID/mountinfo.
public struct MountTable: Sendable {
    public var entries: [MountEntry]

    public init(entries: [MountEntry]) { self.entries = entries }

    /// Parses mountinfo text; lines that do not have the documented shape are
    /// skipped rather than guessed at.
    public init(parsing text: String) {
        var out: [MountEntry] = []
        for line in text.split(separator: "\n") {
            if let e = MountTable.parseLine(line) { out.append(e) }
        }
        entries = out
    }

    /// /proc/self/mountinfo of the calling process.
    public static func current(pid: String = "self") throws(SystemCallError) -> MountTable {
        MountTable(parsing: try readTextFile("/proc/\(pid)/mountinfo"))
    }

    static func parseLine(_ line: Substring) -> MountEntry? {
        let fields = line.split(separator: " ", omittingEmptySubsequences: true)
        guard fields.count >= 10, let sep = fields.firstIndex(of: "-"), sep >= 6,
              fields.count >= sep + 3 else { return nil }
        let devParts = fields[2].split(separator: ":")
        guard let id = Int(fields[0]), let parent = Int(fields[1]), devParts.count == 2,
              let major = UInt32(devParts[0]), let minor = UInt32(devParts[1]) else { return nil }
        return MountEntry(
            mountID: id, parentID: parent, major: major, minor: minor,
            root: unescape(fields[3]), mountPoint: unescape(fields[4]),
            mountOptions: fields[5].split(separator: ",").map(String.init),
            fsType: String(fields[sep + 1]), source: unescape(fields[sep + 2]),
            superOptions: fields.count > sep + 3 ? fields[sep + 3].split(separator: ",").map(String.init) : [])
    }

    /// The kernel escapes space, tab, newline and backslash as \ooo octal.
    static func unescape(_ s: Substring) -> String {
        guard s.contains("\\") else { return String(s) }
        var bytes: [UInt8] = []
        let u = Array(s.utf8)
        var i = 0
        while i < u.count {
            if u[i] == UInt8(ascii: "\\"), i + 4 <= u.count,
               let v = UInt8(String(decoding: u[(i + 1)..<(i + 4)], as: UTF8.self), radix: 8) {
                bytes.append(v)
                i += 4
            } else {
                bytes.append(u[i])
                i += 1
            }
        }
        return String(decoding: bytes, as: UTF8.self)
    }

    /// The mount that holds `path` (an absolute path with symlinks resolved):
    /// the last-mounted entry with the longest mount point that is a prefix of
    /// it, which is how the kernel's own lookup resolves stacked mounts.
    public func entry(containing path: String) -> MountEntry? {
        var best: MountEntry?
        for e in entries where MountTable.isPrefix(e.mountPoint, of: path) {
            if best == nil || e.mountPoint.count >= best!.mountPoint.count { best = e }
        }
        return best
    }

    /// The mount of the filesystem with device MAJ:MIN (statx of the file
    /// itself: right for an O_TMPFILE or deleted file, whose /proc path names
    /// no place, and for a directory mounted over since). Among several
    /// mounts of it (bind mounts), the one holding `path` if any.
    public func entry(major: UInt32, minor: UInt32, path: String) -> MountEntry? {
        let same = entries.filter { $0.major == major && $0.minor == minor }
        return same.last { MountTable.isPrefix($0.mountPoint, of: path) } ?? same.last
    }

    /// Mounts whose filesystem is DAX for every file (or per inode).
    public var daxMounts: [MountEntry] { entries.filter { $0.daxMode == .always || $0.daxMode == .inode } }

    static func isPrefix(_ mountPoint: String, of path: String) -> Bool {
        if mountPoint == "/" { return path.hasPrefix("/") }
        return path == mountPoint || path.hasPrefix(mountPoint + "/")
    }
}
