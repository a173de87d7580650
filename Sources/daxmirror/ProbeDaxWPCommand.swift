import ArgumentParser
import CDaxShim
import DaxCore
import Userfaultfd
#if canImport(Glibc)
import Glibc
#endif

/// Reproduces the DAX write-protect bug in this (disposable) process: arms
/// userfaultfd write protection on a DAX file and touches a page that had no
/// PTE when armed. Run only as a child with a timeout (`daxmirror caps` does):
/// on affected kernels this process hangs in a fault loop or dies of SIGBUS.
struct ProbeDaxWPCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "probe-dax-wp",
        abstract: "Child-process probe: does arming uffd write protection on DAX hang or SIGBUS? (run via caps)",
        shouldDisplay: false)

    @Option(name: .customLong("dir"), help: ArgumentHelp("A directory on a DAX mount.", valueName: "dir")) var dirPath: PathArgument
    var dir: FilePath { dirPath.path }
    @Option(help: "read or write the untouched page.") var access: String = "read"

    func run() throws {
        let size = 8 << 20
        let fd = try Failure.wrapping("create a file in \(dir)") { () throws(SystemCallError) -> OwnedFD in
            try OwnedFD.open(dir, DM_O_TMPFILE | O_RDWR, mode: 0o600)
        }
        guard ftruncate(fd.rawValue, off_t(size)) == 0 else { throw Failure.from(SystemCallError("ftruncate", dir.description), doing: "size") }
        // 2 MiB-aligned, so the kernel may use PMD entries; MAP_FIXED over
        // the reservation (a hint alone may be ignored, and leak it).
        let window = try Failure.wrapping("reserve address space") { () throws(SystemCallError) in
            try AlignedReservation(length: size, alignment: 2 << 20)
        }
        guard let p = dm_mmap_shared_fixed(window.base, size, PROT_READ | PROT_WRITE, fd.rawValue, 0, 1), p != MAP_FAILED else {
            throw Failure(.notDAX, "\(dir) refuses MAP_SYNC: not a DAX mount")
        }
        let base = UnsafeMutableRawPointer(mutating: p)
        base.storeBytes(of: 1, as: UInt8.self)  // page 0 has a mapping when armed
        let uffd: Userfaultfd
        do {
            uffd = try Userfaultfd(features: [.wpAsync])
            try uffd.register(start: base, length: size, mode: .writeProtect)
            try uffd.writeProtect(base, length: size, protect: true)
        } catch {
            emit("not-applicable \(error)")
            return
        }
        emit("armed")
        let untouched = base + (4 << 20)
        if access == "write" {
            untouched.storeBytes(of: 2, as: UInt8.self)
        } else {
            _ = untouched.load(as: UInt8.self)
        }
        emit("ok")
        withExtendedLifetime(uffd) {}
    }
}
