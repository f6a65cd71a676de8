/*
 * The model: hyperparameters read from a GGUF, the weights prepared on a
 * compute backend, and the state one run needs (KV cache and activations).
 * shoal_forward() runs one batch of tokens through every layer, written once
 * against the backend interface, and returns logits for the rows asked for.
 *
 * It does no tokenizing, sampling or printing (see generate.h), and knows
 * nothing of ranks yet: one process holds the whole model.
 */
#ifndef SHOAL_MODEL_H
#define SHOAL_MODEL_H

#include <stdint.h>

#include "../shard/gguf.h"
#include "backend.h"

struct shoal_hparams {
    char arch[32];           /* general.architecture */
    char name[96];           /* general.name, or the file name */
    int n_vocab, dim, n_layers, n_heads, n_kv_heads, head_dim, ffn_dim;
    int n_ctx_train;
    float rms_eps;
    struct shoal_rope rope;
    int tied_output;         /* no output.weight: the embedding table is the head */
    int has_qkv_bias;        /* qwen2 */
};

struct shoal_layer {
    struct shoal_weight wq;    /* (n_heads * head_dim, dim) */
    struct shoal_weight wk;    /* (n_kv_heads * head_dim, dim) */
    struct shoal_weight wv;    /* (n_kv_heads * head_dim, dim) */
    struct shoal_weight wo;    /* (dim, n_heads * head_dim) */
    struct shoal_weight gate;  /* (ffn_dim, dim) */
    struct shoal_weight up;    /* (ffn_dim, dim) */
    struct shoal_weight down;  /* (dim, ffn_dim) */
    float *attn_norm;          /* device (dim) */
    float *ffn_norm;           /* device (dim) */
    float *bq, *bk, *bv;       /* device biases, or NULL */
};

struct shoal_model {
    struct shoal_hparams hp;
    struct shoal_backend *be;   /* not owned */
    const struct shoal_gguf *g; /* not owned: weights may point into its map */
    struct shoal_weight tok_embd; /* (n_vocab, dim) */
    struct shoal_weight output;   /* (n_vocab, dim); shares tok_embd's bytes when tied */
    float *output_norm;           /* device (dim) */
    struct shoal_layer *layers;   /* (n_layers) */
    void *small;                  /* device block holding every norm weight and bias (f32) */
    float *freq_factors;          /* host (rope_dim / 2) or NULL: llama3 rope scaling */
    uint64_t n_params;
    uint64_t weight_bytes;        /* bytes of every tensor the forward pass reads */
    int main_type;                /* the most common matmul weight type */
};

/*
 * Reads and checks the hyperparameters of a GGUF: a missing key, an
 * impossible shape or an architecture shoal cannot run is an error naming
 * the file and the key.
 */
shoal_status shoal_hparams_read(struct shoal_hparams *hp, const struct shoal_gguf *g);

/*
 * Prepares every weight of g on backend be. g and be must outlive the model.
 * A missing tensor, a shape that does not match the hyperparameters or a
 * type the backend cannot compute is an error naming the tensor.
 */
shoal_status shoal_model_load(struct shoal_model **out, const struct shoal_gguf *g,
                              struct shoal_backend *be);
/*
 * The checks of shoal_model_load (hyperparameters, every tensor present with
 * its shape and a type shoal computes with) without a backend or any
 * allocation of weights: whether the file would load.
 */
shoal_status shoal_model_check(const struct shoal_gguf *g);
void shoal_model_destroy(struct shoal_model *m);

/* ---------------------------------------------------------------- state */

struct shoal_state_params {
    int n_ctx;     /* KV cache positions */
    int n_batch;   /* most tokens per forward call */
    int n_outputs; /* most rows of logits per forward call (<= n_batch; 0: 1) */
    int kv_type;   /* enum shoal_kv_type */
};

struct shoal_state {
    const struct shoal_model *m;
    struct shoal_kv_desc kvd;
    int n_ctx, n_batch, n_outputs;
    void *kv;          /* device: per layer, K then V, n_ctx slots each */
    void *act;         /* device: the activations below, one block */
    float *x;          /* (n_batch, dim) residual stream */
    float *xb;         /* (n_batch, dim) normed input / projection output */
    float *q;          /* (n_batch, n_heads * head_dim) */
    float *k, *v;      /* (n_batch, n_kv_heads * head_dim) */
    float *att;        /* (n_batch, n_heads * head_dim) */
    float *hb, *hb2;   /* (n_batch, ffn_dim) */
    float *logits;     /* (n_outputs, n_vocab) */
    uint64_t kv_bytes, act_bytes;
};

shoal_status shoal_state_create(struct shoal_state **out, const struct shoal_model *m,
                                const struct shoal_state_params *p);
void shoal_state_destroy(struct shoal_state *s);

/*
 * Runs batch b (at most n_batch tokens) through the model, storing its K/V
 * in the cache, and writes to logits (host, n_out x n_vocab) the logits of
 * the batch rows listed in out_rows. n_out may be 0, at most n_outputs.
 */
shoal_status shoal_forward(struct shoal_state *s, const struct shoal_batch *b,
                           const int *out_rows, int n_out, float *logits);

#endif
