/*
 * plan.c — the split rules of plan.h. Pure functions of the model's shape
 * and the layout asked for.
 */
#include "plan.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

void shoal_split_units(int total, int n, const double *w, int *bounds) {
    double sum = 0;
    for (int i = 0; i < n; i++) sum += w ? w[i] : 1.0;
    int *share = calloc((size_t)n, sizeof *share);
    double *frac = calloc((size_t)n, sizeof *frac);
    int given = 0;
    for (int i = 0; i < n; i++) {
        double target = (w ? w[i] : 1.0) / sum * total;
        share[i] = (int)floor(target);
        if (share[i] < 1) share[i] = 1;
        frac[i] = target - share[i];
        given += share[i];
    }
    /* too many (every part has at least one): take from the most over target */
    while (given > total) {
        int best = -1;
        for (int i = 0; i < n; i++)
            if (share[i] > 1 && (best < 0 || frac[i] < frac[best])) best = i;
        share[best]--;
        frac[best] += 1;
        given--;
    }
    /* too few: give to the largest remainders, the first part winning ties */
    while (given < total) {
        int best = 0;
        for (int i = 1; i < n; i++)
            if (frac[i] > frac[best]) best = i;
        share[best]++;
        frac[best] -= 1;
        given++;
    }
    bounds[0] = 0;
    for (int i = 0; i < n; i++) bounds[i + 1] = bounds[i] + share[i];
    free(share);
    free(frac);
}

/* -------------------------------------------------------------- heads */

/*
 * The head ranges of each tensor-parallel rank; 0, or nonzero with a reason
 * in why (no message is recorded: callers try many tp).
 */
static int split_heads(const struct shoal_model_shape *m, int tp, const double *w, int *q,
                       int *kv, char *why, size_t why_len) {
    const int g = m->n_heads / m->n_kv_heads;
    if (tp <= m->n_kv_heads) {
        int *b = malloc(sizeof(int) * (size_t)(tp + 1));
        shoal_split_units(m->n_kv_heads, tp, w, b);
        for (int t = 0; t < tp; t++) {
            kv[2 * t] = b[t];
            kv[2 * t + 1] = b[t + 1];
            q[2 * t] = b[t] * g;
            q[2 * t + 1] = b[t + 1] * g;
        }
        free(b);
    } else {
        /* more ranks than KV heads: the ranks shared out over the groups as evenly as they
         * go, each rank a copy of its group's KV head and a share of its query heads (by
         * weight; Gemma 3 270M's 4 over 3 ranks: 2, 1, 1) */
        if (tp > m->n_heads) {
            snprintf(why, why_len, "%d ranks cannot share %d query heads (one each at least)", tp, m->n_heads);
            return 1;
        }
        int *r = malloc(sizeof(int) * (size_t)(m->n_kv_heads + 1)), *b = malloc(sizeof(int) * (size_t)(tp + 1));
        if (!r || !b) {
            free(r), free(b);
            snprintf(why, why_len, "out of memory");
            return 1;
        }
        shoal_split_units(tp, m->n_kv_heads, NULL, r); /* group h: ranks r[h] .. r[h + 1] - 1 */
        for (int h = 0; h < m->n_kv_heads; h++) {
            const int n = r[h + 1] - r[h];
            if (n > g) { /* (shoal_split_units keeps the groups' ranks within one of each other) */
                snprintf(why, why_len, "%d ranks cannot share a KV group of %d query heads", n, g);
                free(r), free(b);
                return 1;
            }
            shoal_split_units(g, n, w ? w + r[h] : NULL, b);
            for (int i = 0; i < n; i++) {
                const int t = r[h] + i;
                kv[2 * t] = h;
                kv[2 * t + 1] = h + 1;
                q[2 * t] = h * g + b[i];
                q[2 * t + 1] = h * g + b[i + 1];
            }
        }
        free(r), free(b);
    }
    for (int t = 0; t < tp; t++)
        if ((int64_t)q[2 * t] * m->head_dim % m->wo_block) {
            snprintf(why, why_len,
                     "rank %d's attention output columns would start at %lld, off the %d-value "
                     "quantization blocks of attn_output",
                     t, (long long)q[2 * t] * m->head_dim, m->wo_block);
            return 1;
        }
    return 0;
}

/*
 * The FFN's blocks of hidden units per rank: attention comes in whole KV
 * groups (SmolLM2's 3 groups over 2 ranks: 2 and 1), so the FFN evens out
 * each rank's total, attention plus FFN, in proportion to its weight. Costs
 * are in parameters per layer: a query head has its Q rows and attention
 * output columns, a KV head its K and V rows, a hidden unit its gate, up and
 * down vectors.
 */
static void split_ffn(const struct shoal_model_shape *m, int tp, const double *w, const int *q,
                      const int *kv, int *ff) {
    double head = 2.0 * m->head_dim * m->dim, unit = 3.0 * m->dim, total = m->ffn_dim * unit;
    double wsum = 0;
    double *att = malloc(sizeof(double) * 2 * (size_t)tp), *want = att ? att + tp : NULL;
    if (!att) { /* no memory for the balance: the FFN by weight alone */
        shoal_split_units(m->ffn_dim / m->down_block, tp, w, ff);
        return;
    }
    for (int t = 0; t < tp; t++) {
        att[t] = ((q[2 * t + 1] - q[2 * t]) + (kv[2 * t + 1] - kv[2 * t])) * head;
        total += att[t];
        wsum += w ? w[t] : 1.0;
    }
    /* the FFN share that brings rank t to its target; a rank whose attention
     * alone is over target still takes a block (shoal_split_units) */
    for (int t = 0; t < tp; t++) want[t] = fmax(total * (w ? w[t] : 1.0) / wsum - att[t], 1e-9);
    shoal_split_units(m->ffn_dim / m->down_block, tp, want, ff);
    free(att);
}

/* Whether tp ranks (equal weights) can split this model (ep: its experts whole); the reason if not. */
static int tp_works(const struct shoal_model_shape *m, int tp, int ep, char *why, size_t why_len) {
    int *q = malloc(sizeof(int) * 4 * (size_t)tp), *kv = q + 2 * tp;
    int bad = split_heads(m, tp, NULL, q, kv, why, why_len);
    free(q);
    if (bad) return 0;
    if (ep && m->n_expert < tp) {
        snprintf(why, why_len, "%d experts cannot go whole to %d ranks", m->n_expert, tp);
        return 0;
    }
    if (!ep && m->ffn_dim / m->down_block < tp) {
        snprintf(why, why_len, "the FFN's %d hidden units in blocks of %d cannot go to %d ranks",
                 m->ffn_dim, m->down_block, tp);
        return 0;
    }
    if (m->n_vocab < tp) {
        snprintf(why, why_len, "%d vocabulary rows cannot go to %d ranks", m->n_vocab, tp);
        return 0;
    }
    return 1;
}

/* "1, 2, 4, 8": the tensor-parallel sizes up to 64 that work (ep: with the experts whole). */
static void list_working_tp(const struct shoal_model_shape *m, int ep, char *out, size_t len) {
    char why[256];
    size_t at = 0;
    out[0] = 0;
    for (int tp = 1; tp <= 64 && at + 8 < len; tp++)
        if (tp_works(m, tp, ep, why, sizeof why))
            at += (size_t)snprintf(out + at, len - at, "%s%d", at ? ", " : "", tp);
}

/* ------------------------------------------------------------- stages */

/*
 * Whether the layers fit pp stages whose cost (layer bytes, plus the output
 * head on the last) stays within limit * weight; fills the first layer of
 * each stage (bounds[pp] = n_layers).
 */
static int stages_fit(const struct shoal_model_shape *m, int pp, const double *w, double limit,
                      int *bounds) {
    int l = 0;
    for (int s = 0; s < pp; s++) {
        bounds[s] = l;
        double cap = limit * (w ? w[s] : 1.0);
        if (s == pp - 1) {
            double cost = (m->n_layers - l) * m->layer_bytes + m->output_bytes;
            bounds[pp] = m->n_layers;
            return cost <= cap && m->n_layers - l >= 1;
        }
        int left_for_rest = pp - 1 - s, take = 1;
        while (l + take < m->n_layers - left_for_rest && (take + 1) * m->layer_bytes <= cap) take++;
        if (take * m->layer_bytes > cap) return 0;
        l += take;
    }
    return 0;
}

static void split_stages(const struct shoal_model_shape *m, int pp, const double *w, int *bounds) {
    double lo = 0, hi = (m->n_layers * m->layer_bytes + m->output_bytes) * 2 + 1;
    double wmin = 1e300;
    for (int s = 0; s < pp; s++) wmin = fmin(wmin, w ? w[s] : 1.0);
    hi /= wmin;
    for (int it = 0; it < 100; it++) {
        double mid = (lo + hi) / 2;
        if (stages_fit(m, pp, w, mid, bounds)) hi = mid;
        else lo = mid;
    }
    stages_fit(m, pp, w, hi, bounds);
}

/* --------------------------------------------------------------- plan */

static int weights_ok(const double *w, int n) {
    for (int i = 0; w && i < n; i++)
        if (!(w[i] > 0) || !isfinite(w[i])) return 0;
    return 1;
}

shoal_status shoal_plan_make(struct shoal_plan **out, const struct shoal_model_shape *m,
                             const struct shoal_plan_params *p) {
    *out = NULL;
    const int tp = p->tp, pp = p->pp;
    if (tp < 1 || pp < 1)
        return shoal_errorf(SHOAL_INVALID, "--tp and --pp must be at least 1 (got %d and %d)", tp, pp);
    if (!weights_ok(p->tp_weights, tp) || !weights_ok(p->pp_weights, pp))
        return shoal_errorf(SHOAL_INVALID, "split weights must be positive numbers");
    if (m->n_kv_heads < 1 || m->n_heads % m->n_kv_heads || m->wo_block < 1 || m->down_block < 1 ||
        m->ffn_dim % m->down_block)
        return shoal_errorf(SHOAL_INTERNAL, "inconsistent model shape given to the planner");
    if (pp > m->n_layers)
        return shoal_errorf(SHOAL_INVALID,
                            "%d pipeline stages for %d layers: each stage needs a layer (use "
                            "--pp %d or fewer)",
                            pp, m->n_layers, m->n_layers);
    if (p->ep && !m->n_expert)
        return shoal_errorf(SHOAL_INVALID, "expert parallelism (--ep) needs a model with experts; this one has none");
    char why[256], works[256];
    if (!tp_works(m, tp, p->ep, why, sizeof why)) {
        list_working_tp(m, p->ep, works, sizeof works);
        return shoal_errorf(SHOAL_INVALID,
                            "--tp %d cannot split this model (%d query heads in %d KV groups, "
                            "head size %d, FFN %d): %s. Tensor-parallel sizes that work: %s",
                            tp, m->n_heads, m->n_kv_heads, m->head_dim, m->ffn_dim, why, works);
    }
    struct shoal_plan *plan = calloc(1, sizeof *plan);
    int *q = malloc(sizeof(int) * 2 * (size_t)tp), *kv = malloc(sizeof(int) * 2 * (size_t)tp);
    int *ff = malloc(sizeof(int) * (size_t)(tp + 1)), *voc = malloc(sizeof(int) * (size_t)(tp + 1));
    int *st = malloc(sizeof(int) * (size_t)(pp + 1)), *xs = malloc(sizeof(int) * (size_t)(tp + 1));
    if (!plan || !q || !kv || !ff || !voc || !st || !xs ||
        !(plan->part = calloc((size_t)tp * (size_t)pp, sizeof *plan->part))) {
        free(q), free(kv), free(ff), free(voc), free(st), free(xs);
        shoal_plan_destroy(plan);
        return shoal_errorf(SHOAL_NOMEM, "out of memory for the plan");
    }
    plan->tp = tp;
    plan->pp = pp;
    plan->n_ranks = tp * pp;
    plan->ep = p->ep && tp > 1;
    split_heads(m, tp, p->tp_weights, q, kv, why, sizeof why);
    if (plan->ep) shoal_split_units(m->n_expert, tp, p->tp_weights, xs); /* the FFN units stay whole */
    else split_ffn(m, tp, p->tp_weights, q, kv, ff);
    shoal_split_units(m->n_vocab, tp, p->tp_weights, voc);
    split_stages(m, pp, p->pp_weights, st);
    for (int s = 0; s < pp; s++)
        for (int t = 0; t < tp; t++) {
            struct shoal_rank_part *r = &plan->part[s * tp + t];
            r->rank = s * tp + t;
            r->stage = s;
            r->tp_rank = t;
            r->layer0 = st[s];
            r->layer1 = st[s + 1];
            r->q0 = q[2 * t];
            r->q1 = q[2 * t + 1];
            r->kv0 = kv[2 * t];
            r->kv1 = kv[2 * t + 1];
            r->ff0 = plan->ep ? 0 : ff[t] * m->down_block;
            r->ff1 = plan->ep ? m->ffn_dim : ff[t + 1] * m->down_block;
            r->x0 = plan->ep ? xs[t] : 0;
            r->x1 = plan->ep ? xs[t + 1] : m->n_expert;
            r->first = s == 0;
            r->last = s == pp - 1;
            r->v0 = r->last ? voc[t] : 0;
            r->v1 = r->last ? voc[t + 1] : 0;
        }
    free(q), free(kv), free(ff), free(voc), free(st), free(xs);
    *out = plan;
    return SHOAL_OK;
}

void shoal_plan_destroy(struct shoal_plan *p) {
    if (!p) return;
    free(p->part);
    free(p);
}

void shoal_plan_print(FILE *f, const struct shoal_plan *p) {
    for (int i = 0; i < p->n_ranks; i++) {
        const struct shoal_rank_part *r = &p->part[i];
        fprintf(f, "rank %d: stage %d layers %d-%d, tp %d: query heads %d-%d, KV heads %d-%d, "
                   "FFN %d-%d", r->rank, r->stage, r->layer0, r->layer1 - 1, r->tp_rank, r->q0,
                r->q1 - 1, r->kv0, r->kv1 - 1, r->ff0, r->ff1 - 1);
        if (r->x1 > r->x0) fprintf(f, ", experts %d-%d", r->x0, r->x1 - 1);
        if (r->last) fprintf(f, ", vocabulary %d-%d", r->v0, r->v1 - 1);
        fputc('\n', f);
    }
}
