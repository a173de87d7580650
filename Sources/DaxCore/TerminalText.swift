/// Text meant for a terminal, made inert: a process can name itself, and
/// anyone can name a file, with escape sequences that would clear the screen,
/// retitle the window or fake output, with a newline that fakes a second line
/// of a report, or with a direction override (U+202E) that shows text in an
/// order other than its bytes'.
///
/// - `inert`: for one value (a name, a path, an error message): every C0
///   control character (newline and tab included), DEL and every C1 control
///   (U+0080–U+009F, which some terminals take as CSI) as `\xNN`; the Unicode
///   direction marks, embeddings, overrides and isolates and the line and
///   paragraph separators as `\u{NNNN}`. One value stays one line.
/// - `terminalSafe`: for whole reports that are several lines by design: the
///   same, except newline and tab. Values inside a report go through `inert`
///   first (TextReport does), so a newline in a name cannot forge a line.
extension String {
    public var inert: String { escaped(keepingLayout: false) }
    public var terminalSafe: String { escaped(keepingLayout: true) }

    private func escaped(keepingLayout: Bool) -> String {
        guard unicodeScalars.contains(where: { Self.mustEscape($0, keepingLayout) }) else { return self }
        var out = ""
        out.reserveCapacity(utf8.count + 8)
        for u in unicodeScalars {
            if !Self.mustEscape(u, keepingLayout) {
                out.unicodeScalars.append(u)
            } else if u.value <= 0xFF {
                let hex = String(u.value, radix: 16)
                out += "\\x" + (hex.count == 1 ? "0" : "") + hex
            } else {
                out += "\\u{" + String(u.value, radix: 16) + "}"
            }
        }
        return out
    }

    private static func mustEscape(_ u: Unicode.Scalar, _ keepingLayout: Bool) -> Bool {
        switch u.value {
        case 0x0A, 0x09: return !keepingLayout
        case 0x00..<0x20, 0x7F...0x9F: return true
        default: return isDirectionControl(u)
        }
    }

    /// ALM, LRM/RLM, LRE..RLO (U+202E), LRI..PDI, and the line and paragraph
    /// separators: characters that change how the text around them shows.
    public static func isDirectionControl(_ u: Unicode.Scalar) -> Bool {
        switch u.value {
        case 0x061C, 0x200E, 0x200F, 0x202A...0x202E, 0x2066...0x2069, 0x2028, 0x2029: return true
        default: return false
        }
    }
}
