#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import CPmem
import DaxCore
import MirrorPolicy
import MirrorKernel

/// A mapping a scenario made (`map R ...`): owns the mapping and the file
/// descriptor behind it, releases both when the scenario ends.
public final class MappedMemory: @unchecked Sendable {
    public let name: String
    public let base: UnsafeMutableRawPointer
    public let length: Int
    public let backing: RegionBacking
    public let path: String?
    /// MAP_SYNC took (or device-dax): the mapping reaches persistent memory
    /// directly, and flushing CPU caches (pmem_persist) makes stores durable.
    public let mapSync: Bool
    /// For a new huge file: "2M" if the extent-size hint took, else the errno.
    public private(set) var extentHint: String?
    /// `map R file PATH`: this mapping created the file.
    public let createdFile: Bool
    private let fd: Int32

    public var address: UInt64 { UInt64(UInt(bitPattern: base)) }
    public var region: Region { Region(base: base, length: length, backing: backing) }

    public struct Options: Sendable {
        public var huge = false
        public var prot: Int32 = PROT_READ | PROT_WRITE
        public var privateFile = false
        /// An existing file shorter than the mapping may be extended (the
        /// scenario created it earlier). Otherwise such a file is EINVAL:
        /// a file that is not the run's own is never resized.
        public var mayResizeExisting = false
        public init() {}
    }

    /// Maps `size` bytes of `kind`. `huge` places the mapping on a 2 MiB
    /// boundary and asks for huge pages (MADV_HUGEPAGE; for a file, a 2 MiB
    /// extent-size hint where the filesystem has one, as xfs needs for PMDs).
    public init(name: String, kind: MemoryKind, path: String?, size: Int, options: Options) throws(MirrorError) {
        self.name = name
        let page = Syscall.pageSize
        guard size > 0, size % page == 0 else {
            throw MirrorError(.EINVAL, "size \(size) is not a positive multiple of the page size (\(page))")
        }
        length = size
        let devdax = kind == .devdax ? try Self.deviceDAXGeometry(path, size: size) : nil
        let align = devdax.map { Int($0.align) } ?? (options.huge ? 2 << 20 : page)
        // An aligned window, then the mapping over it with MAP_FIXED.
        let window: AlignedReservation
        do { window = try AlignedReservation(length: size, alignment: align) }
        catch { throw MirrorError(error.errno, "reserving address space") }
        let made: Made
        do throws(MirrorError) {
            made = try Self.map(kind, name: name, path: path, at: window.base, size: size, options: options, devdax: devdax)
        } catch {
            window.release()
            throw error
        }
        (fd, backing, self.path) = (made.fd, made.backing, made.path)
        (extentHint, createdFile) = (made.hint, made.created)
        base = window.base
        mapSync = made.sync
        if options.huge && kind != .file { _ = madvise(window.base, size, MADV_HUGEPAGE) }
    }

    /// What mapping one kind made.
    private struct Made {
        var fd: Int32 = -1
        var backing: RegionBacking
        var path: String?
        var sync = false
        var hint: String?
        var created = false
    }

    private typealias DeviceDAXGeometry = (base: UInt64, size: UInt64, align: UInt64)

    /// A device-dax device's physical base, size and alignment (sysfs), with
    /// `size` checked against them.
    private static func deviceDAXGeometry(_ path: String?, size: Int) throws(MirrorError) -> DeviceDAXGeometry {
        guard let path, let name = path.split(separator: "/").last else { throw MirrorError(.EINVAL, "map ... devdax needs a /dev/daxX.Y") }
        let sys = "/sys/bus/dax/devices/\(name)"
        guard let r = readSysfsAttribute(sys + "/resource").flatMap({ UInt64($0.dropFirst(2), radix: 16) }),
              let sz = readSysfsAttribute(sys + "/size").flatMap({ UInt64($0) }),
              let al = readSysfsAttribute(sys + "/align").flatMap({ UInt64($0) }) else {
            throw MirrorError(.ENOENT, "\(path) is not a device-dax device (no \(sys)); see `daxmirror devices`")
        }
        guard UInt64(size) <= sz, UInt64(size) % al == 0 else {
            throw MirrorError(.EINVAL, "a device-dax mapping must be a multiple of its alignment (\(al) bytes) and at most \(sz)")
        }
        return (r, sz, al)
    }

    /// Maps `size` bytes of `kind` at `at` (MAP_FIXED over the reservation).
    /// On failure nothing it opened stays open.
    private static func map(_ kind: MemoryKind, name: String, path: String?, at: UnsafeMutableRawPointer, size: Int,
                            options: Options, devdax: DeviceDAXGeometry?) throws(MirrorError) -> Made {
        switch kind {
        case .anonymous:
            guard mmap(at, size, options.prot, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) != MAP_FAILED else {
                throw MirrorError(Errno.current, "mapping anonymous memory")
            }
            return Made(backing: .anonymous)
        case .shmem:
            let fd = dm_memfd_create("daxmirror-\(name)", DM_MFD_CLOEXEC)
            guard fd >= 0 else { throw MirrorError(Errno.current, "memfd_create") }
            guard ftruncate(fd, off_t(size)) == 0, mmap(at, size, options.prot, MAP_SHARED | MAP_FIXED, fd, 0) != MAP_FAILED else {
                let e = Errno.current
                close(fd)
                throw MirrorError(e, "sizing and mapping the memfd")
            }
            return Made(fd: fd, backing: .shmem(fd: fd))
        case .file:
            guard let path, !path.isEmpty else { throw MirrorError(.EINVAL, "map ... file needs a PATH") }
            let f = try mapFile(path, at: at, size: size, options: options)
            return Made(fd: f.fd, backing: .file(path: path, fd: f.fd, shared: !options.privateFile), path: path,
                        sync: f.sync, hint: f.hint, created: f.created)
        case .devdax:
            guard let path, let devdax else { throw MirrorError(.EINVAL, "map ... devdax needs a /dev/daxX.Y") }
            let fd = open(path, O_RDWR | O_CLOEXEC)
            guard fd >= 0 else { throw MirrorError(Errno.current, "opening \(path)") }
            guard mmap(at, size, options.prot, MAP_SHARED | MAP_FIXED, fd, 0) != MAP_FAILED else {
                let e = Errno.current
                close(fd)
                throw MirrorError(e, "mapping \(path)")
            }
            // Device-dax is always a direct, synchronous mapping of the media.
            return Made(fd: fd, backing: .devdax(path: path, fd: fd, physicalBase: devdax.base, size: devdax.size, align: devdax.align),
                        path: path, sync: true)
        }
    }

    /// Opens or creates `path` (O_EXCL first, so "created" is the kernel's
    /// word) and maps `size` bytes of it at `at`, with MAP_SYNC where the
    /// kernel takes it.
    private static func mapFile(_ path: String, at: UnsafeMutableRawPointer, size: Int,
                                options: Options) throws(MirrorError) -> (fd: Int32, sync: Bool, hint: String?, created: Bool) {
        var fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o600)
        let created = fd >= 0
        if !created && errno == EEXIST { fd = open(path, O_RDWR | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK | O_NOCTTY) }
        guard fd >= 0 else { throw MirrorError(Errno.current, "opening \(path)") }
        do throws(MirrorError) {
            var st = stat()
            guard fstat(fd, &st) == 0 else { throw MirrorError(Errno.current, "fstat of \(path)") }
            guard st.st_mode & S_IFMT == S_IFREG else { throw MirrorError(.EINVAL, "\(path) is not a regular file") }
            var hint: String?
            if options.huge && st.st_size == 0 {
                // ext4 and tmpfs have no such hint (and ext4 needs none).
                hint = dm_set_extent_size_hint(fd, 2 << 20) == 0 ? "2M" : Errno.current.name
            }
            if st.st_size < off_t(size) {
                guard created || options.mayResizeExisting else {
                    throw MirrorError(.EINVAL, "\(path) exists and is \(st.st_size) bytes, less than \(size): a scenario never resizes a file it did not create (map at most its size, or use a relative path: the run's own file)")
                }
                guard ftruncate(fd, off_t(size)) == 0 else { throw MirrorError(Errno.current, "sizing \(path)") }
            }
            let shared = !options.privateFile
            var sync = false
            if shared, dm_mmap_shared_fixed(at, size, options.prot, fd, 0, 1) != MAP_FAILED {
                sync = true
            } else if mmap(at, size, options.prot, (shared ? MAP_SHARED : MAP_PRIVATE) | MAP_FIXED, fd, 0) == MAP_FAILED {
                throw MirrorError(Errno.current, "mapping \(path)")
            }
            return (fd, sync, hint, created)
        } catch {
            close(fd)
            if created { unlink(path) }
            throw error
        }
    }

    deinit {
        // Never the holes: another mapping of this process may live there.
        var at: UInt64 = 0
        for hole in holes + [UInt64(length)..<UInt64(length)] {
            if hole.lowerBound > at { munmap(base + Int(at), Int(hole.lowerBound - at)) }
            at = hole.upperBound
        }
        if fd >= 0 { close(fd) }
    }

    /// Parts of the region (byte offsets, page-aligned, sorted, disjoint)
    /// that `unmap` gave back to the process: the kernel may have placed
    /// another mapping there since (the allocator's), which no command may
    /// touch, remap over or unmap.
    public private(set) var holes: [Range<UInt64>] = []

    func gaveBack(_ r: Range<UInt64>) {
        var merged = r
        var kept: [Range<UInt64>] = []
        for h in holes {
            if h.upperBound < merged.lowerBound || h.lowerBound > merged.upperBound { kept.append(h) }
            else { merged = min(h.lowerBound, merged.lowerBound)..<max(h.upperBound, merged.upperBound) }
        }
        holes = (kept + [merged]).sorted { $0.lowerBound < $1.lowerBound }
    }

    func tookBack(_ r: Range<UInt64>) {
        holes = holes.flatMap { h -> [Range<UInt64>] in
            guard h.overlaps(r) else { return [h] }
            return [h.lowerBound..<max(h.lowerBound, r.lowerBound), min(h.upperBound, r.upperBound)..<h.upperBound]
                .filter { !$0.isEmpty }
        }
    }

    /// The parts of `r` that are holes.
    func holeParts(of r: Range<UInt64>) -> [Range<UInt64>] {
        holes.compactMap { h in h.overlaps(r) ? max(h.lowerBound, r.lowerBound)..<min(h.upperBound, r.upperBound) : nil }
    }

    public var fileDescriptor: Int32? { fd >= 0 ? fd : nil }
}
