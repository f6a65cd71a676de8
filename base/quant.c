/*
 * quant.c — reference (scalar) conversion between f32 and the stored weight
 * formats. Quantizing: F32, F16, BF16, Q8_0, Q4_0, Q4_1. Dequantizing: those,
 * Q5_0, Q5_1, the k-quants Q2_K..Q6_K, IQ4_NL and IQ4_XS. Used to write
 * synthetic models, to look up embeddings, to dump tensors (shoal info
 * --dump), and as the definition the SIMD kernels are tested against. Not on
 * the decode hot path.
 *
 * The layouts are GGUF's (ggml's block structs); the dequantizers were
 * written from them, and give, bit for bit, what the gguf Python package's
 * numpy dequantizer gives (tests/ref/test_dequant.py): see "float order".
 */
#include <math.h>
#include <string.h>

#include "base.h"

int shoal_can_quantize(int type) {
    switch (type) {
    case SHOAL_DTYPE_F32: case SHOAL_DTYPE_F16: case SHOAL_DTYPE_BF16:
    case SHOAL_DTYPE_Q8_0: case SHOAL_DTYPE_Q4_0: case SHOAL_DTYPE_Q4_1:
        return 1;
    default:
        return 0;
    }
}

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

/* ---------------------------------------------------------------- quantize */

static void quantize_q8_0(const float *x, struct shoal_block_q8_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float amax = 0;
        for (int j = 0; j < SHOAL_QK; j++) amax = fmaxf(amax, fabsf(x[j]));
        float d = amax / 127.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        for (int j = 0; j < SHOAL_QK; j++) y[b].qs[j] = (int8_t)roundf(x[j] * id);
    }
}

static void quantize_q4_0(const float *x, struct shoal_block_q4_0 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float amax = 0, max = 0; /* the value of largest magnitude, with its sign */
        for (int j = 0; j < SHOAL_QK; j++)
            if (fabsf(x[j]) > amax) {
                amax = fabsf(x[j]);
                max = x[j];
            }
        float d = max / -8.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = (int)(x[j] * id + 8.5f), q1 = (int)(x[j + 16] * id + 8.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

static void quantize_q4_1(const float *x, struct shoal_block_q4_1 *y, int64_t nb) {
    for (int64_t b = 0; b < nb; b++, x += SHOAL_QK) {
        float min = x[0], max = x[0];
        for (int j = 1; j < SHOAL_QK; j++) {
            min = fminf(min, x[j]);
            max = fmaxf(max, x[j]);
        }
        float d = (max - min) / 15.0f, id = d ? 1.0f / d : 0.0f;
        y[b].d = shoal_f32_to_f16(d);
        y[b].m = shoal_f32_to_f16(min);
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            int q0 = (int)((x[j] - min) * id + 0.5f), q1 = (int)((x[j + 16] - min) * id + 0.5f);
            q0 = q0 > 15 ? 15 : q0;
            q1 = q1 > 15 ? 15 : q1;
            y[b].qs[j] = (uint8_t)(q0 | (q1 << 4));
        }
    }
}

shoal_status shoal_quantize_row(int type, const float *x, void *out, int64_t n) {
    if (!shoal_can_quantize(type) || !shoal_dtype_row_bytes(type, n))
        return shoal_errorf(SHOAL_INVALID, "cannot quantize %lld values to %s",
                            (long long)n, shoal_dtype_name(type));
    switch (type) {
    case SHOAL_DTYPE_F32: memcpy(out, x, (size_t)n * 4); break;
    case SHOAL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = shoal_f32_to_f16(x[i]);
        break;
    case SHOAL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) ((uint16_t *)out)[i] = shoal_f32_to_bf16(x[i]);
        break;
    case SHOAL_DTYPE_Q8_0: quantize_q8_0(x, out, n / SHOAL_QK); break;
    case SHOAL_DTYPE_Q4_0: quantize_q4_0(x, out, n / SHOAL_QK); break;
    case SHOAL_DTYPE_Q4_1: quantize_q4_1(x, out, n / SHOAL_QK); break;
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

/* IQ4_NL's and IQ4_XS's 16 levels (ggml's kvalues_iq4nl). */
static const int8_t iq4_levels[16] = { -127, -104, -83, -65, -49, -35, -22, -10,
                                       1,    13,   25,  38,  53,  69,  89,  113 };

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
 * hmask[v % 32], and a clear bit means -4. Sub-block k's 6-bit scale has its
 * low four bits in scales[k] (k < 8, low nibble) or scales[k - 8] (high
 * nibble), its high two at bit 2 (k / 4) of scales[8 + k % 4]; stored +32.
 */
static void dequant_q3_k(const struct shoal_block_q3_k *b, float *y, int64_t nb) {
    for (int64_t i = 0; i < nb; i++, y += SHOAL_QK_K) {
        const uint8_t *sc = b[i].scales;
        float d = shoal_f16_to_f32(b[i].d);
        float dl[16];
        for (int k = 0; k < 16; k++) {
            int lo = (k < 8 ? sc[k] : sc[k - 8] >> 4) & 0x0f;
            int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
            dl[k] = d * (float)((lo | (hi << 4)) - 32);
        }
        for (int v = 0; v < SHOAL_QK_K; v++) {
            int c = v / 128, s = (v % 128) / 32, j = v % 32;
            int q = (b[i].qs[32 * c + j] >> (2 * s)) & 3;
            if (!((b[i].hmask[j] >> (v / 32)) & 1)) q -= 4;
            y[v] = dl[v / 16] * (float)q;
        }
    }
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
