/*
 * fuzz_hosts.c — host files (parallel/hosts.c, `shoal plan --hosts FILE`):
 * the input is the file's text; a topology that parses is then asked what
 * the planner asks of it (each rank's host, the link between hosts), then
 * the planner itself (shoal_cost_all: every layout of its ranks, costed,
 * as `shoal plan --hosts` does) for a fixed model, LLaMA-3-8B's shape in
 * Q4_K. Every word of the text also goes through the unit parsers
 * (shoal_parse_size, _rate, _time).
 *
 * Properties: a parsed topology has hosts with ranks, as many ranks as its
 * hosts add up to, each rank on the host whose range holds it, and a link
 * of positive bandwidth between any two hosts; the unit parsers give -1 or
 * a finite value of at least 0.
 */
#define _GNU_SOURCE /* strndup, memmem, nftw */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "parallel/cost.h"
#include "parallel/hosts.h"

/* LLaMA-3-8B in Q4_K: what shoal_model_shape says of it */
static const struct shoal_model_shape shape = {
    .n_layers = 32, .dim = 4096, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128, .ffn_dim = 14336,
    .n_vocab = 128256, .wo_block = 256, .down_block = 256, .layer_bytes = 1.46e8, .output_bytes = 4.3e8,
    .q_head_bytes = 1.3e6, .kv_head_bytes = 3.2e5, .ffn_unit_bytes = 7.4e3, .norm_bytes = 3.3e4,
    .embd_bytes = 2.9e8,
};
static const struct shoal_cost_params cost = { .n_ctx = 4096, .n_batch = 512, .rings = 1, .kv_head_bytes = 256,
                                               .wire_elem = 8, .meta_bytes = 6e6, .tokenizer_bytes = 5e6,
                                               .decode_fill = 0.5 };

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static void units(const char *text, size_t len) {
    char *copy = strndup(text, len), *save = NULL;
    FUZZ_CHECK(copy, "strndup");
    for (char *w = strtok_r(copy, " \t\r\n=", &save); w; w = strtok_r(NULL, " \t\r\n=", &save)) {
        const double v[3] = { shoal_parse_size(w), shoal_parse_rate(w), shoal_parse_time(w) };
        for (int i = 0; i < 3; i++) FUZZ_CHECK(v[i] == -1 || (isfinite(v[i]) && v[i] >= 0), "'%s': %g", w, v[i]);
    }
    free(copy);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    size_t len;
    char *text = fuzz_rest(&in, &len); /* a NUL ends the file's text, as it would a C string read from it */
    units(text, len);
    const struct shoal_host machine = { .name = "this machine", .ranks = 1, .mem = 1e9, .membw = 2e10,
                                        .corebw = 1e10, .cores = 2 };
    struct shoal_topology t;
    if (shoal_hosts_parse(text, "hosts", size && (data[0] & 1) ? &machine : NULL, &t) == SHOAL_OK) {
        FUZZ_CHECK(t.n_hosts > 0 && t.n_ranks > 0 && t.n_ranks <= SHOAL_HOSTS_MAX_RANKS, "%d hosts, %d ranks",
                   t.n_hosts, t.n_ranks);
        int sum = 0;
        for (int h = 0; h < t.n_hosts; h++) {
            FUZZ_CHECK(t.hosts[h].ranks >= 1 && t.hosts[h].membw > 0 && t.hosts[h].corebw > 0 && t.hosts[h].cores >= 1,
                       "host %d", h);
            /* the first and last rank of each host are on it */
            FUZZ_CHECK(shoal_topology_host_of(&t, sum) == h, "rank %d is not on host %d", sum, h);
            sum += t.hosts[h].ranks;
            FUZZ_CHECK(shoal_topology_host_of(&t, sum - 1) == h, "rank %d is not on host %d", sum - 1, h);
        }
        FUZZ_CHECK(sum == t.n_ranks, "hosts add up to %d ranks, not %d", sum, t.n_ranks);
        const int most = t.n_hosts < 64 ? t.n_hosts : 64;
        for (int a = 0; a < most; a++)
            for (int b = 0; b < most; b++) {
                const struct shoal_link *l = shoal_topology_link(&t, a, b);
                FUZZ_CHECK(l && l->bw > 0 && l->lat >= 0, "link %d-%d", a, b);
                FUZZ_CHECK(l == shoal_topology_link(&t, b, a), "link %d-%d one way only", a, b);
            }
        struct shoal_layout_cost *all = NULL;
        int n = 0;
        if (shoal_cost_all(&shape, &t, &cost, &all, &n) == SHOAL_OK) {
            FUZZ_CHECK(n >= 1, "no layout");
            for (int i = 0; i < n; i++)
                FUZZ_CHECK(all[i].tp * all[i].pp == t.n_ranks && !isnan(all[i].tok_s), "layout %d: tp %d pp %d", i,
                           all[i].tp, all[i].pp);
            shoal_layout_costs_free(all, n);
        }
        shoal_topology_free(&t);
    }
    free(text);
    return 0;
}
