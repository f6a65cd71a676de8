/*
 * test_plan — the planner over many model shapes and layouts: every plan it
 * makes covers each layer, head, FFN unit and vocabulary row exactly once
 * (KV heads once per sharing group), keeps column splits on quantization
 * blocks, balances stages and honours weights; every plan it refuses says
 * what would work, and some of those alternatives are checked to succeed.
 */
#include <math.h>

#include "check.h"
#include "parallel/plan.h"

static int n_plans, n_refused;

static void check_plan(const struct shoal_model_shape *m, const struct shoal_plan *p,
                       const double *tw, const char *tag) {
    const int tp = p->tp, pp = p->pp, g = m->n_heads / m->n_kv_heads;
    /* stages: contiguous, in order, non-empty, all layers */
    for (int s = 0; s < pp; s++) {
        const struct shoal_rank_part *a = &p->part[s * tp];
        CHECK(a->layer1 > a->layer0, "%s: stage %d empty", tag, s);
        CHECK(a->layer0 == (s ? p->part[(s - 1) * tp].layer1 : 0), "%s: stage %d not contiguous", tag, s);
        for (int t = 0; t < tp; t++) {
            const struct shoal_rank_part *r = &p->part[s * tp + t];
            CHECK(r->rank == s * tp + t && r->stage == s && r->tp_rank == t, "%s: numbering", tag);
            CHECK(r->layer0 == a->layer0 && r->layer1 == a->layer1, "%s: a stage's ranks disagree", tag);
            CHECK(r->first == (s == 0) && r->last == (s == pp - 1), "%s: first/last", tag);
        }
    }
    CHECK(p->part[(pp - 1) * tp].layer1 == m->n_layers, "%s: layers lost", tag);
    /* within a stage: query heads partition, KV heads follow, FFN and vocab partition */
    for (int s = 0; s < pp; s++) {
        int qn = 0, fn = 0, vn = 0;
        for (int t = 0; t < tp; t++) {
            const struct shoal_rank_part *r = &p->part[s * tp + t];
            CHECK(r->q0 == qn && r->q1 > r->q0, "%s: rank %d query heads %d-%d", tag, t, r->q0, r->q1);
            CHECK(r->kv0 == r->q0 / g && r->kv1 == (r->q1 + g - 1) / g, "%s: rank %d KV heads %d-%d for queries %d-%d",
                  tag, t, r->kv0, r->kv1, r->q0, r->q1);
            CHECK((long long)r->q0 * m->head_dim % m->wo_block == 0, "%s: wo split off a block", tag);
            CHECK(r->ff0 == fn && r->ff1 > r->ff0 && r->ff0 % m->down_block == 0, "%s: FFN %d-%d", tag,
                  r->ff0, r->ff1);
            qn = r->q1;
            fn = r->ff1;
            if (r->last) {
                CHECK(r->v0 == vn && r->v1 > r->v0, "%s: vocab %d-%d", tag, r->v0, r->v1);
                vn = r->v1;
            } else {
                CHECK(r->v0 == r->v1, "%s: vocab before the last stage", tag);
            }
        }
        CHECK(qn == m->n_heads && fn == m->ffn_dim, "%s: heads or FFN lost", tag);
        if (s == pp - 1) CHECK(vn == m->n_vocab, "%s: vocabulary lost", tag);
    }
    /* weighted FFN shares follow the weights to within one block */
    if (tw) {
        double sum = 0;
        for (int t = 0; t < tp; t++) sum += tw[t];
        for (int t = 0; t < tp; t++) {
            const struct shoal_rank_part *r = &p->part[t];
            double want = tw[t] / sum * m->ffn_dim;
            CHECK(fabs((r->ff1 - r->ff0) - want) <= m->down_block + 1e-9, "%s: rank %d FFN share %d, weight says %.1f",
                  tag, t, r->ff1 - r->ff0, want);
        }
    }
    /* stage balance: no stage more than one layer's bytes (plus the head) above the mean */
    double total = m->n_layers * m->layer_bytes + m->output_bytes;
    for (int s = 0; s < pp; s++) {
        const struct shoal_rank_part *a = &p->part[s * tp];
        double cost = (a->layer1 - a->layer0) * m->layer_bytes + (a->last ? m->output_bytes : 0);
        CHECK(cost <= total / pp + m->layer_bytes + m->output_bytes + 1e-6, "%s: stage %d unbalanced", tag, s);
    }
}

static void sweep(void) {
    static const int kvs[] = { 1, 2, 3, 4, 8 }, groups[] = { 1, 2, 3, 4 }, hds[] = { 8, 64, 128 };
    static const int blocks[] = { 1, 32 }, ffns[] = { 172, 256, 768, 5632 };
    char tag[160];
    for (size_t a = 0; a < sizeof kvs / sizeof *kvs; a++)
        for (size_t b = 0; b < sizeof groups / sizeof *groups; b++)
            for (size_t c = 0; c < sizeof hds / sizeof *hds; c++)
                for (size_t d = 0; d < sizeof blocks / sizeof *blocks; d++)
                    for (size_t e = 0; e < sizeof ffns / sizeof *ffns; e++) {
                        if (ffns[e] % blocks[d]) continue; /* not a valid GGUF */
                        struct shoal_model_shape m = {
                            .n_layers = 5, .n_kv_heads = kvs[a], .n_heads = kvs[a] * groups[b],
                            .head_dim = hds[c], .ffn_dim = ffns[e], .n_vocab = 512,
                            .wo_block = blocks[d], .down_block = blocks[d],
                            .layer_bytes = 1000, .output_bytes = 700 };
                        m.dim = m.n_heads * m.head_dim;
                        for (int tp = 1; tp <= 8; tp++)
                            for (int pp = 1; pp <= 6; pp++) {
                                snprintf(tag, sizeof tag, "kv %d g %d hd %d blk %d ffn %d tp %d pp %d",
                                         kvs[a], groups[b], hds[c], blocks[d], ffns[e], tp, pp);
                                struct shoal_plan_params pr = { .tp = tp, .pp = pp };
                                struct shoal_plan *p = NULL;
                                shoal_status rc = shoal_plan_make(&p, &m, &pr);
                                if (rc == SHOAL_OK) {
                                    n_plans++;
                                    check_plan(&m, p, NULL, tag);
                                } else {
                                    n_refused++;
                                    CHECK(rc == SHOAL_INVALID, "%s: status %d", tag, rc);
                                    const char *msg = shoal_last_error();
                                    CHECK(strstr(msg, pp > m.n_layers ? "--pp 5 or fewer" : "sizes that work: 1"),
                                          "%s: message '%s'", tag, msg);
                                }
                                shoal_plan_destroy(p);
                            }
                    }
}

/* A rank's parameters in one layer: Q and attention-output per query head, K and V per
 * KV head, gate, up and down per FFN unit. */
static double layer_params(const struct shoal_model_shape *m, const struct shoal_rank_part *r) {
    return 2.0 * m->head_dim * m->dim * ((r->q1 - r->q0) + (r->kv1 - r->kv0)) +
           3.0 * m->dim * (r->ff1 - r->ff0);
}

static void specific(void) {
    /* stories260K: 8 heads in 4 KV groups, head 8, FFN 172, f32 */
    struct shoal_model_shape m = { .n_layers = 5, .dim = 64, .n_heads = 8, .n_kv_heads = 4,
                                   .head_dim = 8, .ffn_dim = 172, .n_vocab = 512, .wo_block = 1,
                                   .down_block = 1, .layer_bytes = 100, .output_bytes = 0 };
    struct shoal_plan *p = NULL;
    struct shoal_plan_params pr = { .tp = 2, .pp = 1 };
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        CHECK(p->part[0].q1 == 4 && p->part[1].kv0 == 2 && p->part[0].ff1 == 86, "stories tp 2");
        shoal_plan_destroy(p);
    }
    /* SmolLM2-like: 9 query heads in 3 KV groups over 2 ranks: 2 groups + 1 */
    m = (struct shoal_model_shape){ .n_layers = 30, .dim = 576, .n_heads = 9, .n_kv_heads = 3,
                                    .head_dim = 64, .ffn_dim = 1536, .n_vocab = 49152,
                                    .wo_block = 32, .down_block = 32, .layer_bytes = 1, .output_bytes = 0 };
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        CHECK(p->part[0].kv1 - p->part[0].kv0 + p->part[1].kv1 - p->part[1].kv0 == 3 &&
                  abs((p->part[0].kv1 - p->part[0].kv0) - (p->part[1].kv1 - p->part[1].kv0)) == 1,
              "3 KV groups over 2 ranks: %d + %d", p->part[0].kv1 - p->part[0].kv0, p->part[1].kv1 - p->part[1].kv0);
        check_plan(&m, p, NULL, "smollm tp2");
        /* the FFN evens out the totals: the rank with one group takes more of it */
        double c0 = layer_params(&m, &p->part[0]), c1 = layer_params(&m, &p->part[1]);
        CHECK(p->part[1].ff1 - p->part[1].ff0 > p->part[0].ff1 - p->part[0].ff0 &&
                  fabs(c0 - c1) <= 3.0 * m.dim * m.down_block,
              "smollm tp2: per-layer parameters %.0f vs %.0f (FFN %d-%d | %d-%d)", c0, c1,
              p->part[0].ff0, p->part[0].ff1, p->part[1].ff0, p->part[1].ff1);
        shoal_plan_destroy(p);
    }
    /* weighted: 2:1 */
    double w[2] = { 2, 1 };
    pr.tp_weights = w;
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        CHECK(p->part[0].kv1 - p->part[0].kv0 == 2, "2:1 weights give the first rank 2 of 3 KV groups");
        check_plan(&m, p, w, "smollm weighted");
        double c0 = layer_params(&m, &p->part[0]), c1 = layer_params(&m, &p->part[1]);
        CHECK(fabs(c0 - 2 * c1) <= 2 * 3.0 * m.dim * m.down_block,
              "smollm 2:1: per-layer parameters %.0f vs %.0f", c0, c1);
        shoal_plan_destroy(p);
    }
    pr.tp_weights = NULL;
    /* more ranks than KV heads: they share the groups, unevenly where they must (4 ranks over
     * 3 groups of 3 query heads: two on the first, with 2 and 1 of its heads and each a copy
     * of its KV head; one on each of the others) */
    pr.tp = 4;
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        check_plan(&m, p, NULL, "smollm tp4");
        const struct shoal_rank_part *r = p->part;
        CHECK(r[0].kv0 == 0 && r[0].kv1 == 1 && r[1].kv0 == 0 && r[1].kv1 == 1 && r[0].q0 == 0 && r[0].q1 == 2 &&
                  r[1].q0 == 2 && r[1].q1 == 3 && r[2].q0 == 3 && r[2].q1 == 6 && r[3].q0 == 6 && r[3].q1 == 9,
              "smollm tp4: q %d-%d %d-%d %d-%d %d-%d", r[0].q0, r[0].q1, r[1].q0, r[1].q1, r[2].q0, r[2].q1,
              r[3].q0, r[3].q1);
        shoal_plan_destroy(p);
    }
    /* more ranks than query heads: refused, alternatives listed */
    pr.tp = 10;
    CHECK(shoal_plan_make(&p, &m, &pr) == SHOAL_INVALID, "tp 10 over 9 query heads accepted");
    CHECK(strstr(shoal_last_error(), "10 ranks cannot share 9 query heads") &&
              strstr(shoal_last_error(), "sizes that work: 1, 2, 3, 4, 5, 6, 7, 8, 9"),
          "message: %s", shoal_last_error());
    /* a split off the quantization blocks: head size 8 and q4_0 attn_output */
    m = (struct shoal_model_shape){ .n_layers = 2, .dim = 64, .n_heads = 8, .n_kv_heads = 8,
                                    .head_dim = 8, .ffn_dim = 256, .n_vocab = 300,
                                    .wo_block = 32, .down_block = 32, .layer_bytes = 1 };
    pr.tp = 8;
    CHECK(shoal_plan_make(&p, &m, &pr) == SHOAL_INVALID, "off-block split accepted");
    CHECK(strstr(shoal_last_error(), "quantization blocks") && strstr(shoal_last_error(), "1, 2"),
          "message: %s", shoal_last_error());
    /* stage weights: a stage twice as fast takes about twice the layers */
    m.n_layers = 30;
    double sw[2] = { 2, 1 };
    pr = (struct shoal_plan_params){ .tp = 1, .pp = 2, .pp_weights = sw };
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        CHECK(p->part[0].layer1 == 20, "2:1 stages split 30 layers at %d", p->part[0].layer1);
        shoal_plan_destroy(p);
    }
    /* the output head counts against the last stage */
    m.output_bytes = 4;
    pr.pp_weights = NULL;
    CHECK_OK(shoal_plan_make(&p, &m, &pr));
    if (p) {
        CHECK(p->part[0].layer1 == 17, "head bytes move layers forward: split at %d", p->part[0].layer1);
        shoal_plan_destroy(p);
    }
    /* split_units: every part at least one, proportional, exact sum */
    int b[9];
    double uw[8] = { 100, 1, 1, 1, 1, 1, 1, 1 };
    shoal_split_units(10, 8, uw, b);
    CHECK(b[8] == 10 && b[1] - b[0] == 3, "skewed split: first gets %d", b[1] - b[0]);
    for (int i = 0; i < 8; i++) CHECK(b[i + 1] > b[i], "part %d empty", i);
}

/* Experts: shared by default (every rank all of them, its units of each); whole with ep,
 * in runs proportional to the weights, every unit of each; refused where they cannot be. */
static void experts(void) {
    struct shoal_model_shape m = { .n_layers = 48, .dim = 2048, .n_heads = 32, .n_kv_heads = 4, .head_dim = 128,
                                   .ffn_dim = 768, .n_vocab = 151936, .wo_block = 32, .down_block = 256,
                                   .layer_bytes = 1, .n_expert = 128, .n_expert_used = 8 };
    struct shoal_plan *p = NULL;
    CHECK_OK(shoal_plan_make(&p, &m, &(struct shoal_plan_params){ .tp = 3, .pp = 2 }));
    for (int r = 0; p && r < p->n_ranks; r++)
        CHECK(p->part[r].x0 == 0 && p->part[r].x1 == 128 && p->part[r].ff1 - p->part[r].ff0 == 256,
              "shared: rank %d experts %d-%d, units %d-%d", r, p->part[r].x0, p->part[r].x1, p->part[r].ff0,
              p->part[r].ff1);
    if (p) check_plan(&m, p, NULL, "moe tp 3 x pp 2");
    shoal_plan_destroy(p);
    p = NULL;
    const double w[3] = { 2, 1, 1 };
    CHECK_OK(shoal_plan_make(&p, &m, &(struct shoal_plan_params){ .tp = 3, .pp = 2, .ep = 1, .tp_weights = w }));
    for (int s = 0; p && s < 2; s++) {
        int at = 0;
        for (int t = 0; t < 3; t++) {
            const struct shoal_rank_part *r = &p->part[s * 3 + t];
            CHECK(r->x0 == at && r->x1 > r->x0 && r->ff0 == 0 && r->ff1 == 768, "ep: rank %d experts %d-%d, units %d-%d",
                  r->rank, r->x0, r->x1, r->ff0, r->ff1);
            at = r->x1;
        }
        CHECK(at == 128 && p->part[s * 3].x1 == 64, "ep: every expert once, the first rank twice the others' (%d)",
              p->part[s * 3].x1);
    }
    CHECK(p && p->ep, "the plan says ep");
    shoal_plan_destroy(p);
    p = NULL;
    m.n_expert = 2;
    CHECK(shoal_plan_make(&p, &m, &(struct shoal_plan_params){ .tp = 4, .pp = 1, .ep = 1 }) == SHOAL_INVALID &&
              strstr(shoal_last_error(), "2 experts"), "4 ranks, 2 experts whole: %s", shoal_last_error());
    m.n_expert = 0;
    CHECK(shoal_plan_make(&p, &m, &(struct shoal_plan_params){ .tp = 2, .pp = 1, .ep = 1 }) == SHOAL_INVALID &&
              strstr(shoal_last_error(), "no"), "ep without experts: %s", shoal_last_error());
    shoal_error_clear();
}

int main(void) {
    sweep();
    specific();
    experts();
    printf("%d plans checked, %d refused with alternatives\n", n_plans, n_refused);
    CHECK(n_plans > 1000 && n_refused > 100, "the sweep should both make and refuse plans");
    return check_done("test_plan");
}
