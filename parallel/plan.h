/*
 * parallel — the plan: which rank holds which part of the model, as pure
 * data (no I/O, no MPI), so that it can be tested exhaustively.
 *
 * Ranks = tp x pp; rank = stage * tp + tp_rank, so consecutive ranks form a
 * tensor-parallel group. Within a stage (Megatron-LM's scheme):
 *   - Q, K, V are split by output rows at KV-group granularity: a rank takes
 *     whole KV heads with their query heads. With more ranks than KV heads,
 *     each KV head is held by tp / n_kv ranks, which share its query heads.
 *   - attention output is split by input columns to match (row-parallel);
 *   - FFN gate/up by output rows and down by input columns, in units of
 *     down's quantization block, in shares that even out each rank's total
 *     (attention, which comes in whole KV groups, plus FFN) in proportion
 *     to its weight;
 *   - the output head by vocabulary rows; norms are replicated;
 *   - a mixture of experts' FFN: by default each expert as the FFN above
 *     (every rank its share of every expert's units), or with ep whole
 *     experts spread over the group's ranks; the router is replicated.
 * Shares may be uneven and may be weighted. Layers are cut into pp
 * contiguous stages balanced by bytes (the last stage also carries the
 * output head), weighted for unequal hosts.
 *
 * A plan that cannot be made is refused with a message that says what
 * would work.
 */
#ifndef SHOAL_PLAN_H
#define SHOAL_PLAN_H

#include <stdint.h>
#include <stdio.h>

#include "../base/base.h"

/* What the plan needs to know of a model. */
struct shoal_model_shape {
    int n_layers, dim, n_heads, n_kv_heads, head_dim, ffn_dim, n_vocab;
    int wo_block;        /* values per quantization block of attn_output's rows (1: float) */
    int down_block;      /* likewise for ffn_down */
    double layer_bytes;  /* weight bytes of one layer */
    double output_bytes; /* of the output head (read every token by the last stage) */
    /* the same bytes by unit of the split, averaged over the layers (for the cost model) */
    double q_head_bytes;   /* one query head's Q rows and attention-output columns (and bias) */
    double kv_head_bytes;  /* one KV head's K and V rows (and biases) */
    double ffn_unit_bytes; /* one FFN unit's gate and up rows and down column */
    double norm_bytes;     /* a layer's norm weights (every rank holds them) */
    double embd_bytes;     /* the embedding table (a lookup: mapped, mostly not read) */
    int tied_head;         /* the output head is the embedding table */
    int swa_window, swa_period; /* windowed layers (shoal_windowed_layer), or 0 */
    /* a mixture of experts (0: a dense FFN): ffn_dim and ffn_unit_bytes are an expert's, ffn_unit_bytes
     * summed over the experts (what a rank holds), of which a token reads n_expert_used / n_expert */
    int n_expert, n_expert_used;
};

/* Whether layer l attends to a window: with a period, all but each period-th layer; 0: all. */
static inline int shoal_windowed_layer(int window, int period, int l) {
    return window > 0 && (period == 0 || (l + 1) % period != 0);
}

/*
 * A windowed layer's cache: a ring per sequence (rings of them: 1 where the
 * runs hold one sequence, shoal run; the most sequences a step holds in a
 * paged cache, shoal serve), each of the window and a batch's tokens, less
 * one; 0 (the whole context) when the rings would not take less, or rings 0.
 */
static inline int shoal_ring_slots(int window, int n_ctx, int n_batch, int rings) {
    if (rings < 1 || window <= 0 || n_ctx < 1 || n_batch < 1) return 0;
    const long long ring = (long long)window + (n_batch < n_ctx ? n_batch : n_ctx) - 1;
    return ring * rings < n_ctx ? (int)ring : 0;
}

/* What one rank holds. Ranges are half-open. */
struct shoal_rank_part {
    int rank, stage, tp_rank;
    int layer0, layer1; /* the stage's layers */
    int q0, q1;         /* query heads */
    int kv0, kv1;       /* KV heads (shared with other ranks when tp > n_kv_heads) */
    int ff0, ff1;       /* FFN hidden units (of each expert it holds) */
    int x0, x1;         /* experts (0, 0 without) */
    int v0, v1;         /* output-head rows (vocabulary); empty before the last stage */
    int first, last;    /* first / last pipeline stage */
};

struct shoal_plan {
    int tp, pp, n_ranks;
    int ep; /* experts whole over each stage's tp ranks (expert parallel), not shared */
    struct shoal_rank_part *part; /* (n_ranks) */
};

struct shoal_plan_params {
    int tp, pp;
    const double *tp_weights; /* (tp) relative speeds of a stage's ranks, or NULL: equal */
    const double *pp_weights; /* (pp) relative speeds of the stages, or NULL: equal */
    int ep; /* a mixture of experts' experts whole over each stage's tp ranks (expert parallel) */
};

/*
 * Makes the plan. On success *out is owned by the caller (shoal_plan_destroy).
 * SHOAL_INVALID with a message that says what would work when the model
 * cannot be split so.
 */
shoal_status shoal_plan_make(struct shoal_plan **out, const struct shoal_model_shape *m,
                             const struct shoal_plan_params *p);
void shoal_plan_destroy(struct shoal_plan *p);

/* One line per rank: what it holds. */
void shoal_plan_print(FILE *f, const struct shoal_plan *p);

/*
 * Splits total units into n contiguous parts in proportion to weights (NULL:
 * equal), each at least one unit (total >= n), by largest remainder:
 * bounds[0] = 0 <= ... <= bounds[n] = total. Exposed for tests.
 */
void shoal_split_units(int total, int n, const double *weights, int *bounds);

#endif
