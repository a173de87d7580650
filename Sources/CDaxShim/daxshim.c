// daxshim.c — the shim's bodies; daxshim.h declares and explains each.
#define _GNU_SOURCE
#include "daxshim.h"

#include <pthread.h>
#include <sys/uio.h>
#include <sys/pidfd.h>
#include <setjmp.h>
#include <signal.h>

void *dm_mmap_sync(void *addr, size_t len, int prot, int fd, off_t off) {
    return mmap(addr, len, prot, MAP_SHARED_VALIDATE | MAP_SYNC, fd, off);
}

void *dm_mmap_shared_fixed(void *addr, size_t len, int prot, int fd, off_t off, int sync) {
    int flags = MAP_FIXED | (sync ? (MAP_SHARED_VALIDATE | MAP_SYNC) : MAP_SHARED);
    return mmap(addr, len, prot, flags, fd, off);
}

int dm_eventfd(void) { return eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK); }

void *dm_mremap(void *old_addr, size_t old_len, size_t new_len, int flags, void *new_addr) {
    return mremap(old_addr, old_len, new_len, flags, new_addr);
}

int dm_memfd_create(const char *name, unsigned int flags) {
    return memfd_create(name, flags);
}

int dm_statx(int dirfd, const char *path, int flags, dm_statx_result *out) {
    struct statx stx;
    memset(&stx, 0, sizeof stx);
    int rc = statx(dirfd, path, flags, STATX_BASIC_STATS, &stx);
    if (rc != 0) return rc;
    out->attributes = stx.stx_attributes;
    out->attributes_mask = stx.stx_attributes_mask;
    out->dev_major = stx.stx_dev_major;
    out->dev_minor = stx.stx_dev_minor;
    out->rdev_major = stx.stx_rdev_major;
    out->rdev_minor = stx.stx_rdev_minor;
    out->size = stx.stx_size;
    out->mode = stx.stx_mode;
    out->ino = stx.stx_ino;
    return 0;
}

int dm_userfaultfd(int flags) {
    return (int)syscall(SYS_userfaultfd, flags);  // glibc has no wrapper
}

int dm_userfaultfd_dev_new(int devfd, int flags) {
    return ioctl(devfd, USERFAULTFD_IOC_NEW, flags);
}

int dm_uffdio_api(int fd, struct uffdio_api *api) {
    return ioctl(fd, UFFDIO_API, api);
}

int dm_uffdio_register(int fd, struct uffdio_register *reg) {
    return ioctl(fd, UFFDIO_REGISTER, reg);
}

int dm_uffdio_unregister(int fd, struct uffdio_range *range) {
    return ioctl(fd, UFFDIO_UNREGISTER, range);
}

int dm_uffdio_wake(int fd, struct uffdio_range *range) {
    return ioctl(fd, UFFDIO_WAKE, range);
}

int dm_uffdio_copy(int fd, struct uffdio_copy *copy) {
    return ioctl(fd, UFFDIO_COPY, copy);
}

int dm_uffdio_zeropage(int fd, struct uffdio_zeropage *zp) {
    return ioctl(fd, UFFDIO_ZEROPAGE, zp);
}

int dm_uffdio_writeprotect(int fd, struct uffdio_writeprotect *wp) {
    return ioctl(fd, UFFDIO_WRITEPROTECT, wp);
}

int dm_uffdio_continue(int fd, struct uffdio_continue *c) {
    return ioctl(fd, UFFDIO_CONTINUE, c);
}

int dm_uffdio_move(int fd, struct dm_uffdio_move *m) {
    return ioctl(fd, DM_UFFDIO_MOVE, m);
}

int dm_uffdio_poison(int fd, struct dm_uffdio_poison *p) {
    return ioctl(fd, DM_UFFDIO_POISON, p);
}

uint8_t dm_uffd_msg_event(const struct uffd_msg *m) { return m->event; }

uint64_t dm_uffd_msg_pf_flags(const struct uffd_msg *m) { return m->arg.pagefault.flags; }

uint64_t dm_uffd_msg_pf_address(const struct uffd_msg *m) { return m->arg.pagefault.address; }

uint32_t dm_uffd_msg_pf_ptid(const struct uffd_msg *m) { return m->arg.pagefault.feat.ptid; }

uint32_t dm_uffd_msg_fork_ufd(const struct uffd_msg *m) { return m->arg.fork.ufd; }

uint64_t dm_uffd_msg_remap_from(const struct uffd_msg *m) { return m->arg.remap.from; }

uint64_t dm_uffd_msg_remap_to(const struct uffd_msg *m) { return m->arg.remap.to; }

uint64_t dm_uffd_msg_remap_len(const struct uffd_msg *m) { return m->arg.remap.len; }

uint64_t dm_uffd_msg_remove_start(const struct uffd_msg *m) { return m->arg.remove.start; }

uint64_t dm_uffd_msg_remove_end(const struct uffd_msg *m) { return m->arg.remove.end; }

void dm_atomic_or_u64(uint64_t *p, uint64_t v) { __atomic_fetch_or(p, v, __ATOMIC_RELEASE); }

void dm_atomic_and_u64(uint64_t *p, uint64_t v) { __atomic_fetch_and(p, v, __ATOMIC_RELEASE); }

uint64_t dm_atomic_load_u64(const uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }

void dm_atomic_store_u64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }

uint64_t dm_atomic_add_u64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }

uint64_t dm_atomic_exchange_u64(uint64_t *p, uint64_t v) { return __atomic_exchange_n(p, v, __ATOMIC_ACQ_REL); }

long dm_pagemap_scan(int pagemap_fd, struct dm_pm_scan_arg *arg) {
    return ioctl(pagemap_fd, DM_PAGEMAP_SCAN, arg);
}

long dm_fs_magic(int fd) {
    struct statfs st;
    return fstatfs(fd, &st) == 0 ? (long)st.f_type : -1;
}

int dm_procmap_query(int maps_fd, struct dm_procmap_query *q) {
    return ioctl(maps_fd, DM_PROCMAP_QUERY, q);
}

pid_t dm_raw_fork(void) { return (pid_t)syscall(SYS_clone, (unsigned long)SIGCHLD, 0UL, 0UL, 0UL, 0UL); }

int dm_fork_fill(void *addr, size_t len, int byte) {
    pid_t pid = dm_raw_fork();
    if (pid < 0) return -1;
    if (pid == 0) { memset(addr, byte, len); _exit(0); }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) { if (errno != EINTR) return -1; }
    return status;
}

ssize_t dm_gup_read(void *dst, const void *src, size_t len) {
    struct iovec local = {.iov_base = dst, .iov_len = len};
    struct iovec remote = {.iov_base = (void *)src, .iov_len = len};
    return process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
}

ssize_t dm_gup_write(void *dst, const void *src, size_t len) {
    struct iovec local = {.iov_base = (void *)src, .iov_len = len};
    struct iovec remote = {.iov_base = dst, .iov_len = len};
    return process_vm_writev(getpid(), &local, 1, &remote, 1, 0);
}

int dm_fork_read(const void *addr, size_t len, uint64_t *hash, int *uniform_byte) {
    uint64_t *shared = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (shared == MAP_FAILED) return -1;
    pid_t pid = dm_raw_fork();
    if (pid < 0) { int e = errno; munmap(shared, 4096); errno = e; return -1; }
    if (pid == 0) {
        const unsigned char *p = addr;
        uint64_t h = 0xcbf29ce484222325ULL;
        int u = len ? p[0] : 0;
        for (size_t i = 0; i < len; i++) {
            h = (h ^ p[i]) * 0x100000001b3ULL;
            if (p[i] != p[0]) u = -1;
        }
        shared[0] = h;
        shared[1] = (uint64_t)(int64_t)u;
        _exit(0);
    }
    int status = 0;
    while (waitpid(pid, &status, 0) < 0) { if (errno != EINTR) { munmap(shared, 4096); return -1; } }
    *hash = shared[0];
    *uniform_byte = (int)(int64_t)shared[1];
    munmap(shared, 4096);
    return status;
}

int dm_set_extent_size_hint(int fd, uint32_t bytes) {
    struct fsxattr fa;
    if (ioctl(fd, FS_IOC_FSGETXATTR, &fa) < 0) return -1;
    fa.fsx_xflags |= FS_XFLAG_EXTSIZE;
    fa.fsx_extsize = bytes;
    return ioctl(fd, FS_IOC_FSSETXATTR, &fa);
}

size_t dm_heap_bytes_in_use(void) { return mallinfo2().uordblks; }

int dm_terminal_size(int fd, unsigned *rows, unsigned *columns) {
    struct winsize w;
    if (ioctl(fd, TIOCGWINSZ, &w) != 0) return -1;
    *rows = w.ws_row;
    *columns = w.ws_col;
    return 0;
}

int dm_pidfd_open(int pid) { return pidfd_open(pid, 0); }

int dm_hmm_read(int fd, struct dm_hmm_dmirror_cmd *cmd) { return ioctl(fd, DM_HMM_DMIRROR_READ, cmd); }

int dm_hmm_write(int fd, struct dm_hmm_dmirror_cmd *cmd) { return ioctl(fd, DM_HMM_DMIRROR_WRITE, cmd); }

int dm_hmm_snapshot(int fd, struct dm_hmm_dmirror_cmd *cmd) { return ioctl(fd, DM_HMM_DMIRROR_SNAPSHOT, cmd); }

int dm_hmm_command(int fd, enum dm_hmm_request request, struct dm_hmm_dmirror_cmd *cmd) {
    static const unsigned long number[] = {
        [DM_HMM_MIGRATE_TO_DEV] = DM_HMM_DMIRROR_MIGRATE_TO_DEV, [DM_HMM_MIGRATE_TO_SYS] = DM_HMM_DMIRROR_MIGRATE_TO_SYS,
        [DM_HMM_EXCLUSIVE] = DM_HMM_DMIRROR_EXCLUSIVE, [DM_HMM_CHECK_EXCLUSIVE] = DM_HMM_DMIRROR_CHECK_EXCLUSIVE,
        [DM_HMM_RELEASE] = DM_HMM_DMIRROR_RELEASE,
    };
    return ioctl(fd, number[request], cmd);
}

// ---------------------------------------------------------------------------
// Failure injection: one armed call per thread is all a test needs.
// ---------------------------------------------------------------------------
static __thread char inject_call[32];
static __thread int inject_err, inject_times;
static __thread long inject_result;

void dm_inject(const char *call, int err, long result, int times) {
    snprintf(inject_call, sizeof inject_call, "%s", call ? call : "");
    inject_err = err;
    inject_result = result;
    inject_times = call && times > 0 ? times : 0;
}

int dm_inject_armed(void) { return inject_times > 0; }

int dm_injected(const char *call, int *err, long *result) {
    if (inject_times <= 0 || strcmp(call, inject_call) != 0) return 0;
    inject_times--;
    *err = inject_err;
    *result = inject_result;
    return 1;
}

// ---------------------------------------------------------------------------
// Guarded copies: a load or store through a file mapping whose page was
// truncated away (by anyone, at any moment) is SIGBUS; one through this
// process's anonymous memory that another thread unmapped or made
// inaccessible meanwhile is SIGSEGV. The device's aperture, its copies of
// anonymous memory and the CPU commands of a scenario must answer EFAULT
// instead of dying, so they copy through these: either signal inside one
// jumps back out of it. Anywhere else it goes to whoever handled it before
// (Swift's backtracer, or the default action). SA_NODEFER keeps the signal
// unblocked in the handler, so the jump needs no signal-mask system call on
// the way in (sigsetjmp(…, 0)).
// ---------------------------------------------------------------------------
static __thread sigjmp_buf *guard_jump;
static __thread void *guard_fault_address;
static struct sigaction guard_previous_bus, guard_previous_segv;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_installed;

static void guard_on_signal(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *jump = guard_jump;
    if (jump) {
        guard_jump = NULL;
        guard_fault_address = info ? info->si_addr : NULL;
        siglongjmp(*jump, 1);
    }
    const struct sigaction *previous = sig == SIGBUS ? &guard_previous_bus : &guard_previous_segv;
    if ((previous->sa_flags & SA_SIGINFO) && previous->sa_sigaction) {
        previous->sa_sigaction(sig, info, context);
    } else if (!(previous->sa_flags & SA_SIGINFO) && previous->sa_handler != SIG_DFL &&
               previous->sa_handler != SIG_IGN) {
        previous->sa_handler(sig);
    } else {
        // The faulting access runs again on return and takes the default action.
        signal(sig, SIG_DFL);
    }
}

static void guard_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_on_signal;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    guard_installed = sigaction(SIGBUS, &sa, &guard_previous_bus) == 0 &&
                      sigaction(SIGSEGV, &sa, &guard_previous_segv) == 0;
}

static int dm_guard_ready(void) {
    pthread_once(&guard_once, guard_install);
    return guard_installed ? 0 : -1;
}

void *dm_guard_fault_address(void) { return guard_fault_address; }

int dm_copy_guarded(void *dst, const void *src, size_t n) {
    if (dm_guard_ready() != 0) return -1;
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0)) {
        errno = EFAULT;
        return -1;
    }
    guard_jump = &jump;
    memcpy(dst, src, n);
    guard_jump = NULL;
    return 0;
}

int dm_fill_guarded(void *dst, int byte, size_t n) {
    if (dm_guard_ready() != 0) return -1;
    sigjmp_buf jump;
    if (sigsetjmp(jump, 0)) {
        errno = EFAULT;
        return -1;
    }
    guard_jump = &jump;
    memset(dst, byte, n);
    guard_jump = NULL;
    return 0;
}

// What the process started with, for dm_process_restore_for_exec.
static struct sigaction start_pipe, start_xfsz, start_quit;
static sigset_t start_mask;
static int start_closed;

int dm_process_start(void) {
    sigprocmask(SIG_SETMASK, NULL, &start_mask);
    sigaction(SIGPIPE, NULL, &start_pipe);
    sigaction(SIGXFSZ, NULL, &start_xfsz);
    sigaction(SIGQUIT, NULL, &start_quit);
    int closed = 0;
    for (int fd = 0; fd <= 2; fd++) {
        if (fcntl(fd, F_GETFD) != -1 || errno != EBADF) continue;
        closed |= 1 << fd;
        // Opposite direction: the placeholder refuses what the stream was for.
        int got = open("/dev/null", (fd == 0 ? O_WRONLY : O_RDONLY) | O_NOCTTY);
        if (got < 0) got = open("/", O_RDONLY | O_DIRECTORY);  // no /dev: a directory refuses both
        if (got >= 0 && got != fd) {
            dup2(got, fd);
            close(got);
        }
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGXFSZ, SIG_IGN);
    signal(SIGQUIT, SIG_DFL);
    start_closed = closed;
    return closed;
}

void dm_process_restore_for_exec(void) {
    sigaction(SIGPIPE, &start_pipe, NULL);
    sigaction(SIGXFSZ, &start_xfsz, NULL);
    sigaction(SIGQUIT, &start_quit, NULL);
    for (int fd = 0; fd <= 2; fd++) {
        if (start_closed & (1 << fd)) close(fd);
    }
    sigprocmask(SIG_SETMASK, &start_mask, NULL);
}
