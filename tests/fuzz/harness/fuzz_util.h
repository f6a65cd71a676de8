/*
 * fuzz_util.h — what the libFuzzer harnesses share: a scratch folder of
 * this process (readers that take a path get the input as a file there), a
 * cursor that takes fields out of the input, and the check that stops a run
 * when a property the code promises does not hold.
 *
 * Header-only (static functions): each harness is one program.
 */
#ifndef SHOAL_FUZZ_UTIL_H
#define SHOAL_FUZZ_UTIL_H

#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "base/base.h"

/* A property the code under test promises that does not hold: a finding, as a crash is. */
#define FUZZ_CHECK(cond, ...)                                                                  \
    do {                                                                                       \
        if (!(cond)) {                                                                         \
            fprintf(stderr, "%s:%d: check failed: %s: ", __FILE__, __LINE__, #cond);           \
            fprintf(stderr, __VA_ARGS__);                                                      \
            fputc('\n', stderr);                                                               \
            abort();                                                                           \
        }                                                                                      \
    } while (0)

/* ------------------------------------------------------------ scratch files */

static char fuzz_dir_path[64];

static inline int fuzz_rm(const char *path, const struct stat *st, int flag, struct FTW *ftw) {
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

static inline void fuzz_dir_remove(void) {
    if (fuzz_dir_path[0]) nftw(fuzz_dir_path, fuzz_rm, 8, FTW_DEPTH | FTW_PHYS);
}

/* This process's scratch folder (in memory where /dev/shm is), removed at exit. */
static inline const char *fuzz_dir(void) {
    if (!fuzz_dir_path[0]) {
        const char *base = access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp";
        snprintf(fuzz_dir_path, sizeof fuzz_dir_path, "%s/shoal-fuzz-XXXXXX", base);
        if (!mkdtemp(fuzz_dir_path)) {
            perror("fuzz: mkdtemp");
            abort();
        }
        atexit(fuzz_dir_remove);
    }
    return fuzz_dir_path;
}

/* Writes n bytes to path (replacing it); 0, or -1 when the file cannot be written. */
static inline int fuzz_write(const char *path, const void *data, size_t n) {
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0) return -1;
    size_t put = 0;
    while (put < n) {
        ssize_t k = write(fd, (const char *)data + put, n - put);
        if (k <= 0) break;
        put += (size_t)k;
    }
    close(fd);
    return put == n ? 0 : -1;
}

/* ------------------------------------------------------------ the input */

struct fuzz_in {
    const uint8_t *p;
    size_t n;
};

/* The next byte (0 once the input is used up). */
static inline uint8_t fuzz_u8(struct fuzz_in *in) {
    if (!in->n) return 0;
    in->n--;
    return *in->p++;
}

static inline uint16_t fuzz_u16(struct fuzz_in *in) {
    uint16_t lo = fuzz_u8(in);
    return (uint16_t)(lo | (uint16_t)fuzz_u8(in) << 8);
}

/* The bytes up to the next NUL (or the end), as a new NUL-terminated string (*len without
 * the NUL); the NUL is taken too. NULL once the input is used up. */
static inline char *fuzz_field(struct fuzz_in *in, size_t *len) {
    if (!in->n) return NULL;
    const uint8_t *z = memchr(in->p, 0, in->n);
    size_t k = z ? (size_t)(z - in->p) : in->n;
    char *s = malloc(k + 1);
    if (!s) abort();
    memcpy(s, in->p, k);
    s[k] = 0;
    in->p += k + (z != NULL);
    in->n -= k + (z != NULL);
    if (len) *len = k;
    return s;
}

/* The rest of the input as a NUL-terminated string (it may hold NULs: *len says where it ends). */
static inline char *fuzz_rest(struct fuzz_in *in, size_t *len) {
    char *s = malloc(in->n + 1);
    if (!s) abort();
    memcpy(s, in->p, in->n);
    s[in->n] = 0;
    *len = in->n;
    in->p += in->n;
    in->n = 0;
    return s;
}

/* Quiet: the library's warnings about a hostile input are expected, and slow a run down. */
static inline void fuzz_quiet(void) { shoal_log_init(SHOAL_LOG_ERROR, 0, NULL); }

#endif
