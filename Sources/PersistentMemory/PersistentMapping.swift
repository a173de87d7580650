#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import CPmem
import DaxCore
import DaxDetection

/// How a mapping is opened. Mirrors libpmem's PMEM_FILE_* flags, plus
/// `overwrite`: the explicit consent needed before an existing file is resized.
public struct MapOptions: OptionSet, Sendable {
    public let rawValue: Int
    public init(rawValue: Int) { self.rawValue = rawValue }
    /// Create the file if it does not exist (needs a size).
    public static let create = MapOptions(rawValue: 1 << 0)
    /// Fail if the file exists, even with `overwrite`.
    public static let exclusive = MapOptions(rawValue: 1 << 1)
    /// Size a new file with ftruncate (holes) instead of allocating blocks.
    public static let sparse = MapOptions(rawValue: 1 << 2)
    /// The path is a directory; map an unnamed O_TMPFILE in it.
    public static let tmpfile = MapOptions(rawValue: 1 << 3)
    /// With `create`: an existing file may be truncated and resized.
    public static let overwrite = MapOptions(rawValue: 1 << 4)
    /// Refuse (exit 10) unless the mapping is persistent memory: checked
    /// before an existing file is touched, and again on libpmem's verdict.
    public static let requirePersistentMemory = MapOptions(rawValue: 1 << 5)
}

/// How `persist` makes a store durable on this mapping.
public enum PersistMethod: String, Sendable {
    /// CPU cache flush + fence (pmem_persist): the mapping is real pmem.
    case cacheFlush = "cache_flush"
    /// msync(2) (pmem_msync): the page cache is between us and the medium.
    case msync
}

/// A file mapped through libpmem's `pmem_map_file`. Owns the mapping and
/// unmaps it in `deinit` (or on `unmap()`).
public final class PersistentMapping: @unchecked Sendable {
    public let path: FilePath
    public private(set) var base: UnsafeMutableRawPointer?
    public let length: Int
    /// libpmem's verdict (pmem_map_file's is_pmem).
    public let isPersistentMemory: Bool
    /// Why it is (or is not) persistent memory, in one sentence.
    public let reason: String
    /// The MAP_SHARED_VALIDATE|MAP_SYNC trial on the same file: nil when accepted.
    public let mapSyncError: Errno?
    public let daxStatus: DaxStatus?
    /// True when this call created the file.
    public let created: Bool
    /// The file, held open for the mapping's life: it carries the exclusive
    /// lock a created or overwritten file is held under (see openFile).
    private let file: OwnedFD
    /// The descriptor the mapping was made from (SEEK_DATA/SEEK_HOLE on it).
    public var fileDescriptor: Int32 { file.rawValue }
    /// The kernel maps this file directly (MAP_SYNC accepted, or device-dax):
    /// no page cache between the mapping and the medium.
    public var isDirectAccess: Bool { mapSyncError == nil }

    public var persistMethod: PersistMethod { isPersistentMemory ? .cacheFlush : .msync }

    /// Opens (or creates) and maps `path`. Never follows a symlink when
    /// creating, creates files 0600, and never truncates an existing file
    /// without `.overwrite`. On any failure after creating the file, removes it.
    public convenience init(path: String, size: Int? = nil, options: MapOptions = [],
                            mode: mode_t = 0o600, mounts: MountTable? = nil) throws(Failure) {
        try self.init(path: FilePath(path), size: size, options: options, mode: mode, mounts: mounts)
    }

    public init(path: FilePath, size: Int? = nil, options: MapOptions = [],
                mode: mode_t = 0o600, mounts: MountTable? = nil) throws(Failure) {
        self.path = path
        if let size, size <= 0 {
            throw Failure(.invalidArgument, "size must be positive, got \(size)")
        }
        if options.contains(.create) || options.contains(.tmpfile), size == nil {
            throw Failure(.invalidArgument, "creating \(path) needs a size (--size BYTES)")
        }
        if !options.contains(.create) && !options.contains(.tmpfile) && size != nil {
            throw Failure(.invalidArgument, "a size is only used when creating; add --create (and --overwrite to resize an existing file)")
        }

        let opened = try PersistentMapping.openFile(path: path, size: size, options: options, mode: mode)
        let fd = opened.fd
        file = fd
        var createdPath: FilePath? = opened.created && !options.contains(.tmpfile) ? path : nil
        defer { if let p = createdPath { _ = p.withCString { unlink($0) } } }

        // Trial MAP_SYNC on the same inode: the kernel's own word on DAX.
        let trial = dm_mmap_sync(nil, Syscall.pageSize, PROT_READ | PROT_WRITE, fd.rawValue, 0)
        if trial == MAP_FAILED {
            mapSyncError = .current
        } else {
            mapSyncError = nil
            munmap(trial, Syscall.pageSize)
        }

        // Map through the descriptor we opened, via its /proc magic link, so
        // libpmem maps exactly the inode we checked (no symlink or rename race).
        var mapped = 0
        var isPmem: Int32 = 0
        guard let addr = pmem_map_file("/proc/self/fd/\(fd.rawValue)", 0, 0, 0, &mapped, &isPmem) else {
            let e = Errno.current
            let msg = pmem_errormsg().map { String(cString: $0) } ?? e.message
            if e == .ENODEV {
                throw Failure(.notRegularFile, "\(path) cannot be mapped: its filesystem or driver does not allow mmap (\(e.name)); map a regular file")
            }
            throw Failure.from(SystemCallError("pmem_map_file", path.description, errno: e), doing: "map")
                .withDetail(msg)
        }
        base = addr
        length = mapped
        isPersistentMemory = isPmem != 0
        created = opened.created

        let table = mounts ?? (try? MountTable.current())
        let fdPath = "/proc/self/fd/\(fd.rawValue)"
        daxStatus = table.flatMap { try? DaxStatus.inspect(path: fdPath, mounts: $0, inventory: nil) }
        reason = PersistentMapping.explain(isPmem: isPmem != 0, mapSyncError: mapSyncError, dax: daxStatus)
        if options.contains(.requirePersistentMemory) && isPmem == 0 {
            pmem_unmap(addr, mapped)
            base = nil
            throw Failure(.notDAX, "\(path) is not persistent memory: \(reason)")
        }
        createdPath = nil
    }

    deinit { unmap() }

    public func unmap() {
        if let b = base {
            pmem_unmap(b, length)
            base = nil
        }
    }

    private func check(_ offset: Int, _ count: Int) throws(Failure) -> UnsafeMutableRawPointer {
        guard let b = base else { throw Failure(.invalidArgument, "\(path) is no longer mapped") }
        guard offset >= 0, count >= 0, offset <= length, count <= length - offset else {
            throw Failure(.invalidArgument, "range \(offset)+\(count) is outside the \(length)-byte mapping")
        }
        return b + offset
    }

    /// Makes `count` bytes at `offset` durable: cache flush + drain on pmem,
    /// msync otherwise (libpmem rounds to pages for msync).
    public func persist(offset: Int = 0, count: Int? = nil) throws(Failure) {
        let n = count ?? (length - offset)
        let p = try check(offset, n)
        if isPersistentMemory {
            pmem_persist(p, n)
        } else if pmem_msync(p, n) != 0 {
            throw Failure.from(SystemCallError("msync", path.description), doing: "persist")
        }
    }

    /// Flushes CPU caches for the range without waiting (pmem only; pair with `drain`).
    public func flush(offset: Int, count: Int) throws(Failure) {
        pmem_flush(try check(offset, count), count)
    }

    /// Waits for earlier flushes to reach the persistence domain.
    public func drain() { pmem_drain() }

    /// Copies `bytes` to `offset` and makes them durable before returning.
    public func memcpyPersist(to offset: Int, from bytes: UnsafeRawBufferPointer) throws(Failure) {
        let p = try check(offset, bytes.count)
        guard let src = bytes.baseAddress, bytes.count > 0 else { return }
        if isPersistentMemory {
            pmem_memcpy_persist(p, src, bytes.count)
        } else {
            memcpy(p, src, bytes.count)
            try persist(offset: offset, count: bytes.count)
        }
    }

    static func explain(isPmem: Bool, mapSyncError: Errno?, dax: DaxStatus?) -> String {
        let force = getenv("PMEM_IS_PMEM_FORCE").map { String(cString: $0) }
        if isPmem {
            if force == "1" {
                return mapSyncError == nil
                    ? "forced by PMEM_IS_PMEM_FORCE=1 (the file is also DAX)"
                    : "forced by PMEM_IS_PMEM_FORCE=1 (the file is not DAX; stores are NOT durable without msync)"
            }
            return "MAP_SYNC accepted: a DAX mapping of persistent memory"
        }
        if force == "0" { return "disabled by PMEM_IS_PMEM_FORCE=0" }
        if let r = dax?.notDAXReason { return r }
        if let e = mapSyncError { return "the kernel refused MAP_SYNC (\(e.name))" }
        return "libpmem did not detect persistent memory"
    }

    // MARK: opening

    struct Opened {
        let fd: OwnedFD
        let created: Bool
    }

    static func openFile(path: FilePath, size: Int?, options: MapOptions, mode: mode_t) throws(Failure) -> Opened {
        if options.contains(.tmpfile) { return try openTemporary(in: path, size: size!, options: options, mode: mode) }
        if options.contains(.create) { return try create(path, size: size!, options: options, mode: mode) }
        return try openExisting(path)
    }

    /// An unnamed O_TMPFILE in the directory `path`.
    private static func openTemporary(in path: FilePath, size: Int, options: MapOptions, mode: mode_t) throws(Failure) -> Opened {
        let fd = try Failure.wrapping("create a temporary file in") { () throws(SystemCallError) -> OwnedFD in
            try OwnedFD.open(path, DM_O_TMPFILE | O_RDWR, mode: mode)
        }
        if !options.contains(.sparse) { try checkSpace(fd: fd.rawValue, path: path, size: size) }
        if options.contains(.requirePersistentMemory), let why = notPersistentMemory(fd: fd.rawValue) {
            throw Failure(.notDAX, "\(path) is not persistent memory: \(why)")
        }
        try checkLargestFile(fd: fd.rawValue, path: path, size: size)
        try allocate(fd: fd.rawValue, path: path, size: size, sparse: options.contains(.sparse))
        return Opened(fd: fd, created: true)
    }

    /// An existing file (or device-dax), as it is: never resized.
    private static func openExisting(_ path: FilePath) throws(Failure) -> Opened {
        // What it is, before opening: a FIFO would be opened, a socket
        // refuses with ENXIO; both are "not a regular file", as is any device
        // but device-dax.
        var st = stat()
        if path.withCString({ stat($0, &st) }) == 0 { try requireMappable(st, path) }
        let fd: OwnedFD
        do {
            fd = try OwnedFD.open(path, O_RDWR | O_NOCTTY | O_NONBLOCK)
        } catch where error.errno == .EISDIR {
            throw notAFile(path, "a directory")
        } catch where error.errno == .ENXIO {
            throw notAFile(path, "a socket or a device with nothing behind it")
        } catch {
            throw Failure.from(error, doing: "open")
        }
        guard fstat(fd.rawValue, &st) == 0 else { throw Failure.from(SystemCallError("fstat", path.description), doing: "open") }
        try requireMappable(st, path)  // again: the name may have moved meanwhile
        if let fs = pseudoFilesystem(fd.rawValue) {
            throw notAFile(path, "a file of \(fs), made by the kernel on reading, with no data of its own to map")
        }
        if st.st_mode & S_IFMT == S_IFREG && st.st_size == 0 {
            throw Failure(.invalidArgument, "\(path) is empty: nothing to map; give it a size with --create --size BYTES --overwrite")
        }
        return Opened(fd: fd, created: false)
    }

    /// A regular file, or a device-dax character device (libpmem maps both).
    private static func requireMappable(_ st: stat, _ path: FilePath) throws(Failure) {
        switch st.st_mode & S_IFMT {
        case S_IFREG: return
        case S_IFDIR: throw notAFile(path, "a directory")
        case S_IFIFO: throw notAFile(path, "a FIFO")
        case S_IFSOCK: throw notAFile(path, "a socket")
        case S_IFBLK: throw notAFile(path, "a block device (map a file on its filesystem, or its namespace as device-dax)")
        case S_IFCHR:
            let rdev = UInt64(st.st_rdev)  // glibc's major()/minor()
            let dev = "\(((rdev >> 8) & 0xfff) | ((rdev >> 32) & ~0xfff)):\((rdev & 0xff) | ((rdev >> 12) & ~0xff))"
            if readLink("/sys/dev/char/\(dev)/subsystem")?.hasSuffix("/dax") == true { return }
            throw notAFile(path, "a character device that is not device-dax")
        default: throw notAFile(path, "not a regular file")
        }
    }

    private static func notAFile(_ path: FilePath, _ what: String) -> Failure {
        Failure(.notRegularFile, "\(path) is \(what): map a regular file (or --tmpfile DIR for an unnamed one)")
    }

    /// The name of a filesystem whose files are made up by the kernel
    /// (proc, sysfs, debugfs, …), or nil.
    private static func pseudoFilesystem(_ fd: Int32) -> String? {
        let names: [Int: String] = [0x9fa0: "procfs", 0x62656572: "sysfs", 0x64626720: "debugfs", 0x74726163: "tracefs",
                                    0x27e0eb: "cgroup", 0x63677270: "cgroup2", 0x73636673: "securityfs", 0x62656570: "configfs",
                                    0xcafe4a11: "bpf", 0x6165676c: "pstore", 0xde5e81e4: "efivarfs"]
        return names[dm_fs_magic(fd)]
    }

    /// Creates `path` (or, with --overwrite, truncates and resizes it).
    private static func create(_ path: FilePath, size: Int, options: MapOptions, mode: mode_t) throws(Failure) -> Opened {
        // Name a symlink as the cause up front (the open below would only say
        // EEXIST or ELOOP); O_NOFOLLOW still closes the race between this
        // check and the open.
        var lst = stat()
        let exists = path.withCString { lstat($0, &lst) } == 0
        if exists && lst.st_mode & S_IFMT == S_IFLNK {
            throw Failure(.symlinkRefused, "\(path) is a symbolic link; refusing to create through it (give the real path)")
        }
        if exists && lst.st_mode & S_IFMT != S_IFREG { try requireMappable(lst, path) }
        if exists && (!options.contains(.overwrite) || options.contains(.exclusive)) {
            throw Failure(.alreadyExists, "\(path) already exists; add --overwrite to truncate and resize it (its contents are lost)")
        }
        if !options.contains(.sparse) {
            try checkSpace(path: path.parent, size: size, reclaimable: exists ? Int(lst.st_blocks) * 512 : 0)
        }
        var flags = O_RDWR | O_CREAT | O_NOFOLLOW | O_NOCTTY | O_NONBLOCK
        if !exists { flags |= O_EXCL }
        let fd = try Failure.wrapping("create") { () throws(SystemCallError) -> OwnedFD in try OwnedFD.open(path, flags, mode: mode) }
        do throws(Failure) {
            try prepare(fd: fd.rawValue, path: path, size: size, options: options, existed: exists)
        } catch {
            if !exists { _ = path.withCString { unlink($0) } }
            throw error
        }
        return Opened(fd: fd, created: !exists)
    }

    /// Nothing about an existing file changes until every check has passed:
    /// the lock (a second --overwrite of the same file fails here instead of
    /// interleaving), persistent memory where it is required, and a size the
    /// filesystem and this process's file-size limit can hold.
    private static func prepare(fd: Int32, path: FilePath, size: Int, options: MapOptions, existed: Bool) throws(Failure) {
        var st = stat()
        do { try Syscall.retrying("fstat", path.description) { fstat(fd, &st) } } catch { throw Failure.from(error, doing: "create") }
        if st.st_mode & S_IFMT != S_IFREG { throw notAFile(path, "not a regular file") }
        try lock(fd: fd, path: path)
        if options.contains(.requirePersistentMemory), let why = notPersistentMemory(fd: fd) {
            throw Failure(.notDAX, "\(path) is not persistent memory: \(why)\(existed ? " (the existing file was left as it was)" : "")")
        }
        try checkLargestFile(fd: fd, path: path, size: size)
        if existed {
            do { try Syscall.retrying("ftruncate", path.description) { ftruncate(fd, 0) } } catch { throw Failure.from(error, doing: "truncate") }
        }
        try allocate(fd: fd, path: path, size: size, sparse: options.contains(.sparse))
        // A crash must not lose the file itself: make its size and its
        // directory entry durable before anyone writes data into it.
        try syncMetadata(fd: fd, path: path)
    }

    /// An exclusive advisory lock, held while the descriptor is open: one
    /// daxmirror at a time creates or overwrites a file.
    private static func lock(fd: Int32, path: FilePath) throws(Failure) {
        do { try Syscall.retrying("flock", path.description) { flock(fd, LOCK_EX | LOCK_NB) } } catch {
            if error.errno == .EWOULDBLOCK {
                throw Failure(.busy, "\(path) is being created or overwritten by another process (it holds the file's lock); try again when it is done")
            }
            throw Failure.from(error, doing: "lock")
        }
    }

    /// libpmem's verdict, foretold without mapping: PMEM_IS_PMEM_FORCE if
    /// set, else whether the kernel accepts MAP_SYNC for this file. nil: it is.
    private static func notPersistentMemory(fd: Int32) -> String? {
        switch getenv("PMEM_IS_PMEM_FORCE").map({ String(cString: $0) }) {
        case "1"?: return nil
        case "0"?: return "disabled by PMEM_IS_PMEM_FORCE=0"
        default:
            let trial = dm_mmap_sync(nil, Syscall.pageSize, PROT_READ | PROT_WRITE, fd, 0)
            if trial == MAP_FAILED { return "the kernel refused MAP_SYNC (\(Errno.current.name)): not a DAX file" }
            munmap(trial, Syscall.pageSize)
            return nil
        }
    }

    /// A size past the filesystem's largest file, or past this process's
    /// file-size limit (RLIMIT_FSIZE, `ulimit -f`), is refused before
    /// anything is written: lseek to it fails (EINVAL) exactly where
    /// ftruncate or fallocate would be EFBIG, and it changes nothing.
    private static func checkLargestFile(fd: Int32, path: FilePath, size: Int) throws(Failure) {
        var rl = rlimit()
        if getrlimit(__rlimit_resource_t(RLIMIT_FSIZE.rawValue), &rl) == 0, rl.rlim_cur != rlim_t.max, UInt64(size) > UInt64(rl.rlim_cur) {
            throw Failure(.noSpace, "--size \(ByteSize.human(UInt64(size))) is past this process's file-size limit of \(ByteSize.human(UInt64(rl.rlim_cur))) (ulimit -f); raise the limit or map a smaller --size")
        }
        guard lseek(fd, off_t(size), SEEK_SET) < 0 else { lseek(fd, 0, SEEK_SET); return }
        let e = Errno.current
        guard e == .EINVAL || e == .EFBIG || e.rawValue == EOVERFLOW else {
            throw Failure.from(SystemCallError("lseek", path.description, errno: e), doing: "size")
        }
        throw Failure(.invalidArgument, "--size \(ByteSize.human(UInt64(size))) is larger than the largest file the filesystem of \(path) can hold")
    }

    private static func allocate(fd: Int32, path: FilePath, size: Int, sparse: Bool) throws(Failure) {
        if sparse {
            do { try Syscall.retrying("ftruncate", path.description) { ftruncate(fd, off_t(size)) } } catch { throw Failure.from(error, doing: "size") }
            return
        }
        do { try Syscall.returningError("posix_fallocate", path.description) { posix_fallocate(fd, 0, off_t(size)) } } catch {
            if error.errno == .ENOSPC {
                throw Failure(.noSpace, "not enough space for \(size) bytes at \(path); free space or use a smaller --size")
            }
            throw Failure.from(error, doing: "allocate")
        }
    }

    private static func syncMetadata(fd: Int32, path: FilePath) throws(Failure) {
        let parent = path.parent
        try Failure.wrapping("sync") { () throws(SystemCallError) in
            try Syscall.retrying("fsync", path.description) { fsync(fd) }
            let dfd = try OwnedFD.open(parent, O_RDONLY | O_DIRECTORY)
            try Syscall.retrying("fsync", parent.description) { fsync(dfd.rawValue) }
        }
    }

    private static func checkSpace(path: FilePath, size: Int, reclaimable: Int = 0) throws(Failure) {
        var vfs = statvfs()
        guard path.withCString({ statvfs($0, &vfs) }) == 0 else {
            throw Failure.from(SystemCallError("statvfs", path.description), doing: "inspect the filesystem of")
        }
        try checkSpace(vfs, path: path, size: size, reclaimable: reclaimable)
    }

    private static func checkSpace(fd: Int32, path: FilePath, size: Int) throws(Failure) {
        var vfs = statvfs()
        guard fstatvfs(fd, &vfs) == 0 else {
            throw Failure.from(SystemCallError("fstatvfs", path.description), doing: "inspect the filesystem of")
        }
        try checkSpace(vfs, path: path, size: size, reclaimable: 0)
    }

    private static func checkSpace(_ vfs: statvfs, path: FilePath, size: Int, reclaimable: Int) throws(Failure) {
        // No blocks at all: a filesystem without a size limit (tmpfs size=0,
        // some FUSE and pseudo filesystems), not one with 0 B free.
        if vfs.f_blocks == 0 { return }
        let free = UInt64(vfs.f_bavail) * UInt64(vfs.f_frsize) + UInt64(reclaimable)
        if UInt64(size) > free {
            throw Failure(.noSpace, "--size \(ByteSize.human(UInt64(size))) is larger than the \(ByteSize.human(free)) free on the filesystem of \(path); free space or use a smaller --size")
        }
    }
}

extension Failure {
    func withDetail(_ detail: String) -> Failure {
        Failure(code, message + " [" + detail.trimmingSpaces() + "]", errno: errno)
    }
}
