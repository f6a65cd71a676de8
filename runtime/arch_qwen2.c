/*
 * arch_qwen2.c — Qwen2 (and Qwen2.5): the common block with biases on the
 * Q, K and V projections; rope on halves (NeoX).
 */
#include "arch.h"
#include "backend.h"

const struct shoal_arch shoal_arch_qwen2 = { .name = "qwen2", .rope_mode = SHOAL_ROPE_NEOX, .qkv_bias = 1 };
