/// What `daxmirror --version` says: the release number (semantic
/// versioning; below 1.0 a minor release may change the CLI) and the commit
/// the binary was built from (Plugins/BuildInfo writes it before each build).
enum Version {
    static let number = "0.9.0"
    static var text: String { "daxmirror \(number) (commit \(BuildInfo.commit))" }
}
