import DaxCore
import FaultTracking
import MirrorPolicy
import PageTables

/// The device mirror of a region of this process, on the kernel's truth.
extension DeviceMirror {
    /// Starts mirroring `region` of this process, asking the kernel
    /// (`KernelCPU`). With `tracking`, userfaultfd events deliver the
    /// kernel's invalidations; without them revalidation alone keeps the
    /// table honest. `writeBit` nil: soft-dirty where the kernel has it.
    public convenience init(region: Region, tracking: Bool = true, dax: Bool = false,
                            truth: CPUTruth? = nil, kernel: KernelFeatures = .probe(),
                            writeBit: WriteBitSource? = nil, device: Int = 0, sharing: DeviceMirror? = nil) throws(Failure) {
        let cpu = try KernelCPU(region: region, tracking: tracking, dax: dax, truth: truth, kernel: kernel,
                                sharing: sharing?.cpu as? KernelCPU)
        var order: UInt8?
        if case .devdax = region.backing {
            // The kernel's word on the entry size: the VMA's page size from
            // PROCMAP_QUERY (Linux 6.11+), else smaps' KernelPageSize.
            let size = (try? VMAQuery())?.pageSize(at: region.base)
                ?? ((try? Smaps.parse(Smaps.read())) ?? []).first { $0.contains(region.base) }?.kernelPageSize ?? Syscall.pageBytes
            order = size >= 1 << 30 ? 18 : (size >= 2 << 20 ? 9 : 0)
        }
        try self.init(region: region, cpu: cpu, dax: dax, devdaxOrder: order, writeBit: writeBit, device: device)
    }

    /// The kernel's tracker, when the CPU side is the kernel and it has one.
    public var tracker: FaultTracker? { (cpu as? KernelCPU)?.tracker }
}
