/*
 * kernels_avx512.c — matmul kernels for x86-64 processors with AVX-512
 * F/BW/VL/DQ and VNNI (Ice Lake, Sapphire Rapids, Zen 4/5). Compiled with
 * those instructions enabled and only called after the processor says it
 * has them.
 *
 * The quantized types of 32-value blocks (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1,
 * IQ4_NL) are packed at load, 16 rows interleaved, so that VNNI's vpdpbusd
 * (unsigned by signed bytes, each four summed into an int32 lane) multiplies
 * four bytes of a token's activations, broadcast, with four bytes of 16
 * rows: one lane per row, nothing to sum across lanes, and a block of
 * weights unpacked once for a tile of up to 8 tokens. The codes meet the
 * unsigned side (Q8_0's +128, Q4_0's 0..15, ...), the offsets taken off
 * with the block sums of x. The super-block types (K-quants, IQ4_XS) are in
 * kernels_avx512_kq.c, which packs four of them at load the same way.
 */
#include <immintrin.h>
#include <math.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

static float dot_f32(const float *a, const float *b, int n) {
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i + 16), _mm512_loadu_ps(b + i + 16), acc1);
    }
    if (i + 16 <= n) {
        acc0 = _mm512_fmadd_ps(_mm512_loadu_ps(a + i), _mm512_loadu_ps(b + i), acc0);
        i += 16;
    }
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc1 = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, a + i), _mm512_maskz_loadu_ps(m, b + i), acc1);
    }
    return _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
}

static inline const void *row_ptr(const struct mm_task *t, int64_t r) {
    return (const char *)t->w->data + (size_t)r * t->w->row_bytes;
}

static float row_f32(const struct mm_task *t, int64_t r, int tok) {
    return dot_f32(row_ptr(t, r), t->x + tok * t->w->cols, (int)t->w->cols);
}

static inline __m512 f16x16(const uint16_t *p) {
    return _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)p));
}

static inline __m512 bf16x16(const uint16_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

/*
 * 16-bit float weights (F16, BF16: bf set) times f32 x, in tiles of up to
 * HT_ROWS rows x HT_TOKS tokens: each 16-value piece of the tile's rows is
 * widened once and met by every token of the tile (a prompt's tokens then
 * cost FMAs, not conversions and loads). Every output is two f32
 * accumulators over its row's pieces in order, even and odd (the last piece
 * masked, zeros past the row's end), added and summed across the vector at
 * the end: the same bits whatever tile, batch or thread the output falls in,
 * so the level stays batch-invariant. Rows go in chunks of HT_CHUNK, which
 * stay in L2 while every token passes over them.
 */
#define HT_ROWS 4
#define HT_TOKS 3
#define HT_CHUNK 32

/*
 * 16 values of x (k: those present, zeros past them) as they meet the
 * weight: for BF16 weights rounded to bf16 (to nearest even; a NaN stays a
 * NaN), as every level and llama.cpp do.
 */
static inline __attribute__((always_inline)) __m512 x16(const float *p, __mmask16 k, int bf) {
    const __m512 v = _mm512_maskz_loadu_ps(k, p);
    if (!bf) return v;
    const __m512i u = _mm512_castps_si512(v), hi = _mm512_set1_epi32((int)0xffff0000u);
    const __m512i lsb = _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1));
    const __m512i r = _mm512_and_si512(_mm512_add_epi32(u, _mm512_add_epi32(lsb, _mm512_set1_epi32(0x7fff))), hi);
    const __m512i nan = _mm512_and_si512(_mm512_or_si512(u, _mm512_set1_epi32(0x400000)), hi);
    return _mm512_castsi512_ps(_mm512_mask_blend_epi32(_mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q), r, nan));
}

/* A tile's row pointers (nr rows from r) and token pointers into x (nt tokens from tok). */
static inline __attribute__((always_inline)) void tile_ptrs(const struct mm_task *t, int64_t r, int tok, int nr,
                                                            int nt, const uint16_t **w, const float **x) {
    for (int m = 0; m < nr; m++) w[m] = row_ptr(t, r + m);
    for (int j = 0; j < nt; j++) x[j] = t->x + (int64_t)(tok + j) * t->w->cols;
}

static inline __attribute__((always_inline)) __m512 half16(const uint16_t *p, __mmask16 k, int bf) {
    const __m256i h = _mm256_maskz_loadu_epi16(k, p);
    if (bf) return _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(h), 16));
    return _mm512_cvtph_ps(h);
}

/*
 * The tile's accumulators are named variables (aMJ, bMJ: row M, token J), not
 * an array: GCC kept an array of them in memory as well, storing every one on
 * every piece. Those past nr and nt are never used and vanish. Each output
 * has two, a for the even pieces and b for the odd ones, so that a row read
 * alone (decoding) runs two FMA chains, not one: one chain's latency held a
 * thread to 28 GB/s.
 */
#define HT_EACH_TOKEN(X, m) X(m, 0) X(m, 1) X(m, 2)
#define HT_EACH(X) HT_EACH_TOKEN(X, 0) HT_EACH_TOKEN(X, 1) HT_EACH_TOKEN(X, 2) HT_EACH_TOKEN(X, 3)
#define HT_DECL(m, j) __m512 a##m##j = _mm512_setzero_ps(), b##m##j = _mm512_setzero_ps();
#define HT_OUT(m, j)                                                                             \
    if (m < nr && j < nt)                                                                        \
        t->y[(int64_t)(tok + j) * rows + r + m] = _mm512_reduce_add_ps(_mm512_add_ps(a##m##j, b##m##j));
#define HT_FMA(m, j, A) if (m < nr) A##m##j = _mm512_fmadd_ps(w##m, xv, A##m##j);
#define HT_TOKEN(j, A, o)                                                                        \
    if (j < nt) {                                                                                \
        const __m512 xv = x16(x[j] + (o), k, bf);                                                \
        HT_FMA(0, j, A) HT_FMA(1, j, A) HT_FMA(2, j, A) HT_FMA(3, j, A)                          \
    }
#define HT_W(m, o) const __m512 w##m = m < nr ? half16(wr[m] + (o), k, bf) : _mm512_setzero_ps();
/* the 16-value piece at column o (k: the values present) into the accumulators A */
#define HT_PIECE(o, A)                                                                           \
    do {                                                                                         \
        HT_W(0, o) HT_W(1, o) HT_W(2, o) HT_W(3, o)                                              \
        HT_TOKEN(0, A, o) HT_TOKEN(1, A, o) HT_TOKEN(2, A, o)                                    \
    } while (0)
/* columns [i, end) (a whole number of pieces but the last), even pieces into a, odd into b */
#define HT_SPAN(end)                                                                             \
    do {                                                                                         \
        const int64_t e_ = (end);                                                                \
        for (; i + 32 <= e_; i += 32) {                                                          \
            const __mmask16 k = 0xffff;                                                          \
            HT_PIECE(i, a);                                                                      \
            HT_PIECE(i + 16, b);                                                                 \
        }                                                                                        \
        int odd_ = 0;                                                                            \
        if (i + 16 <= e_) {                                                                      \
            const __mmask16 k = 0xffff;                                                          \
            HT_PIECE(i, a);                                                                      \
            i += 16, odd_ = 1;                                                                   \
        }                                                                                        \
        if (i < e_) { /* the last piece: zeros past the end */                                   \
            const __mmask16 k = (__mmask16)((1u << (e_ - i)) - 1);                              \
            if (odd_) HT_PIECE(i, b);                                                            \
            else HT_PIECE(i, a);                                                                 \
            i = e_;                                                                              \
        }                                                                                        \
    } while (0)

static inline __attribute__((always_inline)) void half_tile(const struct mm_task *t, int64_t r, int tok,
                                                            const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows;
    const uint16_t *wr[HT_ROWS] = { 0 };
    const float *x[HT_TOKS] = { 0 };
    tile_ptrs(t, r, tok, nr, nt, wr, x);
    HT_EACH(HT_DECL)
    int64_t i = 0;
    HT_SPAN(n);
    HT_EACH(HT_OUT)
}

/*
 * name_NR_V: fn, a tile of 3 tokens at most (HT_TOKS, H64_TOKS), with its rows
 * (nr), its tokens (1, 2 or 3) and v (bf) constants: the compiler keeps the
 * tile in registers.
 */
#define TILE3_ROWS_OF(name, fn, nr, v)                                                           \
    static void name##_##nr##_##v(const struct mm_task *t, int64_t r, int tok, int nt) {         \
        if (nt == 1) fn(t, r, tok, nr, 1, v);                                                    \
        else if (nt == 2) fn(t, r, tok, nr, 2, v);                                               \
        else fn(t, r, tok, nr, 3, v);                                                            \
    }
TILE3_ROWS_OF(half_tile, half_tile, 1, 0) TILE3_ROWS_OF(half_tile, half_tile, 4, 0)
TILE3_ROWS_OF(half_tile, half_tile, 1, 1) TILE3_ROWS_OF(half_tile, half_tile, 4, 1)

/*
 * The tiles' loop: rows in chunks of HT_CHUNK, tokens in tiles of toks, the
 * chunk's rows in tiles of rows (tile_n: an n-row tile; tile1: one row). A
 * token or two (decoding) go a row at a time: one row's stream read at a
 * time reads faster here than several interleaved.
 */
static inline void mm_half(const struct mm_task *t, int64_t r0, int64_t r1, int rows, int toks,
                           void (*tile_n)(const struct mm_task *, int64_t, int, int),
                           void (*tile1)(const struct mm_task *, int64_t, int, int)) {
    for (int64_t r = r0; r < r1; r += HT_CHUNK) {
        const int64_t re = r + HT_CHUNK < r1 ? r + HT_CHUNK : r1;
        for (int tok = 0; tok < t->n; tok += toks) {
            const int nt = t->n - tok < toks ? t->n - tok : toks;
            int64_t i = r;
            if (t->n > 2)
                for (; i + rows <= re; i += rows) tile_n(t, i, tok, nt);
            for (; i < re; i++) tile1(t, i, tok, nt);
        }
    }
}

static void mm_f16(const struct mm_task *t, int64_t r0, int64_t r1) {
    mm_half(t, r0, r1, HT_ROWS, HT_TOKS, half_tile_4_0, half_tile_1_0);
}

/*
 * The same into yd, in f64 (mm_f64's contract): each 16-value piece widened
 * to f32 and then to two f64 halves, whose products are exact; every output
 * two f64 accumulators (the pieces' low and high halves) over its row's
 * pieces in order, added and summed across the vector at the end. Tiles of
 * H64_ROWS x H64_TOKS (two accumulators an output).
 */
#define H64_ROWS 3
#define H64_TOKS 3
_Static_assert(HT_TOKS == 3 && H64_TOKS == 3, "TILE3_ROWS_OF instantiates tiles of up to 3 tokens");

/* Named accumulators again (as HT_*): lMJ and hMJ, the low and high halves' of row M, token J. */
#define H64_EACH_TOKEN(X, m) X(m, 0) X(m, 1) X(m, 2)
#define H64_EACH(X) H64_EACH_TOKEN(X, 0) H64_EACH_TOKEN(X, 1) H64_EACH_TOKEN(X, 2)
#define H64_DECL(m, j) __m512d l##m##j = _mm512_setzero_pd(), h##m##j = _mm512_setzero_pd();
#define H64_OUT(m, j)                                                                            \
    if (m < nr && j < nt)                                                                        \
        t->yd[(int64_t)(tok + j) * rows + r + m] = _mm512_reduce_add_pd(_mm512_add_pd(l##m##j, h##m##j));
#define H64_FMA(m, j)                                                                            \
    if (m < nr) {                                                                                \
        l##m##j = _mm512_fmadd_pd(wl##m, xl, l##m##j);                                          \
        h##m##j = _mm512_fmadd_pd(wh##m, xh, h##m##j);                                          \
    }
#define H64_TOKEN(j)                                                                             \
    if (j < nt) {                                                                                \
        const __m512 xv = x16(x[j] + i, k, bf);                                                  \
        const __m512d xl = _mm512_cvtps_pd(_mm512_castps512_ps256(xv));                          \
        const __m512d xh = _mm512_cvtps_pd(_mm512_extractf32x8_ps(xv, 1));                       \
        H64_FMA(0, j) H64_FMA(1, j) H64_FMA(2, j)                                                \
    }
#define H64_W(m)                                                                                 \
    const __m512 w##m = m < nr ? half16(wr[m] + i, k, bf) : _mm512_setzero_ps();                \
    const __m512d wl##m = _mm512_cvtps_pd(_mm512_castps512_ps256(w##m));                         \
    const __m512d wh##m = _mm512_cvtps_pd(_mm512_extractf32x8_ps(w##m, 1));

static inline __attribute__((always_inline)) void half_tile_f64(const struct mm_task *t, int64_t r, int tok,
                                                                const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows;
    const uint16_t *wr[H64_ROWS] = { 0 };
    const float *x[H64_TOKS] = { 0 };
    tile_ptrs(t, r, tok, nr, nt, wr, x);
    H64_EACH(H64_DECL)
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        const __mmask16 k = 0xffff;
        H64_W(0) H64_W(1) H64_W(2)
        H64_TOKEN(0) H64_TOKEN(1) H64_TOKEN(2)
    }
    if (i < n) {
        const __mmask16 k = (__mmask16)((1u << (n - i)) - 1);
        H64_W(0) H64_W(1) H64_W(2)
        H64_TOKEN(0) H64_TOKEN(1) H64_TOKEN(2)
    }
    H64_EACH(H64_OUT)
}

TILE3_ROWS_OF(half_tile_f64, half_tile_f64, 1, 0) TILE3_ROWS_OF(half_tile_f64, half_tile_f64, 3, 0)
TILE3_ROWS_OF(half_tile_f64, half_tile_f64, 1, 1) TILE3_ROWS_OF(half_tile_f64, half_tile_f64, 3, 1)

/*
 * The same where the weight has f64 runs (shoal_weight.f64_block): the f32
 * tile of mm_f16 over each run of columns, its lanes then widened and added
 * to the output's f64 lane sums (in memory: touched once a run), which are
 * summed across at the end. A run's f32 lanes depend on its values alone, so
 * ranks that cut the columns on runs add what one rank adds; the products
 * cost what mm_f16's do, not the f64 tile's twice as many FMAs and widening
 * of every value.
 */
/*
 * A tile's f64 lane sums in memory (sums: its outputs', toks_ tokens a row):
 * RUN_FLUSH adds an output's run (T_ACC, which the tile defines: its
 * accumulators' sum) and zeroes its accumulators (T_ZERO); RUN_OUT64 writes
 * the output, summed across.
 */
#define RUN_FLUSH(m, j)                                                                          \
    if (m < nr && j < nt) {                                                                      \
        double *s_ = sums + (m * toks_ + j) * 16;                                               \
        const __m512 v_ = T_ACC(m, j);                                                           \
        _mm512_storeu_pd(s_, _mm512_add_pd(_mm512_loadu_pd(s_), _mm512_cvtps_pd(_mm512_castps512_ps256(v_)))); \
        _mm512_storeu_pd(s_ + 8, _mm512_add_pd(_mm512_loadu_pd(s_ + 8), _mm512_cvtps_pd(_mm512_extractf32x8_ps(v_, 1)))); \
        T_ZERO(m, j);                                                                            \
    }
#define RUN_OUT64(m, j)                                                                          \
    if (m < nr && j < nt) {                                                                      \
        const double *s_ = sums + (m * toks_ + j) * 16;                                         \
        t->yd[(int64_t)(tok + j) * rows + r + m] =                                               \
            _mm512_reduce_add_pd(_mm512_add_pd(_mm512_loadu_pd(s_), _mm512_loadu_pd(s_ + 8))); \
    }
#define T_ACC(m, j) _mm512_add_ps(a##m##j, b##m##j)
#define T_ZERO(m, j) a##m##j = b##m##j = _mm512_setzero_ps()

static inline __attribute__((always_inline)) void half_tile_runs(const struct mm_task *t, int64_t r, int tok,
                                                                 const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows, run = t->w->f64_block;
    const int toks_ = HT_TOKS;
    const uint16_t *wr[HT_ROWS] = { 0 };
    const float *x[HT_TOKS] = { 0 };
    double sums[HT_ROWS * HT_TOKS * 16];
    tile_ptrs(t, r, tok, nr, nt, wr, x);
    for (int k = 0; k < nr * HT_TOKS * 16; k++) sums[k] = 0;
    HT_EACH(HT_DECL)
    for (int64_t i = 0; i < n;) {
        HT_SPAN(i + run < n ? i + run : n);
        HT_EACH(RUN_FLUSH)
    }
    HT_EACH(RUN_OUT64)
}
#undef T_ACC
#undef T_ZERO

TILE3_ROWS_OF(half_runs, half_tile_runs, 1, 0) TILE3_ROWS_OF(half_runs, half_tile_runs, 4, 0)
TILE3_ROWS_OF(half_runs, half_tile_runs, 1, 1) TILE3_ROWS_OF(half_runs, half_tile_runs, 4, 1)

/*
 * BF16 weights on processors with AVX512_BF16 (Zen 4 and later, Cooper Lake,
 * Sapphire Rapids): vdpbf16ps multiplies 32 bf16 weights by 32 bf16 values
 * of x (XFORM_BF16: rounded to nearest even once for every matmul that reads
 * it) and adds each lane's two products, exact in f32, to one of 16
 * f32 lanes: half the instructions of the widening path, and no widening of
 * the weights. Tiles of 4 rows x BT_TOKS tokens, one accumulator an output
 * over its row's 32-value pieces in order, the last one masked (a row alone,
 * decoding, then reads 64 bytes a dot product's latency: enough). (The
 * instruction treats denormal inputs as zeros: within a processor every
 * token's outputs go the same way.)
 */
static _Atomic int use_bf16 = -1; /* -1: not yet asked (the pool's threads may ask at once) */

void shoal_cpu_avx512_set_bf16(int on) {
    __builtin_cpu_init();
    atomic_store_explicit(&use_bf16, on && __builtin_cpu_supports("avx512bf16"), memory_order_relaxed);
}

static inline int has_bf16(void) {
    int on = atomic_load_explicit(&use_bf16, memory_order_relaxed);
    if (on < 0) { /* the same answer whichever thread asks first */
        shoal_cpu_avx512_set_bf16(1);
        on = atomic_load_explicit(&use_bf16, memory_order_relaxed);
    }
    return on;
}

#define BT_TOKS 6
#define BT_EACH_TOKEN(X, m) X(m, 0) X(m, 1) X(m, 2) X(m, 3) X(m, 4) X(m, 5)
#define BT_EACH(X) BT_EACH_TOKEN(X, 0) BT_EACH_TOKEN(X, 1) BT_EACH_TOKEN(X, 2) BT_EACH_TOKEN(X, 3)
#define BT_DECL(m, j) __m512 a##m##j = _mm512_setzero_ps();
#define BT_OUT(m, j) \
    if (m < nr && j < nt) t->y[(int64_t)(tok + j) * rows + r + m] = _mm512_reduce_add_ps(a##m##j);
#define T_ACC(m, j) a##m##j
#define T_ZERO(m, j) a##m##j = _mm512_setzero_ps()
#define BT_DOT(m, j) if (m < nr) a##m##j = _mm512_dpbf16_ps(a##m##j, w##m, xv);
#define BT_TOKEN(j, o)                                                                           \
    if (j < nt) {                                                                                \
        const __m512bh xv = (__m512bh)_mm512_maskz_loadu_epi16(k, x[j] + (o));                   \
        BT_DOT(0, j) BT_DOT(1, j) BT_DOT(2, j) BT_DOT(3, j)                                      \
    }
#define BT_W(m, o)                                                                               \
    const __m512bh w##m = (__m512bh)(m < nr ? _mm512_maskz_loadu_epi16(k, wr[m] + (o)) : _mm512_setzero_si512());
#define BT_PIECE(o)                                                                              \
    do {                                                                                         \
        BT_W(0, o) BT_W(1, o) BT_W(2, o) BT_W(3, o)                                              \
        BT_TOKEN(0, o) BT_TOKEN(1, o) BT_TOKEN(2, o) BT_TOKEN(3, o) BT_TOKEN(4, o) BT_TOKEN(5, o) \
    } while (0)
/* columns [i, end) in 32-value pieces, the last one masked */
#define BT_SPAN(end)                                                                             \
    do {                                                                                         \
        const int64_t e_ = (end);                                                                \
        for (; i + 32 <= e_; i += 32) {                                                          \
            const __mmask32 k = 0xffffffffu;                                                     \
            BT_PIECE(i);                                                                         \
        }                                                                                        \
        if (i < e_) {                                                                            \
            const __mmask32 k = (__mmask32)((1ull << (e_ - i)) - 1);                             \
            BT_PIECE(i);                                                                         \
            i = e_;                                                                              \
        }                                                                                        \
    } while (0)

static inline __attribute__((always_inline)) void bf16_tile(const struct mm_task *t, int64_t r, int tok,
                                                            const int nr, const int nt, const int runs) {
    const int64_t n = t->w->cols, rows = t->w->rows, run = runs ? t->w->f64_block : n;
    const int toks_ = BT_TOKS;
    const uint16_t *wr[HT_ROWS] = { 0 }, *x[BT_TOKS] = { 0 };
    double sums[HT_ROWS * BT_TOKS * 16];
    for (int m = 0; m < nr; m++) wr[m] = row_ptr(t, r + m);
    for (int j = 0; j < nt; j++) x[j] = t->xb + (int64_t)(tok + j) * n; /* XFORM_BF16 */
    BT_EACH(BT_DECL)
    if (!runs) {
        int64_t i = 0;
        BT_SPAN(n);
        BT_EACH(BT_OUT)
        return;
    }
    for (int k = 0; k < nr * BT_TOKS * 16; k++) sums[k] = 0;
    for (int64_t i = 0; i < n;) {
        BT_SPAN(i + run < n ? i + run : n);
        BT_EACH(RUN_FLUSH)
    }
    BT_EACH(RUN_OUT64)
}
#undef T_ACC
#undef T_ZERO

#define BT_CASE(nr, j, runs) case j: bf16_tile(t, r, tok, nr, j, runs); break;
#define BT_ROWS_OF(nr, runs)                                                                    \
    static void bf16_tile_##nr##_##runs(const struct mm_task *t, int64_t r, int tok, int nt) {  \
        switch (nt) { BT_CASE(nr, 1, runs) BT_CASE(nr, 2, runs) BT_CASE(nr, 3, runs)            \
                      BT_CASE(nr, 4, runs) BT_CASE(nr, 5, runs)                                  \
                      default: bf16_tile(t, r, tok, nr, BT_TOKS, runs); }                        \
    }

BT_ROWS_OF(1, 0) BT_ROWS_OF(4, 0) BT_ROWS_OF(1, 1) BT_ROWS_OF(4, 1)

static void mm_bf16(const struct mm_task *t, int64_t r0, int64_t r1) {
    if (has_bf16()) mm_half(t, r0, r1, HT_ROWS, BT_TOKS, bf16_tile_4_0, bf16_tile_1_0);
    else mm_half(t, r0, r1, HT_ROWS, HT_TOKS, half_tile_4_1, half_tile_1_1);
}

static void mm_f64_f16(const struct mm_task *t, int64_t r0, int64_t r1) {
    if (t->w->f64_block) mm_half(t, r0, r1, HT_ROWS, HT_TOKS, half_runs_4_0, half_runs_1_0);
    else mm_half(t, r0, r1, H64_ROWS, H64_TOKS, half_tile_f64_3_0, half_tile_f64_1_0);
}
static void mm_f64_bf16(const struct mm_task *t, int64_t r0, int64_t r1) {
    if (t->w->f64_block && has_bf16()) mm_half(t, r0, r1, HT_ROWS, BT_TOKS, bf16_tile_4_1, bf16_tile_1_1);
    else if (t->w->f64_block) mm_half(t, r0, r1, HT_ROWS, HT_TOKS, half_runs_4_1, half_runs_1_1);
    else mm_half(t, r0, r1, H64_ROWS, H64_TOKS, half_tile_f64_3_1, half_tile_f64_1_1);
}

/* The f64 sums of f32 products (exact in f64) of 16-value pieces of a row. */
static inline double row_f64_any(const struct mm_task *t, int64_t r, int tok,
                                 __m512 (*load16)(const float *, const void *, int64_t),
                                 float (*one)(const void *, int64_t)) {
    const int64_t n = t->w->cols;
    const void *w = row_ptr(t, r);
    const float *x = t->x + tok * n;
    __m512d acc0 = _mm512_setzero_pd(), acc1 = _mm512_setzero_pd();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        __m512 wv = load16(NULL, w, i), xv = _mm512_loadu_ps(x + i);
        acc0 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_castps512_ps256(wv)),
                               _mm512_cvtps_pd(_mm512_castps512_ps256(xv)), acc0);
        acc1 = _mm512_fmadd_pd(_mm512_cvtps_pd(_mm512_extractf32x8_ps(wv, 1)),
                               _mm512_cvtps_pd(_mm512_extractf32x8_ps(xv, 1)), acc1);
    }
    double s = _mm512_reduce_add_pd(_mm512_add_pd(acc0, acc1));
    for (; i < n; i++) s += (double)one(w, i) * x[i];
    return s;
}

static __m512 load16_f32(const float *unused, const void *w, int64_t i) {
    return _mm512_loadu_ps((const float *)w + i);
}
static float one_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }

static double row_f64_f32(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_any(t, r, tok, load16_f32, one_f32);
}

#define INLINE static inline __attribute__((always_inline))

/*
 * Q8_0 is packed at load (pack_q8 below): rows in groups of 16, each block
 * of the group stored as eight 64-byte vectors, vector k holding bytes
 * 4k..4k+3 of the block for each of the 16 rows (+128, so unsigned), and
 * the 16 rows' f16 scales beside. One VNNI vpdpbusd then multiplies four
 * bytes of a token's activations, broadcast, with four bytes of 16 rows:
 * eight of them make 16 rows' block dot products, one per int32 lane, with
 * nothing to spread or sum across lanes. The accumulator starts at -128
 * times the block's sum of x (the +128 taken back), so each lane is exact;
 * then, per block, to float and times dw * dx into the row's f32 sum (or
 * into its f64 sum, exact: mm_f64). Every row's arithmetic is the same
 * whatever the number of tokens and however rows are split over threads
 * or ranks, so one token and a batch give the same bits.
 *
 * Within a group, blocks go in pairs: the quants of blocks 2p and 2p+1
 * (512 bytes each), then their scales (32 bytes each): 17 whole cache
 * lines, so the vectors stay 64-byte aligned and one stream per thread
 * reads a group. An odd last block has its quants then its scales. The
 * last group is padded with zero rows (scale 0).
 */
#define PG 16 /* rows per group */
#define PB 544 /* bytes of one block of a group: 16 x (32 quants + 2 scale bytes) */
#define PT 8  /* most tokens per tile */
#define PT64 8 /* the f64 sums' (6 before: 8 tokens, as a lane of 16 streams holds, ran 6 + 2, 10% slower) */

static size_t q8_packed_bytes(int64_t rows, int64_t cols) {
    return (size_t)((rows + PG - 1) / PG) * (size_t)(cols / SHOAL_QK) * PB;
}

/* Where block b's quants and scales are in a group of nb blocks. */
INLINE const uint8_t *q8p_quants(const uint8_t *g, int64_t b) { return g + (b >> 1) * 2 * PB + (b & 1) * 512; }
INLINE int64_t q8p_scale_off(int64_t b, int64_t nb) {
    return (b >> 1) * 2 * PB + ((b | 1) < nb ? 1024 + (b & 1) * 32 : 512);
}

/* Group by group; a group's image takes the place of its 16 rows (or more), so
 * packing in place reads each group's rows aside first. */
static shoal_status pack_q8(int64_t rows, int64_t cols, const void *src, void *dst) {
    const int64_t nb = cols / SHOAL_QK, ng = (rows + PG - 1) / PG;
    const size_t rb = (size_t)nb * sizeof(struct shoal_block_q8_0);
    struct shoal_block_q8_0 *w = malloc(PG * rb);
    if (!w) return shoal_errorf(SHOAL_NOMEM, "out of memory packing a q8_0 weight");
    for (int64_t g = 0; g < ng; g++) {
        const int64_t n = rows - g * PG < PG ? rows - g * PG : PG;
        memcpy(w, (const char *)src + (size_t)(g * PG) * rb, (size_t)n * rb);
        uint8_t *gp = (uint8_t *)dst + (size_t)(g * nb) * PB;
        for (int64_t b = 0; b < nb; b++) {
            uint8_t *q = (uint8_t *)q8p_quants(gp, b);
            uint16_t d[PG];
            for (int r = 0; r < PG; r++) {
                const struct shoal_block_q8_0 *blk = r < n ? &w[r * nb + b] : NULL;
                d[r] = blk ? blk->d : 0;
                for (int e = 0; e < SHOAL_QK; e++)
                    q[(e / 4) * 64 + r * 4 + e % 4] = (uint8_t)((blk ? blk->qs[e] : 0) ^ 0x80);
            }
            memcpy(gp + q8p_scale_off(b, nb), d, sizeof d);
        }
    }
    free(w);
    return SHOAL_OK;
}

/* Row r of a packed weight as floats: what shoal_dequantize_row gives of the row it came from. */
static void unpack_q8_row(const struct shoal_weight *w, int64_t r, float *y) {
    const int64_t nb = w->cols / SHOAL_QK;
    const uint8_t *gp = (const uint8_t *)w->data + (size_t)(r / PG * nb) * PB;
    const int lane = (int)(r % PG);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *q = q8p_quants(gp, b);
        uint16_t h;
        memcpy(&h, gp + q8p_scale_off(b, nb) + 2 * lane, 2);
        float d = shoal_f16_to_f32(h);
        for (int e = 0; e < SHOAL_QK; e++)
            y[b * SHOAL_QK + e] = d * (float)(int8_t)(q[(e / 4) * 64 + lane * 4 + e % 4] ^ 0x80);
    }
}


/* bytes ahead that a group's first tile fetches the weights from memory: two pages, as
 * kernels_avx512_kq.c does (measured: Q5_0 and Q5_1 decoded at 44 GB/s without, 67 with; the
 * others 60-64 and 67-69) */
#define PACKED_AHEAD 8192

/*
 * One group of 16 rows x NT tokens from t0: f32 sums into y, or (EXACT) f64
 * sums into yd, for the rows of the group that mask says.
 */
INLINE void q8p_tile(const struct mm_task *t, const uint8_t *gp, const uint8_t *next, int64_t row0,
                     __mmask16 mask, int t0, const int NT, const int EXACT) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK, rows = t->w->rows;
    __m512 acc[PT];
    __m512d lo[PT], hi[PT]; /* EXACT */
    for (int j = 0; j < NT; j++) {
        if (EXACT) lo[j] = hi[j] = _mm512_setzero_pd();
        else acc[j] = _mm512_setzero_ps();
    }
    const int8_t *xq = t->xqt + (int64_t)t0 * SHOAL_QK; /* block b, token t0 + j: + (b * n + j) * 32 */
    const int32_t *xc = t->xct + t0;
    const float *xd = t->xdt + t0;
    for (int64_t b = 0; b < nb; b++, xq += t->n * SHOAL_QK, xc += t->n, xd += t->n) {
        const uint8_t *q = q8p_quants(gp, b);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(gp + q8p_scale_off(b, nb))));
        if (next) /* the next group's block, read from memory while this tile computes */
            for (int l = 0; l < PB; l += 64) _mm_prefetch((const char *)next + b * PB + l, _MM_HINT_T0);
        else /* the first tile: the weights PACKED_AHEAD bytes on, as p32_tile does */
            for (int l = 0; l < PB; l += 64) _mm_prefetch((const char *)gp + b * PB + PACKED_AHEAD + l, _MM_HINT_T0);
        __m512i p[PT];
        for (int j = 0; j < NT; j++) p[j] = _mm512_set1_epi32(xc[j]);
        /* the tokens' sums side by side, so that no product waits on the one before */
        for (int k = 0; k < 8; k++) {
            const __m512i wv = _mm512_loadu_si512((const void *)(q + 64 * k)); /* aligned but for odd nb */
            for (int j = 0; j < NT; j++)
                p[j] = _mm512_dpbusd_epi32(p[j], wv, _mm512_set1_epi32(*(const int32_t *)(xq + j * SHOAL_QK + 4 * k)));
        }
        for (int j = 0; j < NT; j++) {
            const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(xd[j]));
            if (EXACT) {
                lo[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(p[j])),
                                        _mm512_cvtps_pd(_mm512_castps512_ps256(s)), lo[j]);
                hi[j] = _mm512_fmadd_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(p[j], 1)),
                                        _mm512_cvtps_pd(_mm512_extractf32x8_ps(s, 1)), hi[j]);
            } else {
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[j]), s, acc[j]);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const int64_t at = (int64_t)(t0 + j) * rows + row0;
        if (EXACT) {
            _mm512_mask_storeu_pd(t->yd + at, (__mmask8)mask, lo[j]);
            _mm512_mask_storeu_pd(t->yd + at + 8, (__mmask8)(mask >> 8), hi[j]);
        } else {
            _mm512_mask_storeu_ps(t->y + at, mask, acc[j]);
        }
    }
}

#define Q8P_FN(nt, ex, tag)                                                                    \
    static void q8p##tag##_##nt(const struct mm_task *t, const uint8_t *gp, const uint8_t *next, \
                                int64_t row0, __mmask16 mask, int t0) {                        \
        q8p_tile(t, gp, next, row0, mask, t0, nt, ex);                                         \
    }
Q8P_FN(1, 0, ) Q8P_FN(2, 0, ) Q8P_FN(3, 0, ) Q8P_FN(4, 0, )
Q8P_FN(5, 0, ) Q8P_FN(6, 0, ) Q8P_FN(7, 0, ) Q8P_FN(8, 0, )
Q8P_FN(1, 1, _f64) Q8P_FN(2, 1, _f64) Q8P_FN(3, 1, _f64) Q8P_FN(4, 1, _f64)
Q8P_FN(5, 1, _f64) Q8P_FN(6, 1, _f64) Q8P_FN(7, 1, _f64) Q8P_FN(8, 1, _f64)
_Static_assert(PT == 8 && PT64 == 8, "the tables below list 8 tile shapes");
typedef void (*q8p_fn)(const struct mm_task *, const uint8_t *, const uint8_t *, int64_t, __mmask16, int);
static const q8p_fn q8p_tiles[PT] = { q8p_1, q8p_2, q8p_3, q8p_4, q8p_5, q8p_6, q8p_7, q8p_8 };
static const q8p_fn q8p_f64_tiles[PT64] = { q8p_f64_1, q8p_f64_2, q8p_f64_3, q8p_f64_4,
                                              q8p_f64_5, q8p_f64_6, q8p_f64_7, q8p_f64_8 };

/*
 * Rows [r0, r1): the groups holding them, each passing every token in
 * tiles (its weights stay in cache meanwhile). A group shared with the
 * next thread's range is computed by both, each keeping its own rows.
 */
INLINE void q8p_drive(const struct mm_task *t, int64_t r0, int64_t r1, const q8p_fn *tiles, const int MAXT,
                       const size_t bb) { /* bb: bytes of a block of a group */
    const int64_t nb = t->w->cols / SHOAL_QK;
    for (int64_t g = r0 / PG; g * PG < r1; g++) {
        const int64_t lo = g * PG > r0 ? g * PG : r0, hi = g * PG + PG < r1 ? g * PG + PG : r1;
        const __mmask16 mask = (__mmask16)(((1u << (hi - lo)) - 1) << (lo - g * PG));
        const uint8_t *gp = (const uint8_t *)t->w->data + (size_t)(g * nb) * bb;
        /* with several tiles the group's weights come from memory in the first alone: the
         * second fetches the next group's meanwhile */
        const uint8_t *next = t->n > MAXT && (g + 1) * PG < r1 ? gp + (size_t)nb * bb : NULL;
        for (int tk = 0; tk < t->n; tk += MAXT) {
            int nt = t->n - tk < MAXT ? t->n - tk : MAXT;
            tiles[nt - 1](t, gp, tk == MAXT ? next : NULL, g * PG, mask, tk);
        }
    }
}

static void mm_q8p(const struct mm_task *t, int64_t r0, int64_t r1) { q8p_drive(t, r0, r1, q8p_tiles, PT, PB); }
static void mm_f64_q8p(const struct mm_task *t, int64_t r0, int64_t r1) {
    q8p_drive(t, r0, r1, q8p_f64_tiles, PT64, PB);
}

/*
 * Q4_0, Q4_1, Q5_0, Q5_1 and IQ4_NL are packed at load too, as Q8_0 is,
 * so that a batch multiplies each block of weights, unpacked once per tile,
 * with up to PT tokens (the codes of 32-value blocks, read a row at a
 * time, used to be unpacked for each pair of rows and six tokens, and
 * their products summed across lanes: a batch of 16 ran 1.8 times as many
 * tokens per second as one token; Q8_0's packed tiles, 4.2). Rows in
 * groups of 16; each block of a group is stored as
 *  - the low four bits of its codes in four 64-byte vectors, vector k's
 *    bytes 4 r + e (row r) holding those of value 4 k + e in the low nibble
 *    and of value 16 + 4 k + e in the high one (byte 4 k + e of the row's
 *    qs: the GGUF order, four bytes at a time);
 *  - Q5_0, Q5_1: the fifth bits as eight 64-bit byte masks, mask 2 k
 *    (2 k + 1) bit 4 r + e that of value 4 k + e (16 + 4 k + e) of row r:
 *    16 added to the codes of vector k where they say;
 *  - the 16 rows' f16 d, then (Q4_1, Q5_1) their f16 m.
 * Blocks go in pairs, section by section (the two blocks' codes, their
 * fifth bits, their d, their m), an odd last block alone: an image of
 * exactly its rows' bytes (16 x 18, 20, 22 or 24 per block; the last group
 * padded with zero rows), a pair's image whole cache lines.
 *
 * The codes meet VNNI's unsigned side: Q4_0's nibbles 0..15 (the -8 taken
 * off with the block sums of x: the accumulator starts at -8 x the sum),
 * Q5_0's 0..31 (-16), IQ4_NL's levels + 128 (-128), Q4_1's and Q5_1's
 * codes as they are, their m times xs (dx x the sum of x) added per block.
 * A lane is one row's block dot product, exact; then, per block, times
 * dw * dx into the row's f32 sum (or, mm_f64, into its f64 sum in the
 * scalar level's order, each product exact: its bits). Every (row, token)
 * goes through the same instructions in the same order whatever the tile,
 * the number of tokens or the rows of the call.
 */
enum { K40, K41, K50, K51, KNL };
#define KIND_MIN(K) ((K) == K41 || (K) == K51) /* d * q + m: the m part meets xs */
#define KIND_HI(K) ((K) == K50 || (K) == K51)  /* a fifth bit */
/* block bytes, and where the nibbles start (the fifth bits: 4 bytes before) */
#define KIND_BS(K) ((K) == K41 ? 20 : (K) == K50 ? 22 : (K) == K51 ? 24 : 18)
#define KIND_QO(K) ((K) == K41 ? 4 : (K) == K50 ? 6 : (K) == K51 ? 8 : 2)
/* bytes of a block of a group: codes, fifth bits, d, m */
#define P32_BB(K) (PG * KIND_BS(K))

static int kind_of(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q4_0: return K40;
    case SHOAL_DTYPE_Q4_1: return K41;
    case SHOAL_DTYPE_Q5_0: return K50;
    case SHOAL_DTYPE_Q5_1: return K51;
    case SHOAL_DTYPE_IQ4_NL: return KNL;
    }
    return -1;
}

/* Where block b's sections are in a group of nb blocks. */
struct p32 {
    size_t q, h, d, m;
};
INLINE struct p32 p32_at(int64_t b, int64_t nb, const int K) {
    const size_t C = 256, H = KIND_HI(K) ? 64 : 0, D = 32, M = KIND_MIN(K) ? 32 : 0;
    const size_t s = (size_t)(b >> 1) * 2 * (size_t)P32_BB(K), cnt = (b | 1) < nb ? 2 : 1, i = (size_t)(b & 1);
    return (struct p32){ s + i * C, s + cnt * C + i * H, s + cnt * (C + H) + i * D, s + cnt * (C + H + D) + i * M };
}

static size_t p32_packed_bytes(int K, int64_t rows, int64_t cols) {
    return (size_t)((rows + PG - 1) / PG) * (size_t)(cols / SHOAL_QK) * (size_t)P32_BB(K);
}

/* Group by group, each group's rows read aside first (src may be dst: in place). */
static shoal_status pack_p32(int type, int64_t rows, int64_t cols, const void *src, void *dst) {
    const int K = kind_of(type), BS = KIND_BS(K), QO = KIND_QO(K);
    const int64_t nb = cols / SHOAL_QK, ng = (rows + PG - 1) / PG;
    const size_t rb = (size_t)nb * (size_t)BS;
    uint8_t *w = malloc(PG * rb);
    if (!w) return shoal_errorf(SHOAL_NOMEM, "out of memory packing a %s weight", shoal_dtype_name(type));
    for (int64_t g = 0; g < ng; g++) {
        const int64_t n = rows - g * PG < PG ? rows - g * PG : PG;
        memcpy(w, (const char *)src + (size_t)(g * PG) * rb, (size_t)n * rb);
        uint8_t *gp = (uint8_t *)dst + (size_t)(g * nb) * (size_t)P32_BB(K);
        memset(gp, 0, (size_t)nb * (size_t)P32_BB(K));
        for (int64_t b = 0; b < nb; b++) {
            const struct p32 o = p32_at(b, nb, K);
            for (int r = 0; r < n; r++) {
                const uint8_t *blk = w + (size_t)r * rb + (size_t)b * (size_t)BS;
                memcpy(gp + o.d + 2 * r, blk, 2);
                if (KIND_MIN(K)) memcpy(gp + o.m + 2 * r, blk + 2, 2);
                for (int k = 0; k < 4; k++) memcpy(gp + o.q + 64 * k + 4 * r, blk + QO + 4 * k, 4);
                if (KIND_HI(K)) {
                    uint32_t qh;
                    memcpy(&qh, blk + QO - 4, 4);
                    for (int k = 0; k < 4; k++)
                        for (int e = 0; e < 4; e++) { /* bit 4 r + e of byte masks 2 k and 2 k + 1 */
                            const int at = 4 * r + e;
                            gp[o.h + 16 * k + at / 8] |= (uint8_t)(((qh >> (4 * k + e)) & 1) << (at % 8));
                            gp[o.h + 16 * k + 8 + at / 8] |= (uint8_t)(((qh >> (16 + 4 * k + e)) & 1) << (at % 8));
                        }
                }
            }
        }
    }
    free(w);
    return SHOAL_OK;
}

/* Row r of a packed weight as floats: its blocks rebuilt, dequantized as shoal_dequantize_row does. */
static void unpack_p32_row(const struct shoal_weight *w, int64_t r, float *y) {
    const int K = kind_of(w->type), QO = KIND_QO(K);
    const int64_t nb = w->cols / SHOAL_QK;
    const uint8_t *gp = (const uint8_t *)w->data + (size_t)(r / PG * nb) * (size_t)P32_BB(K);
    const int lane = (int)(r % PG);
    for (int64_t b = 0; b < nb; b++) {
        const struct p32 o = p32_at(b, nb, K);
        uint8_t blk[32] = { 0 };
        memcpy(blk, gp + o.d + 2 * lane, 2);
        if (KIND_MIN(K)) memcpy(blk + 2, gp + o.m + 2 * lane, 2);
        for (int k = 0; k < 4; k++) memcpy(blk + QO + 4 * k, gp + o.q + 64 * k + 4 * lane, 4);
        if (KIND_HI(K)) {
            uint32_t qh = 0;
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < 4; e++) {
                    const int at = 4 * lane + e;
                    qh |= (uint32_t)((gp[o.h + 16 * k + at / 8] >> (at % 8)) & 1) << (4 * k + e);
                    qh |= (uint32_t)((gp[o.h + 16 * k + 8 + at / 8] >> (at % 8)) & 1) << (16 + 4 * k + e);
                }
            memcpy(blk + QO - 4, &qh, 4);
        }
        shoal_dequantize_row(w->type, blk, y + b * SHOAL_QK, SHOAL_QK);
    }
}

/*
 * One group of 16 rows x NT tokens from t0, kind K: f32 sums into y, or
 * (EXACT) f64 sums into yd, for the rows of the group that mask says.
 * q8p_tile's loop, the codes unpacked a vector at a time for the tile's
 * tokens.
 */
INLINE void p32_tile(const struct mm_task *t, const uint8_t *gp, const uint8_t *next, int64_t row0,
                     __mmask16 mask, int t0, const int NT, const int EXACT, const int K) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK, rows = t->w->rows;
    const int MIN = KIND_MIN(K), BB = P32_BB(K);
    const __m512i m4 = _mm512_set1_epi8(0x0f), b5 = _mm512_set1_epi8(0x10);
    const __m512i levels = _mm512_broadcast_i32x4( /* IQ4_NL's, +128 */
        _mm_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166, (char)181,
                      (char)197, (char)217, (char)241));
    __m512 acc[PT];
    __m512d lo[PT], hi[PT]; /* EXACT */
    for (int j = 0; j < NT; j++) {
        if (EXACT) lo[j] = hi[j] = _mm512_setzero_pd();
        else acc[j] = _mm512_setzero_ps();
    }
    const int8_t *xq = t->xqt + (int64_t)t0 * SHOAL_QK; /* block b, token t0 + j: + (b * n + j) * 32 */
    const int32_t *xc = t->xct + t0;                    /* -128 x the block's sum of x */
    const float *xd = t->xdt + t0;
    const float *xs = t->xs + (int64_t)t0 * nb;         /* token t0 + j, block b: + j * nb + b */
    for (int64_t b = 0; b < nb; b++, xq += t->n * SHOAL_QK, xc += t->n, xd += t->n) {
        const struct p32 o = p32_at(b, nb, K);
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(gp + o.d)));
        const __m512 mw = MIN ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(gp + o.m))) : _mm512_setzero_ps();
        if (next) /* the next group's block, read from memory while this tile computes */
            for (int l = 0; l < BB; l += 64) _mm_prefetch((const char *)next + b * BB + l, _MM_HINT_T0);
        else
            for (int l = 0; l < BB; l += 64) _mm_prefetch((const char *)gp + b * BB + PACKED_AHEAD + l, _MM_HINT_T0);
        /*
         * The products of the low and the high nibbles in two sums (q) for tiles of few tokens,
         * so that a dot product is two chains of four vpdpbusd (decoding waits on their
         * latency), else in one; exact integers, so the same sum either way.
         */
        const int TWO = NT <= 4;
        __m512i p[PT], q[PT];
        for (int j = 0; j < NT; j++) { /* the offset: -8 (Q4_0), -16 (Q5_0), -128 (IQ4_NL) x the sum */
            p[j] = MIN ? _mm512_setzero_si512()
                       : _mm512_set1_epi32(K == K40 ? xc[j] >> 4 : K == K50 ? xc[j] >> 3 : xc[j]);
            q[j] = _mm512_setzero_si512();
        }
        for (int k = 0; k < 4; k++) {
            const __m512i v = _mm512_loadu_si512((const void *)(gp + o.q + 64 * k));
            __m512i cl = _mm512_and_si512(v, m4), ch = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
            if (KIND_HI(K)) { /* the fifth bits: 16 added where the byte masks say */
                uint64_t ml, mh;
                memcpy(&ml, gp + o.h + 16 * k, 8);
                memcpy(&mh, gp + o.h + 16 * k + 8, 8);
                cl = _mm512_mask_add_epi8(cl, (__mmask64)ml, cl, b5);
                ch = _mm512_mask_add_epi8(ch, (__mmask64)mh, ch, b5);
            } else if (K == KNL) {
                cl = _mm512_shuffle_epi8(levels, cl);
                ch = _mm512_shuffle_epi8(levels, ch);
            }
            for (int j = 0; j < NT; j++) {
                p[j] = _mm512_dpbusd_epi32(p[j], cl, _mm512_set1_epi32(*(const int32_t *)(xq + j * SHOAL_QK + 4 * k)));
                const __m512i xh = _mm512_set1_epi32(*(const int32_t *)(xq + j * SHOAL_QK + 16 + 4 * k));
                if (TWO) q[j] = _mm512_dpbusd_epi32(q[j], ch, xh);
                else p[j] = _mm512_dpbusd_epi32(p[j], ch, xh);
            }
        }
        if (TWO)
            for (int j = 0; j < NT; j++) p[j] = _mm512_add_epi32(p[j], q[j]);
        if (EXACT) {
            /*
             * The scalar level's s += dw dx dot (then s += m xs), the same bits with fewer
             * steps: dw and dx are f16 values, so dw dx is exact in f32 and in f64 alike,
             * dw dx dot (at most 22 + 21 bits) and m xs (11 + 11) are exact in f64, so a
             * fused multiply-add rounds once where the scalar level's add of the exact
             * product rounds once.
             */
            const __m512d dw0 = _mm512_cvtps_pd(_mm512_castps512_ps256(dw)), dw1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(dw, 1));
            const __m512d mw0 = _mm512_cvtps_pd(_mm512_castps512_ps256(mw)), mw1 = _mm512_cvtps_pd(_mm512_extractf32x8_ps(mw, 1));
            for (int j = 0; j < NT; j++) {
                const __m512d x = _mm512_set1_pd((double)xd[j]);
                const __m512d p0 = _mm512_cvtepi32_pd(_mm512_castsi512_si256(p[j]));
                const __m512d p1 = _mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(p[j], 1));
                if (MIN) {
                    const __m512d m = _mm512_set1_pd((double)xs[j * nb + b]);
                    lo[j] = _mm512_fmadd_pd(mw0, m, _mm512_fmadd_pd(p0, _mm512_mul_pd(dw0, x), lo[j]));
                    hi[j] = _mm512_fmadd_pd(mw1, m, _mm512_fmadd_pd(p1, _mm512_mul_pd(dw1, x), hi[j]));
                } else {
                    lo[j] = _mm512_fmadd_pd(p0, _mm512_mul_pd(dw0, x), lo[j]);
                    hi[j] = _mm512_fmadd_pd(p1, _mm512_mul_pd(dw1, x), hi[j]);
                }
            }
        } else {
            for (int j = 0; j < NT; j++) {
                const __m512 s = _mm512_mul_ps(dw, _mm512_set1_ps(xd[j]));
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p[j]), s, acc[j]);
                if (MIN) acc[j] = _mm512_fmadd_ps(mw, _mm512_set1_ps(xs[j * nb + b]), acc[j]);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const int64_t at = (int64_t)(t0 + j) * rows + row0;
        if (EXACT) {
            _mm512_mask_storeu_pd(t->yd + at, (__mmask8)mask, lo[j]);
            _mm512_mask_storeu_pd(t->yd + at + 8, (__mmask8)(mask >> 8), hi[j]);
        } else {
            _mm512_mask_storeu_ps(t->y + at, mask, acc[j]);
        }
    }
}

/* One function per kind, tile size and sum, so that each has its loops unrolled. */
#define P32_FN(kind, K, nt, ex, tag)                                                           \
    static void kind##tag##_##nt(const struct mm_task *t, const uint8_t *gp, const uint8_t *next, \
                                 int64_t row0, __mmask16 mask, int t0) {                       \
        p32_tile(t, gp, next, row0, mask, t0, nt, ex, K);                                      \
    }
#define P32_KIND(kind, K)                                                                      \
    P32_FN(kind, K, 1, 0, ) P32_FN(kind, K, 2, 0, ) P32_FN(kind, K, 3, 0, ) P32_FN(kind, K, 4, 0, ) \
    P32_FN(kind, K, 5, 0, ) P32_FN(kind, K, 6, 0, ) P32_FN(kind, K, 7, 0, ) P32_FN(kind, K, 8, 0, ) \
    P32_FN(kind, K, 1, 1, _f64) P32_FN(kind, K, 2, 1, _f64) P32_FN(kind, K, 3, 1, _f64)          \
    P32_FN(kind, K, 4, 1, _f64) P32_FN(kind, K, 5, 1, _f64) P32_FN(kind, K, 6, 1, _f64)          \
    P32_FN(kind, K, 7, 1, _f64) P32_FN(kind, K, 8, 1, _f64)                                    \
    static void mm_##kind(const struct mm_task *t, int64_t r0, int64_t r1) {                   \
        static const q8p_fn tiles[PT] = { kind##_1, kind##_2, kind##_3, kind##_4,              \
                                          kind##_5, kind##_6, kind##_7, kind##_8 };            \
        q8p_drive(t, r0, r1, tiles, PT, P32_BB(K));                                            \
    }                                                                                          \
    static void mm_f64_##kind(const struct mm_task *t, int64_t r0, int64_t r1) {               \
        static const q8p_fn tiles[PT64] = { kind##_f64_1, kind##_f64_2, kind##_f64_3,          \
                                          kind##_f64_4, kind##_f64_5, kind##_f64_6,            \
                                          kind##_f64_7, kind##_f64_8 };                        \
        q8p_drive(t, r0, r1, tiles, PT64, P32_BB(K));                                          \
    }
P32_KIND(q4, K40)
P32_KIND(q41, K41)
P32_KIND(q50, K50)
P32_KIND(q51, K51)
P32_KIND(iq4nl, KNL)
#undef P32_KIND
#undef P32_FN

/* ---------------------------------------------------------- activations */

/* shoal_cpu_quantize_x, 32 values at a time; the same rounding, so the same bytes. */
static void quantize_x(const float *x, int64_t cols, int8_t *q, float *d, float *s, int32_t *isum,
                       int grouped, int lanes, int offset, int32_t *vc, float *vd) {
    const int64_t nb = cols / SHOAL_QK, full = grouped ? nb / 4 * 4 : 0;
    for (int64_t b = 0; b < nb; b++) {
        __m512 a = _mm512_loadu_ps(x + b * SHOAL_QK), c = _mm512_loadu_ps(x + b * SHOAL_QK + 16);
        float amax = _mm512_reduce_max_ps(_mm512_max_ps(_mm512_abs_ps(a), _mm512_abs_ps(c)));
        float db = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        /* to nearest, ties to even (the default rounding mode) */
        __m512i ia = _mm512_cvtps_epi32(_mm512_mul_ps(a, _mm512_set1_ps(id)));
        __m512i ic = _mm512_cvtps_epi32(_mm512_mul_ps(c, _mm512_set1_ps(id)));
        int8_t *lo = q + b * SHOAL_QK, *hi = lo + 16;
        if (b < full) {
            lo = q + (b / 4) * 128 + (b % 4) * 16;
            hi = lo + 64;
        }
        _mm_storeu_si128((__m128i *)lo, _mm512_cvtsepi32_epi8(ia));
        _mm_storeu_si128((__m128i *)hi, _mm512_cvtsepi32_epi8(ic));
        int sum = _mm512_reduce_add_epi32(_mm512_add_epi32(ia, ic));
        d[b] = _cvtsh_ss(_cvtss_sh(db, 0));
        s[b] = _cvtsh_ss(_cvtss_sh(db * (float)sum, 0));
        isum[b] = sum;
    }
    if (lanes) shoal_cpu_lane_vectors(d, isum, nb, lanes, offset, vc, vd);
}

/* ------------------------------------------------------------- attention */

static float kv_dot_f32(const float *q, const void *k, int n) { return dot_f32(q, k, n); }

static float kv_dot_f16(const float *q, const void *k, int n) {
    const uint16_t *h = k;
    __m512 acc = _mm512_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16)
        acc = _mm512_fmadd_ps(_mm512_loadu_ps(q + i),
                              _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))), acc);
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        acc = _mm512_fmadd_ps(_mm512_maskz_loadu_ps(m, q + i),
                              _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)), acc);
    }
    return _mm512_reduce_add_ps(acc);
}

static void kv_axpy_f32(float *o, float w, const void *v, int n) {
    const float *x = v;
    __m512 wv = _mm512_set1_ps(w);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(o + i, _mm512_fmadd_ps(wv, _mm512_loadu_ps(x + i), _mm512_loadu_ps(o + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(o + i, m, _mm512_fmadd_ps(wv, _mm512_maskz_loadu_ps(m, x + i),
                                                        _mm512_maskz_loadu_ps(m, o + i)));
    }
}

static void kv_axpy_f16(float *o, float w, const void *v, int n) {
    const uint16_t *h = v;
    __m512 wv = _mm512_set1_ps(w);
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm512_storeu_ps(o + i, _mm512_fmadd_ps(wv, _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(h + i))),
                                                _mm512_loadu_ps(o + i)));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm512_mask_storeu_ps(o + i, m, _mm512_fmadd_ps(wv, _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(m, h + i)),
                                                        _mm512_maskz_loadu_ps(m, o + i)));
    }
}

/*
 * e^x for 16 floats, within 2 ulps of expf (tests/unit/test_matmul.c):
 * x = n ln2 + r with |r| <= ln2 / 2 (ln2 in two parts, n ln2's first part
 * exact), e^r by its Taylor polynomial to degree 7 (relative error under
 * 6e-9), times 2^n applied in two halves so that n = 128 and n = -126 stay
 * in range. Below -87.33 (results under FLT_MIN) it gives 0, above 88.72
 * infinity; a NaN stays NaN (max and min return their second operand).
 */
INLINE __m512 exp16(__m512 x) {
    const __m512 hi = _mm512_set1_ps(88.72283935546875f), lo = _mm512_set1_ps(-87.33654022216797f);
    const __mmask16 over = _mm512_cmp_ps_mask(x, hi, _CMP_GT_OQ), under = _mm512_cmp_ps_mask(x, lo, _CMP_LT_OQ);
    x = _mm512_min_ps(hi, _mm512_max_ps(lo, x));
    const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                          _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
    static const float c[8] = { 1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f };
    __m512 e = _mm512_set1_ps(c[0]);
    for (int i = 1; i < 8; i++) e = _mm512_fmadd_ps(e, r, _mm512_set1_ps(c[i]));
    const __m512i ni = _mm512_cvtps_epi32(n), h = _mm512_srai_epi32(ni, 1), b = _mm512_set1_epi32(127);
    e = _mm512_mul_ps(e, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(h, b), 23)));
    e = _mm512_mul_ps(e, _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_add_epi32(_mm512_sub_epi32(ni, h), b), 23)));
    e = _mm512_mask_mov_ps(e, over, _mm512_set1_ps(INFINITY));
    return _mm512_mask_mov_ps(e, under, _mm512_setzero_ps());
}

/* 16 values of a cached head vector at i, as f32. */
INLINE __m512 kv16(const char *p, int i, const int F16) {
    return F16 ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)((const uint16_t *)p + i)))
               : _mm512_loadu_ps((const float *)p + i);
}

/*
 * Sixteen horizontal sums at once, each added in the order of
 * _mm512_reduce_add_ps (lane i with i + 8, then + 4, + 2, + 1), so each the
 * same bits as that would give it alone. Lane 4c + j of the result holds the
 * sum of v[c + 4j] (HSUM_LANE).
 */
#define HSUM_LANE(i) (4 * ((i) % 4) + (i) / 4)
INLINE __m512 hsum16(const __m512 v[16]) {
    __m512 c[8], e[4], g[2];
    for (int k = 0; k < 8; k++) /* lanes 0-7: v[2k]'s x[i] + x[i + 8]; lanes 8-15: v[2k + 1]'s */
        c[k] = _mm512_add_ps(_mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                             _mm512_shuffle_f32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    for (int m = 0; m < 4; m++) /* 128-bit chunk j: v[4m + j]'s four sums of + 4 */
        e[m] = _mm512_add_ps(_mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                             _mm512_shuffle_f32x4(c[2 * m], c[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    for (int n = 0; n < 2; n++) { /* chunk j: v[8n + j]'s two sums of + 2, then v[8n + 4 + j]'s */
        __m512d x = _mm512_castps_pd(e[2 * n]), y = _mm512_castps_pd(e[2 * n + 1]);
        g[n] = _mm512_add_ps(_mm512_castpd_ps(_mm512_unpacklo_pd(x, y)), _mm512_castpd_ps(_mm512_unpackhi_pd(x, y)));
    }
    return _mm512_add_ps(_mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(2, 0, 2, 0)),
                         _mm512_shuffle_ps(g[0], g[1], _MM_SHUFFLE(3, 1, 3, 1)));
}

/*
 * shoal_cpu_att_head for head_dim % 16 == 0, the heads of the group
 * together: each cached vector converted and loaded once for all of them,
 * no call per position, the scores of several positions x heads summed
 * across their lanes at once (hsum16), the outputs held in registers over
 * the positions, the f16 rounding done by the processor. Each head's
 * products and sums go in the same order as kv_dot_f32 / kv_dot_f16 and
 * kv_axpy, so the same bits as a head at a time.
 */
#define ATT_AHEAD 32 /* positions */
INLINE void att_heads(const struct att_head_args *a, const int NH, const int F16) {
    /* positions per round: 16 sums (f32: 8, kept in two halves as dot_f32 does) */
    const int hd = a->head_dim, n = a->n, nc = hd / 16, P = (F16 ? 16 : 8) / NH;
    const float *q = a->q;
    if (a->round_f16) {
        for (int i = 0; i < NH * hd; i += 16)
            _mm512_storeu_ps(a->qh + i, _mm512_cvtph_ps(_mm512_cvtps_ph(_mm512_loadu_ps(q + i), _MM_FROUND_TO_NEAREST_INT)));
        q = a->qh;
    }
    float max[ATT_HEADS];
    for (int g = 0; g < NH; g++) max[g] = -INFINITY;
    for (int p0 = 0; p0 < n; p0 += P) {
        __m512 acc0[16], acc1[8]; /* slot pp * NH + g: position p0 + pp, head g */
        for (int i = 0; i < 16; i++) acc0[i] = _mm512_setzero_ps();
        for (int i = 0; i < 8; i++) acc1[i] = _mm512_setzero_ps();
        for (int pp = 0; pp < P && p0 + pp < n; pp++) {
            const char *k = a->kc + a->off[p0 + pp];
            /* the cache is scattered over blocks, beyond the prefetcher: the keys ATT_AHEAD
             * positions on, and the values of this position for the second pass */
            if (p0 + pp + ATT_AHEAD < n)
                for (int l = 0; l < hd * (F16 ? 2 : 4); l += 64)
                    _mm_prefetch(a->kc + a->off[p0 + pp + ATT_AHEAD] + l, _MM_HINT_T0);
            for (int l = 0; l < hd * (F16 ? 2 : 4); l += 64)
                _mm_prefetch(a->vc + a->off[p0 + pp] + l, _MM_HINT_T1);
            int c = 0;
            if (!F16) /* dot_f32's order: pairs of 16 into two sums, an odd last 16 into the first */
                for (; c + 2 <= nc; c += 2) {
                    const __m512 k0 = kv16(k, 16 * c, 0), k1 = kv16(k, 16 * c + 16, 0);
                    for (int g = 0; g < NH; g++) {
                        const int i = pp * NH + g;
                        acc0[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * hd + 16 * c), k0, acc0[i]);
                        acc1[i] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * hd + 16 * c + 16), k1, acc1[i]);
                    }
                }
            for (; c < nc; c++) {
                const __m512 kv = kv16(k, 16 * c, F16);
                for (int g = 0; g < NH; g++)
                    acc0[pp * NH + g] = _mm512_fmadd_ps(_mm512_loadu_ps(q + g * hd + 16 * c), kv, acc0[pp * NH + g]);
            }
        }
        if (!F16)
            for (int i = 0; i < 8; i++) acc0[i] = _mm512_add_ps(acc0[i], acc1[i]);
        float sums[16];
        _mm512_storeu_ps(sums, hsum16(acc0));
        for (int pp = 0; pp < P && p0 + pp < n; pp++)
            for (int g = 0; g < NH; g++) {
                const float s = sums[HSUM_LANE(pp * NH + g)] * a->scale;
                a->scores[g * a->stride + p0 + pp] = s;
                if (s > max[g]) max[g] = s;
            }
    }
    for (int g = 0; g < NH; g++) {
        /* e^(s - max) 16 at a time (exp16; the scalar path's expf a call each took a tenth of a
         * decode step's attention), summed in f64 */
        float *sc = a->scores + g * a->stride;
        const __m512 mx = _mm512_set1_ps(max[g]);
        __m512d s0 = _mm512_setzero_pd(), s1 = _mm512_setzero_pd();
        for (int p = 0; p < n; p += 16) {
            const __mmask16 m = n - p >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - p)) - 1);
            const __m512 e = _mm512_maskz_mov_ps(m, exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, sc + p), mx)));
            _mm512_mask_storeu_ps(sc + p, m, e);
            s0 = _mm512_add_pd(s0, _mm512_cvtps_pd(_mm512_castps512_ps256(e)));
            s1 = _mm512_add_pd(s1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(e, 1)));
        }
        const double sum = _mm512_reduce_add_pd(_mm512_add_pd(s0, s1));
        const float inv = (float)(1.0 / sum);
        for (int p = 0; p < n; p++) {
            float w = sc[p] * inv;
            sc[p] = a->round_f16 ? _cvtsh_ss(_cvtss_sh(w, _MM_FROUND_TO_NEAREST_INT)) : w;
        }
    }
    /* the outputs M vectors of each head at a time (at most 16 registers) */
    const int M = 16 / NH;
    for (int c = 0; c < nc; c += M) {
        __m512 o[ATT_HEADS][16]; /* [NH][M] used */
        for (int g = 0; g < NH; g++)
            for (int r = 0; r < M; r++) o[g][r] = _mm512_setzero_ps();
        for (int p = 0; p < n; p++) {
            const char *v = a->vc + a->off[p];
            if (c == 0 && p + ATT_AHEAD < n)
                for (int l = 0; l < hd * (F16 ? 2 : 4); l += 64)
                    _mm_prefetch(a->vc + a->off[p + ATT_AHEAD] + l, _MM_HINT_T0);
            __m512 w[ATT_HEADS];
            for (int g = 0; g < NH; g++) w[g] = _mm512_set1_ps(a->scores[g * a->stride + p]);
            for (int r = 0; r < M; r++) {
                if (c + r >= nc) break;
                const __m512 vv = kv16(v, 16 * (c + r), F16);
                for (int g = 0; g < NH; g++) o[g][r] = _mm512_fmadd_ps(w[g], vv, o[g][r]);
            }
        }
        for (int g = 0; g < NH; g++)
            for (int r = 0; r < M && c + r < nc; r++) _mm512_storeu_ps(a->out + g * hd + 16 * (c + r), o[g][r]);
    }
}

/* One function per head count, so that each keeps its sums in registers. */
#define ATT_FNS(kv, F16)                                                                       \
    static void att_##kv##_1(const struct att_head_args *a) { att_heads(a, 1, F16); }           \
    static void att_##kv##_2(const struct att_head_args *a) { att_heads(a, 2, F16); }           \
    static void att_##kv##_3(const struct att_head_args *a) { att_heads(a, 3, F16); }           \
    static void att_##kv##_4(const struct att_head_args *a) { att_heads(a, 4, F16); }           \
    static void att_##kv##_5(const struct att_head_args *a) { att_heads(a, 5, F16); }           \
    static void att_##kv##_6(const struct att_head_args *a) { att_heads(a, 6, F16); }           \
    static void att_##kv##_7(const struct att_head_args *a) { att_heads(a, 7, F16); }           \
    static void att_##kv##_8(const struct att_head_args *a) { att_heads(a, 8, F16); }           \
    static void (*const att_##kv[ATT_HEADS])(const struct att_head_args *) = {                 \
        att_##kv##_1, att_##kv##_2, att_##kv##_3, att_##kv##_4,                                 \
        att_##kv##_5, att_##kv##_6, att_##kv##_7, att_##kv##_8,                                 \
    };
_Static_assert(ATT_HEADS == 8, "ATT_FNS lists 8 head counts");
ATT_FNS(f32, 0)
ATT_FNS(f16, 1)

static void to_f16(const float *x, uint16_t *y, int n) {
    int i = 0;
    for (; i + 16 <= n; i += 16)
        _mm256_storeu_si256((__m256i *)(y + i), _mm512_cvtps_ph(_mm512_loadu_ps(x + i), _MM_FROUND_TO_NEAREST_INT));
    if (i < n) {
        __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        _mm256_mask_storeu_epi16(y + i, m, _mm512_cvtps_ph(_mm512_maskz_loadu_ps(m, x + i), _MM_FROUND_TO_NEAREST_INT));
    }
}

/* --------------------------------------------------------------- silu */

/* g = silu(g) * u = g / (1 + e^-g) * u, as the scalar loop writes it. */
static void silu_mul(float *g, const float *u, long long n) {
    long long i = 0;
    for (; i + 16 <= n; i += 16) {
        const __m512 y = _mm512_loadu_ps(g + i);
        const __m512 s = _mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), y))));
        _mm512_storeu_ps(g + i, _mm512_mul_ps(s, _mm512_loadu_ps(u + i)));
    }
    if (i < n) {
        const __mmask16 m = (__mmask16)((1u << (n - i)) - 1);
        const __m512 y = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 s = _mm512_div_ps(y, _mm512_add_ps(_mm512_set1_ps(1.0f), exp16(_mm512_sub_ps(_mm512_setzero_ps(), y))));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

/* g = gelu(g) * u: g / (1 + e^(-2 c g (1 + a g^2))), which is g (1 + tanh(c g (1 + a g^2))) / 2 */
static void gelu_mul(float *g, const float *u, long long n) {
    const __m512 c2 = _mm512_set1_ps(-2.0f * 0.79788456080286535588f), a = _mm512_set1_ps(0.044715f);
    const __m512 one = _mm512_set1_ps(1.0f);
    for (long long i = 0; i < n; i += 16) {
        const __mmask16 m = n - i >= 16 ? (__mmask16)0xffff : (__mmask16)((1u << (n - i)) - 1);
        const __m512 y = _mm512_maskz_loadu_ps(m, g + i);
        const __m512 t = _mm512_mul_ps(_mm512_mul_ps(c2, y), _mm512_add_ps(one, _mm512_mul_ps(a, _mm512_mul_ps(y, y))));
        const __m512 s = _mm512_div_ps(y, _mm512_add_ps(one, exp16(t)));
        _mm512_mask_storeu_ps(g + i, m, _mm512_mul_ps(s, _mm512_maskz_loadu_ps(m, u + i)));
    }
}

static void att_head_f32(const struct att_head_args *a) { att_f32[a->n_heads - 1](a); }
static void att_head_f16(const struct att_head_args *a) { att_f16[a->n_heads - 1](a); }

MM_ROW_DRIVER(f32)
MM_ROW_DRIVER_F64(f32)
#undef DRIVER

/* The packed layouts: Q8_0's and the 32-value kinds' (this file), the super-block types' (kernels_avx512_kq.c). */
static size_t packed_bytes_avx512(int type, int64_t rows, int64_t cols) {
    if (type == SHOAL_DTYPE_Q8_0) return q8_packed_bytes(rows, cols);
    if (kind_of(type) >= 0) return p32_packed_bytes(kind_of(type), rows, cols);
    return shoal_cpu_avx512_kq_packed_bytes(type, rows, cols);
}

static shoal_status pack_avx512(int type, int64_t rows, int64_t cols, const void *src, void *dst) {
    if (type == SHOAL_DTYPE_Q8_0) return pack_q8(rows, cols, src, dst);
    if (kind_of(type) >= 0) return pack_p32(type, rows, cols, src, dst);
    return shoal_cpu_avx512_kq_pack(type, rows, cols, src, dst);
}

static void unpack_avx512_row(const struct shoal_weight *w, int64_t r, float *y) {
    if (w->type == SHOAL_DTYPE_Q8_0) unpack_q8_row(w, r, y);
    else if (kind_of(w->type) >= 0) unpack_p32_row(w, r, y);
    else shoal_cpu_avx512_kq_unpack_row(w, r, y);
}

const struct cpu_kernels shoal_cpu_kernels_avx512 = {
    .name = "avx512",
    .batch_invariant = 1,
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8p,
        [SHOAL_DTYPE_Q4_0] = mm_q4,
        [SHOAL_DTYPE_Q4_1] = mm_q41,
        [SHOAL_DTYPE_Q5_0] = mm_q50,
        [SHOAL_DTYPE_Q5_1] = mm_q51,
        [SHOAL_DTYPE_IQ4_NL] = mm_iq4nl,
        [SHOAL_DTYPE_Q2_K] = shoal_cpu_avx512_mm_q2_kp,
        [SHOAL_DTYPE_Q3_K] = shoal_cpu_avx512_mm_q3_kp,
        [SHOAL_DTYPE_Q4_K] = shoal_cpu_avx512_mm_q4_kp,
        [SHOAL_DTYPE_Q5_K] = shoal_cpu_avx512_mm_q5_kp,
        [SHOAL_DTYPE_Q6_K] = shoal_cpu_avx512_mm_q6_kp,
        [SHOAL_DTYPE_IQ4_XS] = shoal_cpu_avx512_mm_iq4_xsp,
    },
    .mm_f64 = {
        [SHOAL_DTYPE_F32] = mm_f64_f32,
        [SHOAL_DTYPE_F16] = mm_f64_f16,
        [SHOAL_DTYPE_BF16] = mm_f64_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_f64_q8p,
        [SHOAL_DTYPE_Q4_0] = mm_f64_q4,
        [SHOAL_DTYPE_Q4_1] = mm_f64_q41,
        [SHOAL_DTYPE_Q5_0] = mm_f64_q50,
        [SHOAL_DTYPE_Q5_1] = mm_f64_q51,
        [SHOAL_DTYPE_IQ4_NL] = mm_f64_iq4nl,
        [SHOAL_DTYPE_Q2_K] = shoal_cpu_avx512_mm_f64_q2_kp,
        [SHOAL_DTYPE_Q3_K] = shoal_cpu_avx512_mm_f64_q3_kp,
        [SHOAL_DTYPE_Q4_K] = shoal_cpu_avx512_mm_f64_q4_kp,
        [SHOAL_DTYPE_Q5_K] = shoal_cpu_avx512_mm_f64_q5_kp,
        [SHOAL_DTYPE_Q6_K] = shoal_cpu_avx512_mm_f64_q6_kp,
        [SHOAL_DTYPE_IQ4_XS] = shoal_cpu_avx512_mm_f64_iq4_xsp,
    },
    .packed_bytes = packed_bytes_avx512,
    .pack = pack_avx512,
    .pack_rows = PG,
    .unpack_row = unpack_avx512_row,
    .xlayout = {
        [SHOAL_DTYPE_Q8_0] = XL_TILES,
        [SHOAL_DTYPE_Q4_0] = XL_TILES,
        [SHOAL_DTYPE_Q4_1] = XL_TILES,
        [SHOAL_DTYPE_Q5_0] = XL_TILES,
        [SHOAL_DTYPE_Q5_1] = XL_TILES,
        [SHOAL_DTYPE_IQ4_NL] = XL_TILES,
    },
    .quantize_x = quantize_x,
    .quantize_q8k = shoal_cpu_avx512_quantize_q8k,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
    .to_f16 = to_f16,
    .att_head = { att_head_f32, att_head_f16, NULL },
    .silu_mul = silu_mul,
    .gelu_mul = gelu_mul,
};
