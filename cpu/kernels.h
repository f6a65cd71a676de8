/*
 * kernels.h — inside cpu/ only: the table of matmul kernels that each SIMD
 * level provides, the task they work on, the activation form each weight
 * type meets, and the row/token tiling they share.
 *
 * Quantized weights are multiplied with activations quantized to 8 bits
 * (integer dot products, as llama.cpp does): per block of 32 for the types
 * of 32-value blocks, per super-block of 256 for the k-quants and IQ4_XS;
 * F32 and F16 weights with the f32 activations themselves, BF16 weights with
 * them rounded to bf16 (to nearest even, on every level, as llama.cpp does:
 * AVX512_BF16's dot product then takes both as they are).
 */
#ifndef SHOAL_CPU_KERNELS_H
#define SHOAL_CPU_KERNELS_H

#include <stdint.h>

#include "cpu.h"

/*
 * Activation forms: what x becomes to meet a weight (ggml's vec_dot_type).
 * Which form a weight type meets is its row of shoal_cpu_xform; a matmul
 * call makes each form (in each layout asked for) once, for every weight
 * that reads the same input.
 */
enum cpu_xform {
    XFORM_F32,   /* x itself: mm_task.x */
    /* blocks of 32: xq, xd (the scale, rounded to f16), xs (xd * the sum, rounded to
     * f16) and xsum (the int sum): llama.cpp's block_q8_0 (d) and block_q8_1 (d, s) in one */
    XFORM_Q8_32,
    /* blocks of 256: xkq, xkd (an f32 scale) and xkbs (int16 sums of each 16
     * values): llama.cpp's block_q8_K (shoal_cpu_quantize_q8k) */
    XFORM_Q8_K,
    /* x rounded to bf16 (shoal_f32_to_bf16: to nearest even), xb: what BF16 weights meet */
    XFORM_BF16,
    XFORM_COUNT
};

/* The form each weight type is multiplied with, by enum shoal_dtype (those the CPU computes). */
extern const uint8_t shoal_cpu_xform[SHOAL_DTYPE_MAX];

/*
 * Layouts of the Q8_32 form that a level may want for a weight type, besides
 * the plain one (cpu_kernels.xlayout):
 * - XL_GROUPED: in each full group of four blocks of xq the 64 low-half
 *   values (0..15 of blocks 0..3) come first, then the 64 high-half values,
 *   matching how four blocks' nibbles unpack in one 512-bit register; blocks
 *   past the last full group stay in order;
 * - XL_LANES: with the lane vectors xvc, xvd (mm_task);
 * - XL_TILES: with the by-block copy for packed weights xqt, xct, xdt (mm_task).
 */
enum { XL_GROUPED = 1, XL_LANES = 2, XL_TILES = 4 };

/* y (n, rows) = x (n, cols) W^T, for the rows [r0, r1) of W. */
struct mm_task {
    const struct shoal_weight *w;
    int n;
    const float *x;   /* (n, cols) */
    /* XFORM_Q8_32 */
    const int8_t *xq; /* (n, cols): x quantized per block of 32 (or grouped: XL_GROUPED) */
    const float *xd;  /* (n, cols/32): the scale of each block */
    const float *xs;  /* (n, cols/32): xd * the sum of the block's int8 values */
    const int32_t *xsum; /* (n, cols/32): the sum of the block's int8 values */
    /*
     * XL_LANES: per token, for each full group of four blocks, the block's
     * offset correction (-2 * its sum, for Q4_0's -8) and scale repeated over
     * the four lanes its products land in: (n, groups * 16).
     */
    const int32_t *xvc;
    const float *xvd;
    /*
     * XL_TILES, for weights a level packs (packed_bytes): x by block, then
     * token. xqt (nb, n, 32): the block's 32 values; xct (nb, n): -128 x
     * their sum; xdt (nb, n): their scale.
     */
    const int8_t *xqt;
    const int32_t *xct;
    const float *xdt;
    /* XFORM_Q8_K */
    const int8_t *xkq;   /* (n, cols): x quantized per block of 256 */
    const float *xkd;    /* (n, cols/256): the scale of each block */
    const int16_t *xkbs; /* (n, cols/16): the sum of each 16 int8 values */
    /* XFORM_BF16 */
    const uint16_t *xb;  /* (n, cols): x rounded to bf16 */
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
    /* a token's results are the same bits whatever else its batch holds (scalar,
     * AVX-512; not AVX2, whose tiles sum in an order that depends on the batch): the
     * backend then cuts steps into lanes (shoal_backend_run_lanes) */
    int batch_invariant;
    /*
     * By weight type: the scalar level has every type the backend computes
     * with; another level's empty slot falls back to the scalar kernel (and
     * the activations' plain layout), type by type.
     */
    mm_fn mm[SHOAL_DTYPE_MAX];
    /*
     * The same into yd, summed in f64 from products exact in f64: a block's
     * integer dot product (or a lane's share of it) times the block's f32
     * scale dw * dx, or an f32 weight times an f32 activation (the Q8_K
     * types: two products per super-block, kernels_scalar.c says why). The
     * sum then hardly depends on its order, so a row-parallel split of the
     * columns over ranks gives what one rank gives.
     */
    mm_fn mm_f64[SHOAL_DTYPE_MAX];
    /* by weight type, the Q8_32 layouts (XL_*) its kernels here read; 0: the plain one */
    uint8_t xlayout[SHOAL_DTYPE_MAX];
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
    /* quantizes one token's activations to the Q8_32 form: shoal_cpu_quantize_x's contract */
    void (*quantize_x)(const float *x, int64_t cols, int8_t *q, float *d, float *s, int32_t *sum,
                       int grouped, int lanes, int offset, int32_t *vc, float *vd);
    /* optional: one token's activations to the Q8_K form, shoal_cpu_quantize_q8k's bytes */
    void (*quantize_q8k)(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums);
    /* attention over one cached head vector of n values, by KV type (enum
     * shoal_kv_type): q . k, and o += w * v */
    float (*kv_dot[3])(const float *q, const void *k, int n);
    void (*kv_axpy[3])(float *o, float w, const void *v, int n);
    /* optional: n floats to f16, rounded to nearest even (shoal_f32_to_f16's bits) */
    void (*to_f16)(const float *x, uint16_t *y, int n);
    /* optional, by KV type: what shoal_cpu_att_head does, in this level's own loop */
    void (*att_head[3])(const struct att_head_args *a);
    /* optional: g[i] = g[i] / (1 + e^-g[i]) * u[i] for n values, within 2 ulps of expf's */
    void (*silu_mul)(float *g, const float *u, long long n);
    /* optional: g = gelu(g) * u, GELU's tanh form as g / (1 + e^(-2 c g (1 + a g^2))) (the
     * scalar form: gelu_mul_range in backend_cpu.c) */
    void (*gelu_mul)(float *g, const float *u, long long n);
};

extern const struct cpu_kernels shoal_cpu_kernels_scalar;
extern const struct cpu_kernels shoal_cpu_kernels_avx2;
extern const struct cpu_kernels shoal_cpu_kernels_avx512;

/* Whether the AVX-512 level's BF16 kernels use AVX512_BF16 where the processor has it (the
 * default); 0: the widening kernels, as on processors without it (for tests). */
void shoal_cpu_avx512_set_bf16(int on);

/*
 * Quantizes one token's activations to the Q8_32 form of mm_task
 * (scalar; x * 127 / amax rounded half to even, which every level's version
 * must match); grouped as described at XL_GROUPED when asked; and, when lanes
 * is 4 or 8, fills vc with -offset/lanes * sum and vd with d, each repeated
 * over its block's lanes, for the full groups of four blocks.
 */
void shoal_cpu_quantize_x(const float *x, int64_t cols, int8_t *q, float *d, float *s,
                          int32_t *sum, int grouped, int lanes, int offset, int32_t *vc, float *vd);

/*
 * Quantizes one token's activations (cols a multiple of 256) to the Q8_K
 * form, as llama.cpp's quantize_row_q8_K_ref: per block the value of
 * largest magnitude, max (the first such), gives iscale = -127 / max; q =
 * iscale * x rounded to nearest even, at most 127; d = 1 / iscale; bsums the
 * sums of each 16 q. A block of zeros gives d = 0 and zeros.
 */
void shoal_cpu_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums);

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

/*
 * The super-block types' kernels (Q2_K..Q6_K, IQ4_XS: the Q8_K form) of the
 * SIMD levels, in files of their own (kernels_avx512_kq.c,
 * kernels_avx2_kq.c) and listed in their level's table: mm and mm_f64;
 * and the AVX-512 level's packed layouts of these types (cpu_kernels'
 * packed_bytes, pack and unpack_row for them; kernels_avx512_kq.c).
 */
#define KQ_DECLARE(level, type)                                                            \
    void shoal_cpu_##level##_mm_##type(const struct mm_task *t, int64_t r0, int64_t r1);   \
    void shoal_cpu_##level##_mm_f64_##type(const struct mm_task *t, int64_t r0, int64_t r1);
#define KQ_DECLARE_ALL(level)                                                              \
    KQ_DECLARE(level, q2_k) KQ_DECLARE(level, q3_k) KQ_DECLARE(level, q4_k)                \
    KQ_DECLARE(level, q5_k) KQ_DECLARE(level, q6_k) KQ_DECLARE(level, iq4_xs)
KQ_DECLARE_ALL(avx2)
KQ_DECLARE(avx512, q2_kp) KQ_DECLARE(avx512, q3_kp) /* packed at load */
KQ_DECLARE(avx512, q4_kp) KQ_DECLARE(avx512, q5_kp) KQ_DECLARE(avx512, q6_kp) KQ_DECLARE(avx512, iq4_xsp)
/* shoal_cpu_quantize_q8k's bytes, in SIMD */
void shoal_cpu_avx512_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums);
void shoal_cpu_avx2_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums);
size_t shoal_cpu_avx512_kq_packed_bytes(int type, int64_t rows, int64_t cols);
shoal_status shoal_cpu_avx512_kq_pack(int type, int64_t rows, int64_t cols, const void *src, void *dst);
void shoal_cpu_avx512_kq_unpack_row(const struct shoal_weight *w, int64_t row, float *y);
#undef KQ_DECLARE_ALL
#undef KQ_DECLARE

#endif
