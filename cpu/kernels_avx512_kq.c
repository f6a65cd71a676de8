/*
 * kernels_avx512_kq.c — the AVX-512 (VNNI) matmuls of the super-block types
 * (Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS) with Q8_K activations: f32 sums
 * (mm) and exact f64 sums (mm_f64); kernels_avx512.c's table lists them
 * (the 32-value block types are there). All six are packed at load, 16
 * rows interleaved (the comment before image_bytes says how), so that a
 * block of weights is unpacked once for a tile of up to 8 tokens (Q2_K and
 * Q3_K ran a row at a time on the GGUF rows before: 8 tokens cost 4-5
 * times one, now 2; bench_matmul q2_k 2816 1024 8 1: 521-580 -> 182-195
 * us, q3_k 468 -> 222-235). Compiled with AVX-512 enabled (see
 * CMakeLists.txt) and only called after the processor says it has it.
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
 * The weights two pages on are prefetched: the hardware prefetchers follow
 * the images poorly across 4 KiB pages. Measured (Zen 5, one thread,
 * 5632 x 2048, when rows were read one at a time): Q6_K decoded at 33 GB/s
 * without and 38 with, Q4_K 28 and 30, the others level.
 */
#include <immintrin.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "kernels.h"

#define INLINE static inline __attribute__((always_inline))

enum { Q2K, Q3K, Q4K, Q5K, Q6K, IQ4XS };

/* Eight horizontal sums of int32 lanes at once (exact): lane i of the result is the sum of v[i]'s 16 lanes. */
INLINE __m256i hsum8x16(const __m512i v[8]) {
    __m512i t[4]; /* t[k]: lanes 0-1 one vector's parts, 2-3 the next's */
    for (int k = 0; k < 4; k++)
        t[k] = _mm512_add_epi32(_mm512_shuffle_i32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(1, 0, 1, 0)),
                                _mm512_shuffle_i32x4(v[2 * k], v[2 * k + 1], _MM_SHUFFLE(3, 2, 3, 2)));
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

#define PREFETCH 8192 /* bytes ahead that a group's weights are fetched from memory */

/* ------------------------------------------------------ packed at load */

/*
 * The six are packed at load (as Q8_0 is in kernels_avx512.c): rows in
 * groups of 16, and per super-block one image of the group's 16 rows, of
 * exactly the rows' own bytes (so that packing in place, group by group,
 * never overtakes the rows still to be read), read from start to end:
 *  - first the scales: Q4_K's and Q5_K's 12 scale bytes of each row as 12
 *    planes of 16 (plane j: byte j of each row), then the 16 rows' d, their
 *    dmin (256 bytes); Q6_K's 16 int8 scales as 16 planes, d (288);
 *    IQ4_XS's scales_h and scales_l as 6 planes, d (128); Q2_K's 16 scale
 *    bytes (scale and min of each 16 values) as 16 planes, d, dmin (320);
 *    Q3_K's 12 as 12 planes, d (224);
 *  - then the codes (IQ4_XS: the levels' indices), group by group (32
 *    values each): the low four bits in four 64-byte vectors, vector k's
 *    bytes 4 r + e (row r) holding those of value 32 g + 4 k + e in the low
 *    nibble and of value 32 g + 16 + 4 k + e in the high one; then, for
 *    Q5_K, one vector of the fifth bits (bits 2 k and 2 k + 1 of byte 4 r +
 *    e: those of the two values above), for Q6_K two vectors of the high
 *    two bits (vector q: at bits 0-3 those of the two values for k = 2 q,
 *    at 4-7 for k = 2 q + 1). Q2_K's and Q3_K's two low bits in two
 *    vectors instead, vector 0's (1's) byte 4 r + e holding at bits 2 k,
 *    2 k + 1 those of value 32 g + 4 k + e (+ 16), then Q3_K's third bits
 *    in one vector, at bits k (4 + k) of byte 4 r + e.
 * Q4_K's image is 2304 bytes, Q5_K's 2816, Q6_K's 3360, IQ4_XS's 2176,
 * Q2_K's 1344, Q3_K's 1760.
 * A token's four activation bytes, broadcast, meet a code vector's 16 rows
 * in one vpdpbusd: eight make the 16 rows' dot products of a group (Q2_K,
 * Q3_K, Q6_K: of two sub-blocks of 16), one per int32 lane (rows, not
 * parts of one row: nothing to add across lanes), then times the 16 rows'
 * scales (vpmulld) into the rows' isum; the offsets (Q3_K's -4, Q6_K's
 * -32, IQ4_XS's levels are +128 here) and the mins from the activations'
 * sums. Then per super-block the
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
    case SHOAL_DTYPE_Q2_K: return PG * sizeof(struct shoal_block_q2_k);
    case SHOAL_DTYPE_Q3_K: return PG * sizeof(struct shoal_block_q3_k);
    case SHOAL_DTYPE_Q4_K: return PG * sizeof(struct shoal_block_q4_k);
    case SHOAL_DTYPE_Q5_K: return PG * sizeof(struct shoal_block_q5_k);
    case SHOAL_DTYPE_Q6_K: return PG * sizeof(struct shoal_block_q6_k);
    case SHOAL_DTYPE_IQ4_XS: return PG * sizeof(struct shoal_block_iq4_xs);
    }
    return 0;
}
#define P2K 1344
#define P3K 1760
#define P4K 2304
#define P5K 2816
#define P6K 3360
#define PXS 2176
_Static_assert(P2K == PG * sizeof(struct shoal_block_q2_k) && P3K == PG * sizeof(struct shoal_block_q3_k), "an image is its rows' bytes");
_Static_assert(P4K == PG * sizeof(struct shoal_block_q4_k) && P5K == PG * sizeof(struct shoal_block_q5_k) &&
               P6K == PG * sizeof(struct shoal_block_q6_k) && PXS == PG * sizeof(struct shoal_block_iq4_xs),
               "an image is its rows' bytes");

/* Where an image's codes start (after its scales and d), and the bytes of a group's codes: the
 * low four bits, then Q5_K's and Q6_K's high ones. */
static int code_base(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q2_K: return 320;
    case SHOAL_DTYPE_Q3_K: return 224;
    case SHOAL_DTYPE_Q6_K: return 288;
    case SHOAL_DTYPE_IQ4_XS: return 128;
    }
    return 256;
}

static int group_bytes(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q2_K: return 128;
    case SHOAL_DTYPE_Q3_K: return 192;
    case SHOAL_DTYPE_Q5_K: return 320;
    case SHOAL_DTYPE_Q6_K: return 384;
    }
    return 256;
}

/* Codes of two bits (and Q3_K's third) rather than nibbles: Q2_K and Q3_K. */
static int low2_type(int type) { return type == SHOAL_DTYPE_Q2_K || type == SHOAL_DTYPE_Q3_K; }

/* Q2_K's and Q3_K's codes, value v of block p: the low two bits; Q3_K's third (set: no -4). */
static int low2_of(int type, const uint8_t *p, int v) {
    const uint8_t *qs = type == SHOAL_DTYPE_Q2_K ? ((const struct shoal_block_q2_k *)p)->qs
                                                 : ((const struct shoal_block_q3_k *)p)->qs;
    return (qs[32 * (v / 128) + v % 32] >> (2 * (v % 128 / 32))) & 3;
}
static int hbit_of(const uint8_t *p, int v) { return (((const struct shoal_block_q3_k *)p)->hmask[v % 32] >> (v / 32)) & 1; }

size_t shoal_cpu_avx512_kq_packed_bytes(int type, int64_t rows, int64_t cols) {
    return (size_t)((rows + PG - 1) / PG) * (size_t)(cols / SHOAL_QK_K) * image_bytes(type);
}

/* Sets the bits of value v's code c in block p of type (zeroed first): codes_of's inverse. */
static void set_code(int type, uint8_t *p, int v, int c) {
    switch (type) {
    case SHOAL_DTYPE_Q2_K:
        ((struct shoal_block_q2_k *)p)->qs[32 * (v / 128) + v % 32] |= (uint8_t)((c & 3) << (2 * (v % 128 / 32)));
        break;
    case SHOAL_DTYPE_Q3_K: {
        struct shoal_block_q3_k *b = (void *)p;
        b->qs[32 * (v / 128) + v % 32] |= (uint8_t)((c & 3) << (2 * (v % 128 / 32)));
        b->hmask[v % 32] |= (uint8_t)((c >> 2) << (v / 32));
        break;
    }
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
    case SHOAL_DTYPE_Q2_K:
        return (struct image_fields){ offsetof(struct shoal_block_q2_k, scales), 16, offsetof(struct shoal_block_q2_k, d),
                                      offsetof(struct shoal_block_q2_k, dmin), 0, 256 };
    case SHOAL_DTYPE_Q3_K:
        return (struct image_fields){ offsetof(struct shoal_block_q3_k, scales), 12, offsetof(struct shoal_block_q3_k, d), -1, 0, 192 };
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
        for (int g = 0; g < 8 && low2_type(type); g++)
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < 4; e++) { /* bits 2 k of vector 0 (1): value 32 g + 4 k + e (+ 16) */
                    const int lo = 32 * g + 4 * k + e, hi = lo + 16, at = cb + g * gs + r * 4 + e;
                    o[at] |= (uint8_t)(low2_of(type, b, lo) << (2 * k));
                    o[at + 64] |= (uint8_t)(low2_of(type, b, hi) << (2 * k));
                    if (type == SHOAL_DTYPE_Q3_K) /* their third bits: bits k, 4 + k of vector 2 */
                        o[at + 128] |= (uint8_t)(hbit_of(b, lo) << k | hbit_of(b, hi) << (4 + k));
                }
        for (int g = 0; g < 8 && !low2_type(type); g++) {
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
        for (int g = 0; g < 8 && low2_type(type); g++)
            for (int k = 0; k < 4; k++)
                for (int e = 0; e < 4; e++) { /* pack_sb's bits back */
                    const int at = cb + g * gs + lane * 4 + e, h = type == SHOAL_DTYPE_Q3_K ? o[at + 128] : 0;
                    set_code(type, blk, 32 * g + 4 * k + e, (o[at] >> (2 * k) & 3) | (h >> k & 1) << 2);
                    set_code(type, blk, 32 * g + 16 + 4 * k + e, (o[at + 64] >> (2 * k) & 3) | (h >> (4 + k) & 1) << 2);
                }
        for (int g = 0; g < 8 && !low2_type(type); g++)
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
    const int PER = T == Q2K ? P2K : T == Q3K ? P3K : T == Q4K ? P4K : T == Q5K ? P5K : T == Q6K ? P6K : PXS;
    const int MINS = T == Q2K || T == Q4K || T == Q5K;
    const int S16 = T == Q2K || T == Q3K || T == Q6K; /* sub-blocks of 16 values: two scales a group */
    const int LOW2 = T == Q2K || T == Q3K;            /* codes of two bits (Q3_K: and a third) */
    const int GS = T == Q2K ? 128 : T == Q3K ? 192 : T == Q5K ? 320 : T == Q6K ? 384 : 256; /* group_bytes */
    const int SCO = 0, DO = T == Q2K || T == Q6K ? 256 : T == IQ4XS ? 96 : 192; /* the scale planes; d (then dmin) */
    const int CB = T == Q2K ? 320 : T == Q3K ? 224 : T == Q6K ? 288 : T == IQ4XS ? 128 : 256; /* code_base */
    const __m512i m4 = _mm512_set1_epi8(0x0f), m6 = _mm512_set1_epi8(63), top = _mm512_set1_epi8(0x30);
    const __m512i m3 = _mm512_set1_epi8(3), b3 = _mm512_set1_epi8(4);
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
        /* the 16 rows' scales (and mins) by group: bytes 16 g.. (mins 128 + 16 g..) of scm; by
         * sub-block of 16 for Q2_K and Q3_K: bytes 16 j.. (Q2_K's mins 256 + 16 j..) */
        uint8_t scm[512];
        if (T == Q2K) { /* scale and min of sub-block j: the low and high nibbles of plane j */
            for (int i = 0; i < 4; i++) {
                const __m512i v = _mm512_loadu_si512((const void *)(p + SCO + 64 * i));
                _mm512_storeu_si512((void *)(scm + 64 * i), _mm512_and_si512(v, m4));
                _mm512_storeu_si512((void *)(scm + 256 + 64 * i), _mm512_and_si512(_mm512_srli_epi16(v, 4), m4));
            }
        } else if (T == Q3K) {
            /* scale j: nibble j / 8 of plane j % 8, bits 2 (j / 4) of plane 8 + j % 4 above it; -32 */
            const __m512i p0 = _mm512_loadu_si512((const void *)(p + SCO));
            const __m512i p1 = _mm512_loadu_si512((const void *)(p + SCO + 64));
            const __m512i p2 = _mm512_loadu_si512((const void *)(p + SCO + 128));
            for (int i = 0; i < 4; i++) {
                const __m512i lo = _mm512_and_si512(i < 2 ? (i ? p1 : p0) : _mm512_srli_epi16(i == 3 ? p1 : p0, 4), m4);
                const __m512i hi = _mm512_slli_epi16(_mm512_and_si512(_mm512_srli_epi16(p2, 2 * i), m3), 4);
                _mm512_storeu_si512((void *)(scm + 64 * i), _mm512_sub_epi8(_mm512_or_si512(lo, hi), _mm512_set1_epi8(32)));
            }
        } else if (MINS) {
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
        if (T == Q4K || T == Q5K || T == IQ4XS)
            for (int j = 0; j < NT; j++) {
                const __m256i bsv = _mm256_loadu_si256((const __m256i *)(t->xkbs + (int64_t)(t0 + j) * (cols / 16) + b * 16));
                _mm_storeu_si128((__m128i *)bsg[j], _mm256_cvtepi32_epi16(_mm256_madd_epi16(bsv, _mm256_set1_epi16(1))));
            }
        __m512i isum[PT4];
        for (int j = 0; j < NT; j++) isum[j] = _mm512_setzero_si512();
        for (int g = 0; g < 8; g++) {
            /* the scales of values 0..15 (s0) and 16..31 (s1) of the group: one but for Q6_K */
            const uint8_t *s16 = T == Q6K ? p + SCO + 32 * g : scm + 32 * g; /* S16: sub-blocks 2 g, 2 g + 1 */
            const __m512i s0 = S16 ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)s16))
                             : T == IQ4XS ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(scm + 16 * g)))
                                          : _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(scm + 16 * g)));
            const __m512i s1 = S16 ? _mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(s16 + 16))) : s0;
            /*
             * A code vector at a time, unpacked once for the tile's tokens, each token's dot
             * products in one accumulator (Q6_K: one per half of the group, a scale each).
             * Integer sums: exact, so the same whatever the tile.
             */
            __m512i a[PT4], c[PT4]; /* the offsets (Q6_K's, IQ4_XS's) come after the groups */
            for (int j = 0; j < NT; j++) a[j] = c[j] = _mm512_setzero_si512();
            const __m512i v0 = LOW2 ? _mm512_loadu_si512((const void *)(p + CB + g * GS)) : m4;
            const __m512i v1 = LOW2 ? _mm512_loadu_si512((const void *)(p + CB + g * GS + 64)) : m4;
            const __m512i vh = T == Q3K ? _mm512_loadu_si512((const void *)(p + CB + g * GS + 128)) : m4;
            for (int k = 0; k < 4; k++) {
                const __m512i v = LOW2 ? m4 : _mm512_loadu_si512((const void *)(p + CB + g * GS + k * 64));
                __m512i cl = _mm512_and_si512(v, m4), ch = _mm512_and_si512(_mm512_srli_epi16(v, 4), m4);
                if (LOW2) { /* bits 2 k of vectors 0 and 1; Q3_K's third bits k and 4 + k of vector 2, to bit 2 */
                    cl = _mm512_and_si512(_mm512_srli_epi16(v0, 2 * k), m3);
                    ch = _mm512_and_si512(_mm512_srli_epi16(v1, 2 * k), m3);
                    if (T == Q3K) {
                        const __m512i hl = k < 2 ? _mm512_slli_epi16(vh, 2 - k) : _mm512_srli_epi16(vh, k - 2);
                        cl = _mm512_ternarylogic_epi32(hl, b3, cl, 0xea);
                        ch = _mm512_ternarylogic_epi32(_mm512_srli_epi16(vh, 2 + k), b3, ch, 0xea);
                    }
                } else if (T == Q5K) { /* fifth bits 2 k, 2 k + 1 to bit 4 */
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
                    if (S16) c[j] = _mm512_dpbusd_epi32(c[j], ch, _mm512_set1_epi32(xh));
                    else a[j] = _mm512_dpbusd_epi32(a[j], ch, _mm512_set1_epi32(xh));
                }
            }
            for (int j = 0; j < NT; j++)
                isum[j] = S16 ? _mm512_add_epi32(isum[j], _mm512_add_epi32(_mm512_mullo_epi32(a[j], s0), _mm512_mullo_epi32(c[j], s1)))
                                   : _mm512_add_epi32(isum[j], _mm512_mullo_epi32(a[j], s0));
        }
        /*
         * The offsets, Q6_K's -32 and IQ4_XS's -128 (its levels here are +128), times the
         * scales and the token's sums of x (of 16 values, of 32): sum_k sc_k bsum_k, in
         * vpdpwssd of int16 pairs, pair q holding the scales of sub-blocks (groups) 2 q and
         * 2 q + 1 of each row; then, the same way, the mins' sums sum_g m_g bsum_g. Exact
         * integers, the same whatever the tile.
         */
        if (T == Q3K || T == Q6K || T == IQ4XS) {
            const int NP = S16 ? 8 : 4;
            __m512i cq[8];
            for (int q = 0; q < NP; q++) {
                const uint8_t *sp = T == Q6K ? p + SCO + 32 * q : scm + 32 * q;
                cq[q] = _mm512_or_si512(
                    _mm512_and_si512(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)sp)), _mm512_set1_epi32(0xffff)),
                    _mm512_slli_epi32(_mm512_cvtepi8_epi32(_mm_loadu_si128((const __m128i *)(sp + 16))), 16));
            }
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = S16 ? t->xkbs + (int64_t)(t0 + j) * (cols / 16) + b * 16 : bsg[j];
                __m512i m = _mm512_setzero_si512();
                for (int q = 0; q < NP; q++) {
                    int32_t pair;
                    memcpy(&pair, bs + 2 * q, 4);
                    m = _mm512_dpwssd_epi32(m, cq[q], _mm512_set1_epi32(pair));
                }
                isum[j] = _mm512_sub_epi32(isum[j], _mm512_slli_epi32(m, T == Q3K ? 2 : T == Q6K ? 5 : 7));
            }
        }
        __m512i msum[PT4];
        if (MINS) {
            /* lane r: row r's mins of groups 2 q and 2 q + 1, int16 (Q2_K: of sub-blocks of 16) */
            const int NM = S16 ? 8 : 4;
            const uint8_t *ms = scm + (S16 ? 256 : 128);
            __m512i mq[8];
            for (int q = 0; q < NM; q++)
                mq[q] = _mm512_or_si512(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ms + 32 * q))),
                                        _mm512_slli_epi32(_mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(ms + 16 + 32 * q))), 16));
            for (int j = 0; j < NT; j++) {
                const int16_t *bs = S16 ? t->xkbs + (int64_t)(t0 + j) * (cols / 16) + b * 16 : bsg[j];
                __m512i m = _mm512_setzero_si512();
                for (int q = 0; q < NM; q++) {
                    int32_t pair;
                    memcpy(&pair, bs + 2 * q, 4);
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
KQP_TYPE(mm_q2_kp, Q2K, 0, P2K)
KQP_TYPE(mm_q3_kp, Q3K, 0, P3K)
KQP_TYPE(mm_f64_q2_kp, Q2K, 1, P2K)
KQP_TYPE(mm_f64_q3_kp, Q3K, 1, P3K)
KQP_TYPE(mm_q4_kp, Q4K, 0, P4K)
KQP_TYPE(mm_q5_kp, Q5K, 0, P5K)
KQP_TYPE(mm_q6_kp, Q6K, 0, P6K)
KQP_TYPE(mm_iq4_xsp, IQ4XS, 0, PXS)
KQP_TYPE(mm_f64_q4_kp, Q4K, 1, P4K)
KQP_TYPE(mm_f64_q5_kp, Q5K, 1, P5K)
KQP_TYPE(mm_f64_q6_kp, Q6K, 1, P6K)
KQP_TYPE(mm_f64_iq4_xsp, IQ4XS, 1, PXS)

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
