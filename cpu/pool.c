/*
 * pool.c — the CPU backend's worker threads (see pool.h).
 *
 * Hand-off: run() bumps a generation counter under the mutex and wakes any
 * sleepers; workers poll the counter, then sleep when it stays still. The
 * caller counts finished workers down with an atomic and spins until zero.
 *
 * Polling is bounded in time, not in polls: how long a pause takes differs
 * several times over between processors (24 ns on the Intel VM where the
 * bound was set, so that the 200,000 polls before came to 4.7 ms), and two
 * processes on the same cores (tests side by side, or a user's two runs)
 * spent that long of each other's time at every hand-off.
 */
#define _GNU_SOURCE
#include "pool.h"

#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct worker {
    struct shoal_pool *pool;
    int index;
    pthread_t thread;
};

struct shoal_pool {
    int n, spin_us;
    struct worker *workers; /* (n - 1): thread 0 is the caller */
    int started;            /* workers successfully created */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    atomic_uint gen;
    atomic_int pending;
    atomic_int stop;
    void (*fn)(void *arg, int ith, int nth);
    void *arg;
};

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

/* Whether a poll loop begun at *t0 (0: not yet read) has run spin_us; the clock read once
 * every 64 polls (i: the polls so far). */
static inline int spun(long i, uint64_t *t0, long spin_us) {
    if (spin_us <= 0) return 1;
    if (i % 64) return 0;
    const uint64_t t = now_ns();
    if (!*t0) *t0 = t;
    return t - *t0 >= (uint64_t)spin_us * 1000u;
}

/* One poll of a wait that does not sleep (the caller's for its workers, a barrier's): a
 * pause while spin_us lasts, sched_yield from then on. *t0: as spun's, UINT64_MAX once past. */
static inline void pause_or_yield(long i, uint64_t *t0, long spin_us) {
    if (*t0 != UINT64_MAX && !spun(i, t0, spin_us)) {
        cpu_relax();
        return;
    }
    *t0 = UINT64_MAX;
    sched_yield();
}

static void *worker_main(void *p) {
    struct worker *w = p;
    struct shoal_pool *pool = w->pool;
    unsigned seen = 0;
    for (;;) {
        unsigned g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        uint64_t t0 = 0;
        for (long i = 0; g == seen && !spun(i, &t0, pool->spin_us); i++) {
            cpu_relax();
            g = atomic_load_explicit(&pool->gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&pool->mu);
            while ((g = atomic_load(&pool->gen)) == seen && !atomic_load(&pool->stop))
                pthread_cond_wait(&pool->cv, &pool->mu);
            pthread_mutex_unlock(&pool->mu);
        }
        if (atomic_load(&pool->stop)) return NULL;
        seen = g;
        pool->fn(pool->arg, w->index, pool->n);
        atomic_fetch_sub_explicit(&pool->pending, 1, memory_order_release);
    }
}

shoal_status shoal_pool_create(struct shoal_pool **out, int n_threads, int spin_us) {
    *out = NULL;
    if (n_threads < 1) return shoal_errorf(SHOAL_INVALID, "thread count %d must be >= 1", n_threads);
    struct shoal_pool *p = calloc(1, sizeof *p);
    if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory for the thread pool");
    p->n = n_threads;
    /* Oversubscribed, a spinning thread only delays the one it waits for. */
    long cores = sysconf(_SC_NPROCESSORS_ONLN);
    p->spin_us = cores > 0 && n_threads > cores ? 0 : spin_us;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    atomic_init(&p->gen, 0);
    atomic_init(&p->pending, 0);
    atomic_init(&p->stop, 0);
    if (n_threads > 1) {
        p->workers = calloc((size_t)n_threads - 1, sizeof *p->workers);
        if (!p->workers) {
            shoal_pool_destroy(p);
            return shoal_errorf(SHOAL_NOMEM, "out of memory for the thread pool");
        }
        for (int i = 0; i < n_threads - 1; i++) {
            p->workers[i].pool = p;
            p->workers[i].index = i + 1;
            int e = pthread_create(&p->workers[i].thread, NULL, worker_main, &p->workers[i]);
            if (e) {
                shoal_pool_destroy(p);
                return shoal_errorf(SHOAL_NOMEM, "cannot start worker thread %d of %d: %s", i + 1,
                                    n_threads, strerror(e));
            }
            p->started++;
        }
    }
    *out = p;
    return SHOAL_OK;
}

void shoal_pool_destroy(struct shoal_pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->stop, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int i = 0; i < p->started; i++) pthread_join(p->workers[i].thread, NULL);
    pthread_cond_destroy(&p->cv);
    pthread_mutex_destroy(&p->mu);
    free(p->workers);
    free(p);
}

int shoal_pool_size(const struct shoal_pool *p) { return p->n; }

void shoal_pool_run(struct shoal_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg) {
    if (p->n == 1) {
        fn(arg, 0, 1);
        return;
    }
    p->fn = fn;
    p->arg = arg;
    atomic_store_explicit(&p->pending, p->n - 1, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    fn(arg, 0, p->n);
    /* Spin while the workers finish, then yield: with more threads than
     * cores (or other ranks on the same cores) the worker we wait for may
     * need this core to run at all. */
    uint64_t t0 = 0;
    for (long i = 0; atomic_load_explicit(&p->pending, memory_order_acquire) > 0; i++)
        pause_or_yield(i, &t0, p->spin_us);
}

/* ------------------------------------------------------------- barrier */

void shoal_bar_init(struct shoal_bar *b, int n, long spin_us) {
    atomic_store(&b->arrived, 0);
    atomic_store(&b->failed, 0);
    atomic_store(&b->gen, 0);
    b->n = n;
    b->spin_us = spin_us;
}

int shoal_bar_wait(struct shoal_bar *b) {
    const unsigned gen = atomic_load_explicit(&b->gen, memory_order_acquire);
    if (atomic_fetch_add_explicit(&b->arrived, 1, memory_order_acq_rel) == b->n - 1) {
        atomic_store_explicit(&b->arrived, 0, memory_order_relaxed);
        atomic_fetch_add_explicit(&b->gen, 1, memory_order_release); /* the last one lets all go */
        return atomic_load(&b->failed) ? -1 : 0;
    }
    uint64_t t0 = 0;
    for (long i = 0; atomic_load_explicit(&b->gen, memory_order_acquire) == gen; i++) {
        if (atomic_load_explicit(&b->failed, memory_order_relaxed)) return -1;
        pause_or_yield(i, &t0, b->spin_us);
    }
    return 0;
}

void shoal_bar_fail(struct shoal_bar *b) { atomic_store(&b->failed, 1); }
