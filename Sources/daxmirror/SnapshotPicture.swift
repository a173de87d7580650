import PageTables

/// The one picture language for page-table snapshots, used by `run --text`
/// (the mirror's CPU and device tables) and `inspect --pages` (another
/// process's page table): one character per page, or one per 2 MiB span when
/// there are more than 256 pages ("+" for a span whose pages differ):
///   .  NONE   r  READ   w  WRITE   z  ZERO (read)   !  ERROR
///   R W Z  the same mapped by a PMD (2 MiB)   U u  by a PUD (1 GiB, write/read)
/// Codes are dmirror's SNAPSHOT flags (READ 1, WRITE 2, PMD 4, PUD 8, ZERO 0x10, ERROR 0xff).
enum SnapshotPicture {
    static let legend = ". none  r read  w write  z zero page  R/W by a PMD (R also the huge zero page)  u/U by a PUD  ! error  + mixed"

    static func glyph(_ code: SnapshotCode) -> Character {
        if code == .error { return "!" }
        if code == .none { return "." }
        let write = code.contains(.write), zero = code.contains(.zero)
        if code.contains(.pud) { return write ? "U" : "u" }
        if code.contains(.pmd) { return zero ? "Z" : (write ? "W" : "R") }
        return zero ? "z" : (write ? "w" : "r")
    }

    /// Rows of 64 glyphs; the last row ends with the scale.
    static func rows(_ codes: [SnapshotCode]) -> [String] {
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
        if rows.isEmpty { rows = [""] }
        rows[rows.count - 1] += "   (" + (step == 1 ? "1 char = 4 KiB" : "1 char = 2 MiB") + ")"
        return rows
    }
}
