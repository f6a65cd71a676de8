/*
 * generate.c — the one-sequence generation loop (generate.h).
 */
#include "generate.h"

#include "lookup.h"

#include <stdlib.h>
#include <string.h>

shoal_status shoal_seq_batch_init(struct shoal_seq_batch *sb, int cap, int n_ctx) {
    memset(sb, 0, sizeof *sb);
    sb->pos = malloc((size_t)cap * 3 * sizeof(int32_t));
    if (!sb->pos) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    sb->seq = sb->pos + cap;
    sb->slot = sb->seq + cap;
    sb->cap = cap;
    sb->table[0] = 0;
    sb->b.pos = sb->pos;
    sb->b.seq = sb->seq;
    sb->b.slot = sb->slot;
    sb->b.block_table = sb->table;
    sb->b.n_seq = 1;
    sb->b.max_blocks = 1;
    sb->b.block_size = n_ctx;
    return SHOAL_OK;
}

void shoal_seq_batch_free(struct shoal_seq_batch *sb) {
    free(sb->pos);
    sb->pos = NULL;
}

void shoal_seq_batch_set(struct shoal_seq_batch *sb, const int32_t *tokens, int n, int pos0) {
    for (int i = 0; i < n; i++) {
        sb->pos[i] = pos0 + i;
        sb->seq[i] = 0;
        sb->slot[i] = pos0 + i;
    }
    sb->b.n_tokens = n;
    sb->b.token = tokens;
}

/* Sends a token's text through the callback; nonzero when the callback says stop. */
static int emit(struct shoal_detok *d, const struct shoal_gen_params *p, int32_t id) {
    char small[512], *buf = small;
    int n = shoal_detok_push(d, id, buf, sizeof small);
    if (n < 0) { /* a piece longer than the small buffer (long user-defined tokens) */
        int need = 256 + shoal_token_to_piece(d->t, id, NULL, 0, 1);
        if (need > 256 && (buf = malloc((size_t)need)) != NULL)
            n = shoal_detok_push(d, id, buf, need);
    }
    int stop = n > 0 && p->on_text ? p->on_text(p->user, buf, (size_t)n) : 0;
    if (buf != small) free(buf);
    return stop;
}

/* The loop's state: the sequence so far, where the next fed token goes, the text's decoder. */
struct gen {
    struct shoal_state *s;
    const struct shoal_tokenizer *tok;
    const struct shoal_gen_params *p;
    struct shoal_gen_stats *st;
    struct shoal_detok d;
    int32_t *hist;
    int n_hist, limit, stopped;
};

/*
 * A token generated: into the history, the callbacks and the text. Nonzero
 * when generation ends with it (end of generation, the callback's stop, the
 * length limit).
 */
static int take(struct gen *g, int32_t id) {
    const struct shoal_gen_params *p = g->p;
    g->hist[g->n_hist++] = id;
    g->st->n_gen++;
    if (p->on_token) p->on_token(p->user, id);
    if (!p->ignore_eos && shoal_tokenizer_is_eog(g->tok, id)) {
        g->st->stop = "eos";
        return 1;
    }
    if ((g->stopped = emit(&g->d, p, id)) != 0) {
        g->st->stop = "stopped";
        return 1;
    }
    return g->st->n_gen >= g->limit;
}

shoal_status shoal_generate(struct shoal_state *s, const struct shoal_tokenizer *tok,
                            struct shoal_sampler *smp, const int32_t *prompt, int n_prompt,
                            const struct shoal_gen_params *p, struct shoal_gen_stats *st) {
    const struct shoal_hparams *hp = &s->m->hp;
    const int n_vocab = hp->n_vocab;
    memset(st, 0, sizeof *st);
    st->stop = "length";
    if (n_prompt < 1) return shoal_errorf(SHOAL_INVALID, "the prompt has no tokens");
    if (n_prompt > s->n_ctx)
        return shoal_errorf(SHOAL_INVALID,
                            "the prompt is %d tokens, longer than the context of %d (raise -c, "
                            "up to the model's %d, or shorten the prompt)",
                            n_prompt, s->n_ctx, hp->n_ctx_train);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= n_vocab)
            return shoal_errorf(SHOAL_INVALID, "prompt token %d (id %d) is outside the vocabulary",
                                i, prompt[i]);
    int n_cached = p->n_cached < 0 ? 0 : p->n_cached;
    if (n_cached >= n_prompt) n_cached = n_prompt - 1; /* the last token again, for its logits */
    int limit = p->n_predict < 0 ? s->n_ctx : p->n_predict;
    /* speculation: at most kmax drafts a step, k of them this step */
    const int kmax = p->lookup < 1 ? 0 : p->lookup < s->n_outputs - 1 ? p->lookup : s->n_outputs - 1;
    int k = kmax;
    /* the whole sequence, for the penalties and the ids callback */
    int32_t *hist = malloc(((size_t)n_prompt + (size_t)limit + 1) * sizeof(int32_t));
    int32_t *vtok = kmax ? malloc(((size_t)kmax + 1) * sizeof(int32_t)) : NULL; /* a step's token and drafts */
    /* with every position's logits wanted, a prompt batch is at most n_outputs tokens;
     * over pipeline stages, micro-batches small enough that every stage has work */
    int chunk = p->all_logits ? s->n_outputs : s->n_batch;
    int pp = s->dist ? s->dist->plan->pp : 1;
    if (pp > 1) {
        int micro = (n_prompt - n_cached + 2 * pp - 1) / (2 * pp);
        if (micro < 16) micro = 16;
        if (micro < chunk) chunk = micro;
    }
    int rows_cap = p->all_logits ? chunk : 1;
    if (rows_cap < kmax + 1) rows_cap = kmax + 1;
    float *logits = malloc((size_t)rows_cap * n_vocab * sizeof(float));
    struct shoal_seq_batch sb;
    shoal_status rc = shoal_seq_batch_init(&sb, chunk > kmax + 1 ? chunk : kmax + 1, s->n_ctx);
    if (!hist || !logits || (kmax && !vtok) || rc != SHOAL_OK) {
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory for generation buffers");
        goto done;
    }
    memcpy(hist, prompt, (size_t)n_prompt * sizeof(int32_t));
    struct gen g = { .s = s, .tok = tok, .p = p, .st = st, .hist = hist, .n_hist = n_prompt, .limit = limit };
    shoal_detok_init(&g.d, tok);
    if (p->echo_prompt)
        for (int i = n_cached; i < n_prompt && !g.stopped; i++) g.stopped = emit(&g.d, p, prompt[i]);

    /* prompt, in batches; the last row's logits give the first token */
    double t0 = shoal_now();
    float *last = logits;
    for (int at = n_cached; at < n_prompt; at += chunk) {
        int n = n_prompt - at < chunk ? n_prompt - at : chunk;
        shoal_seq_batch_set(&sb, prompt + at, n, at);
        /* logits of every row, or of the last row of the last batch only */
        int final = at + n == n_prompt, n_out = p->all_logits ? n : final;
        SHOAL_TRY_GOTO(shoal_forward(s, &sb.b, n - n_out, n_out, logits), rc, done);
        if (p->all_logits && p->on_logits)
            for (int i = 0; i < n; i++)
                p->on_logits(p->user, at + i, prompt[at + i], logits + (size_t)i * n_vocab, n_vocab);
        if (final) last = logits + (size_t)(n_out - 1) * n_vocab;
    }
    if (p->draft && kmax) /* the draft model's share of the prompt, with the prompt */
        SHOAL_TRY_GOTO(shoal_draft_prefill(p->draft, prompt, n_prompt), rc, done);
    st->n_prompt = n_prompt - n_cached;
    int pos = n_prompt; /* where the next token goes in the cache */
    double t1 = shoal_now();
    const uint64_t experts0 = s->expert_bytes;
    int32_t pending = -1; /* a token a verification chose (a draft's correction): the next one */
    while (!g.stopped && st->n_gen < limit) {
        int32_t next = pending >= 0 ? pending : shoal_sampler_sample(smp, last, hist, g.n_hist);
        pending = -1;
        if (st->n_gen == 0) t1 = shoal_now();
        if (take(&g, next)) break;
        if (pos >= s->n_ctx) {
            st->stop = "context";
            break;
        }
        /* drafts to follow it, as many as the context and the length limit leave room for */
        int m = 0;
        if (kmax) {
            int room = s->n_ctx - 1 - pos < limit - st->n_gen ? s->n_ctx - 1 - pos : limit - st->n_gen;
            if (p->draft) SHOAL_TRY_GOTO(shoal_draft_propose(p->draft, hist, g.n_hist, k < room ? k : room, vtok + 1, &m),
                                         rc, done);
            else m = shoal_lookup_propose(hist, (size_t)g.n_hist, SHOAL_LOOKUP_NGRAM_MIN, SHOAL_LOOKUP_NGRAM_MAX,
                                          k < room ? k : room, vtok + 1);
            vtok[0] = next;
        }
        shoal_seq_batch_set(&sb, m ? vtok : &hist[g.n_hist - 1], 1 + m, pos);
        s->decoding = 1;
        rc = shoal_forward(s, &sb.b, 0, 1 + m, logits);
        s->decoding = 0;
        if (rc != SHOAL_OK) goto done;
        st->n_decode++;
        if (p->all_logits && p->on_logits) p->on_logits(p->user, pos, next, logits, n_vocab);
        last = logits;
        pos++;
        /* the drafts in order, each against the row before it: accepted ones are generated
         * tokens already in the cache; the first rejected gives its correction instead (the
         * cache rows from it on are written over by the steps after) */
        int a = 0, end = 0;
        while (a < m && !end) {
            int ok = 0;
            const int32_t t = shoal_sampler_verify(smp, last, hist, g.n_hist, vtok[1 + a], &ok);
            if (!ok) {
                pending = t;
                break;
            }
            a++;
            if ((end = take(&g, t)) != 0) break; /* as without drafts: a last token's row is not wanted */
            if (p->all_logits && p->on_logits) p->on_logits(p->user, pos, t, logits + (size_t)a * n_vocab, n_vocab);
            last = logits + (size_t)a * n_vocab;
            pos++;
        }
        if (m) {
            st->n_spec_steps++;
            st->n_drafted += m;
            st->n_accepted += a;
            k = shoal_spec_next_k(k, kmax, m, a);
        }
        if (end) break;
    }
    double t2 = shoal_now();
    st->decode_expert_bytes = s->expert_bytes - experts0;
    st->t_prompt = t1 - t0;
    st->t_decode = t2 - t1;
    char tail[64];
    int n = shoal_detok_flush(&g.d, tail, sizeof tail);
    if (n > 0 && p->on_text && !g.stopped) p->on_text(p->user, tail, (size_t)n);
done:
    shoal_seq_batch_free(&sb);
    free(hist);
    free(vtok);
    free(logits);
    return rc;
}
