/// Text meant for a terminal, made inert: a process can name itself, and
/// anyone can name a file, with escape sequences that would clear the screen,
/// retitle the window or fake output. Every C0 control character but newline
/// and tab, DEL, and every C1 control character (U+0080–U+009F, which some
/// terminals take as CSI and friends) is written as `\xNN`.
extension String {
    public var terminalSafe: String {
        guard unicodeScalars.contains(where: Self.isControl) else { return self }
        var out = ""
        out.reserveCapacity(utf8.count + 8)
        for u in unicodeScalars {
            if Self.isControl(u) {
                let hex = String(u.value, radix: 16)
                out += "\\x" + (hex.count == 1 ? "0" : "") + hex
            } else {
                out.unicodeScalars.append(u)
            }
        }
        return out
    }

    private static func isControl(_ u: Unicode.Scalar) -> Bool {
        (u.value < 0x20 && u != "\n" && u != "\t") || (0x7F...0x9F).contains(u.value)
    }
}
