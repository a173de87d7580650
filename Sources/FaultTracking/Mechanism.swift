import DaxCore
import PageTables
import Userfaultfd

/// What memory a tracked region is: its kind, and whether its mapping
/// reaches persistent memory directly (a DAX file; device-dax always).
public struct TrackedMemory: Sendable, Equatable {
    public var kind: MemoryKind
    public var dax: Bool

    public init(kind: MemoryKind, dax: Bool) {
        self.kind = kind
        self.dax = dax || kind == .devdax
    }

    public static let anonymous = TrackedMemory(kind: .anonymous, dax: false)
    public static let shmem = TrackedMemory(kind: .shmem, dax: false)
    public static func file(dax: Bool) -> TrackedMemory { TrackedMemory(kind: .file, dax: dax) }

    /// Registered like a file (a device-dax mapping is treated as a DAX file).
    var fileLike: Bool { kind == .file || kind == .devdax }

    public var name: String {
        switch kind {
        case .anonymous, .shmem: return kind.displayName
        case .file: return dax ? "file (DAX)" : "file"
        case .devdax: return "device-dax"
        }
    }
}

/// How the tracker learns which pages the CPU touched.
public enum TrackingMechanism: String, Sendable, CaseIterable {
    /// MISSING faults, each resolved by copy or zero-fill: every first touch is seen.
    case missing
    /// MINOR faults (page already in the page cache), resolved by UFFDIO_CONTINUE.
    case minor
    /// Synchronous write-protect faults: each first write is seen, then allowed.
    case syncWriteProtect = "sync_wp"
    /// WP_ASYNC: the kernel resolves write faults itself; PAGEMAP_SCAN reads
    /// back the written pages and re-arms them (an epoch).
    case asyncWriteProtect = "async_wp"
    /// DAX files: registered for UNMAP/REMOVE/REMAP/FORK events only (arming
    /// write protection there trips a kernel bug); faulted pages are read
    /// from PAGEMAP_SCAN (PRESENT, HUGE, PFNZERO).
    case daxEvents = "dax_events"
    /// Any memory, for a mirror: registered in WP mode but never armed, so
    /// the CPU's faults run exactly as without userfaultfd (THP, huge zero
    /// page and all) while UNMAP/REMOVE/REMAP/FORK events still arrive.
    /// Anonymous memory needs no extra feature, shmem WP_HUGETLBFS_SHMEM,
    /// a regular file WP_ASYNC (files accept WP only with it).
    case eventsOnly = "events_only"
    /// No usable userfaultfd mode: present pages are read from pagemap and no
    /// events arrive, so clients must revalidate before trusting a mirror.
    case pagemapPolling = "pagemap_polling"

    /// True when the kernel tells us about unmaps and friends.
    public var deliversEvents: Bool { self != .pagemapPolling }
}

/// What the kernel offers, as probed (never assumed from a version number).
public struct KernelFeatures: Sendable {
    public var userfaultfd: UserfaultfdFeatures?
    public var pagemapScan: Bool
    /// A probe run in a child process showed that arming write protection on
    /// DAX is safe on this kernel and filesystem. Default false: never arm.
    public var daxWriteProtectSafe: Bool

    public init(userfaultfd: UserfaultfdFeatures?, pagemapScan: Bool, daxWriteProtectSafe: Bool = false) {
        self.userfaultfd = userfaultfd
        self.pagemapScan = pagemapScan
        self.daxWriteProtectSafe = daxWriteProtectSafe
    }

    /// Probes this kernel: UFFDIO_API on a throwaway descriptor and a
    /// PAGEMAP_SCAN of nothing.
    public static func probe(daxWriteProtectSafe: Bool = false) -> KernelFeatures {
        KernelFeatures(userfaultfd: try? Userfaultfd.supportedFeatures(),
                       pagemapScan: PagemapScanSupport.available, daxWriteProtectSafe: daxWriteProtectSafe)
    }
}

/// The tracker's choice for a region, and why.
public struct TrackerChoice: Sendable, Equatable {
    public var mechanism: TrackingMechanism
    public var reason: String
}

extension TrackingMechanism {
    /// Picks the mechanism for `backing` from what the kernel offers. The rules
    /// follow what the kernel allows per memory type (docs/kernel-facts.md §1).
    public static func choose(for backing: TrackedMemory, kernel: KernelFeatures) -> TrackerChoice {
        guard let f = kernel.userfaultfd else {
            return TrackerChoice(mechanism: .pagemapPolling, reason: "no userfaultfd on this kernel or for this user")
        }
        let asyncOK = f.contains(.wpAsync) && kernel.pagemapScan
        let missingNote = "every first touch faults and is resolved by the tracker"
        switch (backing.kind, backing.dax) {
        case (.anonymous, _):
            return TrackerChoice(mechanism: .missing, reason: "anonymous memory: MISSING mode, \(missingNote)")
        case (.shmem, _):
            return TrackerChoice(mechanism: .missing, reason: "shmem: MISSING mode, \(missingNote)")
        case (.file, false), (.devdax, false):
            if asyncOK {
                return TrackerChoice(mechanism: .asyncWriteProtect,
                                     reason: "regular file: only WP with WP_ASYNC registers; written pages read with PAGEMAP_SCAN")
            }
            return TrackerChoice(mechanism: .pagemapPolling, reason: missingFeatures(f, kernel) + ": files accept no other userfaultfd mode, so pagemap is polled")
        case (.file, true), (.devdax, true):
            if asyncOK && kernel.daxWriteProtectSafe {
                return TrackerChoice(mechanism: .asyncWriteProtect,
                                     reason: "DAX file, and the write-protect probe passed on this kernel: WP_ASYNC + PAGEMAP_SCAN")
            }
            if asyncOK {
                return TrackerChoice(mechanism: .daxEvents,
                                     reason: "DAX file: arming write protection hangs or SIGBUSes on this kernel, so WP+WP_ASYNC is registered for events only and faulted pages come from PAGEMAP_SCAN")
            }
            return TrackerChoice(mechanism: .pagemapPolling,
                                 reason: missingFeatures(f, kernel) + ": a DAX file cannot be registered, so pagemap is polled and no events arrive (revalidate before use)")
        }
    }

    private static func missingFeatures(_ f: UserfaultfdFeatures, _ k: KernelFeatures) -> String {
        var missing: [String] = []
        if !f.contains(.wpAsync) { missing.append("UFFD_FEATURE_WP_ASYNC") }
        if !k.pagemapScan { missing.append("PAGEMAP_SCAN") }
        return "this kernel lacks " + missing.joined(separator: " and ")
    }

    /// Whether `self` can serve `backing` on this kernel at all (for an
    /// explicit request); nil when it can, else the reason it cannot.
    public func refusal(for backing: TrackedMemory, kernel: KernelFeatures) -> String? {
        let f = kernel.userfaultfd ?? []
        let file = backing.fileLike
        switch (self, backing.kind) {
        case (.pagemapPolling, _): return nil
        case (_, _) where kernel.userfaultfd == nil: return "no userfaultfd available"
        case (.missing, _) where file: return "MISSING mode is refused for regular files (EINVAL)"
        case (.minor, _) where backing.kind != .shmem: return "MINOR mode needs shmem or hugetlbfs"
        case (.syncWriteProtect, _) where file: return "WP without WP_ASYNC is refused for regular files (EINVAL)"
        case (.asyncWriteProtect, _) where !(f.contains(.wpAsync) && kernel.pagemapScan):
            return "WP_ASYNC tracking needs UFFD_FEATURE_WP_ASYNC and PAGEMAP_SCAN (Linux 6.7+)"
        case (.asyncWriteProtect, _) where file && backing.dax && !kernel.daxWriteProtectSafe:
            return "arming write protection on DAX hangs or SIGBUSes on this kernel (run `daxmirror caps --dir DAXDIR`)"
        case (.daxEvents, _) where !(file && backing.dax):
            return "dax_events is for DAX files"
        case (.daxEvents, _) where !f.contains(.wpAsync):
            return "registering a DAX file needs UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"
        case (.eventsOnly, _) where file && !f.contains(.wpAsync):
            return "a file accepts a WP registration only with UFFD_FEATURE_WP_ASYNC (Linux 6.7+)"
        case (.eventsOnly, .shmem) where !f.contains(.wpHugetlbfsShmem):
            return "WP on shmem needs UFFD_FEATURE_WP_HUGETLBFS_SHMEM (Linux 5.19+)"
        default: return nil
        }
    }
}
