/*
 * arch_qwen3moe.c — Qwen3's mixture of experts (Qwen3-30B-A3B and its
 * kin): Qwen3's attention (per-head Q/K norms, no biases, NeoX rope) and on
 * every layer an FFN of expert_count experts, each token running the
 * expert_used_count its router (ffn_gate_inp) scores best, their outputs
 * weighted by a softmax over the chosen. An expert's width is
 * expert_feed_forward_length (feed_forward_length is the dense width the
 * family's other models use). No shared expert.
 */
#include "arch.h"

#include "../shard/gguf.h"
#include "backend.h"
#include "model.h"

static shoal_status qwen3moe_read(struct shoal_hparams *hp, const struct shoal_gguf *g) {
    if (!hp->n_expert)
        return shoal_errorf(SHOAL_FORMAT, "%s: qwen3moe.expert_count is missing (a mixture of experts "
                            "says how many it has)", g->path);
    uint32_t ff = 0;
    SHOAL_TRY(shoal_gguf_get_u32(g, "qwen3moe.expert_feed_forward_length", &ff));
    if (ff < 1 || ff > (1u << 22))
        return shoal_errorf(SHOAL_FORMAT, "%s: qwen3moe.expert_feed_forward_length = %u is outside the "
                            "range 1..%u", g->path, ff, 1u << 22);
    hp->ffn_dim = (int)ff;
    return SHOAL_OK;
}

const struct shoal_arch shoal_arch_qwen3moe = {
    .name = "qwen3moe",
    .rope_mode = SHOAL_ROPE_NEOX,
    .qk_norm = 1,
    .read = qwen3moe_read,
};
