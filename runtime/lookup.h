/*
 * Prompt lookup: draft tokens taken from the text itself (issue 22's
 * `--lookup N`), for a speculative step to verify. The last few tokens of the
 * history are looked for earlier in it; where they occurred before, the
 * tokens that followed them then are proposed to follow them now. It pays
 * where text repeats: code being edited, a summary quoting its source.
 */
#ifndef SHOAL_LOOKUP_H
#define SHOAL_LOOKUP_H

#include <stddef.h>
#include <stdint.h>

/*
 * Proposes up to k tokens to follow hist[0..n) into out: for g from ngram_max
 * down to ngram_min, the last g tokens' latest earlier occurrence (one that
 * ends before the history does), and the tokens that followed it, as far as
 * the history goes. Returns how many it proposed (0: none; no occurrence, or
 * k < 1). Time: O(n x ngram_max^2) a call, at most.
 */
int shoal_lookup_propose(const int32_t *hist, size_t n, int ngram_min, int ngram_max, int k, int32_t *out);

/* The n-grams shoal run and shoal serve look up: their last 1 to 3 tokens. */
enum { SHOAL_LOOKUP_NGRAM_MIN = 1, SHOAL_LOOKUP_NGRAM_MAX = 3 };

/*
 * The drafts a sequence asks for next, after a step that asked for k (of at
 * most kmax), drafted m and saw a of them accepted: two more when all of
 * them passed, one fewer (at least 1) when one did not, else k. Both kinds
 * of draft (lookup, a draft model) and both loops (shoal run's, shoal
 * serve's) adapt by it.
 */
static inline int shoal_spec_next_k(int k, int kmax, int m, int a) {
    if (a == m && m == k) return k + 2 < kmax ? k + 2 : kmax;
    return a < m && k > 1 ? k - 1 : k;
}

#endif
