import CDaxShim
import DaxCore
import DaxDetection
import FaultTracking
import MirrorKernel
import MirrorPolicy
import PageTables

/// struct hmm_dmirror_cmd's words: the caller's request and the answer.
struct DriverCommand {
    var addr: UInt64
    var ptr: UInt64
    var npages: UInt64
    var cpages: UInt64 = 0
    var faults: UInt64 = 0
}

/// One open of /dev/hmm_dmirrorN: a mirror of the whole address space of
/// the process that opened it, bound to device N, as lib/test_hmm.c's
/// `struct dmirror` is. Its commands are served by the `DeviceMirror`s it
/// holds in the process's `AddressSpace`, one per area of memory it named.
final class EmulatedMirror: @unchecked Sendable {  // used under the one lock, or alone once removed
    let id: Int32
    let device: Int
    /// Descriptors referring to this open (dup adds, close removes).
    var references = 1
    private let space = AddressSpace.shared
    /// One command moves at most this much through a bounce buffer (the
    /// driver's is vmalloc'd and fails with ENOMEM where this one would be
    /// too large to be sane).
    static let bounceLimit: UInt64 = 1 << 30

    init(id: Int32, device: Int) {
        self.id = id
        self.device = device
    }

    func close() {
        space.closed(open: id)
    }

    // MARK: - commands

    private static let requestBase: UInt64 = 0xC028_4800  // _IOWR('H', 0, 40 bytes)

    /// dmirror_fops_unlocked_ioctl: the address checks, then the command.
    func perform(_ request: UInt64, _ cmd: inout DriverCommand) throws(MirrorError) {
        guard cmd.addr % Syscall.pageBytes == 0 else { throw MirrorError(.EINVAL, "addr 0x\(String(cmd.addr, radix: 16)) is not page-aligned") }
        let size = cmd.npages &<< 12
        guard cmd.addr < cmd.addr &+ size else { throw MirrorError(.EINVAL, "npages \(cmd.npages) is empty or wraps") }
        cmd.cpages = 0
        cmd.faults = 0
        guard request & ~0x7 == Self.requestBase else { throw MirrorError(.EINVAL, "not an HMM_DMIRROR request: 0x\(String(request, radix: 16))") }
        let segments = try space.segments(open: id, device: device, cmd.addr, cmd.addr + size)
        switch request & 0x7 {
        case 0: try read(&cmd, size, segments)
        case 1: try write(&cmd, size, segments)
        case 2: try readBack(&cmd, size, segments, hole: .EINVAL) { (m, a, n) throws(MirrorError) in _ = try m.migrateToDevice(a, n, readingBack: false) }
        case 3: for s in segments { cmd.cpages += UInt64(try Self.mapped(s, or: .EINVAL).migrateToSystem(s.start, s.end - s.start)) }
        case 4: try snapshot(&cmd, segments)
        case 5: try readBack(&cmd, size, segments, hole: .EBUSY) { (m, a, n) throws(MirrorError) in _ = try m.makeExclusive(a, n, readingBack: false) }
        case 6: for s in segments { try s.mirror?.checkExclusive(s.start, s.end - s.start) }  // a hole holds no entry
        default:
            // dmirror_device_remove_chunks: every page the device holds comes home.
            for m in try space.everyMirror(open: id, device: device) { _ = try m.releaseDevicePages() }
        }
    }

    /// HMM_DMIRROR_READ: the device reads the range (faulting it in), then
    /// the bytes go to `ptr`. The kernel counts a fault per round that met
    /// a missing entry, each round faulting in all the rest: over several
    /// mirrors, the most rounds any took.
    private func read(_ cmd: inout DriverCommand, _ size: UInt64, _ segments: [AddressSpace.Segment]) throws(MirrorError) {
        let bounce = try Self.bounce(size)
        defer { bounce.deallocate() }
        var faults = 0
        for s in segments {
            let piece = UnsafeMutableRawBufferPointer(rebasing: bounce[Int(s.start - cmd.addr)..<Int(s.end - cmd.addr)])
            faults = max(faults, try Self.mapped(s, or: .EFAULT).read(s.start, into: piece))
        }
        try Self.copyOut(bounce.baseAddress!, to: cmd.ptr, count: Int(size))
        cmd.cpages = cmd.npages
        cmd.faults = UInt64(faults)
    }

    /// HMM_DMIRROR_WRITE: the bytes come from `ptr` first, then the device
    /// writes the range (faulting it in for writing).
    private func write(_ cmd: inout DriverCommand, _ size: UInt64, _ segments: [AddressSpace.Segment]) throws(MirrorError) {
        let bounce = try Self.bounce(size)
        defer { bounce.deallocate() }
        try Self.copyIn(bounce.baseAddress!, from: cmd.ptr, count: Int(size))
        var faults = 0
        for s in segments {
            let piece = UnsafeRawBufferPointer(rebasing: bounce[Int(s.start - cmd.addr)..<Int(s.end - cmd.addr)])
            faults = max(faults, try Self.mapped(s, or: .EFAULT).write(s.start, from: piece))
        }
        cmd.cpages = cmd.npages
        cmd.faults = UInt64(faults)
    }

    /// MIGRATE_TO_DEV and EXCLUSIVE: the command over every piece, then the
    /// device reads the whole range back into `ptr` (the caller checks the
    /// data moved intact); a page it has no entry for is ENOENT.
    private func readBack(_ cmd: inout DriverCommand, _ size: UInt64, _ segments: [AddressSpace.Segment], hole: Errno,
                          _ body: (DeviceMirror, UInt64, UInt64) throws(MirrorError) -> Void) throws(MirrorError) {
        let bounce = try Self.bounce(size)
        defer { bounce.deallocate() }
        for s in segments { try body(try Self.mapped(s, or: hole), s.start, s.end - s.start) }
        var cpages = 0
        for s in segments {
            let r = try Self.mapped(s, or: hole).readBack(s.start, s.end - s.start)
            r.bytes.withUnsafeBytes { (bounce.baseAddress! + Int(s.start - cmd.addr)).copyMemory(from: $0.baseAddress!, byteCount: $0.count) }
            cpages += r.cpages
        }
        try Self.copyOut(bounce.baseAddress!, to: cmd.ptr, count: Int(size))
        cmd.cpages = UInt64(cpages)
    }

    /// HMM_DMIRROR_SNAPSHOT: 64 pages at a time, each piece's codes copied
    /// out before the next is walked (a failure keeps what went out).
    private func snapshot(_ cmd: inout DriverCommand, _ segments: [AddressSpace.Segment]) throws(MirrorError) {
        var out = cmd.ptr
        for s in segments {
            var at = s.start
            while at < s.end {
                let n = min(64 * Syscall.pageBytes, s.end - at)
                // A hole is HMM_PFN_ERROR to the snapshot's walk.
                let codes = try s.mirror?.snapshot(at, n).map(\.rawValue)
                    ?? [UInt8](repeating: SnapshotCode.error.rawValue, count: Int(n / Syscall.pageBytes))
                let copied = codes.withUnsafeBytes { b in Result { () throws(MirrorError) in try Self.copyOut(b.baseAddress!, to: out, count: b.count) } }
                try copied.get()
                cmd.cpages += UInt64(codes.count)
                out += UInt64(codes.count)
                at += n
            }
        }
    }

    /// The segment's mirror; a hole fails as the kernel's walk does there.
    private static func mapped(_ s: AddressSpace.Segment, or errno: Errno) throws(MirrorError) -> DeviceMirror {
        guard let m = s.mirror else { throw MirrorError(errno, "nothing is mapped at 0x\(String(s.start, radix: 16))") }
        return m
    }

    /// The driver's bounce buffer (vmalloc: ENOMEM where it cannot be had).
    private static func bounce(_ size: UInt64) throws(MirrorError) -> UnsafeMutableRawBufferPointer {
        guard size <= bounceLimit else { throw MirrorError(.ENOMEM, "a bounce buffer of \(size) bytes") }
        return .allocate(byteCount: Int(size), alignment: 4096)
    }

    static func name(of request: UInt64) -> String {
        guard request & ~0x7 == requestBase else { return "ioctl 0x\(String(request, radix: 16))" }
        return ["READ", "WRITE", "MIGRATE_TO_DEV", "MIGRATE_TO_SYS", "SNAPSHOT", "EXCLUSIVE", "CHECK_EXCLUSIVE", "RELEASE"][Int(request & 0x7)]
    }

    // MARK: - the caller's buffers (copy_to_user / copy_from_user)

    static func copyOut(_ from: UnsafeRawPointer, to address: UInt64, count: Int) throws(MirrorError) {
        guard let dst = UnsafeMutableRawPointer(bitPattern: UInt(address)), dm_gup_write(dst, from, count) == count else {
            throw MirrorError(.EFAULT, "the answer's buffer at 0x\(String(address, radix: 16)) cannot take \(count) bytes")
        }
    }

    static func copyIn(_ to: UnsafeMutableRawPointer, from address: UInt64, count: Int) throws(MirrorError) {
        guard let src = UnsafeRawPointer(bitPattern: UInt(address)), dm_gup_read(to, src, count) == count else {
            throw MirrorError(.EFAULT, "the command's buffer at 0x\(String(address, radix: 16)) cannot give \(count) bytes")
        }
    }
}
