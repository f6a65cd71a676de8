/*
 * draft.c — a draft model's proposals (draft.h).
 */
#include "draft.h"

#include <stdlib.h>
#include <string.h>

#include "generate.h"
#include "sampler.h"

struct shoal_draft {
    struct shoal_state *st;
    struct shoal_sampler *greedy;
    int n_vocab, n_ctx;
    int32_t *fed; /* (n_ctx) the tokens in its cache, positions 0.. */
    int n_fed;
    float *logits; /* (n_vocab) */
    struct shoal_seq_batch sb;
};

shoal_status shoal_draft_same_vocab(const struct shoal_tokenizer *a, const char *pa, const struct shoal_tokenizer *b,
                                    const char *pb) {
    const int na = shoal_tokenizer_n_vocab(a), nb = shoal_tokenizer_n_vocab(b);
    if (na != nb)
        return shoal_errorf(SHOAL_INVALID, "the draft model %s has %d tokens, the model %s %d: a draft model "
                            "needs the same vocabulary", pa, na, pb, nb);
    for (int32_t id = 0; id < na; id++) {
        size_t la = 0, lb = 0;
        const char *ta = shoal_tokenizer_text(a, id, &la), *tb = shoal_tokenizer_text(b, id, &lb);
        if (la != lb || (la && memcmp(ta, tb, la) != 0))
            return shoal_errorf(SHOAL_INVALID, "the draft model %s and the model %s differ at token %d ('%.*s' "
                                "against '%.*s'): a draft model needs the same vocabulary", pa, pb, id,
                                la > 40 ? 40 : (int)la, ta ? ta : "", lb > 40 ? 40 : (int)lb, tb ? tb : "");
    }
    return SHOAL_OK;
}

shoal_status shoal_draft_create(struct shoal_draft **out, struct shoal_state *st,
                                const struct shoal_tokenizer *draft_tok, const char *draft_path,
                                const struct shoal_tokenizer *target_tok, const char *target_path) {
    *out = NULL;
    SHOAL_TRY(shoal_draft_same_vocab(draft_tok, draft_path, target_tok, target_path));
    struct shoal_draft *d = calloc(1, sizeof *d);
    if (!d) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    d->st = st;
    d->n_vocab = st->m->hp.n_vocab;
    d->n_ctx = st->n_ctx;
    struct shoal_sampler_params sp;
    shoal_sampler_defaults(&sp);
    sp.temp = 0;
    shoal_status rc = shoal_sampler_create(&d->greedy, &sp, d->n_vocab);
    d->fed = malloc((size_t)d->n_ctx * sizeof *d->fed);
    d->logits = malloc((size_t)d->n_vocab * sizeof *d->logits);
    if (rc == SHOAL_OK) rc = shoal_seq_batch_init(&d->sb, st->n_batch, d->n_ctx);
    if (rc == SHOAL_OK && (!d->fed || !d->logits)) rc = shoal_errorf(SHOAL_NOMEM, "out of memory for the draft model");
    if (rc != SHOAL_OK) {
        shoal_draft_destroy(d);
        return rc;
    }
    *out = d;
    return SHOAL_OK;
}

void shoal_draft_destroy(struct shoal_draft *d) {
    if (!d) return;
    shoal_sampler_destroy(d->greedy);
    shoal_seq_batch_free(&d->sb);
    free(d->fed);
    free(d->logits);
    free(d);
}

/* Feeds toks[0..n) at positions from d->n_fed, in batches; the last one's logits into d->logits. */
static shoal_status feed(struct shoal_draft *d, const int32_t *toks, int n) {
    for (int at = 0; at < n;) {
        const int b = n - at < d->st->n_batch ? n - at : d->st->n_batch, last = at + b == n;
        shoal_seq_batch_set(&d->sb, toks + at, b, d->n_fed);
        SHOAL_TRY(shoal_forward(d->st, &d->sb.b, b - last, last, d->logits));
        memcpy(d->fed + d->n_fed, toks + at, (size_t)b * sizeof *toks);
        d->n_fed += b;
        at += b;
    }
    return SHOAL_OK;
}

/* What of its cache still holds: the prefix it shares with hist, short of hist's last token (whose
 * logits a proposal needs). */
static void keep_prefix(struct shoal_draft *d, const int32_t *hist, int n) {
    int keep = 0;
    while (keep < d->n_fed && keep < n - 1 && d->fed[keep] == hist[keep]) keep++;
    d->n_fed = keep;
}

shoal_status shoal_draft_prefill(struct shoal_draft *d, const int32_t *hist, int n) {
    if (n < 2 || n > d->n_ctx) return SHOAL_OK;
    keep_prefix(d, hist, n);
    return d->n_fed < n - 1 ? feed(d, hist + d->n_fed, n - 1 - d->n_fed) : SHOAL_OK;
}

shoal_status shoal_draft_propose(struct shoal_draft *d, const int32_t *hist, int n, int k, int32_t *out, int *n_out) {
    *n_out = 0;
    if (k > d->n_ctx - n + 1) k = d->n_ctx - n + 1; /* it feeds n + k - 1 tokens in all */
    if (k < 1 || n < 1) return SHOAL_OK;
    keep_prefix(d, hist, n);
    SHOAL_TRY(feed(d, hist + d->n_fed, n - d->n_fed));
    for (int i = 0;; i++) {
        out[i] = shoal_sampler_sample(d->greedy, d->logits, NULL, 0);
        *n_out = i + 1;
        if (i + 1 == k) return SHOAL_OK;
        SHOAL_TRY(feed(d, &out[i], 1));
    }
}
