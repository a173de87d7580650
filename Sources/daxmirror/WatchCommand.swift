import ArgumentParser
import CDaxShim
import DaxCore
import NVDIMMInventory
import ProcessInspection
#if canImport(Glibc)
import Glibc
#endif

/// Set by SIGINT/SIGTERM; the loop notices within one interval.
nonisolated(unsafe) private var stopRequested: sig_atomic_t = 0

struct WatchCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "watch",
        abstract: "Watch a process's mappings live: pages present and written, PMD coverage, fault and write rates.",
        discussion: """
            Every --interval milliseconds, reads the process as `daxmirror inspect` does and shows, \
            per mapping with pages present, a bar of present pages (#) and PMD-mapped ones (=) over \
            its size, and the rates of new present pages (faults/s) and newly written pages \
            (writes/s, from soft-dirty; "-" where the kernel has none). In a terminal the view is \
            redrawn in place; on a pipe each interval prints plain lines; --json prints one object \
            per interval (the inspect object plus "rates"). Ctrl-C ends it and leaves the terminal \
            clean. Stops with exit code 12 when the process exits.

            Examples:
              daxmirror watch 1234
              daxmirror watch 1234 --interval 200 --json | jq -c '.totals'
              daxmirror watch 1234 --once --json          # one sample, same counts as inspect
            """)

    @Argument(help: "The process ID.") var pidText: NumberArgument
    @Option(name: .customLong("interval"), parsing: .unconditional, help: "Milliseconds between samples (10 to 3600000, default 1000).")
    var intervalText: NumberArgument?
    @Flag(help: "Take one sample and exit.") var once = false
    @Flag(help: "One JSON object per interval.") var json = false
    @Option(name: .customLong("count"), parsing: .unconditional, help: "Stop after N samples (default 0: until Ctrl-C or the process exits).")
    var countText: NumberArgument?

    func validate() throws {
        _ = try pidText.integer("PID", 1...Int32.max)
        _ = try intervalText?.integer("--interval", 10...3_600_000)
        _ = try countText?.integer("--count", 0...Int(Int32.max))
        if once && (intervalText != nil || countText != nil) {
            throw ValidationError("--once takes one sample: --interval and --count do nothing with it")
        }
    }

    // Checked in validate().
    var pid: Int32 { (try? pidText.integer("PID", 1...Int32.max)) ?? 0 }
    var interval: Int { intervalText.flatMap { try? $0.integer("--interval", 10...3_600_000) } ?? 1000 }
    var count: Int { countText.flatMap { try? $0.integer("--count", 0...Int(Int32.max)) } ?? 0 }

    /// One sample's counts, by VMA start, for the next one's rates.
    typealias Sample = (time: Double, present: [UInt64: UInt64], written: [UInt64: UInt64])
    typealias Rates = [UInt64: (faults: Double, writes: Double?)]

    func run() throws {
        let inventory = try? Inventory.read()
        var tty = isatty(1) == 1 && !json
        Self.stopOnSIGINTAndSIGTERM()
        // The alternate screen (as top and less use it): redrawing never
        // scrolls the user's history, and leaving it restores what was there.
        if tty { emitRaw("\u{1b}[?1049h\u{1b}[?25l") }
        defer { if tty { emitRaw("\u{1b}[?25h\u{1b}[?1049l") } }
        var previous: Sample?
        var samples = 0
        while stopRequested == 0 {
            let r = try Inspection.read(pid: pid, inventory: inventory)
            if r.kernelThread {  // nothing will ever change: say so once
                if tty { emitRaw("\u{1b}[?25h\u{1b}[?1049l"); tty = false }
                emit(json ? InspectCommand.json(r).render(pretty: false) : InspectCommand.table(r))
                return
            }
            let now = monotonicSeconds()
            let rates = Self.rates(r, since: previous, now: now)
            if json { emit(Self.json(r, rates: rates, at: now)) } else { show(r, rates: rates, tty: tty) }
            previous = (now, Dictionary(r.vmas.map { ($0.vma.start, $0.presentPages) }, uniquingKeysWith: { a, _ in a }),
                        Dictionary(r.vmas.map { ($0.vma.start, $0.writtenPages ?? 0) }, uniquingKeysWith: { a, _ in a }))
            samples += 1
            if once || (count > 0 && samples >= count) { break }
            // Sleep in slices so Ctrl-C ends the wait at once.
            var left = interval
            while left > 0 && stopRequested == 0 { usleep(UInt32(min(left, 50)) * 1000); left -= 50 }
        }
    }

    /// A parent may hand us SIGINT blocked (threads of a test runner block
    /// signals, and the mask is inherited): unblock what ends us, and let
    /// it end the loop instead of the process (exit 0, the screen restored).
    static func stopOnSIGINTAndSIGTERM() {
        var set = sigset_t()
        sigemptyset(&set)
        sigaddset(&set, SIGINT)
        sigaddset(&set, SIGTERM)
        pthread_sigmask(SIG_UNBLOCK, &set, nil)
        signal(SIGINT) { _ in stopRequested = 1 }
        signal(SIGTERM) { _ in stopRequested = 1 }
    }

    /// Pages faulted in and written per second since the previous sample.
    static func rates(_ r: Inspection, since p: Sample?, now: Double) -> Rates {
        guard let p else { return [:] }
        var rates: Rates = [:]
        let dt = max(now - p.time, 1e-3)
        for v in r.vmas {
            let f = Double(v.presentPages) - Double(p.present[v.vma.start] ?? 0)
            let w = v.writtenPages.map { Double($0) - Double(p.written[v.vma.start] ?? 0) }
            rates[v.vma.start] = (max(f, 0) / dt, w.map { max($0, 0) / dt })
        }
        return rates
    }

    /// inspect's JSON with the sample's time and rates: one line a sample.
    static func json(_ r: Inspection, rates: Rates, at now: Double) -> String {
        var obj = InspectCommand.json(r)
        if case .object(var pairs) = obj {
            pairs.append(("time", .double(now)))
            pairs.append(("rates", .array(r.vmas.compactMap { v in
                rates[v.vma.start].map { rate in
                    .object([("start", .string("0x" + String(v.vma.start, radix: 16))),
                             ("faults_per_s", .double((rate.faults * 10).rounded() / 10)),
                             ("writes_per_s", rate.writes.map { .double(($0 * 10).rounded() / 10) } ?? .null)])
                }
            })))
            obj = .object(pairs)
        }
        return obj.render(pretty: false)
    }

    /// On a terminal: home, each line cleared to its end, then the rest of
    /// the screen (no full clear, so no flicker and nothing scrolls),
    /// cut to the window. Elsewhere: the lines, one sample after another.
    func show(_ r: Inspection, rates: Rates, tty: Bool) {
        guard tty else {
            emit(Self.view(r, rates: rates, interval: interval, fit: nil).map(\.inert).joined(separator: "\n") + "\n")
            return
        }
        var rows: UInt32 = 0, columns: UInt32 = 0
        if dm_terminal_size(1, &rows, &columns) != 0 || rows == 0 { rows = 24; columns = 80 }
        let lines = Self.view(r, rates: rates, interval: interval, fit: (Int(rows), Int(columns)))
        emitRaw("\u{1b}[H" + lines.map { $0.inert + "\u{1b}[K" }.joined(separator: "\r\n") + "\u{1b}[J")
    }

    /// The view's lines; `fit` (rows, columns) cuts it to one terminal
    /// screen, the last row saying how many mappings did not fit.
    static func view(_ r: Inspection, rates: [UInt64: (faults: Double, writes: Double?)], interval: Int,
                     fit: (rows: Int, columns: Int)?) -> [String] {
        var lines = ["daxmirror watch \(r.pid) (\(r.command)) every \(interval) ms   # present  = PMD-mapped   Ctrl-C to stop"]
        let width = 32
        for v in r.vmas where v.presentPages > 0 {
            let pages = max(v.vma.size / Syscall.pageBytes, 1)
            let filled = Int((v.presentPages * UInt64(width) + pages - 1) / pages)
            let pmd = min(filled, Int((UInt64(v.pmdMappings) * 512 * UInt64(width)) / pages))
            let bar = String(repeating: "=", count: pmd) + String(repeating: "#", count: max(filled - pmd, 0))
                + String(repeating: ".", count: max(width - filled, 0))
            let rate = rates[v.vma.start].map { r in
                String(format1(r.faults)) + " faults/s " + (r.writes.map { format1($0) + " writes/s" } ?? "- writes/s")
            } ?? ""
            let name = v.vma.inode != 0 ? String(v.vma.path.split(separator: "/").last ?? "") : v.backing
            lines.append(String(v.vma.start, radix: 16) + " [" + bar + "] " + String(v.presentPages) + "/" + String(pages)
                         + (v.pmdMappings > 0 ? " pmd \(v.pmdMappings)" : "") + (v.isDAX ? " DAX" : "") + " " + name
                         + (rate.isEmpty ? "" : "  " + rate))
        }
        guard let fit else { return lines }
        if lines.count > fit.rows {
            let hidden = lines.count - (fit.rows - 1)
            lines = Array(lines.prefix(fit.rows - 1)) + ["... \(hidden) more mappings with pages present (a taller terminal, or --json, shows all)"]
        }
        return lines.map { $0.count > fit.columns ? String($0.prefix(fit.columns)) : $0 }
    }

    static func format1(_ v: Double) -> String { String((v * 10).rounded() / 10) }

}
