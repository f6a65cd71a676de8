/*
 * base.c — status strings, the per-thread error detail, the logger, element
 * type tables, half-precision conversion and a few process utilities.
 */
#define _GNU_SOURCE
#include "base.h"

#include <ctype.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

/* ---------------------------------------------------------------- status */

static const char *const status_names[SHOAL_STATUS_COUNT] = {
    [SHOAL_OK] = "ok",
    [SHOAL_INVALID] = "invalid argument",
    [SHOAL_NOMEM] = "out of memory",
    [SHOAL_IO] = "I/O error",
    [SHOAL_FORMAT] = "malformed input",
    [SHOAL_UNSUPPORTED] = "unsupported",
    [SHOAL_CUDA] = "CUDA error",
    [SHOAL_COMM] = "communication error",
    [SHOAL_REMOTE] = "another rank failed",
    [SHOAL_TIMEOUT] = "timed out",
    [SHOAL_INTERNAL] = "internal error",
};

const char *shoal_status_str(shoal_status s) {
    if ((unsigned)s >= SHOAL_STATUS_COUNT) return "unknown status";
    return status_names[s];
}

/* Per thread, like errno: see base.h. */
static _Thread_local char error_detail[1024];

shoal_status shoal_errorf(shoal_status s, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_detail, sizeof error_detail, fmt, ap);
    va_end(ap);
    return s;
}

void shoal_error_prefix(const char *fmt, ...) {
    char prefix[512], old[sizeof error_detail];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_detail, sizeof old);
    size_t n = strlen(prefix);
    if (n + 2 >= sizeof error_detail) n = sizeof error_detail - 3;
    memcpy(error_detail, prefix, n);
    memcpy(error_detail + n, ": ", 2);
    size_t rest = sizeof error_detail - n - 3;
    size_t olen = strnlen(old, rest);
    memcpy(error_detail + n + 2, old, olen);
    error_detail[n + 2 + olen] = 0;
}

const char *shoal_last_error(void) { return error_detail; }
void shoal_error_clear(void) { error_detail[0] = 0; }

/* ----------------------------------------------------------------- logging */

/* Written once by shoal_log_init() before threads start; read-only after. */
static struct {
    enum shoal_log_level level;
    int rank;
    char debug[256]; /* ",comm,offload," or ",all," */
} log_cfg = { SHOAL_LOG_INFO, 0, "" };

void shoal_log_init(enum shoal_log_level level, int rank, const char *debug_subsystems) {
    log_cfg.level = level;
    log_cfg.rank = rank;
    log_cfg.debug[0] = 0;
    if (debug_subsystems && *debug_subsystems) {
        snprintf(log_cfg.debug, sizeof log_cfg.debug, ",%s,", debug_subsystems);
        if (log_cfg.level < SHOAL_LOG_DEBUG) log_cfg.level = SHOAL_LOG_DEBUG;
    }
}

int shoal_log_enabled(enum shoal_log_level level, const char *subsystem) {
    if (level > log_cfg.level) return 0;
    if (level < SHOAL_LOG_DEBUG) return 1;
    if (!log_cfg.debug[0] || strstr(log_cfg.debug, ",all,")) return log_cfg.level >= SHOAL_LOG_DEBUG;
    char key[64];
    snprintf(key, sizeof key, ",%s,", subsystem ? subsystem : "");
    return strstr(log_cfg.debug, key) != NULL;
}

void shoal_log(enum shoal_log_level level, const char *subsystem, const char *fmt, ...) {
    static const char *const tags[] = { "error", "warn", "info", "debug" };
    if (!shoal_log_enabled(level, subsystem)) return;
    char line[2048];
    int n = snprintf(line, sizeof line, "[rank %d %s %s] ", log_cfg.rank, tags[level],
                     subsystem ? subsystem : "-");
    va_list ap;
    va_start(ap, fmt);
    if (n > 0 && (size_t)n < sizeof line) vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    va_end(ap);
    /* One write per line so that lines from ranks and threads do not interleave. */
    fprintf(stderr, "%s\n", line);
}

/* ------------------------------------------------------------ element types */

static const struct shoal_dtype_info dtype_table[SHOAL_DTYPE_MAX] = {
    [SHOAL_DTYPE_F32] = { "f32", 1, 4, 1 },
    [SHOAL_DTYPE_F16] = { "f16", 1, 2, 1 },
    [SHOAL_DTYPE_Q4_0] = { "q4_0", 32, 18, 1 },
    [SHOAL_DTYPE_Q4_1] = { "q4_1", 32, 20, 1 },
    [SHOAL_DTYPE_Q5_0] = { "q5_0", 32, 22, 1 },
    [SHOAL_DTYPE_Q5_1] = { "q5_1", 32, 24, 1 },
    [SHOAL_DTYPE_Q8_0] = { "q8_0", 32, 34, 1 },
    [SHOAL_DTYPE_Q8_1] = { "q8_1", 32, 36, 0 },
    [SHOAL_DTYPE_Q2_K] = { "q2_k", 256, 84, 1 },
    [SHOAL_DTYPE_Q3_K] = { "q3_k", 256, 110, 1 },
    [SHOAL_DTYPE_Q4_K] = { "q4_k", 256, 144, 1 },
    [SHOAL_DTYPE_Q5_K] = { "q5_k", 256, 176, 1 },
    [SHOAL_DTYPE_Q6_K] = { "q6_k", 256, 210, 1 },
    [SHOAL_DTYPE_Q8_K] = { "q8_k", 256, 292, 0 },
    [SHOAL_DTYPE_IQ4_NL] = { "iq4_nl", 32, 18, 1 },
    [SHOAL_DTYPE_IQ4_XS] = { "iq4_xs", 256, 136, 1 },
    [SHOAL_DTYPE_I8] = { "i8", 1, 1, 0 },
    [SHOAL_DTYPE_I16] = { "i16", 1, 2, 0 },
    [SHOAL_DTYPE_I32] = { "i32", 1, 4, 0 },
    [SHOAL_DTYPE_I64] = { "i64", 1, 8, 0 },
    [SHOAL_DTYPE_F64] = { "f64", 1, 8, 0 },
    [SHOAL_DTYPE_BF16] = { "bf16", 1, 2, 1 },
    /* GGUF types shoal reads the sizes of, to name them, but does not compute with */
    [SHOAL_DTYPE_IQ2_XXS] = { "iq2_xxs", 256, 66, 0 },
    [SHOAL_DTYPE_IQ2_XS] = { "iq2_xs", 256, 74, 0 },
    [SHOAL_DTYPE_IQ3_XXS] = { "iq3_xxs", 256, 98, 0 },
    [SHOAL_DTYPE_IQ1_S] = { "iq1_s", 256, 50, 0 },
    [SHOAL_DTYPE_IQ3_S] = { "iq3_s", 256, 110, 0 },
    [SHOAL_DTYPE_IQ2_S] = { "iq2_s", 256, 82, 0 },
    [SHOAL_DTYPE_IQ1_M] = { "iq1_m", 256, 56, 0 },
    [SHOAL_DTYPE_TQ1_0] = { "tq1_0", 256, 54, 0 },
    [SHOAL_DTYPE_TQ2_0] = { "tq2_0", 256, 66, 0 },
    [SHOAL_DTYPE_MXFP4] = { "mxfp4", 32, 17, 0 },
};

const struct shoal_dtype_info *shoal_dtype_info(int type) {
    if (type < 0 || type >= SHOAL_DTYPE_MAX || !dtype_table[type].name) return NULL;
    return &dtype_table[type];
}

const char *shoal_dtype_name(int type) {
    static const char *const unknown = "unknown type";
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    return ti ? ti->name : unknown;
}

int shoal_dtype_from_name(const char *name) {
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++)
        if (dtype_table[t].name && strcasecmp(dtype_table[t].name, name) == 0) return t;
    return -1;
}

size_t shoal_dtype_row_bytes(int type, int64_t n) {
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    if (!ti || n < 0 || n % ti->block) return 0;
    return (size_t)(n / ti->block) * (size_t)ti->block_bytes;
}

/* ------------------------------------------------------- half precision */

float shoal_f16_to_f32(uint16_t h) {
    uint32_t sign = (uint32_t)(h & 0x8000) << 16;
    uint32_t exp = (h >> 10) & 0x1f;
    uint32_t mant = h & 0x3ff;
    union { uint32_t u; float f; } v;
    if (exp == 0x1f) {
        v.u = sign | 0x7f800000u | (mant << 13); /* inf or NaN */
    } else if (exp == 0) {
        /* zero or subnormal: mant * 2^-24, exact in f32 */
        v.f = (float)mant * (1.0f / 16777216.0f);
        v.u |= sign;
    } else {
        v.u = sign | ((exp + 112) << 23) | (mant << 13);
    }
    return v.f;
}

uint16_t shoal_f32_to_f16(float f) {
    union { float f; uint32_t u; } v = { .f = f };
    uint32_t sign = (v.u >> 16) & 0x8000;
    uint32_t abs = v.u & 0x7fffffff;
    if (abs > 0x7f800000u) return (uint16_t)(sign | 0x7e00 | ((abs >> 13) & 0x3ff)); /* NaN */
    if (abs >= 0x477ff000u) return (uint16_t)(sign | 0x7c00); /* rounds to >= 65520: inf */
    if (abs < 0x38800000u) {
        /* subnormal in f16 (or zero): value / 2^-24, rounded to nearest even */
        union { uint32_t u; float f; } a = { .u = abs };
        float scaled = a.f * 16777216.0f; /* exact: a power-of-two scale */
        uint32_t q = (uint32_t)scaled;
        float rem = scaled - (float)q;
        if (rem > 0.5f || (rem == 0.5f && (q & 1))) q++;
        return (uint16_t)(sign | q);
    }
    uint32_t exp = (abs >> 23) - 112;
    uint32_t mant = abs & 0x7fffff;
    uint32_t h = (exp << 10) | (mant >> 13);
    uint32_t rest = mant & 0x1fff;
    if (rest > 0x1000 || (rest == 0x1000 && (h & 1))) h++; /* may carry into exp: still right */
    return (uint16_t)(sign | h);
}

/* ------------------------------------------------------------- small utils */

const char *shoal_fmt_bytes(char *buf, size_t len, double bytes) {
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;
    while (bytes >= 1024.0 && u < 4) {
        bytes /= 1024.0;
        u++;
    }
    snprintf(buf, len, u ? "%.2f %s" : "%.0f %s", bytes, units[u]);
    return buf;
}

double shoal_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

double shoal_host_available(void) {
    FILE *f = fopen("/proc/meminfo", "r");
    if (!f) return 0;
    char line[256];
    double kib = 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "MemAvailable: %lf kB", &kib) == 1) break;
    fclose(f);
    return kib * 1024;
}

size_t shoal_peak_rss(void) {
    /* VmHWM, not getrusage's ru_maxrss: the latter survives exec, so a process
     * started from a large parent (a Python test) would report the parent's */
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        size_t kib = 0;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "VmHWM: %zu kB", &kib) == 1) break;
        fclose(f);
        if (kib) return kib * 1024;
    }
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (size_t)ru.ru_maxrss * 1024; /* Linux reports KiB */
}

static uint64_t hash_seed(void) {
    static _Atomic uint64_t seed;
    uint64_t s = seed;
    if (!s) {
        if (getrandom(&s, sizeof s, 0) != (ssize_t)sizeof s) s = (uint64_t)(uintptr_t)&s ^ (uint64_t)time(NULL);
        s |= 1;
        seed = s; /* racing threads may store different seeds: each stores before it hashes, and */
        s = seed; /* every index is built and read by one process, so use the one stored */
    }
    return s;
}

uint64_t shoal_hash_u64(uint64_t v) { /* splitmix64's finaliser over the seeded value */
    v ^= hash_seed();
    v = (v ^ (v >> 30)) * 0xbf58476d1ce4e5b9ull;
    v = (v ^ (v >> 27)) * 0x94d049bb133111ebull;
    return v ^ (v >> 31);
}

uint64_t shoal_hash_str(const char *s) { return shoal_hash_bytes(s, strlen(s)); }

uint64_t shoal_hash_bytes(const void *p, size_t n) { /* FNV-1a from a seeded start: collisions depend on the seed */
    const uint8_t *b = p;
    uint64_t h = 0xcbf29ce484222325ull ^ hash_seed();
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 0x100000001b3ull;
    return shoal_hash_u64(h);
}

uint64_t shoal_hash_cap(uint64_t n) {
    uint64_t cap = 16;
    while (cap < 2 * n && cap < (1ull << 62)) cap <<= 1;
    return cap;
}

int shoal_mul_ok(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_mul_overflow(a, b, &r)) return 0;
    *out = r;
    return 1;
}

int shoal_add_ok(uint64_t a, uint64_t b, uint64_t *out) {
    uint64_t r;
    if (__builtin_add_overflow(a, b, &r)) return 0;
    *out = r;
    return 1;
}

/* ------------------------------------------------------------ mapped files */

enum { N_MAPS = 64 };
static struct {
    _Atomic(const void *) base; /* set last, cleared first: the handler reads len and path only after it */
    size_t len;
    const char *path;
} maps[N_MAPS];
static pthread_mutex_t maps_mu = PTHREAD_MUTEX_INITIALIZER;

void shoal_map_note(const void *base, size_t len, const char *path) {
    pthread_mutex_lock(&maps_mu);
    for (int i = 0; i < N_MAPS; i++)
        if (!maps[i].base) {
            maps[i].len = len;
            maps[i].path = path;
            maps[i].base = base;
            break;
        }
    pthread_mutex_unlock(&maps_mu);
}

void shoal_map_forget(const void *base) {
    pthread_mutex_lock(&maps_mu);
    for (int i = 0; i < N_MAPS; i++)
        if (maps[i].base == base) maps[i].base = NULL;
    pthread_mutex_unlock(&maps_mu);
}

/* write(2) of a string and of a number: what a signal handler may call */
static void say(const char *s) {
    size_t n = strlen(s);
    while (n > 0) {
        ssize_t k = write(STDERR_FILENO, s, n);
        if (k <= 0) return;
        s += k;
        n -= (size_t)k;
    }
}

static void say_u64(uint64_t v) {
    char buf[24], *p = buf + sizeof buf - 1;
    *p = 0;
    do *--p = (char)('0' + v % 10);
    while ((v /= 10) && p > buf);
    say(p);
}

static void on_sigbus(int sig, siginfo_t *si, void *uc) {
    (void)sig;
    (void)uc;
    const char *addr = si->si_addr;
    for (int i = 0; i < N_MAPS; i++) {
        const char *b = maps[i].base;
        if (b && addr >= b && addr < b + maps[i].len) {
            say("shoal: error: ");
            say(maps[i].path);
            say(": reading byte ");
            say_u64((uint64_t)(addr - b));
            say(" of it failed (SIGBUS): the file shrank or was replaced while shoal was using it, or its "
                "disk failed; do not change a model file while it runs\n");
            _exit(1);
        }
    }
    say("shoal: error: a memory access failed (SIGBUS) outside the files shoal maps\n");
    _exit(1);
}

void shoal_catch_sigbus(void) {
    struct sigaction sa = { .sa_sigaction = on_sigbus, .sa_flags = SA_SIGINFO };
    sigemptyset(&sa.sa_mask);
    sigaction(SIGBUS, &sa, NULL);
}
