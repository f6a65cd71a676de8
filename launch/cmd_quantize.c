/*
 * cmd_quantize.c — `shoal quantize IN.gguf OUT.gguf TYPE`: a model in
 * another weight type, as llama.cpp's llama-quantize writes it without an
 * importance matrix: each matrix dequantized to f32 (requantizing a
 * quantized file needs --allow-requantize, but for Q8_0) and quantized by
 * base/quant.c's quantizers, which give llama.cpp's reference quantizers'
 * bytes; 1-D tensors (norms, biases) and the MoE router kept as they are;
 * the metadata copied, general.file_type set to llama.cpp's ftype.
 *
 * TYPE is a type (Q4_0, ..., IQ4_XS, F16, BF16, F32: every 2-D weight that
 * type) or one of llama.cpp's mixes by name (Q4_K_M, Q5_K_M, Q3_K_M, Q2_K,
 * ...), which choose a type per tensor by llama.cpp's rules
 * (llama_tensor_get_type, for the families shoal runs, without an
 * importance matrix): the output head Q6_K (Q8_0 where its rows do not hold
 * 256-value blocks; the embedding table stands for a tied head), attn_v
 * and ffn_down more bits in some layers, and a type whose block a row
 * cannot hold replaced as llama.cpp does (Q2_K and Q3_K by Q4_0, Q4_K by
 * Q5_0, Q5_K by Q5_1, Q6_K by Q8_0, IQ4_XS by IQ4_NL; then F16). --pure: one type
 * throughout but that fallback. The file is streamed a row at a time
 * (bounded memory: a chunk of rows at a time, converted by -t threads and
 * written in order), under a temporary name and renamed when whole, with
 * progress on stderr.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cpu/cpu.h"
#include "../cpu/pool.h"
#include "../runtime/model.h"
#include "args.h"
#include "launch.h"

/* llama.cpp's ftypes (llama.h: enum llama_ftype) by the names llama-quantize takes. */
enum {
    FT_F32 = 0, FT_F16 = 1, FT_Q4_0 = 2, FT_Q4_1 = 3, FT_Q8_0 = 7, FT_Q5_0 = 8, FT_Q5_1 = 9, FT_Q2_K = 10,
    FT_Q3_K_S = 11, FT_Q3_K_M = 12, FT_Q3_K_L = 13, FT_Q4_K_S = 14, FT_Q4_K_M = 15, FT_Q5_K_S = 16,
    FT_Q5_K_M = 17, FT_Q6_K = 18, FT_Q2_K_S = 21, FT_IQ4_NL = 25, FT_IQ4_XS = 30, FT_BF16 = 32,
};
static const struct {
    const char *name;
    int ftype, type; /* the mix's default type */
} FTYPES[] = {
    { "F32", FT_F32, SHOAL_DTYPE_F32 },       { "F16", FT_F16, SHOAL_DTYPE_F16 },
    { "BF16", FT_BF16, SHOAL_DTYPE_BF16 },    { "Q8_0", FT_Q8_0, SHOAL_DTYPE_Q8_0 },
    { "Q4_0", FT_Q4_0, SHOAL_DTYPE_Q4_0 },    { "Q4_1", FT_Q4_1, SHOAL_DTYPE_Q4_1 },
    { "Q5_0", FT_Q5_0, SHOAL_DTYPE_Q5_0 },    { "Q5_1", FT_Q5_1, SHOAL_DTYPE_Q5_1 },
    { "Q2_K", FT_Q2_K, SHOAL_DTYPE_Q2_K },    { "Q2_K_S", FT_Q2_K_S, SHOAL_DTYPE_Q2_K },
    { "Q3_K_S", FT_Q3_K_S, SHOAL_DTYPE_Q3_K }, { "Q3_K_M", FT_Q3_K_M, SHOAL_DTYPE_Q3_K },
    { "Q3_K_L", FT_Q3_K_L, SHOAL_DTYPE_Q3_K }, { "Q4_K_S", FT_Q4_K_S, SHOAL_DTYPE_Q4_K },
    { "Q4_K_M", FT_Q4_K_M, SHOAL_DTYPE_Q4_K }, { "Q5_K_S", FT_Q5_K_S, SHOAL_DTYPE_Q5_K },
    { "Q5_K_M", FT_Q5_K_M, SHOAL_DTYPE_Q5_K }, { "Q6_K", FT_Q6_K, SHOAL_DTYPE_Q6_K },
    { "IQ4_NL", FT_IQ4_NL, SHOAL_DTYPE_IQ4_NL }, { "IQ4_XS", FT_IQ4_XS, SHOAL_DTYPE_IQ4_XS },
};
#define N_FTYPES ((int)(sizeof FTYPES / sizeof FTYPES[0]))

/* What the rules count as they go (llama.cpp's quantize_state_impl). */
struct qstate {
    int ftype, n_layer, n_gqa, n_expert, has_output;
    int n_attention_wv, i_attention_wv, n_ffn_down, i_ffn_down;
};

static int ends_with(const char *s, const char *t) {
    const size_t n = strlen(s), k = strlen(t);
    return n >= k && strcmp(s + n - k, t) == 0;
}

/* llama.cpp's use_more_bits: the first and last eighth of the layers, and every third between. */
static int more_bits(int i, int n) { return i < n / 8 || i >= 7 * n / 8 || (i - n / 8) % 3 == 2; }

static int block_size(int type) {
    const struct shoal_dtype_info *d = shoal_dtype_info(type);
    return d && d->block > 0 ? d->block : 1;
}

/*
 * The place of a layer's tensor among its kind: llama.cpp counts them in the
 * order of its loader's weights, sorted by layer number ("blk.N."), then name;
 * with one such tensor a layer (the families shoal runs), that is N.
 */
static int layer_of(const char *name, int fallback) {
    int n = -1;
    return sscanf(name, "blk.%d.", &n) == 1 && n >= 0 ? n : fallback;
}

/*
 * The type of a 2-D tensor of ne0-value rows under the mix (llama.cpp's
 * llama_tensor_get_type without an importance matrix, for the LLaMA-family
 * architectures shoal runs), then the fallback for a row its blocks do not
 * fit.
 */
static int tensor_type(struct qstate *q, const char *name, int64_t ne0, int type, int pure) {
    const int ft = q->ftype;
    /* llama.cpp mixes only quantized types: F32, F16 and BF16 are every matrix that type */
    if (!pure && type != SHOAL_DTYPE_F32 && type != SHOAL_DTYPE_F16 && type != SHOAL_DTYPE_BF16) {
        if (!strcmp(name, "output.weight") || (!q->has_output && !strcmp(name, "token_embd.weight"))) {
            if (ne0 % 256 != 0) type = SHOAL_DTYPE_Q8_0;
            else if (type != SHOAL_DTYPE_Q8_0) type = SHOAL_DTYPE_Q6_K;
        } else if (!strcmp(name, "token_embd.weight")) {
            /* the mixes shoal makes keep the default type for the table */
        } else if (strstr(name, "attn_v.weight")) {
            const int iv = layer_of(name, q->i_attention_wv);
            if (ft == FT_Q2_K) type = q->n_gqa >= 4 ? SHOAL_DTYPE_Q4_K : SHOAL_DTYPE_Q3_K;
            else if (ft == FT_Q2_K_S && q->n_gqa >= 4) type = SHOAL_DTYPE_Q4_K;
            else if (ft == FT_Q3_K_M) type = iv < 2 ? SHOAL_DTYPE_Q5_K : SHOAL_DTYPE_Q4_K;
            else if (ft == FT_Q3_K_L) type = SHOAL_DTYPE_Q5_K;
            else if ((ft == FT_IQ4_NL || ft == FT_IQ4_XS) && q->n_gqa >= 4) type = SHOAL_DTYPE_Q5_K;
            else if ((ft == FT_Q4_K_M || ft == FT_Q5_K_M) && more_bits(iv, q->n_attention_wv))
                type = SHOAL_DTYPE_Q6_K;
            else if (ft == FT_Q4_K_S && iv < 4) type = SHOAL_DTYPE_Q5_K;
            if (q->n_expert == 8) type = SHOAL_DTYPE_Q8_0;
            q->i_attention_wv++;
        } else if (strstr(name, "attn_k.weight")) {
            if (q->n_expert == 8) type = SHOAL_DTYPE_Q8_0;
        } else if (strstr(name, "ffn_down")) {
            const int i = layer_of(name, q->i_ffn_down), n = q->n_ffn_down;
            if (ft == FT_Q2_K) type = SHOAL_DTYPE_Q3_K;
            else if (ft == FT_Q2_K_S) { if (i < n / 8) type = SHOAL_DTYPE_Q4_K; }
            else if (ft == FT_Q3_K_M) type = i < n / 16 ? SHOAL_DTYPE_Q5_K : SHOAL_DTYPE_Q4_K;
            else if (ft == FT_Q3_K_L) type = SHOAL_DTYPE_Q5_K;
            else if (ft == FT_Q4_K_M) { if (more_bits(i, n)) type = SHOAL_DTYPE_Q6_K; }
            else if (i < n / 8 && (ft == FT_IQ4_NL || ft == FT_IQ4_XS)) type = SHOAL_DTYPE_Q5_K;
            else if (ft == FT_Q5_K_M && more_bits(i, n)) type = SHOAL_DTYPE_Q6_K;
            else if (ft == FT_Q4_K_S && i < n / 8) type = SHOAL_DTYPE_Q5_K;
            q->i_ffn_down++;
        } else if (strstr(name, "attn_output.weight")) {
            if (q->n_expert == 8) {
                if (ft == FT_Q2_K || ft == FT_Q3_K_S || ft == FT_Q3_K_M || ft == FT_Q3_K_L || ft == FT_Q4_K_S ||
                    ft == FT_Q4_K_M || ft == FT_IQ4_NL || ft == FT_IQ4_XS)
                    type = SHOAL_DTYPE_Q5_K;
            } else {
                if (ft == FT_Q2_K) type = SHOAL_DTYPE_Q3_K;
                else if (ft == FT_Q3_K_M) type = SHOAL_DTYPE_Q4_K;
                else if (ft == FT_Q3_K_L) type = SHOAL_DTYPE_Q5_K;
            }
        }
    }
    if (ne0 % block_size(type) == 0) return type;
    switch (type) { /* llama.cpp's fallback for rows the type's blocks do not fit */
    case SHOAL_DTYPE_Q2_K: case SHOAL_DTYPE_Q3_K: type = SHOAL_DTYPE_Q4_0; break;
    case SHOAL_DTYPE_IQ4_XS: type = SHOAL_DTYPE_IQ4_NL; break;
    case SHOAL_DTYPE_Q4_K: type = SHOAL_DTYPE_Q5_0; break;
    case SHOAL_DTYPE_Q5_K: type = SHOAL_DTYPE_Q5_1; break;
    case SHOAL_DTYPE_Q6_K: type = SHOAL_DTYPE_Q8_0; break;
    default: break;
    }
    return ne0 % block_size(type) == 0 ? type : SHOAL_DTYPE_F16;
}

/* Whether a tensor is quantized at all: a matrix (2-D or more), but not the MoE router. */
static int quantizable(const struct shoal_gguf_tensor *t) {
    return t->n_dims >= 2 && ends_with(t->name, "weight") && !strstr(t->name, "ffn_gate_inp");
}

/* Rows converted a chunk at a time: each thread its share of the chunk's rows, into the chunk in order. */
#define CHUNK_BYTES (4u << 20)
struct conv {
    struct shoal_pool *pool;
    int n_threads;
    float *rows;    /* n_threads rows of the widest tensor's values */
    uint8_t *chunk; /* chunk_bytes of converted rows */
    size_t chunk_bytes;
    /* the tensor being converted, and its chunk */
    const uint8_t *src;
    int in_type, type;
    int64_t ne0, n;
    size_t in_rb, out_rb, row_floats;
    shoal_status *rc;
    char (*err)[256];
};

static void conv_worker(void *arg, int ith, int nth) {
    struct conv *c = arg;
    float *row = c->rows + (size_t)ith * c->row_floats;
    shoal_status rc = SHOAL_OK;
    for (int64_t r = ith; r < c->n && rc == SHOAL_OK; r += nth) {
        rc = shoal_dequantize_row(c->in_type, c->src + (size_t)r * c->in_rb, row, c->ne0);
        if (rc == SHOAL_OK) rc = shoal_quantize_row(c->type, row, c->chunk + (size_t)r * c->out_rb, c->ne0);
    }
    c->rc[ith] = rc;
    if (rc != SHOAL_OK) snprintf(c->err[ith], sizeof c->err[ith], "%s", shoal_last_error());
}

/* The rows of t into type, a chunk at a time, written to w; a tensor kept as it is, its bytes as they are. */
static shoal_status convert(struct shoal_gguf_writer *w, const struct shoal_gguf_tensor *t, int type, struct conv *c,
                            struct progress *pr) {
    const uint8_t *src = t->data;
    if (type == t->type) {
        for (uint64_t at = 0; at < t->nbytes;) {
            const uint64_t n = t->nbytes - at < (1u << 20) ? t->nbytes - at : (1u << 20);
            SHOAL_TRY(shoal_gguf_write_data(w, src + at, (size_t)n));
            progress_add(pr, n);
            at += n;
        }
        return SHOAL_OK;
    }
    const int64_t ne0 = t->ne[0], rows = t->ne[1] * t->ne[2] * t->ne[3];
    const size_t in_rb = shoal_dtype_row_bytes(t->type, ne0), out_rb = shoal_dtype_row_bytes(type, ne0);
    if (!in_rb || !out_rb || (uint64_t)in_rb * (uint64_t)rows != t->nbytes)
        return shoal_errorf(SHOAL_FORMAT, "rows of %lld %s values do not make its %llu bytes", (long long)ne0,
                            shoal_dtype_name(t->type), (unsigned long long)t->nbytes);
    if (out_rb > c->chunk_bytes || (size_t)ne0 > c->row_floats)
        return shoal_errorf(SHOAL_INTERNAL, "a row of %lld values past the buffers", (long long)ne0);
    const int64_t per = (int64_t)(c->chunk_bytes / out_rb);
    c->in_type = t->type;
    c->type = type;
    c->ne0 = ne0;
    c->in_rb = in_rb;
    c->out_rb = out_rb;
    for (int64_t r0 = 0; r0 < rows; r0 += per) {
        c->src = src + (size_t)r0 * in_rb;
        c->n = rows - r0 < per ? rows - r0 : per;
        shoal_pool_run(c->pool, conv_worker, c);
        for (int i = 0; i < c->n_threads; i++)
            if (c->rc[i] != SHOAL_OK) return shoal_errorf(c->rc[i], "%s", c->err[i]);
        SHOAL_TRY(shoal_gguf_write_data(w, c->chunk, (size_t)c->n * out_rb));
        progress_add(pr, (uint64_t)c->n * in_rb);
    }
    return SHOAL_OK;
}

int cmd_quantize(int argc, char **argv) {
    int pure = 0, requant = 0, quiet = 0, threads = 0;
    const struct opt opts[] = {
        { "--threads", 't', OPT_INT, &threads, "N", "threads converting the rows (default: this machine's cores)" },
        { "--pure", 0, OPT_FLAG, &pure, NULL, "every matrix the one type (no mix; llama-quantize --pure)" },
        { "--allow-requantize", 0, OPT_FLAG, &requant, NULL, "requantize a quantized file (its blocks dequantized, then quantized again)" },
        { "--quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress or summary" },
        OPT_END,
    };
    char help[2048];
    int at = snprintf(help, sizeof help,
                      "Writes IN's weights as TYPE, as llama.cpp's llama-quantize does without an\n"
                      "importance matrix: the same bytes for every tensor. TYPE is one type for\n"
                      "every matrix or one of llama.cpp's mixes, which choose a type per tensor:\n ");
    for (int i = 0; i < N_FTYPES && at > 0 && (size_t)at < sizeof help; i++)
        at += snprintf(help + at, sizeof help - (size_t)at, "%s %s", i && i % 10 == 0 ? "\n " : "", FTYPES[i].name);
    if (at > 0 && (size_t)at < sizeof help)
        snprintf(help + at, sizeof help - (size_t)at,
                 "\nFrom F32, F16, BF16 or Q8_0; other types with --allow-requantize. Norms and\n"
                 "other 1-D tensors stay as they are. Written to OUT.tmp, renamed when whole.");
    const char *pos[3];
    int n_pos;
    int prc = args_parse("shoal quantize", "IN.gguf OUT.gguf TYPE", help, opts, argc, argv, pos, 3, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    if (n_pos != 3) {
        fprintf(stderr, "shoal quantize: give IN.gguf OUT.gguf TYPE (shoal quantize --help)\n");
        return 2;
    }
    int k = 0;
    while (k < N_FTYPES && strcasecmp(pos[2], FTYPES[k].name) != 0) k++;
    if (k == N_FTYPES) {
        fprintf(stderr, "shoal quantize: '%s' is not a type or mix shoal writes (shoal quantize --help lists them)\n",
                pos[2]);
        return 2;
    }
    if (!strcmp(pos[0], pos[1])) {
        fprintf(stderr, "shoal quantize: IN and OUT are the same file\n");
        return 2;
    }
    if (threads < 0 || threads > 4096) {
        fprintf(stderr, "shoal quantize: --threads %d: give 1 to 4096 (or leave it out: this machine's cores)\n",
                threads);
        return 2;
    }
    shoal_log_init(SHOAL_LOG_WARN, 0, getenv("SHOAL_DEBUG"));
    struct shoal_gguf *g = NULL;
    struct shoal_gguf_writer *w = NULL;
    struct shoal_hparams hp;
    struct conv cv = { .n_threads = threads > 0 ? threads : shoal_cpu_online_cores() };
    int *types = NULL;
    shoal_status rc = shoal_gguf_open(&g, pos[0]);
    if (rc == SHOAL_OK) rc = shoal_hparams_read(&hp, g);
    if (rc != SHOAL_OK) return launch_fail("quantize", rc);
    struct qstate q = { .ftype = FTYPES[k].ftype, .n_layer = hp.n_layers, .n_expert = hp.n_expert,
                        .n_gqa = hp.n_kv_heads > 0 ? hp.n_heads / hp.n_kv_heads : 1,
                        .has_output = shoal_gguf_find_tensor(g, "output.weight") != NULL };
    /* the tensors' types, and what the mix's counts need first */
    int64_t widest = 1;
    uint64_t total = 0;
    if (!(types = calloc((size_t)(g->n_tensors > 0 ? g->n_tensors : 1), sizeof *types))) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto done;
    }
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        q.n_attention_wv += strstr(t->name, "attn_v.weight") != NULL;
        q.n_ffn_down += strstr(t->name, "ffn_down") != NULL && quantizable(t);
        total += t->nbytes;
        if (t->ne[0] > widest) widest = t->ne[0];
    }
    int64_t n_quant = 0;
    for (int64_t i = 0; i < g->n_tensors && rc == SHOAL_OK; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        types[i] = t->type;
        if (!quantizable(t)) continue;
        const int from_ok = t->type == SHOAL_DTYPE_F32 || t->type == SHOAL_DTYPE_F16 || t->type == SHOAL_DTYPE_BF16 ||
                            t->type == SHOAL_DTYPE_Q8_0;
        if (!from_ok && !requant) {
            rc = shoal_errorf(SHOAL_INVALID, "%s: tensor '%s' is %s: requantizing loses what its blocks lost; "
                              "give --allow-requantize to do it anyway (as llama-quantize)", pos[0], t->name,
                              shoal_dtype_name(t->type));
            break;
        }
        if (!shoal_can_dequantize(t->type)) {
            rc = shoal_errorf(SHOAL_UNSUPPORTED, "%s: tensor '%s' is %s, which shoal cannot read", pos[0], t->name,
                              shoal_dtype_name(t->type));
            break;
        }
        types[i] = tensor_type(&q, t->name, t->ne[0], FTYPES[k].type, pure);
        n_quant++;
    }
    /* no type's row is larger than f32's */
    cv.row_floats = (size_t)widest;
    cv.chunk_bytes = sizeof(float) * (size_t)widest > CHUNK_BYTES ? sizeof(float) * (size_t)widest : CHUNK_BYTES;
    if (rc == SHOAL_OK && (!(cv.rows = malloc(sizeof *cv.rows * (size_t)widest * (size_t)cv.n_threads)) ||
                           !(cv.chunk = malloc(cv.chunk_bytes)) ||
                           !(cv.rc = calloc((size_t)cv.n_threads, sizeof *cv.rc)) ||
                           !(cv.err = calloc((size_t)cv.n_threads, sizeof *cv.err))))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for %d threads' rows of %lld values", cv.n_threads,
                          (long long)widest);
    if (rc == SHOAL_OK) rc = shoal_pool_create(&cv.pool, cv.n_threads, 0);
    /* the file: the metadata (the file type llama.cpp's), the tensors' descriptions, their rows */
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_create(&w, pos[1]);
    for (int64_t i = 0; i < g->n_kv && rc == SHOAL_OK; i++) {
        const struct shoal_gguf_kv *kv = &g->kv[i];
        if (!strcmp(kv->key, "general.file_type") || !strcmp(kv->key, "general.quantization_version")) continue;
        rc = shoal_gguf_copy_kv(w, kv);
    }
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, "general.quantization_version", 2);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, "general.file_type", (uint32_t)FTYPES[k].ftype);
    for (int64_t i = 0; i < g->n_tensors && rc == SHOAL_OK; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        rc = shoal_gguf_add_tensor(w, t->name, types[i], t->n_dims, t->ne);
    }
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_begin_data(w);
    struct progress pr;
    progress_begin(&pr, "quantize", quiet ? 0 : total);
    uint64_t written = 0, mat_bytes = 0;
    double mat_values = 0;
    for (int64_t i = 0; i < g->n_tensors && rc == SHOAL_OK; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        rc = convert(w, t, types[i], &cv, &pr);
        if (rc != SHOAL_OK) shoal_error_prefix("tensor '%s'", t->name);
        const uint64_t rows = (uint64_t)(t->ne[1] * t->ne[2] * t->ne[3]);
        const uint64_t bytes = types[i] == t->type ? t->nbytes : shoal_dtype_row_bytes(types[i], t->ne[0]) * rows;
        written += bytes;
        if (quantizable(t)) {
            mat_bytes += bytes;
            mat_values += (double)t->ne[0] * (double)rows;
        }
    }
    progress_end(&pr);
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_finish(w);
    if (rc == SHOAL_OK && !quiet) {
        char a[32], b[32];
        fprintf(stderr, "shoal quantize: %s -> %s: %s, %lld of %lld tensors quantized, %s -> %s (%.2f bits a weight "
                "of the matrices)\n", pos[0], pos[1], FTYPES[k].name, (long long)n_quant, (long long)g->n_tensors,
                shoal_fmt_bytes(a, sizeof a, (double)total), shoal_fmt_bytes(b, sizeof b, (double)written),
                mat_values > 0 ? (double)mat_bytes * 8.0 / mat_values : 0.0);
    }
done:
    shoal_gguf_writer_destroy(w);
    shoal_gguf_close(g);
    free(types);
    shoal_pool_destroy(cv.pool);
    free(cv.rows);
    free(cv.chunk);
    free(cv.rc);
    free(cv.err);
    return rc == SHOAL_OK ? 0 : launch_fail("quantize", rc);
}
