import Foundation
import Testing
import DaxCore
@testable import PersistentMemory

@Suite("persistent mapping (library)")
struct PersistentMappingTests {
    @Test func nonDAXFileIsNotPmemAndSaysWhy() throws {
        let dir = try ScratchDirectory()
        let m = try PersistentMapping(path: dir.file("a"), size: 1 << 20, options: [.create])
        #expect(m.length == 1 << 20)
        #expect(m.created)
        if DaxEnvironment.directory == nil || !dir.path.hasPrefix(DaxEnvironment.directory!) {
            #expect(!m.isPersistentMemory)
            #expect(m.persistMethod == .msync)
            #expect(m.mapSyncError == .EOPNOTSUPP)  // the kernel's own refusal of MAP_SYNC
            #expect(m.reason.contains("not on a DAX-capable") || m.reason.contains("not mounted with -o dax"))
        }
        // Data written and persisted is in the file, read back with plain read(2).
        m.base!.storeBytes(of: 0xC3, toByteOffset: 4097, as: UInt8.self)
        try m.persist(offset: 4096, count: 4096)
        m.unmap()
        #expect(try fileBytes(dir.file("a"))[4097] == 0xC3)
    }

    @Test func createdFilesAre0600() throws {
        let dir = try ScratchDirectory()
        let old = umask(0)
        defer { umask(old) }
        _ = try PersistentMapping(path: dir.file("a"), size: 8192, options: [.create])
        var st = stat()
        #expect(stat(dir.file("a"), &st) == 0)
        #expect(st.st_mode & 0o777 == 0o600)
    }

    @Test func existingFileNeedsOverwriteConsent() throws {
        let dir = try ScratchDirectory()
        let path = dir.file("a")
        try Data(repeating: 7, count: 10000).write(to: URL(fileURLWithPath: path))
        let e = #expect(throws: Failure.self) { try PersistentMapping(path: path, size: 4096, options: [.create]) }
        #expect(e?.code == .alreadyExists)
        #expect(try fileBytes(path) == [UInt8](repeating: 7, count: 10000))  // untouched

        let e2 = #expect(throws: Failure.self) {
            try PersistentMapping(path: path, size: 4096, options: [.create, .overwrite, .exclusive])
        }
        #expect(e2?.code == .alreadyExists)
        #expect(try fileBytes(path).count == 10000)

        let m = try PersistentMapping(path: path, size: 8192, options: [.create, .overwrite])
        #expect(!m.created && m.length == 8192)
        m.unmap()
        #expect(try fileBytes(path) == [UInt8](repeating: 0, count: 8192))  // truncated, then sized
    }

    @Test func neverCreatesThroughASymlink() throws {
        let dir = try ScratchDirectory()
        let target = dir.file("target")
        try Data([1, 2, 3]).write(to: URL(fileURLWithPath: target))
        symlink(target, dir.file("link"))
        symlink(dir.file("nowhere"), dir.file("dangling"))
        for link in ["link", "dangling"] {
            let e = #expect(throws: Failure.self) {
                try PersistentMapping(path: dir.file(link), size: 4096, options: [.create, .overwrite])
            }
            #expect(e?.code == .symlinkRefused)
        }
        #expect(try fileBytes(target) == [1, 2, 3])
        #expect(access(dir.file("nowhere"), F_OK) != 0)
    }

    @Test func openingExistingMapsWholeFileAndFollowsSymlinks() throws {
        let dir = try ScratchDirectory()
        try Data(repeating: 9, count: 3 * 4096).write(to: URL(fileURLWithPath: dir.file("f")))
        symlink(dir.file("f"), dir.file("l"))
        let m = try PersistentMapping(path: dir.file("l"))
        #expect(m.length == 3 * 4096)
        #expect(m.base!.load(fromByteOffset: 5000, as: UInt8.self) == 9)
        #expect(!m.created)
    }

    @Test func sparseAndTmpfile() throws {
        let dir = try ScratchDirectory()
        _ = try PersistentMapping(path: dir.file("s"), size: 64 << 20, options: [.create, .sparse])
        var st = stat()
        stat(dir.file("s"), &st)
        #expect(st.st_size == 64 << 20)
        #expect(st.st_blocks * 512 < 1 << 20)  // holes, not allocated
        _ = try PersistentMapping(path: dir.file("d"), size: 64 << 20, options: [.create])
        stat(dir.file("d"), &st)
        #expect(st.st_blocks * 512 >= 64 << 20)  // allocated up front

        let t = try PersistentMapping(path: dir.path, size: 1 << 20, options: [.tmpfile])
        #expect(t.length == 1 << 20)
        #expect(try FileManager.default.contentsOfDirectory(atPath: dir.path).sorted() == ["d", "s"])
    }

    @Test func badSizesAndRanges() throws {
        let dir = try ScratchDirectory()
        #expect(throws: Failure.self) { try PersistentMapping(path: dir.file("z"), size: 0, options: [.create]) }
        #expect(throws: Failure.self) { try PersistentMapping(path: dir.file("z"), options: [.create]) }
        let m = try PersistentMapping(path: dir.file("r"), size: 8192, options: [.create])
        let e = #expect(throws: Failure.self) { try m.persist(offset: 4096, count: 8192) }
        #expect(e?.code == .invalidArgument)
        #expect(access(dir.file("z"), F_OK) != 0)
    }
}
