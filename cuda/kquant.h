/*
 * kquant.h — inside cuda/ (and its unit test): how the CUDA kernels decode the
 * GGUF blocks of Q5_0, Q5_1, IQ4_NL (32 values a block) and of the
 * super-block types Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS (256 values), read
 * in place from a weight's rows. Two views of a block:
 *
 *  - kq_dequant: one value as f32, the bits base/quant.c's dequantizer gives
 *    (its "float order": the same operations on the same operands), or
 *    without the min term (with_min 0: d * sc * q alone, which the f64
 *    prompt path meets with the blocks' sums of x in a product of its own);
 *  - kq_slice: the 32 values of slice g (values 32 g .. 32 g + 31) as int8
 *    codes packed four to a word (for dp4a) with the integer scales and mins
 *    of its two halves of 16, so that value j of the slice is
 *    (d * sc[j / 16]) * code_j - dmin * mn[j / 16] (the super-block types),
 *    d * code_j (+ m for Q5_1) for the 32-value types (sc 1, mn 0): the
 *    terms cpu/kernels_scalar.c sums.
 *
 * Plain C as well as CUDA (host and device): tests/unit/test_cuda_kquant.c
 * runs these on the CPU against base/quant.c's dequantizer, bit for bit, on
 * machines without a GPU. On the device, 32-bit words are read with loads of
 * the alignment a type's blocks have when rows start at 16 bytes (kq_align);
 * on the host byte by byte. Not here: the other types (Q8_0, Q4_0, Q4_1 are
 * repacked into planes by matmul.cu), and activations.
 */
#ifndef SHOAL_CUDA_KQUANT_H
#define SHOAL_CUDA_KQUANT_H

#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif
#include "../base/base.h"
#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
#include <cuda_fp16.h>
#define KQ_FN static __host__ __device__ __forceinline__
#else
#define KQ_FN static inline
#endif

/* Whether the type is decoded here: the 32-value ones and the super-block ones. */
KQ_FN int kq_type32(int type) {
    return type == SHOAL_DTYPE_Q5_0 || type == SHOAL_DTYPE_Q5_1 || type == SHOAL_DTYPE_IQ4_NL;
}
KQ_FN int kq_type256(int type) {
    return type == SHOAL_DTYPE_Q2_K || type == SHOAL_DTYPE_Q3_K || type == SHOAL_DTYPE_Q4_K ||
           type == SHOAL_DTYPE_Q5_K || type == SHOAL_DTYPE_Q6_K || type == SHOAL_DTYPE_IQ4_XS;
}
KQ_FN int kq_type(int type) { return kq_type32(type) || kq_type256(type); }

/* Values and bytes of a block (base.h's block structs). */
KQ_FN int kq_values(int type) { return kq_type256(type) ? 256 : 32; }
KQ_FN int kq_bytes(int type) {
    switch (type) {
    case SHOAL_DTYPE_Q5_0: return 22;
    case SHOAL_DTYPE_Q5_1: return 24;
    case SHOAL_DTYPE_IQ4_NL: return 18;
    case SHOAL_DTYPE_Q2_K: return 84;
    case SHOAL_DTYPE_Q3_K: return 110;
    case SHOAL_DTYPE_Q4_K: return 144;
    case SHOAL_DTYPE_Q5_K: return 176;
    case SHOAL_DTYPE_Q6_K: return 210;
    case SHOAL_DTYPE_IQ4_XS: return 136;
    default: return 0;
    }
}
/* The alignment every block of a row has when the row starts at 16 bytes: gcd(bytes, 16). */
KQ_FN int kq_align(int type) {
    const int b = kq_bytes(type);
    return b % 16 == 0 ? 16 : b % 8 == 0 ? 8 : b % 4 == 0 ? 4 : 2;
}
/* Whether values carry a min: subtracted (the k-quants with dmin) or added (Q5_1's m). */
KQ_FN int kq_has_min(int type) {
    return type == SHOAL_DTYPE_Q5_1 || type == SHOAL_DTYPE_Q2_K || type == SHOAL_DTYPE_Q4_K ||
           type == SHOAL_DTYPE_Q5_K;
}

/* ---------------------------------------------------------------- reads */

KQ_FN float kq_f16(uint16_t h) {
#ifdef __CUDA_ARCH__
    return __half2float(__ushort_as_half(h));
#else
    return shoal_f16_to_f32(h);
#endif
}

/* The little-endian u16 at p (2-byte aligned in every block here). */
KQ_FN uint16_t kq_ld16(const uint8_t *p) {
#ifdef __CUDA_ARCH__
    return *(const uint16_t *)p;
#else
    return (uint16_t)(p[0] | p[1] << 8);
#endif
}

/* The little-endian u32 at p, p aligned to align (2, 4 or more). */
KQ_FN uint32_t kq_ld32(const uint8_t *p, int align) {
#ifdef __CUDA_ARCH__
    if (align >= 4) return *(const uint32_t *)p;
    return (uint32_t)((const uint16_t *)p)[0] | (uint32_t)((const uint16_t *)p)[1] << 16;
#else
    (void)align;
    return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
#endif
}

/* Each byte of w less k (bytes 0..63, k <= 32: the results as int8, no borrow between bytes). */
KQ_FN uint32_t kq_sub_bytes(uint32_t w, int k) {
#ifdef __CUDA_ARCH__
    return __vsub4(w, (uint32_t)k * 0x01010101u);
#else
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) r |= (uint32_t)(uint8_t)((int)((w >> (8 * i)) & 0xff) - k) << (8 * i);
    return r;
#endif
}

/* IQ4_NL's and IQ4_XS's 16 levels (base/quant.c's iq4_levels) as bytes of two words. */
#define KQ_IQ4_LO 0xF6EADDCFBFAD9881ull /* -127 -104 -83 -65 -49 -35 -22 -10 */
#define KQ_IQ4_HI 0x7159453526190D01ull /*    1   13  25  38  53  69  89 113 */
KQ_FN int kq_iq4_level(int n) {
    return (int8_t)(uint8_t)(((n < 8 ? KQ_IQ4_LO : KQ_IQ4_HI) >> (8 * (n & 7))) & 0xff);
}
/* Four nibbles (the low four bits of each byte of w) as four packed int8 levels. */
KQ_FN uint32_t kq_iq4_word(uint32_t w) {
    uint32_t r = 0;
    for (int i = 0; i < 4; i++) r |= (uint32_t)(uint8_t)kq_iq4_level((int)((w >> (8 * i)) & 15)) << (8 * i);
    return r;
}

/* The four bits b (0..15) of a word of Q5's qh, each into bit 0 of its own byte. */
KQ_FN uint32_t kq_spread4(uint32_t b) {
    return (b & 1) | (b & 2) << 7 | (b & 4) << 14 | (b & 8) << 21;
}

/* ------------------------------------------------------- block scales */

/* The f16 bits of a block's scale d, and of its min scale (dmin; Q5_1's m). */
KQ_FN uint16_t kq_d_bits(int type, const uint8_t *b) {
    switch (type) {
    case SHOAL_DTYPE_Q2_K: return kq_ld16(b + 80);
    case SHOAL_DTYPE_Q3_K: return kq_ld16(b + 108);
    case SHOAL_DTYPE_Q6_K: return kq_ld16(b + 208);
    default: return kq_ld16(b); /* q5_0, q5_1, iq4_nl, q4_k, q5_k, iq4_xs */
    }
}
KQ_FN uint16_t kq_m_bits(int type, const uint8_t *b) {
    switch (type) {
    case SHOAL_DTYPE_Q2_K: return kq_ld16(b + 82);
    case SHOAL_DTYPE_Q5_1: case SHOAL_DTYPE_Q4_K: case SHOAL_DTYPE_Q5_K: return kq_ld16(b + 2);
    default: return 0;
    }
}

/* Q3_K's 6-bit scale of sub-block k (0..15), less 32 (base/quant.c's dequant_q3_k). */
KQ_FN int kq_q3k_scale(const uint8_t *sc, int k) {
    const int lo = (k < 8 ? sc[k] : sc[k - 8] >> 4) & 0x0f;
    const int hi = (sc[8 + k % 4] >> (2 * (k / 4))) & 3;
    return (lo | hi << 4) - 32;
}

/* Q4_K's and Q5_K's 6-bit scale and min of group g (0..7) (base/quant.c's k_scale_min). */
KQ_FN void kq_k_scale_min(const uint8_t *s, int g, int *sc, int *m) {
    if (g < 4) {
        *sc = s[g] & 63;
        *m = s[g + 4] & 63;
    } else {
        *sc = (s[g + 4] & 0x0f) | ((s[g - 4] >> 6) << 4);
        *m = (s[g + 4] >> 4) | ((s[g] >> 6) << 4);
    }
}

/* IQ4_XS's 6-bit scale of group g, less 32. */
KQ_FN int kq_iq4xs_scale(const uint8_t *b, int g) {
    const int lo = (b[4 + g / 2] >> (4 * (g % 2))) & 0x0f;
    const int hi = (kq_ld16(b + 2) >> (2 * g)) & 3;
    return (lo | hi << 4) - 32;
}

/* ------------------------------------------------------ one value as f32 */

/*
 * Value v of the block at b, as base/quant.c's dequantizer makes it (same
 * operations, same operands: the same bits); with_min 0: without its min
 * term (d * sc * q alone; the others as they are).
 */
KQ_FN float kq_dequant(int type, const uint8_t *b, int v, int with_min) {
    const float d = kq_f16(kq_d_bits(type, b));
    switch (type) {
    case SHOAL_DTYPE_Q5_0:
    case SHOAL_DTYPE_Q5_1: {
        const uint8_t *qh = b + (type == SHOAL_DTYPE_Q5_0 ? 2 : 4), *qs = qh + 4;
        const int q = (v < 16 ? qs[v] & 0x0f : qs[v - 16] >> 4) | ((qh[v >> 3] >> (v & 7)) & 1) << 4;
        if (type == SHOAL_DTYPE_Q5_0) return d * (float)(q - 16);
        if (!with_min) return d * (float)q;
        return d * (float)q + kq_f16(kq_m_bits(type, b));
    }
    case SHOAL_DTYPE_IQ4_NL: {
        const uint8_t *qs = b + 2;
        return d * (float)kq_iq4_level(v < 16 ? qs[v] & 0x0f : qs[v - 16] >> 4);
    }
    case SHOAL_DTYPE_Q2_K: {
        const int k = v / 16, c = v / 128, s = (v % 128) / 32, j = v % 32;
        const int q = (b[16 + 32 * c + j] >> (2 * s)) & 3;
        const float dl = d * (float)(b[k] & 0x0f);
        if (!with_min) return dl * (float)q;
        const float ml = kq_f16(kq_m_bits(type, b)) * (float)(b[k] >> 4);
        return dl * (float)q - ml;
    }
    case SHOAL_DTYPE_Q3_K: {
        const int c = v / 128, s = (v % 128) / 32, j = v % 32;
        int q = (b[32 + 32 * c + j] >> (2 * s)) & 3;
        if (!((b[j] >> (v / 32)) & 1)) q -= 4;
        const float dl = d * (float)kq_q3k_scale(b + 96, v / 16);
        return dl * (float)q;
    }
    case SHOAL_DTYPE_Q4_K:
    case SHOAL_DTYPE_Q5_K: {
        const int g = v / 32, j = v % 32;
        const uint8_t *qs = b + (type == SHOAL_DTYPE_Q4_K ? 16 : 48);
        int sc, m;
        kq_k_scale_min(b + 4, g, &sc, &m);
        int q = (qs[32 * (g / 2) + j] >> (4 * (g & 1))) & 0x0f;
        if (type == SHOAL_DTYPE_Q5_K) q |= ((b[16 + j] >> g) & 1) << 4;
        const float dl = d * (float)sc;
        if (!with_min) return dl * (float)q;
        const float ml = kq_f16(kq_m_bits(type, b)) * (float)m;
        return dl * (float)q - ml;
    }
    case SHOAL_DTYPE_Q6_K: {
        const int h = v / 128, r = v % 128;
        const int lo = (b[64 * h + r % 64] >> (4 * (r / 64))) & 0x0f;
        const int hi = (b[128 + 32 * h + r % 32] >> (2 * (r / 32))) & 3;
        const float dl = d * (float)(int8_t)b[192 + v / 16];
        return dl * (float)((lo | hi << 4) - 32);
    }
    case SHOAL_DTYPE_IQ4_XS: {
        const int g = v / 32, j = v % 32;
        const uint8_t *qs = b + 8 + 16 * g;
        const float dl = d * (float)kq_iq4xs_scale(b, g);
        return dl * (float)kq_iq4_level(j < 16 ? qs[j] & 0x0f : qs[j - 16] >> 4);
    }
    default: return 0.0f;
    }
}

/* --------------------------------------------------- a slice as codes */

struct kq_slice {
    uint32_t q[8]; /* the 32 codes as int8, value 4 i + k in byte k of q[i] */
    int sc[2];     /* integer scale of values 0..15 and 16..31 (1 for the 32-value types) */
    int mn[2];     /* integer min of each half (0 where none; Q5_1: 0, its m is an f16) */
};

/*
 * Slice g (0 for the 32-value types, 0..7 for the super-block types) of the
 * block at b, aligned to A (kq_align of the type; a constant where inlined).
 */
KQ_FN void kq_decode_slice(int type, const uint8_t *b, int g, struct kq_slice *s) {
    const int A = kq_align(type);
    s->sc[0] = s->sc[1] = 1;
    s->mn[0] = s->mn[1] = 0;
    switch (type) {
    case SHOAL_DTYPE_Q5_0:
    case SHOAL_DTYPE_Q5_1: {
        const uint8_t *qh = b + (type == SHOAL_DTYPE_Q5_0 ? 2 : 4), *qs = qh + 4;
        const uint32_t h = kq_ld32(qh, A);
        for (int i = 0; i < 8; i++) {
            /* values 4 i ..: low nibbles of qs[4 i ..] (i < 4), else high nibbles of qs[4 (i - 4) ..] */
            const uint32_t nib = (kq_ld32(qs + 4 * (i % 4), A) >> (4 * (i / 4))) & 0x0f0f0f0fu;
            const uint32_t w = nib | kq_spread4((h >> (4 * i)) & 15) << 4;
            s->q[i] = type == SHOAL_DTYPE_Q5_0 ? kq_sub_bytes(w, 16) : w;
        }
        break;
    }
    case SHOAL_DTYPE_IQ4_NL:
        for (int i = 0; i < 8; i++)
            s->q[i] = kq_iq4_word(kq_ld32(b + 2 + 4 * (i % 4), A) >> (4 * (i / 4)));
        break;
    case SHOAL_DTYPE_Q2_K:
    case SHOAL_DTYPE_Q3_K: {
        /* value 32 g + j: bits 2 (g % 4) of qs[32 (g / 4) + j]; Q3_K: bit g of hmask[j] clear: -4 */
        const int off = type == SHOAL_DTYPE_Q2_K ? 16 : 32;
        const uint8_t *qs = b + off + 32 * (g / 4);
        for (int i = 0; i < 8; i++) {
            uint32_t w = (kq_ld32(qs + 4 * i, A) >> (2 * (g % 4))) & 0x03030303u;
            if (type == SHOAL_DTYPE_Q3_K)
                w = kq_sub_bytes(w | ((kq_ld32(b + 4 * i, A) >> g) & 0x01010101u) << 2, 4);
            s->q[i] = w;
        }
        for (int k = 0; k < 2; k++) {
            if (type == SHOAL_DTYPE_Q2_K) {
                s->sc[k] = b[2 * g + k] & 0x0f;
                s->mn[k] = b[2 * g + k] >> 4;
            } else {
                s->sc[k] = kq_q3k_scale(b + 96, 2 * g + k);
            }
        }
        break;
    }
    case SHOAL_DTYPE_Q4_K:
    case SHOAL_DTYPE_Q5_K: {
        const uint8_t *qs = b + (type == SHOAL_DTYPE_Q4_K ? 16 : 48) + 32 * (g / 2);
        for (int i = 0; i < 8; i++) {
            uint32_t w = (kq_ld32(qs + 4 * i, A) >> (4 * (g & 1))) & 0x0f0f0f0fu;
            if (type == SHOAL_DTYPE_Q5_K) w |= ((kq_ld32(b + 16 + 4 * i, A) >> g) & 0x01010101u) << 4;
            s->q[i] = w;
        }
        int sc, m;
        kq_k_scale_min(b + 4, g, &sc, &m);
        s->sc[0] = s->sc[1] = sc;
        s->mn[0] = s->mn[1] = m;
        break;
    }
    case SHOAL_DTYPE_Q6_K: {
        /* value 32 g + j = 128 h + r, r = 32 (g % 4) + j: low bits in nibble (g % 4) / 2 of
         * ql[64 h + 32 (g % 2) + j], high two at bit 2 (g % 4) of qh[32 h + j] */
        const int h = g / 4;
        const uint8_t *ql = b + 64 * h + 32 * (g % 2), *qh = b + 128 + 32 * h;
        for (int i = 0; i < 8; i++) {
            const uint32_t lo = (kq_ld32(ql + 4 * i, A) >> (4 * ((g % 4) / 2))) & 0x0f0f0f0fu;
            const uint32_t hi = (kq_ld32(qh + 4 * i, A) >> (2 * (g % 4))) & 0x03030303u;
            s->q[i] = kq_sub_bytes(lo | hi << 4, 32);
        }
        s->sc[0] = (int8_t)b[192 + 2 * g];
        s->sc[1] = (int8_t)b[192 + 2 * g + 1];
        break;
    }
    case SHOAL_DTYPE_IQ4_XS: {
        const uint8_t *qs = b + 8 + 16 * g;
        for (int i = 0; i < 8; i++) s->q[i] = kq_iq4_word(kq_ld32(qs + 4 * (i % 4), A) >> (4 * (i / 4)));
        s->sc[0] = s->sc[1] = kq_iq4xs_scale(b, g);
        break;
    }
    default:
        for (int i = 0; i < 8; i++) s->q[i] = 0;
        break;
    }
}

#endif
