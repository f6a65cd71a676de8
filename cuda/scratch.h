/*
 * scratch.h — inside cuda/ (and its unit test): how the CUDA backend carves
 * its one scratch buffer for an op, and how much working memory a model's
 * ops need at most. Every piece starts on a 256-byte boundary: f64 stores
 * need 8, vector loads 16, and a piece of its own cache lines costs nothing.
 * The functions that size a layout are the ones that hand its pieces out
 * (offsets from the scratch's start), so they cannot disagree.
 *
 * Plain C without CUDA: tests/unit/test_cuda_scratch.c checks every layout
 * (aligned, disjoint, inside the total) and the work bound on machines
 * without a GPU. It allocates nothing.
 */
#ifndef SHOAL_CUDA_SCRATCH_H
#define SHOAL_CUDA_SCRATCH_H

#include <stddef.h>
#include <stdint.h>

#include "../runtime/backend.h"

#define CUDA_ALIGN ((size_t)256)

/* ------------------------------------------------------------- carving */

/* A scratch being laid out: bytes used so far. */
struct carve {
    size_t used;
};

/* The offset of a piece of bytes at the next boundary; the carve grows past it. */
static inline size_t carve(struct carve *cv, size_t bytes) {
    const size_t at = (cv->used + CUDA_ALIGN - 1) / CUDA_ALIGN * CUDA_ALIGN;
    cv->used = at + bytes;
    return at;
}

/* ------------------------------------------------------ per-op layouts */

/* Activations (n, cols) quantized to 8 bits per block of 32: values, scales,
 * scales times block sums, block sums (int). */
struct xq8_layout {
    size_t q, d, s, sum;
};
static inline void xq8_layout(struct carve *cv, int64_t cols, int n, struct xq8_layout *l) {
    const size_t nb = (size_t)n * (size_t)(cols / 32);
    l->q = carve(cv, (size_t)n * (size_t)cols);
    l->d = carve(cv, nb * sizeof(float));
    l->s = carve(cv, nb * sizeof(float));
    l->sum = carve(cv, nb * sizeof(int32_t));
}

/* Activations (n, cols) quantized to 8 bits per super-block of 256 (the Q8_K form of
 * cpu/kernels.h): values, f32 scales (n, cols/256), int16 sums of each 16 (n, cols/16). */
struct xq8k_layout {
    size_t q, d, bs;
};
static inline void xq8k_layout(struct carve *cv, int64_t cols, int n, struct xq8k_layout *l) {
    l->q = carve(cv, (size_t)n * (size_t)cols);
    l->d = carve(cv, (size_t)n * (size_t)(cols / 256) * sizeof(float));
    l->bs = carve(cv, (size_t)n * (size_t)(cols / 16) * sizeof(int16_t));
}

/* The decode matmul (n <= 8 tokens): x quantized per block of 32 (need_q) and per
 * super-block of 256 (need_k) for quantized weights, x as f64 for float weights summed
 * in f64. mmv_layout: without the super-block form. */
struct mmv_layout {
    struct xq8_layout xq;
    struct xq8k_layout xk;
    size_t x64;
    size_t bytes;
};
static inline void mmv_layout_k(int64_t cols, int n, int need_q, int need_k, int need_64,
                                struct mmv_layout *l) {
    struct carve cv = { 0 };
    if (need_q) xq8_layout(&cv, cols, n, &l->xq);
    if (need_k) xq8k_layout(&cv, cols, n, &l->xk);
    if (need_64) l->x64 = carve(&cv, (size_t)n * (size_t)cols * sizeof(double));
    l->bytes = cv.used;
}
static inline void mmv_layout(int64_t cols, int n, int need_q, int need_64, struct mmv_layout *l) {
    mmv_layout_k(cols, n, need_q, 0, need_64, l);
}

/* Prompt batches into f32 (cuda_gemm): x rounded to the weight's 16-bit type (none for f32). */
struct gemm_layout {
    size_t xh;
    size_t bytes;
};
static inline void gemm_layout(int type, int64_t cols, int n, struct gemm_layout *l) {
    struct carve cv = { 0 };
    l->xh = type == SHOAL_DTYPE_F32 ? 0 : carve(&cv, (size_t)n * (size_t)cols * 2);
    l->bytes = cv.used;
}

/* The quantized types that meet activations quantized per block of 32 (q32) or per
 * super-block of 256 (q8k): cpu/kernels_scalar.c's shoal_cpu_xform. */
static inline int q32_type(int type) {
    return type == SHOAL_DTYPE_Q8_0 || type == SHOAL_DTYPE_Q4_0 || type == SHOAL_DTYPE_Q4_1 ||
           type == SHOAL_DTYPE_Q5_0 || type == SHOAL_DTYPE_Q5_1 || type == SHOAL_DTYPE_IQ4_NL;
}
static inline int q8k_type(int type) {
    return type == SHOAL_DTYPE_Q2_K || type == SHOAL_DTYPE_Q3_K || type == SHOAL_DTYPE_Q4_K ||
           type == SHOAL_DTYPE_Q5_K || type == SHOAL_DTYPE_Q6_K || type == SHOAL_DTYPE_IQ4_XS;
}
static inline int quantized_type(int type) { return q32_type(type) || q8k_type(type); }
/* Whether the type's values carry a min the f64 prompt path adds in a product of its own
 * (Q4_1, Q5_1: + m; Q2_K, Q4_K, Q5_K: - dmin * m), and over how many values each. */
static inline int min_group(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q4_1: case SHOAL_DTYPE_Q5_1: case SHOAL_DTYPE_Q4_K: case SHOAL_DTYPE_Q5_K: return 32;
    case SHOAL_DTYPE_Q2_K: return 16;
    default: return 0;
    }
}

/* Rows of a weight dequantized to f64 at a time in the f64 prompt path: 64 MiB of them. */
#define GEMM_F64_TILE_BYTES ((size_t)64 << 20)
static inline int64_t gemm_f64_tile(int64_t rows, int64_t cols) {
    int64_t tile = (int64_t)(GEMM_F64_TILE_BYTES / sizeof(double) / (size_t)cols);
    if (tile > rows) tile = rows;
    return tile < 1 ? 1 : tile;
}

/*
 * Prompt batches into f64 (cublasDgemm on exact operands): x as f64, x quantized (quantized
 * weights: has_q per block of 32, has_k per super-block of 256), the blocks' sums of x as
 * f64 where the weight has mins (xs: (n, cols / min_group)), a tile of dequantized rows.
 * The super-block types' x (dx * q, dx an f32 of 24 bits) is cut in two, dx's high 12
 * significant bits and the rest (xd and xd_lo, and xs and xs_lo), so that every product
 * stays exact in f64 (a GEMM's operand cannot hold dx * q exactly; cpu/kernels_scalar.c's kterm
 * rounds only the whole product, which this split reproduces).
 */
struct gemm_f64_layout {
    size_t xd, xd_lo;
    int has_q, has_k;
    struct xq8_layout xq;
    struct xq8k_layout xk;
    size_t xs, xs_lo; /* types with mins only (xs_lo: the super-block ones) */
    size_t wt;
    int64_t tile;
    size_t bytes;
};
static inline void gemm_f64_layout(int type, int64_t rows, int64_t cols, int n, struct gemm_f64_layout *l) {
    struct carve cv = { 0 };
    const size_t count = (size_t)n * (size_t)cols;
    const int mg = min_group(type);
    l->xd = carve(&cv, count * sizeof(double));
    l->has_q = q32_type(type);
    l->has_k = q8k_type(type);
    l->xd_lo = l->has_k ? carve(&cv, count * sizeof(double)) : 0;
    if (l->has_q) xq8_layout(&cv, cols, n, &l->xq);
    if (l->has_k) xq8k_layout(&cv, cols, n, &l->xk);
    l->xs = mg ? carve(&cv, (size_t)n * (size_t)(cols / mg) * sizeof(double)) : 0;
    l->xs_lo = mg && l->has_k ? carve(&cv, (size_t)n * (size_t)(cols / mg) * sizeof(double)) : 0;
    l->tile = gemm_f64_tile(rows, cols);
    l->wt = carve(&cv, (size_t)l->tile * (size_t)cols * sizeof(double));
    l->bytes = cv.used;
}

/* Attention's split: chunks of positions per (token, head), enough blocks to fill the
 * device (a few per SM), no chunk under 256 positions nor over 4096; cut from the cache's
 * length, so that a recorded decode step serves every position. */
enum { ATT_CHUNK_MIN = 256, ATT_CHUNK_MAX = 4096 };
struct att_layout {
    int chunk, n_chunks;
    size_t part; /* (n_tokens, n_heads, n_chunks, head_dim + 2) floats */
    size_t bytes;
};
static inline void att_layout(int n_tokens, int n_heads, int head_dim, int64_t n_slots, int n_sm,
                              struct att_layout *l) {
    const int64_t pairs = (int64_t)n_tokens * n_heads, npos = n_slots < 1 ? 1 : n_slots;
    const int64_t want = (4 * (int64_t)(n_sm < 1 ? 1 : n_sm) + pairs - 1) / (pairs < 1 ? 1 : pairs);
    int64_t chunk = (npos + want - 1) / want;
    chunk = (chunk + ATT_CHUNK_MIN - 1) / ATT_CHUNK_MIN * ATT_CHUNK_MIN;
    if (chunk > ATT_CHUNK_MAX) chunk = ATT_CHUNK_MAX;
    l->chunk = (int)chunk;
    l->n_chunks = (int)((npos + chunk - 1) / chunk);
    struct carve cv = { 0 };
    l->part = carve(&cv, (size_t)pairs * (size_t)l->n_chunks * ((size_t)head_dim + 2) * sizeof(float));
    l->bytes = cv.used;
}

/* top-k: rows x k candidates (a value and an id each) */
static inline size_t topk_bytes(int rows, int k) { return (size_t)rows * (size_t)k * 8; }

/* Uploading a quantized weight: whole rows through scratch, up to 64 MiB, or what the
 * scratch holds already when less (a reserved scratch is not grown for it), at least a row. */
#define UPLOAD_CHUNK_BYTES ((size_t)64 << 20)
static inline int64_t upload_chunk_rows(size_t row_bytes, int64_t rows, size_t cap) {
    const size_t limit = cap && cap < UPLOAD_CHUNK_BYTES ? cap : UPLOAD_CHUNK_BYTES;
    int64_t r = (int64_t)(limit / row_bytes);
    if (r > rows) r = rows;
    return r < 1 ? 1 : r;
}

/* ------------------------------------------------------- the work bound */

/* Besides scratch: the batch's arrays (pinned and device, grown to twice a batch's length
 * past 4096 values), the rope table (up to 512 rotated pairs), cuBLAS's workspace. */
#define ROPE_TAB_MAX 512
#define CUBLAS_WORKSPACE_BYTES ((size_t)32 << 20)

static inline size_t batch_values(int n_tokens, int64_t n_slots) {
    /* token, pos, seq, slot, and a block table that addresses at most every slot */
    const size_t len = 4 * (size_t)n_tokens + (size_t)n_slots + 1;
    return len < 4096 ? 4096 : 2 * len;
}

/* The largest scratch any op of a step of shape w needs (uploads use what there is). */
static inline size_t work_scratch_bytes(const struct shoal_work_shape *w, int n_sm) {
    size_t most = 0;
#define KEEP(x) do { const size_t b_ = (x); if (b_ > most) most = b_; } while (0)
    const int nt = w->n_tokens < 1 ? 1 : w->n_tokens, nd = nt < 8 ? nt : 8;
    for (int i = 0; i < w->n_mm; i++) {
        const int type = w->mm[i].type, q = quantized_type(type);
        const int64_t rows = w->mm[i].rows, cols = w->mm[i].cols;
        if (rows < 1 || cols < 1) continue;
        struct mmv_layout mv;
        /* a decode call may hold weights of both activation forms on one input (matmul_n):
         * quantized weights reserve both where the columns allow the super-block one */
        mmv_layout_k(cols, nd, q, q && cols % 256 == 0, w->mm[i].f64 && !q, &mv);
        KEEP(mv.bytes);
        if (nt > 8) {
            if (w->mm[i].f64) {
                struct gemm_f64_layout g;
                gemm_f64_layout(type, rows, cols, nt, &g);
                KEEP(g.bytes);
            } else {
                struct gemm_layout g;
                gemm_layout(type, cols, nt, &g);
                KEEP(g.bytes);
            }
        }
    }
    if (w->n_heads > 0 && w->head_dim > 0) {
        struct att_layout a;
        att_layout(nt, w->n_heads, w->head_dim, w->n_slots, n_sm, &a);
        KEEP(a.bytes);
    }
    KEEP(topk_bytes(w->topk_rows, w->topk));
#undef KEEP
    return most;
}

#endif
