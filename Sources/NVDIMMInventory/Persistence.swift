#if canImport(Glibc)
import Glibc
#endif
import DaxCore

/// What backs a pmem region, and so whether its contents outlive a
/// power-off. The kernel's bus says it: ACPI.NFIT is an NVDIMM the firmware
/// describes (real, or emulated by a hypervisor, whose host file then holds
/// the data), e820 is RAM the kernel was told to treat as pmem with
/// `memmap=SIZE!OFFSET` — persistent memory in every interface, lost at
/// power-off all the same.
public enum Persistence: String, Sendable, CaseIterable {
    case nvdimm
    case emulatedNVDIMM = "emulated-nvdimm"
    case memmapRAM = "memmap-ram"
    case unknown

    /// From the bus's provider name and whether this machine runs under a
    /// hypervisor (the CPU's `hypervisor` flag).
    public static func of(busProvider: String, underHypervisor: Bool) -> Persistence {
        if busProvider == "e820" { return .memmapRAM }
        if busProvider.hasPrefix("ACPI.NFIT") { return underHypervisor ? .emulatedNVDIMM : .nvdimm }
        if busProvider.hasPrefix("nfit_test") { return .emulatedNVDIMM }
        return .unknown
    }

    /// false: lost at power-off; true: kept; nil: as its backing keeps it.
    public var survivesPowerOff: Bool? {
        switch self {
        case .nvdimm: return true
        case .memmapRAM: return false
        case .emulatedNVDIMM, .unknown: return nil
        }
    }

    /// One sentence for people.
    public var sentence: String {
        switch self {
        case .nvdimm: return "an NVDIMM (ACPI NFIT): survives power-off"
        case .emulatedNVDIMM: return "an NVDIMM emulated by the hypervisor: survives a guest power-off only as far as the host file behind it does"
        case .memmapRAM: return "RAM reserved with memmap= (e820): LOST AT POWER-OFF, whatever is flushed"
        case .unknown: return "unknown backing: whether it survives power-off cannot be told"
        }
    }

    public var json: JSON {
        .object([("kind", .string(rawValue)), ("survives_power_off", survivesPowerOff.map { .bool($0) } ?? .null),
                 ("meaning", .string(sentence))])
    }

    /// The CPU's `hypervisor` flag (/proc/cpuinfo): set under KVM, QEMU/TCG,
    /// Xen, Hyper-V. Read once: it cannot change while the process lives.
    public static let underHypervisor: Bool = {
        guard let text = try? readTextFile("/proc/cpuinfo") else { return false }
        return text.split(separator: "\n").contains { $0.hasPrefix("flags") && $0.split(separator: " ").contains("hypervisor") }
    }()
}
