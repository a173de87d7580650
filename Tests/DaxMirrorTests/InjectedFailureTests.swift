import Foundation
import Testing
import DaxCore
import MirrorPolicy
@testable import MirrorKernel
@testable import PersistentMemory

/// Error branches driven through the one system-call layer (`Syscall.inject`,
/// per thread, as swift-system's Mocking.swift drives its calls): no
/// filesystem filled, no second process racing for a lock.
@Suite("injected system-call failures")
struct InjectedFailureTests {
    /// posix_fallocate's ENOSPC (it returns its error rather than setting
    /// errno) is "no space" with the fix, and the file created for the
    /// mapping is gone.
    @Test func noSpaceWhileAllocatingIsNoSpaceAndLeavesNoFile() throws {
        let dir = try ScratchDirectory()
        Syscall.inject("posix_fallocate", .ENOSPC)
        defer { Syscall.clearInjection() }
        let e = #expect(throws: Failure.self) { try PersistentMapping(path: dir.file("a"), size: 1 << 20, options: [.create]) }
        #expect(e?.code == .noSpace && e?.message.contains("free space") == true, "\(String(describing: e))")
        #expect(!FileManager.default.fileExists(atPath: dir.file("a")), "the file it created is left behind")
    }

    /// Another process holding the file's lock (flock's EWOULDBLOCK) is
    /// "busy", and an existing file is left exactly as it was: the lock is
    /// taken before anything is truncated.
    @Test func aLockHeldElsewhereIsBusyAndTheFileIsUntouched() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("a")
        try Data(repeating: 9, count: 12288).write(to: URL(fileURLWithPath: path))
        Syscall.inject("flock", .EWOULDBLOCK)
        defer { Syscall.clearInjection() }
        let e = #expect(throws: Failure.self) {
            try PersistentMapping(path: path, size: 4096, options: [.create, .overwrite])
        }
        #expect(e?.code == .busy && e?.message.contains("try again") == true, "\(String(describing: e))")
        #expect(try Data(contentsOf: URL(fileURLWithPath: path)) == Data(repeating: 9, count: 12288))
    }

    /// EINTR is retried by the layer, not seen: three interrupted calls, then
    /// the real one.
    @Test func anInterruptedCallIsRetried() throws {
        let dir = try ScratchDirectory()
        Syscall.inject("posix_fallocate", .EINTR, times: 3)
        defer { Syscall.clearInjection() }
        let m = try PersistentMapping(path: dir.file("a"), size: 1 << 20, options: [.create])
        #expect(m.length == 1 << 20)
        // All three were used up, none left for the next call.
        #expect(throws: Never.self) { try Syscall.returningError("posix_fallocate") { 0 } }
    }

    /// The device's read of a file it cannot map (opened read-only) goes
    /// through pread: a short read (end of file: truncated meanwhile) is
    /// EFAULT, as dmirror answers a truncated page, and pread's own error
    /// is carried out as the kernel gave it.
    @Test func aShortReadThroughTheApertureIsEFAULTAndAnErrorKeepsItsErrno() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("a")
        try Data(repeating: 5, count: 8192).write(to: URL(fileURLWithPath: path))
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        try #require(fd >= 0)
        defer { close(fd) }
        let aperture = Aperture(fd: fd)
        var buffer = [UInt8](repeating: 0, count: 8192)
        func read() throws(MirrorError) {
            let r: Result<Void, MirrorError> = buffer.withUnsafeMutableBytes { b in
                do throws(MirrorError) { try aperture.read(fileOffset: 0, into: b.baseAddress!, count: b.count); return .success(()) }
                catch { return .failure(error) }
            }
            try r.get()
        }
        try read()
        #expect(buffer.allSatisfy { $0 == 5 })
        defer { Syscall.clearInjection() }
        Syscall.inject("pread", result: 0)
        do { try read(); Issue.record("a short read passed as a whole page") } catch {
            #expect(error.errno == .EFAULT && error.message.contains("beyond the end"), "\(error)")
        }
        Syscall.inject("pread", .EIO)
        do { try read(); Issue.record("pread's EIO was lost") } catch {
            #expect(error.errno == .EIO, "\(error)")
        }
    }
}
