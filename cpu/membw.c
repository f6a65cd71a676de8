/*
 * membw.c — the read bandwidth of this machine (membw.h).
 */
#define _GNU_SOURCE
#include "membw.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#if defined(__x86_64__)
#include <immintrin.h>
#endif

struct job {
    const uint8_t *p;
    size_t n;
    atomic_int *go;
    uint64_t sum;
    double end;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

#if defined(__x86_64__)
/* 256-bit loads, four chains: enough to keep a core's memory pipeline full */
__attribute__((target("avx2"))) static uint64_t sum_avx2(const uint8_t *p, size_t n) {
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    return (uint64_t)_mm256_extract_epi64(a0, 0);
}
#endif

static uint64_t sum_plain(const uint8_t *p, size_t n) {
    const uint64_t *q = (const uint64_t *)(const void *)p;
    uint64_t s0 = 0, s1 = 0, s2 = 0, s3 = 0;
    for (size_t i = 0; i + 4 <= n / 8; i += 4) {
        s0 += q[i];
        s1 += q[i + 1];
        s2 += q[i + 2];
        s3 += q[i + 3];
    }
    return s0 + s1 + s2 + s3;
}

static void *reader(void *arg) {
    struct job *j = arg;
    while (!atomic_load(j->go)) {
    }
#if defined(__x86_64__)
    j->sum = __builtin_cpu_supports("avx2") ? sum_avx2(j->p, j->n) : sum_plain(j->p, j->n);
#else
    j->sum = sum_plain(j->p, j->n);
#endif
    j->end = now();
    return NULL;
}

shoal_status shoal_membw_measure(int threads, size_t bytes, int passes, double *out) {
    *out = 0;
    if (threads < 1 || threads > 1024 || bytes < ((size_t)1 << 20) * threads || passes < 1)
        return shoal_errorf(SHOAL_INVALID, "membw: %d threads over %zu bytes, %d passes", threads,
                            bytes, passes);
    uint8_t *buf = NULL;
    pthread_t *th = calloc((size_t)threads, sizeof *th);
    struct job *jobs = calloc((size_t)threads, sizeof *jobs);
    shoal_status rc = SHOAL_OK;
    if (!th || !jobs || posix_memalign((void **)&buf, 4096, bytes)) {
        buf = NULL;
        rc = shoal_errorf(SHOAL_NOMEM, "membw: out of memory for %zu bytes", bytes);
        goto done;
    }
    memset(buf, 1, bytes);
    size_t per = bytes / (size_t)threads / 128 * 128;
    double best = 0;
    for (int pass = 0; pass < passes && rc == SHOAL_OK; pass++) {
        atomic_int go = 0;
        int started = 0;
        for (; started < threads; started++) {
            jobs[started] = (struct job){ buf + per * (size_t)started, per, &go, 0, 0 };
            if (pthread_create(&th[started], NULL, reader, &jobs[started]) != 0) break;
        }
        double t0 = now(), t1 = t0;
        atomic_store(&go, 1);
        for (int t = 0; t < started; t++) {
            pthread_join(th[t], NULL);
            if (jobs[t].end > t1) t1 = jobs[t].end;
        }
        if (started < threads) rc = shoal_errorf(SHOAL_INTERNAL, "membw: cannot start thread %d", started);
        else if (t1 > t0 && (double)per * threads / (t1 - t0) > best) best = (double)per * threads / (t1 - t0);
    }
    *out = best;
done:
    free(buf);
    free(th);
    free(jobs);
    return rc;
}
