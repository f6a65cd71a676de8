/*
 * kernels.h — inside cpu/ only: the table of matmul kernels that each SIMD
 * level provides, the task they work on, and the row/token tiling they share.
 *
 * Quantized weights (Q8_0, Q4_0) are multiplied with activations quantized
 * to 8 bits per block of 32 (integer dot products, as llama.cpp does); float
 * weights (F32, F16, BF16) with the f32 activations themselves.
 */
#ifndef SHOAL_CPU_KERNELS_H
#define SHOAL_CPU_KERNELS_H

#include <stdint.h>

#include "cpu.h"

/* y (n, rows) = x (n, cols) W^T, for the rows [r0, r1) of W. */
struct mm_task {
    const struct shoal_weight *w;
    int n;
    const float *x;   /* (n, cols) */
    const int8_t *xq; /* (n, cols): x quantized per block of 32 (see q4_grouped) */
    const float *xd;  /* (n, cols/32): the scale of each block */
    const float *xs;  /* (n, cols/32): xd * the sum of the block's int8 values */
    const int32_t *xsum; /* (n, cols/32): the sum of the block's int8 values */
    /*
     * Q4_0 weights on levels with q4_lane_vectors: per token, for each full
     * group of four blocks, the block's offset correction (-2 * its sum) and
     * scale repeated over the four lanes its products land in:
     * (n, groups * 16).
     */
    const int32_t *xvc;
    const float *xvd;
    /*
     * For weights a level packs (packed_bytes): x by block, then token. xqt
     * (nb, n, 32): the block's 32 values; xct (nb, n): -128 x their sum;
     * xdt (nb, n): their scale.
     */
    const int8_t *xqt;
    const int32_t *xct;
    const float *xdt;
    float *y;         /* (n, rows) */
    double *yd;       /* (n, rows): the mm_f64 kernels' output */
};

typedef void (*mm_fn)(const struct mm_task *t, int64_t r0, int64_t r1);

/*
 * Query heads sharing a KV head (n_heads of them, at most ATT_HEADS) over the
 * n cached positions of their sequence: out = softmax(scale * q.k) . v for
 * each, k and v being the KV head's vectors at kc + off[p] and vc + off[p].
 * Head g's query is at q + g * head_dim, its output at out + g * head_dim,
 * its scores (room for n) at scores + g * stride; qh: n_heads * head_dim
 * floats of scratch. With round_f16 (an f16 cache), queries and softmax
 * weights are rounded to f16 first.
 */
#define ATT_HEADS 8
struct att_head_args {
    const float *q;
    const char *kc, *vc;
    const int64_t *off;
    int n, head_dim, round_f16;
    float scale;
    float *scores, *out;
    float *qh;
    int n_heads, stride;
};

/* att_head with the level's kv_dot and kv_axpy, a head at a time: scores, softmax (sum in f64),
 * weighted sum. */
void shoal_cpu_att_head(const struct att_head_args *a, float (*dot)(const float *, const void *, int),
                        void (*axpy)(float *, float, const void *, int));

struct cpu_kernels {
    const char *name;
    mm_fn mm[SHOAL_DTYPE_MAX]; /* every weight type the backend computes with */
    /*
     * The same into yd, summed in f64 from products exact in f64: a block's
     * integer dot product (or a lane's share of it) times the block's f32
     * scale dw * dx, or an f32 weight times an f32 activation. The sum then
     * hardly depends on its order, so a row-parallel split of the columns
     * over ranks gives what one rank gives.
     */
    mm_fn mm_f64[SHOAL_DTYPE_MAX];
    /*
     * Optional: a layout of the level's own for some weight types, made
     * when a weight is prepared. packed_bytes says how many bytes a weight
     * takes in it (0: the type stays in its GGUF rows, used in place; else
     * at least the rows' bytes); pack writes it, src may be dst (packed in
     * place); unpack_row gives one row back as floats, as
     * shoal_dequantize_row would give the row packed (embedding lookups).
     */
    size_t (*packed_bytes)(int type, int64_t rows, int64_t cols);
    shoal_status (*pack)(int type, int64_t rows, int64_t cols, const void *src, void *dst);
    /* rows packed together: rows [r0, r1), r0 a multiple of it, pack on their own to the
     * image's bytes from packed_bytes(r0 rows) on (so threads may pack parts) */
    int pack_rows;
    void (*unpack_row)(const struct shoal_weight *w, int64_t row, float *y);
    /*
     * For Q4_0 and Q4_1 weights, whether xq is grouped: in each full group of four
     * blocks the 64 low-half values (0..15 of blocks 0..3) come first, then
     * the 64 high-half values, matching how four blocks' nibbles unpack in
     * one 512-bit register; blocks past the last full group stay in order.
     */
    int q4_grouped;
    int q4_lane_vectors; /* wants xvc/xvd for Q4_0 (see mm_task) */
    /* quantizes one token's activations: shoal_cpu_quantize_x's contract */
    void (*quantize_x)(const float *x, int64_t cols, int8_t *q, float *d, float *s, int32_t *sum,
                       int grouped, int lanes, int offset, int32_t *vc, float *vd);
    /* attention over one cached head vector of n values, by KV type (enum
     * shoal_kv_type): q . k, and o += w * v */
    float (*kv_dot[3])(const float *q, const void *k, int n);
    void (*kv_axpy[3])(float *o, float w, const void *v, int n);
    /* optional: n floats to f16, rounded to nearest even (shoal_f32_to_f16's bits) */
    void (*to_f16)(const float *x, uint16_t *y, int n);
    /* optional, by KV type: what shoal_cpu_att_head does, in this level's own loop */
    void (*att_head[3])(const struct att_head_args *a);
};

extern const struct cpu_kernels shoal_cpu_kernels_scalar;
extern const struct cpu_kernels shoal_cpu_kernels_avx2;
extern const struct cpu_kernels shoal_cpu_kernels_avx512;

/*
 * Quantizes one token's activations into the block form of mm_task
 * (scalar; rounding half away from zero, which every level's version must
 * match); grouped as described at q4_grouped when asked; and, when lanes
 * is 4 or 8, fills vc with -offset/lanes * sum and vd with d, each repeated
 * over its block's lanes, for the full groups of four blocks.
 */
void shoal_cpu_quantize_x(const float *x, int64_t cols, int8_t *q, float *d, float *s,
                          int32_t *sum, int grouped, int lanes, int offset, int32_t *vc, float *vd);

/* Fills the lane vectors of quantize_x from the block scales and sums. */
void shoal_cpu_lane_vectors(const float *d, const int32_t *sum, int64_t nb, int lanes, int offset,
                            int32_t *vc, float *vd);

/* The portable attention helpers, for levels that leave a slot to them. */
float shoal_cpu_kv_dot_q8(const float *q, const void *k, int n);
void shoal_cpu_kv_axpy_q8(float *o, float w, const void *v, int n);

/*
 * The loop every level shares: rows in tiles small enough to stay in L1
 * while each token of the batch passes over them. dot(t, row, tok) returns
 * one output value.
 */
#define MM_ROW_TILE 8
static inline void mm_drive(const struct mm_task *t, int64_t r0, int64_t r1,
                            float (*dot)(const struct mm_task *, int64_t, int)) {
    const int64_t rows = t->w->rows;
    for (int64_t r = r0; r < r1; r += MM_ROW_TILE) {
        int64_t re = r + MM_ROW_TILE < r1 ? r + MM_ROW_TILE : r1;
        for (int tok = 0; tok < t->n; tok++)
            for (int64_t i = r; i < re; i++) t->y[(int64_t)tok * rows + i] = dot(t, i, tok);
    }
}

/* mm_TYPE for a level whose row_TYPE(t, row, tok) computes one value. */
#define MM_ROW_DRIVER(type)                                                                \
    static void mm_##type(const struct mm_task *t, int64_t r0, int64_t r1) {               \
        mm_drive(t, r0, r1, row_##type);                                                   \
    }

/* mm_drive for the f64 kernels: dot(t, row, tok) returns one f64 value. */
static inline void mm_drive_f64(const struct mm_task *t, int64_t r0, int64_t r1,
                                double (*dot)(const struct mm_task *, int64_t, int)) {
    const int64_t rows = t->w->rows;
    for (int64_t r = r0; r < r1; r += MM_ROW_TILE) {
        int64_t re = r + MM_ROW_TILE < r1 ? r + MM_ROW_TILE : r1;
        for (int tok = 0; tok < t->n; tok++)
            for (int64_t i = r; i < re; i++) t->yd[(int64_t)tok * rows + i] = dot(t, i, tok);
    }
}

#define MM_ROW_DRIVER_F64(type)                                                            \
    static void mm_f64_##type(const struct mm_task *t, int64_t r0, int64_t r1) {           \
        mm_drive_f64(t, r0, r1, row_f64_##type);                                           \
    }


#endif
