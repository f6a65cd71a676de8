/*
 * kernels_scalar.c — the portable kernels: plain C that any compiler and
 * processor run. They define what the SIMD kernels must compute and are the
 * fallback for anything those do not cover, type by type. Also here: the
 * activation quantizers (Q8_32 and Q8_K forms) and the table of which form
 * each weight type meets (shoal_cpu_xform).
 */
#include <math.h>

#include <string.h>

#include "kernels.h"

static float dot_f32(const float *a, const float *b, int n);

void shoal_cpu_quantize_x(const float *x, int64_t cols, int8_t *q, float *d, float *s,
                          int32_t *isum, int grouped, int lanes, int offset, int32_t *vc, float *vd) {
    const int64_t nb = cols / SHOAL_QK, full = grouped ? nb / 4 * 4 : 0;
    for (int64_t b = 0; b < nb; b++) {
        const float *xb = x + b * SHOAL_QK;
        float amax = 0;
        for (int j = 0; j < SHOAL_QK; j++) {
            float a = fabsf(xb[j]);
            amax = a > amax ? a : amax;
        }
        /* as llama.cpp's Q8_0/Q8_1 activations: x * 127 / amax rounded to nearest
         * even, the scale kept as f16, the block's scaled sum too */
        float db = amax / 127.0f, id = amax > 0 ? 127.0f / amax : 0.0f;
        int sum = 0;
        /* where value j of this block goes: in order, or split into halves */
        int8_t *lo = q + b * SHOAL_QK, *hi = lo + 16;
        if (b < full) {
            lo = q + (b / 4) * 128 + (b % 4) * 16;
            hi = lo + 64;
        }
        for (int j = 0; j < SHOAL_QK; j++) {
            int v = (int)nearbyintf(xb[j] * id); /* |v| <= 127; the default mode: to even */
            (j < 16 ? lo : hi)[j & 15] = (int8_t)v;
            sum += v;
        }
        d[b] = shoal_f16_to_f32(shoal_f32_to_f16(db));
        s[b] = shoal_f16_to_f32(shoal_f32_to_f16(db * (float)sum));
        isum[b] = sum;
    }
    if (lanes) shoal_cpu_lane_vectors(d, isum, nb, lanes, offset, vc, vd);
}

void shoal_cpu_quantize_q8k(const float *x, int64_t cols, int8_t *q, float *d, int16_t *bsums) {
    for (int64_t b = 0; b < cols / SHOAL_QK_K; b++, x += SHOAL_QK_K, q += SHOAL_QK_K, bsums += 16) {
        float amax = 0, max = 0;
        for (int j = 0; j < SHOAL_QK_K; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        if (amax == 0) {
            d[b] = 0;
            memset(q, 0, SHOAL_QK_K);
            memset(bsums, 0, 16 * sizeof *bsums);
            continue;
        }
        /* llama.cpp's order of operations, for its bits: its nearest_int rounds half
         * to even, as nearbyintf does in the default mode */
        const float iscale = -127.0f / max;
        for (int j = 0; j < SHOAL_QK_K; j++) {
            int v = (int)nearbyintf(iscale * x[j]);
            q[j] = (int8_t)(v < 127 ? v : 127);
        }
        for (int k = 0; k < 16; k++) {
            int sum = 0;
            for (int j = 0; j < 16; j++) sum += q[16 * k + j];
            bsums[k] = (int16_t)sum;
        }
        d[b] = 1 / iscale;
    }
}

void shoal_cpu_lane_vectors(const float *d, const int32_t *sum, int64_t nb, int lanes, int offset,
                            int32_t *vc, float *vd) {
    for (int64_t b = 0; b < nb / 4 * 4; b++)
        for (int l = 0; l < lanes; l++) {
            vc[b * lanes + l] = -offset / lanes * sum[b];
            vd[b * lanes + l] = d[b];
        }
}

float shoal_cpu_kv_dot_q8(const float *q, const void *k, int n) {
    float scale;
    memcpy(&scale, k, 4);
    const int8_t *v = (const int8_t *)k + 4;
    float s = 0;
    for (int i = 0; i < n; i++) s += q[i] * (float)v[i];
    return s * scale;
}

void shoal_cpu_kv_axpy_q8(float *o, float w, const void *v, int n) {
    float scale;
    memcpy(&scale, v, 4);
    const int8_t *q = (const int8_t *)v + 4;
    w *= scale;
    for (int i = 0; i < n; i++) o[i] += w * (float)q[i];
}

static float kv_dot_f32(const float *q, const void *k, int n) { return dot_f32(q, k, n); }

static float kv_dot_f16(const float *q, const void *k, int n) {
    const uint16_t *h = k;
    float s = 0;
    for (int i = 0; i < n; i++) s += q[i] * shoal_f16_to_f32(h[i]);
    return s;
}

static void kv_axpy_f32(float *o, float w, const void *v, int n) {
    const float *x = v;
    for (int i = 0; i < n; i++) o[i] += w * x[i];
}

static void kv_axpy_f16(float *o, float w, const void *v, int n) {
    const uint16_t *h = v;
    for (int i = 0; i < n; i++) o[i] += w * shoal_f16_to_f32(h[i]);
}

static float dot_f32(const float *a, const float *b, int n) {
    /* four partial sums: the compiler can vectorise this, and the order is fixed */
    float s[4] = { 0, 0, 0, 0 };
    int i = 0;
    for (; i + 4 <= n; i += 4)
        for (int k = 0; k < 4; k++) s[k] += a[i + k] * b[i + k];
    for (; i < n; i++) s[0] += a[i] * b[i];
    return (s[0] + s[1]) + (s[2] + s[3]);
}

#undef DRIVER

/* ------------------------------------------------------------ f64 sums */

static double row_f64_f32(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols;
    const float *w = (const float *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const float *x = t->x + tok * cols;
    double s = 0;
    for (int64_t i = 0; i < cols; i++) s += (double)w[i] * x[i];
    return s;
}

/* x as it meets a weight: BF16 weights meet x rounded to bf16 (every level; llama.cpp's too). */
static inline float x_as(float x, int bf) { return bf ? shoal_bf16_to_f32(shoal_f32_to_bf16(x)) : x; }

static inline double row_f64_half(const struct mm_task *t, int64_t r, int tok,
                                  float (*cvt)(uint16_t), int bf) {
    const int64_t cols = t->w->cols;
    const uint16_t *w = (const uint16_t *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const float *x = t->x + tok * cols;
    double s = 0;
    for (int64_t i = 0; i < cols; i++) s += (double)cvt(w[i]) * x_as(x[i], bf);
    return s;
}

static double row_f64_f16(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_half(t, r, tok, shoal_f16_to_f32, 0);
}

static double row_f64_bf16(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_half(t, r, tok, shoal_bf16_to_f32, 1);
}

/*
 * A 32-value block's integer sum of 4-bit codes less bias (0 or 8) times its
 * activations: the low nibbles meet the first 16, the high the next 16.
 * Loops over contiguous bytes, kept loops (GCC unroll 1), so that GCC
 * vectorizes them with the baseline ISA (SSE2 on x86-64, NEON on AArch64):
 * unrolled whole into the row's loop, they were 32 scalar multiplies a block
 * (SmolLM2 decoded 1.5x faster at --simd scalar). Integer sums: any order
 * gives the same sum.
 */
static inline int nibble_dot(const uint8_t *qs, const int8_t *x, int bias) {
    int lo = 0, hi = 0;
#pragma GCC unroll 1
    for (int j = 0; j < SHOAL_QK / 2; j++) lo += ((qs[j] & 0x0f) - bias) * x[j];
#pragma GCC unroll 1
    for (int j = 0; j < SHOAL_QK / 2; j++) hi += ((qs[j] >> 4) - bias) * x[j + SHOAL_QK / 2];
    return lo + hi;
}

/* A block's scale dw * dx as every level forms it: an f32 product. */
static inline float block_scale(uint16_t dw, float dx) { return shoal_f16_to_f32(dw) * dx; }

static double row_f64_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w =
        (const void *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        int sum = 0;
#pragma GCC unroll 1 /* (as nibble_dot) */
        for (int j = 0; j < SHOAL_QK; j++) sum += w[b].qs[j] * xq[b * SHOAL_QK + j];
        s += (double)block_scale(w[b].d, xd[b]) * sum;
    }
    return s;
}

static double row_f64_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q4_0 *w =
        (const void *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const int sum = nibble_dot(w[b].qs, xq + b * SHOAL_QK, 8);
        s += (double)block_scale(w[b].d, xd[b]) * sum;
    }
    return s;
}

/* Q4_1: d * q + m with q in 0..15; the m part is m times the block's sum of
 * x, xs = dx * sum(xq) (an f32 product every level forms alike). */
static double row_f64_q4_1(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q4_1 *w =
        (const void *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb, *xs = t->xs + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const int sum = nibble_dot(w[b].qs, xq + b * SHOAL_QK, 0);
        s += (double)block_scale(w[b].d, xd[b]) * sum; /* exact products: two adds, each rounded */
        s += (double)shoal_f16_to_f32(w[b].m) * xs[b];
    }
    return s;
}

static inline const void *row_ptr(const struct mm_task *t, int64_t r) {
    return (const char *)t->w->data + (size_t)r * t->w->row_bytes;
}

/*
 * Q5_0, Q5_1 and IQ4_NL meet the Q8_32 form as Q8_0 and Q4_1 do, and their
 * products are exact in f64 the same way: dw * dx is a product of two f16
 * values (11 significant bits each), exact in f32; a block's integer sum is
 * at most 32 * 16 * 127 (q5_0), 32 * 31 * 127 (q5_1), 32 * 127 * 127
 * (iq4_nl) in magnitude, 19 bits: 41 bits in all. Q5_1's m * xs is again a
 * product of two f16 values.
 */

/*
 * Q5_0, Q5_1: value j's fifth bit is bit j of the 32 in qh (little-endian); its
 * low four bits are ordered as in q4_0. The block's integer sum of codes less
 * bias (16 or 0) times its activations, as the nibbles' sum (nibble_dot, which
 * GCC vectorizes) plus 16 times the sum of the activations whose fifth bit is
 * set, eight at a time in 64-bit words (built in registers: codes merged in
 * memory cost a stalled load a block, the bytes stored 8 and read 16 at a time):
 *  - byte e of qh[k] * 0x0101..01 masked by 0x8040..01 is bit e of qh[k] in
 *    place; b + 0x7f reaches bit 7 from any set bit, and no byte carries into
 *    the next (b <= 0x80): the selection mask, 0xff where the bit is set;
 *  - the selected int8 activations' sum: their bytes' sum as unsigned (two
 *    16-bit lanes a pair, then a multiply that adds the four, at most 2040)
 *    less 256 for each negative one.
 * Byte e of a word is value 8 k + e on a little-endian host, as shoal's GGUF
 * reader assumes too.
 */
static inline int q5_dot(const uint8_t *qs, const uint8_t *qh, const int8_t *x, int bias) {
    const uint64_t ones = 0x0101010101010101ull, low = 0x00ff00ff00ff00ffull;
    int fifth = 0;
    for (int k = 0; k < 4; k++) {
        const uint64_t m = (qh[k] * ones) & 0x8040201008040201ull;
        const uint64_t sel = ((((m + 0x7f7f7f7f7f7f7f7full) | m) & 0x8080808080808080ull) >> 7) * 0xff;
        uint64_t xw;
        memcpy(&xw, x + 8 * k, 8);
        const uint64_t v = xw & sel;
        const uint64_t pairs = (v & low) + ((v >> 8) & low);
        const int usum = (int)((pairs * 0x0001000100010001ull) >> 48);
        const int neg = (int)((((v >> 7) & ones) * ones) >> 56);
        fifth += usum - 256 * neg;
    }
    return nibble_dot(qs, x, bias) + 16 * fifth;
}

static double row_f64_q5_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q5_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const int sum = q5_dot(w[b].qs, w[b].qh, xq + b * SHOAL_QK, 16);
        s += (double)block_scale(w[b].d, xd[b]) * sum;
    }
    return s;
}

/* Q5_1: as Q4_1, d * q + m with q in 0..31. */
static double row_f64_q5_1(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q5_1 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb, *xs = t->xs + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        const int sum = q5_dot(w[b].qs, w[b].qh, xq + b * SHOAL_QK, 0);
        s += (double)block_scale(w[b].d, xd[b]) * sum; /* exact products: two adds, each rounded */
        s += (double)shoal_f16_to_f32(w[b].m) * xs[b];
    }
    return s;
}

/* IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl; base/quant.c has them too). */
static const int8_t iq4_levels[16] = { -127, -104, -83, -65, -49, -35, -22, -10,
                                       1,    13,   25,  38,  53,  69,  89,  113 };

/* IQ4_NL: q4_0's layout, each nibble a level. */
static double row_f64_iq4_nl(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_iq4_nl *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    double s = 0;
    for (int64_t b = 0; b < nb; b++) {
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            sum += iq4_levels[w[b].qs[j] & 0x0f] * xq[b * SHOAL_QK + j];
            sum += iq4_levels[w[b].qs[j] >> 4] * xq[b * SHOAL_QK + j + 16];
        }
        s += (double)block_scale(w[b].d, xd[b]) * sum;
    }
    return s;
}

/* ------------------------------------------- super-blocks of 256, Q8_K */

/*
 * A super-block's value is d * dx * sum_k sc_k * dot_k (less dmin * dx *
 * sum_k m_k * xsum_k for the types with mins): the weight's f16 scale d,
 * the activation block's f32 scale dx, and an integer sum of the sub-blocks'
 * integer dot products dot_k (codes times int8 activations) times their
 * integer scales sc_k, as llama.cpp's vec_dot_q*_K_q8_K sums them. That is
 * sum_k (d * sc_k) * dx * dot_k exactly, d * sc_k being what the
 * dequantizer forms in f32 (exact there: base/quant.c's "float order").
 *
 * Exact in f64? Not as it stands: dx has 24 significant bits, d 11, and the
 * integer sums reach 27 bits (largest |sum_k sc_k * dot_k|, from the ranges
 * of codes, scales and int8 activations: q2_k 1.5e6, q3_k 4.2e6, q4_k
 * 3.1e7, q5_k 6.4e7, q6_k 1.3e8, iq4_xs 1.3e8 < 2^27; the mins' sums at
 * most 2.0e6): 62 bits, more than f64's 53. But isum * d alone is exact
 * (at most 27 + 11 bits), so (isum * d) * dx is the whole product rounded
 * once, a term every level forms alike. (An f32 product dw * dx, as the
 * Q8_32 kernels use, would round before that.) The f64 sum then adds the
 * terms in order.
 */

/* d * dx * isum rounded once: d an f16 scale, isum below 2^27 in magnitude. */
static inline double kterm(uint16_t d, float dx, int32_t isum) {
    return (double)isum * shoal_f16_to_f32(d) * dx;
}

/* Where a super-block row's Q8_K activations for token tok are. */
#define Q8K_ROW(t, tok)                                                                      \
    const int64_t cols = (t)->w->cols, nb = cols / SHOAL_QK_K;                                \
    const int8_t *xq = (t)->xkq + (tok) * cols;                                               \
    const float *xd = (t)->xkd + (tok) * nb

/* Q2_K: 16 sub-blocks of 16, a 2-bit code q at bit 2 s of qs[32 c + j] for value
 * 128 c + 32 s + j; w = d * sc * q - dmin * m, sc and m the nibbles of scales[k]. */
static double row_f64_q2_k(const struct mm_task *t, int64_t r, int tok) {
    Q8K_ROW(t, tok);
    const int16_t *bs = t->xkbs + tok * (cols / 16);
    const struct shoal_block_q2_k *w = row_ptr(t, r);
    double s = 0;
    for (int64_t b = 0; b < nb; b++, xq += SHOAL_QK_K, bs += 16) {
        int32_t isum = 0, msum = 0;
        for (int k = 0; k < 16; k++) {
            /* value v = 16 k + e: bits 2 (v % 128 / 32) of qs[32 (v / 128) + v % 32], contiguous
             * bytes and one shift for a sub-block (a loop GCC vectorizes, as nibble_dot's) */
            const uint8_t *q = w[b].qs + 32 * (k / 8) + 16 * k % 32;
            const int sh = 2 * (16 * k % 128 / 32);
            int dot = 0;
#pragma GCC unroll 1
            for (int e = 0; e < 16; e++) dot += ((q[e] >> sh) & 3) * xq[16 * k + e];
            isum += (w[b].scales[k] & 0x0f) * dot;
            msum += (w[b].scales[k] >> 4) * bs[k];
        }
        s += kterm(w[b].d, xd[b], isum) - kterm(w[b].dmin, xd[b], msum);
    }
    return s;
}

/* Q3_K: Q2_K's low bits, less 4 where bit v / 32 of hmask[v % 32] is clear; 6-bit
 * scales stored +32 (their bits as base/quant.c unpacks them). */
static double row_f64_q3_k(const struct mm_task *t, int64_t r, int tok) {
    Q8K_ROW(t, tok);
    const struct shoal_block_q3_k *w = row_ptr(t, r);
    double s = 0;
    for (int64_t b = 0; b < nb; b++, xq += SHOAL_QK_K) {
        const uint8_t *sc = w[b].scales;
        int32_t isum = 0;
        for (int k = 0; k < 16; k++) {
            /* as Q2_K's, and the bit of hmask[v % 32] at v / 32 (4 less where it is clear) */
            const uint8_t *q = w[b].qs + 32 * (k / 8) + 16 * k % 32, *hm = w[b].hmask + 16 * k % 32;
            const int sh = 2 * (16 * k % 128 / 32), hb = k / 2;
            int dot = 0;
#pragma GCC unroll 1
            for (int e = 0; e < 16; e++) dot += (((q[e] >> sh) & 3) - 4 + 4 * ((hm[e] >> hb) & 1)) * xq[16 * k + e];
            const int lo = (k < 8 ? sc[k] : sc[k - 8] >> 4) & 0x0f, hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
            isum += ((lo | hi << 4) - 32) * dot;
        }
        s += kterm(w[b].d, xd[b], isum);
    }
    return s;
}

/* Q4_K and Q5_K's eight 6-bit scales and mins (base/quant.c's k_scale_min). */
static inline void k_scale_min(const uint8_t s[12], int g, int *sc, int *m) {
    if (g < 4) {
        *sc = s[g] & 63;
        *m = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4);
        *m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/*
 * Q4_K and Q5_K (q5: the fifth bit, bit g of qh[j] for value 32 g + j): eight
 * groups of 32, group g in the low (even g) or high nibbles of qs[32 (g / 2) ..];
 * w = d * sc * q - dmin * m, the min term from the two bsums of the group.
 */
static inline double k45_row(const struct mm_task *t, int64_t r, int tok, const int Q5) {
    Q8K_ROW(t, tok);
    const int16_t *bs = t->xkbs + tok * (cols / 16);
    const size_t bsz = Q5 ? sizeof(struct shoal_block_q5_k) : sizeof(struct shoal_block_q4_k);
    const uint8_t *w = row_ptr(t, r);
    double s = 0;
    for (int64_t b = 0; b < nb; b++, xq += SHOAL_QK_K, bs += 16, w += bsz) {
        const struct shoal_block_q4_k *b4 = (const void *)w;
        const struct shoal_block_q5_k *b5 = (const void *)w;
        const uint8_t *scales = Q5 ? b5->scales : b4->scales, *qs = Q5 ? b5->qs : b4->qs;
        int32_t isum = 0, msum = 0;
        for (int g = 0; g < 8; g++) {
            int sc, m, dot = 0;
            k_scale_min(scales, g, &sc, &m);
            for (int j = 0; j < 32; j++) {
                int q = (qs[32 * (g / 2) + j] >> (4 * (g & 1))) & 0x0f;
                if (Q5) q |= ((b5->qh[j] >> g) & 1) << 4;
                dot += q * xq[32 * g + j];
            }
            isum += sc * dot;
            msum += m * (bs[2 * g] + bs[2 * g + 1]);
        }
        s += kterm(Q5 ? b5->d : b4->d, xd[b], isum) - kterm(Q5 ? b5->dmin : b4->dmin, xd[b], msum);
    }
    return s;
}

static double row_f64_q4_k(const struct mm_task *t, int64_t r, int tok) { return k45_row(t, r, tok, 0); }
static double row_f64_q5_k(const struct mm_task *t, int64_t r, int tok) { return k45_row(t, r, tok, 1); }

/* Q6_K: value v = 128 h + i has its low four bits in nibble i / 64 of ql[64 h + i % 64],
 * its high two at bit 2 (i / 32) of qh[32 h + i % 32]; stored +32; int8 scale per 16. */
static double row_f64_q6_k(const struct mm_task *t, int64_t r, int tok) {
    Q8K_ROW(t, tok);
    const struct shoal_block_q6_k *w = row_ptr(t, r);
    double s = 0;
    for (int64_t b = 0; b < nb; b++, xq += SHOAL_QK_K) {
        int32_t isum = 0;
        for (int k = 0; k < 16; k++) {
            /* value v = 16 k + e: half h = v / 128, i = v % 128; its low four bits at ql[64 h + i % 64]
             * >> 4 (i / 64), its high two at qh[32 h + i % 32] >> 2 (i / 32): contiguous bytes and one
             * shift for a sub-block's 16, a loop GCC vectorizes (as nibble_dot's) */
            const int h = k / 8, i0 = 16 * k % 128, sl = 4 * (i0 / 64), sh = 2 * (i0 / 32);
            const uint8_t *ql = w[b].ql + 64 * h + i0 % 64, *qh = w[b].qh + 32 * h + i0 % 32;
            int dot = 0;
#pragma GCC unroll 1
            for (int e = 0; e < 16; e++)
                dot += ((((ql[e] >> sl) & 0x0f) | ((qh[e] >> sh) & 3) << 4) - 32) * xq[16 * k + e];
            isum += w[b].scales[k] * dot;
        }
        s += kterm(w[b].d, xd[b], isum);
    }
    return s;
}

/* IQ4_XS: groups of 32, IQ4_NL's levels from qs[16 g ..], a 6-bit scale stored +32
 * (low four bits: nibble g % 2 of scales_l[g / 2]; high two: bits 2 g of scales_h). */
static double row_f64_iq4_xs(const struct mm_task *t, int64_t r, int tok) {
    Q8K_ROW(t, tok);
    const struct shoal_block_iq4_xs *w = row_ptr(t, r);
    double s = 0;
    for (int64_t b = 0; b < nb; b++, xq += SHOAL_QK_K) {
        int32_t isum = 0;
        for (int g = 0; g < 8; g++) {
            const int lo = (w[b].scales_l[g / 2] >> (4 * (g % 2))) & 0x0f, hi = (w[b].scales_h >> (2 * g)) & 3;
            const uint8_t *qs = w[b].qs + 16 * g;
            int dot = 0;
            for (int j = 0; j < 16; j++)
                dot += iq4_levels[qs[j] & 0x0f] * xq[32 * g + j] + iq4_levels[qs[j] >> 4] * xq[32 * g + j + 16];
            isum += ((lo | hi << 4) - 32) * dot;
        }
        s += kterm(w[b].d, xd[b], isum);
    }
    return s;
}

MM_ROW_DRIVER_F64(f32)
MM_ROW_DRIVER_F64(f16)
MM_ROW_DRIVER_F64(bf16)
MM_ROW_DRIVER_F64(q8_0)
MM_ROW_DRIVER_F64(q4_0)
MM_ROW_DRIVER_F64(q4_1)
MM_ROW_DRIVER_F64(q5_0)
MM_ROW_DRIVER_F64(q5_1)
MM_ROW_DRIVER_F64(iq4_nl)
MM_ROW_DRIVER_F64(q2_k)
MM_ROW_DRIVER_F64(q3_k)
MM_ROW_DRIVER_F64(q4_k)
MM_ROW_DRIVER_F64(q5_k)
MM_ROW_DRIVER_F64(q6_k)
MM_ROW_DRIVER_F64(iq4_xs)

/* The f32 kernels of this level are the f64 sums, rounded: slower than
 * summing in f32, and the reference the other levels are held to. */
#define ROUNDED(type)                                                                      \
    static float row_##type(const struct mm_task *t, int64_t r, int tok) {                 \
        return (float)row_f64_##type(t, r, tok);                                           \
    }                                                                                      \
    MM_ROW_DRIVER(type)
ROUNDED(f32)
ROUNDED(f16)
ROUNDED(bf16)
ROUNDED(q8_0)
ROUNDED(q4_0)
ROUNDED(q4_1)
ROUNDED(q5_0)
ROUNDED(q5_1)
ROUNDED(iq4_nl)
ROUNDED(q2_k)
ROUNDED(q3_k)
ROUNDED(q4_k)
ROUNDED(q5_k)
ROUNDED(q6_k)
ROUNDED(iq4_xs)
#undef ROUNDED

/*
 * The activation form each weight type meets (llama.cpp's vec_dot_type): Q5_0
 * and IQ4_NL read the Q8_32 blocks' d (block_q8_0), Q4_1 and Q5_1 their d and
 * s (block_q8_1); the super-block types meet Q8_K. F32 and F16: x itself;
 * BF16: x rounded to bf16 (the kernels that widen the weights round x as
 * they load it, to the same values; AVX512_BF16's dot product reads xb).
 */
const uint8_t shoal_cpu_xform[SHOAL_DTYPE_MAX] = {
    [SHOAL_DTYPE_F32] = XFORM_F32,      [SHOAL_DTYPE_F16] = XFORM_F32,
    [SHOAL_DTYPE_BF16] = XFORM_BF16,    [SHOAL_DTYPE_Q8_0] = XFORM_Q8_32,
    [SHOAL_DTYPE_Q4_0] = XFORM_Q8_32,   [SHOAL_DTYPE_Q4_1] = XFORM_Q8_32,
    [SHOAL_DTYPE_Q5_0] = XFORM_Q8_32,   [SHOAL_DTYPE_Q5_1] = XFORM_Q8_32,
    [SHOAL_DTYPE_IQ4_NL] = XFORM_Q8_32, [SHOAL_DTYPE_Q2_K] = XFORM_Q8_K,
    [SHOAL_DTYPE_Q3_K] = XFORM_Q8_K,    [SHOAL_DTYPE_Q4_K] = XFORM_Q8_K,
    [SHOAL_DTYPE_Q5_K] = XFORM_Q8_K,    [SHOAL_DTYPE_Q6_K] = XFORM_Q8_K,
    [SHOAL_DTYPE_IQ4_XS] = XFORM_Q8_K,
};


const struct cpu_kernels shoal_cpu_kernels_scalar = {
    .name = "scalar",
    .batch_invariant = 1,
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_q4_0,
        [SHOAL_DTYPE_Q4_1] = mm_q4_1,
        [SHOAL_DTYPE_Q5_0] = mm_q5_0,
        [SHOAL_DTYPE_Q5_1] = mm_q5_1,
        [SHOAL_DTYPE_IQ4_NL] = mm_iq4_nl,
        [SHOAL_DTYPE_Q2_K] = mm_q2_k,
        [SHOAL_DTYPE_Q3_K] = mm_q3_k,
        [SHOAL_DTYPE_Q4_K] = mm_q4_k,
        [SHOAL_DTYPE_Q5_K] = mm_q5_k,
        [SHOAL_DTYPE_Q6_K] = mm_q6_k,
        [SHOAL_DTYPE_IQ4_XS] = mm_iq4_xs,
    },
    .mm_f64 = {
        [SHOAL_DTYPE_F32] = mm_f64_f32,
        [SHOAL_DTYPE_F16] = mm_f64_f16,
        [SHOAL_DTYPE_BF16] = mm_f64_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_f64_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_f64_q4_0,
        [SHOAL_DTYPE_Q4_1] = mm_f64_q4_1,
        [SHOAL_DTYPE_Q5_0] = mm_f64_q5_0,
        [SHOAL_DTYPE_Q5_1] = mm_f64_q5_1,
        [SHOAL_DTYPE_IQ4_NL] = mm_f64_iq4_nl,
        [SHOAL_DTYPE_Q2_K] = mm_f64_q2_k,
        [SHOAL_DTYPE_Q3_K] = mm_f64_q3_k,
        [SHOAL_DTYPE_Q4_K] = mm_f64_q4_k,
        [SHOAL_DTYPE_Q5_K] = mm_f64_q5_k,
        [SHOAL_DTYPE_Q6_K] = mm_f64_q6_k,
        [SHOAL_DTYPE_IQ4_XS] = mm_f64_iq4_xs,
    },
    .quantize_x = shoal_cpu_quantize_x,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
};
