/*
 * test_gpu_model — whole models on a compute backend, in one process: the
 * backend under test (CUDA, or the CPU as a dry run) against the run.c
 * oracles of ../shared/testdata (stories260K), against the CPU backend on
 * synthetic models of every weight type, and under device memory budgets
 * (offload) against itself without one. What needs several ranks (ranks
 * sharing a GPU, NCCL, offload groups) stays in test_gpu_model.py.
 *
 *   test_gpu_model [cuda|cpu] [--gpu N] [--simd L] [--threads N] [--quick] [--slow]
 *                  [--filter S] [--perturb] [-v]
 *
 * Each backend is made once and serves every case; each case loads its
 * model, runs it and frees it, as `shoal run` would (the same state
 * parameters: whole rows of logits with --logits-out, the top-1 path
 * without). The synthetic models are written with shard/synth.h into memory
 * (memfd_create), never to disk.
 *
 * What is compared, and why that way:
 * - stories260K: run.c's greedy text from BOS (kv f32, f16) and the ids of
 *   "Once upon a time" (kv f32, f16, q8), exactly; run.c's logits within
 *   1e-4 with the same argmax at every position (tests/ref/compare_logits.py).
 * - synthetic models: the GPU computes in another order than the CPU (prompt
 *   batches of more than 8 tokens go through the tile kernels with activations rounded
 *   to f16/bf16), so greedy ids may part after a while. The first 32 of 48
 *   generated ids must be equal (one exception, said in the output: the
 *   CPU's own logits put the two tokens within twice the device-CPU logit
 *   difference there, a near-tie that rounding decides), and the logits of
 *   every position whose input tokens are still the same (the whole prompt
 *   included) must agree within TOL x max|logit| (by weight type, below).
 * - offload (--device-mem): budgets keeping 0, 1, 4 and all 8 layers of an
 *   8-layer model resident, prefetch 1 and 2: the ids of the run without a
 *   budget, every one (streaming moves bytes, it changes no arithmetic), and
 *   the backend's counted peak within the budget (on a GPU, what the driver saw
 *   taken too, within the budget and DRIVER_SLACK). The budgets come from the
 *   refusal of a far too small one (the least that runs: every layer
 *   streamed) plus whole layers, as shoal run reports them.
 *
 * cuda (the default) is the CUDA backend on GPU N; cpu is the CPU backend
 * (at --simd L, default the best this processor runs), which must pass
 * against the CPU reference: a check of this program's logic on a machine
 * without a GPU. --simd scalar shows real (tolerated) differences; --perturb
 * moves what the device side returns (one generated id, one logit, one byte
 * of text) so that every case must FAIL: a check of the checks. --quick runs
 * a subset (CTest's unit.test_gpu_model_cpu), --slow adds the long context,
 * --filter runs the cases whose name contains S; --threads sets the CPU
 * backends' threads (default: one per core); -v prints the ids of passing
 * cases too, and shoal's own INFO lines.
 *
 * Exit status: 0 when every case passes (or skips for want of test data), 1
 * when one fails, 2 for a bad argument, 77 only when the driver reports no
 * CUDA device at all; a device that is counted but on which the backend
 * cannot be made is a failure (1), with the reason.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <limits.h>
#include <math.h>
#include <regex.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../../cpu/cpu.h"
#include "../../cuda/cuda.h"
#include "../../runtime/generate.h"
#include "../../shard/synth.h"

#define COUNT(a) ((int)(sizeof(a) / sizeof *(a)))

enum { N_GEN = 48, N_EQUAL = 32 };

/* max |logit diff| / max |logit| by weight type. The CPU multiplies quantized
 * weights with activations rounded to 8 bits per block of 32, the GPU's prompt
 * batches with activations in f16: ~0.5% per matmul, which adds up over the
 * layers to 2-3% of the largest logit (the CPU's scalar and AVX-512 kernels
 * differ that much too), hence 5% as tests/model/test_forward.py allows
 * against the float64 reference. Float weights differ by rounding alone
 * (2e-4 measured between CPU kernels). */
static double tolerance(int type) {
    switch (type) {
    case SHOAL_DTYPE_F32: return 5e-3;
    case SHOAL_DTYPE_F16:
    case SHOAL_DTYPE_BF16: return 2e-2;
    default: return 5e-2; /* q8_0, q4_0, q4_1 */
    }
}

/* ~60-100 ids with these vocabularies: the batched (tile kernel) path. words(40, 1) of
 * test_gpu_model.py, which the multi-rank tests there still use. */
static const char PROMPT[] = "ar w wcso ecme rhol e p c me fw uh fd m n oly ysdd yctw cm up afy n "
                             "uwew d nnyh s cy ufr c yp mt upsy wumu p feh pn p taa f r ro";

/* ------------------------------------------------------------ the models */

struct model_def {
    const char *name, *arch;
    int dim, layers, heads, kv_heads, head_dim, ffn, vocab, ctx, tied;
    int type, embd_type, out_type; /* enum shoal_dtype; -1 for the last two: type */
    uint64_t seed;
};

#define BASE .dim = 256, .layers = 4, .heads = 8, .kv_heads = 2, .ffn = 768, .vocab = 2048
#define WIDE .dim = 512, .layers = 4, .heads = 8, .kv_heads = 4, .ffn = 1408, .vocab = 4000
#define SAME .embd_type = -1, .out_type = -1, .seed = 11

/* test_gpu_model.py's SYNTH table (shoal synth's flags, seed 11), and the offload model */
static const struct model_def MODELS[] = {
    { "q8_0", BASE, .type = SHOAL_DTYPE_Q8_0, SAME },
    { "q4_0", BASE, .type = SHOAL_DTYPE_Q4_0, SAME },
    { "q4_1", BASE, .type = SHOAL_DTYPE_Q4_1, SAME },
    { "f16", BASE, .type = SHOAL_DTYPE_F16, SAME },
    { "bf16", BASE, .type = SHOAL_DTYPE_BF16, SAME },
    { "f32", BASE, .type = SHOAL_DTYPE_F32, SAME },
    { "wide-q8_0", WIDE, .type = SHOAL_DTYPE_Q8_0, SAME },
    { "wide-q4_0", WIDE, .type = SHOAL_DTYPE_Q4_0, SAME },
    { "wide-f16", WIDE, .type = SHOAL_DTYPE_F16, SAME },
    /* head sizes that are not powers of two; heads x head-dim != dim in the second */
    { "hd80-q8_0", .dim = 320, .layers = 4, .heads = 4, .kv_heads = 2, .head_dim = 80, .ffn = 864,
      .vocab = 2048, .type = SHOAL_DTYPE_Q8_0, SAME },
    { "hd96-f16", .dim = 384, .layers = 4, .heads = 8, .kv_heads = 4, .head_dim = 96, .ffn = 1024,
      .vocab = 2048, .type = SHOAL_DTYPE_F16, SAME },
    /* RoPE on halves (neox), Q/K/V biases, the head tied to the embedding table */
    { "qwen2-tied-q8_0", .arch = "qwen2", .tied = 1, .dim = 256, .layers = 4, .heads = 8, .kv_heads = 2,
      .ffn = 768, .vocab = 3000, .type = SHOAL_DTYPE_Q8_0, SAME },
    { "qwen2-f16", .arch = "qwen2", .dim = 256, .layers = 4, .heads = 8, .kv_heads = 4, .ffn = 768,
      .vocab = 3000, .type = SHOAL_DTYPE_F16, SAME },
    /* llama.cpp-like mixes: other types for the embedding table and the head */
    { "mixed-q4_0", BASE, .type = SHOAL_DTYPE_Q4_0, .embd_type = SHOAL_DTYPE_F16,
      .out_type = SHOAL_DTYPE_Q8_0, .seed = 11 },
    /* the long context: a small vocabulary keeps 1,500 positions of logits small */
    { "long-q8_0", .dim = 256, .layers = 4, .heads = 8, .kv_heads = 2, .ffn = 768, .vocab = 512,
      .ctx = 4096, .type = SHOAL_DTYPE_Q8_0, SAME },
    /* offload: 8 layers of ~3 MiB */
    { "offload-q8_0", .dim = 512, .layers = 8, .heads = 8, .kv_heads = 4, .ffn = 1408, .vocab = 4000,
      .type = SHOAL_DTYPE_Q8_0, .embd_type = -1, .out_type = -1, .seed = 5 },
};
#undef BASE
#undef WIDE
#undef SAME

/* A model as the cases use it: its file (in memory, or the test data's) opened. */
struct model_file {
    const struct model_def *def; /* NULL: stories260K */
    int fd;                      /* the memfd holding it, or -1 */
    char path[PATH_MAX];
    struct shoal_gguf *g;
    struct shoal_tokenizer *tok;
};

/* ------------------------------------------------------------ context */

struct ctx {
    struct shoal_backend *dev; /* under test */
    struct shoal_backend *ref; /* the CPU reference */
    struct shoal_backend *off; /* the device with budgets (offload), made when first needed */
    char dev_name[160];
    int on_gpu, gpu, simd, threads;
    int quick, slow, perturb, verbose;
    const char *filter;
    const char *testdata;
    char dir[PATH_MAX];        /* where the memfds' names are made (see synth_memfd) */
    struct model_file models[COUNT(MODELS)];
    struct model_file stories;
    int cases, failed, skipped;
    char fails[24][80];
};

/* ------------------------------------------------------------ text */

struct sbuf {
    char *s;
    size_t n, cap;
    int oom;
};

static void sb_add(struct sbuf *b, const char *p, size_t n) {
    if (b->oom) return;
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->n + n + 1) cap *= 2;
        char *s = realloc(b->s, cap);
        if (!s) {
            b->oom = 1;
            return;
        }
        b->s = s;
        b->cap = cap;
    }
    memcpy(b->s + b->n, p, n);
    b->n += n;
    b->s[b->n] = 0;
}

__attribute__((format(printf, 2, 3))) static void sb_printf(struct sbuf *b, const char *fmt, ...) {
    char small[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(small, sizeof small, fmt, ap);
    va_end(ap);
    if (n < 0) return;
    if ((size_t)n < sizeof small) {
        sb_add(b, small, (size_t)n);
        return;
    }
    char *big = malloc((size_t)n + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)n + 1, fmt, ap);
    va_end(ap);
    sb_add(b, big, (size_t)n);
    free(big);
}

static const char *sb_str(const struct sbuf *b) { return b->s ? b->s : ""; }

static void sb_free(struct sbuf *b) {
    free(b->s);
    memset(b, 0, sizeof *b);
}

static void sb_ids(struct sbuf *b, const int32_t *ids, int n) {
    sb_add(b, "[", 1);
    for (int i = 0; i < n; i++) sb_printf(b, i ? ", %d" : "%d", ids[i]);
    sb_add(b, "]", 1);
}

/* Reads a whole file: *out (NUL-terminated; free it) and its length. */
static shoal_status read_file(const char *path, char **out, size_t *len) {
    *out = NULL;
    FILE *f = fopen(path, "rb");
    if (!f) return shoal_errorf(SHOAL_IO, "%s: cannot open: %s", path, strerror(errno));
    struct sbuf b = { 0 };
    char buf[65536];
    size_t n;
    while ((n = fread(buf, 1, sizeof buf, f)) > 0) sb_add(&b, buf, n);
    int bad = ferror(f);
    fclose(f);
    if (bad || b.oom) {
        sb_free(&b);
        return shoal_errorf(bad ? SHOAL_IO : SHOAL_NOMEM, "%s: cannot read", path);
    }
    if (!b.s) sb_add(&b, "", 0);
    *out = b.s;
    *len = b.n;
    return SHOAL_OK;
}

/* ------------------------------------------------------------ one run */

/* The flags of `shoal run -m MODEL --temp 0 -q` that the cases vary. */
struct run_args {
    const char *prompt;
    int n_predict;   /* -n */
    int ignore_eos;  /* --ignore-eos */
    int n_batch;     /* -b (0: 512) */
    int n_ctx;       /* -c (0: the model's, at most 4096) */
    int kv_type;     /* --kv-type */
    int logits;      /* --logits-out: every position's logits, whole rows */
    int min_pos;     /* logits kept from this position on */
    uint64_t budget; /* --device-mem (0: none) */
    int prefetch;    /* --prefetch */
};

/* What one run gave: what --ids-out, --logits-out, stdout and -v would say. */
struct gen {
    int32_t *ids;           /* the prompt's ids after BOS, then the generated ones */
    int n_ids, n_prompt, n_gen, cap_ids;
    int n_vocab;
    float *logits;          /* (n_pos, n_vocab): the positions pos0 .. pos0 + n_pos - 1 */
    int32_t *ltok;          /* (n_pos): the input token of each */
    int pos0, n_pos, cap_pos;
    struct sbuf text;       /* stdout: the prompt echoed, the text, a newline */
    int n_resident, n_layers; /* offload: layers kept on the device */
    uint64_t peak;          /* the backend's counted peak after the run */
    uint64_t measured;      /* what the driver saw taken since the backend was made, at the end */
    int measured_known;
    /* while running */
    int min_pos, perturb, oom;
};

static void gen_free(struct gen *g) {
    free(g->ids);
    free(g->logits);
    free(g->ltok);
    sb_free(&g->text);
    memset(g, 0, sizeof *g);
}

static void push_id(struct gen *g, int32_t id) {
    if (g->n_ids == g->cap_ids) {
        int cap = g->cap_ids ? 2 * g->cap_ids : 256;
        int32_t *p = realloc(g->ids, (size_t)cap * sizeof *p);
        if (!p) {
            g->oom = 1;
            return;
        }
        g->ids = p;
        g->cap_ids = cap;
    }
    g->ids[g->n_ids++] = id;
}

static int on_text(void *user, const char *text, size_t len) {
    struct gen *g = user;
    sb_add(&g->text, text, len);
    return 0;
}

static void on_token(void *user, int32_t id) {
    struct gen *g = user;
    /* --perturb: the device's sixth generated id is recorded as another */
    if (g->perturb && g->n_gen == 5) id = (id + 1) % g->n_vocab;
    push_id(g, id);
    g->n_gen++;
}

static void on_logits(void *user, int pos, int32_t token, const float *logits, int n_vocab) {
    struct gen *g = user;
    if (pos < g->min_pos || g->oom) return;
    if (g->n_pos == 0) g->pos0 = pos;
    if (pos != g->pos0 + g->n_pos) { /* the generation loop gives them in order */
        g->oom = 1;
        return;
    }
    if (g->n_pos == g->cap_pos) {
        int cap = g->cap_pos ? 2 * g->cap_pos : 64;
        float *l = realloc(g->logits, (size_t)cap * n_vocab * sizeof *l);
        if (l) g->logits = l;
        int32_t *t = realloc(g->ltok, (size_t)cap * sizeof *t);
        if (t) g->ltok = t;
        if (!l || !t) {
            g->oom = 1;
            return;
        }
        g->cap_pos = cap;
    }
    float *row = g->logits + (size_t)g->n_pos * n_vocab;
    memcpy(row, logits, (size_t)n_vocab * sizeof *row);
    g->ltok[g->n_pos] = token;
    if (g->perturb && g->n_pos == 0) { /* --perturb: the first row moved by a tenth of its largest */
        float m = 0;
        for (int i = 0; i < n_vocab; i++) m = fmaxf(m, fabsf(row[i]));
        row[0] += 0.1f * m + 1e-3f;
    }
    g->n_pos++;
}

/* The logits row of position pos, or NULL when the run did not keep it. */
static const float *row_at(const struct gen *g, int pos, int32_t *token) {
    if (pos < g->pos0 || pos >= g->pos0 + g->n_pos) return NULL;
    if (token) *token = g->ltok[pos - g->pos0];
    return g->logits + (size_t)(pos - g->pos0) * g->n_vocab;
}

/*
 * Runs a model on backend be as `shoal run -m MODEL --temp 0` with args: the
 * state and offload parameters are those of launch/cmd_run.c's load(), the
 * generation its lead(). perturb: the device side under --perturb.
 */
static shoal_status run_model(struct ctx *c, struct shoal_backend *be, const struct model_file *mf,
                              const struct run_args *a, int perturb, struct gen *out) {
    memset(out, 0, sizeof *out);
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, mf->g));
    const int n_ctx = a->n_ctx ? a->n_ctx : hp.n_ctx_train < 4096 ? hp.n_ctx_train : 4096;
    const int n_batch = a->n_batch ? a->n_batch : 512;
    /* greedy: only the best logit travels (topk 1), but never with --logits-out */
    struct shoal_state_params stp = { .n_ctx = n_ctx, .n_batch = n_batch,
                                      .n_outputs = a->logits ? n_batch : 1, .kv_type = a->kv_type,
                                      .topk = a->logits ? 0 : 1 };
    struct shoal_model_offload off = { .budget = a->budget, .prefetch = a->prefetch,
                                       .from = SHOAL_OFFLOAD_FROM_AUTO, .state = &stp };
    struct shoal_model *m = NULL;
    struct shoal_state *st = NULL;
    struct shoal_sampler *smp = NULL;
    int32_t *ids = NULL;
    size_t n_ids = 0;
    shoal_status rc = SHOAL_OK;
    out->n_vocab = hp.n_vocab;
    out->min_pos = a->min_pos;
    out->perturb = perturb && c->perturb;

    SHOAL_TRY_GOTO(shoal_model_load_offload(&m, mf->g, be, NULL, &off), rc, done);
    out->n_resident = m->off.n_resident;
    out->n_layers = m->off.n_layers;
    SHOAL_TRY_GOTO(shoal_state_create(&st, m, &stp), rc, done);
    const int add_bos = shoal_tokenizer_add_bos(mf->tok);
    SHOAL_TRY_GOTO(shoal_tokenize(mf->tok, a->prompt, strlen(a->prompt), add_bos, 1, &ids, &n_ids), rc, done);
    if (n_ids == 0) {
        rc = shoal_errorf(SHOAL_INVALID, "the prompt is empty and the model adds no BOS token");
        goto done;
    }
    struct shoal_sampler_params sp;
    shoal_sampler_defaults(&sp);
    sp.temp = 0;
    sp.seed = 1;
    SHOAL_TRY_GOTO(shoal_sampler_create(&smp, &sp, m->hp.n_vocab), rc, done);
    for (size_t i = add_bos ? 1 : 0; i < n_ids; i++) push_id(out, ids[i]);
    out->n_prompt = out->n_ids;
    struct shoal_gen_params gp = {
        .n_predict = a->n_predict,
        .ignore_eos = a->ignore_eos,
        .echo_prompt = 1,
        .all_logits = a->logits,
        .on_text = on_text,
        .on_logits = a->logits ? on_logits : NULL,
        .on_token = on_token,
        .user = out,
    };
    struct shoal_gen_stats gs;
    SHOAL_TRY_GOTO(shoal_generate(st, mf->tok, smp, ids, (int)n_ids, &gp, &gs), rc, done);
    sb_add(&out->text, "\n", 1); /* shoal run ends its output with a newline */
    if (out->perturb && out->text.n) out->text.s[0] ^= 1;
    if (out->oom || out->text.oom) rc = shoal_errorf(SHOAL_NOMEM, "out of memory keeping the run's results");
    shoal_backend_mem(be, NULL, &out->peak);
    out->measured = shoal_backend_mem_measured(be, &out->measured_known);
done:
    free(ids);
    shoal_sampler_destroy(smp);
    shoal_state_destroy(st);
    shoal_model_destroy(m);
    if (rc != SHOAL_OK) gen_free(out); /* the reason (shoal_last_error) outlives it */
    return rc;
}

/* ------------------------------------------------------------ models in memory */

/*
 * A synthetic model written into a memfd, opened as /proc/self/fd/N. The
 * GGUF writer writes PATH.tmp and renames it to PATH, which /proc/self/fd
 * does not allow; so PATH.tmp is made a symbolic link to the memfd, in a
 * directory of our own (in /dev/shm when there is one): the writer writes
 * through it, renames the link, and the link is removed. Only the link
 * touches a file system; the model's bytes stay in memory.
 */
static shoal_status synth_memfd(struct ctx *c, struct model_file *mf) {
    const struct model_def *d = mf->def;
    struct shoal_synth_params p;
    shoal_synth_defaults(&p);
    p.arch = d->arch ? d->arch : "llama";
    p.dim = d->dim;
    p.layers = d->layers;
    p.heads = d->heads;
    p.kv_heads = d->kv_heads;
    p.head_dim = d->head_dim;
    p.ffn = d->ffn;
    p.vocab = d->vocab;
    if (d->ctx) p.ctx = d->ctx;
    p.tied = d->tied;
    p.type = d->type;
    p.embd_type = d->embd_type;
    p.out_type = d->out_type;
    p.seed = d->seed;

    char name[96], out[PATH_MAX], tmp[PATH_MAX + 8];
    snprintf(name, sizeof name, "shoal-synth-%s", d->name);
    mf->fd = memfd_create(name, MFD_CLOEXEC);
    if (mf->fd < 0) return shoal_errorf(SHOAL_IO, "memfd_create: %s", strerror(errno));
    snprintf(mf->path, sizeof mf->path, "/proc/self/fd/%d", mf->fd);
    if (snprintf(out, sizeof out, "%s/%s.gguf", c->dir, d->name) >= (int)sizeof out ||
        snprintf(tmp, sizeof tmp, "%s.tmp", out) >= (int)sizeof tmp)
        return shoal_errorf(SHOAL_INVALID, "%s: too long a path", c->dir);
    if (symlink(mf->path, tmp) != 0)
        return shoal_errorf(SHOAL_IO, "%s: cannot make a link to the memfd: %s", tmp, strerror(errno));
    shoal_status rc = shoal_synth_write(&p, out);
    unlink(out);
    unlink(tmp);
    if (rc != SHOAL_OK) { /* the next case that asks tries again, and says why */
        close(mf->fd);
        mf->fd = -1;
    }
    return rc;
}

/* The model, written and opened the first time a case asks for it. */
static shoal_status model_get(struct ctx *c, const char *name, struct model_file **out) {
    *out = NULL;
    struct model_file *mf = NULL;
    for (int i = 0; i < COUNT(MODELS); i++)
        if (strcmp(MODELS[i].name, name) == 0) mf = &c->models[i];
    if (!mf) return shoal_errorf(SHOAL_INTERNAL, "no model %s in MODELS", name);
    if (!mf->g) {
        if (mf->fd < 0) SHOAL_TRY(synth_memfd(c, mf));
        SHOAL_TRY(shoal_gguf_open(&mf->g, mf->path));
        SHOAL_TRY(shoal_tokenizer_create(&mf->tok, mf->g));
    }
    *out = mf;
    return SHOAL_OK;
}

static void model_close(struct model_file *mf) {
    shoal_tokenizer_destroy(mf->tok);
    shoal_gguf_close(mf->g);
    if (mf->fd >= 0) close(mf->fd);
    mf->tok = NULL;
    mf->g = NULL;
    mf->fd = -1;
}

/* ------------------------------------------------------------ cases */

/* Whether the case named name runs (--filter). */
static int want(const struct ctx *c, const char *name) {
    return !c->filter || strstr(name, c->filter);
}

/* Prints the case's line (and details under it) and counts it. ok: 1 pass, 0 fail, -1 skipped. */
static void report(struct ctx *c, const char *name, int ok, double t0, const char *line,
                   const char *details) {
    c->cases++;
    if (ok < 0) c->skipped++;
    if (ok == 0) {
        if (c->failed < COUNT(c->fails)) snprintf(c->fails[c->failed], sizeof c->fails[0], "%s", name);
        c->failed++;
    }
    printf("%s %s: %s (%.1f s)\n", ok > 0 ? "PASS" : ok == 0 ? "FAIL" : "SKIP", name, line,
           shoal_now() - t0);
    if (details && *details) printf("%s", details);
    fflush(stdout);
}

/* A case that could not run (a model that did not load, a run that failed): a failure. */
static void report_error(struct ctx *c, const char *name, double t0, const char *what, shoal_status rc) {
    char line[1024];
    snprintf(line, sizeof line, "%s: %s: %s", what, shoal_status_str(rc), shoal_last_error());
    shoal_error_clear();
    report(c, name, 0, t0, line, NULL);
}

static int first_diff(const int32_t *a, int na, const int32_t *b, int nb) {
    int n = na < nb ? na : nb, i = 0;
    while (i < n && a[i] == b[i]) i++;
    return i;
}

/* ------------------------------------------------------------ against the CPU */

/* Over the positions both runs fed the same tokens (in order, from the first
 * kept): how many, the worst max|diff| / max|ref| of a position, the largest
 * |diff|, the position of the worst; a position with non-finite logits on
 * the device (or -1). */
struct ldiff {
    int n, at, nonfinite;
    double worst, worst_abs;
};

static void logit_diff(const struct gen *ref, const struct gen *got, struct ldiff *o) {
    *o = (struct ldiff){ .at = -1, .nonfinite = -1 };
    for (int i = 0; i < ref->n_pos; i++) {
        const int p = ref->pos0 + i;
        int32_t tr = ref->ltok[i], tg = -1;
        const float *a = ref->logits + (size_t)i * ref->n_vocab, *b = row_at(got, p, &tg);
        if (!b || tg != tr) break;
        double d = 0, m = 0;
        for (int v = 0; v < ref->n_vocab; v++) {
            if (!isfinite(b[v])) {
                o->nonfinite = p;
                return;
            }
            d = fmax(d, fabs((double)a[v] - b[v]));
            m = fmax(m, fabs((double)a[v]));
        }
        const double r = d / fmax(m, 1e-30);
        o->n++;
        o->worst_abs = fmax(o->worst_abs, d);
        if (r >= o->worst) {
            o->worst = r;
            o->at = p;
        }
    }
}

/*
 * The device run got (ids only: the device's own greedy pick, through its
 * top-1 path) and got_l (with every logit) against the CPU's ref (with
 * logits): test_gpu_model.py's check_against_cpu. Returns whether they
 * agree; line says how they compare, details what differed.
 */
static int check_against_cpu(const char *label, int wtype, const struct gen *ref, const struct gen *got,
                             const struct gen *got_l, int n_equal, struct sbuf *line, struct sbuf *details) {
    const double tol = tolerance(wtype);
    const int32_t *rgen = ref->ids + ref->n_prompt, *ggen = got->ids + got->n_prompt,
                  *lgen = got_l->ids + got_l->n_prompt;
    if (got->n_prompt != ref->n_prompt || got_l->n_prompt != ref->n_prompt ||
        first_diff(ref->ids, ref->n_prompt, got->ids, got->n_prompt) < ref->n_prompt) {
        sb_printf(line, "%s: the prompts' ids differ (tokenizer?)", label);
        return 0;
    }
    int d = first_diff(rgen, ref->n_gen, ggen, got->n_gen);
    sb_printf(line, "%s: %d prompt ids, %d generated; ", label, ref->n_prompt, ref->n_gen);
    if (d == ref->n_gen) sb_printf(line, "ids identical");
    else sb_printf(line, "ids first differ at generated token %d", d);
    struct ldiff ld;
    logit_diff(ref, got_l, &ld);
    const int dl = first_diff(rgen, ref->n_gen, lgen, got_l->n_gen);
    if (ld.at >= 0)
        sb_printf(line, "; logits of %d positions: max |diff| %.3g, %.2e x max|logit| at pos %d (tolerance %g)",
                  ld.n, ld.worst_abs, ld.worst, ld.at, tol);
    else
        sb_printf(line, "; logits of %d positions: max |diff| %.3g, %.2e x max|logit| at pos none (tolerance %g)",
                  ld.n, ld.worst_abs, ld.worst, tol);
    if (dl != d) sb_printf(line, " (the run with its logits parts at generated token %d)", dl);
    const int need = n_equal < ref->n_gen ? n_equal : ref->n_gen;
    if (d < need) {
        /* The CPU's margin between its pick and the device's at that position,
         * against how far the device moved those logits there: moving each by at
         * most e changes their difference by at most 2e, so a gap under 2e is a
         * near-tie that rounding decides. */
        const int pos = ref->n_prompt + d; /* BOS + prompt: the input at pos is the token before gen[d] */
        int32_t tr = -1, tg = -2;
        const float *row = row_at(ref, pos, &tr), *drow = row_at(got_l, pos, &tg);
        if (row && drow && tr == tg && dl >= d) {
            const double gap = (double)row[rgen[d]] - row[ggen[d]];
            double e = 0;
            for (int v = 0; v < ref->n_vocab; v++) e = fmax(e, fabs((double)row[v] - drow[v]));
            sb_printf(line, "; there the CPU's logits of the two are %.3g apart, the device moved them by <= %.3g",
                      gap, e);
            if (gap >= 0 && gap <= 2 * e) {
                sb_printf(line, " (a near-tie: accepted)");
                d = n_equal; /* explained */
            }
        }
    }
    int ok = 1;
    if (d < need) {
        ok = 0;
        sb_printf(details, "    CPU ids: ");
        sb_ids(details, rgen, ref->n_gen);
        sb_printf(details, "\n    device:  ");
        sb_ids(details, ggen, got->n_gen);
        sb_printf(details, "\n");
    }
    if (ld.nonfinite >= 0) {
        ok = 0;
        sb_printf(details, "    position %d: non-finite logits on the device\n", ld.nonfinite);
    }
    if (ld.worst > tol) {
        ok = 0;
        sb_printf(details, "    logits beyond the tolerance: %.2e x max|logit| > %g\n", ld.worst, tol);
    }
    return ok;
}

/* A prompt's words for a case's label: short ones as they are, long ones counted. */
static void label_prompt(struct sbuf *b, const char *prompt) {
    if (strlen(prompt) <= 40) {
        sb_printf(b, "-p %s", prompt);
        return;
    }
    int words = 0;
    for (const char *p = prompt; *p; p++)
        if (*p != ' ' && (p == prompt || p[-1] == ' ')) words++;
    sb_printf(b, "-p <%d words>", words);
}

/*
 * One synthetic case: the CPU with its logits, the device for its ids, the
 * device with its logits; then check_against_cpu, and the prompt's length
 * where the case needs one (min_prompt..max_prompt ids).
 */
static void compare_case(struct ctx *c, const char *name, const char *model, const char *flags,
                         struct run_args a, int min_prompt, int max_prompt) {
    if (!want(c, name)) return;
    double t0 = shoal_now();
    struct model_file *mf;
    shoal_status rc = model_get(c, model, &mf);
    if (rc != SHOAL_OK) {
        report_error(c, name, t0, "writing or opening the model", rc);
        return;
    }
    struct gen ref, got, got_l;
    struct run_args al = a;
    al.logits = 1;
    a.logits = 0;
    struct sbuf label = { 0 }, line = { 0 }, details = { 0 };
    sb_printf(&label, "%s ", model);
    label_prompt(&label, a.prompt);
    if (flags && *flags) sb_printf(&label, " %s", flags);
    if ((rc = run_model(c, c->ref, mf, &al, 0, &ref)) != SHOAL_OK) {
        report_error(c, name, t0, "the CPU's run", rc);
    } else if ((rc = run_model(c, c->dev, mf, &a, 1, &got)) != SHOAL_OK) {
        report_error(c, name, t0, "the device's run", rc);
        gen_free(&ref);
    } else if ((rc = run_model(c, c->dev, mf, &al, 1, &got_l)) != SHOAL_OK) {
        report_error(c, name, t0, "the device's run with logits", rc);
        gen_free(&ref);
        gen_free(&got);
    } else {
        int ok = check_against_cpu(sb_str(&label), mf->def->type, &ref, &got, &got_l, N_EQUAL, &line, &details);
        if (ok && c->verbose) { /* the ids, which a failure shows anyway */
            sb_printf(&details, "    CPU ids: ");
            sb_ids(&details, ref.ids + ref.n_prompt, ref.n_gen);
            sb_printf(&details, "\n    device:  ");
            sb_ids(&details, got.ids + got.n_prompt, got.n_gen);
            sb_printf(&details, "\n");
        }
        if (ref.n_prompt < min_prompt || ref.n_prompt > max_prompt) {
            ok = 0;
            sb_printf(&details, "    the prompt is %d ids, not %d..%d as this case needs\n", ref.n_prompt,
                      min_prompt, max_prompt);
        }
        report(c, name, ok, t0, sb_str(&line), sb_str(&details));
        gen_free(&ref);
        gen_free(&got);
        gen_free(&got_l);
    }
    sb_free(&label);
    sb_free(&line);
    sb_free(&details);
}

static struct run_args synth_args(const char *prompt) {
    return (struct run_args){ .prompt = prompt, .n_predict = N_GEN, .ignore_eos = 1, .kv_type = SHOAL_KV_F16 };
}

/* A prompt of more than 8 tokens: prompt batches through the tile kernels, then decoding. */
static void cases_batched(struct ctx *c) {
    static const char *const quick[] = { "q8_0", "q4_1", "mixed-q4_0" };
    for (int i = 0; i < COUNT(MODELS); i++) {
        const char *m = MODELS[i].name;
        if (!strncmp(m, "long", 4) || !strncmp(m, "offload", 7)) continue;
        int in_quick = 0;
        for (int k = 0; k < COUNT(quick); k++) in_quick |= !strcmp(quick[k], m);
        if (c->quick && !in_quick) continue;
        char name[64];
        snprintf(name, sizeof name, "batched/%s", m);
        compare_case(c, name, m, NULL, synth_args(PROMPT), 17, INT_MAX);
    }
}

/* 1-5 prompt ids: every forward pass through the decode kernels. */
static void cases_short(struct ctx *c) {
    static const char *const models[] = { "q8_0", "q4_0", "f16", "qwen2-tied-q8_0", "hd80-q8_0" };
    static const char *const prompts[] = { "e", "to be or" };
    for (int p = 0; p < COUNT(prompts); p++)
        for (int i = 0; i < COUNT(models); i++) {
            if (c->quick && (p != 1 || i != 3)) continue;
            char name[64];
            snprintf(name, sizeof name, "short/%s/%s", models[i], prompts[p]);
            compare_case(c, name, models[i], NULL, synth_args(prompts[p]), 1, 5);
        }
}

/* -b 13: full batches (tile kernels) over a cache that earlier batches filled, and a
 * last batch of <= 8 tokens (decode kernels). */
static void cases_small_batches(struct ctx *c) {
    static const char *const models[] = { "q8_0", "f16" };
    for (int i = 0; i < COUNT(models); i++) {
        if (c->quick && i) continue;
        char name[64];
        snprintf(name, sizeof name, "batches13/%s", models[i]);
        struct run_args a = synth_args(PROMPT);
        a.n_batch = 13;
        compare_case(c, name, models[i], "-b 13", a, 17, INT_MAX);
    }
}

static void cases_kv_types(struct ctx *c) {
    static const char *const kv[] = { "f16", "q8", "f32" };
    for (int i = 0; i < COUNT(kv); i++) {
        if (c->quick && i != 1) continue;
        char name[64], flags[32];
        snprintf(name, sizeof name, "kv/q4_0/%s", kv[i]);
        snprintf(flags, sizeof flags, "--kv-type %s", kv[i]);
        struct run_args a = synth_args(PROMPT);
        a.kv_type = shoal_kv_type_from_name(kv[i]);
        compare_case(c, name, "q4_0", flags, a, 17, INT_MAX);
    }
}

/* ctx 4096, a prompt of ~1,500 ids in batches of 512, then 64 tokens: decoding
 * attends to >1,500 positions in several chunks (split-K). Logits of the
 * generated positions and the prompt's last 64 are compared, not all 1,500. */
static void cases_long(struct ctx *c) {
    static const char *const kv[] = { "f16", "q8" };
    /* 1,500 letters from a seeded generator (test_gpu_model.py's reseeded its
     * generator for every letter, which made them all "o") */
    char *prompt = malloc(1500 * 2);
    if (!prompt) return;
    uint64_t s = 3;
    for (int i = 0; i < 1500; i++) {
        uint64_t z = (s += 0x9e3779b97f4a7c15ull);
        z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
        z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
        prompt[2 * i] = "etaoinshrdlu"[(z ^ (z >> 31)) % 12];
        prompt[2 * i + 1] = i == 1499 ? 0 : ' ';
    }
    for (int i = 0; i < COUNT(kv); i++) {
        char name[64], flags[64];
        snprintf(name, sizeof name, "long-slow/%s", kv[i]);
        snprintf(flags, sizeof flags, "-c 4096 --kv-type %s", kv[i]);
        struct run_args a = synth_args(prompt);
        a.n_predict = 64;
        a.n_ctx = 4096;
        a.kv_type = shoal_kv_type_from_name(kv[i]);
        a.min_pos = 1500 - 64;
        compare_case(c, name, "long-q8_0", flags, a, 1400, INT_MAX);
    }
    free(prompt);
}

/* ------------------------------------------------------------ stories260K */

/* The test data's file rel: *path, or 0 with the reason in why. */
static int testdata(const struct ctx *c, const char *rel, char *path, size_t len, char *why, size_t wlen) {
    snprintf(path, len, "%s/%s", c->testdata, rel);
    if (access(path, R_OK) == 0) return 1;
    snprintf(why, wlen, "test data %s not found (set SHOAL_TESTDATA)", path);
    return 0;
}

/* Whitespace-separated ids of an oracle file. */
static shoal_status read_ids(const char *path, int32_t **ids, int *n) {
    char *text = NULL;
    size_t len = 0;
    SHOAL_TRY(read_file(path, &text, &len));
    *n = 0;
    *ids = malloc((len / 2 + 1) * sizeof **ids);
    if (!*ids) {
        free(text);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    char *p = text, *end;
    for (long v; (v = strtol(p, &end, 10)), end != p; p = end) (*ids)[(*n)++] = (int32_t)v;
    free(text);
    return SHOAL_OK;
}

/* run.c's logits file ("pos P token T: v..." per line; see tests/ref/compare_logits.py) */
static shoal_status read_logits(const char *path, int n_vocab, struct gen *o) {
    char *text = NULL;
    size_t len = 0;
    SHOAL_TRY(read_file(path, &text, &len));
    memset(o, 0, sizeof *o);
    o->n_vocab = n_vocab;
    shoal_status rc = SHOAL_OK;
    int lineno = 0;
    for (char *line = text, *next; line && *line && rc == SHOAL_OK; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = 0;
        lineno++;
        int pos, tok, at = 0;
        if (sscanf(line, "pos %d token %d:%n", &pos, &tok, &at) != 2 || !at) {
            rc = shoal_errorf(SHOAL_FORMAT, "%s:%d: expected 'pos P token T: values...'", path, lineno);
            break;
        }
        float *row = malloc((size_t)n_vocab * sizeof *row);
        if (!row) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            break;
        }
        char *p = line + at, *end;
        int k = 0;
        for (; k < n_vocab; k++, p = end) {
            row[k] = strtof(p, &end);
            if (end == p) break;
        }
        strtof(p, &end);
        if (k != n_vocab || end != p)
            rc = shoal_errorf(SHOAL_FORMAT, "%s:%d: not %d values", path, lineno, n_vocab);
        else {
            o->min_pos = 0;
            on_logits(o, pos, tok, row, n_vocab);
            if (o->oom) rc = shoal_errorf(SHOAL_FORMAT, "%s:%d: positions out of order, or no memory", path, lineno);
        }
        free(row);
    }
    free(text);
    if (rc == SHOAL_OK && o->n_pos == 0) rc = shoal_errorf(SHOAL_FORMAT, "%s: no logits lines", path);
    if (rc != SHOAL_OK) gen_free(o);
    return rc;
}

/* The stories model (opened once), or 0 with the reason. */
static int stories_get(struct ctx *c, struct model_file **out, char *why, size_t wlen, shoal_status *rc) {
    *rc = SHOAL_OK;
    struct model_file *mf = &c->stories;
    if (!mf->g) {
        if (!testdata(c, "stories260K.gguf", mf->path, sizeof mf->path, why, wlen)) return 0;
        if ((*rc = shoal_gguf_open(&mf->g, mf->path)) != SHOAL_OK ||
            (*rc = shoal_tokenizer_create(&mf->tok, mf->g)) != SHOAL_OK)
            return 0;
    }
    *out = mf;
    return 1;
}

/* Where two byte strings first differ, shown. */
static void text_diff(struct sbuf *d, const char *want, size_t wn, const char *got, size_t gn) {
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i]) i++;
    size_t from = i > 30 ? i - 30 : 0;
    sb_printf(d, "    text differs from run.c's at byte %zu of %zu (%zu here):\n", i, wn, gn);
    sb_printf(d, "    run.c: \"%.*s\"\n", (int)((wn - from) < 80 ? wn - from : 80), want + from);
    sb_printf(d, "    here:  \"%.*s\"\n", (int)((gn - from) < 80 ? gn - from : 80), got + from);
}

/* The ids of "Once upon a time" and run.c's text for them; or, with ids NULL, the
 * 256 greedy tokens from BOS. */
static void stories_text_case(struct ctx *c, const char *name, const char *kv, const char *prompt, int n,
                              const char *ids_rel, const char *txt_rel) {
    if (!want(c, name)) return;
    double t0 = shoal_now();
    char why[PATH_MAX + 64], ipath[PATH_MAX], tpath[PATH_MAX], line[512];
    struct model_file *mf;
    shoal_status rc;
    if (!stories_get(c, &mf, why, sizeof why, &rc) ||
        (ids_rel && !testdata(c, ids_rel, ipath, sizeof ipath, why, sizeof why)) ||
        !testdata(c, txt_rel, tpath, sizeof tpath, why, sizeof why)) {
        if (rc != SHOAL_OK) report_error(c, name, t0, "opening stories260K", rc);
        else report(c, name, -1, t0, why, NULL);
        return;
    }
    struct run_args a = { .prompt = prompt, .n_predict = n, .kv_type = shoal_kv_type_from_name(kv) };
    struct gen got;
    char *want_txt = NULL;
    size_t want_len = 0;
    int32_t *want_ids = NULL;
    int n_want = 0;
    if ((rc = read_file(tpath, &want_txt, &want_len)) != SHOAL_OK ||
        (ids_rel && (rc = read_ids(ipath, &want_ids, &n_want)) != SHOAL_OK)) {
        report_error(c, name, t0, "reading the oracle", rc);
        free(want_txt);
        return;
    }
    if ((rc = run_model(c, c->dev, mf, &a, 1, &got)) != SHOAL_OK) {
        report_error(c, name, t0, "the device's run", rc);
    } else {
        struct sbuf d = { 0 };
        int ok = 1;
        if (ids_rel) {
            int at = first_diff(got.ids, got.n_ids, want_ids, n_want);
            if (got.n_ids != n_want || at < n_want) {
                ok = 0;
                sb_printf(&d, "    ids differ from run.c's at %d:\n    run.c: ", at);
                sb_ids(&d, want_ids, n_want);
                sb_printf(&d, "\n    here:  ");
                sb_ids(&d, got.ids, got.n_ids);
                sb_printf(&d, "\n");
            }
        }
        if (got.text.n != want_len || memcmp(got.text.s, want_txt, want_len) != 0) {
            ok = 0;
            text_diff(&d, want_txt, want_len, sb_str(&got.text), got.text.n);
        }
        if (ids_rel)
            snprintf(line, sizeof line, "stories260K -p \"%s\" -n %d --kv-type %s: %d ids and the text %s run.c's",
                     prompt, n, kv, got.n_ids, ok ? "identical to" : "against");
        else
            snprintf(line, sizeof line, "stories260K from BOS -n %d --kv-type %s: %zu bytes of text %s run.c's", n,
                     kv, got.text.n, ok ? "identical to" : "against");
        report(c, name, ok, t0, line, sb_str(&d));
        sb_free(&d);
        gen_free(&got);
    }
    free(want_txt);
    free(want_ids);
}

/* run.c's logits of the 32 positions of "Once upon a time" (kv f32): within 1e-4,
 * the same token and the same argmax at every position (compare_logits.py --strict-argmax). */
static void stories_logits_case(struct ctx *c) {
    const char *name = "stories/logits";
    if (!want(c, name)) return;
    double t0 = shoal_now();
    char why[PATH_MAX + 64], lpath[PATH_MAX];
    struct model_file *mf;
    shoal_status rc;
    if (!stories_get(c, &mf, why, sizeof why, &rc) ||
        !testdata(c, "oracle/runc_logits_once_upon_a_time_n32.txt", lpath, sizeof lpath, why, sizeof why)) {
        if (rc != SHOAL_OK) report_error(c, name, t0, "opening stories260K", rc);
        else report(c, name, -1, t0, why, NULL);
        return;
    }
    const double atol = 1e-4;
    struct run_args a = { .prompt = "Once upon a time", .n_predict = 28, .kv_type = SHOAL_KV_F32, .logits = 1 };
    struct gen got, want_l;
    if ((rc = read_logits(lpath, mf->g ? shoal_tokenizer_n_vocab(mf->tok) : 0, &want_l)) != SHOAL_OK) {
        report_error(c, name, t0, "reading the oracle", rc);
        return;
    }
    if ((rc = run_model(c, c->dev, mf, &a, 1, &got)) != SHOAL_OK) {
        report_error(c, name, t0, "the device's run", rc);
        gen_free(&want_l);
        return;
    }
    struct sbuf d = { 0 };
    int ok = 1;
    if (got.pos0 != 0 || got.n_pos != 32 || want_l.pos0 != 0 || want_l.n_pos != 32) {
        ok = 0;
        sb_printf(&d, "    positions %d..%d here, %d..%d in run.c's: want 0..31\n", got.pos0,
                  got.pos0 + got.n_pos - 1, want_l.pos0, want_l.pos0 + want_l.n_pos - 1);
    }
    double max_abs = 0;
    int at_p = -1, at_i = -1, n_bad = 0, n_pos = got.n_pos < want_l.n_pos ? got.n_pos : want_l.n_pos;
    for (int p = 0; p < n_pos; p++) {
        const float *x = got.logits + (size_t)p * got.n_vocab, *y = want_l.logits + (size_t)p * got.n_vocab;
        if (got.ltok[p] != want_l.ltok[p]) {
            ok = 0;
            sb_printf(&d, "    position %d: token %d here but %d in run.c's\n", p, got.ltok[p], want_l.ltok[p]);
        }
        int ax = 0, ay = 0;
        for (int i = 0; i < got.n_vocab; i++) {
            if (!isfinite(x[i])) {
                ok = 0;
                sb_printf(&d, "    position %d: non-finite logits\n", p);
                break;
            }
            double e = fabs((double)x[i] - y[i]);
            if (e > max_abs) max_abs = e, at_p = p, at_i = i;
            n_bad += e > atol;
            if (x[i] > x[ax]) ax = i;
            if (y[i] > y[ay]) ay = i;
        }
        if (ax != ay) {
            ok = 0;
            sb_printf(&d, "    position %d: argmax %d (%e) here vs %d (%e) in run.c's\n", p, ax, x[ax], ay, y[ay]);
        }
    }
    if (n_bad) {
        ok = 0;
        sb_printf(&d, "    %d values beyond atol %g\n", n_bad, atol);
    }
    char line[512];
    snprintf(line, sizeof line, "stories260K -p \"Once upon a time\" -n 28 --kv-type f32: logits of %d positions "
             "against run.c's: max |diff| %.3e at pos %d index %d (tolerance %g), argmax %s", n_pos, max_abs, at_p,
             at_i, atol, ok ? "equal at every position" : "checked");
    report(c, name, ok, t0, line, sb_str(&d));
    sb_free(&d);
    gen_free(&got);
    gen_free(&want_l);
}

static void cases_stories(struct ctx *c) {
    static const char *const kv_text[] = { "f32", "f16" }, *const kv_ids[] = { "f32", "f16", "q8" };
    char name[64];
    for (int i = 0; i < COUNT(kv_text); i++) {
        if (c->quick && i) continue;
        snprintf(name, sizeof name, "stories/bos256/%s", kv_text[i]);
        stories_text_case(c, name, kv_text[i], "", 256, NULL, "oracle/runc_greedy_bos_256.txt");
    }
    for (int i = 0; i < COUNT(kv_ids); i++) {
        snprintf(name, sizeof name, "stories/once/%s", kv_ids[i]);
        stories_text_case(c, name, kv_ids[i], "Once upon a time", 28,
                          "oracle/runc_greedy_once_upon_a_time_n32.ids",
                          "oracle/runc_greedy_once_upon_a_time_n32.txt");
    }
    stories_logits_case(c);
}

/* ------------------------------------------------------------ offload */

/* Bytes of a size as shoal prints them ("1.50 MiB"). */
static double parse_size(const char *s, size_t n) {
    char buf[64], unit[8] = "";
    double v = 0;
    snprintf(buf, sizeof buf, "%.*s", (int)(n < sizeof buf ? n : sizeof buf - 1), s);
    if (sscanf(buf, "%lf %7s", &v, unit) != 2) return -1;
    static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    for (int i = 0; i < COUNT(units); i++)
        if (!strcmp(unit, units[i])) return v * pow(1024, i);
    return -1;
}

/* The device with budgets: the backend under test's kind made again (on the CPU, as
 * --device-mem makes it: an arena the weights are copied into), so that its counted
 * peak is that of the offload cases alone. */
static shoal_status offload_backend(struct ctx *c) {
    if (c->off) return SHOAL_OK;
    if (c->on_gpu)
        return shoal_cuda_backend_create(&c->off, &(struct shoal_cuda_params){ .device = c->gpu, .rank = 0 });
    return shoal_cpu_backend_create(&c->off, &(struct shoal_cpu_params){ .n_threads = c->threads, .simd = c->simd,
                                                                          .spin = -1, .as_device = 1 });
}

struct budget_run {
    int prefetch, k;
    uint64_t budget;
    int done, ok, resident;
    uint64_t peak, measured;
    int measured_known;
    char why[256];
};

/* What the driver may see beyond the count: kernels loaded on first use, the
 * allocator's granularity, the other backend of this process growing its scratch. */
#define DRIVER_SLACK ((uint64_t)64 << 20)

static int by_budget(const void *a, const void *b) {
    const struct budget_run *x = a, *y = b;
    return x->budget < y->budget ? -1 : x->budget > y->budget;
}

/*
 * --device-mem on the device: budgets keeping zero, one, half and all 8 layers
 * resident give the ids of the run without a budget; the device's peak stays
 * within the budget. The budgets come from the refusal of a far too small one
 * (the least that runs: every layer streamed) plus whole layers (a buffer's
 * bytes), read from its message as test_gpu_model.py read shoal run's. The
 * runs go in order of budget, smallest first, on a backend of their own: its
 * peak so far is then within a run's budget exactly when that run's is.
 */
static void cases_offload(struct ctx *c) {
    static const int prefetches[] = { 1, 2 };
    char names[2][64];
    int run[2], any = 0; /* --quick: prefetch 1 only */
    for (int i = 0; i < 2; i++) {
        snprintf(names[i], sizeof names[i], "offload/prefetch%d", prefetches[i]);
        any |= run[i] = want(c, names[i]) && !(c->quick && i);
    }
    if (!any) return;
    double t0 = shoal_now();
    struct model_file *mf;
    shoal_status rc = model_get(c, "offload-q8_0", &mf);
    if (rc == SHOAL_OK) rc = offload_backend(c);
    if (rc != SHOAL_OK) {
        for (int i = 0; i < 2; i++)
            if (run[i]) report_error(c, names[i], t0, "setting up", rc);
        return;
    }
    struct run_args a = synth_args(PROMPT);
    struct gen base;
    if ((rc = run_model(c, c->dev, mf, &a, 0, &base)) != SHOAL_OK) {
        for (int i = 0; i < 2; i++)
            if (run[i]) report_error(c, names[i], t0, "the run without a budget", rc);
        return;
    }
    regex_t re;
    if (regcomp(&re, "this rank needs ([0-9]+\\.[0-9]+ [A-Za-z]+) .* ([0-9]+) layer buffers? of "
                     "([0-9]+\\.[0-9]+ [A-Za-z]+)", REG_EXTENDED) != 0) {
        gen_free(&base);
        return;
    }
    struct budget_run runs[8];
    int n_runs = 0, n_layers = 0;
    char refusal[2][512] = { "", "" };
    for (int i = 0; i < 2; i++) {
        if (!run[i]) continue;
        /* the refusal of 64 KiB: what the least would be */
        a.budget = 64 << 10;
        a.prefetch = prefetches[i];
        shoal_backend_set_budget(c->off, a.budget);
        struct gen g;
        rc = run_model(c, c->off, mf, &a, 0, &g);
        gen_free(&g);
        const char *msg = shoal_last_error();
        regmatch_t m[4];
        if (rc == SHOAL_OK || regexec(&re, msg, 4, m, 0) != 0) {
            snprintf(refusal[i], sizeof refusal[i], "no refusal of 64 KiB saying what would do: %s: %s",
                     shoal_status_str(rc), msg);
            shoal_error_clear();
            continue;
        }
        const double low = parse_size(msg + m[1].rm_so, (size_t)(m[1].rm_eo - m[1].rm_so));
        const double layer = parse_size(msg + m[3].rm_so, (size_t)(m[3].rm_eo - m[3].rm_so));
        shoal_error_clear();
        n_layers = mf->def->layers;
        const int ks[4] = { 0, 1, 4, n_layers - (prefetches[i] + 1) };
        for (int k = 0; k < 4; k++)
            runs[n_runs++] = (struct budget_run){ .prefetch = prefetches[i], .k = ks[k],
                                                  .budget = (uint64_t)(low + ks[k] * layer + 0.005 * low) };
    }
    qsort(runs, (size_t)n_runs, sizeof *runs, by_budget);
    for (int r = 0; r < n_runs; r++) {
        struct budget_run *br = &runs[r];
        a.budget = br->budget;
        a.prefetch = br->prefetch;
        shoal_backend_set_budget(c->off, br->budget);
        struct gen g;
        rc = run_model(c, c->off, mf, &a, 1, &g);
        br->done = 1;
        if (rc != SHOAL_OK) {
            snprintf(br->why, sizeof br->why, "budget %" PRIu64 ": %s: %s", br->budget, shoal_status_str(rc),
                     shoal_last_error());
            shoal_error_clear();
            continue;
        }
        br->resident = g.n_resident;
        br->peak = g.peak;
        br->measured = g.measured;
        br->measured_known = g.measured_known;
        const int same = g.n_ids == base.n_ids && first_diff(g.ids, g.n_ids, base.ids, base.n_ids) == base.n_ids;
        const int within = (double)g.peak <= (double)br->budget * 1.0001;
        const int driver_ok = !g.measured_known || g.measured <= br->budget + DRIVER_SLACK;
        br->ok = same && within && driver_ok;
        if (!same)
            snprintf(br->why, sizeof br->why, "budget %" PRIu64 " (%d resident): ids differ from no budget at id %d",
                     br->budget, g.n_resident, first_diff(g.ids, g.n_ids, base.ids, base.n_ids));
        else if (!within)
            snprintf(br->why, sizeof br->why, "budget %" PRIu64 " (%d resident): the peak %" PRIu64 " is over it",
                     br->budget, g.n_resident, g.peak);
        else if (!driver_ok)
            snprintf(br->why, sizeof br->why, "budget %" PRIu64 " (%d resident): the driver saw %" PRIu64
                     " taken, more than the budget and %" PRIu64 " MiB of slack (counted peak %" PRIu64 ")",
                     br->budget, g.n_resident, g.measured, DRIVER_SLACK >> 20, g.peak);
        gen_free(&g);
    }
    shoal_backend_set_budget(c->off, 0);
    for (int i = 0; i < 2; i++) {
        if (!run[i]) continue;
        struct sbuf line = { 0 }, d = { 0 };
        int ok = !refusal[i][0], seen[64] = { 0 };
        if (!ok) sb_printf(&d, "    %s\n", refusal[i]);
        sb_printf(&line, "offload-q8_0 -p <40 words> --prefetch %d: resident layers seen", prefetches[i]);
        for (int r = 0; r < n_runs; r++) {
            const struct budget_run *br = &runs[r];
            if (br->prefetch != prefetches[i]) continue;
            if (!br->ok) {
                ok = 0;
                sb_printf(&d, "    %s\n", br->why);
                continue;
            }
            if (br->resident >= 0 && br->resident < 64) seen[br->resident] = 1;
            sb_printf(&line, " %d (budget %" PRIu64 ", peak %" PRIu64, br->resident, br->budget, br->peak);
            if (br->measured_known) sb_printf(&line, ", driver %" PRIu64, br->measured);
            sb_printf(&line, ")");
        }
        const int need[4] = { 0, 1, 4, n_layers };
        for (int k = 0; k < 4 && ok; k++) /* (runs that failed have said why) */
            if (!seen[need[k]]) {
                ok = 0;
                sb_printf(&d, "    no budget kept %d layers resident: want 0, 1, 4 and %d\n", need[k], n_layers);
            }
        sb_printf(&line, "; ids %s the run without a budget", ok ? "identical to" : "against");
        report(c, names[i], ok, t0, sb_str(&line), sb_str(&d));
        sb_free(&line);
        sb_free(&d);
    }
    regfree(&re);
    gen_free(&base);
}

/* ------------------------------------------------------------ main */

static int usage(const char *argv0, FILE *f) {
    fprintf(f,
            "usage: %s [cuda|cpu] [--gpu N] [--simd L] [--threads N] [--quick] [--slow] [--filter S]\n"
            "       [--perturb] [-v]\n"
            "Whole models on a backend (cuda: GPU N; cpu: the CPU backend at SIMD level L) against\n"
            "run.c's oracles (stories260K, from $SHOAL_TESTDATA or ../shared/testdata), against the\n"
            "CPU backend (synthetic models of every weight type, written into memory), and under\n"
            "device memory budgets (offload) against the run without one. One line per case.\n"
            "  --threads N threads of each CPU backend (default: one per core)\n"
            "  --quick     a subset (a few of every kind of case)\n"
            "  --slow      also the long context (~1,500 prompt ids)\n"
            "  --filter S  the cases whose name contains S\n"
            "  --perturb   the device side's results moved: every case must FAIL (checks the checks)\n"
            "Exit status: 0 passed, 1 failed, 2 bad arguments, 77 no CUDA device at all.\n",
            argv0);
    return f == stdout ? 0 : 2;
}

int main(int argc, char **argv) {
    struct ctx c = { .simd = SHOAL_SIMD_AUTO };
    const char *which = "cuda";
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "cuda") || !strcmp(argv[i], "cpu")) which = argv[i];
        else if (!strcmp(argv[i], "--quick")) c.quick = 1;
        else if (!strcmp(argv[i], "--slow")) c.slow = 1;
        else if (!strcmp(argv[i], "--perturb")) c.perturb = 1;
        else if (!strcmp(argv[i], "-v")) c.verbose = 1;
        else if (!strcmp(argv[i], "--gpu") && i + 1 < argc) c.gpu = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--threads") && i + 1 < argc) c.threads = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) c.filter = argv[++i];
        else if (!strcmp(argv[i], "--simd") && i + 1 < argc) {
            if ((c.simd = shoal_cpu_simd_from_name(argv[++i])) == -2) return usage(argv[0], stderr);
        } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) return usage(argv[0], stdout);
        else return usage(argv[0], stderr);
    }
    shoal_log_init(c.verbose ? SHOAL_LOG_INFO : SHOAL_LOG_WARN, 0, getenv("SHOAL_DEBUG"));
    c.on_gpu = !strcmp(which, "cuda");
    if (c.threads <= 0) c.threads = shoal_cpu_online_cores();
    c.testdata = getenv("SHOAL_TESTDATA");
    if (!c.testdata || !*c.testdata) c.testdata = "../shared/testdata";
    for (int i = 0; i < COUNT(MODELS); i++) c.models[i] = (struct model_file){ .def = &MODELS[i], .fd = -1 };
    c.stories.fd = -1;

    /* the backends, once */
    shoal_status rc;
    if (c.on_gpu) {
        const char *why = NULL;
        const int count = shoal_cuda_device_count(&why);
        if (count == 0) {
            printf("skipped: no CUDA device: %s\n", why ? why : "(no reason given)");
            return 77;
        }
        if (c.gpu < 0 || c.gpu >= count) {
            fprintf(stderr, "--gpu %d: this machine has %d CUDA device(s), 0..%d\n", c.gpu, count, count - 1);
            return 2;
        }
        /* a device is there: from here on, CUDA not starting is a failure, never a skip */
        rc = shoal_cuda_backend_create(&c.dev, &(struct shoal_cuda_params){ .device = c.gpu, .rank = 0 });
        if (rc != SHOAL_OK) {
            printf("FAILED: the driver counts %d CUDA device(s), but the backend cannot be made on GPU %d: "
                   "%s: %s\n", count, c.gpu, shoal_status_str(rc), shoal_last_error());
            return 1;
        }
        char name[128] = "?";
        size_t total = 0;
        if (shoal_cuda_device_info(c.gpu, name, sizeof name, &total, NULL) != SHOAL_OK) shoal_error_clear();
        snprintf(c.dev_name, sizeof c.dev_name, "cuda %d (%s, %.0f GiB)", c.gpu, name, (double)total / (1 << 30));
    } else {
        if (c.simd == SHOAL_SIMD_AUTO) c.simd = shoal_cpu_simd_best();
        rc = shoal_cpu_backend_create(&c.dev, &(struct shoal_cpu_params){ .n_threads = c.threads, .simd = c.simd,
                                                                           .spin = -1 });
        if (rc != SHOAL_OK) {
            fprintf(stderr, "--simd %s: %s\n", shoal_cpu_simd_name(c.simd), shoal_last_error());
            return 2;
        }
        snprintf(c.dev_name, sizeof c.dev_name, "cpu %s", shoal_cpu_simd_name(c.simd));
    }
    rc = shoal_cpu_backend_create(&c.ref, &(struct shoal_cpu_params){ .n_threads = c.threads,
                                                                       .simd = SHOAL_SIMD_AUTO, .spin = -1 });
    if (rc != SHOAL_OK) {
        printf("FAILED: the CPU reference backend: %s\n", shoal_last_error());
        shoal_backend_destroy(c.dev);
        return 1;
    }
    /* where the memfds' links are made: in memory when /dev/shm is there */
    const char *tmp = getenv("TMPDIR");
    snprintf(c.dir, sizeof c.dir, "%s/shoal-test-gpu-model-XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : tmp && *tmp ? tmp : "/tmp");
    if (!mkdtemp(c.dir)) {
        printf("FAILED: cannot make a directory %s: %s\n", c.dir, strerror(errno));
        shoal_backend_destroy(c.dev);
        shoal_backend_destroy(c.ref);
        return 1;
    }

    printf("test_gpu_model: %s against cpu %s (%d threads)%s%s%s\n", c.dev_name,
           shoal_cpu_simd_name(shoal_cpu_simd_best()), c.threads, c.quick ? ", quick" : "",
           c.slow ? ", with the slow cases" : "", c.perturb ? ", perturbed: every case must FAIL" : "");
    fflush(stdout);
    double t0 = shoal_now();
    cases_stories(&c);
    cases_batched(&c);
    cases_short(&c);
    cases_small_batches(&c);
    cases_kv_types(&c);
    if (c.slow) cases_long(&c);
    cases_offload(&c);
    const int passed = c.cases - c.failed - c.skipped;
    printf("test_gpu_model: %s: %d cases, %d passed, %d failed, %d skipped (%.1f s)\n", c.dev_name, c.cases,
           passed, c.failed, c.skipped, shoal_now() - t0);
    for (int i = 0; i < c.failed && i < COUNT(c.fails); i++) printf("  FAILED %s\n", c.fails[i]);
    if (c.failed > COUNT(c.fails)) printf("  ... and %d more\n", c.failed - COUNT(c.fails));

    for (int i = 0; i < COUNT(MODELS); i++) model_close(&c.models[i]);
    model_close(&c.stories);
    rmdir(c.dir);
    shoal_backend_destroy(c.off);
    shoal_backend_destroy(c.dev);
    shoal_backend_destroy(c.ref);
    return c.failed ? 1 : 0;
}
