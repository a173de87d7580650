// daxshim.h — the thin C layer between daxmirror's Swift code and the kernel.
//
// Swift cannot import function-like macros (_IOWR and friends), cannot call the
// variadic ioctl(2)/syscall(2), and sees packed unions (struct uffd_msg) badly.
// Each wrapper below does one kernel call and returns its raw result (-1 with
// errno set on failure); all policy lives in Swift. The exceptions say so:
// the guarded copies (a signal handler around a memcpy), dm_fork_fill (a
// child's whole life) and dm_process_start (the environment at start). This header
// declares and explains; daxshim.c (built with _GNU_SOURCE, so glibc's own
// wrappers serve where glibc has one) holds the bodies.
//
// Debian 12 ships 6.1 uapi headers, older than the kernels we run on. Where a
// newer interface is missing we define it here behind #ifndef with the values
// from upstream include/uapi (the same approach swift-system takes for io_uring).
#ifndef DAXSHIM_H
#define DAXSHIM_H

#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <unistd.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <linux/userfaultfd.h>
#include <malloc.h>
#include <signal.h>
#include <sys/uio.h>
#include <sys/vfs.h>
#include <sys/wait.h>

// ---------------------------------------------------------------------------
// mmap / madvise flags (include/uapi/asm-generic/mman-common.h, mman.h)
// ---------------------------------------------------------------------------
#ifndef MAP_SHARED_VALIDATE
#define MAP_SHARED_VALIDATE 0x03
#endif
#ifndef MAP_SYNC
#define MAP_SYNC 0x80000
#endif
#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif
#ifndef O_TMPFILE
#define O_TMPFILE (020000000 | O_DIRECTORY)
#endif
/// open(2) flag for an unnamed file in a directory (glibc hides it without _GNU_SOURCE).
static const int DM_O_TMPFILE = O_TMPFILE;
#ifndef O_PATH
#define O_PATH 010000000
#endif
/// open(2) flag for a descriptor that only names a file (hidden the same way).
static const int DM_O_PATH = O_PATH;
static const int DM_MAP_SHARED_VALIDATE = MAP_SHARED_VALIDATE;
static const int DM_MAP_SYNC = MAP_SYNC;
#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
/// MAP_FIXED that fails with EEXIST instead of replacing a mapping (4.17+).
static const int DM_MAP_FIXED_NOREPLACE = MAP_FIXED_NOREPLACE;
static const int DM_MADV_POPULATE_READ = MADV_POPULATE_READ;
static const int DM_MADV_POPULATE_WRITE = MADV_POPULATE_WRITE;

/// mmap(2) with MAP_SHARED_VALIDATE|MAP_SYNC: the kernel maps the file only if
/// writes through the mapping are durable once CPU caches are flushed (a DAX
/// file); otherwise it fails with EOPNOTSUPP. Returns MAP_FAILED on failure.
void *dm_mmap_sync(void *addr, size_t len, int prot, int fd, off_t off);

/// mmap(2) MAP_SHARED|MAP_FIXED at `addr` (a range the caller reserved), with
/// MAP_SHARED_VALIDATE|MAP_SYNC when `sync` (EOPNOTSUPP off DAX). MAP_FAILED on failure.
void *dm_mmap_shared_fixed(void *addr, size_t len, int prot, int fd, off_t off, int sync);

static const unsigned int DM_MFD_CLOEXEC = 0x0001U;  // MFD_CLOEXEC (linux/memfd.h)
/// eventfd(2), non-blocking and close-on-exec: a wake-up for threads in poll(2).
int dm_eventfd(void);

/// mremap(2) (variadic in glibc): with MREMAP_MAYMOVE|MREMAP_FIXED moves to new_addr.
void *dm_mremap(void *old_addr, size_t old_len, size_t new_len, int flags, void *new_addr);
static const int DM_MREMAP_MAYMOVE = 1, DM_MREMAP_FIXED = 2;

/// memfd_create(2): anonymous shared memory with a file (shmem) behind it.
int dm_memfd_create(const char *name, unsigned int flags);

// ---------------------------------------------------------------------------
// statx(2) (include/uapi/linux/stat.h): STATX_ATTR_DAX says whether the file is
// in DAX state right now (the per-inode truth, which the mount option only
// suggests when the mount is dax=inode).
// ---------------------------------------------------------------------------
#ifndef STATX_ATTR_DAX
#define STATX_ATTR_DAX 0x00200000
#endif
static const uint64_t DM_STATX_ATTR_DAX = STATX_ATTR_DAX;

typedef struct dm_statx_result {
    uint64_t attributes;       // stx_attributes
    uint64_t attributes_mask;  // which attribute bits this filesystem reports
    uint32_t dev_major, dev_minor;   // device of the filesystem holding the file
    uint32_t rdev_major, rdev_minor; // device number, if the file is a device
    uint64_t size;
    uint32_t mode;
    uint64_t ino;
} dm_statx_result;

/// statx(2) for `path` relative to `dirfd` (AT_FDCWD), flags e.g. AT_SYMLINK_NOFOLLOW.
int dm_statx(int dirfd, const char *path, int flags, dm_statx_result *out);

// ---------------------------------------------------------------------------
// userfaultfd (include/uapi/linux/userfaultfd.h). Values newer than 6.1:
// ---------------------------------------------------------------------------
#ifndef UFFD_USER_MODE_ONLY
#define UFFD_USER_MODE_ONLY 1
#endif
#ifndef USERFAULTFD_IOC
#define USERFAULTFD_IOC 0xAA
#endif
#ifndef USERFAULTFD_IOC_NEW
#define USERFAULTFD_IOC_NEW _IO(USERFAULTFD_IOC, 0x00)
#endif
#ifndef UFFD_FEATURE_WP_UNPOPULATED
#define UFFD_FEATURE_WP_UNPOPULATED (1 << 13)
#endif
#ifndef UFFD_FEATURE_POISON
#define UFFD_FEATURE_POISON (1 << 14)
#endif
#ifndef UFFD_FEATURE_WP_ASYNC
#define UFFD_FEATURE_WP_ASYNC (1 << 15)
#endif
#ifndef UFFD_FEATURE_MOVE
#define UFFD_FEATURE_MOVE (1 << 16)
#endif
#ifndef _UFFDIO_MOVE
#define _UFFDIO_MOVE (0x05)
#endif
/// UFFDIO_MOVE's DONTWAKE mode (the installed headers may predate 6.8).
static const uint64_t DM_UFFDIO_MOVE_MODE_DONTWAKE = 1 << 0;
#ifndef _UFFDIO_POISON
#define _UFFDIO_POISON (0x08)
#endif

// Our own copies of the two newer argument structs, so the layout is fixed
// whatever the installed headers say.
struct dm_uffdio_move {
    uint64_t dst, src, len, mode;
    int64_t move;   // out: bytes moved, or -errno
};
struct dm_uffdio_poison {
    struct uffdio_range range;
    uint64_t mode;
    int64_t updated;
};
#define DM_UFFDIO_MOVE   _IOWR(UFFDIO, _UFFDIO_MOVE, struct dm_uffdio_move)
#define DM_UFFDIO_POISON _IOWR(UFFDIO, _UFFDIO_POISON, struct dm_uffdio_poison)

static const int DM_UFFD_USER_MODE_ONLY = UFFD_USER_MODE_ONLY;
static const uint64_t DM_UFFD_API = UFFD_API;

/// userfaultfd(2). flags: O_CLOEXEC, O_NONBLOCK, UFFD_USER_MODE_ONLY.
int dm_userfaultfd(int flags);
/// USERFAULTFD_IOC_NEW on an open /dev/userfaultfd (Linux 6.1+): a new uffd,
/// governed by the device node's permissions instead of the sysctl.
int dm_userfaultfd_dev_new(int devfd, int flags);
/// UFFDIO_API: the handshake. Allowed once per uffd; features in, features out.
int dm_uffdio_api(int fd, struct uffdio_api *api);
/// UFFDIO_REGISTER: arms a range for MISSING / WP / MINOR; out: allowed ioctls.
int dm_uffdio_register(int fd, struct uffdio_register *reg);
/// UFFDIO_UNREGISTER.
int dm_uffdio_unregister(int fd, struct uffdio_range *range);
/// UFFDIO_WAKE: wake threads blocked on faults in a range.
int dm_uffdio_wake(int fd, struct uffdio_range *range);
/// UFFDIO_COPY: resolve a MISSING fault by copying a page in.
int dm_uffdio_copy(int fd, struct uffdio_copy *copy);
/// UFFDIO_ZEROPAGE: resolve a MISSING fault with zeros.
int dm_uffdio_zeropage(int fd, struct uffdio_zeropage *zp);
/// UFFDIO_WRITEPROTECT: set or clear write protection on a range.
int dm_uffdio_writeprotect(int fd, struct uffdio_writeprotect *wp);
/// UFFDIO_CONTINUE: resolve a MINOR fault by mapping the existing page-cache page.
int dm_uffdio_continue(int fd, struct uffdio_continue *c);
/// UFFDIO_MOVE (6.8+): resolve a fault by moving a page from another range.
int dm_uffdio_move(int fd, struct dm_uffdio_move *m);
/// UFFDIO_POISON (6.6+): mark a range as poisoned (SIGBUS on access).
int dm_uffdio_poison(int fd, struct dm_uffdio_poison *p);

// struct uffd_msg is packed with nested unions; read it through accessors.
uint8_t dm_uffd_msg_event(const struct uffd_msg *m);
uint64_t dm_uffd_msg_pf_flags(const struct uffd_msg *m);
uint64_t dm_uffd_msg_pf_address(const struct uffd_msg *m);
uint32_t dm_uffd_msg_pf_ptid(const struct uffd_msg *m);
uint32_t dm_uffd_msg_fork_ufd(const struct uffd_msg *m);
uint64_t dm_uffd_msg_remap_from(const struct uffd_msg *m);
uint64_t dm_uffd_msg_remap_to(const struct uffd_msg *m);
uint64_t dm_uffd_msg_remap_len(const struct uffd_msg *m);
uint64_t dm_uffd_msg_remove_start(const struct uffd_msg *m);
uint64_t dm_uffd_msg_remove_end(const struct uffd_msg *m);
static const size_t DM_UFFD_MSG_SIZE = sizeof(struct uffd_msg);

// ---------------------------------------------------------------------------
// Atomics on plain memory, for the fault handler's bookkeeping: it must not
// allocate or take locks, because a thread in fork() holds the allocator's
// locks while the kernel makes it wait for the handler to read the FORK event.
// ---------------------------------------------------------------------------
void dm_atomic_or_u64(uint64_t *p, uint64_t v);
void dm_atomic_and_u64(uint64_t *p, uint64_t v);
uint64_t dm_atomic_load_u64(const uint64_t *p);
void dm_atomic_store_u64(uint64_t *p, uint64_t v);
uint64_t dm_atomic_add_u64(uint64_t *p, uint64_t v);
// Stores v and returns what was there: one of two threads releasing the same
// device-private page sees the old word, the other 0.
uint64_t dm_atomic_exchange_u64(uint64_t *p, uint64_t v);

// ---------------------------------------------------------------------------
// PAGEMAP_SCAN (Linux 6.7+, include/uapi/linux/fs.h): an ioctl on
// /proc/PID/pagemap that walks a range and returns runs of pages sharing the
// requested categories, optionally write-protecting them (WP_ASYNC tracking).
// ---------------------------------------------------------------------------
#define DM_PAGE_IS_WPALLOWED  (1ULL << 0)
#define DM_PAGE_IS_WRITTEN    (1ULL << 1)
#define DM_PAGE_IS_FILE       (1ULL << 2)
#define DM_PAGE_IS_PRESENT    (1ULL << 3)
#define DM_PAGE_IS_SWAPPED    (1ULL << 4)
#define DM_PAGE_IS_PFNZERO    (1ULL << 5)
#define DM_PAGE_IS_HUGE       (1ULL << 6)
#define DM_PAGE_IS_SOFT_DIRTY (1ULL << 7)
#define DM_PM_SCAN_WP_MATCHING   (1ULL << 0)
#define DM_PM_SCAN_CHECK_WPASYNC (1ULL << 1)

struct dm_page_region {
    uint64_t start, end, categories;
};
struct dm_pm_scan_arg {
    uint64_t size;               // sizeof(struct dm_pm_scan_arg)
    uint64_t flags;              // PM_SCAN_*
    uint64_t start, end;         // range to walk
    uint64_t walk_end;           // out: where the walk stopped (resume here)
    uint64_t vec, vec_len;       // output vector of dm_page_region
    uint64_t max_pages;          // 0 = unlimited
    uint64_t category_inverted;
    uint64_t category_mask;      // all of these must match
    uint64_t category_anyof_mask;// at least one of these
    uint64_t return_mask;        // categories reported back
};
#define DM_PAGEMAP_SCAN _IOWR('f', 16, struct dm_pm_scan_arg)

/// PAGEMAP_SCAN on an open /proc/PID/pagemap fd. Returns the number of regions
/// filled (>= 0) or -1 (ENOTTY on kernels before 6.7).
long dm_pagemap_scan(int pagemap_fd, struct dm_pm_scan_arg *arg);

// ---------------------------------------------------------------------------
// The filesystem a descriptor's file lives on (fstatfs f_type, linux/magic.h):
// Swift's Glibc module does not carry <sys/vfs.h>.
// ---------------------------------------------------------------------------
static const long DM_TMPFS_MAGIC = 0x01021994;
/// fstatfs(2)'s f_type for `fd`, or -1 (errno).
long dm_fs_magic(int fd);

// ---------------------------------------------------------------------------
// PROCMAP_QUERY (include/uapi/linux/fs.h, Linux 6.11+): one VMA of a process
// by address, in O(log n), from an open /proc/PID/maps — instead of reading
// the maps text from its first line. Debian 12's headers predate it; the
// layout below is the upstream ABI (the kernel takes any size it knows).
// ---------------------------------------------------------------------------
struct dm_procmap_query {
    uint64_t size;               // sizeof(struct dm_procmap_query)
    uint64_t query_flags;        // DM_PROCMAP_QUERY_*
    uint64_t query_addr;
    uint64_t vma_start, vma_end; // out
    uint64_t vma_flags;          // out: DM_PROCMAP_QUERY_VMA_* bits
    uint64_t vma_page_size;      // out
    uint64_t vma_offset;         // out: file offset of vma_start
    uint64_t inode;              // out
    uint32_t dev_major, dev_minor; // out
    uint32_t vma_name_size;      // in/out: 0 = no name wanted
    uint32_t build_id_size;      // in/out: 0 = no build id wanted
    uint64_t vma_name_addr, build_id_addr;
};
#define DM_PROCMAP_QUERY _IOWR('f', 17, struct dm_procmap_query)
static const uint64_t DM_PROCMAP_QUERY_VMA_READABLE = 0x01;
static const uint64_t DM_PROCMAP_QUERY_VMA_WRITABLE = 0x02;
static const uint64_t DM_PROCMAP_QUERY_VMA_EXECUTABLE = 0x04;
static const uint64_t DM_PROCMAP_QUERY_VMA_SHARED = 0x08;
/// The VMA covering query_addr or, if none does, the first one after it.
static const uint64_t DM_PROCMAP_QUERY_COVERING_OR_NEXT_VMA = 0x10;

/// PROCMAP_QUERY on an open /proc/PID/maps fd. 0, or -1 with errno: ENOENT
/// when no VMA covers (or follows) the address, ENOTTY before Linux 6.11.
int dm_procmap_query(int maps_fd, struct dm_procmap_query *q);

// ---------------------------------------------------------------------------
// fork with a child that only stores bytes (the mirror's COW-after-fork case).
// The child runs nothing but memset and _exit: after fork() in a threaded
// process only async-signal-safe code is allowed, so this cannot be Swift.
// ---------------------------------------------------------------------------
/// fork(2) as the bare system call (clone with SIGCHLD), without glibc's
/// fork(): that one runs the atfork handlers first and so holds the
/// allocator's locks while the kernel makes the forking thread wait for
/// every EVENT_FORK uffd's handler to read its FORK event. A handler that
/// then allocates — or lazily binds a symbol, or instantiates Swift metadata
/// on first use — deadlocks against the forker (seen: `fork-write` in a
/// scenario hung once in a few hundred runs). The child may only run
/// async-signal-safe code and must leave with exit_group.
pid_t dm_raw_fork(void);
/// fork(2); the child fills [addr, addr+len) with `byte` and exits 0; the
/// parent waits for it. Returns the child's wait status, or -1 (errno).
int dm_fork_fill(void *addr, size_t len, int byte);
// Forks; the child reads [addr, addr+len) (FNV-1a hash, and the byte every
// byte equals or -1) and reports through a shared page; the parent waits.
// Returns the wait status, or -1 with errno. What a forked child sees of
// device-private pages, which the parent's handler serves to it.
int dm_fork_read(const void *addr, size_t len, uint64_t *hash, int *uniform_byte);

// process_vm_readv(2) of this process's own [src, src+len) into dst: the
// kernel reads the pages on the process's behalf through get_user_pages, as
// a driver's GUP does (the pages a device holds come home first). Returns
// the bytes read, or -1 with errno (EFAULT: a page it could not get).
ssize_t dm_gup_read(void *dst, const void *src, size_t len);
/// The kernel writes `len` bytes of `src` into this process's memory at
/// `dst` on its behalf (process_vm_writev of itself: get_user_pages for
/// write, which breaks copy-on-write and calls page_mkwrite as a store
/// would, and refuses a page the VMA does not let it write).
ssize_t dm_gup_write(void *dst, const void *src, size_t len);

// ---------------------------------------------------------------------------
// XFS/ext4 extent-size hint (FS_IOC_FSGETXATTR / FS_IOC_FSSETXATTR,
// include/uapi/linux/fs.h): on xfs a 2 MiB hint makes allocations 2 MiB
// extents, which is what lets a DAX fault map a PMD.
// ---------------------------------------------------------------------------
/// Sets FS_XFLAG_EXTSIZE with `bytes` on an open (empty) file. 0 or -1 (errno;
/// ENOTTY or EOPNOTSUPP where the filesystem has no such hint).
int dm_set_extent_size_hint(int fd, uint32_t bytes);

// ---------------------------------------------------------------------------
// malloc's own count of heap bytes in use (mallinfo2(3), glibc 2.33+): how the
// benchmark measures the device table's memory, rather than trusting the
// table's own accounting.
// ---------------------------------------------------------------------------
size_t dm_heap_bytes_in_use(void);

// ---------------------------------------------------------------------------
// ioctl(TIOCGWINSZ) (tty_ioctl(4)): the terminal's rows and columns, so
// `watch` draws one screen that fits and never scrolls. 0 when fd is not a
// terminal.
// ---------------------------------------------------------------------------
int dm_terminal_size(int fd, unsigned *rows, unsigned *columns);

// ---------------------------------------------------------------------------
// pidfd_open(2) (Linux 5.3): a descriptor for one process that polls readable
// (POLLIN) once it exits. `inspect` holds one across its reads to tell "the
// process exited mid-read" without re-reading /proc/PID/stat, and PID reuse
// cannot fool it.
// ---------------------------------------------------------------------------
int dm_pidfd_open(int pid);

// ---------------------------------------------------------------------------
// The kernel's HMM test driver (lib/test_hmm.c, CONFIG_TEST_HMM): each open of
// /dev/hmm_dmirrorN is a simulated device mirroring the caller's address
// space through the kernel's own hmm_range_fault. Our oracle for the mirror.
// The command and ioctl numbers are those of lib/test_hmm_uapi.h, which is
// not installed with the kernel's headers, so they are declared here.
// ---------------------------------------------------------------------------
struct dm_hmm_dmirror_cmd {
    uint64_t addr;    // page-aligned start in the caller's address space
    uint64_t ptr;     // user buffer: data (READ/WRITE) or one code per page (SNAPSHOT)
    uint64_t npages;
    uint64_t cpages;  // out: pages done
    uint64_t faults;  // out: hmm_range_fault rounds the device needed
};
#define DM_HMM_DMIRROR_READ      _IOWR('H', 0x00, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_WRITE     _IOWR('H', 0x01, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_SNAPSHOT  _IOWR('H', 0x04, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_MIGRATE_TO_DEV   _IOWR('H', 0x02, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_MIGRATE_TO_SYS   _IOWR('H', 0x03, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_EXCLUSIVE        _IOWR('H', 0x05, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_CHECK_EXCLUSIVE  _IOWR('H', 0x06, struct dm_hmm_dmirror_cmd)
#define DM_HMM_DMIRROR_RELEASE          _IOWR('H', 0x07, struct dm_hmm_dmirror_cmd)
/// HMM_DMIRROR_READ: the device reads npages at addr into ptr, faulting
/// (read) what its table lacks. -1 with errno as the driver returns it.
int dm_hmm_read(int fd, struct dm_hmm_dmirror_cmd *cmd);
/// HMM_DMIRROR_WRITE: the device writes ptr to addr, faulting for write.
int dm_hmm_write(int fd, struct dm_hmm_dmirror_cmd *cmd);
/// HMM_DMIRROR_SNAPSHOT: the CPU page table as hmm_range_fault sees it
/// without faulting, one HMM_DMIRROR_PROT_* code per page.
int dm_hmm_snapshot(int fd, struct dm_hmm_dmirror_cmd *cmd);
/// The device-private commands: MIGRATE_TO_DEV (pages to the device, then
/// read back into ptr), MIGRATE_TO_SYS, EXCLUSIVE (then read back),
/// CHECK_EXCLUSIVE, RELEASE (every page the device holds comes home).
enum dm_hmm_request {
    DM_HMM_MIGRATE_TO_DEV, DM_HMM_MIGRATE_TO_SYS, DM_HMM_EXCLUSIVE, DM_HMM_CHECK_EXCLUSIVE, DM_HMM_RELEASE
};
int dm_hmm_command(int fd, enum dm_hmm_request request, struct dm_hmm_dmirror_cmd *cmd);

// ---------------------------------------------------------------------------
// Failure injection (daxshim.c), swift-system's Mocking.swift idea: a test
// makes the calling thread's next `times` system calls named `call` that go
// through DaxCore's `Syscall` layer fail with `err` — or, with `err` 0,
// return `result` without running (a short read, an EOF) — so error branches
// are driven without filling a filesystem. Per thread: tests running in
// parallel never see another's. dm_inject_armed is one thread-local load,
// all an unarmed call costs.
// ---------------------------------------------------------------------------
void dm_inject(const char *call, int err, long result, int times);
int dm_inject_armed(void);
/// 1 (with *err and *result set) if this call is to be faked, else 0.
int dm_injected(const char *call, int *err, long *result);

// ---------------------------------------------------------------------------
// Guarded copies (daxshim.c): memcpy / memset through a mapping that may meet
// a page truncated away (SIGBUS) or unmapped or made inaccessible by another
// thread (SIGSEGV). 0, or -1 with errno EFAULT where the access got either
// signal (dm_guard_fault_address() then names the address). -1 with errno
// from sigaction if the handlers could not be installed.
// ---------------------------------------------------------------------------
int dm_copy_guarded(void *dst, const void *src, size_t n);
int dm_fill_guarded(void *dst, int byte, size_t n);
void *dm_guard_fault_address(void);

// ---------------------------------------------------------------------------
// The process's environment, made safe before anything else runs (daxshim.c).
// ---------------------------------------------------------------------------
/// Called first thing in main. (1) A standard stream the parent left closed
/// gets a placeholder, so nothing the program opens later becomes fd 0, 1 or
/// 2 (a report written "to stdout" into the user's file): /dev/null opened
/// for the *other* direction, so a write to a closed stdout or stderr fails
/// with EBADF and a read of a closed stdin does too — an error, not a silent
/// success. (2) SIGPIPE and SIGXFSZ are ignored: a reader that went away is
/// EPIPE and a file-size limit is EFBIG, answered where they happen instead
/// of killing the process mid-work. (3) SIGQUIT takes its default action
/// (the Swift runtime's backtracer would print a crash report and carry on).
/// Returns a bit mask of the streams that were closed (bit N: fd N).
int dm_process_start(void);
/// Puts back what dm_process_start changed (SIGPIPE, SIGXFSZ and SIGQUIT
/// dispositions, the signal mask, standard streams that were closed), right
/// before an exec: the program run then starts as daxmirror was started.
void dm_process_restore_for_exec(void);

#endif // DAXSHIM_H
