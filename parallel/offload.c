/*
 * offload.c — the offload plan (offload.h): the most resident layers a
 * device budget allows, and what streaming the others costs.
 */
#include "offload.h"

#include <inttypes.h>
#include <string.h>

/* The plan with the first r layers resident (nothing checked against the budget). */
static void plan_with(const struct shoal_offload_params *p, int r, struct shoal_offload_plan *o) {
    memset(o, 0, sizeof *o);
    o->n_layers = p->n_layers;
    o->n_resident = r;
    o->prefetch = p->prefetch;
    o->group = p->group;
    const int streamed = p->n_layers - r;
    o->n_buffers = streamed < p->prefetch + 1 ? streamed : p->prefetch + 1;
    for (int l = 0; l < p->n_layers; l++) {
        const uint64_t b = p->layer_bytes[l];
        if (l < r) {
            o->resident_bytes += b;
            continue;
        }
        /* the group's parts are equal but for the last: the first's stands for them; a
         * buffer holds g of them (the last padded), as the all-gather delivers them */
        uint64_t off, len;
        shoal_offload_part(b, p->group, 0, &off, &len);
        const uint64_t buf = p->group > 1 ? len * (uint64_t)p->group : b;
        if (buf > o->buffer_bytes) o->buffer_bytes = buf;
        o->host_bytes += len;
        o->copy_bytes += len;
        o->gather_bytes += b - len;
    }
    o->peak_bytes = p->fixed + o->resident_bytes + (uint64_t)o->n_buffers * o->buffer_bytes;
}

shoal_status shoal_offload_plan_make(const struct shoal_offload_params *p,
                                     struct shoal_offload_plan *out) {
    memset(out, 0, sizeof *out);
    if (p->n_layers < 1 || !p->layer_bytes || p->prefetch < 0 || p->group < 1)
        return shoal_errorf(SHOAL_INVALID, "offload of %d layers, prefetch %d, group %d",
                            p->n_layers, p->prefetch, p->group);
    /* the most layers resident that fit; the buffers' size depends on which
     * layers stream, so every split is tried, from all resident down */
    for (int r = p->n_layers; r >= 0; r--) {
        plan_with(p, r, out);
        if (!p->budget || out->peak_bytes <= p->budget) return SHOAL_OK;
    }
    char b[32], f[32], n[32], l[32];
    return shoal_errorf(SHOAL_NOMEM,
                        "a device memory budget of %s is too small: with every layer streamed "
                        "this rank needs %s (%s for the KV cache, activations, norms, embedding, "
                        "head and the backend's working memory, and %d layer buffer%s of %s); "
                        "raise --device-mem, lower "
                        "--prefetch or -c, or spread the model over more ranks",
                        shoal_fmt_bytes(b, sizeof b, (double)p->budget),
                        shoal_fmt_bytes(n, sizeof n, (double)out->peak_bytes),
                        shoal_fmt_bytes(f, sizeof f, (double)p->fixed), out->n_buffers,
                        out->n_buffers == 1 ? "" : "s",
                        shoal_fmt_bytes(l, sizeof l, (double)out->buffer_bytes));
}

void shoal_offload_part(uint64_t bytes, int g, int r, uint64_t *off, uint64_t *len) {
    uint64_t share = (bytes / (uint64_t)g + 255) / 256 * 256;
    uint64_t a = share * (uint64_t)r, b = r == g - 1 ? bytes : share * (uint64_t)(r + 1);
    if (a > bytes) a = bytes;
    if (b > bytes) b = bytes;
    *off = a;
    *len = b - a;
}

int shoal_offload_streamed(const struct shoal_offload_plan *p, int l) {
    return l >= p->n_resident && l < p->n_layers;
}

int shoal_offload_buffer(const struct shoal_offload_plan *p, int l) {
    return shoal_offload_streamed(p, l) && p->n_buffers ? (l - p->n_resident) % p->n_buffers : -1;
}
