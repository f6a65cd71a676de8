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

/* The f16 scales of four blocks of stride sizeof(*w), as floats. */
#define SCALES4(w, b)                                                                          \
    _mm_cvtph_ps(_mm_setr_epi16((short)(w)[b].d, (short)(w)[(b) + 1].d, (short)(w)[(b) + 2].d,  \
                                (short)(w)[(b) + 3].d, 0, 0, 0, 0))

/*
 * Q8_0: two blocks per register (lanes 0-7 the first, 8-15 the second);
 * |w| times x with w's sign. Four blocks per iteration share one conversion
 * of their scales, spread over the lanes with a permute.
 */
static float row_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb;
    const __m512i lanes01 = _mm512_set_epi32(1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0);
    const __m512i lanes23 = _mm512_set_epi32(3, 3, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 2, 2);
    const __m512i zero = _mm512_setzero_si512();
    __m512 acc0 = _mm512_setzero_ps(), acc1 = _mm512_setzero_ps();
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m512i w01 = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w[b].qs)),
            _mm256_loadu_si256((const __m256i *)w[b + 1].qs), 1);
        __m512i w23 = _mm512_inserti64x4(
            _mm512_castsi256_si512(_mm256_loadu_si256((const __m256i *)w[b + 2].qs)),
            _mm256_loadu_si256((const __m256i *)w[b + 3].qs), 1);
        __m512i x01 = _mm512_loadu_si512((const void *)(xq + b * SHOAL_QK));
        __m512i x23 = _mm512_loadu_si512((const void *)(xq + b * SHOAL_QK + 64));
        x01 = _mm512_mask_sub_epi8(x01, _mm512_movepi8_mask(w01), zero, x01);
        x23 = _mm512_mask_sub_epi8(x23, _mm512_movepi8_mask(w23), zero, x23);
        __m512i p01 = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w01), x01);
        __m512i p23 = _mm512_dpbusd_epi32(zero, _mm512_abs_epi8(w23), x23);
        __m512 s = _mm512_castps128_ps512(_mm_mul_ps(SCALES4(w, b), _mm_loadu_ps(xd + b)));
        acc0 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p01), _mm512_permutexvar_ps(lanes01, s), acc0);
        acc1 = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p23), _mm512_permutexvar_ps(lanes23, s), acc1);
    }
    float s = _mm512_reduce_add_ps(_mm512_add_ps(acc0, acc1));
    for (; b < nb; b++) { /* at most three blocks left */
        int sum = 0;
        for (int j = 0; j < SHOAL_QK; j++) sum += w[b].qs[j] * xq[b * SHOAL_QK + j];
        s += f16(w[b].d) * xd[b] * (float)sum;
    }
    return s;
}

/*
 * Q4_0: four blocks' 64 bytes of nibbles fill one register; the low
 * nibbles (values 0..15 of each block) and the high ones (16..31) each meet
 * the activations grouped to match (kernels.h, q4_grouped), so lanes 4k..4k+3
 * hold block k. The nibbles are unsigned 0..15: the -8 offset is taken off
 * at the end with the block sums of x.
 */
static float row_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q4_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb, *xs = t->xs + tok * nb;
    const __m512i lanes = _mm512_set_epi32(3, 3, 3, 3, 2, 2, 2, 2, 1, 1, 1, 1, 0, 0, 0, 0);
    const __m512i m4 = _mm512_set1_epi8(0x0f), zero = _mm512_setzero_si512();
    __m512 acc = _mm512_setzero_ps();
    __m128 corr = _mm_setzero_ps(); /* dw * xs per block: the -8 offset */
    int64_t b = 0;
    for (; b + 4 <= nb; b += 4) {
        __m512i q = _mm512_castsi128_si512(_mm_loadu_si128((const __m128i *)w[b].qs));
        q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)w[b + 1].qs), 1);
        q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)w[b + 2].qs), 2);
        q = _mm512_inserti32x4(q, _mm_loadu_si128((const __m128i *)w[b + 3].qs), 3);
        __m512i lo = _mm512_and_si512(q, m4), hi = _mm512_and_si512(_mm512_srli_epi16(q, 4), m4);
        __m512i p = _mm512_dpbusd_epi32(zero, lo, _mm512_loadu_si512((const void *)(xq + b * SHOAL_QK)));
        p = _mm512_dpbusd_epi32(p, hi, _mm512_loadu_si512((const void *)(xq + b * SHOAL_QK + 64)));
        __m128 dw = SCALES4(w, b);
        corr = _mm_fmadd_ps(dw, _mm_loadu_ps(xs + b), corr);
        __m512 s = _mm512_castps128_ps512(_mm_mul_ps(dw, _mm_loadu_ps(xd + b)));
        acc = _mm512_fmadd_ps(_mm512_cvtepi32_ps(p), _mm512_permutexvar_ps(lanes, s), acc);
    }
    corr = _mm_add_ps(corr, _mm_movehl_ps(corr, corr));
    corr = _mm_add_ss(corr, _mm_movehdup_ps(corr));
    float s = _mm512_reduce_add_ps(acc) - 8.0f * _mm_cvtss_f32(corr);
    for (; b < nb; b++) { /* at most three blocks left, in natural order */
        float d0 = f16(w[b].d);
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++)
            sum += ((w[b].qs[j] & 0x0f) - 8) * xq[b * SHOAL_QK + j] +
                   ((w[b].qs[j] >> 4) - 8) * xq[b * SHOAL_QK + j + 16];
        s += d0 * xd[b] * (float)sum;
    }
    return s;
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
    .q4_grouped = 1,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
};
