/*
 * backend_cpu.c — the CPU compute backend: fills the backend table of
 * runtime/backend_impl.h with host-memory buffers and multithreaded ops.
 *
 * "Device" memory is host memory here, and weights are used in place (the
 * mmapped GGUF), so preparing a weight copies nothing, but for the types the
 * SIMD level packs in a layout of its own (AVX-512: Q8_0). Matmuls split rows
 * over the thread pool; attention splits (token, KV head) pairs. The kernels of
 * the chosen SIMD level do the arithmetic (kernels_*.c).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../runtime/backend_impl.h"
#include "copier.h"
#include "kernels.h"
#include "pool.h"

/*
 * cos and sin of theta_i at positions 0..n_pos-1 for one rope setting, kept
 * from step to step (each layer's q and k rotate by the same angles; two
 * tables, as Gemma's layers alternate two bases). Keyed by the setting's
 * values, the factors' included, never their address.
 */
#define ROPE_TABLE_BYTES (16u << 20) /* positions beyond are computed as they come */
struct rope_table {
    int rope_dim, has_factors, n_pos;
    float base, scale, factors[512];
    unsigned used;
    float *cs; /* (n_pos, rope_dim / 2, 2) */
    size_t cap; /* bytes */
};

struct cpu_ctx {
    struct shoal_pool *pool;
    const struct cpu_kernels *k;
    int n_threads;
    int no_lanes;
    /* quantized activations for integer matmuls, grown on demand */
    void *xbuf;
    size_t xbuf_cap;
    /* attention: per thread att_cap floats (att_scratch) */
    float *att;
    size_t att_cap;
    /* rope: cos and sin tables of the last two settings (rope_table) */
    struct rope_table rope[2];
    unsigned rope_clock;
    struct shoal_backend_i dev_iface; /* the table of shoal_cpu_params.as_device */
    struct shoal_copier *copier;      /* as_device: fetches copied while the pool computes */
    /* lanes (shoal_backend_run_lanes): a backend of one thread per pool thread, made at
     * the first use, and what each lane's last part returned */
    struct shoal_backend **lane;
    struct lane_out { shoal_status rc; int waited; char err[256]; } *lane_out;
    struct shoal_bar bar;  /* the lanes' barrier, for the run going on */
    struct shoal_bar *in;  /* a lane: its run's barrier (shoal_backend_lane_barrier) */
    int spin;              /* microseconds a waiting thread polls (pool.h) */
};

/* ------------------------------------------------------------ SIMD levels */

static const char *const simd_names[SHOAL_SIMD_COUNT] = { "scalar", "avx2", "avx512" };

const char *shoal_cpu_simd_name(int simd) {
    return simd >= 0 && simd < SHOAL_SIMD_COUNT ? simd_names[simd] : "unknown";
}

int shoal_cpu_simd_from_name(const char *name) {
    if (strcmp(name, "auto") == 0) return SHOAL_SIMD_AUTO;
    for (int i = 0; i < SHOAL_SIMD_COUNT; i++)
        if (strcmp(name, simd_names[i]) == 0) return i;
    return -2;
}

int shoal_cpu_simd_best(void) {
#if defined(SHOAL_X86)
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
        __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") &&
        __builtin_cpu_supports("avx512vnni") && __builtin_cpu_supports("f16c") &&
        __builtin_cpu_supports("fma"))
        return SHOAL_SIMD_AVX512;
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") &&
        __builtin_cpu_supports("f16c"))
        return SHOAL_SIMD_AVX2;
#endif
    return SHOAL_SIMD_SCALAR;
}

static const struct cpu_kernels *kernels_for(int simd) {
#if defined(SHOAL_X86)
    if (simd == SHOAL_SIMD_AVX512) return &shoal_cpu_kernels_avx512;
    if (simd == SHOAL_SIMD_AVX2) return &shoal_cpu_kernels_avx2;
#endif
    (void)simd;
    return &shoal_cpu_kernels_scalar;
}

int shoal_cpu_online_cores(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

/* ---------------------------------------------------------------- memory */

/*
 * Blocks of 64 MiB and more (a serving KV cache, a large model's packed
 * weights) on 2 MiB boundaries, offered to the kernel's huge pages (where
 * transparent huge pages are "madvise"): attention reads the cache of many
 * sequences in scattered blocks, a TLB miss per 4 KiB page (16 streams on
 * SmolLM2: 3-4% faster in alternating runs). Smaller blocks stay on 4 KiB
 * pages, where a touched huge page would weigh in RSS against the plan's
 * memory prediction (test_plan holds it to 10%); here at most 2 MiB of 64.
 */
#define HUGE_PAGE ((size_t)2 << 20)
#define HUGE_FROM ((size_t)64 << 20)
static shoal_status cpu_alloc(void *ctx, size_t bytes, void **out) {
    void *p = NULL;
    const int huge = bytes >= HUGE_FROM;
    const size_t size = huge ? (bytes + HUGE_PAGE - 1) / HUGE_PAGE * HUGE_PAGE : bytes ? bytes : 64;
    if (size < bytes || posix_memalign(&p, huge ? HUGE_PAGE : 64, size) != 0)
        return shoal_errorf(SHOAL_NOMEM, "cannot allocate %zu bytes of host memory", bytes);
#if defined(MADV_HUGEPAGE)
    if (huge) (void)madvise(p, size, MADV_HUGEPAGE); /* advice only: without it, 4 KiB pages */
#endif
    *out = p;
    return SHOAL_OK;
}

static void cpu_free(void *ctx, void *p) { free(p); }

static shoal_status cpu_copy(void *ctx, void *dst, const void *src, size_t n) {
    memcpy(dst, src, n);
    return SHOAL_OK;
}

static shoal_status cpu_memset0(void *ctx, void *dst, size_t n) {
    memset(dst, 0, n);
    return SHOAL_OK;
}

/* Bytes of a weight in the level's own layout (kernels.h), or 0: its GGUF rows as they are. */
static size_t packed_bytes(const struct cpu_ctx *c, int type, int64_t rows, int64_t cols) {
    return c->k->packed_bytes ? c->k->packed_bytes(type, rows, cols) : 0;
}

/* In place, but for the types the level packs: those in the host memory given. */
static size_t cpu_weight_bytes(void *ctx, int type, int64_t rows, int64_t cols) {
    return packed_bytes(ctx, type, rows, cols);
}

/* as_device: the bytes copied (packed where the level packs), as a device backend would */
static size_t dev_weight_bytes(void *ctx, int type, int64_t rows, int64_t cols) {
    size_t p = packed_bytes(ctx, type, rows, cols);
    return p ? p : (size_t)rows * shoal_dtype_row_bytes(type, cols);
}

struct pack_job {
    const struct cpu_ctx *c;
    int type;
    int64_t rows, cols;
    const char *src;
    char *dst;
    int failed; /* set (atomically) by a thread whose part failed */
};

static void pack_worker(void *arg, int ith, int nth) {
    struct pack_job *j = arg;
    const int64_t pr = j->c->k->pack_rows;
    long long lo, hi;
    shoal_pool_share((j->rows + pr - 1) / pr, ith, nth, 1, &lo, &hi);
    const int64_t r0 = lo * pr, r1 = hi * pr < j->rows ? hi * pr : j->rows;
    if (r0 >= r1) return;
    size_t at = j->c->k->packed_bytes(j->type, r0, j->cols);
    if (j->c->k->pack(j->type, r1 - r0, j->cols, j->src + (size_t)r0 * shoal_dtype_row_bytes(j->type, j->cols),
                      j->dst + at) != SHOAL_OK)
        __atomic_store_n(&j->failed, 1, __ATOMIC_RELAXED);
}

/*
 * A weight's image in dst (src may be dst): packed, or its bytes. Packing
 * runs on the pool (the calling thread must be the one that runs the ops:
 * load time, or between ops).
 */
static shoal_status weight_image(const struct cpu_ctx *c, int type, int64_t rows, int64_t cols,
                                 const void *src, void *dst) {
    const size_t pb = packed_bytes(c, type, rows, cols);
    if (!pb) {
        if (src != dst) memcpy(dst, src, (size_t)rows * shoal_dtype_row_bytes(type, cols));
        return SHOAL_OK;
    }
    if (pb < (1u << 20) || c->n_threads == 1) return c->k->pack(type, rows, cols, src, dst);
    struct pack_job j = { c, type, rows, cols, src, dst, 0 };
    shoal_pool_run(c->pool, pack_worker, &j);
    return j.failed ? shoal_errorf(SHOAL_NOMEM, "out of memory packing a %s weight of %lld x %lld",
                                   shoal_dtype_name(type), (long long)rows, (long long)cols)
                    : SHOAL_OK;
}

static shoal_status dev_weight_prepare(void *ctx, struct shoal_weight *w, const void *host,
                                       void *dst) {
    SHOAL_TRY(weight_image(ctx, w->type, w->rows, w->cols, host, dst));
    w->data = dst;
    return SHOAL_OK;
}

static shoal_status cpu_weight_prepare(void *ctx, struct shoal_weight *w, const void *host,
                                       void *dst) {
    if (!packed_bytes(ctx, w->type, w->rows, w->cols)) {
        w->data = host; /* used in place: the caller keeps the map alive */
        return SHOAL_OK;
    }
    return dev_weight_prepare(ctx, w, host, dst);
}

/* Grows a scratch buffer; contents are not kept. */
static shoal_status grow(void **buf, size_t *cap, size_t need) {
    if (need <= *cap) return SHOAL_OK;
    free(*buf);
    *buf = NULL;
    *cap = 0;
    if (posix_memalign(buf, 64, need) != 0) {
        *buf = NULL;
        return shoal_errorf(SHOAL_NOMEM, "cannot allocate %zu bytes of scratch", need);
    }
    *cap = need;
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- matmul */

/*
 * The rows of all the weights, end to end, are cut into one contiguous
 * range per thread. Measured here: a thread streaming one long range reaches
 * the machine's bandwidth, while handing out chunks from a shared counter
 * (better balance in theory) lost 10-40% to the broken streams.
 */
struct mm_job {
    int k;
    mm_fn fn[SHOAL_MATMUL_MAX];
    struct mm_task task[SHOAL_MATMUL_MAX];
    int64_t first[SHOAL_MATMUL_MAX + 1]; /* where each weight's rows begin, end to end */
};

static void mm_worker(void *arg, int ith, int nth) {
    struct mm_job *j = arg;
    long long lo, hi;
    shoal_pool_share(j->first[j->k], ith, nth, MM_ROW_TILE, &lo, &hi);
    for (int i = 0; i < j->k && lo < hi; i++) {
        int64_t a = lo > j->first[i] ? lo : j->first[i], b = hi < j->first[i + 1] ? hi : j->first[i + 1];
        if (a < b) j->fn[i](&j->task[i], a - j->first[i], b - j->first[i]);
    }
}

/*
 * An activation form in one layout (kernels.h: enum cpu_xform, XL_*), made
 * once per matmul call for every weight that reads it: its place in the
 * scratch, and the mm_task fields its weights' tasks take.
 */
struct xform {
    int form, layout;
    size_t off;
    struct mm_task t;
};

struct xq_job {
    const struct cpu_kernels *k;
    const float *x;
    int64_t cols;
    int n;
    struct xform *f;
};

static void xq_worker(void *arg, int ith, int nth) {
    const struct xq_job *j = arg;
    const struct mm_task *m = &j->f->t;
    const int64_t cols = j->cols;
    long long lo, hi;
    shoal_pool_share(j->n, ith, nth, 1, &lo, &hi);
    if (j->f->form == XFORM_BF16) {
        for (long long t = lo; t < hi; t++)
            for (int64_t i = 0; i < cols; i++)
                ((uint16_t *)m->xb)[t * cols + i] = shoal_f32_to_bf16(j->x[t * cols + i]);
        return;
    }
    if (j->f->form == XFORM_Q8_K) {
        const int64_t nb = cols / SHOAL_QK_K;
        void (*q8k)(const float *, int64_t, int8_t *, float *, int16_t *) =
            j->k->quantize_q8k ? j->k->quantize_q8k : shoal_cpu_quantize_q8k;
        for (long long t = lo; t < hi; t++)
            q8k(j->x + t * cols, cols, (int8_t *)m->xkq + t * cols, (float *)m->xkd + t * nb,
                (int16_t *)m->xkbs + t * (cols / 16));
        return;
    }
    const int64_t nb = cols / SHOAL_QK;
    const int lanes = j->f->layout & XL_LANES ? 4 : 0, grouped = !!(j->f->layout & XL_GROUPED);
    const int64_t nv = nb / 4 * 4 * lanes;
    for (long long t = lo; t < hi; t++) { /* lane vectors: Q4_0's offset of 8 (Q4_1 reads only vd) */
        j->k->quantize_x(j->x + t * cols, cols, (int8_t *)m->xq + t * cols, (float *)m->xd + t * nb,
                         (float *)m->xs + t * nb, (int32_t *)m->xsum + t * nb, grouped, lanes, 8,
                         (int32_t *)m->xvc + t * nv, (float *)m->xvd + t * nv);
        if (!m->xqt) continue;
        /* the tiles' layout, by block, then token: a tile's tokens side by side */
        for (int64_t b = 0; b < nb; b++) {
            memcpy((int8_t *)m->xqt + (b * j->n + t) * SHOAL_QK, m->xq + t * cols + b * SHOAL_QK, SHOAL_QK);
            ((int32_t *)m->xct)[b * j->n + t] = -128 * m->xsum[t * nb + b];
            ((float *)m->xdt)[b * j->n + t] = m->xd[t * nb + b];
        }
    }
}

/* Scratch bytes of a form for n tokens of cols values, 64-byte aligned. */
static size_t xform_bytes(const struct xform *f, int64_t cols, int n) {
    size_t b = 0;
    if (f->form == XFORM_BF16) {
        b = (size_t)n * (size_t)cols * sizeof(uint16_t);
    } else if (f->form == XFORM_Q8_K) {
        /* xkq, xkd, xkbs */
        b = (size_t)n * ((size_t)cols + sizeof(float) * (size_t)(cols / SHOAL_QK_K) + 2 * (size_t)(cols / 16));
    } else if (f->form == XFORM_Q8_32) {
        const int64_t nb = cols / SHOAL_QK, nv = nb / 4 * 4 * (f->layout & XL_LANES ? 4 : 0);
        /* xq, xd, xs, xsum, xvc, xvd; with tiles xqt, xct, xdt */
        b = (size_t)n * ((size_t)cols + 3 * sizeof(float) * (size_t)nb + 2 * sizeof(float) * (size_t)nv);
        if (f->layout & XL_TILES) b += (size_t)n * ((size_t)cols + 2 * sizeof(float) * (size_t)nb);
    }
    return (b + 63) / 64 * 64;
}

/* Makes form f of x (n, cols) in scratch at base + f->off, filling f->t's x fields. */
static void quantize_form(struct cpu_ctx *c, const float *x, int64_t cols, int n, struct xform *f) {
    struct mm_task *t = &f->t;
    char *base = (char *)c->xbuf + f->off;
    if (f->form == XFORM_BF16) {
        t->xb = (uint16_t *)base;
    } else if (f->form == XFORM_Q8_K) {
        t->xkq = (int8_t *)base; /* cols % 256 == 0: what follows stays aligned */
        t->xkd = (float *)(base + (size_t)n * (size_t)cols);
        t->xkbs = (int16_t *)(t->xkd + (size_t)n * (size_t)(cols / SHOAL_QK_K));
    } else {
        const int64_t nb = cols / SHOAL_QK, nv = nb / 4 * 4 * (f->layout & XL_LANES ? 4 : 0);
        t->xq = (int8_t *)base; /* cols % 32 == 0: what follows stays aligned */
        t->xd = (float *)(base + (size_t)n * (size_t)cols);
        t->xs = t->xd + (size_t)n * (size_t)nb;
        t->xsum = (int32_t *)(t->xs + (size_t)n * (size_t)nb);
        t->xvc = t->xsum + (size_t)n * (size_t)nb;
        t->xvd = (float *)(t->xvc + (size_t)n * (size_t)nv);
        t->xqt = NULL, t->xct = NULL, t->xdt = NULL;
        if (f->layout & XL_TILES) { /* filled by xq_worker with the plain layout */
            t->xqt = (int8_t *)(t->xvd + (size_t)n * (size_t)nv);
            t->xct = (int32_t *)(t->xqt + (size_t)n * (size_t)cols);
            t->xdt = (float *)(t->xct + (size_t)n * (size_t)nb);
        }
    }
    struct xq_job q = { c->k, x, cols, n, f };
    if (n >= 2 * c->n_threads) shoal_pool_run(c->pool, xq_worker, &q);
    else xq_worker(&q, 0, 1);
}

/* The types the CPU backend computes with, "f32, f16, ... and q6_k", into buf. */
static const char *cpu_types(char *buf, size_t len) {
    int n = 0, count = 0;
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++) count += shoal_cpu_kernels_scalar.mm[t] != NULL;
    buf[0] = 0;
    for (int t = 0, i = 0; t < SHOAL_DTYPE_MAX && n >= 0 && (size_t)n < len; t++)
        if (shoal_cpu_kernels_scalar.mm[t])
            n += snprintf(buf + n, len - (size_t)n, "%s%s", i++ ? i == count ? " and " : ", " : "",
                          shoal_dtype_name(t));
    return buf;
}

/*
 * k weights on one input, into f32 y[i] or (when yd) f64 yd[0]. Each weight
 * type meets the activation form of its row in shoal_cpu_xform, in the layout
 * its kernel asks for; a level without a kernel for the type lends the
 * scalar level's (with the plain layout). Each form and layout is made once.
 */
static shoal_status run_matmul(struct cpu_ctx *c, int k, float *const *y, double *yd,
                               const struct shoal_weight *const *w, const float *x, int n) {
    struct mm_job job = { .k = k };
    struct xform forms[SHOAL_MATMUL_MAX];
    int nf = 0, which[SHOAL_MATMUL_MAX];
    const int64_t cols = w[0]->cols;
    for (int i = 0; i < k; i++) {
        const int type = w[i]->type;
        const struct cpu_kernels *kl = c->k;
        if (!(yd ? kl->mm_f64[type] : kl->mm[type])) kl = &shoal_cpu_kernels_scalar;
        if (!(job.fn[i] = yd ? kl->mm_f64[type] : kl->mm[type])) {
            char types[256];
            return shoal_errorf(SHOAL_UNSUPPORTED, "the CPU backend has no matmul for %s weights (it has %s)",
                                shoal_dtype_name(type), cpu_types(types, sizeof types));
        }
        if (w[i]->as_rows && packed_bytes(c, type, w[i]->rows, w[i]->cols))
            return shoal_errorf(SHOAL_INTERNAL, "a %s lookup table used in place reached a matmul "
                                "(the %s kernels need the weight prepared)", shoal_dtype_name(type), c->k->name);
        job.task[i] = (struct mm_task){ .w = w[i], .n = n, .x = x, .y = y ? y[i] : NULL, .yd = yd };
        job.first[i + 1] = job.first[i] + w[i]->rows;
        /* the form and layout this weight reads: shared with an earlier weight's where they
         * agree but for the tiles, which are an addition to the plain layout */
        const int form = shoal_cpu_xform[type], layout = form == XFORM_Q8_32 ? kl->xlayout[type] : 0;
        which[i] = -1;
        if (form == XFORM_F32) continue;
        int f = 0;
        while (f < nf && !(forms[f].form == form && (forms[f].layout & ~XL_TILES) == (layout & ~XL_TILES))) f++;
        if (f == nf) forms[nf++] = (struct xform){ .form = form, .layout = layout };
        forms[f].layout |= layout;
        which[i] = f;
    }
    size_t total = 0;
    for (int f = 0; f < nf; f++) {
        forms[f].off = total;
        total += xform_bytes(&forms[f], cols, n);
    }
    if (nf) SHOAL_TRY(grow(&c->xbuf, &c->xbuf_cap, total));
    for (int f = 0; f < nf; f++) quantize_form(c, x, cols, n, &forms[f]);
    for (int i = 0; i < k; i++) {
        if (which[i] < 0) continue;
        const struct mm_task *m = &forms[which[i]].t;
        struct mm_task *t = &job.task[i];
        t->xq = m->xq, t->xd = m->xd, t->xs = m->xs, t->xsum = m->xsum;
        t->xvc = m->xvc, t->xvd = m->xvd;
        t->xqt = m->xqt, t->xct = m->xct, t->xdt = m->xdt;
        t->xkq = m->xkq, t->xkd = m->xkd, t->xkbs = m->xkbs;
        t->xb = m->xb;
    }
    shoal_pool_run(c->pool, mm_worker, &job);
    return SHOAL_OK;
}

static shoal_status cpu_matmul_n(void *vctx, int k, float *const *y,
                                 const struct shoal_weight *const *w, const float *x, int n) {
    return run_matmul(vctx, k, y, NULL, w, x, n);
}

static shoal_status cpu_matmul(void *vctx, float *y, const struct shoal_weight *w, const float *x,
                               int n) {
    return run_matmul(vctx, 1, &y, NULL, &w, x, n);
}

static shoal_status cpu_matmul_f64(void *vctx, double *y, const struct shoal_weight *w,
                                   const float *x, int n) {
    return run_matmul(vctx, 1, NULL, y, &w, x, n);
}

/* ------------------------------------------------------------ small ops */

/*
 * The elementwise and per-token ops run on the pool only when there is
 * enough work to pay for waking it (prompts); one token's worth is a few
 * microseconds on the calling thread.
 */
struct par_job {
    void (*fn)(void *arg, long long lo, long long hi);
    void *arg;
    long long n, align;
};

static void par_worker(void *a, int ith, int nth) {
    struct par_job *j = a;
    long long lo, hi;
    shoal_pool_share(j->n, ith, nth, j->align, &lo, &hi);
    if (lo < hi) j->fn(j->arg, lo, hi);
}

static void par_for(struct cpu_ctx *c, long long n, long long serial_below, long long align,
                    void (*fn)(void *arg, long long lo, long long hi), void *arg) {
    if (n < serial_below || c->n_threads == 1) {
        fn(arg, 0, n);
        return;
    }
    struct par_job j = { fn, arg, n, align };
    shoal_pool_run(c->pool, par_worker, &j);
}

static shoal_status cpu_embed(void *vctx, float *y, const struct shoal_weight *table,
                              const struct shoal_batch *b) {
    for (int t = 0; t < b->n_tokens; t++) {
        int32_t id = b->token[t];
        if (id < 0 || id >= table->rows)
            return shoal_errorf(SHOAL_INVALID, "token id %d is outside the vocabulary (0..%lld)",
                                id, (long long)table->rows - 1);
        float *row = y + (int64_t)t * table->cols;
        if (!table->as_rows && packed_bytes(vctx, table->type, table->rows, table->cols))
            ((struct cpu_ctx *)vctx)->k->unpack_row(table, id, row);
        else
            SHOAL_TRY(shoal_dequantize_row(table->type, (const char *)table->data + (size_t)id * table->row_bytes,
                                           row, table->cols));
    }
    return SHOAL_OK;
}

struct norm_args {
    float *y;
    const float *x, *w;
    int dim;
    float eps;
};

/* The sum of squares in f64, in 8 partial sums that the compiler vectorizes (one chain of
 * dependent adds, 4 cycles a value, took 3% of a 16-stream step on SmolLM2). */
static double sum_squares(const float *x, int n) {
    double s[8] = { 0 };
    int i = 0;
    for (; i + 8 <= n; i += 8)
        for (int k = 0; k < 8; k++) s[k] += (double)x[i + k] * x[i + k];
    for (; i < n; i++) s[i % 8] += (double)x[i] * x[i];
    return ((s[0] + s[4]) + (s[1] + s[5])) + ((s[2] + s[6]) + (s[3] + s[7]));
}

static void rmsnorm_rows(void *a, long long lo, long long hi) {
    const struct norm_args *r = a;
    for (long long t = lo; t < hi; t++) {
        const float *xt = r->x + t * r->dim;
        float *yt = r->y + t * r->dim;
        const double ss = sum_squares(xt, r->dim);
        float scale = (float)(1.0 / sqrt(ss / r->dim + r->eps));
        for (int i = 0; i < r->dim; i++) yt[i] = xt[i] * scale * r->w[i];
    }
}

static shoal_status cpu_rmsnorm(void *vctx, float *y, const float *x, const float *w, int n,
                                int dim, float eps) {
    struct norm_args a = { y, x, w, dim, eps };
    par_for(vctx, n, 4, 1, rmsnorm_rows, &a);
    return SHOAL_OK;
}

struct rope_args {
    float *x;
    int n_heads, head_dim;
    const struct shoal_rope *r;
    const struct shoal_batch *b;
    const float *table; /* rope_table's cs for positions < n_pos, or NULL */
    int n_pos;
};

/* cs[i] = cos, sin of theta_i at position pos */
static void rope_angles(const struct shoal_rope *r, int pos, float (*cs)[2]) {
    const double p = (double)pos * r->freq_scale;
    for (int i = 0; i < r->rope_dim / 2; i++) {
        double theta = p * pow((double)r->freq_base, -2.0 * i / r->rope_dim);
        if (r->freq_factors) theta /= r->freq_factors[i];
        cs[i][0] = (float)cos(theta);
        cs[i][1] = (float)sin(theta);
    }
}

static void rope_rows(void *a, long long lo, long long hi) {
    const struct rope_args *ra = a;
    const struct shoal_rope *r = ra->r;
    const struct shoal_batch *b = ra->b;
    float *x = ra->x;
    const int n_heads = ra->n_heads, head_dim = ra->head_dim, half = r->rope_dim / 2;
    float own[512][2]; /* rope_dim <= 1024: checked by cpu_rope */
    for (long long t = lo; t < hi; t++) {
        const float(*cs)[2] = own;
        if (ra->table && b->pos[t] >= 0 && b->pos[t] < ra->n_pos)
            cs = (const float(*)[2])(ra->table + (size_t)b->pos[t] * (size_t)r->rope_dim);
        else
            rope_angles(r, b->pos[t], own);
        for (int h = 0; h < n_heads; h++) {
            float *v = x + ((int64_t)t * n_heads + h) * head_dim;
            for (int i = 0; i < half; i++) {
                int a = r->mode == SHOAL_ROPE_NEOX ? i : 2 * i;
                int c = r->mode == SHOAL_ROPE_NEOX ? i + half : 2 * i + 1;
                float x0 = v[a], x1 = v[c];
                v[a] = x0 * cs[i][0] - x1 * cs[i][1];
                v[c] = x0 * cs[i][1] + x1 * cs[i][0];
            }
        }
    }
}

/* The table of r's setting with positions up to max_pos filled, or NULL (beyond the cap,
 * or out of memory: the angles are then computed per token, as they were). */
static const struct rope_table *rope_table(struct cpu_ctx *c, const struct shoal_rope *r, int max_pos) {
    if ((size_t)max_pos >= ROPE_TABLE_BYTES / sizeof(float) / (size_t)r->rope_dim) return NULL;
    const int half = r->rope_dim / 2;
    struct rope_table *t = NULL;
    for (int i = 0; i < 2 && !t; i++) {
        struct rope_table *e = &c->rope[i];
        if (e->cs && e->rope_dim == r->rope_dim && e->base == r->freq_base && e->scale == r->freq_scale &&
            e->has_factors == !!r->freq_factors &&
            (!r->freq_factors || memcmp(e->factors, r->freq_factors, sizeof(float) * (size_t)half) == 0))
            t = e;
    }
    if (!t) { /* the one used least recently makes way */
        t = c->rope[0].used <= c->rope[1].used ? &c->rope[0] : &c->rope[1];
        t->rope_dim = r->rope_dim, t->base = r->freq_base, t->scale = r->freq_scale;
        t->has_factors = !!r->freq_factors, t->n_pos = 0;
        if (r->freq_factors) memcpy(t->factors, r->freq_factors, sizeof(float) * (size_t)half);
    }
    t->used = ++c->rope_clock;
    if (max_pos >= t->n_pos) {
        /* grown to the next power of two of positions, so a growing context costs few copies */
        size_t want = 64;
        while (want <= (size_t)max_pos) want *= 2;
        const size_t bytes = want * (size_t)r->rope_dim * sizeof(float);
        if (bytes > t->cap) {
            float *cs = realloc(t->cs, bytes);
            if (!cs) return NULL;
            t->cs = cs, t->cap = bytes;
        }
        for (int p = t->n_pos; p <= max_pos; p++)
            rope_angles(r, p, (float(*)[2])(t->cs + (size_t)p * (size_t)r->rope_dim));
        t->n_pos = max_pos + 1;
    }
    return t;
}

static shoal_status cpu_rope(void *vctx, float *x, int n_heads, int head_dim,
                             const struct shoal_rope *r, const struct shoal_batch *b) {
    if (r->rope_dim > 1024) return shoal_errorf(SHOAL_UNSUPPORTED, "rope dimension %d > 1024", r->rope_dim);
    int max_pos = -1;
    for (int t = 0; t < b->n_tokens; t++) max_pos = b->pos[t] > max_pos ? b->pos[t] : max_pos;
    const struct rope_table *tab = max_pos >= 0 ? rope_table(vctx, r, max_pos) : NULL;
    struct rope_args a = { x, n_heads, head_dim, r, b, tab ? tab->cs : NULL, tab ? tab->n_pos : 0 };
    par_for(vctx, b->n_tokens, 4, 1, rope_rows, &a);
    return SHOAL_OK;
}

static void store_head(const struct cpu_kernels *k, int type, void *dst, const float *src, int hd) {
    if (type == SHOAL_KV_F32) {
        memcpy(dst, src, (size_t)hd * 4);
    } else if (type == SHOAL_KV_F16) {
        uint16_t *d = dst;
        if (k->to_f16) k->to_f16(src, d, hd);
        else for (int i = 0; i < hd; i++) d[i] = shoal_f32_to_f16(src[i]);
    } else {
        float amax = 0;
        for (int i = 0; i < hd; i++) amax = fmaxf(amax, fabsf(src[i]));
        float s = amax / 127.0f, is = s ? 1.0f / s : 0.0f;
        memcpy(dst, &s, 4);
        int8_t *q = (int8_t *)dst + 4;
        for (int i = 0; i < hd; i++) q[i] = (int8_t)lrintf(src[i] * is);
    }
}

struct store_args {
    const struct cpu_kernels *kern;
    const struct shoal_kv_desc *d;
    void *kc, *vc;
    const float *k, *v;
    const struct shoal_batch *b;
};

static void kv_store_rows(void *a, long long lo, long long hi) {
    const struct store_args *s = a;
    const struct shoal_kv_desc *d = s->d;
    const float *k = s->k, *v = s->v;
    char *kc = s->kc, *vc = s->vc;
    int kvd = d->n_kv_heads * d->head_dim;
    for (long long t = lo; t < hi; t++) {
        int32_t slot = s->b->slot[t];
        for (int h = 0; h < d->n_kv_heads; h++) {
            size_t off = (size_t)slot * d->row_bytes + (size_t)h * d->head_bytes;
            store_head(s->kern, d->type, kc + off, k + (int64_t)t * kvd + h * d->head_dim, d->head_dim);
            store_head(s->kern, d->type, vc + off, v + (int64_t)t * kvd + h * d->head_dim, d->head_dim);
        }
    }
}

static shoal_status cpu_kv_store(void *vctx, const struct shoal_kv_desc *d, void *kc, void *vc,
                                 const float *k, const float *v, const struct shoal_batch *b) {
    for (int t = 0; t < b->n_tokens; t++)
        if (b->slot[t] < 0 || b->slot[t] >= d->n_slots)
            return shoal_errorf(SHOAL_INTERNAL, "KV slot %d outside the cache (%lld slots)",
                                b->slot[t], (long long)d->n_slots);
    struct store_args a = { ((struct cpu_ctx *)vctx)->k, d, kc, vc, k, v, b };
    par_for(vctx, b->n_tokens, 4, 1, kv_store_rows, &a);
    return SHOAL_OK;
}

/* ------------------------------------------------------------- attention */

struct att_job {
    struct cpu_ctx *c;
    float *out;
    const float *q;
    int n_heads;
    const struct shoal_kv_desc *d;
    const char *kc, *vc;
    const struct shoal_batch *b;
    float scale;
    size_t pos; /* positions per row of scores (a multiple of 16) */
    int window; /* > 0: a token attends to its last window positions */
};

/* The first position token t attends to. */
static int att_from(const struct att_job *j, int t) {
    const int npos = j->b->pos[t] + 1;
    return j->window > 0 && npos > j->window ? npos - j->window : 0;
}

/*
 * With an f16 cache, queries and weights are rounded to f16 too, as llama.cpp
 * does (its K q and V softmax products take f16 operands): the same rounding
 * keeps greedy tokens on its path for longer.
 */
void shoal_cpu_att_head(const struct att_head_args *a, float (*dot)(const float *, const void *, int),
                        void (*axpy)(float *, float, const void *, int)) {
    const int hd = a->head_dim, n = a->n;
    for (int g = 0; g < a->n_heads; g++) {
        const float *q = a->q + (size_t)g * hd;
        float *qh = a->qh + (size_t)g * hd, *scores = a->scores + (size_t)g * a->stride;
        float *out = a->out + (size_t)g * hd;
        if (a->round_f16) {
            for (int i = 0; i < hd; i++) qh[i] = shoal_f16_to_f32(shoal_f32_to_f16(q[i]));
            q = qh;
        }
        float max = -INFINITY;
        for (int p = 0; p < n; p++) {
            float s = dot(q, a->kc + a->off[p], hd) * a->scale;
            scores[p] = s;
            if (s > max) max = s;
        }
        double sum = 0;
        for (int p = 0; p < n; p++) {
            scores[p] = expf(scores[p] - max);
            sum += scores[p];
        }
        float inv = (float)(1.0 / sum);
        memset(out, 0, (size_t)hd * sizeof(float));
        for (int p = 0; p < n; p++) {
            float w = scores[p] * inv;
            if (a->round_f16) w = shoal_f16_to_f32(shoal_f32_to_f16(w));
            axpy(out, w, a->vc + a->off[p], hd);
        }
    }
}

/* Per thread scratch of the attention (floats, each part a multiple of 16): ATT_HEADS rows
 * of pos scores, pos offsets (int64: 2 floats each), ATT_HEADS rounded queries. */
static size_t att_scratch(size_t pos, int head_dim) {
    return (size_t)ATT_HEADS * pos + 2 * pos + (size_t)ATT_HEADS * (((size_t)head_dim + 15) / 16 * 16);
}

/*
 * Token t's cached rows (every KV head, keys and values) asked of memory into
 * L2, the blocks of its sequence a run of rows at a time: one token ahead of
 * the one a thread works on, the cache (scattered in blocks over a large
 * pool, larger than L3 with the weights passing through) arrives while it
 * computes (16 streams on SmolLM2: the keys' loads waited half the attention).
 */
static void att_prefetch(const struct att_job *j, int t) {
    const struct shoal_batch *b = j->b;
    const struct shoal_kv_desc *d = j->d;
    const int32_t *table = b->block_table + (int64_t)b->seq[t] * b->max_blocks;
    const int npos = b->pos[t] + 1;
    for (int p0 = att_from(j, t); p0 < npos; p0 += b->block_size - p0 % b->block_size) {
        const int in_block = b->block_size - p0 % b->block_size;
        const int rows = npos - p0 < in_block ? npos - p0 : in_block;
        const size_t at = ((size_t)table[p0 / b->block_size] * (size_t)b->block_size +
                           (size_t)(p0 % b->block_size)) * d->row_bytes;
        for (size_t l = 0; l < (size_t)rows * d->row_bytes; l += 64) {
            __builtin_prefetch(j->kc + at + l, 0, 2);
            __builtin_prefetch(j->vc + at + l, 0, 2);
        }
    }
}

static void att_worker(void *arg, int ith, int nth) {
    const struct att_job *j = arg;
    const struct shoal_kv_desc *d = j->d;
    const struct shoal_batch *b = j->b;
    const struct cpu_kernels *k = j->c->k;
    const int hd = d->head_dim, group = j->n_heads / d->n_kv_heads;
    const int per = group < ATT_HEADS ? group : ATT_HEADS, parts = (group + per - 1) / per;
    float *scores = j->c->att + (size_t)ith * j->c->att_cap;
    int64_t *off = (int64_t *)(scores + (size_t)ATT_HEADS * j->pos);
    float *qh = (float *)(off + j->pos);
    int t_off = -1; /* the token whose positions off holds */
    /* the query heads of a KV head together (they read the same cached vectors), in
     * round robin: later tokens attend to more positions, so contiguous shares would
     * leave the last thread with most of a prompt's work. With tokens enough for every
     * thread, by token: a token's KV heads one after another on one thread (a cached row
     * holds them all; it then comes from memory once, not once per thread) */
    const long long per_tok = (long long)d->n_kv_heads * parts, items = (long long)b->n_tokens * per_tok;
    const int by_token = b->n_tokens >= 2 * nth;
    for (long long i = 0;; i++) {
        const long long it = by_token ? (ith + i / per_tok * nth) * per_tok + i % per_tok : ith + i * nth;
        if (it >= items) break;
        const int t = (int)(it / per_tok), kvh = (int)(it / parts % d->n_kv_heads);
        const int h0 = kvh * group + (int)(it % parts) * per, nh = per < kvh * group + group - h0 ? per : kvh * group + group - h0;
        const int from = att_from(j, t), npos = b->pos[t] + 1 - from; /* the positions it attends to */
        if (t != t_off) {
            if (by_token && t_off < 0) att_prefetch(j, t);
            if (by_token && t + nth < b->n_tokens) att_prefetch(j, t + nth);
            const int32_t *table = b->block_table + (int64_t)b->seq[t] * b->max_blocks;
            for (int i = 0; i < npos; i++) {
                const int p = from + i;
                off[i] = ((int64_t)table[p / b->block_size] * b->block_size + p % b->block_size) *
                         (int64_t)d->row_bytes;
            }
            t_off = t;
        }
        const size_t head_off = (size_t)kvh * d->head_bytes;
        struct att_head_args a = { j->q + ((int64_t)t * j->n_heads + h0) * hd, j->kc + head_off,
                                   j->vc + head_off, off, npos, hd, d->type == SHOAL_KV_F16, j->scale,
                                   scores, j->out + ((int64_t)t * j->n_heads + h0) * hd, qh, nh,
                                   (int)j->pos };
        if (k->att_head[d->type] && hd % 16 == 0) k->att_head[d->type](&a);
        else shoal_cpu_att_head(&a, k->kv_dot[d->type], k->kv_axpy[d->type]);
    }
}

static shoal_status cpu_attention(void *vctx, float *out, const float *q, int n_heads,
                                  const struct shoal_kv_desc *d, const void *kc, const void *vc,
                                  const struct shoal_batch *b, float scale, int window) {
    struct cpu_ctx *c = vctx;
    if (n_heads % d->n_kv_heads)
        return shoal_errorf(SHOAL_INVALID, "%d query heads do not group over %d KV heads", n_heads,
                            d->n_kv_heads);
    int max_pos = 0;
    for (int t = 0; t < b->n_tokens; t++) {
        int64_t blk = b->pos[t] / b->block_size;
        if (b->pos[t] < 0 || b->seq[t] < 0 || b->seq[t] >= b->n_seq || blk >= b->max_blocks)
            return shoal_errorf(SHOAL_INTERNAL, "token %d: position %d of sequence %d is outside "
                                "its block table", t, b->pos[t], b->seq[t]);
        if (b->pos[t] > max_pos) max_pos = b->pos[t];
    }
    const size_t pos = ((size_t)max_pos + 16) / 16 * 16, cap = att_scratch(pos, d->head_dim);
    if (cap > c->att_cap) {
        void *p = c->att;
        size_t bytes = 0;
        shoal_status rc = grow(&p, &bytes, cap * sizeof(float) * (size_t)c->n_threads);
        c->att = p; /* NULL when that failed: the old block is gone either way */
        c->att_cap = rc == SHOAL_OK ? cap : 0;
        SHOAL_TRY(rc);
    }
    struct att_job j = { c, out, q, n_heads, d, kc, vc, b, scale, pos, window };
    shoal_pool_run(c->pool, att_worker, &j);
    return SHOAL_OK;
}

struct ew_args {
    float *y;
    const float *x;
    const struct cpu_kernels *k;
};

static void silu_mul_range(void *a, long long lo, long long hi) {
    const struct ew_args *e = a;
    if (e->k->silu_mul) e->k->silu_mul(e->y + lo, e->x + lo, hi - lo);
    else
        for (long long i = lo; i < hi; i++) e->y[i] = e->y[i] / (1.0f + expf(-e->y[i])) * e->x[i];
}

static void add_range(void *a, long long lo, long long hi) {
    const struct ew_args *e = a;
    for (long long i = lo; i < hi; i++) e->y[i] += e->x[i];
}

/*
 * GELU's tanh form, g (1 + tanh(c g (1 + a g^2))) / 2, written as the sigmoid
 * it is, g / (1 + e^(-2 c g (1 + a g^2))): an exponential as SiLU takes (the
 * level's kernel where it has one; tanhf took 4% of a Gemma 3 decode step)
 */
static void gelu_mul_range(void *a, long long lo, long long hi) {
    const struct ew_args *e = a;
    if (e->k->gelu_mul) {
        e->k->gelu_mul(e->y + lo, e->x + lo, hi - lo);
        return;
    }
    for (long long i = lo; i < hi; i++) {
        const float g = e->y[i];
        e->y[i] = g / (1.0f + expf(-2.0f * 0.79788456080286535588f * g * (1.0f + 0.044715f * g * g))) * e->x[i];
    }
}

static shoal_status cpu_gelu_mul(void *vctx, float *g, const float *u, size_t n) {
    struct ew_args a = { g, u, ((struct cpu_ctx *)vctx)->k };
    par_for(vctx, (long long)n, 1 << 11, 64, gelu_mul_range, &a);
    return SHOAL_OK;
}

struct scale_args {
    float *y;
    float s;
};

static void scale_range(void *a, long long lo, long long hi) {
    const struct scale_args *e = a;
    for (long long i = lo; i < hi; i++) e->y[i] *= e->s;
}

static shoal_status cpu_scale(void *vctx, float *y, size_t n, float s) {
    struct scale_args a = { y, s };
    par_for(vctx, (long long)n, 1 << 13, 64, scale_range, &a);
    return SHOAL_OK;
}

static shoal_status cpu_silu_mul(void *vctx, float *g, const float *u, size_t n) {
    struct ew_args a = { g, u, ((struct cpu_ctx *)vctx)->k };
    par_for(vctx, (long long)n, 1 << 12, 64, silu_mul_range, &a);
    return SHOAL_OK;
}

struct ew64_args {
    float *y;
    const double *x;
};

static void add_f64_range(void *a, long long lo, long long hi) {
    const struct ew64_args *e = a;
    for (long long i = lo; i < hi; i++) e->y[i] += (float)e->x[i];
}

static shoal_status cpu_add_f64(void *vctx, float *y, const double *x, size_t n) {
    struct ew64_args a = { y, x };
    par_for(vctx, (long long)n, 1 << 13, 64, add_f64_range, &a);
    return SHOAL_OK;
}

static void round_f64_range(void *a, long long lo, long long hi) {
    const struct ew64_args *e = a;
    for (long long i = lo; i < hi; i++) e->y[i] = (float)e->x[i];
}

static shoal_status cpu_round_f64(void *vctx, float *y, const double *x, size_t n) {
    struct ew64_args a = { y, x };
    par_for(vctx, (long long)n, 1 << 13, 64, round_f64_range, &a);
    return SHOAL_OK;
}

static shoal_status cpu_add(void *vctx, float *y, const float *x, size_t n) {
    struct ew_args a = { y, x, NULL };
    par_for(vctx, (long long)n, 1 << 13, 64, add_range, &a);
    return SHOAL_OK;
}

static shoal_status cpu_add_bias(void *vctx, float *y, const float *bias, int n, int dim) {
    for (int t = 0; t < n; t++)
        for (int i = 0; i < dim; i++) y[(int64_t)t * dim + i] += bias[i];
    return SHOAL_OK;
}

/* ------------------------------------------------------------- experts */

static shoal_status cpu_gather_rows(void *vctx, float *y, const float *x, const int32_t *idx, int n, int dim) {
    (void)vctx;
    for (int i = 0; i < n; i++)
        memcpy(y + (size_t)i * (size_t)dim, x + (size_t)idx[i] * (size_t)dim, (size_t)dim * sizeof(float));
    return SHOAL_OK;
}

static shoal_status cpu_add_rows_f64(void *vctx, double *y, const double *x, const int32_t *idx,
                                     const double *w, int n, int dim) {
    (void)vctx;
    for (int i = 0; i < n; i++) {
        double *yr = y + (size_t)idx[i] * (size_t)dim;
        const double *xr = x + (size_t)i * (size_t)dim;
        for (int j = 0; j < dim; j++) yr[j] += w[i] * xr[j];
    }
    return SHOAL_OK;
}

static shoal_status cpu_zero_f64(void *vctx, double *y, size_t n) {
    (void)vctx;
    memset(y, 0, n * sizeof *y);
    return SHOAL_OK;
}

/* ------------------------------------------------------------- lifetime */

/* A weight's image made on the host: packed as prepare packs, or its bytes (so that
 * offload's images in RAM and its packing on the way run on as_device as on a GPU). */
static shoal_status weight_pack(void *vctx, int type, int64_t rows, int64_t cols, const void *src,
                                    void *dst) {
    return weight_image(vctx, type, rows, cols, src, dst);
}

/* as_device: fetches on the copy thread */
static shoal_status dev_fetch(void *vctx, void *dst, const void *src, size_t n, uint64_t *ticket) {
    return shoal_copier_submit(((struct cpu_ctx *)vctx)->copier, dst, src, n, ticket);
}

static shoal_status dev_fetch_wait(void *vctx, uint64_t ticket) {
    shoal_copier_wait(((struct cpu_ctx *)vctx)->copier, ticket);
    return SHOAL_OK;
}

/* as_device: nothing queued but the copies */
static shoal_status dev_synchronize(void *vctx) {
    shoal_copier_drain(((struct cpu_ctx *)vctx)->copier);
    return SHOAL_OK;
}

static double dev_fetch_busy(void *vctx) { return shoal_copier_busy(((struct cpu_ctx *)vctx)->copier); }

/* ---------------------------------------------------------------- lanes */

static const struct shoal_backend_i cpu_iface;

/*
 * Lanes where the pool has threads to run them and the kernels give a token
 * the same bits in any batch (a step cut so then computes what it does
 * whole); a lane is one thread with scratch of its own.
 */
static int cpu_lanes(void *vctx) {
    const struct cpu_ctx *c = vctx;
    return c->n_threads >= 2 && !c->no_lanes && c->k->batch_invariant ? c->n_threads : 0;
}

static int cpu_batch_invariant(void *vctx) { return ((const struct cpu_ctx *)vctx)->k->batch_invariant; }

static shoal_status lanes_make(struct cpu_ctx *c) {
    if (c->lane) return SHOAL_OK;
    struct shoal_backend **lane = calloc((size_t)c->n_threads, sizeof *lane);
    c->lane_out = calloc((size_t)c->n_threads, sizeof *c->lane_out);
    if (!lane || !c->lane_out) {
        free(lane);
        free(c->lane_out);
        c->lane_out = NULL;
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    shoal_status rc = SHOAL_OK;
    for (int i = 0; i < c->n_threads && rc == SHOAL_OK; i++) {
        struct cpu_ctx *l = calloc(1, sizeof *l);
        if (!l) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            break;
        }
        l->k = c->k;
        l->n_threads = 1;
        if ((rc = shoal_pool_create(&l->pool, 1, 0)) != SHOAL_OK) {
            free(l);
            break;
        }
        /* the host table: a lane computes and never copies, whatever its parent's memory */
        if (!(lane[i] = shoal_backend_new(&cpu_iface, l))) {
            shoal_pool_destroy(l->pool);
            free(l);
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        }
    }
    if (rc != SHOAL_OK) {
        for (int i = 0; i < c->n_threads; i++)
            if (lane[i]) shoal_backend_destroy(lane[i]);
        free(lane);
        free(c->lane_out);
        c->lane_out = NULL;
        return rc;
    }
    c->lane = lane;
    return SHOAL_OK;
}

struct lane_job {
    struct cpu_ctx *c;
    int n;
    shoal_lane_fn fn;
    void *arg;
};

static void lane_worker(void *arg, int ith, int nth) {
    const struct lane_job *j = arg;
    for (int i = ith; i < j->n; i += nth) {
        struct lane_out *o = &j->c->lane_out[i];
        struct cpu_ctx *l = j->c->lane[i]->ctx;
        shoal_error_clear();
        o->waited = 0;
        l->in = &j->c->bar;
        o->rc = j->fn(j->arg, j->c->lane[i], i, j->n);
        l->in = NULL;
        if (o->rc != SHOAL_OK) {
            o->waited = atomic_load(&j->c->bar.failed); /* stopped by another's failure */
            shoal_bar_fail(&j->c->bar); /* nobody waits for this lane any more */
            snprintf(o->err, sizeof o->err, "%s", shoal_last_error());
        }
    }
}

static shoal_status cpu_run_lanes(void *vctx, int n, shoal_lane_fn fn, void *arg) {
    struct cpu_ctx *c = vctx;
    SHOAL_TRY(lanes_make(c));
    shoal_bar_init(&c->bar, n, c->spin);
    struct lane_job j = { c, n, fn, arg };
    shoal_pool_run(c->pool, lane_worker, &j);
    /* the error on this thread, where the caller looks for it: a lane's own before one
     * that only stopped waiting for it */
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++)
            if (c->lane_out[i].rc != SHOAL_OK && c->lane_out[i].waited == pass)
                return shoal_errorf(c->lane_out[i].rc, "%s", c->lane_out[i].err);
    return SHOAL_OK;
}

/* Inside a lane: until every lane of the run has come; elsewhere nothing. */
static shoal_status cpu_lane_barrier(void *vctx) {
    struct cpu_ctx *c = vctx;
    if (c->in && shoal_bar_wait(c->in) != 0)
        return shoal_errorf(SHOAL_INTERNAL, "another lane of the step failed");
    return SHOAL_OK;
}

static void cpu_destroy(void *vctx) {
    struct cpu_ctx *c = vctx;
    if (!c) return;
    if (c->lane)
        for (int i = 0; i < c->n_threads; i++) shoal_backend_destroy(c->lane[i]);
    free(c->lane);
    free(c->lane_out);
    shoal_copier_destroy(c->copier);
    shoal_pool_destroy(c->pool);
    free(c->xbuf);
    free(c->att);
    for (int i = 0; i < 2; i++) free(c->rope[i].cs);
    free(c);
}

static const struct shoal_backend_i cpu_iface = {
    .name = "cpu",
    .host_memory = 1,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .download = cpu_copy,
    .memset0 = cpu_memset0,
    .weight_bytes = cpu_weight_bytes,
    .weight_prepare = cpu_weight_prepare,
    .weight_pack = weight_pack,
    .embed = cpu_embed,
    .matmul = cpu_matmul,
    .matmul_n = cpu_matmul_n,
    .matmul_f64 = cpu_matmul_f64,
    .add_f64 = cpu_add_f64,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .silu_mul = cpu_silu_mul,
    .gelu_mul = cpu_gelu_mul,
    .scale = cpu_scale,
    .round_f64 = cpu_round_f64,
    .add = cpu_add,
    .add_bias = cpu_add_bias,
    .gather_rows = cpu_gather_rows,
    .add_rows_f64 = cpu_add_rows_f64,
    .zero_f64 = cpu_zero_f64,
    .lanes = cpu_lanes,
    .batch_invariant = cpu_batch_invariant,
    .run_lanes = cpu_run_lanes,
    .lane_barrier = cpu_lane_barrier,
};

shoal_status shoal_cpu_backend_create(struct shoal_backend **out,
                                      const struct shoal_cpu_params *params) {
    *out = NULL;
    int simd = params ? params->simd : SHOAL_SIMD_AUTO;
    int best = shoal_cpu_simd_best();
    if (simd == SHOAL_SIMD_AUTO) simd = best;
    if (simd < 0 || simd >= SHOAL_SIMD_COUNT)
        return shoal_errorf(SHOAL_INVALID, "unknown SIMD level %d", simd);
    if (simd > best)
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "this processor (or build) cannot run %s kernels; the best it can "
                            "run is %s",
                            shoal_cpu_simd_name(simd), shoal_cpu_simd_name(best));
    struct cpu_ctx *c = calloc(1, sizeof *c);
    if (!c) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    c->n_threads = params && params->n_threads > 0 ? params->n_threads : shoal_cpu_online_cores();
    c->k = kernels_for(simd);
    c->no_lanes = params && params->no_lanes;
    /* 100 us: the ops of a step follow each other within microseconds (shoal bench -p 64
     * -n 128, SmolLM2, two threads: a worker slept 261 times in 99,069 hand-offs at 100 us, 16
     * at 200, 3 at 12,000), while two processes on the same cores each wait that long for a
     * thread of their own that the other keeps off its core: two shoal bench -p 256 -n 64 at
     * once on two cores took 10.2-10.9 s at 100 us (one alone 1.7-1.9 s), 70.7 s at 1,000,
     * and 31-234 s with the 200,000 polls before (one alone 1.8-2.3 s) */
    int spin = params && params->spin >= 0 ? params->spin : 100;
    c->spin = spin;
    shoal_status rc = shoal_pool_create(&c->pool, c->n_threads, spin);
    if (rc != SHOAL_OK) {
        cpu_destroy(c);
        return rc;
    }
    const struct shoal_backend_i *iface = &cpu_iface;
    if (params && params->as_device) {
        /* the same table but for memory: this backend's own copy */
        c->dev_iface = cpu_iface;
        c->dev_iface.host_memory = 0;
        c->dev_iface.weight_bytes = dev_weight_bytes;
        c->dev_iface.weight_prepare = dev_weight_prepare;
        c->dev_iface.fetch = dev_fetch;
        c->dev_iface.fetch_wait = dev_fetch_wait;
        c->dev_iface.fetch_busy = dev_fetch_busy;
        c->dev_iface.synchronize = dev_synchronize;
        iface = &c->dev_iface;
        if ((rc = shoal_copier_create(&c->copier)) != SHOAL_OK) {
            cpu_destroy(c);
            return rc;
        }
    }
    *out = shoal_backend_new(iface, c);
    if (!*out) {
        cpu_destroy(c);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    return SHOAL_OK;
}
