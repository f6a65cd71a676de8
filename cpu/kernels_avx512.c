/*
 * kernels_avx512.c — matmul kernels for x86-64 processors with AVX-512
 * F/BW/VL/DQ and VNNI (Ice Lake, Sapphire Rapids, Zen 4/5). Compiled with
 * those instructions enabled and only called after the processor says it
 * has them.
 *
 * Two quantized blocks fill one 512-bit register. VNNI's vpdpbusd multiplies
 * unsigned by signed bytes and sums each group of four into an int32 lane,
 * so lanes 0-7 belong to the first block and 8-15 to the second; each half
 * is scaled by its block's dw * dx in float. Q8_0 passes |w| and x with w's
 * sign; Q4_0 passes its 0..15 nibbles and takes the -8 offset off with the
 * block sums of x.
 */
#include <immintrin.h>

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

static float row_f16(const struct mm_task *t, int64_t r, int tok) {
    const int64_t n = t->w->cols;
    const uint16_t *w = row_ptr(t, r);
    const float *x = t->x + tok * n;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i)));
        __m512 w1 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i + 16)));
        acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i), acc0);
        acc1 = _mm512_fmadd_ps(w1, _mm512_loadu_ps(x + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16) {
        __m512 w0 = _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(w + i)));
        acc0 = _mm512_fmadd_ps(w0, _mm512_loadu_ps(x + i), acc0);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++) s += f16(w[i]) * x[i];
    return s;
}

static inline __m512 bf16x16(const uint16_t *p) {
    __m512i v = _mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)p));
    return _mm512_castsi512_ps(_mm512_slli_epi32(v, 16));
}

static float row_bf16(const struct mm_task *t, int64_t r, int tok) {
    const int64_t n = t->w->cols;
    const uint16_t *w = row_ptr(t, r);
    const float *x = t->x + tok * n;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t i = 0;
    for (; i + 32 <= n; i += 32) {
        acc0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), acc0);
        acc1 = _mm512_fmadd_ps(bf16x16(w + i + 16), _mm512_loadu_ps(x + i + 16), acc1);
    }
    for (; i + 16 <= n; i += 16)
        acc0 = _mm512_fmadd_ps(bf16x16(w + i), _mm512_loadu_ps(x + i), acc0);
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; i < n; i++) s += shoal_bf16_to_f32(w[i]) * x[i];
    return s;
}

/* Lanes 0-7 scaled by s0, lanes 8-15 by s1. */
static inline __m512 scale2(float s0, float s1) {
    return _mm512_insertf32x8(_mm512_set1_ps(s0), _mm256_set1_ps(s1), 1);
}

/* Two Q8_0 blocks' |w| * (x with w's sign), as 16 int32 lanes in float. */
static inline __m512 q8_pair(const struct shoal_block_q8_0 *w, const int8_t *x) {
    __m512i wv = _mm512_inserti64x4(
        _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w[0].qs)),
        _mm256_loadu_si256((const __m256i *)w[1].qs), 1);
    __m512i xv = _mm512_loadu_si512((const void *)x);
    __mmask64 neg = _mm512_movepi8_mask(wv);
    __m512i xs = _mm512_mask_sub_epi8(xv, neg, _mm512_setzero_si512(), xv);
    __m512i p = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_abs_epi8(wv), xs);
    return _mm512_cvtepi32_ps(p);
}

static float row_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m512 p0 = q8_pair(w + b, xq + b * SHOAL_QK);
        __m512 p1 = q8_pair(w + b + 2, xq + (b + 2) * SHOAL_QK);
        acc0 = _mm512_fmadd_ps(p0, scale2(f16(w[b].d) * xd[b], f16(w[b + 1].d) * xd[b + 1]), acc0);
        acc1 = _mm512_fmadd_ps(p1, scale2(f16(w[b + 2].d) * xd[b + 2], f16(w[b + 3].d) * xd[b + 3]),
                               acc1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; b < nb; b++) { /* at most three blocks left */
        int sum = 0;
        for (int j = 0; j < SHOAL_QK; j++) sum += w[b].qs[j] * xq[b * SHOAL_QK + j];
        s += f16(w[b].d) * xd[b] * (float)sum;
    }
    return s;
}

/* Two Q4_0 blocks' nibbles as 64 bytes 0..15, in value order. */
static inline __m512i q4_pair(const struct shoal_block_q4_0 *w) {
    __m256i q = _mm256_inserti128_si256(
        _mm256_castsi128_si256(_mm_loadu_si128((const __m128i *)w[0].qs)),
        _mm_loadu_si128((const __m128i *)w[1].qs), 1);
    __m512i z = _mm512_inserti64x4(_mm512_castsi256_si512(q), _mm256_srli_epi16(q, 4), 1);
    /* [w0 lo, w1 lo, w0 hi, w1 hi] -> [w0 lo, w0 hi, w1 lo, w1 hi] */
    z = _mm512_shuffle_i64x2(z, z, _MM_SHUFFLE(3, 1, 2, 0));
    return _mm512_and_si512(z, _mm512_set1_epi8(0x0f));
}

static float row_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q4_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb, *xs = t->xs + tok * nb;
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    float corr = 0; /* sum over blocks of dw * xs: the -8 offset, taken off at the end */
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        float d0 = f16(w[b].d), d1 = f16(w[b + 1].d), d2 = f16(w[b + 2].d), d3 = f16(w[b + 3].d);
        __m512i p0 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4_pair(w + b),
                                         _mm512_loadu_si512((const void *)(xq + b * SHOAL_QK)));
        __m512i p1 = _mm512_dpbusd_epi32(_mm512_setzero_si512(), q4_pair(w + b + 2),
                                         _mm512_loadu_si512((const void *)(xq + (b + 2) * SHOAL_QK)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p0), scale2(d0 * xd[b], d1 * xd[b + 1]), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p1), scale2(d2 * xd[b + 2], d3 * xd[b + 3]), acc1);
        corr += (d0 * xs[b] + d1 * xs[b + 1]) + (d2 * xs[b + 2] + d3 * xs[b + 3]);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; b < nb; b++) {
        float d0 = f16(w[b].d);
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++)
            sum += (w[b].qs[j] & 0x0f) * xq[b * SHOAL_QK + j] +
                   (w[b].qs[j] >> 4) * xq[b * SHOAL_QK + j + 16];
        s += d0 * xd[b] * (float)sum;
        corr += d0 * xs[b];
    }
    return s - 8.0f * corr;
}

#define DRIVER(type)                                                                       \
    static void mm_##type(const struct mm_task *t, int64_t r0, int64_t r1) {               \
        mm_drive(t, r0, r1, row_##type);                                                   \
    }
DRIVER(f32)
DRIVER(f16)
DRIVER(bf16)
DRIVER(q8_0)
DRIVER(q4_0)
#undef DRIVER

const struct cpu_kernels shoal_cpu_kernels_avx512 = {
    .name = "avx512",
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_q4_0,
    },
    .dot_f32 = dot_f32,
};
