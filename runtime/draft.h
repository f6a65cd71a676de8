/*
 * A draft model's proposals for speculative decoding (issue 22's
 * `--draft-model FILE`): a second, smaller model with the same vocabulary,
 * that rank 0 runs alone on its own state, greedy, a token at a time after
 * the sequence so far. Its proposals are deterministic (its best tokens), so
 * shoal_sampler_verify's rule for a one-hot draft holds for them as for
 * prompt lookup's.
 */
#ifndef SHOAL_DRAFT_H
#define SHOAL_DRAFT_H

#include <stdint.h>

#include "model.h"
#include "tokenizer.h"

struct shoal_draft;

/* SHOAL_INVALID, naming both files and the first token that differs, unless the vocabularies are one. */
shoal_status shoal_draft_same_vocab(const struct shoal_tokenizer *draft_tok, const char *draft_path,
                                    const struct shoal_tokenizer *target_tok, const char *target_path);

/*
 * A drafter over state st (the draft model's: one rank, no distribution;
 * the drafter does not own it). SHOAL_INVALID, naming both files, unless
 * draft_tok's vocabulary is target_tok's token for token.
 */
shoal_status shoal_draft_create(struct shoal_draft **out, struct shoal_state *st,
                                const struct shoal_tokenizer *draft_tok, const char *draft_path,
                                const struct shoal_tokenizer *target_tok, const char *target_path);
void shoal_draft_destroy(struct shoal_draft *d); /* accepts NULL */

/*
 * Up to k tokens to follow hist[0..n) into out, *n_out of them: the draft
 * model's best token after the sequence, then after that one, and so on. Its
 * cache keeps what it fed before as far as hist agrees with it (an earlier
 * call's accepted drafts), so a call feeds the rest of hist and k - 1
 * drafts. None when k < 1 or its context is full. An error is its forward
 * pass's.
 */
shoal_status shoal_draft_propose(struct shoal_draft *d, const int32_t *hist, int n, int k, int32_t *out, int *n_out);

/*
 * Feeds the draft model hist[0..n) but the last token (what a first
 * shoal_draft_propose on hist would): its share of a prompt, done with the
 * prompt rather than in the first decode step.
 */
shoal_status shoal_draft_prefill(struct shoal_draft *d, const int32_t *hist, int n);

#endif
