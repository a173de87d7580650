// swift-tools-version: 6.1
import PackageDescription

// Modules by concern (see README "Layout"):
//   CDaxShim        thin C shim: ioctls, uffd/PAGEMAP_SCAN structs, MAP_SYNC, statx, guarded copies
//   CPmem, CNdctl, CDaxctl   system libraries found with pkg-config
//   DaxCore         errno, failures and exit causes, the one system-call layer (failures injectable per
//                   thread), the memory kind, file paths as bytes, JSON, inert text
//   DaxDetection    is this path on DAX? (mountinfo, statx, sysfs)
//   PageTables      the kernel's page-table truth (pagemap, PAGEMAP_SCAN, smaps, maps, PROCMAP_QUERY)
//   Userfaultfd     typed userfaultfd
//   FaultTracking   one tracker over uffd modes and pagemap, chosen per memory type
//   PersistentMemory  libpmem mappings
//   NVDIMMInventory libndctl / libdaxctl walk
//   MirrorPolicy    the simulated device's policy: table, range fault, invalidation, check; asks the
//                   CPU side through a protocol and cannot call the kernel (no Glibc, shim or libpmem)
//   MirrorKernel    the CPU side as the kernel tells it (KernelCPU, CPUTruth, the Aperture)
//   KernelDmirror   the kernel's own HMM test driver (/dev/hmm_dmirror0), the mirror's twin
//   CHMMPreload, HMMEmulation  `daxmirror emulate`: the HMM test driver's UAPI served inside a program
//   MirrorScenario  the scenario language and its runner (`daxmirror run`)
//   ProcessInspection  any process's mappings against its page table (`inspect`, `watch`)
//   Capabilities    what this kernel and machine offer (`daxmirror caps`)
//   FleetMetrics    the host as Prometheus metrics (`daxmirror metrics`)
//   daxmirror       the CLI
let package = Package(
    name: "daxmirror",
    platforms: [.macOS(.v13)],
    products: [
        .executable(name: "daxmirror", targets: ["daxmirror"]),
        // Preloaded into a program by `daxmirror emulate`: the HMM test driver in user space.
        .library(name: "daxmirror-hmm", type: .dynamic, targets: ["HMMEmulation"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.8.2"),
        // The Prometheus text exposition format (HELP, TYPE, label escaping): swift-server's own.
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.4.1"),
        // `metrics --listen`: a small HTTP/1.1 server on SwiftNIO (no framework needed for one route).
        .package(url: "https://github.com/apple/swift-nio", from: "2.101.2"),
    ],
    targets: [
        .target(name: "CDaxShim"),
        .systemLibrary(name: "CPmem", pkgConfig: "libpmem",
                       providers: [.apt(["libpmem-dev"])]),
        .systemLibrary(name: "CNdctl", pkgConfig: "libndctl",
                       providers: [.apt(["libndctl-dev"])]),
        .systemLibrary(name: "CDaxctl", pkgConfig: "libdaxctl",
                       providers: [.apt(["libdaxctl-dev"])]),
        .target(name: "DaxCore", dependencies: ["CDaxShim"]),
        .target(name: "DaxDetection", dependencies: ["DaxCore", "CDaxShim", "NVDIMMInventory"]),
        .target(name: "PageTables", dependencies: ["DaxCore", "CDaxShim"]),
        .target(name: "Userfaultfd", dependencies: ["DaxCore", "CDaxShim"]),
        .target(name: "FaultTracking", dependencies: ["DaxCore", "PageTables", "Userfaultfd"]),
        .target(name: "PersistentMemory",
                dependencies: ["DaxCore", "DaxDetection", "CDaxShim", "CPmem"]),
        .target(name: "NVDIMMInventory", dependencies: ["DaxCore", "CNdctl", "CDaxctl"]),
        // Policy only: the build keeps the kernel out (no CDaxShim, CPmem; the
        // test command greps its files for Glibc).
        .target(name: "MirrorPolicy", dependencies: ["DaxCore", "PageTables"]),
        .target(name: "MirrorKernel",
                dependencies: ["DaxCore", "PageTables", "FaultTracking", "MirrorPolicy", "CDaxShim", "CPmem"]),
        .target(name: "KernelDmirror", dependencies: ["DaxCore", "PageTables", "MirrorPolicy", "CDaxShim"]),
        // `daxmirror emulate`: the C door preloaded into a program (open, ioctl, close, dup, mmap of
        // /dev/hmm_dmirrorN) and the driver behind it. Linked only into the daxmirror-hmm library:
        // the door defines libc's names, which no other binary may carry.
        .target(name: "CHMMPreload", linkerSettings: [.linkedLibrary("dl")]),
        .target(name: "HMMEmulation",
                dependencies: ["CHMMPreload", "DaxCore", "DaxDetection", "PageTables", "FaultTracking", "MirrorPolicy",
                               "MirrorKernel", "CDaxShim"]),
        .target(name: "MirrorScenario",
                dependencies: ["DaxCore", "PageTables", "FaultTracking", "MirrorPolicy", "MirrorKernel", "KernelDmirror",
                               "CDaxShim", "CPmem"]),
        .target(name: "ProcessInspection",
                dependencies: ["CDaxShim", "DaxCore", "DaxDetection", "NVDIMMInventory", "PageTables"]),
        .target(name: "FleetMetrics",
                dependencies: ["DaxCore", "DaxDetection", "PageTables", "Userfaultfd", "NVDIMMInventory", "CDaxShim",
                               .product(name: "Prometheus", package: "swift-prometheus")]),
        .target(name: "Capabilities",
                dependencies: ["DaxCore", "DaxDetection", "PageTables", "Userfaultfd", "FaultTracking",
                               "NVDIMMInventory", "CDaxShim"]),
        .executableTarget(
            name: "daxmirror",
            dependencies: [
                "DaxCore", "DaxDetection", "PageTables", "PersistentMemory",
                "NVDIMMInventory", "Capabilities", "MirrorPolicy", "MirrorKernel", "KernelDmirror", "MirrorScenario", "FaultTracking", "ProcessInspection", "FleetMetrics",
                .product(name: "NIOCore", package: "swift-nio"), .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"), .product(name: "NIOConcurrencyHelpers", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            plugins: ["BuildInfo"]),
        // Writes the commit the tree is at into the CLI before each build (`--version`).
        .plugin(name: "BuildInfo", capability: .buildTool()),
        .executableTarget(
            name: "daxmirror-bench",
            dependencies: ["DaxCore", "FaultTracking", "PageTables", "MirrorPolicy", "MirrorKernel", "CDaxShim"],
            path: "Benchmarks/DaxMirrorBench"),
        .testTarget(
            name: "DaxMirrorTests",
            dependencies: ["DaxCore", "DaxDetection", "PageTables", "Userfaultfd", "FaultTracking",
                           "PersistentMemory", "NVDIMMInventory", "Capabilities", "CDaxShim", "MirrorPolicy", "MirrorKernel",
                           "KernelDmirror", "MirrorScenario",
                           "daxmirror"],
            // C programs the tests compile and run (under `daxmirror emulate`).
            exclude: ["Fixtures"]),
    ]
)
