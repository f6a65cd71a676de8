/*
 * matmul.cu — weights on the device and y = x W^T for every weight type the
 * CPU backend has (F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL,
 * Q2_K, Q3_K, Q4_K, Q5_K, Q6_K, IQ4_XS).
 *
 * Decode (up to MMV_MAX_TOKENS tokens): memory-bound kernels, one warp per
 * row, reading the row once for all the batch's tokens (16-byte loads for
 * the float types and the planes of Q8_0/Q4_*; the GGUF blocks of the other
 * types in place, decoded by kquant.h). As on the CPU, quantized weights meet
 * activations quantized to 8 bits (integer dot products, dp4a): per block of
 * 32 for the 32-value types, per super-block of 256 with int16 sums of each
 * 16 (the Q8_K form, shoal_cpu_quantize_q8k's bits) for the k-quants and
 * IQ4_XS. The f64 variant sums products that are exact in f64 (the Q8_K
 * types' scale cut in two, each part's product exact and the two added with one rounding: the
 * value of cpu/kernels_scalar.c's kterm), so its
 * result hardly depends on the order of the sum. A row's sum runs in the same order whatever the number of rows, so a
 * tensor-parallel slice of a weight gives the bits the whole weight gives.
 *
 * Prompt batches: our own kernels (gemm.cu), whose every output is summed
 * in one order whatever the shape: F16 and BF16 weights are used as they
 * are, with the activations rounded to the weight's type (tensor cores, f32
 * sums); quantized weights are dequantized to f16 as they are read. The f64
 * variant dequantizes to f64 (exactly) and calls cublasDgemm, keeping the
 * products exact as above.
 */
#include <string.h>

#include "common.cuh"

enum { MMV_MAX_TOKENS = 8, MMV_WARPS = 4 };

/* ------------------------------------------------------------- layout */

static size_t up256(size_t n) { return (n + 255) / 256 * 256; }

int cuda_weight_layout(int type, int64_t rows, int64_t cols, struct wlayout *l) {
    memset(l, 0, sizeof *l);
    if (rows <= 0 || cols <= 0) return 0;
    const size_t r = (size_t)rows, nb = (size_t)cols / SHOAL_QK;
    switch (type) {
    case SHOAL_DTYPE_F32:
    case SHOAL_DTYPE_F16:
    case SHOAL_DTYPE_BF16: {
        size_t es = type == SHOAL_DTYPE_F32 ? 4 : 2;
        l->pitch = ((size_t)cols * es + 15) / 16 * 16;
        l->bytes = r * l->pitch;
        return 1;
    }
    case SHOAL_DTYPE_Q5_0:
    case SHOAL_DTYPE_Q5_1:
    case SHOAL_DTYPE_IQ4_NL:
    case SHOAL_DTYPE_Q2_K:
    case SHOAL_DTYPE_Q3_K:
    case SHOAL_DTYPE_Q4_K:
    case SHOAL_DTYPE_Q5_K:
    case SHOAL_DTYPE_Q6_K:
    case SHOAL_DTYPE_IQ4_XS:
        /* GGUF blocks in place, rows at a 16-byte pitch (common.cuh) */
        if (cols % kq_values(type)) return 0;
        l->pitch = ((size_t)cols / (size_t)kq_values(type) * (size_t)kq_bytes(type) + 15) / 16 * 16;
        l->bytes = r * l->pitch;
        return 1;
    case SHOAL_DTYPE_Q8_0:
    case SHOAL_DTYPE_Q4_0:
    case SHOAL_DTYPE_Q4_1:
        if (cols % SHOAL_QK) return 0;
        l->pitch = type == SHOAL_DTYPE_Q8_0 ? (size_t)cols : (size_t)cols / 2;
        l->d_off = up256(r * l->pitch);
        l->m_off = up256(l->d_off + r * nb * 2);
        l->bytes = type == SHOAL_DTYPE_Q4_1 ? l->m_off + r * nb * 2 : l->d_off + r * nb * 2;
        return 1;
    default:
        return 0;
    }
}

/* A weight type the layout above has no place for: the type, the types it has, and where to
 * go instead when the CPU computes it. */
static shoal_status no_layout(int type) {
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    return shoal_errorf(SHOAL_UNSUPPORTED, "the CUDA backend has no matmul for %s weights (it has f32, "
                        "f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1, iq4_nl, q2_k, q3_k, q4_k, q5_k, "
                        "q6_k and iq4_xs)%s", shoal_dtype_name(type),
                        ti && ti->computable ? "; the CPU backend computes them: --device cpu" : "");
}

/* ------------------------------------------------------------- upload */

/* Types whose rows go to the device as stored, at the layout's pitch (not split into planes). */
static int rows_as_stored(int type) {
    return type == SHOAL_DTYPE_F32 || type == SHOAL_DTYPE_F16 || type == SHOAL_DTYPE_BF16 || kq_type(type);
}

/* GGUF blocks (rows x nb of them, bs bytes each) split into the planes of the layout. */
__global__ void k_split_blocks(const uint8_t *__restrict__ src, int64_t n_blocks, int64_t nb, int type,
                               uint8_t *__restrict__ q, size_t pitch, __half *__restrict__ d,
                               __half *__restrict__ m) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n_blocks) return;
    const int64_t r = i / nb, b = i % nb;
    const int bs = type == SHOAL_DTYPE_Q8_0 ? 34 : type == SHOAL_DTYPE_Q4_0 ? 18 : 20;
    const int qn = type == SHOAL_DTYPE_Q8_0 ? 32 : 16, hdr = type == SHOAL_DTYPE_Q4_1 ? 4 : 2;
    const uint8_t *s = src + i * bs;
    uint8_t *dst = q + (size_t)r * pitch + (size_t)b * qn;
    for (int j = 0; j < qn; j++) dst[j] = s[hdr + j];
    __half_raw h;
    h.x = (unsigned short)(s[0] | s[1] << 8);
    d[i] = h;
    if (m) {
        h.x = (unsigned short)(s[2] | s[3] << 8);
        m[i] = h;
    }
}

/* The device image of a weight (the layout above) made on the host, for offload's copies. */
shoal_status cuda_weight_pack_host(int type, int64_t rows, int64_t cols, const void *src, void *dst) {
    struct wlayout l;
    if (!cuda_weight_layout(type, rows, cols, &l)) return no_layout(type);
    const size_t rb = shoal_dtype_row_bytes(type, cols);
    memset(dst, 0, l.bytes);
    if (rows_as_stored(type)) {
        for (int64_t r = 0; r < rows; r++)
            memcpy((char *)dst + (size_t)r * l.pitch, (const char *)src + (size_t)r * rb, rb);
        return SHOAL_OK;
    }
    const int64_t nb = cols / SHOAL_QK;
    const int bs = type == SHOAL_DTYPE_Q8_0 ? 34 : type == SHOAL_DTYPE_Q4_0 ? 18 : 20;
    const int qn = type == SHOAL_DTYPE_Q8_0 ? 32 : 16, hdr = type == SHOAL_DTYPE_Q4_1 ? 4 : 2;
    uint8_t *q = (uint8_t *)dst, *d = (uint8_t *)dst + l.d_off, *m = (uint8_t *)dst + l.m_off;
    for (int64_t i = 0; i < rows * nb; i++) { /* as k_split_blocks, on the host */
        const uint8_t *blk = (const uint8_t *)src + (size_t)i * bs;
        const int64_t r = i / nb, b = i % nb;
        memcpy(q + (size_t)r * l.pitch + (size_t)b * qn, blk + hdr, (size_t)qn);
        memcpy(d + (size_t)i * 2, blk, 2);
        if (type == SHOAL_DTYPE_Q4_1) memcpy(m + (size_t)i * 2, blk + 2, 2);
    }
    return SHOAL_OK;
}

shoal_status cuda_weight_upload(struct cuda_ctx *c, struct shoal_weight *w, const void *host, void *dst) {
    struct wlayout l;
    if (!cuda_weight_layout(w->type, w->rows, w->cols, &l)) return no_layout(w->type);
    w->data = dst;
    if (rows_as_stored(w->type)) {
        CU_TRY(cudaMemcpy2DAsync(dst, l.pitch, host, w->row_bytes, w->row_bytes, (size_t)w->rows,
                                 cudaMemcpyHostToDevice, c->stream));
        CU_TRY(cudaStreamSynchronize(c->stream));
        return SHOAL_OK;
    }
    /* quantized: through scratch, some rows at a time, then split into planes */
    const int64_t nb = w->cols / SHOAL_QK;
    const size_t chunk_rows = (size_t)upload_chunk_rows(w->row_bytes, w->rows, c->scratch_cap);
    void *buf;
    SHOAL_TRY(cuda_scratch(c, chunk_rows * w->row_bytes, &buf));
    uint8_t *q = (uint8_t *)dst;
    __half *d = (__half *)((char *)dst + l.d_off);
    __half *m = w->type == SHOAL_DTYPE_Q4_1 ? (__half *)((char *)dst + l.m_off) : NULL;
    for (int64_t r0 = 0; r0 < w->rows; r0 += (int64_t)chunk_rows) {
        int64_t nr = w->rows - r0 < (int64_t)chunk_rows ? w->rows - r0 : (int64_t)chunk_rows;
        CU_TRY(cudaMemcpyAsync(buf, (const char *)host + (size_t)r0 * w->row_bytes,
                               (size_t)nr * w->row_bytes, cudaMemcpyHostToDevice, c->stream));
        int64_t n_blocks = nr * nb;
        k_split_blocks<<<grid_1d((size_t)n_blocks, 256), 256, 0, c->stream>>>(
            (const uint8_t *)buf, n_blocks, nb, w->type, q + (size_t)r0 * l.pitch, l.pitch,
            d + r0 * nb, m ? m + r0 * nb : NULL);
        CU_LAUNCHED("split blocks");
    }
    CU_TRY(cudaStreamSynchronize(c->stream)); /* the host bytes may go once we return */
    return SHOAL_OK;
}

/* ------------------------------------------------ activations to 8 bits */

/*
 * x (n, cols) to int8 per block of 32, as shoal_cpu_quantize_x: scale amax /
 * 127 kept as f16, values x * 127 / amax rounded to nearest even, and the
 * block's sum (int, and times the scale as f16). One warp per block.
 */
__global__ void k_quantize_x(const float *__restrict__ x, int64_t cols, int n, int8_t *__restrict__ xq,
                             float *__restrict__ xd, float *__restrict__ xs, int32_t *__restrict__ xsum) {
    const int64_t nb = cols / SHOAL_QK;
    const int lane = threadIdx.x & 31;
    const int64_t b = (int64_t)blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int t = blockIdx.y;
    if (b >= nb || t >= n) return;
    const float v = x[(int64_t)t * cols + b * SHOAL_QK + lane];
    const float amax = warp_max(fabsf(v));
    const float db = __fdiv_rn(amax, 127.0f), id = amax > 0 ? __fdiv_rn(127.0f, amax) : 0.0f;
    const int q = (int)rintf(__fmul_rn(v, id));
    xq[(int64_t)t * cols + b * SHOAL_QK + lane] = (int8_t)q;
    const int sum = warp_sum(q);
    if (lane == 0) {
        const float d = f16_round(db);
        xd[(int64_t)t * nb + b] = d;
        xs[(int64_t)t * nb + b] = f16_round(__fmul_rn(db, (float)sum));
        xsum[(int64_t)t * nb + b] = sum;
    }
}

struct xq8 {
    const int8_t *q; /* (n, cols) */
    const float *d, *s;
    const int32_t *sum; /* (n, cols / 32) */
};

/* x (n, cols) quantized into the pieces of l, carved from the scratch at base. */
static shoal_status quantize_x(struct cuda_ctx *c, const float *x, int64_t cols, int n, char *base,
                               const struct xq8_layout *l, struct xq8 *out) {
    const int64_t nb = cols / SHOAL_QK;
    out->q = (const int8_t *)(base + l->q);
    out->d = (const float *)(base + l->d);
    out->s = (const float *)(base + l->s);
    out->sum = (const int32_t *)(base + l->sum);
    dim3 grid((unsigned)((nb + 7) / 8), (unsigned)n);
    k_quantize_x<<<grid, 256, 0, c->stream>>>(x, cols, n, (int8_t *)out->q, (float *)out->d,
                                              (float *)out->s, (int32_t *)out->sum);
    CU_LAUNCHED("quantize activations");
    return SHOAL_OK;
}

/*
 * x (n, cols) to the Q8_K form, as shoal_cpu_quantize_q8k (llama.cpp's
 * quantize_row_q8_K_ref): per super-block of 256 the value of largest
 * magnitude, the first such (max), gives iscale = -127 / max; q = iscale * x
 * rounded to nearest even, at most 127; d = 1 / iscale; int16 sums of each
 * 16 q. A block of zeros: d = 0, zeros. One block of 256 threads per
 * super-block and token (grid: super-blocks x tokens).
 */
__global__ void __launch_bounds__(256) k_quantize_q8k(const float *__restrict__ x, int64_t cols,
                                                      int8_t *__restrict__ xq, float *__restrict__ xd,
                                                      int16_t *__restrict__ xbs) {
    __shared__ float part_a[8];
    __shared__ int part_i[8];
    __shared__ float s_max;
    const int i = threadIdx.x, lane = i & 31, warp = i / 32;
    const int64_t nsb = cols / SHOAL_QK_K, sb = blockIdx.x, t = blockIdx.y;
    const int64_t at = t * cols + sb * SHOAL_QK_K + i;
    const float v = x[at];
    /* (|x|, index), the larger |x| first, then the lower index: the CPU's first maximum
     * (a NaN is never taken, as its |x| > amax never holds) */
    float a = fabsf(v);
    int idx = i;
    if (!(a >= 0.0f)) a = -1.0f;
    for (int o = 16; o > 0; o >>= 1) {
        const float oa = __shfl_xor_sync(0xffffffffu, a, o);
        const int oi = __shfl_xor_sync(0xffffffffu, idx, o);
        if (oa > a || (oa == a && oi < idx)) a = oa, idx = oi;
    }
    if (lane == 0) part_a[warp] = a, part_i[warp] = idx;
    __syncthreads();
    if (i == 0) {
        float ba = part_a[0];
        int bi = part_i[0];
        for (int w = 1; w < 8; w++) /* warps in order: a tie keeps the lower index */
            if (part_a[w] > ba) ba = part_a[w], bi = part_i[w];
        s_max = ba > 0.0f ? x[t * cols + sb * SHOAL_QK_K + bi] : 0.0f;
    }
    __syncthreads();
    const float max = s_max;
    int q = 0;
    float iscale = 0.0f;
    if (max != 0.0f) {
        iscale = __fdiv_rn(-127.0f, max);
        q = (int)rintf(__fmul_rn(iscale, v));
        q = q < 127 ? q : 127;
    }
    xq[at] = (int8_t)q;
    int sum = q; /* the sums of each 16: lanes 0..15 and 16..31 of each warp */
    for (int o = 8; o > 0; o >>= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
    if ((i & 15) == 0) xbs[t * (cols / 16) + sb * 16 + i / 16] = (int16_t)sum;
    if (i == 0) xd[t * nsb + sb] = max != 0.0f ? __fdiv_rn(1.0f, iscale) : 0.0f;
}

struct xq8k {
    const int8_t *q;   /* (n, cols) */
    const float *d;    /* (n, cols / 256) */
    const int16_t *bs; /* (n, cols / 16) */
};

/* x (n, cols) in the Q8_K form, into the pieces of l carved from the scratch at base. */
static shoal_status quantize_xk(struct cuda_ctx *c, const float *x, int64_t cols, int n, char *base,
                                const struct xq8k_layout *l, struct xq8k *out) {
    out->q = (const int8_t *)(base + l->q);
    out->d = (const float *)(base + l->d);
    out->bs = (const int16_t *)(base + l->bs);
    dim3 grid((unsigned)(cols / SHOAL_QK_K), (unsigned)n);
    k_quantize_q8k<<<grid, 256, 0, c->stream>>>(x, cols, (int8_t *)out->q, (float *)out->d,
                                                (int16_t *)out->bs);
    CU_LAUNCHED("quantize activations (q8_k)");
    return SHOAL_OK;
}

/* ------------------------------------------------------- decode kernels */

/* Up to SHOAL_MATMUL_MAX weights of one type on one input, rows end to end. */
struct mmv_args {
    int k;
    const char *w[SHOAL_MATMUL_MAX];
    size_t d_off[SHOAL_MATMUL_MAX], m_off[SHOAL_MATMUL_MAX], pitch[SHOAL_MATMUL_MAX];
    void *y[SHOAL_MATMUL_MAX];
    int64_t rows[SHOAL_MATMUL_MAX];
    int64_t first[SHOAL_MATMUL_MAX + 1];
    int64_t cols;
    const float *x;
    const double *x64; /* x as f64, for float weights summed in f64 (no conversion per row) */
    struct xq8 xq;
    struct xq8k xk;    /* the super-block types' activations */
};

template <typename A> struct acc_ops;
template <> struct acc_ops<float> {
    static __device__ __forceinline__ float add(float a, float b) { return __fadd_rn(a, b); }
    static __device__ __forceinline__ float mul(float a, float b) { return __fmul_rn(a, b); }
    static __device__ __forceinline__ float from(float v) { return v; }
};
template <> struct acc_ops<double> {
    static __device__ __forceinline__ double add(double a, double b) { return __dadd_rn(a, b); }
    static __device__ __forceinline__ double mul(double a, double b) { return __dmul_rn(a, b); }
    static __device__ __forceinline__ double from(float v) { return (double)v; }
};

static __device__ __forceinline__ int dp4a(int a, int b, int c) { return __dp4a(a, b, c); }

/* x as a weight of TYPE meets it: BF16 weights meet x rounded to bf16, to nearest even (as on the CPU) */
template <int TYPE> __device__ __forceinline__ float x_as(float v) {
    return TYPE == SHOAL_DTYPE_BF16 ? __bfloat162float(__float2bfloat16_rn(v)) : v;
}

/* 8 halves / bf16s of a 16-byte load as floats */
template <int TYPE> static __device__ __forceinline__ void half8(const uint4 v, float *f) {
    const uint32_t u[4] = { v.x, v.y, v.z, v.w };
#pragma unroll
    for (int i = 0; i < 4; i++) {
        if (TYPE == SHOAL_DTYPE_F16) {
            __half2_raw r;
            r.x = (unsigned short)(u[i] & 0xffff);
            r.y = (unsigned short)(u[i] >> 16);
            float2 p = __half22float2(__half2(r));
            f[2 * i] = p.x;
            f[2 * i + 1] = p.y;
        } else {
            f[2 * i] = __uint_as_float(u[i] << 16);
            f[2 * i + 1] = __uint_as_float(u[i] & 0xffff0000u);
        }
    }
}

template <int TYPE> static __device__ __forceinline__ float elem(const char *row, int64_t i) {
    if (TYPE == SHOAL_DTYPE_F32) return ((const float *)row)[i];
    const uint16_t h = ((const uint16_t *)row)[i];
    if (TYPE == SHOAL_DTYPE_F16) {
        __half_raw r;
        r.x = h;
        return __half2float(__half(r));
    }
    return __uint_as_float((uint32_t)h << 16);
}

/*
 * One warp per row of all the weights; each lane reads 16 bytes at a time
 * (U of them in flight), for NT tokens at once; the lanes' sums meet in a
 * fixed butterfly. Output y[t * rows + r], as float or (A double) double.
 */
template <int TYPE, int NT, typename A>
__global__ void __launch_bounds__(MMV_WARPS * 32) k_mmv(const struct mmv_args a) {
    typedef acc_ops<A> op;
    constexpr int U = 4;
    const int lane = threadIdx.x & 31;
    const int64_t g = (int64_t)blockIdx.x * MMV_WARPS + threadIdx.x / 32;
    if (g >= a.first[a.k]) return;
    int wi = 0;
    while (g >= a.first[wi + 1]) wi++;
    const int64_t r = g - a.first[wi], cols = a.cols, nb = cols / SHOAL_QK;
    const char *base = a.w[wi];
    const char *row = base + (size_t)r * a.pitch[wi];
    A acc[NT];
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = 0;

    if (TYPE == SHOAL_DTYPE_Q8_0) {
        /* a lane: 16 values = half a block; a warp: 512 values per step */
        const __half *d = (const __half *)(base + a.d_off[wi]) + r * nb;
        for (int64_t i0 = (int64_t)lane * 16; i0 < cols; i0 += 512 * U) {
            int4 wv[U];
            float dw[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t i = i0 + (int64_t)u * 512;
                wv[u] = i < cols ? __ldg((const int4 *)(row + i)) : make_int4(0, 0, 0, 0);
                dw[u] = i < cols ? __half2float(d[i / SHOAL_QK]) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t i = i0 + (int64_t)u * 512;
                if (i >= cols) break;
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const int4 xv = *(const int4 *)(a.xq.q + (int64_t)t * cols + i);
                    int s = dp4a(wv[u].x, xv.x, 0);
                    s = dp4a(wv[u].y, xv.y, s);
                    s = dp4a(wv[u].z, xv.z, s);
                    s = dp4a(wv[u].w, xv.w, s);
                    const float sc = __fmul_rn(dw[u], a.xq.d[(int64_t)t * nb + i / SHOAL_QK]);
                    acc[t] = op::add(acc[t], op::mul((A)s, op::from(sc)));
                }
            }
        }
    } else if (TYPE == SHOAL_DTYPE_Q4_0 || TYPE == SHOAL_DTYPE_Q4_1) {
        /* a lane: one block (16 bytes of nibbles: value j low, j + 16 high); a warp: 32 blocks */
        const __half *d = (const __half *)(base + a.d_off[wi]) + r * nb;
        const __half *m = TYPE == SHOAL_DTYPE_Q4_1 ? (const __half *)(base + a.m_off[wi]) + r * nb : NULL;
        for (int64_t b0 = lane; b0 < nb; b0 += 32 * U) {
            int4 wv[U];
            float dw[U], mw[U];
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t b = b0 + (int64_t)u * 32;
                wv[u] = b < nb ? __ldg((const int4 *)(row + b * 16)) : make_int4(0, 0, 0, 0);
                dw[u] = b < nb ? __half2float(d[b]) : 0.0f;
                mw[u] = TYPE == SHOAL_DTYPE_Q4_1 && b < nb ? __half2float(m[b]) : 0.0f;
            }
#pragma unroll
            for (int u = 0; u < U; u++) {
                const int64_t b = b0 + (int64_t)u * 32;
                if (b >= nb) break;
                const int wq[4] = { wv[u].x, wv[u].y, wv[u].z, wv[u].w };
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    const int4 *xp = (const int4 *)(a.xq.q + (int64_t)t * cols + b * SHOAL_QK);
                    const int4 xl = xp[0], xh = xp[1];
                    const int xlo[4] = { xl.x, xl.y, xl.z, xl.w }, xhi[4] = { xh.x, xh.y, xh.z, xh.w };
                    int s = 0;
#pragma unroll
                    for (int j = 0; j < 4; j++) {
                        s = dp4a(wq[j] & 0x0f0f0f0f, xlo[j], s);
                        s = dp4a((wq[j] >> 4) & 0x0f0f0f0f, xhi[j], s);
                    }
                    const int64_t xb = (int64_t)t * nb + b;
                    if (TYPE == SHOAL_DTYPE_Q4_0) s -= 8 * a.xq.sum[xb];
                    const float sc = __fmul_rn(dw[u], a.xq.d[xb]);
                    acc[t] = op::add(acc[t], op::mul((A)s, op::from(sc)));
                    if (TYPE == SHOAL_DTYPE_Q4_1)
                        acc[t] = op::add(acc[t], op::mul(op::from(mw[u]), op::from(a.xq.s[xb])));
                }
            }
        }
    } else if (kq_type(TYPE)) {
        /*
         * GGUF blocks in place (kquant.h): a lane decodes 32 values, a block of the
         * 32-value types (a warp: 32 blocks a step) or slice lane % 8 of super-block
         * lane / 8 (a warp: 4 super-blocks a step), and meets each token's 8-bit
         * activations with dp4a: a block's integer sum times dw * dx (plus Q5_1's
         * m * xs) as Q4_0 and Q4_1 above; a slice's two sub-block sums times their
         * integer scales, less the mins times the activations' sums of 16, times the
         * super-block's d * dx and dmin * dx, cpu/kernels_scalar.c's terms.
         */
        const int bv = kq_values(TYPE), bb = kq_bytes(TYPE), sl = bv / 32, per = 32 / sl;
        const int g = lane % sl;
        const int64_t nblk = cols / bv;
        for (int64_t b = lane / sl; b < nblk; b += per) {
            const uint8_t *blk = (const uint8_t *)row + b * bb;
            struct kq_slice sv;
            kq_decode_slice(TYPE, blk, g, &sv);
            const float dw = kq_f16(kq_d_bits(TYPE, blk));
            const float mw = kq_has_min(TYPE) ? kq_f16(kq_m_bits(TYPE, blk)) : 0.0f;
            const int wq[8] = { (int)sv.q[0], (int)sv.q[1], (int)sv.q[2], (int)sv.q[3],
                                (int)sv.q[4], (int)sv.q[5], (int)sv.q[6], (int)sv.q[7] };
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const int8_t *xqb = sl == 1 ? a.xq.q + (int64_t)t * cols + b * SHOAL_QK
                                            : a.xk.q + (int64_t)t * cols + b * SHOAL_QK_K + 32 * g;
                const int4 xl = ((const int4 *)xqb)[0], xh = ((const int4 *)xqb)[1];
                int d0 = dp4a(wq[0], xl.x, 0);
                d0 = dp4a(wq[1], xl.y, d0);
                d0 = dp4a(wq[2], xl.z, d0);
                d0 = dp4a(wq[3], xl.w, d0);
                int d1 = dp4a(wq[4], xh.x, 0);
                d1 = dp4a(wq[5], xh.y, d1);
                d1 = dp4a(wq[6], xh.z, d1);
                d1 = dp4a(wq[7], xh.w, d1);
                if (sl == 1) {
                    const int64_t xb = (int64_t)t * nb + b;
                    const float sc = __fmul_rn(dw, a.xq.d[xb]);
                    acc[t] = op::add(acc[t], op::mul((A)(d0 + d1), op::from(sc)));
                    if (TYPE == SHOAL_DTYPE_Q5_1)
                        acc[t] = op::add(acc[t], op::mul(op::from(mw), op::from(a.xq.s[xb])));
                    continue;
                }
                const int isum = sv.sc[0] * d0 + sv.sc[1] * d1;
                int msum = 0;
                if (kq_has_min(TYPE)) {
                    const int16_t *bs = a.xk.bs + (int64_t)t * (cols / 16) + b * 16 + 2 * g;
                    msum = sv.mn[0] * bs[0] + sv.mn[1] * bs[1];
                }
                const float dx = a.xk.d[(int64_t)t * nblk + b];
                if (sizeof(A) == 8) {
                    /* d * dx * isum from exact products added with one rounding (dx cut into its
                     * high 12 significant bits and the rest): kernels_scalar.c's kterm's value */
                    const float hi = __uint_as_float(__float_as_uint(dx) & 0xfffff000u);
                    const double lo = __dsub_rn((double)dx, (double)hi);
                    const double dd = (double)dw, dm = (double)mw;
                    const double td = __dadd_rn(__dmul_rn(__dmul_rn(dd, (double)hi), (double)isum),
                                                __dmul_rn(__dmul_rn(dd, lo), (double)isum));
                    const double tm = __dadd_rn(__dmul_rn(__dmul_rn(dm, (double)hi), (double)msum),
                                                __dmul_rn(__dmul_rn(dm, lo), (double)msum));
                    acc[t] = op::add(acc[t], (A)__dsub_rn(td, tm));
                } else {
                    acc[t] = op::add(acc[t], op::mul(op::from((float)isum), op::from(__fmul_rn(dw, dx))));
                    if (kq_has_min(TYPE))
                        acc[t] = op::add(acc[t], op::mul(op::from(-(float)msum), op::from(__fmul_rn(mw, dx))));
                }
            }
        }
    } else {
        /* float weights: 16 bytes = 4 f32 or 8 f16/bf16 values per lane */
        constexpr int V = TYPE == SHOAL_DTYPE_F32 ? 4 : 8;
        const bool vec = cols % V == 0;
        if (vec) {
            for (int64_t i0 = (int64_t)lane * V; i0 < cols; i0 += 32 * V * U) {
                uint4 wv[U];
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int64_t i = i0 + (int64_t)u * 32 * V;
                    wv[u] = i < cols ? __ldg((const uint4 *)(row + i * (V == 4 ? 4 : 2))) : make_uint4(0, 0, 0, 0);
                }
#pragma unroll
                for (int u = 0; u < U; u++) {
                    const int64_t i = i0 + (int64_t)u * 32 * V;
                    if (i >= cols) break;
                    float wf[8];
                    if (TYPE == SHOAL_DTYPE_F32) {
                        wf[0] = __uint_as_float(wv[u].x);
                        wf[1] = __uint_as_float(wv[u].y);
                        wf[2] = __uint_as_float(wv[u].z);
                        wf[3] = __uint_as_float(wv[u].w);
                    } else {
                        half8<TYPE>(wv[u], wf);
                    }
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        if (sizeof(A) == 8 && TYPE != SHOAL_DTYPE_BF16) {
                            const double *xp = a.x64 + (int64_t)t * cols + i;
#pragma unroll
                            for (int j = 0; j < V; j++)
                                acc[t] = op::add(acc[t], op::mul(op::from(wf[j]), (A)xp[j]));
                        } else {
                            const float *xp = a.x + (int64_t)t * cols + i;
#pragma unroll
                            for (int j = 0; j < V; j++)
                                acc[t] = op::add(acc[t], op::mul(op::from(wf[j]), op::from(x_as<TYPE>(xp[j]))));
                        }
                    }
                }
            }
        } else {
            for (int64_t i = lane; i < cols; i += 32) {
                const float wf = elem<TYPE>(row, i);
#pragma unroll
                for (int t = 0; t < NT; t++)
                    acc[t] = op::add(acc[t], op::mul(op::from(wf), op::from(x_as<TYPE>(a.x[(int64_t)t * cols + i]))));
            }
        }
    }
#pragma unroll
    for (int t = 0; t < NT; t++) acc[t] = warp_sum(acc[t]);
    if (lane == 0) {
        A *y = (A *)a.y[wi];
#pragma unroll
        for (int t = 0; t < NT; t++) y[(int64_t)t * a.rows[wi] + r] = acc[t];
    }
}

template <int TYPE, typename A>
static void launch_mmv_type(const struct mmv_args &a, int n, unsigned grid, cudaStream_t s) {
    switch (n) {
#define CASE(N)                                                                            \
    case N:                                                                                \
        k_mmv<TYPE, N, A><<<grid, MMV_WARPS * 32, 0, s>>>(a);                              \
        break;
        CASE(1) CASE(2) CASE(3) CASE(4) CASE(5) CASE(6) CASE(7) CASE(8)
#undef CASE
    }
}

template <typename A>
static void launch_mmv(int type, const struct mmv_args &a, int n, unsigned grid, cudaStream_t s) {
    switch (type) {
    case SHOAL_DTYPE_F32: launch_mmv_type<SHOAL_DTYPE_F32, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_F16: launch_mmv_type<SHOAL_DTYPE_F16, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_BF16: launch_mmv_type<SHOAL_DTYPE_BF16, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q8_0: launch_mmv_type<SHOAL_DTYPE_Q8_0, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q4_0: launch_mmv_type<SHOAL_DTYPE_Q4_0, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q4_1: launch_mmv_type<SHOAL_DTYPE_Q4_1, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q5_0: launch_mmv_type<SHOAL_DTYPE_Q5_0, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q5_1: launch_mmv_type<SHOAL_DTYPE_Q5_1, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_IQ4_NL: launch_mmv_type<SHOAL_DTYPE_IQ4_NL, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q2_K: launch_mmv_type<SHOAL_DTYPE_Q2_K, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q3_K: launch_mmv_type<SHOAL_DTYPE_Q3_K, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q4_K: launch_mmv_type<SHOAL_DTYPE_Q4_K, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q5_K: launch_mmv_type<SHOAL_DTYPE_Q5_K, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_Q6_K: launch_mmv_type<SHOAL_DTYPE_Q6_K, A>(a, n, grid, s); break;
    case SHOAL_DTYPE_IQ4_XS: launch_mmv_type<SHOAL_DTYPE_IQ4_XS, A>(a, n, grid, s); break;
    }
}

__global__ void k_f32_f64(const float *__restrict__ x, size_t count, double *__restrict__ out);

static int quantized(int type) { return quantized_type(type); }

/*
 * The decode path: weights of one type go in one launch; tokens in groups of
 * up to MMV_MAX_TOKENS (each group's rows of x and y offset).
 */
static shoal_status mmv(struct cuda_ctx *c, int k, float *const *y, double *yd,
                        const struct shoal_weight *const *w, const float *x, int n) {
    const int64_t cols = w[0]->cols;
    struct xq8 xq = { 0 };
    struct xq8k xk = { 0 };
    const double *x64 = NULL;
    int need_q = 0, need_k = 0, need_64 = 0;
    for (int i = 0; i < k; i++) {
        need_q |= q32_type(w[i]->type);
        need_k |= q8k_type(w[i]->type);
        need_64 |= yd && !quantized(w[i]->type);
    }
    if (need_q || need_k || need_64) {
        struct mmv_layout l;
        mmv_layout_k(cols, n, need_q, need_k, need_64, &l);
        void *buf;
        SHOAL_TRY(cuda_scratch(c, l.bytes, &buf));
        if (need_q) SHOAL_TRY(quantize_x(c, x, cols, n, (char *)buf, &l.xq, &xq));
        if (need_k) SHOAL_TRY(quantize_xk(c, x, cols, n, (char *)buf, &l.xk, &xk));
        if (need_64) {
            x64 = (const double *)((char *)buf + l.x64);
            k_f32_f64<<<grid_1d((size_t)n * cols, 256), 256, 0, c->stream>>>(x, (size_t)n * cols, (double *)x64);
            CU_LAUNCHED("activations to f64");
        }
    }
    const int64_t nb = cols / SHOAL_QK;
    int done[SHOAL_MATMUL_MAX] = { 0 };
    for (int i = 0; i < k; i++) {
        if (done[i]) continue;
        const int type = w[i]->type;
        for (int t0 = 0; t0 < n; t0 += MMV_MAX_TOKENS) {
            const int nt = n - t0 < MMV_MAX_TOKENS ? n - t0 : MMV_MAX_TOKENS;
            struct mmv_args a;
            memset(&a, 0, sizeof a);
            a.cols = cols;
            a.x = x + (int64_t)t0 * cols;
            if (x64) a.x64 = x64 + (int64_t)t0 * cols;
            if (need_q) {
                a.xq.q = xq.q + (int64_t)t0 * cols;
                a.xq.d = xq.d + t0 * nb;
                a.xq.s = xq.s + t0 * nb;
                a.xq.sum = xq.sum + t0 * nb;
            }
            if (need_k) {
                a.xk.q = xk.q + (int64_t)t0 * cols;
                a.xk.d = xk.d + t0 * (cols / SHOAL_QK_K);
                a.xk.bs = xk.bs + t0 * (cols / 16);
            }
            for (int j = i; j < k; j++) {
                if (w[j]->type != type) continue;
                struct wlayout l;
                cuda_weight_layout(type, w[j]->rows, cols, &l);
                const int s = a.k++;
                a.w[s] = (const char *)w[j]->data;
                a.pitch[s] = l.pitch;
                a.d_off[s] = l.d_off;
                a.m_off[s] = l.m_off;
                a.rows[s] = w[j]->rows;
                a.y[s] = yd ? (void *)(yd + (int64_t)t0 * w[j]->rows) : (void *)(y[j] + (int64_t)t0 * w[j]->rows);
                a.first[s + 1] = a.first[s] + w[j]->rows;
            }
            const unsigned grid = grid_1d((size_t)a.first[a.k], MMV_WARPS);
            if (yd) launch_mmv<double>(type, a, nt, grid, c->stream);
            else launch_mmv<float>(type, a, nt, grid, c->stream);
            CU_LAUNCHED("matmul");
        }
        for (int j = i; j < k; j++)
            if (w[j]->type == type) done[j] = 1;
    }
    return SHOAL_OK;
}

/* ------------------------------------------------------- prompt batches */

/* Rows [r0, r0 + nr) of a weight as T (f16 or f64), row-major (nr, cols). */
template <typename T>
__global__ void k_dequant_rows(const char *__restrict__ w, int type, int64_t rows, int64_t cols,
                               size_t pitch, size_t d_off, size_t m_off, int64_t r0, int64_t nr,
                               T *__restrict__ out) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nr * cols) return;
    /* f64 callers get Q4_1's d * q alone: the minimums meet the blocks' sums of x
     * in a GEMM of their own, as the CPU adds m * xs */
    out[i] = (T)dequant_elem(w, type, cols, pitch, d_off, m_off, r0 + i / cols, i % cols, sizeof(T) != 8);
}

/* x (n, cols) as f16 or bf16 for the tensor cores */
template <typename T>
__global__ void k_convert_x(const float *__restrict__ x, size_t count, T *__restrict__ out) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = (T)x[i];
}

/* x (n, cols) as f64: the 8-bit values times their scale (exact) for quantized weights */
__global__ void k_x_f64(const float *__restrict__ x, const int8_t *__restrict__ q,
                        const float *__restrict__ d, int64_t cols, size_t count, double *__restrict__ out,
                        int bf16) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    if (q) out[i] = (double)d[i / SHOAL_QK] * (double)q[i]; /* cols % 32 == 0: blocks run on */
    else out[i] = (double)(bf16 ? __bfloat162float(__float2bfloat16_rn(x[i])) : x[i]); /* x_as */
}

/* f16 values (count) as f64 */
__global__ void k_half_f64(const __half *__restrict__ h, size_t count, double *__restrict__ out) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = (double)__half2float(h[i]);
}

/* The Q8_K form's x (count = n * cols) as f64, in two parts: dx's high 12 significant
 * bits times q, and the rest of dx times q: both exact. */
__global__ void k_xk_f64(const int8_t *__restrict__ q, const float *__restrict__ d, size_t count,
                         double *__restrict__ hi, double *__restrict__ lo) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= count) return;
    const float dx = d[i / SHOAL_QK_K]; /* cols % 256 == 0: super-blocks run on */
    const float h = __uint_as_float(__float_as_uint(dx) & 0xfffff000u);
    hi[i] = __dmul_rn((double)h, (double)q[i]);
    lo[i] = __dmul_rn(__dsub_rn((double)dx, (double)h), (double)q[i]);
}

/* The Q8_K form's sums of each group of mg values (16 or 32) times dx, as f64 in the two
 * parts of k_xk_f64: (n, cols / mg). */
__global__ void k_xs_k_f64(const float *__restrict__ d, const int16_t *__restrict__ bs, int64_t cols,
                           int n, int mg, double *__restrict__ hi, double *__restrict__ lo) {
    const int64_t ng = cols / mg, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= (int64_t)n * ng) return;
    const int64_t t = i / ng, grp = i % ng;
    const int per = mg / 16;
    int sum = 0;
    for (int e = 0; e < per; e++) sum += bs[t * (cols / 16) + grp * per + e];
    const float dx = d[t * (cols / SHOAL_QK_K) + grp * mg / SHOAL_QK_K];
    const float h = __uint_as_float(__float_as_uint(dx) & 0xfffff000u);
    hi[i] = __dmul_rn((double)h, (double)sum);
    lo[i] = __dmul_rn(__dsub_rn((double)dx, (double)h), (double)sum);
}

/* The mins of rows [r0, r0 + nr) of a kquant.h weight with mins, per group of mg values, as
 * f64 (nr, cols / mg): Q5_1's m; Q2_K's and Q4_K/Q5_K's dmin * m (an exact f32 product). */
__global__ void k_mins_f64(const char *__restrict__ w, int type, int64_t cols, size_t pitch, int64_t r0,
                           int64_t nr, int mg, double *__restrict__ out) {
    const int64_t ng = cols / mg, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= nr * ng) return;
    const int64_t r = r0 + i / ng, grp = i % ng;
    const int bv = kq_values(type), per = bv / mg, k = (int)(grp % per);
    const uint8_t *blk = (const uint8_t *)w + (size_t)r * pitch + (size_t)(grp / per) * (size_t)kq_bytes(type);
    const float dm = kq_f16(kq_m_bits(type, blk));
    float m = dm; /* Q5_1 */
    if (type == SHOAL_DTYPE_Q2_K) {
        m = __fmul_rn(dm, (float)(blk[k] >> 4));
    } else if (type == SHOAL_DTYPE_Q4_K || type == SHOAL_DTYPE_Q5_K) {
        int sc, mi;
        kq_k_scale_min(blk + 4, k, &sc, &mi);
        m = __fmul_rn(dm, (float)mi);
    }
    out[i] = (double)m;
}

/* f32 values (count) as f64 */
__global__ void k_f32_f64(const float *__restrict__ x, size_t count, double *__restrict__ out) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) out[i] = (double)x[i];
}

/*
 * y (n, rows) = x W^T for prompt batches on our own kernels (gemm.cu): each
 * output summed in one fixed order whatever the shape, so that a row of a
 * tensor-parallel slice gets the bits the whole weight gives it. F16 and BF16
 * weights meet x rounded to their type, quantized ones x in f16 (tensor
 * cores, f32 sums); f32 weights x as it is.
 */
static shoal_status gemm_f32(struct cuda_ctx *c, float *y, const struct shoal_weight *w,
                             const float *x, int n) {
    if (w->type == SHOAL_DTYPE_F32) return cuda_gemm(c, y, w, x, NULL, n);
    const size_t xcount = (size_t)n * (size_t)w->cols;
    struct gemm_layout gl;
    gemm_layout(w->type, w->cols, n, &gl);
    char *base;
    SHOAL_TRY(cuda_scratch(c, gl.bytes, (void **)&base));
    void *xh = base + gl.xh;
    if (w->type == SHOAL_DTYPE_BF16)
        k_convert_x<__nv_bfloat16><<<grid_1d(xcount, 256), 256, 0, c->stream>>>(x, xcount, (__nv_bfloat16 *)xh);
    else k_convert_x<__half><<<grid_1d(xcount, 256), 256, 0, c->stream>>>(x, xcount, (__half *)xh);
    CU_LAUNCHED("convert activations");
    return cuda_gemm(c, y, w, x, xh, n);
}

/*
 * The f64 variant: exact f64 operands, cublasDgemm (FP64 tensor cores on Hopper). Weights
 * are dequantized without their mins (d * sc * q, exact in f32); the mins meet the blocks'
 * sums of x in a product of their own, as the CPU adds m * xs (Q4_1, Q5_1) or subtracts
 * dmin * dx * msum (Q2_K, Q4_K, Q5_K). The super-block types' x (dx * q, 24 + 8 bits) is
 * cut in two parts (k_xk_f64) so that no product of the GEMMs rounds: a GEMM per part.
 */
static shoal_status gemm_f64(struct cuda_ctx *c, double *y, const struct shoal_weight *w,
                             const float *x, int n) {
    const int type = w->type;
    const int64_t rows = w->rows, cols = w->cols;
    struct wlayout l;
    cuda_weight_layout(type, rows, cols, &l);
    const size_t xcount = (size_t)n * cols;
    const int64_t nb = cols / SHOAL_QK;
    const int mg = min_group(type), ng = mg ? (int)(cols / mg) : 0;
    struct gemm_f64_layout gl;
    gemm_f64_layout(type, rows, cols, n, &gl);
    const int64_t tile = gl.tile;
    char *buf;
    SHOAL_TRY(cuda_scratch(c, gl.bytes, (void **)&buf));
    double *xd = (double *)(buf + gl.xd), *xd_lo = (double *)(buf + gl.xd_lo);
    double *xs = (double *)(buf + gl.xs), *xs_lo = (double *)(buf + gl.xs_lo); /* the blocks' sums, f64 */
    double *wt = (double *)(buf + gl.wt);
    if (gl.has_k) {
        struct xq8k xk;
        SHOAL_TRY(quantize_xk(c, x, cols, n, buf, &gl.xk, &xk));
        k_xk_f64<<<grid_1d(xcount, 256), 256, 0, c->stream>>>(xk.q, xk.d, xcount, xd, xd_lo);
        CU_LAUNCHED("activations to f64 (q8_k)");
        if (mg) {
            k_xs_k_f64<<<grid_1d((size_t)n * ng, 256), 256, 0, c->stream>>>(xk.d, xk.bs, cols, n, mg, xs, xs_lo);
            CU_LAUNCHED("block sums to f64 (q8_k)");
        }
    } else {
        struct xq8 xq = { 0 };
        if (gl.has_q) SHOAL_TRY(quantize_x(c, x, cols, n, buf, &gl.xq, &xq));
        k_x_f64<<<grid_1d(xcount, 256), 256, 0, c->stream>>>(x, xq.q, xq.d, cols, xcount, xd,
                                                              type == SHOAL_DTYPE_BF16);
        CU_LAUNCHED("activations to f64");
        if (mg) {
            k_f32_f64<<<grid_1d((size_t)n * nb, 256), 256, 0, c->stream>>>(xq.s, (size_t)n * nb, xs);
            CU_LAUNCHED("block sums to f64");
        }
    }
    const double one = 1.0, zero = 0.0, minus = -1.0;
    for (int64_t r0 = 0; r0 < rows; r0 += tile) {
        const int64_t nr = rows - r0 < tile ? rows - r0 : tile;
        k_dequant_rows<double><<<grid_1d((size_t)(nr * cols), 256), 256, 0, c->stream>>>(
            (const char *)w->data, type, rows, cols, l.pitch, l.d_off, l.m_off, r0, nr, wt);
        CU_LAUNCHED("dequantize a tile");
        CUBLAS_TRY(cublasDgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, (int)cols, &one, wt,
                               (int)cols, xd, (int)cols, &zero, y + r0, (int)rows));
        if (gl.has_k)
            CUBLAS_TRY(cublasDgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, (int)cols, &one, wt,
                                   (int)cols, xd_lo, (int)cols, &one, y + r0, (int)rows));
        if (!mg) continue;
        /* the mins (nr, ng) times the blocks' sums xs (n, ng)^T: + for Q4_1 and Q5_1, - for the
         * k-quants (their second part too) */
        if (type == SHOAL_DTYPE_Q4_1) {
            const __half *m = (const __half *)((const char *)w->data + l.m_off) + r0 * nb;
            k_half_f64<<<grid_1d((size_t)(nr * nb), 256), 256, 0, c->stream>>>(m, (size_t)(nr * nb), wt);
            CU_LAUNCHED("minimums to f64");
        } else {
            k_mins_f64<<<grid_1d((size_t)nr * ng, 256), 256, 0, c->stream>>>(
                (const char *)w->data, type, cols, l.pitch, r0, nr, mg, wt);
            CU_LAUNCHED("minimums to f64");
        }
        const double *alpha = gl.has_k ? &minus : &one;
        CUBLAS_TRY(cublasDgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, ng, alpha, wt, ng, xs, ng,
                               &one, y + r0, (int)rows));
        if (gl.has_k)
            CUBLAS_TRY(cublasDgemm(c->cublas, CUBLAS_OP_T, CUBLAS_OP_N, (int)nr, n, ng, alpha, wt, ng, xs_lo,
                                   ng, &one, y + r0, (int)rows));
    }
    return SHOAL_OK;
}

shoal_status cuda_matmul(struct cuda_ctx *c, int k, float *const *y, double *yd,
                         const struct shoal_weight *const *w, const float *x, int n) {
    for (int i = 0; i < k; i++) {
        struct wlayout l;
        if (!cuda_weight_layout(w[i]->type, w[i]->rows, w[i]->cols, &l) || !w[i]->data)
            return shoal_errorf(SHOAL_UNSUPPORTED, "the CUDA backend has no matmul for this %s "
                                "weight (%lld x %lld)", shoal_dtype_name(w[i]->type),
                                (long long)w[i]->rows, (long long)w[i]->cols);
        if ((int64_t)(int)w[i]->rows != w[i]->rows || (int64_t)(int)w[i]->cols != w[i]->cols)
            return shoal_errorf(SHOAL_UNSUPPORTED, "a %lld x %lld weight is too large for cuBLAS",
                                (long long)w[i]->rows, (long long)w[i]->cols);
    }
    if (n <= 0) return SHOAL_OK;
    if (n <= MMV_MAX_TOKENS) return mmv(c, k, y, yd, w, x, n);
    for (int i = 0; i < k; i++) {
        if (yd) SHOAL_TRY(gemm_f64(c, yd, w[i], x, n));
        else SHOAL_TRY(gemm_f32(c, y[i], w[i], x, n));
    }
    return SHOAL_OK;
}
