/*
 * The sampler: turns a row of logits into the next token. Greedy when the
 * temperature is 0; otherwise, in llama.cpp's default order, repetition /
 * frequency / presence penalties over the recent tokens, top-k, top-p,
 * min-p, temperature, then a draw from its own seeded generator (the same
 * seed gives the same tokens).
 */
#ifndef SHOAL_SAMPLER_H
#define SHOAL_SAMPLER_H

#include <stdint.h>

#include "../base/base.h"

struct shoal_sampler_params {
    float temp;            /* <= 0: greedy */
    int top_k;             /* <= 0: off */
    float top_p;           /* >= 1: off */
    float min_p;           /* <= 0: off */
    float repeat_penalty;  /* 1: off; divides positive logits, multiplies negative */
    int repeat_last_n;     /* how many recent tokens the penalties look at (-1: all) */
    float freq_penalty;    /* subtracted once per occurrence */
    float presence_penalty;/* subtracted once if present */
    uint64_t seed;
};

/* llama.cpp's defaults: temp 0.8, top-k 40, top-p 0.95, min-p 0.05, no penalties. */
void shoal_sampler_defaults(struct shoal_sampler_params *p);

struct shoal_sampler;

shoal_status shoal_sampler_create(struct shoal_sampler **out, const struct shoal_sampler_params *p,
                                  int n_vocab);
void shoal_sampler_destroy(struct shoal_sampler *s);

/*
 * Picks a token from logits (n_vocab values; modified in place by the
 * penalties). history holds the tokens so far (prompt and generated), the
 * last of them most recent.
 */
int32_t shoal_sampler_sample(struct shoal_sampler *s, float *logits, const int32_t *history,
                             int n_history);

/*
 * Speculative decoding's verification of a drafted token that a draft with
 * no distribution of its own proposed (prompt lookup: the draft's q is all on
 * draft). logits, history as for shoal_sampler_sample: the target's row at
 * the draft's position. Greedy: the best token, *accepted when it is the
 * draft. Sampling: the draft, accepted with the target's probability of it
 * (min(1, p / q)); else a draw from the target's distribution without it
 * (max(0, p - q), normalised), so that what comes out is distributed as
 * shoal_sampler_sample's draws are (speculative sampling's rule).
 */
int32_t shoal_sampler_verify(struct shoal_sampler *s, float *logits, const int32_t *history, int n_history,
                             int32_t draft, int *accepted);

#endif
