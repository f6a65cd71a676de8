/*
 * synth — a GGUF model of any LLaMA-family shape with seeded random weights
 * in any type shoal can quantize to, and a generated SentencePiece
 * vocabulary (or one copied from another GGUF). For tests (the forward pass
 * against the float64 reference, parallel layouts, the CUDA backend against
 * the CPU's) and benchmarks (realistic shapes without downloading weights).
 * `shoal synth` is its command line; tests/gpu/test_gpu_model.c writes its
 * models with it into memory.
 *
 * The same parameters and seed give the same bytes. Each tensor has its own
 * generator, seeded from the seed and the tensor's name. Nothing is printed:
 * progress goes to an optional callback.
 */
#ifndef SHOAL_SYNTH_H
#define SHOAL_SYNTH_H

#include <stdint.h>

#include "../base/base.h"

struct shoal_synth_params {
    const char *arch;       /* a family of runtime/arch.h: "llama", "mistral", "qwen2", "qwen3", "qwen3moe", "gemma3" */
    int dim, layers, heads, kv_heads;
    int head_dim;           /* 0: dim / heads */
    int ffn, vocab;         /* vocab: at least 300 (the specials, 256 bytes, pieces) */
    int ctx;                /* the context_length recorded */
    int tied;               /* no output.weight: the head is the embedding table */
    int type;               /* enum shoal_dtype of the layers' matrices */
    int embd_type, out_type;/* of token_embd and output.weight (< 0: type) */
    float rope_base;
    int swa_window;         /* families with windowed layers: attention.sliding_window (0: 32) */
    int experts, experts_used; /* > 0: every FFN a mixture of experts of ffn units each (qwen3moe: needed) */
    uint64_t seed;
    const char *vocab_from; /* NULL, or a GGUF whose tokenizer.* keys are copied (vocab is then its size) */
    /* optional: called with done = 0 when the tensors' bytes begin, after each row
     * written, and last with done == total */
    void (*progress)(void *user, uint64_t done, uint64_t total);
    void *user;
};

/* `shoal synth`'s defaults: llama, dim 256, 4 layers, 8 heads, 4 KV heads,
 * ffn 768, vocab 512, ctx 2048, f32, rope base 10000, seed 1. */
void shoal_synth_defaults(struct shoal_synth_params *p);

/*
 * Writes the model to path (as path.tmp, renamed into place when complete:
 * see shoal_gguf_writer_create). An impossible shape, a type shoal cannot
 * quantize to, or rows that are not whole quantization blocks are
 * SHOAL_INVALID naming the parameter or tensor; a vocab_from that cannot be
 * read is its reader's error. On failure nothing is left at path.
 */
shoal_status shoal_synth_write(const struct shoal_synth_params *p, const char *path);

#endif
