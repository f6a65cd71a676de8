/*
 * probe.c — how fast this machine runs a rank's part of the model, for the
 * planner (launch.h: launch_probe). The kernels' speed on a machine is not
 * its memory bandwidth alone (narrow rows, attention, small ops), so rather
 * than guess, the planner times the part's layers (and the output head of
 * a last stage) here, with the CPU backend and the part's thread count, at
 * the position a decode step reads on average. All the stage's layers run,
 * up to PROBE_BYTES of them, so that the caches hold what they will hold in
 * the run (a small model may sit in a large L3): rows are mapped in place,
 * column slices copied.
 */
#define _GNU_SOURCE
#include <stdlib.h>
#include <string.h>

#include "../cpu/cpu.h"
#include "../runtime/forward.h"
#include "../runtime/generate.h"
#include "../runtime/model.h"
#include "launch.h"

#define PROBE_SECONDS 0.03 /* of timed steps per probe, after warming up */
#define PROBE_BYTES (1024.0 * 1024 * 1024) /* of layers run at most (the rest: in proportion) */

static int same(const struct probe_entry *e, const struct shoal_rank_part *pt, int threads) {
    return e->q == pt->q1 - pt->q0 && e->kv == pt->kv1 - pt->kv0 && e->ff == pt->ff1 - pt->ff0 &&
           e->v == (pt->last ? pt->v1 - pt->v0 : -1) && e->threads == threads;
}

enum { LAYERS = 1, HEAD = 2 };

/* Seconds per step of the layers, the head or both (the median of the timed
 * steps), x reset before each; with a window, the steps fill it, and *mean is
 * their mean over it (the steps' own time and any the machine took from them
 * between: a CPU quota, other work). */
static shoal_status time_calls(struct shoal_state *s, const struct shoal_seq_batch *sb, const float *x0,
                               int what, double window, double *out, double *mean) {
    const struct shoal_model *m = s->m;
    double t[64];
    int n = 0;
    double spent = 0, start = 0;
    for (int i = 0; window > 0 || (i < 64 + 3 && (i < 8 || spent < PROBE_SECONDS)); i++) {
        if (window > 0 && i == 3) start = shoal_now();
        if (window > 0 && i > 3 && (shoal_now() - start >= window || i >= 100000)) {
            *mean = (shoal_now() - start) / (i - 3);
            break;
        }
        SHOAL_TRY(shoal_backend_upload(m->be, s->x, x0, (size_t)m->hp.dim * sizeof(float)));
        SHOAL_TRY(shoal_backend_synchronize(m->be));
        double t0 = shoal_now();
        if (what & LAYERS) SHOAL_TRY(shoal_run_layers(s, &sb->b));
        if (what & HEAD) SHOAL_TRY(shoal_run_head(s, 1, 0, 1, 0));
        SHOAL_TRY(shoal_backend_synchronize(m->be));
        double dt = shoal_now() - t0;
        if (i >= 3 && n < 64) { /* warm-up first */
            t[n++] = dt;
            spent += dt;
        }
    }
    /* the median */
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && t[j] < t[j - 1]; j--) {
            double k = t[j];
            t[j] = t[j - 1];
            t[j - 1] = k;
        }
    *out = t[n / 2];
    return SHOAL_OK;
}

static shoal_status measure(struct launch_probe *pr, const struct shoal_rank_part *pt, int threads,
                            double window, double max_bytes, double *layer_s, double *head_s, double *sustained_s) {
    struct shoal_rank_part one = *pt;
    const struct shoal_model_shape *sh = pr->shape;
    double layer_bytes = (pt->q1 - pt->q0) * sh->q_head_bytes + (pt->kv1 - pt->kv0) * sh->kv_head_bytes +
                         (pt->ff1 - pt->ff0) * sh->ffn_unit_bytes;
    int n = pt->layer1 - pt->layer0;
    if (layer_bytes * n > max_bytes) n = (int)(max_bytes / layer_bytes);
    if (n < 1) n = 1;
    one.layer1 = one.layer0 + n;
    one.first = 0;
    struct shoal_cpu_params cp = { .n_threads = threads, .simd = pr->simd, .spin = -1 };
    struct shoal_backend *be = NULL;
    struct shoal_model *m = NULL;
    struct shoal_state *s = NULL;
    struct shoal_seq_batch sb = { 0 };
    float *x0 = NULL;
    shoal_status rc;
    int pos = pr->pos > 0 ? pr->pos : 0;
    SHOAL_TRY_GOTO(shoal_cpu_backend_create(&be, &cp), rc, done);
    SHOAL_TRY_GOTO(shoal_model_load(&m, pr->g, be, &one), rc, done);
    struct shoal_state_params sp = { .n_ctx = pos + 1, .n_batch = 1, .n_outputs = 1, .kv_type = pr->kv_type };
    SHOAL_TRY_GOTO(shoal_state_create(&s, m, &sp), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_memset0(be, s->kv, (size_t)s->kv_bytes), rc, done);
    SHOAL_TRY_GOTO(shoal_seq_batch_init(&sb, 1, pos + 1), rc, done);
    static const int32_t token = 1;
    shoal_seq_batch_set(&sb, &token, 1, pos);
    if (!(x0 = malloc((size_t)m->hp.dim * sizeof(float)))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    for (int i = 0; i < m->hp.dim; i++) x0[i] = (float)((i * 37) % 17 - 8) * 0.01f;
    /* the layers and the head together, as a step reads them (the caches hold what
     * they hold then); the head alone says how to share the time out */
    double all, mean = 0, head_mean;
    SHOAL_TRY_GOTO(time_calls(s, &sb, x0, LAYERS | (pt->last ? HEAD : 0), window, &all, &mean), rc, done);
    *head_s = 0;
    if (pt->last) SHOAL_TRY_GOTO(time_calls(s, &sb, x0, HEAD, window, head_s, &head_mean), rc, done);
    if (*head_s > all) *head_s = all;
    *layer_s = (all - *head_s) / n;
    if (sustained_s) *sustained_s = (mean - *head_s) / n;
done:
    free(x0);
    shoal_seq_batch_free(&sb);
    shoal_state_destroy(s);
    shoal_model_destroy(m);
    if (be) shoal_backend_destroy(be);
    return rc;
}

shoal_status launch_probe(void *user, const struct shoal_rank_part *pt, int threads, double *layer_s,
                          double *head_s) {
    struct launch_probe *pr = user;
    for (int i = 0; i < pr->n; i++)
        if (same(&pr->e[i], pt, threads)) {
            *layer_s = pr->e[i].layer_s;
            *head_s = pr->e[i].head_s;
            return SHOAL_OK;
        }
    SHOAL_TRY(measure(pr, pt, threads, 0, PROBE_BYTES, layer_s, head_s, NULL));
    if (pr->n < (int)(sizeof pr->e / sizeof pr->e[0]))
        pr->e[pr->n++] = (struct probe_entry){ pt->q1 - pt->q0, pt->kv1 - pt->kv0, pt->ff1 - pt->ff0,
                                               pt->last ? pt->v1 - pt->v0 : -1, threads, *layer_s, *head_s };
    return SHOAL_OK;
}

shoal_status launch_probe_sustained(struct launch_probe *pr, int threads, double window, double max_bytes,
                                    double *layer_s, double *sustained_s) {
    const struct shoal_model_shape *m = pr->shape;
    const struct shoal_rank_part whole = { .layer1 = m->n_layers, .q1 = m->n_heads, .kv1 = m->n_kv_heads,
                                           .ff1 = m->ffn_dim, .x1 = m->n_expert };
    double head_s;
    return measure(pr, &whole, threads, window, max_bytes, layer_s, &head_s, sustained_s);
}
