// C baselines for Scripts/bench.sh, doing exactly what the Swift benchmark
// does through daxmirror's modules, so the ratio measures our overhead:
//   bench missing PAGES   anon MISSING faults resolved with UFFDIO_ZEROPAGE by
//                         one handler thread (poll + read + ioctl), faults/s
//   bench scan MIB PCT    WP_ASYNC tracking: write PCT% of the pages of a MIB
//                         region, then PAGEMAP_SCAN with WP_MATCHING; µs/scan
//   bench rangefault MIB  the range fault's kernel work (median of 5 fresh regions): MADV_POPULATE_WRITE of
//                         a fresh anonymous MIB region + one pagemap pread of it;
//                         ns per page
//   bench copy anon|shmem VMAS N  the device copy a mirror's hit makes, alone:
//                         memcpy from the page itself (anon) or from a second
//                         mapping of the memfd (shmem) of one 4 KiB page, with
//                         VMAS other VMAs; median ns
//   bench memcpy MIB      memcpy of MIB from THP-backed memory; MB/s (median of 5)
//   bench memcpy-file PATH MIB  memcpy of MIB out of a shared mapping of a file
//                         written first (MAP_SYNC on DAX); MB/s (median of 5)
//   bench census PATH     what `daxmirror map PATH` must do at least for an
//                         existing file: map it shared, populate its data
//                         extents (SEEK_DATA/SEEK_HOLE) and count their present
//                         pages in pagemap; seconds
//   bench devmem MIB      device-private memory by daxmirror's pool, the same
//                         system calls in a C loop: per 64-page window a pagemap
//                         pread, each page copied into its pool slot, UFFDIO_REGISTER
//                         (MISSING|WP) and MADV_DONTNEED of the window (its REMOVE
//                         event read by the handler), a pagemap pread again and the
//                         read-back copy; then the CPU reads every page back: a
//                         MISSING fault served with UFFDIO_MOVE (DONTWAKE) of the
//                         slot's page (6.8+; else UFFDIO_COPY and the slot
//                         discarded), UFFDIO_WAKE. Prints ms: total,
//                         migrate, touch back
//   bench kdevmem MIB     the same work by the kernel's device (/dev/hmm_dmirror0):
//                         HMM_DMIRROR_MIGRATE_TO_DEV of MIB, then the same reads
//   bench dmirror VMAS N  the kernel's own device (/dev/hmm_dmirror0, the HMM
//                         guest): HMM_DMIRROR_READ of one mirrored 4 KiB page of
//                         anonymous memory, with VMAS other VMAs; median ns
#define _GNU_SOURCE
#include "../../Sources/CDaxShim/include/daxshim.h"
#include <poll.h>
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static int uffd;
static volatile int stop_flag;
static long page;

/// The handler thread: reads `uffd`'s messages (poll, then up to 64 at a
/// time) and gives each to `on_message` until `stop_flag`.
static void (*on_message)(const struct uffd_msg *);

static void *handler(void *arg) {
    (void)arg;
    struct uffd_msg msgs[64];
    struct pollfd p = {.fd = uffd, .events = POLLIN};
    while (!stop_flag) {
        if (poll(&p, 1, 100) <= 0) continue;
        ssize_t n = read(uffd, msgs, sizeof msgs);
        for (ssize_t i = 0; i < n / (ssize_t)sizeof(struct uffd_msg); i++) on_message(&msgs[i]);
    }
    return NULL;
}

/// MISSING faults resolved with zeros.
static void zero_fill(const struct uffd_msg *m) {
    if (m->event != UFFD_EVENT_PAGEFAULT) return;
    struct uffdio_zeropage z = {.range = {.start = m->arg.pagefault.address & ~(page - 1), .len = page}};
    if (ioctl(uffd, UFFDIO_ZEROPAGE, &z) && errno != EEXIST) perror("ZEROPAGE");
}

/// The kernel offers UFFDIO_MOVE (6.8+), as UFFDIO_API said.
static int have_move;

/// Opens `uffd` with the invalidation events daxmirror's tracker asks for,
/// plus `extra` features. -1 (after perror) if the kernel refuses.
static int open_uffd(__u64 extra) {
    uffd = dm_userfaultfd(O_CLOEXEC | O_NONBLOCK);
    struct uffdio_api api = {.api = UFFD_API, .features = extra | UFFD_FEATURE_EVENT_FORK | UFFD_FEATURE_EVENT_REMAP |
                                                            UFFD_FEATURE_EVENT_REMOVE | UFFD_FEATURE_EVENT_UNMAP |
                                                            UFFD_FEATURE_THREAD_ID};
    if (uffd < 0 || ioctl(uffd, UFFDIO_API, &api)) { perror("uffd"); return -1; }
    have_move = (api.features & UFFD_FEATURE_MOVE) != 0;
    return 0;
}

static int bench_missing(long pages) {
    size_t len = pages * page;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (open_uffd(0)) return 1;
    struct uffdio_register reg = {.range = {.start = (unsigned long)m, .len = len}, .mode = UFFDIO_REGISTER_MODE_MISSING};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("register"); return 1; }
    pthread_t t;
    on_message = zero_fill;
    pthread_create(&t, NULL, handler, NULL);
    double t0 = now();
    volatile char *v = m;
    for (long i = 0; i < pages; i++) (void)v[i * page];
    double dt = now() - t0;
    stop_flag = 1;
    pthread_join(t, NULL);
    printf("%.0f\n", pages / dt);
    return 0;
}

static int bench_scan(long mib, long pct, int rounds) {
    size_t len = (size_t)mib << 20;
    long pages = len / page;
    char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    madvise(m, len, MADV_POPULATE_WRITE);
    if (open_uffd(UFFD_FEATURE_WP_ASYNC)) return 1;
    struct uffdio_register reg = {.range = {.start = (unsigned long)m, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &reg)) { perror("register"); return 1; }
    struct uffdio_writeprotect wp = {.range = {.start = (unsigned long)m, .len = len}, .mode = UFFDIO_WRITEPROTECT_MODE_WP};
    if (ioctl(uffd, UFFDIO_WRITEPROTECT, &wp)) { perror("wp"); return 1; }
    int pm = open("/proc/self/pagemap", O_RDONLY);
    struct dm_page_region *vec = malloc(512 * sizeof *vec);
    long step = 100 / pct;
    double total = 0;
    long found = 0;
    /* The written runs are collected, as the Swift tracker returns them, in
     * one array kept across rounds (grown when needed). */
    struct dm_page_region *runs = NULL;
    size_t nruns = 0, cap = 0;
    for (int r = 0; r < rounds; r++) {
        for (long i = r % step; i < pages; i += step) m[i * page] = 1;
        double t0 = now();
        nruns = 0;
        unsigned long at = (unsigned long)m, end = at + len;
        while (at < end) {
            struct dm_pm_scan_arg a = {.size = sizeof a, .flags = DM_PM_SCAN_WP_MATCHING | DM_PM_SCAN_CHECK_WPASYNC,
                                       .start = at, .end = end, .vec = (unsigned long)vec, .vec_len = 512,
                                       .category_mask = DM_PAGE_IS_WRITTEN, .return_mask = DM_PAGE_IS_WRITTEN | DM_PAGE_IS_PRESENT | DM_PAGE_IS_HUGE};
            long n = ioctl(pm, DM_PAGEMAP_SCAN, &a);
            if (n < 0) { perror("PAGEMAP_SCAN"); return 1; }
            if (nruns + n > cap) {
                cap = cap ? cap * 2 : 1024;
                while (cap < nruns + n) cap *= 2;
                runs = realloc(runs, cap * sizeof *runs);
            }
            memcpy(runs + nruns, vec, n * sizeof *vec);
            nruns += n;
            if (a.walk_end <= at || a.walk_end >= end) break;
            at = a.walk_end;
        }
        total += now() - t0;
        for (size_t k = 0; k < nruns; k++) found += (runs[k].end - runs[k].start) / page;
    }
    free(runs);
    printf("%.1f %ld\n", total / rounds * 1e6, found / rounds);
    return 0;
}

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

static double median_of(double *xs, long n) {
    qsort(xs, n, sizeof *xs, cmp_double);
    return xs[n / 2];
}

/* Five fresh regions, one timed range fault each; the median per page. */
static int bench_rangefault(long mib) {
    size_t len = (size_t)mib << 20;
    long pages = len / page;
    int pm = open("/proc/self/pagemap", O_RDONLY);
    uint64_t *entries = malloc(pages * sizeof *entries);
    double per[5];
    for (int round = 0; round < 5; round++) {
        char *m = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        double t0 = now();
        if (madvise(m, len, MADV_POPULATE_WRITE)) { perror("madvise"); return 1; }
        if (pread(pm, entries, pages * 8, (unsigned long)m / page * 8) != pages * 8) { perror("pread"); return 1; }
        double dt = now() - t0;
        long present = 0;
        for (long i = 0; i < pages; i++) present += entries[i] >> 63;
        if (present != pages) { fprintf(stderr, "%ld of %ld present\n", present, pages); return 1; }
        per[round] = dt / pages * 1e9;
        munmap(m, len);
    }
    printf("%.1f\n", median_of(per, 5));
    return 0;
}

/* A process with `count` VMAs for the inspect benchmark: one reservation of
 * `count` pages, every other page made writable and touched (so neighbours
 * cannot merge), then it waits for its stdin to close. */
static int hold_vmas(long count) {
    char *m = mmap(NULL, count * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); return 1; }
    for (long i = 0; i < count; i += 2) {
        if (mprotect(m + i * page, page, PROT_READ | PROT_WRITE)) { perror("mprotect"); return 1; }
        m[i * page] = 1;
    }
    printf("%d\n", getpid());
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0) {}
    return 0;
}

/* `count` VMAs that cannot merge, mapped after the measured memory (below it). */
static void unrelated_vmas(long count) {
    if (count <= 0) return;
    char *m = mmap(NULL, 2 * count * page, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); exit(1); }
    for (long i = 0; i < 2 * count; i += 2)
        if (mprotect(m + i * page, page, PROT_READ | PROT_WRITE)) { perror("mprotect"); exit(1); }
}

static int bench_copy(const char *kind, long vmas, long n) {
    size_t len = 2 << 20;
    char *p, *aperture = NULL;
    if (!strcmp(kind, "shmem")) {
        int fd = memfd_create("bench", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, len)) { perror("memfd"); return 1; }
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
        aperture = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    } else {
        p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    }
    unrelated_vmas(vmas);
    char *at = p + 64 * page, buf[65536];
    *at = 0x5a;
    double *t = malloc(n * sizeof *t);
    const char *from = aperture ? aperture + 64 * page : at;
    for (long i = 0; i < n; i++) {
        double t0 = now();
        memcpy(buf, from, page);
        __asm__ volatile("" ::: "memory");  /* the copy is not optimized away */
        t[i] = now() - t0;
    }
    if (buf[0] != 0x5a) { fprintf(stderr, "copied the wrong byte\n"); return 1; }
    printf("%.1f\n", median_of(t, n) * 1e9);
    return 0;
}

/* Fills `p`, then copies it out five times; prints the median's MB/s. Five
 * passes: the first touch of fresh memory is slow under a hypervisor,
 * whoever copies. */
static int copy_out(char *p, size_t len) {
    memset(p, 0x33, len);
    char *dst = malloc(len);
    memset(dst, 0, len);
    double t[5];
    for (int i = 0; i < 5; i++) {
        double t0 = now();
        memcpy(dst, p, len);
        t[i] = now() - t0;
    }
    if (dst[len - 1] != 0x33) return 1;
    printf("%ld\n", (long)(len / median_of(t, 5) / 1e6));
    free(dst);
    return 0;
}

static int bench_memcpy(long mib) {
    size_t len = (size_t)mib << 20;
    char *raw = mmap(NULL, len + (2 << 20), PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *p = (char *)(((uintptr_t)raw + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    madvise(p, len, MADV_HUGEPAGE);
    return copy_out(p, len);
}

static int bench_memcpy_file(const char *path, long mib) {
    size_t len = (size_t)mib << 20;
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0 || posix_fallocate(fd, 0, len)) { perror(path); return 1; }
    char *raw = mmap(NULL, len + (2 << 20), PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *at = (char *)(((uintptr_t)raw + (2 << 20) - 1) & ~(uintptr_t)((2 << 20) - 1));
    char *p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED_VALIDATE | MAP_SYNC | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) p = mmap(at, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_FIXED, fd, 0);
    if (p == MAP_FAILED) { perror("mmap"); return 1; }
    int rc = copy_out(p, len);
    unlink(path);
    return rc;
}

static int bench_dmirror(long vmas, long n) {
    int fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
    if (fd < 0) { perror("/dev/hmm_dmirror0"); return 1; }
    size_t len = 2 << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unrelated_vmas(vmas);
    char *at = p + 64 * page, buf[65536];
    *at = 0x5a;
    struct dm_hmm_dmirror_cmd cmd = {.addr = (uint64_t)(uintptr_t)at, .ptr = (uint64_t)(uintptr_t)buf, .npages = 1};
    if (ioctl(fd, DM_HMM_DMIRROR_READ, &cmd) || cmd.faults != 1) { perror("HMM_DMIRROR_READ"); return 1; }
    double *t = malloc(n * sizeof *t);
    for (long i = 0; i < n; i++) {
        cmd.faults = 0;
        double t0 = now();
        if (ioctl(fd, DM_HMM_DMIRROR_READ, &cmd)) { perror("HMM_DMIRROR_READ"); return 1; }
        t[i] = now() - t0;
        if (cmd.faults) { fprintf(stderr, "a hit faulted\n"); return 1; }
    }
    if (buf[0] != 0x5a) { fprintf(stderr, "read the wrong byte\n"); return 1; }
    printf("%.1f\n", median_of(t, n) * 1e9);
    return 0;
}

static char *dev_base, *dev_pool;
static volatile long dev_removes;

/// Device-private pages: a REMOVE event counted (the migration waits for
/// it), a MISSING fault served from the page's slot without waking the
/// faulter — the slot's page moved (UFFDIO_MOVE, 6.8+), else copied and
/// the slot discarded — then the faulter woken (daxmirror's order: the page
/// is the CPU's in its books before the faulter runs on).
static void serve_devmem(const struct uffd_msg *m) {
    if (m->event == UFFD_EVENT_REMOVE) { __atomic_add_fetch(&dev_removes, 1, __ATOMIC_RELEASE); return; }
    if (m->event != UFFD_EVENT_PAGEFAULT) return;
    unsigned long at = m->arg.pagefault.address & ~(page - 1);
    char *slot = dev_pool + (at - (unsigned long)dev_base);
    struct dm_uffdio_move mv = {.dst = at, .src = (unsigned long)slot, .len = page, .mode = DM_UFFDIO_MOVE_MODE_DONTWAKE};
    if (!have_move || ioctl(uffd, DM_UFFDIO_MOVE, &mv)) {
        struct uffdio_copy c = {.dst = at, .src = (unsigned long)slot, .len = page, .mode = UFFDIO_COPY_MODE_DONTWAKE};
        if (ioctl(uffd, UFFDIO_COPY, &c) && errno != EEXIST) perror("UFFDIO_COPY");
        madvise(slot, page, MADV_DONTNEED);
    }
    struct uffdio_range r = {.start = at, .len = page};
    if (ioctl(uffd, UFFDIO_WAKE, &r)) perror("UFFDIO_WAKE");
}

/// Reads every page of [p, p+len) once; returns the sum of their first bytes.
static long touch_pages(char *p, size_t len) {
    long sum = 0;
    volatile char *v = p;
    for (size_t i = 0; i < len; i += page) sum += v[i];
    return sum;
}

static int bench_devmem(long mib) {
    size_t len = (size_t)mib << 20, window = 64 * page;
    dev_base = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    dev_pool = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    char *readback = malloc(len);
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    uint64_t entries[64];
    if (dev_base == MAP_FAILED || dev_pool == MAP_FAILED || !readback || pm < 0) { perror("devmem"); return 1; }
    madvise(dev_pool, len, MADV_NOHUGEPAGE);  // as daxmirror's pool: base pages to move
    memset(dev_base, 0x44, len);
    if (open_uffd(0)) return 1;
    struct uffdio_register whole = {.range = {.start = (unsigned long)dev_base, .len = len}, .mode = UFFDIO_REGISTER_MODE_WP};
    if (ioctl(uffd, UFFDIO_REGISTER, &whole)) { perror("register"); return 1; }
    pthread_t t;
    on_message = serve_devmem;
    pthread_create(&t, NULL, handler, NULL);
    double t0 = now();
    long windows = 0;
    for (size_t w = 0; w < len; w += window, windows++) {
        off_t at = (off_t)((uintptr_t)(dev_base + w) / page * 8);
        if (pread(pm, entries, sizeof entries, at) != sizeof entries) { perror("pagemap"); return 1; }
        for (size_t i = 0; i < window; i += page) memcpy(dev_pool + w + i, dev_base + w + i, page);
        struct uffdio_register reg = {.range = {.start = (unsigned long)(dev_base + w), .len = window},
                                      .mode = UFFDIO_REGISTER_MODE_MISSING | UFFDIO_REGISTER_MODE_WP};
        if (ioctl(uffd, UFFDIO_REGISTER, &reg) || madvise(dev_base + w, window, MADV_DONTNEED)) { perror("migrate"); return 1; }
        while (__atomic_load_n(&dev_removes, __ATOMIC_ACQUIRE) <= windows) sched_yield();
        if (pread(pm, entries, sizeof entries, at) != sizeof entries) { perror("pagemap"); return 1; }
        memcpy(readback + w, dev_pool + w, window);
    }
    double t1 = now();
    long sum = touch_pages(dev_base, len);
    double t2 = now();
    stop_flag = 1;
    pthread_join(t, NULL);
    if (sum != 0x44L * (long)(len / page) || readback[len - 1] != 0x44) { fprintf(stderr, "devmem: wrong bytes\n"); return 1; }
    printf("%.1f %.1f %.1f\n", (t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    return 0;
}

static int bench_kdevmem(long mib) {
    int fd = open("/dev/hmm_dmirror0", O_RDWR | O_CLOEXEC);
    if (fd < 0) { perror("/dev/hmm_dmirror0"); return 1; }
    size_t len = (size_t)mib << 20;
    char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    char *readback = malloc(len);
    if (p == MAP_FAILED || !readback) { perror("kdevmem"); return 1; }
    memset(p, 0x44, len);
    struct dm_hmm_dmirror_cmd cmd = {.addr = (uint64_t)(uintptr_t)p, .ptr = (uint64_t)(uintptr_t)readback, .npages = len / page};
    double t0 = now();
    if (dm_hmm_command(fd, DM_HMM_MIGRATE_TO_DEV, &cmd)) { perror("HMM_DMIRROR_MIGRATE_TO_DEV"); return 1; }
    double t1 = now();
    long sum = touch_pages(p, len);
    double t2 = now();
    if (cmd.cpages != len / page || sum != 0x44L * (long)(len / page) || readback[len - 1] != 0x44) {
        fprintf(stderr, "kdevmem: %llu of %zu pages, wrong bytes?\n", (unsigned long long)cmd.cpages, len / page);
        return 1;
    }
    printf("%.1f %.1f %.1f\n", (t2 - t0) * 1e3, (t1 - t0) * 1e3, (t2 - t1) * 1e3);
    return 0;
}

static int bench_census(const char *path) {
    double t0 = now();
    int fd = open(path, O_RDWR | O_CLOEXEC);
    struct stat st;
    if (fd < 0 || fstat(fd, &st)) { perror(path); return 1; }
    char *p = mmap(NULL, st.st_size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int pm = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
    if (p == MAP_FAILED || pm < 0) { perror("mmap/pagemap"); return 1; }
    long present = 0;
    static uint64_t entries[65536];
    for (off_t at = lseek(fd, 0, SEEK_DATA); at >= 0 && at < st.st_size; at = lseek(fd, at, SEEK_DATA)) {
        off_t end = lseek(fd, at, SEEK_HOLE);
        if (end < 0 || end > st.st_size) end = st.st_size;
        madvise(p + at, end - at, MADV_POPULATE_READ);
        for (off_t o = at; o < end; o += 65536 * page) {
            size_t n = (end - o) / page < 65536 ? (end - o + page - 1) / page : 65536;
            ssize_t got = pread(pm, entries, n * 8, ((uintptr_t)(p + o) / page) * 8);
            for (ssize_t i = 0; i < got / 8; i++) present += entries[i] >> 63;
        }
        at = end;
    }
    munmap(p, st.st_size);
    printf("%.6f %ld\n", now() - t0, present);
    return 0;
}

int main(int argc, char **argv) {
    page = sysconf(_SC_PAGESIZE);
    if (argc >= 3 && !strcmp(argv[1], "missing")) return bench_missing(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "scan")) return bench_scan(atol(argv[2]), atol(argv[3]), argc > 4 ? atoi(argv[4]) : 20);
    if (argc >= 3 && !strcmp(argv[1], "rangefault")) return bench_rangefault(atol(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "vmas")) return hold_vmas(atol(argv[2]));
    if (argc >= 5 && !strcmp(argv[1], "copy")) return bench_copy(argv[2], atol(argv[3]), atol(argv[4]));
    if (argc >= 3 && !strcmp(argv[1], "memcpy")) return bench_memcpy(atol(argv[2]));
    if (argc >= 4 && !strcmp(argv[1], "memcpy-file")) return bench_memcpy_file(argv[2], atol(argv[3]));
    if (argc >= 4 && !strcmp(argv[1], "dmirror")) return bench_dmirror(atol(argv[2]), atol(argv[3]));
    if (argc >= 3 && !strcmp(argv[1], "census")) return bench_census(argv[2]);
    if (argc >= 3 && !strcmp(argv[1], "devmem")) return bench_devmem(atol(argv[2]));
    if (argc >= 3 && !strcmp(argv[1], "kdevmem")) return bench_kdevmem(atol(argv[2]));
    fprintf(stderr, "usage: bench missing PAGES | bench scan MIB PCT [ROUNDS] | bench rangefault MIB | bench vmas COUNT | bench copy anon|shmem VMAS N | bench memcpy MIB | bench dmirror VMAS N | bench census PATH | bench devmem MIB | bench kdevmem MIB\n");
    return 2;
}
