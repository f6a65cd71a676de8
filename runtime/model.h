/*
 * The model: hyperparameters read from a GGUF, this rank's part of the
 * weights prepared on a compute backend, and the state one run needs (KV
 * cache and activations). The forward pass is written once against the
 * backend interface and talks to other ranks only through comm/: a rank of
 * a tensor-parallel group holds its heads, FFN units and vocabulary rows and
 * all-reduces the partial sums; a pipeline stage holds its layers and passes
 * hidden states on (see runtime/dist.h for the protocol between ranks).
 *
 * It does no tokenizing, sampling or printing (see generate.h).
 */
#ifndef SHOAL_MODEL_H
#define SHOAL_MODEL_H

#include <stdint.h>

#include "../parallel/offload.h"
#include "../parallel/plan.h"
#include "../shard/gguf.h"
#include "arch.h"
#include "backend.h"

struct shoal_comm;

#define SHOAL_EXPERTS_MAX 1024 /* experts per layer */

struct shoal_hparams {
    char arch[32];           /* general.architecture */
    const struct shoal_arch *fam; /* its family's recipe (arch.h) */
    char name[96];           /* general.name, or the file name */
    int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim; /* ffn_dim: an expert's, with experts */
    int n_expert, n_expert_used; /* a mixture of experts: each layer's FFN is n_expert experts, each token
                                  * runs the n_expert_used its router scores best; 0: one dense FFN */
    int n_ctx_train;
    float rms_eps;
    struct shoal_rope rope;
    int tied_output;         /* no output.weight: the embedding table is the head */
    int has_qkv_bias;        /* qwen2 */
    float attn_scale;        /* scores times this: 1 / sqrt(head_dim) unless the family says otherwise */
    float embd_scale;        /* the embeddings times this (1; gemma3: sqrt(dim)) */
    int swa_window;          /* > 0: windowed layers (shoal_layer_windowed) attend to their last swa_window positions */
    struct shoal_rope rope_swa; /* the windowed layers' rope */
    int sharded;             /* the file is one rank's shard: its tensors are that rank's slices */
};

/*
 * One tensor of a rank's part: rows [r0, r1) and columns [c0, c1) of the
 * (rows, cols) tensor src of a whole GGUF; a vector has rows 0. A rank's
 * shard holds exactly that slice under name (shaped (r1 - r0, c1 - c0)):
 * the same name but for a tied output head, which is the embedding table's
 * rows in a GGUF and output.weight in a shard.
 */
struct shoal_slice {
    char name[96], src[96];
    int64_t rows, cols, r0, r1, c0, c1;
    int n_exp; /* > 0: src is 3-D, n_exp experts' (rows / n_exp, cols) matrices stacked; rows counts them all */
};

/* One layer's weights as this rank holds them ("local": its share of heads, FFN units). */
struct shoal_layer {
    struct shoal_weight wq;    /* (local q heads * head_dim, dim) */
    struct shoal_weight wk;    /* (local kv heads * head_dim, dim) */
    struct shoal_weight wv;    /* (local kv heads * head_dim, dim) */
    struct shoal_weight wo;    /* (dim, local q heads * head_dim): its columns */
    struct shoal_weight gate;  /* (local ffn, dim) */
    struct shoal_weight up;    /* (local ffn, dim) */
    struct shoal_weight down;  /* (dim, local ffn): its columns */
    float *attn_norm;          /* device (dim) */
    float *ffn_norm;           /* device (dim) */
    float *bq, *bk, *bv;       /* device biases of the local rows, or NULL */
    float *q_norm, *k_norm;    /* device (head_dim): per-head RMS norms of Q and K, or NULL */
    float *post_attn_norm, *post_ffn_norm; /* device (dim): norms of the attention's and FFN's outputs, or NULL */
    /* with experts (gate, up and down unused): the router, whole on every rank, and the
     * rank's experts [part.x0, part.x1), each its share of units as gate, up, down are cut */
    struct shoal_weight router; /* (n_expert, dim) */
    struct shoal_weight *xgate, *xup, *xdown; /* (part.x1 - part.x0) each */
};

/*
 * Offload (ZeRO-3 style, parallel/offload.h): the layers that do not fit a
 * device budget stay in host memory and are copied into layer buffers before
 * they run.
 */
struct shoal_state_params;
/* Where streamed layers are copied from. */
enum shoal_offload_from {
    SHOAL_OFFLOAD_FROM_AUTO = 0, /* RAM when their images fit the host's available memory, else the map */
    SHOAL_OFFLOAD_FROM_RAM = 1,  /* each layer's device image in (pinned) host memory, made at load */
    SHOAL_OFFLOAD_FROM_MAP = 2,  /* the mapped file (the disk when its pages are not cached), packed
                                  * into a staging buffer per layer buffer as it is fetched */
};

struct shoal_comm;
struct shoal_model_offload {
    uint64_t budget; /* device bytes for this rank; 0: every layer resident */
    /* the ranks holding this rank's part in every replica (NULL: none): each keeps 1/g
     * of every streamed layer in host memory, and the group all-gathers them */
    struct shoal_comm *group;
    /* the same ranks over the backend's device buffers (NCCL on GPUs; group itself
     * where device memory is the host's, the CPU's arena), or NULL: with it each rank
     * copies only its part to the device and the group all-gathers the rest there;
     * without, the parts are gathered in host memory and the whole layer copied */
    struct shoal_comm *group_dev;
    int prefetch;    /* layers fetched ahead of the one running */
    int from;        /* enum shoal_offload_from */
    const struct shoal_state_params *state; /* the state that will be made: its share of the budget */
};

/* A streamed layer's matrix: where its bytes are on the host and in the layer's image. */
struct shoal_stream_tensor {
    const void *host;
    int type;
    int64_t rows, cols;
    size_t off; /* in the layer buffer */
    int f64_block; /* the weight's (struct shoal_weight) */
};

/* What streaming has cost so far (shoal run -v prints it per token). */
struct shoal_stream_stats {
    uint64_t fetches, bytes;
    uint64_t gathered; /* bytes received from the rest of the offload group */
    double seconds; /* waiting for copies not yet done when their layer was due */
};

struct shoal_model {
    struct shoal_hparams hp;
    struct shoal_rank_part part;  /* what this rank holds; everything on one rank */
    int n_heads_l, n_kv_l, ffn_l, n_vocab_l; /* local counts */
    struct shoal_backend *be;     /* not owned; NULL for shoal_model_check */
    const struct shoal_gguf *g;   /* not owned: weights may point into its map */
    struct shoal_weight tok_embd; /* (n_vocab, dim); first stage only */
    struct shoal_weight output;   /* (local vocab, dim); last stage only; may share tok_embd's bytes */
    float *output_norm;           /* device (dim); last stage only */
    struct shoal_layer *layers;   /* (part.layer1 - part.layer0) */
    void *small;                  /* device block holding every norm weight and bias (f32) */
    void *wblock;                 /* device block the weight matrices were copied to, or NULL (used in place) */
    void *slices;                 /* host block of column slices read from the file */
    float *freq_factors;          /* host (rope_dim / 2) or NULL: llama3 rope scaling */
    uint64_t n_params;            /* of this rank's part */
    uint64_t weight_bytes;        /* bytes of this rank's part that the forward pass reads (every expert) */
    uint64_t expert_bytes;        /* of them, the experts' (a token reads only those it is routed to) */
    int n_lmats;                  /* matrices per layer (the streamed layers' table: stream) */
    int main_type;                /* the type holding most of the part's layer weights (a mix's main type) */
    /* offload: which layers stream; their matrices; the buffers they take turns in */
    struct shoal_offload_plan off; /* off.n_resident == the rank's layers: nothing streams */
    struct shoal_stream_tensor *stream; /* (layers, n_lmats): the streamed layers' matrices */
    void *lbuf;                   /* device: off.n_buffers buffers of off.buffer_bytes */
    int *buf_layer;               /* (off.n_buffers): the layer each buffer holds, or -1 */
    void **limg;                  /* host (layers): a streamed layer's packed device image, or NULL */
    void **stage;                 /* host (off.n_buffers): from the map, a layer packed on its way, or NULL */
    uint64_t *stage_ticket;       /* (off.n_buffers): the last copy out of each stage */
    uint64_t lstride;             /* bytes from one layer buffer to the next (>= off.buffer_bytes) */
    uint64_t *lpart;              /* (layers) with an offload group: the bytes of each rank's part, or NULL */
    char *gather_due;             /* (off.n_buffers): the buffer holds only this rank's part so far */
    int from_ram;                 /* streamed layers come from limg, else from the map */
    uint64_t *lbytes;             /* (layers): a streamed layer's bytes in its buffer */
    uint64_t *ticket;             /* (layers): the fetch a streamed layer waits for */
    struct shoal_stream_stats sstats;
    struct shoal_model_offload offload; /* as asked */
    struct shoal_work_shape work; /* the distinct matmuls of a step (shoal_model_work_shape) */
};

/* Whether layer l (of the whole model) attends to a window (hp->swa_window) rather than the whole context. */
int shoal_layer_windowed(const struct shoal_hparams *hp, int l);

/*
 * Reads and checks the hyperparameters of a GGUF: a missing key, an
 * impossible shape or an architecture shoal cannot run is an error naming
 * the file and the key.
 */
shoal_status shoal_hparams_read(struct shoal_hparams *hp, const struct shoal_gguf *g);

/*
 * What the planner needs to know of the model in g: its shape, the
 * quantization blocks its column splits must respect, its bytes.
 */
shoal_status shoal_model_shape(struct shoal_model_shape *shape, const struct shoal_gguf *g);

/*
 * The tensors a rank with part pt holds, in the order the loader reads
 * them: the embedding table (first stage), the output head and its norm
 * (last stage), then each layer's. *out is malloc'ed (the caller frees it).
 * The one list both the loader and `shoal shard` follow.
 */
shoal_status shoal_model_slices(const struct shoal_hparams *hp, const struct shoal_rank_part *pt,
                                struct shoal_slice **out, int *n);

/*
 * Prepares this rank's part of g's weights on backend be (part NULL: the
 * whole model). g and be must outlive the model. Only the bytes of the part
 * are read: row slices are used in place from the map, column slices are
 * read from the file. A missing tensor, a shape that does not match the
 * hyperparameters or a type the backend cannot compute is an error naming
 * the tensor.
 */
shoal_status shoal_model_load(struct shoal_model **out, const struct shoal_gguf *g,
                              struct shoal_backend *be, const struct shoal_rank_part *part);
/*
 * The same with offload: the rank's first layers that fit off->budget (after
 * the state off->state describes and the rest of the model) are prepared on the device, the
 * others stream from host memory (the file's map, or the column slices read
 * from it) into off->prefetch + 1 layer buffers as the forward pass reaches
 * them. A budget that cannot hold even that is SHOAL_NOMEM saying how much
 * would. off NULL: as shoal_model_load.
 */
shoal_status shoal_model_load_offload(struct shoal_model **out, const struct shoal_gguf *g,
                                      struct shoal_backend *be, const struct shoal_rank_part *part,
                                      const struct shoal_model_offload *off);
/*
 * The checks of shoal_model_load (hyperparameters, every tensor present with
 * its shape and a type shoal computes with) without a backend or any
 * allocation of weights: whether the file would load.
 */
shoal_status shoal_model_check(const struct shoal_gguf *g);
void shoal_model_destroy(struct shoal_model *m);

/* ---------------------------------------------------------------- state */

/* How this rank reaches the others; NULL in a state means one rank alone. */
struct shoal_dist {
    struct shoal_comm *world;   /* all ranks */
    struct shoal_comm *tp;      /* this stage's tensor-parallel group */
    /*
     * The same group over the backend's device buffers (NCCL), or NULL: then
     * device buffers are staged through the host for tp. Set by the caller
     * after shoal_dist_create, owned by the dist from then on.
     */
    struct shoal_comm *tp_dev;
    /*
     * Replicas (offload groups): the world holds `replicas` copies of the
     * plan's ranks, each running every step; world then names this replica's
     * ranks (0 .. plan->n_ranks - 1, owned by the dist when replicas > 1), and
     * group the ranks that hold the same part in every replica (NULL for one).
     */
    int replicas, replica;
    struct shoal_comm *top;   /* the whole world (not owned) */
    struct shoal_comm *group; /* owned, or NULL */
    struct shoal_comm *group_dev; /* group over device buffers (NCCL), set as tp_dev is; owned, or NULL */
    struct shoal_comm *own;   /* this replica's ranks when replicas > 1 (owned; world points to it) */
    const struct shoal_plan *plan;
    int wire;                   /* enum shoal_wire of the all-reduces */
    int prev, next;             /* world ranks of the previous / next stage's first rank, or -1 */
};

/*
 * Makes the dist of this rank for a plan (collective over world: splits the
 * tensor-parallel groups). *out is owned by the caller (shoal_dist_destroy).
 */
shoal_status shoal_dist_create(struct shoal_dist **out, struct shoal_comm *world,
                               const struct shoal_plan *plan, int wire);
/* The same with replicas copies of the plan's ranks (world: replicas x plan->n_ranks). */
shoal_status shoal_dist_create_replicas(struct shoal_dist **out, struct shoal_comm *world,
                                        const struct shoal_plan *plan, int wire, int replicas);
void shoal_dist_destroy(struct shoal_dist *d);

struct shoal_state_params {
    int n_ctx;     /* KV cache positions */
    int n_batch;   /* most tokens per forward call */
    int n_outputs; /* most rows of logits per forward call (<= n_batch; 0: 1) */
    int kv_type;   /* enum shoal_kv_type */
    /*
     * > 0: the caller needs only the topk largest logits of each row (greedy
     * decoding, or top-k sampling without penalties), so only they travel
     * between ranks; the rest of a row comes back as -infinity. 0: whole rows.
     */
    int topk;
    const struct shoal_dist *dist; /* NULL: one rank */
    /*
     * Windowed layers (shoal_layer_windowed) keep a ring of their window and a
     * batch's tokens per sequence, not the context (shoal_state_ring_slots):
     * 1 where the state runs one sequence in one contiguous block (shoal
     * run), the most sequences a step holds for a paged cache (shoal serve:
     * each batch says its sequences' rings, shoal_batch.ring); 0: every layer
     * keeps the whole context.
     */
    int rings;
};

/* Communication of one kind of step on this rank (prompt or single-token). */
struct shoal_step_comm {
    uint64_t steps, tokens, bytes;
    double seconds; /* waiting: in communication calls (a follower's wait for the step too) */
    double wall;    /* the steps' time on this rank, a follower's wait for each included: the rest of it
                     * (wall - seconds) is computing */
};

struct shoal_sampler_params;
/* Per sequence of a step's batch (n_seq): the caller's id of it and how it samples. */
struct shoal_step_meta {
    const uint64_t *seq_id;
    const struct shoal_sampler_params *sampling;
};

struct shoal_state {
    const struct shoal_model *m;
    struct shoal_step_comm comm_prompt, comm_decode; /* filled by the step protocol */
    int decoding; /* rank 0: the steps now are decode steps (comm_decode's, on every rank, whatever their size) */
    const struct shoal_dist *dist;
    struct shoal_kv_desc kvd;  /* local KV heads */
    int n_ctx, n_batch, n_outputs, topk;
    void *kv;          /* device: per local layer, K then V, n_ctx slots each (ring slots for a windowed one) */
    size_t *kv_at;     /* host (local layers): where a layer's K begins in kv (its V follows) */
    /* rings: the slots of a sequence's ring of a windowed layer's cache (0: none, every layer
     * the whole context), how many rings, their descriptor, and the step's batch as the rings
     * see it (slot ring * r + pos % ring for ring r, one block of ring slots that every
     * block of a sequence's table names) */
    int ring, n_rings;
    struct shoal_kv_desc kvd_ring;
    struct shoal_batch ring_b;
    int32_t *ring_slot, *ring_table;
    int ring_table_cap;
    void *act;         /* device: the activations below, one block */
    float *x;          /* (n_batch, dim) residual stream */
    float *xb;         /* (n_batch, dim) normed input / projection output */
    float *q;          /* (n_batch, local q heads * head_dim) */
    float *k, *v;      /* (n_batch, local kv heads * head_dim) */
    float *att;        /* (n_batch, local q heads * head_dim) */
    float *hb, *hb2;   /* (n_batch, local ffn) */
    double *yd;        /* (n_batch, dim): row-parallel projections, summed in f64 */
    /* experts: the router's scores (n_batch, n_expert), an expert's tokens' rows (n_batch, dim)
     * and its outputs (n_batch, dim, f64); on the host, each token's choice (n_batch, used) and
     * the step's tokens grouped by expert with their weights (n_batch * used) */
    float *rl, *xg;
    double *yx;
    struct shoal_cand *route;
    int32_t *route_tok;
    double *route_w;
    uint64_t expert_runs, expert_bytes; /* experts run (one per expert per lane step), their bytes */
    double *yd_host;   /* host (n_batch, dim): yd staged for a host communicator, or NULL */
    float *logits;     /* (n_outputs, local vocab) */
    float *gathered;   /* host (n_outputs, n_vocab): the stage's first rank assembles logits */
    /* set by shoal_forward for one step on rank 0 of a one-stage layout: the caller's
     * host rows (n_out, n_vocab), which the head writes in place of gathered (and
     * computes straight into where the backend's memory is the host's); else NULL */
    float *head_out;
    struct shoal_cand *cands; /* host (n_outputs, topk): the top-k candidates, when topk */
    void *msg;         /* host: one step's body (its Step message, then hidden states) */
    size_t msg_cap;
    size_t msg_pb;     /* bytes of the Step message at the start of msg (0: none yet this step) */
    void *step_rx;     /* the last step received, decoded (Shoal__Step), or NULL */
    /* set by the caller before shoal_forward, or NULL: what the step's sequences are,
     * sent with the step to every rank */
    const struct shoal_step_meta *meta;
    uint64_t kv_bytes, act_bytes;
    uint64_t lane_steps; /* this rank's steps whose layers ran cut into the backend's lanes */
    uint64_t serial; /* the backend's name for this state (shoal_backend_serial): its steps' recordings */
};

shoal_status shoal_state_create(struct shoal_state **out, const struct shoal_model *m,
                                const struct shoal_state_params *p);
/*
 * The slots of a windowed layer's ring for state params p (0: no rings): the
 * window and a batch's tokens, less one (a token attends to the window's
 * positions after the whole batch is stored), when that is less than the
 * context.
 */
int shoal_state_ring_slots(const struct shoal_hparams *hp, const struct shoal_state_params *p);
/* The device bytes shoal_state_create will allocate for a rank with part pt (KV cache and activations). */
uint64_t shoal_state_device_bytes(const struct shoal_hparams *hp, const struct shoal_rank_part *pt,
                                  const struct shoal_state_params *p);
void shoal_state_destroy(struct shoal_state *s);
/*
 * The shape of a step's work on this rank's part for a state of params p, for the
 * backend's working memory (shoal_backend_work_bytes, shoal_backend_reserve).
 */
void shoal_model_work_shape(const struct shoal_model *m, const struct shoal_state_params *p,
                            struct shoal_work_shape *w);

/*
 * Runs batch b (at most n_batch tokens) through the model, storing its K/V
 * in the cache, and writes to logits (host, n_out x n_vocab) the logits of
 * the batch rows [out0, out0 + n_out); n_out may be 0, at most n_outputs.
 * With several ranks only world rank 0 calls it (the others run
 * shoal_follow), and it drives the step on every rank.
 */
shoal_status shoal_forward(struct shoal_state *s, const struct shoal_batch *b, int out0,
                           int n_out, float *logits);

/*
 * Ranks other than 0: run the steps rank 0 starts until it stops them.
 * Returns SHOAL_OK after a stop.
 */
shoal_status shoal_follow(struct shoal_state *s);

/*
 * Rank 0, idle: tells every rank it is alive (a step that runs nothing, on
 * the path steps take), then waits at a barrier of every rank, so that it
 * hears from each of them. With shoal_comm_set_timeout, every wait is
 * bounded, the followers' wait for the next step too: an idle rank 0 pings
 * well within the timeout (shoal serve, shoal run -i), and a rank or link
 * that stopped answering is found by every rank within the timeout.
 */
shoal_status shoal_ping(struct shoal_state *s);

/* Rank 0: ends shoal_follow on every other rank (no-op on one rank). */
shoal_status shoal_stop(struct shoal_state *s);

/* One rank's steps so far (prompt and single-token together), as shoal_gather_pace collects them. */
struct shoal_rank_pace {
    double steps, tokens;
    double compute_s; /* the steps' time on the rank less its waiting */
    double wait_s;    /* in communication: for the others, the links, and between steps for rank 0 */
};

/*
 * Rank 0: every rank's pace (a step that runs nothing, on the path steps
 * take, then an all-gather of every rank's figures, which also tells rank 0
 * each rank is alive, as shoal_ping does), into pace (room for
 * shoal_pace_ranks), *n their number. One rank: its own.
 */
shoal_status shoal_gather_pace(struct shoal_state *s, struct shoal_rank_pace *pace, int cap, int *n);
/* The ranks shoal_gather_pace reports on (1 without others). */
int shoal_pace_ranks(const struct shoal_state *s);

#endif
