/*
 * gemm.cu — y (n, rows) = x (n, cols) W^T for prompt batches (more than a
 * decode kernel's 8 tokens) on kernels of our own, in place of cuBLAS, for
 * f32 outputs. The f64 variant (matmul_f64) and decoding are matmul.cu's.
 *
 * The order guarantee: every output element y[t][r] is summed by exactly one
 * warp (F32: one thread), starting from zero, over k = 0, 16, 32, ... in
 * ascending order, with the same instructions (the same tensor-core MMA shape,
 * or __fmul_rn then __fadd_rn) for every shape: one tile configuration for
 * all rows, tokens and cols, no split-K, and the parts of a tile past the
 * matrix filled with zeros. So a row's result does not depend on how many
 * rows the call holds or where the row sits in its tile (a tensor-parallel
 * slice of a weight gives the bits the whole weight gives), nor a token's on
 * the other tokens of the batch.
 *
 * F16, BF16 and the quantized types run on tensor cores (WMMA m16n16k16, f32
 * accumulators): the activations come already rounded to f16 (bf16 for BF16
 * weights), and quantized weights (every quantized type, the GGUF blocks of
 * kquant.h's read in place) are dequantized to f16 as they are read,
 * to the value matmul.cu's k_dequant_rows<__half> gives (dequant_elem in f32,
 * then rounded to nearest). F32 weights run in f32 on the SIMT cores, one
 * product rounded and then added at a time. What this does not do: match the
 * CPU's order of sums (results agree with it to rounding, as cuBLAS's did),
 * or run below sm_80 (bf16 WMMA; the kernels trap there).
 */
#include <mma.h>
#include <stdint.h>

#include "common.cuh"

/* ------------------------------------------------------------ tile sizes */

/*
 * Tensor cores: a block computes TC_BM rows of W x TC_BN tokens, walking K
 * TC_BK at a time (one quant block) through two shared-memory stages; its
 * warps tile it TC_WARPS_M x TC_WARPS_N, each warp owning TC_FM x TC_FN
 * fragments of 16 x 16. Shared rows are padded by TC_PAD values (16 bytes)
 * against bank conflicts. These are the knobs a profiler run would turn; the
 * order guarantee holds for any values that pass the static_asserts.
 */
constexpr int TC_BM = 128, TC_BN = 64, TC_BK = 32;
constexpr int TC_WARPS_M = 4, TC_WARPS_N = 2;
constexpr int TC_PAD = 8;
/* F32 on the SIMT cores: F_BM rows x F_BN tokens a block, F_BK of K at a
 * time, each thread F_TM rows x F_TN tokens (strided by the thread grid). */
constexpr int F_BM = 64, F_BN = 64, F_BK = 16, F_THREADS = 256;

constexpr int TC_THREADS = 32 * TC_WARPS_M * TC_WARPS_N;
constexpr int TC_FM = TC_BM / TC_WARPS_M / 16, TC_FN = TC_BN / TC_WARPS_N / 16;
constexpr int TC_LDA = TC_BK + TC_PAD;     /* 16-bit values per shared row of W or x */
constexpr int TC_LDC = TC_BM + 4;          /* floats per shared token of the output tile */
constexpr int TC_CH = TC_BK / 8;           /* 16-byte chunks (8 values) per row of a K tile */
constexpr int TC_A_PER = TC_BM * TC_CH / TC_THREADS; /* chunks of W each thread moves */
constexpr int TC_B_PER = TC_BN * TC_CH / TC_THREADS; /* chunks of x */
constexpr int TC_A_STAGE = TC_BM * TC_LDA, TC_B_STAGE = TC_BN * TC_LDA; /* 16-bit values */
constexpr int TC_AB_BYTES = 2 * (TC_A_STAGE + TC_B_STAGE) * 2;
constexpr int TC_C_BYTES = TC_BN * TC_LDC * 4;
constexpr int TC_SMEM = TC_AB_BYTES > TC_C_BYTES ? TC_AB_BYTES : TC_C_BYTES;

static_assert(TC_BM % (16 * TC_WARPS_M) == 0 && TC_BN % (16 * TC_WARPS_N) == 0, "warp tiles of 16");
static_assert(TC_BK == SHOAL_QK, "a K tile is one quant block (a row's scale per tile)");
static_assert(TC_BM * TC_CH % TC_THREADS == 0 && TC_BN * TC_CH % TC_THREADS == 0, "even loads");
static_assert(TC_LDA % 8 == 0 && TC_LDC % 4 == 0, "WMMA leading dimensions");
/* WMMA pointers must be 32-byte aligned: fragments start at multiples of 16 rows and 16 values */
static_assert((16 * TC_LDA * 2) % 32 == 0 && (TC_A_STAGE * 2) % 32 == 0 && (TC_B_STAGE * 2) % 32 == 0,
              "fragment alignment (16-bit tiles)");
static_assert((16 * TC_LDC * 4) % 32 == 0, "fragment alignment (output tile)");
static_assert(TC_SMEM <= 48 * 1024, "static shared memory");
static_assert(F_THREADS == 256 && F_BM % 16 == 0 && F_BN % 16 == 0, "a 16 x 16 thread grid");
constexpr int F_TM = F_BM / 16, F_TN = F_BN / 16;

/* ------------------------------------------------------------- arguments */

struct gemm_args {
    const char *w;          /* the prepared weight (struct wlayout) */
    size_t pitch, d_off, m_off;
    int64_t rows, cols;
    int n;
    const void *xh;         /* (n, cols) f16 or bf16: tensor cores */
    const float *x;         /* (n, cols) f32: the F32 kernel */
    float *y;               /* (n, rows) */
    int64_t tiles_n;        /* token tiles: block b is token tile b % tiles_n, row tile b / tiles_n */
    int vec_x;              /* rows of xh may be read 16 bytes at a time */
};

template <int TYPE> struct tc_in { typedef __half T; };
template <> struct tc_in<SHOAL_DTYPE_BF16> { typedef __nv_bfloat16 T; };

/* ------------------------------------------------- tensor-core kernel */

static __device__ __forceinline__ uint4 pack8(const uint16_t *h) {
    return make_uint4((uint32_t)h[0] | (uint32_t)h[1] << 16, (uint32_t)h[2] | (uint32_t)h[3] << 16,
                      (uint32_t)h[4] | (uint32_t)h[5] << 16, (uint32_t)h[6] | (uint32_t)h[7] << 16);
}

static __device__ __forceinline__ uint16_t half_bits(float v) {
    return __half_as_ushort(__float2half_rn(v));
}

/*
 * The W chunks of this thread for the K tile at k0, as read (no arithmetic
 * yet, so that the loads overlap the MMAs): chunk c is row c / TC_CH, values
 * [8 (c % TC_CH), +8) of the tile. Float types: the 8 values' bits (zeros
 * past cols or rows). Quantized: .x .y the 8 bytes that hold them (int8s, or
 * nibbles), .z the block's scale, .w its minimum (Q4_1), as f16 bits; the
 * types of kquant.h: the 8 values already dequantized, as f16 bits (their
 * scales are spread over the block: decoded where the bytes are read).
 */
template <int TYPE>
static __device__ __forceinline__ void load_w(const gemm_args &a, int64_t r0, int64_t k0, int tid,
                                              uint4 *raw) {
#pragma unroll
    for (int i = 0; i < TC_A_PER; i++) {
        const int c = tid + i * TC_THREADS, part = c % TC_CH;
        const int64_t r = r0 + c / TC_CH, k = k0 + part * 8;
        raw[i] = make_uint4(0, 0, 0, 0);
        if (r >= a.rows) continue;
        const char *row = a.w + (size_t)r * a.pitch;
        if (TYPE == SHOAL_DTYPE_F16 || TYPE == SHOAL_DTYPE_BF16) {
            /* rows are at a 16-byte pitch from a 16-byte aligned start: whole chunks load as one */
            if (k + 8 <= a.cols) {
                raw[i] = __ldg((const uint4 *)(row + k * 2));
            } else {
                uint16_t h[8];
#pragma unroll
                for (int e = 0; e < 8; e++) h[e] = k + e < a.cols ? ((const uint16_t *)row)[k + e] : 0;
                raw[i] = pack8(h);
            }
        } else if (kq_type(TYPE)) {
            /* GGUF blocks in place (kquant.h): the 8 values dequantized here, as
             * dequant_elem(..., min = 1) then rounded to f16, as k_dequant_rows<__half>;
             * store_w stores them as they are (cols % 32 == 0: never past the row) */
            const int bv = kq_values(TYPE);
            const uint8_t *blk = (const uint8_t *)row + (size_t)(k / bv) * (size_t)kq_bytes(TYPE);
            const int v0 = (int)(k % bv);
            uint16_t h[8];
#pragma unroll
            for (int e = 0; e < 8; e++) h[e] = half_bits(kq_dequant(TYPE, blk, v0 + e, 1));
            raw[i] = pack8(h);
        } else {
            /* cols % 32 == 0: the tile is block k0 / 32 of the row, whole */
            const int64_t nb = a.cols / SHOAL_QK, b = k0 / SHOAL_QK;
            const uint2 q = TYPE == SHOAL_DTYPE_Q8_0
                                ? __ldg((const uint2 *)(row + k))                         /* int8s */
                                : __ldg((const uint2 *)(row + b * 16 + (part & 1) * 8)); /* nibbles */
            raw[i].x = q.x;
            raw[i].y = q.y;
            raw[i].z = ((const uint16_t *)(a.w + a.d_off))[r * nb + b];
            if (TYPE == SHOAL_DTYPE_Q4_1) raw[i].w = ((const uint16_t *)(a.w + a.m_off))[r * nb + b];
        }
    }
}

/* This thread's W chunks into a shared stage (TC_BM x TC_LDA), quantized ones dequantized. */
template <int TYPE>
static __device__ __forceinline__ void store_w(const gemm_args &a, int64_t r0, int tid, const uint4 *raw,
                                               uint16_t *as) {
#pragma unroll
    for (int i = 0; i < TC_A_PER; i++) {
        const int c = tid + i * TC_THREADS, row = c / TC_CH, part = c % TC_CH;
        uint4 v = raw[i];
        if (TYPE == SHOAL_DTYPE_Q8_0 || TYPE == SHOAL_DTYPE_Q4_0 || TYPE == SHOAL_DTYPE_Q4_1) {
            uint16_t h[8] = { 0, 0, 0, 0, 0, 0, 0, 0 };
            if (r0 + row < a.rows) {
                /* as dequant_elem(..., min = 1), then rounded to f16 as k_dequant_rows<__half> */
                const float d = __half2float(__ushort_as_half((unsigned short)(v.z & 0xffff)));
                const float m = __half2float(__ushort_as_half((unsigned short)(v.w & 0xffff)));
#pragma unroll
                for (int e = 0; e < 8; e++) {
                    const uint32_t byte = ((e < 4 ? v.x : v.y) >> (8 * (e & 3))) & 0xff; /* .x then .y */
                    if (TYPE == SHOAL_DTYPE_Q8_0) {
                        h[e] = half_bits(__fmul_rn(d, (float)(int8_t)byte));
                    } else {
                        /* values 0..15 are the low nibbles of the block's 16 bytes, 16..31 the high */
                        const int q = part < 2 ? (int)(byte & 15) : (int)(byte >> 4);
                        if (TYPE == SHOAL_DTYPE_Q4_0) h[e] = half_bits(__fmul_rn(d, (float)(q - 8)));
                        else h[e] = half_bits(__fadd_rn(__fmul_rn(d, (float)q), m));
                    }
                }
            }
            v = pack8(h);
        }
        *(uint4 *)(as + row * TC_LDA + part * 8) = v;
    }
}

/* This thread's x chunks for the K tile at k0 (bits of f16 or bf16; zeros past n or cols). */
static __device__ __forceinline__ void load_x(const gemm_args &a, int64_t t0, int64_t k0, int tid,
                                              uint4 *raw) {
    const uint16_t *xh = (const uint16_t *)a.xh;
#pragma unroll
    for (int i = 0; i < TC_B_PER; i++) {
        const int c = tid + i * TC_THREADS;
        const int64_t t = t0 + c / TC_CH, k = k0 + (c % TC_CH) * 8;
        raw[i] = make_uint4(0, 0, 0, 0);
        if (t >= a.n) continue;
        const uint16_t *xt = xh + t * a.cols;
        if (a.vec_x && k + 8 <= a.cols) {
            raw[i] = __ldg((const uint4 *)(xt + k));
        } else {
            uint16_t h[8];
#pragma unroll
            for (int e = 0; e < 8; e++) h[e] = k + e < a.cols ? xt[k + e] : 0;
            raw[i] = pack8(h);
        }
    }
}

static __device__ __forceinline__ void store_x(int tid, const uint4 *raw, uint16_t *bs) {
#pragma unroll
    for (int i = 0; i < TC_B_PER; i++) {
        const int c = tid + i * TC_THREADS;
        *(uint4 *)(bs + (c / TC_CH) * TC_LDA + (c % TC_CH) * 8) = raw[i];
    }
}

/*
 * One block: rows [r0, r0 + TC_BM) x tokens [t0, t0 + TC_BN). Shared memory:
 * two stages of W (TC_BM rows x TC_BK, row-major: WMMA's matrix_a, row_major)
 * and of x (TC_BN tokens x TC_BK, token-major: matrix_b (K x tokens),
 * col_major), then, once the K loop is done, the output tile over the same
 * bytes, token-major (TC_BN x TC_LDC: the accumulators stored col_major).
 * Warp (wm, wn) owns rows wm * TC_FM * 16 .. and tokens wn * TC_FN * 16 ..
 */
template <int TYPE>
__global__ void __launch_bounds__(TC_THREADS) k_gemm_tc(const gemm_args a) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
    __trap(); /* bf16 WMMA and this tile need sm_80 */
#else
    using namespace nvcuda;
    typedef typename tc_in<TYPE>::T T;
    __shared__ __align__(128) unsigned char smem[TC_SMEM];
    uint16_t *as = (uint16_t *)smem;                  /* [2][TC_BM][TC_LDA] */
    uint16_t *bs = as + 2 * TC_A_STAGE;               /* [2][TC_BN][TC_LDA] */
    float *cs = (float *)smem;                        /* [TC_BN][TC_LDC], after the K loop */

    const int tid = threadIdx.x, warp = tid / 32;
    const int wm = warp % TC_WARPS_M, wn = warp / TC_WARPS_M;
    const int64_t t0 = (int64_t)(blockIdx.x % a.tiles_n) * TC_BN;
    const int64_t r0 = (int64_t)(blockIdx.x / a.tiles_n) * TC_BM;
    const int64_t nk = (a.cols + TC_BK - 1) / TC_BK;

    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[TC_FM][TC_FN];
#pragma unroll
    for (int i = 0; i < TC_FM; i++)
#pragma unroll
        for (int j = 0; j < TC_FN; j++) wmma::fill_fragment(acc[i][j], 0.0f);

    uint4 ra[TC_A_PER], rb[TC_B_PER];
    load_w<TYPE>(a, r0, 0, tid, ra);
    load_x(a, t0, 0, tid, rb);
    store_w<TYPE>(a, r0, tid, ra, as);
    store_x(tid, rb, bs);
    __syncthreads();

    for (int64_t kt = 0; kt < nk; kt++) {
        const int cur = (int)(kt & 1);
        /* the next tile's loads go out before this tile's MMAs, and land in the other stage after */
        if (kt + 1 < nk) {
            load_w<TYPE>(a, r0, (kt + 1) * TC_BK, tid, ra);
            load_x(a, t0, (kt + 1) * TC_BK, tid, rb);
        }
        const T *at = (const T *)(as + cur * TC_A_STAGE) + wm * TC_FM * 16 * TC_LDA;
        const T *bt = (const T *)(bs + cur * TC_B_STAGE) + wn * TC_FN * 16 * TC_LDA;
#pragma unroll
        for (int kk = 0; kk < TC_BK; kk += 16) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa[TC_FM];
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> fb[TC_FN];
#pragma unroll
            for (int i = 0; i < TC_FM; i++)
                wmma::load_matrix_sync(fa[i], at + i * 16 * TC_LDA + kk, TC_LDA);
#pragma unroll
            for (int j = 0; j < TC_FN; j++)
                wmma::load_matrix_sync(fb[j], bt + j * 16 * TC_LDA + kk, TC_LDA);
#pragma unroll
            for (int i = 0; i < TC_FM; i++)
#pragma unroll
                for (int j = 0; j < TC_FN; j++) wmma::mma_sync(acc[i][j], fa[i], fb[j], acc[i][j]);
        }
        if (kt + 1 < nk) {
            store_w<TYPE>(a, r0, tid, ra, as + (cur ^ 1) * TC_A_STAGE);
            store_x(tid, rb, bs + (cur ^ 1) * TC_B_STAGE);
        }
        __syncthreads(); /* the other stage is written; this one's reads are done */
    }

    /* the accumulators, element (row m, token t) at cs[t * TC_LDC + m], then out to y by rows */
#pragma unroll
    for (int i = 0; i < TC_FM; i++)
#pragma unroll
        for (int j = 0; j < TC_FN; j++)
            wmma::store_matrix_sync(cs + (wn * TC_FN + j) * 16 * TC_LDC + (wm * TC_FM + i) * 16,
                                    acc[i][j], TC_LDC, wmma::mem_col_major);
    __syncthreads();
    for (int e = tid; e < TC_BN * TC_BM; e += TC_THREADS) {
        const int t = e / TC_BM, m = e % TC_BM;
        if (t0 + t < a.n && r0 + m < a.rows) a.y[(t0 + t) * a.rows + r0 + m] = cs[t * TC_LDC + m];
    }
#endif
}

/* ------------------------------------------------------------ F32 kernel */

/*
 * F32 weights (small models): W and x tiles through shared memory, K-major
 * (ws[k][row], xs[k][token]); thread (tx, ty) of a 16 x 16 grid sums rows
 * tx + 16 i and tokens ty + 16 j, a product rounded then added per k, k
 * ascending.
 */
__global__ void __launch_bounds__(F_THREADS) k_gemm_f32(const gemm_args a) {
    __shared__ float ws[F_BK][F_BM + 1], xs[F_BK][F_BN + 1];
    const int tid = threadIdx.x, tx = tid % 16, ty = tid / 16;
    const int64_t t0 = (int64_t)(blockIdx.x % a.tiles_n) * F_BN;
    const int64_t r0 = (int64_t)(blockIdx.x / a.tiles_n) * F_BM;
    float acc[F_TM][F_TN];
#pragma unroll
    for (int i = 0; i < F_TM; i++)
#pragma unroll
        for (int j = 0; j < F_TN; j++) acc[i][j] = 0.0f;

    for (int64_t k0 = 0; k0 < a.cols; k0 += F_BK) {
        for (int e = tid; e < F_BM * F_BK; e += F_THREADS) {
            const int row = e / F_BK, kk = e % F_BK;
            const int64_t r = r0 + row, k = k0 + kk;
            const float *wr = (const float *)(a.w + (size_t)r * a.pitch);
            ws[kk][row] = r < a.rows && k < a.cols ? wr[k] : 0.0f;
        }
        for (int e = tid; e < F_BN * F_BK; e += F_THREADS) {
            const int tok = e / F_BK, kk = e % F_BK;
            const int64_t t = t0 + tok, k = k0 + kk;
            xs[kk][tok] = t < a.n && k < a.cols ? a.x[t * a.cols + k] : 0.0f;
        }
        __syncthreads();
#pragma unroll
        for (int kk = 0; kk < F_BK; kk++) {
            float wv[F_TM], xv[F_TN];
#pragma unroll
            for (int i = 0; i < F_TM; i++) wv[i] = ws[kk][tx + 16 * i];
#pragma unroll
            for (int j = 0; j < F_TN; j++) xv[j] = xs[kk][ty + 16 * j];
#pragma unroll
            for (int i = 0; i < F_TM; i++)
#pragma unroll
                for (int j = 0; j < F_TN; j++) acc[i][j] = __fadd_rn(acc[i][j], __fmul_rn(wv[i], xv[j]));
        }
        __syncthreads();
    }
#pragma unroll
    for (int j = 0; j < F_TN; j++) {
        const int64_t t = t0 + ty + 16 * j;
#pragma unroll
        for (int i = 0; i < F_TM; i++) {
            const int64_t r = r0 + tx + 16 * i;
            if (t < a.n && r < a.rows) a.y[t * a.rows + r] = acc[i][j];
        }
    }
}

/* ------------------------------------------------------------------ entry */

shoal_status cuda_gemm(struct cuda_ctx *c, float *y, const struct shoal_weight *w, const float *x,
                       const void *xh, int n) {
    struct wlayout l;
    const int type = w->type;
    if (!cuda_weight_layout(type, w->rows, w->cols, &l) || !w->data)
        return shoal_errorf(SHOAL_UNSUPPORTED, "cuda_gemm: no kernel for this %s weight (%lld x %lld)",
                            shoal_dtype_name(type), (long long)w->rows, (long long)w->cols);
    if (n <= 0) return SHOAL_OK;
    if ((uintptr_t)w->data % 16)
        return shoal_errorf(SHOAL_INVALID, "cuda_gemm: the %s weight (%lld x %lld) is not at a "
                            "16-byte boundary", shoal_dtype_name(type), (long long)w->rows,
                            (long long)w->cols);
    const int f32 = type == SHOAL_DTYPE_F32;
    if (f32 ? !x : !xh)
        return shoal_errorf(SHOAL_INVALID, "cuda_gemm: a %s weight (%lld x %lld) with n = %d needs "
                            "its activations %s", shoal_dtype_name(type), (long long)w->rows,
                            (long long)w->cols, n, f32 ? "in f32 (x)" : "rounded to 16 bits (xh)");
    const int64_t bm = f32 ? F_BM : TC_BM, bn = f32 ? F_BN : TC_BN;
    const int64_t tiles_m = (w->rows + bm - 1) / bm, tiles_n = (n + bn - 1) / bn;
    if (tiles_m > 0x7fffffff / tiles_n)
        return shoal_errorf(SHOAL_UNSUPPORTED, "cuda_gemm: %lld x %lld weight times %d tokens is "
                            "more tiles than one launch holds", (long long)w->rows,
                            (long long)w->cols, n);
    struct gemm_args a;
    a.w = (const char *)w->data;
    a.pitch = l.pitch;
    a.d_off = l.d_off;
    a.m_off = l.m_off;
    a.rows = w->rows;
    a.cols = w->cols;
    a.n = n;
    a.xh = xh;
    a.x = x;
    a.y = y;
    a.tiles_n = tiles_n;
    a.vec_x = w->cols % 8 == 0 && (uintptr_t)xh % 16 == 0;
    /* one block per tile, token tiles of one row tile side by side: they share its W in L2 */
    const unsigned grid = (unsigned)(tiles_m * tiles_n);
    switch (type) {
    case SHOAL_DTYPE_F32: k_gemm_f32<<<grid, F_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_F16: k_gemm_tc<SHOAL_DTYPE_F16><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_BF16: k_gemm_tc<SHOAL_DTYPE_BF16><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q8_0: k_gemm_tc<SHOAL_DTYPE_Q8_0><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q4_0: k_gemm_tc<SHOAL_DTYPE_Q4_0><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q4_1: k_gemm_tc<SHOAL_DTYPE_Q4_1><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q5_0: k_gemm_tc<SHOAL_DTYPE_Q5_0><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q5_1: k_gemm_tc<SHOAL_DTYPE_Q5_1><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_IQ4_NL: k_gemm_tc<SHOAL_DTYPE_IQ4_NL><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q2_K: k_gemm_tc<SHOAL_DTYPE_Q2_K><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q3_K: k_gemm_tc<SHOAL_DTYPE_Q3_K><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q4_K: k_gemm_tc<SHOAL_DTYPE_Q4_K><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q5_K: k_gemm_tc<SHOAL_DTYPE_Q5_K><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_Q6_K: k_gemm_tc<SHOAL_DTYPE_Q6_K><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    case SHOAL_DTYPE_IQ4_XS: k_gemm_tc<SHOAL_DTYPE_IQ4_XS><<<grid, TC_THREADS, 0, c->stream>>>(a); break;
    default:
        return shoal_errorf(SHOAL_UNSUPPORTED, "cuda_gemm: no kernel for %s weights (%lld x %lld)",
                            shoal_dtype_name(type), (long long)w->rows, (long long)w->cols);
    }
    CU_LAUNCHED("gemm");
    return SHOAL_OK;
}
