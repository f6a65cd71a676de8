/*
 * cmd_perplexity.c — `shoal perplexity`: a model's perplexity on a text, by
 * llama.cpp's method (its tools/perplexity), so that the two figures can be
 * set side by side: the text tokenized as llama.cpp's perplexity does (BOS
 * where the model adds one, special tokens as text), cut into windows of
 * n_ctx tokens (as many as the text holds, or --chunks), each run from
 * position 0 in batches of -b with its first token made BOS where the model
 * adds one; of each window the second half is scored, position j's logits
 * against token j + 1, from n_ctx / 2 to n_ctx - 2. The figure is
 * exp(mean NLL), its standard error ppl x sqrt(var(NLL) / (count - 1)).
 *
 * Every rank's setup is shoal run's (run_main); rank 0 drives the steps
 * (shoal_forward), the others follow, in any layout.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/generate.h"
#include "../runtime/model.h"
#include "launch.h"
#include "run.h"

/* -log p(tok) under a row of logits: its log-softmax, summed in f64. */
static double nll_of(const float *row, int n_vocab, int32_t tok) {
    float most = row[0];
    for (int i = 1; i < n_vocab; i++) most = row[i] > most ? row[i] : most;
    double sum = 0;
    for (int i = 0; i < n_vocab; i++) sum += exp((double)row[i] - most);
    return log(sum) - ((double)row[tok] - most);
}

/* The windows' tokens scored, the sums of their NLL and its square. */
struct score {
    double nll, nll2;
    long count;
};

/* One window: tokens [0, n_ctx) from position 0, its second half scored into sc. */
static shoal_status window(struct run *r, struct shoal_seq_batch *sb, const int32_t *tok, int n_ctx, int add_bos,
                           int32_t bos, int32_t *ids, float *logits, struct score *sc) {
    const int n_batch = r->o.n_batch, n_vocab = r->m->hp.n_vocab, first = n_ctx / 2;
    for (int b0 = 0; b0 < n_ctx; b0 += n_batch) {
        const int n = n_ctx - b0 < n_batch ? n_ctx - b0 : n_batch;
        memcpy(ids, tok + b0, sizeof *ids * (size_t)n); /* (ids: room for n_batch) */
        if (b0 == 0 && add_bos) ids[0] = bos; /* llama.cpp: the window starts with BOS */
        shoal_seq_batch_set(sb, ids, n, b0);
        /* the rows scored: positions first .. n_ctx - 2 */
        const int lo = first > b0 ? first - b0 : 0, hi = n_ctx - 1 - b0 < n ? n_ctx - 1 - b0 : n;
        const int out0 = lo < hi ? lo : 0, n_out = lo < hi ? hi - lo : 0;
        SHOAL_TRY(shoal_forward(r->st, &sb->b, out0, n_out, logits));
        for (int k = 0; k < n_out; k++) {
            const int j = b0 + out0 + k; /* the position: its logits predict token j + 1 */
            const double v = nll_of(logits + (size_t)k * (size_t)n_vocab, n_vocab, tok[j + 1]);
            sc->nll += v;
            sc->nll2 += v * v;
            sc->count++;
        }
    }
    return SHOAL_OK;
}

int perplexity_lead(struct run *r) {
    const struct run_opts *o = &r->o;
    char *text = NULL;
    size_t len = 0, n_tok = 0;
    int32_t *tok = NULL, *ids = NULL;
    float *logits = NULL;
    struct shoal_seq_batch sb = { 0 };
    const int n_ctx = r->st->n_ctx, n_vocab = r->m->hp.n_vocab;
    const int add_bos = shoal_tokenizer_add_bos(r->tok);
    const int32_t bos = shoal_tokenizer_bos(r->tok);
    shoal_status rc = launch_read_file(o->prompt_file, &text, &len);
    if (rc == SHOAL_OK && strlen(text) != len)
        rc = shoal_errorf(SHOAL_FORMAT, "%s: not a text file (a NUL byte at %zu)", o->prompt_file, strlen(text));
    if (rc == SHOAL_OK && add_bos && bos < 0)
        rc = shoal_errorf(SHOAL_FORMAT, "the model adds BOS to its prompts but names no BOS token");
    if (rc == SHOAL_OK) rc = shoal_tokenize(r->tok, text, len, add_bos, 0, &tok, &n_tok);
    int n_chunks = 0;
    if (rc == SHOAL_OK) {
        if (n_tok < 2 * (size_t)n_ctx)
            rc = shoal_errorf(SHOAL_INVALID, "%s: %zu tokens; perplexity with windows of %d needs at least %d "
                              "(a longer text, or a smaller -c)", o->prompt_file, n_tok, n_ctx, 2 * n_ctx);
        n_chunks = (int)(n_tok / (size_t)n_ctx);
        if (o->chunks > 0 && o->chunks < n_chunks) n_chunks = o->chunks;
    }
    if (rc == SHOAL_OK && (!(logits = malloc(sizeof *logits * (size_t)o->n_batch * (size_t)n_vocab)) ||
                           !(ids = malloc(sizeof *ids * (size_t)o->n_batch))))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for %d rows of logits", o->n_batch);
    if (rc == SHOAL_OK) rc = shoal_seq_batch_init(&sb, o->n_batch, n_ctx);
    struct score sc = { 0 };
    const double t0 = shoal_now();
    if (rc == SHOAL_OK && !o->quiet)
        fprintf(stderr, "shoal perplexity: %s: %zu tokens, %d window%s of %d, batches of %d; the second half of "
                "each scored\n", o->prompt_file, n_tok, n_chunks, n_chunks == 1 ? "" : "s", n_ctx, o->n_batch);
    for (int c = 0; rc == SHOAL_OK && c < n_chunks; c++) {
        rc = window(r, &sb, tok + (size_t)c * (size_t)n_ctx, n_ctx, add_bos, bos, ids, logits, &sc);
        if (rc == SHOAL_OK) { /* the running figure, as llama.cpp prints it */
            printf("%s[%d]%.4f", c ? "," : "", c + 1, exp(sc.nll / (double)sc.count));
            fflush(stdout);
        }
    }
    const double secs = shoal_now() - t0;
    shoal_status stop = shoal_stop(r->st);
    if (rc == SHOAL_OK) rc = stop;
    int status = 0;
    if (rc == SHOAL_OK) {
        const double mean = sc.nll / (double)sc.count, ppl = exp(mean);
        const double var = sc.nll2 / (double)sc.count - mean * mean;
        const double err = sc.count > 1 && var > 0 ? ppl * sqrt(var / (double)(sc.count - 1)) : 0;
        printf("\nFinal estimate: PPL = %.4f +/- %.5f\n", ppl, err);
        if (!o->quiet)
            fprintf(stderr, "shoal perplexity: %ld tokens scored in %d windows, %.2f s (%.1f tokens/s through the "
                    "model)\n", sc.count, n_chunks, secs, secs > 0 ? n_chunks * (double)n_ctx / secs : 0);
        if (fflush(stdout) != 0) status = launch_fail("perplexity", shoal_errorf(SHOAL_IO, "writing stdout failed"));
    } else {
        status = launch_fail("perplexity", rc);
    }
    shoal_seq_batch_free(&sb);
    free(logits);
    free(ids);
    free(tok);
    free(text);
    return status;
}

int cmd_perplexity(int argc, char **argv) { return run_main(argc, argv, RUN_PERPLEXITY); }
