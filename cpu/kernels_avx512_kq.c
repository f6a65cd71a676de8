/*
 * kernels_avx512_kq.c — the AVX-512 (VNNI) matmuls of the super-block types
 * (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) with Q8_K activations: f32 sums
 * (mm) and exact f64 sums (mm_f64); kernels_avx512.c's table lists them
 * (the 32-value block types are there). Q4_K, Q5_K, Q6_K and IQ4_XS are
 * packed at load, 16 rows interleaved (the second half of this file says
 * how): what a Q4_K_M, Q5_K_M, Q6_K or IQ4_XS file is made of. Q2_K and
 * Q3_K run a row at a time on the GGUF rows (the first half). Compiled
 * with AVX-512 enabled (see CMakeLists.txt) and only called after the
 * processor says it has it.
 *
 * Both compute a super-block's integer sum_k sc_k * dot_k exactly (and the
 * mins' sum_k m_k * bsum_k), then scale it:
 *  - mm: isum * (d * dx) - msum * (dmin * dx) in f32: another order than
 *    the scalar level's f64 sum, held to its tolerance;
 *  - mm_f64: kernels_scalar.c's kterm terms, (isum * d) * dx (isum * d
 *    exact, so the product rounded once), added into the row's f64 sum in
 *    its order: the scalar level's bits, so that any tensor-parallel column
 *    split sums as one rank does.
 * Each (row, token) output goes through the same instructions in the same
 * order whatever the tile, the rows the call holds or the number of tokens:
 * one token alone, or a row of a slice, gives the bits it gives in any
 * batch or in the whole weight.
 *
 * The weights two pages on are prefetched: the rows are read in an order
 * (scales, then codes) that the hardware prefetchers follow poorly across
 * 4 KiB pages. Measured here (Zen 5, one thread, 5632 x 2048, a row at a
 * time): Q6_K decoded at 33 GB/s without and 38 with, Q4_K 28 and 30, the
 * others level.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"
#include "x86_sum.h"

#define INLINE static inline __attribute__((always_inline))
#define KT 8 /* most tokens per tile */

enum { Q2K, Q3K, Q4K, Q5K, Q6K, IQ4XS };

static inline const uint8_t *row_ptr(const struct mm_task *t, int64_t r) {
    return (const uint8_t *)t->w->data + (size_t)r * t->w->row_bytes;
}

INLINE float f16(const uint8_t *p) {
    uint16_t h;
    memcpy(&h, p, 2);
    return _cvtsh_ss(h);
}

/* ------------------------------------------------ Q2_K, Q3_K: a row at a time */

/*
 * A super-block goes through in four quarters of 64 values, each one
 * register of codes in value order (unsigned: 0..3, 0..7) and one register
 * of its sub-block scales, as int16, the scale of each pair of values. Per
 * token, a quarter is vpmaddubsw (codes x int8 activations, pairs into
 * int16: no saturation) and vpdpwssd (those pairs times their scales, added
 * into int32 lanes): the 16 lanes hold the super-block's sum_k sc_k * dot_k
 * in parts, each exact. Q3_K's offset (-4) and Q2_K's mins come from the
 * activations' sums of 16 (bsums) times the scales or mins, one vpmaddwd
 * per super-block. The lanes of CH super-blocks are then added across
 * eight super-blocks at a time (exact integers, below 2^27:
 * kernels_scalar.c's bounds), and the scales applied to eight super-blocks
 * side by side. Tiles are one row x up to KT tokens, a row's super-block
 * unpacked once for the tile's tokens; decoding reads one row at a time:
 * one stream per thread (kernels_avx512.c says why).
 */

/* One super-block's weights, unpacked. */
struct sb {
    __m512i q[4];      /* codes of values 64 k .. 64 k + 63, unsigned */
    __m512i s[4];      /* their scales as int16, one per pair of values */
    __m256i c16;       /* int16 per 16 values: Q2_K's mins, Q3_K's scales */
};

/* Bytes i, i+1 of a 128-bit lane repeated over it, lane by lane: shuffle controls. */
INLINE __m512i pair_ctrl(int l0, int l1, int l2, int l3) {
    const int b[4] = { l0, l1, l2, l3 };
    uint64_t v[8];
    for (int k = 0; k < 8; k++) {
        const uint64_t w = (uint64_t)(b[k / 2] | (b[k / 2] + 1) << 8);
        v[k] = w | w << 16 | w << 32 | w << 48;
    }
    return _mm512_loadu_si512((const void *)v);
}

/* From 16 int16 scales per 16 values (sc16: Q2_K, Q3_K, Q6_K): lane l of quarter k takes 4k + l. */
INLINE void scales_by16(struct sb *o, __m256i sc16) {
    const __m512i b0 = _mm512_broadcast_i32x4(_mm256_castsi256_si128(sc16));
    const __m512i b1 = _mm512_broadcast_i32x4(_mm256_extracti128_si256(sc16, 1));
    const __m512i c0 = pair_ctrl(0, 2, 4, 6), c1 = pair_ctrl(8, 10, 12, 14);
    o->s[0] = _mm512_shuffle_epi8(b0, c0);
    o->s[1] = _mm512_shuffle_epi8(b0, c1);
    o->s[2] = _mm512_shuffle_epi8(b1, c0);
    o->s[3] = _mm512_shuffle_epi8(b1, c1);
}

/* 32 bytes at p in both halves of a register. */
INLINE __m512i bcast256(const uint8_t *p) { return _mm512_broadcast_i64x4(_mm256_loadu_si256((const __m256i *)p)); }

/* int16 shift counts: a in the first 16 words, b in the next 16. */
INLINE __m512i counts16(int a, int b) {
    return _mm512_inserti64x4(_mm512_set1_epi16((short)a), _mm256_set1_epi16((short)b), 1);
}

/* int32 rotate counts: a in the first 8 dwords, b in the next 8 (mod 32). */
INLINE __m512i counts32(int a, int b) {
    return _mm512_inserti64x4(_mm512_set1_epi32(a & 31), _mm256_set1_epi32(b & 31), 1);
}

/* The 2-bit codes of Q2_K and Q3_K, quarter k: bits 2 (2 (k % 2) + h) of qs[32 (k / 2) + j], half h. */
INLINE __m512i low2(const uint8_t *qs, int k) {
    const int c = 2 * (k % 2);
    return _mm512_and_si512(_mm512_srlv_epi16(bcast256(qs + 32 * (k / 2)), counts16(2 * c, 2 * c + 2)),
                            _mm512_set1_epi8(3));
}

/* Unpacks super-block p of type T (but for its f16 scales). */
INLINE void unpack(const uint8_t *p, const int T, struct sb *o) {
    switch (T) {
    case Q3K: {
        const struct shoal_block_q3_k *b = (const void *)p;
        uint32_t a[3];
        memcpy(a, b->scales, 12);
        const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f;
        const uint32_t s0 = (a[0] & k2) | (a[2] & k1) << 4, s1 = (a[1] & k2) | ((a[2] >> 2) & k1) << 4;
        const uint32_t s2 = ((a[0] >> 4) & k2) | ((a[2] >> 4) & k1) << 4;
        const uint32_t s3 = ((a[1] >> 4) & k2) | ((a[2] >> 6) & k1) << 4;
        const __m128i raw = _mm_sub_epi8(_mm_setr_epi32((int)s0, (int)s1, (int)s2, (int)s3), _mm_set1_epi8(32));
        const __m256i sc = _mm256_cvtepi8_epi16(raw);
        o->c16 = sc;
        scales_by16(o, sc);
        const __m512i hm = bcast256(b->hmask);
        for (int k = 0; k < 4; k++) { /* the third bit, bit g of hmask[j] (g = 2 k, 2 k + 1), to bit 2 */
            const __m512i hb = _mm512_rolv_epi32(hm, counts32(2 - 2 * k, 1 - 2 * k));
            o->q[k] = _mm512_ternarylogic_epi32(hb, _mm512_set1_epi8(4), low2(b->qs, k), 0xea);
        }
        break;
    }
    case Q2K: {
        const struct shoal_block_q2_k *b = (const void *)p;
        const __m128i raw = _mm_loadu_si128((const __m128i *)b->scales);
        const __m256i sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0f)));
        o->c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f)));
        scales_by16(o, sc);
        for (int k = 0; k < 4; k++) o->q[k] = low2(b->qs, k);
        break;
    }
    }
}

/* Block bytes of type T, and where its f16 scale d is (Q2_K: dmin beside it). */
#define KQ_BYTES(T) ((T) == Q2K ? sizeof(struct shoal_block_q2_k) : sizeof(struct shoal_block_q3_k))
#define KQ_D(T) ((T) == Q2K ? offsetof(struct shoal_block_q2_k, d) : offsetof(struct shoal_block_q3_k, d))

/*
 * Eight horizontal sums of int32 lanes at once (exact): lane i of the
 * result is the sum of v[i]'s 16 lanes (hsum8x16) or of c[i]'s 8 (hsum8x8).
 */
INLINE __m256i hsum_tail(const __m512i t[4]) { /* t[k]: lanes 0-1 one vector's parts, 2-3 the next's */
    __m512i u[2];
    for (int m = 0; m < 2; m++)
        u[m] = _mm512_add_epi32(_mm512_shuffle_i32x4(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(2, 0, 2, 0)),
                                _mm512_shuffle_i32x4(t[2 * m], t[2 * m + 1], _MM_SHUFFLE(3, 1, 3, 1)));
    /* lane l of u[m]: four parts of vector 4 m + l */
    const __m512i w = _mm512_add_epi32(_mm512_unpacklo_epi32(u[0], u[1]), _mm512_unpackhi_epi32(u[0], u[1]));
    const __m512i z = _mm512_add_epi32(w, _mm512_shuffle_epi32(w, _MM_PERM_BADC));
    /* lane l of z: the sum of vector l, then of vector 4 + l */
    return _mm512_castsi512_si256(
        _mm512_permutexvar_epi32(_mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 0, 0, 0, 0, 0, 0, 0, 0), z));
}

INLINE __m256i hsum8x16(const __m512i v[8]) {
    __m512i t[4];
    for (int k = 0; k < 4; k++)
        t[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_i32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
    return hsum_tail(t);
}

INLINE __m256i hsum8x8(const __m256i c[8]) {
    __m512i t[4];
    for (int k = 0; k < 4; k++) t[k] = _mm512_inserti64x4(_mm512_castsi256_si512(c[2 * k]), c[2 * k + 1], 1);
    return hsum_tail(t);
}

#define CH 8 /* super-blocks whose sums are finished together */
#define PREFETCH 8192 /* bytes ahead that a row's weights are fetched from memory */

/*
 * Row r times NT tokens from t0, type T: f32 sums into y, or (EXACT) f64
 * sums into yd. The super-blocks go in chunks of CH: first their integer
 * sums (isum, and the mins' msum), kept in 16 (8) lanes each; then the
 * chunk's lanes added across eight super-blocks at a time, and the scales
 * applied to the eight sums side by side:
 *  - f32: isum * (d * dx) - msum * (dmin * dx) into eight f32 lanes (one per
 *    super-block of a chunk), added across at the end;
 *  - f64: kernels_scalar.c's kterm terms, (isum * d) * dx (less the same
 *    of msum and dmin), each rounded once, computed side by side and added
 *    into the row's f64 sum in its order: the scalar level's bits.
 */
INLINE void kq_tile(const struct mm_task *t, int64_t r, int t0, const int NT, const int EXACT, const int T) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK_K, rows = t->w->rows;
    const size_t bsz = KQ_BYTES(T), doff = KQ_D(T);
    const int MINS = T == Q2K, OFF = T == Q3K ? 2 : 0; /* log2 of the offset */
    const uint8_t *w = row_ptr(t, r);
    __m256 acc[KT];
    double sd[KT];
    for (int j = 0; j < NT; j++) {
        acc[j] = _mm256_setzero_ps();
        sd[j] = 0;
    }
    const int8_t *x0 = t->xkq + (int64_t)t0 * cols;
    const int16_t *bs0 = t->xkbs + (int64_t)t0 * (cols / 16);
    const float *xd0 = t->xkd + (int64_t)t0 * nb;
    for (int64_t b0 = 0; b0 < nb; b0 += CH) {
        const int nc = nb - b0 < CH ? (int)(nb - b0) : CH;
        __m512i isum[KT][CH];
        __m256i msum[KT][CH];
        uint16_t dh[2][CH] = { { 0 } }; /* the f16 d and dmin of each super-block */
        for (int c = 0; c < nc; c++, w += bsz) {
            struct sb s;
            for (int l = 0; l < (int)bsz; l += 64) /* two pages on: see the banner */
                _mm_prefetch((const char *)w + PREFETCH + l, _MM_HINT_T0);
            unpack(w, T, &s);
            memcpy(&dh[0][c], w + doff, 2);
            if (MINS) memcpy(&dh[1][c], w + doff + 2, 2);
            for (int j = 0; j < NT; j++) {
                const int8_t *x = x0 + j * cols + (b0 + c) * SHOAL_QK_K;
                __m512i a = _mm512_setzero_si512();
                for (int k = 0; k < 4; k++) {
                    const __m512i xv = _mm512_loadu_si512((const void *)(x + 64 * k));
                    a = _mm512_dpwssd_epi32(a, _mm512_maddubs_epi16(s.q[k], xv), s.s[k]);
                }
                if (OFF || MINS) {
                    const __m256i bsv = _mm256_loadu_si256((const __m256i *)(bs0 + j * (cols / 16) + (b0 + c) * 16));
                    const __m256i c8 = _mm256_madd_epi16(bsv, s.c16); /* sum_k c_k * bsum_k, in 8 parts */
                    if (OFF) a = _mm512_sub_epi32(a, _mm512_zextsi256_si512(_mm256_slli_epi32(c8, OFF)));
                    if (MINS) msum[j][c] = c8;
                }
                isum[j][c] = a;
            }
        }
        for (int c = nc; c < CH; c++)
            for (int j = 0; j < NT; j++) {
                isum[j][c] = _mm512_setzero_si512();
                msum[j][c] = _mm256_setzero_si256();
            }
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh[0]));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh[1]));
        const __mmask8 live = (__mmask8)((1u << nc) - 1);
        for (int j = 0; j < NT; j++) {
            const __m256i is = hsum8x16(isum[j]), ms = MINS ? hsum8x8(msum[j]) : _mm256_setzero_si256();
            const __m256 dx = _mm256_maskz_loadu_ps(live, xd0 + j * nb + b0);
            if (EXACT) { /* kterm: (isum d) dx, then the mins' */
                const __m512d x = _mm512_cvtps_pd(dx);
                __m512d v = _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(is), _mm512_cvtps_pd(dw)), x);
                if (MINS)
                    v = _mm512_sub_pd(v, _mm512_mul_pd(_mm512_mul_pd(_mm512_cvtepi32_pd(ms), _mm512_cvtps_pd(dm)), x));
                double terms[CH];
                _mm512_storeu_pd(terms, v);
                for (int c = 0; c < nc; c++) sd[j] += terms[c];
            } else {
                acc[j] = _mm256_fmadd_ps(_mm256_cvtepi32_ps(is), _mm256_mul_ps(dw, dx), acc[j]);
                if (MINS) acc[j] = _mm256_fnmadd_ps(_mm256_cvtepi32_ps(ms), _mm256_mul_ps(dm, dx), acc[j]);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const int64_t at = (int64_t)(t0 + j) * rows + r;
        if (EXACT) t->yd[at] = sd[j];
        else t->y[at] = hsum256(acc[j]);
    }
}

/* ------------------------------------ Q4_K, Q5_K, Q6_K, IQ4_XS packed at load */

/*
 * These four are packed at load (as Q8_0 is in kernels_avx512.c): rows in
 * groups of 16, and per super-block one image of the group's 16 rows, of
 * exactly the rows' own bytes (so that packing in place, group by group,
 * never overtakes the rows still to be read), read from start to end:
 *  - first the scales: Q4_K's and Q5_K's 12 scale bytes of each row as 12
 *    planes of 16 (plane j: byte j of each row), then the 16 rows' d, their
 *    dmin (256 bytes); Q6_K's 16 int8 scales as 16 planes, d (288);
 *    IQ4_XS's scales_h and scales_l as 6 planes, d (128);
 *  - then the codes (IQ4_XS: the levels' indices), group by group (32
 *    values each): the low four bits in four 64-byte vectors, vector k's
 *    bytes 4 r + e (row r) holding those of value 32 g + 4 k + e in the low
 *    nibble and of value 32 g + 16 + 4 k + e in the high one; then, for
 *    Q5_K, one vector of the fifth bits (bits 2 k and 2 k + 1 of byte 4 r +
 *    e: those of the two values above), for Q6_K two vectors of the high
 *    two bits (vector q: at bits 0-3 those of the two values for k = 2 q,
 *    at 4-7 for k = 2 q + 1).
 * Q4_K's image is 2304 bytes, Q5_K's 2816, Q6_K's 3360, IQ4_XS's 2176.
 * A token's four activation bytes, broadcast, meet a code vector's 16 rows
 * in one vpdpbusd: eight make the 16 rows' dot products of a group (Q6_K:
 * of two sub-blocks of 16), one per int32 lane (rows, not parts of one row:
 * nothing to add across lanes), then times the 16 rows' scales (vpmulld)
 * into the rows' isum; the offsets (Q6_K's -32, IQ4_XS's levels are +128
 * here) and the mins from the activations' sums. Then per super-block the
 * 16 rows' d * dx and dmin * dx in f32 (mm), or kernels_scalar.c's kterm
 * terms per row in f64, in its order (mm_f64: the scalar level's bits).
 * Each (row, token) output goes through the same instructions in the same
 * order whatever the tile or the rows of the call.
 */

#define PG 16 /* rows per group */
#define PT4 8 /* most tokens per tile (4 before: 2-13% slower at 16 tokens) */
#define PT4_F64 8 /* the f64 sums' */

/* Bytes of one super-block image of a group (16 x the block), 0 for the types not packed. */
static size_t image_bytes(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q4_K: return PG * sizeof(struct shoal_block_q4_k);
    case SHOAL_DTYPE_Q5_K: return PG * sizeof(struct shoal_block_q5_k);
    case SHOAL_DTYPE_Q6_K: return PG * sizeof(struct shoal_block_q6_k);
    case SHOAL_DTYPE_IQ4_XS: return PG * sizeof(struct shoal_block_iq4_xs);
    }
    return 0;
}
#define P4K 2304
#define P5K 2816
#define P6K 3360
#define PXS 2176
_Static_assert(P4K == PG * sizeof(struct shoal_block_q4_k) && P5K == PG * sizeof(struct shoal_block_q5_k) &&
               P6K == PG * sizeof(struct shoal_block_q6_k) && PXS == PG * sizeof(struct shoal_block_iq4_xs),
               "an image is its rows' bytes");

/* Where an image's codes start (after its scales and d), and the bytes of a group's codes: the
 * low four bits, then Q5_K's and Q6_K's high ones. */
static int code_base(int type) {
    return type == SHOAL_DTYPE_Q6_K ? 288 : type == SHOAL_DTYPE_IQ4_XS ? 128 : 256;
}

static int group_bytes(int type) {
    return type == SHOAL_DTYPE_Q5_K ? 320 : type == SHOAL_DTYPE_Q6_K ? 384 : 256;
}

size_t shoal_cpu_avx512_kq_packed_bytes(int type, int64_t rows, int64_t cols) {
    return (size_t)((rows + PG - 1) / PG) * (size_t)(cols / SHOAL_QK_K) * image_bytes(type);
}

/* Sets the bits of value v's code c in block p of type (zeroed first): codes_of's inverse. */
static void set_code(int type, uint8_t *p, int v, int c) {
    switch (type) {
    case SHOAL_DTYPE_Q4_K:
        ((struct shoal_block_q4_k *)p)->qs[32 * (v / 64) + v % 32] |= (uint8_t)((c & 0x0f) << (4 * (v / 32 % 2)));
        break;
    case SHOAL_DTYPE_Q5_K: {
        struct shoal_block_q5_k *b = (void *)p;
        b->qs[32 * (v / 64) + v % 32] |= (uint8_t)((c & 0x0f) << (4 * (v / 32 % 2)));
        b->qh[v % 32] |= (uint8_t)((c >> 4) << (v / 32));
        break;
    }
    case SHOAL_DTYPE_Q6_K: {
        struct shoal_block_q6_k *b = (void *)p;
        const int h = v / 128, i = v % 128;
        b->ql[64 * h + i % 64] |= (uint8_t)((c & 0x0f) << (4 * (i / 64)));
        b->qh[32 * h + i % 32] |= (uint8_t)((c >> 4) << (2 * (i / 32)));
        break;
    }
    default:
        ((struct shoal_block_iq4_xs *)p)->qs[16 * (v / 32) + v % 16] |= (uint8_t)(c << (4 * (v % 32 / 16)));
    }
}

/* Where a type's scale bytes are in its block (copied as planes), how many, and its d (and dmin). */
struct image_fields {
    int scales, n_scales, d, dmin;      /* offsets in the block (dmin < 0: none) */
    int img_scales, img_d;              /* offsets in the image */
};

static struct image_fields fields_of(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q4_K: return (struct image_fields){ 4, 12, 0, 2, 0, 192 };
    case SHOAL_DTYPE_Q5_K: return (struct image_fields){ 4, 12, 0, 2, 0, 192 };
    case SHOAL_DTYPE_Q6_K:
        return (struct image_fields){ offsetof(struct shoal_block_q6_k, scales), 16, offsetof(struct shoal_block_q6_k, d), -1, 0, 256 };
    default: return (struct image_fields){ 2, 6, 0, -1, 0, 96 };
    }
}

/*
 * The low four bits of the codes of group g of block p, four values at a
 * time: word k holds values 32 g + 4 k .. + 3 in its low nibbles and the
 * same + 16 in its high ones (the image's byte order).
 */
static void nibbles_of(int type, const uint8_t *p, int g, uint32_t out[4]) {
    const uint8_t *base;
    int sh;
    switch (type) {
    case SHOAL_DTYPE_Q4_K: base = ((const struct shoal_block_q4_k *)p)->qs + 32 * (g / 2), sh = 4 * (g % 2); break;
    case SHOAL_DTYPE_Q5_K: base = ((const struct shoal_block_q5_k *)p)->qs + 32 * (g / 2), sh = 4 * (g % 2); break;
    case SHOAL_DTYPE_Q6_K: base = ((const struct shoal_block_q6_k *)p)->ql + 64 * (g / 4) + 32 * (g % 2), sh = 4 * (g % 4 / 2); break;
    default: /* IQ4_XS: already so */
        memcpy(out, ((const struct shoal_block_iq4_xs *)p)->qs + 16 * g, 16);
        return;
    }
    for (int k = 0; k < 4; k++) {
        uint32_t lo, hi;
        memcpy(&lo, base + 4 * k, 4);
        memcpy(&hi, base + 16 + 4 * k, 4);
        out[k] = ((lo >> sh) & 0x0f0f0f0fu) | ((hi >> sh) & 0x0f0f0f0fu) << 4;
    }
}

/* The high bits of the code of value 32 g + j (Q5_K: the fifth; Q6_K: the top two). */
static int high_of(int type, const uint8_t *p, int g, int j) {
    if (type == SHOAL_DTYPE_Q5_K) return (((const struct shoal_block_q5_k *)p)->qh[j] >> g) & 1;
    return (((const struct shoal_block_q6_k *)p)->qh[32 * (g / 4) + j] >> (2 * (g % 4))) & 3;
}

/* One super-block image of a group from its rows' blocks (NULL: a padding row, all zeros). */
static void pack_sb(int type, const uint8_t *const blk[PG], uint8_t *o) {
    const struct image_fields f = fields_of(type);
    const int gs = group_bytes(type), cb = code_base(type);
    memset(o, 0, image_bytes(type));
    for (int r = 0; r < PG; r++) {
        const uint8_t *b = blk[r];
        if (!b) continue;
        for (int g = 0; g < 8; g++) {
            uint32_t w[4];
            nibbles_of(type, b, g, w);
            for (int k = 0; k < 4; k++) memcpy(o + cb + g * gs + k * 64 + r * 4, &w[k], 4);
            if (type == SHOAL_DTYPE_Q5_K || type == SHOAL_DTYPE_Q6_K)
                for (int k = 0; k < 4; k++)
                    for (int e = 0; e < 4; e++) {
                        const int lo = high_of(type, b, g, 4 * k + e), hi = high_of(type, b, g, 16 + 4 * k + e);
                        if (type == SHOAL_DTYPE_Q5_K)
                            o[cb + g * gs + 256 + r * 4 + e] |= (uint8_t)((lo | hi << 1) << (2 * k));
                        else
                            o[cb + g * gs + 256 + (k / 2) * 64 + r * 4 + e] |= (uint8_t)((lo | hi << 2) << (4 * (k % 2)));
                    }
        }
        for (int j = 0; j < f.n_scales; j++) o[f.img_scales + 16 * j + r] = b[f.scales + j];
        memcpy(o + f.img_d + 2 * r, b + f.d, 2);
        if (f.dmin >= 0) memcpy(o + f.img_d + 32 + 2 * r, b + f.dmin, 2);
    }
}

/* Group by group, each group's rows read aside first (src may be dst: in place). */
shoal_status shoal_cpu_avx512_kq_pack(int type, int64_t rows, int64_t cols, const void *src, void *dst) {
    const size_t per = image_bytes(type), bb = per / PG;
    if (!per) return SHOAL_OK;
    const int64_t nb = cols / SHOAL_QK_K, ng = (rows + PG - 1) / PG;
    const size_t rb = (size_t)nb * bb;
    uint8_t *w = malloc(PG * rb);
    if (!w) return shoal_errorf(SHOAL_NOMEM, "out of memory packing a %s weight", shoal_dtype_name(type));
    for (int64_t g = 0; g < ng; g++) {
        const int64_t n = rows - g * PG < PG ? rows - g * PG : PG;
        memcpy(w, (const char *)src + (size_t)(g * PG) * rb, (size_t)n * rb);
        for (int64_t b = 0; b < nb; b++) {
            const uint8_t *blk[PG];
            for (int r = 0; r < PG; r++) blk[r] = r < n ? w + (size_t)r * rb + (size_t)b * bb : NULL;
            pack_sb(type, blk, (uint8_t *)dst + (size_t)(g * nb + b) * per);
        }
    }
    free(w);
    return SHOAL_OK;
}

/* Row r of a packed weight as floats: its blocks rebuilt, dequantized as shoal_dequantize_row does. */
void shoal_cpu_avx512_kq_unpack_row(const struct shoal_weight *w, int64_t r, float *y) {
    const int type = w->type;
    const size_t per = image_bytes(type);
    const struct image_fields f = fields_of(type);
    const int64_t nb = w->cols / SHOAL_QK_K;
    const uint8_t *gp = (const uint8_t *)w->data + (size_t)(r / PG * nb) * per;
    const int lane = (int)(r % PG), gs = group_bytes(type), cb = code_base(type);
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *o = gp + b * per;
        uint8_t blk[sizeof(struct shoal_block_q6_k)]; /* the largest of the four */
        memset(blk, 0, sizeof blk);
        for (int g = 0; g < 8; g++)
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < 4; e++) {
                    const int at = lane * 4 + e, c = o[cb + g * gs + k * 64 + at];
                    int lo = c & 0x0f, hi = c >> 4;
                    if (type == SHOAL_DTYPE_Q5_K) {
                        const int h = o[cb + g * gs + 256 + at] >> (2 * k);
                        lo |= (h & 1) << 4, hi |= (h >> 1 & 1) << 4;
                    }
                    if (type == SHOAL_DTYPE_Q6_K) {
                        const int h = o[cb + g * gs + 256 + (k / 2) * 64 + at] >> (4 * (k % 2));
                        lo |= (h & 3) << 4, hi |= (h >> 2 & 3) << 4;
                    }
                    set_code(type, blk, 32 * g + 4 * k + e, lo);
                    set_code(type, blk, 32 * g + 16 + 4 * k + e, hi);
                }
        for (int j = 0; j < f.n_scales; j++) blk[f.scales + j] = o[f.img_scales + 16 * j + lane];
        memcpy(blk + f.d, o + f.img_d + 2 * lane, 2);
        if (f.dmin >= 0) memcpy(blk + f.dmin, o + f.img_d + 32 + 2 * lane, 2);
        shoal_dequantize_row(type, blk, y + b * SHOAL_QK_K, SHOAL_QK_K);
    }
}

/*
 * A group of 16 rows x NT tokens from t0, type T: f32 sums into y, or
 * (EXACT) f64 sums into yd, for the rows of the group that mask says.
 */
INLINE void kqp_tile(const struct mm_task *t, const uint8_t *gp, int64_t row0, __mmask16 mask, int t0,
                     const int NT, const int EXACT, const int T) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK_K, rows = t->w->rows;
    const int PER = T == Q4K ? P4K : T == Q5K ? P5K : T == Q6K ? P6K : PXS;
    const int MINS = T == Q4K || T == Q5K, GS = T == Q5K ? 320 : T == Q6K ? 384 : 256; /* group_bytes */
    const int SCO = 0, DO = T == Q6K ? 256 : T == IQ4XS ? 96 : 192; /* the scale planes; d (then dmin) */
    const int CB = T == Q6K ? 288 : T == IQ4XS ? 128 : 256;          /* the codes: code_base */
    const __m512i m4 = _mm512_set1_epi8(0x0f), m6 = _mm512_set1_epi8(63), top = _mm512_set1_epi8(0x30);
    const __m512i b5 = _mm512_set1_epi8(0x10);
    const __m512i levels = _mm512_broadcast_i32x4( /* IQ4_XS's, +128 */
        _mm_setr_epi8(1, 24, 45, 63, 79, 93, 106, 118, (char)129, (char)141, (char)153, (char)166, (char)181,
                      (char)197, (char)217, (char)241));
    __m512 acc[PT4];
    /* the f64 sums stay in L1, not in registers: the tile's integer sums take those, and a
     * load and a store per super-block and token are nothing beside its 64 vpdpbusd (8
     * tokens a tile this way; 4 with the sums in registers, 17-22% slower at 16 tokens) */
    double sd[PT4][16] __attribute__((aligned(64)));
    for (int j = 0; j < NT; j++) {
        acc[j] = _mm512_setzero_ps();
        if (EXACT) _mm512_store_pd(sd[j], _mm512_setzero_pd()), _mm512_store_pd(sd[j] + 8, _mm512_setzero_pd());
    }
    for (int64_t b = 0; b < nb; b++) {
        const uint8_t *p = gp + b * PER;
        for (int l = 0; l < PER; l += 64) _mm_prefetch((const char *)p + PREFETCH + l, _MM_HINT_T0);
        /* the 16 rows' scales (and mins) by group: bytes 16 g.. (mins 128 + 16 g..) of scm */
        uint8_t scm[256];
        if (MINS) {
            const __m512i p0 = _mm512_loadu_si512((const void *)(p + SCO));
            const __m512i p1 = _mm512_loadu_si512((const void *)(p + SCO + 64));
            const __m512i p2 = _mm512_loadu_si512((const void *)(p + SCO + 128));
            /* k_scale_min, 16 rows x 4 groups at once: lane g % 4 of each register */
            _mm512_storeu_si512((void *)scm, _mm512_and_si512(p0, m6));
            _mm512_storeu_si512((void *)(scm + 64),
                                _mm512_ternarylogic_epi32(p2, m4, _mm512_and_si512(_mm512_srli_epi16(p0, 2), top), 0xea));
            _mm512_storeu_si512((void *)(scm + 128), _mm512_and_si512(p1, m6));
            _mm512_storeu_si512((void *)(scm + 192),
                                _mm512_ternarylogic_epi32(_mm512_srli_epi16(p2, 4), m4,
                                                          _mm512_and_si512(_mm512_srli_epi16(p1, 2), top), 0xea));
        } else if (T == IQ4XS) { /* scale g: nibble g % 2 of scales_l[g / 2], bits 2 (g % 4) of scales_h[g / 4]; -32 */
            for (int g = 0; g < 8; g++) {
                const __m128i l = _mm_loadu_si128((const __m128i *)(p + SCO + 32 + 16 * (g / 2)));
                const __m128i h = _mm_loadu_si128((const __m128i *)(p + SCO + 16 * (g / 4)));
                const __m128i lo = _mm_and_si128(g % 2 ? _mm_srli_epi16(l, 4) : l, _mm_set1_epi8(0x0f));
                const __m128i hi = _mm_and_si128(_mm_srli_epi16(h, 2 * (g % 4)), _mm_set1_epi8(3));
                _mm_storeu_si128((__m128i *)(scm + 16 * g),
                                 _mm_sub_epi8(_mm_or_si128(lo, _mm_slli_epi16(hi, 4)), _mm_set1_epi8(32)));
            }
        }
        /* each token's sums of 32 activations, int16 (at most 32 x 127): the mins', IQ4_XS's +128 */
        int16_t bsg[PT4][8];
        if (MINS || T == IQ4XS)
            for (int j = 0; j < NT; j++) {
                const __m256i bsv = _mm256_loadu_si256((const __m256i *)(t->xkbs + (int64_t)(t0 + j) * (cols / 16) + b * 16));
                _mm_storeu_si128((__m128i *)bsg[j], _mm256_cvtepi32_epi16(_mm256_madd_epi16(bsv, _mm256_set1_epi16(1))));
            }
        __m512i isum[PT4];
        for (int j = 0; j < NT; j++) isum[j] = _mm512_setzero_si512();
        for (int g = 0; g < 8; g++) {
            /* the scales of values 0..15 (s0) and 16..31 (s1) of the group: one but for Q6_K */
            const __m512i s0 = T == Q6K ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + SCO + 32 * g)))
                             : T == IQ4XS ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(scm + 16 * g)))
                                          : _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(scm + 16 * g)));
            const __m512i s1 = T == Q6K ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(p + SCO + 32 * g + 16))) : s0;
            /*
             * A code vector at a time, unpacked once for the tile's tokens, each token's dot
             * products in one accumulator (Q6_K: one per half of the group, a scale each).
             * Integer sums: exact, so the same whatever the tile.
             */
            __m512i a[PT4], c[PT4]; /* the offsets (Q6_K's, IQ4_XS's) come after the groups */
            for (int j = 0; j < NT; j++) a[j] = c[j] = _mm512_setzero_si512();
            for (int k = 0; k < 4; k++) {
                const __m512i v = _mm512_loadu_si512((const void *)(p + CB + g * GS + k * 64));
                __m512i cl = _mm512_and_si512(v, m4), ch = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                if (T == Q5K) { /* fifth bits 2 k, 2 k + 1 to bit 4 */
                    const __m512i h = _mm512_loadu_si512((const void *)(p + CB + g * GS + 256));
                    const __m512i hl = k < 2 ? _mm512_slli_epi16(h, 4 - 2 * k) : _mm512_srli_epi16(h, 2 * k - 4);
                    const __m512i hh = k < 2 ? _mm512_slli_epi16(h, 3 - 2 * k) : _mm512_srli_epi16(h, 2 * k - 3);
                    cl = _mm512_ternarylogic_epi32(hl, b5, cl, 0xea);
                    ch = _mm512_ternarylogic_epi32(hh, b5, ch, 0xea);
                } else if (T == Q6K) { /* high bits 4 (k % 2) .., + 2 .. to bits 4, 5 */
                    const __m512i h = _mm512_loadu_si512((const void *)(p + CB + g * GS + 256 + (k / 2) * 64));
                    const __m512i hl = k % 2 ? h : _mm512_slli_epi16(h, 4);
                    const __m512i hh = k % 2 ? _mm512_srli_epi16(h, 2) : _mm512_slli_epi16(h, 2);
                    cl = _mm512_ternarylogic_epi32(hl, top, cl, 0xea);
                    ch = _mm512_ternarylogic_epi32(hh, top, ch, 0xea);
                } else if (T == IQ4XS) {
                    cl = _mm512_shuffle_epi8(levels, cl);
                    ch = _mm512_shuffle_epi8(levels, ch);
                }
                for (int j = 0; j < NT; j++) {
                    const int8_t *x = t->xkq + (int64_t)(t0 + j) * cols + b * SHOAL_QK_K + 32 * g;
                    int32_t xl, xh;
                    memcpy(&xl, x + 4 * k, 4);
                    memcpy(&xh, x + 16 + 4 * k, 4);
                    a[j] = _mm512_dpbusd_epi32(a[j], cl, _mm512_set1_epi32(xl));
                    if (T == Q6K) c[j] = _mm512_dpbusd_epi32(c[j], ch, _mm512_set1_epi32(xh));
                    else a[j] = _mm512_dpbusd_epi32(a[j], ch, _mm512_set1_epi32(xh));
                }
            }
            for (int j = 0; j < NT; j++)
                isum[j] = T == Q6K ? _mm512_add_epi32(isum[j], _mm512_add_epi32(_mm512_mullo_epi32(a[j], s0), _mm512_mullo_epi32(c[j], s1)))
                                   : _mm512_add_epi32(isum[j], _mm512_mullo_epi32(a[j], s0));
        }
        /*
         * The offsets, Q6_K's -32 and IQ4_XS's -128 (its levels here are +128), times the
         * scales and the token's sums of x (of 16 values, of 32): sum_k sc_k bsum_k, in
         * vpdpwssd of int16 pairs, pair q holding the scales of sub-blocks (groups) 2 q and
         * 2 q + 1 of each row; then, the same way, the mins' sums sum_g m_g bsum_g. Exact
         * integers, the same whatever the tile.
         */
        if (T == Q6K || T == IQ4XS) {
            const int NP = T == Q6K ? 8 : 4;
            __m512i cq[8];
            for (int q = 0; q < NP; q++) {
                const uint8_t *sp = T == Q6K ? p + SCO + 32 * q : scm + 32 * q;
                cq[q] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sp)), _mm512_set1_epi32(0xffff)),
                    _mm512_slli_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(sp + 16))), 16));
            }
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = T == Q6K ? t->xkbs + (int64_t)(t0 + j) * (cols / 16) + b * 16 : bsg[j];
                __m512i m = _mm512_setzero_si512();
                for (int q = 0; q < NP; q++) {
                    int32_t pair;
                    memcpy(&pair, bs + 2 * q, 4);
                    m = _mm512_dpwssd_epi32(m, cq[q], _mm512_set1_epi32(pair));
                }
                isum[j] = _mm512_sub_epi32(isum[j], _mm512_slli_epi32(m, T == Q6K ? 5 : 7));
            }
        }
        __m512i msum[PT4];
        if (MINS) {
            __m512i mq[4]; /* lane r: row r's mins of groups 2 q and 2 q + 1, int16 */
            for (int q = 0; q < 4; q++)
                mq[q] = _mm512_or_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(scm + 128 + 32 * q))),
                                        _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(scm + 144 + 32 * q))), 16));
            for (int j = 0; j < NT; j++) {
                __m512i m = _mm512_setzero_si512();
                for (int q = 0; q < 4; q++) {
                    int32_t pair;
                    memcpy(&pair, &bsg[j][2 * q], 4);
                    m = _mm512_dpwssd_epi32(m, mq[q], _mm512_set1_epi32(pair));
                }
                msum[j] = m;
            }
        }
        const __m512 dw = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + DO)));
        const __m512 dm = MINS ? _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p + DO + 32))) : _mm512_setzero_ps();
        for (int j = 0; j < NT; j++) {
            const float dx = t->xkd[(int64_t)(t0 + j) * nb + b];
            if (EXACT) {
                /* per row: kterm(d, isum) (- kterm(dmin, msum)), kernels_scalar.c's (isum d) dx */
                const __m512d x = _mm512_set1_pd((double)dx);
                for (int q = 0; q < 2; q++) {
                    const __m512d dwd = _mm512_cvtps_pd(q ? _mm512_extractf32x8_ps(dw, 1) : _mm512_castps512_ps256(dw));
                    const __m512d iv = _mm512_cvtepi32_pd(q ? _mm512_extracti64x4_epi64(isum[j], 1) : _mm512_castsi512_si256(isum[j]));
                    __m512d v = _mm512_mul_pd(_mm512_mul_pd(iv, dwd), x);
                    if (MINS) {
                        const __m512d dmd = _mm512_cvtps_pd(q ? _mm512_extractf32x8_ps(dm, 1) : _mm512_castps512_ps256(dm));
                        const __m512d mv = _mm512_cvtepi32_pd(q ? _mm512_extracti64x4_epi64(msum[j], 1) : _mm512_castsi512_si256(msum[j]));
                        v = _mm512_sub_pd(v, _mm512_mul_pd(_mm512_mul_pd(mv, dmd), x));
                    }
                    _mm512_store_pd(sd[j] + 8 * q, _mm512_add_pd(_mm512_load_pd(sd[j] + 8 * q), v));
                }
            } else {
                const __m512 x = _mm512_set1_ps(dx);
                acc[j] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(isum[j]), _mm512_mul_ps(dw, x), acc[j]);
                if (MINS) acc[j] = _mm512_fnmadd_ps(_mm512_cvtepi32_ps(msum[j]), _mm512_mul_ps(dm, x), acc[j]);
            }
        }
    }
    for (int j = 0; j < NT; j++) {
        const int64_t at = (int64_t)(t0 + j) * rows + row0;
        if (EXACT) {
            _mm512_mask_storeu_pd(t->yd + at, (__mmask8)mask, _mm512_load_pd(sd[j]));
            _mm512_mask_storeu_pd(t->yd + at + 8, (__mmask8)(mask >> 8), _mm512_load_pd(sd[j] + 8));
        } else {
            _mm512_mask_storeu_ps(t->y + at, mask, acc[j]);
        }
    }
}

typedef void (*kqp_fn)(const struct mm_task *, const uint8_t *, int64_t, __mmask16, int);

/*
 * Rows [r0, r1): the groups holding them, each passing every token in tiles
 * (its weights stay in cache meanwhile). A group shared with the next
 * thread's range is computed by both, each keeping its own rows.
 */
static void kqp_drive(const struct mm_task *t, int64_t r0, int64_t r1, const kqp_fn tiles[PT4], size_t per,
                      int maxt) {
    const int64_t nb = t->w->cols / SHOAL_QK_K;
    for (int64_t g = r0 / PG; g * PG < r1; g++) {
        const int64_t lo = g * PG > r0 ? g * PG : r0, hi = g * PG + PG < r1 ? g * PG + PG : r1;
        const __mmask16 mask = (__mmask16)(((1u << (hi - lo)) - 1) << (lo - g * PG));
        const uint8_t *gp = (const uint8_t *)t->w->data + (size_t)(g * nb) * per;
        for (int tk = 0; tk < t->n; tk += maxt) {
            const int nt = t->n - tk < maxt ? t->n - tk : maxt;
            tiles[nt - 1](t, gp, g * PG, mask, tk);
        }
    }
}

/* One function per tile size, type and sum, so that each has its loops unrolled. */
#define KQP_TILE(name, T, EX, nt)                                                              \
    static void name##_##nt(const struct mm_task *t, const uint8_t *gp, int64_t row0, __mmask16 mask, int t0) { \
        kqp_tile(t, gp, row0, mask, t0, nt, EX, T);                                            \
    }
#define KQP_TYPE(name, T, EX, PER)                                                             \
    KQP_TILE(name, T, EX, 1) KQP_TILE(name, T, EX, 2) KQP_TILE(name, T, EX, 3) KQP_TILE(name, T, EX, 4) \
    KQP_TILE(name, T, EX, 5) KQP_TILE(name, T, EX, 6) KQP_TILE(name, T, EX, 7) KQP_TILE(name, T, EX, 8) \
    void shoal_cpu_avx512_##name(const struct mm_task *t, int64_t r0, int64_t r1) {            \
        static const kqp_fn tiles[PT4] = { name##_1, name##_2, name##_3, name##_4,              \
                                           name##_5, name##_6, name##_7, name##_8 };            \
        kqp_drive(t, r0, r1, tiles, PER, EX ? PT4_F64 : PT4);                                  \
    }
_Static_assert(PT4 == 8, "KQP_TYPE lists 8 tile sizes");
KQP_TYPE(mm_q4_kp, Q4K, 0, P4K)
KQP_TYPE(mm_q5_kp, Q5K, 0, P5K)
KQP_TYPE(mm_q6_kp, Q6K, 0, P6K)
KQP_TYPE(mm_iq4_xsp, IQ4XS, 0, PXS)
KQP_TYPE(mm_f64_q4_kp, Q4K, 1, P4K)
KQP_TYPE(mm_f64_q5_kp, Q5K, 1, P5K)
KQP_TYPE(mm_f64_q6_kp, Q6K, 1, P6K)
KQP_TYPE(mm_f64_iq4_xsp, IQ4XS, 1, PXS)

/* Rows [r0, r1): tiles of KT tokens (the tile's activations stay in L1) passing every row. */
INLINE void kq_drive(const struct mm_task *t, int64_t r0, int64_t r1,
                     void (*const tiles[KT])(const struct mm_task *, int64_t, int)) {
    for (int tk = 0; tk < t->n; tk += KT) {
        const int nt = t->n - tk < KT ? t->n - tk : KT;
        for (int64_t r = r0; r < r1; r++) tiles[nt - 1](t, r, tk);
    }
}

/* One function per tile size and type, so that each has its loops unrolled. */
#define KQ_TILE(name, T, EX, nt)                                                               \
    static void name##_##nt(const struct mm_task *t, int64_t r, int t0) { kq_tile(t, r, t0, nt, EX, T); }
#define KQ_TYPE(name, T, EX)                                                                   \
    KQ_TILE(name, T, EX, 1) KQ_TILE(name, T, EX, 2) KQ_TILE(name, T, EX, 3) KQ_TILE(name, T, EX, 4) \
    KQ_TILE(name, T, EX, 5) KQ_TILE(name, T, EX, 6) KQ_TILE(name, T, EX, 7) KQ_TILE(name, T, EX, 8) \
    void shoal_cpu_avx512_##name(const struct mm_task *t, int64_t r0, int64_t r1) {            \
        static void (*const tiles[KT])(const struct mm_task *, int64_t, int) = {                \
            name##_1, name##_2, name##_3, name##_4, name##_5, name##_6, name##_7, name##_8,     \
        };                                                                                     \
        kq_drive(t, r0, r1, tiles);                                                            \
    }
_Static_assert(KT == 8, "KQ_TYPE lists 8 tile sizes");

KQ_TYPE(mm_q2_k, Q2K, 0)
KQ_TYPE(mm_q3_k, Q3K, 0)
KQ_TYPE(mm_f64_q2_k, Q2K, 1)
KQ_TYPE(mm_f64_q3_k, Q3K, 1)

/* ---------------------------------------------------------- activations */

/*
 * shoal_cpu_quantize_q8k, 16 values at a time: the same operations (the
 * first value of largest magnitude, iscale = -127 / it, iscale * x rounded
 * to nearest even, at most 127, d = 1 / iscale), so the same bytes; the
 * sums of 16 added across as exact integers.
 */
void shoal_cpu_avx512_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums) {
    const __m512 sign = _mm512_set1_ps(-0.0f);
    for (int64_t b = 0; b < cols / SHOAL_QK_K; b++, x += SHOAL_QK_K, q += SHOAL_QK_K, bsums += 16) {
        __m512 v[16], am = _mm512_setzero_ps();
        for (int k = 0; k < 16; k++) {
            v[k] = _mm512_loadu_ps(x + 16 * k);
            am = _mm512_max_ps(am, _mm512_andnot_ps(sign, v[k]));
        }
        const float amax = _mm512_reduce_max_ps(am);
        if (!(amax > 0)) {
            d[b] = 0;
            memset(q, 0, SHOAL_QK_K);
            memset(bsums, 0, 16 * sizeof *bsums);
            continue;
        }
        int first = 0;
        for (int k = 0; k < 16; k++) {
            const __mmask16 m = _mm512_cmp_ps_mask(_mm512_andnot_ps(sign, v[k]), _mm512_set1_ps(amax), _CMP_EQ_OQ);
            if (m) {
                first = 16 * k + __builtin_ctz(m);
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        __m512i qi[16];
        for (int k = 0; k < 16; k++) { /* to nearest even: the default rounding mode */
            qi[k] = _mm512_min_epi32(_mm512_cvtps_epi32(_mm512_mul_ps(_mm512_set1_ps(iscale), v[k])),
                                     _mm512_set1_epi32(127));
            _mm_storeu_si128((__m128i *)(q + 16 * k), _mm512_cvtsepi32_epi8(qi[k]));
        }
        _mm_storeu_si128((__m128i *)bsums, _mm256_cvtepi32_epi16(hsum8x16(qi)));
        _mm_storeu_si128((__m128i *)(bsums + 8), _mm256_cvtepi32_epi16(hsum8x16(qi + 8)));
        d[b] = 1 / iscale;
    }
}
