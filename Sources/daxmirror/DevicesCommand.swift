import ArgumentParser
import DaxCore
import NVDIMMInventory

struct DevicesCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "devices",
        abstract: "List NVDIMM buses, regions, namespaces and device-dax devices.",
        discussion: """
            Read through libndctl and libdaxctl (the libraries behind `ndctl list` and \
            `daxctl list`), with the same key names in --json. A machine without NVDIMMs \
            prints an empty inventory and exits 0.

            Examples:
              daxmirror devices
              daxmirror devices --json | jq '.buses[].regions[].namespaces[] | {dev, mode, blockdev}'
            """)

    @Flag(help: "Print JSON (ndctl list style: lower_snake keys, numbers as numbers).")
    var json = false

    func run() throws {
        let inventory: Inventory
        do { inventory = try Inventory.read() } catch {
            throw Failure(.systemError, "\(error); is /sys mounted?")
        }
        if json {
            emit(inventory.json.render())
            return
        }
        var t = TextReport()
        if inventory.buses.isEmpty && inventory.daxDevices.isEmpty {
            emit("no NVDIMM buses or device-dax devices (this machine has no persistent memory; see Scripts/guest.sh)")
            return
        }
        for bus in inventory.buses {
            t.section("\(bus.dev) (\(bus.provider))")
            for r in bus.regions {
                t.row(r.dev, "\(r.type) \(ByteSize.human(r.size)), \(ByteSize.human(r.availableSize)) available, persistence domain \(r.persistenceDomain)")
                t.row("  backing", r.persistence.sentence)
                for ns in r.namespaces {
                    var v = "\(ns.mode) \(ByteSize.human(ns.size))"
                    if let b = ns.blockdev { v += " /dev/\(b)" }
                    if let c = ns.chardev { v += " /dev/\(c)" }
                    if let a = ns.align { v += " align \(ByteSize.human(a))" }
                    t.row("  " + ns.dev, v)
                }
            }
        }
        if !inventory.daxDevices.isEmpty {
            t.section("device-dax")
            for d in inventory.daxDevices {
                t.row(d.chardev, "\(ByteSize.human(d.size)) align \(ByteSize.human(d.align)) at 0x\(String(d.resource, radix: 16))")
            }
        }
        emit(t.text)
    }
}
