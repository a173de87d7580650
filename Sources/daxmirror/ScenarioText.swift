import DaxCore

/// `daxmirror run --text`: each answer as one readable line, and snapshots
/// as a picture — one character per page (one per 2 MiB span when the range
/// is larger than 256 pages; "+" for a span whose pages differ):
///   .  NONE   r  READ   w  WRITE   z  ZERO (read)   !  ERROR
///   R W Z  the same mapped by a PMD (2 MiB)   U u  by a PUD (1 GiB, write/read)
enum ScenarioText {
    static func render(_ answer: JSON) -> String {
        guard case .object(let pairs) = answer else { return answer.render(pretty: false) }
        var head = ""
        var rest: [String] = []
        var pictures: [String] = []
        var pages = 0
        var isSnapshot = false
        for (k, v) in pairs {
            if k == "pages", case .int(let n) = v { pages = Int(n) }
            if k == "op", v == .string("snapshot") { isSnapshot = true }
        }
        for (k, v) in pairs {
            switch (k, v) {
            case ("line", .int(let n)): head = pad("\(n)", 4) + head
            case ("op", .string(let op)): head += " " + pad(op, 10)
            case ("ok", .bool(let ok)): head += ok ? " ok    " : " FAILED"
            case ("codes", .string(let rle)) where isSnapshot, ("device", .string(let rle)) where isSnapshot:
                pictures.append(pad(k == "codes" ? "cpu" : "device", 6) + " " + picture(rle, pages: pages))
            case ("inner", _):
                rest.append("(\(render(v).trimmingSpaces()))")
            case ("list", .array(let items)):
                rest.append(items.map { $0.render(pretty: false) }.joined(separator: "; "))
            default:
                rest.append("\(k)=\(plain(v))")
            }
        }
        var out = head + " " + rest.joined(separator: " ")
        for p in pictures { out += "\n       " + p }
        return out
    }

    static func plain(_ v: JSON) -> String {
        if case .string(let s) = v { return s }
        return v.render(pretty: false)
    }

    static func pad(_ s: String, _ n: Int) -> String { s.count >= n ? s : s + String(repeating: " ", count: n - s.count) }

    static func glyph(_ code: UInt8) -> Character {
        if code == 0xff { return "!" }
        if code == 0 { return "." }
        let write = code & 0x02 != 0, zero = code & 0x10 != 0
        if code & 0x08 != 0 { return write ? "U" : "u" }
        if code & 0x04 != 0 { return zero ? "Z" : (write ? "W" : "R") }
        return zero ? "z" : (write ? "w" : "r")
    }

    /// Expands "15*512,02*3" into glyphs, 64 per row (rows of 2 MiB when coarse).
    static func picture(_ rle: String, pages: Int) -> String {
        var codes: [UInt8] = []
        for run in rle.split(separator: ",") {
            let parts = run.split(separator: "*")
            guard parts.count == 2, let c = UInt8(parts[0], radix: 16), let n = Int(parts[1]) else { continue }
            codes.append(contentsOf: repeatElement(c, count: n))
        }
        // Up to 256 pages one character each; beyond, one per 2 MiB span: its
        // glyph when all its pages agree, "+" when they differ.
        let step = codes.count > 256 ? 512 : 1
        let glyphs: [Character] = stride(from: 0, to: codes.count, by: step).map { i in
            let span = codes[i..<min(i + step, codes.count)]
            return span.allSatisfy { $0 == codes[i] } ? glyph(codes[i]) : "+"
        }
        var rows: [String] = []
        var i = 0
        while i < glyphs.count {
            rows.append(String(glyphs[i..<min(i + 64, glyphs.count)]))
            i += 64
        }
        let unit = step == 1 ? "1 char = 4 KiB" : "1 char = 2 MiB"
        return rows.joined(separator: "\n              ") + "   (\(unit))"
    }
}
