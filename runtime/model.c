/*
 * model.c — hyperparameters, weight loading and the forward pass (model.h).
 *
 * The forward pass is the LLaMA block: RMSNorm, Q/K/V projections (with
 * biases for qwen2), RoPE, grouped-query attention over the KV cache, the
 * output projection and residual; RMSNorm, the SwiGLU FFN and residual; the
 * final norm and the output head. Every step is one backend op.
 */
#include "model.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* --------------------------------------------------------- architectures */

struct arch_info {
    const char *name;
    int rope_mode;
    int qkv_bias;
};

static const struct arch_info archs[] = {
    { "llama", SHOAL_ROPE_NORM, 0 },
    { "mistral", SHOAL_ROPE_NORM, 0 },
    { "qwen2", SHOAL_ROPE_NEOX, 1 },
};

static const struct arch_info *find_arch(const char *name) {
    for (size_t i = 0; i < sizeof archs / sizeof *archs; i++)
        if (strcmp(archs[i].name, name) == 0) return &archs[i];
    return NULL;
}

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
    const struct arch_info *ai = find_arch(hp->arch);
    if (!ai)
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "%s: architecture '%s' is not supported (shoal runs llama, mistral "
                            "and qwen2)",
                            g->path, hp->arch);
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

/* --------------------------------------------------------------- loading */

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

static shoal_status load_matrix(struct shoal_model *m, const char *name, int64_t rows,
                                int64_t cols, struct shoal_weight *w) {
    const struct shoal_gguf_tensor *t = NULL;
    SHOAL_TRY(want(m->g, name, cols, rows, &t));
    if (!computable(t->type))
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "%s: tensor '%s' is %s, which shoal cannot compute with yet "
                            "(supported: f32, f16, bf16, q8_0, q4_0)",
                            m->g->path, name, shoal_dtype_name(t->type));
    shoal_status rc = m->be ? shoal_weight_prepare(m->be, w, t->type, rows, cols, t->data) : SHOAL_OK;
    if (rc != SHOAL_OK) {
        shoal_error_prefix("%s: tensor '%s'", m->g->path, name);
        return rc;
    }
    m->weight_bytes += t->nbytes;
    m->n_params += (uint64_t)rows * (uint64_t)cols;
    return SHOAL_OK;
}

/* A 1-D f32 vector (norm weight or bias) converted and copied into dst (device). */
static shoal_status load_vector(struct shoal_model *m, const char *name, int64_t n, float *dst,
                                float *tmp) {
    const struct shoal_gguf_tensor *t = NULL;
    SHOAL_TRY(want(m->g, name, n, 0, &t));
    shoal_status rc = shoal_dequantize_row(t->type, t->data, tmp, n);
    if (rc != SHOAL_OK) {
        shoal_error_prefix("%s: tensor '%s'", m->g->path, name);
        return rc;
    }
    m->weight_bytes += t->nbytes;
    m->n_params += (uint64_t)n;
    return m->be ? shoal_backend_upload(m->be, dst, tmp, (size_t)n * sizeof(float)) : SHOAL_OK;
}

static shoal_status load_weights(struct shoal_model *m) {
    const struct shoal_hparams *hp = &m->hp;
    const struct shoal_gguf *g = m->g;
    int64_t qd = (int64_t)hp->n_heads * hp->head_dim, kvd = (int64_t)hp->n_kv_heads * hp->head_dim;
    char name[96];

    /* one device block for every small f32 vector */
    int64_t per_layer = 2 * (int64_t)hp->dim + (hp->has_qkv_bias ? qd + 2 * kvd : 0);
    int64_t n_small = per_layer * hp->n_layers + hp->dim;
    if (m->be) SHOAL_TRY(shoal_backend_alloc(m->be, (size_t)n_small * sizeof(float), &m->small));
    else if (!(m->small = calloc((size_t)n_small, sizeof(float)))) /* a check: host scratch */
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    float *tmp = malloc((size_t)(qd > hp->dim ? qd : hp->dim) * sizeof(float));
    if (!tmp) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    float *next = m->small;
    shoal_status rc = SHOAL_OK;

    SHOAL_TRY_GOTO(load_matrix(m, "token_embd.weight", hp->n_vocab, hp->dim, &m->tok_embd), rc, done);
    if (hp->tied_output) {
        m->output = m->tok_embd;
        m->output.owned = NULL; /* released once, through tok_embd */
    } else {
        SHOAL_TRY_GOTO(load_matrix(m, "output.weight", hp->n_vocab, hp->dim, &m->output), rc, done);
    }
    m->output_norm = next;
    next += hp->dim;
    SHOAL_TRY_GOTO(load_vector(m, "output_norm.weight", hp->dim, m->output_norm, tmp), rc, done);

    for (int l = 0; l < hp->n_layers; l++) {
        struct shoal_layer *L = &m->layers[l];
#define MAT(field, suffix, rows, cols)                                                         \
    snprintf(name, sizeof name, "blk.%d." suffix, l);                                          \
    SHOAL_TRY_GOTO(load_matrix(m, name, rows, cols, &L->field), rc, done)
#define VEC(field, suffix, n)                                                                  \
    snprintf(name, sizeof name, "blk.%d." suffix, l);                                          \
    L->field = next;                                                                           \
    next += (n);                                                                               \
    SHOAL_TRY_GOTO(load_vector(m, name, n, L->field, tmp), rc, done)
        MAT(wq, "attn_q.weight", qd, hp->dim);
        MAT(wk, "attn_k.weight", kvd, hp->dim);
        MAT(wv, "attn_v.weight", kvd, hp->dim);
        MAT(wo, "attn_output.weight", hp->dim, qd);
        MAT(gate, "ffn_gate.weight", hp->ffn_dim, hp->dim);
        MAT(up, "ffn_up.weight", hp->ffn_dim, hp->dim);
        MAT(down, "ffn_down.weight", hp->dim, hp->ffn_dim);
        VEC(attn_norm, "attn_norm.weight", hp->dim);
        VEC(ffn_norm, "ffn_norm.weight", hp->dim);
        if (hp->has_qkv_bias) {
            VEC(bq, "attn_q.bias", qd);
            VEC(bk, "attn_k.bias", kvd);
            VEC(bv, "attn_v.bias", kvd);
        }
#undef MAT
#undef VEC
    }

    /* llama3-style rope scaling: one divisor per rotated pair */
    const struct shoal_gguf_tensor *rf = shoal_gguf_find_tensor(g, "rope_freqs.weight");
    if (rf) {
        int half = hp->rope.rope_dim / 2;
        if (rf->n_dims != 1 || rf->ne[0] != half) {
            rc = shoal_errorf(SHOAL_FORMAT, "%s: rope_freqs.weight has %" PRId64
                              " values, expected %d", g->path, rf->ne[0], half);
            goto done;
        }
        m->freq_factors = malloc((size_t)half * sizeof(float));
        if (!m->freq_factors) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto done;
        }
        SHOAL_TRY_GOTO(shoal_dequantize_row(rf->type, rf->data, m->freq_factors, half), rc, done);
        m->hp.rope.freq_factors = m->freq_factors;
    }

    /* the type most of the bytes are in, for messages */
    m->main_type = m->layers[0].gate.type;
done:
    free(tmp);
    return rc;
}

shoal_status shoal_model_check(const struct shoal_gguf *g) {
    struct shoal_model *m = NULL;
    shoal_status rc = shoal_model_load(&m, g, NULL);
    shoal_model_destroy(m);
    return rc;
}

shoal_status shoal_model_load(struct shoal_model **out, const struct shoal_gguf *g,
                              struct shoal_backend *be) {
    *out = NULL;
    struct shoal_model *m = calloc(1, sizeof *m);
    if (!m) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    m->g = g;
    m->be = be;
    shoal_status rc;
    SHOAL_TRY_GOTO(shoal_hparams_read(&m->hp, g), rc, fail);
    m->layers = calloc((size_t)m->hp.n_layers, sizeof *m->layers);
    if (!m->layers) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto fail;
    }
    SHOAL_TRY_GOTO(load_weights(m), rc, fail);
    *out = m;
    return SHOAL_OK;
fail:
    shoal_model_destroy(m);
    return rc;
}

void shoal_model_destroy(struct shoal_model *m) {
    if (!m) return;
    if (!m->be) { /* a check: nothing was prepared on a device */
        free(m->small);
        free(m->freq_factors);
        free(m->layers);
        free(m);
        return;
    }
    if (m->layers) {
        for (int l = 0; l < m->hp.n_layers; l++) {
            struct shoal_layer *L = &m->layers[l];
            struct shoal_weight *ws[] = { &L->wq, &L->wk, &L->wv, &L->wo, &L->gate, &L->up, &L->down };
            for (size_t i = 0; i < sizeof ws / sizeof *ws; i++) shoal_weight_release(m->be, ws[i]);
        }
    }
    shoal_weight_release(m->be, &m->tok_embd);
    shoal_weight_release(m->be, &m->output);
    shoal_backend_free(m->be, m->small);
    free(m->freq_factors);
    free(m->layers);
    free(m);
}

/* ----------------------------------------------------------------- state */

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
    s->n_ctx = p->n_ctx;
    s->n_batch = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    s->n_outputs = p->n_outputs < 1 ? 1 : p->n_outputs < s->n_batch ? p->n_outputs : s->n_batch;
    shoal_kv_desc_init(&s->kvd, p->kv_type, hp->n_kv_heads, hp->head_dim, p->n_ctx);

    /* sizes first, then one block each for the KV cache and the activations; the
     * cache is not cleared: attention reads only positions already written, and
     * untouched pages cost no memory */
    size_t nb = (size_t)s->n_batch;
    size_t qd = (size_t)hp->n_heads * hp->head_dim, kvd = (size_t)hp->n_kv_heads * hp->head_dim;
    size_t counts[] = { nb * hp->dim, nb * hp->dim, nb * qd, nb * kvd, nb * kvd, nb * qd,
                        nb * hp->ffn_dim, nb * hp->ffn_dim, (size_t)s->n_outputs * hp->n_vocab };
    float **slots[] = { &s->x, &s->xb, &s->q, &s->k, &s->v, &s->att, &s->hb, &s->hb2, &s->logits };
    size_t total = 0;
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++)
        total += (counts[i] * sizeof(float) + 63) / 64 * 64;
    s->act_bytes = total;
    s->kv_bytes = (uint64_t)hp->n_layers * 2 * (uint64_t)p->n_ctx * s->kvd.row_bytes;
    shoal_status rc;
    if ((rc = shoal_backend_alloc(m->be, (size_t)s->kv_bytes, &s->kv)) != SHOAL_OK) {
        char b[32];
        shoal_error_prefix("the KV cache for %d positions (%s) does not fit (lower -c or use "
                           "--kv-type q8)",
                           p->n_ctx, shoal_fmt_bytes(b, sizeof b, (double)s->kv_bytes));
        goto fail;
    }
    SHOAL_TRY_GOTO(shoal_backend_alloc(m->be, total, &s->act), rc, fail);
    char *at = s->act;
    for (size_t i = 0; i < sizeof counts / sizeof *counts; i++) {
        *slots[i] = (float *)at;
        at += (counts[i] * sizeof(float) + 63) / 64 * 64;
    }
    *out = s;
    return SHOAL_OK;
fail:
    shoal_state_destroy(s);
    return rc;
}

void shoal_state_destroy(struct shoal_state *s) {
    if (!s) return;
    shoal_backend_free(s->m->be, s->kv);
    shoal_backend_free(s->m->be, s->act);
    free(s);
}

/* --------------------------------------------------------------- forward */

shoal_status shoal_forward(struct shoal_state *s, const struct shoal_batch *b,
                           const int *out_rows, int n_out, float *logits) {
    const struct shoal_model *m = s->m;
    const struct shoal_hparams *hp = &m->hp;
    struct shoal_backend *be = m->be;
    const int n = b->n_tokens, dim = hp->dim;
    const int qd = hp->n_heads * hp->head_dim, kvd = hp->n_kv_heads * hp->head_dim;
    if (n < 1 || n > s->n_batch)
        return shoal_errorf(SHOAL_INTERNAL, "batch of %d tokens (limit %d)", n, s->n_batch);
    if (n_out > n || n_out > s->n_outputs)
        return shoal_errorf(SHOAL_INTERNAL, "%d output rows of %d (at most %d)", n_out, n, s->n_outputs);
    for (int t = 0; t < n; t++)
        if (b->slot[t] < 0 || b->slot[t] >= s->n_ctx)
            return shoal_errorf(SHOAL_INVALID, "KV slot %d is outside the context of %d",
                                b->slot[t], s->n_ctx);
    const float scale = 1.0f / sqrtf((float)hp->head_dim);
    const size_t layer_kv = (size_t)s->n_ctx * s->kvd.row_bytes;

    SHOAL_TRY(shoal_op_embed(be, s->x, &m->tok_embd, b));
    for (int l = 0; l < hp->n_layers; l++) {
        const struct shoal_layer *L = &m->layers[l];
        char *kc = (char *)s->kv + (size_t)l * 2 * layer_kv, *vc = kc + layer_kv;

        SHOAL_TRY(shoal_op_rmsnorm(be, s->xb, s->x, L->attn_norm, n, dim, hp->rms_eps));
        float *qkv_out[3] = { s->q, s->k, s->v };
        const struct shoal_weight *qkv[3] = { &L->wq, &L->wk, &L->wv };
        SHOAL_TRY(shoal_op_matmul_n(be, 3, qkv_out, qkv, s->xb, n));
        if (L->bq) {
            SHOAL_TRY(shoal_op_add_bias(be, s->q, L->bq, n, qd));
            SHOAL_TRY(shoal_op_add_bias(be, s->k, L->bk, n, kvd));
            SHOAL_TRY(shoal_op_add_bias(be, s->v, L->bv, n, kvd));
        }
        SHOAL_TRY(shoal_op_rope(be, s->q, hp->n_heads, hp->head_dim, &hp->rope, b));
        SHOAL_TRY(shoal_op_rope(be, s->k, hp->n_kv_heads, hp->head_dim, &hp->rope, b));
        SHOAL_TRY(shoal_op_kv_store(be, &s->kvd, kc, vc, s->k, s->v, b));
        SHOAL_TRY(shoal_op_attention(be, s->att, s->q, hp->n_heads, &s->kvd, kc, vc, b, scale));
        SHOAL_TRY(shoal_op_matmul(be, s->xb, &L->wo, s->att, n));
        SHOAL_TRY(shoal_op_add(be, s->x, s->xb, (size_t)n * dim));

        SHOAL_TRY(shoal_op_rmsnorm(be, s->xb, s->x, L->ffn_norm, n, dim, hp->rms_eps));
        float *ffn_out[2] = { s->hb, s->hb2 };
        const struct shoal_weight *ffn_in[2] = { &L->gate, &L->up };
        SHOAL_TRY(shoal_op_matmul_n(be, 2, ffn_out, ffn_in, s->xb, n));
        SHOAL_TRY(shoal_op_silu_mul(be, s->hb, s->hb2, (size_t)n * hp->ffn_dim));
        SHOAL_TRY(shoal_op_matmul(be, s->xb, &L->down, s->hb, n));
        SHOAL_TRY(shoal_op_add(be, s->x, s->xb, (size_t)n * dim));
    }
    if (n_out == 0) return shoal_backend_synchronize(be);
    /* the final norm only for the rows whose logits are wanted, packed */
    for (int i = 0; i < n_out; i++) {
        if (out_rows[i] < 0 || out_rows[i] >= n)
            return shoal_errorf(SHOAL_INTERNAL, "output row %d of a %d-token batch", out_rows[i], n);
        SHOAL_TRY(shoal_op_rmsnorm(be, s->xb + (size_t)i * dim, s->x + (size_t)out_rows[i] * dim,
                                   m->output_norm, 1, dim, hp->rms_eps));
    }
    SHOAL_TRY(shoal_op_matmul(be, s->logits, &m->output, s->xb, n_out));
    SHOAL_TRY(shoal_backend_synchronize(be));
    return shoal_backend_download(be, logits, s->logits,
                                  (size_t)n_out * hp->n_vocab * sizeof(float));
}
