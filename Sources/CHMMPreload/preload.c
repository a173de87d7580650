// See include/hmm_preload.h. Every function here that libc also defines
// forwards to libc's (found with dlsym RTLD_NEXT) unless the call names an
// emulated device or descriptor; errno is libc's own on that path.
#undef _FORTIFY_SOURCE
#define _GNU_SOURCE
#include "hmm_preload.h"

#include <dlfcn.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#ifndef MADV_POPULATE_READ
#define MADV_POPULATE_READ 22
#endif
#ifndef CLOSE_RANGE_CLOEXEC
#define CLOSE_RANGE_CLOEXEC (1U << 2)
#endif

// The kernel's HMM_DMIRROR_* requests: _IOWR('H', 0..7, struct hmm_dmirror_cmd).
#define DM_EMULATED_IOCTL_BASE _IOWR('H', 0x00, struct dm_emulated_cmd)
#define DM_EMULATED_IOCTL_LAST _IOWR('H', 0x07, struct dm_emulated_cmd)

// ---------------------------------------------------------------------------
// libc's own definitions. dlsym may run before main (a constructor that
// opens a file) and from several threads: a racing second lookup stores the
// same pointer.
// ---------------------------------------------------------------------------
#define REAL(name) \
    static __typeof__(&name) real_##name; \
    if (!real_##name) real_##name = (__typeof__(&name))dlsym(RTLD_NEXT, #name); \
    if (!real_##name) { errno = ENOSYS; return -1; }

// ---------------------------------------------------------------------------
// Which mirror each descriptor refers to, indexed by descriptor, sized by the
// hard RLIMIT_NOFILE at load (a descriptor above it cannot exist). An entry
// is the mirror's id (0: none) and the low 32 bits of the placeholder's inode
// (a memfd of its own per open): a descriptor closed where no symbol of ours
// sees it (a raw syscall, glibc's own close inside another call) and reused
// for something else no longer matches, and is forgotten instead of being
// taken for the device. Entries are read and written atomically.
// ---------------------------------------------------------------------------
static uint64_t *mirror_of;
static long table_size;

__attribute__((constructor)) static void table_init(void) {
    struct rlimit r;
    long n = 1 << 16;
    if (getrlimit(RLIMIT_NOFILE, &r) == 0 && r.rlim_max != RLIM_INFINITY) n = (long)r.rlim_max;
    if (n > (1L << 21)) n = 1L << 21;  // 16 MiB of table at most (address space, not memory)
    // syscall(2) takes its arguments as longs: each is cast, or a register keeps stale upper bits.
    void *t = (void *)syscall(SYS_mmap, 0L, (long)((size_t)n * sizeof(uint64_t)), (long)(PROT_READ | PROT_WRITE),
                              (long)(MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE), -1L, 0L);
    if (t == MAP_FAILED) return;  // then nothing is emulated: every open of a device says ENOMEM
    mirror_of = t;
    table_size = n;
}

static uint64_t inode_of(int fd) {
    struct stat st;
    return fstat(fd, &st) == 0 ? (uint64_t)st.st_ino & 0xFFFFFFFFu : UINT64_MAX;
}

/// Sets fd's entry; returns the one it had.
static uint64_t set_entry(int fd, uint64_t entry) {
    if (fd < 0 || fd >= table_size || !mirror_of) return 0;
    return __atomic_exchange_n(&mirror_of[fd], entry, __ATOMIC_ACQ_REL);
}

static void release_entry(uint64_t entry) {
    int32_t id = (int32_t)(entry & 0xFFFFFFFFu);
    if (id > 0 && dm_hmm_release) dm_hmm_release(id);
}

/// fd's entry if fd is still the placeholder it was made for (else 0, and a
/// stale entry is dropped).
static uint64_t entry_at(int fd) {
    if (fd < 0 || fd >= table_size || !mirror_of) return 0;
    uint64_t e = __atomic_load_n(&mirror_of[fd], __ATOMIC_ACQUIRE);
    if (e == 0 || inode_of(fd) == e >> 32) return e;
    if (__atomic_compare_exchange_n(&mirror_of[fd], &e, 0, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE)) release_entry(e);
    return 0;
}

static int32_t mirror_at(int fd) { return (int32_t)(entry_at(fd) & 0xFFFFFFFFu); }

static void forget(int fd) {
    release_entry(set_entry(fd, 0));
}

// ---------------------------------------------------------------------------
// Names. /dev/hmm_dmirrorN however it is spelled: an absolute path, one
// relative to the working directory or to a directory descriptor, with
// "//", "/./" and "/../" in it. Lexical, as the file need not exist.
// ---------------------------------------------------------------------------
int dm_hmm_device_of_path(const char *path) {
    static const char prefix[] = "/dev/hmm_dmirror";
    if (!path || strncmp(path, prefix, sizeof prefix - 1) != 0) return -1;
    const char *d = path + sizeof prefix - 1;
    if (*d < '0' || *d > '9') return -1;
    long n = 0;
    int digits = 0;
    for (; *d >= '0' && *d <= '9'; d++) {
        if (++digits > 9) return -1;
        n = n * 10 + (*d - '0');
    }
    return *d == '\0' ? (int)n : -1;
}

/// Collapses "//", "/./" and "/x/../" in the absolute path `p` (in place).
static void normalize(char *p) {
    char *out = p;
    const char *in = p;
    while (*in) {
        while (*in == '/') in++;
        const char *seg = in;
        while (*in && *in != '/') in++;
        size_t len = (size_t)(in - seg);
        if (len == 0 || (len == 1 && seg[0] == '.')) continue;
        if (len == 2 && seg[0] == '.' && seg[1] == '.') {
            while (out > p && *--out != '/') {}
            continue;
        }
        *out++ = '/';
        memmove(out, seg, len);
        out += len;
    }
    if (out == p) *out++ = '/';
    *out = '\0';
}

/// The device `path` (relative to `dirfd`) names, or -1.
static int device_named(int dirfd, const char *path) {
    if (!path || !strstr(path, "hmm_dmirror")) return -1;  // the common case: one scan
    char full[PATH_MAX];
    if (path[0] == '/') {
        if (strlen(path) >= sizeof full) return -1;
        strcpy(full, path);
    } else {
        char dir[PATH_MAX];
        if (dirfd == AT_FDCWD) {
            if (!getcwd(dir, sizeof dir)) return -1;
        } else {
            char link[64];
            snprintf(link, sizeof link, "/proc/self/fd/%d", dirfd);
            ssize_t n = readlink(link, dir, sizeof dir - 1);
            if (n <= 0) return -1;
            dir[n] = '\0';
        }
        if (snprintf(full, sizeof full, "%s/%s", dir, path) >= (int)sizeof full) return -1;
    }
    normalize(full);
    return dm_hmm_device_of_path(full);
}

/// An open of device `device`: a placeholder descriptor (a memfd named for
/// the device, /proc/self/fd shows it) bound to a new mirror.
static int open_emulated(int device, int flags) {
    if (!dm_hmm_open) { errno = ENOSYS; return -1; }
    if (!mirror_of) { errno = ENOMEM; return -1; }
    char name[32];
    snprintf(name, sizeof name, "hmm_dmirror%d", device);
    int fd = (int)syscall(SYS_memfd_create, (long)name, (long)((flags & O_CLOEXEC) ? 1 /* MFD_CLOEXEC */ : 0));
    if (fd < 0) return -1;
    if (fd >= table_size) {
        close(fd);
        errno = EMFILE;
        return -1;
    }
    int32_t id = dm_hmm_open(device);
    if (id <= 0) {
        close(fd);
        errno = id < 0 ? -id : EIO;
        return -1;
    }
    release_entry(set_entry(fd, inode_of(fd) << 32 | (uint32_t)id));
    return fd;
}

static mode_t mode_argument(int flags, va_list ap) {
    return (flags & O_CREAT) || (flags & O_TMPFILE) == O_TMPFILE ? (mode_t)va_arg(ap, int) : 0;
}

// Each spelling of open: the device answered here, anything else passed on
// with its mode (read only when O_CREAT or O_TMPFILE say there is one).
#define OPEN_AT_CWD(name)                                                       \
    int name(const char *path, int flags, ...) {                                \
        int device = device_named(AT_FDCWD, path);                              \
        if (device >= 0) return open_emulated(device, flags);                   \
        va_list ap;                                                             \
        va_start(ap, flags);                                                    \
        mode_t mode = mode_argument(flags, ap);                                 \
        va_end(ap);                                                             \
        REAL(name)                                                              \
        return real_##name(path, flags, mode);                                  \
    }
#define OPEN_AT_DIR(name)                                                       \
    int name(int dirfd, const char *path, int flags, ...) {                     \
        int device = device_named(dirfd, path);                                 \
        if (device >= 0) return open_emulated(device, flags);                   \
        va_list ap;                                                             \
        va_start(ap, flags);                                                    \
        mode_t mode = mode_argument(flags, ap);                                 \
        va_end(ap);                                                             \
        REAL(name)                                                              \
        return real_##name(dirfd, path, flags, mode);                           \
    }
OPEN_AT_CWD(open)
OPEN_AT_CWD(open64)
OPEN_AT_DIR(openat)
OPEN_AT_DIR(openat64)

// _FORTIFY_SOURCE's spellings (a program built with it calls these): no mode.
#define FORTIFIED_AT_CWD(name)                                                  \
    int name(const char *path, int flags);                                      \
    int name(const char *path, int flags) {                                     \
        int device = device_named(AT_FDCWD, path);                              \
        if (device >= 0) return open_emulated(device, flags);                   \
        REAL(name)                                                              \
        return real_##name(path, flags);                                        \
    }
#define FORTIFIED_AT_DIR(name)                                                  \
    int name(int dirfd, const char *path, int flags);                           \
    int name(int dirfd, const char *path, int flags) {                          \
        int device = device_named(dirfd, path);                                 \
        if (device >= 0) return open_emulated(device, flags);                   \
        REAL(name)                                                              \
        return real_##name(dirfd, path, flags);                                 \
    }
FORTIFIED_AT_CWD(__open_2)
FORTIFIED_AT_CWD(__open64_2)
FORTIFIED_AT_DIR(__openat_2)
FORTIFIED_AT_DIR(__openat64_2)

// stdio's and creat's spellings: glibc opens inside them without the
// interposable symbol, so they are answered here too.
static int flags_of_mode(const char *mode) {
    int flags = (mode && mode[0] == 'r') ? (strchr(mode, '+') ? O_RDWR : O_RDONLY)
                                         : (strchr(mode ? mode : "", '+') ? O_RDWR : O_WRONLY);
    if (mode && strchr(mode, 'e')) flags |= O_CLOEXEC;
    return flags;
}

static FILE *fopen_emulated(int device, const char *mode) {
    int fd = open_emulated(device, flags_of_mode(mode));
    if (fd < 0) return NULL;
    FILE *f = fdopen(fd, mode);
    if (!f) {
        int e = errno;
        close(fd);
        errno = e;
    }
    return f;
}

#define FOPEN(name)                                                             \
    FILE *name(const char *path, const char *mode) {                            \
        int device = device_named(AT_FDCWD, path);                              \
        if (device >= 0) return fopen_emulated(device, mode);                   \
        static __typeof__(&name) real;                                          \
        if (!real) real = (__typeof__(&name))dlsym(RTLD_NEXT, #name);            \
        if (!real) { errno = ENOSYS; return NULL; }                             \
        return real(path, mode);                                                \
    }
FOPEN(fopen)
FOPEN(fopen64)

#define CREAT(name)                                                             \
    int name(const char *path, mode_t mode) {                                   \
        int device = device_named(AT_FDCWD, path);                              \
        if (device >= 0) return open_emulated(device, O_WRONLY);                \
        REAL(name)                                                              \
        return real_##name(path, mode);                                         \
    }
CREAT(creat)
CREAT(creat64)

// ---------------------------------------------------------------------------
// ioctl. The VFS answers FIOCLEX, FIONCLEX, FIONBIO and FIOASYNC for every
// file before the driver sees a request: the placeholder answers those.
// The driver copies its struct in first (EFAULT), then decides (EINVAL for
// a request it does not know), and copies it back only on success.
// ---------------------------------------------------------------------------
static int emulated_ioctl(int32_t id, unsigned long request, void *arg) {
    struct dm_emulated_cmd cmd;
    struct iovec local = { &cmd, sizeof cmd }, remote = { arg, sizeof cmd };
    if (process_vm_readv(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)sizeof cmd) {
        errno = EFAULT;
        return -1;
    }
    if (!dm_hmm_ioctl) { errno = ENOSYS; return -1; }
    int32_t r = dm_hmm_ioctl(id, request, &cmd);
    if (r < 0) {
        errno = -r;
        return -1;
    }
    if (process_vm_writev(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)sizeof cmd) {
        errno = EFAULT;
        return -1;
    }
    return 0;
}

int ioctl(int fd, unsigned long request, ...) {
    va_list ap;
    va_start(ap, request);
    void *arg = va_arg(ap, void *);
    va_end(ap);
    int32_t id = mirror_at(fd);
    if (id > 0 && request != FIOCLEX && request != FIONCLEX && request != FIONBIO && request != FIOASYNC)
        return emulated_ioctl(id, request, arg);
    REAL(ioctl)
    return real_ioctl(fd, request, arg);
}

// ---------------------------------------------------------------------------
// Descriptors: close ends a reference, the dup family adds one.
// ---------------------------------------------------------------------------
int close(int fd) {
    REAL(close)
    int had = mirror_at(fd) > 0;
    int r = real_close(fd);
    // Linux frees the descriptor even when close fails (EINTR, EIO).
    if (had) forget(fd);  // (EBADF too: the table was stale)
    return r;
}

int fclose(FILE *f) {
    static __typeof__(&fclose) real_fclose;
    if (!real_fclose) real_fclose = (__typeof__(&fclose))dlsym(RTLD_NEXT, "fclose");
    if (!real_fclose) { errno = ENOSYS; return EOF; }
    int fd = f ? fileno(f) : -1;
    int had = mirror_at(fd) > 0;
    int r = real_fclose(f);
    if (had) forget(fd);
    return r;
}

void closefrom(int lowfd) {
    static __typeof__(&closefrom) real_closefrom;
    if (!real_closefrom) real_closefrom = (__typeof__(&closefrom))dlsym(RTLD_NEXT, "closefrom");
    if (real_closefrom) real_closefrom(lowfd);
    for (long fd = lowfd < 0 ? 0 : lowfd; fd < table_size && mirror_of; fd++) {
        if (__atomic_load_n(&mirror_of[fd], __ATOMIC_ACQUIRE) != 0) forget((int)fd);
    }
}

int close_range(unsigned int first, unsigned int last, int flags) {
    REAL(close_range)
    int r = real_close_range(first, last, flags);
    if (r == 0 && !(flags & CLOSE_RANGE_CLOEXEC)) {
        long hi = last < (unsigned long)table_size ? (long)last : table_size - 1;
        for (long fd = first; fd <= hi; fd++) {
            if (mirror_at((int)fd) > 0) forget((int)fd);
        }
    }
    return r;
}

/// `to` now refers to what `from` does (after a successful dup into `to`).
static void duplicated(int from, int to) {
    if (to == from) return;
    uint64_t e = entry_at(from);
    int32_t id = (int32_t)(e & 0xFFFFFFFFu);
    if (id > 0 && dm_hmm_retain) dm_hmm_retain(id);
    release_entry(set_entry(to, e));  // dup2 over an emulated descriptor closed it
}

int dup(int fd) {
    REAL(dup)
    int r = real_dup(fd);
    if (r >= 0) duplicated(fd, r);
    return r;
}

int dup2(int fd, int to) {
    REAL(dup2)
    int r = real_dup2(fd, to);
    if (r >= 0) duplicated(fd, r);
    return r;
}

int dup3(int fd, int to, int flags) {
    REAL(dup3)
    int r = real_dup3(fd, to, flags);
    if (r >= 0) duplicated(fd, r);
    return r;
}

static int fcntl_dup(int fd, int cmd, int r) {
    if (r >= 0 && (cmd == F_DUPFD || cmd == F_DUPFD_CLOEXEC)) duplicated(fd, r);
    return r;
}

// fcntl's third argument is an int or a pointer: passed on as a word.
int fcntl(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    unsigned long arg = va_arg(ap, unsigned long);
    va_end(ap);
    REAL(fcntl)
    return fcntl_dup(fd, cmd, real_fcntl(fd, cmd, arg));
}

int fcntl64(int fd, int cmd, ...);
int fcntl64(int fd, int cmd, ...) {
    va_list ap;
    va_start(ap, cmd);
    unsigned long arg = va_arg(ap, unsigned long);
    va_end(ap);
    REAL(fcntl64)
    return fcntl_dup(fd, cmd, real_fcntl64(fd, cmd, arg));
}

// ---------------------------------------------------------------------------
// mmap of the device: the driver gives each page of the new mapping a fresh
// zeroed page of its own (vm_insert_page), present from the start and,
// in a private mapping, read-only until written. Here: pages of a new
// memfd, faulted in for reading.
// ---------------------------------------------------------------------------
static void *mmap_emulated(void *addr, size_t length, int prot, int flags) {
    int memfd = (int)syscall(SYS_memfd_create, "hmm_dmirror", 1L /* MFD_CLOEXEC */);
    if (memfd < 0) return MAP_FAILED;
    if (ftruncate(memfd, (off_t)length) != 0) {
        int e = errno;
        close(memfd);
        errno = e;
        return MAP_FAILED;
    }
    void *p = (void *)syscall(SYS_mmap, (long)addr, (long)length, (long)prot, (long)flags, (long)memfd, 0L);
    int e = errno;
    close(memfd);
    if (p == MAP_FAILED) {
        errno = e;
        return MAP_FAILED;
    }
    if (prot & PROT_READ) syscall(SYS_madvise, (long)p, (long)length, (long)MADV_POPULATE_READ);
    return p;
}

void *mmap(void *addr, size_t length, int prot, int flags, int fd, off_t offset) {
    if (!(flags & MAP_ANONYMOUS) && mirror_at(fd) > 0) return mmap_emulated(addr, length, prot, flags);
    static __typeof__(&mmap) real_mmap;
    if (!real_mmap) real_mmap = (__typeof__(&mmap))dlsym(RTLD_NEXT, "mmap");
    if (!real_mmap) return (void *)syscall(SYS_mmap, (long)addr, (long)length, (long)prot, (long)flags, (long)fd, (long)offset);
    return real_mmap(addr, length, prot, flags, fd, offset);
}

void *mmap64(void *addr, size_t length, int prot, int flags, int fd, off64_t offset) {
    return mmap(addr, length, prot, flags, fd, (off_t)offset);
}
