/// A JSON value with ordered object keys, so that output reads in the order we
/// choose (the way `ndctl list` prints), numbers stay numbers, and no
/// Foundation is needed.
public indirect enum JSON: Sendable, Equatable {
    case null
    case bool(Bool)
    case int(Int64)
    case uint(UInt64)
    case double(Double)
    case string(String)
    case array([JSON])
    case object([(String, JSON)])

    public static func == (a: JSON, b: JSON) -> Bool { a.render() == b.render() }

    /// Builds an object, dropping keys whose value is nil (absent beats `null`
    /// for optional facts, as in ndctl's output).
    public static func object(_ pairs: KeyValuePairs<String, JSON?>) -> JSON {
        .object(pairs.compactMap { k, v in v.map { (k, $0) } })
    }

    public func render(pretty: Bool = true) -> String {
        var out = ""
        write(to: &out, indent: pretty ? 0 : nil)
        return out
    }

    private func write(to out: inout String, indent: Int?) {
        switch self {
        case .null: out += "null"
        case .bool(let b): out += b ? "true" : "false"
        case .int(let i): out += String(i)
        case .uint(let u): out += String(u)
        case .double(let d): out += d.isFinite ? String(d) : "null"
        case .string(let s): JSON.quote(s, into: &out)
        case .array(let items):
            writeContainer(open: "[", close: "]", count: items.count, into: &out, indent: indent) { i, out, ind in
                items[i].write(to: &out, indent: ind)
            }
        case .object(let pairs):
            writeContainer(open: "{", close: "}", count: pairs.count, into: &out, indent: indent) { i, out, ind in
                JSON.quote(pairs[i].0, into: &out)
                out += ind == nil ? ":" : ": "
                pairs[i].1.write(to: &out, indent: ind)
            }
        }
    }

    private func writeContainer(open: String, close: String, count: Int, into out: inout String,
                                indent: Int?, element: (Int, inout String, Int?) -> Void) {
        out += open
        if count == 0 { out += close; return }
        let inner = indent.map { $0 + 2 }
        for i in 0..<count {
            if i > 0 { out += "," }
            if let inner { out += "\n" + String(repeating: " ", count: inner) }
            element(i, &out, inner)
        }
        if let indent { out += "\n" + String(repeating: " ", count: indent) }
        out += close
    }

    private static func quote(_ s: String, into out: inout String) {
        out += "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            // C1 and the direction overrides too (String.inert's set): inert in a terminal.
            case _ where u.value < 0x20 || (0x7F...0x9F).contains(u.value) || String.isDirectionControl(u):
                let hex = String(u.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: 4 - hex.count) + hex
            default: out.unicodeScalars.append(u)
            }
        }
        out += "\""
    }
}

/// Types that describe themselves as JSON for `--json` output.
public protocol JSONRepresentable {
    var json: JSON { get }
}
