/*
 * copier.h — inside cpu/ only: a thread that copies host memory while the
 * pool computes, for the device-like CPU backend's fetches (offload). Copies
 * run in the order they were submitted; a ticket names one, and waiting for
 * a ticket waits for it and everything before it.
 */
#ifndef SHOAL_CPU_COPIER_H
#define SHOAL_CPU_COPIER_H

#include <stddef.h>
#include <stdint.h>

#include "../base/base.h"

struct shoal_copier;

shoal_status shoal_copier_create(struct shoal_copier **out);
void shoal_copier_destroy(struct shoal_copier *c); /* finishes what was submitted; NULL ok */
/* dst = src (n bytes), later; *ticket names it. */
shoal_status shoal_copier_submit(struct shoal_copier *c, void *dst, const void *src, size_t n,
                                 uint64_t *ticket);
/* Returns once the copy named ticket (and every one before) is done. */
void shoal_copier_wait(struct shoal_copier *c, uint64_t ticket);
/* Returns once every copy submitted so far is done. */
void shoal_copier_drain(struct shoal_copier *c);
/* Seconds the thread has spent copying. */
double shoal_copier_busy(struct shoal_copier *c);

#endif
