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

    @Option(help: "Write DIR/daxmirror.prom atomically instead of printing (node_exporter's textfile collector).")
    var textfile: String?

    @Option(name: .customLong("listen"), parsing: .unconditional,
            help: "Serve GET /metrics on [ADDR:]PORT (ADDR defaults to 127.0.0.1).")
    var listenText: String?

    @Option(help: "Run the write-protect-on-DAX probe once, in DIR on a DAX mount, and report its verdict in daxmirror_kernel_info (a child process, 10 s at most; it can wedge a buggy kernel, so scrapes never run it).")
    var wpProbeDir: String?

    func validate() throws {
        if textfile != nil && listenText != nil { throw ValidationError("--textfile and --listen are exclusive") }
        if let l = listenText { _ = try Self.address(l) }
    }

    /// [ADDR:]PORT, IPv6 as [ADDR]:PORT; loopback when no address is given.
    static func address(_ text: String) throws -> (host: String, port: Int) {
        var host = "127.0.0.1", portText = text
        if text.hasPrefix("["), let close = text.firstIndex(of: "]") {
            host = String(text[text.index(after: text.startIndex)..<close])
            portText = String(text[text.index(after: close)...].drop { $0 == ":" })
        } else if let colon = text.lastIndex(of: ":") {
            host = String(text[..<colon])
            portText = String(text[text.index(after: colon)...])
            if host.isEmpty { host = "127.0.0.1" }
        }
        let port = try NumberArgument(portText).integer("--listen port", 1...65535)
        return (host, port)
    }

    func run() throws {
        var scrape = Scrape()
        if let dir = wpProbeDir {
            let probe = DaxWriteProtectProbe.run(executable: readLink("/proc/self/exe") ?? CommandLine.arguments[0], directory: dir)
            scrape.daxWriteProtect = "read=\(probe.read.rawValue),write=\(probe.write.rawValue)"
        }
        if let l = listenText {
            let (host, port) = try Self.address(l)
            try MetricsServer(scrape: scrape).serve(host: host, port: port) { bound in
                writeStderr("daxmirror: serving http://\(bound)/metrics (Ctrl-C to stop)\n".terminalSafe)
            }
            return
        }
        let text = scrape.collect()
        guard let dir = textfile else {
            emitRaw(String(decoding: text, as: UTF8.self))
            return
        }
        try TextfileWriter.write(text, into: dir, name: "daxmirror.prom")
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
