/*
 * quant.c — reference (scalar) conversion between f32 and the stored weight
 * formats, both ways: F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, the
 * k-quants Q2_K..Q6_K, IQ4_NL and IQ4_XS. Used to write synthetic models, to
 * look up embeddings, to dump tensors (shoal info --dump), and as the
 * definition the SIMD kernels are tested against. Not on the decode hot
 * path, and no importance matrix: quantizing is what llama-quantize does
 * without --imatrix.
 *
 * The layouts are GGUF's (ggml's block structs). The quantizers give, byte
 * for byte, what llama.cpp's reference quantizers give
 * (tests/model/test_quant_oracle.py); the dequantizers, bit for bit, what
 * the gguf Python package's numpy dequantizer gives (tests/ref/test_dequant.py).
 * Both sections say how ("float order").
 */
#include <float.h>
#include <limits.h>
#include <math.h>
#include <string.h>

#include "base.h"

/* Both directions know the same types. */
int shoal_can_quantize(int type) { return shoal_can_dequantize(type); }

int shoal_can_dequantize(int type) {
    switch (type) {
    case SHOAL_DTYPE_F32: case SHOAL_DTYPE_F16: case SHOAL_DTYPE_BF16:
    case SHOAL_DTYPE_Q8_0: case SHOAL_DTYPE_Q4_0: case SHOAL_DTYPE_Q4_1:
    case SHOAL_DTYPE_Q5_0: case SHOAL_DTYPE_Q5_1:
    case SHOAL_DTYPE_Q2_K: case SHOAL_DTYPE_Q3_K: case SHOAL_DTYPE_Q4_K:
    case SHOAL_DTYPE_Q5_K: case SHOAL_DTYPE_Q6_K:
    case SHOAL_DTYPE_IQ4_NL: case SHOAL_DTYPE_IQ4_XS:
        return 1;
    default:
        return 0;
    }
}

/* ---------------------------------------------------------------- layouts */

/* IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl). */
static const int8_t iq4_levels[16] = { -127, -104, -83, -65, -49, -35, -22, -10,
                                       1,    13,   25,  38,  53,  69,  89,  113 };

/*
 * q3_k's 12 scale bytes: sixteen 6-bit scales, stored +32. Scale k has its
 * low four bits in scales[k] (k < 8, low nibble) or scales[k - 8] (high
 * nibble), its high two at bit 2 (k / 4) of scales[8 + k % 4].
 */
static int q3_scale(const uint8_t s[12], int k) {
    int lo = (k < 8 ? s[k] : s[k - 8] >> 4) & 0x0f;
    int hi = (s[8 + k % 4] >> (2 * (k / 4))) & 3;
    return lo | (hi << 4);
}

/* The inverse: stores scale k (0..63) into bytes that start zeroed. */
static void q3_set_scale(uint8_t s[12], int k, int sc) {
    s[k % 8] |= (uint8_t)((sc & 0x0f) << (4 * (k / 8)));
    s[8 + k % 4] |= (uint8_t)((sc >> 4) << (2 * (k / 4)));
}

/*
 * q4_k and q5_k's 12 scale bytes: eight 6-bit scales and eight 6-bit mins,
 * one pair per 32 values. Pairs 0-3 sit in the low six bits of bytes 0-3
 * (scale) and 4-7 (min); pairs 4-7 take their low four bits from the
 * nibbles of bytes 8-11 (scale low, min high) and their top two from the
 * spare top bits of bytes 0-3 (scale) and 4-7 (min).
 */
static void k_scale_min(const uint8_t s[12], int g, int *sc, int *m) {
    if (g < 4) {
        *sc = s[g] & 63;
        *m = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4);
        *m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/* The inverse: stores pair g (each 0..63) into bytes that start zeroed. */
static void k_set_scale_min(uint8_t s[12], int g, int sc, int m) {
    if (g < 4) {
        s[g] |= (uint8_t)sc;
        s[g + 4] |= (uint8_t)m;
    } else {
        s[g + 4] |= (uint8_t)((sc & 0x0f) | ((m & 0x0f) << 4));
        s[g - 4] |= (uint8_t)((sc >> 4) << 6);
        s[g] |= (uint8_t)((m >> 4) << 6);
    }
}

/* ---------------------------------------------------------------- quantize */

/*
 * Float order (quantizing). The quantizers are llama.cpp's reference ones
 * (quantize_row_*_ref; for IQ4_NL and IQ4_XS quantize_iq4_nl/_xs), as
 * llama-quantize runs them without an importance matrix, written again
 * from their algorithms. Their searches compare f32 sums and quotients
 * whose last bit can pick a level or a trial scale, so for the same bytes
 * the code below does their operations on the same operands in the same
 * order: sums from the first value to the last, products left to right as
 * they are written there (w * l * x is (w * l) * x), an int made a float
 * where it is there, their rounding to an integer (nearest_int) and to f16
 * (nearest even: shoal_f32_to_f16), and no fused multiply-add
 * (CMakeLists.txt compiles this file with -ffp-contract=off).
 * tests/model/test_quant_oracle.py holds every type to llama.cpp's bytes.
 */

/* A group whose largest magnitude is below this is all zero (ggml's GROUP_MAX_EPS). */
#define GROUP_EPS 1e-15f

/*
 * llama.cpp's nearest_int: adding 1.5 * 2^23 leaves f rounded to an integer
 * (to nearest, ties to even) in the low 23 bits of the sum. Exact for
 * |f| < 2^22; beyond (a degenerate group's quotient), it gives the bits
 * llama.cpp gets, which rintf would not.
 */
static int nearest_int(float f) {
    float v = f + 12582912.0f;
    uint32_t u;
    memcpy(&u, &v, sizeof u);
    return (int)(u & 0x7fffff) - 0x400000;
}

static int clamp_int(int v, int lo, int hi) { return v < lo ? lo : v > hi ? hi : v; }

/*
 * The round-to-zero quantizers (q8_0 after roundf, q4_0 .. q5_1) convert a
 * float straight to int8_t or uint8_t, as llama.cpp does. For a NaN or an
 * infinity, which only a block whose largest magnitude is below f32's
 * normal range meets (its 1 / d overflows), C leaves that undefined; on
 * x86-64, where the oracle was recorded, it gives INT_MIN's low byte, 0.
 * low_byte does the same, defined everywhere: the low byte of (int)f.
 */
static uint8_t low_byte(float f) {
    int i = f >= -2147483648.0f && f < 2147483648.0f ? (int)f : INT_MIN;
    return (uint8_t)i;
}

/*
 * low_byte(roundf(f)) (q8_0's rounding: half away from zero) without the
 * calls to libm that GCC makes of roundf: f less its truncation is exact, so
 * comparing it with 0.5 rounds as roundf does. Out of int's range (or NaN),
 * roundf's value is out of it too, and low_byte gives 0 for both.
 */
static uint8_t round_low_byte(float f) {
    if (!(f >= -2147483648.0f && f < 2147483648.0f)) return 0;
    int i = (int)f;
    float r = f - (float)i;
    i += (r >= 0.5f) - (r <= -0.5f);
    return (uint8_t)i;
}

/* llama.cpp's MIN(top, (int8_t)f), as the byte it stores. */
static int quant_top(float f, int top) {
    int q = (int8_t)low_byte(f);
    return (uint8_t)(q < top ? q : top);
}

/* The value of largest magnitude, with its sign (the first of equals); *amax its magnitude. */
static float signed_max(const float *x, int n, float *amax) {
    float a = 0, max = 0;
    for (int j = 0; j < n; j++)
        if (fabsf(x[j]) > a) {
            a = fabsf(x[j]);
            max = x[j];
        }
    *amax = a;
    return max;
}

/* The smallest and largest value, by < and > (so the first of +0 and -0 counts). */
static void min_max(const float *x, int n, float *min, float *max) {
    float lo = FLT_MAX, hi = -FLT_MAX;
    for (int j = 0; j < n; j++) {
        if (x[j] < lo) lo = x[j];
        if (x[j] > hi) hi = x[j];
    }
    *min = lo;
    *max = hi;
}

/* q5_0 and q5_1's fifth bits: bit j of the 32, little-endian. */
static void set_q5_high(uint8_t qh[4], uint32_t bits) {
    for (int k = 0; k < 4; k++) qh[k] = (uint8_t)(bits >> (8 * k));
}

static void quantize_q8_0(const float *x, struct shoal_block_q8_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float amax = 0;
        for (int j = 0; j < SHOAL_QK; j++) /* fmaxf's value (a NaN passed over), inline */
            if (fabsf(x[j]) > amax) amax = fabsf(x[j]);
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        for (int j = 0; j < SHOAL_QK; j++) y[b].qs[j] = (int8_t)round_low_byte(x[j] * id);
    }
}

static void quantize_q4_0(const float *x, struct shoal_block_q4_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float amax, max = signed_max(x, SHOAL_QK, &amax);
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = quant_top(x[j] * id + 8.5f, 15), q1 = quant_top(x[j + 16] * id + 8.5f, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, struct shoal_block_q4_1 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float min, max;
        min_max(x, SHOAL_QK, &min, &max);
        float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        y[b].m = shoal_f32_to_f16(min);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = quant_top((x[j] - min) * id + 0.5f, 15);
            int q1 = quant_top((x[j + 16] - min) * id + 0.5f, 15);
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

/* q5_0: q4_0's rounding with 32 levels, the value of largest magnitude at -16. */
static void quantize_q5_0(const float *x, struct shoal_block_q5_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float amax, max = signed_max(x, SHOAL_QK, &amax);
        float d = max / -16.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        uint32_t high = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = quant_top(x[j] * id + 16.5f, 31), q1 = quant_top(x[j + 16] * id + 16.5f, 31);
            y[b].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            high |= (uint32_t)((q0 >> 4) & 1) << j | (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        set_q5_high(y[b].qh, high);
    }
}

/* q5_1: q4_1's rounding with 32 levels (which cannot pass 31: no clamp, as in llama.cpp). */
static void quantize_q5_1(const float *x, struct shoal_block_q5_1 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float min, max;
        min_max(x, SHOAL_QK, &min, &max);
        float d = (max - min) / 31.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        y[b].m = shoal_f32_to_f16(min);
        uint32_t high = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = low_byte((x[j] - min) * id + 0.5f);
            int q1 = low_byte((x[j + 16] - min) * id + 0.5f);
            y[b].qs[j] = (uint8_t)((q0 & 0x0f) | ((q1 & 0x0f) << 4));
            high |= (uint32_t)((q0 >> 4) & 1) << j | (uint32_t)((q1 >> 4) & 1) << (j + 16);
        }
        set_q5_high(y[b].qh, high);
    }
}

/*
 * The scale and min search of q2_k, q4_k and q5_k (llama.cpp's
 * make_qkx2_quants): fits x[i] ~ scale * L[i] - min, L[i] in 0..nmax and
 * min >= 0, for the least sum of w[i] |err| (mad) or w[i] err^2. It starts
 * from the range [min(x, 0), max(x)], then tries the scales
 * (nmax + rmin + rdelta k) / range, k = 0..nstep, each refined to the
 * least-squares scale and min of its levels, keeping what errs least; a
 * trial's range starts at the best min so far, as llama.cpp's does. Returns
 * the scale, and the min in *min_out (as an offset to subtract: -0 for none).
 */
static float fit_scale_min(const float *x, const float *w, int n, int nmax, float rmin, float rdelta,
                           int nstep, int mad, uint8_t *L, float *min_out) {
    float min = x[0], max = x[0], sum_w = w[0], sum_x = sum_w * x[0];
    for (int i = 1; i < n; i++) {
        if (x[i] < min) min = x[i];
        if (x[i] > max) max = x[i];
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if (min > 0) min = 0;
    if (max == min) {
        memset(L, 0, (size_t)n);
        *min_out = -min;
        return 0;
    }
    float iscale = nmax / (max - min), scale = 1 / iscale, best = 0;
    for (int i = 0; i < n; i++) {
        L[i] = (uint8_t)clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
        float diff = scale * L[i] + min - x[i];
        best += w[i] * (mad ? fabsf(diff) : diff * diff);
    }
    uint8_t trial[32]; /* n <= 32 */
    for (int k = 0; k <= nstep; k++) {
        iscale = (rmin + rdelta * k + nmax) / (max - min);
        float sum_l = 0, sum_l2 = 0, sum_xl = 0;
        for (int i = 0; i < n; i++) {
            int l = clamp_int(nearest_int(iscale * (x[i] - min)), 0, nmax);
            trial[i] = (uint8_t)l;
            sum_l += w[i] * l;
            sum_l2 += w[i] * l * l;
            sum_xl += w[i] * l * x[i];
        }
        float D = sum_w * sum_l2 - sum_l * sum_l;
        if (!(D > 0)) continue;
        float this_scale = (sum_w * sum_xl - sum_x * sum_l) / D;
        float this_min = (sum_l2 * sum_x - sum_l * sum_xl) / D;
        if (this_min > 0) {
            this_min = 0;
            this_scale = sum_xl / sum_l2;
        }
        float err = 0;
        for (int i = 0; i < n; i++) {
            float diff = this_scale * trial[i] + this_min - x[i];
            err += w[i] * (mad ? fabsf(diff) : diff * diff);
        }
        if (err < best) {
            memcpy(L, trial, (size_t)n);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    *min_out = -min;
    return scale;
}

/* q2_k and q3_k's low two bits: value v = 128 c + 32 s + j at bit 2 s of qs[32 c + j]. */
static void pack_2bit(uint8_t qs[SHOAL_QK_K / 4], const uint8_t L[SHOAL_QK_K]) {
    memset(qs, 0, SHOAL_QK_K / 4);
    for (int v = 0; v < SHOAL_QK_K; v++)
        qs[32 * (v / 128) + v % 32] |= (uint8_t)(L[v] << (2 * ((v % 128) / 32)));
}

/*
 * q2_k: sixteen groups of 16, each fitted a scale and a min with quants
 * 0..3 (weights |x|); scales and mins made 4-bit multiples of d and dmin
 * (the largest at 15); then every value rounded again on its group's
 * stored scale and min.
 */
static void quantize_q2_k(const float *x, struct shoal_block_q2_k *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        uint8_t L[SHOAL_QK_K], *sc = y[b].scales;
        float scale[16], min[16], w[16], max_scale = 0, max_min = 0;
        for (int k = 0; k < 16; k++) {
            const float *xk = x + 16 * k;
            for (int j = 0; j < 16; j++) w[j] = fabsf(xk[j]);
            scale[k] = fit_scale_min(xk, w, 16, 3, -0.5f, 0.1f, 15, 1, L + 16 * k, &min[k]);
            if (scale[k] > max_scale) max_scale = scale[k];
            if (min[k] > max_min) max_min = min[k];
        }
        memset(sc, 0, 16);
        y[b].d = y[b].dmin = shoal_f32_to_f16(0.0f);
        if (max_scale > 0) {
            float iscale = 15.0f / max_scale;
            for (int k = 0; k < 16; k++) sc[k] = (uint8_t)nearest_int(iscale * scale[k]);
            y[b].d = shoal_f32_to_f16(max_scale / 15.0f);
        }
        if (max_min > 0) {
            float iscale = 15.0f / max_min;
            for (int k = 0; k < 16; k++)
                sc[k] |= (uint8_t)((unsigned)nearest_int(iscale * min[k]) << 4);
            y[b].dmin = shoal_f32_to_f16(max_min / 15.0f);
        }
        float d = shoal_f16_to_f32(y[b].d), dmin = shoal_f16_to_f32(y[b].dmin);
        for (int k = 0; k < 16; k++) {
            float dl = d * (sc[k] & 0x0f);
            if (dl == 0) continue;
            float ml = dmin * (sc[k] >> 4);
            for (int j = 0; j < 16; j++)
                L[16 * k + j] = (uint8_t)clamp_int(nearest_int((x[16 * k + j] + ml) / dl), 0, 3);
        }
        pack_2bit(y[b].qs, L);
    }
}

/*
 * q3_k's group search (llama.cpp's make_q3_quants, refined): levels -4..3
 * from the value of largest magnitude at -4, then up to five passes that
 * move one value's level at a time where that raises
 * (sum w x l)^2 / sum w l^2, weights x^2. Returns that least-squares scale;
 * L gets the levels + 4 (all 0 for an all-zero group).
 */
static float fit_q3(const float *x, uint8_t L[16]) {
    int q[16];
    float amax, max = signed_max(x, 16, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, 16);
        return 0;
    }
    float iscale = -4 / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        q[i] = clamp_int(nearest_int(iscale * x[i]), -4, 3);
        float w = x[i] * x[i];
        sumlx += w * x[i] * q[i];
        suml2 += w * q[i] * q[i];
    }
    for (int pass = 0; pass < 5; pass++) {
        int changed = 0;
        for (int i = 0; i < 16; i++) {
            float w = x[i] * x[i], slx = sumlx - w * x[i] * q[i];
            if (!(slx > 0)) continue;
            float sl2 = suml2 - w * q[i] * q[i];
            int nq = clamp_int(nearest_int(x[i] * sl2 / slx), -4, 3);
            if (nq == q[i]) continue;
            slx += w * x[i] * nq;
            sl2 += w * nq * nq;
            if (sl2 > 0 && slx * slx * suml2 > sumlx * sumlx * sl2) {
                q[i] = nq;
                sumlx = slx;
                suml2 = sl2;
                changed++;
            }
        }
        if (!changed) break;
    }
    for (int i = 0; i < 16; i++) L[i] = (uint8_t)(q[i] + 4);
    return suml2 > 0 ? sumlx / suml2 : 0;
}

/*
 * q3_k: sixteen groups of 16 fitted by fit_q3; their scales made signed
 * 6-bit multiples of d (the largest magnitude at -32); then every value
 * rounded again on its group's stored scale.
 */
static void quantize_q3_k(const float *x, struct shoal_block_q3_k *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        uint8_t L[SHOAL_QK_K];
        float scale[16], amax;
        for (int k = 0; k < 16; k++) scale[k] = fit_q3(x + 16 * k, L + 16 * k);
        const float max_scale = signed_max(scale, 16, &amax);
        memset(y[b].scales, 0, sizeof y[b].scales);
        y[b].d = shoal_f32_to_f16(0.0f);
        if (max_scale != 0) {
            float iscale = -32.0f / max_scale;
            for (int k = 0; k < 16; k++) {
                int l = (int8_t)nearest_int(iscale * scale[k]); /* an int8 in llama.cpp */
                q3_set_scale(y[b].scales, k, clamp_int(l, -32, 31) + 32);
            }
            y[b].d = shoal_f32_to_f16(1 / iscale);
        }
        float d = shoal_f16_to_f32(y[b].d);
        for (int k = 0; k < 16; k++) {
            float dl = d * (q3_scale(y[b].scales, k) - 32);
            if (dl == 0) continue;
            for (int j = 0; j < 16; j++)
                L[16 * k + j] = (uint8_t)(clamp_int(nearest_int(x[16 * k + j] / dl), -4, 3) + 4);
        }
        /* the third bit: bit v / 32 of hmask[v % 32] */
        memset(y[b].hmask, 0, sizeof y[b].hmask);
        for (int v = 0; v < SHOAL_QK_K; v++)
            if (L[v] > 3) {
                y[b].hmask[v % 32] |= (uint8_t)(1 << (v / 32));
                L[v] -= 4;
            }
        pack_2bit(y[b].qs, L);
    }
}

/*
 * q4_k and q5_k: eight groups of 32, each fitted a scale and a min with
 * quants 0..nmax (weights: the group's rms plus |x|); scales and mins made
 * 6-bit multiples of d and dmin (the largest at 63); then every value
 * rounded again on its group's stored scale and min. Writes d, dmin and the
 * scale bytes; L gets the quants.
 */
static void quantize_k_groups(const float *x, int nmax, float rmin, int nstep, uint16_t *d_out,
                              uint16_t *dmin_out, uint8_t scales[12], uint8_t L[SHOAL_QK_K]) {
    float scale[8], min[8], w[32], max_scale = 0, max_min = 0;
    for (int g = 0; g < 8; g++) {
        const float *xg = x + 32 * g;
        float sum_x2 = 0;
        for (int j = 0; j < 32; j++) sum_x2 += xg[j] * xg[j];
        float av_x = sqrtf(sum_x2 / 32);
        for (int j = 0; j < 32; j++) w[j] = av_x + fabsf(xg[j]);
        scale[g] = fit_scale_min(xg, w, 32, nmax, rmin, 0.1f, nstep, 0, L + 32 * g, &min[g]);
        if (scale[g] > max_scale) max_scale = scale[g];
        if (min[g] > max_min) max_min = min[g];
    }
    float inv_scale = max_scale > 0 ? 63.0f / max_scale : 0.0f;
    float inv_min = max_min > 0 ? 63.0f / max_min : 0.0f;
    memset(scales, 0, 12);
    for (int g = 0; g < 8; g++) {
        /* kept as bytes before the clamp, as llama.cpp keeps them */
        uint8_t ls = (uint8_t)nearest_int(inv_scale * scale[g]);
        uint8_t lm = (uint8_t)nearest_int(inv_min * min[g]);
        k_set_scale_min(scales, g, ls < 63 ? ls : 63, lm < 63 ? lm : 63);
    }
    *d_out = shoal_f32_to_f16(max_scale / 63.0f);
    *dmin_out = shoal_f32_to_f16(max_min / 63.0f);
    float d = shoal_f16_to_f32(*d_out), dmin = shoal_f16_to_f32(*dmin_out);
    for (int g = 0; g < 8; g++) {
        int sc, m;
        k_scale_min(scales, g, &sc, &m);
        float dl = d * sc;
        if (dl == 0) continue;
        float ml = dmin * m;
        for (int j = 0; j < 32; j++)
            L[32 * g + j] = (uint8_t)clamp_int(nearest_int((x[32 * g + j] + ml) / dl), 0, nmax);
    }
}

/* q4_k: value v in nibble (v / 32) % 2 of qs[32 (v / 64) + v % 32]. */
static void quantize_q4_k(const float *x, struct shoal_block_q4_k *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        uint8_t L[SHOAL_QK_K];
        quantize_k_groups(x, 15, -1.0f, 20, &y[b].d, &y[b].dmin, y[b].scales, L);
        memset(y[b].qs, 0, sizeof y[b].qs);
        for (int v = 0; v < SHOAL_QK_K; v++)
            y[b].qs[32 * (v / 64) + v % 32] |= (uint8_t)(L[v] << (4 * ((v / 32) % 2)));
    }
}

/* q5_k: q4_k's low four bits, and the fifth at bit v / 32 of qh[v % 32]. */
static void quantize_q5_k(const float *x, struct shoal_block_q5_k *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        uint8_t L[SHOAL_QK_K];
        quantize_k_groups(x, 31, -0.5f, 15, &y[b].d, &y[b].dmin, y[b].scales, L);
        memset(y[b].qs, 0, sizeof y[b].qs);
        memset(y[b].qh, 0, sizeof y[b].qh);
        for (int v = 0; v < SHOAL_QK_K; v++) {
            y[b].qs[32 * (v / 64) + v % 32] |= (uint8_t)((L[v] & 0x0f) << (4 * ((v / 32) % 2)));
            y[b].qh[v % 32] |= (uint8_t)((L[v] >> 4) << (v / 32));
        }
    }
}

/*
 * q6_k's group search (llama.cpp's make_qx_quants, weights x^2): levels
 * -32..31 from the value of largest magnitude at -32, then the trial scales
 * -(32 + 0.1 t) / max, t = +-1..+-9, keeping the one with the largest
 * (sum w x l)^2 / sum w l^2. Returns that least-squares scale; L gets the
 * levels + 32 (all 0 for an all-zero group).
 */
static float fit_q6(const float *x, uint8_t L[16]) {
    float amax, max = signed_max(x, 16, &amax);
    if (amax < GROUP_EPS) {
        memset(L, 0, 16);
        return 0;
    }
    float iscale = -32 / max, sumlx = 0, suml2 = 0;
    for (int i = 0; i < 16; i++) {
        int l = clamp_int(nearest_int(iscale * x[i]), -32, 31);
        L[i] = (uint8_t)(l + 32);
        float w = x[i] * x[i];
        sumlx += w * x[i] * l;
        suml2 += w * l * l;
    }
    float scale = suml2 != 0 ? sumlx / suml2 : 0.0f, best = scale * sumlx;
    for (int t = -9; t <= 9; t++) {
        if (t == 0) continue;
        iscale = -(32 + 0.1f * t) / max;
        sumlx = suml2 = 0;
        for (int i = 0; i < 16; i++) {
            int l = clamp_int(nearest_int(iscale * x[i]), -32, 31);
            float w = x[i] * x[i];
            sumlx += w * x[i] * l;
            suml2 += w * l * l;
        }
        if (suml2 > 0 && sumlx * sumlx > best * suml2) {
            for (int i = 0; i < 16; i++)
                L[i] = (uint8_t)(clamp_int(nearest_int(iscale * x[i]), -32, 31) + 32);
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    return scale;
}

/*
 * q6_k: sixteen groups of 16 fitted by fit_q6; their scales made int8
 * multiples of d (the largest magnitude at -128); then every value rounded
 * again on its group's stored scale. Value v = 128 h + r has its low four
 * bits in nibble r / 64 of ql[64 h + r % 64], its high two at bit 2 (r / 32)
 * of qh[32 h + r % 32].
 */
static void quantize_q6_k(const float *x, struct shoal_block_q6_k *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        uint8_t L[SHOAL_QK_K];
        float scale[16], amax;
        for (int k = 0; k < 16; k++) scale[k] = fit_q6(x + 16 * k, L + 16 * k);
        const float max_scale = signed_max(scale, 16, &amax);
        memset(&y[b], 0, sizeof y[b]);
        if (amax < GROUP_EPS) continue; /* all zero, d = +0 */
        float iscale = -128.0f / max_scale;
        y[b].d = shoal_f32_to_f16(1 / iscale);
        for (int k = 0; k < 16; k++) {
            int l = nearest_int(iscale * scale[k]);
            y[b].scales[k] = (int8_t)(l < 127 ? l : 127);
        }
        float d = shoal_f16_to_f32(y[b].d);
        for (int k = 0; k < 16; k++) {
            float dl = d * y[b].scales[k];
            if (dl == 0) continue;
            for (int j = 0; j < 16; j++)
                L[16 * k + j] = (uint8_t)(clamp_int(nearest_int(x[16 * k + j] / dl), -32, 31) + 32);
        }
        for (int v = 0; v < SHOAL_QK_K; v++) {
            int h = v / 128, r = v % 128;
            y[b].ql[64 * h + r % 64] |= (uint8_t)((L[v] & 0x0f) << (4 * (r / 64)));
            y[b].qh[32 * h + r % 32] |= (uint8_t)((L[v] >> 4) << (2 * (r / 32)));
        }
    }
}

/*
 * The index of the iq4 level nearest v, the upper of two equally near:
 * level i once v reaches the midpoint of levels i - 1 and i (2 v against
 * the sum of the two, both exact). A NaN (from a group whose squares
 * overflow) gets the top level, as in llama.cpp's best_index_int8.
 */
/* (Levels ascend, so the midpoints 2 v reaches are the first ones: their count, with no
 * branch; a NaN reaches every one.) */
static int iq4_nearest(float v) {
    int n = 0;
    for (int i = 1; i < 16; i++) n += !(v + v < (float)(iq4_levels[i - 1] + iq4_levels[i]));
    return n;
}

/*
 * An iq4 group's scale (llama.cpp's quantize_row_iq4_nl_impl without an
 * importance matrix: weights x^2, 7 tries each way): levels from the scale
 * that puts the value of largest magnitude on level -127, and their
 * least-squares scale; then the same for the scales max / (t - 127),
 * t = -7..7, keeping the largest (sum w q x)^2 / sum w q^2. 0 for an
 * all-zero group.
 */
static float iq4_fit(const float *x) {
    float amax, max = signed_max(x, SHOAL_QK, &amax);
    if (amax < GROUP_EPS) return 0;
    float d = -max / -127.0f, id = 1 / d, sumqx = 0, sumq2 = 0;
    for (int j = 0; j < SHOAL_QK; j++) {
        float q = iq4_levels[iq4_nearest(id * x[j])], w = x[j] * x[j];
        sumqx += w * q * x[j];
        sumq2 += w * q * q;
    }
    d = sumq2 > 0 ? sumqx / sumq2 : 0.0f;
    float best = d * sumqx;
    for (int t = -7; t <= 7; t++) {
        id = (t - 127) / max;
        sumqx = sumq2 = 0;
        for (int j = 0; j < SHOAL_QK; j++) {
            float q = iq4_levels[iq4_nearest(id * x[j])], w = x[j] * x[j];
            sumqx += w * q * x[j];
            sumq2 += w * q * q;
        }
        if (sumq2 > 0 && sumqx * sumqx > best * sumq2) {
            d = sumqx / sumq2;
            best = d * sumqx;
        }
    }
    return d;
}

/* iq4_nl: one group, its levels picked again from its (unrounded) scale. */
static void quantize_iq4_nl(const float *x, struct shoal_block_iq4_nl *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float d = iq4_fit(x), id = d ? 1 / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        for (int j = 0; j < SHOAL_QK / 2; j++)
            y[b].qs[j] = (uint8_t)(iq4_nearest(id * x[j]) | (iq4_nearest(id * x[j + 16]) << 4));
    }
}

/*
 * iq4_xs: eight groups fitted by iq4_fit; their scales made signed 6-bit
 * multiples of d (the largest magnitude at -32), and each group's levels
 * picked again from its 6-bit scale times the unrounded d.
 */
static void quantize_iq4_xs(const float *x, struct shoal_block_iq4_xs *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK_K) {
        float scale[8], amax = 0, max_scale = 0;
        for (int g = 0; g < 8; g++) {
            scale[g] = iq4_fit(x + 32 * g);
            if (fabsf(scale[g]) > amax) {
                amax = fabsf(scale[g]);
                max_scale = scale[g];
            }
        }
        float d = -max_scale / 32, id = d ? 1 / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d); /* -0 for an all-zero block, as llama.cpp writes it */
        y[b].scales_h = 0;
        memset(y[b].scales_l, 0, sizeof y[b].scales_l);
        for (int g = 0; g < 8; g++) {
            int l = clamp_int(nearest_int(id * scale[g]), -32, 31);
            float dl = d * l, idl = dl ? 1 / dl : 0.0f;
            const float *xg = x + 32 * g;
            uint8_t *qs = y[b].qs + 16 * g;
            for (int j = 0; j < 16; j++)
                qs[j] = (uint8_t)(iq4_nearest(idl * xg[j]) | (iq4_nearest(idl * xg[j + 16]) << 4));
            l += 32;
            y[b].scales_l[g / 2] |= (uint8_t)((l & 0x0f) << (4 * (g % 2)));
            y[b].scales_h |= (uint16_t)((l >> 4) << (2 * g));
        }
    }
}

shoal_status shoal_quantize_row(int type, const float *x, void *out, int64_t n) {
    if (!shoal_can_quantize(type) || !shoal_dtype_row_bytes(type, n))
        return shoal_errorf(SHOAL_INVALID, "cannot quantize %lld values to %s",
                            (long long)n, shoal_dtype_name(type));
    int64_t nb = n / shoal_dtype_info(type)->block;
    switch (type) {
    case SHOAL_DTYPE_F32: memcpy(out, x, (size_t)n * 4); break;
    case SHOAL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = shoal_f32_to_f16(x[i]);
        break;
    case SHOAL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = shoal_f32_to_bf16(x[i]);
        break;
    case SHOAL_DTYPE_Q8_0: quantize_q8_0(x, out, nb); break;
    case SHOAL_DTYPE_Q4_0: quantize_q4_0(x, out, nb); break;
    case SHOAL_DTYPE_Q4_1: quantize_q4_1(x, out, nb); break;
    case SHOAL_DTYPE_Q5_0: quantize_q5_0(x, out, nb); break;
    case SHOAL_DTYPE_Q5_1: quantize_q5_1(x, out, nb); break;
    case SHOAL_DTYPE_IQ4_NL: quantize_iq4_nl(x, out, nb); break;
    case SHOAL_DTYPE_Q2_K: quantize_q2_k(x, out, nb); break;
    case SHOAL_DTYPE_Q3_K: quantize_q3_k(x, out, nb); break;
    case SHOAL_DTYPE_Q4_K: quantize_q4_k(x, out, nb); break;
    case SHOAL_DTYPE_Q5_K: quantize_q5_k(x, out, nb); break;
    case SHOAL_DTYPE_Q6_K: quantize_q6_k(x, out, nb); break;
    case SHOAL_DTYPE_IQ4_XS: quantize_iq4_xs(x, out, nb); break;
    }
    return SHOAL_OK;
}

/* -------------------------------------------------------------- dequantize */

/*
 * Float order. gguf.quants computes in float32: f16 scales converted to f32
 * (exact), a sub-block's scale and min as one product each (dl = d * sc,
 * ml = dmin * m), then a value as dl * q, minus ml (k-quants) or plus m
 * (q4_1, q5_1). The code below does the same operations on the same
 * operands. Every product in these formats is exact in f32, so that is
 * enough: an f16 scale has at most 11 significant bits, and scale times
 * sub-block scale times quant needs at most 23 (q6_k: 11 + 7 for its int8
 * scale + 5 for q in -32..31; iq4_xs: 11 + 5 + 7 for the levels; q5_k:
 * 11 + 6 + 5), within f32's 24, and none leaves f32's normal range (f16's
 * smallest subnormal, 2^-24, is a normal f32). The one rounding is
 * the final addition of the min, identical however the product was formed
 * (an FMA included). The sign of a zero is kept by keeping the forms:
 * d * (q - 8), not d * q - 8 * d. A format with wider scales must redo this
 * count.
 */

static void dequant_q8_0(const struct shoal_block_q8_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d);
        for (int j = 0; j < SHOAL_QK; j++) y[j] = d * (float)b[i].qs[j];
    }
}

/* q4_0, q4_1, q5_0, q5_1, iq4_nl: value j in the low nibble of qs[j], j+16 in the high. */
static void dequant_q4_0(const struct shoal_block_q4_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            y[j] = d * (float)((b[i].qs[j] & 0x0f) - 8);
            y[j + 16] = d * (float)((b[i].qs[j] >> 4) - 8);
        }
    }
}

static void dequant_q4_1(const struct shoal_block_q4_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d), m = shoal_f16_to_f32(b[i].m);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            y[j] = d * (float)(b[i].qs[j] & 0x0f) + m;
            y[j + 16] = d * (float)(b[i].qs[j] >> 4) + m;
        }
    }
}

/* Value j's fifth bit: bit j of the 32 in qh, read as a little-endian word. */
static int q5_high(const uint8_t qh[4], int j) { return ((qh[j >> 3] >> (j & 7)) & 1) << 4; }

static void dequant_q5_0(const struct shoal_block_q5_0 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int lo = (b[i].qs[j] & 0x0f) | q5_high(b[i].qh, j);
            int hi = (b[i].qs[j] >> 4) | q5_high(b[i].qh, j + 16);
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
        }
    }
}

static void dequant_q5_1(const struct shoal_block_q5_1 *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d), m = shoal_f16_to_f32(b[i].m);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int lo = (b[i].qs[j] & 0x0f) | q5_high(b[i].qh, j);
            int hi = (b[i].qs[j] >> 4) | q5_high(b[i].qh, j + 16);
            y[j] = d * (float)lo + m;
            y[j + 16] = d * (float)hi + m;
        }
    }
}

static void dequant_iq4_nl(const struct shoal_block_iq4_nl *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK) {
        float d = shoal_f16_to_f32(b[i].d);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            y[j] = d * (float)iq4_levels[b[i].qs[j] & 0x0f];
            y[j + 16] = d * (float)iq4_levels[b[i].qs[j] >> 4];
        }
    }
}

/*
 * q2_k: value v (0..255) of a super-block is the 2-bit field at bit 2 s of
 * qs[32 c + j], where v = 128 c + 32 s + j; its sub-block of 16 is v / 16,
 * whose byte in scales holds the scale (low nibble) and the min (high).
 */
static void dequant_q2_k(const struct shoal_block_q2_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        float d = shoal_f16_to_f32(b[i].d), dmin = shoal_f16_to_f32(b[i].dmin);
        float dl[16], ml[16];
        for (int k = 0; k < 16; k++) {
            dl[k] = d * (float)(b[i].scales[k] & 0x0f);
            ml[k] = dmin * (float)(b[i].scales[k] >> 4);
        }
        for (int v = 0; v < SHOAL_QK_K; v++) {
            int c = v / 128, s = (v % 128) / 32, j = v % 32;
            int q = (b[i].qs[32 * c + j] >> (2 * s)) & 3;
            y[v] = dl[v / 16] * (float)q - ml[v / 16];
        }
    }
}

/*
 * q3_k: the low two bits as in q2_k; the third is bit v / 32 of
 * hmask[v % 32], and a clear bit means -4. Sub-block k's scale: q3_scale.
 */
static void dequant_q3_k(const struct shoal_block_q3_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        const uint8_t *sc = b[i].scales;
        float d = shoal_f16_to_f32(b[i].d);
        float dl[16];
        for (int k = 0; k < 16; k++) dl[k] = d * (float)(q3_scale(sc, k) - 32);
        for (int v = 0; v < SHOAL_QK_K; v++) {
            int c = v / 128, s = (v % 128) / 32, j = v % 32;
            int q = (b[i].qs[32 * c + j] >> (2 * s)) & 3;
            if (!((b[i].hmask[j] >> (v / 32)) & 1)) q -= 4;
            y[v] = dl[v / 16] * (float)q;
        }
    }
}

/* q4_k: group g of 32 values reads nibbles of qs[32 (g / 2) ..]: low for even g, high for odd. */
static void dequant_q4_k(const struct shoal_block_q4_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        float d = shoal_f16_to_f32(b[i].d), dmin = shoal_f16_to_f32(b[i].dmin);
        for (int g = 0; g < 8; g++) {
            int sc, m;
            k_scale_min(b[i].scales, g, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *qs = b[i].qs + 32 * (g / 2);
            int shift = 4 * (g & 1);
            for (int j = 0; j < 32; j++)
                y[32 * g + j] = dl * (float)((qs[j] >> shift) & 0x0f) - ml;
        }
    }
}

/* q5_k: q4_k plus a fifth bit, bit g of qh[j], for value 32 g + j. */
static void dequant_q5_k(const struct shoal_block_q5_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        float d = shoal_f16_to_f32(b[i].d), dmin = shoal_f16_to_f32(b[i].dmin);
        for (int g = 0; g < 8; g++) {
            int sc, m;
            k_scale_min(b[i].scales, g, &sc, &m);
            float dl = d * (float)sc, ml = dmin * (float)m;
            const uint8_t *qs = b[i].qs + 32 * (g / 2);
            int shift = 4 * (g & 1);
            for (int j = 0; j < 32; j++) {
                int q = ((qs[j] >> shift) & 0x0f) | (((b[i].qh[j] >> g) & 1) << 4);
                y[32 * g + j] = dl * (float)q - ml;
            }
        }
    }
}

/*
 * q6_k: value v = 128 h + r has its low four bits in the nibble r / 64 of
 * ql[64 h + r % 64] and its high two at bit 2 (r / 32) of qh[32 h + r % 32];
 * stored +32. Sub-block v / 16 has the int8 scale scales[v / 16].
 */
static void dequant_q6_k(const struct shoal_block_q6_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        float d = shoal_f16_to_f32(b[i].d);
        float dl[16];
        for (int k = 0; k < 16; k++) dl[k] = d * (float)b[i].scales[k];
        for (int v = 0; v < SHOAL_QK_K; v++) {
            int h = v / 128, r = v % 128;
            int lo = (b[i].ql[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
            int hi = (b[i].qh[32 * h + r % 32] >> (2 * (r / 32))) & 3;
            y[v] = dl[v / 16] * (float)((lo | (hi << 4)) - 32);
        }
    }
}

/*
 * iq4_xs: group g of 32 values has the 6-bit scale whose low four bits are
 * nibble g % 2 of scales_l[g / 2] and whose high two are bits 2 g of
 * scales_h; stored +32. Its values are iq4_nl's, from qs[16 g .. 16 g + 15].
 */
static void dequant_iq4_xs(const struct shoal_block_iq4_xs *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        float d = shoal_f16_to_f32(b[i].d);
        for (int g = 0; g < 8; g++) {
            int lo = (b[i].scales_l[g / 2] >> (4 * (g % 2))) & 0x0f;
            int hi = (b[i].scales_h >> (2 * g)) & 3;
            float dl = d * (float)((lo | (hi << 4)) - 32);
            const uint8_t *qs = b[i].qs + 16 * g;
            for (int j = 0; j < 16; j++) {
                y[32 * g + j] = dl * (float)iq4_levels[qs[j] & 0x0f];
                y[32 * g + j + 16] = dl * (float)iq4_levels[qs[j] >> 4];
            }
        }
    }
}

shoal_status shoal_dequantize_row(int type, const void *in, float *y, int64_t n) {
    if (!shoal_can_dequantize(type) || !shoal_dtype_row_bytes(type, n))
        return shoal_errorf(SHOAL_INVALID, "cannot dequantize %lld values of %s",
                            (long long)n, shoal_dtype_name(type));
    int64_t nb = n / shoal_dtype_info(type)->block;
    switch (type) {
    case SHOAL_DTYPE_F32: memcpy(y, in, (size_t)n * 4); break;
    case SHOAL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) y[i] = shoal_f16_to_f32(((const uint16_t *)in)[i]);
        break;
    case SHOAL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = shoal_bf16_to_f32(((const uint16_t *)in)[i]);
        break;
    case SHOAL_DTYPE_Q8_0: dequant_q8_0(in, y, nb); break;
    case SHOAL_DTYPE_Q4_0: dequant_q4_0(in, y, nb); break;
    case SHOAL_DTYPE_Q4_1: dequant_q4_1(in, y, nb); break;
    case SHOAL_DTYPE_Q5_0: dequant_q5_0(in, y, nb); break;
    case SHOAL_DTYPE_Q5_1: dequant_q5_1(in, y, nb); break;
    case SHOAL_DTYPE_IQ4_NL: dequant_iq4_nl(in, y, nb); break;
    case SHOAL_DTYPE_Q2_K: dequant_q2_k(in, y, nb); break;
    case SHOAL_DTYPE_Q3_K: dequant_q3_k(in, y, nb); break;
    case SHOAL_DTYPE_Q4_K: dequant_q4_k(in, y, nb); break;
    case SHOAL_DTYPE_Q5_K: dequant_q5_k(in, y, nb); break;
    case SHOAL_DTYPE_Q6_K: dequant_q6_k(in, y, nb); break;
    case SHOAL_DTYPE_IQ4_XS: dequant_iq4_xs(in, y, nb); break;
    }
    return SHOAL_OK;
}
