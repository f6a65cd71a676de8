/*
 * test_backend_ops — every op of runtime/backend.h on a backend under test
 * against the reference, the CPU backend forced to its scalar kernels, on
 * the same seeded random inputs (ggml's test-backend-ops, for shoal). It
 * prints one line per case (op, type, shape, largest errors, PASS/FAIL) and
 * a summary.
 *
 *   test_backend_ops [cuda|cpu] [--device N] [--simd L] [--quick] [--filter OP] [--part K/N] [--perturb] [-v]
 *
 * cuda (the default) is the CUDA backend on device N; cpu is the CPU
 * backend at the best SIMD level this processor runs (or --simd avx2, ...),
 * which is what a machine without a GPU can check. --quick sweeps fewer
 * sizes; --filter runs the ops whose name contains OP; --perturb moves one
 * value of every case's output just past its tolerance, so that every case
 * must FAIL (a check of this program's comparisons); -v prints more of the
 * values that differ in a failing case (else the first), and the errors
 * that refused bad requests.
 *
 * All memory goes through the backend interface (alloc, upload, download:
 * a device buffer is never read on the host). Each case seeds its inputs
 * from its own name, so --filter reproduces a case's inputs exactly.
 * Tolerances are stated beside each op's case, with why.
 *
 * Exit status: 0 when every case passes, 1 when one fails, 77 when the
 * backend under test is not available here (the reason is printed): for
 * cuda, only when the driver reports no device at all (no driver, or none of
 * its devices); a device whose backend cannot be made (cuBLAS missing, a
 * driver too old for this CUDA runtime) fails. 2 for a bad argument. Speed
 * is not measured here (bench/ does that).
 */
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cpu/cpu.h"
#include "../../cuda/cuda.h"

struct ctx {
    struct shoal_backend *be[2]; /* [0] the backend under test, [1] the scalar CPU reference */
    int tc_batch;    /* [0] computes matmuls of more than 8 tokens in f16/bf16 (tensor cores) */
    int simd;        /* [0]'s SIMD level when it is the CPU backend, else -1 */
    int quick, perturb, verbose;
    signed char has[SHOAL_DTYPE_MAX]; /* whether [0] takes weights of a type: 0 not asked yet, 1, -1 */
    const char *filter;
    int part, parts;  /* --part K/N: the cases numbered K mod N (of those the filter leaves), K from 1 */
    long seen;        /* cases the filter left, so far */
    uint64_t rng;    /* splitmix64 state, seeded per case */
    /* the case running now */
    char op[16], type[16], shape[64];
    int perturbed;
    /* totals */
    int cases, failed;
    char fails[16][100];
};

/* differing values printed per failing case: the first, or with -v a few */
#define SHOWN(c) ((c)->verbose ? 4 : 1)

/* ------------------------------------------------------------ inputs */

static uint64_t next_u64(struct ctx *c) {
    uint64_t z = (c->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* Uniform in [-1, 1), 24 random bits. */
static float uni(struct ctx *c) { return (float)(next_u64(c) >> 40) * 0x1p-23f - 1.0f; }

static int below(struct ctx *c, int n) { return (int)(next_u64(c) % (uint64_t)n); }

static void fill(struct ctx *c, float *x, size_t n, float scale) {
    for (size_t i = 0; i < n; i++) x[i] = uni(c) * scale;
}

static int is_quant(int type) { return shoal_dtype_info(type)->block > 1; }

/* cols, or the next multiple of the type's block: a shape every type can take. */
static int fit(int type, int cols) {
    const int b = shoal_dtype_info(type)->block;
    return (cols + b - 1) / b * b;
}

/* An f16 of about mag: a factor 2^-1..2^1 either side, either sign. */
static uint16_t scale_near(struct ctx *c, double mag) {
    return shoal_f32_to_f16((float)(mag * exp2(uni(c)) * (uni(c) < 0 ? -1 : 1)));
}

/*
 * n blocks of a type shoal cannot quantize (the k-quants, Q5_0, Q5_1, IQ4_NL,
 * IQ4_XS): random bytes, every bit of the codes and packed scales among them,
 * then f16 scales drawn so that the weights are about U(-scale, scale) (the
 * largest code times the largest sub-block scale about scale): finite, never
 * inf or NaN.
 */
static void random_blocks(struct ctx *c, int type, uint8_t *p, int64_t n, double scale) {
    const int bb = shoal_dtype_info(type)->block_bytes;
    for (int64_t i = 0; i < n * bb; i++) p[i] = (uint8_t)next_u64(c);
    for (int64_t i = 0; i < n; i++, p += bb) {
        uint16_t *d = NULL, *m = NULL; /* where the block's f16 scale (and min scale) are */
        double dm = 0, mm = 0;
        switch (type) {
        case SHOAL_DTYPE_Q5_0: d = &((struct shoal_block_q5_0 *)p)->d, dm = 1.0 / 16; break;
        case SHOAL_DTYPE_Q5_1:
            d = &((struct shoal_block_q5_1 *)p)->d, m = &((struct shoal_block_q5_1 *)p)->m;
            dm = 1.0 / 16, mm = 1;
            break;
        case SHOAL_DTYPE_IQ4_NL: d = &((struct shoal_block_iq4_nl *)p)->d, dm = 1.0 / 127; break;
        case SHOAL_DTYPE_Q2_K:
            d = &((struct shoal_block_q2_k *)p)->d, m = &((struct shoal_block_q2_k *)p)->dmin;
            dm = 1.0 / 45, mm = 1.0 / 15;
            break;
        case SHOAL_DTYPE_Q3_K: d = &((struct shoal_block_q3_k *)p)->d, dm = 1.0 / 128; break;
        case SHOAL_DTYPE_Q4_K:
            d = &((struct shoal_block_q4_k *)p)->d, m = &((struct shoal_block_q4_k *)p)->dmin;
            dm = 1.0 / 945, mm = 1.0 / 63;
            break;
        case SHOAL_DTYPE_Q5_K:
            d = &((struct shoal_block_q5_k *)p)->d, m = &((struct shoal_block_q5_k *)p)->dmin;
            dm = 1.0 / 1953, mm = 1.0 / 63;
            break;
        case SHOAL_DTYPE_Q6_K: d = &((struct shoal_block_q6_k *)p)->d, dm = 1.0 / 4096; break;
        case SHOAL_DTYPE_IQ4_XS: d = &((struct shoal_block_iq4_xs *)p)->d, dm = 1.0 / 4064; break;
        }
        if (d) *d = scale_near(c, dm * scale);
        if (m) *m = scale_near(c, mm * scale);
    }
}

/* A weight of type, rows x cols, its values uniform in [-scale, scale) drawn row by row
 * (about that, in random blocks, for the types shoal cannot quantize): *out (the rows'
 * bytes, one spare; free it), or NULL on failure. */
static shoal_status random_weight(struct ctx *c, int type, int rows, int cols, float scale, uint8_t **out) {
    const size_t rb = shoal_dtype_row_bytes(type, cols);
    float *row = calloc((size_t)cols + 1, sizeof *row);
    uint8_t *q = calloc((size_t)rows * rb + 1, 1);
    shoal_status rc = row && q ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of host memory");
    if (rc == SHOAL_OK && !shoal_can_quantize(type))
        random_blocks(c, type, q, (int64_t)rows * (cols / shoal_dtype_info(type)->block), scale);
    for (int r = 0; r < rows && rc == SHOAL_OK && shoal_can_quantize(type); r++) {
        fill(c, row, cols, scale);
        rc = shoal_quantize_row(type, row, q + (size_t)r * rb, cols);
    }
    free(row);
    if (rc != SHOAL_OK) free(q), q = NULL;
    *out = q;
    return rc;
}

/*
 * Whether the backend under test takes weights of type: the CPU backend must
 * take every type in all_types; another (CUDA) may refuse a type it has no
 * kernels for yet, which is said once and its cases left out.
 */
static int computes(struct ctx *c, int type) {
    if (c->simd >= 0) return 1;
    if (!c->has[type]) {
        const int cols = shoal_dtype_info(type)->block;
        uint8_t *q = NULL;
        struct shoal_weight w = { 0 };
        shoal_status rc = random_weight(c, type, 1, cols, 1.0f, &q);
        if (rc == SHOAL_OK) rc = shoal_weight_prepare(c->be[0], &w, type, 1, cols, q, NULL);
        c->has[type] = rc == SHOAL_UNSUPPORTED ? -1 : 1; /* other failures: the cases say */
        if (rc == SHOAL_OK) shoal_weight_release(c->be[0], &w);
        if (rc == SHOAL_UNSUPPORTED) printf("%s: not checked: the backend refuses the type: %s\n",
                                            shoal_dtype_name(type), shoal_last_error());
        free(q);
        shoal_error_clear();
    }
    return c->has[type] > 0;
}

/* Host allocation inside a case: zeroed (one spare element, so never of 0
 * bytes), and a jump to its cleanup when it fails. */
#define HALLOC(p, count)                                                                       \
    SHOAL_TRY_GOTO(((p) = calloc((size_t)(count) + 1, sizeof *(p))) != NULL                    \
                       ? SHOAL_OK                                                              \
                       : shoal_errorf(SHOAL_NOMEM, "out of host memory"),                      \
                   rc, done)

/* ---------------------------------------------- buffers on both backends */

struct dev2 {
    void *p[2]; /* the same buffer on be[0] and be[1] */
};

/* Allocates bytes on both backends and uploads host there (when not NULL). */
static shoal_status dev2_put(struct ctx *c, struct dev2 *d, const void *host, size_t bytes) {
    for (int b = 0; b < 2; b++) {
        SHOAL_TRY(shoal_backend_alloc(c->be[b], bytes, &d->p[b]));
        if (host) SHOAL_TRY(shoal_backend_upload(c->be[b], d->p[b], host, bytes));
    }
    return SHOAL_OK;
}

/* Waits for both backends and downloads the buffer: got from be[0], want from be[1]. */
static shoal_status dev2_get(struct ctx *c, const struct dev2 *d, void *got, void *want,
                             size_t bytes) {
    void *dst[2] = { got, want };
    for (int b = 0; b < 2; b++) {
        SHOAL_TRY(shoal_backend_synchronize(c->be[b]));
        SHOAL_TRY(shoal_backend_download(c->be[b], dst[b], d->p[b], bytes));
    }
    return SHOAL_OK;
}

static void dev2_free(struct ctx *c, struct dev2 *d) {
    for (int b = 0; b < 2; b++) shoal_backend_free(c->be[b], d->p[b]);
    d->p[0] = d->p[1] = NULL;
}

/* ------------------------------------------------------------ comparing */

/* A value passes when |got - want| <= abs + rel * |want| + el[i], or is within ulps f32 ulps. */
struct tol {
    double abs, rel;
    const double *el; /* per-element allowance, or NULL */
    int ulps;         /* 0: not used */
};

struct stats {
    long n, bad;
    double max_abs, max_want, max_ulps, worst; /* worst: the largest error / allowance */
    int ulp_col;                                /* print max_ulps */
    int notes;
    char note[4][160]; /* what differed, printed under the case's line */
};

static void note(struct stats *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void note(struct stats *s, const char *fmt, ...) {
    if (s->notes >= (int)(sizeof s->note / sizeof *s->note)) return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(s->note[s->notes++], sizeof s->note[0], fmt, ap);
    va_end(ap);
}

/* f32 bits in an order where neighbours differ by one (+0 and -0 both 0). */
static int64_t f32_order(float f) {
    int32_t i;
    memcpy(&i, &f, sizeof i);
    return i >= 0 ? (int64_t)i : -(int64_t)(i & 0x7fffffff);
}

/* Moves got[n/2] to 1.5 allowances (and a few ulps) past want: --perturb. */
static void perturb(void *got, const void *want, int f64, size_t i, double allowed, int ulps) {
    if (f64) {
        double w = ((const double *)want)[i], v = w + 1.5 * allowed;
        ((double *)got)[i] = v == w ? nextafter(w, INFINITY) : v;
    } else {
        float w = ((const float *)want)[i], v = (float)(w + 1.5 * allowed);
        for (int k = 0; k <= ulps; k++) v = nextafterf(v, INFINITY);
        ((float *)got)[i] = v;
    }
}

/* Compares n values (f32, or f64 when f64) into s. */
static void compare(struct ctx *c, struct stats *s, void *got, const void *want, int f64, size_t n,
                    const struct tol *t) {
    /* ulps say how far apart exact or relative comparisons are; not absolute ones */
    if (!f64 && (t->ulps || t->rel > 0 || (t->abs == 0 && !t->el))) s->ulp_col = 1;
    for (size_t i = 0; i < n; i++) {
        double w = f64 ? ((const double *)want)[i] : ((const float *)want)[i];
        double allowed = t->abs + t->rel * fabs(w) + (t->el ? t->el[i] : 0);
        if (c->perturb && !c->perturbed && i == n / 2) {
            perturb(got, want, f64, i, allowed, t->ulps);
            c->perturbed = 1;
        }
        double g = f64 ? ((const double *)got)[i] : ((const float *)got)[i];
        double err = fabs(g - w), ulps = 0;
        if (!f64) ulps = fabs((double)(f32_order((float)g) - f32_order((float)w)));
        int ok = err <= allowed || (t->ulps && ulps <= t->ulps);
        double ratio = err == 0 ? 0 : allowed > 0 ? err / allowed : INFINITY;
        if (t->ulps && ulps / t->ulps < ratio) ratio = ulps / t->ulps;
        if (isnan(err)) err = ratio = INFINITY;
        s->n++;
        if (err > s->max_abs) s->max_abs = err;
        if (fabs(w) > s->max_want) s->max_want = fabs(w);
        if (ulps > s->max_ulps) s->max_ulps = ulps;
        if (ratio > s->worst) s->worst = ratio;
        if (!ok && s->bad++ < SHOWN(c))
            note(s, "[%zu] got %.9g want %.9g: error %.3g, allowed %.3g%s", i, g, w, err, allowed,
                 t->ulps ? " (or the ulps)" : "");
    }
}

/* Starts a case; 0 when --filter leaves it out. Seeds the inputs from the name. */
static int begin(struct ctx *c, const char *op, const char *type, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int begin(struct ctx *c, const char *op, const char *type, const char *fmt, ...) {
    if (c->filter && !strstr(op, c->filter)) return 0;
    if (c->parts > 1 && c->seen++ % c->parts != c->part - 1) return 0;
    snprintf(c->op, sizeof c->op, "%s", op);
    snprintf(c->type, sizeof c->type, "%s", type);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->shape, sizeof c->shape, fmt, ap);
    va_end(ap);
    uint64_t h = 0xcbf29ce484222325ull; /* FNV-1a of op/type/shape */
    for (const char *s[3] = { c->op, c->type, c->shape }, **p = s; p < s + 3; p++)
        for (const char *q = *p; *q; q++) h = (h ^ (uint8_t)*q) * 0x100000001b3ull;
    c->rng = h;
    c->perturbed = 0;
    shoal_error_clear();
    return 1;
}

static void count(struct ctx *c, int pass) {
    c->cases++;
    if (pass) return;
    if (c->failed < (int)(sizeof c->fails / sizeof *c->fails))
        snprintf(c->fails[c->failed], sizeof c->fails[0], "%s %s %s", c->op, c->type, c->shape);
    c->failed++;
}

/* Prints the case's line: PASS when nothing was outside its tolerance. */
static void finish(struct ctx *c, const struct stats *s) {
    char ulp[24] = "-";
    if (s->ulp_col) snprintf(ulp, sizeof ulp, "%.0f", s->max_ulps);
    double rel = s->max_want > 0 ? s->max_abs / s->max_want : s->max_abs;
    printf("%-10s %-5s %-30s abs %8.2e  rel %8.2e  ulp %5s  err/tol %7.3f  %s\n", c->op, c->type,
           c->shape, s->max_abs, rel, ulp, s->worst, s->bad ? "FAIL" : "PASS");
    if (s->bad) printf("    %ld of %ld values outside the tolerance\n", s->bad, s->n);
    for (int i = 0; i < s->notes; i++) printf("    %s\n", s->note[i]);
    count(c, s->bad == 0);
}

/* A case whose ops did not run: a failure, with the backend's message. */
static void failed_to_run(struct ctx *c, shoal_status rc) {
    printf("%-10s %-5s %-30s ERROR %s: %s  FAIL\n", c->op, c->type, c->shape,
           shoal_status_str(rc), shoal_last_error());
    count(c, 0);
}

/* -------------------------------------------------------------- matmul */

enum mm_kind { MM, MM_N, MM_F64 };

/*
 * el[t * rows + r] = rel * sum_j |w_rj x_tj| + abs, from the dequantized
 * weights and the f32 activations, plus with qx half a step of the
 * reference's 8-bit activations times the block's |w|: sum_b amax_b / 254 *
 * sum_{j in b} |w_rj| (the reference multiplies quantized weights by x
 * rounded per block of 32, or per super-block of 256 for the types of
 * 256-value blocks (the Q8_K form); a backend that uses x in f16 differs by that).
 */
static shoal_status mm_bound(int type, const uint8_t *wq, int rows, int cols, const float *x,
                             int n, double rel, double abs, int qx, double *el) {
    const size_t rb = shoal_dtype_row_bytes(type, cols);
    const int qb = shoal_dtype_info(type)->block == 256 ? 256 : SHOAL_QK; /* the activations' block */
    const int nb = cols / qb;
    float *w = malloc(sizeof(float) * (size_t)cols), *xa = malloc(sizeof(float) * (size_t)n * cols);
    float *amax = calloc((size_t)n * (nb ? nb : 1), sizeof(float));
    shoal_status rc = w && xa && amax ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of host memory");
    for (size_t i = 0; rc == SHOAL_OK && i < (size_t)n * cols; i++) xa[i] = fabsf(x[i]);
    for (int t = 0; rc == SHOAL_OK && qx && t < n; t++)
        for (int j = 0; j < nb * qb; j++)
            amax[t * nb + j / qb] = fmaxf(amax[t * nb + j / qb], xa[(size_t)t * cols + j]);
    for (int r = 0; rc == SHOAL_OK && r < rows; r++) {
        rc = shoal_dequantize_row(type, wq + (size_t)r * rb, w, cols);
        for (int j = 0; j < cols; j++) w[j] = fabsf(w[j]);
        for (int t = 0; rc == SHOAL_OK && t < n; t++) {
            const float *xt = xa + (size_t)t * cols;
            float part[8] = { 0 }; /* all terms positive: f32 partial sums lose nothing that matters */
            int j = 0;
            for (; j + 8 <= cols; j += 8)
                for (int k = 0; k < 8; k++) part[k] += w[j + k] * xt[j + k];
            for (; j < cols; j++) part[0] += w[j] * xt[j];
            double mag = 0, q = 0;
            for (int k = 0; k < 8; k++) mag += part[k];
            for (int b = 0; qx && b < nb; b++) {
                double ws = 0;
                for (int e = b * qb; e < (b + 1) * qb; e++) ws += w[e];
                q += amax[t * nb + b] / 254.0 * ws;
            }
            el[(size_t)t * rows + r] = rel * mag + abs + q;
        }
    }
    free(w), free(xa), free(amax);
    return rc;
}

/*
 * matmul (k = 1), matmul_n (k weights of types type[i], rows[i]) or
 * matmul_f64, n tokens of cols values. Activations ~U(-1, 1) with an
 * outlier of +-50 per token (two for wider rows), weights ~U(-1, 1).
 *
 * Tolerances, per value, relative to S = sum_j |w_j x_j|:
 *  - f32 results: 1e-4 S + 1e-6 (the orders of f32 sums differ). A backend
 *    that computes more than 8 tokens in f16 on tensor cores (cuda: x
 *    rounded to f16, or bf16 for BF16 weights, quantized weights widened to
 *    f16; F32 weights stay f32) gets 2e-3 S (1e-2 S for BF16), and for
 *    quantized weights half a step of the reference's 8-bit activations
 *    (see mm_bound).
 *  - matmul_f64: both sides sum products exact in f64, so only the order of
 *    an f64 sum differs: 1e-12 S, for every n.
 */
static void mm_case(struct ctx *c, int kind, int k, const int *type, const int *rows, int cols,
                    int n) {
    static const char *const ops[] = { "matmul", "matmul_n", "matmul_f64" };
    char shape[64] = "";
    if (k > 1) snprintf(shape, sizeof shape, "k=%d ", k);
    for (int i = 0; i < k; i++)
        snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "%d%s", rows[i], i + 1 < k ? "," : "");
    snprintf(shape + strlen(shape), sizeof shape - strlen(shape), "x%d n=%d%s%s", cols, n,
             k > 1 && type[1] != type[0] ? " +" : "", k > 1 && type[1] != type[0] ? shoal_dtype_name(type[1]) : "");
    if (!begin(c, ops[kind], shoal_dtype_name(type[0]), "%s", shape)) return;
    shoal_status rc = SHOAL_OK;
    const size_t osz = kind == MM_F64 ? sizeof(double) : sizeof(float);
    float *x = NULL;
    uint8_t *wq[SHOAL_MATMUL_MAX] = { 0 };
    char *got[SHOAL_MATMUL_MAX] = { 0 }, *want[SHOAL_MATMUL_MAX] = { 0 };
    double *el = NULL;
    struct shoal_weight w[2][SHOAL_MATMUL_MAX];
    memset(w, 0, sizeof w);
    struct dev2 dx = { { 0 } }, dy[SHOAL_MATMUL_MAX] = { { { 0 } } };
    struct stats st = { 0 };
    int max_rows = 0;

    HALLOC(x, (size_t)n * cols);
    fill(c, x, (size_t)n * cols, 1.0f);
    for (int t = 0; t < n; t++)
        for (int o = 0; o < 1 + (cols >= 256); o++)
            x[(size_t)t * cols + below(c, cols)] = uni(c) < 0 ? -50.0f : 50.0f;
    SHOAL_TRY_GOTO(dev2_put(c, &dx, x, sizeof(float) * (size_t)n * cols), rc, done);
    for (int i = 0; i < k; i++) {
        SHOAL_TRY_GOTO(random_weight(c, type[i], rows[i], cols, 1.0f, &wq[i]), rc, done);
        for (int b = 0; b < 2; b++)
            SHOAL_TRY_GOTO(shoal_weight_prepare(c->be[b], &w[b][i], type[i], rows[i], cols, wq[i],
                                                NULL), rc, done);
        SHOAL_TRY_GOTO(dev2_put(c, &dy[i], NULL, osz * (size_t)n * rows[i]), rc, done);
        HALLOC(got[i], osz * (size_t)n * rows[i]);
        HALLOC(want[i], osz * (size_t)n * rows[i]);
        if (rows[i] > max_rows) max_rows = rows[i];
    }
    for (int b = 0; b < 2; b++) {
        if (kind == MM_F64) {
            SHOAL_TRY_GOTO(shoal_op_matmul_f64(c->be[b], dy[0].p[b], &w[b][0], dx.p[b], n), rc, done);
        } else if (kind == MM) {
            SHOAL_TRY_GOTO(shoal_op_matmul(c->be[b], dy[0].p[b], &w[b][0], dx.p[b], n), rc, done);
        } else {
            float *ys[SHOAL_MATMUL_MAX];
            const struct shoal_weight *ws[SHOAL_MATMUL_MAX];
            for (int i = 0; i < k; i++) ys[i] = dy[i].p[b], ws[i] = &w[b][i];
            SHOAL_TRY_GOTO(shoal_op_matmul_n(c->be[b], k, ys, ws, dx.p[b], n), rc, done);
        }
    }
    HALLOC(el, (size_t)n * max_rows);
    for (int i = 0; i < k; i++) {
        SHOAL_TRY_GOTO(dev2_get(c, &dy[i], got[i], want[i], osz * (size_t)n * rows[i]), rc, done);
        double rel = 1e-4, abs = 1e-6;
        int qx = 0;
        if (kind == MM_F64) {
            rel = 1e-12, abs = 0;
        } else if (c->tc_batch && n > 8 && type[i] != SHOAL_DTYPE_F32) {
            rel = type[i] == SHOAL_DTYPE_BF16 ? 1e-2 : 2e-3;
            qx = is_quant(type[i]);
        }
        SHOAL_TRY_GOTO(mm_bound(type[i], wq[i], rows[i], cols, x, n, rel, abs, qx, el), rc, done);
        compare(c, &st, got[i], want[i], kind == MM_F64, (size_t)n * rows[i],
                &(struct tol){ .el = el });
    }
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    for (int i = 0; i < k; i++) {
        for (int b = 0; b < 2; b++)
            if (w[b][i].data || w[b][i].owned) shoal_weight_release(c->be[b], &w[b][i]);
        dev2_free(c, &dy[i]);
        free(wq[i]), free(got[i]), free(want[i]);
    }
    dev2_free(c, &dx);
    free(x), free(el);
}

static const int all_types[] = { SHOAL_DTYPE_F32,  SHOAL_DTYPE_F16,  SHOAL_DTYPE_BF16,   SHOAL_DTYPE_Q8_0,
                                 SHOAL_DTYPE_Q4_0, SHOAL_DTYPE_Q4_1, SHOAL_DTYPE_Q5_0,   SHOAL_DTYPE_Q5_1,
                                 SHOAL_DTYPE_IQ4_NL, SHOAL_DTYPE_Q2_K, SHOAL_DTYPE_Q3_K, SHOAL_DTYPE_Q4_K,
                                 SHOAL_DTYPE_Q5_K, SHOAL_DTYPE_Q6_K, SHOAL_DTYPE_IQ4_XS };
#define COUNT(a) (int)(sizeof(a) / sizeof *(a))

/*
 * Every type over rows x cols x tokens, less the shapes whose work passes a
 * budget (the scalar reference is the slow side); one token always runs.
 * Small n goes through a GPU's decode kernels, n > 8 through its tile kernels (f64: cuBLAS).
 */
static void sweep_matmul(struct ctx *c) {
    static const int rows_full[] = { 1, 7, 64, 257, 1000 }, rows_quick[] = { 1, 7, 257 };
    static const int cols_full[] = { 8, 40, 32, 96, 256, 1024, 4096 };
    static const int cols_quick[] = { 8, 40, 96, 1024, 4096 };
    static const int n_full[] = { 1, 2, 3, 5, 8, 9, 16, 64, 130 }, n_quick[] = { 1, 2, 3, 8, 9, 64 };
    const int *rows = c->quick ? rows_quick : rows_full, *cols = c->quick ? cols_quick : cols_full;
    const int *ns = c->quick ? n_quick : n_full;
    const int nr = c->quick ? COUNT(rows_quick) : COUNT(rows_full);
    const int nc = c->quick ? COUNT(cols_quick) : COUNT(cols_full);
    const int nn = c->quick ? COUNT(n_quick) : COUNT(n_full);
    const long budget = c->quick ? 1L << 22 : 1L << 25;
    for (int ti = 0; ti < COUNT(all_types); ti++)
        for (int ri = 0; ri < nr; ri++)
            for (int ci = 0; ci < nc; ci++)
                for (int ni = 0; ni < nn; ni++) {
                    int type = all_types[ti];
                    if (!shoal_dtype_row_bytes(type, cols[ci])) continue; /* 8, 40: float types only */
                    if (!computes(c, type)) continue;
                    if (ns[ni] > 1 && (long)rows[ri] * cols[ci] * ns[ni] > budget) continue;
                    mm_case(c, MM, 1, &type, &rows[ri], cols[ci], ns[ni]);
                }
}

/* matmul_f64 for every n on a few shapes; matmul_n with 2 weights, and 3 of mixed types. */
static void sweep_matmul_more(struct ctx *c) {
    static const int f64_shapes[][2] = { { 1, 96 }, { 7, 40 }, { 64, 256 }, { 257, 1024 }, { 33, 4096 } };
    static const int n_full[] = { 1, 2, 3, 5, 8, 9, 16, 64, 130 }, n_quick[] = { 1, 3, 9, 64 };
    const int *ns = c->quick ? n_quick : n_full;
    const int nn = c->quick ? COUNT(n_quick) : COUNT(n_full);
    const long budget = c->quick ? 1L << 21 : 1L << 25;
    for (int ti = 0; ti < COUNT(all_types); ti++)
        for (int si = 0; si < COUNT(f64_shapes); si++)
            for (int ni = 0; ni < nn; ni++) {
                int type = all_types[ti], rows = f64_shapes[si][0], cols = f64_shapes[si][1];
                if (!shoal_dtype_row_bytes(type, cols) || !computes(c, type)) continue;
                if (ns[ni] > 1 && (long)rows * cols * ns[ni] > budget) continue;
                mm_case(c, MM_F64, 1, &type, &rows, cols, ns[ni]);
            }
    static const int n_shapes[][3] = { /* rows, cols, tokens */
        { 257, 1024, 3 }, { 7, 96, 9 }, { 64, 256, 1 }, { 64, 256, 64 }, { 1000, 256, 2 },
    };
    const int ns_n = c->quick ? 2 : COUNT(n_shapes);
    for (int ti = 0; ti < COUNT(all_types); ti++)
        for (int si = 0; si < ns_n; si++)
            for (int k = 2; k <= 3; k++) {
                int t = all_types[ti], mix = t == SHOAL_DTYPE_Q8_0 ? SHOAL_DTYPE_Q4_0 : SHOAL_DTYPE_Q8_0;
                int types[3] = { t, k == 3 ? mix : t, t };
                if (!shoal_dtype_row_bytes(t, n_shapes[si][1]) || !computes(c, t)) continue;
                int rows[3] = { n_shapes[si][0], n_shapes[si][0] / 2 + 1, 7 };
                mm_case(c, MM_N, k, types, rows, n_shapes[si][1], n_shapes[si][2]);
            }
}

/* --------------------------------------------------------------- embed */

/*
 * embed: the rows of a table of every type for ids including 0 and
 * n_vocab - 1. Exact: dequantizing is exact in f32. An id outside the table
 * (n_vocab, then -1) must be an error from the op, and the backend must work
 * on afterwards.
 */
/* lookup: the table under test made by shoal_weight_lookup (in place where memory is the host's) */
static void embed_case(struct ctx *c, int type, int vocab, int cols, int n, int lookup) {
    if (!begin(c, "embed", shoal_dtype_name(type), "%dx%d n=%d%s", vocab, cols, n, lookup ? " lookup" : ""))
        return;
    shoal_status rc = SHOAL_OK;
    float *got = NULL, *want = NULL;
    uint8_t *tab = NULL;
    int32_t *ids = NULL, *pos = NULL, *zero = NULL;
    struct shoal_weight w[2];
    memset(w, 0, sizeof w);
    struct dev2 dy = { { 0 } };
    struct stats st = { 0 };

    HALLOC(ids, n);
    HALLOC(pos, n);
    HALLOC(zero, n);
    HALLOC(got, (size_t)n * cols);
    HALLOC(want, (size_t)n * cols);
    SHOAL_TRY_GOTO(random_weight(c, type, vocab, cols, 2.0f, &tab), rc, done);
    for (int t = 0; t < n; t++) {
        ids[t] = t == 0 ? 0 : t == 1 ? vocab - 1 : below(c, vocab);
        pos[t] = t;
    }
    int32_t table0 = 0;
    struct shoal_batch batch = { .n_tokens = n, .token = ids, .pos = pos, .seq = zero,
                                 .slot = pos, .block_table = &table0, .n_seq = 1,
                                 .max_blocks = 1, .block_size = 1 << 30 };
    for (int b = 0; b < 2; b++)
        SHOAL_TRY_GOTO(b == 0 && lookup ? shoal_weight_lookup(c->be[b], &w[b], type, vocab, cols, tab, NULL)
                                        : shoal_weight_prepare(c->be[b], &w[b], type, vocab, cols, tab, NULL),
                       rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dy, NULL, sizeof(float) * (size_t)n * cols), rc, done);
    for (int b = 0; b < 2; b++) SHOAL_TRY_GOTO(shoal_op_embed(c->be[b], dy.p[b], &w[b], &batch), rc, done);
    SHOAL_TRY_GOTO(dev2_get(c, &dy, got, want, sizeof(float) * (size_t)n * cols), rc, done);
    compare(c, &st, got, want, 0, (size_t)n * cols, &(struct tol){ 0 });
    /* the ids outside the table, in the middle of the batch */
    for (int bad = 0; bad < 2; bad++) {
        ids[n / 2] = bad ? -1 : vocab;
        shoal_status e = shoal_op_embed(c->be[0], dy.p[0], &w[0], &batch);
        if (e == SHOAL_OK) {
            note(&st, "token id %d outside 0..%d was accepted", ids[n / 2], vocab - 1);
            st.bad++;
        } else if (c->verbose) {
            note(&st, "token id %d: %s: %s (as it should)", ids[n / 2], shoal_status_str(e),
                 shoal_last_error());
        }
        shoal_error_clear();
    }
    if ((rc = shoal_backend_synchronize(c->be[0])) != SHOAL_OK) {
        note(&st, "the backend failed after refusing a bad id: %s", shoal_last_error());
        st.bad++, rc = SHOAL_OK;
    }
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    for (int b = 0; b < 2; b++)
        if (w[b].data || w[b].owned) shoal_weight_release(c->be[b], &w[b]);
    dev2_free(c, &dy);
    free(tab), free(ids), free(pos), free(zero), free(got), free(want);
}

static void sweep_embed(struct ctx *c) {
    for (int ti = 0; ti < COUNT(all_types); ti++) {
        int type = all_types[ti], narrow = is_quant(type) ? fit(type, 96) : 40;
        if (!computes(c, type)) continue;
        embed_case(c, type, 1000, 256, 7, 0);
        embed_case(c, type, 1000, 256, 7, 1);
        embed_case(c, type, 257, narrow, 1, 0);
        if (!c->quick) embed_case(c, type, 5003, 2048, 33, 0);
    }
}

/* ------------------------------------------------------------- rmsnorm */

/* rmsnorm of n tokens of dim values, into y or in place: 1e-6 relative (a few ulps). */
static void rmsnorm_case(struct ctx *c, int dim, int n, int inplace) {
    if (!begin(c, "rmsnorm", "f32", "%dx%d%s", n, dim, inplace ? " in place" : "")) return;
    shoal_status rc = SHOAL_OK;
    const size_t bytes = sizeof(float) * (size_t)n * dim;
    float *x = NULL, *wt = NULL, *got = NULL, *want = NULL;
    struct dev2 dx = { { 0 } }, dw = { { 0 } }, dy = { { 0 } };
    struct stats st = { 0 };
    HALLOC(x, (size_t)n * dim);
    HALLOC(wt, dim);
    HALLOC(got, (size_t)n * dim);
    HALLOC(want, (size_t)n * dim);
    fill(c, x, (size_t)n * dim, 3.0f);
    fill(c, wt, dim, 1.0f);
    SHOAL_TRY_GOTO(dev2_put(c, &dx, x, bytes), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dw, wt, sizeof(float) * (size_t)dim), rc, done);
    if (!inplace) SHOAL_TRY_GOTO(dev2_put(c, &dy, NULL, bytes), rc, done);
    const struct dev2 *out = inplace ? &dx : &dy;
    for (int b = 0; b < 2; b++)
        SHOAL_TRY_GOTO(shoal_op_rmsnorm(c->be[b], out->p[b], dx.p[b], dw.p[b], n, dim, 1e-5f), rc, done);
    SHOAL_TRY_GOTO(dev2_get(c, out, got, want, bytes), rc, done);
    compare(c, &st, got, want, 0, (size_t)n * dim, &(struct tol){ .abs = 1e-30, .rel = 1e-6 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dx), dev2_free(c, &dw), dev2_free(c, &dy);
    free(x), free(wt), free(got), free(want);
}

static void sweep_rmsnorm(struct ctx *c) {
    static const int dims[] = { 1, 64, 576, 4096, 5120 }, ns[] = { 1, 2, 7, 33 };
    for (int di = 0; di < COUNT(dims); di++)
        for (int ni = 0; ni < COUNT(ns); ni++) {
            if (c->quick && ni % 3) continue; /* 1 and 33 */
            rmsnorm_case(c, dims[di], ns[ni], 0);
            if (ni >= 2) rmsnorm_case(c, dims[di], ns[ni], 1);
        }
}

/* ---------------------------------------------------------------- rope */

/* x rotated as rope r does at positions pos, in double: the test's own, since both
 * backends under comparison may share the CPU's angle tables */
static void rope_ref(const float *x, float *y, int n, const int32_t *pos, int n_heads, int head_dim,
                     const struct shoal_rope *r) {
    const int half = r->rope_dim / 2;
    memcpy(y, x, sizeof(float) * (size_t)n * n_heads * head_dim);
    for (int t = 0; t < n; t++)
        for (int h = 0; h < n_heads; h++) {
            const float *v = x + ((size_t)t * n_heads + h) * head_dim;
            float *o = y + ((size_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                double th = (double)pos[t] * r->freq_scale * pow((double)r->freq_base, -2.0 * i / r->rope_dim);
                if (r->freq_factors) th /= r->freq_factors[i];
                const int a = r->mode == SHOAL_ROPE_NEOX ? i : 2 * i, b = r->mode == SHOAL_ROPE_NEOX ? i + half : 2 * i + 1;
                o[a] = (float)(v[a] * cos(th) - v[b] * sin(th));
                o[b] = (float)(v[a] * sin(th) + v[b] * cos(th));
            }
        }
}

/*
 * rope on n_heads heads of head_dim at positions from 0 to 99999, against
 * rope_ref. 1e-5 absolute on values ~1, 1e-4 past position 10000: at such
 * positions the angle itself must be formed in double (the reference
 * does), since one f32 rounding of 1e5 rad is already 4e-3.
 */
static void rope_case(struct ctx *c, int mode, int head_dim, int rope_dim, int ff, float scale, int refill) {
    static const int32_t positions[] = { 0, 1, 17, 511, 4096, 9999, 10001, 65537, 99999 };
    const int n = COUNT(positions), n_heads = 3;
    if (!begin(c, "rope", mode == SHOAL_ROPE_NEOX ? "neox" : "norm", "hd %d rd %d%s scale %g%s",
               head_dim, rope_dim, ff ? " ff" : "", scale, refill ? " refilled" : ""))
        return;
    shoal_status rc = SHOAL_OK;
    const size_t count = (size_t)n * n_heads * head_dim;
    float *x = NULL, *got = NULL, *want = NULL, *factors = NULL;
    double *el = NULL;
    int32_t zero[COUNT(positions)] = { 0 }, table0 = 0;
    struct dev2 dx = { { 0 } };
    struct stats st = { 0 };
    HALLOC(x, count);
    HALLOC(got, count);
    HALLOC(want, count);
    HALLOC(el, count);
    HALLOC(factors, rope_dim / 2);
    fill(c, x, count, 1.0f);
    for (int i = 0; i < rope_dim / 2; i++) factors[i] = 1.0f + 3.5f * (uni(c) + 1.0f); /* 1..8 */
    for (size_t i = 0; i < count; i++) el[i] = positions[i / (n_heads * head_dim)] > 10000 ? 1e-4 : 1e-5;
    struct shoal_rope rope = { .mode = mode, .rope_dim = rope_dim,
                               .freq_base = mode == SHOAL_ROPE_NEOX ? 1e6f : 1e4f,
                               .freq_scale = scale, .freq_factors = ff ? factors : NULL };
    struct shoal_batch batch = { .n_tokens = n, .token = zero, .pos = positions, .seq = zero,
                                 .slot = zero, .block_table = &table0, .n_seq = 1,
                                 .max_blocks = 1, .block_size = 1 << 30 };
    for (int round = 0; round <= refill; round++) {
        /* refill: the same factors array again with other values in it (a freed array's
         * address reused, or the caller rewriting it): a backend that keeps its table by
         * the array's address rotates by the old values and fails the second round */
        if (round) for (int i = 0; i < rope_dim / 2; i++) factors[i] = 1.0f + 0.25f * (float)i;
        SHOAL_TRY_GOTO(dev2_put(c, &dx, x, sizeof(float) * count), rc, done);
        /* in two calls: the near positions (which a backend may keep tables for) and the far */
        const int near = 7;
        struct shoal_batch far = batch;
        batch.n_tokens = near, far.n_tokens = n - near, far.pos = positions + near;
        for (int b = 0; b < 2; b++) {
            SHOAL_TRY_GOTO(shoal_op_rope(c->be[b], dx.p[b], n_heads, head_dim, &rope, &batch), rc, done);
            SHOAL_TRY_GOTO(shoal_op_rope(c->be[b], (float *)dx.p[b] + (size_t)near * n_heads * head_dim, n_heads,
                                         head_dim, &rope, &far), rc, done);
        }
        batch.n_tokens = n;
        SHOAL_TRY_GOTO(dev2_get(c, &dx, got, want, sizeof(float) * count), rc, done);
        compare(c, &st, got, want, 0, count, &(struct tol){ .el = el });
        rope_ref(x, want, n, positions, n_heads, head_dim, &rope);
        compare(c, &st, got, want, 0, count, &(struct tol){ .el = el });
        dev2_free(c, &dx);
    }
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dx);
    free(x), free(got), free(want), free(el), free(factors);
}

static void sweep_rope(struct ctx *c) {
    rope_case(c, SHOAL_ROPE_NORM, 64, 64, 1, 1.0f, 1);
    static const int dims[][2] = { { 128, 128 }, { 80, 32 }, { 64, 64 } }; /* head_dim, rope_dim */
    for (int mode = 0; mode <= 2; mode += 2)
        for (int di = 0; di < COUNT(dims) - c->quick; di++)
            for (int ff = 0; ff <= 1; ff++)
                for (int s = 0; s <= 1; s++)
                    rope_case(c, mode, dims[di][0], dims[di][1], ff, s ? 0.25f : 1.0f, 0);
}

/* ---------------------------------------------------------------- KV cache */

static const char *const kv_names[] = { "f32", "f16", "q8" };

/* Fills a batch of n tokens: sequence seq[t], position pos[t], its slot in the block table. */
static void place(const int32_t *table, int max_blocks, int block_size, int n, const int32_t *seq,
                  const int32_t *pos, int32_t *slot) {
    for (int t = 0; t < n; t++)
        slot[t] = table[seq[t] * max_blocks + pos[t] / block_size] * block_size + pos[t] % block_size;
}

/*
 * Compares two caches of n_slots rows: f32 and f16 bit for bit (as values,
 * so +0 and -0 agree); q8 per head, its f32 scale within 1 ulp and each
 * int8 within 1 (x / scale may round the other way at a tie).
 */
static void compare_cache(struct ctx *c, struct stats *s, char *got, const char *want,
                          const struct shoal_kv_desc *d) {
    const size_t heads = (size_t)d->n_slots * d->n_kv_heads, hd = (size_t)d->head_dim;
    if (d->type == SHOAL_KV_F32) {
        compare(c, s, got, want, 0, heads * hd, &(struct tol){ 0 });
        return;
    }
    if (d->type == SHOAL_KV_F16) {
        float *g = malloc(sizeof(float) * heads * hd), *w = malloc(sizeof(float) * heads * hd);
        if (g && w) {
            for (size_t i = 0; i < heads * hd; i++) {
                uint16_t a, b;
                memcpy(&a, got + 2 * i, 2), memcpy(&b, want + 2 * i, 2);
                g[i] = shoal_f16_to_f32(a), w[i] = shoal_f16_to_f32(b);
            }
            compare(c, s, g, w, 0, heads * hd, &(struct tol){ 0 });
        } else {
            s->bad++;
            note(s, "out of host memory comparing the cache");
        }
        free(g), free(w);
        return;
    }
    if (c->perturb && !c->perturbed) {
        got[d->head_bytes * (heads / 2) + 4] += 2;
        c->perturbed = 1;
    }
    s->ulp_col = 1;
    for (size_t h = 0; h < heads; h++) {
        const char *gh = got + h * d->head_bytes, *wh = want + h * d->head_bytes;
        float gs, ws;
        memcpy(&gs, gh, 4), memcpy(&ws, wh, 4);
        double ulps = fabs((double)(f32_order(gs) - f32_order(ws))), worst = ulps;
        for (size_t i = 0; i < hd; i++) {
            double diff = fabs((double)((const int8_t *)gh)[4 + i] - ((const int8_t *)wh)[4 + i]);
            if (diff > s->max_abs) s->max_abs = diff;
            if (diff > worst) worst = diff;
        }
        s->n += hd + 1;
        s->max_want = 127;
        if (ulps > s->max_ulps) s->max_ulps = ulps;
        if (worst > s->worst) s->worst = worst;
        if (worst > 1 && s->bad++ < SHOWN(c))
            note(s, "head %zu (slot %zu): scale %.9g vs %.9g, int8s up to %.0f apart", h,
                 h / d->n_kv_heads, gs, ws, worst);
    }
}

/* kv_store of n tokens at scattered slots (the first and last among them) into zeroed caches. */
static void kv_store_case(struct ctx *c, int kv, int n_kv, int head_dim, int n) {
    const int n_slots = 50;
    if (!begin(c, "kv_store", kv_names[kv], "%dx%d n=%d", n_kv, head_dim, n)) return;
    shoal_status rc = SHOAL_OK;
    struct shoal_kv_desc d;
    shoal_kv_desc_init(&d, kv, n_kv, head_dim, n_slots);
    const size_t kvd = (size_t)n_kv * head_dim, cache = d.row_bytes * n_slots;
    float *k = NULL, *v = NULL;
    char *got = NULL, *want = NULL;
    int32_t *slot = NULL, *zero = NULL, *perm = NULL, table0 = 0;
    struct dev2 dk = { { 0 } }, dv = { { 0 } }, kc = { { 0 } }, vc = { { 0 } };
    struct stats st = { 0 };
    HALLOC(k, n * kvd);
    HALLOC(v, n * kvd);
    HALLOC(got, cache);
    HALLOC(want, cache);
    HALLOC(slot, n);
    HALLOC(zero, n);
    fill(c, k, n * kvd, 1.0f);
    fill(c, v, n * kvd, 4.0f);
    /* f16's edges: a value it cannot hold but in a subnormal, one it rounds at a tie, a large one */
    k[0] = 3e-6f, k[n * kvd - 1] = 1000.0f, v[kvd / 2] = 1.0f + 0x1p-11f, v[0] = 0.0f;
    /* distinct slots, the first and the last of the cache among them: a shuffle of
     * 1..n_slots-2, then 0 and n_slots - 1 in front */
    HALLOC(perm, n_slots);
    for (int i = 0; i < n_slots - 2; i++) perm[i] = i + 1;
    for (int i = n_slots - 3; i > 0; i--) {
        int j = below(c, i + 1), t = perm[i];
        perm[i] = perm[j], perm[j] = t;
    }
    for (int t = 0; t < n; t++) slot[t] = t == 0 ? 0 : t == 1 ? n_slots - 1 : perm[t - 2];
    struct shoal_batch batch = { .n_tokens = n, .token = zero, .pos = slot, .seq = zero,
                                 .slot = slot, .block_table = &table0, .n_seq = 1,
                                 .max_blocks = 1, .block_size = n_slots };
    SHOAL_TRY_GOTO(dev2_put(c, &dk, k, sizeof(float) * n * kvd), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dv, v, sizeof(float) * n * kvd), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &kc, NULL, cache), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &vc, NULL, cache), rc, done);
    for (int b = 0; b < 2; b++) {
        SHOAL_TRY_GOTO(shoal_backend_memset0(c->be[b], kc.p[b], cache), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_memset0(c->be[b], vc.p[b], cache), rc, done);
        SHOAL_TRY_GOTO(shoal_op_kv_store(c->be[b], &d, kc.p[b], vc.p[b], dk.p[b], dv.p[b], &batch),
                       rc, done);
    }
    SHOAL_TRY_GOTO(dev2_get(c, &kc, got, want, cache), rc, done);
    compare_cache(c, &st, got, want, &d);
    SHOAL_TRY_GOTO(dev2_get(c, &vc, got, want, cache), rc, done);
    compare_cache(c, &st, got, want, &d);
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dk), dev2_free(c, &dv), dev2_free(c, &kc), dev2_free(c, &vc);
    free(k), free(v), free(got), free(want), free(slot), free(zero), free(perm);
}

static void sweep_kv_store(struct ctx *c) {
    static const int shapes[][2] = { { 1, 64 }, { 2, 80 }, { 8, 128 }, { 4, 256 } };
    for (int kv = 0; kv < 3; kv++)
        for (int si = 0; si < COUNT(shapes); si++)
            for (int n = 1; n <= 7; n += 6) kv_store_case(c, kv, shapes[si][0], shapes[si][1], n);
}

/* ------------------------------------------------------------- attention */

/*
 * attention of query heads over n_kv KV heads, for n_seq sequences (the
 * first of len positions, the second of len / 2 + 1): the caches are filled
 * through kv_store on each backend, then the last chunk positions of each
 * sequence attend, causally, as a prompt chunk would. paged: blocks of 16
 * slots in shuffled order; else one contiguous block (block_size = n_slots).
 * K ~U(-1, 1), V ~U(-1, 1) plus an offset per dimension (outputs ~1, and a
 * softmax that does not sum to 1 shows), queries ~U(-2, 2). window > 0:
 * each token attends to its last window positions only (sliding-window
 * attention).
 * Tolerance: 1e-4 absolute; 2e-3 for an f16 cache, where the reference
 * rounds queries and softmax weights to f16 too.
 */
static void attention_case(struct ctx *c, int kv, int head_dim, int n_heads, int n_kv, int len,
                           int chunk, int n_seq, int paged, int window) {
    char win[32] = "";
    if (window) snprintf(win, sizeof win, " window %d", window);
    if (!begin(c, "attention", kv_names[kv], "hd %d %d/%d ctx %d chunk %d%s%s", head_dim, n_heads,
               n_kv, len, chunk, paged ? " paged x2" : "", win))
        return;
    shoal_status rc = SHOAL_OK;
    int lens[2] = { len, len / 2 + 1 }, chunks[2], total = 0, n_tok = 0;
    for (int s = 0; s < n_seq; s++) {
        chunks[s] = chunk < lens[s] ? chunk : lens[s];
        total += lens[s], n_tok += chunks[s];
    }
    const int bs = paged ? 16 : len + 3, max_blocks = paged ? (len + 15) / 16 : 1;
    const int n_blocks = n_seq * max_blocks;
    const size_t kvd = (size_t)n_kv * head_dim, qd = (size_t)n_heads * head_dim;
    struct shoal_kv_desc d;
    shoal_kv_desc_init(&d, kv, n_kv, head_dim, (int64_t)n_blocks * bs);
    const size_t cache = d.row_bytes * (size_t)d.n_slots;
    float *k = NULL, *v = NULL, *q = NULL, *got = NULL, *want = NULL, *off = NULL;
    int32_t *table = NULL, *seq = NULL, *pos = NULL, *slot = NULL, *aseq = NULL, *apos = NULL;
    int32_t *aslot = NULL;
    struct dev2 dk = { { 0 } }, dv = { { 0 } }, kc = { { 0 } }, vc = { { 0 } }, dq = { { 0 } },
                dout = { { 0 } };
    struct stats st = { 0 };
    HALLOC(k, total * kvd);
    HALLOC(v, total * kvd);
    HALLOC(off, kvd);
    HALLOC(q, n_tok * qd);
    HALLOC(got, n_tok * qd);
    HALLOC(want, n_tok * qd);
    HALLOC(table, n_blocks);
    HALLOC(seq, total);
    HALLOC(pos, total);
    HALLOC(slot, total);
    HALLOC(aseq, n_tok);
    HALLOC(apos, n_tok);
    HALLOC(aslot, n_tok);
    for (int i = 0; i < n_blocks; i++) table[i] = i;
    for (int i = n_blocks - 1; paged && i > 0; i--) { /* Fisher-Yates */
        int j = below(c, i + 1), t = table[i];
        table[i] = table[j], table[j] = t;
    }
    fill(c, k, total * kvd, 1.0f);
    fill(c, off, kvd, 1.0f);
    for (size_t i = 0; i < total * kvd; i++) v[i] = uni(c) + off[i % kvd];
    fill(c, q, n_tok * qd, 2.0f);
    /* every position of every sequence, in sequence order */
    for (int s = 0, t = 0; s < n_seq; s++)
        for (int p = 0; p < lens[s]; p++, t++) seq[t] = s, pos[t] = p;
    place(table, max_blocks, bs, total, seq, pos, slot);
    struct shoal_batch fillb = { .n_tokens = total, .token = pos, .pos = pos, .seq = seq,
                                 .slot = slot, .block_table = table, .n_seq = n_seq,
                                 .max_blocks = max_blocks, .block_size = bs };
    SHOAL_TRY_GOTO(dev2_put(c, &dk, k, sizeof(float) * total * kvd), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dv, v, sizeof(float) * total * kvd), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &kc, NULL, cache), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &vc, NULL, cache), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dq, q, sizeof(float) * n_tok * qd), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dout, NULL, sizeof(float) * n_tok * qd), rc, done);
    for (int b = 0; b < 2; b++) {
        SHOAL_TRY_GOTO(shoal_backend_memset0(c->be[b], kc.p[b], cache), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_memset0(c->be[b], vc.p[b], cache), rc, done);
        SHOAL_TRY_GOTO(shoal_op_kv_store(c->be[b], &d, kc.p[b], vc.p[b], dk.p[b], dv.p[b], &fillb),
                       rc, done);
    }
    /* the attending tokens: each sequence's last chunk positions (their slots and all) */
    for (int s = 0, t = 0, first = 0; s < n_seq; first += lens[s], s++)
        for (int p = lens[s] - chunks[s]; p < lens[s]; p++, t++)
            aseq[t] = s, apos[t] = p, aslot[t] = slot[first + p];
    struct shoal_batch att = { .n_tokens = n_tok, .token = apos, .pos = apos, .seq = aseq,
                               .slot = aslot, .block_table = table, .n_seq = n_seq,
                               .max_blocks = max_blocks, .block_size = bs };
    const float scale = 1.0f / sqrtf((float)head_dim);
    for (int b = 0; b < 2; b++)
        SHOAL_TRY_GOTO(shoal_op_attention(c->be[b], dout.p[b], dq.p[b], n_heads, &d, kc.p[b],
                                          vc.p[b], &att, scale, window), rc, done);
    SHOAL_TRY_GOTO(dev2_get(c, &dout, got, want, sizeof(float) * n_tok * qd), rc, done);
    compare(c, &st, got, want, 0, n_tok * qd,
            &(struct tol){ .abs = kv == SHOAL_KV_F16 ? 2e-3 : 1e-4 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dk), dev2_free(c, &dv), dev2_free(c, &kc), dev2_free(c, &vc);
    dev2_free(c, &dq), dev2_free(c, &dout);
    free(k), free(v), free(q), free(got), free(want), free(off);
    free(table), free(seq), free(pos), free(slot), free(aseq), free(apos), free(aslot);
}

static void sweep_attention(struct ctx *c) {
    static const int hds[] = { 64, 80, 128, 256 };
    /* ratios 1, 4, 7 and 12 (the CPU takes at most 8 query heads of a KV head at once) */
    static const int groups[][2] = { { 3, 3 }, { 8, 2 }, { 7, 1 }, { 24, 2 } };
    static const int ctxs[] = { 1, 17, 300, 2048 };
    /* every KV type x head dim x GQA ratio, the context, chunk and table rotating */
    for (int kv = 0; kv < 3; kv++) {
        int i = kv;
        for (int h = 0; h < COUNT(hds); h++)
            for (int g = 0; g < COUNT(groups); g++, i++) {
                if (c->quick && (hds[h] == 80 || hds[h] == 256) && (i % 2)) continue;
                int len = ctxs[i % COUNT(ctxs)], chunk = i % 3 == 1 ? 5 : 1, paged = i % 3 == 2;
                attention_case(c, kv, hds[h], groups[g][0], groups[g][1], len, chunk,
                               paged ? 2 : 1, paged, 0);
            }
        /* a whole first prompt chunk (positions from 0), alone and paged beside another */
        attention_case(c, kv, 128, 8, 2, 16, 16, 1, 0, 0);
        attention_case(c, kv, 64, 7, 1, 40, 24, 2, 1, 0);
        /* windows (Gemma 3's 256-value heads, one KV head): shorter than the context, across
         * a block boundary, as long as it, and of one position */
        attention_case(c, kv, 256, 4, 1, 300, 5, 2, 1, 37);
        attention_case(c, kv, 64, 8, 2, 40, 24, 1, 0, 40);
        attention_case(c, kv, 64, 8, 2, 40, 3, 2, 1, 1);
        if (c->quick) continue;
        /* long: a GPU splits these over the positions (flash decoding) */
        attention_case(c, kv, 128, 8, 2, 9000, 1, 1, 0, 0);
        attention_case(c, kv, 64, 7, 1, 9000, 3, 2, 1, 0);
        attention_case(c, kv, 256, 4, 1, 9000, 3, 2, 1, 512);
    }
}

/* ---------------------------------------------------------- elementwise */

enum ew_op { EW_SILU_MUL, EW_ADD, EW_ADD_F64, EW_GELU_MUL, EW_SCALE, EW_ROUND_F64, EW_ADD_BIAS };

/*
 * silu_mul (within 6 ulps: each side has its own e^x and three roundings;
 * test_matmul holds every CPU level within 4 of exact and measures 2 or 3),
 * add, add_f64 and add_bias (the
 * one f32 addition per value: exact) over n values (add_bias: rows of dim);
 * gelu_mul (within 16 ulps, or 2e-6: each side's own e^x, at arguments up
 * to ~50 where the output is tiny and an exponential's last bits are many
 * of its ulps; a compiler may fuse a multiply and an add), scale by 25.3
 * and round_f64 (one rounding: exact).
 */
static void ew_case(struct ctx *c, int op, size_t n, int dim) {
    static const char *const names[] = { "silu_mul", "add", "add_f64", "gelu_mul", "scale", "round_f64",
                                         "add_bias" };
    const int f64 = op == EW_ADD_F64 || op == EW_ROUND_F64;
    if (op == EW_ADD_BIAS ? !begin(c, names[op], "f32", "%zux%d", n / dim, dim)
                          : !begin(c, names[op], f64 ? "f64" : "f32", "%zu", n))
        return;
    shoal_status rc = SHOAL_OK;
    const size_t xn = op == EW_ADD_BIAS ? (size_t)dim : n;
    const size_t xsz = f64 ? sizeof(double) : sizeof(float);
    float *y = NULL, *xf = NULL, *got = NULL, *want = NULL;
    double *xd = NULL;
    struct dev2 dy = { { 0 } }, dx = { { 0 } };
    struct stats st = { 0 };
    HALLOC(y, n);
    HALLOC(got, n);
    HALLOC(want, n);
    HALLOC(xf, xn);
    HALLOC(xd, xn);
    fill(c, y, n, op == EW_SILU_MUL || op == EW_GELU_MUL ? 8.0f : 1.0f);
    fill(c, xf, xn, 2.0f);
    for (size_t i = 0; i < xn; i++) xd[i] = (double)xf[i] + uni(c) * 1e-8; /* not an f32 */
    SHOAL_TRY_GOTO(dev2_put(c, &dy, y, sizeof(float) * n), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dx, f64 ? (void *)xd : (void *)xf, xsz * xn), rc, done);
    for (int b = 0; b < 2; b++) {
        struct shoal_backend *be = c->be[b];
        if (op == EW_SILU_MUL) rc = shoal_op_silu_mul(be, dy.p[b], dx.p[b], n);
        else if (op == EW_ADD) rc = shoal_op_add(be, dy.p[b], dx.p[b], n);
        else if (op == EW_ADD_F64) rc = shoal_op_add_f64(be, dy.p[b], dx.p[b], n);
        else if (op == EW_GELU_MUL) rc = shoal_op_gelu_mul(be, dy.p[b], dx.p[b], n);
        else if (op == EW_SCALE) rc = shoal_op_scale(be, dy.p[b], n, 25.298221f);
        else if (op == EW_ROUND_F64) rc = shoal_op_round_f64(be, dy.p[b], dx.p[b], n);
        else rc = shoal_op_add_bias(be, dy.p[b], dx.p[b], (int)(n / dim), dim);
        if (rc != SHOAL_OK) goto done;
    }
    SHOAL_TRY_GOTO(dev2_get(c, &dy, got, want, sizeof(float) * n), rc, done);
    compare(c, &st, got, want, 0, n,
            &(struct tol){ .ulps = op == EW_SILU_MUL ? 6 : op == EW_GELU_MUL ? 16 : 0,
                           .abs = op == EW_GELU_MUL ? 2e-6 : 0 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dy), dev2_free(c, &dx);
    free(y), free(xf), free(xd), free(got), free(want);
}

static void sweep_elementwise(struct ctx *c) {
    static const size_t sizes[] = { 1, 1000, (1u << 20) + 3 };
    for (int op = EW_SILU_MUL; op <= EW_ROUND_F64; op++)
        for (int i = 0; i < COUNT(sizes); i++) ew_case(c, op, sizes[i], 0);
    static const int bias[][2] = { { 1, 1 }, { 5, 1000 }, { 2, (1 << 20) + 3 } }; /* rows, dim */
    for (int i = 0; i < COUNT(bias); i++)
        ew_case(c, EW_ADD_BIAS, (size_t)bias[i][0] * bias[i][1], bias[i][1]);
}

/* ---------------------------------------------------------------- experts */

/*
 * A mixture of experts' gather of its tokens' rows and weighted add of the
 * expert's outputs back (repeated rows too, added in order), and the f64
 * clear: each backend against the host's own loops, exactly (one f64
 * product and one sum per value, each rounded once).
 */
static void rows_ops_case(struct ctx *c, int rows, int n, int dim) {
    if (!begin(c, "experts", "f64", "%d of %dx%d", n, rows, dim)) return;
    shoal_status rc = SHOAL_OK;
    const size_t nx = (size_t)rows * dim, ng = (size_t)n * dim;
    float *x = NULL, *g[2] = { NULL, NULL }, *gref = NULL;
    double *y = NULL, *src = NULL, *w = NULL, *yref = NULL, *yg[2] = { NULL, NULL };
    int32_t *idx = NULL;
    struct dev2 dx = { { 0 } }, dg = { { 0 } }, dy = { { 0 } }, ds = { { 0 } };
    struct stats st = { 0 };
    HALLOC(x, nx);
    HALLOC(g[0], ng);
    HALLOC(g[1], ng);
    HALLOC(gref, ng);
    HALLOC(y, nx);
    HALLOC(yref, nx);
    HALLOC(yg[0], nx);
    HALLOC(yg[1], nx);
    HALLOC(src, ng);
    HALLOC(w, n);
    HALLOC(idx, n);
    fill(c, x, nx, 3.0f);
    for (size_t i = 0; i < nx; i++) y[i] = yref[i] = (double)uni(c) + uni(c) * 1e-9;
    for (size_t i = 0; i < ng; i++) src[i] = (double)uni(c) * 7.0 + uni(c) * 1e-9;
    for (int i = 0; i < n; i++) {
        idx[i] = i && below(c, 4) == 0 ? idx[i - 1] : below(c, rows); /* repeats */
        w[i] = (double)uni(c) + 1e-10 * uni(c);
        memcpy(gref + (size_t)i * dim, x + (size_t)idx[i] * dim, (size_t)dim * sizeof(float));
        for (int j = 0; j < dim; j++) {
            double *r = yref + (size_t)idx[i] * dim + j;
            const double p = w[i] * src[(size_t)i * dim + j];
            *r = *r + p;
        }
    }
    SHOAL_TRY_GOTO(dev2_put(c, &dx, x, nx * sizeof(float)), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dg, NULL, ng * sizeof(float)), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &dy, y, nx * sizeof(double)), rc, done);
    SHOAL_TRY_GOTO(dev2_put(c, &ds, src, ng * sizeof(double)), rc, done);
    for (int b = 0; b < 2; b++) {
        SHOAL_TRY_GOTO(shoal_op_gather_rows(c->be[b], dg.p[b], dx.p[b], rows, idx, n, dim), rc, done);
        SHOAL_TRY_GOTO(shoal_op_add_rows_f64(c->be[b], dy.p[b], rows, ds.p[b], idx, w, n, dim), rc, done);
    }
    memset(idx, 0xff, (size_t)n * sizeof *idx); /* the ops copied what they needed */
    SHOAL_TRY_GOTO(dev2_get(c, &dg, g[0], g[1], ng * sizeof(float)), rc, done);
    SHOAL_TRY_GOTO(dev2_get(c, &dy, yg[0], yg[1], nx * sizeof(double)), rc, done);
    for (int b = 0; b < 2; b++) {
        compare(c, &st, g[b], gref, 0, ng, &(struct tol){ 0 });
        compare(c, &st, yg[b], yref, 1, nx, &(struct tol){ 0 });
    }
    /* an index outside is refused, and the clear */
    const int32_t bad = rows;
    if (shoal_op_gather_rows(c->be[0], dg.p[0], dx.p[0], rows, &bad, 1, dim) == SHOAL_OK) {
        note(&st, "row %d of %d gathered without an error", bad, rows);
        st.bad++;
    }
    shoal_error_clear();
    for (int b = 0; b < 2; b++) SHOAL_TRY_GOTO(shoal_op_zero_f64(c->be[b], dy.p[b], nx), rc, done);
    SHOAL_TRY_GOTO(dev2_get(c, &dy, yg[0], yg[1], nx * sizeof(double)), rc, done);
    memset(yref, 0, nx * sizeof(double));
    for (int b = 0; b < 2; b++) compare(c, &st, yg[b], yref, 1, nx, &(struct tol){ 0 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dx), dev2_free(c, &dg), dev2_free(c, &dy), dev2_free(c, &ds);
    free(x), free(g[0]), free(g[1]), free(gref), free(y), free(yref), free(yg[0]), free(yg[1]);
    free(src), free(w), free(idx);
}

static void sweep_experts(struct ctx *c) {
    static const int shapes[][3] = { { 1, 1, 1 }, { 8, 5, 64 }, { 16, 40, 1000 }, { 300, 600, 2048 } };
    for (int i = 0; i < COUNT(shapes); i++)
        if (!c->quick || shapes[i][2] <= 1000) rows_ops_case(c, shapes[i][0], shapes[i][1], shapes[i][2]);
}

/* ------------------------------------------------------------------ top-k */

/*
 * The k best logits of each row (greedy decoding's pick, top-k sampling's
 * candidates): the same values and ids, in the same order, exactly; rows
 * with ties (ties go to the lower id), -infinity, and fewer values than k.
 */
static void topk_case(struct ctx *c, int rows, int cols, int k) {
    if (!begin(c, "topk", "f32", "%dx%d k=%d", rows, cols, k)) return;
    shoal_status rc = SHOAL_OK;
    const size_t n = (size_t)rows * cols, nk = (size_t)rows * k;
    float *x = NULL;
    struct shoal_cand *got = NULL, *want = NULL;
    struct dev2 dx = { { 0 } };
    struct stats st = { 0 };
    HALLOC(x, n);
    HALLOC(got, nk);
    HALLOC(want, nk);
    fill(c, x, n, 10.0f);
    for (size_t i = 0; i < n; i++) {
        if (below(c, 8) == 0) x[i] = 9.5f;                /* ties at the top */
        if (below(c, 50) == 0) x[i] = (float)-INFINITY;   /* masked tokens */
    }
    SHOAL_TRY_GOTO(dev2_put(c, &dx, x, sizeof(float) * n), rc, done);
    SHOAL_TRY_GOTO(shoal_op_topk(c->be[0], dx.p[0], rows, cols, k, 1000, got), rc, done);
    SHOAL_TRY_GOTO(shoal_op_topk(c->be[1], dx.p[1], rows, cols, k, 1000, want), rc, done);
    if (c->perturb) got[nk - 1].id ^= 1;
    st.n = (long)nk;
    for (size_t i = 0; i < nk; i++)
        if (got[i].id != want[i].id || memcmp(&got[i].v, &want[i].v, sizeof(float)) != 0) {
            if (!st.bad)
                note(&st, "[row %zu, #%zu] got (%g, %d) want (%g, %d)", i / k, i % k, got[i].v,
                     got[i].id, want[i].v, want[i].id);
            st.bad++;
        }
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    dev2_free(c, &dx);
    free(x), free(got), free(want);
}

static void sweep_topk(struct ctx *c) {
    static const int shapes[][3] = { { 1, 1, 1 },     { 1, 5, 8 },     { 1, 300, 1 },
                                     { 2, 300, 40 },  { 1, 32000, 1 }, { 3, 32000, 40 },
                                     { 1, 49159, 64 }, { 2, 1000, 100 } }; /* rows, cols, k */
    for (int i = 0; i < COUNT(shapes); i++)
        if (!c->quick || shapes[i][1] <= 32000) topk_case(c, shapes[i][0], shapes[i][1], shapes[i][2]);
}

/* --------------------------------------------------------- offload's images */

/*
 * A weight's device image packed on the host (shoal_weight_pack), copied up
 * with a fetch and bound (what offload does) must compute exactly what the
 * weight prepared the usual way computes, on the backend under test.
 */
static void pack_case(struct ctx *c, int type, int rows, int cols, int n) {
    if (!begin(c, "pack", shoal_dtype_name(type), "%dx%d n=%d", rows, cols, n)) return;
    shoal_status rc = SHOAL_OK;
    struct shoal_backend *be = c->be[0];
    const size_t rb = shoal_dtype_row_bytes(type, cols);
    size_t bytes = shoal_weight_bytes(be, type, rows, cols);
    if (!bytes) bytes = (size_t)rows * rb; /* used in place: the image is the bytes themselves */
    float *x = NULL, *got = NULL, *want = NULL;
    uint8_t *wq = NULL, *img = NULL;
    void *dev = NULL, *dx = NULL, *dy = NULL;
    struct shoal_weight wp = { 0 }, wb = { 0 };
    struct stats st = { 0 };
    uint64_t ticket = 0;
    HALLOC(x, (size_t)n * cols);
    HALLOC(got, (size_t)n * rows);
    HALLOC(want, (size_t)n * rows);
    SHOAL_TRY_GOTO(random_weight(c, type, rows, cols, 1.0f, &wq), rc, done);
    fill(c, x, (size_t)n * cols, 1.0f);
    SHOAL_TRY_GOTO(shoal_backend_host_alloc(be, bytes, (void **)&img), rc, done);
    SHOAL_TRY_GOTO(shoal_weight_pack(be, type, rows, cols, wq, img), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_alloc(be, bytes, &dev), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_fetch(be, dev, img, bytes, &ticket), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_fetch_wait(be, ticket), rc, done);
    SHOAL_TRY_GOTO(shoal_weight_bind(be, &wb, type, rows, cols, dev), rc, done);
    SHOAL_TRY_GOTO(shoal_weight_prepare(be, &wp, type, rows, cols, wq, NULL), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_alloc(be, sizeof(float) * (size_t)n * cols, &dx), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_alloc(be, sizeof(float) * (size_t)n * rows, &dy), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_upload(be, dx, x, sizeof(float) * (size_t)n * cols), rc, done);
    const size_t yb = sizeof(float) * (size_t)n * rows;
    SHOAL_TRY_GOTO(shoal_op_matmul(be, dy, &wb, dx, n), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_synchronize(be), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_download(be, got, dy, yb), rc, done);
    SHOAL_TRY_GOTO(shoal_op_matmul(be, dy, &wp, dx, n), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_synchronize(be), rc, done);
    SHOAL_TRY_GOTO(shoal_backend_download(be, want, dy, yb), rc, done);
    if (c->perturb) got[0] = nextafterf(got[0], INFINITY);
    compare(c, &st, got, want, 0, (size_t)n * rows, &(struct tol){ 0 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    shoal_weight_release(be, &wp);
    shoal_backend_free(be, dev);
    shoal_backend_free(be, dx);
    shoal_backend_free(be, dy);
    shoal_backend_host_free(be, img);
    free(x), free(got), free(want), free(wq);
}

static void sweep_pack(struct ctx *c) {
    for (int i = 0; i < COUNT(all_types); i++) {
        if (!computes(c, all_types[i])) continue;
        pack_case(c, all_types[i], 37, fit(all_types[i], 96), 1);
        pack_case(c, all_types[i], 64, 256, 12);
    }
}

/*
 * One matmul's operands on the backend under test, for the invariance cases:
 * a random weight (*wq its GGUF bytes, wp prepared from them), n tokens of x
 * (host *x, device *dx) and room for n rows of es-byte outputs (*dy). What it
 * made before failing the caller frees.
 */
struct mm_io {
    float *x;
    uint8_t *wq;
    struct shoal_weight wp;
    void *dx, *dy;
};

static shoal_status mm_io_make(struct ctx *c, int type, int rows, int cols, int n, size_t es,
                               struct mm_io *io) {
    struct shoal_backend *be = c->be[0];
    memset(io, 0, sizeof *io);
    if (!(io->x = calloc((size_t)n * cols + 1, sizeof *io->x)))
        return shoal_errorf(SHOAL_NOMEM, "out of host memory");
    SHOAL_TRY(random_weight(c, type, rows, cols, 1.0f, &io->wq));
    fill(c, io->x, (size_t)n * cols, 1.0f);
    SHOAL_TRY(shoal_weight_prepare(be, &io->wp, type, rows, cols, io->wq, NULL));
    SHOAL_TRY(shoal_backend_alloc(be, sizeof(float) * (size_t)n * cols, &io->dx));
    SHOAL_TRY(shoal_backend_alloc(be, es * (size_t)n * rows, &io->dy));
    return shoal_backend_upload(be, io->dx, io->x, sizeof(float) * (size_t)n * cols);
}

static void mm_io_free(struct ctx *c, struct mm_io *io) {
    struct shoal_backend *be = c->be[0];
    shoal_weight_release(be, &io->wp);
    shoal_backend_free(be, io->dx);
    shoal_backend_free(be, io->dy);
    free(io->x), free(io->wq);
}

/*
 * Batch invariance (the CPU backend): a matmul of n tokens at once gives
 * each token, bit for bit, what the same matmul of that token alone gives,
 * f32 and f64 sums alike; a serving batch then yields each sequence's own
 * tokens whatever else runs beside it. (A GPU's batches of more than 8 tokens
 * go to the tensor cores with f16 activations: not asked of it; nor of the AVX2 kernels, whose
 * small tiles, decoding's among them, sum in two banks and the large in one.)
 */
static void batch_case(struct ctx *c, int type, int rows, int cols, int n, int f64) {
    if (!begin(c, f64 ? "batch_f64" : "batch", shoal_dtype_name(type), "%dx%d n=%d", rows, cols, n)) return;
    shoal_status rc = SHOAL_OK;
    struct shoal_backend *be = c->be[0];
    const size_t es = f64 ? sizeof(double) : sizeof(float);
    char *got = NULL, *want = NULL;
    struct mm_io io;
    struct stats st = { 0 };
    SHOAL_TRY_GOTO(mm_io_make(c, type, rows, cols, n, es, &io), rc, done);
    HALLOC(got, (size_t)n * rows * es);
    HALLOC(want, (size_t)n * rows * es);
    for (int t = 0; t <= n; t++) { /* each token alone, then all n at once */
        const int k = t < n ? 1 : n;
        const float *xt = (const float *)io.dx + (size_t)(t < n ? t : 0) * cols;
        char *yt = (char *)io.dy + (size_t)(t < n ? t : 0) * rows * es;
        SHOAL_TRY_GOTO(f64 ? shoal_op_matmul_f64(be, (double *)yt, &io.wp, xt, k)
                           : shoal_op_matmul(be, (float *)yt, &io.wp, xt, k), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_synchronize(be), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_download(be, t < n ? want : got, io.dy, es * (size_t)n * rows), rc, done);
    }
    compare(c, &st, got, want, f64, (size_t)n * rows, &(struct tol){ 0 });
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    mm_io_free(c, &io);
    free(got), free(want);
}

static void sweep_batch(struct ctx *c) {
    if (c->tc_batch || c->simd == SHOAL_SIMD_AVX2) {
        printf("batch: not checked: %s\n", c->tc_batch ? "batches of more than 8 tokens go to the tensor "
               "cores with f16 activations, fewer to the decode kernels" : "the AVX2 kernels' sums "
               "depend on the tile (known: they are not batch-invariant)");
        return;
    }
    for (int i = 0; i < COUNT(all_types); i++)
        for (int f64 = 0; f64 < 2 && computes(c, all_types[i]); f64++) {
            /* a part group of rows, tiles of every size */
            batch_case(c, all_types[i], 37, fit(all_types[i], 96), 19, f64);
            batch_case(c, all_types[i], 64, 256, 9, f64);
        }
}

/*
 * Row invariance: a matmul on a slice of a weight's rows (a tensor-parallel
 * rank's share of a column-parallel weight), prepared as a weight of its own
 * from those rows' bytes, gives bit for bit the rows the whole weight gives,
 * so that greedy tokens of every tp layout are one rank's. Slices: an uneven
 * cut (672 rows, as a rank holding 672 of 1536 FFN rows), the rest, single
 * rows, and one that starts at an odd row. f64: matmul_f64's outputs alike.
 */
static void rows_case(struct ctx *c, int type, int rows, int cols, int n, int f64) {
    if (!begin(c, f64 ? "rows_f64" : "rows", shoal_dtype_name(type), "%dx%d n=%d", rows, cols, n)) return;
    shoal_status rc = SHOAL_OK;
    struct shoal_backend *be = c->be[0];
    const size_t es = f64 ? sizeof(double) : sizeof(float), rb = shoal_dtype_row_bytes(type, cols);
    const int cut = rows > 672 ? 672 : rows / 2 + 1, odd = rows / 5 | 1;
    const int slices[][2] = { { 0, cut }, { cut, rows }, { rows / 2, rows / 2 + 1 },
                              { rows - 1, rows }, { odd, odd + rows / 3 } }; /* [r0, r1) */
    char *whole = NULL, *got = NULL, *want = NULL;
    struct mm_io io;
    struct shoal_weight ws = { 0 };
    struct stats st = { 0 };
    SHOAL_TRY_GOTO(mm_io_make(c, type, rows, cols, n, es, &io), rc, done);
    HALLOC(whole, (size_t)n * rows * es);
    HALLOC(got, (size_t)n * rows * es);
    HALLOC(want, (size_t)n * rows * es);
    for (int s = -1; s < COUNT(slices); s++) { /* the whole weight, then each slice */
        const int r0 = s < 0 ? 0 : slices[s][0], nr = s < 0 ? rows : slices[s][1] - r0;
        struct shoal_weight *w = s < 0 ? &io.wp : &ws;
        if (s >= 0)
            SHOAL_TRY_GOTO(shoal_weight_prepare(be, &ws, type, nr, cols, io.wq + (size_t)r0 * rb, NULL), rc, done);
        SHOAL_TRY_GOTO(f64 ? shoal_op_matmul_f64(be, io.dy, w, io.dx, n) : shoal_op_matmul(be, io.dy, w, io.dx, n), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_synchronize(be), rc, done);
        SHOAL_TRY_GOTO(shoal_backend_download(be, s < 0 ? whole : got, io.dy, es * (size_t)n * nr), rc, done);
        if (s < 0) continue;
        shoal_weight_release(be, &ws);
        memset(&ws, 0, sizeof ws);
        for (int t = 0; t < n; t++) /* the slice's rows of the whole weight's output */
            memcpy(want + (size_t)t * nr * es, whole + ((size_t)t * rows + r0) * es, (size_t)nr * es);
        const long bad = st.bad;
        /* a GPU's f64 batches go to cublasDgemm, whose order of sums follows the shape: its
         * operands are exact, so rows differ in the last bits of an f64 at most (which the
         * rounding to f32 after the all-reduce absorbs): 1e-12 there, bit for bit elsewhere */
        const struct tol tl = f64 && c->tc_batch && n > 8 ? (struct tol){ .rel = 1e-12 } : (struct tol){ 0 };
        compare(c, &st, got, want, f64, (size_t)n * nr, &tl);
        if (st.bad > bad) note(&st, "rows [%d, %d) differ from the whole weight's (indices above: t * %d + row)",
                               r0, r0 + nr, nr);
    }
    finish(c, &st);
done:
    if (rc != SHOAL_OK) failed_to_run(c, rc);
    shoal_weight_release(be, &ws);
    mm_io_free(c, &io);
    free(whole), free(got), free(want);
}

static void sweep_rows(struct ctx *c) {
    static const int shapes[][2] = { { 1000, 96 }, { 257, 1024 }, { 1000, 1024 }, { 257, 96 } };
    static const int n_full[] = { 9, 33, 130 }, n_quick[] = { 9, 130 };
    const int *ns = c->quick ? n_quick : n_full;
    const int nn = c->quick ? COUNT(n_quick) : COUNT(n_full), nsh = c->quick ? 2 : COUNT(shapes);
    /* AVX2's Q8_0 and Q4_0 tiles of one or two outputs sum in two banks, larger ones in one:
     * a row at a slice's edge lands in another tile shape (seen: 1024 cols, 130 tokens) */
    const int avx2 = c->simd == SHOAL_SIMD_AVX2;
    if (avx2) printf("rows: not checked for q8_0 and q4_0: the AVX2 kernels' sums depend on the tile "
                     "(known: they are not row-invariant; rows_f64 is checked)\n");
    for (int i = 0; i < COUNT(all_types); i++)
        for (int si = 0; si < nsh; si++)
            for (int ni = 0; ni < nn; ni++)
                for (int f64 = 0; f64 < 2; f64++) {
                    const int t = all_types[i];
                    if (avx2 && !f64 && (t == SHOAL_DTYPE_Q8_0 || t == SHOAL_DTYPE_Q4_0)) continue;
                    if (!computes(c, t)) continue;
                    rows_case(c, t, shapes[si][0], fit(t, shapes[si][1]), ns[ni], f64);
                }
}

/* ---------------------------------------------------------------- main */

static int usage(const char *argv0) {
    fprintf(stderr,
            "usage: %s [cuda|cpu] [--device N] [--simd L] [--quick] [--filter OP] [--part K/N] [--perturb] [-v]\n"
            "  cuda (default): the CUDA backend on device N; cpu: the CPU backend at its best\n"
            "  SIMD level (or L: scalar, avx2, avx512). Both are checked against the CPU\n"
            "  backend's scalar kernels. --quick: fewer sizes; --filter: the ops whose name\n"
            "  contains OP; --part K/N: every Nth case from the Kth (N runs share the cases);\n"
            "  --perturb: every case must fail; -v: show what differed.\n",
            argv0);
    return 2;
}

int main(int argc, char **argv) {
    struct ctx c = { .simd = -1 };
    const char *which = "cuda";
    int device = 0, simd = SHOAL_SIMD_AUTO;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "cuda") || !strcmp(argv[i], "cpu")) which = argv[i];
        else if (!strcmp(argv[i], "--quick")) c.quick = 1;
        else if (!strcmp(argv[i], "--perturb")) c.perturb = 1;
        else if (!strcmp(argv[i], "-v")) c.verbose = 1;
        else if (!strcmp(argv[i], "--device") && i + 1 < argc) device = atoi(argv[++i]);
        else if (!strcmp(argv[i], "--filter") && i + 1 < argc) c.filter = argv[++i];
        else if (!strcmp(argv[i], "--part") && i + 1 < argc) {
            if (sscanf(argv[++i], "%d/%d", &c.part, &c.parts) != 2 || c.parts < 1 || c.parts > 64 || c.part < 1 ||
                c.part > c.parts)
                return usage(argv[0]);
        }
        else if (!strcmp(argv[i], "--simd") && i + 1 < argc) {
            if ((simd = shoal_cpu_simd_from_name(argv[++i])) == -2) return usage(argv[0]);
        }
        else return usage(argv[0]);
    }
    char name[64];
    shoal_status rc;
    if (!strcmp(which, "cuda")) {
        const char *why = NULL;
        int count = shoal_cuda_device_count(&why);
        if (count == 0) {
            printf("skipped: no CUDA device: %s\n", why ? why : "(no reason given)");
            return 77;
        }
        if (device < 0 || device >= count) {
            fprintf(stderr, "--device %d: this machine has %d CUDA device(s), 0..%d\n", device,
                    count, count - 1);
            return 2;
        }
        /* the driver counted a device: from here on CUDA not starting (no cuBLAS, a driver
         * too old for this runtime, no module) is a failure that says why, not a skip */
        rc = shoal_cuda_backend_create(&c.be[0], &(struct shoal_cuda_params){ .device = device, .rank = -1 });
        c.tc_batch = 1;
        snprintf(name, sizeof name, "cuda (device %d)", device);
    } else {
        if (simd == SHOAL_SIMD_AUTO) simd = shoal_cpu_simd_best();
        rc = shoal_cpu_backend_create(&c.be[0], &(struct shoal_cpu_params){ .simd = simd, .spin = -1 });
        if (rc == SHOAL_UNSUPPORTED) {
            printf("skipped: %s\n", shoal_last_error());
            return 77;
        }
        snprintf(name, sizeof name, "cpu (%s)", shoal_cpu_simd_name(simd));
        c.simd = simd;
    }
    if (rc != SHOAL_OK) {
        fprintf(stderr, "cannot create the %s backend: %s: %s\n", which, shoal_status_str(rc),
                shoal_last_error());
        return 1;
    }
    rc = shoal_cpu_backend_create(&c.be[1], &(struct shoal_cpu_params){ .simd = SHOAL_SIMD_SCALAR,
                                                                         .spin = -1 });
    if (rc != SHOAL_OK) {
        fprintf(stderr, "cannot create the reference backend: %s\n", shoal_last_error());
        shoal_backend_destroy(c.be[0]);
        return 1;
    }
    printf("test_backend_ops: %s against cpu (scalar)%s%s\n", name, c.quick ? ", quick" : "",
           c.perturb ? ", perturbed: every case must FAIL" : "");
    double t0 = shoal_now();
    sweep_matmul(&c);
    sweep_matmul_more(&c);
    sweep_embed(&c);
    sweep_rmsnorm(&c);
    sweep_rope(&c);
    sweep_kv_store(&c);
    sweep_attention(&c);
    sweep_elementwise(&c);
    sweep_topk(&c);
    sweep_experts(&c);
    sweep_pack(&c);
    sweep_batch(&c);
    sweep_rows(&c);
    printf("test_backend_ops: %s: %d cases, %d passed, %d failed (%.1f s)\n", name, c.cases,
           c.cases - c.failed, c.failed, shoal_now() - t0);
    for (int i = 0; i < c.failed && i < COUNT(c.fails); i++) printf("  FAILED %s\n", c.fails[i]);
    if (c.failed > COUNT(c.fails)) printf("  ... and %d more\n", c.failed - COUNT(c.fails));
    shoal_backend_destroy(c.be[0]);
    shoal_backend_destroy(c.be[1]);
    if (!c.cases) printf("  no case ran (--filter, --part): nothing was checked\n");
    return c.failed || !c.cases ? 1 : 0;
}
