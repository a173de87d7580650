#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import PageTables
import Userfaultfd

/// Device-private memory for one anonymous region, in user space: what the
/// kernel does with ZONE_DEVICE pages (lib/test_hmm.c, mm/migrate_device.c).
///
/// A page "migrated to the device" is copied into the pool (a private
/// mapping as long as the region: page i of the region has slot i) and
/// dropped from the CPU's page table (MADV_DONTNEED), after its range was
/// registered MISSING with the region's userfaultfd. The CPU's next touch of
/// it — a load, a store, a system call or GUP reading it, another device's
/// fault — is a MISSING fault the handler thread serves from the slot
/// (`serveFault`), as the kernel's migrate_to_ram brings a device-private
/// page back into a system page: by UFFDIO_MOVE where the kernel has it
/// (6.8+: the slot's page itself is mapped back, no copy), else by
/// UFFDIO_COPY (`comeHome` says which cases).
///
/// `state` holds one word per region page, read by the handler thread
/// without locks or allocation: 0 = the CPU's page; otherwise bits 0–15 the
/// owning device + 1, bit 16 the device may write it, bit 17 a migration of
/// it is under way (the handler must not take the migration's own
/// MADV_DONTNEED for a user's discard), bit 18 the page is held for the
/// device's exclusive (atomic) access rather than migrated.
///
/// fork: the child's copy of the region has the same pages absent, so the
/// FORK event hands its uffd to the handler, which keeps a copy of every
/// device page as it was at the fork (`childPool`) and serves the child's
/// faults from it. As the kernel's copy_nonpresent_pte, the parent's device
/// pages become read-only and its exclusive pages come home.
public final class DevicePrivatePool: @unchecked Sendable {
    public let base: UInt64
    public let pages: Int
    let pageSize: Int
    private let pool: UnsafeMutableRawPointer
    private let state: UnsafeMutablePointer<UInt64>
    /// Pages on a device now (a load per read: the truth overlay is skipped at 0).
    private let onDevice: UnsafeMutablePointer<UInt64>
    /// The last forked child's device pages, as they were at the fork.
    private let childPool: UnsafeMutableRawPointer
    private let childState: UnsafeMutablePointer<UInt64>
    /// The last forked child's uffd + 1 (0: none), polled by the handler.
    public let childDescriptor: UnsafeMutablePointer<UInt64>

    static let ownerMask: UInt64 = 0xFFFF
    static let writableBit: UInt64 = 1 << 16
    static let pendingBit: UInt64 = 1 << 17
    static let exclusiveBit: UInt64 = 1 << 18
    /// The page was on the device at the last fork: the child shares it, and
    /// the first of the two to touch it brings it home for both (the kernel
    /// migrates the one shared device page).
    static let sharedBit: UInt64 = 1 << 19
    /// The page's VMA is read-only now (see `comesHomeReadOnly`).
    static let readOnlyVMABit: UInt64 = 1 << 20
    /// Owner field of a page that is the CPU's again but not yet mapped:
    /// an exclusive page at a fork, whose UFFDIO_COPY would be EAGAIN while
    /// the fork is under way (mmap_changing); the next touch or `settle`
    /// maps it.
    static let returning: UInt64 = 0xFFFF
    /// Set when some page is `returning`.
    private let returningPending: UnsafeMutablePointer<UInt64>
    /// Per page a device holds: SoftDirty.epoch + 1 if its entry carries the
    /// soft-dirty bit of the PTE it replaced (0: not). A clear of the
    /// process's soft-dirty bits clears the entries' too (clear_refs walks
    /// swap entries): a new epoch ends it.
    private let entrySoftDirty: UnsafeMutablePointer<UInt64>
    /// Per page: SoftDirty.epoch + 1 when the page came home writable but,
    /// in the kernel, without a soft-dirty bit (0: not so). The kernel's
    /// device entry keeps a present PTE's soft-dirty bit; one made from a
    /// hole or the zero page has none, and the page it comes home to is
    /// writable yet not soft-dirty. A store then does not fault, so nothing
    /// sets the bit, and once the process's soft-dirty bits were cleared an
    /// mprotect giving write permission back leaves such a PTE read-only
    /// (pte_needs_soft_dirty_wp). UFFDIO_COPY maps a dirty page (soft-dirty
    /// on x86): `vmaWritable` write-protects these pages with userfaultfd
    /// to match. A later clear (a new epoch), a write fault or a discard
    /// ends it.
    private let homeClean: UnsafeMutablePointer<UInt64>
    /// Set once some page came home clean (`vmaWritable` then looks).
    private let someHomeClean: UnsafeMutablePointer<UInt64>
    /// The errno of the last UFFDIO_MOVE the kernel refused (0: none).
    private let lastRefusal: UnsafeMutablePointer<UInt64>

    /// Debug builds only: DAXMIRROR_POOL_HOME_DELAY_US=N holds the handler N µs
    /// between a page's copy home and its bookkeeping — the window where a
    /// faulter woken too early would race it (`serveFault`); with the faulter
    /// woken after the bookkeeping, it only slows the way back.
    private let homeDelay = debugMicroseconds("DAXMIRROR_POOL_HOME_DELAY_US")

    private var ownRange: Range<UInt64> {
        let b = UInt64(UInt(bitPattern: pool))
        return b..<(b + UInt64(2 * pages * pageSize))
    }

    /// Reserves the pool (MAP_NORESERVE: it costs what devices hold).
    public init(base: UInt64, length: Int) throws(SystemCallError) {
        self.base = base
        pageSize = Syscall.pageSize
        pages = (length + pageSize - 1) / pageSize
        // One mapping: the device's pages, then the last child's copy of them.
        let p = mmap(nil, 2 * pages * pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemCallError("mmap", "the device-private pool", errno: Errno.current) }
        // Base pages only: UFFDIO_MOVE would split a huge one first.
        madvise(p, 2 * pages * pageSize, MADV_NOHUGEPAGE)
        pool = p
        childPool = p + pages * pageSize
        state = zeroedWords(pages)
        childState = zeroedWords(pages)
        onDevice = zeroedWords(1)
        childDescriptor = zeroedWords(1)
        returningPending = zeroedWords(1)
        homeClean = zeroedWords(pages)
        entrySoftDirty = zeroedWords(pages)
        someHomeClean = zeroedWords(1)
        lastRefusal = zeroedWords(1)
        OwnMappings.add(ownRange)
        PoolTrace.start()
    }

    deinit {
        closeChild()
        munmap(pool, 2 * pages * pageSize)
        OwnMappings.remove(ownRange)
        state.deallocate()
        childState.deallocate()
        onDevice.deallocate()
        childDescriptor.deallocate()
        returningPending.deallocate()
        homeClean.deallocate()
        entrySoftDirty.deallocate()
        someHomeClean.deallocate()
        lastRefusal.deallocate()
    }

    /// Stops serving the last child (its faults then run as unregistered).
    public func closeChild() {
        let fd = dm_atomic_exchange_u64(childDescriptor, 0)
        if fd != 0 { close(Int32(truncatingIfNeeded: fd) - 1) }
    }

    /// Pages any device holds now.
    public var count: Int { Int(dm_atomic_load_u64(onDevice)) }

    /// The owner and permission of region page `index`, if a device holds
    /// it, and whether it holds it for exclusive access (not migrated).
    public func owner(ofPage index: Int) -> (device: Int, writable: Bool, exclusive: Bool)? {
        let s = dm_atomic_load_u64(state + index)
        guard s & Self.ownerMask != 0, s & Self.ownerMask != Self.returning else { return nil }
        return (Int(s & Self.ownerMask) - 1, s & Self.writableBit != 0, s & Self.exclusiveBit != 0)
    }

    /// Some device, or a fork's return, holds the page's bytes in its slot.
    private func held(_ index: Int) -> Bool { dm_atomic_load_u64(state + index) & Self.ownerMask != 0 }

    /// Maps the pages a fork gave back to the CPU (see `returning`).
    public func mapReturned(uffd: Userfaultfd) {
        // Every device access settles through here: a load when nothing returns.
        guard dm_atomic_load_u64(returningPending) != 0, dm_atomic_exchange_u64(returningPending, 0) != 0 else { return }
        for i in 0..<pages where dm_atomic_load_u64(state + i) & Self.ownerMask == Self.returning {
            // A copy refused (EAGAIN while the address space changes) is tried
            // again at the next access, not forgotten.
            do throws(SystemCallError) { try bringHome(i, uffd: uffd) } catch {
                PoolTrace.record(.copyRefused, i, UInt64(error.errno.rawValue))
                dm_atomic_store_u64(returningPending, 1)
            }
        }
    }

    /// An mprotect of `indices`: without write, their device pages become
    /// read-only; with it given back, they stay read-only (the kernel
    /// upgrades no device-private entry) in a writable VMA, and pages that
    /// came home clean (`homeClean`) are write-protected where the kernel's
    /// stay read-only: in a VMA whose soft-dirty bits were cleared (no
    /// VM_SOFTDIRTY, smaps "sd").
    public func vmaWritable(_ indices: Range<Int>, _ writable: Bool, uffd: Userfaultfd?) {
        if count > 0 {
            // (a load when no device holds a page: every write restore calls this)
            for i in indices where held(i) {
                PoolTrace.record(.protect, i, dm_atomic_load_u64(state + i), writable ? 1 : 0)
                if writable { dm_atomic_and_u64(state + i, ~Self.readOnlyVMABit) }
                else {
                    // A writable device-private entry made read-only loses its
                    // soft-dirty bit (change_pte_range); an exclusive one keeps it.
                    let s = dm_atomic_load_u64(state + i)
                    if s & Self.exclusiveBit == 0 && s & Self.writableBit != 0 { dm_atomic_store_u64(entrySoftDirty + i, 0) }
                    dm_atomic_and_u64(state + i, ~Self.writableBit)
                    dm_atomic_or_u64(state + i, Self.readOnlyVMABit)
                }
            }
        }
        guard writable, let uffd, dm_atomic_load_u64(someHomeClean) != 0 else { return }
        let clean = indices.filter { !held($0) && isHomeClean($0) }
        guard !clean.isEmpty, let vmas = try? Smaps.parse(Smaps.read()) else { return }
        for i in clean {
            let at = UInt64(UInt(bitPattern: address(i)))
            guard let v = vmas.first(where: { $0.contains(at) }), !v.vmFlags.contains("sd") else { continue }
            try? uffd.writeProtect(address(i), length: pageSize, protect: true)
        }
    }

    /// What `homeClean` and `entrySoftDirty` hold for "so, since the last clear".
    private var epochStamp: UInt64 { UInt64(SoftDirty.epoch) + 1 }

    private func isHomeClean(_ index: Int) -> Bool { dm_atomic_load_u64(homeClean + index) == epochStamp }

    private func entryIsSoftDirty(_ index: Int) -> Bool { dm_atomic_load_u64(entrySoftDirty + index) == epochStamp }

    /// Region page `page` (a page address) is in, if it is in the region.
    private func index(of page: UInt64) -> Int? {
        page >= base && page < base + UInt64(pages * pageSize) ? Int((page - base) / UInt64(pageSize)) : nil
    }

    /// The slot's bytes (the device page), for the device's own access.
    public func slot(_ index: Int) -> UnsafeMutableRawPointer { pool + index * pageSize }

    private func address(_ index: Int) -> UnsafeMutableRawPointer {
        UnsafeMutableRawPointer(bitPattern: UInt(base) + UInt(index * pageSize))!
    }

    /// One page to move: its index in the region, whether the CPU has it
    /// (else the device page starts zeroed) and whether the device may write it.
    public struct Move: Sendable {
        public var index: Int
        public var present: Bool
        public var writable: Bool
        public var vmaWritable: Bool
        /// The PTE's soft-dirty bit, as an mprotect would see it.
        public var softDirty: Bool
        public init(index: Int, present: Bool, writable: Bool, vmaWritable: Bool = true, softDirty: Bool? = nil) {
            self.index = index
            self.present = present
            self.writable = writable
            self.vmaWritable = vmaWritable
            self.softDirty = softDirty ?? present
        }
    }

    /// Migrates `moves` (sorted by index) to `device`: copies each into its
    /// slot, registers the runs MISSING on `uffd`, drops the CPU's pages.
    /// `settle` waits for the handler to have served the discards' REMOVE
    /// events before the pages stop being "under way". Returns the pages moved
    /// (a page whose copy met SIGBUS — truncated away — stays).
    public func migrate(_ moves: [Move], device: Int, exclusive: Bool = false, uffd: Userfaultfd,
                        settle: () -> Void) throws(SystemCallError) -> Int {
        var moved: [Move] = []
        moved.reserveCapacity(moves.count)
        for m in moves {
            let dst = slot(m.index)
            if m.present {
                guard dm_copy_guarded(dst, address(m.index), pageSize) == 0 else { continue }
            } else {
                // A zeroed page of the pool's own, not the shared zero page
                // a read of an empty slot would map: UFFDIO_MOVE would map
                // that one home read-only.
                memset(dst, 0, pageSize)
            }
            let softDirty = m.present && m.softDirty && !isHomeClean(m.index)
            let word = UInt64(device + 1) | (m.writable ? Self.writableBit : 0) | Self.pendingBit
                | (exclusive ? Self.exclusiveBit : 0) | (m.vmaWritable ? 0 : Self.readOnlyVMABit)
            dm_atomic_store_u64(homeClean + m.index, 0)
            dm_atomic_store_u64(entrySoftDirty + m.index, softDirty ? epochStamp : 0)
            dm_atomic_store_u64(state + m.index, word)
            PoolTrace.record(.migrate, m.index, word, (m.present ? 1 : 0) | (m.writable ? 2 : 0))
            moved.append(m)
        }
        dm_atomic_add_u64(onDevice, UInt64(moved.count))
        var failure: SystemCallError?
        forEachRun(moved.map(\.index)) { first, count in
            guard failure == nil else { return }
            do throws(SystemCallError) {
                try uffd.register(start: address(first), length: count * pageSize, mode: [.missing, .writeProtect])
                try Syscall.retrying("madvise", "MADV_DONTNEED") { madvise(address(first), count * pageSize, MADV_DONTNEED) }
            } catch { failure = error }
        }
        settle()
        for m in moved { dm_atomic_and_u64(state + m.index, ~Self.pendingBit) }
        if let failure {
            for m in moved { _ = try? bringHome(m.index, uffd: uffd) }
            throw failure
        }
        return moved.count
    }

    /// Brings page `index` home if a device holds it: UFFDIO_COPY from its
    /// slot (EEXIST: the handler did it first). Returns whether it was on a device.
    @discardableResult
    public func bringHome(_ index: Int, uffd: Userfaultfd) throws(SystemCallError) -> Bool {
        guard held(index) else { return false }
        PoolTrace.record(.bringHome, index, dm_atomic_load_u64(state + index), comesHomeReadOnly(index) ? 1 : 0)
        var moved = false
        do { moved = try comeHome(index, uffd: uffd, wake: true) }
        catch where error.errno == .EEXIST {}
        release(index, cameHome: true, slotEmpty: moved)
        return true
    }

    /// Maps page `index` home from its slot. UFFDIO_MOVE (6.8+) maps the
    /// slot's page itself, writable, and leaves the slot empty; the kernel
    /// refuses it for a slot page a fork shares (EBUSY), a VMA that is not
    /// writable or is mlocked (EINVAL) — those, a page that must come home
    /// read-only (MOVE maps writable), and kernels before 6.8 take
    /// UFFDIO_COPY. Returns whether the page moved (else it was copied).
    private func comeHome(_ index: Int, uffd: Userfaultfd, wake: Bool) throws(SystemCallError) -> Bool {
        let readOnly = comesHomeReadOnly(index)
        if !readOnly && Self.moves(uffd) {
            do throws(SystemCallError) {
                try uffd.move(to: address(index), from: slot(index), length: pageSize, wake: wake)
                return true
            } catch {
                // Any refusal, EEXIST included (MOVE wants a bare hole where
                // COPY takes a marker too): the copy's answer is the one kept.
                PoolTrace.record(.moveRefused, index, UInt64(error.errno.rawValue))
                dm_atomic_store_u64(lastRefusal, UInt64(error.errno.rawValue))
            }
        }
        try uffd.copy(to: address(index), from: slot(index), length: pageSize, writeProtect: readOnly, wake: wake)
        return false
    }

    /// Why the kernel last refused to move a page home (then copied), if it
    /// did: EBUSY when a fork shares the pool's page (another thread's fork
    /// of this process shares every private page), EINVAL for a VMA that is
    /// not writable or is mlocked.
    public var lastMoveRefusal: Errno? {
        let e = dm_atomic_load_u64(lastRefusal)
        return e == 0 ? nil : Errno(Int32(truncatingIfNeeded: e))
    }

    /// Whether pages come home by UFFDIO_MOVE on this uffd's kernel.
    private static func moves(_ uffd: Userfaultfd) -> Bool { uffd.features.contains(.move) }

    /// How pages come home on this uffd's kernel: "move" or "copy".
    public static func mechanism(_ uffd: Userfaultfd) -> String { moves(uffd) ? "move" : "copy" }

    /// Whether the page comes home write-protected (with userfaultfd, which
    /// the handler lifts at the first write: `serveWrite`), as the kernel's
    /// page would be read-only and stay so through an mprotect giving write
    /// permission back. The kernel's page comes home writable if its entry
    /// was (a writable exclusive entry's restore: if the VMA is). Otherwise it
    /// is read-only, and an mprotect upgrades it only where
    /// can_change_pte_writable would: the process's own page
    /// (PageAnonExclusive: not shared by a fork, which also makes a fork's
    /// returning page read-only) with a soft-dirty bit (mprotect and fork drop
    /// a writable device-private entry's), in a VMA that is read-only now —
    /// such a page comes home as a plain read-only PTE, which an mprotect
    /// upgrades here too (UFFDIO_COPY's page is soft-dirty and exclusive).
    /// Every other read-only page is write-protected.
    private func comesHomeReadOnly(_ index: Int) -> Bool {
        let s = dm_atomic_load_u64(state + index)
        if s & Self.ownerMask == Self.returning { return true }
        if s & Self.writableBit != 0 { return false }
        let upgradable = entryIsSoftDirty(index) && s & Self.sharedBit == 0
        return !(upgradable && s & Self.readOnlyVMABit != 0)
    }

    /// On the handler thread: a write-protect fault at `page`. Only a page
    /// that came home read-only is write-protected in an events-only range:
    /// lift it (the kernel's copy-on-write would give the writer its own page;
    /// this one is already its own).
    public func serveWrite(_ page: UInt64, uffd: Userfaultfd) {
        let dst = UnsafeMutableRawPointer(bitPattern: UInt(page))!
        if let i = index(of: page) {
            PoolTrace.record(.serveWrite, i, dm_atomic_load_u64(state + i))
            dm_atomic_store_u64(homeClean + i, 0)  // a write fault sets soft-dirty
        }
        do { try uffd.writeProtect(dst, length: pageSize, protect: false) } catch { try? uffd.wake(dst, length: pageSize) }
    }

    /// On the handler thread (no allocation, no lock): a MISSING fault at
    /// `page`. A device-private page comes home from its slot; any other
    /// page of a range registered for migration is served as the kernel
    /// would without userfaultfd (zeros) — outside the region too: a
    /// registered run mremap moved away. Never leaves the faulter asleep.
    public func serveFault(_ page: UInt64, uffd: Userfaultfd) {
        let dst = UnsafeMutableRawPointer(bitPattern: UInt(page))!
        guard let index = index(of: page) else {
            do { try uffd.zeropage(at: dst, length: pageSize) } catch { try? uffd.wake(dst, length: pageSize) }
            return
        }
        PoolTrace.record(.serveFault, index, dm_atomic_load_u64(state + index), comesHomeReadOnly(index) ? 1 : 0)
        do {
            if held(index) {
                // The faulter wakes only once the page is the CPU's here too:
                // woken by the copy, it could move the page to a device again
                // before `release` wiped what that move wrote (the device lost
                // the page: `aDeviceMemoryRunAnswersTheSameTwice` found it).
                let moved = try comeHome(index, uffd: uffd, wake: false)
                if homeDelay > 0 { usleep(homeDelay) }
                release(index, cameHome: true, slotEmpty: moved)
                try uffd.wake(dst, length: pageSize)
            } else {
                try uffd.zeropage(at: dst, length: pageSize)
            }
        } catch {
            PoolTrace.record(.copyRefused, index, UInt64(error.errno.rawValue), 1)
            if error.errno == .EEXIST, held(index) { release(index, cameHome: true) }
            try? uffd.wake(dst, length: pageSize)
        }
    }

    /// On the handler thread: [start, end) was discarded or unmapped. A
    /// device-private page there is freed (the kernel frees it too: the next
    /// touch reads zeros), unless it is a migration's own discard.
    public func removed(_ start: UInt64, _ end: UInt64) {
        let lo = max(start, base), hi = min(end, base + UInt64(pages * pageSize))
        guard lo < hi else { return }
        for i in Int((lo - base) / UInt64(pageSize))..<Int((hi - base + UInt64(pageSize) - 1) / UInt64(pageSize)) {
            let s = dm_atomic_load_u64(state + i)
            if s != 0 { PoolTrace.record(.removed, i, s) }
            guard s & Self.pendingBit == 0 else { continue }  // the migration's own discard
            dm_atomic_store_u64(homeClean + i, 0)
            if s & Self.ownerMask != 0 { release(i, cameHome: false) }
        }
    }

    /// On the handler thread: the process forked and `descriptor` is the
    /// child's uffd. The child's device pages are copied aside for it; the
    /// parent's lose write permission, and its exclusive pages are the CPU's
    /// again (mapped at their next touch or by `mapReturned`).
    public func forked(_ descriptor: Int32, uffd: Userfaultfd) {
        closeChild()
        parent = uffd
        for i in 0..<pages {
            let s = dm_atomic_load_u64(state + i)
            if s & Self.ownerMask != 0 { (childPool + i * pageSize).copyMemory(from: slot(i), byteCount: pageSize) }
            dm_atomic_store_u64(childState + i, s & ~Self.pendingBit)
            guard s & Self.ownerMask != 0 else { continue }
            PoolTrace.record(.forked, i, s)
            if s & Self.exclusiveBit != 0 {
                // Restored before the copy, then copy-on-write: home read-only.
                dm_atomic_store_u64(state + i, Self.returning | (s & Self.readOnlyVMABit))
                dm_atomic_store_u64(returningPending, 1)
                // The child's copy is present from the fork on, as the
                // kernel's is: mapped now, so it never needs this process
                // (which may exit first) to serve it.
                if (try? Userfaultfd.copy(fd: descriptor, to: UInt64(UInt(bitPattern: address(i))), from: childPool + i * pageSize,
                                          length: pageSize)) != nil {
                    dm_atomic_store_u64(childState + i, 0)
                    PoolTrace.record(.childCopy, i, s)
                }
            } else {
                dm_atomic_store_u64(state + i, (s & ~Self.writableBit) | Self.sharedBit)
            }
        }
        dm_atomic_store_u64(childDescriptor, UInt64(descriptor) + 1)
    }

    /// The parent's uffd, for the child's faults that bring a shared page home.
    private var parent: Userfaultfd?

    /// On the handler thread: an event of the child's uffd. A fault on a
    /// page a device held at the fork gets that page; any other, zeros.
    public func serveChild(_ event: UserfaultfdEvent, descriptor: Int32) {
        switch event {
        case .pageFault(let address, _, _):
            let page = address & ~UInt64(pageSize - 1)
            guard let i = index(of: page) else {
                Userfaultfd.wake(fd: descriptor, at: page, length: pageSize)
                return
            }
            PoolTrace.record(.serveChild, i, dm_atomic_load_u64(childState + i), dm_atomic_load_u64(state + i))
            do {
                if dm_atomic_exchange_u64(childState + i, 0) != 0 {
                    try Userfaultfd.copy(fd: descriptor, to: page, from: childPool + i * pageSize, length: pageSize)
                    // The device page the two shared comes home in the parent too.
                    if dm_atomic_load_u64(state + i) & Self.sharedBit != 0, let parent {
                        _ = try? bringHome(i, uffd: parent)
                    }
                } else {
                    try Userfaultfd.zeropage(fd: descriptor, at: page, length: pageSize)
                }
            } catch {
                Userfaultfd.wake(fd: descriptor, at: page, length: pageSize)
            }
        case .fork(let grandchild):
            close(grandchild)  // a grandchild's faults run as unregistered
        default:
            break
        }
    }

    /// The slot goes back to zeros; the page is the CPU's again (`cameHome`:
    /// mapped from the slot, else freed; `slotEmpty`: moved out of it).
    private func release(_ index: Int, cameHome: Bool, slotEmpty: Bool = false) {
        let s = dm_atomic_exchange_u64(state + index, 0)
        guard s != 0 else { return }
        PoolTrace.record(.release, index, s, cameHome ? 1 : 0)
        if cameHome && comesHomeClean(s, index) {
            dm_atomic_store_u64(homeClean + index, epochStamp)
            dm_atomic_store_u64(someHomeClean, 1)
        }
        dm_atomic_add_u64(onDevice, UInt64.max)  // -1
        if !slotEmpty { madvise(slot(index), pageSize, MADV_DONTNEED) }
    }

    /// Whether the kernel's page comes home without a soft-dirty bit: its
    /// entry had none, and no restore marked it dirty (a writable exclusive
    /// entry's restore does, pte_mkdirty; a fork's return is cleared anyway).
    private func comesHomeClean(_ s: UInt64, _ index: Int) -> Bool {
        guard s & Self.ownerMask != Self.returning, !entryIsSoftDirty(index) else { return false }
        return !(s & Self.exclusiveBit != 0 && s & Self.writableBit != 0)
    }

    private func forEachRun(_ indices: [Int], _ body: (Int, Int) -> Void) {
        var i = 0
        while i < indices.count {
            var j = i + 1
            while j < indices.count && indices[j] == indices[j - 1] + 1 { j += 1 }
            body(indices[i], j - i)
            i = j
        }
    }
}

/// `count` words, zeroed: state read and written with the shim's atomics.
private func zeroedWords(_ count: Int) -> UnsafeMutablePointer<UInt64> {
    let p = UnsafeMutablePointer<UInt64>.allocate(capacity: count)
    p.initialize(repeating: 0, count: count)
    return p
}
