/*
 * quant.c — reference (scalar) conversion between f32 and the stored weight
 * formats: F32, F16, BF16, Q8_0, Q4_0, Q4_1. Used to write synthetic models,
 * to look up embeddings, and as the definition the SIMD kernels are tested
 * against. Not on the decode hot path.
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

int shoal_can_dequantize(int type) { return shoal_can_quantize(type); }

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

shoal_status shoal_dequantize_row(int type, const void *in, float *y, int64_t n) {
    if (!shoal_can_dequantize(type) || !shoal_dtype_row_bytes(type, n))
        return shoal_errorf(SHOAL_INVALID, "cannot dequantize %lld values of %s",
                            (long long)n, shoal_dtype_name(type));
    int64_t nb = n / SHOAL_QK;
    switch (type) {
    case SHOAL_DTYPE_F32: memcpy(y, in, (size_t)n * 4); break;
    case SHOAL_DTYPE_F16:
        for (int64_t i = 0; i < n; i++) y[i] = shoal_f16_to_f32(((const uint16_t *)in)[i]);
        break;
    case SHOAL_DTYPE_BF16:
        for (int64_t i = 0; i < n; i++) y[i] = shoal_bf16_to_f32(((const uint16_t *)in)[i]);
        break;
    case SHOAL_DTYPE_Q8_0: {
        const struct shoal_block_q8_0 *b = in;
        for (int64_t i = 0; i < nb; i++) {
            float d = shoal_f16_to_f32(b[i].d);
            for (int j = 0; j < SHOAL_QK; j++) y[i * SHOAL_QK + j] = d * b[i].qs[j];
        }
        break;
    }
    case SHOAL_DTYPE_Q4_0: {
        const struct shoal_block_q4_0 *b = in;
        for (int64_t i = 0; i < nb; i++) {
            float d = shoal_f16_to_f32(b[i].d);
            for (int j = 0; j < SHOAL_QK / 2; j++) {
                y[i * SHOAL_QK + j] = d * ((b[i].qs[j] & 0x0f) - 8);
                y[i * SHOAL_QK + j + 16] = d * ((b[i].qs[j] >> 4) - 8);
            }
        }
        break;
    }
    case SHOAL_DTYPE_Q4_1: {
        const struct shoal_block_q4_1 *b = in;
        for (int64_t i = 0; i < nb; i++) {
            float d = shoal_f16_to_f32(b[i].d), m = shoal_f16_to_f32(b[i].m);
            for (int j = 0; j < SHOAL_QK / 2; j++) {
                y[i * SHOAL_QK + j] = d * (b[i].qs[j] & 0x0f) + m;
                y[i * SHOAL_QK + j + 16] = d * (b[i].qs[j] >> 4) + m;
            }
        }
        break;
    }
    }
    return SHOAL_OK;
}
