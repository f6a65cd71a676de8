/*
 * A fixed pool of worker threads for the CPU backend's parallel loops. One
 * job at a time: shoal_pool_run() hands fn to every thread (the caller is
 * thread 0) and returns when all have finished. Workers spin briefly for the
 * next job (ops follow each other within microseconds during decoding), then
 * sleep on a condition variable.
 */
#ifndef SHOAL_CPU_POOL_H
#define SHOAL_CPU_POOL_H

#include <stdatomic.h>

#include "../base/base.h"

struct shoal_pool;

/* n_threads >= 1; spin_us is how long a worker polls before it sleeps (and
 * the caller before it yields), in microseconds; polling is off when there
 * are more threads than online cores. */
shoal_status shoal_pool_create(struct shoal_pool **out, int n_threads, int spin_us);
void shoal_pool_destroy(struct shoal_pool *p); /* accepts NULL; joins the workers */
int shoal_pool_size(const struct shoal_pool *p);
void shoal_pool_run(struct shoal_pool *p, void (*fn)(void *arg, int ith, int nth), void *arg);

/*
 * A barrier for n threads of one run (spinning, then yielding): each waits
 * until all n have come. A thread that will not come (its part failed)
 * says so with shoal_bar_fail, and the others stop waiting: wait returns
 * -1 then, else 0.
 */
struct shoal_bar {
    _Atomic int arrived, failed;
    _Atomic unsigned gen;
    int n;
    long spin_us;
};
void shoal_bar_init(struct shoal_bar *b, int n, long spin_us); /* spin_us: as the pool's */
int shoal_bar_wait(struct shoal_bar *b);
void shoal_bar_fail(struct shoal_bar *b);

/* The half-open share [*lo, *hi) of n items for thread ith of nth, in multiples of align. */
static inline void shoal_pool_share(long long n, int ith, int nth, long long align, long long *lo,
                                    long long *hi) {
    long long units = (n + align - 1) / align;
    long long per = units / nth, extra = units % nth;
    long long u0 = ith * per + (ith < extra ? ith : extra);
    long long u1 = u0 + per + (ith < extra ? 1 : 0);
    *lo = u0 * align < n ? u0 * align : n;
    *hi = u1 * align < n ? u1 * align : n;
}

#endif
