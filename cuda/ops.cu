/*
 * ops.cu — the CUDA backend's ops besides matmul: embedding lookup, RMS
 * norm, rope (both modes), the KV cache store (f32, f16, 8-bit), attention
 * over the paged cache with grouped-query heads (split-K "flash decoding":
 * chunks of positions in parallel, merged by their maxima and sums), and the
 * elementwise ops.
 *
 * Each op computes what the CPU backend's does in the same order where the
 * order is the op's own (norm scale, rope rotation, quantizing a head), so
 * that they agree to the last bit or nearly; attention's sums run in another
 * order and agree to rounding.
 */
#include <math.h>
#include <string.h>

#include "common.cuh"

/* ------------------------------------------------------------- embedding */

__global__ void k_embed(const char *__restrict__ w, int type, int64_t cols, size_t pitch,
                        size_t d_off, size_t m_off, const int32_t *__restrict__ tok,
                        float *__restrict__ y) {
    const int t = blockIdx.x;
    for (int64_t j = threadIdx.x; j < cols; j += blockDim.x)
        y[(int64_t)t * cols + j] = dequant_elem(w, type, cols, pitch, d_off, m_off, tok[t], j, 1);
}

shoal_status cuda_embed(struct cuda_ctx *c, float *y, const struct shoal_weight *t,
                        const struct shoal_batch *b) {
    for (int i = 0; i < b->n_tokens; i++)
        if (b->token[i] < 0 || b->token[i] >= t->rows)
            return shoal_errorf(SHOAL_INVALID, "token id %d is outside the vocabulary (0..%lld)",
                                b->token[i], (long long)t->rows - 1);
    if (b->n_tokens == 0) return SHOAL_OK;
    struct wlayout l;
    if (!cuda_weight_layout(t->type, t->rows, t->cols, &l))
        return shoal_errorf(SHOAL_UNSUPPORTED, "no embedding lookup for %s", shoal_dtype_name(t->type));
    const struct dev_batch *d;
    SHOAL_TRY(cuda_batch(c, b, &d));
    k_embed<<<b->n_tokens, 256, 0, c->stream>>>((const char *)t->data, t->type, t->cols, l.pitch,
                                                l.d_off, l.m_off, d->token, y);
    CU_LAUNCHED("embed");
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ norm */

/* y = x / rms(x) * w per token: the sum of squares in f64, then (x * scale) * w. */
__global__ void k_rmsnorm(float *y, const float *x, const float *__restrict__ w, int dim, float eps) {
    __shared__ double part[32];
    __shared__ float scale_s;
    const int t = blockIdx.x;
    const float *xt = x + (int64_t)t * dim;
    double ss = 0;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) ss = __dadd_rn(ss, __dmul_rn((double)xt[i], (double)xt[i]));
    ss = warp_sum(ss);
    if ((threadIdx.x & 31) == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    if (threadIdx.x == 0) {
        double s = 0;
        for (int i = 0; i < (int)(blockDim.x / 32); i++) s = __dadd_rn(s, part[i]);
        scale_s = (float)(1.0 / sqrt(s / dim + (double)eps));
    }
    __syncthreads();
    const float scale = scale_s;
    float *yt = y + (int64_t)t * dim;
    for (int i = threadIdx.x; i < dim; i += blockDim.x) yt[i] = __fmul_rn(__fmul_rn(xt[i], scale), w[i]);
}

shoal_status cuda_rmsnorm(struct cuda_ctx *c, float *y, const float *x, const float *w, int n,
                          int dim, float eps) {
    if (n <= 0) return SHOAL_OK;
    k_rmsnorm<<<n, 256, 0, c->stream>>>(y, x, w, dim, eps);
    CU_LAUNCHED("rmsnorm");
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ rope */

/*
 * theta_i = pos * freq_scale * base^(-2i/rope_dim) [/ factor_i], in f64 as
 * the CPU forms it (the powers come from the host's pow), cos and sin in f64
 * rounded to f32, then the rotation in f32 without fused multiply-adds.
 */
__global__ void k_rope(float *x, int n_heads, int head_dim, int rope_dim, int neox,
                       double freq_scale, const double *__restrict__ tab,
                       const int32_t *__restrict__ pos) {
    extern __shared__ float cs[]; /* (half, 2) */
    const int t = blockIdx.x, half = rope_dim / 2;
    const double p = (double)pos[t] * freq_scale;
    for (int i = threadIdx.x; i < half; i += blockDim.x) {
        double theta = p * tab[i];
        theta = theta / tab[half + i];
        cs[2 * i] = (float)cos(theta);
        cs[2 * i + 1] = (float)sin(theta);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < n_heads * half; k += blockDim.x) {
        const int h = k / half, i = k % half;
        float *v = x + ((int64_t)t * n_heads + h) * head_dim;
        const int a = neox ? i : 2 * i, b = neox ? i + half : 2 * i + 1;
        const float x0 = v[a], x1 = v[b], co = cs[2 * i], si = cs[2 * i + 1];
        v[a] = __fsub_rn(__fmul_rn(x0, co), __fmul_rn(x1, si));
        v[b] = __fadd_rn(__fmul_rn(x0, si), __fmul_rn(x1, co));
    }
}

/*
 * The powers and divisors of a rope, made again when the rope changes: its base, its
 * dimension or the values of its factors (not their address: another array may come
 * where a freed one was). Made in pinned memory and copied on the compute stream, so
 * that the kernels queued before read the old table and those after the new one.
 */
static shoal_status rope_table(struct cuda_ctx *c, const struct shoal_rope *r) {
    const int half = r->rope_dim / 2;
    const float *f = r->freq_factors;
    if (half > ROPE_TAB_MAX)
        return shoal_errorf(SHOAL_UNSUPPORTED, "rope dimension %d: the CUDA backend rotates at most %d",
                            r->rope_dim, 2 * ROPE_TAB_MAX);
    if (c->rope_key_dim == r->rope_dim && c->rope_key_base == r->freq_base &&
        c->rope_key_has_factors == (f != NULL) &&
        (!f || memcmp(c->rope_key_factors, f, sizeof(float) * (size_t)half) == 0))
        return SHOAL_OK;
    if (c->capturing) return shoal_errorf(SHOAL_INTERNAL, "a new rope while a CUDA graph was recorded");
    cuda_graphs_reset(c); /* recordings read the old table */
    CU_TRY(cudaStreamSynchronize(c->stream)); /* the last copy from rope_host has run */
    for (int i = 0; i < half; i++) {
        c->rope_host[i] = pow((double)r->freq_base, -2.0 * i / r->rope_dim);
        c->rope_host[half + i] = f ? (double)f[i] : 1.0;
    }
    CU_TRY(cudaMemcpyAsync(c->rope_tab, c->rope_host, sizeof(double) * 2 * (size_t)half,
                           cudaMemcpyHostToDevice, c->stream));
    c->rope_key_base = r->freq_base;
    c->rope_key_dim = r->rope_dim;
    c->rope_key_has_factors = f != NULL;
    if (f) memcpy(c->rope_key_factors, f, sizeof(float) * (size_t)half);
    return SHOAL_OK;
}

shoal_status cuda_rope(struct cuda_ctx *c, float *x, int n_heads, int head_dim,
                       const struct shoal_rope *r, const struct shoal_batch *b) {
    if (r->rope_dim > 1024 || r->rope_dim > head_dim || r->rope_dim % 2)
        return shoal_errorf(SHOAL_UNSUPPORTED, "rope dimension %d (head %d)", r->rope_dim, head_dim);
    if (b->n_tokens == 0 || r->rope_dim == 0) return SHOAL_OK;
    SHOAL_TRY(rope_table(c, r));
    const struct dev_batch *d;
    SHOAL_TRY(cuda_batch(c, b, &d));
    const int half = r->rope_dim / 2;
    k_rope<<<b->n_tokens, 256, sizeof(float) * 2 * (size_t)half, c->stream>>>(
        x, n_heads, head_dim, r->rope_dim, r->mode == SHOAL_ROPE_NEOX, (double)r->freq_scale,
        c->rope_tab, d->pos);
    CU_LAUNCHED("rope");
    return SHOAL_OK;
}

/* -------------------------------------------------------------- KV store */

/* One (token, KV head) per block: K and V into their slot, converted. */
__global__ void k_kv_store(int type, int n_kv_heads, int head_dim, size_t row_bytes, size_t head_bytes,
                           char *kc, char *vc, const float *__restrict__ k, const float *__restrict__ v,
                           const int32_t *__restrict__ slot) {
    __shared__ float red[2][32];
    const int t = blockIdx.x, h = blockIdx.y;
    const size_t off = (size_t)slot[t] * row_bytes + (size_t)h * head_bytes;
    const int64_t src = ((int64_t)t * n_kv_heads + h) * head_dim;
    for (int which = 0; which < 2; which++) {
        const float *s = (which ? v : k) + src;
        char *dst = (which ? vc : kc) + off;
        if (type == SHOAL_KV_F32) {
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ((float *)dst)[i] = s[i];
        } else if (type == SHOAL_KV_F16) {
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) ((__half *)dst)[i] = __float2half_rn(s[i]);
        } else {
            float amax = 0;
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) amax = fmaxf(amax, fabsf(s[i]));
            amax = warp_max(amax);
            if ((threadIdx.x & 31) == 0) red[which][threadIdx.x / 32] = amax;
            __syncthreads();
            amax = 0;
            for (int i = 0; i < (int)(blockDim.x / 32); i++) amax = fmaxf(amax, red[which][i]);
            const float sc = __fdiv_rn(amax, 127.0f), is = sc != 0.0f ? __fdiv_rn(1.0f, sc) : 0.0f;
            if (threadIdx.x == 0) memcpy(dst, &sc, 4);
            int8_t *q = (int8_t *)dst + 4;
            for (int i = threadIdx.x; i < head_dim; i += blockDim.x) q[i] = (int8_t)rintf(__fmul_rn(s[i], is));
        }
    }
}

shoal_status cuda_kv_store(struct cuda_ctx *c, const struct shoal_kv_desc *d, void *kc, void *vc,
                           const float *k, const float *v, const struct shoal_batch *b) {
    for (int t = 0; t < b->n_tokens; t++)
        if (b->slot[t] < 0 || b->slot[t] >= d->n_slots)
            return shoal_errorf(SHOAL_INTERNAL, "KV slot %d outside the cache (%lld slots)",
                                b->slot[t], (long long)d->n_slots);
    if (b->n_tokens == 0) return SHOAL_OK;
    const struct dev_batch *db;
    SHOAL_TRY(cuda_batch(c, b, &db));
    dim3 grid((unsigned)b->n_tokens, (unsigned)d->n_kv_heads);
    const int threads = d->head_dim >= 128 ? 128 : 64;
    k_kv_store<<<grid, threads, 0, c->stream>>>(d->type, d->n_kv_heads, d->head_dim, d->row_bytes,
                                                d->head_bytes, (char *)kc, (char *)vc, k, v, db->slot);
    CU_LAUNCHED("kv store");
    return SHOAL_OK;
}

/* ------------------------------------------------------------- attention */

enum { ATT_THREADS = 128, ATT_MAX_HEAD = 256 }; /* chunks: att_layout (scratch.h) */

/* element i of a cached head vector */
template <int KV> static __device__ __forceinline__ float kv_elem(const char *h, int i) {
    if (KV == SHOAL_KV_F32) return ((const float *)h)[i];
    if (KV == SHOAL_KV_F16) return __half2float(((const __half *)h)[i]);
    float s;
    memcpy(&s, h, 4);
    return __fmul_rn(s, (float)((const int8_t *)h)[4 + i]);
}

struct att_args {
    float *part;                /* (n_tokens, n_heads, n_chunks, head_dim + 2): o, max, sum */
    const float *q;             /* (n_tokens, n_heads * head_dim) */
    const char *kc, *vc;
    size_t row_bytes, head_bytes;
    int n_heads, group, head_dim, chunk, n_chunks;
    float scale;
    int window; /* > 0: a token attends to its last window positions */
    struct dev_batch b;
};

/*
 * One chunk of one (token, head): scores of its positions (a warp per
 * position), their max and exp-sum, and the weighted sum of V (a thread per
 * dimension). Chunks past the token's position write an empty part.
 */
template <int KV>
__global__ void __launch_bounds__(ATT_THREADS) k_att_part(const struct att_args a) {
    extern __shared__ float sm[]; /* q (head_dim), then scores (chunk) */
    __shared__ float red[ATT_THREADS / 32];
    const int ch = blockIdx.x, h = blockIdx.y, t = blockIdx.z;
    const int lane = threadIdx.x & 31, warp = threadIdx.x / 32, nw = ATT_THREADS / 32;
    const int hd = a.head_dim, npos = a.b.pos[t] + 1;
    const int from = a.window > 0 && npos > a.window ? npos - a.window : 0; /* the window's first */
    const int p0 = max(from, ch * a.chunk), p1 = min(npos, ch * a.chunk + a.chunk);
    float *out = a.part + (((int64_t)t * a.n_heads + h) * a.n_chunks + ch) * (hd + 2);
    if (p0 >= p1) {
        if (threadIdx.x == 0) {
            out[hd] = -INFINITY;
            out[hd + 1] = 0;
        }
        return;
    }
    float *qs = sm, *sc = sm + hd;
    const float *q = a.q + ((int64_t)t * a.n_heads + h) * hd;
    /* with an f16 cache the query is rounded to f16, as the CPU does */
    for (int i = threadIdx.x; i < hd; i += ATT_THREADS) qs[i] = KV == SHOAL_KV_F16 ? f16_round(q[i]) : q[i];
    __syncthreads();
    const int32_t *table = a.b.table + (int64_t)a.b.seq[t] * a.b.max_blocks;
    const size_t head_off = (size_t)(h / a.group) * a.head_bytes;
    const int bs = a.b.block_size;
    float mx = -INFINITY;
    for (int p = p0 + warp; p < p1; p += nw) {
        const int64_t slot = (int64_t)table[p / bs] * bs + p % bs;
        const char *k = a.kc + slot * a.row_bytes + head_off;
        float s = 0;
        for (int i = lane; i < hd; i += 32) s = __fadd_rn(s, __fmul_rn(qs[i], kv_elem<KV>(k, i)));
        s = __fmul_rn(warp_sum(s), a.scale);
        if (lane == 0) sc[p - p0] = s;
        mx = fmaxf(mx, s);
    }
    mx = warp_max(mx);
    if (lane == 0) red[warp] = mx;
    __syncthreads();
    mx = red[0];
    for (int i = 1; i < nw; i++) mx = fmaxf(mx, red[i]);
    __syncthreads();
    float l = 0;
    for (int p = p0 + threadIdx.x; p < p1; p += ATT_THREADS) {
        const float e = expf(sc[p - p0] - mx);
        sc[p - p0] = e;
        l += e;
    }
    l = warp_sum(l);
    if (lane == 0) red[warp] = l;
    __syncthreads();
    l = 0;
    for (int i = 0; i < nw; i++) l += red[i];
    for (int i = threadIdx.x; i < hd; i += ATT_THREADS) {
        float o = 0;
        for (int p = p0; p < p1; p++) {
            const int64_t slot = (int64_t)table[p / bs] * bs + p % bs;
            o = __fadd_rn(o, __fmul_rn(sc[p - p0], kv_elem<KV>(a.vc + slot * a.row_bytes + head_off, i)));
        }
        out[i] = o;
    }
    if (threadIdx.x == 0) {
        out[hd] = mx;
        out[hd + 1] = l;
    }
}

/* The chunks of a (token, head) merged: o = sum_c o_c e^(m_c - M) / sum_c l_c e^(m_c - M). */
__global__ void k_att_merge(float *out, const float *__restrict__ part, int n_heads, int head_dim,
                            int n_chunks) {
    const int h = blockIdx.x, t = blockIdx.y;
    const float *p = part + ((int64_t)t * n_heads + h) * n_chunks * (head_dim + 2);
    float M = -INFINITY;
    for (int c = 0; c < n_chunks; c++) M = fmaxf(M, p[(int64_t)c * (head_dim + 2) + head_dim]);
    float L = 0;
    for (int c = 0; c < n_chunks; c++) {
        const float *pc = p + (int64_t)c * (head_dim + 2);
        if (pc[head_dim + 1] > 0) L += pc[head_dim + 1] * expf(pc[head_dim] - M);
    }
    for (int i = threadIdx.x; i < head_dim; i += blockDim.x) {
        float o = 0;
        for (int c = 0; c < n_chunks; c++) {
            const float *pc = p + (int64_t)c * (head_dim + 2);
            if (pc[head_dim + 1] > 0) o += pc[i] * expf(pc[head_dim] - M);
        }
        out[((int64_t)t * n_heads + h) * head_dim + i] = o / L;
    }
}

shoal_status cuda_attention(struct cuda_ctx *c, float *out, const float *q, int n_heads,
                            const struct shoal_kv_desc *d, const void *kc, const void *vc,
                            const struct shoal_batch *b, float scale, int window) {
    if (n_heads % d->n_kv_heads)
        return shoal_errorf(SHOAL_INVALID, "%d query heads do not group over %d KV heads", n_heads,
                            d->n_kv_heads);
    if (d->head_dim > ATT_MAX_HEAD)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the CUDA attention takes heads of up to %d values, "
                            "not %d", ATT_MAX_HEAD, d->head_dim);
    for (int t = 0; t < b->n_tokens; t++) {
        int64_t blk = b->pos[t] / b->block_size;
        if (b->pos[t] < 0 || b->seq[t] < 0 || b->seq[t] >= b->n_seq || blk >= b->max_blocks)
            return shoal_errorf(SHOAL_INTERNAL, "token %d: position %d of sequence %d is outside "
                                "its block table", t, b->pos[t], b->seq[t]);
    }
    if (b->n_tokens == 0) return SHOAL_OK;
    const struct dev_batch *db;
    SHOAL_TRY(cuda_batch(c, b, &db));
    /* chunks of positions (scratch.h): cut from the cache's length, not the batch's
     * positions, so that a recorded decode step (the same grid each time) serves every
     * position */
    struct att_layout al;
    att_layout(b->n_tokens, n_heads, d->head_dim, d->n_slots, c->n_sm, &al);
    const int chunk = al.chunk, n_chunks = al.n_chunks;
    char *buf;
    SHOAL_TRY(cuda_scratch(c, al.bytes, (void **)&buf));
    struct att_args a;
    a.part = (float *)(buf + al.part);
    a.q = q;
    a.kc = (const char *)kc;
    a.vc = (const char *)vc;
    a.row_bytes = d->row_bytes;
    a.head_bytes = d->head_bytes;
    a.n_heads = n_heads;
    a.group = n_heads / d->n_kv_heads;
    a.head_dim = d->head_dim;
    a.chunk = chunk;
    a.n_chunks = n_chunks;
    a.scale = scale;
    a.window = window;
    a.b = *db;
    dim3 grid((unsigned)n_chunks, (unsigned)n_heads, (unsigned)b->n_tokens);
    const size_t shm = sizeof(float) * ((size_t)d->head_dim + (size_t)chunk);
    switch (d->type) {
    case SHOAL_KV_F32: k_att_part<SHOAL_KV_F32><<<grid, ATT_THREADS, shm, c->stream>>>(a); break;
    case SHOAL_KV_F16: k_att_part<SHOAL_KV_F16><<<grid, ATT_THREADS, shm, c->stream>>>(a); break;
    default: k_att_part<SHOAL_KV_Q8><<<grid, ATT_THREADS, shm, c->stream>>>(a); break;
    }
    CU_LAUNCHED("attention");
    dim3 g2((unsigned)n_heads, (unsigned)b->n_tokens);
    k_att_merge<<<g2, d->head_dim >= 128 ? 128 : 64, 0, c->stream>>>(out, a.part, n_heads,
                                                                     d->head_dim, n_chunks);
    CU_LAUNCHED("attention merge");
    return SHOAL_OK;
}

/* ----------------------------------------------------------- elementwise */

/* gate = silu(gate) * up as the CPU: g / (1 + e^-g) * u, e^-g rounded from f64 */
__global__ void k_silu_mul(float *g, const float *__restrict__ u, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = g[i], e = (float)exp(-(double)x);
    g[i] = __fmul_rn(__fdiv_rn(x, __fadd_rn(1.0f, e)), u[i]);
}

/* gate = gelu(gate) * up, GELU's tanh form as the CPU writes it: g / (1 + e^(-2 c g (1 + a g^2))) */
__global__ void k_gelu_mul(float *g, const float *__restrict__ u, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const float x = g[i];
    g[i] = __fmul_rn(__fdiv_rn(x, 1.0f + expf(-2.0f * 0.79788456080286535588f * x * (1.0f + 0.044715f * x * x))), u[i]);
}

__global__ void k_scale(float *y, size_t n, float s) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __fmul_rn(y[i], s);
}

__global__ void k_add(float *y, const float *__restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __fadd_rn(y[i], x[i]);
}

__global__ void k_add_f64(float *y, const double *__restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __fadd_rn(y[i], (float)x[i]);
}

__global__ void k_add_bias(float *y, const float *__restrict__ bias, size_t n, int dim) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = __fadd_rn(y[i], bias[i % (size_t)dim]);
}

__global__ void k_f64_to_f32(float *__restrict__ y, const double *__restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = (float)x[i];
}

__global__ void k_f32_to_f64(double *__restrict__ y, const float *__restrict__ x, size_t n) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) y[i] = (double)x[i];
}

/* For comm/nccl.c (f64 sums on an f32 wire): conversions queued on a stream; the
 * launch's error, as an int (cudaError_t). */
extern "C" int shoal_cudamod_f64_to_f32(float *dst, const double *src, size_t n, void *stream) {
    if (n) k_f64_to_f32<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(dst, src, n);
    return (int)cudaGetLastError();
}

extern "C" int shoal_cudamod_f32_to_f64(double *dst, const float *src, size_t n, void *stream) {
    if (n) k_f32_to_f64<<<grid_1d(n, 256), 256, 0, (cudaStream_t)stream>>>(dst, src, n);
    return (int)cudaGetLastError();
}

shoal_status cuda_silu_mul(struct cuda_ctx *c, float *g, const float *u, size_t n) {
    if (!n) return SHOAL_OK;
    k_silu_mul<<<grid_1d(n, 256), 256, 0, c->stream>>>(g, u, n);
    CU_LAUNCHED("silu_mul");
    return SHOAL_OK;
}

shoal_status cuda_gelu_mul(struct cuda_ctx *c, float *g, const float *u, size_t n) {
    if (!n) return SHOAL_OK;
    k_gelu_mul<<<grid_1d(n, 256), 256, 0, c->stream>>>(g, u, n);
    CU_LAUNCHED("gelu_mul");
    return SHOAL_OK;
}

shoal_status cuda_scale(struct cuda_ctx *c, float *y, size_t n, float s) {
    if (!n) return SHOAL_OK;
    k_scale<<<grid_1d(n, 256), 256, 0, c->stream>>>(y, n, s);
    CU_LAUNCHED("scale");
    return SHOAL_OK;
}

shoal_status cuda_round_f64(struct cuda_ctx *c, float *y, const double *x, size_t n) {
    if (!n) return SHOAL_OK;
    k_f64_to_f32<<<grid_1d(n, 256), 256, 0, c->stream>>>(y, x, n);
    CU_LAUNCHED("round_f64");
    return SHOAL_OK;
}

shoal_status cuda_add(struct cuda_ctx *c, float *y, const float *x, size_t n) {
    if (!n) return SHOAL_OK;
    k_add<<<grid_1d(n, 256), 256, 0, c->stream>>>(y, x, n);
    CU_LAUNCHED("add");
    return SHOAL_OK;
}

shoal_status cuda_add_f64(struct cuda_ctx *c, float *y, const double *x, size_t n) {
    if (!n) return SHOAL_OK;
    k_add_f64<<<grid_1d(n, 256), 256, 0, c->stream>>>(y, x, n);
    CU_LAUNCHED("add_f64");
    return SHOAL_OK;
}

shoal_status cuda_add_bias(struct cuda_ctx *c, float *y, const float *bias, int n, int dim) {
    const size_t count = (size_t)n * (size_t)dim;
    if (!count) return SHOAL_OK;
    k_add_bias<<<grid_1d(count, 256), 256, 0, c->stream>>>(y, bias, count, dim);
    CU_LAUNCHED("add_bias");
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- experts */

__global__ void k_gather_rows(float *__restrict__ y, const float *__restrict__ x, const int32_t *__restrict__ idx,
                              size_t count, int dim) {
    const size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < count) y[i] = x[(size_t)idx[i / (size_t)dim] * (size_t)dim + i % (size_t)dim];
}

/* one thread per column, the rows in order (a row index may repeat) */
__global__ void k_add_rows_f64(double *y, const double *__restrict__ x, const int32_t *__restrict__ idx,
                               const double *__restrict__ w, int n, int dim) {
    const int j = blockIdx.x * blockDim.x + threadIdx.x;
    if (j >= dim) return;
    for (int i = 0; i < n; i++) {
        double *yr = y + (size_t)idx[i] * (size_t)dim + j;
        *yr = __dadd_rn(*yr, __dmul_rn(w[i], x[(size_t)i * (size_t)dim + j]));
    }
}

/* The host's idx (and w) in scratch, behind the work queued (stream order keeps ops apart). */
static shoal_status rows_up(struct cuda_ctx *c, const int32_t *idx, const double *w, int n, int32_t **di,
                            double **dw) {
    const size_t ib = ((size_t)n * sizeof(int32_t) + 255) / 256 * 256;
    void *s = NULL;
    SHOAL_TRY(cuda_scratch(c, ib + (w ? (size_t)n * sizeof(double) : 0), &s));
    *di = (int32_t *)s;
    CU_TRY(cudaMemcpyAsync(*di, idx, (size_t)n * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
    if (w) {
        *dw = (double *)((char *)s + ib);
        CU_TRY(cudaMemcpyAsync(*dw, w, (size_t)n * sizeof(double), cudaMemcpyHostToDevice, c->stream));
    }
    return SHOAL_OK;
}

shoal_status cuda_gather_rows(struct cuda_ctx *c, float *y, const float *x, const int32_t *idx, int n, int dim) {
    int32_t *di = NULL;
    SHOAL_TRY(rows_up(c, idx, NULL, n, &di, NULL));
    const size_t count = (size_t)n * (size_t)dim;
    k_gather_rows<<<grid_1d(count, 256), 256, 0, c->stream>>>(y, x, di, count, dim);
    CU_LAUNCHED("gather_rows");
    return SHOAL_OK;
}

shoal_status cuda_add_rows_f64(struct cuda_ctx *c, double *y, const double *x, const int32_t *idx,
                               const double *w, int n, int dim) {
    int32_t *di = NULL;
    double *dw = NULL;
    SHOAL_TRY(rows_up(c, idx, w, n, &di, &dw));
    k_add_rows_f64<<<grid_1d((size_t)dim, 128), 128, 0, c->stream>>>(y, x, di, dw, n, dim);
    CU_LAUNCHED("add_rows_f64");
    return SHOAL_OK;
}

shoal_status cuda_zero_f64(struct cuda_ctx *c, double *y, size_t n) {
    CU_TRY(cudaMemsetAsync(y, 0, n * sizeof(double), c->stream));
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ top-k */

struct cand_dev {
    float v;
    int32_t id;
};

/* a before b: the larger value, ties to the lower id (shoal_cand_better) */
static __device__ __forceinline__ bool cand_better(float av, int32_t ai, float bv, int32_t bi) {
    return av > bv || (av == bv && ai < bi);
}

/*
 * One row per block, k rounds: each round the best of the values strictly
 * after the last one picked in that order (so nothing needs marking), from
 * every thread's share then across the block. k is small (greedy: 1).
 */
__global__ void k_topk(const float *__restrict__ x, int cols, int k, int32_t id0,
                       struct cand_dev *__restrict__ out) {
    __shared__ float bv[32];
    __shared__ int32_t bi[32];
    const int r = blockIdx.x, lane = threadIdx.x & 31, warp = threadIdx.x / 32;
    const int nw = blockDim.x / 32;
    const float *row = x + (int64_t)r * cols;
    float lastv = INFINITY;
    int32_t lasti = -1; /* nothing is after (+inf, -1)... everything is */
    for (int j = 0; j < k; j++) {
        float v = -INFINITY;
        int32_t id = INT32_MAX;
        for (int i = threadIdx.x; i < cols; i += blockDim.x) {
            const float xv = row[i];
            const int32_t xi = id0 + i;
            if (j > 0 && !cand_better(lastv, lasti, xv, xi)) continue; /* not after the last */
            if (cand_better(xv, xi, v, id)) {
                v = xv;
                id = xi;
            }
        }
        for (int o = 16; o > 0; o >>= 1) {
            const float ov = __shfl_xor_sync(0xffffffffu, v, o);
            const int32_t oi = __shfl_xor_sync(0xffffffffu, id, o);
            if (cand_better(ov, oi, v, id)) {
                v = ov;
                id = oi;
            }
        }
        if (lane == 0) {
            bv[warp] = v;
            bi[warp] = id;
        }
        __syncthreads();
        v = bv[0];
        id = bi[0];
        for (int w = 1; w < nw; w++)
            if (cand_better(bv[w], bi[w], v, id)) {
                v = bv[w];
                id = bi[w];
            }
        __syncthreads();
        if (threadIdx.x == 0) {
            out[(int64_t)r * k + j].v = v;
            out[(int64_t)r * k + j].id = id;
        }
        lastv = v;
        lasti = id;
    }
}

shoal_status cuda_topk(struct cuda_ctx *c, const float *x, int rows, int cols, int k, int32_t id0,
                       struct shoal_cand *out) {
    const size_t bytes = topk_bytes(rows, k);
    static_assert(sizeof(struct cand_dev) == 8, "topk_bytes counts 8 bytes a candidate");
    void *buf;
    SHOAL_TRY(cuda_scratch(c, bytes, &buf));
    k_topk<<<rows, 256, 0, c->stream>>>(x, cols, k, id0, (struct cand_dev *)buf);
    CU_LAUNCHED("top-k");
    CU_TRY(cudaMemcpyAsync(out, buf, bytes, cudaMemcpyDeviceToHost, c->stream));
    CU_TRY(cudaStreamSynchronize(c->stream));
    return SHOAL_OK;
}
