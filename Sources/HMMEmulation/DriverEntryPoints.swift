#if canImport(Glibc)
import Glibc
#endif
import DaxCore
import MirrorKernel
import MirrorPolicy

// The four functions the preloaded C door (CHMMPreload) calls; see its
// header. Every open of /dev/hmm_dmirrorN is one `EmulatedMirror`, found by
// the id the door keeps per descriptor. One worker thread serves them all,
// one call at a time: the kernel's driver serializes each mirror's
// commands too, and the program's threads meet here only when they use
// the device.

/// DAXMIRROR_EMULATE_VERBOSE=1 (`daxmirror emulate --verbose`): every
/// command that fails says why on stderr (the program sees only errno).
private let verbose = getenv("DAXMIRROR_EMULATE_VERBOSE").map { String(cString: $0) == "1" } ?? false

/// One line to stderr, written whole (the program's stdio buffers untouched).
private func say(_ line: String) {
    _ = writeAll(2, line + "\n")
}

/// In a fork's child (no lock is taken: a thread of the parent may have
/// held one). What the parent had stays, unused: its handler threads and
/// registrations are the parent's.
private func forkedChild() {
    worker.forkedChild()
    AddressSpace.shared.forkedChild()
}

/// Where every call is served (see `Worker`).
private let worker = Worker { job in
    switch job {
    case .open(let device): return serveOpen(device)
    case .ioctl(let id, let request, let words): return serveIoctl(id, request, words)
    case .retain(let id): serveRetain(id); return 0
    case .release(let id): serveRelease(id); return 0
    }
}

/// Devices 0 and 1 are the driver's device-private pair; 2 and 3 (device
/// coherent) exist only where the kernel was given special-purpose memory
/// for them, so here, as on such a kernel, they are absent.
@_cdecl("dm_hmm_open")
func hmmOpen(_ device: Int32) -> Int32 {
    guard device == 0 || device == 1 else { return -Errno.ENOENT.rawValue }
    installForkHandler
    return worker.run(.open(device: device))
}

@_cdecl("dm_hmm_ioctl")
func hmmIoctl(_ id: Int32, _ request: UInt64, _ words: UnsafeMutablePointer<UInt64>) -> Int32 {
    worker.run(.ioctl(id: id, request: request, words: words))
}

@_cdecl("dm_hmm_retain")
func hmmRetain(_ id: Int32) {
    _ = worker.run(.retain(id: id))
}

@_cdecl("dm_hmm_release")
func hmmRelease(_ id: Int32) {
    _ = worker.run(.release(id: id))
}

/// Once, before the first mirror exists.
private let installForkHandler: Void = {
    pthread_atfork(nil, nil, forkedChild)
    // The device reaches the program's memory through the kernel, never
    // with a signal handler of ours.
    KernelCPU.ownMemoryThroughKernel = true
}()

// MARK: - on the worker

private nonisolated(unsafe) var mirrors: [Int32: EmulatedMirror] = [:]
private nonisolated(unsafe) var nextID: Int32 = 1

private func serveOpen(_ device: Int32) -> Int32 {
    guard nextID < Int32.max else { return -Errno.ENFILE.rawValue }
    let id = nextID
    nextID += 1
    mirrors[id] = EmulatedMirror(id: id, device: Int(device))
    return id
}

private func serveIoctl(_ id: Int32, _ request: UInt64, _ words: UnsafeMutablePointer<UInt64>) -> Int32 {
    guard let mirror = mirrors[id] else { return -Errno.EBADF.rawValue }
    var cmd = DriverCommand(addr: words[0], ptr: words[1], npages: words[2])
    do throws(MirrorError) {
        try mirror.perform(request, &cmd)
    } catch {
        if verbose { say("daxmirror emulate: \(EmulatedMirror.name(of: request)) of device \(mirror.device) at 0x\(String(cmd.addr, radix: 16))+\(cmd.npages) pages: \(error)") }
        return -error.errno.rawValue
    }
    words[3] = cmd.cpages
    words[4] = cmd.faults
    return 0
}

private func serveRetain(_ id: Int32) {
    mirrors[id]?.references += 1
}

/// The last descriptor of an open closed: its mirrors end (the pages its
/// device holds stay on the device, as the module's do).
private func serveRelease(_ id: Int32) {
    guard let m = mirrors[id] else { return }
    m.references -= 1
    guard m.references <= 0 else { return }
    mirrors[id] = nil
    m.close()
}
