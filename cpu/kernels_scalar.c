/*
 * kernels_scalar.c — the portable kernels: plain C that any compiler and
 * processor run. They define what the SIMD kernels must compute and are the
 * fallback for anything those do not cover.
 */
#include <math.h>

#include "kernels.h"

void shoal_cpu_quantize_x(const float *x, int64_t cols, int8_t *q, float *d, float *s) {
    for (int64_t b = 0; b < cols / SHOAL_QK; b++) {
        const float *xb = x + b * SHOAL_QK;
        float amax = 0;
        for (int j = 0; j < SHOAL_QK; j++) amax = fmaxf(amax, fabsf(xb[j]));
        float db = amax / 127.0f, id = db ? 1.0f / db : 0.0f;
        int sum = 0;
        for (int j = 0; j < SHOAL_QK; j++) {
            int v = (int)lrintf(xb[j] * id);
            q[b * SHOAL_QK + j] = (int8_t)v;
            sum += v;
        }
        d[b] = db;
        s[b] = db * (float)sum;
    }
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

static float row_f32(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols;
    const float *w = (const float *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    return dot_f32(w, t->x + tok * cols, (int)cols);
}

static float row_f16(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols;
    const uint16_t *w = (const uint16_t *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const float *x = t->x + tok * cols;
    float s = 0;
    for (int64_t i = 0; i < cols; i++) s += shoal_f16_to_f32(w[i]) * x[i];
    return s;
}

static float row_bf16(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols;
    const uint16_t *w = (const uint16_t *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const float *x = t->x + tok * cols;
    float s = 0;
    for (int64_t i = 0; i < cols; i++) s += shoal_bf16_to_f32(w[i]) * x[i];
    return s;
}

static float row_q8_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q8_0 *w =
        (const void *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    float s = 0;
    for (int64_t b = 0; b < nb; b++) {
        int sum = 0;
        for (int j = 0; j < SHOAL_QK; j++) sum += w[b].qs[j] * xq[b * SHOAL_QK + j];
        s += shoal_f16_to_f32(w[b].d) * xd[b] * (float)sum;
    }
    return s;
}

static float row_q4_0(const struct mm_task *t, int64_t r, int tok) {
    const int64_t cols = t->w->cols, nb = cols / SHOAL_QK;
    const struct shoal_block_q4_0 *w =
        (const void *)((const char *)t->w->data + (size_t)r * t->w->row_bytes);
    const int8_t *xq = t->xq + tok * cols;
    const float *xd = t->xd + tok * nb;
    float s = 0;
    for (int64_t b = 0; b < nb; b++) {
        int sum = 0;
        for (int j = 0; j < SHOAL_QK / 2; j++) {
            sum += ((w[b].qs[j] & 0x0f) - 8) * xq[b * SHOAL_QK + j];
            sum += ((w[b].qs[j] >> 4) - 8) * xq[b * SHOAL_QK + j + 16];
        }
        s += shoal_f16_to_f32(w[b].d) * xd[b] * (float)sum;
    }
    return s;
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

const struct cpu_kernels shoal_cpu_kernels_scalar = {
    .name = "scalar",
    .mm = {
        [SHOAL_DTYPE_F32] = mm_f32,
        [SHOAL_DTYPE_F16] = mm_f16,
        [SHOAL_DTYPE_BF16] = mm_bf16,
        [SHOAL_DTYPE_Q8_0] = mm_q8_0,
        [SHOAL_DTYPE_Q4_0] = mm_q4_0,
    },
    .dot_f32 = dot_f32,
};
