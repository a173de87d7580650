import ArgumentParser
import CDaxShim
import DaxCore
import FaultTracking
#if canImport(Glibc)
import Glibc
#endif

struct EmulateCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "emulate",
        abstract: "Run a program with the kernel's HMM test driver (/dev/hmm_dmirror0, 1) served by daxmirror: no TEST_HMM kernel, no module.",
        discussion: """
            The program runs as itself (daxmirror execs it) with libdaxmirror-hmm.so preloaded. \
            Its opens of /dev/hmm_dmirror0 and /dev/hmm_dmirror1 (however spelled: open, openat, \
            their 64-bit and _FORTIFY_SOURCE forms, relative paths), the ioctls of lib/test_hmm_uapi.h \
            on them (READ, WRITE, SNAPSHOT, MIGRATE_TO_DEV, MIGRATE_TO_SYS, EXCLUSIVE, \
            CHECK_EXCLUSIVE, RELEASE), mmap of them, dup, close and fork are answered inside \
            the program's own process by daxmirror's mirror and device-private memory; every \
            other call goes to libc untouched. /dev/hmm_dmirror2 and 3 (device-coherent memory) \
            are absent, as on a kernel whose test_hmm has no special-purpose memory for them. \
            The program's exit status is emulate's.

            Refused, each with its own exit code: a statically linked program or one of another \
            architecture (16: a preloaded library cannot reach its calls), a kernel or user \
            without userfaultfd (11: device-private pages are caught with it), a missing \
            program (3) or one that may not be run (5).

            What cannot be told apart from the module is listed in the README ("The HMM test \
            driver without a kernel"). --verbose prints, for each command that fails, why \
            (the program sees only errno).

            Examples:
              daxmirror emulate -- ./hmm-tests
              daxmirror emulate --verbose -- ./hmm-tests -r hmm.hmm_device_private.migrate
            """)

    @Flag(help: "Say on stderr why each failing command failed.")
    var verbose = false

    @Option(help: ArgumentHelp("The preloaded library (default: libdaxmirror-hmm.so beside the daxmirror executable).", valueName: "path"))
    var library: PathArgument?

    @Argument(parsing: .captureForPassthrough, help: ArgumentHelp("The program and its arguments (after --).", valueName: "program"))
    var command: [String] = []

    func validate() throws {
        try library?.check("--library")
        let program = command.first == "--" ? Array(command.dropFirst()) : command
        guard !program.isEmpty else { throw rejected(.usage, "emulate needs a program to run: daxmirror emulate -- PROGRAM [ARGS...]") }
    }

    func run() throws {
        // The program and its arguments as the bytes given (argv's last entries).
        var argv = Array(RawArguments.all.suffix(command.count))
        if argv.first == Array("--".utf8) { argv.removeFirst() }
        let program = try Self.locate(FilePath(bytes: argv[0]))
        try Self.checkReachable(program)
        let lib = try library?.path ?? Self.besideExecutable()
        guard Self.access(lib, R_OK) else {
            throw Failure(.notFound, "the emulation library \(lib) is not there: build it with `swift build --product daxmirror-hmm` (or give --library)")
        }
        guard KernelFeatures.probe().userfaultfd != nil else {
            throw Failure(.unsupported, "userfaultfd is not available to this user, and device-private pages are caught with it: run as root, or allow it (sysctl vm.unprivileged_userfaultfd=1, or read-write access to /dev/userfaultfd)")
        }
        var env = Self.environment()
        let preload = lib.bytes + (env["LD_PRELOAD"].map { [UInt8(ascii: " ")] + $0 } ?? [])
        env["LD_PRELOAD"] = preload
        // A crash of the program is the program's: the Swift runtime's backtracer stays out.
        if env["SWIFT_BACKTRACE"] == nil { env["SWIFT_BACKTRACE"] = Array("enable=no".utf8) }
        if verbose { env["DAXMIRROR_EMULATE_VERBOSE"] = Array("1".utf8) } else { env["DAXMIRROR_EMULATE_VERBOSE"] = nil }
        try Self.exec(program, argv, env)
    }

    /// PROGRAM as execvp would find it: a name with a slash as given, else
    /// the first executable of that name on PATH.
    static func locate(_ name: FilePath) throws -> FilePath {
        if name.bytes.contains(UInt8(ascii: "/")) {
            guard access(name, F_OK) else { throw Failure(.notFound, "\(name) does not exist") }
            return name
        }
        let path = getenv("PATH").map { String(cString: $0) } ?? "/usr/local/bin:/usr/bin:/bin"
        for dir in path.split(separator: ":", omittingEmptySubsequences: false) {
            let candidate = FilePath(bytes: Array((dir.isEmpty ? "." : String(dir)).utf8) + [UInt8(ascii: "/")] + name.bytes)
            if access(candidate, X_OK) { return candidate }
        }
        throw Failure(.notFound, "\(name) is not on PATH: give its path")
    }

    /// Refuses what a preloaded library cannot reach: an ELF file with no
    /// program interpreter (statically linked, or static-pie) or of another
    /// class or machine than daxmirror's own. A script is run by its
    /// interpreter, which the library reaches.
    static func checkReachable(_ program: FilePath) throws {
        let fd: OwnedFD
        do { fd = try OwnedFD.open(program, O_RDONLY) } catch { throw Failure.from(error, doing: "open \(program)") }
        var header = [UInt8](repeating: 0, count: 64)
        let n = header.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, 64, 0) }
        guard n >= 4, header[0..<4] == [0x7F, 0x45, 0x4C, 0x46] else { return }  // not ELF: a script
        guard n == 64, let ours = ownELFMachine() else {
            throw Failure(.cannotEmulate, "\(program) is a truncated ELF file")
        }
        let machine = UInt16(header[18]) | UInt16(header[19]) << 8
        guard header[4] == 2, machine == ours else {
            throw Failure(.cannotEmulate, "\(program) is built for another architecture (ELF class \(header[4]), machine \(machine)) than daxmirror's, so daxmirror's library cannot be loaded into it: use a daxmirror built for its architecture")
        }
        let phoff = header[32..<40].reversed().reduce(UInt64(0)) { $0 << 8 | UInt64($1) }
        let phentsize = Int(UInt16(header[54]) | UInt16(header[55]) << 8)
        let phnum = Int(UInt16(header[56]) | UInt16(header[57]) << 8)
        guard phentsize >= 4, phnum > 0, phnum < 4096, phoff < UInt64(Int.max) else {
            throw Failure(.cannotEmulate, "\(program) has no program headers a loader could use")
        }
        var table = [UInt8](repeating: 0, count: phentsize * phnum)
        let got = table.withUnsafeMutableBytes { pread(fd.rawValue, $0.baseAddress, $0.count, off_t(phoff)) }
        guard got == table.count else { throw Failure(.cannotEmulate, "\(program) has truncated program headers") }
        let interp = (0..<phnum).contains { i in
            let t = table[(i * phentsize)..<(i * phentsize + 4)]
            return t.reversed().reduce(UInt32(0)) { $0 << 8 | UInt32($1) } == 3  // PT_INTERP
        }
        guard interp else {
            throw Failure(.cannotEmulate, "\(program) is statically linked: no dynamic loader runs in it, so no library can be preloaded; link it dynamically (drop -static) to run it under emulate")
        }
    }

    private static func ownELFMachine() -> UInt16? {
        var h = [UInt8](repeating: 0, count: 20)
        let fd = open("/proc/self/exe", O_RDONLY | O_CLOEXEC)
        guard fd >= 0 else { return nil }
        defer { close(fd) }
        guard h.withUnsafeMutableBytes({ pread(fd, $0.baseAddress, 20, 0) }) == 20 else { return nil }
        return UInt16(h[18]) | UInt16(h[19]) << 8
    }

    /// libdaxmirror-hmm.so in the directory of the running executable.
    static func besideExecutable() throws -> FilePath {
        var buf = [UInt8](repeating: 0, count: 4096)
        let n = buf.withUnsafeMutableBytes { readlink("/proc/self/exe", $0.baseAddress!.assumingMemoryBound(to: CChar.self), $0.count) }
        guard n > 0, n < buf.count else {
            throw Failure(.systemError, "cannot read /proc/self/exe to find libdaxmirror-hmm.so: give --library")
        }
        return FilePath(bytes: Array(buf[..<n])).parent.appending("libdaxmirror-hmm.so")
    }

    /// This process's environment, by name, as bytes.
    static func environment() -> [String: [UInt8]] {
        var out: [String: [UInt8]] = [:]
        var p = environ
        while let entry = p.pointee {
            let bytes = Array(UnsafeBufferPointer(start: UnsafeRawPointer(entry).assumingMemoryBound(to: UInt8.self), count: strlen(entry)))
            if let eq = bytes.firstIndex(of: UInt8(ascii: "=")) {
                out[String(decoding: bytes[..<eq], as: UTF8.self)] = Array(bytes[(eq + 1)...])
            }
            p += 1
        }
        return out
    }

    /// Becomes the program: signals and standard streams as daxmirror got
    /// them, then execve.
    static func exec(_ program: FilePath, _ argv: [[UInt8]], _ env: [String: [UInt8]]) throws -> Never {
        let cArgs = argv.map { strdupBytes($0) } + [nil]
        let cEnv = env.sorted { $0.key < $1.key }.map { strdupBytes(Array($0.key.utf8) + [UInt8(ascii: "=")] + $0.value) } + [nil]
        let e: Errno = program.withCString { path in
            dm_process_restore_for_exec()
            execve(path, cArgs, cEnv)
            return Errno.current
        }
        // Not reached when exec works. (stderr may be closed again: the line may go nowhere.)
        throw Failure.from(SystemCallError("execve", program.description, errno: e), doing: "run \(program)")
    }

    private static func strdupBytes(_ b: [UInt8]) -> UnsafeMutablePointer<CChar>? {
        let p = UnsafeMutablePointer<CChar>.allocate(capacity: b.count + 1)
        if !b.isEmpty { b.withUnsafeBytes { src in _ = memcpy(p, src.baseAddress!, b.count) } }
        p[b.count] = 0
        return p
    }

    private static func access(_ path: FilePath, _ mode: Int32) -> Bool {
        path.withCString { Glibc.access($0, mode) } == 0
    }
}
