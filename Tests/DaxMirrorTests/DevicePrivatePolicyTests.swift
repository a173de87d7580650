import Testing
import DaxCore
@testable import MirrorPolicy
import PageTables

/// Device-private memory's rules (owners, the read-back rule, what a CPU
/// touch revokes, migrate-to-system's count, release) against FakeCPU: no
/// root, no kernel. Each expectation is the kernel's test driver's answer
/// in the same case (lib/test_hmm.c; docs/device-private.md).
@Suite("device-private memory policy (fake CPU)")
struct DevicePrivatePolicyTests {
    static let base: UInt64 = 0x7f00_0000_0000
    let page: UInt64 = 4096

    func mirror(_ cpu: FakeCPU, pages: UInt64, device: Int, shared: Bool = false) throws -> DeviceMirror {
        try DeviceMirror(region: Region(base: UnsafeMutableRawPointer(bitPattern: UInt(Self.base))!, length: Int(pages * page),
                                        backing: shared ? .shmem(fd: -1) : .anonymous),
                         cpu: cpu, writeBit: .pagemap, device: device)
    }

    /// The errno `body` failed with (nil: it succeeded).
    func errno(_ body: () throws -> Any) -> Errno? {
        do { _ = try body(); return nil } catch let e as MirrorError { return e.errno } catch { return .EIO }
    }

    /// The first byte of each page (what `written` stored).
    func firstBytes(_ bytes: [UInt8]) -> [UInt8] { stride(from: 0, to: bytes.count, by: Int(page)).map { bytes[$0] } }

    /// Stores `byte` at the start of each page.
    func written(_ cpu: FakeCPU, pages: UInt64, byte: UInt8) {
        for i in 0..<pages { cpu.cpuWrite(Self.base + i * page, byte) }
    }

    @Test func migratedPagesBelongToTheirDeviceAloneAndReadBackWithoutAFault() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 8)
        written(cpu, pages: 8, byte: 0x5a)
        let d0 = try mirror(cpu, pages: 8, device: 0), d1 = try mirror(cpu, pages: 8, device: 1)
        #expect(try d1.read(Self.base, Int(8 * page)).faults == 1)
        let moved = try d0.migrateToDevice(Self.base, 8 * page)
        #expect(moved.cpages == 8)
        #expect(moved.bytes[0] == 0x5a && moved.bytes[Int(7 * page)] == 0x5a)
        #expect(cpu.devicePrivateCount == 8 && cpu.ptes.isEmpty, "the CPU no longer maps them")
        #expect(try d0.snapshot(Self.base, 8 * page).allSatisfy { $0 == [.devicePrivateLocal, .write] })
        #expect(try d1.snapshot(Self.base, 8 * page).allSatisfy { $0 == .none }, "another device's page is not present to this one")
        let again = try d0.read(Self.base, Int(8 * page))
        #expect(again.faults == 0 && firstBytes(again.bytes) == [UInt8](repeating: 0x5a, count: 8))
        #expect(try d0.check().disagreements.isEmpty)
        // Device 1 lost its entries; its read brings the pages home with one fault.
        let other = try d1.read(Self.base, Int(8 * page))
        #expect(other.faults == 1 && firstBytes(other.bytes) == [UInt8](repeating: 0x5a, count: 8))
        #expect(cpu.devicePrivateCount == 0)
    }

    @Test func theReadBackRuleDecidesCpagesAndENOENT() throws {
        // Shared memory never moves: ENOENT unless the device had read it
        // (then it "migrates" without moving, and cpages counts it).
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4, shared: true, inode: 9)
        let m = try mirror(cpu, pages: 4, device: 0, shared: true)
        #expect(errno { try m.migrateToDevice(Self.base, 4 * page) } == .ENOENT)
        #expect(try m.read(Self.base, Int(4 * page)).faults == 1)
        #expect(try m.migrateToDevice(Self.base, 4 * page).cpages == 4)
        #expect(cpu.devicePrivateCount == 0, "nothing moved")
        // The walk invalidates every other device's entries all the same.
        let other = try mirror(cpu, pages: 4, device: 1, shared: true)
        #expect(try other.read(Self.base, Int(4 * page)).faults == 1)
        #expect(try other.read(Self.base, Int(4 * page)).faults == 0)
        _ = try m.migrateToDevice(Self.base, 4 * page)
        #expect(try other.read(Self.base, Int(4 * page)).faults == 1, "MMU_NOTIFY_MIGRATE spares only the migrating device")
        #expect(try m.read(Self.base, Int(4 * page)).faults == 0)
    }

    @Test func anEmptyPageBecomesAZeroedDevicePageWritableAsItsVMA() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 2)
        cpu.map(Self.base + 2 * page, pages: 2, writable: false)
        let m = try mirror(cpu, pages: 4, device: 0)
        let moved = try m.migrateToDevice(Self.base, 4 * page)
        #expect(moved.cpages == 4 && moved.bytes.allSatisfy { $0 == 0 })
        #expect(try m.snapshot(Self.base, 4 * page) == [[.devicePrivateLocal, .write], [.devicePrivateLocal, .write],
                                                      [.devicePrivateLocal, .read], [.devicePrivateLocal, .read]])
        // Writing its own read-only page: the page comes home to be written (one fault).
        #expect(errno { try m.write(Self.base + 2 * page, [1]) } == .EPERM, "a read-only VMA")
        #expect(try m.write(Self.base, [7]) == 0, "a writable device page takes the write in place")
        #expect(cpu.cpuRead(Self.base) == 7, "the CPU's touch brings the device's bytes home")
    }

    @Test func aCPUTouchRevokesTheOwnersEntry() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4)
        written(cpu, pages: 4, byte: 1)
        let m = try mirror(cpu, pages: 4, device: 0)
        _ = try m.migrateToDevice(Self.base, 4 * page)
        cpu.cpuWrite(Self.base + page, 9)
        #expect(try m.snapshot(Self.base, 4 * page) == [[.devicePrivateLocal, .write], .write,
                                                      [.devicePrivateLocal, .write], [.devicePrivateLocal, .write]])
        let r = try m.read(Self.base, Int(4 * page))
        #expect(r.faults == 1 && r.bytes[Int(page)] == 9, "the page at home is the CPU's again")
        #expect(try m.check().disagreements.isEmpty)
    }

    @Test func theWalkStopsAtAnUnreadableWindowKeepingEarlierOnes() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 128)
        written(cpu, pages: 128, byte: 3)
        cpu.protect(Self.base + 100 * page, 28 * page, readable: false, writable: false)
        let m = try mirror(cpu, pages: 128, device: 0)
        #expect(errno { try m.migrateToDevice(Self.base, 128 * page) } == .EINVAL)
        // Windows of 64 pages, cut at the VMA's end: [0,64) and [64,100) moved.
        #expect(cpu.devicePrivateCount == 100)
    }

    @Test func migrateToSystemCountsThisDevicesPagesOnly() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 8)
        written(cpu, pages: 8, byte: 4)
        let d0 = try mirror(cpu, pages: 8, device: 0), d1 = try mirror(cpu, pages: 8, device: 1)
        _ = try d0.migrateToDevice(Self.base, 4 * page)
        _ = try d1.migrateToDevice(Self.base + 4 * page, 4 * page)
        #expect(errno { try d0.migrateToDevice(Self.base + 4 * page, page) } == .ENOENT)
        #expect(try d0.migrateToSystem(Self.base, 8 * page) == 4)
        #expect(cpu.devicePrivateCount == 4)
        #expect(try d1.releaseDevicePages() == 4)
        #expect(cpu.devicePrivateCount == 0 && cpu.cpuRead(Self.base + 7 * page) == 4)
    }

    @Test func exclusiveAccessIsReadOnlyForTheDeviceAndEndsAtAnyCPUAccess() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4)
        written(cpu, pages: 4, byte: 6)
        let d0 = try mirror(cpu, pages: 4, device: 0), d1 = try mirror(cpu, pages: 4, device: 1)
        #expect(try d1.read(Self.base, Int(4 * page)).faults == 1)
        let held = try d0.makeExclusive(Self.base, 4 * page)
        #expect(held.cpages == 4 && firstBytes(held.bytes) == [6, 6, 6, 6])
        #expect(try d0.snapshot(Self.base, 4 * page).allSatisfy { $0 == .none }, "a snapshot's walk does not see it")
        #expect(errno { try d0.checkExclusive(Self.base, 4 * page) } == .EPERM)
        #expect(try d0.read(Self.base, Int(4 * page)).faults == 0, "the holder reads its ATOMIC entries")
        #expect(cpu.cpuRead(Self.base + page) == 6, "the CPU's access takes the page back")
        #expect(errno { try d0.checkExclusive(Self.base + page, page) } == nil)
        #expect(errno { try d0.checkExclusive(Self.base, 4 * page) } == .EPERM, "the other pages are still held")
        // The holder's own write faults (ATOMIC entries are not WRITE) and ends it.
        #expect(try d0.write(Self.base, [UInt8](repeating: 9, count: Int(4 * page))) == 1)
        #expect(errno { try d0.checkExclusive(Self.base, 4 * page) } == nil)
        #expect(try d1.read(Self.base, 1).bytes == [9])
        #expect(try d0.check().disagreements.isEmpty && d1.check().disagreements.isEmpty)
    }

    @Test func onlyAnonymousPagesTheCPUCanWriteAreHeldExclusively() throws {
        let shared = FakeCPU()
        shared.map(Self.base, pages: 2, shared: true, inode: 5)
        #expect(errno { try mirror(shared, pages: 2, device: 0, shared: true).makeExclusive(Self.base, 2 * page) } == .EBUSY)
        let readOnly = FakeCPU()
        readOnly.map(Self.base, pages: 2, writable: false)
        #expect(errno { try mirror(readOnly, pages: 2, device: 0).makeExclusive(Self.base, 2 * page) } == .EBUSY)
        #expect(readOnly.devicePrivateCount == 0 && shared.devicePrivateCount == 0)
    }

    @Test func aForkEndsExclusiveAccessAndMakesDevicePagesReadOnly() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4)
        written(cpu, pages: 4, byte: 2)
        let m = try mirror(cpu, pages: 4, device: 0)
        _ = try m.makeExclusive(Self.base, 2 * page)
        _ = try m.migrateToDevice(Self.base + 2 * page, 2 * page)
        cpu.fork()
        #expect(errno { try m.checkExclusive(Self.base, 2 * page) } == nil)
        #expect(try m.snapshot(Self.base, 4 * page) == [.read, .read, [.devicePrivateLocal, .read], [.devicePrivateLocal, .read]])
    }

    @Test func anMprotectMakesDevicePagesReadOnlyAndGivingWriteBackUpgradesNone() throws {
        let cpu = FakeCPU()
        cpu.map(Self.base, pages: 4)
        written(cpu, pages: 4, byte: 8)
        let m = try mirror(cpu, pages: 4, device: 0)
        _ = try m.migrateToDevice(Self.base, 4 * page)
        cpu.protect(Self.base, 2 * page, readable: true, writable: false)
        let ro: SnapshotCode = [.devicePrivateLocal, .read], rw: SnapshotCode = [.devicePrivateLocal, .write]
        #expect(try m.snapshot(Self.base, 4 * page) == [ro, ro, rw, rw])
        cpu.protect(Self.base, 2 * page, readable: true, writable: true)
        #expect(try m.snapshot(Self.base, 4 * page) == [ro, ro, rw, rw])
    }
}
