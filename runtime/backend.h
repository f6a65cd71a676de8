/*
 * The compute-backend interface: everything the model forward pass asks of a
 * device. cpu/ and cuda/ each provide one; the forward pass in runtime/model.c
 * is written once against these wrappers and never sees a kernel.
 *
 * Pointers named "device" below are in the backend's memory (host memory for
 * the CPU backend). Float activations are f32 and row-major: a buffer of
 * n tokens x d values holds token t's values at [t*d, (t+1)*d).
 * Each wrapper returns SHOAL_OK or an error with its detail set.
 */
#ifndef SHOAL_BACKEND_H
#define SHOAL_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "../base/base.h"

struct shoal_backend; /* opaque: see backend_impl.h */

/* A weight matrix usable by matmul: y = W x with W of (rows, cols). */
struct shoal_weight {
    int type;          /* enum shoal_dtype of the stored rows */
    int64_t rows, cols;
    size_t row_bytes;  /* bytes of one row of cols values */
    const void *data;  /* device: the backend's image of the weight (shoal_weight_bytes) */
    void *owned;       /* device memory the backend allocated for it, or NULL */
    int as_rows;       /* data is the file's rows as they are, in host memory: a lookup
                        * table used in place (shoal_weight_lookup), not an image */
    /*
     * Float weights (F32, F16, BF16) only, 0 unless the caller sets it after
     * preparing: shoal_op_matmul_f64 may sum the products of each run of this
     * many columns (from column 0) in f32, in an order of its own, and add the
     * runs in f64, rather than add every exact product in f64. The caller sets
     * it only where every layout cuts the weight's columns on such runs
     * (shoal_float_f64_block), so that the runs, and their sums, are the same
     * on one rank and on the ranks that share the weight.
     */
    int f64_block;
};

/* Rotary position embedding. */
enum shoal_rope_mode {
    SHOAL_ROPE_NORM = 0, /* rotate adjacent pairs (x[2i], x[2i+1]): GGUF "llama" */
    SHOAL_ROPE_NEOX = 2, /* rotate halves (x[i], x[i+rope_dim/2]): GPT-NeoX, Qwen2 */
};
struct shoal_rope {
    int mode;          /* enum shoal_rope_mode */
    int rope_dim;      /* leading dims of each head that rotate (<= head_dim, even) */
    float freq_base;   /* theta_i = pos * freq_scale * base^(-2i/rope_dim) */
    float freq_scale;  /* 1 / linear scaling factor */
    const float *freq_factors; /* host (rope_dim / 2): theta_i is divided by it; or NULL */
};

/* KV cache element types. */
enum shoal_kv_type {
    SHOAL_KV_F32 = 0,
    SHOAL_KV_F16 = 1,
    SHOAL_KV_Q8 = 2, /* per (slot, head): f32 scale then head_dim int8 */
};
const char *shoal_kv_type_name(int kv_type);
int shoal_kv_type_from_name(const char *name); /* -1 if unknown */

/* The shape of one layer's K (or V) cache: n_slots rows of n_kv_heads heads. */
struct shoal_kv_desc {
    int type;            /* enum shoal_kv_type */
    int n_kv_heads, head_dim;
    int64_t n_slots;
    size_t head_bytes;   /* bytes of one head's vector in this type */
    size_t row_bytes;    /* n_kv_heads * head_bytes: one slot */
};
/* Fills head_bytes and row_bytes. */
void shoal_kv_desc_init(struct shoal_kv_desc *d, int type, int n_kv_heads, int head_dim,
                        int64_t n_slots);

/*
 * One step's tokens. Arrays are host memory; a backend that needs them on
 * its device copies them itself. Token t of sequence seq[t] sits at position
 * pos[t]; its K and V are written to KV slot slot[t]. Attention for token t
 * reads positions 0..pos[t] of its sequence, where position p lives in slot
 * block_table[seq[t] * max_blocks + p / block_size] * block_size + p % block_size
 * (paged KV cache; one sequence in one contiguous block is block_size = n_slots).
 */
struct shoal_batch {
    int n_tokens;
    const int32_t *token;       /* (n_tokens) */
    const int32_t *pos;         /* (n_tokens) */
    const int32_t *seq;         /* (n_tokens) */
    const int32_t *slot;        /* (n_tokens) */
    const int32_t *block_table; /* (n_seq, max_blocks) */
    int n_seq, max_blocks, block_size;
    /* (n_seq) each sequence's ring of the windowed layers' caches, for a paged state with
     * rings (shoal_state_params.rings > 1); else NULL */
    const int32_t *ring;
};

const char *shoal_backend_name(const struct shoal_backend *b);
/* Whether the backend's buffers are host memory (CPU), which communicators of
 * host buffers can use directly; else they are staged through the host. */
int shoal_backend_host_memory(const struct shoal_backend *b);
void shoal_backend_destroy(struct shoal_backend *b);

/*
 * A hard limit on the device memory this process allocates through
 * shoal_backend_alloc (and weights prepared without a block of the
 * caller's): past it an allocation is SHOAL_NOMEM saying so. 0: none. The
 * CPU backend in its device-like mode is the "device arena" that offload is
 * tested with; on a GPU it is what --device-mem leaves the rank.
 */
void shoal_backend_set_budget(struct shoal_backend *b, uint64_t bytes);
/* Bytes allocated through shoal_backend_alloc now, and the most at once so far: every
 * device allocation the process makes for the backend, its own scratch, tables and
 * library workspaces included, and what shoal_backend_account adds. */
void shoal_backend_mem(const struct shoal_backend *b, uint64_t *in_use, uint64_t *peak);
/* The peak starts again from what is in use now (a run's own peak after another's). */
void shoal_backend_peak_reset(struct shoal_backend *b);
/*
 * Device memory that a library allocated for this backend's device behind its back
 * (NCCL's buffers, measured when its communicator was made): counted in in_use and the
 * peak from now on, and seen by the budget's next check. bytes may be 0.
 */
void shoal_backend_account(struct shoal_backend *b, uint64_t bytes);
/*
 * What the device's driver says this process has taken since the backend was made
 * (free memory then less free memory now: other processes on the same device count
 * too), to check the count above against; 0 and *known 0 where the backend cannot say.
 */
uint64_t shoal_backend_mem_measured(struct shoal_backend *b, int *known);

/*
 * The shape of a forward step's work, for the working memory a backend needs beside
 * the buffers its caller allocates: the matmuls (f64: shoal_op_matmul_f64), attention
 * over the cache, top-k.
 */
#define SHOAL_WORK_MM_MAX 16
struct shoal_work_shape {
    int n_tokens;              /* most tokens per step */
    int n_mm;
    struct shoal_work_mm {
        int type;
        int64_t rows, cols;
        int f64;
    } mm[SHOAL_WORK_MM_MAX];
    int n_heads, head_dim;     /* attention: query heads, values per head */
    int64_t n_slots;           /* KV cache slots */
    int topk_rows, topk;       /* shoal_op_topk */
};
/*
 * Device bytes the backend's ops on steps of shape w need beside their operands
 * (scratch, the batch's arrays), which shoal_backend_reserve allocates, beyond what the
 * backend holds already (shoal_backend_mem's in_use counts that); 0 for a backend whose
 * scratch is host memory (the CPU). Plans that budget a device add it and in_use to the
 * weights, the cache and the activations.
 */
uint64_t shoal_backend_work_bytes(struct shoal_backend *b, const struct shoal_work_shape *w);
/*
 * Allocates that working memory now (counted, and refused past the budget as
 * shoal_backend_alloc is), so that steps of shape w never allocate during a run.
 */
shoal_status shoal_backend_reserve(struct shoal_backend *b, const struct shoal_work_shape *w);
/*
 * A number no other call on this backend has returned: what a state's recorded steps
 * (shoal_backend_graph_begin's key) are named by, since a new state may sit at a freed
 * one's address. shoal_backend_graph_forget drops every recording (a state is freed:
 * what they point at goes).
 */
uint64_t shoal_backend_serial(struct shoal_backend *b);
void shoal_backend_graph_forget(struct shoal_backend *b);

/*
 * Lanes: a step's tokens cut into parts that run at once, each on one of the
 * backend's threads alone, with a backend of its own (its scratch, no pool:
 * one thread's ops) over the same memory and weights. A part then needs no
 * hand-over between threads inside it, op after op; the kernels give a
 * token the same bits whatever else its part holds (batch invariance), so a
 * step cut so computes what it does whole. shoal_backend_lanes says how
 * many parts can run at once (0 or 1: none); shoal_backend_run_lanes calls
 * fn(arg, lane, i, n) for i in 0..n-1 at once (n at most that many) and
 * returns the first failure. Between two calls of shoal_backend_lane_barrier
 * (on its lane) every lane of the run has come to the first, none gone past
 * the second: what a lane wrote before the first, the others may read after
 * it (a sequence whose tokens the cut spreads over lanes: each stores its
 * tokens' keys and values, then all attend); otherwise the lanes must not
 * write what another reads. Every lane calls it as many times; a lane that
 * fails releases the others, whose waits then fail too. On a backend that
 * is not a lane it does nothing.
 */
typedef shoal_status (*shoal_lane_fn)(void *arg, struct shoal_backend *lane, int i, int n);
/*
 * Whether a token's results are the same bits whatever else its step holds
 * (its batch's size, the other tokens, the tiles they fall in): what lanes
 * need, and what makes speculative decoding's output that of decoding a
 * token at a time. 0 where the kernels change with the batch (cuBLAS for
 * prompts, AVX2's Q8_0 and Q4_0 tiles).
 */
int shoal_backend_batch_invariant(const struct shoal_backend *b);
int shoal_backend_lanes(const struct shoal_backend *b);
shoal_status shoal_backend_run_lanes(struct shoal_backend *b, int n, shoal_lane_fn fn, void *arg);
shoal_status shoal_backend_lane_barrier(struct shoal_backend *lane);

/*
 * Host memory that copies to the device go fastest from (pinned on CUDA;
 * malloc's elsewhere). free accepts NULL.
 */
shoal_status shoal_backend_host_alloc(struct shoal_backend *b, size_t bytes, void **out);
void shoal_backend_host_free(struct shoal_backend *b, void *p);

/*
 * Copies for offload. fetch queues dst (device) = src (host, n bytes) behind
 * the work already queued (so that a buffer still being read is not
 * overwritten) and returns at once where the backend can copy while it
 * computes; *ticket names the copy. fetch_wait makes the work queued after it
 * wait for the copies up to ticket (the CPU: returns when they are done).
 * Without a copy queue, fetch copies at once and waiting does nothing.
 * fetch_busy: seconds the backend has spent copying (0 when it cannot say).
 */
shoal_status shoal_backend_fetch(struct shoal_backend *b, void *dst, const void *src, size_t n,
                                 uint64_t *ticket);
shoal_status shoal_backend_fetch_wait(struct shoal_backend *b, uint64_t ticket);
/* The host waits for the copies up to ticket: their sources may be rewritten. */
shoal_status shoal_backend_fetch_sync(struct shoal_backend *b, uint64_t ticket);
double shoal_backend_fetch_busy(struct shoal_backend *b);
/* Seconds the compute queue stood waiting for copies (a GPU's stream), or -1 when the
 * backend does not say (the CPU: its waits are the host's, which the caller can time). */
double shoal_backend_fetch_stalled(struct shoal_backend *b);

/* Device memory. alloc'd memory is uninitialised; free accepts NULL. */
shoal_status shoal_backend_alloc(struct shoal_backend *b, size_t bytes, void **out);
void shoal_backend_free(struct shoal_backend *b, void *p);
shoal_status shoal_backend_upload(struct shoal_backend *b, void *dst, const void *src, size_t n);
shoal_status shoal_backend_download(struct shoal_backend *b, void *dst, const void *src,
                                    size_t n);
shoal_status shoal_backend_memset0(struct shoal_backend *b, void *dst, size_t n);

/*
 * Bytes of device memory a weight of (rows, cols) of type takes once
 * prepared: 0 when the backend uses the host bytes in place (CPU), else at
 * least rows * the row's bytes (a backend may pad or repack). 0 also for a
 * shape the type cannot hold.
 */
size_t shoal_weight_bytes(struct shoal_backend *b, int type, int64_t rows, int64_t cols);
/*
 * Makes host bytes (rows * row_bytes of the given type) usable as a weight.
 * The backend may use them in place (CPU: the mmapped file), copy them to
 * its device or repack them; host must outlive w unless the bytes were
 * copied. dst: shoal_weight_bytes of device memory (at a 256-byte boundary)
 * that the caller owns and carves from one block, or NULL for the backend to
 * allocate (w->owned). shoal_weight_release frees what prepare allocated.
 * On a backend whose memory is the host's, host may be dst itself (the rows
 * read there, to be packed in place) when dst is at least as long.
 */
shoal_status shoal_weight_prepare(struct shoal_backend *b, struct shoal_weight *w, int type,
                                  int64_t rows, int64_t cols, const void *host, void *dst);
void shoal_weight_release(struct shoal_backend *b, struct shoal_weight *w);
/*
 * For weights whose device image is copied in later (offload): whether the
 * backend's image may differ from the file's bytes (CUDA repacks, and the
 * CPU its Q8_0 where AVX-512 kernels run), the image made on the host
 * (shoal_weight_bytes of dst), and a weight bound to an image at dev
 * (device memory) without copying anything.
 */
int shoal_backend_packs_weights(const struct shoal_backend *b);
/*
 * A table that only shoal_op_embed reads (no matmul): on a backend whose
 * memory is the host's, its rows used in place (w->as_rows; nothing copied
 * or packed, dst unused); elsewhere what shoal_weight_prepare makes.
 */
shoal_status shoal_weight_lookup(struct shoal_backend *b, struct shoal_weight *w, int type,
                                 int64_t rows, int64_t cols, const void *host, void *dst);
shoal_status shoal_weight_pack(struct shoal_backend *b, int type, int64_t rows, int64_t cols,
                               const void *src, void *dst);
shoal_status shoal_weight_bind(struct shoal_backend *b, struct shoal_weight *w, int type,
                               int64_t rows, int64_t cols, const void *dev);

/* y (n, table->cols) = rows token[t] of table, as f32. Token ids are checked. */
shoal_status shoal_op_embed(struct shoal_backend *b, float *y, const struct shoal_weight *table,
                            const struct shoal_batch *batch);
/* y (n, w->rows) = x (n, w->cols) times W transposed. */
shoal_status shoal_op_matmul(struct shoal_backend *b, float *y, const struct shoal_weight *w,
                             const float *x, int n);
/*
 * y (n, w->rows) = x W^T as shoal_op_matmul, but in f64, summed from products
 * that are exact in f64 (a block's integer dot product times its f32 scale;
 * an f32 weight times an f32 activation). The result then hardly depends on
 * the order of the sum: cutting the columns over tensor-parallel ranks and
 * adding their parts gives, rounded to f32, what one rank gives. For the
 * row-parallel projections (attention output, FFN down).
 */
shoal_status shoal_op_matmul_f64(struct shoal_backend *b, double *y, const struct shoal_weight *w,
                                 const float *x, int n);
/* y += x rounded to f32, over n values. */
shoal_status shoal_op_add_f64(struct shoal_backend *b, float *y, const double *x, size_t n);
/*
 * y[i] (n, w[i]->rows) = x (n, cols) times W[i] transposed, for i < k
 * (k <= SHOAL_MATMUL_MAX): several weights with the same cols applied to one
 * input, as Q, K and V are, or the FFN's gate and up. One op so that a
 * backend can share the work on x and spread all the rows over its threads.
 */
#define SHOAL_MATMUL_MAX 4
shoal_status shoal_op_matmul_n(struct shoal_backend *b, int k, float *const *y,
                               const struct shoal_weight *const *w, const float *x, int n);
/* y (n, dim) = x / rms(x) * w, per token; y may equal x. */
shoal_status shoal_op_rmsnorm(struct shoal_backend *b, float *y, const float *x, const float *w,
                              int n, int dim, float eps);
/* Rotates x (n, n_heads * head_dim) in place at the batch's positions. */
shoal_status shoal_op_rope(struct shoal_backend *b, float *x, int n_heads, int head_dim,
                           const struct shoal_rope *rope, const struct shoal_batch *batch);
/* Stores k and v (n, n_kv_heads * head_dim) into the caches at the batch's slots. */
shoal_status shoal_op_kv_store(struct shoal_backend *b, const struct shoal_kv_desc *d,
                               void *kcache, void *vcache, const float *k, const float *v,
                               const struct shoal_batch *batch);
/*
 * out (n, n_heads * head_dim) = causal softmax(q k^T * scale) v over the
 * cache, for grouped-query attention: query head h reads KV head
 * h / (n_heads / n_kv_heads). window > 0: a token at position p attends
 * to positions p - window + 1 .. p only (sliding-window attention, as
 * llama.cpp masks it); 0: to 0 .. p.
 */
shoal_status shoal_op_attention(struct shoal_backend *b, float *out, const float *q, int n_heads,
                                const struct shoal_kv_desc *d, const void *kcache,
                                const void *vcache, const struct shoal_batch *batch, float scale,
                                int window);
/* gate = silu(gate) * up, elementwise over n values. */
shoal_status shoal_op_silu_mul(struct shoal_backend *b, float *gate, const float *up, size_t n);
/* gate = gelu(gate) * up, GELU's tanh form: g/2 (1 + tanh(sqrt(2/pi) (g + 0.044715 g^3))). */
shoal_status shoal_op_gelu_mul(struct shoal_backend *b, float *gate, const float *up, size_t n);
/* y *= s over n values. */
shoal_status shoal_op_scale(struct shoal_backend *b, float *y, size_t n, float s);
/* y = x rounded to f32, over n values. */
shoal_status shoal_op_round_f64(struct shoal_backend *b, float *y, const double *x, size_t n);
/* y += x over n values. */
shoal_status shoal_op_add(struct shoal_backend *b, float *y, const float *x, size_t n);
/* y (n, dim) += bias (dim) for every token. */
shoal_status shoal_op_add_bias(struct shoal_backend *b, float *y, const float *bias, int n,
                               int dim);
/*
 * Mixtures of experts: a step's tokens routed to an expert gathered into
 * rows of their own, and the expert's outputs added back into their tokens'
 * rows, weighted. idx and w are host arrays of n values; the backend
 * copies what it needs before it returns (the caller may reuse them).
 */
/* y (n, dim) = rows idx[i] (< rows) of x (rows, dim); an index outside is SHOAL_INTERNAL. */
shoal_status shoal_op_gather_rows(struct shoal_backend *b, float *y, const float *x, int rows,
                                  const int32_t *idx, int n, int dim);
/* row idx[i] (< rows) of y (rows, dim) += w[i] * row i of x (n, dim), in f64, i in order. */
shoal_status shoal_op_add_rows_f64(struct shoal_backend *b, double *y, int rows, const double *x,
                                   const int32_t *idx, const double *w, int n, int dim);
/* y = 0 over n values. */
shoal_status shoal_op_zero_f64(struct shoal_backend *b, double *y, size_t n);
/* A logit and its token: the top-k candidates that travel instead of a row. */
struct shoal_cand {
    float v;
    int32_t id;
};
/* a before b: the larger logit, ties to the lower token id (greedy's choice) */
static inline int shoal_cand_better(const struct shoal_cand *a, const struct shoal_cand *b) {
    return a->v > b->v || (a->v == b->v && a->id < b->id);
}
/* c into out, the *have best so far of at most k, best first (a sorted insert: k is small). */
static inline void shoal_cand_keep(struct shoal_cand *out, int k, int *have, struct shoal_cand c) {
    if (*have == k && !shoal_cand_better(&c, &out[k - 1])) return;
    int at = *have < k ? (*have)++ : k - 1;
    while (at > 0 && shoal_cand_better(&c, &out[at - 1])) {
        out[at] = out[at - 1];
        at--;
    }
    out[at] = c;
}
/* Fills out[have .. k) with nothing: (-infinity, INT32_MAX). */
void shoal_cand_pad(struct shoal_cand *out, int have, int k);
/*
 * out (host, rows x k) = the k best of each row of x (device, rows x cols),
 * best first by shoal_cand_better, token ids id0 + column; a row of fewer
 * than k values is padded with (-infinity, INT32_MAX). Waits for the result.
 */
shoal_status shoal_op_topk(struct shoal_backend *b, const float *x, int rows, int cols, int k,
                           int32_t id0, struct shoal_cand *out);

/* Waits for queued work. */
shoal_status shoal_backend_synchronize(struct shoal_backend *b);

/*
 * Recording a step's ops once and replaying them (CUDA graphs: one launch
 * instead of hundreds). key names everything the ops' arguments depend on
 * besides the batch's values (the state, the batch's shape). begin sets
 * *replayed to 1 when a recording of key exists: it has been launched with
 * this batch and the caller skips the ops. Else *replayed is 0, the caller
 * runs the ops, which the backend may record, and calls end (ok 0 after a
 * failure: a recording is thrown away), which runs what was recorded. Only
 * ops go between begin and end: no copies to or from the host, no
 * synchronize. A backend without graphs never replays.
 */
shoal_status shoal_backend_graph_begin(struct shoal_backend *b, uint64_t key,
                                       const struct shoal_batch *batch, int *replayed);
shoal_status shoal_backend_graph_end(struct shoal_backend *b, int ok);

#endif
