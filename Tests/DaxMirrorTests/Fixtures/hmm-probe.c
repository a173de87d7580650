// A client of the kernel's HMM test driver (lib/test_hmm_uapi.h), written
// against the module's documented behaviour and run by EmulateTests under
// `daxmirror emulate`: each check prints "ok NAME" or "FAIL NAME: why";
// exit 0 only if every check held. Mode "env" instead reports the process's
// own environment (signals, standard streams) and exits with the status given.
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

struct cmd { uint64_t addr, ptr, npages, cpages, faults; };
#define READ_   _IOWR('H', 0x00, struct cmd)
#define WRITE_  _IOWR('H', 0x01, struct cmd)
#define TO_DEV  _IOWR('H', 0x02, struct cmd)
#define SNAP    _IOWR('H', 0x04, struct cmd)
#define UNKNOWN _IOWR('H', 0x09, struct cmd)

static int failed;
static void check(int ok, const char *name, const char *why) {
    if (ok) printf("ok %s\n", name);
    else { printf("FAIL %s: %s (errno %d %s)\n", name, why, errno, strerror(errno)); failed = 1; }
}

static int command(int fd, unsigned long req, void *addr, void *buf, uint64_t npages, struct cmd *c) {
    memset(c, 0, sizeof *c);
    c->addr = (uint64_t)addr; c->ptr = (uint64_t)buf; c->npages = npages;
    return ioctl(fd, req, c);
}

int main(int argc, char **argv) {
    if (argc >= 3 && strcmp(argv[1], "env") == 0) {
        struct sigaction sa;
        sigaction(SIGPIPE, NULL, &sa);
        sigset_t mask;
        sigprocmask(SIG_SETMASK, NULL, &mask);
        int stderr_open = fcntl(2, F_GETFD) != -1;  // before an open takes the lowest free descriptor
        int fd = open("/dev/hmm_dmirror0", O_RDWR);
        dprintf(1, "sigpipe %s\nsigint-blocked %d\nstderr-open %d\nopened %d\n",
                sa.sa_handler == SIG_IGN ? "ignored" : sa.sa_handler == SIG_DFL ? "default" : "handled",
                sigismember(&mask, SIGINT), stderr_open, fd >= 0);
        if (strcmp(argv[2], "TERM") == 0) raise(SIGTERM);
        return atoi(argv[2]);
    }
    long page = sysconf(_SC_PAGESIZE);
    struct cmd c;
    unsigned char *buf = malloc(16 * page);

    int fd = open("/dev/hmm_dmirror0", O_RDWR);
    check(fd >= 0, "open", "open /dev/hmm_dmirror0");
    if (fd < 0) return 1;
    int dev = open("/dev", O_RDONLY | O_DIRECTORY);
    int fd1 = openat(dev, "hmm_dmirror1", O_RDWR | O_CLOEXEC);
    check(fd1 >= 0, "openat-relative", "openat(/dev, hmm_dmirror1)");
    check(fcntl(fd1, F_GETFD) == FD_CLOEXEC, "o-cloexec-kept", "O_CLOEXEC lost");
    int odd = open("//dev/./hmm_dmirror0", O_RDWR);
    check(odd >= 0, "open-odd-spelling", "open //dev/./hmm_dmirror0");
    FILE *f = fopen("/dev/hmm_dmirror1", "r+e");
    check(f != NULL && fcntl(fileno(f), F_GETFD) == FD_CLOEXEC, "fopen", "fopen(/dev/hmm_dmirror1, r+e)");
    if (f) fclose(f);
    errno = 0;
    check(open("/dev/hmm_dmirror2", O_RDWR) == -1 && errno == ENOENT, "coherent-absent", "hmm_dmirror2 should be ENOENT");
    errno = 0;
    check(open("/nonexistent/file", O_RDONLY) == -1 && errno == ENOENT, "libc-errno-untouched", "ENOENT expected");

    // READ: what the CPU wrote, one fault, then none while nothing changed.
    unsigned char *a = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (long i = 0; i < 4 * page; i++) a[i] = (unsigned char)(i * 7);
    int r = command(fd, READ_, a, buf, 4, &c);
    check(r == 0 && c.cpages == 4 && c.faults == 1 && memcmp(a, buf, 4 * page) == 0, "read", "READ bytes/cpages/faults");
    r = command(fd, READ_, a, buf, 4, &c);
    check(r == 0 && c.faults == 0, "read-again-no-fault", "a second READ should not fault");

    // WRITE through a dup'd descriptor after the original is closed.
    int d = dup(odd);
    close(odd);
    memset(buf, 0x5a, page);
    r = command(d, WRITE_, a, buf, 1, &c);
    check(r == 0 && c.cpages == 1 && a[0] == 0x5a && a[page - 1] == 0x5a, "write-through-dup", "WRITE via dup");
    int hi = dup2(d, 100);
    check(hi == 100 && command(100, READ_, a, buf, 1, &c) == 0, "dup2", "READ via dup2'd 100");
    int fdup = fcntl(d, F_DUPFD_CLOEXEC, 200);
    check(fdup >= 200 && command(fdup, READ_, a, buf, 1, &c) == 0, "f-dupfd", "READ via F_DUPFD_CLOEXEC");
    close(d); close(100); close(fdup);
    errno = 0;
    check(command(d, READ_, a, buf, 1, &c) == -1 && errno == EBADF, "closed-ebadf", "closed descriptor");

    // A descriptor closed behind the door's back (a raw syscall) and reused
    // for another file is that file's, not the device's.
    int x = open("/dev/hmm_dmirror0", O_RDWR);
    syscall(SYS_close, x);
    int y = open("/dev/null", O_RDWR);
    errno = 0;
    check(y == x && command(y, READ_, a, buf, 1, &c) == -1 && errno == ENOTTY, "stale-descriptor", "the reused descriptor is /dev/null's");
    close(y);

    // The driver's checks, in its order.
    errno = 0;
    check(command(fd, READ_, a + 1, buf, 1, &c) == -1 && errno == EINVAL, "unaligned-einval", "unaligned addr");
    errno = 0;
    check(command(fd, READ_, a, buf, 0, &c) == -1 && errno == EINVAL, "zero-pages-einval", "npages 0");
    errno = 0;
    check(ioctl(fd, READ_, (void *)8) == -1 && errno == EFAULT, "bad-cmd-efault", "unreadable struct");
    errno = 0;
    check(command(fd, UNKNOWN, a, buf, 1, &c) == -1 && errno == EINVAL, "unknown-einval", "unknown request");
    int on = 1;
    check(ioctl(fd, FIONBIO, &on) == 0, "fionbio-vfs", "FIONBIO is the VFS's");
    errno = 0;
    check(command(fd, READ_, a, (void *)8, 1, &c) == -1 && errno == EFAULT, "bad-ptr-efault", "unwritable answer buffer");

    // SNAPSHOT: a written page, an untouched one.
    unsigned char *s = mmap(NULL, 2 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    s[0] = 1;
    r = command(fd, SNAP, s, buf, 2, &c);
    check(r == 0 && c.cpages == 2 && buf[0] == 0x02 && buf[1] == 0x00, "snapshot", "codes WRITE, NONE");

    // A hole: ERROR to a snapshot, EFAULT to a read, EINVAL to a migration,
    // also after the first device access there made the emulation's own memory.
    unsigned char *h = mmap(NULL, 3 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    h[0] = 1; h[2 * page] = 2;
    command(fd, TO_DEV, h + 2 * page, buf, 1, &c);
    munmap(h + page, page);
    r = command(fd, SNAP, h, buf, 3, &c);
    check(r == 0 && buf[0] == 0x02 && buf[1] == 0xFF, "hole-snapshot", "codes WRITE, ERROR");
    errno = 0;
    check(command(fd, READ_, h, buf, 3, &c) == -1 && errno == EFAULT, "hole-read-efault", "READ over a hole");
    errno = 0;
    check(command(fd, TO_DEV, h, buf, 3, &c) == -1 && errno == EINVAL, "hole-migrate-einval", "MIGRATE_TO_DEV over a hole");
    check(h[2 * page] == 2, "hole-neighbour-intact", "the page past the hole");

    // MIGRATE_TO_DEV: the data read back, the codes, the CPU's touch brings it home.
    unsigned char *m = mmap(NULL, 4 * page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (long i = 0; i < 4 * page; i++) m[i] = (unsigned char)(i % 251);
    r = command(fd, TO_DEV, m, buf, 4, &c);
    check(r == 0 && c.cpages == 4 && memcmp(buf, m, 0) == 0, "migrate", "MIGRATE_TO_DEV");
    int same = 1;
    for (long i = 0; i < 4 * page; i++) same &= buf[i] == (unsigned char)(i % 251);
    check(same, "migrate-read-back", "read-back bytes");
    r = command(fd, SNAP, m, buf, 4, &c);
    check(r == 0 && buf[0] == 0x22 && buf[3] == 0x22, "migrate-snapshot", "DEV_PRIVATE_LOCAL|WRITE");
    same = 1;
    for (long i = 0; i < 4 * page; i++) same &= m[i] == (unsigned char)(i % 251);
    check(same, "migrate-cpu-touch", "the CPU reads its data back");
    r = command(fd, SNAP, m, buf, 4, &c);
    check(r == 0 && buf[0] == 0x02, "migrate-home", "WRITE after the touch");

    // mmap of the device: fresh zeroed pages, read-only in a private mapping.
    unsigned char *dm = mmap(NULL, page, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    check(dm != MAP_FAILED && dm[0] == 0, "mmap-device", "mmap of the device");
    r = command(fd, SNAP, dm, buf, 1, &c);
    check(r == 0 && buf[0] == 0x01, "mmap-snapshot", "READ");

    check(close(fd) == 0 && close(fd1) == 0, "close", "close");
    return failed;
}
