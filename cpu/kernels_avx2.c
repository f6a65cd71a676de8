/*
 * kernels_avx2.c — matmul kernels for x86-64 processors with AVX2, FMA and
 * F16C (Haswell and later, Zen). Compiled with those instructions enabled
 * (see CMakeLists.txt) and only called after the processor says it has them.
 *
 * Float weights (f32, f16, bf16) are a row at a time. Q8_0 and Q4_0 weights
 * meet activations quantized per block of 32, in integer dot products with
 * maddubs, run as tiles of rows x tokens for prompts (see the banner there).
 * Q4_0 wants its activations grouped and the lane vectors (kernels.h), as
 * do Q4_1, Q5_0, Q5_1 and IQ4_NL (tiles of one row, one accumulator per
 * output).
 * Every kernel of this level is batch-invariant: a (row, token) output goes
 * through the same instructions in the same order whatever its tile, so a
 * token's results are its own whatever its batch holds (what lanes and
 * speculative decoding need). The super-block types (K-quants, IQ4_XS) are
 * in kernels_avx2_kq.c.
 */
#include <immintrin.h>
#include <math.h>
#include <string.h>

#include "kernels.h"
#include "x86_sum.h"

/* F16C converts a half in one instruction; base's portable version is a call. */
static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

static float dot_f32(const float *a, const float *b, int n) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
        acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
    }
    for (; i + 8 <= n; i += 8)
        acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += a[i] * b[i];
    return s;
}

static inline const void *row_ptr(const struct mm_task *t, int64_t r) {
    return (const char *)t->w->data + (size_t)r * t->w->row_bytes;
}

static float row_f32(const struct mm_task *t, int64_t r, int tok) {
    return dot_f32(row_ptr(t, r), t->x + tok * t->w->cols, (int)t->w->cols);
}

static inline __m256 f16x8(const uint16_t *p) {
    return _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)p));
}

static inline __m256 bf16x8(const uint16_t *p) {
    __m256i v = _mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p));
    return _mm256_castsi256_ps(_mm256_slli_epi32(v, 16));
}

/*
 * 16-bit float weights (F16, BF16: bf set) times f32 x, in tiles of up to
 * H2_ROWS rows x H2_TOKS tokens (kernels_avx512.c's scheme, narrower): a
 * 16-value piece of each of the tile's rows is widened once, in two halves,
 * and met by every token of the tile. Every output has two accumulators,
 * one a half (two FMA chains, so that a row read alone while decoding is
 * not held to one chain's latency), over its row's pieces in order (the
 * last one padded with zeros), added and summed across the vector at the
 * end: the same bits whatever tile the output falls in. Rows go in chunks
 * of H2_CHUNK, which stay in L2 while every token passes over them.
 */
#define H2_ROWS 2
#define H2_TOKS 2
#define H2_CHUNK 32

/*
 * 8 values of x as they meet the weight: for BF16 weights rounded to bf16
 * (to nearest even; a NaN stays a NaN), as every level and llama.cpp do.
 */
static inline __attribute__((always_inline)) __m256 x8(const float *p, int bf) {
    const __m256 v = _mm256_loadu_ps(p);
    if (!bf) return v;
    const __m256i u = _mm256_castps_si256(v);
    const __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(u, 16), _mm256_set1_epi32(1));
    __m256i r = _mm256_add_epi32(u, _mm256_add_epi32(lsb, _mm256_set1_epi32(0x7fff)));
    r = _mm256_and_si256(r, _mm256_set1_epi32((int)0xffff0000u));
    const __m256i nan = _mm256_and_si256(_mm256_or_si256(u, _mm256_set1_epi32(0x400000)),
                                         _mm256_set1_epi32((int)0xffff0000u));
    return _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(nan), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
}

static inline __attribute__((always_inline)) __m256 half8(const uint16_t *p, int bf) {
    const __m128i h = _mm_loadu_si128((const __m128i *)p);
    if (bf) return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(h), 16));
    return _mm256_cvtph_ps(h);
}

/* Named accumulators, lMJ and hMJ (row M, token J; the piece's low and high half), as in
 * kernels_avx512.c: an array of them was kept in memory too. */
#define H2_EACH(X) X(0, 0) X(0, 1) X(1, 0) X(1, 1)
#define H2_DECL(m, j) __m256 l##m##j = _mm256_setzero_ps(), h##m##j = _mm256_setzero_ps();
#define H2_OUT(m, j) \
    if (m < nr && j < nt) t->y[(int64_t)(tok + j) * rows + r + m] = hsum256(_mm256_add_ps(l##m##j, h##m##j));
#define H2_FMA(m, j)                                                                             \
    if (m < nr) {                                                                                \
        l##m##j = _mm256_fmadd_ps(wl##m, xl, l##m##j);                                          \
        h##m##j = _mm256_fmadd_ps(wh##m, xh, h##m##j);                                          \
    }
#define H2_TOKEN(j)                                                                              \
    if (j < nt) {                                                                                \
        const __m256 xl = x8(xp[j] + o, bf), xh = x8(xp[j] + o + 8, bf);                        \
        H2_FMA(0, j) H2_FMA(1, j)                                                                \
    }
#define H2_W(m)                                                                                  \
    const __m256 wl##m = m < nr ? half8(wp[m] + o, bf) : _mm256_setzero_ps();                   \
    const __m256 wh##m = m < nr ? half8(wp[m] + o + 8, bf) : _mm256_setzero_ps();
#define H2_PIECE H2_W(0) H2_W(1) H2_TOKEN(0) H2_TOKEN(1)

/* A tile's row pointers (nr rows from r) and token pointers into x (nt tokens from tok). */
static inline __attribute__((always_inline)) void tile_ptrs(const struct mm_task *t, int64_t r, int tok, int nr,
                                                            int nt, const uint16_t **w, const float **x) {
    for (int m = 0; m < nr; m++) w[m] = row_ptr(t, r + m);
    for (int j = 0; j < nt; j++) x[j] = t->x + (int64_t)(tok + j) * t->w->cols;
}

/*
 * A tile's last, partial piece (len values from column o): its rows' and
 * tokens' values copied beside zeros into wt and xt, where wp and xp then
 * point (the piece at column 0 of them).
 */
static inline __attribute__((always_inline)) void tail_piece(const uint16_t **wp, const float **xp, int nr, int nt,
                                                             int64_t o, int64_t len, uint16_t wt[][16],
                                                             float xt[][16]) {
    for (int m = 0; m < nr; m++) memcpy(wt[m], wp[m] + o, sizeof(uint16_t) * (size_t)len), wp[m] = wt[m];
    for (int j = 0; j < nt; j++) memcpy(xt[j], xp[j] + o, sizeof(float) * (size_t)len), xp[j] = xt[j];
}

static inline __attribute__((always_inline)) void half_tile(const struct mm_task *t, int64_t r, int tok,
                                                            const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows;
    const uint16_t *wp[H2_ROWS] = { 0 };
    const float *xp[H2_TOKS] = { 0 };
    tile_ptrs(t, r, tok, nr, nt, wp, xp);
    H2_EACH(H2_DECL)
    int64_t o = 0;
    for (; o + 16 <= n; o += 16) { H2_PIECE }
    if (o < n) { /* the last piece, copied beside zeros */
        uint16_t wt[H2_ROWS][16] = { { 0 } };
        float xt[H2_TOKS][16] = { { 0 } };
        tail_piece(wp, xp, nr, nt, o, n - o, wt, xt);
        o = 0;
        H2_PIECE
    }
    H2_EACH(H2_OUT)
}

/* fn (a tile of nr rows x nt tokens, bf) with the three as constants: name_NRNT_BF, every shape */
#define H2_ONE(name, fn, nr, nt, bf)                                                             \
    static void name##_##nr##nt##_##bf(const struct mm_task *t, int64_t r, int tok) { fn(t, r, tok, nr, nt, bf); }
#define H2_ALL(name, fn)                                                                         \
    H2_ONE(name, fn, 1, 1, 0) H2_ONE(name, fn, 1, 2, 0) H2_ONE(name, fn, 2, 1, 0) H2_ONE(name, fn, 2, 2, 0) \
    H2_ONE(name, fn, 1, 1, 1) H2_ONE(name, fn, 1, 2, 1) H2_ONE(name, fn, 2, 1, 1) H2_ONE(name, fn, 2, 2, 1)
H2_ALL(half_tile, half_tile)

typedef void (*h2_tile_fn)(const struct mm_task *, int64_t, int);

/* The tiles' loop; a token or two (decoding) go a row at a time, one row's stream at a time. */
static void mm_half(const struct mm_task *t, int64_t r0, int64_t r1, const h2_tile_fn tile[2][2]) {
    for (int64_t r = r0; r < r1; r += H2_CHUNK) {
        const int64_t re = r + H2_CHUNK < r1 ? r + H2_CHUNK : r1;
        for (int tok = 0; tok < t->n; tok += H2_TOKS) {
            const int nt = t->n - tok < H2_TOKS ? t->n - tok : H2_TOKS;
            int64_t i = r;
            if (t->n > 2)
                for (; i + H2_ROWS <= re; i += H2_ROWS) tile[1][nt - 1](t, i, tok);
            for (; i < re; i++) tile[0][nt - 1](t, i, tok);
        }
    }
}

/*
 * The same into yd, in f64 (mm_f64's contract): 8-value pieces widened to
 * f32, then to two f64 halves whose products are exact, each half its own
 * accumulator (lMJ, hMJ) over the row's pieces in order; tiles of the same
 * size, the same loop.
 */
#define D2_DECL(m, j) __m256d l##m##j = _mm256_setzero_pd(), h##m##j = _mm256_setzero_pd();
#define D2_OUT(m, j)                                                                             \
    if (m < nr && j < nt) {                                                                      \
        const __m256d s = _mm256_add_pd(l##m##j, h##m##j);                                      \
        const __m128d q = _mm_add_pd(_mm256_castpd256_pd128(s), _mm256_extractf128_pd(s, 1));   \
        t->yd[(int64_t)(tok + j) * rows + r + m] = _mm_cvtsd_f64(_mm_add_sd(q, _mm_unpackhi_pd(q, q))); \
    }
#define D2_TOKEN(j)                                                                              \
    if (j < nt) {                                                                                \
        const __m256 xv = x8(xp[j] + o, bf);                                                     \
        const __m256d xl = _mm256_cvtps_pd(_mm256_castps256_ps128(xv));                          \
        const __m256d xh = _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1));                        \
        if (0 < nr) l0##j = _mm256_fmadd_pd(wl0, xl, l0##j), h0##j = _mm256_fmadd_pd(wh0, xh, h0##j); \
        if (1 < nr) l1##j = _mm256_fmadd_pd(wl1, xl, l1##j), h1##j = _mm256_fmadd_pd(wh1, xh, h1##j); \
    }
#define D2_W(m)                                                                                  \
    const __m256 w##m = m < nr ? half8(wp[m] + o, bf) : _mm256_setzero_ps();                    \
    const __m256d wl##m = _mm256_cvtps_pd(_mm256_castps256_ps128(w##m));                         \
    const __m256d wh##m = _mm256_cvtps_pd(_mm256_extractf128_ps(w##m, 1));
#define D2_PIECE D2_W(0) D2_W(1) D2_TOKEN(0) D2_TOKEN(1)

static inline __attribute__((always_inline)) void half_tile_f64(const struct mm_task *t, int64_t r, int tok,
                                                                const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows;
    const uint16_t *wp[H2_ROWS] = { 0 };
    const float *xp[H2_TOKS] = { 0 };
    tile_ptrs(t, r, tok, nr, nt, wp, xp);
    H2_EACH(D2_DECL)
    int64_t o = 0;
    for (; o + 8 <= n; o += 8) { D2_PIECE }
    if (o < n) {
        uint16_t wt[H2_ROWS][16] = { { 0 } };
        float xt[H2_TOKS][16] = { { 0 } };
        tail_piece(wp, xp, nr, nt, o, n - o, wt, xt);
        o = 0;
        D2_PIECE
    }
    H2_EACH(D2_OUT)
}

H2_ALL(half_tile_f64, half_tile_f64)

/*
 * The same where the weight has f64 runs (shoal_weight.f64_block, as in
 * kernels_avx512.c): half_tile's accumulators over each run of columns, then
 * their sum widened and added to the output's f64 lane sums (in memory), which
 * are summed across at the end.
 */
#define R2_FLUSH(m, j)                                                                           \
    if (m < nr && j < nt) {                                                                      \
        double *s_ = sums + (m * H2_TOKS + j) * 8;                                              \
        const __m256 v_ = _mm256_add_ps(l##m##j, h##m##j);                                      \
        _mm256_storeu_pd(s_, _mm256_add_pd(_mm256_loadu_pd(s_), _mm256_cvtps_pd(_mm256_castps256_ps128(v_)))); \
        _mm256_storeu_pd(s_ + 4, _mm256_add_pd(_mm256_loadu_pd(s_ + 4), _mm256_cvtps_pd(_mm256_extractf128_ps(v_, 1)))); \
        l##m##j = h##m##j = _mm256_setzero_ps();                                                 \
    }
#define R2_OUT(m, j)                                                                             \
    if (m < nr && j < nt) {                                                                      \
        const double *s_ = sums + (m * H2_TOKS + j) * 8;                                        \
        const __m256d v_ = _mm256_add_pd(_mm256_loadu_pd(s_), _mm256_loadu_pd(s_ + 4));         \
        const __m128d q_ = _mm_add_pd(_mm256_castpd256_pd128(v_), _mm256_extractf128_pd(v_, 1)); \
        t->yd[(int64_t)(tok + j) * rows + r + m] = _mm_cvtsd_f64(_mm_add_sd(q_, _mm_unpackhi_pd(q_, q_))); \
    }

static inline __attribute__((always_inline)) void half_tile_runs(const struct mm_task *t, int64_t r, int tok,
                                                                 const int nr, const int nt, const int bf) {
    const int64_t n = t->w->cols, rows = t->w->rows, run = t->w->f64_block;
    const uint16_t *wp[H2_ROWS] = { 0 };
    const float *xp[H2_TOKS] = { 0 };
    double sums[H2_ROWS * H2_TOKS * 8] = { 0 };
    tile_ptrs(t, r, tok, nr, nt, wp, xp);
    H2_EACH(H2_DECL)
    for (int64_t o = 0; o < n;) {
        const int64_t e = o + run < n ? o + run : n;
        for (; o + 16 <= e; o += 16) { H2_PIECE }
        if (o < e) { /* the row's last piece (runs are whole pieces), copied beside zeros */
            uint16_t wt[H2_ROWS][16] = { { 0 } };
            float xt[H2_TOKS][16] = { { 0 } };
            tail_piece(wp, xp, nr, nt, o, e - o, wt, xt);
            o = 0;
            H2_PIECE
            o = n;
        }
        H2_EACH(R2_FLUSH)
    }
    H2_EACH(R2_OUT)
}

H2_ALL(half_runs, half_tile_runs)

static void mm_f64_f16(const struct mm_task *t, int64_t r0, int64_t r1) {
    static const h2_tile_fn tiles[2][2] = { { half_tile_f64_11_0, half_tile_f64_12_0 },
                                            { half_tile_f64_21_0, half_tile_f64_22_0 } };
    static const h2_tile_fn runs[2][2] = { { half_runs_11_0, half_runs_12_0 }, { half_runs_21_0, half_runs_22_0 } };
    mm_half(t, r0, r1, t->w->f64_block ? runs : tiles);
}

static void mm_f64_bf16(const struct mm_task *t, int64_t r0, int64_t r1) {
    static const h2_tile_fn tiles[2][2] = { { half_tile_f64_11_1, half_tile_f64_12_1 },
                                            { half_tile_f64_21_1, half_tile_f64_22_1 } };
    static const h2_tile_fn runs[2][2] = { { half_runs_11_1, half_runs_12_1 }, { half_runs_21_1, half_runs_22_1 } };
    mm_half(t, r0, r1, t->w->f64_block ? runs : tiles);
}

static void mm_f16(const struct mm_task *t, int64_t r0, int64_t r1) {
    static const h2_tile_fn tiles[2][2] = { { half_tile_11_0, half_tile_12_0 }, { half_tile_21_0, half_tile_22_0 } };
    mm_half(t, r0, r1, tiles);
}

static void mm_bf16(const struct mm_task *t, int64_t r0, int64_t r1) {
    static const h2_tile_fn tiles[2][2] = { { half_tile_11_1, half_tile_12_1 }, { half_tile_21_1, half_tile_22_1 } };
    mm_half(t, r0, r1, tiles);
}

/*
 * Q8_0 and Q4_0 run as tiles of up to QR rows x QT tokens, so that a row's
 * weights are loaded and unpacked once for several tokens, and a token's
 * activations once for two rows. AVX2 has no VNNI: maddubs multiplies
 * unsigned by signed bytes and adds neighbours into int16 (saturating);
 * madd with ones adds those pairs into int32 lanes, which are converted to
 * float and scaled by their block's dw * dx into the tile's accumulators.
 * Measured here (Zen 5), maddubs, madd, mul and fma share two pipes, and
 * those bound the kernels; sign, convert, shuffles and adds run beside them.
 *
 * Q8_0 passes |w| and x with w's sign: a pair is at most 2*128*127 = 32512,
 * so int16 never saturates. (w + 128 with the offset taken off later, as
 * kernels_avx512.c does, could reach 2*255*127.) One block fills a register.
 * The scales dw * dx are made eight blocks at a time with one multiply and
 * read back as broadcasts, leaving maddubs, madd and fma on those pipes.
 *
 * Q4_0 passes its nibbles 0..15 (a pair at most 2*15*127; the low and high
 * nibbles' pairs added, 7620), two blocks to a register: the activations are
 * grouped (kernels.h, XL_GROUPED), so the low nibbles of blocks 0, 1 of a
 * group meet 32 consecutive bytes of x and their high nibbles the 32 bytes
 * 64 further on (blocks 2, 3: 32 bytes later each). Lanes 0-3 hold the first
 * block's sums and 4-7 the second's, as in the lane vectors, which supply
 * the -8 offset in int32 (-2 * the block's sum of x per lane) and dx. Blocks
 * past the last full group are in natural order: one to a register, offset
 * -sum(x) in each of its 8 lanes.
 *
 * Prompts: token tiles outer, rows inner, so that the tile's activations
 * stay in L1 while the rows pass. Decoding (one token) runs 1 x 1 tiles,
 * one row at a time: one stream per thread keeps the prefetchers busy (see
 * kernels_avx512.c). Every tile alternates between two accumulators per
 * output, so that each fma need not wait for the last (a decode step's 1 x
 * 1 tile needs it) and an output's sum is the same in every tile shape:
 * batch invariance. The 2 x 4 tile's 16 accumulators are more than AVX2's
 * registers: prompts measured 7% slower than with one bank in tiles of
 * three outputs or more, the order that made a token's bits depend on its
 * tile.
 */
#define QR 2
#define QT 4
#define INLINE static inline __attribute__((always_inline))

/* int16 lanes added in neighbouring pairs, into int32 lanes. */
INLINE __m256i sum_pairs(__m256i p16) { return _mm256_madd_epi16(p16, _mm256_set1_epi16(1)); }

/*
 * The scales (the f16 first field) of blocks a and b in words 0 and 1. Two
 * loads and a shuffle: cheaper here than building the vector word by word.
 */
INLINE __m128i d_pair(const void *a, const void *b) {
    return _mm_unpacklo_epi16(_mm_loadu_si128((const __m128i *)a), _mm_loadu_si128((const __m128i *)b));
}

/* A tile's rows, and per token where its activations start. */
struct tile {
    const void *w[QR];
    const int8_t *x[QT]; /* xq */
    const float *xd[QT];
    const int32_t *xsum[QT];
    const int32_t *vc[QT]; /* the lane vectors: Q4_0 reads them, Q8_0 does not */
    const float *vd[QT];
};

/* Fills the tile for rows r0.. and tokens t0.., and zeroes both accumulator banks. */
INLINE void tile_start(struct tile *tl, __m256 acc[QR][QT][2], const struct mm_task *t, int64_t r0,
                       int t0, const int NR, const int NT) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK, nv = nb / 4 * 16;
    for (int i = 0; i < NR; i++) {
        tl->w[i] = row_ptr(t, r0 + i);
        for (int j = 0; j < NT; j++) acc[i][j][0] = acc[i][j][1] = _mm256_setzero_ps();
    }
    for (int j = 0; j < NT; j++) {
        const int64_t tok = t0 + j;
        tl->x[j] = t->xq + tok * cols;
        tl->xd[j] = t->xd + tok * nb;
        tl->xsum[j] = t->xsum + tok * nb;
        tl->vc[j] = t->xvc + tok * nv;
        tl->vd[j] = t->xvd + tok * nv;
    }
}

INLINE void tile_store(__m256 acc[QR][QT][2], const struct mm_task *t, int64_t r0, int t0,
                       const int NR, const int NT) {
    for (int i = 0; i < NR; i++)
        for (int j = 0; j < NT; j++)
            t->y[(t0 + j) * t->w->rows + r0 + i] = hsum256(_mm256_add_ps(acc[i][j][0], acc[i][j][1]));
}

/* s[i][j][k] = dw * dx of block b+k for row i and token j, k < 8. */
INLINE void q8_scales(const struct tile *tl, float s[QR][QT][8], int64_t b, const int NR,
                      const int NT) {
    for (int i = 0; i < NR; i++) {
        const struct shoal_block_q8_0 *w = (const struct shoal_block_q8_0 *)tl->w[i] + b;
        __m128i d03 = _mm_unpacklo_epi32(d_pair(&w[0], &w[1]), d_pair(&w[2], &w[3]));
        __m128i d47 = _mm_unpacklo_epi32(d_pair(&w[4], &w[5]), d_pair(&w[6], &w[7]));
        __m256 dw = _mm256_cvtph_ps(_mm_unpacklo_epi64(d03, d47));
        for (int j = 0; j < NT; j++)
            _mm256_storeu_ps(s[i][j], _mm256_mul_ps(dw, _mm256_loadu_ps(tl->xd[j] + b)));
    }
}

/* Q8_0 block b of the tile's rows, scaled by s[i][j][k], into accumulator bank k1. */
INLINE void q8_block(const struct tile *tl, __m256 acc[QR][QT][2], const float s[QR][QT][8],
                     int64_t b, int k, int k1, const int NR, const int NT) {
    __m256i w[QR], aw[QR];
    for (int i = 0; i < NR; i++) {
        w[i] = _mm256_loadu_si256((const __m256i *)((const struct shoal_block_q8_0 *)tl->w[i])[b].qs);
        /* sign, not abs: with abs the compiler loads w twice, once into each
         * instruction, and decoding measured 4% slower */
        aw[i] = _mm256_sign_epi8(w[i], w[i]);
    }
    for (int j = 0; j < NT; j++) {
        __m256i x = _mm256_loadu_si256((const __m256i *)(tl->x[j] + b * SHOAL_QK));
        for (int i = 0; i < NR; i++) {
            __m256i p = sum_pairs(_mm256_maddubs_epi16(aw[i], _mm256_sign_epi8(x, w[i])));
            acc[i][j][k1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), _mm256_broadcast_ss(&s[i][j][k]),
                                            acc[i][j][k1]);
        }
    }
}

INLINE void q8_tile(const struct mm_task *t, int64_t r0, int t0, const int NR, const int NT) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const int k1 = 1; /* odd blocks into the second bank, whatever the tile (batch invariance) */
    struct tile tl;
    __m256 acc[QR][QT][2];
    float s[QR][QT][8];
    tile_start(&tl, acc, t, r0, t0, NR, NT);
    int64_t b = 0;
    for (; b + 8 <= nb; b += 8) {
        q8_scales(&tl, s, b, NR, NT);
        for (int k = 0; k < 8; k += 2) {
            q8_block(&tl, acc, s, b + k, k, 0, NR, NT);
            q8_block(&tl, acc, s, b + k + 1, k + 1, k1, NR, NT);
        }
    }
    for (; b < nb; b++) {
        for (int i = 0; i < NR; i++)
            for (int j = 0; j < NT; j++)
                s[i][j][0] = f16(((const struct shoal_block_q8_0 *)tl.w[i])[b].d) * tl.xd[j][b];
        q8_block(&tl, acc, s, b, 0, 0, NR, NT);
    }
    tile_store(acc, t, r0, t0, NR, NT);
}

/* Q4_0 blocks g+2h, g+2h+1 (half h of the group of four at g), into accumulator bank k1. */
INLINE void q4_half(const struct tile *tl, __m256 acc[QR][QT][2], int64_t g, int h, int k1,
                    const int NR, const int NT) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i lanes = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const int64_t v = g * 4 + 8 * h; /* in the lane vectors */
    /* a row at a time: both rows' nibbles and scales would not stay in registers */
    for (int i = 0; i < NR; i++) {
        const struct shoal_block_q4_0 *w = (const struct shoal_block_q4_0 *)tl->w[i] + g + 2 * h;
        __m256i q = _mm256_loadu2_m128i((const __m128i *)w[1].qs, (const __m128i *)w[0].qs);
        __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
        __m128 d = _mm_cvtph_ps(d_pair(&w[0], &w[1]));
        __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(d), lanes);
        for (int j = 0; j < NT; j++) {
            const int8_t *x = tl->x[j] + g * SHOAL_QK + 32 * h;
            __m256i p16 = _mm256_add_epi16(
                _mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)x)),
                _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(x + 64))));
            __m256i p = _mm256_add_epi32(sum_pairs(p16),
                                         _mm256_loadu_si256((const __m256i *)(tl->vc[j] + v)));
            __m256 sc = _mm256_mul_ps(dw, _mm256_loadu_ps(tl->vd[j] + v));
            acc[i][j][k1] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i][j][k1]);
        }
    }
}

/* Q4_0 block b, past the groups (natural order), into accumulator bank 0. */
INLINE void q4_block(const struct tile *tl, __m256 acc[QR][QT][2], int64_t b, const int NR,
                     const int NT) {
    for (int i = 0; i < NR; i++) {
        const struct shoal_block_q4_0 *w = (const struct shoal_block_q4_0 *)tl->w[i] + b;
        __m128i q = _mm_loadu_si128((const __m128i *)w->qs);
        __m256i wq = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), _mm256_set1_epi8(0x0f));
        for (int j = 0; j < NT; j++) {
            __m256i x = _mm256_loadu_si256((const __m256i *)(tl->x[j] + b * SHOAL_QK));
            __m256i p = _mm256_add_epi32(sum_pairs(_mm256_maddubs_epi16(wq, x)),
                                         _mm256_set1_epi32(-tl->xsum[j][b]));
            __m256 sc = _mm256_set1_ps(f16(w->d) * tl->xd[j][b]);
            acc[i][j][0] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), sc, acc[i][j][0]);
        }
    }
}

INLINE void q4_tile(const struct mm_task *t, int64_t r0, int t0, const int NR, const int NT) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const int k1 = 1; /* as q8_tile's */
    struct tile tl;
    __m256 acc[QR][QT][2];
    tile_start(&tl, acc, t, r0, t0, NR, NT);
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        q4_half(&tl, acc, b, 0, 0, NR, NT);
        q4_half(&tl, acc, b, 1, k1, NR, NT);
    }
    for (; b < nb; b++) q4_block(&tl, acc, b, NR, NT);
    tile_store(acc, t, r0, t0, NR, NT);
}

typedef void (*tile_fn)(const struct mm_task *t, int64_t r0, int t0);

/* Prompts: token tiles outer, rows inner; tiles[nr-1][nt-1] computes nr rows x nt tokens. */
static void mm_tiles(const struct mm_task *t, int64_t r0, int64_t r1, const tile_fn tiles[QR][QT]) {
    for (int tk = 0; tk < t->n; tk += QT) {
        int nt = t->n - tk < QT ? t->n - tk : QT;
        for (int64_t i = r0; i < r1; i += QR) {
            int nr = r1 - i < QR ? (int)(r1 - i) : QR;
            tiles[nr - 1][nt - 1](t, i, tk);
        }
    }
}

/*
 * One function per tile shape, so that each is compiled with its loops
 * unrolled. Decoding calls none of them: its loop over rows has the 1 x 1
 * tile inlined (a call per row measured 1-2% slower).
 */
#define TILE_FN(kind, nr, nt)                                                                  \
    static void kind##_##nr##_##nt(const struct mm_task *t, int64_t r0, int t0) {              \
        kind##_tile(t, r0, t0, nr, nt);                                                        \
    }
#define TILE_FNS(kind)                                                                         \
    TILE_FN(kind, 1, 1) TILE_FN(kind, 1, 2) TILE_FN(kind, 1, 3) TILE_FN(kind, 1, 4)            \
    TILE_FN(kind, 2, 1) TILE_FN(kind, 2, 2) TILE_FN(kind, 2, 3) TILE_FN(kind, 2, 4)            \
    static void mm_##kind(const struct mm_task *t, int64_t r0, int64_t r1) {                   \
        static const tile_fn tiles[QR][QT] = {                                                 \
            { kind##_1_1, kind##_1_2, kind##_1_3, kind##_1_4 },                                \
            { kind##_2_1, kind##_2_2, kind##_2_3, kind##_2_4 },                                \
        };                                                                                     \
        if (t->n > 1) mm_tiles(t, r0, r1, tiles);                                              \
        else                                                                                   \
            for (int64_t i = r0; i < r1; i++) kind##_tile(t, i, 0, 1, 1);                      \
    }
TILE_FNS(q8)
TILE_FNS(q4)
#undef TILE_FNS
#undef TILE_FN

/* --------------------------------------------------------------- f64 sums */

/*
 * The mm_f64 kernels, a row and a token at a time (they serve the
 * row-parallel projections; decoding dominates their time). Lanes of int32
 * sums times their block's f32 scale are exact in f64, as are f32 weights
 * times f32 activations; both add up in f64 registers.
 */
INLINE void acc_f64(__m256d acc[2], __m256i p, __m256 scale) {
    acc[0] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_castsi256_si128(p)),
                             _mm256_cvtps_pd(_mm256_castps256_ps128(scale)), acc[0]);
    acc[1] = _mm256_fmadd_pd(_mm256_cvtepi32_pd(_mm256_extracti128_si256(p, 1)),
                             _mm256_cvtps_pd(_mm256_extractf128_ps(scale, 1)), acc[1]);
}

INLINE double hsum_pd(const __m256d acc[2]) {
    __m256d v = _mm256_add_pd(acc[0], acc[1]);
    __m128d s = _mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}

static double row_f64_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w = row_ptr(t, r);
    const int8_t *x = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb;
    __m256d acc[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
    for (int64_t b = 0; b < nb; b++) {
        __m256i wv = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i xv = _mm256_loadu_si256((const __m256i *)(x + b * SHOAL_QK));
        __m256i p = sum_pairs(_mm256_maddubs_epi16(_mm256_sign_epi8(wv, wv), _mm256_sign_epi8(xv, wv)));
        acc_f64(acc, p, _mm256_set1_ps(f16(w[b].d) * xd[b]));
    }
    return hsum_pd(acc);
}

/* Q4_0 in f64 over grouped activations: the lanes start at their correction (the lane vectors). */
static double row_f64_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int BS = sizeof(struct shoal_block_q4_0), QO = 2; /* where the nibbles start in a block */
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK, nv = nb / 4 * 16;
    const uint8_t *w = row_ptr(t, r);
    const int8_t *x = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb, *vd = t->xvd + tok * nv;
    const int32_t *vc = t->xvc + tok * nv, *xsum = t->xsum + tok * nb;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i lanes = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    __m256d acc[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4)
        for (int h = 0; h < 2; h++) { /* blocks b+2h, b+2h+1: the layout of q4_half */
            const uint8_t *w0 = w + (b + 2 * h) * BS, *w1 = w0 + BS;
            const int8_t *xp = x + b * SHOAL_QK + 32 * h;
            __m256i q = _mm256_loadu2_m128i((const __m128i *)(w1 + QO), (const __m128i *)(w0 + QO));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            __m256i p16 = _mm256_add_epi16(_mm256_maddubs_epi16(lo, _mm256_loadu_si256((const __m256i *)xp)),
                                           _mm256_maddubs_epi16(hi, _mm256_loadu_si256((const __m256i *)(xp + 64))));
            __m256i p = _mm256_add_epi32(sum_pairs(p16), _mm256_loadu_si256((const __m256i *)(vc + b * 4 + 8 * h)));
            __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(d_pair(w0, w1))), lanes);
            acc_f64(acc, p, _mm256_mul_ps(dw, _mm256_loadu_ps(vd + b * 4 + 8 * h)));
        }
    double s = hsum_pd(acc);
    for (; b < nb; b++) { /* past the groups, in natural order */
        const uint8_t *wb = w + b * BS, *qs = wb + QO;
        uint16_t d;
        memcpy(&d, wb, 2);
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++)
            sum += (qs[j] & 0x0f) * x[b * SHOAL_QK + j] + (qs[j] >> 4) * x[b * SHOAL_QK + j + 16];
        s += (double)(f16(d) * xd[b]) * (sum - 8 * xsum[b]);
    }
    return s;
}

/* f32 products of 8-value pieces (widened by load8) summed in f64. */
INLINE double row_f64_wide(const struct mm_task *t, int64_t r, int tok, __m256 (*load8)(const void *, int64_t),
                           float (*one)(const void *, int64_t)) {
    const int64_t n = t->w->cols;
    const void *w = row_ptr(t, r);
    const float *x = t->x + tok * n;
    __m256d acc[2] = { _mm256_setzero_pd(), _mm256_setzero_pd() };
    int64_t i = 0;
    for (; i + 8 <= n; i += 8) {
        __m256 wv = load8(w, i), xv = _mm256_loadu_ps(x + i);
        acc[0] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_castps256_ps128(wv)),
                                 _mm256_cvtps_pd(_mm256_castps256_ps128(xv)), acc[0]);
        acc[1] = _mm256_fmadd_pd(_mm256_cvtps_pd(_mm256_extractf128_ps(wv, 1)),
                                 _mm256_cvtps_pd(_mm256_extractf128_ps(xv, 1)), acc[1]);
    }
    double s = hsum_pd(acc);
    for (; i < n; i++) s += (double)one(w, i) * x[i];
    return s;
}

static __m256 load8_f32(const void *w, int64_t i) { return _mm256_loadu_ps((const float *)w + i); }
static float one_f32(const void *w, int64_t i) { return ((const float *)w)[i]; }

static double row_f64_f32(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_wide(t, r, tok, load8_f32, one_f32);
}

MM_ROW_DRIVER_F64(f32)
MM_ROW_DRIVER_F64(q8_0)
MM_ROW_DRIVER_F64(q4_0)

/* ------------------------------------------ Q4_1, Q5_0, Q5_1, IQ4_NL */

/*
 * The 32-value block types beside Q4_0 (kernels_scalar.c has their
 * formats): Q4_1's codes are its nibbles plus m x s (m times dx x the sum of
 * x); Q5_0 and Q5_1 add a fifth bit from qh (values 0..31; Q5_0 less 16,
 * taken off with the block sums of x, Q5_1 plus m x s), IQ4_NL looks its
 * nibbles up in a table of 16 signed levels (maddubs on |level| and x with
 * the level's sign). Grouped activations as Q4_0's (two blocks to a
 * register, the lane vectors for the offset and dx), but tiles of one row x
 * up to X_T tokens with one accumulator per output: each (row, token) output
 * goes through the same instructions in the same order whatever the tile,
 * so these are row- and batch-invariant (as Q8_0's and Q4_0's tiles are,
 * by their two banks). f32 sums of the lanes times dw * dx; or (EXACT) the same exact
 * products summed in f64.
 */
enum { X41, X50, X51, XNL };
#define X_BS(K) ((K) == X51 ? 24 : (K) == X50 ? 22 : (K) == X41 ? 20 : 18) /* block bytes */
#define X_QO(K) ((K) == X51 ? 8 : (K) == X50 ? 6 : (K) == X41 ? 4 : 2)    /* where the nibbles start */
#define X_MIN(K) ((K) == X41 || (K) == X51) /* d x q + m: the m part meets s */
#define X_HI(K) ((K) == X50 || (K) == X51)  /* a fifth bit */
#define X_T 4

/* 0x10 in byte i where bit i of m is set. */
INLINE __m256i bits_0x10(uint32_t m) {
    const __m256i v = _mm256_shuffle_epi8(_mm256_set1_epi32((int)m),
                                          _mm256_setr_epi8(0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1,
                                                           2, 2, 2, 2, 2, 2, 2, 2, 3, 3, 3, 3, 3, 3, 3, 3));
    const __m256i bit = _mm256_set1_epi64x((long long)0x8040201008040201ull);
    return _mm256_and_si256(_mm256_cmpeq_epi8(_mm256_and_si256(v, bit), bit), _mm256_set1_epi8(0x10));
}

INLINE uint32_t qh_of(const uint8_t *blk, const int K) {
    uint32_t qh;
    memcpy(&qh, blk + X_QO(K) - 4, 4);
    return qh;
}

INLINE __m256i iq4nl_table(void) {
    return _mm256_broadcastsi128_si256(_mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53,
                                                     69, 89, 113));
}

/* int8 codes times int8 x, pairs into int32 lanes: maddubs with the sign trick for IQ4_NL's levels. */
INLINE __m256i codes_dot(__m256i code, __m256i x, const int K) {
    const __m256i p16 = K == XNL ? _mm256_maddubs_epi16(_mm256_sign_epi8(code, code), _mm256_sign_epi8(x, code))
                                 : _mm256_maddubs_epi16(code, x);
    return sum_pairs(p16);
}

/* A tile's f32 or f64 (EXACT) accumulation of int32 lanes p times their f32 scales. */
INLINE void x_acc(__m256 *acc, __m256d accd[2], __m256i p, __m256 scale, const int EXACT) {
    if (EXACT) acc_f64(accd, p, scale);
    else *acc = _mm256_fmadd_ps(_mm256_cvtepi32_ps(p), scale, *acc);
}

INLINE void x32_tile(const struct mm_task *t, int64_t r, int t0, const int NT, const int EXACT, const int K) {
    const int BS = X_BS(K), QO = X_QO(K);
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK, nv = nb / 4 * 16, rows = t->w->rows;
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const __m256i lanes = _mm256_setr_epi32(0, 0, 0, 0, 1, 1, 1, 1);
    const uint8_t *w = row_ptr(t, r);
    __m256 acc[X_T];
    __m256d accd[X_T][2];
    double mn[X_T]; /* Q4_1's and Q5_1's m x s terms, in order */
    for (int j = 0; j < NT; j++) {
        acc[j] = _mm256_setzero_ps();
        accd[j][0] = accd[j][1] = _mm256_setzero_pd();
        mn[j] = 0;
    }
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4)
        for (int h = 0; h < 2; h++) { /* blocks b+2h, b+2h+1: q4_half's layout */
            const uint8_t *w0 = w + (b + 2 * h) * BS, *w1 = w0 + BS;
            const __m256i q = _mm256_loadu2_m128i((const __m128i *)(w1 + QO), (const __m128i *)(w0 + QO));
            __m256i lo = _mm256_and_si256(q, m4), hi = _mm256_and_si256(_mm256_srli_epi16(q, 4), m4);
            if (K == XNL) {
                lo = _mm256_shuffle_epi8(iq4nl_table(), lo);
                hi = _mm256_shuffle_epi8(iq4nl_table(), hi);
            } else if (X_HI(K)) {
                const uint32_t h0 = qh_of(w0, K), h1 = qh_of(w1, K);
                lo = _mm256_or_si256(lo, bits_0x10((h0 & 0xffff) | h1 << 16));
                hi = _mm256_or_si256(hi, bits_0x10(h0 >> 16 | (h1 & 0xffff0000u)));
            }
            const __m256 dw = _mm256_permutevar8x32_ps(_mm256_castps128_ps256(_mm_cvtph_ps(d_pair(w0, w1))), lanes);
            uint16_t m0 = 0, m1 = 0;
            if (X_MIN(K)) memcpy(&m0, w0 + 2, 2), memcpy(&m1, w1 + 2, 2);
            for (int j = 0; j < NT; j++) {
                const int64_t tok = t0 + j, v = tok * nv + b * 4 + 8 * h;
                const int8_t *xp = t->xq + tok * cols + b * SHOAL_QK + 32 * h;
                __m256i p = _mm256_add_epi32(codes_dot(lo, _mm256_loadu_si256((const __m256i *)xp), K),
                                             codes_dot(hi, _mm256_loadu_si256((const __m256i *)(xp + 64)), K));
                if (K == X50) /* -16 x the block's sum: twice the lane vectors' -8 */
                    p = _mm256_add_epi32(p, _mm256_slli_epi32(_mm256_loadu_si256((const __m256i *)(t->xvc + v)), 1));
                x_acc(&acc[j], accd[j], p, _mm256_mul_ps(dw, _mm256_loadu_ps(t->xvd + v)), EXACT);
                if (X_MIN(K))
                    mn[j] += (double)f16(m0) * t->xs[tok * nb + b + 2 * h] + (double)f16(m1) * t->xs[tok * nb + b + 2 * h + 1];
            }
        }
    for (; b < nb; b++) { /* past the groups, in natural order: one block to a register */
        const uint8_t *wb = w + b * BS;
        const __m128i q = _mm_loadu_si128((const __m128i *)(wb + QO));
        __m256i code = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16(q, 4), q), m4);
        if (K == XNL) code = _mm256_shuffle_epi8(iq4nl_table(), code);
        else if (X_HI(K)) code = _mm256_or_si256(code, bits_0x10(qh_of(wb, K)));
        uint16_t d, m = 0;
        memcpy(&d, wb, 2);
        if (X_MIN(K)) memcpy(&m, wb + 2, 2);
        for (int j = 0; j < NT; j++) {
            const int64_t tok = t0 + j;
            __m256i p = codes_dot(code, _mm256_loadu_si256((const __m256i *)(t->xq + tok * cols + b * SHOAL_QK)), K);
            if (K == X50) p = _mm256_add_epi32(p, _mm256_set1_epi32(-2 * t->xsum[tok * nb + b])); /* -16 x sum */
            x_acc(&acc[j], accd[j], p, _mm256_set1_ps(f16(d) * t->xd[tok * nb + b]), EXACT);
            if (X_MIN(K)) mn[j] += (double)f16(m) * t->xs[tok * nb + b];
        }
    }
    for (int j = 0; j < NT; j++) {
        const int64_t at = (t0 + j) * rows + r;
        if (EXACT) t->yd[at] = hsum_pd(accd[j]) + mn[j];
        else t->y[at] = hsum256(acc[j]) + (float)mn[j];
    }
}

#define X_FNS(name, K)                                                                         \
    static void name##_1(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 1, 0, K); } \
    static void name##_2(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 2, 0, K); } \
    static void name##_3(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 3, 0, K); } \
    static void name##_4(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 4, 0, K); } \
    static void name##_f64_1(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 1, 1, K); } \
    static void name##_f64_2(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 2, 1, K); } \
    static void name##_f64_3(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 3, 1, K); } \
    static void name##_f64_4(const struct mm_task *t, int64_t r, int t0) { x32_tile(t, r, t0, 4, 1, K); } \
    static void mm_##name(const struct mm_task *t, int64_t r0, int64_t r1) {                   \
        static void (*const f[X_T])(const struct mm_task *, int64_t, int) = { name##_1, name##_2, name##_3, name##_4 }; \
        x_drive(t, r0, r1, f);                                                                 \
    }                                                                                          \
    static void mm_f64_##name(const struct mm_task *t, int64_t r0, int64_t r1) {               \
        static void (*const f[X_T])(const struct mm_task *, int64_t, int) = {                   \
            name##_f64_1, name##_f64_2, name##_f64_3, name##_f64_4 };                          \
        x_drive(t, r0, r1, f);                                                                 \
    }
_Static_assert(X_T == 4, "X_FNS lists 4 tile sizes");

/* Tiles of X_T tokens (their activations stay in L1) passing rows [r0, r1). */
static void x_drive(const struct mm_task *t, int64_t r0, int64_t r1,
                    void (*const f[X_T])(const struct mm_task *, int64_t, int)) {
    for (int tk = 0; tk < t->n; tk += X_T) {
        const int nt = t->n - tk < X_T ? t->n - tk : X_T;
        for (int64_t r = r0; r < r1; r++) f[nt - 1](t, r, tk);
    }
}

X_FNS(q41, X41) /* (q4_1_1 and the like are Q4_0's 1 x 1 tiles) */
X_FNS(q5_0, X50)
X_FNS(q5_1, X51)
X_FNS(iq4_nl, XNL)

/* ------------------------------------------------------------- attention */

static float kv_dot_f32(const float *q, const void *k, int n) { return dot_f32(q, k, n); }

static float kv_dot_f16(const float *q, const void *k, int n) {
    const uint16_t *h = k;
    __m256 acc = _mm256_setzero_ps();
    int i = 0;
    for (; i + 8 <= n; i += 8)
        acc = _mm256_fmadd_ps(_mm256_loadu_ps(q + i),
                              _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))), acc);
    float s = hsum256(acc);
    for (; i < n; i++) s += q[i] * f16(h[i]);
    return s;
}

static void kv_axpy_f32(float *o, float w, const void *v, int n) {
    const float *x = v;
    __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wv, _mm256_loadu_ps(x + i), _mm256_loadu_ps(o + i)));
    for (; i < n; i++) o[i] += w * x[i];
}

static void kv_axpy_f16(float *o, float w, const void *v, int n) {
    const uint16_t *h = v;
    __m256 wv = _mm256_set1_ps(w);
    int i = 0;
    for (; i + 8 <= n; i += 8)
        _mm256_storeu_ps(o + i, _mm256_fmadd_ps(wv, _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(h + i))),
                                                _mm256_loadu_ps(o + i)));
    for (; i < n; i++) o[i] += w * f16(h[i]);
}

/* --------------------------------------------------------------- silu */

/* e^x for 8 floats: kernels_avx512.c's exp16, in AVX2. */
INLINE __m256 exp8(__m256 x) {
    const __m256 hi = _mm256_set1_ps(88.72283935546875f), lo = _mm256_set1_ps(-87.33654022216797f);
    const __m256 over = _mm256_cmp_ps(x, hi, _CMP_GT_OQ), under = _mm256_cmp_ps(x, lo, _CMP_LT_OQ);
    x = _mm256_min_ps(hi, _mm256_max_ps(lo, x));
    const __m256 n = _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(1.44269504088896341f)),
                                     _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(0.693359375f), x);
    r = _mm256_fnmadd_ps(n, _mm256_set1_ps(-2.12194440e-4f), r);
    static const float c[8] = { 1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f };
    __m256 e = _mm256_set1_ps(c[0]);
    for (int i = 1; i < 8; i++) e = _mm256_fmadd_ps(e, r, _mm256_set1_ps(c[i]));
    const __m256i ni = _mm256_cvtps_epi32(n), h = _mm256_srai_epi32(ni, 1), b = _mm256_set1_epi32(127);
    e = _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(h, b), 23)));
    e = _mm256_mul_ps(e, _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_add_epi32(_mm256_sub_epi32(ni, h), b), 23)));
    e = _mm256_blendv_ps(e, _mm256_set1_ps(INFINITY), over);
    return _mm256_blendv_ps(e, _mm256_setzero_ps(), under);
}

/* g = silu(g) * u = g / (1 + e^-g) * u, as the scalar loop writes it. */
static void silu_mul(float *g, const float *u, long long n) {
    long long i = 0;
    for (; i + 8 <= n; i += 8) {
        const __m256 y = _mm256_loadu_ps(g + i);
        const __m256 s = _mm256_div_ps(y, _mm256_add_ps(_mm256_set1_ps(1.0f), exp8(_mm256_sub_ps(_mm256_setzero_ps(), y))));
        _mm256_storeu_ps(g + i, _mm256_mul_ps(s, _mm256_loadu_ps(u + i)));
    }
    for (; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

MM_ROW_DRIVER(f32)
#undef DRIVER

const struct cpu_kernels shoal_cpu_kernels_avx2 = {
    .name = "avx2",
    .batch_invariant = 1, /* (every kernel: see the file's banner) */
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8,
        [SHOAL_DTYPE_Q4_0] = mm_q4,
        [SHOAL_DTYPE_Q4_1] = mm_q41,
        [SHOAL_DTYPE_Q5_0] = mm_q5_0,
        [SHOAL_DTYPE_Q5_1] = mm_q5_1,
        [SHOAL_DTYPE_IQ4_NL] = mm_iq4_nl,
        [SHOAL_DTYPE_Q2_K] = shoal_cpu_avx2_mm_q2_k,
        [SHOAL_DTYPE_Q3_K] = shoal_cpu_avx2_mm_q3_k,
        [SHOAL_DTYPE_Q4_K] = shoal_cpu_avx2_mm_q4_k,
        [SHOAL_DTYPE_Q5_K] = shoal_cpu_avx2_mm_q5_k,
        [SHOAL_DTYPE_Q6_K] = shoal_cpu_avx2_mm_q6_k,
        [SHOAL_DTYPE_IQ4_XS] = shoal_cpu_avx2_mm_iq4_xs,
    },
    .mm_f64 = {
        [SHOAL_DTYPE_F32] = mm_f64_f32,
        [SHOAL_DTYPE_F16] = mm_f64_f16,
        [SHOAL_DTYPE_BF16] = mm_f64_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_f64_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_f64_q4_0,
        [SHOAL_DTYPE_Q4_1] = mm_f64_q41,
        [SHOAL_DTYPE_Q5_0] = mm_f64_q5_0,
        [SHOAL_DTYPE_Q5_1] = mm_f64_q5_1,
        [SHOAL_DTYPE_IQ4_NL] = mm_f64_iq4_nl,
        [SHOAL_DTYPE_Q2_K] = shoal_cpu_avx2_mm_f64_q2_k,
        [SHOAL_DTYPE_Q3_K] = shoal_cpu_avx2_mm_f64_q3_k,
        [SHOAL_DTYPE_Q4_K] = shoal_cpu_avx2_mm_f64_q4_k,
        [SHOAL_DTYPE_Q5_K] = shoal_cpu_avx2_mm_f64_q5_k,
        [SHOAL_DTYPE_Q6_K] = shoal_cpu_avx2_mm_f64_q6_k,
        [SHOAL_DTYPE_IQ4_XS] = shoal_cpu_avx2_mm_f64_iq4_xs,
    },
    .xlayout = {
        [SHOAL_DTYPE_Q4_0] = XL_GROUPED | XL_LANES,
        [SHOAL_DTYPE_Q4_1] = XL_GROUPED | XL_LANES,
        [SHOAL_DTYPE_Q5_0] = XL_GROUPED | XL_LANES,
        [SHOAL_DTYPE_Q5_1] = XL_GROUPED | XL_LANES,
        [SHOAL_DTYPE_IQ4_NL] = XL_GROUPED | XL_LANES,
    },
    .quantize_x = shoal_cpu_quantize_x,
    .quantize_q8k = shoal_cpu_avx2_quantize_q8k,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
    .silu_mul = silu_mul,
};
