/*
 * arch.h — the model families shoal runs. Each has a file of its own
 * (arch_*.c) holding what sets it apart from the LLaMA block: how its rope
 * rotates, which tensors its layers have beyond the common ones, its layer
 * recipe as switches the one forward pass (model.c) follows, and any
 * hyperparameter keys of its own. Adding a family is adding a file and its
 * line in arch.c.
 *
 * The common block every family starts from: RMS norm, Q/K/V projections,
 * rope, grouped-query attention over the KV cache, the output projection
 * and the residual; RMS norm, a gated FFN (gate, up, down) and the
 * residual; the final norm and the head. Any family's file may give
 * {arch}.expert_count: its FFNs are then mixtures of that many experts
 * (model.c: moe_ffn), as Mixtral's `llama` files and `qwen3moe` are.
 */
#ifndef SHOAL_ARCH_H
#define SHOAL_ARCH_H

#include <stddef.h>

#include "../base/base.h"

struct shoal_hparams;
struct shoal_gguf;

/* The FFN's gate: act(gate x) * (up x). */
enum shoal_act {
    SHOAL_ACT_SILU = 0,      /* x / (1 + e^-x) */
    SHOAL_ACT_GELU_TANH = 1, /* x/2 (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))) */
};

struct shoal_arch {
    const char *name; /* general.architecture */
    int rope_mode;    /* enum shoal_rope_mode */
    int qkv_bias;     /* attn_q/k/v.bias added to the projections */
    int qk_norm;      /* attn_q_norm, attn_k_norm (head_dim each): every head of Q and K RMS-normed before rope */
    int post_norms;   /* post_attention_norm, post_ffw_norm: the attention's and the FFN's outputs RMS-normed
                       * before they join the residual */
    int act;          /* enum shoal_act */
    int embd_scale;   /* the embeddings times sqrt(dim) */
    /*
     * Sliding-window attention, when the file gives attention.sliding_window:
     * every swa_period-th layer (l + 1 a multiple of it) attends to the whole
     * context, the others to their last window positions, with a rope of
     * base swa_rope_base and no scaling; 0: no windowed layers.
     */
    int swa_period;
    float swa_rope_base;
    /* optional: the family's own keys, read after the common ones (hp filled so far) */
    shoal_status (*read)(struct shoal_hparams *hp, const struct shoal_gguf *g);
};

/* The family of general.architecture name, or NULL. */
const struct shoal_arch *shoal_arch_find(const char *name);
/* The families shoal runs, "llama, mistral, ...", into buf (for messages); returns buf. */
const char *shoal_arch_names(char *buf, size_t len);

extern const struct shoal_arch shoal_arch_llama, shoal_arch_mistral, shoal_arch_qwen2, shoal_arch_qwen3,
    shoal_arch_qwen3moe, shoal_arch_gemma3;

#endif
