/*
 * arch_qwen3.c — Qwen3 (dense): no Q/K/V biases; each head of Q and of K
 * RMS-normed (attn_q_norm, attn_k_norm: head_dim weights shared by the
 * heads) after the projection and before rope; rope on halves (NeoX); its
 * head size is attention.key_length, apart from dim / heads.
 */
#include "arch.h"
#include "backend.h"

const struct shoal_arch shoal_arch_qwen3 = { .name = "qwen3", .rope_mode = SHOAL_ROPE_NEOX, .qk_norm = 1 };
