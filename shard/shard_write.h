/*
 * shard_write — `shoal shard`'s work: a GGUF and a plan in, DIR/rank-K.gguf
 * per rank and DIR/manifest.pb out (shard.h, manifest.h).
 */
#ifndef SHOAL_SHARD_WRITE_H
#define SHOAL_SHARD_WRITE_H

#include <stdint.h>

#include "../base/base.h"
#include "../parallel/plan.h"
#include "gguf.h"

struct shoal_shard_params {
    const double *tp_weights, *pp_weights; /* the plan's weights, for the manifest; NULL: equal */
    const char *comm_dtype;                /* the all-reduce payload the plan is for */
    /* Bytes done of the total (reading the source for its digest, then writing). */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *user;
};

/*
 * Writes the shards of g for plan into dir (created if missing). On failure
 * no manifest is left in dir (a half-written set never looks complete) and
 * the error names the file.
 */
shoal_status shoal_shard_write(const struct shoal_gguf *g, const struct shoal_plan *plan,
                               const char *dir, const struct shoal_shard_params *p);

#endif
