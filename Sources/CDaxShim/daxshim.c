// daxshim.c — the shim's bodies that are more than one call (see daxshim.h).
#define _GNU_SOURCE
#include "daxshim.h"

#include <setjmp.h>
#include <signal.h>
#include <pthread.h>

// ---------------------------------------------------------------------------
// Guarded copies: a load or store through a file mapping whose page was
// truncated away (by anyone, at any moment) is SIGBUS. The device's aperture
// and the CPU commands of a scenario must answer EFAULT instead of dying, so
// they copy through these: a SIGBUS inside one jumps back out of it. A SIGBUS
// anywhere else goes to whoever handled it before (Swift's backtracer, or the
// default action). SA_NODEFER keeps SIGBUS unblocked in the handler, so the
// jump needs no signal-mask system call on the way in (sigsetjmp(…, 0)).
// ---------------------------------------------------------------------------
static __thread sigjmp_buf *guard_jump;
static __thread void *guard_fault_address;
static struct sigaction guard_previous;
static pthread_once_t guard_once = PTHREAD_ONCE_INIT;
static int guard_installed;

static void guard_on_sigbus(int sig, siginfo_t *info, void *context) {
    sigjmp_buf *jump = guard_jump;
    if (jump) {
        guard_jump = NULL;
        guard_fault_address = info ? info->si_addr : NULL;
        siglongjmp(*jump, 1);
    }
    if ((guard_previous.sa_flags & SA_SIGINFO) && guard_previous.sa_sigaction) {
        guard_previous.sa_sigaction(sig, info, context);
    } else if (!(guard_previous.sa_flags & SA_SIGINFO) && guard_previous.sa_handler != SIG_DFL &&
               guard_previous.sa_handler != SIG_IGN) {
        guard_previous.sa_handler(sig);
    } else {
        // The faulting access runs again on return and takes the default action.
        signal(SIGBUS, SIG_DFL);
    }
}

static void guard_install(void) {
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = guard_on_sigbus;
    sa.sa_flags = SA_SIGINFO | SA_NODEFER | SA_ONSTACK;
    sigemptyset(&sa.sa_mask);
    guard_installed = sigaction(SIGBUS, &sa, &guard_previous) == 0;
}

int dm_guard_ready(void) {
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
