/*
 * kernels_avx2_kq.c — the AVX2 matmuls of the super-block types (Q2_K,
 * Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) with Q8_K activations: f32 sums (mm) and
 * exact f64 sums (mm_f64). kernels_avx2.c's table lists them. Compiled with
 * AVX2, FMA and F16C (see CMakeLists.txt) and only called after the
 * processor says it has them.
 *
 * kernels_avx512_kq.c's scheme in 256-bit registers, without VNNI: a
 * super-block goes through in eight pieces of 32 values, each one register
 * of unsigned codes in value order (IQ4_XS: |level|, its sign moved onto x
 * with vpsignb) and one of its sub-block scales as int16; per token,
 * vpmaddubsw (codes x int8 activations, pairs into int16: at most 2 x 127 x
 * 127, no saturation), vpmaddwd (those pairs times their scales into int32)
 * and an add give the super-block's sum_k sc_k * dot_k in eight exact
 * lanes. Offsets (Q3_K's -4, Q6_K's -32) and mins come from the
 * activations' sums of 16. The lanes of CH super-blocks are added across
 * together, then scaled: f32 sums in another order than the scalar level's
 * (held to its tolerance); f64 sums of kernels_scalar.c's kterm terms in
 * its order, so the scalar level's bits.
 *
 * Tiles are one row x up to KT tokens, a piece of weights unpacked once for
 * the tile's tokens; every (row, token) output goes through the same
 * instructions in the same order whatever the tile, the rows of the call or
 * the number of tokens: the same bits for one token alone as in a batch,
 * for a slice of rows as in the whole weight. The weights two pages on are
 * prefetched, as there (Q6_K decoded at 17 GB/s without, 36 with).
 */
#include <immintrin.h>
#include <stddef.h>
#include <string.h>

#include "kernels.h"
#include "x86_sum.h"

#define INLINE static inline __attribute__((always_inline))
#define KT 4 /* most tokens per tile: the accumulators and a piece of weights fill the 16 registers */
#define CH 8 /* super-blocks whose sums are finished together */
#define PREFETCH 8192 /* bytes ahead that a row's weights are fetched from memory */

enum { Q2K, Q3K, Q4K, Q5K, Q6K, IQ4XS };

static inline const uint8_t *row_ptr(const struct mm_task *t, int64_t r) {
    return (const uint8_t *)t->w->data + (size_t)r * t->w->row_bytes;
}

/* What a super-block keeps for its eight pieces: scales and, per type, the shared bits. */
struct sb {
    __m256i sc;   /* Q4_K, Q5_K, IQ4_XS: 8 scales as int16 in both lanes; Q2_K, Q3_K, Q6_K: 16 scales */
    __m256i c16;  /* int16 per 16 values: the mins (Q2_K, Q4_K, Q5_K) or scales (Q3_K, Q6_K) */
    __m256i hb;   /* Q3_K's hmask, Q5_K's qh */
};

/* A 128-bit value in both lanes. */
INLINE __m256i both(__m128i v) { return _mm256_inserti128_si256(_mm256_castsi128_si256(v), v, 1); }

/*
 * Q4_K and Q5_K's eight 6-bit scales and mins (p: the 12 bytes, then at
 * least 4 more of the block): bytes 0-7 the scales, 8-15 the mins, as
 * kernels_avx512_kq.c's k45_scales.
 */
INLINE __m128i k45_scales(const uint8_t *p) {
    const __m128i v = _mm_loadu_si128((const __m128i *)p);
    const __m128i lo = _mm_shuffle_epi8(v, _mm_setr_epi8(0, 1, 2, 3, 8, 9, 10, 11, 4, 5, 6, 7, 8, 9, 10, 11));
    const __m128i top = _mm_shuffle_epi8(v, _mm_setr_epi8(-1, -1, -1, -1, 0, 1, 2, 3, -1, -1, -1, -1, 4, 5, 6, 7));
    const __m128i l = _mm_blend_epi16(lo, _mm_srli_epi16(lo, 4), 0xc0); /* the mins' high nibbles down */
    const __m128i keep = _mm_setr_epi8(63, 63, 63, 63, 15, 15, 15, 15, 63, 63, 63, 63, 15, 15, 15, 15);
    const __m128i h = _mm_and_si128(_mm_srli_epi16(top, 2), _mm_set1_epi8(0x30)); /* bits 6, 7 to 4, 5 */
    return _mm_or_si128(_mm_and_si128(l, keep), h);
}

/* Shuffle control: byte i of each lane zero-extended over its words (i = a in lane 0, b in 1). */
INLINE __m256i byte_ctrl(int a, int b) {
    return _mm256_setr_epi8(a, -1, a, -1, a, -1, a, -1, a, -1, a, -1, a, -1, a, -1,
                            b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1, b, -1);
}

/* Shuffle control: word i of each lane over its words (i = a in lane 0, b in lane 1). */
INLINE __m256i word_ctrl(int a, int b) {
    return _mm256_setr_epi8(2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1,
                            2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1, 2 * a, 2 * a + 1,
                            2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1,
                            2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1, 2 * b, 2 * b + 1);
}

INLINE __m256i load256(const uint8_t *p) { return _mm256_loadu_si256((const __m256i *)p); }

/* A 16-bit shift of v by s (left when s > 0). */
INLINE __m256i shift16(__m256i v, const int s) {
    return s > 0 ? _mm256_slli_epi16(v, s) : s < 0 ? _mm256_srli_epi16(v, -s) : v;
}

/* Unpacks what super-block p of type T shares among its pieces (but its f16 scales). */
INLINE void unpack(const uint8_t *p, const int T, struct sb *o) {
    switch (T) {
    case Q4K:
    case Q5K: {
        const __m128i sm = k45_scales(p + 4);
        o->sc = both(sm);
        /* min g for values 16 k .. 16 k + 15, k = 2 g, 2 g + 1 */
        o->c16 = _mm256_shuffle_epi8(o->sc, _mm256_setr_epi8(8, -1, 8, -1, 9, -1, 9, -1, 10, -1, 10, -1, 11, -1, 11, -1,
                                                             12, -1, 12, -1, 13, -1, 13, -1, 14, -1, 14, -1, 15, -1, 15, -1));
        if (T == Q5K) o->hb = load256(((const struct shoal_block_q5_k *)p)->qh);
        break;
    }
    case Q6K: {
        const struct shoal_block_q6_k *b = (const void *)p;
        o->sc = o->c16 = _mm256_cvtepi8_epi16(_mm_loadu_si128((const __m128i *)b->scales));
        break;
    }
    case Q3K: {
        const struct shoal_block_q3_k *b = (const void *)p;
        uint32_t a[3];
        memcpy(a, b->scales, 12);
        const uint32_t k1 = 0x03030303, k2 = 0x0f0f0f0f;
        const uint32_t s0 = (a[0] & k2) | (a[2] & k1) << 4, s1 = (a[1] & k2) | ((a[2] >> 2) & k1) << 4;
        const uint32_t s2 = ((a[0] >> 4) & k2) | ((a[2] >> 4) & k1) << 4;
        const uint32_t s3 = ((a[1] >> 4) & k2) | ((a[2] >> 6) & k1) << 4;
        const __m128i raw = _mm_sub_epi8(_mm_setr_epi32((int)s0, (int)s1, (int)s2, (int)s3), _mm_set1_epi8(32));
        o->sc = o->c16 = _mm256_cvtepi8_epi16(raw);
        o->hb = load256(b->hmask);
        break;
    }
    case Q2K: {
        const struct shoal_block_q2_k *b = (const void *)p;
        const __m128i raw = _mm_loadu_si128((const __m128i *)b->scales);
        o->sc = _mm256_cvtepu8_epi16(_mm_and_si128(raw, _mm_set1_epi8(0x0f)));
        o->c16 = _mm256_cvtepu8_epi16(_mm_and_si128(_mm_srli_epi16(raw, 4), _mm_set1_epi8(0x0f)));
        break;
    }
    case IQ4XS: {
        const struct shoal_block_iq4_xs *b = (const void *)p;
        o->c16 = _mm256_setzero_si256(); /* no offset, no mins */
        uint32_t l;
        memcpy(&l, b->scales_l, 4);
        const __m128i lv = _mm_cvtsi32_si128((int)l), k4 = _mm_set1_epi8(0x0f);
        const __m128i lo = _mm_cvtepu8_epi16(_mm_unpacklo_epi8(_mm_and_si128(lv, k4),
                                                               _mm_and_si128(_mm_srli_epi16(lv, 4), k4)));
        const __m128i hi = _mm_and_si128(_mm_mullo_epi16(_mm_set1_epi16((short)(b->scales_h)),
                                                         _mm_setr_epi16(1 << 14, 1 << 12, 1 << 10, 1 << 8,
                                                                        1 << 6, 1 << 4, 1 << 2, 1)),
                                         _mm_set1_epi16((short)0xc000));
        /* hi: bits 2 g, 2 g + 1 of scales_h in bits 14, 15 of word g */
        o->sc = both(_mm_sub_epi16(_mm_or_si128(lo, _mm_srli_epi16(hi, 10)), _mm_set1_epi16(32)));
        break;
    }
    }
}

/*
 * Piece i (values 32 i .. 32 i + 31) of super-block p: its codes (unsigned;
 * IQ4_XS: the signed levels, *lvl) and scales.
 */
INLINE void piece(const uint8_t *p, const int T, const struct sb *o, const int i, __m256i *code, __m256i *sc) {
    const __m256i m4 = _mm256_set1_epi8(0x0f);
    const int q = i / 2, h = i % 2; /* quarter (64 values) and half */
    switch (T) {
    case Q4K:
    case Q5K: {
        const uint8_t *qs = T == Q4K ? ((const struct shoal_block_q4_k *)p)->qs : ((const struct shoal_block_q5_k *)p)->qs;
        __m256i c = _mm256_and_si256(shift16(load256(qs + 32 * q), -4 * h), m4);
        if (T == Q5K) /* the fifth bit, bit i of qh[j], to bit 4 */
            c = _mm256_or_si256(c, _mm256_and_si256(shift16(o->hb, 4 - i), _mm256_set1_epi8(0x10)));
        *code = c;
        *sc = _mm256_shuffle_epi8(o->sc, byte_ctrl(i, i));
        break;
    }
    case Q6K: {
        const struct shoal_block_q6_k *b = (const void *)p;
        /* value 128 H + 64 c + 32 h + j: nibble c of ql[64 H + 32 h + j], bits 2 (2 c + h) of qh[32 H + j] */
        const int H = q / 2, c = q % 2, g = 2 * c + h;
        const __m256i nib = _mm256_and_si256(shift16(load256(b->ql + 64 * H + 32 * h), -4 * c), m4);
        const __m256i hi = _mm256_and_si256(shift16(load256(b->qh + 32 * H), 4 - 2 * g), _mm256_set1_epi8(0x30));
        *code = _mm256_or_si256(nib, hi);
        break;
    }
    case Q3K:
    case Q2K: {
        const uint8_t *qs = T == Q3K ? ((const struct shoal_block_q3_k *)p)->qs : ((const struct shoal_block_q2_k *)p)->qs;
        /* bits 2 (2 (q % 2) + h) of qs[32 (q / 2) + j]; Q3_K's third bit is bit i of hmask[j] */
        __m256i c = _mm256_and_si256(shift16(load256(qs + 32 * (q / 2)), -2 * (2 * (q % 2) + h)), _mm256_set1_epi8(3));
        if (T == Q3K) c = _mm256_or_si256(c, _mm256_and_si256(shift16(o->hb, 2 - i), _mm256_set1_epi8(4)));
        *code = c;
        break;
    }
    case IQ4XS: {
        const struct shoal_block_iq4_xs *b = (const void *)p;
        const __m128i v = _mm_loadu_si128((const __m128i *)(b->qs + 16 * i));
        const __m256i idx = _mm256_and_si256(_mm256_inserti128_si256(_mm256_castsi128_si256(v), _mm_srli_epi16(v, 4), 1), m4);
        *code = _mm256_shuffle_epi8(both(_mm_setr_epi8(-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53,
                                                       69, 89, 113)), idx);
        *sc = _mm256_shuffle_epi8(o->sc, word_ctrl(i, i)); /* int16: word i */
        break;
    }
    }
    if (T == Q6K || T == Q3K || T == Q2K) { /* scales per 16: words 2 i, 2 i + 1 of the 16 */
        const __m256i half = i < 4 ? _mm256_permute2x128_si256(o->sc, o->sc, 0x00) : _mm256_permute2x128_si256(o->sc, o->sc, 0x11);
        *sc = _mm256_shuffle_epi8(half, word_ctrl((2 * i) % 8, (2 * i) % 8 + 1));
    }
}

/* Block bytes of type T, and where its f16 scale d is (the types with mins: dmin beside it). */
#define KQ_BYTES(T)                                                                              \
    ((T) == Q2K ? sizeof(struct shoal_block_q2_k) : (T) == Q3K ? sizeof(struct shoal_block_q3_k) \
     : (T) == Q4K ? sizeof(struct shoal_block_q4_k) : (T) == Q5K ? sizeof(struct shoal_block_q5_k) \
     : (T) == Q6K ? sizeof(struct shoal_block_q6_k) : sizeof(struct shoal_block_iq4_xs))
#define KQ_D(T)                                                                                  \
    ((T) == Q2K ? offsetof(struct shoal_block_q2_k, d) : (T) == Q3K ? offsetof(struct shoal_block_q3_k, d) \
     : (T) == Q6K ? offsetof(struct shoal_block_q6_k, d) : 0)

/* Lane i of the result: the sum of v[i]'s eight int32 lanes (exact). */
INLINE __m256i hsum8x8(const __m256i v[8]) {
    const __m256i t0 = _mm256_hadd_epi32(v[0], v[1]), t1 = _mm256_hadd_epi32(v[2], v[3]);
    const __m256i t2 = _mm256_hadd_epi32(v[4], v[5]), t3 = _mm256_hadd_epi32(v[6], v[7]);
    const __m256i u0 = _mm256_hadd_epi32(t0, t1), u1 = _mm256_hadd_epi32(t2, t3);
    /* u0: lane 0 the low halves' sums of v[0..3], lane 1 the high halves'; u1 likewise for v[4..7] */
    return _mm256_add_epi32(_mm256_permute2x128_si256(u0, u1, 0x20), _mm256_permute2x128_si256(u0, u1, 0x31));
}

/* (iv * dw) * dx for four lanes, iv * dw exact: kernels_scalar.c's kterm. */
INLINE __m256d kterm4(__m256d dw, __m256d dx, __m256d iv) { return _mm256_mul_pd(_mm256_mul_pd(iv, dw), dx); }

/*
 * Row r times NT tokens from t0, type T: f32 sums into y, or (EXACT) f64
 * sums into yd; kernels_avx512_kq.c's kq_tile says how.
 */
INLINE void kq_tile(const struct mm_task *t, int64_t r, int t0, const int NT, const int EXACT, const int T) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK_K, rows = t->w->rows;
    const size_t bsz = KQ_BYTES(T), doff = KQ_D(T);
    const int MINS = T == Q2K || T == Q4K || T == Q5K, OFF = T == Q6K ? 5 : T == Q3K ? 2 : 0; /* log2 offset */
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
        __m256i isum[KT][CH], msum[KT][CH];
        uint16_t dh[2][CH] = { { 0 } }; /* the f16 d and dmin of each super-block */
        for (int c = 0; c < nc; c++, w += bsz) {
            struct sb s;
            for (int l = 0; l < (int)bsz; l += 64) /* two pages on: see the banner */
                _mm_prefetch((const char *)w + PREFETCH + l, _MM_HINT_T0);
            unpack(w, T, &s);
            memcpy(&dh[0][c], w + doff, 2);
            if (MINS) memcpy(&dh[1][c], w + doff + 2, 2);
            __m256i a[KT];
            for (int j = 0; j < NT; j++) a[j] = _mm256_setzero_si256();
            for (int i = 0; i < 8; i++) {
                __m256i code, sc, u = _mm256_setzero_si256();
                piece(w, T, &s, i, &code, &sc);
                if (T == IQ4XS) u = _mm256_sign_epi8(code, code); /* |level| */
                for (int j = 0; j < NT; j++) {
                    __m256i xv = _mm256_loadu_si256((const __m256i *)(x0 + j * cols + (b0 + c) * SHOAL_QK_K + 32 * i));
                    const __m256i p16 = T == IQ4XS ? _mm256_maddubs_epi16(u, _mm256_sign_epi8(xv, code))
                                                   : _mm256_maddubs_epi16(code, xv);
                    a[j] = _mm256_add_epi32(a[j], _mm256_madd_epi16(p16, sc));
                }
            }
            for (int j = 0; j < NT; j++) {
                if (OFF || MINS) {
                    const __m256i bsv = _mm256_loadu_si256((const __m256i *)(bs0 + j * (cols / 16) + (b0 + c) * 16));
                    const __m256i c8 = _mm256_madd_epi16(bsv, s.c16); /* sum_k c_k * bsum_k, in 8 parts */
                    if (OFF) a[j] = _mm256_sub_epi32(a[j], _mm256_slli_epi32(c8, OFF));
                    if (MINS) msum[j][c] = c8;
                }
                isum[j][c] = a[j];
            }
        }
        for (int c = nc; c < CH; c++)
            for (int j = 0; j < NT; j++) isum[j][c] = msum[j][c] = _mm256_setzero_si256();
        const __m256 dw = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh[0]));
        const __m256 dm = _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)dh[1]));
        const __m256i live = _mm256_cmpgt_epi32(_mm256_set1_epi32(nc), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        for (int j = 0; j < NT; j++) {
            const __m256i is = hsum8x8(isum[j]), ms = MINS ? hsum8x8(msum[j]) : _mm256_setzero_si256();
            const __m256 dx = _mm256_maskload_ps(xd0 + j * nb + b0, live);
            if (EXACT) {
                double terms[CH];
                for (int k = 0; k < 2; k++) {
                    const __m128 x4 = k ? _mm256_extractf128_ps(dx, 1) : _mm256_castps256_ps128(dx);
                    const __m128 d4 = k ? _mm256_extractf128_ps(dw, 1) : _mm256_castps256_ps128(dw);
                    const __m128i i4 = k ? _mm256_extracti128_si256(is, 1) : _mm256_castsi256_si128(is);
                    const __m256d x = _mm256_cvtps_pd(x4);
                    __m256d v = kterm4(_mm256_cvtps_pd(d4), x, _mm256_cvtepi32_pd(i4));
                    if (MINS) {
                        const __m128 m4 = k ? _mm256_extractf128_ps(dm, 1) : _mm256_castps256_ps128(dm);
                        const __m128i s4 = k ? _mm256_extracti128_si256(ms, 1) : _mm256_castsi256_si128(ms);
                        v = _mm256_sub_pd(v, kterm4(_mm256_cvtps_pd(m4), x, _mm256_cvtepi32_pd(s4)));
                    }
                    _mm256_storeu_pd(terms + 4 * k, v);
                }
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
    void shoal_cpu_avx2_##name(const struct mm_task *t, int64_t r0, int64_t r1) {              \
        static void (*const tiles[KT])(const struct mm_task *, int64_t, int) = {                \
            name##_1, name##_2, name##_3, name##_4,                                            \
        };                                                                                     \
        kq_drive(t, r0, r1, tiles);                                                            \
    }
_Static_assert(KT == 4, "KQ_TYPE lists 4 tile sizes");

KQ_TYPE(mm_q2_k, Q2K, 0)
KQ_TYPE(mm_q3_k, Q3K, 0)
KQ_TYPE(mm_q4_k, Q4K, 0)
KQ_TYPE(mm_q5_k, Q5K, 0)
KQ_TYPE(mm_q6_k, Q6K, 0)
KQ_TYPE(mm_iq4_xs, IQ4XS, 0)
KQ_TYPE(mm_f64_q2_k, Q2K, 1)
KQ_TYPE(mm_f64_q3_k, Q3K, 1)
KQ_TYPE(mm_f64_q4_k, Q4K, 1)
KQ_TYPE(mm_f64_q5_k, Q5K, 1)
KQ_TYPE(mm_f64_q6_k, Q6K, 1)
KQ_TYPE(mm_f64_iq4_xs, IQ4XS, 1)

/* ---------------------------------------------------------- activations */

/*
 * shoal_cpu_quantize_q8k, 8 values at a time: the same operations (the
 * first value of largest magnitude, iscale = -127 / it, iscale * x rounded
 * to nearest even, at most 127, d = 1 / iscale), so the same bytes.
 */
void shoal_cpu_avx2_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums) {
    const __m256 sign = _mm256_set1_ps(-0.0f);
    for (int64_t b = 0; b < cols / SHOAL_QK_K; b++, x += SHOAL_QK_K, q += SHOAL_QK_K, bsums += 16) {
        __m256 am = _mm256_setzero_ps();
        for (int k = 0; k < 32; k++) am = _mm256_max_ps(am, _mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)));
        __m128 m4 = _mm_max_ps(_mm256_castps256_ps128(am), _mm256_extractf128_ps(am, 1));
        m4 = _mm_max_ps(m4, _mm_movehl_ps(m4, m4));
        const float amax = _mm_cvtss_f32(_mm_max_ss(m4, _mm_movehdup_ps(m4)));
        if (!(amax > 0)) {
            d[b] = 0;
            memset(q, 0, SHOAL_QK_K);
            memset(bsums, 0, 16 * sizeof *bsums);
            continue;
        }
        int first = 0;
        for (int k = 0; k < 32; k++) {
            const int m = _mm256_movemask_ps(_mm256_cmp_ps(_mm256_andnot_ps(sign, _mm256_loadu_ps(x + 8 * k)),
                                                           _mm256_set1_ps(amax), _CMP_EQ_OQ));
            if (m) {
                first = 8 * k + __builtin_ctz((unsigned)m);
                break;
            }
        }
        const float iscale = -127.0f / x[first];
        const __m256 is = _mm256_set1_ps(iscale);
        for (int k = 0; k < 16; k++) { /* 16 values: one bsum; to nearest even, the default rounding mode */
            const __m256i a = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + 16 * k))),
                                               _mm256_set1_epi32(127));
            const __m256i c = _mm256_min_epi32(_mm256_cvtps_epi32(_mm256_mul_ps(is, _mm256_loadu_ps(x + 16 * k + 8))),
                                               _mm256_set1_epi32(127));
            /* int32 -> int16 -> int8 (values within -127..127: the packs are exact), in order */
            const __m256i w = _mm256_permute4x64_epi64(_mm256_packs_epi32(a, c), 0xd8);
            const __m128i by = _mm_packs_epi16(_mm256_castsi256_si128(w), _mm256_extracti128_si256(w, 1));
            _mm_storeu_si128((__m128i *)(q + 16 * k), by);
            const __m256i s8 = _mm256_add_epi32(a, c);
            __m128i s4 = _mm_add_epi32(_mm256_castsi256_si128(s8), _mm256_extracti128_si256(s8, 1));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0x4e));
            s4 = _mm_add_epi32(s4, _mm_shuffle_epi32(s4, 0xb1));
            bsums[k] = (int16_t)_mm_cvtsi128_si32(s4);
        }
        d[b] = 1 / iscale;
    }
}
