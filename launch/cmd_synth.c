/*
 * cmd_synth.c — `shoal synth`: writes a GGUF model of any LLaMA-family
 * shape with seeded random weights in any type shoal can quantize to, and a
 * generated SentencePiece vocabulary (or one copied from another GGUF). For
 * tests (forward pass against the float64 reference, parallel layouts) and
 * benchmarks (realistic shapes without downloading weights).
 *
 * The weights are scaled so that activations keep unit-ish variance through
 * the layers and the logits are peaked enough for greedy decoding to be
 * stable. Each tensor has its own generator seeded from --seed and its name.
 */
#define _GNU_SOURCE
#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../shard/gguf.h"
#include "args.h"
#include "launch.h"

struct synth {
    const char *arch;
    int dim, layers, heads, kv_heads, head_dim, ffn, vocab, ctx, tied;
    int type, embd_type, out_type;
    float rope_base;
    uint64_t seed;
};

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

/* Copies every tokenizer.* key of another GGUF; returns its vocabulary size. */
static shoal_status copy_vocab(struct shoal_gguf_writer *w, const char *path, int *n_vocab) {
    struct shoal_gguf *g = NULL;
    SHOAL_TRY(shoal_gguf_open(&g, path));
    const struct shoal_gguf_kv *toks = NULL;
    shoal_status rc = shoal_gguf_get_arr(g, "tokenizer.ggml.tokens", SHOAL_GGUF_STRING, &toks);
    for (int64_t i = 0; rc == SHOAL_OK && i < g->n_kv; i++)
        if (strncmp(g->kv[i].key, "tokenizer.", 10) == 0) rc = shoal_gguf_copy_kv(w, &g->kv[i]);
    if (rc == SHOAL_OK) *n_vocab = (int)toks->n;
    shoal_gguf_close(g);
    return rc;
}

/* ---------------------------------------------------------------- tensors */

struct tensor_plan {
    char name[64];
    int type, n_dims;
    int64_t ne[2];
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

static int plan_tensors(const struct synth *s, struct tensor_plan *tp) {
    int n = 0;
    int qd = s->heads * s->head_dim, kvd = s->kv_heads * s->head_dim;
    int bias = strcmp(s->arch, "qwen2") == 0;
#define T2(nm, ty, cols, rows, sc)                                                             \
    tp[n] = (struct tensor_plan){ "", ty, 2, { cols, rows }, sc, 0 };                          \
    snprintf(tp[n].name, sizeof tp[n].name, "%s", nm);                                         \
    n++
#define T1(nm, len, sc, off)                                                                   \
    tp[n] = (struct tensor_plan){ "", SHOAL_DTYPE_F32, 1, { len, 1 }, sc, off };               \
    snprintf(tp[n].name, sizeof tp[n].name, "%s", nm);                                         \
    n++
    T2("token_embd.weight", s->embd_type, s->dim, s->vocab, 1.0f);
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
        T2(NAME("attn_output.weight"), s->type, qd, s->dim, o);
        T1(NAME("ffn_norm.weight"), s->dim, 0.1f, 1.0f);
        T2(NAME("ffn_gate.weight"), s->type, s->dim, s->ffn, a);
        T2(NAME("ffn_up.weight"), s->type, s->dim, s->ffn, a);
        T2(NAME("ffn_down.weight"), s->type, s->ffn, s->dim, f);
#undef NAME
    }
#undef T1
#undef T2
    return n;
}

static shoal_status write_model(const struct synth *s, const char *path, const char *vocab_from) {
    struct shoal_gguf_writer *w = NULL;
    int max_t = 3 + 12 * s->layers;
    struct tensor_plan *tp = calloc((size_t)max_t, sizeof *tp);
    float *row = malloc((size_t)(s->dim > s->ffn ? s->dim : s->ffn) * 4 * sizeof(float) + 4096);
    void *q = malloc((size_t)(s->dim > s->ffn ? s->dim : s->ffn) * 4 * sizeof(float) + 4096);
    shoal_status rc = SHOAL_OK;
    if (!tp || !row || !q) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    int nt = plan_tensors(s, tp);
    for (int i = 0; i < nt; i++) SHOAL_TRY_GOTO(check_cols(&tp[i]), rc, done);

    SHOAL_TRY_GOTO(shoal_gguf_writer_create(&w, path), rc, done);
    char key[96], name[96];
#define KEY(suffix) (snprintf(key, sizeof key, "%s.%s", s->arch, suffix), key)
    snprintf(name, sizeof name, "synthetic %s %dx%d %s", s->arch, s->dim, s->layers,
             shoal_dtype_name(s->type));
    SHOAL_TRY_GOTO(shoal_gguf_set_str(w, "general.architecture", s->arch), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_str(w, "general.name", name), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("context_length"), (uint32_t)s->ctx), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("embedding_length"), (uint32_t)s->dim), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("block_count"), (uint32_t)s->layers), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("feed_forward_length"), (uint32_t)s->ffn), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("attention.head_count"), (uint32_t)s->heads), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("attention.head_count_kv"), (uint32_t)s->kv_heads), rc, done);
    if (s->head_dim * s->heads != s->dim) {
        SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("attention.key_length"), (uint32_t)s->head_dim), rc, done);
        SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("attention.value_length"), (uint32_t)s->head_dim), rc, done);
    }
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("rope.dimension_count"), (uint32_t)s->head_dim), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_f32(w, KEY("rope.freq_base"), s->rope_base), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_f32(w, KEY("attention.layer_norm_rms_epsilon"), 1e-5f), rc, done);
    SHOAL_TRY_GOTO(shoal_gguf_set_u32(w, KEY("vocab_size"), (uint32_t)s->vocab), rc, done);
#undef KEY
    if (vocab_from) {
        int n = 0;
        SHOAL_TRY_GOTO(copy_vocab(w, vocab_from, &n), rc, done);
        if (n != s->vocab) {
            rc = shoal_errorf(SHOAL_INTERNAL, "vocabulary size changed");
            goto done;
        }
    } else {
        SHOAL_TRY_GOTO(write_vocab(w, s->vocab), rc, done);
    }
    uint64_t total = 0;
    for (int i = 0; i < nt; i++) {
        SHOAL_TRY_GOTO(shoal_gguf_add_tensor(w, tp[i].name, tp[i].type, tp[i].n_dims, tp[i].ne), rc, done);
        total += shoal_dtype_row_bytes(tp[i].type, tp[i].ne[0]) * (uint64_t)tp[i].ne[1];
    }
    SHOAL_TRY_GOTO(shoal_gguf_writer_begin_data(w), rc, done);
    struct progress pr;
    progress_begin(&pr, "synth", total);
    for (int i = 0; i < nt; i++) {
        const struct tensor_plan *t = &tp[i];
        uint64_t st = name_seed(s->seed, t->name);
        size_t rb = shoal_dtype_row_bytes(t->type, t->ne[0]);
        for (int64_t r = 0; r < t->ne[1]; r++) {
            for (int64_t c = 0; c < t->ne[0]; c++) row[c] = t->offset + t->scale * urand(&st);
            SHOAL_TRY_GOTO(shoal_quantize_row(t->type, row, q, t->ne[0]), rc, done);
            SHOAL_TRY_GOTO(shoal_gguf_write_data(w, q, rb), rc, done);
            progress_add(&pr, rb);
        }
    }
    progress_end(&pr);
    SHOAL_TRY_GOTO(shoal_gguf_writer_finish(w), rc, done);
done:
    shoal_gguf_writer_destroy(w);
    free(tp);
    free(row);
    free(q);
    return rc;
}

static int parse_type(const char *flag, const char *name, int *out) {
    int t = shoal_dtype_from_name(name);
    if (t < 0 || !shoal_can_quantize(t)) {
        fprintf(stderr, "shoal synth: %s '%s' is not one of f32, f16, bf16, q8_0, q4_0, q4_1\n",
                flag, name);
        return 2;
    }
    *out = t;
    return 0;
}

int cmd_synth(int argc, char **argv) {
    struct synth s = { .arch = "llama", .dim = 256, .layers = 4, .heads = 8, .kv_heads = 4,
                       .head_dim = 0, .ffn = 768, .vocab = 512, .ctx = 2048,
                       .rope_base = 10000.0f, .seed = 1 };
    const char *out = NULL, *type = "f32", *embd_type = NULL, *out_type = NULL, *vocab_from = NULL;
    const struct opt opts[] = {
        { "--output", 'o', OPT_STR, &out, "FILE", "where to write the model (required)" },
        { "--arch", 0, OPT_STR, &s.arch, "NAME", "llama, mistral or qwen2 (default llama)" },
        { "--dim", 0, OPT_INT, &s.dim, "N", "embedding width (default 256)" },
        { "--layers", 0, OPT_INT, &s.layers, "N", "transformer blocks (default 4)" },
        { "--heads", 0, OPT_INT, &s.heads, "N", "query heads (default 8)" },
        { "--kv-heads", 0, OPT_INT, &s.kv_heads, "N", "key/value heads (default 4)" },
        { "--head-dim", 0, OPT_INT, &s.head_dim, "N", "head size (default dim / heads)" },
        { "--ffn", 0, OPT_INT, &s.ffn, "N", "feed-forward width (default 768)" },
        { "--vocab", 0, OPT_INT, &s.vocab, "N", "vocabulary size (default 512, at least 300)" },
        { "--vocab-from", 0, OPT_STR, &vocab_from, "FILE", "copy the tokenizer of another GGUF" },
        { "--ctx", 0, OPT_INT, &s.ctx, "N", "context_length to record (default 2048)" },
        { "--type", 0, OPT_STR, &type, "TYPE", "type of the layer weights (default f32)" },
        { "--embd-type", 0, OPT_STR, &embd_type, "TYPE", "type of token_embd (default: --type)" },
        { "--output-type", 0, OPT_STR, &out_type, "TYPE", "type of the output head (default: --type)" },
        { "--tied", 0, OPT_FLAG, &s.tied, NULL, "no output.weight: the head is the embedding table" },
        { "--rope-base", 0, OPT_FLOAT, &s.rope_base, "X", "rope.freq_base (default 10000)" },
        { "--seed", 0, OPT_U64, &s.seed, "N", "seed of the weights (default 1)" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse("shoal synth", "-o FILE [shape options]",
                         "Writes a GGUF model of the given shape with seeded random weights.\n"
                         "Example: shoal synth -o m.gguf --dim 2048 --layers 16 --heads 16 "
                         "--kv-heads 4 --ffn 5632 --vocab 32000 --type q4_0",
                         opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    if (!out) {
        fprintf(stderr, "shoal synth: no output file: use -o FILE (see shoal synth --help)\n");
        return 2;
    }
    if (parse_type("--type", type, &s.type)) return 2;
    s.embd_type = s.out_type = s.type;
    if (embd_type && parse_type("--embd-type", embd_type, &s.embd_type)) return 2;
    if (out_type && parse_type("--output-type", out_type, &s.out_type)) return 2;
    if (strcmp(s.arch, "llama") && strcmp(s.arch, "mistral") && strcmp(s.arch, "qwen2")) {
        fprintf(stderr, "shoal synth: --arch '%s' is not one of llama, mistral, qwen2\n", s.arch);
        return 2;
    }
    if (s.head_dim == 0) s.head_dim = s.heads > 0 ? s.dim / s.heads : 0;
    if (s.dim < 1 || s.layers < 1 || s.heads < 1 || s.kv_heads < 1 || s.ffn < 1 || s.ctx < 1 ||
        s.head_dim < 2 || s.head_dim % 2 || s.heads % s.kv_heads || s.dim > (1 << 16) ||
        s.ffn > (1 << 18) || s.layers > 1024 || s.head_dim > 1024) {
        fprintf(stderr, "shoal synth: impossible shape: need dim, layers, heads, ffn >= 1, an even "
                        "head size, and heads a multiple of kv-heads\n");
        return 2;
    }
    if (!vocab_from && (s.vocab < 300 || s.vocab > (1 << 20))) {
        fprintf(stderr, "shoal synth: --vocab must be between 300 and 1048576\n");
        return 2;
    }
    shoal_log_init(SHOAL_LOG_WARN, 0, NULL);
    if (vocab_from) {
        struct shoal_gguf *g = NULL;
        const struct shoal_gguf_kv *toks = NULL;
        shoal_status rc = shoal_gguf_open(&g, vocab_from);
        if (rc == SHOAL_OK) rc = shoal_gguf_get_arr(g, "tokenizer.ggml.tokens", SHOAL_GGUF_STRING, &toks);
        if (rc == SHOAL_OK) s.vocab = (int)toks->n;
        shoal_gguf_close(g);
        if (rc != SHOAL_OK) return launch_fail("synth", rc);
    }
    shoal_status rc = write_model(&s, out, vocab_from);
    if (rc != SHOAL_OK) return launch_fail("synth", rc);
    return 0;
}
