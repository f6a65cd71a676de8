/*
 * The table behind a compute backend. Backends (cpu/, cuda/) include this;
 * everyone else uses the wrappers in backend.h. Slots marked optional may
 * be NULL and the wrapper falls back.
 */
#ifndef SHOAL_BACKEND_IMPL_H
#define SHOAL_BACKEND_IMPL_H

#include "backend.h"

struct shoal_backend_i {
    const char *name;
    int host_memory; /* its buffers are host memory that the CPU may read and write */
    void (*destroy)(void *ctx);
    shoal_status (*alloc)(void *ctx, size_t bytes, void **out);
    void (*free)(void *ctx, void *p);
    shoal_status (*upload)(void *ctx, void *dst, const void *src, size_t n);
    shoal_status (*download)(void *ctx, void *dst, const void *src, size_t n);
    shoal_status (*memset0)(void *ctx, void *dst, size_t n); /* optional: upload of zeros */
    /*
     * optional: bytes of device memory a weight of (rows, cols) of type needs
     * when prepared (0: it is used in place); default rows * row bytes
     */
    size_t (*weight_bytes)(void *ctx, int type, int64_t rows, int64_t cols);
    /* optional: default copies the bytes to dst (weight_bytes of device memory) */
    shoal_status (*weight_prepare)(void *ctx, struct shoal_weight *w, const void *host, void *dst);
    shoal_status (*embed)(void *ctx, float *y, const struct shoal_weight *table,
                          const struct shoal_batch *batch);
    shoal_status (*matmul)(void *ctx, float *y, const struct shoal_weight *w, const float *x,
                           int n);
    shoal_status (*matmul_f64)(void *ctx, double *y, const struct shoal_weight *w, const float *x,
                               int n);
    shoal_status (*add_f64)(void *ctx, float *y, const double *x, size_t n);
    /* optional: several weights on one input; default calls matmul for each */
    shoal_status (*matmul_n)(void *ctx, int k, float *const *y, const struct shoal_weight *const *w,
                             const float *x, int n);
    shoal_status (*rmsnorm)(void *ctx, float *y, const float *x, const float *w, int n, int dim,
                            float eps);
    shoal_status (*rope)(void *ctx, float *x, int n_heads, int head_dim,
                         const struct shoal_rope *rope, const struct shoal_batch *batch);
    shoal_status (*kv_store)(void *ctx, const struct shoal_kv_desc *d, void *kcache,
                             void *vcache, const float *k, const float *v,
                             const struct shoal_batch *batch);
    shoal_status (*attention)(void *ctx, float *out, const float *q, int n_heads,
                              const struct shoal_kv_desc *d, const void *kcache,
                              const void *vcache, const struct shoal_batch *batch, float scale,
                              int window);
    shoal_status (*silu_mul)(void *ctx, float *gate, const float *up, size_t n);
    shoal_status (*gelu_mul)(void *ctx, float *gate, const float *up, size_t n);
    shoal_status (*scale)(void *ctx, float *y, size_t n, float s);
    shoal_status (*round_f64)(void *ctx, float *y, const double *x, size_t n);
    shoal_status (*add)(void *ctx, float *y, const float *x, size_t n);
    shoal_status (*add_bias)(void *ctx, float *y, const float *bias, int n, int dim);
    /* optional (a model with experts needs them): shoal_op_gather_rows, _add_rows_f64, _zero_f64 */
    shoal_status (*gather_rows)(void *ctx, float *y, const float *x, const int32_t *idx, int n, int dim);
    shoal_status (*add_rows_f64)(void *ctx, double *y, const double *x, const int32_t *idx, const double *w,
                                 int n, int dim);
    shoal_status (*zero_f64)(void *ctx, double *y, size_t n);
    shoal_status (*synchronize)(void *ctx); /* optional: no queue */
    /* optional, for k up to topk_max: default downloads the rows and selects on the host */
    shoal_status (*topk)(void *ctx, const float *x, int rows, int cols, int k, int32_t id0,
                         struct shoal_cand *out);
    int topk_max;
    /* optional: host memory copies to the device go fastest from (pinned); default malloc */
    shoal_status (*host_alloc)(void *ctx, size_t bytes, void **out);
    void (*host_free)(void *ctx, void *p);
    /* optional: a weight's device image made on the host (what weight_prepare puts on the
     * device, weight_bytes of it); default: its bytes as they are */
    shoal_status (*weight_pack)(void *ctx, int type, int64_t rows, int64_t cols, const void *src,
                                void *dst);
    /* optional: host -> device behind the work queued so far, overlapping what follows
     * (shoal_backend_fetch); default: upload, done at once */
    shoal_status (*fetch)(void *ctx, void *dst, const void *src, size_t n, uint64_t *ticket);
    shoal_status (*fetch_wait)(void *ctx, uint64_t ticket);
    shoal_status (*fetch_sync)(void *ctx, uint64_t ticket); /* the host waits (its source reusable) */
    double (*fetch_busy)(void *ctx); /* optional: seconds spent copying */
    double (*fetch_stalled)(void *ctx); /* optional: seconds the compute queue waited for copies */
    /* optional: recording a step's ops once and replaying them (shoal_backend_graph_begin) */
    shoal_status (*graph_begin)(void *ctx, uint64_t key, const struct shoal_batch *b, int *replayed);
    shoal_status (*graph_end)(void *ctx, int ok);
    void (*graph_forget)(void *ctx); /* optional: drops every recording */
    /* optional: working memory for steps of a shape (shoal_backend_work_bytes), and
     * its allocation; default 0 and nothing */
    uint64_t (*work_bytes)(void *ctx, const struct shoal_work_shape *w);
    shoal_status (*reserve)(void *ctx, const struct shoal_work_shape *w);
    /* optional: what the driver says was taken since the backend was made (1), or 0 */
    int (*mem_measured)(void *ctx, uint64_t *bytes);
    /* optional: lanes (shoal_backend_lanes, shoal_backend_run_lanes); default none */
    int (*lanes)(void *ctx);
    shoal_status (*run_lanes)(void *ctx, int n, shoal_lane_fn fn, void *arg);
    shoal_status (*lane_barrier)(void *ctx); /* on a lane's backend */
    /* optional: whether the kernels are batch-invariant (shoal_backend_batch_invariant); default 0 */
    int (*batch_invariant)(void *ctx);
};

struct shoal_backend {
    const struct shoal_backend_i *iface;
    void *ctx;
    /* device memory allocated through shoal_backend_alloc, against the budget */
    uint64_t budget, in_use, peak;
    uint64_t serial; /* shoal_backend_serial's last */
    struct shoal_backend_block { void *p; size_t bytes; } *blocks;
    int n_blocks, cap_blocks;
};

/* For backends: wraps a table and a context into a handle (NULL on no memory). */
struct shoal_backend *shoal_backend_new(const struct shoal_backend_i *iface, void *ctx);

#endif
