/*
 * membw — how fast this machine streams memory into the cores. Decoding is
 * memory-bound (every weight is read once per token), so this is the bound
 * that decode speed is set against, and what `shoal plan` predicts from.
 */
#ifndef SHOAL_MEMBW_H
#define SHOAL_MEMBW_H

#include <stddef.h>

#include "../base/base.h"

/*
 * Bytes/s that `threads` threads read together, each summing its share of
 * a buffer of `bytes` (much larger than the caches): the best of `passes`.
 */
shoal_status shoal_membw_measure(int threads, size_t bytes, int passes, double *out);

#endif
