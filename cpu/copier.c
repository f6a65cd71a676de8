/*
 * copier.c — the copy thread of copier.h: a ring of pending copies, a mutex
 * and two condition variables (work to do, work done).
 */
#include "copier.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>

enum { RING = 256 };

struct job {
    void *dst;
    const void *src;
    size_t n;
};

struct shoal_copier {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t work, done;
    struct job ring[RING];
    uint64_t submitted, finished; /* tickets: the n-th copy submitted is ticket n */
    int stop;
    double busy;
};

static void *run(void *arg) {
    struct shoal_copier *c = arg;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (c->finished == c->submitted && !c->stop) pthread_cond_wait(&c->work, &c->mu);
        if (c->finished == c->submitted) break; /* stopping, nothing left */
        struct job j = c->ring[c->finished % RING];
        pthread_mutex_unlock(&c->mu);
        double t0 = shoal_now();
        memcpy(j.dst, j.src, j.n);
        double dt = shoal_now() - t0;
        pthread_mutex_lock(&c->mu);
        c->busy += dt;
        c->finished++;
        pthread_cond_broadcast(&c->done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

shoal_status shoal_copier_create(struct shoal_copier **out) {
    *out = NULL;
    struct shoal_copier *c = calloc(1, sizeof *c);
    if (!c) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->work, NULL);
    pthread_cond_init(&c->done, NULL);
    if (pthread_create(&c->thread, NULL, run, c) != 0) {
        pthread_mutex_destroy(&c->mu);
        pthread_cond_destroy(&c->work);
        pthread_cond_destroy(&c->done);
        free(c);
        return shoal_errorf(SHOAL_NOMEM, "cannot start the copy thread");
    }
    *out = c;
    return SHOAL_OK;
}

void shoal_copier_destroy(struct shoal_copier *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->work);
    pthread_cond_destroy(&c->done);
    free(c);
}

shoal_status shoal_copier_submit(struct shoal_copier *c, void *dst, const void *src, size_t n,
                                 uint64_t *ticket) {
    pthread_mutex_lock(&c->mu);
    while (c->submitted - c->finished >= RING) pthread_cond_wait(&c->done, &c->mu); /* ring full */
    c->ring[c->submitted % RING] = (struct job){ dst, src, n };
    *ticket = ++c->submitted;
    pthread_cond_signal(&c->work);
    pthread_mutex_unlock(&c->mu);
    return SHOAL_OK;
}

void shoal_copier_wait(struct shoal_copier *c, uint64_t ticket) {
    pthread_mutex_lock(&c->mu);
    while (c->finished < ticket) pthread_cond_wait(&c->done, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

void shoal_copier_drain(struct shoal_copier *c) {
    pthread_mutex_lock(&c->mu);
    while (c->finished < c->submitted) pthread_cond_wait(&c->done, &c->mu);
    pthread_mutex_unlock(&c->mu);
}

double shoal_copier_busy(struct shoal_copier *c) {
    pthread_mutex_lock(&c->mu);
    double b = c->busy;
    pthread_mutex_unlock(&c->mu);
    return b;
}
