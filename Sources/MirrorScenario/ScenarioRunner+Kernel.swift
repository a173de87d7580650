import DaxCore
import MirrorPolicy
import MirrorKernel
import KernelDmirror
import PageTables

/// Differential mode: the kernel's own HMM test driver as a twin of each
/// device, and what "agree" means (same errno, bytes, fault rounds, codes).
extension ScenarioRunner {
    // MARK: - the kernel's twin (differential mode)

    struct KernelDisagrees: Error {
        let what: String
    }

    /// Both devices failed, with the same errno: the answer is the failure,
    /// marked as the kernel's too.
    struct FailedAlike: Error {
        let error: MirrorError
    }

    /// After `agree`: our failure, if any, is one the kernel shared.
    func sharedOutcome<T>(_ ours: Result<T, MirrorError>) throws -> T {
        switch ours {
        case .success(let v): return v
        case .failure(let e): throw FailedAlike(error: e)
        }
    }

    /// The kernel twin of R's device: R's own in differential mode; for
    /// `check … kernel` outside it, opened on first use.
    func kernelTwin(_ name: String, open: Bool = false) throws -> KernelDmirror? {
        let device = mirrors[name] != nil ? name : (deviceRegion.first { $0.value == name }?.key ?? name)
        if let k = kernelDevices[device] { return k }
        guard open else { return nil }
        let k = try KernelDmirror()
        kernelDevices[device] = k
        return k
    }

    /// Same outcome (errno), same bytes, same number of fault rounds.
    func agree(_ ours: Result<[UInt8], MirrorError>, _ theirs: Result<[UInt8], MirrorError>,
                       _ ourFaults: Result<Int, MirrorError>, _ theirFaults: Result<Int, MirrorError>,
                       counting: String = "faults") throws {
        switch (ours, theirs) {
        case (.failure(let a), .failure(let b)):
            if a.errno != b.errno { throw KernelDisagrees(what: "ours failed with \(a.errno.name), the kernel's with \(b.errno.name)") }
        case (.failure(let a), .success):
            throw KernelDisagrees(what: "ours failed with \(a.errno.name) (\(a.message)), the kernel's succeeded")
        case (.success, .failure(let b)):
            throw KernelDisagrees(what: "ours succeeded, the kernel's failed with \(b.errno.name)")
        case (.success(let a), .success(let b)):
            if a != b {
                let i = (0..<min(a.count, b.count)).first { a[$0] != b[$0] } ?? min(a.count, b.count)
                throw KernelDisagrees(what: "bytes differ first at offset \(i)")
            }
            if case .success(let f) = ourFaults, case .success(let g) = theirFaults, f != g {
                throw KernelDisagrees(what: counting == "faults" ? "ours faulted \(f) times, the kernel's \(g)" : "\(counting): ours \(f), the kernel's \(g)")
            }
        }
    }

    func agree(snapshot ours: [SnapshotCode], _ theirs: [SnapshotCode]) throws {
        guard ours != theirs else { return }
        let i = (0..<min(ours.count, theirs.count)).first { ours[$0] != theirs[$0] } ?? min(ours.count, theirs.count)
        throw KernelDisagrees(what: "snapshot differs first at page \(i) (ours \(ours[i]), the kernel's \(theirs[i])): ours \(ours.runLengthHex), the kernel's \(theirs.runLengthHex)")
    }

}
