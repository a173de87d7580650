import DaxCore
import PageTables

/// `daxmirror run --text`: each answer as one readable line, and snapshots
/// as a picture (`SnapshotPicture`).
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

    /// Expands "15*512,02*3" into a picture.
    static func picture(_ rle: String, pages: Int) -> String {
        var codes: [SnapshotCode] = []
        for run in rle.split(separator: ",") {
            let parts = run.split(separator: "*")
            guard parts.count == 2, let c = UInt8(parts[0], radix: 16), let n = Int(parts[1]) else { continue }
            codes.append(contentsOf: repeatElement(SnapshotCode(rawValue: c), count: n))
        }
        return SnapshotPicture.rows(codes).joined(separator: "\n              ")
    }
}
