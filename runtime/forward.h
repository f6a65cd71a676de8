/*
 * forward.h — inside runtime/ only: the pieces of a forward step that one
 * rank runs on its share (model.c), for the step protocol (dist.c) to call.
 */
#ifndef SHOAL_FORWARD_H
#define SHOAL_FORWARD_H

#include "model.h"

/* s->x = the embeddings of the batch's tokens (first stage). */
shoal_status shoal_run_embed(struct shoal_state *s, const struct shoal_batch *b);
/*
 * This rank's layers over s->x, all-reducing over its tensor-parallel group.
 * The work may still be queued on the backend when it returns: reading s->x
 * on the host goes through a download, which waits for it.
 */
shoal_status shoal_run_layers(struct shoal_state *s, const struct shoal_batch *b);
/*
 * Last stage: the logits of rows [out0, out0 + n_out) of an n-token batch,
 * assembled on the stage's first rank: whole rows in s->gathered (n_out x
 * n_vocab), or with topk > 0 each row's topk best in s->cands (n_out x
 * topk, best first, ties to the lower id).
 */
shoal_status shoal_run_head(struct shoal_state *s, int n, int out0, int n_out, int topk);
/* Frees the last step a rank received (dist.c); the state's destroy calls it. */
void shoal_step_release(struct shoal_state *s);
/* Rows of logits from candidates: -infinity but for the candidates' tokens. */
void shoal_expand_cands(const struct shoal_cand *c, int n_out, int topk, int n_vocab, float *logits);

#endif
