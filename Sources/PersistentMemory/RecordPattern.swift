/// The deterministic record pattern the crash tests write: record `seq` of
/// `size` bytes starts with `seq` (little-endian UInt64) and continues with
/// bytes derived from seq and position, so any torn or stale byte is visible.
public enum RecordPattern {
    public static func byte(seq: UInt64, at i: Int) -> UInt8 {
        if i < 8 { return UInt8(truncatingIfNeeded: seq >> (8 * UInt64(i))) }
        return UInt8(truncatingIfNeeded: seq &* 131 &+ UInt64(i) &* 7 &+ 1)
    }

    public static func fill(_ buffer: UnsafeMutableRawBufferPointer, seq: UInt64) {
        for i in 0..<buffer.count { buffer[i] = byte(seq: seq, at: i) }
    }

    /// Index of the first record in `bytes` that does not match, scanning `count` records.
    public static func firstMismatch(in bytes: UnsafeRawBufferPointer, recordSize: Int, count: Int) -> Int? {
        for r in 0..<count {
            let base = r * recordSize
            guard base + recordSize <= bytes.count else { return r }
            for i in 0..<recordSize where bytes[base + i] != byte(seq: UInt64(r), at: i) { return r }
        }
        return nil
    }
}
