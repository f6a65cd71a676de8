/*
 * synth.c — synthetic GGUF models (synth.h): the tensors a LLaMA-family
 * shape has, filled row by row from per-tensor generators and quantized to
 * the asked type, and a SentencePiece-style vocabulary.
 *
 * The weights are scaled so that activations keep unit-ish variance through
 * the layers and the logits are peaked enough for greedy decoding to be
 * stable. What is written, byte for byte, is what `shoal synth` has always
 * written for the same flags: tests and benchmarks elsewhere rely on it.
 */
#define _GNU_SOURCE
#include "synth.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "gguf.h"
#include "../runtime/arch.h"

void shoal_synth_defaults(struct shoal_synth_params *p) {
    *p = (struct shoal_synth_params){ .arch = "llama", .dim = 256, .layers = 4, .heads = 8,
                                      .kv_heads = 4, .head_dim = 0, .ffn = 768, .vocab = 512,
                                      .ctx = 2048, .type = SHOAL_DTYPE_F32, .embd_type = -1,
                                      .out_type = -1, .rope_base = 10000.0f, .seed = 1 };
}

/* ----------------------------------------------------------- random values */

static uint64_t mix(uint64_t x) {
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdull;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ull;
    return x ^ (x >> 33);
}

static uint64_t name_seed(uint64_t seed, const char *name) {
    uint64_t h = 1469598103934665603ull;
    for (const char *p = name; *p; p++) h = (h ^ (uint8_t)*p) * 1099511628211ull;
    return mix(seed ^ h) | 1;
}

static inline float urand(uint64_t *s) { /* uniform in [-1, 1) */
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return (float)((*s >> 40) * (1.0 / 16777216.0)) * 2.0f - 1.0f;
}

/* ------------------------------------------------------------- vocabulary */

enum { TOK_NORMAL = 1, TOK_UNKNOWN = 2, TOK_CONTROL = 3, TOK_BYTE = 6 };

/* A SentencePiece-style vocabulary: specials, 256 byte tokens, then pieces. */
static shoal_status write_vocab(struct shoal_gguf_writer *w, int n) {
    char **tok = calloc((size_t)n, sizeof *tok);
    float *score = calloc((size_t)n, sizeof *score);
    int32_t *type = calloc((size_t)n, sizeof *type);
    shoal_status rc = SHOAL_OK;
    if (!tok || !score || !type) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the vocabulary");
        goto done;
    }
    static const char *const special[] = { "<unk>", "<s>", "</s>" };
    int i = 0;
    for (; i < 3; i++) {
        tok[i] = strdup(special[i]);
        type[i] = i == 0 ? TOK_UNKNOWN : TOK_CONTROL;
    }
    for (int b = 0; b < 256; b++, i++) {
        char s[8];
        snprintf(s, sizeof s, "<0x%02X>", b);
        tok[i] = strdup(s);
        type[i] = TOK_BYTE;
    }
    /* pieces: "▁" alone, then printable ASCII alone and after "▁", then
     * lowercase pairs and triples with and without "▁" */
    static const char sp[] = "\xe2\x96\x81"; /* U+2581 */
    const char *letters = "etaoinshrdlucmfwypvbgkjqxz";
    int k = 0;
    for (; i < n; i++, k++) {
        char s[16];
        if (k == 0) {
            snprintf(s, sizeof s, "%s", sp);
        } else if (k <= 2 * 94) {
            int c = 33 + (k - 1) / 2;
            snprintf(s, sizeof s, "%s%c", (k - 1) % 2 ? sp : "", c);
        } else {
            int j = k - 1 - 2 * 94, pairs = 26 * 26 * 2;
            if (j < pairs) {
                int a = (j / 2) / 26, b = (j / 2) % 26;
                snprintf(s, sizeof s, "%s%c%c", j % 2 ? sp : "", letters[a], letters[b]);
            } else {
                j -= pairs;
                int t = (j / 2) % (26 * 26 * 26), a = t / 676, b = (t / 26) % 26, c = t % 26;
                int rep = (j / 2) / (26 * 26 * 26); /* beyond all triples: suffix a number */
                if (rep)
                    snprintf(s, sizeof s, "%s%c%c%c%d", j % 2 ? sp : "", letters[a], letters[b],
                             letters[c], rep);
                else
                    snprintf(s, sizeof s, "%s%c%c%c", j % 2 ? sp : "", letters[a], letters[b],
                             letters[c]);
            }
        }
        tok[i] = strdup(s);
        score[i] = -(float)k;
        type[i] = TOK_NORMAL;
    }
    for (i = 0; i < n; i++)
        if (!tok[i]) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the vocabulary");
            goto done;
        }
    SHOAL_TRY_GOTO(shoal_gguf_set_str(w, "tokenizer.ggml.model", "llama"), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)tok, (uint64_t)n), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_arr(w, "tokenizer.ggml.scores", SHOAL_GGUF_FLOAT32, score, (uint64_t)n), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_arr(w, "tokenizer.ggml.token_type", SHOAL_GGUF_INT32, type, (uint64_t)n), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, "tokenizer.ggml.unknown_token_id", 0), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1), rc, done);
done:
    if (tok)
        for (i = 0; i < n; i++) free(tok[i]);
    free(tok);
    free(score);
    free(type);
    return rc;
}

/* Copies every tokenizer.* key of another GGUF, in its order. */
static shoal_status copy_vocab(struct shoal_gguf_writer *w, const struct shoal_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++)
        if (strncmp(g->kv[i].key, "tokenizer.", 10) == 0) SHOAL_TRY(shoal_gguf_copy_kv(w, &g->kv[i]));
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- tensors */

/* A shape with every default resolved (head_dim, the embedding and head types, the vocabulary). */
struct shape {
    const char *arch;
    const struct shoal_arch *fam;
    int dim, layers, heads, kv_heads, head_dim, ffn, vocab, ctx, tied;
    int type, embd_type, out_type;
    int window;
    int experts, used;
};

struct tensor_plan {
    char name[64];
    int type, n_dims;
    int64_t ne[3];
    float scale, offset; /* values: offset + scale * U(-1, 1) */
};

static shoal_status check_cols(const struct tensor_plan *t) {
    if (!shoal_dtype_row_bytes(t->type, t->ne[0]))
        return shoal_errorf(SHOAL_INVALID,
                            "tensor %s: its rows have %" PRId64 " values, not a multiple of the "
                            "%s block size %d; choose dimensions that are, or another --type",
                            t->name, t->ne[0], shoal_dtype_name(t->type),
                            shoal_dtype_info(t->type)->block);
    return SHOAL_OK;
}

/* The tensors in file order; tp has room for 3 + TENSORS_PER_LAYER per layer. */
#define TENSORS_PER_LAYER 16
static int plan_tensors(const struct shape *s, struct tensor_plan *tp) {
    int n = 0;
    int qd = s->heads * s->head_dim, kvd = s->kv_heads * s->head_dim;
    int bias = s->fam->qkv_bias;
#define T2(nm, ty, cols, rows, sc)                                                             \
    do {                                                                                       \
        tp[n] = (struct tensor_plan){ "", ty, 2, { cols, rows, 1 }, sc, 0 };                   \
        snprintf(tp[n].name, sizeof tp[n].name, "%s", nm);                                     \
        n++;                                                                                   \
    } while (0)
#define T1(nm, len, sc, off)                                                                   \
    do {                                                                                       \
        tp[n] = (struct tensor_plan){ "", SHOAL_DTYPE_F32, 1, { len, 1, 1 }, sc, off };        \
        snprintf(tp[n].name, sizeof tp[n].name, "%s", nm);                                     \
        n++;                                                                                   \
    } while (0)
#define T3(nm, ty, cols, rows, sc)                                                             \
    do {                                                                                       \
        tp[n] = (struct tensor_plan){ "", ty, 3, { cols, rows, s->experts }, sc, 0 };          \
        snprintf(tp[n].name, sizeof tp[n].name, "%s", nm);                                     \
        n++;                                                                                   \
    } while (0)
    /* a family that scales its embeddings by sqrt(dim) stores them that much smaller (as
     * Gemma's are), so that they do not drown what the layers add */
    T2("token_embd.weight", s->embd_type, s->dim, s->vocab, s->fam->embd_scale ? 1.0f / sqrtf((float)s->dim) : 1.0f);
    T1("output_norm.weight", s->dim, 0.1f, 1.0f);
    if (!s->tied) {
        T2("output.weight", s->out_type, s->dim, s->vocab, 4.0f * sqrtf(3.0f / s->dim));
    }
    char nm[64];
    for (int l = 0; l < s->layers; l++) {
        float a = sqrtf(3.0f / s->dim), f = sqrtf(3.0f / s->ffn), o = sqrtf(3.0f / qd);
#define NAME(suffix) (snprintf(nm, sizeof nm, "blk.%d.%s", l, suffix), nm)
        T1(NAME("attn_norm.weight"), s->dim, 0.1f, 1.0f);
        T2(NAME("attn_q.weight"), s->type, s->dim, qd, a);
        T2(NAME("attn_k.weight"), s->type, s->dim, kvd, a);
        T2(NAME("attn_v.weight"), s->type, s->dim, kvd, a);
        if (bias) {
            T1(NAME("attn_q.bias"), qd, 0.1f, 0);
            T1(NAME("attn_k.bias"), kvd, 0.1f, 0);
            T1(NAME("attn_v.bias"), kvd, 0.1f, 0);
        }
        if (s->fam->qk_norm) {
            T1(NAME("attn_q_norm.weight"), s->head_dim, 0.1f, 1.0f);
            T1(NAME("attn_k_norm.weight"), s->head_dim, 0.1f, 1.0f);
        }
        T2(NAME("attn_output.weight"), s->type, qd, s->dim, o);
        if (s->fam->post_norms) T1(NAME("post_attention_norm.weight"), s->dim, 0.1f, 1.0f);
        T1(NAME("ffn_norm.weight"), s->dim, 0.1f, 1.0f);
        if (s->experts) { /* the router in f32 (llama.cpp's quantize leaves it so), scores well apart */
            T2(NAME("ffn_gate_inp.weight"), SHOAL_DTYPE_F32, s->dim, s->experts, 4.0f * a);
            T3(NAME("ffn_gate_exps.weight"), s->type, s->dim, s->ffn, a);
            T3(NAME("ffn_up_exps.weight"), s->type, s->dim, s->ffn, a);
            T3(NAME("ffn_down_exps.weight"), s->type, s->ffn, s->dim, f);
        } else {
            T2(NAME("ffn_gate.weight"), s->type, s->dim, s->ffn, a);
            T2(NAME("ffn_up.weight"), s->type, s->dim, s->ffn, a);
            T2(NAME("ffn_down.weight"), s->type, s->ffn, s->dim, f);
        }
        if (s->fam->post_norms) T1(NAME("post_ffw_norm.weight"), s->dim, 0.1f, 1.0f);
#undef NAME
    }
#undef T1
#undef T2
#undef T3
    return n;
}

/* The hyperparameter keys, under the architecture's prefix. */
static shoal_status write_hparams(struct shoal_gguf_writer *w, const struct shape *s, float rope_base) {
    char key[96], name[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", s->arch, suffix), key)
    snprintf(name, sizeof name, "synthetic %s %dx%d %s", s->arch, s->dim, s->layers,
             shoal_dtype_name(s->type));
    SHOAL_TRY(shoal_gguf_set_str(w, "general.architecture", s->arch));
    SHOAL_TRY(shoal_gguf_set_str(w, "general.name", name));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("context_length"), (uint32_t)s->ctx));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("embedding_length"), (uint32_t)s->dim));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("block_count"), (uint32_t)s->layers));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)s->ffn));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)s->heads));
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->kv_heads));
    if (s->head_dim * s->heads != s->dim) {
        SHOAL_TRY(shoal_gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)s->head_dim));
        SHOAL_TRY(shoal_gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)s->head_dim));
    }
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)s->head_dim));
    SHOAL_TRY(shoal_gguf_set_f32(w, KEY("rope.freq_base"), rope_base));
    SHOAL_TRY(shoal_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f));
    if (s->fam->swa_period) SHOAL_TRY(shoal_gguf_set_u32(w, KEY("attention.sliding_window"), (uint32_t)s->window));
    if (s->experts) {
        SHOAL_TRY(shoal_gguf_set_u32(w, KEY("expert_count"), (uint32_t)s->experts));
        SHOAL_TRY(shoal_gguf_set_u32(w, KEY("expert_used_count"), (uint32_t)s->used));
        if (s->fam == &shoal_arch_qwen3moe)
            SHOAL_TRY(shoal_gguf_set_u32(w, KEY("expert_feed_forward_length"), (uint32_t)s->ffn));
    }
    SHOAL_TRY(shoal_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)s->vocab));
#undef KEY
    return SHOAL_OK;
}

/* p's shape with its defaults resolved, or SHOAL_INVALID naming what cannot be. */
static shoal_status resolve(const struct shoal_synth_params *p, struct shape *s) {
    *s = (struct shape){ p->arch, NULL, p->dim, p->layers, p->heads, p->kv_heads, p->head_dim, p->ffn,
                         p->vocab, p->ctx, p->tied, p->type,
                         p->embd_type < 0 ? p->type : p->embd_type,
                         p->out_type < 0 ? p->type : p->out_type, p->swa_window ? p->swa_window : 32,
                         p->experts, p->experts_used ? p->experts_used : (p->experts < 2 ? p->experts : 2) };
    if (!s->arch || !(s->fam = shoal_arch_find(s->arch))) {
        char names[256];
        return shoal_errorf(SHOAL_INVALID, "synthetic model: architecture '%s' is not one of %s",
                            s->arch ? s->arch : "(none)", shoal_arch_names(names, sizeof names));
    }
    if (s->experts < 0 || s->experts > 256 || s->used < 0 || s->used > s->experts ||
        (s->fam == &shoal_arch_qwen3moe && !s->experts))
        return shoal_errorf(SHOAL_INVALID, "synthetic model: %d experts, %d of them used per token: need "
                            "0..256 experts (qwen3moe: at least 1) and 1..experts used", s->experts, s->used);
    if (s->window < 1 || s->window > (1 << 24))
        return shoal_errorf(SHOAL_INVALID, "synthetic model: a window of %d positions", s->window);
    const int types[3] = { s->type, s->embd_type, s->out_type };
    for (int i = 0; i < 3; i++)
        if (!shoal_can_quantize(types[i]))
            return shoal_errorf(SHOAL_INVALID, "synthetic model: weights cannot be written as %s "
                                "(f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, q2_k .. q6_k, "
                                "iq4_nl, iq4_xs can)", shoal_dtype_name(types[i]));
    if (s->head_dim == 0) s->head_dim = s->heads > 0 ? s->dim / s->heads : 0;
    if (s->dim < 1 || s->layers < 1 || s->heads < 1 || s->kv_heads < 1 || s->ffn < 1 || s->ctx < 1 ||
        s->head_dim < 2 || s->head_dim % 2 || s->heads % s->kv_heads || s->dim > (1 << 16) ||
        s->ffn > (1 << 18) || s->layers > 1024 || s->head_dim > 1024 ||
        (int64_t)s->heads * s->head_dim > (1 << 30))
        return shoal_errorf(SHOAL_INVALID, "synthetic model: impossible shape (dim %d, %d layers, "
                            "%d heads of %d, %d KV heads, ffn %d, ctx %d): need dim, layers, heads, "
                            "ffn >= 1, an even head size, and heads a multiple of KV heads",
                            s->dim, s->layers, s->heads, s->head_dim, s->kv_heads, s->ffn, s->ctx);
    if (!p->vocab_from && (s->vocab < 300 || s->vocab > (1 << 20)))
        return shoal_errorf(SHOAL_INVALID, "synthetic model: a vocabulary of %d: it must be between "
                            "300 and 1048576", s->vocab);
    return SHOAL_OK;
}

/* --------------------------------------------------------------- writing */

shoal_status shoal_synth_write(const struct shoal_synth_params *p, const char *path) {
    struct shape s;
    SHOAL_TRY(resolve(p, &s));
    struct shoal_gguf *from = NULL;
    struct shoal_gguf_writer *w = NULL;
    struct tensor_plan *tp = NULL;
    float *row = NULL;
    void *q = NULL;
    shoal_status rc = SHOAL_OK;
    if (p->vocab_from) { /* its size first: the embedding table and the head have that many rows */
        const struct shoal_gguf_kv *toks = NULL;
        SHOAL_TRY_GOTO(shoal_gguf_open(&from, p->vocab_from), rc, done);
        SHOAL_TRY_GOTO(shoal_gguf_get_arr(from, "tokenizer.ggml.tokens", SHOAL_GGUF_STRING, &toks), rc, done);
        if (toks->n < 1 || toks->n > (1u << 24)) {
            rc = shoal_errorf(SHOAL_FORMAT, "%s: a vocabulary of %" PRIu64 " tokens", p->vocab_from,
                              toks->n);
            goto done;
        }
        s.vocab = (int)toks->n;
    }
    if (!(tp = calloc((size_t)(3 + TENSORS_PER_LAYER * s.layers), sizeof *tp))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    const int nt = plan_tensors(&s, tp);
    int64_t widest = 0; /* one row at a time, in f32 and quantized */
    for (int i = 0; i < nt; i++) {
        SHOAL_TRY_GOTO(check_cols(&tp[i]), rc, done);
        if (tp[i].ne[0] > widest) widest = tp[i].ne[0];
    }
    row = malloc((size_t)widest * sizeof(float) + 4096);
    q = malloc((size_t)widest * sizeof(float) + 4096);
    if (!row || !q) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }

    SHOAL_TRY_GOTO(shoal_gguf_writer_create(&w, path), rc, done);
    SHOAL_TRY_GOTO(write_hparams(w, &s, p->rope_base), rc, done);
    if (from) SHOAL_TRY_GOTO(copy_vocab(w, from), rc, done);
    else SHOAL_TRY_GOTO(write_vocab(w, s.vocab), rc, done);
    uint64_t total = 0, done_bytes = 0;
    for (int i = 0; i < nt; i++) {
        SHOAL_TRY_GOTO(shoal_gguf_add_tensor(w, tp[i].name, tp[i].type, tp[i].n_dims, tp[i].ne), rc, done);
        total += shoal_dtype_row_bytes(tp[i].type, tp[i].ne[0]) * (uint64_t)(tp[i].ne[1] * tp[i].ne[2]);
    }
    SHOAL_TRY_GOTO(shoal_gguf_writer_begin_data(w), rc, done);
    if (p->progress) p->progress(p->user, 0, total);
    for (int i = 0; i < nt; i++) {
        const struct tensor_plan *t = &tp[i];
        uint64_t st = name_seed(p->seed, t->name);
        size_t rb = shoal_dtype_row_bytes(t->type, t->ne[0]);
        for (int64_t r = 0; r < t->ne[1] * t->ne[2]; r++) {
            for (int64_t c = 0; c < t->ne[0]; c++) row[c] = t->offset + t->scale * urand(&st);
            SHOAL_TRY_GOTO(shoal_quantize_row(t->type, row, q, t->ne[0]), rc, done);
            SHOAL_TRY_GOTO(shoal_gguf_write_data(w, q, rb), rc, done);
            done_bytes += rb;
            if (p->progress) p->progress(p->user, done_bytes, total);
        }
    }
    SHOAL_TRY_GOTO(shoal_gguf_writer_finish(w), rc, done);
done:
    shoal_gguf_writer_destroy(w);
    shoal_gguf_close(from);
    free(tp);
    free(row);
    free(q);
    return rc;
}
