import ArgumentParser
import DaxCore
import Capabilities
import DaxDetection
import FleetMetrics
#if canImport(Glibc)
import Glibc
#endif

struct MetricsCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "metrics",
        abstract: "This host's persistent memory as Prometheus metrics: regions, namespaces, DIMM health, DAX mounts, processes mapping DAX.",
        discussion: """
            Prints the Prometheus text exposition format (HELP and TYPE for every family, base \
            units, names daxmirror_…): pmem regions and namespaces with the labels `ndctl list` \
            uses and what backs them (nvdimm, emulated-nvdimm, memmap-ram: lost at power-off); DIMM \
            health where the platform reports SMART (absent otherwise, never zeros); DAX mounts; \
            every process mapping a DAX file or device-dax, found from /proc/*/maps, with bytes \
            mapped, present and in PMD/PUD entries; processes that could not be read, counted in \
            daxmirror_scrape_errors_total; what the kernel offers; the scrape's own duration.

            --listen [ADDR:]PORT serves GET /metrics over HTTP until ended (loopback unless \
            ADDR names another address: exposing it is your explicit choice); one scrape runs at \
            a time, and concurrent scrapes get the same answer (at most 1 s old). --textfile DIR \
            writes DIR/daxmirror.prom atomically (a temporary file renamed over it) for \
            node_exporter's textfile collector; run it from cron or a timer.

            Examples:
              daxmirror metrics | promtool check metrics
              daxmirror metrics --listen 9479                 # http://127.0.0.1:9479/metrics
              daxmirror metrics --listen 0.0.0.0:9479         # every interface: explicit
              daxmirror metrics --textfile /var/lib/prometheus/node-exporter
            """)

    @Option(name: .customLong("textfile"), help: ArgumentHelp("Write DIR/daxmirror.prom atomically instead of printing (node_exporter's textfile collector).", valueName: "dir"))
    var textfilePath: PathArgument?

    @Option(name: .customLong("listen"), parsing: .unconditional,
            help: "Serve GET /metrics on [ADDR:]PORT (ADDR defaults to 127.0.0.1).")
    var listenText: String?

    @Option(name: .customLong("max-connections"), parsing: .unconditional,
            help: "With --listen: connections served at once (1-4096, default 64; fewer if the open-file limit is low). When all are taken, the oldest one still waiting for its request is closed.")
    var maxConnectionsText: NumberArgument?

    @Option(name: .customLong("request-timeout"), parsing: .unconditional,
            help: "With --listen: seconds a client has to send its request (1-3600, default 10); a connection lives at most three times this, answered or not.")
    var requestTimeoutText: NumberArgument?

    @Option(name: .customLong("wp-probe-dir"), help: "Run the write-protect-on-DAX probe once, in DIR on a DAX mount, and report its verdict in daxmirror_kernel_info (a child process, 10 s at most; it can wedge a buggy kernel, so scrapes never run it).")
    var wpProbePath: PathArgument?

    func validate() throws {
        try textfilePath?.check("--textfile")
        try wpProbePath?.check("--wp-probe-dir")
        _ = try maxConnectionsText?.integer("--max-connections", 1...4096)
        _ = try requestTimeoutText?.integer("--request-timeout", 1...3600)
        if listenText == nil && (maxConnectionsText != nil || requestTimeoutText != nil) {
            throw ValidationError("--max-connections and --request-timeout are only used with --listen")
        }
        if textfilePath != nil && listenText != nil { throw ValidationError("--textfile and --listen are exclusive") }
        if let l = listenText { _ = try Self.address(l) }
    }

    /// PORT, HOST:PORT or [V6]:PORT; loopback when no address is given. HOST
    /// is a numeric IPv4 address or `localhost`, V6 a numeric IPv6 address:
    /// no name lookups, and nothing read leniently (`127.0.0.1:9100:1` is not
    /// host "127.0.0.1:9100", `::1:9100` needs its brackets).
    static func address(_ text: String) throws -> (host: String, port: Int) {
        let bad = { (why: String) in invalidArgument("--listen \(text) \(why) (PORT, ADDR:PORT or [IPV6]:PORT, e.g. 9479, 0.0.0.0:9479, [::1]:9479)") }
        var host = "127.0.0.1", portText = text
        if text.hasPrefix("[") {
            guard let close = text.firstIndex(of: "]"), text[text.index(after: close)...].hasPrefix(":") else {
                throw bad("is not [IPV6]:PORT")
            }
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(close, offsetBy: 2)...])
            guard IPAddress.isIPv6(host) else { throw bad("does not hold a numeric IPv6 address in its brackets") }
        } else if let colon = text.firstIndex(of: ":") {
            guard text.lastIndex(of: ":") == colon else { throw bad("has more than one ':' (an IPv6 address goes in brackets)") }
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
            if host.isEmpty || host == "localhost" { host = "127.0.0.1" }
            guard IPAddress.isIPv4(host) else { throw bad("does not start with a numeric IPv4 address") }
        }
        let port = try NumberArgument(portText).integer("--listen port", 1...65535)
        return (host, port)
    }

    func run() throws {
        var scrape = try Failure.wrapping("probe what the kernel offers") { () throws(SystemCallError) in try Scrape() }
        scrape.build = (Version.number, BuildInfo.commit)
        if let dir = wpProbePath { scrape.daxWriteProtect = try Self.writeProtectVerdict(try dir.directoryForModules(), shown: dir.description) }
        if let l = listenText {
            let (host, port) = try Self.address(l)
            var limits = MetricsServer.Limits()
            if let m = maxConnectionsText { limits.connections = try m.integer("--max-connections", 1...4096) }
            if let t = requestTimeoutText { limits.requestSeconds = try t.integer("--request-timeout", 1...3600) }
            try MetricsServer(scrape: scrape, limits: limits).serve(host: host, port: port) { bound in
                writeStderr("daxmirror: serving http://\(bound)/metrics (Ctrl-C to stop)\n")
            }
            return
        }
        let text = try Failure.wrapping("scrape this host") { () throws(SystemCallError) in try scrape.collect() }
        guard let dir = try textfilePath?.directoryForModules() else {
            emitRaw(String(decoding: text, as: UTF8.self))
            return
        }
        try TextfileWriter.write(text, into: dir, name: "daxmirror.prom")
    }

    /// The probe's verdict ("read=…,write=…") for a directory on a DAX mount;
    /// a directory that is missing, not one, or not on DAX, or a probe that
    /// could not run, is an error with its exit code — never a label that
    /// says "failed" on a scrape that exits 0.
    static func writeProtectVerdict(_ dir: String, shown: String) throws -> String {
        var st = stat()
        guard stat(dir, &st) == 0 else {
            throw Failure.from(SystemCallError("stat", shown), doing: "probe write protection in --wp-probe-dir")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw Failure(.notRegularFile, "--wp-probe-dir \(shown) is not a directory") }
        guard let table = try? MountTable.current(), let status = try? DaxStatus.inspect(path: dir, mounts: table, inventory: nil),
              status.mountMode == .always || status.mountMode == .inode else {
            throw Failure(.notDAX, "--wp-probe-dir \(shown) is not on a DAX mount (see /proc/mounts): the probe is about DAX files; give a directory on one")
        }
        let probe = DaxWriteProtectProbe.run(executable: readLink("/proc/self/exe") ?? CommandLine.arguments[0], directory: dir)
        if probe.read == .failed || probe.write == .failed {
            throw Failure(.systemError, "the write-protect probe could not run in \(shown): \(probe.detail)")
        }
        return "read=\(probe.read.rawValue),write=\(probe.write.rawValue)"
    }
}

/// Writes a file the way a collector must see it: whole or not at all (a
/// temporary file in the same directory, fsynced, renamed over the old one).
enum TextfileWriter {
    static func write(_ bytes: [UInt8], into dir: String, name: String) throws {
        var st = stat()
        guard stat(dir, &st) == 0 else {
            throw Failure.from(SystemCallError("stat", dir), doing: "write metrics into")
        }
        guard st.st_mode & S_IFMT == S_IFDIR else { throw Failure(.notRegularFile, "--textfile \(dir) is not a directory") }
        let temp = dir + "/.\(name).\(getpid()).tmp"
        let fd = open(temp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0o644)
        guard fd >= 0 else { throw Failure.from(SystemCallError("open", temp), doing: "write metrics into") }
        var ok = false
        defer { if !ok { unlink(temp) } }
        defer { close(fd) }
        if let e = bytes.withUnsafeBytes({ writeAll(fd, $0) }) {
            throw Failure.from(SystemCallError("write", temp, errno: e), doing: "write metrics into")
        }
        guard fsync(fd) == 0 else { throw Failure.from(SystemCallError("fsync", temp), doing: "write metrics into") }
        guard rename(temp, dir + "/" + name) == 0 else { throw Failure.from(SystemCallError("rename", temp), doing: "write metrics into") }
        ok = true
    }
}

/// Numeric addresses as the kernel reads them (inet_pton): no name lookup.
enum IPAddress {
    static func isIPv4(_ s: String) -> Bool {
        var a = in_addr()
        return inet_pton(AF_INET, s, &a) == 1
    }
    static func isIPv6(_ s: String) -> Bool {
        var a = in6_addr()
        return inet_pton(AF_INET6, s, &a) == 1
    }
    /// HOST:PORT, an IPv6 host in brackets.
    static func display(_ host: String, _ port: Int) -> String {
        host.contains(":") ? "[\(host)]:\(port)" : "\(host):\(port)"
    }
}
