/*
 * kernels_avx2.c — matmul kernels for x86-64 processors with AVX2, FMA and
 * F16C (Haswell and later, Zen). Compiled with those instructions enabled
 * (see CMakeLists.txt) and only called after the processor says it has them.
 *
 * Q8_0 x Q8: |w| (unsigned) times x with w's sign (maddubs), pairs summed to
 * int32, scaled per block in float. Q4_0: the nibbles are unsigned 0..15, so
 * maddubs takes them as they are and the -8 offset is taken off afterwards
 * with the block sums of x (xs), which the activation quantizer provides.
 */
#include <immintrin.h>

#include "kernels.h"

/* F16C converts a half in one instruction; base's portable version is a call. */
static inline float f16(uint16_t h) { return _cvtsh_ss(h); }

static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

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

/* A row of 16-bit floats (f16 or bf16: load8 widens 8 of them, cvt one) times f32 x. */
static inline float row_half(const struct mm_task *t, int64_t r, int tok,
                             __m256 (*load8)(const uint16_t *), float (*cvt)(uint16_t)) {
    const int64_t n = t->w->cols;
    const uint16_t *w = row_ptr(t, r);
    const float *x = t->x + tok * n;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t i = 0;
    for (; i + 16 <= n; i += 16) {
        acc0 = _mm256_fmadd_ps(load8(w + i), _mm256_loadu_ps(x + i), acc0);
        acc1 = _mm256_fmadd_ps(load8(w + i + 8), _mm256_loadu_ps(x + i + 8), acc1);
    }
    float s = hsum256(_mm256_add_ps(acc0, acc1));
    for (; i < n; i++) s += cvt(w[i]) * x[i];
    return s;
}

static float row_f16(const struct mm_task *t, int64_t r, int tok) {
    return row_half(t, r, tok, f16x8, f16);
}

static float row_bf16(const struct mm_task *t, int64_t r, int tok) {
    return row_half(t, r, tok, bf16x8, shoal_bf16_to_f32);
}

/* Sum of 32 products of unsigned a and signed b bytes, as 8 int32 lanes in float. */
static inline __m256 dot_u8s8(__m256i a, __m256i b) {
    __m256i p16 = _mm256_maddubs_epi16(a, b);
    return _mm256_cvtepi32_ps(_mm256_madd_epi16(p16, _mm256_set1_epi16(1)));
}

static float row_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i w1 = _mm256_loadu_si256((const __m256i *)w[b + 1].qs);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * SHOAL_QK));
        __m256i x1 = _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * SHOAL_QK));
        __m256 p0 = dot_u8s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        __m256 p1 = dot_u8s8(_mm256_sign_epi8(w1, w1), _mm256_sign_epi8(x1, w1));
        acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(f16(w[b].d) * xd[b]), acc0);
        acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(f16(w[b + 1].d) * xd[b + 1]), acc1);
    }
    for (; b < nb; b++) {
        __m256i w0 = _mm256_loadu_si256((const __m256i *)w[b].qs);
        __m256i x0 = _mm256_loadu_si256((const __m256i *)(xq + b * SHOAL_QK));
        __m256 p0 = dot_u8s8(_mm256_sign_epi8(w0, w0), _mm256_sign_epi8(x0, w0));
        acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(f16(w[b].d) * xd[b]), acc0);
    }
    return hsum256(_mm256_add_ps(acc0, acc1));
}

/* The 32 nibbles of a Q4_0 block as bytes 0..15, in value order. */
static inline __m256i q4_bytes(const uint8_t *qs) {
    __m128i q = _mm_loadu_si128((const __m128i *)qs);
    __m256i both = _mm256_set_m128i(_mm_srli_epi16(q, 4), q);
    return _mm256_and_si256(both, _mm256_set1_epi8(0x0f));
}

static float row_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t nb = t->w->cols / SHOAL_QK;
    const struct shoal_block_q4_0 *w = row_ptr(t, r);
    const int8_t *xq = t->xq + tok * t->w->cols;
    const float *xd = t->xd + tok * nb, *xs = t->xs + tok * nb;
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    float corr = 0; /* sum over blocks of dw * xs: the -8 offset, taken off at the end */
    int64_t b = 0;
    for (; b + 2 <= nb; b += 2) {
        float d0 = f16(w[b].d), d1 = f16(w[b + 1].d);
        __m256 p0 = dot_u8s8(q4_bytes(w[b].qs), _mm256_loadu_si256((const __m256i *)(xq + b * SHOAL_QK)));
        __m256 p1 = dot_u8s8(q4_bytes(w[b + 1].qs),
                             _mm256_loadu_si256((const __m256i *)(xq + (b + 1) * SHOAL_QK)));
        acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(d0 * xd[b]), acc0);
        acc1 = _mm256_fmadd_ps(p1, _mm256_set1_ps(d1 * xd[b + 1]), acc1);
        corr += d0 * xs[b] + d1 * xs[b + 1];
    }
    for (; b < nb; b++) {
        float d0 = f16(w[b].d);
        __m256 p0 = dot_u8s8(q4_bytes(w[b].qs), _mm256_loadu_si256((const __m256i *)(xq + b * SHOAL_QK)));
        acc0 = _mm256_fmadd_ps(p0, _mm256_set1_ps(d0 * xd[b]), acc0);
        corr += d0 * xs[b];
    }
    return hsum256(_mm256_add_ps(acc0, acc1)) - 8.0f * corr;
}

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

MM_ROW_DRIVER(f32)
MM_ROW_DRIVER(f16)
MM_ROW_DRIVER(bf16)
MM_ROW_DRIVER(q8_0)
MM_ROW_DRIVER(q4_0)
#undef DRIVER

const struct cpu_kernels shoal_cpu_kernels_avx2 = {
    .name = "avx2",
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_q4_0,
    },
    .q4_grouped = 0,
    .lane_vectors = 0,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
};
