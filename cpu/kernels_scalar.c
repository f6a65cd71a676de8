/*
 * kernels_scalar.c — the portable kernels: plain C that any compiler and
 * processor run. They define what the SIMD kernels must compute and are the
 * fallback for anything those do not cover.
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

static inline double row_f64_half(const struct mm_task *t, int64_t r, int tok,
                                  float (*cvt)(uint16_t)) {
    const int64_t cols = t->w->cols;
    const uint16_t *w = (const uint16_t *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const float *x = t->x + tok * cols;
    double s = 0;
    for (int64_t i = 0; i < cols; i++) s += (double)cvt(w[i]) * x[i];
    return s;
}

static double row_f64_f16(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_half(t, r, tok, shoal_f16_to_f32);
}

static double row_f64_bf16(const struct mm_task *t, int64_t r, int tok) {
    return row_f64_half(t, r, tok, shoal_bf16_to_f32);
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
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            sum += ((w[b].qs[j] & 0x0f) - 8) * xq[b * SHOAL_QK + j];
            sum += ((w[b].qs[j] >> 4) - 8) * xq[b * SHOAL_QK + j + 16];
        }
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
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            sum += (w[b].qs[j] & 0x0f) * xq[b * SHOAL_QK + j];
            sum += (w[b].qs[j] >> 4) * xq[b * SHOAL_QK + j + 16];
        }
        s += (double)block_scale(w[b].d, xd[b]) * sum + (double)shoal_f16_to_f32(w[b].m) * xs[b];
    }
    return s;
}

MM_ROW_DRIVER_F64(f32)
MM_ROW_DRIVER_F64(f16)
MM_ROW_DRIVER_F64(bf16)
MM_ROW_DRIVER_F64(q8_0)
MM_ROW_DRIVER_F64(q4_0)
MM_ROW_DRIVER_F64(q4_1)

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
#undef ROUNDED


const struct cpu_kernels shoal_cpu_kernels_scalar = {
    .name = "scalar",
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_q4_0,
        [SHOAL_DTYPE_Q4_1] = mm_q4_1,
    },
    .mm_f64 = {
        [SHOAL_DTYPE_F32] = mm_f64_f32,
        [SHOAL_DTYPE_F16] = mm_f64_f16,
        [SHOAL_DTYPE_BF16] = mm_f64_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_f64_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_f64_q4_0,
        [SHOAL_DTYPE_Q4_1] = mm_f64_q4_1,
    },
    .q4_grouped = 0,
    .q4_lane_vectors = 0,
    .quantize_x = shoal_cpu_quantize_x,
    .kv_dot = { kv_dot_f32, kv_dot_f16, shoal_cpu_kv_dot_q8 },
    .kv_axpy = { kv_axpy_f32, kv_axpy_f16, shoal_cpu_kv_axpy_q8 },
};
