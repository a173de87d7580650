/// Byte counts as people write them: 4096, 64K, 64M, 2MiB, 1G, 1.5G.
public enum ByteSize {
    /// Parses a size with an optional binary suffix (K, M, G, T; optional "iB"
    /// or "B"). Returns nil for anything else, including negatives.
    public static func parse(_ text: String) -> UInt64? {
        var s = Substring(text.trimmingSpaces())
        var shift: UInt64 = 0
        for suffix in ["iB", "B"] where s.hasSuffix(suffix) && s.count > suffix.count {
            s = s.dropLast(suffix.count)
            break
        }
        if let last = s.last?.uppercased(), let i = ["K", "M", "G", "T"].firstIndex(of: last) {
            shift = UInt64(10 * (i + 1))
            s = s.dropLast()
        }
        guard !s.isEmpty, s.allSatisfy({ $0.isNumber || $0 == "." }) else { return nil }
        if let n = UInt64(s) {
            let (v, overflow) = n.multipliedReportingOverflow(by: 1 << shift)
            return overflow ? nil : v
        }
        guard shift > 0, let d = Double(s), d >= 0 else { return nil }
        let v = d * Double(UInt64(1) << shift)
        return v < 1.8e19 ? UInt64(v) : nil
    }

    /// 1536 -> "1.5 KiB", 2097152 -> "2 MiB".
    public static func human(_ bytes: UInt64) -> String {
        let units = ["B", "KiB", "MiB", "GiB", "TiB"]
        var v = Double(bytes)
        var u = 0
        while v >= 1024 && u < units.count - 1 { v /= 1024; u += 1 }
        if u == 0 { return "\(bytes) B" }
        let rounded = (v * 10).rounded() / 10
        let text = rounded == rounded.rounded() ? String(Int(rounded)) : String(rounded)
        return "\(text) \(units[u])"
    }
}
