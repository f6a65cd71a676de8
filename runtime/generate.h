/*
 * The generation loop for one sequence: prompt processing in batches, then
 * one token at a time until the length limit, an end-of-generation token or
 * a full context. Text goes out through a callback as it is produced, in
 * chunks of valid UTF-8.
 */
#ifndef SHOAL_GENERATE_H
#define SHOAL_GENERATE_H

#include <stdint.h>

#include "draft.h"
#include "model.h"
#include "sampler.h"
#include "tokenizer.h"

struct shoal_gen_params {
    int n_predict;    /* tokens to generate; < 0: until end of generation or a full context */
    int ignore_eos;   /* keep going past end-of-generation tokens */
    int echo_prompt;  /* send the prompt's text through on_text first */
    int all_logits;   /* call on_logits for every position, prompt included */
    /* The first n_cached prompt tokens are in the state's KV cache already, at
     * positions 0.. (an earlier call on the same state, a conversation that
     * goes on): only the rest is processed. 0 for a fresh state. */
    int n_cached;
    /* Text as it is produced; a nonzero return stops generation (reason "stopped"). */
    int (*on_text)(void *user, const char *text, size_t len);
    /* Logits (n_vocab) predicted at position pos, whose input token is token. */
    void (*on_logits)(void *user, int pos, int32_t token, const float *logits, int n_vocab);
    /* Each generated token id. */
    void (*on_token)(void *user, int32_t id);
    void *user;
    /*
     * Speculative decoding with prompt lookup (shoal_lookup_propose): each
     * decode step carries up to lookup tokens drafted from the sequence so
     * far, verified in that one forward step (shoal_sampler_verify); the
     * number drafted adapts to how many were accepted (shoal_spec_next_k).
     * 0: off. At most the state's n_outputs - 1. Greedy output is the same as
     * without, on batch-invariant kernels (shoal_backend_batch_invariant).
     */
    int lookup;
    /* drafts from a draft model (draft.h) instead of prompt lookup, up to lookup a step */
    struct shoal_draft *draft;
};

struct shoal_gen_stats {
    int n_prompt;         /* tokens processed as prompt (BOS included; cached ones not) */
    int n_gen;            /* tokens generated */
    int n_decode;         /* single-token forward passes */
    double t_prompt;      /* seconds for the prompt (forward passes and first sample) */
    double t_decode;      /* seconds for the single-token forward passes and sampling */
    uint64_t decode_expert_bytes; /* a mixture of experts: bytes of the experts the decode steps ran */
    int n_drafted;        /* speculative decoding: tokens drafted, of which n_accepted were accepted, */
    int n_accepted;       /* in n_spec_steps decode steps (the others had no draft) */
    int n_spec_steps;
    const char *stop;     /* "length", "eos", "context", "stopped" */
};

/*
 * Runs the loop from position p->n_cached (0: a fresh state). prompt holds
 * the whole sequence so far (BOS already included where wanted); it must not
 * be empty. Every generated token but the last ends up in the cache, after
 * the prompt.
 */
shoal_status shoal_generate(struct shoal_state *s, const struct shoal_tokenizer *tok,
                            struct shoal_sampler *smp, const int32_t *prompt, int n_prompt,
                            const struct shoal_gen_params *p, struct shoal_gen_stats *st);

/*
 * A batch of n consecutive tokens of one sequence held in a contiguous KV
 * cache, from position pos0. The arrays live in the struct (n <= cap).
 */
struct shoal_seq_batch {
    struct shoal_batch b;
    int32_t *pos, *seq, *slot, table[1];
    int cap;
};
shoal_status shoal_seq_batch_init(struct shoal_seq_batch *sb, int cap, int n_ctx);
void shoal_seq_batch_free(struct shoal_seq_batch *sb);
void shoal_seq_batch_set(struct shoal_seq_batch *sb, const int32_t *tokens, int n, int pos0);

#endif
