/*
 * backend_cuda.cu — the CUDA backend's table (runtime/backend_impl.h): device
 * memory, copies, the stream every op is queued on, the batch's arrays on the
 * device, and error translation. The kernels are in matmul.cu and ops.cu.
 * This file and the kernels form the module libshoal_cuda.so, which
 * cuda/loader.c opens when CUDA is wanted; its entry points are the
 * shoal_cudamod_* functions.
 *
 * Everything runs on one stream in order, so ops need no events between
 * them; download and synchronize wait for the stream. Uploads from pageable
 * host memory return once the bytes are staged, so a caller may reuse its
 * buffer at once.
 */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common.cuh"

extern "C" {
#include "../comm/comm_impl.h"
}

/* ---------------------------------------------------------------- errors */

/* "rank R, CUDA device D" (the rank when known) */
static const char *where(const struct cuda_ctx *c, char *buf, size_t len) {
    if (c->rank >= 0) snprintf(buf, len, "rank %d, CUDA device %d", c->rank, c->device);
    else snprintf(buf, len, "CUDA device %d", c->device);
    return buf;
}

shoal_status cuda_fail(cudaError_t e, const char *call, const char *file, int line,
                       const struct cuda_ctx *c) {
    const char *f = strrchr(file, '/');
    char w[64];
    return shoal_errorf(SHOAL_CUDA, "%s: %s failed: %s (%s, at %s:%d)", where(c, w, sizeof w), call,
                        cudaGetErrorString(e), cudaGetErrorName(e), f ? f + 1 : file, line);
}

shoal_status cublas_fail(cublasStatus_t e, const char *call, const char *file, int line,
                         const struct cuda_ctx *c) {
    const char *f = strrchr(file, '/');
    char w[64];
    return shoal_errorf(SHOAL_CUDA, "%s: %s failed: %s (at %s:%d)", where(c, w, sizeof w), call,
                        cublasGetStatusString(e), f ? f + 1 : file, line);
}

/* ----------------------------------------------------------------- probe */

extern "C" int shoal_cudamod_device_count(const char **why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        /* With no GPU or driver this is "insufficient driver" or "no device":
         * both mean there is nothing to run on, not that shoal is broken. */
        if (why) *why = cudaGetErrorString(e);
        cudaGetLastError(); /* not sticky: clear it */
        return 0;
    }
    if (why) *why = n ? "ok" : "no CUDA device found";
    return n;
}

extern "C" shoal_status shoal_cudamod_device_info(int device, char *name, size_t len, size_t *total,
                                               size_t *free_bytes) {
    struct cuda_ctx tmp;
    struct cuda_ctx *c = &tmp;
    c->device = device;
    c->rank = -1;
    cudaDeviceProp p;
    CU_TRY(cudaGetDeviceProperties(&p, device));
    if (name && len) snprintf(name, len, "%s", p.name);
    if (total || free_bytes) {
        int prev = 0;
        CU_TRY(cudaGetDevice(&prev));
        CU_TRY(cudaSetDevice(device));
        size_t f = 0, t = 0;
        cudaError_t e = cudaMemGetInfo(&f, &t);
        cudaSetDevice(prev);
        CU_TRY(e);
        if (total) *total = t;
        if (free_bytes) *free_bytes = f;
    }
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- memory */

static shoal_status cu_alloc(void *ctx, size_t bytes, void **out) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    *out = NULL;
    cudaError_t e = cudaMalloc(out, bytes ? bytes : 256);
    if (e == cudaErrorMemoryAllocation) {
        cudaGetLastError();
        size_t f = 0, t = 0;
        cudaMemGetInfo(&f, &t);
        char a[32], b[32], d[32], w[64];
        return shoal_errorf(SHOAL_NOMEM,
                            "%s: cannot allocate %s of device memory (%s free of %s)",
                            where(c, w, sizeof w), shoal_fmt_bytes(a, sizeof a, (double)bytes),
                            shoal_fmt_bytes(b, sizeof b, (double)f),
                            shoal_fmt_bytes(d, sizeof d, (double)t));
    }
    CU_TRY(e);
    return SHOAL_OK;
}

static void cu_free(void *ctx, void *p) {
    if (p) cudaFree(p); /* waits for the device: nothing queued still uses p */
}

shoal_status dev_alloc(struct cuda_ctx *c, size_t bytes, void **out) {
    return c->self ? shoal_backend_alloc(c->self, bytes, out) : cu_alloc(c, bytes, out);
}

void dev_free(struct cuda_ctx *c, void *p) {
    if (c->self) shoal_backend_free(c->self, p);
    else cu_free(c, p);
}

static shoal_status cu_upload(void *ctx, void *dst, const void *src, size_t n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n) CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->stream));
    return SHOAL_OK;
}

/*
 * cudaStreamSynchronize, bounded as a communicator's waits are
 * (shoal_comm_set_timeout, the abandon flag): NCCL's collectives run on the
 * stream, and one that waits for a rank that stopped answering, or across a
 * link gone silent, never ends. Spins the first millisecond, as a
 * synchronize does, then polls every 20 us.
 */
extern "C" shoal_status shoal_cudamod_stream_wait(void *stream, const char *what) {
    const double t0 = shoal_now();
    double abandoned_at = 0, checked = t0;
    for (;;) {
        const cudaError_t e = cudaStreamQuery((cudaStream_t)stream);
        if (e == cudaSuccess) return SHOAL_OK;
        if (e != cudaErrorNotReady)
            return shoal_errorf(SHOAL_CUDA, "%s: the stream failed: %s", what, cudaGetErrorString(e));
        const double now = shoal_now();
        if (now - t0 < 1e-3) continue;
        if (now - checked > 0.05) {
            checked = now;
            SHOAL_TRY(shoal_comm_wait_limit(t0, &abandoned_at, -1, "the device's queued work (NCCL's peers)", what));
        }
        struct timespec ts = { 0, 20 * 1000 };
        nanosleep(&ts, NULL);
    }
}

static shoal_status cu_download(void *ctx, void *dst, const void *src, size_t n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n) CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyDeviceToHost, c->stream));
    return shoal_cudamod_stream_wait(c->stream, "a copy to the host");
}

static shoal_status cu_memset0(void *ctx, void *dst, size_t n) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (n) CU_TRY(cudaMemsetAsync(dst, 0, n, c->stream));
    return SHOAL_OK;
}

static shoal_status cu_synchronize(void *ctx) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    SHOAL_TRY(shoal_cudamod_stream_wait(c->stream, "the device's work"));
    CU_TRY(cudaStreamSynchronize(c->copy));
    return SHOAL_OK;
}

/* ---------------------------------------------------------------- offload */

static shoal_status cu_host_alloc(void *ctx, size_t bytes, void **out) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    CU_TRY(cudaHostAlloc(out, bytes ? bytes : 1, cudaHostAllocDefault)); /* pinned: DMA at full speed */
    return SHOAL_OK;
}

static void cu_host_free(void *ctx, void *p) { cudaFreeHost(p); }

static shoal_status cu_weight_pack(void *ctx, int type, int64_t rows, int64_t cols, const void *src,
                                   void *dst) {
    return cuda_weight_pack_host(type, rows, cols, src, dst);
}

/* Adds up the ring's spans, oldest first, up to the ones not done (all of them: wait). */
static void harvest(struct timed_ring *t, int wait) {
    const size_t n = sizeof t->start / sizeof *t->start;
    while (t->timed < t->made) {
        const size_t i = (t->timed + 1) % n;
        if (wait) cudaEventSynchronize(t->end[i]);
        else if (cudaEventQuery(t->end[i]) != cudaSuccess) break;
        float ms = 0;
        if (cudaEventElapsedTime(&ms, t->start[i], t->end[i]) == cudaSuccess) t->seconds += ms / 1e3;
        t->timed++;
    }
    cudaGetLastError(); /* a query's "not ready" is not an error */
}

/* The slot of the ring's next span (the oldest ones added up first if it is full). */
static size_t next_span(struct timed_ring *t) {
    const size_t n = sizeof t->start / sizeof *t->start;
    if (t->made - t->timed >= n - 1) harvest(t, 1);
    return ++t->made % n;
}

/* On the copy stream, after the compute stream's work so far (the buffer's last reader). */
static shoal_status cu_fetch(void *ctx, void *dst, const void *src, size_t n, uint64_t *ticket) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    const size_t ring = sizeof c->fetched / sizeof *c->fetched;
    CU_TRY(cudaEventRecord(c->compute_mark, c->stream));
    CU_TRY(cudaStreamWaitEvent(c->copy, c->compute_mark, 0));
    const size_t t = next_span(&c->copies);
    CU_TRY(cudaEventRecord(c->copies.start[t], c->copy));
    CU_TRY(cudaMemcpyAsync(dst, src, n, cudaMemcpyHostToDevice, c->copy));
    CU_TRY(cudaEventRecord(c->copies.end[t], c->copy));
    *ticket = ++c->n_fetches;
    CU_TRY(cudaEventRecord(c->fetched[*ticket % ring], c->copy));
    return SHOAL_OK;
}

static double cu_fetch_busy(void *ctx) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    harvest(&c->copies, 0);
    return c->copies.seconds;
}

/* The host waits for the copy (its pinned source may then be rewritten). */
static shoal_status cu_fetch_sync(void *ctx, uint64_t ticket) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    const size_t ring = sizeof c->fetched / sizeof *c->fetched;
    CU_TRY(cudaEventSynchronize(c->fetched[ticket % ring]));
    return SHOAL_OK;
}

/* The compute stream waits for the copy (the host does not); events on either side
 * of the wait time how long the stream stood still. */
static shoal_status cu_fetch_wait(void *ctx, uint64_t ticket) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    const size_t ring = sizeof c->fetched / sizeof *c->fetched;
    const size_t t = next_span(&c->stalls);
    CU_TRY(cudaEventRecord(c->stalls.start[t], c->stream));
    CU_TRY(cudaStreamWaitEvent(c->stream, c->fetched[ticket % ring], 0));
    CU_TRY(cudaEventRecord(c->stalls.end[t], c->stream));
    return SHOAL_OK;
}

static double cu_fetch_stalled(void *ctx) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    harvest(&c->stalls, 0);
    return c->stalls.seconds;
}

/* The scratch at least bytes long: exactly that when reserving, else with room to spare. */
static shoal_status scratch_grow(struct cuda_ctx *c, size_t bytes, int exact) {
    if (bytes <= c->scratch_cap) return SHOAL_OK;
    if (c->capturing)
        return shoal_errorf(SHOAL_INTERNAL, "scratch grew while a CUDA graph was recorded");
    cuda_graphs_reset(c);
    dev_free(c, c->scratch); /* cudaFree waits for the ops that used it */
    c->scratch = NULL;
    c->scratch_cap = 0;
    const size_t want = exact ? bytes : bytes + bytes / 4; /* some room, so that growing is rare */
    shoal_status rc = dev_alloc(c, want, &c->scratch);
    if (rc != SHOAL_OK) {
        char b[32];
        shoal_error_prefix("scratch for one op (%s)", shoal_fmt_bytes(b, sizeof b, (double)want));
        return rc;
    }
    c->scratch_cap = want;
    return SHOAL_OK;
}

shoal_status cuda_scratch(struct cuda_ctx *c, size_t bytes, void **out) {
    SHOAL_TRY(scratch_grow(c, bytes, 0));
    *out = c->scratch;
    return SHOAL_OK;
}

/* ------------------------------------------------------------ the batch */

/*
 * Ops of one forward step (rope twice, the KV store and attention per layer)
 * see the same batch: it is uploaded when it differs from the last one, from
 * pinned memory, in one copy. The pinned buffer is rewritten only after its
 * previous copy has run.
 */
/* Whether b is the batch uploaded last (its shape and every value). */
static int same_batch(const struct cuda_ctx *c, const struct shoal_batch *b, const int *hdr, size_t len) {
    const size_t nt = (size_t)b->n_tokens, nbt = (size_t)b->n_seq * (size_t)b->max_blocks;
    if (len != c->batch_len || memcmp(hdr, c->batch_hdr, 4 * sizeof(int)) != 0) return 0;
    const int32_t *src[4] = { b->token, b->pos, b->seq, b->slot };
    for (int i = 0; i < 4; i++) {
        const int32_t *had = c->batch_host + i * nt;
        if (src[i] && memcmp(had, src[i], nt * sizeof(int32_t)) != 0) return 0;
        for (size_t j = 0; !src[i] && j < nt; j++) /* an array not given went up as zeros */
            if (had[j]) return 0;
    }
    return !nbt || memcmp(c->batch_host + 4 * nt, b->block_table, nbt * sizeof(int32_t)) == 0;
}

static void set_dev_batch(struct cuda_ctx *c, const struct shoal_batch *b) {
    const size_t nt = (size_t)b->n_tokens;
    struct dev_batch *d = &c->bd;
    d->token = c->batch_dev;
    d->pos = c->batch_dev + nt;
    d->seq = c->batch_dev + 2 * nt;
    d->slot = c->batch_dev + 3 * nt;
    d->table = c->batch_dev + 4 * nt;
    d->n_tokens = b->n_tokens;
    d->n_seq = b->n_seq;
    d->max_blocks = b->max_blocks;
    d->block_size = b->block_size;
}

/* Room for batches of cap values (the three copies). */
static shoal_status batch_grow(struct cuda_ctx *c, size_t cap) {
    if (cap <= c->batch_cap) return SHOAL_OK;
    if (c->capturing)
        return shoal_errorf(SHOAL_INTERNAL, "a larger batch while a CUDA graph was recorded");
    cuda_graphs_reset(c);
    CU_TRY(cudaStreamSynchronize(c->stream)); /* nothing queued still reads the old ones */
    free(c->batch_host);
    cudaFreeHost(c->batch_pinned);
    dev_free(c, c->batch_dev);
    c->batch_host = NULL;
    c->batch_pinned = NULL;
    c->batch_dev = NULL;
    c->batch_cap = 0;
    c->batch_len = 0;
    if (!(c->batch_host = (int32_t *)malloc(cap * sizeof(int32_t))))
        return shoal_errorf(SHOAL_NOMEM, "out of memory for a batch of %zu values", cap);
    CU_TRY(cudaHostAlloc((void **)&c->batch_pinned, cap * sizeof(int32_t), cudaHostAllocDefault));
    SHOAL_TRY(dev_alloc(c, cap * sizeof(int32_t), (void **)&c->batch_dev));
    c->batch_cap = cap;
    return SHOAL_OK;
}

shoal_status cuda_batch(struct cuda_ctx *c, const struct shoal_batch *b, const struct dev_batch **out) {
    const size_t nt = (size_t)b->n_tokens, nbt = (size_t)b->n_seq * (size_t)b->max_blocks;
    const size_t len = 4 * nt + nbt;
    const int hdr[4] = { b->n_tokens, b->n_seq, b->max_blocks, b->block_size };
    if (same_batch(c, b, hdr, len)) {
        set_dev_batch(c, b);
        *out = &c->bd;
        return SHOAL_OK;
    }
    if (c->capturing)
        return shoal_errorf(SHOAL_INTERNAL, "a new batch while a CUDA graph was recorded");
    if (len > c->batch_cap) SHOAL_TRY(batch_grow(c, len < 4096 ? 4096 : len * 2));
    /* the arrays end to end on the host: token, pos, seq, slot, block table */
    int32_t *h = c->batch_pinned;
    CU_TRY(cudaEventSynchronize(c->batch_copied));
    const int32_t *src[4] = { b->token, b->pos, b->seq, b->slot };
    for (int i = 0; i < 4; i++) {
        if (src[i]) memcpy(h + i * nt, src[i], nt * sizeof(int32_t));
        else memset(h + i * nt, 0, nt * sizeof(int32_t));
    }
    if (nbt) memcpy(h + 4 * nt, b->block_table, nbt * sizeof(int32_t));
    CU_TRY(cudaMemcpyAsync(c->batch_dev, h, len * sizeof(int32_t), cudaMemcpyHostToDevice, c->stream));
    CU_TRY(cudaEventRecord(c->batch_copied, c->stream));
    memcpy(c->batch_host, h, len * sizeof(int32_t));
    memcpy(c->batch_hdr, hdr, sizeof hdr);
    c->batch_len = len;
    set_dev_batch(c, b);
    *out = &c->bd;
    return SHOAL_OK;
}

/* ------------------------------------------------------------- graphs */

void cuda_graphs_reset(struct cuda_ctx *c) {
    for (size_t i = 0; i < sizeof c->graphs / sizeof *c->graphs; i++) {
        if (c->graphs[i].exec) cudaGraphExecDestroy(c->graphs[i].exec);
        memset(&c->graphs[i], 0, sizeof c->graphs[i]);
    }
}

/*
 * Decode steps only (a few tokens: the matmuls are our kernels, not cuBLAS):
 * the first time a key comes the ops run as they come (which also settles
 * scratch sizes and tables), the second time they are recorded, and from
 * then on replayed after the batch's values are uploaded.
 */
static shoal_status cu_graph_begin(void *ctx, uint64_t key, const struct shoal_batch *b, int *replayed) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    *replayed = 0;
    if (!c->graphs_on || c->capturing || b->n_tokens < 1 || b->n_tokens > CUDA_GRAPH_MAX_TOKENS)
        return SHOAL_OK;
    const int n = (int)(sizeof c->graphs / sizeof *c->graphs);
    int at = -1, lru = 0;
    for (int i = 0; i < n; i++) {
        if (c->graphs[i].state && c->graphs[i].key == key) at = i;
        if (c->graphs[i].used < c->graphs[lru].used) lru = i;
    }
    c->graph_clock++;
    const struct dev_batch *d;
    if (at < 0) { /* first sight: remember it, run as it comes */
        if (c->graphs[lru].exec) cudaGraphExecDestroy(c->graphs[lru].exec);
        memset(&c->graphs[lru], 0, sizeof c->graphs[lru]);
        c->graphs[lru].key = key;
        c->graphs[lru].state = 1;
        c->graphs[lru].used = c->graph_clock;
        return SHOAL_OK;
    }
    c->graphs[at].used = c->graph_clock;
    if (c->graphs[at].state < 0) return SHOAL_OK;
    SHOAL_TRY(cuda_batch(c, b, &d)); /* uploaded before the recording or the replay */
    if (c->graphs[at].state == 2) {
        CU_TRY(cudaGraphLaunch(c->graphs[at].exec, c->stream));
        *replayed = 1;
        return SHOAL_OK;
    }
    CU_TRY(cudaStreamBeginCapture(c->stream, cudaStreamCaptureModeThreadLocal));
    c->capturing = 1;
    c->capture_slot = at;
    return SHOAL_OK;
}

static shoal_status cu_graph_end(void *ctx, int ok) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!c->capturing) return SHOAL_OK;
    c->capturing = 0;
    cudaGraph_t g = NULL;
    cudaError_t e = cudaStreamEndCapture(c->stream, &g);
    cudaGraphExec_t exec = NULL;
    if (ok && e == cudaSuccess) e = cudaGraphInstantiate(&exec, g, 0);
    if (g) cudaGraphDestroy(g);
    if (!ok || e != cudaSuccess) {
        /* run as it comes from now on; the failure itself the caller reports */
        cudaGetLastError();
        c->graphs[c->capture_slot].state = -1;
        if (ok) return cuda_fail(e, "recording a CUDA graph", __FILE__, __LINE__, c);
        return SHOAL_OK;
    }
    c->graphs[c->capture_slot].exec = exec;
    c->graphs[c->capture_slot].state = 2;
    CU_TRY(cudaGraphLaunch(exec, c->stream)); /* what was recorded has not run yet */
    return SHOAL_OK;
}

/* ------------------------------------------------------------ memory */

/* Beyond what is held already (a buffer grown is freed before its successor is made). */
static uint64_t cu_work_bytes(void *ctx, const struct shoal_work_shape *w) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    const size_t s = work_scratch_bytes(w, c->n_sm), b = batch_values(w->n_tokens, w->n_slots);
    return (s > c->scratch_cap ? s - c->scratch_cap : 0) +
           (b > c->batch_cap ? (b - c->batch_cap) * sizeof(int32_t) : 0);
}

static shoal_status cu_reserve(void *ctx, const struct shoal_work_shape *w) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    SHOAL_TRY(scratch_grow(c, work_scratch_bytes(w, c->n_sm), 1));
    return batch_grow(c, batch_values(w->n_tokens, w->n_slots));
}

static int cu_mem_measured(void *ctx, uint64_t *bytes) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    size_t f = 0, t = 0;
    if (cudaSetDevice(c->device) != cudaSuccess || cudaMemGetInfo(&f, &t) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    *bytes = c->free_at_start > f ? c->free_at_start - f : 0;
    return 1;
}

static void cu_graph_forget(void *ctx) { cuda_graphs_reset((struct cuda_ctx *)ctx); }

/* ------------------------------------------------------------ the table */

static size_t cu_weight_bytes(void *ctx, int type, int64_t rows, int64_t cols) {
    struct wlayout l;
    return cuda_weight_layout(type, rows, cols, &l) ? l.bytes : 0;
}

static shoal_status cu_weight_prepare(void *ctx, struct shoal_weight *w, const void *host, void *dst) {
    return cuda_weight_upload((struct cuda_ctx *)ctx, w, host, dst);
}

static shoal_status cu_matmul(void *ctx, float *y, const struct shoal_weight *w, const float *x,
                              int n) {
    return cuda_matmul((struct cuda_ctx *)ctx, 1, &y, NULL, &w, x, n);
}

static shoal_status cu_matmul_n(void *ctx, int k, float *const *y,
                                const struct shoal_weight *const *w, const float *x, int n) {
    return cuda_matmul((struct cuda_ctx *)ctx, k, y, NULL, w, x, n);
}

static shoal_status cu_matmul_f64(void *ctx, double *y, const struct shoal_weight *w,
                                  const float *x, int n) {
    return cuda_matmul((struct cuda_ctx *)ctx, 1, NULL, y, &w, x, n);
}

#define CTX(name, args, call)                                                              \
    static shoal_status name args { return call; }
CTX(cu_embed, (void *ctx, float *y, const struct shoal_weight *t, const struct shoal_batch *b),
    cuda_embed((struct cuda_ctx *)ctx, y, t, b))
CTX(cu_rmsnorm, (void *ctx, float *y, const float *x, const float *w, int n, int dim, float eps),
    cuda_rmsnorm((struct cuda_ctx *)ctx, y, x, w, n, dim, eps))
CTX(cu_rope, (void *ctx, float *x, int nh, int hd, const struct shoal_rope *r, const struct shoal_batch *b),
    cuda_rope((struct cuda_ctx *)ctx, x, nh, hd, r, b))
CTX(cu_kv_store, (void *ctx, const struct shoal_kv_desc *d, void *kc, void *vc, const float *k,
                  const float *v, const struct shoal_batch *b),
    cuda_kv_store((struct cuda_ctx *)ctx, d, kc, vc, k, v, b))
CTX(cu_attention, (void *ctx, float *out, const float *q, int nh, const struct shoal_kv_desc *d,
                   const void *kc, const void *vc, const struct shoal_batch *b, float scale, int window),
    cuda_attention((struct cuda_ctx *)ctx, out, q, nh, d, kc, vc, b, scale, window))
CTX(cu_silu_mul, (void *ctx, float *g, const float *u, size_t n), cuda_silu_mul((struct cuda_ctx *)ctx, g, u, n))
CTX(cu_gelu_mul, (void *ctx, float *g, const float *u, size_t n), cuda_gelu_mul((struct cuda_ctx *)ctx, g, u, n))
CTX(cu_scale, (void *ctx, float *y, size_t n, float s), cuda_scale((struct cuda_ctx *)ctx, y, n, s))
CTX(cu_round_f64, (void *ctx, float *y, const double *x, size_t n), cuda_round_f64((struct cuda_ctx *)ctx, y, x, n))
CTX(cu_add, (void *ctx, float *y, const float *x, size_t n), cuda_add((struct cuda_ctx *)ctx, y, x, n))
CTX(cu_add_f64, (void *ctx, float *y, const double *x, size_t n), cuda_add_f64((struct cuda_ctx *)ctx, y, x, n))
CTX(cu_gather_rows, (void *ctx, float *y, const float *x, const int32_t *idx, int n, int dim),
    cuda_gather_rows((struct cuda_ctx *)ctx, y, x, idx, n, dim))
CTX(cu_add_rows_f64, (void *ctx, double *y, const double *x, const int32_t *idx, const double *w, int n, int dim),
    cuda_add_rows_f64((struct cuda_ctx *)ctx, y, x, idx, w, n, dim))
CTX(cu_zero_f64, (void *ctx, double *y, size_t n), cuda_zero_f64((struct cuda_ctx *)ctx, y, n))
CTX(cu_add_bias, (void *ctx, float *y, const float *bias, int n, int dim),
    cuda_add_bias((struct cuda_ctx *)ctx, y, bias, n, dim))
#undef CTX

static shoal_status cu_topk(void *ctx, const float *x, int rows, int cols, int k, int32_t id0,
                            struct shoal_cand *out) {
    return cuda_topk((struct cuda_ctx *)ctx, x, rows, cols, k, id0, out);
}

static void cu_destroy(void *ctx) {
    struct cuda_ctx *c = (struct cuda_ctx *)ctx;
    if (!c) return;
    cudaSetDevice(c->device);
    if (c->capturing) {
        cudaGraph_t g = NULL;
        cudaStreamEndCapture(c->stream, &g);
        if (g) cudaGraphDestroy(g);
    }
    if (c->stream) cudaStreamSynchronize(c->stream);
    cuda_graphs_reset(c);
    if (c->cublas) cublasDestroy(c->cublas);
    /* the handle is going too: its count no longer matters */
    cudaFree(c->cublas_ws);
    cudaFree(c->scratch);
    cudaFree(c->batch_dev);
    cudaFreeHost(c->batch_pinned);
    free(c->batch_host);
    cudaFree(c->rope_tab);
    cudaFreeHost(c->rope_host);
    if (c->copy) cudaStreamSynchronize(c->copy);
    if (c->batch_copied) cudaEventDestroy(c->batch_copied);
    if (c->compute_mark) cudaEventDestroy(c->compute_mark);
    for (size_t i = 0; i < sizeof c->fetched / sizeof *c->fetched; i++) {
        if (c->fetched[i]) cudaEventDestroy(c->fetched[i]);
        cudaEvent_t *evs[4] = { c->copies.start, c->copies.end, c->stalls.start, c->stalls.end };
        for (int k = 0; k < 4; k++)
            if (evs[k][i]) cudaEventDestroy(evs[k][i]);
    }
    if (c->copy) cudaStreamDestroy(c->copy);
    if (c->stream) cudaStreamDestroy(c->stream);
    free(c);
}

static struct shoal_backend_i make_iface(void) {
    struct shoal_backend_i t;
    memset(&t, 0, sizeof t);
    t.name = "cuda";
    t.host_memory = 0;
    t.destroy = cu_destroy;
    t.alloc = cu_alloc;
    t.free = cu_free;
    t.upload = cu_upload;
    t.download = cu_download;
    t.memset0 = cu_memset0;
    t.weight_bytes = cu_weight_bytes;
    t.weight_prepare = cu_weight_prepare;
    t.embed = cu_embed;
    t.matmul = cu_matmul;
    t.matmul_n = cu_matmul_n;
    t.matmul_f64 = cu_matmul_f64;
    t.add_f64 = cu_add_f64;
    t.rmsnorm = cu_rmsnorm;
    t.rope = cu_rope;
    t.kv_store = cu_kv_store;
    t.attention = cu_attention;
    t.silu_mul = cu_silu_mul;
    t.gelu_mul = cu_gelu_mul;
    t.scale = cu_scale;
    t.round_f64 = cu_round_f64;
    t.add = cu_add;
    t.add_bias = cu_add_bias;
    t.gather_rows = cu_gather_rows;
    t.add_rows_f64 = cu_add_rows_f64;
    t.zero_f64 = cu_zero_f64;
    t.synchronize = cu_synchronize;
    t.host_alloc = cu_host_alloc;
    t.host_free = cu_host_free;
    t.weight_pack = cu_weight_pack;
    t.fetch = cu_fetch;
    t.fetch_wait = cu_fetch_wait;
    t.fetch_sync = cu_fetch_sync;
    t.fetch_busy = cu_fetch_busy;
    t.fetch_stalled = cu_fetch_stalled;
    t.topk = cu_topk;
    t.topk_max = CUDA_TOPK_MAX; /* more candidates are picked on the host */
    t.graph_begin = cu_graph_begin;
    t.graph_end = cu_graph_end;
    t.graph_forget = cu_graph_forget;
    t.work_bytes = cu_work_bytes;
    t.reserve = cu_reserve;
    t.mem_measured = cu_mem_measured;
    return t;
}
/* (C++ has no designated initializers for this table before C++20) */
static const struct shoal_backend_i cuda_iface = make_iface();

extern "C" shoal_status shoal_cudamod_backend_create(struct shoal_backend **out,
                                                     const struct shoal_cuda_params *params) {
    *out = NULL;
    const char *why = NULL;
    int count = shoal_cudamod_device_count(&why);
    int dev = params ? params->device : 0;
    if (count == 0)
        return shoal_errorf(SHOAL_UNSUPPORTED, "no CUDA device can be used here: %s "
                            "(run with --device cpu)", why);
    if (dev < 0 || dev >= count)
        return shoal_errorf(SHOAL_INVALID, "CUDA device %d does not exist: this machine has %d "
                            "(0..%d)", dev, count, count - 1);
    struct cuda_ctx *c = (struct cuda_ctx *)calloc(1, sizeof *c);
    if (!c) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    c->device = dev;
    c->rank = params ? params->rank : -1;
    c->graphs_on = !(params && params->no_graphs);
    shoal_status rc = SHOAL_OK;
    cudaError_t e;
    cublasStatus_t be;
#define STEP(call)                                                                         \
    if ((e = (call)) != cudaSuccess) {                                                     \
        rc = cuda_fail(e, #call, __FILE__, __LINE__, c);                                 \
        goto fail;                                                                         \
    }
    STEP(cudaSetDevice(dev));
    STEP(cudaDeviceGetAttribute(&c->n_sm, cudaDevAttrMultiProcessorCount, dev));
    STEP(cudaStreamCreateWithFlags(&c->stream, cudaStreamNonBlocking));
    STEP(cudaEventCreateWithFlags(&c->batch_copied, cudaEventDisableTiming));
    STEP(cudaStreamCreateWithFlags(&c->copy, cudaStreamNonBlocking));
    STEP(cudaEventCreateWithFlags(&c->compute_mark, cudaEventDisableTiming));
    for (size_t i = 0; i < sizeof c->fetched / sizeof *c->fetched; i++) {
        STEP(cudaEventCreateWithFlags(&c->fetched[i], cudaEventDisableTiming));
        STEP(cudaEventCreate(&c->copies.start[i]));
        STEP(cudaEventCreate(&c->copies.end[i]));
        STEP(cudaEventCreate(&c->stalls.start[i]));
        STEP(cudaEventCreate(&c->stalls.end[i]));
    }
    STEP(cudaHostAlloc((void **)&c->rope_host, sizeof(double) * 2 * ROPE_TAB_MAX, cudaHostAllocDefault));
#undef STEP
    if ((be = cublasCreate(&c->cublas)) != CUBLAS_STATUS_SUCCESS ||
        (be = cublasSetStream(c->cublas, c->stream)) != CUBLAS_STATUS_SUCCESS) {
        rc = cublas_fail(be, "cublasCreate", __FILE__, __LINE__, c);
        goto fail;
    }
    {
        /* from here on the driver's free memory less this is what the process took */
        size_t f = 0, t = 0;
        if ((e = cudaMemGetInfo(&f, &t)) != cudaSuccess) {
            rc = cuda_fail(e, "cudaMemGetInfo", __FILE__, __LINE__, c);
            goto fail;
        }
        c->free_at_start = f;
    }
    *out = shoal_backend_new(&cuda_iface, c);
    if (!*out) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        goto fail;
    }
    c->self = *out;
    /* what cuBLAS would allocate for itself it gets from us, counted */
    if ((rc = dev_alloc(c, CUBLAS_WORKSPACE_BYTES, &c->cublas_ws)) != SHOAL_OK ||
        (rc = dev_alloc(c, sizeof(double) * 2 * ROPE_TAB_MAX, (void **)&c->rope_tab)) != SHOAL_OK)
        goto fail_handle;
    if ((be = cublasSetWorkspace(c->cublas, c->cublas_ws, CUBLAS_WORKSPACE_BYTES)) != CUBLAS_STATUS_SUCCESS) {
        rc = cublas_fail(be, "cublasSetWorkspace", __FILE__, __LINE__, c);
        goto fail_handle;
    }
    return SHOAL_OK;
fail_handle:
    shoal_backend_destroy(*out); /* destroys c too */
    *out = NULL;
    return rc;
fail:
    cu_destroy(c);
    return rc;
}

extern "C" void *shoal_cudamod_backend_stream(struct shoal_backend *b) {
    return b && b->iface == &cuda_iface ? (void *)((struct cuda_ctx *)b->ctx)->stream : NULL;
}

extern "C" int shoal_cudamod_backend_device(struct shoal_backend *b) {
    return b && b->iface == &cuda_iface ? ((struct cuda_ctx *)b->ctx)->device : -1;
}
