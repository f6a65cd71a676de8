/*
 * common.cuh — inside cuda/ only: the backend's context, the error
 * translation every CUDA and cuBLAS call goes through, the device layout of
 * prepared weights, and the launchers each .cu file provides to the others.
 *
 * Arithmetic follows the CPU reference (cpu/kernels_scalar.c) where it can be
 * the same: the library is built with --fmad=false so that no multiply and
 * add fuse behind our back, and elementwise ops spell their rounding out.
 */
#ifndef SHOAL_CUDA_COMMON_CUH
#define SHOAL_CUDA_COMMON_CUH

#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <stdint.h>

extern "C" {
#include "../runtime/backend_impl.h"
#include "cuda.h"
#include "scratch.h"
}
#include "kquant.h"

/* ---------------------------------------------------------------- errors */

struct cuda_ctx;
/* A failed CUDA call as a shoal error naming the call, where, the rank and the device. */
shoal_status cuda_fail(cudaError_t e, const char *call, const char *file, int line,
                       const struct cuda_ctx *c);
shoal_status cublas_fail(cublasStatus_t e, const char *call, const char *file, int line,
                         const struct cuda_ctx *c);

/* For functions of a context c: returns the translated error. */
#define CU_TRY(call)                                                                       \
    do {                                                                                   \
        cudaError_t cu_e_ = (call);                                                        \
        if (cu_e_ != cudaSuccess) return cuda_fail(cu_e_, #call, __FILE__, __LINE__, c); \
    } while (0)
#define CUBLAS_TRY(call)                                                                   \
    do {                                                                                   \
        cublasStatus_t cb_e_ = (call);                                                     \
        if (cb_e_ != CUBLAS_STATUS_SUCCESS)                                                \
            return cublas_fail(cb_e_, #call, __FILE__, __LINE__, c);               \
    } while (0)
/* After a kernel launch: a bad configuration shows here, a fault at the next sync. */
#define CU_LAUNCHED(what) CU_TRY(cudaGetLastError())

/* --------------------------------------------------------------- context */

/* The batch's arrays on the device (see batch_on_device). */
struct dev_batch {
    const int32_t *token, *pos, *seq, *slot, *table; /* device */
    int n_tokens, n_seq, max_blocks, block_size;
};

/* Spans of a stream timed by pairs of events, added up once done (for offload's -v). */
struct timed_ring {
    cudaEvent_t start[256], end[256];
    uint64_t made, timed; /* spans recorded; of them, added up */
    double seconds;
};

struct cuda_ctx {
    int device;
    int rank;                 /* for messages; -1 when not told */
    int n_sm;                 /* streaming multiprocessors, for sizing grids */
    cudaStream_t stream;
    cublasHandle_t cublas;
    void *cublas_ws;          /* cuBLAS's workspace, ours (counted), CUBLAS_WORKSPACE_BYTES */
    /* the handle around this context: every device allocation goes through its count
     * (dev_alloc), so that the budget and the peak see scratch and tables too */
    struct shoal_backend *self;
    size_t free_at_start;     /* the device's free memory when the context was made */
    /* scratch for one op at a time (stream order keeps ops apart): reserved for a
     * step's shape, else grown on demand; carved by the layouts of scratch.h */
    void *scratch;
    size_t scratch_cap;
    /* the last batch uploaded: host copy (to recognise it), pinned staging, device copy */
    int32_t *batch_host, *batch_pinned, *batch_dev;
    size_t batch_cap;         /* int32 values each of the three holds */
    size_t batch_len;         /* values of the last batch */
    int batch_hdr[4];         /* n_tokens, n_seq, max_blocks, block_size of the last batch */
    cudaEvent_t batch_copied; /* the pinned staging may be rewritten once it has fired */
    struct dev_batch bd;
    /* rope: per rotated pair base^(-2i/rope_dim) and the divisor (1 without factors),
     * made on the host (pinned) and copied on the stream; known by its values */
    double *rope_tab;         /* device (2 * ROPE_TAB_MAX) */
    double *rope_host;        /* pinned (2 * ROPE_TAB_MAX) */
    float rope_key_base;
    int rope_key_dim, rope_key_has_factors;
    float rope_key_factors[ROPE_TAB_MAX];
    /* recorded steps (shoal_backend_graph_begin): a key seen once is recorded the
     * second time and replayed after; a key whose recording failed runs as it comes */
    int graphs_on, capturing, capture_slot;
    struct {
        uint64_t key;
        int state; /* 0 free, 1 seen once, 2 recorded, -1 do not record */
        cudaGraphExec_t exec;
        uint64_t used;
    } graphs[8];
    uint64_t graph_clock;
    /* offload's copies: a stream of their own, after a mark of the compute stream */
    cudaStream_t copy;
    cudaEvent_t compute_mark, fetched[256];
    uint64_t n_fetches;
    struct timed_ring copies, stalls; /* each copy; the compute stream around each wait */
};

/* Forgets every recording: the buffers they point at are about to change. */
void cuda_graphs_reset(struct cuda_ctx *c);

/* Steps of up to this many tokens are recorded as CUDA graphs (the decode kernels' limit). */
#define CUDA_GRAPH_MAX_TOKENS 8

/* Scratch of at least bytes (contents not kept), at a 256-byte boundary: carve it with
 * the layouts of scratch.h. */
shoal_status cuda_scratch(struct cuda_ctx *c, size_t bytes, void **out);
/* Device memory through the handle's count (and budget); dev_free accepts NULL. */
shoal_status dev_alloc(struct cuda_ctx *c, size_t bytes, void **out);
void dev_free(struct cuda_ctx *c, void *p);
/* The batch on the device (uploaded once per distinct batch). */
shoal_status cuda_batch(struct cuda_ctx *c, const struct shoal_batch *b, const struct dev_batch **out);

/* ------------------------------------------------------- weight layout */

/*
 * A prepared weight on the device. Float types keep their values with rows
 * padded to a 16-byte pitch. Q8_0, Q4_0 and Q4_1 are split into planes, each
 * at a 256-byte boundary: the values (Q8_0: int8, cols per row; Q4_*: the 16
 * nibble bytes of each block as stored, cols/2 per row), then the f16 scales
 * (rows x blocks), then for Q4_1 the f16 minimums. The types of kquant.h
 * (Q5_0, Q5_1, IQ4_NL, the k-quants, IQ4_XS) keep their GGUF blocks as
 * stored, rows padded to a 16-byte pitch as the float types' are: their
 * blocks (18 to 210 bytes) do not split into 16-byte pieces, and their
 * scales are spread over the block, so the kernels read them in place.
 */
struct wlayout {
    size_t pitch;           /* bytes from one row of values to the next */
    size_t d_off, m_off;    /* where the scale and minimum planes start (quantized) */
    size_t bytes;
};
int cuda_weight_layout(int type, int64_t rows, int64_t cols, struct wlayout *l); /* 0: unsupported */

/* --------------------------------------------------- what each file has */

/* matmul.cu */
shoal_status cuda_weight_pack_host(int type, int64_t rows, int64_t cols, const void *src, void *dst);
shoal_status cuda_weight_upload(struct cuda_ctx *c, struct shoal_weight *w, const void *host, void *dst);
shoal_status cuda_matmul(struct cuda_ctx *c, int k, float *const *y, double *yd,
                         const struct shoal_weight *const *w, const float *x, int n);
/* gemm.cu: y (n, rows) = x (n, cols) W^T on our own kernels, for prompt batches: every
 * output summed by one warp, over k ascending, with the same instructions whatever rows
 * and n are, so a row's (and a token's) result does not depend on the rest of the call.
 * F16, BF16 and the quantized types on tensor cores (xh: x already rounded to f16, or to
 * bf16 for BF16 weights, (n, cols) row-major; quantized weights dequantized to f16 as
 * they are read), F32 in f32 on the SIMT cores (xh unused: it reads x). */
shoal_status cuda_gemm(struct cuda_ctx *c, float *y, const struct shoal_weight *w,
                       const float *x, const void *xh, int n);
/* ops.cu */
shoal_status cuda_embed(struct cuda_ctx *c, float *y, const struct shoal_weight *t,
                        const struct shoal_batch *b);
shoal_status cuda_rmsnorm(struct cuda_ctx *c, float *y, const float *x, const float *w, int n,
                          int dim, float eps);
shoal_status cuda_rope(struct cuda_ctx *c, float *x, int n_heads, int head_dim,
                       const struct shoal_rope *r, const struct shoal_batch *b);
shoal_status cuda_kv_store(struct cuda_ctx *c, const struct shoal_kv_desc *d, void *kc, void *vc,
                           const float *k, const float *v, const struct shoal_batch *b);
shoal_status cuda_attention(struct cuda_ctx *c, float *out, const float *q, int n_heads,
                            const struct shoal_kv_desc *d, const void *kc, const void *vc,
                            const struct shoal_batch *b, float scale, int window);
shoal_status cuda_silu_mul(struct cuda_ctx *c, float *g, const float *u, size_t n);
shoal_status cuda_gelu_mul(struct cuda_ctx *c, float *g, const float *u, size_t n);
shoal_status cuda_scale(struct cuda_ctx *c, float *y, size_t n, float s);
shoal_status cuda_round_f64(struct cuda_ctx *c, float *y, const double *x, size_t n);
shoal_status cuda_add(struct cuda_ctx *c, float *y, const float *x, size_t n);
shoal_status cuda_add_f64(struct cuda_ctx *c, float *y, const double *x, size_t n);
shoal_status cuda_add_bias(struct cuda_ctx *c, float *y, const float *bias, int n, int dim);
shoal_status cuda_gather_rows(struct cuda_ctx *c, float *y, const float *x, const int32_t *idx, int n, int dim);
shoal_status cuda_add_rows_f64(struct cuda_ctx *c, double *y, const double *x, const int32_t *idx,
                               const double *w, int n, int dim);
shoal_status cuda_zero_f64(struct cuda_ctx *c, double *y, size_t n);
/* the k best of each row, k rounds of a block-wide search (for small k) */
shoal_status cuda_topk(struct cuda_ctx *c, const float *x, int rows, int cols, int k, int32_t id0,
                       struct shoal_cand *out);
enum { CUDA_TOPK_MAX = 64 };

/* ------------------------------------------------------ device helpers */

static __device__ __forceinline__ float warp_sum(float v) {
    for (int o = 16; o > 0; o >>= 1) v = __fadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ double warp_sum(double v) {
    for (int o = 16; o > 0; o >>= 1) v = __dadd_rn(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
static __device__ __forceinline__ int warp_sum(int v) {
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}
static __device__ __forceinline__ float warp_max(float v) {
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}
/* An f32 rounded to f16 and back, as shoal_f32_to_f16 then shoal_f16_to_f32. */
static __device__ __forceinline__ float f16_round(float v) {
    return __half2float(__float2half_rn(v));
}

/*
 * Value j of row r of a prepared weight (struct wlayout) as f32, as
 * shoal_dequantize_row makes it (exact: a scale times a small integer). With
 * min 0, a Q4_1 or Q5_1 value without its block's minimum (d * q alone), a
 * Q2_K, Q4_K or Q5_K one without - dmin * m.
 */
static __device__ __forceinline__ float dequant_elem(const char *w, int type, int64_t cols,
                                                     size_t pitch, size_t d_off, size_t m_off,
                                                     int64_t r, int64_t j, int min) {
    const char *row = w + (size_t)r * pitch;
    if (type == SHOAL_DTYPE_F32) return ((const float *)row)[j];
    if (type == SHOAL_DTYPE_F16) return __half2float(((const __half *)row)[j]);
    if (type == SHOAL_DTYPE_BF16) return __uint_as_float((uint32_t)((const uint16_t *)row)[j] << 16);
    if (kq_type(type)) {
        /* GGUF blocks in place; min 0: without the min term (Q5_1's m, the k-quants' dmin * m) */
        const int bv = kq_values(type);
        return kq_dequant(type, (const uint8_t *)row + (size_t)(j / bv) * (size_t)kq_bytes(type), (int)(j % bv), min);
    }
    const int64_t nb = cols / SHOAL_QK, b = j / SHOAL_QK, o = j % SHOAL_QK;
    const float d = __half2float(((const __half *)(w + d_off))[r * nb + b]);
    if (type == SHOAL_DTYPE_Q8_0) return __fmul_rn(d, (float)((const int8_t *)row)[j]);
    const uint8_t byte = ((const uint8_t *)row)[b * 16 + (o & 15)];
    const int q = o < 16 ? byte & 15 : byte >> 4;
    if (type == SHOAL_DTYPE_Q4_0) return __fmul_rn(d, (float)(q - 8));
    if (!min) return __fmul_rn(d, (float)q);
    return __fadd_rn(__fmul_rn(d, (float)q), __half2float(((const __half *)(w + m_off))[r * nb + b]));
}

static inline unsigned grid_1d(size_t n, unsigned block) {
    size_t g = (n + block - 1) / block;
    return (unsigned)(g < 1 ? 1 : g > 0x7fffffff ? 0x7fffffff : g);
}

#endif
