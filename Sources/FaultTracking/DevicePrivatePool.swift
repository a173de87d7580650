#if canImport(Glibc)
import Glibc
#endif
import CDaxShim
import DaxCore
import Userfaultfd

/// Device-private memory for one anonymous region, in user space: what the
/// kernel does with ZONE_DEVICE pages (lib/test_hmm.c, mm/migrate_device.c).
///
/// A page "migrated to the device" is copied into the pool (a private
/// mapping as long as the region: page i of the region has slot i) and
/// dropped from the CPU's page table (MADV_DONTNEED), after its range was
/// registered MISSING with the region's userfaultfd. The CPU's next touch of
/// it — a load, a store, a system call or GUP reading it, another device's
/// fault — is a MISSING fault the handler thread serves by UFFDIO_COPY from
/// the slot (`serveFault`), as the kernel's migrate_to_ram brings a
/// device-private page back into a new system page.
///
/// `state` holds one word per region page, read by the handler thread
/// without locks or allocation: 0 = the CPU's page; otherwise bits 0–15 the
/// owning device + 1, bit 16 the device may write it, bit 17 a migration of
/// it is under way (the handler must not take the migration's own
/// MADV_DONTNEED for a user's discard).
public final class DevicePrivatePool: @unchecked Sendable {
    public let base: UInt64
    public let pages: Int
    let pageSize: Int
    private let pool: UnsafeMutableRawPointer
    private let state: UnsafeMutablePointer<UInt64>
    /// Pages on a device now (a load per read: the truth overlay is skipped at 0).
    private let onDevice: UnsafeMutablePointer<UInt64>

    static let ownerMask: UInt64 = 0xFFFF
    static let writableBit: UInt64 = 1 << 16
    static let pendingBit: UInt64 = 1 << 17

    /// Reserves the pool (MAP_NORESERVE: it costs what devices hold).
    public init(base: UInt64, length: Int) throws(SystemCallError) {
        self.base = base
        pageSize = Syscall.pageSize
        pages = (length + pageSize - 1) / pageSize
        let p = mmap(nil, pages * pageSize, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0)
        guard let p, p != MAP_FAILED else { throw SystemCallError("mmap", "the device-private pool", errno: Errno.current) }
        pool = p
        state = .allocate(capacity: pages)
        state.initialize(repeating: 0, count: pages)
        onDevice = .allocate(capacity: 1)
        onDevice.initialize(to: 0)
    }

    deinit {
        munmap(pool, pages * pageSize)
        state.deallocate()
        onDevice.deallocate()
    }

    /// Pages any device holds now.
    public var count: Int { Int(dm_atomic_load_u64(onDevice)) }

    /// The owner and permission of region page `index`, if a device holds it.
    public func owner(ofPage index: Int) -> (device: Int, writable: Bool)? {
        let s = dm_atomic_load_u64(state + index)
        guard s & Self.ownerMask != 0 else { return nil }
        return (Int(s & Self.ownerMask) - 1, s & Self.writableBit != 0)
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
        public init(index: Int, present: Bool, writable: Bool) {
            self.index = index
            self.present = present
            self.writable = writable
        }
    }

    /// Migrates `moves` (sorted by index) to `device`: copies each into its
    /// slot, registers the runs MISSING on `uffd`, drops the CPU's pages.
    /// `settle` waits for the handler to have served the discards' REMOVE
    /// events before the pages stop being "under way". Returns the pages moved
    /// (a page whose copy met SIGBUS — truncated away — stays).
    public func migrate(_ moves: [Move], device: Int, uffd: Userfaultfd, settle: () -> Void) throws(SystemCallError) -> Int {
        var moved: [Move] = []
        moved.reserveCapacity(moves.count)
        for m in moves {
            let dst = slot(m.index)
            if m.present {
                guard dm_copy_guarded(dst, address(m.index), pageSize) == 0 else { continue }
            } else {
                madvise(dst, pageSize, MADV_DONTNEED)  // reads as zeros
            }
            let word = UInt64(device + 1) | (m.writable ? Self.writableBit : 0) | Self.pendingBit
            dm_atomic_store_u64(state + m.index, word)
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
        guard owner(ofPage: index) != nil else { return false }
        do { try uffd.copy(to: address(index), from: slot(index), length: pageSize) }
        catch where error.errno == .EEXIST {}
        release(index)
        return true
    }

    /// On the handler thread (no allocation, no lock): a MISSING fault at
    /// `page`. A device-private page comes home from its slot; any other
    /// page of a range registered for migration is served as the kernel
    /// would without userfaultfd (zeros). Returns false outside the region.
    public func serveFault(_ page: UInt64, uffd: Userfaultfd) -> Bool {
        guard page >= base, page < base + UInt64(pages * pageSize) else { return false }
        let index = Int((page - base) / UInt64(pageSize))
        let dst = address(index)
        do {
            if owner(ofPage: index) != nil {
                try uffd.copy(to: dst, from: slot(index), length: pageSize)
                release(index)
            } else {
                try uffd.zeropage(at: dst, length: pageSize)
            }
        } catch {
            if error.errno == .EEXIST, owner(ofPage: index) != nil { release(index) }
            try? uffd.wake(dst, length: pageSize)
        }
        return true
    }

    /// On the handler thread: [start, end) was discarded or unmapped. A
    /// device-private page there is freed (the kernel frees it too: the next
    /// touch reads zeros), unless it is a migration's own discard.
    public func removed(_ start: UInt64, _ end: UInt64) {
        let lo = max(start, base), hi = min(end, base + UInt64(pages * pageSize))
        guard lo < hi else { return }
        for i in Int((lo - base) / UInt64(pageSize))..<Int((hi - base + UInt64(pageSize) - 1) / UInt64(pageSize)) {
            let s = dm_atomic_load_u64(state + i)
            if s & Self.ownerMask != 0 && s & Self.pendingBit == 0 { release(i) }
        }
    }

    /// The slot goes back to zeros; the page is the CPU's again.
    private func release(_ index: Int) {
        guard dm_atomic_exchange_u64(state + index, 0) != 0 else { return }
        dm_atomic_add_u64(onDevice, UInt64.max)  // -1
        madvise(slot(index), pageSize, MADV_DONTNEED)
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
