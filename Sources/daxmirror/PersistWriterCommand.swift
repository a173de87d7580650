import ArgumentParser
import DaxCore
import MirrorPolicy
import MirrorKernel
import MirrorScenario
import PersistentMemory
#if canImport(Glibc)
import Glibc
#endif

/// Writes numbered records through a persistent mapping and acknowledges each
/// one only after `persist` returned, so a crash test can kill the process (or
/// the machine) at any point and check that every acknowledged record survived.
struct PersistWriterCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "persist-writer",
        abstract: "Crash-test helper: write records, persist each, print 'ack N' after each persist.",
        discussion: """
            Creates (or, with --overwrite, reuses) FILE sized for --records records, then \
            writes record 0, 1, ... each followed by persist() and a line `ack N` on stdout. \
            After the last record it prints `done` and, with --hold, waits to be killed. \
            Check the file with `daxmirror persist-verify`.

            Example (the crash test of the test suite does this 20+ times):
              daxmirror persist-writer /mnt/pmem/log --records 1000 & sleep 0.1; kill -9 $!
              daxmirror persist-verify /mnt/pmem/log --acked 57
            """,
        shouldDisplay: false)

    @Argument(help: ArgumentHelp("The file to write.", valueName: "path")) var pathArgument: PathArgument
    var path: FilePath { pathArgument.path }
    @Option(name: .customLong("records"), parsing: .unconditional, help: "Number of records.")
    var recordsText = NumberArgument("1000")
    @Option(name: .customLong("record-size"), parsing: .unconditional, help: "Bytes per record (8 to 64M).")
    var recordSizeText = NumberArgument("4096")
    @Flag(help: "Reuse an existing file (its contents are lost).") var overwrite = false
    @Flag(help: "After the last record, wait to be killed instead of exiting.") var hold = false
    @Flag(help: "Write each record as the simulated device (DeviceMirror.write: on a DAX file the kernel's DAX write path, pwrite, into blocks its fault allocated), not through the CPU's mapping.")
    var throughMirror = false

    func validate() throws {
        try pathArgument.check("PATH")
        let records = try recordsText.integer("--records", 1...Int.max)
        let recordSize = try recordSizeText.integer("--record-size", 8...(64 << 20))
        let (bytes, overflow) = records.multipliedReportingOverflow(by: recordSize)
        guard !overflow, bytes < 1 << 56 else {
            throw invalidArgument("--records \(records) x --record-size \(recordSize) is larger than any file (2^56 bytes)")
        }
    }

    // Checked in validate().
    var records: Int { (try? recordsText.integer("--records", 1...Int.max)) ?? 0 }
    var recordSize: Int { (try? recordSizeText.integer("--record-size", 8...(64 << 20))) ?? 8 }

    func run() throws {
        if throughMirror { return try runThroughMirror() }
        var options: MapOptions = [.create]
        if overwrite { options.insert(.overwrite) }
        let map = try PersistentMapping(path: path, size: records * recordSize, options: options)
        emit("mapped is_pmem=\(map.isPersistentMemory) method=\(map.persistMethod.rawValue)")
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: recordSize, alignment: 64)
        defer { scratch.deallocate() }
        for seq in 0..<records {
            RecordPattern.fill(scratch, seq: UInt64(seq))
            try map.memcpyPersist(to: seq * recordSize, from: UnsafeRawBufferPointer(scratch))
            emit("ack \(seq)")
        }
        emit("done")
        while hold { pause() }
    }

    /// The device's writes: each record goes through the mirror (a fault the
    /// first time, then the device's own mapping) and is acknowledged when
    /// DeviceMirror.write returned, which is when it is durable.
    private func runThroughMirror() throws {
        let size = records * recordSize
        let mem: MappedMemory
        let mirror: DeviceMirror
        do {
            guard let text = path.string else {
                throw Failure(.invalidArgument, "--through-mirror needs a path that is UTF-8 (\(path) is not)")
            }
            mem = try MappedMemory(name: "log", kind: .file, path: text, size: size, options: .init())
            mirror = try DeviceMirror(region: mem.region, dax: mem.mapSync)
        } catch let e as MirrorError {
            throw Failure(.systemError, "cannot mirror \(path): \(e)")
        }
        emit("mapped map_sync=\(mem.mapSync) device_writes=through-mirror")
        let scratch = UnsafeMutableRawBufferPointer.allocate(byteCount: recordSize, alignment: 64)
        defer { scratch.deallocate() }
        for seq in 0..<records {
            RecordPattern.fill(scratch, seq: UInt64(seq))
            do {
                try mirror.write(mem.address + UInt64(seq * recordSize), [UInt8](scratch))
            } catch {
                throw Failure(.systemError, "device write of record \(seq): \(error)")
            }
            if seq == 0 { emit("device_path \(mirror.writePath)") }
            emit("ack \(seq)")
        }
        emit("done")
        while hold { pause() }
    }
}

struct PersistVerifyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "persist-verify",
        abstract: "Crash-test helper: check that records 0..<N written by persist-writer are intact.",
        shouldDisplay: false)

    @Argument(help: ArgumentHelp("The file persist-writer wrote.", valueName: "path")) var pathArgument: PathArgument
    var path: FilePath { pathArgument.path }
    @Option(name: .customLong("record-size"), parsing: .unconditional, help: "Bytes per record (8 to 64M).")
    var recordSizeText = NumberArgument("4096")
    @Option(name: .customLong("acked"), parsing: .unconditional,
            help: "Highest acknowledged record number; records 0...N must be intact (-1: none).")
    var ackedText: NumberArgument

    func validate() throws {
        try pathArgument.check("PATH")
        let recordSize = try recordSizeText.integer("--record-size", 8...(64 << 20))
        _ = try ackedText.integer("--acked", -1...(Int(1 << 56) / recordSize - 1))
    }

    // Checked in validate().
    var recordSize: Int { (try? recordSizeText.integer("--record-size", 8...(64 << 20))) ?? 8 }
    var acked: Int { (try? ackedText.integer("--acked", -1...(Int(1 << 56) / recordSize - 1))) ?? -1 }

    func run() throws {
        let map = try PersistentMapping(path: path)
        let count = acked + 1
        let bad = RecordPattern.firstMismatch(
            in: UnsafeRawBufferPointer(start: map.base, count: map.length), recordSize: recordSize, count: count)
        if let bad {
            emit(JSON.object(["ok": .bool(false), "checked": .int(Int64(count)), "first_bad": .int(Int64(bad))]).render(pretty: false))
            throw Failure(.failure, "record \(bad) of \(count) acknowledged records is missing or torn")
        }
        emit(JSON.object(["ok": .bool(true), "checked": .int(Int64(count))]).render(pretty: false))
    }
}
