/*
 * arch_gemma3.c — Gemma 3, as llama.cpp runs its GGUF files:
 * - the embeddings times sqrt(dim);
 * - each head of Q and K RMS-normed (attn_q_norm, attn_k_norm) before rope,
 *   which rotates halves (NeoX);
 * - the attention's and the FFN's outputs RMS-normed (post_attention_norm,
 *   post_ffw_norm) before they join the residual; the norms' weights are
 *   stored with Gemma's 1 + w already added;
 * - a GELU (tanh) gate in the FFN;
 * - the head size from attention.key_length (256 on the small models, apart
 *   from dim / heads), and scores scaled by 1 / sqrt(head size), but by
 *   1 / sqrt(dim / heads) on the 27B model (62 layers), whose query scale
 *   Google set so;
 * - sliding-window attention (attention.sliding_window positions) on five
 *   layers of every six, the sixth attending to the whole context; the
 *   windowed layers' rope has base 10000 and no scaling, the others the
 *   file's (rope.freq_base, rope.scaling).
 * The vocabulary is SentencePiece's (tokenizer.ggml.model "llama").
 */
#include "arch.h"

#include <math.h>

#include "backend.h"
#include "model.h"

static shoal_status gemma3_read(struct shoal_hparams *hp, const struct shoal_gguf *g) {
    if (hp->swa_window < 1)
        return shoal_errorf(SHOAL_FORMAT, "%s: gemma3.attention.sliding_window is missing (Gemma 3 attends "
                            "to a window on five layers of six)", g->path);
    if (hp->n_layers == 62) hp->attn_scale = 1.0f / sqrtf((float)hp->dim / (float)hp->n_heads);
    return SHOAL_OK;
}

const struct shoal_arch shoal_arch_gemma3 = {
    .name = "gemma3",
    .rope_mode = SHOAL_ROPE_NEOX,
    .qk_norm = 1,
    .post_norms = 1,
    .act = SHOAL_ACT_GELU_TANH,
    .embd_scale = 1,
    .swa_period = 6,
    .swa_rope_base = 10000.0f,
    .read = gemma3_read,
};
