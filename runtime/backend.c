/*
 * backend.c — the public wrappers around a compute backend's table, and the
 * fallbacks for its optional slots. No arithmetic happens here.
 */
#include "backend_impl.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

struct shoal_backend *shoal_backend_new(const struct shoal_backend_i *iface, void *ctx) {
    struct shoal_backend *b = calloc(1, sizeof *b);
    if (!b) return NULL;
    b->iface = iface;
    b->ctx = ctx;
    return b;
}

const char *shoal_backend_name(const struct shoal_backend *b) { return b->iface->name; }
int shoal_backend_host_memory(const struct shoal_backend *b) { return b->iface->host_memory; }

void shoal_backend_destroy(struct shoal_backend *b) {
    if (!b) return;
    if (b->iface->destroy) b->iface->destroy(b->ctx);
    free(b->blocks);
    free(b);
}

/* ------------------------------------------------------------ KV types */

static const char *const kv_names[] = { "f32", "f16", "q8" };

const char *shoal_kv_type_name(int t) {
    return t >= 0 && t < 3 ? kv_names[t] : "unknown";
}

int shoal_kv_type_from_name(const char *name) {
    for (int t = 0; t < 3; t++)
        if (strcmp(kv_names[t], name) == 0) return t;
    if (strcmp(name, "q8_0") == 0) return SHOAL_KV_Q8;
    return -1;
}

void shoal_kv_desc_init(struct shoal_kv_desc *d, int type, int n_kv_heads, int head_dim,
                        int64_t n_slots) {
    d->type = type;
    d->n_kv_heads = n_kv_heads;
    d->head_dim = head_dim;
    d->n_slots = n_slots;
    switch (type) {
    case SHOAL_KV_F32: d->head_bytes = (size_t)head_dim * 4; break;
    case SHOAL_KV_F16: d->head_bytes = (size_t)head_dim * 2; break;
    default: d->head_bytes = 4 + (size_t)head_dim; break;
    }
    d->row_bytes = d->head_bytes * (size_t)n_kv_heads;
}

/* -------------------------------------------------------------- memory */

void shoal_backend_set_budget(struct shoal_backend *b, uint64_t bytes) { b->budget = bytes; }

void shoal_backend_mem(const struct shoal_backend *b, uint64_t *in_use, uint64_t *peak) {
    if (in_use) *in_use = b->in_use;
    if (peak) *peak = b->peak;
}

void shoal_backend_peak_reset(struct shoal_backend *b) { b->peak = b->in_use; }

void shoal_backend_account(struct shoal_backend *b, uint64_t bytes) {
    b->in_use += bytes;
    if (b->in_use > b->peak) b->peak = b->in_use;
}

uint64_t shoal_backend_mem_measured(struct shoal_backend *b, int *known) {
    uint64_t bytes = 0;
    *known = b->iface->mem_measured ? b->iface->mem_measured(b->ctx, &bytes) : 0;
    return *known ? bytes : 0;
}

uint64_t shoal_backend_work_bytes(struct shoal_backend *b, const struct shoal_work_shape *w) {
    return b->iface->work_bytes ? b->iface->work_bytes(b->ctx, w) : 0;
}

shoal_status shoal_backend_reserve(struct shoal_backend *b, const struct shoal_work_shape *w) {
    return b->iface->reserve ? b->iface->reserve(b->ctx, w) : SHOAL_OK;
}

uint64_t shoal_backend_serial(struct shoal_backend *b) { return ++b->serial; }

int shoal_backend_lanes(const struct shoal_backend *b) {
    return b->iface->lanes ? b->iface->lanes(b->ctx) : 0;
}

int shoal_backend_batch_invariant(const struct shoal_backend *b) {
    return b->iface->batch_invariant ? b->iface->batch_invariant(b->ctx) : 0;
}

shoal_status shoal_backend_lane_barrier(struct shoal_backend *lane) {
    return lane->iface->lane_barrier ? lane->iface->lane_barrier(lane->ctx) : SHOAL_OK;
}

shoal_status shoal_backend_run_lanes(struct shoal_backend *b, int n, shoal_lane_fn fn, void *arg) {
    if (n < 1 || n > shoal_backend_lanes(b))
        return shoal_errorf(SHOAL_INTERNAL, "%d lanes asked of a backend with %d", n, shoal_backend_lanes(b));
    return b->iface->run_lanes(b->ctx, n, fn, arg);
}

void shoal_backend_graph_forget(struct shoal_backend *b) {
    if (b->iface->graph_forget) b->iface->graph_forget(b->ctx);
}

shoal_status shoal_backend_alloc(struct shoal_backend *b, size_t bytes, void **out) {
    *out = NULL;
    if (b->budget && b->in_use + bytes > b->budget) {
        char a[32], u[32], l[32];
        return shoal_errorf(SHOAL_NOMEM, "%s memory budget of %s exceeded: %s in use, %s more asked",
                            b->iface->name, shoal_fmt_bytes(l, sizeof l, (double)b->budget),
                            shoal_fmt_bytes(u, sizeof u, (double)b->in_use),
                            shoal_fmt_bytes(a, sizeof a, (double)bytes));
    }
    if (b->n_blocks == b->cap_blocks) {
        int cap = b->cap_blocks ? 2 * b->cap_blocks : 32;
        void *p = realloc(b->blocks, (size_t)cap * sizeof *b->blocks);
        if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        b->blocks = p;
        b->cap_blocks = cap;
    }
    SHOAL_TRY(b->iface->alloc(b->ctx, bytes, out));
    b->blocks[b->n_blocks++] = (struct shoal_backend_block){ *out, bytes };
    b->in_use += bytes;
    if (b->in_use > b->peak) b->peak = b->in_use;
    return SHOAL_OK;
}

void shoal_backend_free(struct shoal_backend *b, void *p) {
    if (!p) return;
    for (int i = b->n_blocks - 1; i >= 0; i--)
        if (b->blocks[i].p == p) {
            b->in_use -= b->blocks[i].bytes;
            b->blocks[i] = b->blocks[--b->n_blocks];
            break;
        }
    b->iface->free(b->ctx, p);
}

shoal_status shoal_backend_upload(struct shoal_backend *b, void *dst, const void *src, size_t n) {
    return b->iface->upload(b->ctx, dst, src, n);
}

shoal_status shoal_backend_download(struct shoal_backend *b, void *dst, const void *src,
                                    size_t n) {
    return b->iface->download(b->ctx, dst, src, n);
}

shoal_status shoal_backend_memset0(struct shoal_backend *b, void *dst, size_t n) {
    if (b->iface->memset0) return b->iface->memset0(b->ctx, dst, n);
    enum { CHUNK = 1 << 20 };
    void *zeros = calloc(1, n < CHUNK ? n : CHUNK);
    if (!zeros) return shoal_errorf(SHOAL_NOMEM, "out of memory clearing a device buffer");
    shoal_status rc = SHOAL_OK;
    for (size_t off = 0; off < n && rc == SHOAL_OK; off += CHUNK)
        rc = b->iface->upload(b->ctx, (char *)dst + off, zeros, n - off < CHUNK ? n - off : CHUNK);
    free(zeros);
    return rc;
}

size_t shoal_weight_bytes(struct shoal_backend *b, int type, int64_t rows, int64_t cols) {
    size_t rb = shoal_dtype_row_bytes(type, cols);
    if (!rb || rows <= 0) return 0;
    if (b->iface->weight_bytes) return b->iface->weight_bytes(b->ctx, type, rows, cols);
    return (size_t)rows * rb;
}

/* w's shape (nothing of its bytes yet); a shape the type cannot hold is an error. */
static shoal_status weight_shape(struct shoal_weight *w, int type, int64_t rows, int64_t cols) {
    memset(w, 0, sizeof *w);
    w->type = type;
    w->rows = rows;
    w->cols = cols;
    w->row_bytes = shoal_dtype_row_bytes(type, cols);
    if (!w->row_bytes || rows <= 0)
        return shoal_errorf(SHOAL_INVALID, "a %s weight of %lld x %lld cannot be prepared",
                            shoal_dtype_name(type), (long long)rows, (long long)cols);
    return SHOAL_OK;
}

shoal_status shoal_weight_prepare(struct shoal_backend *b, struct shoal_weight *w, int type,
                                  int64_t rows, int64_t cols, const void *host, void *dst) {
    SHOAL_TRY(weight_shape(w, type, rows, cols));
    size_t bytes = shoal_weight_bytes(b, type, rows, cols);
    if (!dst && bytes) {
        SHOAL_TRY(shoal_backend_alloc(b, bytes, &w->owned));
        dst = w->owned;
    }
    shoal_status rc = b->iface->weight_prepare ? b->iface->weight_prepare(b->ctx, w, host, dst)
                                               : b->iface->upload(b->ctx, dst, host, bytes);
    if (rc == SHOAL_OK && !b->iface->weight_prepare) w->data = dst;
    if (rc != SHOAL_OK) shoal_weight_release(b, w);
    return rc;
}

shoal_status shoal_weight_lookup(struct shoal_backend *b, struct shoal_weight *w, int type,
                                 int64_t rows, int64_t cols, const void *host, void *dst) {
    if (!b->iface->host_memory) return shoal_weight_prepare(b, w, type, rows, cols, host, dst);
    SHOAL_TRY(weight_shape(w, type, rows, cols));
    w->data = host;
    w->as_rows = 1;
    return SHOAL_OK;
}

void shoal_weight_release(struct shoal_backend *b, struct shoal_weight *w) {
    if (w->owned) shoal_backend_free(b, w->owned);
    w->owned = NULL;
    w->data = NULL;
}

/* ----------------------------------------------------------------- ops */

shoal_status shoal_op_embed(struct shoal_backend *b, float *y, const struct shoal_weight *table,
                            const struct shoal_batch *batch) {
    return b->iface->embed(b->ctx, y, table, batch);
}

shoal_status shoal_op_matmul(struct shoal_backend *b, float *y, const struct shoal_weight *w,
                             const float *x, int n) {
    return b->iface->matmul(b->ctx, y, w, x, n);
}

shoal_status shoal_op_matmul_f64(struct shoal_backend *b, double *y, const struct shoal_weight *w,
                                 const float *x, int n) {
    return b->iface->matmul_f64(b->ctx, y, w, x, n);
}

shoal_status shoal_op_add_f64(struct shoal_backend *b, float *y, const double *x, size_t n) {
    return b->iface->add_f64(b->ctx, y, x, n);
}

shoal_status shoal_op_matmul_n(struct shoal_backend *b, int k, float *const *y,
                               const struct shoal_weight *const *w, const float *x, int n) {
    if (k < 1 || k > SHOAL_MATMUL_MAX)
        return shoal_errorf(SHOAL_INTERNAL, "matmul_n of %d weights (1..%d)", k, SHOAL_MATMUL_MAX);
    for (int i = 1; i < k; i++)
        if (w[i]->cols != w[0]->cols)
            return shoal_errorf(SHOAL_INTERNAL, "matmul_n: weights of %lld and %lld columns",
                                (long long)w[0]->cols, (long long)w[i]->cols);
    if (b->iface->matmul_n) return b->iface->matmul_n(b->ctx, k, y, w, x, n);
    for (int i = 0; i < k; i++) SHOAL_TRY(b->iface->matmul(b->ctx, y[i], w[i], x, n));
    return SHOAL_OK;
}

shoal_status shoal_op_rmsnorm(struct shoal_backend *b, float *y, const float *x, const float *w,
                              int n, int dim, float eps) {
    return b->iface->rmsnorm(b->ctx, y, x, w, n, dim, eps);
}

shoal_status shoal_op_rope(struct shoal_backend *b, float *x, int n_heads, int head_dim,
                           const struct shoal_rope *rope, const struct shoal_batch *batch) {
    return b->iface->rope(b->ctx, x, n_heads, head_dim, rope, batch);
}

shoal_status shoal_op_kv_store(struct shoal_backend *b, const struct shoal_kv_desc *d,
                               void *kcache, void *vcache, const float *k, const float *v,
                               const struct shoal_batch *batch) {
    return b->iface->kv_store(b->ctx, d, kcache, vcache, k, v, batch);
}

shoal_status shoal_op_attention(struct shoal_backend *b, float *out, const float *q, int n_heads,
                                const struct shoal_kv_desc *d, const void *kcache,
                                const void *vcache, const struct shoal_batch *batch, float scale,
                                int window) {
    if (window < 0) return shoal_errorf(SHOAL_INTERNAL, "an attention window of %d positions", window);
    return b->iface->attention(b->ctx, out, q, n_heads, d, kcache, vcache, batch, scale, window);
}

shoal_status shoal_op_gelu_mul(struct shoal_backend *b, float *gate, const float *up, size_t n) {
    if (!b->iface->gelu_mul)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend has no GELU", b->iface->name);
    return b->iface->gelu_mul(b->ctx, gate, up, n);
}

shoal_status shoal_op_scale(struct shoal_backend *b, float *y, size_t n, float s) {
    if (!b->iface->scale) return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend cannot scale", b->iface->name);
    return b->iface->scale(b->ctx, y, n, s);
}

shoal_status shoal_op_round_f64(struct shoal_backend *b, float *y, const double *x, size_t n) {
    if (!b->iface->round_f64)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend cannot round f64 sums", b->iface->name);
    return b->iface->round_f64(b->ctx, y, x, n);
}

shoal_status shoal_op_silu_mul(struct shoal_backend *b, float *gate, const float *up, size_t n) {
    return b->iface->silu_mul(b->ctx, gate, up, n);
}

shoal_status shoal_op_add(struct shoal_backend *b, float *y, const float *x, size_t n) {
    return b->iface->add(b->ctx, y, x, n);
}

shoal_status shoal_op_add_bias(struct shoal_backend *b, float *y, const float *bias, int n,
                               int dim) {
    return b->iface->add_bias(b->ctx, y, bias, n, dim);
}

/* Every index of a gather or an add below rows. */
static shoal_status check_rows(const char *op, int rows, const int32_t *idx, int n, int dim) {
    if (n < 0 || dim < 0) return shoal_errorf(SHOAL_INTERNAL, "%s of %d rows of %d values", op, n, dim);
    for (int i = 0; i < n; i++)
        if (idx[i] < 0 || idx[i] >= rows)
            return shoal_errorf(SHOAL_INTERNAL, "%s: row %d outside the %d rows", op, idx[i], rows);
    return SHOAL_OK;
}

shoal_status shoal_op_gather_rows(struct shoal_backend *b, float *y, const float *x, int rows,
                                  const int32_t *idx, int n, int dim) {
    if (!b->iface->gather_rows)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend cannot gather rows (experts)", b->iface->name);
    SHOAL_TRY(check_rows("gather_rows", rows, idx, n, dim));
    return n && dim ? b->iface->gather_rows(b->ctx, y, x, idx, n, dim) : SHOAL_OK;
}

shoal_status shoal_op_add_rows_f64(struct shoal_backend *b, double *y, int rows, const double *x,
                                   const int32_t *idx, const double *w, int n, int dim) {
    if (!b->iface->add_rows_f64)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend cannot add rows (experts)", b->iface->name);
    SHOAL_TRY(check_rows("add_rows_f64", rows, idx, n, dim));
    return n && dim ? b->iface->add_rows_f64(b->ctx, y, x, idx, w, n, dim) : SHOAL_OK;
}

shoal_status shoal_op_zero_f64(struct shoal_backend *b, double *y, size_t n) {
    if (!b->iface->zero_f64)
        return shoal_errorf(SHOAL_UNSUPPORTED, "the %s backend cannot clear f64 sums", b->iface->name);
    return n ? b->iface->zero_f64(b->ctx, y, n) : SHOAL_OK;
}

shoal_status shoal_backend_synchronize(struct shoal_backend *b) {
    return b->iface->synchronize ? b->iface->synchronize(b->ctx) : SHOAL_OK;
}

shoal_status shoal_backend_graph_begin(struct shoal_backend *b, uint64_t key,
                                       const struct shoal_batch *batch, int *replayed) {
    *replayed = 0;
    return b->iface->graph_begin ? b->iface->graph_begin(b->ctx, key, batch, replayed) : SHOAL_OK;
}

shoal_status shoal_backend_graph_end(struct shoal_backend *b, int ok) {
    return b->iface->graph_end ? b->iface->graph_end(b->ctx, ok) : SHOAL_OK;
}

/* The k best of a row of n logits whose first token is id0, best first (k small: a sorted insert). */
void shoal_cand_pad(struct shoal_cand *out, int have, int k) {
    for (; have < k; have++) out[have] = (struct shoal_cand){ -INFINITY, INT32_MAX };
}

static void row_best(const float *row, int n, int32_t id0, int k, struct shoal_cand *out) {
    int have = 0;
    for (int i = 0; i < n; i++) shoal_cand_keep(out, k, &have, (struct shoal_cand){ row[i], id0 + i });
    shoal_cand_pad(out, have, k);
}

shoal_status shoal_op_topk(struct shoal_backend *b, const float *x, int rows, int cols, int k,
                           int32_t id0, struct shoal_cand *out) {
    if (rows <= 0 || k <= 0) return SHOAL_OK;
    if (b->iface->topk && k <= b->iface->topk_max)
        return b->iface->topk(b->ctx, x, rows, cols, k, id0, out);
    const float *host = x;
    float *copy = NULL;
    if (!b->iface->host_memory) {
        if (!(copy = malloc((size_t)rows * (size_t)cols * sizeof(float))))
            return shoal_errorf(SHOAL_NOMEM, "out of memory for %d rows of logits", rows);
        shoal_status rc = b->iface->download(b->ctx, copy, x, (size_t)rows * (size_t)cols * sizeof(float));
        if (rc != SHOAL_OK) {
            free(copy);
            return rc;
        }
        host = copy;
    } else {
        SHOAL_TRY(shoal_backend_synchronize(b));
    }
    for (int r = 0; r < rows; r++) row_best(host + (size_t)r * cols, cols, id0, k, out + (size_t)r * k);
    free(copy);
    return SHOAL_OK;
}

/* ------------------------------------------------------------- offload */

shoal_status shoal_backend_host_alloc(struct shoal_backend *b, size_t bytes, void **out) {
    if (b->iface->host_alloc) return b->iface->host_alloc(b->ctx, bytes, out);
    if (!(*out = malloc(bytes ? bytes : 1)))
        return shoal_errorf(SHOAL_NOMEM, "cannot allocate %zu bytes of host memory", bytes);
    return SHOAL_OK;
}

void shoal_backend_host_free(struct shoal_backend *b, void *p) {
    if (!p) return;
    if (b->iface->host_free) b->iface->host_free(b->ctx, p);
    else free(p);
}

shoal_status shoal_backend_fetch(struct shoal_backend *b, void *dst, const void *src, size_t n,
                                 uint64_t *ticket) {
    *ticket = 0;
    if (b->iface->fetch) return b->iface->fetch(b->ctx, dst, src, n, ticket);
    return b->iface->upload(b->ctx, dst, src, n);
}

shoal_status shoal_backend_fetch_wait(struct shoal_backend *b, uint64_t ticket) {
    return b->iface->fetch_wait && ticket ? b->iface->fetch_wait(b->ctx, ticket) : SHOAL_OK;
}

shoal_status shoal_backend_fetch_sync(struct shoal_backend *b, uint64_t ticket) {
    if (!ticket) return SHOAL_OK;
    if (b->iface->fetch_sync) return b->iface->fetch_sync(b->ctx, ticket);
    return shoal_backend_fetch_wait(b, ticket);
}

double shoal_backend_fetch_busy(struct shoal_backend *b) {
    return b->iface->fetch_busy ? b->iface->fetch_busy(b->ctx) : 0;
}

double shoal_backend_fetch_stalled(struct shoal_backend *b) {
    return b->iface->fetch_stalled ? b->iface->fetch_stalled(b->ctx) : -1;
}

int shoal_backend_packs_weights(const struct shoal_backend *b) { return b->iface->weight_pack != NULL; }

shoal_status shoal_weight_pack(struct shoal_backend *b, int type, int64_t rows, int64_t cols,
                               const void *src, void *dst) {
    if (b->iface->weight_pack) return b->iface->weight_pack(b->ctx, type, rows, cols, src, dst);
    memcpy(dst, src, (size_t)rows * shoal_dtype_row_bytes(type, cols));
    return SHOAL_OK;
}

shoal_status shoal_weight_bind(struct shoal_backend *b, struct shoal_weight *w, int type,
                               int64_t rows, int64_t cols, const void *dev) {
    SHOAL_TRY(weight_shape(w, type, rows, cols));
    w->data = dev;
    return SHOAL_OK;
}
