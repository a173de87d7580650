#ifndef DAXMIRROR_HMM_PRELOAD_H
#define DAXMIRROR_HMM_PRELOAD_H

// The door between a program and the emulated HMM test driver
// (`daxmirror emulate`). This library is preloaded into the program: it
// defines open, ioctl, close, dup*, fcntl and mmap so that the calls naming
// /dev/hmm_dmirrorN, or a descriptor one of them returned, are answered here,
// and every other call goes to libc unchanged (dlsym RTLD_NEXT), errno
// included. An emulated descriptor is a real one (a memfd named for the
// device), so the kernel keeps numbering, close-on-exec, dup and fork
// semantics; the door only remembers which mirror each one refers to.
//
// The mirror itself lives in Swift (HMMEmulation), which defines the four
// functions below. They are weak here: without them (the C part alone) every
// emulated call fails with ENOSYS instead of crashing.

#include <stdint.h>

/// The kernel's struct hmm_dmirror_cmd (lib/test_hmm_uapi.h).
struct dm_emulated_cmd {
    uint64_t addr;
    uint64_t ptr;
    uint64_t npages;
    uint64_t cpages;
    uint64_t faults;
};

/// A new mirror of this process's memory bound to device `device`: its id (> 0), or -errno.
int32_t dm_hmm_open(int32_t device) __attribute__((weak));
/// One ioctl on mirror `id`: 0 and `cmd` updated, or -errno. `cmd` is a copy
/// already taken from the caller's memory (and copied back on success).
int32_t dm_hmm_ioctl(int32_t id, uint64_t request, struct dm_emulated_cmd *cmd) __attribute__((weak));
/// Another descriptor refers to mirror `id` (dup, dup2, dup3, F_DUPFD).
void dm_hmm_retain(int32_t id) __attribute__((weak));
/// A descriptor of mirror `id` was closed; the last one ends the mirror
/// (its device's pages come home, as the kernel's release does).
void dm_hmm_release(int32_t id) __attribute__((weak));

/// The device number a path names if it is /dev/hmm_dmirrorN (N decimal,
/// at most 9 digits), else -1.
int dm_hmm_device_of_path(const char *path);

#endif
