/*
 * sched — continuous batching over a paged KV cache, for serving many
 * sequences at once on rank 0 (the other ranks follow the steps it starts).
 *
 * The state's KV cache (n_ctx positions per layer) is cut into blocks of
 * block_size positions; each sequence has a block table, blocks taken as its
 * positions grow and all given back when it ends. Every step feeds each
 * running sequence what it has not fed yet: its last token while decoding,
 * or the next chunk of its prompt, so a long prompt is spread over steps that
 * also carry the other sequences' tokens. Sequences join at the next step
 * (first come, first served, while max_seqs allows) and leave when done.
 * When a step needs a block and none is free, the sequence admitted last is
 * preempted: its blocks given back and its tokens so far fed again later
 * (recomputed) from the head of the queue; it finishes with the same tokens.
 *
 * Single-threaded: one thread calls everything (the server's engine loop).
 * Tokens reach the caller through each sequence's callback, during
 * shoal_sched_step.
 */
#ifndef SHOAL_SCHED_H
#define SHOAL_SCHED_H

#include <stdint.h>

#include "../base/base.h"
#include "model.h"
#include "sampler.h"

struct shoal_sched_params {
    int block_size; /* positions per KV block (default 16) */
    int max_seqs;   /* sequences running at once, at most the state's n_outputs */
    int chunk;      /* most prompt tokens of one sequence per step (default: the state's n_batch) */
    int max_pos;    /* positions one sequence may reach (the model's context), at most the state's n_ctx */
    /* speculative decoding by prompt lookup (generate.h's lookup): a decoding sequence's step
     * carries up to lookup tokens drafted from its own text, verified in that step; 0: off.
     * The state needs n_outputs of max_seqs x (1 + lookup). */
    int lookup;
    /* or drafts from a draft model (up to lookup of them a decoding sequence's step): its state,
     * rank 0's alone (n_ctx, block size and rings as the state's; n_outputs max_seqs), whose
     * paged cache has blocks of its own (a sequence they run short for drafts nothing) */
    struct shoal_state *draft;
};

enum shoal_seq_end {
    SHOAL_SEQ_STOPPED = 1, /* the callback asked (end of text, a stop string) */
    SHOAL_SEQ_LENGTH,      /* max_tokens generated */
    SHOAL_SEQ_CONTEXT,     /* the sequence reached max_pos */
    SHOAL_SEQ_CANCELLED,   /* shoal_sched_cancel */
};

/*
 * A sequence's callbacks, on the thread calling shoal_sched_step. on_token
 * gets each generated token; nonzero ends the sequence (SHOAL_SEQ_STOPPED).
 * on_end is called once, last, whatever ended it; user is not used after.
 */
struct shoal_seq_cb {
    int (*on_token)(void *user, int32_t token);
    void (*on_end)(void *user, int why, int n_prompt, int n_gen);
    void *user;
};

struct shoal_sched_stats {
    int running, waiting;     /* sequences now */
    int blocks_used, blocks;  /* KV blocks taken, in all */
    int last_batch;           /* tokens in the last step */
    int last_seqs;            /* sequences in the last step */
    uint64_t steps, prompt_tokens, gen_tokens, preemptions;
    uint64_t drafted, accepted; /* tokens drafted, and accepted (generated without a step of their own) */
    uint64_t draft_steps, draft_tokens; /* a draft model's forward steps, and the tokens they fed */
    uint64_t lane_steps;      /* steps rank 0 ran cut into lanes (shoal_backend_run_lanes) */
    uint64_t expert_runs, expert_bytes; /* a mixture of experts: rank 0's experts run (an expert in a lane's
                                         * step, once a layer) and their weights' bytes */
};

struct shoal_sched;

/* For state s (rank 0's: its forward drives every rank). *out owned by the caller. */
shoal_status shoal_sched_create(struct shoal_sched **out, struct shoal_state *s,
                                const struct shoal_sched_params *p);
/* Ends every sequence still there (SHOAL_SEQ_CANCELLED) and frees; accepts NULL. */
void shoal_sched_destroy(struct shoal_sched *sc);

/*
 * Queues a sequence: prompt (copied; >= 1 token, every id < n_vocab, shorter
 * than max_pos), at most max_tokens (>= 1) generated with sampler params sp.
 * *id names it for shoal_sched_cancel. SHOAL_INVALID for a bad prompt (the
 * callbacks are then never called).
 */
shoal_status shoal_sched_add(struct shoal_sched *sc, const int32_t *prompt, int n_prompt, int max_tokens,
                             const struct shoal_sampler_params *sp, const struct shoal_seq_cb *cb,
                             uint64_t *id);
/* Ends sequence id before the next step (its on_end says CANCELLED); unknown ids are ignored. */
void shoal_sched_cancel(struct shoal_sched *sc, uint64_t id);

/*
 * One step: every running sequence fed, one forward pass, a token sampled for
 * each sequence whose input is all in (with lookup, a decoding sequence's
 * drafts verified first: those accepted, then the token after them). *worked:
 * 0 when there was nothing to do. An error from the forward pass is returned (the state is then unusable).
 */
shoal_status shoal_sched_step(struct shoal_sched *sc, int *worked);
/*
 * Between steps, when there is nothing to run: tells the other ranks that
 * rank 0 is alive (shoal_ping) when they have not heard from it for a
 * quarter of the communication timeout, so that their bounded wait for the
 * next step does not end an idle server (nothing without a timeout).
 */
shoal_status shoal_sched_keepalive(struct shoal_sched *sc);

/*
 * Every rank's pace so far (model.h: shoal_gather_pace), when steps ran since
 * the last time: at once when idle, else at most every `every` seconds;
 * *pace (the scheduler's, valid until the next call) and *n, or *n = 0 when
 * it is not time. The other ranks hear from rank 0 too, as from a keep-alive.
 */
shoal_status shoal_sched_pace(struct shoal_sched *sc, double every, int idle, const struct shoal_rank_pace **pace,
                              int *n);

void shoal_sched_stats(const struct shoal_sched *sc, struct shoal_sched_stats *st);

#endif
