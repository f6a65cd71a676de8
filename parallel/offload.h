/*
 * offload — ZeRO-3-style offload, as a plan: under a device memory budget,
 * which of a rank's layers stay on its device and which stream in from host
 * memory before they run, how many layer buffers they take turns in, what
 * that costs in bytes per token, and the device memory it peaks at.
 *
 * Pure: sizes in, a plan out; no I/O, no backend. The resident layers are the
 * rank's first ones, so that the first streamed layer of the next token can
 * be fetched while they compute. Streamed layers are partitioned over an
 * offload group of g ranks that run the same part of the model: each holds
 * 1/g of every streamed layer in host memory and copies it to its device,
 * and the group all-gathers the parts into the full layer.
 */
#ifndef SHOAL_OFFLOAD_H
#define SHOAL_OFFLOAD_H

#include <stdint.h>

#include "../base/base.h"

struct shoal_offload_params {
    uint64_t budget;             /* device bytes this rank may use (0: no limit) */
    uint64_t fixed;              /* bytes whatever the plan: KV cache, activations, norms, embedding, head,
                                  * and the backend's working memory and what it holds already */
    int n_layers;                /* this rank's layers */
    const uint64_t *layer_bytes; /* (n_layers): device bytes of each layer's matrices */
    int prefetch;                /* d: layers fetched ahead of the one running (>= 0) */
    int group;                   /* g: ranks sharing the streamed layers' host copies (>= 1) */
};

struct shoal_offload_plan {
    int n_layers, n_resident;  /* the first n_resident layers stay on the device */
    int n_buffers;             /* buffers the streamed layers take turns in: min(d + 1, streamed) */
    int prefetch, group;
    uint64_t buffer_bytes;     /* each buffer: the largest streamed layer (with a group: g equal parts of it) */
    uint64_t resident_bytes;   /* the resident layers' matrices */
    uint64_t peak_bytes;       /* fixed + resident + buffers: the device's most */
    uint64_t host_bytes;       /* this rank's host copies: its part of every streamed layer */
    uint64_t copy_bytes;       /* per token, host to this rank's device: its parts */
    uint64_t gather_bytes;     /* per token, from the rest of the group: the other parts */
};

/*
 * The plan keeping as many layers resident as the budget allows. A budget
 * that cannot hold the fixed bytes and the buffers even with every layer
 * streamed is SHOAL_NOMEM with a message saying how much would do. Invalid
 * parameters (no layers, d < 0, g < 1) are SHOAL_INVALID.
 */
shoal_status shoal_offload_plan_make(const struct shoal_offload_params *p,
                                     struct shoal_offload_plan *out);

/*
 * The part of a streamed layer of `bytes` that rank r of a group of g holds:
 * [*off, *off + *len), cut at 256-byte boundaries (the last part takes the
 * rest; a part may be empty when the layer is small).
 */
void shoal_offload_part(uint64_t bytes, int g, int r, uint64_t *off, uint64_t *len);

/* Whether layer l (0-based among the rank's) streams, and the buffer it runs from. */
int shoal_offload_streamed(const struct shoal_offload_plan *p, int l);
int shoal_offload_buffer(const struct shoal_offload_plan *p, int l);

#endif
