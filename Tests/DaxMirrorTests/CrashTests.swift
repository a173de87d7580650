import Foundation
import Testing
import PersistentMemory

/// A writer persists records one by one and acknowledges each; it is killed
/// with SIGKILL at a different point each round. Every acknowledged record
/// must be in the file, byte for byte, and persist-verify must agree.
///
/// What this proves is the writer's protocol (an ack only after its record
/// is written whole, in order) and the verifier — not persistence: the page
/// cache survives a SIGKILL whether or not anything was persisted. The power
/// cut in the guest (Scripts/powercut-test.py) is the persistence test.
@Suite("writer protocol under SIGKILL")
struct CrashTests {
    @Test func everyAcknowledgedRecordIsInTheFileAfterSIGKILL() throws {
        let base = DaxEnvironment.directory ?? NSTemporaryDirectory()
        let dir = try ScratchDirectory(base: base)
        let recordSize = 4096, records = 256
        var rng = SystemRandomNumberGenerator()
        let seed = UInt64.random(in: 0...UInt64.max, using: &rng)
        var gen = SplitMix64(seed: seed)
        // 8 rounds, each killing in its own slice of the run: process starts
        // are slow under emulation, and the protocol does not need more.
        let rounds = 8
        for round in 0..<rounds {
            let path = dir.file("log\(round)")
            // Spread the kill points over the whole run: round r kills in its own slice.
            let slice = records / rounds
            let killAfter = round * slice + Int(gen.next() % UInt64(slice))
            let acked = try runAndKill(path: path, records: records, recordSize: recordSize, afterAck: killAfter)
            #expect(acked >= killAfter, "seed \(seed): round \(round) saw ack \(acked)")
            let bytes = try fileBytes(path)
            let bad = bytes.withUnsafeBytes {
                RecordPattern.firstMismatch(in: $0, recordSize: recordSize, count: acked + 1)
            }
            #expect(bad == nil, "seed \(seed): round \(round) killed after ack \(acked): record \(bad ?? -1) lost or torn")
        }
    }

    /// Starts the writer, reads acks until `afterAck`, SIGKILLs it; returns the
    /// highest ack it read.
    private func runAndKill(path: String, records: Int, recordSize: Int, afterAck: Int) throws -> Int {
        let p = try Spawned(CLI.binary, ["persist-writer", path, "--records", "\(records)", "--record-size", "\(recordSize)", "--hold"])
        _ = p.waitForOutput(containing: "ack \(afterAck)\n", timeout: 60)
        p.kill()
        // Every ack printed before the kill counts as acknowledged.
        var last = -1
        for line in p.output.split(separator: "\n") where line.hasPrefix("ack ") {
            if let n = Int(line.dropFirst(4)) { last = max(last, n) }
        }
        return last
    }
}

/// A small seeded generator, so a failing run can be replayed from its seed.
struct SplitMix64: RandomNumberGenerator {
    var state: UInt64
    init(seed: UInt64) { state = seed }
    mutating func next() -> UInt64 {
        state &+= 0x9E3779B97F4A7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58476D1CE4E5B9
        z = (z ^ (z >> 27)) &* 0x94D049BB133111EB
        return z ^ (z >> 31)
    }
    mutating func below(_ n: Int) -> Int { Int(next() % UInt64(n)) }
}
