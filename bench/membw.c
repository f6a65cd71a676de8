/*
 * membw.c — how fast this machine streams memory into the cores: each of N
 * threads sums its share of a buffer much larger than the caches, with
 * 256-bit loads, several passes; prints the best pass in GB/s. Decoding is
 * memory-bound (every weight is read once per token), so this is the bound
 * that decode tokens/s x weight bytes is compared with.
 *
 * usage: membw [threads] [MiB]   (defaults: all cores, 1024 MiB)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__AVX2__)
#include <immintrin.h>
#endif

struct job {
    const uint8_t *p;
    size_t n;
    pthread_barrier_t *bar;
    double sum;
};

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec * 1e-9;
}

static void *reader(void *arg) {
    struct job *j = arg;
    pthread_barrier_wait(j->bar);
#if defined(__AVX2__)
    __m256i a0 = _mm256_setzero_si256(), a1 = a0, a2 = a0, a3 = a0;
    for (size_t i = 0; i + 128 <= j->n; i += 128) {
        a0 = _mm256_add_epi64(a0, _mm256_load_si256((const __m256i *)(j->p + i)));
        a1 = _mm256_add_epi64(a1, _mm256_load_si256((const __m256i *)(j->p + i + 32)));
        a2 = _mm256_add_epi64(a2, _mm256_load_si256((const __m256i *)(j->p + i + 64)));
        a3 = _mm256_add_epi64(a3, _mm256_load_si256((const __m256i *)(j->p + i + 96)));
    }
    a0 = _mm256_add_epi64(_mm256_add_epi64(a0, a1), _mm256_add_epi64(a2, a3));
    j->sum = (double)_mm256_extract_epi64(a0, 0);
#else
    uint64_t s = 0;
    const uint64_t *q = (const uint64_t *)j->p;
    for (size_t i = 0; i < j->n / 8; i++) s += q[i];
    j->sum = (double)s;
#endif
    pthread_barrier_wait(j->bar);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    size_t mib = argc > 2 ? (size_t)atol(argv[2]) : 1024;
    if (threads < 1 || mib < 64) {
        fprintf(stderr, "usage: membw [threads >= 1] [MiB >= 64]\n");
        return 2;
    }
    size_t n = mib << 20;
    uint8_t *buf;
    if (posix_memalign((void **)&buf, 4096, n)) {
        fprintf(stderr, "membw: cannot allocate %zu MiB\n", mib);
        return 1;
    }
    memset(buf, 1, n);
    pthread_barrier_t bar;
    pthread_barrier_init(&bar, NULL, (unsigned)threads + 1);
    double best = 0;
    for (int pass = 0; pass < 5; pass++) {
        pthread_t th[256];
        struct job jobs[256];
        size_t per = n / (size_t)threads / 128 * 128;
        for (int t = 0; t < threads && t < 256; t++) {
            jobs[t] = (struct job){ buf + per * (size_t)t, per, &bar, 0 };
            pthread_create(&th[t], NULL, reader, &jobs[t]);
        }
        pthread_barrier_wait(&bar);
        double t0 = now();
        pthread_barrier_wait(&bar);
        double t1 = now();
        for (int t = 0; t < threads; t++) pthread_join(th[t], NULL);
        double gbs = (double)per * threads / (t1 - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    printf("%.1f GB/s read with %d threads over %zu MiB\n", best, threads, mib);
    free(buf);
    return 0;
}
