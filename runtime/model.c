/*
 * model.c — hyperparameters, weight loading and the forward pass (model.h).
 *
 * The forward pass is the LLaMA block: RMSNorm, Q/K/V projections (with
 * biases for qwen2), RoPE, grouped-query attention over the KV cache, the
 * output projection and residual; RMSNorm, the SwiGLU FFN and residual; the
 * final norm and the output head. Every step is one backend op; with
 * tensor parallelism the attention output and FFN down projections are
 * partial sums, all-reduced over the group, and the output head's
 * vocabulary slices are gathered on the group's first rank. How the steps
 * reach each rank is dist.c's business.
 */
#include "model.h"

#include <inttypes.h>
#include "../comm/comm.h"
#include "../shard/shard.h"
#include "forward.h"
#include <math.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------- hyperparameters */

static shoal_status get_dim(const struct shoal_gguf *g, const char *arch, const char *key,
                            int required, int lo, int hi, int *out) {
    char full[128];
    snprintf(full, sizeof full, "%s.%s", arch, key);
    uint32_t v = (uint32_t)*out;
    if (required) SHOAL_TRY(shoal_gguf_get_u32(g, full, &v));
    else SHOAL_TRY(shoal_gguf_get_u32_opt(g, full, &v));
    if ((int64_t)v < lo || (int64_t)v > hi)
        return shoal_errorf(SHOAL_FORMAT, "%s: %s = %u is outside the range %d..%d", g->path, full,
                            v, lo, hi);
    *out = (int)v;
    return SHOAL_OK;
}

shoal_status shoal_hparams_read(struct shoal_hparams *hp, const struct shoal_gguf *g) {
    memset(hp, 0, sizeof *hp);
    const char *s;
    size_t len;
    SHOAL_TRY(shoal_gguf_get_str(g, "general.architecture", &s, &len));
    if (len >= sizeof hp->arch) len = sizeof hp->arch - 1;
    memcpy(hp->arch, s, len);
    const struct shoal_arch *ai = shoal_arch_find(hp->arch);
    if (!ai) {
        char names[256];
        return shoal_errorf(SHOAL_UNSUPPORTED, "%s: architecture '%s' is not supported (shoal runs %s)",
                            g->path, hp->arch, shoal_arch_names(names, sizeof names));
    }
    hp->fam = ai;
    const char *base = strrchr(g->path, '/');
    snprintf(hp->name, sizeof hp->name, "%s", base ? base + 1 : g->path);
    if (shoal_gguf_get_str_opt(g, "general.name", &s, &len) == SHOAL_OK && s && len)
        snprintf(hp->name, sizeof hp->name, "%.*s", (int)(len < 95 ? len : 95), s);

    const char *a = hp->arch;
    SHOAL_TRY(get_dim(g, a, "embedding_length", 1, 1, 1 << 20, &hp->dim));
    SHOAL_TRY(get_dim(g, a, "block_count", 1, 1, 4096, &hp->n_layers));
    SHOAL_TRY(get_dim(g, a, "feed_forward_length", 1, 1, 1 << 22, &hp->ffn_dim));
    SHOAL_TRY(get_dim(g, a, "attention.head_count", 1, 1, 4096, &hp->n_heads));
    hp->n_kv_heads = hp->n_heads;
    SHOAL_TRY(get_dim(g, a, "attention.head_count_kv", 0, 1, hp->n_heads, &hp->n_kv_heads));
    hp->n_ctx_train = 2048;
    SHOAL_TRY(get_dim(g, a, "context_length", 0, 1, 1 << 24, &hp->n_ctx_train));
    hp->head_dim = 0;
    SHOAL_TRY(get_dim(g, a, "attention.key_length", 0, 0, 1024, &hp->head_dim));
    if (hp->head_dim == 0) {
        if (hp->dim % hp->n_heads)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: embedding_length %d is not a multiple of head_count %d (and "
                                "no attention.key_length says the head size)",
                                g->path, hp->dim, hp->n_heads);
        hp->head_dim = hp->dim / hp->n_heads;
    }
    int vdim = hp->head_dim;
    SHOAL_TRY(get_dim(g, a, "attention.value_length", 0, 1, 1024, &vdim));
    if (vdim != hp->head_dim)
        return shoal_errorf(SHOAL_UNSUPPORTED, "%s: key_length %d != value_length %d",
                            g->path, hp->head_dim, vdim);
    if (hp->n_heads % hp->n_kv_heads)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: head_count %d is not a multiple of head_count_kv %d", g->path,
                            hp->n_heads, hp->n_kv_heads);
    hp->rope.mode = ai->rope_mode;
    hp->rope.rope_dim = hp->head_dim;
    SHOAL_TRY(get_dim(g, a, "rope.dimension_count", 0, 2, hp->head_dim, &hp->rope.rope_dim));
    if (hp->rope.rope_dim % 2)
        return shoal_errorf(SHOAL_FORMAT, "%s: rope.dimension_count %d is odd", g->path,
                            hp->rope.rope_dim);
    char key[128];
    hp->rope.freq_base = 10000.0f;
    snprintf(key, sizeof key, "%s.rope.freq_base", a);
    SHOAL_TRY(shoal_gguf_get_f32_opt(g, key, &hp->rope.freq_base));
    hp->rope.freq_scale = 1.0f;
    snprintf(key, sizeof key, "%s.rope.scaling.type", a);
    if (shoal_gguf_get_str_opt(g, key, &s, &len) == SHOAL_OK && s) {
        float factor = 1.0f;
        snprintf(key, sizeof key, "%s.rope.scaling.factor", a);
        SHOAL_TRY(shoal_gguf_get_f32_opt(g, key, &factor));
        if (len == 6 && memcmp(s, "linear", 6) == 0) {
            if (!(factor > 0)) return shoal_errorf(SHOAL_FORMAT, "%s: %s must be > 0", g->path, key);
            hp->rope.freq_scale = 1.0f / factor;
        } else if (!(len == 4 && memcmp(s, "none", 4) == 0) && factor != 1.0f) {
            return shoal_errorf(SHOAL_UNSUPPORTED, "%s: rope scaling '%.*s' is not supported",
                                g->path, (int)len, s);
        }
    }
    hp->rms_eps = 1e-5f;
    snprintf(key, sizeof key, "%s.attention.layer_norm_rms_epsilon", a);
    SHOAL_TRY(shoal_gguf_get_f32_opt(g, key, &hp->rms_eps));
    if (!(hp->rms_eps > 0 && hp->rms_eps < 1))
        return shoal_errorf(SHOAL_FORMAT, "%s: %s = %g is not a sensible epsilon", g->path, key,
                            hp->rms_eps);
    hp->has_qkv_bias = ai->qkv_bias;
    hp->attn_scale = 1.0f / sqrtf((float)hp->head_dim);
    hp->embd_scale = ai->embd_scale ? sqrtf((float)hp->dim) : 1.0f;
    hp->rope_swa = (struct shoal_rope){ hp->rope.mode, hp->rope.rope_dim, ai->swa_rope_base, 1.0f, NULL };
    if (ai->swa_period)
        SHOAL_TRY(get_dim(g, a, "attention.sliding_window", 0, 0, 1 << 24, &hp->swa_window));
    SHOAL_TRY(get_dim(g, a, "expert_count", 0, 0, SHOAL_EXPERTS_MAX, &hp->n_expert));
    if (hp->n_expert) SHOAL_TRY(get_dim(g, a, "expert_used_count", 1, 1, hp->n_expert, &hp->n_expert_used));
    if (ai->read) SHOAL_TRY(ai->read(hp, g));

    /* a rank's shard (shoal shard) holds a slice of the vocabulary, or none of it */
    uint32_t shard_vocab = 0;
    SHOAL_TRY(shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_N_VOCAB, &shard_vocab));
    if (shard_vocab) {
        int tied = 0;
        SHOAL_TRY(shoal_gguf_get_bool_opt(g, SHOAL_SHARD_KEY_TIED, &tied));
        if (shard_vocab > (1u << 24))
            return shoal_errorf(SHOAL_FORMAT, "%s: %s = %u is not a vocabulary size", g->path,
                                SHOAL_SHARD_KEY_N_VOCAB, shard_vocab);
        hp->n_vocab = (int)shard_vocab;
        hp->tied_output = tied;
        hp->sharded = 1;
        return SHOAL_OK;
    }
    const struct shoal_gguf_tensor *emb = shoal_gguf_find_tensor(g, "token_embd.weight");
    if (!emb)
        return shoal_errorf(SHOAL_FORMAT, "%s: required tensor 'token_embd.weight' is missing",
                            g->path);
    if (emb->n_dims != 2 || emb->ne[0] != hp->dim || emb->ne[1] < 1 || emb->ne[1] > (1 << 24))
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: token_embd.weight has shape [%" PRId64 ", %" PRId64
                            "], expected [%d, n_vocab]",
                            g->path, emb->ne[0], emb->ne[1], hp->dim);
    hp->n_vocab = (int)emb->ne[1];
    hp->tied_output = shoal_gguf_find_tensor(g, "output.weight") == NULL;
    return SHOAL_OK;
}

int shoal_layer_windowed(const struct shoal_hparams *hp, int l) {
    return shoal_windowed_layer(hp->swa_window, hp->fam ? hp->fam->swa_period : 0, l);
}

/* ---------------------------------------------------------------- slices */

/* How a layer tensor is cut: which of its dimensions follows the plan. */
enum cut {
    ROWS_Q, ROWS_KV, COLS_Q, ROWS_FF, COLS_FF, WHOLE_DIM, VEC_Q, VEC_KV, WHOLE_HEAD,
    ROUTER,                 /* (n_expert, dim), whole */
    X_ROWS_FF, X_COLS_FF,   /* 3-D: one slice per expert the rank holds, cut as ROWS_FF, COLS_FF */
};
/* Which families have a tensor (arch.h): all, those with the switch, or by their FFN. */
enum need { ALL, QKV_BIAS, QK_NORM, POST_NORMS, DENSE, EXPERTS };

static const struct layer_tensor {
    const char *suffix;
    enum cut cut;
    size_t field; /* offsetof(struct shoal_layer, ...): a struct shoal_weight, or a float * for vectors */
    enum need need;
} layer_tensors[] = {
    { "attn_q.weight", ROWS_Q, offsetof(struct shoal_layer, wq), ALL },
    { "attn_k.weight", ROWS_KV, offsetof(struct shoal_layer, wk), ALL },
    { "attn_v.weight", ROWS_KV, offsetof(struct shoal_layer, wv), ALL },
    { "attn_output.weight", COLS_Q, offsetof(struct shoal_layer, wo), ALL },
    { "ffn_gate.weight", ROWS_FF, offsetof(struct shoal_layer, gate), DENSE },
    { "ffn_up.weight", ROWS_FF, offsetof(struct shoal_layer, up), DENSE },
    { "ffn_down.weight", COLS_FF, offsetof(struct shoal_layer, down), DENSE },
    { "ffn_gate_inp.weight", ROUTER, offsetof(struct shoal_layer, router), EXPERTS },
    /* an expert's weight: field is a struct shoal_weight * of the rank's experts */
    { "ffn_gate_exps.weight", X_ROWS_FF, offsetof(struct shoal_layer, xgate), EXPERTS },
    { "ffn_up_exps.weight", X_ROWS_FF, offsetof(struct shoal_layer, xup), EXPERTS },
    { "ffn_down_exps.weight", X_COLS_FF, offsetof(struct shoal_layer, xdown), EXPERTS },
    { "attn_norm.weight", WHOLE_DIM, offsetof(struct shoal_layer, attn_norm), ALL },
    { "ffn_norm.weight", WHOLE_DIM, offsetof(struct shoal_layer, ffn_norm), ALL },
    { "attn_q.bias", VEC_Q, offsetof(struct shoal_layer, bq), QKV_BIAS },
    { "attn_k.bias", VEC_KV, offsetof(struct shoal_layer, bk), QKV_BIAS },
    { "attn_v.bias", VEC_KV, offsetof(struct shoal_layer, bv), QKV_BIAS },
    { "attn_q_norm.weight", WHOLE_HEAD, offsetof(struct shoal_layer, q_norm), QK_NORM },
    { "attn_k_norm.weight", WHOLE_HEAD, offsetof(struct shoal_layer, k_norm), QK_NORM },
    { "post_attention_norm.weight", WHOLE_DIM, offsetof(struct shoal_layer, post_attn_norm), POST_NORMS },
    { "post_ffw_norm.weight", WHOLE_DIM, offsetof(struct shoal_layer, post_ffn_norm), POST_NORMS },
};
#define N_LAYER_TENSORS (sizeof layer_tensors / sizeof layer_tensors[0])

/* Whether the model's family has a layer tensor. */
static int has_tensor(const struct shoal_hparams *hp, const struct layer_tensor *lt) {
    switch (lt->need) {
    case QKV_BIAS: return hp->has_qkv_bias;
    case QK_NORM: return hp->fam && hp->fam->qk_norm;
    case POST_NORMS: return hp->fam && hp->fam->post_norms;
    case DENSE: return !hp->n_expert;
    case EXPERTS: return hp->n_expert > 0;
    default: return 1;
    }
}

static int is_expert(enum cut c) { return c == X_ROWS_FF || c == X_COLS_FF; }

/* Slices of a layer tensor on a rank: one per expert it holds for an expert's weight. */
static int tensor_slices(const struct layer_tensor *lt, const struct shoal_rank_part *pt) {
    return is_expert(lt->cut) ? pt->x1 - pt->x0 : 1;
}

/* The weight of layer L that matrix tensor lt's slice e (an expert's, of the rank's) is loaded into. */
static struct shoal_weight *tensor_weight(struct shoal_layer *L, const struct layer_tensor *lt, int e) {
    return is_expert(lt->cut) ? *(struct shoal_weight **)((char *)L + lt->field) + e
                              : (struct shoal_weight *)((char *)L + lt->field);
}

static int is_matrix(enum cut c) {
    return c == ROWS_Q || c == ROWS_KV || c == COLS_Q || c == ROWS_FF || c == COLS_FF || c == ROUTER || is_expert(c);
}

/* Layer L's matrices into ws (NULL: only counted), in the order of its slices; their count. */
static int layer_weights(const struct shoal_hparams *hp, const struct shoal_rank_part *pt, struct shoal_layer *L,
                         struct shoal_weight **ws) {
    int n = 0;
    for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
        const struct layer_tensor *lt = &layer_tensors[k];
        if (!has_tensor(hp, lt) || !is_matrix(lt->cut)) continue;
        for (int e = 0; e < tensor_slices(lt, pt); e++, n++)
            if (ws) ws[n] = tensor_weight(L, lt, e);
    }
    return n;
}

/* Slice e of layer l's tensor lt (e: the expert, for an expert's weight). */
static void layer_slice(const struct shoal_hparams *hp, const struct shoal_rank_part *pt, int l,
                        const struct layer_tensor *lt, int e, struct shoal_slice *s) {
    const int64_t hd = hp->head_dim, dim = hp->dim, ff = hp->ffn_dim;
    const int64_t qd = (int64_t)hp->n_heads * hd, kvd = (int64_t)hp->n_kv_heads * hd;
    const int64_t q0 = pt->q0 * hd, q1 = pt->q1 * hd, k0 = pt->kv0 * hd, k1 = pt->kv1 * hd;
    switch (lt->cut) {
    case ROWS_Q: *s = (struct shoal_slice){ .rows = qd, .cols = dim, .r0 = q0, .r1 = q1, .c1 = dim }; break;
    case ROWS_KV: *s = (struct shoal_slice){ .rows = kvd, .cols = dim, .r0 = k0, .r1 = k1, .c1 = dim }; break;
    case COLS_Q: *s = (struct shoal_slice){ .rows = dim, .cols = qd, .r1 = dim, .c0 = q0, .c1 = q1 }; break;
    case ROWS_FF: *s = (struct shoal_slice){ .rows = ff, .cols = dim, .r0 = pt->ff0, .r1 = pt->ff1, .c1 = dim }; break;
    case COLS_FF: *s = (struct shoal_slice){ .rows = dim, .cols = ff, .r1 = dim, .c0 = pt->ff0, .c1 = pt->ff1 }; break;
    case WHOLE_DIM: *s = (struct shoal_slice){ .cols = dim, .c1 = dim }; break;
    case VEC_Q: *s = (struct shoal_slice){ .cols = qd, .c0 = q0, .c1 = q1 }; break;
    case VEC_KV: *s = (struct shoal_slice){ .cols = kvd, .c0 = k0, .c1 = k1 }; break;
    case WHOLE_HEAD: *s = (struct shoal_slice){ .cols = hd, .c1 = hd }; break;
    case ROUTER: *s = (struct shoal_slice){ .rows = hp->n_expert, .cols = dim, .r1 = hp->n_expert, .c1 = dim }; break;
    case X_ROWS_FF:
        *s = (struct shoal_slice){ .rows = (int64_t)hp->n_expert * ff, .cols = dim, .r0 = e * ff + pt->ff0,
                                   .r1 = e * ff + pt->ff1, .c1 = dim, .n_exp = hp->n_expert };
        break;
    case X_COLS_FF:
        *s = (struct shoal_slice){ .rows = (int64_t)hp->n_expert * dim, .cols = ff, .r0 = e * dim,
                                   .r1 = (e + 1) * dim, .c0 = pt->ff0, .c1 = pt->ff1, .n_exp = hp->n_expert };
        break;
    }
    snprintf(s->src, sizeof s->src, "blk.%d.%s", l, lt->suffix);
    if (s->n_exp) /* a shard holds each expert's slice alone: blk.L.ffn_up_exps.E.weight */
        snprintf(s->name, sizeof s->name, "blk.%d.%.*s.%d.weight", l, (int)(strlen(lt->suffix) - 7), lt->suffix, e);
    else
        memcpy(s->name, s->src, sizeof s->name);
}

/* The embedding table (first stage) and the output head with its norm (last stage). */
static int global_slices(const struct shoal_hparams *hp, const struct shoal_rank_part *pt,
                         struct shoal_slice *s) {
    int n = 0;
    if (pt->first) {
        s[n] = (struct shoal_slice){ .name = "token_embd.weight", .src = "token_embd.weight",
                                     .rows = hp->n_vocab, .cols = hp->dim, .r1 = hp->n_vocab, .c1 = hp->dim };
        n++;
    }
    if (pt->last) {
        /* a tied head is the embedding table's rows; a shard stores them as output.weight */
        s[n] = (struct shoal_slice){ .name = "output.weight", .rows = hp->n_vocab, .cols = hp->dim,
                                     .r0 = pt->v0, .r1 = pt->v1, .c1 = hp->dim };
        snprintf(s[n].src, sizeof s[n].src, "%s", hp->tied_output ? "token_embd.weight" : "output.weight");
        n++;
        s[n] = (struct shoal_slice){ .name = "output_norm.weight", .src = "output_norm.weight",
                                     .cols = hp->dim, .c1 = hp->dim };
        n++;
    }
    return n;
}

/* ----------------------------------------------------------------- shape */

/* Values per quantization block of a tensor (1 for plain types; 0 if absent). */
static int summed_f64(const struct shoal_slice *s);

/*
 * A float weight's f64 runs (struct shoal_weight's f64_block) when every
 * layout cuts its columns at multiples of unit: the longest of 256, 128 and
 * 64 columns that divides unit, else 0 (every product added in f64); for a
 * unit that is a whole FFN, the longest that still cuts it in 8 or more, so
 * that as many ranks can share it (longer runs are faster: fewer widenings).
 */
static int float_run(int type, int64_t unit, int whole) {
    if (type != SHOAL_DTYPE_F32 && type != SHOAL_DTYPE_F16 && type != SHOAL_DTYPE_BF16) return 0;
    for (int run = 256; run >= 64; run /= 2)
        if (unit > 0 && unit % run == 0 && (!whole || unit / run >= 8 || run == 64)) return run;
    return 0;
}

/*
 * The columns a row-parallel weight's splits fall on: its type's block; for
 * a float ffn_down, its f64 runs (float_run of the FFN width), so that the
 * runs of one rank are those of every layout.
 */
static int block_of(const struct shoal_gguf *g, const char *name) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
    const struct shoal_dtype_info *ti = t ? shoal_dtype_info(t->type) : NULL;
    if (ti && strstr(name, "ffn_down.weight") && t->n_dims >= 2 && float_run(t->type, (int64_t)t->ne[0], 1))
        return float_run(t->type, (int64_t)t->ne[0], 1);
    return ti ? ti->block : 0;
}

shoal_status shoal_model_shape(struct shoal_model_shape *shape, const struct shoal_gguf *g) {
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, g));
    memset(shape, 0, sizeof *shape);
    shape->n_layers = hp.n_layers;
    shape->dim = hp.dim;
    shape->n_heads = hp.n_heads;
    shape->n_kv_heads = hp.n_kv_heads;
    shape->head_dim = hp.head_dim;
    shape->ffn_dim = hp.ffn_dim;
    shape->n_vocab = hp.n_vocab;
    shape->wo_block = shape->down_block = 1;
    char name[96];
    for (int l = 0; l < hp.n_layers; l++) {
        snprintf(name, sizeof name, "blk.%d.attn_output.weight", l);
        int b = block_of(g, name);
        if (b > shape->wo_block) shape->wo_block = b;
        snprintf(name, sizeof name, hp.n_expert ? "blk.%d.ffn_down_exps.weight" : "blk.%d.ffn_down.weight", l);
        b = block_of(g, name);
        if (b > shape->down_block) shape->down_block = b;
    }
    double layers = 0, head = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        if (strncmp(t->name, "blk.", 4) == 0) layers += (double)t->nbytes;
        else if (strcmp(t->name, hp.tied_output ? "token_embd.weight" : "output.weight") == 0)
            head = (double)t->nbytes;
        if (strcmp(t->name, "token_embd.weight") == 0) shape->embd_bytes = (double)t->nbytes;
    }
    shape->layer_bytes = layers / hp.n_layers;
    shape->output_bytes = head;
    shape->tied_head = hp.tied_output;
    shape->swa_window = hp.swa_window;
    shape->swa_period = hp.fam ? hp.fam->swa_period : 0;
    shape->n_expert = hp.n_expert;
    shape->n_expert_used = hp.n_expert_used;
    /* by unit of the split: each layer tensor's bytes over the heads or units it is cut by */
    for (int l = 0; l < hp.n_layers; l++)
        for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
            const struct layer_tensor *lt = &layer_tensors[k];
            snprintf(name, sizeof name, "blk.%d.%s", l, lt->suffix);
            const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
            if (!t) continue;
            double b = (double)t->nbytes / hp.n_layers;
            switch (lt->cut) {
            case ROWS_Q: case COLS_Q: case VEC_Q: shape->q_head_bytes += b / hp.n_heads; break;
            case ROWS_KV: case VEC_KV: shape->kv_head_bytes += b / hp.n_kv_heads; break;
            case ROWS_FF: case COLS_FF: case X_ROWS_FF: case X_COLS_FF: shape->ffn_unit_bytes += b / hp.ffn_dim; break;
            case WHOLE_DIM: case WHOLE_HEAD: case ROUTER: shape->norm_bytes += b; break;
            }
        }
    return SHOAL_OK;
}

/* --------------------------------------------------------------- loading */

/* Finds a 3-D tensor of n_exp experts' (ne1 / n_exp, ne0) matrices and checks its shape. */
static shoal_status want_experts(const struct shoal_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                                 int n_exp, const struct shoal_gguf_tensor **out) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
    if (!t) return shoal_errorf(SHOAL_FORMAT, "%s: required tensor '%s' is missing", g->path, name);
    if (t->n_dims != 3 || t->ne[0] != ne0 || t->ne[1] != ne1 / n_exp || t->ne[2] != n_exp)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: tensor '%s' has shape [%" PRId64 ", %" PRId64 ", %" PRId64
                            "] (%d dims), expected [%" PRId64 ", %" PRId64 ", %d] (the experts)",
                            g->path, name, t->ne[0], t->ne[1], t->n_dims > 2 ? t->ne[2] : 1, t->n_dims, ne0,
                            ne1 / n_exp, n_exp);
    *out = t;
    return SHOAL_OK;
}

/* Finds a tensor and checks its shape: ne0 values per row, ne1 rows (0: 1-D). */
static shoal_status want(const struct shoal_gguf *g, const char *name, int64_t ne0, int64_t ne1,
                         const struct shoal_gguf_tensor **out) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
    if (!t) return shoal_errorf(SHOAL_FORMAT, "%s: required tensor '%s' is missing", g->path, name);
    int nd = ne1 ? 2 : 1;
    if (t->n_dims != nd || t->ne[0] != ne0 || (ne1 && t->ne[1] != ne1)) {
        if (ne1)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: tensor '%s' has shape [%" PRId64 ", %" PRId64
                                "] (%d dims), expected [%" PRId64 ", %" PRId64 "]",
                                g->path, name, t->ne[0], t->ne[1], t->n_dims, ne0, ne1);
        return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s' has shape [%" PRId64
                            "] (%d dims), expected [%" PRId64 "]",
                            g->path, name, t->ne[0], t->n_dims, ne0);
    }
    *out = t;
    return SHOAL_OK;
}

static int computable(int type) {
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    return ti && ti->computable;
}

/* The computable types, "f32, f16, ..., iq4_xs", into buf. */
static const char *computable_list(char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
    for (int t = 0; t < SHOAL_DTYPE_MAX && n < len; t++)
        if (computable(t)) {
            int w = snprintf(buf + n, len - n, "%s%s", n ? ", " : "", shoal_dtype_name(t));
            n += w > 0 ? (size_t)w : 0;
        }
    return buf;
}

shoal_status shoal_model_slices(const struct shoal_hparams *hp, const struct shoal_rank_part *pt,
                                struct shoal_slice **out, int *n_out) {
    int per_layer = 0;
    for (size_t i = 0; i < N_LAYER_TENSORS; i++)
        if (has_tensor(hp, &layer_tensors[i])) per_layer += tensor_slices(&layer_tensors[i], pt);
    int cap = 3 + per_layer * (pt->layer1 - pt->layer0);
    struct shoal_slice *s = calloc((size_t)cap, sizeof *s);
    if (!s) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    int n = global_slices(hp, pt, s);
    for (int l = pt->layer0; l < pt->layer1; l++)
        for (size_t i = 0; i < N_LAYER_TENSORS; i++)
            for (int k = 0; has_tensor(hp, &layer_tensors[i]) && k < tensor_slices(&layer_tensors[i], pt); k++)
                layer_slice(hp, pt, l, &layer_tensors[i], pt->x0 + k, &s[n++]);
    *out = s;
    *n_out = n;
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- loading */

/*
 * The tensor a slice reads: in a GGUF, the whole source tensor; in a rank's
 * shard, the slice itself under its shard name.
 */
static shoal_status find_slice(const struct shoal_model *m, const struct shoal_slice *s,
                               const struct shoal_gguf_tensor **t) {
    if (m->hp.sharded) return want(m->g, s->name, s->c1 - s->c0, s->rows ? s->r1 - s->r0 : 0, t);
    if (s->n_exp) return want_experts(m->g, s->src, s->cols, s->rows, s->n_exp, t);
    return want(m->g, s->src, s->cols, s->rows, t);
}

/* Device bytes of a prepared weight in the model's weight block, padded to 256. */
static size_t weight_block_bytes(const struct shoal_model *m, int type, int64_t rows, int64_t cols) {
    return (shoal_weight_bytes(m->be, type, rows, cols) + 255) / 256 * 256;
}

/* The slice's device bytes in the weight block (0 for a vector or a bad tensor). */
static size_t slice_device_bytes(const struct shoal_model *m, const struct shoal_slice *s) {
    const struct shoal_gguf_tensor *t = NULL;
    if (!m->be || !s->rows || find_slice(m, s, &t) != SHOAL_OK) return 0;
    return weight_block_bytes(m, t->type, s->r1 - s->r0, s->c1 - s->c0);
}

/* Whether a lookup table (load_part's lookup) stays in host memory as the file's rows. */
static int lookup_in_place(const struct shoal_model *m, int lookup) {
    return lookup && m->be && shoal_backend_host_memory(m->be);
}

/*
 * A matrix slice. Rows of all the columns are used in place; a column slice
 * of a whole GGUF is read from the file into the model's slice block at *at
 * (advanced); where the backend's memory is the host's and it copies the
 * weight anyway (packs it), the rows are read straight into the weight's
 * place at *dev instead. lookup: a table only embedding reads
 * (shoal_weight_lookup). A check (no backend) only validates.
 */
static shoal_status load_part(struct shoal_model *m, const struct shoal_slice *s,
                              struct shoal_weight *w, char **at, char **dev,
                              struct shoal_stream_tensor *st, size_t *st_off, int lookup) {
    const struct shoal_gguf_tensor *t = NULL;
    SHOAL_TRY(find_slice(m, s, &t));
    const char *name = t->name;
    if (!computable(t->type)) {
        char types[256];
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "%s: tensor '%s' is %s, which shoal cannot compute with yet "
                            "(supported: %s)",
                            m->g->path, name, shoal_dtype_name(t->type), computable_list(types, sizeof types));
    }
    const struct shoal_dtype_info *ti = shoal_dtype_info(t->type);
    if (s->c0 % ti->block || (s->c1 - s->c0) % ti->block)
        return shoal_errorf(SHOAL_INVALID,
                            "%s: tensor '%s': columns %" PRId64 "-%" PRId64
                            " are off its %d-value %s blocks",
                            m->g->path, name, s->c0, s->c1 - 1, ti->block, ti->name);
    const int64_t r0 = s->r0, r1 = s->r1, c0 = s->c0, c1 = s->c1, cols = m->hp.sharded ? c1 - c0 : s->cols;
    size_t rb = shoal_dtype_row_bytes(t->type, cols), lb = shoal_dtype_row_bytes(t->type, c1 - c0);
    const char *host = (const char *)t->data + (m->hp.sharded ? 0 : (size_t)r0 * rb);
    const size_t bytes = m->be && !lookup_in_place(m, lookup) ? weight_block_bytes(m, t->type, r1 - r0, c1 - c0) : 0;
    /*
     * A backend whose memory is the host's and that still copies the weight (a CPU
     * level packing it): the rows are read from the file into the weight's place and
     * packed there, so that neither the map's pages nor a copy stay in memory.
     */
    const int into_dev = bytes >= (size_t)(r1 - r0) * lb && !st && shoal_backend_host_memory(m->be);
    if (c1 - c0 != cols || into_dev) {
        char *to = into_dev ? *dev : *at;
        const size_t off = shoal_dtype_row_bytes(t->type, c0);
        if (c1 - c0 == cols) /* whole rows: one read */
            SHOAL_TRY(shoal_gguf_read(m->g, host, to, (size_t)(r1 - r0) * lb));
        for (int64_t r = r0; c1 - c0 != cols && m->be && r < r1; r++)
            SHOAL_TRY(shoal_gguf_read(m->g, (const char *)t->data + (size_t)r * rb + off,
                                      to + (size_t)(r - r0) * lb, lb));
        host = to;
        if (c1 - c0 != cols) *at += (size_t)(r1 - r0) * lb; /* (unused when read into dev) */
    }
    m->weight_bytes += (uint64_t)(r1 - r0) * lb;
    m->n_params += (uint64_t)(r1 - r0) * (uint64_t)(c1 - c0);
    if (!m->be) return SHOAL_OK;
    /* a float row-parallel projection's f64 runs: the same on every layout (block_of), unless
     * its columns here are cut off them (shards cut by an older plan: every product in f64) */
    int run = 0;
    if (summed_f64(s) && !strstr(name, "_exps"))
        run = strstr(name, "attn_output") ? float_run(t->type, m->hp.head_dim, 0)
                                          : float_run(t->type, m->hp.ffn_dim, 1);
    if (run && (c0 % run || (c1 - c0) % run)) run = 0;
    if (st) { /* streamed: prepared into a layer buffer when the layer is about to run */
        *st = (struct shoal_stream_tensor){ host, t->type, r1 - r0, c1 - c0, *st_off, run };
        *st_off += bytes;
        return SHOAL_OK;
    }
    shoal_status rc = lookup ? shoal_weight_lookup(m->be, w, t->type, r1 - r0, c1 - c0, host, bytes ? *dev : NULL)
                             : shoal_weight_prepare(m->be, w, t->type, r1 - r0, c1 - c0, host, bytes ? *dev : NULL);
    if (bytes) *dev += bytes; /* (*dev is NULL when nothing is placed: no offset from it) */
    if (rc != SHOAL_OK) shoal_error_prefix("%s: tensor '%s'", m->g->path, name);
    else w->f64_block = run;
    return rc;
}

/* Whether the head is the embedding table itself on this rank (tied, whole vocabulary). */
static int head_is_table(const struct shoal_model *m, const struct shoal_slice *embd,
                         const struct shoal_slice *head) {
    const struct shoal_gguf_tensor *a = NULL, *b = NULL;
    return m->part.first && find_slice(m, embd, &a) == SHOAL_OK &&
           find_slice(m, head, &b) == SHOAL_OK && a == b && embd->r0 == head->r0 &&
           embd->r1 == head->r1 && embd->c0 == head->c0 && embd->c1 == head->c1;
}

/* Bytes of a column slice that load_part will read into the slice block (0: none). */
static uint64_t slice_bytes(const struct shoal_model *m, const struct shoal_slice *s) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(m->g, s->src);
    if (m->hp.sharded || !t || !s->rows || s->c1 - s->c0 == s->cols) return 0;
    return (uint64_t)(s->r1 - s->r0) * shoal_dtype_row_bytes(t->type, s->c1 - s->c0);
}

/* A vector slice (f32 values [c0, c1)), converted and copied to dst (device). */
static shoal_status load_vector(struct shoal_model *m, const struct shoal_slice *s, float *dst,
                                float *tmp) {
    const struct shoal_gguf_tensor *t = NULL;
    SHOAL_TRY(find_slice(m, s, &t));
    int64_t n = m->hp.sharded ? s->c1 - s->c0 : s->cols, i0 = m->hp.sharded ? 0 : s->c0;
    shoal_status rc = shoal_dequantize_row(t->type, t->data, tmp, n);
    if (rc != SHOAL_OK) {
        shoal_error_prefix("%s: tensor '%s'", m->g->path, t->name);
        return rc;
    }
    m->weight_bytes += (uint64_t)(s->c1 - s->c0) * shoal_dtype_info(t->type)->block_bytes;
    m->n_params += (uint64_t)(s->c1 - s->c0);
    return m->be ? shoal_backend_upload(m->be, dst, tmp + i0, (size_t)(s->c1 - s->c0) * sizeof(float))
                 : SHOAL_OK;
}

/* An offload group reaching device buffers (the parts gathered there), or NULL. */
static struct shoal_comm *gather_dev(const struct shoal_model *m) {
    return m->lpart ? m->offload.group_dev : NULL;
}

/* The ranks of the offload group holding this rank's part (1: no group). */
static int group_size(const struct shoal_model *m) {
    return m->offload.group ? shoal_comm_size(m->offload.group) : 1;
}

/*
 * An offload group's share of the streamed layers: each rank packs a layer's
 * image and keeps its part (shoal_offload_part, padded to the parts' size) in
 * host memory. Where the group reaches device buffers (group_dev), each rank copies its part into its slot
 * of the layer buffer and the group all-gathers the rest there; else a staging
 * buffer per layer buffer receives the all-gather of the parts, the whole
 * image, copied to the device from there.
 */
static shoal_status keep_parts(struct shoal_model *m) {
    const int nl = m->part.layer1 - m->part.layer0, g = group_size(m);
    const int me = shoal_comm_rank(m->offload.group);
    void *img = NULL;
    shoal_status rc = SHOAL_OK;
    if (!(m->limg = calloc((size_t)nl, sizeof *m->limg)) || !(m->lpart = calloc((size_t)nl, sizeof *m->lpart)) ||
        !(m->gather_due = calloc((size_t)m->off.n_buffers, 1)) || !(img = malloc(m->lstride)) ||
        (!m->offload.group_dev && !(m->stage = calloc((size_t)m->off.n_buffers, sizeof *m->stage))))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int b = 0; rc == SHOAL_OK && m->stage && b < m->off.n_buffers; b++)
        rc = shoal_backend_host_alloc(m->be, m->lstride, &m->stage[b]);
    for (int l = 0; rc == SHOAL_OK && l < nl; l++) {
        if (!shoal_offload_streamed(&m->off, l)) continue;
        const struct shoal_stream_tensor *t = &m->stream[(size_t)l * (size_t)m->n_lmats];
        memset(img, 0, m->lstride);
        for (int k = 0; rc == SHOAL_OK && k < m->n_lmats; k++)
            rc = shoal_weight_pack(m->be, t[k].type, t[k].rows, t[k].cols, t[k].host, (char *)img + t[k].off);
        uint64_t off, len;
        shoal_offload_part(m->lbytes[l], g, 0, &off, &len);
        m->lpart[l] = len; /* every part as long as the first: the last one padded */
        if (rc == SHOAL_OK) rc = shoal_backend_host_alloc(m->be, len, &m->limg[l]);
        if (rc == SHOAL_OK) memcpy(m->limg[l], (char *)img + (size_t)me * len, len);
    }
    free(img);
    return rc;
}

/*
 * The streamed layers' weights bound to their buffers (where fetches will put
 * them), and their source chosen: each layer's image packed once into host
 * memory the backend copies from fastest (RAM), a staging buffer per layer
 * buffer to pack into from the map on the way (a backend that repacks), or the
 * map itself; with an offload group, this rank's parts (keep_parts).
 */
static shoal_status bind_streamed(struct shoal_model *m) {
    const int nl = m->part.layer1 - m->part.layer0, packs = shoal_backend_packs_weights(m->be);
    struct shoal_weight **ws = malloc((size_t)m->n_lmats * sizeof *ws);
    if (!ws || !(m->lbytes = calloc((size_t)nl, sizeof *m->lbytes)) || !(m->ticket = calloc((size_t)nl, sizeof *m->ticket))) {
        free(ws);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    for (int l = 0; l < nl; l++) {
        if (!shoal_offload_streamed(&m->off, l)) continue;
        layer_weights(&m->hp, &m->part, &m->layers[l], ws);
        const char *buf = (char *)m->lbuf + (size_t)shoal_offload_buffer(&m->off, l) * m->lstride;
        const struct shoal_stream_tensor *t = &m->stream[(size_t)l * (size_t)m->n_lmats];
        for (int k = 0; k < m->n_lmats; k++) {
            shoal_status rc = shoal_weight_bind(m->be, ws[k], t[k].type, t[k].rows, t[k].cols, buf + t[k].off);
            if (rc != SHOAL_OK) {
                free(ws);
                return rc;
            }
            ws[k]->f64_block = t[k].f64_block;
            size_t end = t[k].off + weight_block_bytes(m, t[k].type, t[k].rows, t[k].cols);
            if (end > m->lbytes[l]) m->lbytes[l] = end;
        }
    }
    free(ws);
    /* the source: images in RAM (a backend that repacks: when they fit the host's
     * available memory), else the map, packed on the way where the backend repacks */
    uint64_t streamed = 0;
    for (int l = 0; l < nl; l++) streamed += m->lbytes[l];
    int from = m->offload.from;
    if (from == SHOAL_OFFLOAD_FROM_AUTO)
        from = packs && (double)streamed < 0.8 * shoal_host_available() ? SHOAL_OFFLOAD_FROM_RAM
                                                                          : SHOAL_OFFLOAD_FROM_MAP;
    const int g = group_size(m);
    if (g > 1) from = SHOAL_OFFLOAD_FROM_RAM; /* the parts are kept in RAM */
    m->from_ram = from == SHOAL_OFFLOAD_FROM_RAM;
    if (g > 1) return keep_parts(m);
    if (m->from_ram) {
        if (!(m->limg = calloc((size_t)nl, sizeof *m->limg))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        for (int l = 0; l < nl; l++) {
            if (!shoal_offload_streamed(&m->off, l)) continue;
            const struct shoal_stream_tensor *t = &m->stream[(size_t)l * (size_t)m->n_lmats];
            shoal_status rc = shoal_backend_host_alloc(m->be, m->lbytes[l], &m->limg[l]);
            if (rc != SHOAL_OK) {
                char b[32];
                shoal_error_prefix("the streamed layers' images (%s) do not fit host memory "
                                   "(--offload-from map reads them from the file)",
                                   shoal_fmt_bytes(b, sizeof b, (double)streamed));
                return rc;
            }
            for (int k = 0; k < m->n_lmats; k++)
                SHOAL_TRY(shoal_weight_pack(m->be, t[k].type, t[k].rows, t[k].cols, t[k].host,
                                            (char *)m->limg[l] + t[k].off));
        }
    } else if (packs) {
        if (!(m->stage = calloc((size_t)m->off.n_buffers, sizeof *m->stage)))
            return shoal_errorf(SHOAL_NOMEM, "out of memory");
        for (int b = 0; b < m->off.n_buffers; b++)
            SHOAL_TRY(shoal_backend_host_alloc(m->be, m->lstride, &m->stage[b]));
    }
    return SHOAL_OK;
}

/* Whether a slice is a row-parallel projection's (summed in f64: shoal_op_matmul_f64). */
static int summed_f64(const struct shoal_slice *s) {
    static const char *const ends[] = { "attn_output.weight", "ffn_down.weight", "ffn_down_exps.weight" };
    const size_t n = strlen(s->src);
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++) {
        const size_t k = strlen(ends[i]);
        if (n >= k && strcmp(s->src + n - k, ends[i]) == 0) return 1;
    }
    return 0;
}

/* The distinct matmuls (type, shape, f64) of a step on the part's slices: every matrix
 * but the embedding table, which is only looked up. */
static void work_matmuls(const struct shoal_model *m, const struct shoal_slice *sl, int n_sl,
                         struct shoal_work_shape *w) {
    memset(w, 0, sizeof *w);
    for (int i = m->part.first ? 1 : 0; i < n_sl; i++) {
        const struct shoal_gguf_tensor *t = NULL;
        if (!sl[i].rows || find_slice(m, &sl[i], &t) != SHOAL_OK) continue;
        const struct shoal_work_mm mm = { t->type, sl[i].r1 - sl[i].r0, sl[i].c1 - sl[i].c0, summed_f64(&sl[i]) };
        int seen = 0;
        for (int j = 0; j < w->n_mm && !seen; j++)
            seen = w->mm[j].type == mm.type && w->mm[j].rows == mm.rows && w->mm[j].cols == mm.cols &&
                   w->mm[j].f64 == mm.f64;
        if (!seen && w->n_mm < SHOAL_WORK_MM_MAX) w->mm[w->n_mm++] = mm;
    }
}

void shoal_model_work_shape(const struct shoal_model *m, const struct shoal_state_params *p,
                            struct shoal_work_shape *w) {
    *w = m->work;
    const int n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    w->n_tokens = n_batch;
    w->n_heads = m->n_heads_l;
    w->head_dim = m->hp.head_dim;
    w->n_slots = p->n_ctx;
    w->topk_rows = p->n_outputs < 1 ? 1 : p->n_outputs < n_batch ? p->n_outputs : n_batch;
    w->topk = p->topk > 0 ? p->topk : 0;
}

static shoal_status load_weights(struct shoal_model *m) {
    const struct shoal_hparams *hp = &m->hp;
    const struct shoal_rank_part *pt = &m->part;
    const struct shoal_gguf *g = m->g;
    struct shoal_slice *sl = NULL;
    int n_sl = 0;
    SHOAL_TRY(shoal_model_slices(hp, pt, &sl, &n_sl));

    /* sizes first: one device block for the vectors, one for the matrices the
     * backend copies (none on the CPU), one host block for column slices */
    int64_t n_small = 0;
    uint64_t n_slices = 0, n_dev = 0;
    const int shared_head = pt->first && pt->last && n_sl > 1 && head_is_table(m, &sl[0], &sl[1]);
    const int nl = pt->layer1 - pt->layer0, n_head = (pt->first ? 1 : 0) + (pt->last ? 2 : 0);
    const int per_layer = nl ? (n_sl - n_head) / nl : 0;
    uint64_t *lb = calloc((size_t)nl + 1, sizeof *lb); /* device bytes of each layer's matrices */
    if (!lb) {
        free(sl);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    for (int i = 0; i < n_sl; i++) {
        if (!sl[i].rows) n_small += sl[i].c1 - sl[i].c0;
        n_slices += slice_bytes(m, &sl[i]);
        if (shared_head && i == 1) continue;
        if (i >= n_head && per_layer) lb[(i - n_head) / per_layer] += slice_device_bytes(m, &sl[i]);
        else if (!lookup_in_place(m, pt->first && i == 0 && !shared_head))
            n_dev += slice_device_bytes(m, &sl[i]); /* the embedding table: as load_part is told below */
    }
    shoal_status rc = SHOAL_OK;
    float *tmp = NULL;
    work_matmuls(m, sl, n_sl, &m->work);
    struct shoal_work_shape ws;
    if (m->offload.state) shoal_model_work_shape(m, m->offload.state, &ws);
    /* which layers stay on the device: all, or as many as the budget allows */
    m->off = (struct shoal_offload_plan){ .n_layers = nl, .n_resident = nl };
    if (m->be && m->offload.budget && nl) {
        const uint64_t small = ((uint64_t)n_small * sizeof(float) + 255) / 256 * 256;
        /* the state, the backend's working memory for its steps, and what the backend
         * holds already (its library workspaces, a communicator's buffers) */
        uint64_t state = 0, in_use = 0;
        if (m->offload.state)
            state = shoal_state_device_bytes(hp, pt, m->offload.state) + shoal_backend_work_bytes(m->be, &ws);
        shoal_backend_mem(m->be, &in_use, NULL);
        struct shoal_offload_params op = { m->offload.budget, n_dev + small + state + in_use, nl, lb,
                                           m->offload.prefetch, group_size(m) };
        SHOAL_TRY_GOTO(shoal_offload_plan_make(&op, &m->off), rc, done);
    }
    /* the working memory first: uploads then go through it rather than growing it */
    if (m->be && m->offload.state) SHOAL_TRY_GOTO(shoal_backend_reserve(m->be, &ws), rc, done);
    /* a buffer holds a layer; with a group, its g equal parts (the last padded) */
    m->lstride = m->off.buffer_bytes;
    for (int l = m->off.n_resident; l < nl && group_size(m) > 1; l++) {
        uint64_t off, len;
        shoal_offload_part(lb[l], group_size(m), 0, &off, &len);
        if (len * (uint64_t)group_size(m) > m->lstride) m->lstride = len * (uint64_t)group_size(m);
    }
    for (int l = 0; l < m->off.n_resident; l++) n_dev += lb[l];
    if (m->be && m->off.n_resident < nl) {
        if (!(m->stream = calloc((size_t)nl * (size_t)m->n_lmats, sizeof *m->stream)) ||
            !(m->buf_layer = malloc((size_t)m->off.n_buffers * sizeof *m->buf_layer)) ||
            !(m->stage_ticket = calloc((size_t)m->off.n_buffers, sizeof *m->stage_ticket))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto done;
        }
        for (int b = 0; b < m->off.n_buffers; b++) m->buf_layer[b] = -1;
        SHOAL_TRY_GOTO(shoal_backend_alloc(m->be, (size_t)m->off.n_buffers * m->lstride, &m->lbuf), rc, done);
    }
    if (m->be) {
        SHOAL_TRY_GOTO(shoal_backend_alloc(m->be, (size_t)n_small * sizeof(float), &m->small), rc, done);
        if (n_dev) {
            rc = shoal_backend_alloc(m->be, (size_t)n_dev, &m->wblock);
            if (rc != SHOAL_OK) {
                char b[32];
                shoal_error_prefix("%s: this rank's weights (%s) do not fit the %s device", g->path,
                                   shoal_fmt_bytes(b, sizeof b, (double)n_dev),
                                   shoal_backend_name(m->be));
                goto done;
            }
        }
        if (n_slices && !(m->slices = malloc((size_t)n_slices))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory for %" PRIu64 " bytes of weight slices",
                              n_slices);
            goto done;
        }
    } else if (!(m->small = calloc((size_t)n_small, sizeof(float))) ||
               (n_slices && !(m->slices = malloc(1)))) { /* a check: host scratch only */
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    int64_t tmp_n = (int64_t)hp->n_heads * hp->head_dim > hp->dim ? (int64_t)hp->n_heads * hp->head_dim : hp->dim;
    if (!(tmp = malloc((size_t)tmp_n * sizeof(float)))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    float *next = m->small;
    char *at = m->slices, *dev = m->wblock;
    int i = 0;
    if (pt->first) {
        /* a lookup: a token reads one row, not the table; and with a tied head on this
         * rank, the head counts these parameters */
        uint64_t wb = m->weight_bytes, np = m->n_params;
        SHOAL_TRY_GOTO(load_part(m, &sl[i++], &m->tok_embd, &at, &dev, NULL, NULL, !shared_head), rc, done);
        m->weight_bytes = wb;
        if (hp->tied_output && pt->last) m->n_params = np;
    }
    if (pt->last) {
        if (shared_head && m->be) {
            /* the same bytes: prepared once (a backend that copies would copy them twice) */
            m->output = m->tok_embd;
            m->output.owned = NULL;
            m->weight_bytes += (uint64_t)m->output.rows * m->output.row_bytes;
            m->n_params += (uint64_t)m->output.rows * (uint64_t)m->output.cols;
            i++;
        } else {
            SHOAL_TRY_GOTO(load_part(m, &sl[i++], &m->output, &at, &dev, NULL, NULL, 0), rc, done);
        }
        m->output_norm = next;
        next += hp->dim;
        SHOAL_TRY_GOTO(load_vector(m, &sl[i++], m->output_norm, tmp), rc, done);
    }
    uint64_t type_params[SHOAL_DTYPE_MAX] = { 0 }; /* the layers' matrices by type: main_type */
    for (int l = pt->layer0; l < pt->layer1; l++) {
        char *L = (char *)&m->layers[l - pt->layer0];
        const int streamed = shoal_offload_streamed(&m->off, l - pt->layer0);
        struct shoal_stream_tensor *st = m->stream ? m->stream + (size_t)(l - pt->layer0) * (size_t)m->n_lmats : NULL;
        size_t st_off = 0;
        for (size_t k = 0; k < N_LAYER_TENSORS; k++) {
            const struct layer_tensor *lt = &layer_tensors[k];
            const int n_e = has_tensor(hp, lt) ? tensor_slices(lt, pt) : 0;
            for (int e = 0; e < n_e; e++) {
                const struct shoal_slice *s = &sl[i++];
                const struct shoal_gguf_tensor *t;
                if (s->rows && find_slice(m, s, &t) == SHOAL_OK && t->type >= 0 && t->type < SHOAL_DTYPE_MAX) {
                    type_params[t->type] += (uint64_t)(s->r1 - s->r0) * (uint64_t)(s->c1 - s->c0);
                    if (type_params[t->type] > type_params[m->main_type]) m->main_type = t->type;
                }
                if (s->rows) {
                    const uint64_t before = m->weight_bytes;
                    SHOAL_TRY_GOTO(load_part(m, s, tensor_weight((struct shoal_layer *)L, lt, e), &at, &dev,
                                             streamed ? st++ : NULL, &st_off, 0), rc, done);
                    if (s->n_exp) m->expert_bytes += m->weight_bytes - before;
                } else {
                    *(float **)(L + lt->field) = next;
                    next += s->c1 - s->c0;
                    SHOAL_TRY_GOTO(load_vector(m, s, *(float **)(L + lt->field), tmp), rc, done);
                }
            }
        }
    }

    if (m->stream) SHOAL_TRY_GOTO(bind_streamed(m), rc, done);

    /* llama3-style rope scaling: one divisor per rotated pair */
    const struct shoal_gguf_tensor *rf = shoal_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf) {
        int half = hp->rope.rope_dim / 2;
        if (rf->n_dims != 1 || rf->ne[0] != half) {
            rc = shoal_errorf(SHOAL_FORMAT, "%s: rope_freqs.weight has %" PRId64
                              " values, expected %d", g->path, rf->ne[0], half);
            goto done;
        }
        if (!(m->freq_factors = malloc((size_t)half * sizeof(float)))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto done;
        }
        SHOAL_TRY_GOTO(shoal_dequantize_row(rf->type, rf->data, m->freq_factors, half), rc, done);
        m->hp.rope.freq_factors = m->freq_factors;
    }
    /* a backend that copied the weights no longer needs the column slices read for
     * it, unless some stream from there */
    if (m->be && !shoal_backend_host_memory(m->be) && m->off.n_resident == nl) {
        free(m->slices);
        m->slices = NULL;
    }
done:
    free(tmp);
    free(sl);
    free(lb);
    return rc;
}

shoal_status shoal_model_check(const struct shoal_gguf *g) {
    struct shoal_model *m = NULL;
    shoal_status rc = shoal_model_load(&m, g, NULL, NULL);
    shoal_model_destroy(m);
    return rc;
}

shoal_status shoal_model_load(struct shoal_model **out, const struct shoal_gguf *g,
                              struct shoal_backend *be, const struct shoal_rank_part *part) {
    return shoal_model_load_offload(out, g, be, part, NULL);
}

shoal_status shoal_model_load_offload(struct shoal_model **out, const struct shoal_gguf *g,
                                      struct shoal_backend *be, const struct shoal_rank_part *part,
                                      const struct shoal_model_offload *off) {
    *out = NULL;
    struct shoal_model *m = calloc(1, sizeof *m);
    if (!m) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    m->g = g;
    m->be = be;
    if (off) m->offload = *off;
    shoal_status rc;
    SHOAL_TRY_GOTO(shoal_hparams_read(&m->hp, g), rc, fail);
    const struct shoal_hparams *hp = &m->hp;
    if (part) {
        m->part = *part;
    } else {
        m->part = (struct shoal_rank_part){ .layer1 = hp->n_layers, .q1 = hp->n_heads,
                                            .kv1 = hp->n_kv_heads, .ff1 = hp->ffn_dim, .x1 = hp->n_expert,
                                            .v1 = hp->n_vocab, .first = 1, .last = 1 };
    }
    const struct shoal_rank_part *pt = &m->part;
    if (pt->layer0 < 0 || pt->layer1 > hp->n_layers || pt->layer0 >= pt->layer1 || pt->q0 < 0 ||
        pt->q1 > hp->n_heads || pt->q0 >= pt->q1 || pt->kv0 < 0 || pt->kv1 > hp->n_kv_heads ||
        pt->ff0 < 0 || pt->ff1 > hp->ffn_dim || pt->ff0 >= pt->ff1 || pt->v0 < 0 ||
        pt->v1 > hp->n_vocab || (pt->last && pt->v0 >= pt->v1) || pt->x0 < 0 || pt->x1 > hp->n_expert ||
        (hp->n_expert > 0) != (pt->x0 < pt->x1)) {
        rc = shoal_errorf(SHOAL_INVALID, "%s: the plan's part for rank %d does not fit this model",
                          g->path, pt->rank);
        goto fail;
    }
    m->n_heads_l = pt->q1 - pt->q0;
    m->n_kv_l = pt->kv1 - pt->kv0;
    m->ffn_l = pt->ff1 - pt->ff0;
    m->n_vocab_l = pt->v1 - pt->v0;
    m->layers = calloc((size_t)(pt->layer1 - pt->layer0), sizeof *m->layers);
    if (!m->layers) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto fail;
    }
    for (int l = 0; pt->x1 > pt->x0 && l < pt->layer1 - pt->layer0; l++) { /* the rank's experts' weights */
        struct shoal_layer *L = &m->layers[l];
        const size_t nx = (size_t)(pt->x1 - pt->x0);
        if (!(L->xgate = calloc(3 * nx, sizeof *L->xgate))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto fail;
        }
        L->xup = L->xgate + nx;
        L->xdown = L->xup + nx;
    }
    m->n_lmats = layer_weights(hp, pt, &m->layers[0], NULL);
    SHOAL_TRY_GOTO(load_weights(m), rc, fail);
    *out = m;
    return SHOAL_OK;
fail:
    shoal_model_destroy(m);
    return rc;
}

void shoal_model_destroy(struct shoal_model *m) {
    if (!m) return;
    if (m->be && m->lbuf) shoal_backend_synchronize(m->be); /* no copy into lbuf still on its way */
    if (m->be) {
        struct shoal_weight **ws = m->n_lmats ? malloc((size_t)m->n_lmats * sizeof *ws) : NULL;
        for (int l = 0; ws && m->layers && l < m->part.layer1 - m->part.layer0; l++) {
            layer_weights(&m->hp, &m->part, &m->layers[l], ws);
            for (int i = 0; i < m->n_lmats; i++) shoal_weight_release(m->be, ws[i]);
        }
        free(ws);
        shoal_weight_release(m->be, &m->tok_embd);
        shoal_weight_release(m->be, &m->output);
        shoal_backend_free(m->be, m->small);
        shoal_backend_free(m->be, m->wblock);
        shoal_backend_free(m->be, m->lbuf);
    } else {
        free(m->small); /* a check: host scratch */
    }
    free(m->slices);
    for (int l = 0; m->limg && l < m->part.layer1 - m->part.layer0; l++)
        shoal_backend_host_free(m->be, m->limg[l]);
    for (int b = 0; m->stage && b < m->off.n_buffers; b++) shoal_backend_host_free(m->be, m->stage[b]);
    free(m->stage);
    free(m->stage_ticket);
    free(m->lpart);
    free(m->gather_due);
    free(m->limg);
    free(m->lbytes);
    free(m->ticket);
    free(m->stream);
    free(m->buf_layer);
    free(m->freq_factors);
    for (int l = 0; m->layers && l < m->part.layer1 - m->part.layer0; l++) free(m->layers[l].xgate);
    free(m->layers);
    free(m);
}

/* ----------------------------------------------------------------- state */

/* The activations' float counts (yd's doubles as two each), in the order of the state's block. */
enum { N_ACT = 13 };
static void act_counts(const struct shoal_hparams *hp, const struct shoal_rank_part *pt, int n_batch,
                       int n_outputs, size_t counts[N_ACT]) {
    const size_t nb = (size_t)n_batch, hd = (size_t)hp->head_dim, dim = (size_t)hp->dim;
    const size_t qd = (size_t)(pt->q1 - pt->q0) * hd, kvd = (size_t)(pt->kv1 - pt->kv0) * hd;
    const size_t ff = (size_t)(pt->ff1 - pt->ff0);
    const size_t ne = (size_t)hp->n_expert, x = ne ? 1 : 0; /* experts: rl, xg, yx */
    const size_t c[N_ACT] = { nb * dim, nb * dim, nb * qd, nb * kvd, nb * kvd, nb * qd, nb * ff, nb * ff,
                              (size_t)n_outputs * (size_t)(pt->v1 - pt->v0), 2 * nb * dim /* f64 */,
                              nb * ne, x * nb * dim, x * 2 * nb * dim /* f64 */ };
    memcpy(counts, c, sizeof c);
}

int shoal_state_ring_slots(const struct shoal_hparams *hp, const struct shoal_state_params *p) {
    return shoal_ring_slots(hp->swa_window, p->n_ctx, p->n_batch, p->rings);
}

/* The slots of local layer l's cache: the context, or its rings. */
static int64_t layer_slots(const struct shoal_hparams *hp, const struct shoal_rank_part *pt, int ring, int rings,
                           int n_ctx, int l) {
    return ring && shoal_layer_windowed(hp, pt->layer0 + l) ? (int64_t)ring * rings : n_ctx;
}

uint64_t shoal_state_device_bytes(const struct shoal_hparams *hp, const struct shoal_rank_part *pt,
                                  const struct shoal_state_params *p) {
    const int n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    const int n_out = p->n_outputs < 1 ? 1 : p->n_outputs < n_batch ? p->n_outputs : n_batch;
    size_t counts[N_ACT];
    act_counts(hp, pt, n_batch, n_out, counts);
    uint64_t total = 0;
    for (size_t i = 0; i < N_ACT; i++) total += (counts[i] * sizeof(float) + 63) / 64 * 64;
    struct shoal_kv_desc d;
    shoal_kv_desc_init(&d, p->kv_type, pt->kv1 - pt->kv0, hp->head_dim, p->n_ctx);
    const int ring = shoal_state_ring_slots(hp, p);
    for (int l = 0; l < pt->layer1 - pt->layer0; l++)
        total += 2 * (uint64_t)layer_slots(hp, pt, ring, p->rings, p->n_ctx, l) * d.row_bytes;
    return total;
}

shoal_status shoal_state_create(struct shoal_state **out, const struct shoal_model *m,
                                const struct shoal_state_params *p) {
    *out = NULL;
    const struct shoal_hparams *hp = &m->hp;
    if (p->n_ctx < 1 || p->n_batch < 1)
        return shoal_errorf(SHOAL_INVALID, "context %d and batch %d must be >= 1", p->n_ctx,
                            p->n_batch);
    if (p->kv_type < SHOAL_KV_F32 || p->kv_type > SHOAL_KV_Q8)
        return shoal_errorf(SHOAL_INVALID, "unknown KV cache type %d", p->kv_type);
    struct shoal_state *s = calloc(1, sizeof *s);
    if (!s) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    s->m = m;
    s->dist = p->dist;
    s->n_ctx = p->n_ctx;
    s->n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    s->n_outputs = p->n_outputs < 1 ? 1 : p->n_outputs < s->n_batch ? p->n_outputs : s->n_batch;
    shoal_kv_desc_init(&s->kvd, p->kv_type, m->n_kv_l, hp->head_dim, p->n_ctx);

    /* sizes first, then one block each for the KV cache and the activations; the
     * cache is not cleared: attention reads only positions already written, and
     * untouched pages cost no memory */
    size_t counts[N_ACT];
    act_counts(hp, &m->part, s->n_batch, s->n_outputs, counts);
    float **slots[N_ACT] = { &s->x, &s->xb, &s->q, &s->k, &s->v, &s->att, &s->hb, &s->hb2, &s->logits,
                             (float **)&s->yd, &s->rl, &s->xg, (float **)&s->yx };
    size_t total = 0;
    for (size_t i = 0; i < N_ACT; i++) total += (counts[i] * sizeof(float) + 63) / 64 * 64;
    s->act_bytes = total;
    /* the cache: each layer's K then V, a windowed layer's as long as its ring */
    const int nl = m->part.layer1 - m->part.layer0;
    s->ring = shoal_state_ring_slots(hp, p);
    s->n_rings = s->ring ? p->rings : 0;
    shoal_kv_desc_init(&s->kvd_ring, p->kv_type, m->n_kv_l, hp->head_dim, s->ring ? s->ring * s->n_rings : 1);
    if (!(s->kv_at = malloc(sizeof(size_t) * (size_t)(nl + 1)))) {
        free(s);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    s->kv_bytes = 0;
    for (int l = 0; l < nl; l++) {
        s->kv_at[l] = (size_t)s->kv_bytes;
        s->kv_bytes += 2 * (uint64_t)layer_slots(hp, &m->part, s->ring, s->n_rings, p->n_ctx, l) * s->kvd.row_bytes;
    }
    if (s->ring) { /* the step's batch as the rings see it: a table row per sequence */
        s->ring_table_cap = (p->n_ctx / s->ring + 1) * s->n_rings;
        s->ring_slot = malloc(sizeof(int32_t) * (size_t)s->n_batch);
        s->ring_table = calloc((size_t)s->ring_table_cap, sizeof(int32_t)); /* one sequence: every block ring 0 */
        if (!s->ring_slot || !s->ring_table) {
            shoal_state_destroy(s);
            return shoal_errorf(SHOAL_NOMEM, "out of memory");
        }
    }
    s->serial = shoal_backend_serial(m->be);
    shoal_status rc;
    struct shoal_work_shape ws;
    shoal_model_work_shape(m, p, &ws);
    SHOAL_TRY_GOTO(shoal_backend_reserve(m->be, &ws), rc, fail);
    if ((rc = shoal_backend_alloc(m->be, (size_t)s->kv_bytes, &s->kv)) != SHOAL_OK) {
        char b[32];
        shoal_error_prefix("the KV cache for %d positions (%s) does not fit (lower -c or use "
                           "--kv-type q8)",
                           p->n_ctx, shoal_fmt_bytes(b, sizeof b, (double)s->kv_bytes));
        goto fail;
    }
    SHOAL_TRY_GOTO(shoal_backend_alloc(m->be, total, &s->act), rc, fail);
    char *at = s->act;
    for (size_t i = 0; i < N_ACT; i++) {
        *slots[i] = (float *)at;
        at += (counts[i] * sizeof(float) + 63) / 64 * 64;
    }
    if (s->dist && shoal_comm_size(s->dist->tp) > 1 && !s->dist->tp_dev &&
        !shoal_backend_host_memory(m->be) &&
        !(s->yd_host = malloc((size_t)s->n_batch * (size_t)hp->dim * sizeof(double)))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the all-reduce staging buffer");
        goto fail;
    }
    const size_t routes = (size_t)s->n_batch * (size_t)hp->n_expert_used;
    if (hp->n_expert && (!(s->route = malloc(routes * sizeof *s->route)) ||
                         !(s->route_tok = malloc(routes * sizeof *s->route_tok)) ||
                         !(s->route_w = malloc(routes * sizeof *s->route_w)))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the experts' routes");
        goto fail;
    }
    s->topk = p->topk > 0 ? (p->topk < hp->n_vocab ? p->topk : hp->n_vocab) : 0;
    if (m->part.last && !(s->gathered = malloc((size_t)s->n_outputs * hp->n_vocab * sizeof(float)))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the logits");
        goto fail;
    }
    if (s->topk && !(s->cands = malloc((size_t)s->n_outputs * (size_t)s->topk * sizeof *s->cands))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the logits");
        goto fail;
    }
    *out = s;
    return SHOAL_OK;
fail:
    shoal_state_destroy(s);
    return rc;
}

void shoal_state_destroy(struct shoal_state *s) {
    if (!s) return;
    shoal_backend_graph_forget(s->m->be); /* recordings of its steps point at its buffers */
    shoal_backend_free(s->m->be, s->kv);
    shoal_backend_free(s->m->be, s->act);
    free(s->kv_at);
    free(s->ring_slot);
    free(s->ring_table);
    free(s->gathered);
    free(s->yd_host);
    free(s->cands);
    free(s->route);
    free(s->route_tok);
    free(s->route_w);
    shoal_step_release(s);
    free(s->msg);
    free(s);
}

/* ----------------------------------------------------- this rank's share */

shoal_status shoal_run_embed(struct shoal_state *s, const struct shoal_batch *b) {
    const struct shoal_model *m = s->m;
    SHOAL_TRY(shoal_op_embed(m->be, s->x, &m->tok_embd, b));
    if (m->hp.embd_scale != 1.0f)
        SHOAL_TRY(shoal_op_scale(m->be, s->x, (size_t)b->n_tokens * m->hp.dim, m->hp.embd_scale));
    return SHOAL_OK;
}

/*
 * A run of a step's tokens and where its activations are: the state's rows
 * from token t0 on, computed on be (the model's backend, or one of its
 * lanes). The whole step is the run from token 0 on the model's backend.
 */
struct span {
    struct shoal_backend *be;
    const struct shoal_batch *b; /* the run's tokens */
    const struct shoal_batch *rb; /* the same as the windowed layers' rings see them, or NULL */
    int sync;                    /* a lane whose sequences other lanes hold tokens of too */
    float *x, *xb, *q, *k, *v, *att, *hb, *hb2;
    double *yd;
    /* experts: the state's rows from t0 on, and its host routes from t0 * n_expert_used on */
    float *rl, *xg;
    double *yx;
    struct shoal_cand *route;
    int32_t *route_tok;
    double *route_w;
};

static struct span span_of(struct shoal_state *s, struct shoal_backend *be, const struct shoal_batch *b,
                           int t0) {
    const struct shoal_model *m = s->m;
    const size_t t = (size_t)t0, dim = (size_t)m->hp.dim, ff = (size_t)m->ffn_l;
    const size_t qd = (size_t)m->n_heads_l * (size_t)m->hp.head_dim, kvd = (size_t)m->n_kv_l * (size_t)m->hp.head_dim;
    const size_t ne = (size_t)m->hp.n_expert, nu = (size_t)m->hp.n_expert_used;
    return (struct span){ be, b, NULL, 0, s->x + t * dim, s->xb + t * dim, s->q + t * qd, s->k + t * kvd,
                          s->v + t * kvd, s->att + t * qd, s->hb + t * ff, s->hb2 + t * ff, s->yd + t * dim,
                          ne ? s->rl + t * ne : NULL, ne ? s->xg + t * dim : NULL, ne ? s->yx + t * dim : NULL,
                          ne ? s->route + t * nu : NULL, ne ? s->route_tok + t * nu : NULL,
                          ne ? s->route_w + t * nu : NULL };
}

/*
 * x += the row-parallel projection of in by w: this rank's columns summed
 * in f64, the tensor-parallel group's parts added, rounded once to f32;
 * with post_norm, RMS-normed by it before it is added (xb holds it then).
 */
static shoal_status sum_add(struct shoal_state *s, const struct span *sp, const float *post_norm);
static shoal_status project_add(struct shoal_state *s, const struct span *sp, const struct shoal_weight *w,
                                const float *in, const float *post_norm) {
    SHOAL_TRY(shoal_op_matmul_f64(sp->be, sp->yd, w, in, sp->b->n_tokens));
    return sum_add(s, sp, post_norm);
}

/* x += yd, this rank's f64 sums, the tensor-parallel group's parts added, rounded once (project_add). */
static shoal_status sum_add(struct shoal_state *s, const struct span *sp, const float *post_norm) {
    struct shoal_backend *be = sp->be;
    const int n = sp->b->n_tokens;
    const size_t count = (size_t)n * s->m->hp.dim;
    if (s->dist && shoal_comm_size(s->dist->tp) > 1) { /* (never in a lane: a whole step) */
        if (s->dist->tp_dev) {
            /* a communicator of device buffers, queued behind the backend's work */
            SHOAL_TRY(shoal_comm_allreduce_sum_f64(s->dist->tp_dev, sp->yd, count, s->dist->wire));
        } else if (shoal_backend_host_memory(be)) {
            SHOAL_TRY(shoal_backend_synchronize(be));
            SHOAL_TRY(shoal_comm_allreduce_sum_f64(s->dist->tp, sp->yd, count, s->dist->wire));
        } else {
            /* device buffers over a communicator of host buffers: staged through the host */
            const size_t bytes = count * sizeof(double);
            SHOAL_TRY(shoal_backend_download(be, s->yd_host, sp->yd, bytes));
            SHOAL_TRY(shoal_comm_allreduce_sum_f64(s->dist->tp, s->yd_host, count, s->dist->wire));
            SHOAL_TRY(shoal_backend_upload(be, sp->yd, s->yd_host, bytes));
        }
    }
    if (!post_norm) return shoal_op_add_f64(be, sp->x, sp->yd, count);
    SHOAL_TRY(shoal_op_round_f64(be, sp->xb, sp->yd, count));
    SHOAL_TRY(shoal_op_rmsnorm(be, sp->xb, sp->xb, post_norm, n, s->m->hp.dim, s->m->hp.rms_eps));
    return shoal_op_add(be, sp->x, sp->xb, count);
}

/*
 * Layer l (of the rank's) copied into its buffer, unless it is there or on its
 * way: queued behind the work so far (the buffer's last layer has run by then)
 * and overlapping what follows where the backend can. The layer's weights
 * point into that buffer from loading on; one forward pass at a time per model.
 */
static shoal_status fetch_layer(struct shoal_model *m, int l) {
    const int b = shoal_offload_buffer(&m->off, l);
    if (b < 0 || m->buf_layer[b] == l) return SHOAL_OK;
    char *buf = (char *)m->lbuf + (size_t)b * m->lstride;
    uint64_t ticket = 0;
    m->buf_layer[b] = -1;
    uint64_t copied = m->lbytes[l];
    if (gather_dev(m)) { /* an offload group: this rank's part up, the rest gathered there (fetch_ahead) */
        const int me = shoal_comm_rank(gather_dev(m));
        copied = m->lpart[l];
        SHOAL_TRY(shoal_backend_fetch(m->be, buf + (size_t)me * copied, m->limg[l], copied, &ticket));
        m->gather_due[b] = 1;
    } else if (m->lpart) { /* an offload group: the parts gathered on the host, then copied up */
        SHOAL_TRY(shoal_backend_fetch_sync(m->be, m->stage_ticket[b]));
        SHOAL_TRY(shoal_comm_allgather(m->offload.group, m->limg[l], m->lpart[l], m->stage[b]));
        SHOAL_TRY(shoal_backend_fetch(m->be, buf, m->stage[b], m->lbytes[l], &ticket));
        m->stage_ticket[b] = ticket;
        m->sstats.gathered += m->lpart[l] * (uint64_t)(group_size(m) - 1);
    } else if (m->limg) { /* the layer's device image, packed on the host at load */
        SHOAL_TRY(shoal_backend_fetch(m->be, buf, m->limg[l], m->lbytes[l], &ticket));
    } else if (m->stage) { /* packed now from the map, once the buffer's last copy has left */
        SHOAL_TRY(shoal_backend_fetch_sync(m->be, m->stage_ticket[b]));
        for (int k = 0; k < m->n_lmats; k++) {
            const struct shoal_stream_tensor *t = &m->stream[(size_t)l * (size_t)m->n_lmats + k];
            SHOAL_TRY(shoal_weight_pack(m->be, t->type, t->rows, t->cols, t->host, (char *)m->stage[b] + t->off));
        }
        SHOAL_TRY(shoal_backend_fetch(m->be, buf, m->stage[b], m->lbytes[l], &ticket));
        m->stage_ticket[b] = ticket;
    } else { /* its matrices as the file has them */
        for (int k = 0; k < m->n_lmats; k++) {
            const struct shoal_stream_tensor *t = &m->stream[(size_t)l * (size_t)m->n_lmats + k];
            size_t n = (size_t)t->rows * shoal_dtype_row_bytes(t->type, t->cols);
            SHOAL_TRY(shoal_backend_fetch(m->be, buf + t->off, t->host, n, &ticket));
        }
    }
    m->sstats.bytes += copied;
    m->sstats.fetches++;
    m->ticket[l] = ticket;
    m->buf_layer[b] = l;
    return SHOAL_OK;
}

/* Before layer l runs: it and the next `prefetch` streamed layers on their way, and l there. */
static shoal_status fetch_ahead(struct shoal_model *m, int l) {
    const int nl = m->part.layer1 - m->part.layer0;
    for (int k = l; k <= l + m->off.prefetch && k < nl; k++)
        if (shoal_offload_streamed(&m->off, k)) SHOAL_TRY(fetch_layer(m, k));
    if (!shoal_offload_streamed(&m->off, l)) return SHOAL_OK;
    const double t0 = shoal_now();
    SHOAL_TRY(shoal_backend_fetch_wait(m->be, m->ticket[l]));
    m->sstats.seconds += shoal_now() - t0;
    /* with the group on device buffers: every rank's part there, in place, in the
     * compute stream's order (after the copy waited for, before the layer) */
    const int b = shoal_offload_buffer(&m->off, l);
    struct shoal_comm *g = gather_dev(m);
    if (g && m->gather_due[b]) {
        char *buf = (char *)m->lbuf + (size_t)b * m->lstride;
        const size_t part = m->lpart[l];
        SHOAL_TRY(shoal_comm_allgather(g, buf + (size_t)shoal_comm_rank(g) * part, part, buf));
        m->gather_due[b] = 0;
        m->sstats.gathered += part * (uint64_t)(group_size(m) - 1);
    }
    return SHOAL_OK;
}

/* After the last layer: the next step's first streamed layers on their way, while
 * the head and the resident layers compute. */
static shoal_status fetch_next_step(struct shoal_model *m) {
    const int nl = m->part.layer1 - m->part.layer0;
    for (int k = m->off.n_resident; k < m->off.n_resident + m->off.prefetch && k < nl; k++)
        SHOAL_TRY(fetch_layer(m, k));
    return SHOAL_OK;
}

/* g = act(g) * u over n values: the family's gate. */
static shoal_status ffn_act(struct shoal_backend *be, const struct shoal_hparams *hp, float *g, const float *u,
                            size_t n) {
    if (hp->fam->act == SHOAL_ACT_GELU_TANH) return shoal_op_gelu_mul(be, g, u, n);
    return shoal_op_silu_mul(be, g, u, n);
}

/*
 * A mixture of experts' FFN over the run's tokens (xb, normed) into yd: the
 * router scores every expert, each token takes the n_expert_used best (ties
 * to the lower expert), weighted by a softmax over them (llama.cpp's
 * softmax over all, the chosen renormalised: the same weights), and each
 * expert this rank holds runs on its tokens gathered into rows of their
 * own, its outputs added into their tokens' f64 sums, weighted, expert by
 * expert. The router is whole on every rank, its scores the same bits on
 * each, so every rank routes alike without a word; the sums then join as
 * the dense FFN's do (sum_add).
 */
static shoal_status moe_ffn(struct shoal_state *s, const struct span *sp, const struct shoal_layer *L) {
    const struct shoal_model *m = s->m;
    const struct shoal_hparams *hp = &m->hp;
    struct shoal_backend *be = sp->be;
    const int n = sp->b->n_tokens, k = hp->n_expert_used, dim = hp->dim;
    const int x0 = m->part.x0, nx = m->part.x1 - m->part.x0;
    SHOAL_TRY(shoal_op_matmul(be, sp->rl, &L->router, sp->xb, n));
    SHOAL_TRY(shoal_op_topk(be, sp->rl, n, hp->n_expert, k, 0, sp->route));
    int off[SHOAL_EXPERTS_MAX + 1] = { 0 }, fill[SHOAL_EXPERTS_MAX];
    for (int i = 0; i < n * k; i++) {
        const int e = sp->route[i].id;
        if (e < 0 || e >= hp->n_expert || !(sp->route[i].v == sp->route[i].v))
            return shoal_errorf(SHOAL_INVALID, "the router of a layer scored token %d's experts as no number "
                                "(the file's weights?)", i / k);
        if (e >= x0 && e < x0 + nx) off[e - x0 + 1]++;
    }
    for (int e = 0; e < nx; e++) off[e + 1] += off[e];
    memcpy(fill, off, (size_t)nx * sizeof *fill);
    for (int t = 0; t < n; t++) {
        const struct shoal_cand *c = sp->route + (size_t)t * k;
        double sum = 0;
        for (int j = 0; j < k; j++) sum += exp((double)c[j].v - (double)c[0].v);
        for (int j = 0; j < k; j++) {
            const int e = c[j].id - x0;
            if (e < 0 || e >= nx) continue;
            sp->route_tok[fill[e]] = t;
            sp->route_w[fill[e]++] = exp((double)c[j].v - (double)c[0].v) / sum;
        }
    }
    SHOAL_TRY(shoal_op_zero_f64(be, sp->yd, (size_t)n * (size_t)dim));
    uint64_t runs = 0, bytes = 0;
    for (int e = 0; e < nx; e++) {
        const int c = off[e + 1] - off[e];
        if (!c) continue;
        const int32_t *tok = sp->route_tok + off[e];
        SHOAL_TRY(shoal_op_gather_rows(be, sp->xg, sp->xb, n, tok, c, dim));
        float *out[2] = { sp->hb, sp->hb2 };
        const struct shoal_weight *in[2] = { &L->xgate[e], &L->xup[e] };
        SHOAL_TRY(shoal_op_matmul_n(be, 2, out, in, sp->xg, c));
        SHOAL_TRY(ffn_act(be, hp, sp->hb, sp->hb2, (size_t)c * (size_t)m->ffn_l));
        SHOAL_TRY(shoal_op_matmul_f64(be, sp->yx, &L->xdown[e], sp->hb, c));
        SHOAL_TRY(shoal_op_add_rows_f64(be, sp->yd, n, sp->yx, tok, sp->route_w + off[e], c, dim));
        runs++;
        for (int w = 0; w < 3; w++) {
            const struct shoal_weight *x = w == 0 ? &L->xgate[e] : w == 1 ? &L->xup[e] : &L->xdown[e];
            bytes += (uint64_t)x->rows * x->row_bytes;
        }
    }
    __atomic_fetch_add(&s->expert_runs, runs, __ATOMIC_RELAXED); /* lanes run at once */
    __atomic_fetch_add(&s->expert_bytes, bytes, __ATOMIC_RELAXED);
    return SHOAL_OK;
}

/* The rank's layers over a run of the step's tokens. */
static shoal_status span_layers(struct shoal_state *s, const struct span *sp) {
    const struct shoal_model *m = s->m;
    const struct shoal_hparams *hp = &m->hp;
    struct shoal_backend *be = sp->be;
    const struct shoal_batch *b = sp->b;
    const int n = b->n_tokens, dim = hp->dim;
    const int qd = m->n_heads_l * hp->head_dim, kvd = m->n_kv_l * hp->head_dim;
    for (int l = 0; l < m->part.layer1 - m->part.layer0; l++) {
        if (m->stream) SHOAL_TRY(fetch_ahead((struct shoal_model *)m, l));
        const struct shoal_layer *L = &m->layers[l];
        const int windowed = shoal_layer_windowed(hp, m->part.layer0 + l), ringed = windowed && s->ring;
        const struct shoal_kv_desc *cache = ringed ? &s->kvd_ring : &s->kvd;
        const struct shoal_batch *kb = ringed ? sp->rb : b; /* where the cache keeps the tokens */
        char *kc = (char *)s->kv + s->kv_at[l], *vc = kc + (size_t)cache->n_slots * cache->row_bytes;
        const struct shoal_rope *rope = windowed ? &hp->rope_swa : &hp->rope;

        SHOAL_TRY(shoal_op_rmsnorm(be, sp->xb, sp->x, L->attn_norm, n, dim, hp->rms_eps));
        float *qkv_out[3] = { sp->q, sp->k, sp->v };
        const struct shoal_weight *qkv[3] = { &L->wq, &L->wk, &L->wv };
        SHOAL_TRY(shoal_op_matmul_n(be, 3, qkv_out, qkv, sp->xb, n));
        if (L->bq) {
            SHOAL_TRY(shoal_op_add_bias(be, sp->q, L->bq, n, qd));
            SHOAL_TRY(shoal_op_add_bias(be, sp->k, L->bk, n, kvd));
            SHOAL_TRY(shoal_op_add_bias(be, sp->v, L->bv, n, kvd));
        }
        if (L->q_norm) { /* each head alone */
            SHOAL_TRY(shoal_op_rmsnorm(be, sp->q, sp->q, L->q_norm, n * m->n_heads_l, hp->head_dim, hp->rms_eps));
            SHOAL_TRY(shoal_op_rmsnorm(be, sp->k, sp->k, L->k_norm, n * m->n_kv_l, hp->head_dim, hp->rms_eps));
        }
        SHOAL_TRY(shoal_op_rope(be, sp->q, m->n_heads_l, hp->head_dim, rope, b));
        SHOAL_TRY(shoal_op_rope(be, sp->k, m->n_kv_l, hp->head_dim, rope, b));
        SHOAL_TRY(shoal_op_kv_store(be, cache, kc, vc, sp->k, sp->v, kb));
        if (sp->sync) SHOAL_TRY(shoal_backend_lane_barrier(be)); /* every lane's keys stored */
        SHOAL_TRY(shoal_op_attention(be, sp->att, sp->q, m->n_heads_l, cache, kc, vc, kb, hp->attn_scale,
                                     windowed ? hp->swa_window : 0));
        SHOAL_TRY(project_add(s, sp, &L->wo, sp->att, L->post_attn_norm));

        SHOAL_TRY(shoal_op_rmsnorm(be, sp->xb, sp->x, L->ffn_norm, n, dim, hp->rms_eps));
        if (hp->n_expert) {
            SHOAL_TRY(moe_ffn(s, sp, L));
            SHOAL_TRY(sum_add(s, sp, L->post_ffn_norm));
            continue;
        }
        float *ffn_out[2] = { sp->hb, sp->hb2 };
        const struct shoal_weight *ffn_in[2] = { &L->gate, &L->up };
        SHOAL_TRY(shoal_op_matmul_n(be, 2, ffn_out, ffn_in, sp->xb, n));
        SHOAL_TRY(ffn_act(be, hp, sp->hb, sp->hb2, (size_t)n * m->ffn_l));
        SHOAL_TRY(project_add(s, sp, &L->down, sp->hb, L->post_ffn_norm));
    }
    return SHOAL_OK;
}

/*
 * Lanes (shoal_backend_run_lanes): a step of several tokens cut into equal
 * runs, one per thread of the backend, each through every layer alone: no
 * hand-over between threads at each op (16 streams on SmolLM2, 2 threads:
 * the pool's waits were a sixth of the step). A cut moves to a change of
 * sequence within an eighth of a lane's share; where a sequence still has
 * tokens in two lanes (a prompt in the step), every layer waits after the
 * cache is stored for all lanes to have stored theirs, since a token
 * attends to what its sequence's earlier tokens of the step store; only
 * steps of LANE_SYNC_TOKENS a lane at most are cut so (one long prompt runs
 * faster whole: 7-10% at 491 tokens on SmolLM2, its later tokens attending
 * to more of the cache). Each thread reads every weight, so a lane gets
 * LANE_TOKENS tokens at least. A step with a tensor-parallel group (its
 * sums are the step's) or streamed layers runs whole.
 */
#define LANES_MAX 64
#define LANE_TOKENS 4
#define LANE_SYNC_TOKENS 32
#define LANE_SEQ_MAX 4096
struct lane_arg {
    struct shoal_state *s;
    const struct shoal_batch *b;
    int sync;
    int cut[LANES_MAX + 1];
};

/* The cuts of b's tokens into n lanes; whether a sequence spans two (*sync). */
static void lane_cuts(const struct shoal_batch *b, int n, int *cut, int *sync) {
    const int nt = b->n_tokens, snap = nt / n / 8;
    cut[0] = 0;
    cut[n] = nt;
    for (int i = 1; i < n; i++) {
        const int want = (int)((long long)nt * i / n);
        cut[i] = want;
        for (int d = 0; d <= snap; d++) { /* the change of sequence nearest to want */
            if (want - d > cut[i - 1] && b->seq[want - d] != b->seq[want - d - 1]) {
                cut[i] = want - d;
                break;
            }
            if (want + d < nt && want + d > 0 && b->seq[want + d] != b->seq[want + d - 1]) {
                cut[i] = want + d;
                break;
            }
        }
    }
    *sync = b->n_seq > LANE_SEQ_MAX;
    if (*sync) return;
    signed char lane_of[LANE_SEQ_MAX];
    memset(lane_of, -1, (size_t)b->n_seq);
    for (int i = 0; i < n && !*sync; i++)
        for (int t = cut[i]; t < cut[i + 1]; t++) {
            const int q = b->seq[t];
            if (q < 0 || q >= b->n_seq || (lane_of[q] >= 0 && lane_of[q] != i)) { /* (attention says what is wrong) */
                *sync = 1;
                break;
            }
            lane_of[q] = (signed char)i;
        }
}

static int lanes_for(const struct shoal_state *s, const struct shoal_batch *b, int *cut, int *sync) {
    const struct shoal_model *m = s->m;
    int n = shoal_backend_lanes(m->be);
    if (n > LANES_MAX) n = LANES_MAX;
    if (n > b->n_tokens / LANE_TOKENS) n = b->n_tokens / LANE_TOKENS;
    if (n < 2 || m->stream || (s->dist && shoal_comm_size(s->dist->tp) > 1)) return 0;
    lane_cuts(b, n, cut, sync);
    return *sync && b->n_tokens > LANE_SYNC_TOKENS * n ? 0 : n;
}

/* Tokens [t0, t1) of b, with b's sequences and block table. */
static struct shoal_batch batch_part(const struct shoal_batch *b, int t0, int t1) {
    struct shoal_batch p = *b;
    p.n_tokens = t1 - t0;
    if (p.token) p.token += t0;
    p.pos += t0;
    p.seq += t0;
    if (p.slot) p.slot += t0;
    return p;
}

static shoal_status lane_run(void *arg, struct shoal_backend *lane, int i, int n) {
    (void)n;
    const struct lane_arg *a = arg;
    const int t0 = a->cut[i], t1 = a->cut[i + 1];
    const struct shoal_batch sub = batch_part(a->b, t0, t1);
    struct shoal_batch rsub; /* the rings' view of the same tokens */
    struct span sp = span_of(a->s, lane, &sub, t0);
    sp.sync = a->sync;
    if (a->s->ring) {
        rsub = batch_part(&a->s->ring_b, t0, t1);
        sp.rb = &rsub;
    }
    return span_layers(a->s, &sp);
}

/*
 * The batch as the windowed layers' rings see it (shoal_state_ring_slots):
 * position p of a sequence with ring r in slot r * ring + p % ring, and
 * every block of its table row that block of ring slots. One sequence in
 * one contiguous block has ring 0 (shoal run); a paged batch names each
 * sequence's ring (shoal_batch.ring, the scheduler's: other ranks get it in
 * the step, and check it as everything else in a step).
 */
static shoal_status ring_batch(struct shoal_state *s, const struct shoal_batch *b) {
    const int paged = b->ring != NULL;
    if (!paged && (b->n_seq != 1 || b->max_blocks != 1 || b->block_table[0] != 0 || b->block_size != s->n_ctx))
        return shoal_errorf(SHOAL_INTERNAL, "a state with one sequence's rings runs one sequence in one "
                            "block (this batch: %d sequences, %d blocks of %d)", b->n_seq, b->max_blocks,
                            b->block_size);
    if (paged && (!b->ring || b->n_seq < 1 || b->n_seq > s->n_rings))
        return shoal_errorf(SHOAL_INTERNAL, "a paged batch of %d sequences %s for the state's %d rings", b->n_seq,
                            b->ring ? "too many" : "without their rings", s->n_rings);
    if (b->n_tokens > s->n_batch)
        return shoal_errorf(SHOAL_INTERNAL, "%d tokens in a step of at most %d", b->n_tokens, s->n_batch);
    for (int q = 0; paged && q < b->n_seq; q++)
        if (b->ring[q] < 0 || b->ring[q] >= s->n_rings)
            return shoal_errorf(SHOAL_INTERNAL, "sequence %d's ring %d of %d", q, b->ring[q], s->n_rings);
    int max_pos = 0;
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->pos[t] < 0 || b->pos[t] >= s->n_ctx || b->seq[t] < 0 || b->seq[t] >= b->n_seq)
            return shoal_errorf(SHOAL_INTERNAL, "token %d at position %d of sequence %d: outside a context of %d "
                                "and %d sequences", t, b->pos[t], b->seq[t], s->n_ctx, b->n_seq);
        const int r = paged ? b->ring[b->seq[t]] : 0;
        s->ring_slot[t] = r * s->ring + b->pos[t] % s->ring;
        if (b->pos[t] > max_pos) max_pos = b->pos[t];
    }
    const int blocks = max_pos / s->ring + 1; /* n_seq rows of them <= ring_table_cap */
    for (int q = 0; paged && q < b->n_seq; q++)
        for (int k = 0; k < blocks; k++) s->ring_table[(size_t)q * blocks + k] = b->ring[q];
    s->ring_b = *b;
    s->ring_b.slot = s->ring_slot;
    s->ring_b.block_table = s->ring_table;
    s->ring_b.block_size = s->ring;
    s->ring_b.max_blocks = blocks;
    return SHOAL_OK;
}

static shoal_status layers(struct shoal_state *s, const struct shoal_batch *b) {
    const struct shoal_model *m = s->m;
    if (s->ring) SHOAL_TRY(ring_batch(s, b));
    struct lane_arg a = { s, b, 0, { 0 } };
    const int n = lanes_for(s, b, a.cut, &a.sync);
    if (n) {
        SHOAL_TRY(shoal_backend_run_lanes(m->be, n, lane_run, &a));
        s->lane_steps++;
    } else {
        struct span sp = span_of(s, m->be, b, 0);
        if (s->ring) sp.rb = &s->ring_b;
        SHOAL_TRY(span_layers(s, &sp));
    }
    if (m->stream) SHOAL_TRY(fetch_next_step((struct shoal_model *)m));
    return SHOAL_OK;
}

shoal_status shoal_run_layers(struct shoal_state *s, const struct shoal_batch *b) {
    struct shoal_backend *be = s->m->be;
    /* recorded once and replayed (where the backend can), unless a sum goes
     * through the host between the ops */
    const int staged = s->dist && shoal_comm_size(s->dist->tp) > 1 && !s->dist->tp_dev &&
                       !shoal_backend_host_memory(be);
    /* (streamed layers copy between the ops; a CUDA graph records one batch, and rings are a second;
     * experts run as the step's routes say, which the host reads between the ops) */
    if (staged || s->m->stream || s->ring || s->m->hp.n_expert) return layers(s, b);
    /* the state by its serial, not its address: a new state may come where a freed one was */
    uint64_t key = 1469598103934665603ull;
    const uint64_t parts[] = { s->serial, (uint64_t)b->n_tokens, (uint64_t)b->n_seq,
                               (uint64_t)b->max_blocks, (uint64_t)b->block_size };
    for (size_t i = 0; i < sizeof parts / sizeof *parts; i++) key = (key ^ parts[i]) * 1099511628211ull;
    int replayed = 0;
    SHOAL_TRY(shoal_backend_graph_begin(be, key, b, &replayed));
    if (!replayed) {
        shoal_status rc = layers(s, b), end = shoal_backend_graph_end(be, rc == SHOAL_OK);
        SHOAL_TRY(rc);
        SHOAL_TRY(end);
    }
    return SHOAL_OK; /* queued: the head's download, or the hand-off's, waits for it */
}

/* The k best of n candidates into out, best first (k small: a sorted insert). */
static void select_best(const struct shoal_cand *in, int n, int k, struct shoal_cand *out) {
    int have = 0;
    for (int i = 0; i < n; i++) shoal_cand_keep(out, k, &have, in[i]);
    shoal_cand_pad(out, have, k);
}

void shoal_expand_cands(const struct shoal_cand *c, int n_out, int topk, int n_vocab, float *logits) {
    for (int i = 0; i < n_out; i++) {
        float *row = logits + (size_t)i * n_vocab;
        for (int v = 0; v < n_vocab; v++) row[v] = -INFINITY;
        for (int j = 0; j < topk; j++) {
            const struct shoal_cand *x = &c[(size_t)i * topk + j];
            if (x->id >= 0 && x->id < n_vocab) row[x->id] = x->v;
        }
    }
}

shoal_status shoal_run_head(struct shoal_state *s, int n, int out0, int n_out, int topk) {
    const struct shoal_model *m = s->m;
    const struct shoal_hparams *hp = &m->hp;
    const int dim = hp->dim;
    if (n_out == 0) return SHOAL_OK;
    if (out0 < 0 || out0 + n_out > n || n_out > s->n_outputs || topk < 0 || topk > s->topk)
        return shoal_errorf(SHOAL_INTERNAL, "output rows %d-%d of a %d-token batch (at most %d, top %d)",
                            out0, out0 + n_out - 1, n, s->n_outputs, topk);
    /* the final norm only for the rows whose logits are wanted */
    SHOAL_TRY(shoal_op_rmsnorm(m->be, s->xb, s->x + (size_t)out0 * dim, m->output_norm, n_out, dim,
                               hp->rms_eps));
    const size_t local = (size_t)n_out * m->n_vocab_l;
    const int size = s->dist ? shoal_comm_size(s->dist->tp) : 1;
    float *rows = s->head_out ? s->head_out : s->gathered; /* where whole rows go */
    /* one rank's whole rows in host memory: computed in place, not copied (twice, 3 MB a
     * step at 16 streams on SmolLM2, while the other threads waited) */
    const int direct = !topk && size == 1 && shoal_backend_host_memory(m->be);
    SHOAL_TRY(shoal_op_matmul(m->be, direct ? rows : s->logits, &m->output, s->xb, n_out));
    if (direct) return SHOAL_OK;
    shoal_status rc = SHOAL_OK;
    float *mine = NULL;
    if (topk) {
        /* each rank's best of its slice (picked on the backend) to the first, which
         * keeps the best of all */
        const size_t per = (size_t)n_out * topk;
        struct shoal_cand *c = malloc(per * ((size_t)size + 1) * sizeof *c), *best = c ? c + per * size : NULL;
        size_t *bytes = malloc(sizeof(size_t) * (size_t)size);
        if (!c || !bytes) rc = shoal_errorf(SHOAL_NOMEM, "out of memory gathering logits");
        if (rc == SHOAL_OK)
            rc = shoal_op_topk(m->be, s->logits, n_out, m->n_vocab_l, topk, m->part.v0, best);
        for (int r = 0; rc == SHOAL_OK && r < size; r++) bytes[r] = per * sizeof *c;
        if (rc == SHOAL_OK && size > 1) rc = shoal_comm_gatherv(s->dist->tp, best, bytes, c, 0);
        else if (rc == SHOAL_OK) memcpy(c, best, per * sizeof *c);
        if (rc == SHOAL_OK && (size == 1 || shoal_comm_rank(s->dist->tp) == 0)) {
            struct shoal_cand *row = malloc((size_t)size * topk * sizeof *row);
            if (!row) rc = shoal_errorf(SHOAL_NOMEM, "out of memory gathering logits");
            for (int i = 0; rc == SHOAL_OK && i < n_out; i++) {
                for (int r = 0; r < size; r++)
                    memcpy(row + (size_t)r * topk, c + ((size_t)r * n_out + i) * topk,
                           (size_t)topk * sizeof *row);
                select_best(row, size * topk, topk, s->cands + (size_t)i * topk);
            }
            free(row);
        }
        free(c);
        free(bytes);
        return rc;
    }
    if (size == 1) /* the rows whole here: straight into place */
        return shoal_backend_download(m->be, rows, s->logits, local * sizeof(float));
    if (!(mine = malloc(local * sizeof(float))))
        return shoal_errorf(SHOAL_NOMEM, "out of memory gathering logits");
    rc = shoal_backend_download(m->be, mine, s->logits, local * sizeof(float));
    if (rc == SHOAL_OK) {
        /* the group's vocabulary slices to its first rank, then row by row into place */
        struct shoal_comm *tp = s->dist->tp;
        const struct shoal_rank_part *parts = &s->dist->plan->part[m->part.stage * size];
        size_t *bytes = malloc(sizeof(size_t) * (size_t)size);
        float *all = shoal_comm_rank(tp) == 0 ? malloc((size_t)n_out * hp->n_vocab * sizeof(float)) : NULL;
        if (!bytes || (shoal_comm_rank(tp) == 0 && !all))
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory gathering logits");
        for (int r = 0; rc == SHOAL_OK && r < size; r++)
            bytes[r] = (size_t)n_out * (size_t)(parts[r].v1 - parts[r].v0) * sizeof(float);
        if (rc == SHOAL_OK) rc = shoal_comm_gatherv(tp, mine, bytes, all, 0);
        if (rc == SHOAL_OK && shoal_comm_rank(tp) == 0) {
            const float *src = all;
            for (int r = 0; r < size; r++) {
                int v0 = parts[r].v0, nv = parts[r].v1 - parts[r].v0;
                for (int i = 0; i < n_out; i++)
                    memcpy(rows + (size_t)i * hp->n_vocab + v0, src + (size_t)i * nv,
                           (size_t)nv * sizeof(float));
                src += (size_t)n_out * nv;
            }
        }
        free(bytes);
        free(all);
    }
    free(mine);
    return rc;
}
