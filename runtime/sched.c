/*
 * sched.c — continuous batching over a paged KV cache (sched.h).
 */
#include "sched.h"

#include "../comm/comm.h"
#include "lookup.h"

#include <stdlib.h>
#include <string.h>

struct seq {
    uint64_t id;
    int32_t *toks;   /* the prompt, then what was generated */
    int n_toks, cap, n_prompt, n_gen, max_tokens;
    int n_past;      /* positions of toks in the KV cache */
    int32_t *blocks; /* the block table: block_size positions each */
    int n_blocks;
    int ring;        /* while running: its ring of the windowed layers' caches (a state with rings) */
    int take;        /* this step: tokens fed (its drafts included) */
    int n_draft;     /* this step: of them, drafted (lookup), after its last token */
    int k;           /* lookup: drafts it asks for next (adapts to what it accepts) */
    int out_row;     /* this step: its first output row */
    /* a draft model's cache: the positions of toks it holds, its blocks; this step's drafts'
     * first position (n_toks when drafted), and how many it wants */
    int d_past, d_base, d_want, d_catch; /* (d_catch: this step's tokens to catch up with) */
    int32_t *d_blocks;
    int n_dblocks;
    int cancelled;
    struct shoal_sampler *smp;
    struct shoal_sampler_params sp;
    struct shoal_seq_cb cb;
    struct seq *next; /* the waiting queue */
};

struct shoal_sched {
    struct shoal_state *s;
    struct shoal_sched_params p;
    int n_vocab, n_blocks, n_free, table_cap;
    int32_t *free_blocks;
    int32_t *free_rings; /* (max_seqs) the rings no running sequence has */
    int n_free_rings;
    struct seq **run; /* (max_seqs) in the order they were admitted */
    int n_run;
    struct seq *wait_head, *wait_tail;
    int n_wait;
    uint64_t next_id;
    /* one step's batch: rows that only fill the cache, then those whose logits are wanted */
    int32_t *tok, *pos, *seqi, *slot, *table;
    int32_t *ringi;       /* (max_seqs) the step's sequences' rings */
    struct seq **out_seq; /* (max_seqs) the sequences with output rows, in row order */
    int n_out_seq;
    uint64_t *meta_id;    /* (max_seqs) the step's sequences, for the step's message */
    struct shoal_sampler_params *meta_sp;
    struct shoal_step_meta meta;
    float *logits;        /* (max_seqs x (1 + lookup), n_vocab) */
    /* the draft model's (p.draft): its free blocks, a step's batch, its rows of logits */
    struct shoal_state *ds;
    int d_n_free;
    int32_t *d_free, *d_tok, *d_pos, *d_seqi, *d_slot, *d_table, *d_ringi;
    struct seq **d_seq;   /* (max_seqs) the draft step's sequences, in row order */
    float *d_logits;      /* (max_seqs, n_vocab) */
    struct shoal_sampler *d_greedy;
    struct shoal_sched_stats st;
    double last_contact;  /* when the other ranks last heard from this one (a step or a ping) */
    struct shoal_rank_pace *pace; /* shoal_sched_pace's: every rank's, as last gathered */
    double pace_at;
    uint64_t pace_steps;  /* st.steps then */
};

static int blocks_for(const struct shoal_sched *sc, int positions) {
    return (positions + sc->p.block_size - 1) / sc->p.block_size;
}

shoal_status shoal_sched_create(struct shoal_sched **out, struct shoal_state *s,
                                const struct shoal_sched_params *p) {
    *out = NULL;
    struct shoal_sched_params q = *p;
    if (q.block_size <= 0) q.block_size = 16;
    if (q.chunk <= 0 || q.chunk > s->n_batch) q.chunk = s->n_batch;
    if (q.max_pos <= 0 || q.max_pos > s->n_ctx) q.max_pos = s->n_ctx;
    if (q.max_seqs < 1 || q.max_seqs > s->n_outputs || q.max_seqs > s->n_batch)
        return shoal_errorf(SHOAL_INVALID, "%d sequences at once: the state has room for 1 to %d", q.max_seqs,
                            s->n_outputs < s->n_batch ? s->n_outputs : s->n_batch);
    if (q.lookup < 0 || (q.lookup > 0 && ((long)q.max_seqs * (1 + q.lookup) > s->n_outputs || q.lookup >= s->n_batch)))
        return shoal_errorf(SHOAL_INVALID, "lookup %d for %d sequences: the state has %d output rows and "
                            "batches of %d", q.lookup, q.max_seqs, s->n_outputs, s->n_batch);
    if (q.block_size > s->n_ctx)
        return shoal_errorf(SHOAL_INVALID, "KV blocks of %d positions in a cache of %d", q.block_size, s->n_ctx);
    if (s->ring && q.max_seqs > s->n_rings)
        return shoal_errorf(SHOAL_INVALID, "%d sequences at once: the state's windowed layers have rings for %d",
                            q.max_seqs, s->n_rings);
    const struct shoal_state *ds = q.draft;
    if (ds && (q.lookup < 1 || ds->n_ctx != s->n_ctx || ds->n_outputs < q.max_seqs || ds->m->hp.n_vocab != s->m->hp.n_vocab ||
               (ds->ring && ds->n_rings < q.max_seqs) || ds->dist))
        return shoal_errorf(SHOAL_INVALID, "the draft model's state does not match the model's (context %d against %d, "
                            "%d output rows for %d sequences, vocabulary %d against %d)", ds->n_ctx, s->n_ctx,
                            ds->n_outputs, q.max_seqs, ds->m->hp.n_vocab, s->m->hp.n_vocab);
    struct shoal_sched *sc = calloc(1, sizeof *sc);
    if (!sc) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    sc->s = s;
    sc->p = q;
    sc->n_vocab = s->m->hp.n_vocab;
    sc->n_blocks = s->n_ctx / q.block_size;
    if (q.max_pos > sc->n_blocks * q.block_size) sc->p.max_pos = sc->n_blocks * q.block_size;
    sc->table_cap = blocks_for(sc, sc->p.max_pos);
    const size_t nb = (size_t)s->n_batch;
    sc->free_blocks = malloc((size_t)sc->n_blocks * sizeof *sc->free_blocks);
    sc->run = calloc((size_t)q.max_seqs, sizeof *sc->run);
    sc->out_seq = calloc((size_t)q.max_seqs, sizeof *sc->out_seq);
    sc->tok = malloc(nb * 4 * sizeof(int32_t));
    sc->table = malloc((size_t)q.max_seqs * sc->table_cap * sizeof(int32_t));
    sc->logits = malloc((size_t)q.max_seqs * (size_t)(1 + q.lookup) * sc->n_vocab * sizeof(float));
    sc->meta_id = malloc((size_t)q.max_seqs * sizeof *sc->meta_id);
    sc->meta_sp = malloc((size_t)q.max_seqs * sizeof *sc->meta_sp);
    sc->meta = (struct shoal_step_meta){ sc->meta_id, sc->meta_sp };
    sc->free_rings = malloc((size_t)q.max_seqs * sizeof *sc->free_rings);
    sc->ringi = malloc((size_t)q.max_seqs * sizeof *sc->ringi);
    if (ds) {
        const size_t dnb = (size_t)ds->n_batch;
        sc->ds = q.draft;
        sc->d_free = malloc((size_t)sc->n_blocks * sizeof *sc->d_free);
        sc->d_tok = malloc(dnb * 4 * sizeof(int32_t));
        sc->d_table = malloc((size_t)q.max_seqs * sc->table_cap * sizeof(int32_t));
        sc->d_ringi = malloc((size_t)q.max_seqs * sizeof *sc->d_ringi);
        sc->d_seq = calloc((size_t)q.max_seqs, sizeof *sc->d_seq);
        sc->d_logits = malloc((size_t)q.max_seqs * sc->n_vocab * sizeof(float));
        struct shoal_sampler_params gp;
        shoal_sampler_defaults(&gp);
        gp.temp = 0;
        if (shoal_sampler_create(&sc->d_greedy, &gp, sc->n_vocab) != SHOAL_OK || !sc->d_free || !sc->d_tok ||
            !sc->d_table || !sc->d_ringi || !sc->d_seq || !sc->d_logits) {
            shoal_sched_destroy(sc);
            return shoal_errorf(SHOAL_NOMEM, "out of memory for the scheduler's draft model");
        }
        sc->d_pos = sc->d_tok + dnb;
        sc->d_seqi = sc->d_pos + dnb;
        sc->d_slot = sc->d_seqi + dnb;
        for (int b = 0; b < sc->n_blocks; b++) sc->d_free[b] = sc->n_blocks - 1 - b;
        sc->d_n_free = sc->n_blocks;
    }
    if (!sc->free_blocks || !sc->run || !sc->out_seq || !sc->tok || !sc->table || !sc->logits || !sc->meta_id ||
        !sc->meta_sp || !sc->free_rings || !sc->ringi) {
        shoal_sched_destroy(sc);
        return shoal_errorf(SHOAL_NOMEM, "out of memory for the scheduler");
    }
    sc->pos = sc->tok + nb;
    sc->seqi = sc->pos + nb;
    sc->slot = sc->seqi + nb;
    /* handed out lowest first: a lone sequence's blocks are the cache in order */
    for (int b = 0; b < sc->n_blocks; b++) sc->free_blocks[b] = sc->n_blocks - 1 - b;
    sc->n_free = sc->n_blocks;
    for (int r = 0; r < q.max_seqs; r++) sc->free_rings[r] = q.max_seqs - 1 - r;
    sc->n_free_rings = q.max_seqs;
    sc->next_id = 1;
    *out = sc;
    return SHOAL_OK;
}

static void seq_free(struct seq *q) {
    if (!q) return;
    shoal_sampler_destroy(q->smp);
    free(q->toks);
    free(q->blocks);
    free(q->d_blocks);
    free(q);
}

static void give_back(struct shoal_sched *sc, struct seq *q) {
    for (int b = q->n_blocks - 1; b >= 0; b--) sc->free_blocks[sc->n_free++] = q->blocks[b];
    q->n_blocks = 0;
    q->n_past = 0;
    for (int b = q->n_dblocks - 1; b >= 0; b--) sc->d_free[sc->d_n_free++] = q->d_blocks[b];
    q->n_dblocks = 0;
    q->d_past = 0;
    if (q->ring >= 0) sc->free_rings[sc->n_free_rings++] = q->ring;
    q->ring = -1;
}

/* The sequence's end: blocks back, its owner told, gone. */
static void finish(struct shoal_sched *sc, struct seq *q, int why) {
    give_back(sc, q);
    if (q->cb.on_end) q->cb.on_end(q->cb.user, why, q->n_prompt, q->n_gen);
    seq_free(q);
}

void shoal_sched_destroy(struct shoal_sched *sc) {
    if (!sc) return;
    for (int i = 0; i < sc->n_run; i++) finish(sc, sc->run[i], SHOAL_SEQ_CANCELLED);
    while (sc->wait_head) {
        struct seq *q = sc->wait_head;
        sc->wait_head = q->next;
        finish(sc, q, SHOAL_SEQ_CANCELLED);
    }
    free(sc->pace);
    free(sc->free_blocks);
    free(sc->run);
    free(sc->out_seq);
    free(sc->tok);
    free(sc->table);
    free(sc->logits);
    free(sc->meta_id);
    free(sc->meta_sp);
    free(sc->free_rings);
    free(sc->ringi);
    free(sc->d_free);
    free(sc->d_tok);
    free(sc->d_table);
    free(sc->d_ringi);
    free(sc->d_seq);
    free(sc->d_logits);
    shoal_sampler_destroy(sc->d_greedy);
    free(sc);
}

shoal_status shoal_sched_add(struct shoal_sched *sc, const int32_t *prompt, int n_prompt, int max_tokens,
                             const struct shoal_sampler_params *sp, const struct shoal_seq_cb *cb,
                             uint64_t *id) {
    if (n_prompt < 1) return shoal_errorf(SHOAL_INVALID, "the prompt has no tokens");
    if (n_prompt > sc->p.max_pos)
        return shoal_errorf(SHOAL_INVALID, "the prompt is %d tokens; a sequence holds at most %d", n_prompt,
                            sc->p.max_pos);
    if (max_tokens < 1) return shoal_errorf(SHOAL_INVALID, "max_tokens %d: at least 1", max_tokens);
    for (int i = 0; i < n_prompt; i++)
        if (prompt[i] < 0 || prompt[i] >= sc->n_vocab)
            return shoal_errorf(SHOAL_INVALID, "prompt token %d (id %d) is outside the vocabulary of %d", i,
                                prompt[i], sc->n_vocab);
    struct seq *q = calloc(1, sizeof *q);
    if (!q) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    q->ring = -1;
    /* room for every token it may hold: the prompt and what it may generate, up to max_pos + 1 */
    long cap = (long)n_prompt + max_tokens;
    if (cap > sc->p.max_pos + 1) cap = sc->p.max_pos + 1;
    q->cap = (int)cap;
    q->toks = malloc((size_t)q->cap * sizeof *q->toks);
    q->blocks = malloc((size_t)sc->table_cap * sizeof *q->blocks);
    q->d_blocks = sc->ds ? malloc((size_t)sc->table_cap * sizeof *q->d_blocks) : NULL;
    shoal_status rc = q->toks && q->blocks && (!sc->ds || q->d_blocks) ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
    if (rc == SHOAL_OK) rc = shoal_sampler_create(&q->smp, sp, sc->n_vocab);
    if (rc != SHOAL_OK) {
        seq_free(q);
        return rc;
    }
    memcpy(q->toks, prompt, (size_t)n_prompt * sizeof *prompt);
    q->n_toks = q->n_prompt = n_prompt;
    q->max_tokens = max_tokens;
    q->k = sc->p.lookup;
    q->sp = *sp;
    q->cb = *cb;
    q->id = sc->next_id++;
    if (sc->wait_tail) sc->wait_tail->next = q;
    else sc->wait_head = q;
    sc->wait_tail = q;
    sc->n_wait++;
    *id = q->id;
    return SHOAL_OK;
}

void shoal_sched_cancel(struct shoal_sched *sc, uint64_t id) {
    for (int i = 0; i < sc->n_run; i++)
        if (sc->run[i]->id == id) sc->run[i]->cancelled = 1;
    for (struct seq *q = sc->wait_head; q; q = q->next)
        if (q->id == id) q->cancelled = 1;
}

/* Running sequence i out of the running set (the order of the others kept). */
static void drop_running(struct shoal_sched *sc, int i) {
    memmove(sc->run + i, sc->run + i + 1, (size_t)(sc->n_run - i - 1) * sizeof *sc->run);
    sc->n_run--;
}

/* Cancelled sequences ended, waiting or running. */
static void reap_cancelled(struct shoal_sched *sc) {
    for (int i = sc->n_run - 1; i >= 0; i--)
        if (sc->run[i]->cancelled) {
            struct seq *q = sc->run[i];
            drop_running(sc, i);
            finish(sc, q, SHOAL_SEQ_CANCELLED);
        }
    struct seq **link = &sc->wait_head, *last = NULL;
    while (*link) {
        struct seq *q = *link;
        if (q->cancelled) {
            *link = q->next;
            sc->n_wait--;
            finish(sc, q, SHOAL_SEQ_CANCELLED);
        } else {
            last = q;
            link = &q->next;
        }
    }
    sc->wait_tail = last;
}

/* The youngest running sequence (after index `after`) back to the head of the queue. */
static int preempt_after(struct shoal_sched *sc, int after) {
    if (sc->n_run - 1 <= after) return 0;
    struct seq *q = sc->run[sc->n_run - 1];
    sc->n_run--;
    give_back(sc, q);
    q->next = sc->wait_head;
    sc->wait_head = q;
    if (!sc->wait_tail) sc->wait_tail = q;
    sc->n_wait++;
    sc->st.preemptions++;
    return 1;
}

/* New sequences in, first come first served, while there is room and a block for them. */
static void admit(struct shoal_sched *sc) {
    while (sc->wait_head && sc->n_run < sc->p.max_seqs) {
        struct seq *q = sc->wait_head;
        int first = q->n_toks < sc->p.chunk ? q->n_toks : sc->p.chunk;
        if (blocks_for(sc, first) > sc->n_free) break;
        sc->wait_head = q->next;
        if (!sc->wait_head) sc->wait_tail = NULL;
        q->next = NULL;
        sc->n_wait--;
        q->ring = sc->free_rings[--sc->n_free_rings]; /* one per running sequence: never short */
        sc->run[sc->n_run++] = q;
    }
}

static int32_t slot_of(const struct shoal_sched *sc, const struct seq *q, int pos) {
    return q->blocks[pos / sc->p.block_size] * sc->p.block_size + pos % sc->p.block_size;
}

/*
 * How many of running sequence i's tokens this step feeds (at most budget),
 * its blocks taken for them, younger sequences preempted if blocks run out.
 */
static int plan_feed(struct shoal_sched *sc, int i, int budget) {
    struct seq *q = sc->run[i];
    int take = q->n_toks - q->n_past + q->n_draft;
    if (take > sc->p.chunk) take = sc->p.chunk;
    if (take > budget) take = budget;
    while (take > 0) {
        int need = blocks_for(sc, q->n_past + take) - q->n_blocks;
        if (need <= sc->n_free) break;
        if (preempt_after(sc, i)) continue;
        /* the youngest itself: as much as the free blocks hold */
        take = (q->n_blocks + sc->n_free) * sc->p.block_size - q->n_past;
        if (take < 0) take = 0;
    }
    int need = take > 0 ? blocks_for(sc, q->n_past + take) - q->n_blocks : 0;
    for (int b = 0; b < need; b++) q->blocks[q->n_blocks++] = sc->free_blocks[--sc->n_free];
    /* drafts only whole, after the last token: cut short, the step feeds the token alone (and a
     * draft model's cache holds the sequence's tokens only, not the drafts it fed) */
    if (q->n_draft && take < 1 + q->n_draft) {
        q->n_draft = 0;
        take = take > 0 ? 1 : 0;
        if (q->d_past > q->n_toks) q->d_past = q->n_toks;
    }
    return take;
}

/*
 * How many tokens a decoding sequence may have drafted this step (0 for one
 * still in its prompt): at most its k, no more than its length limit,
 * max_pos and a chunk leave room for; they go after its tokens in toks
 * (which has room: n_toks + room <= cap).
 */
static int draft_room(const struct shoal_sched *sc, const struct seq *q) {
    if (!sc->p.lookup || q->n_gen == 0 || q->n_toks - q->n_past != 1) return 0;
    int room = sc->p.max_pos - q->n_toks; /* positions after the last token's */
    if (room > q->max_tokens - q->n_gen) room = q->max_tokens - q->n_gen;
    if (room > sc->p.chunk - 1) room = sc->p.chunk - 1;
    if (room > q->k) room = q->k;
    if (room > q->cap - q->n_toks) room = q->cap - q->n_toks;
    return room > 0 ? room : 0;
}

/* The draft model's blocks of q for positions [0, upto), from its own free list; 0 when they run short. */
static int draft_blocks(struct shoal_sched *sc, struct seq *q, int upto) {
    const int need = blocks_for(sc, upto) - q->n_dblocks;
    if (need > sc->d_n_free) return 0;
    for (int b = 0; b < need; b++) q->d_blocks[q->n_dblocks++] = sc->d_free[--sc->d_n_free];
    return 1;
}

/* One forward step of the draft model over its batch of n tokens, the last n_out rows its drafts' logits. */
static shoal_status draft_forward(struct shoal_sched *sc, int n, int n_seq, int n_out, int max_blocks) {
    struct shoal_batch b = { .n_tokens = n, .token = sc->d_tok, .pos = sc->d_pos, .seq = sc->d_seqi,
                             .slot = sc->d_slot, .block_table = sc->d_table, .n_seq = n_seq,
                             .max_blocks = max_blocks, .block_size = sc->p.block_size,
                             .ring = sc->ds->ring ? sc->d_ringi : NULL };
    SHOAL_TRY(shoal_forward(sc->ds, &b, n - n_out, n_out, sc->d_logits));
    sc->st.draft_steps++;
    sc->st.draft_tokens += (uint64_t)n;
    return SHOAL_OK;
}

/* Rows of the draft step for sequence q: its tokens [from, to) (the last one's logits wanted when out). */
static void draft_rows(struct shoal_sched *sc, struct seq *q, int from, int to, int k, int max_blocks, int *r, int *o,
                       int out) {
    memcpy(sc->d_table + (size_t)k * max_blocks, q->d_blocks, (size_t)q->n_dblocks * sizeof(int32_t));
    for (int j = q->n_dblocks; j < max_blocks; j++) sc->d_table[(size_t)k * max_blocks + j] = q->d_blocks[0];
    sc->d_ringi[k] = q->ring;
    for (int p = from; p < to; p++) {
        const int row = out && p == to - 1 ? (*o)++ : (*r)++;
        sc->d_tok[row] = q->toks[p];
        sc->d_pos[row] = p;
        sc->d_seqi[row] = k;
        sc->d_slot[row] = q->d_blocks[p / sc->p.block_size] * sc->p.block_size + p % sc->p.block_size;
    }
}

/*
 * The draft model's drafts for this step's decoding sequences, after their
 * tokens in toks (n_draft each): a first step feeds each what of its text its
 * cache lacks (a prompt a chunk at a time, as the batch has room) and drafts
 * one token for those it caught up; each further step feeds every drafting
 * sequence its last draft and drafts the next, until each has as many as it
 * wants (draft_room). Greedy: the draft model's best tokens.
 */
static shoal_status draft_round(struct shoal_sched *sc) {
    int budget = sc->ds->n_batch, n = 0, n_out = 0, max_blocks = 1, want = 0;
    for (int i = 0; i < sc->n_run; i++) {
        struct seq *q = sc->run[i];
        q->n_draft = q->d_want = q->d_catch = 0;
        const int room = draft_room(sc, q);
        if (!room || budget < 1 || !draft_blocks(sc, q, q->n_toks + room - 1)) continue;
        q->d_catch = q->n_toks - q->d_past < budget ? q->n_toks - q->d_past : budget;
        budget -= q->d_catch;
        n += q->d_catch;
        if (q->d_past + q->d_catch == q->n_toks) q->d_want = room, n_out++, want = room > want ? room : want;
        if (q->n_dblocks > max_blocks) max_blocks = q->n_dblocks;
    }
    if (n == 0) return SHOAL_OK;
    int r = 0, o = n - n_out, k = 0;
    for (int i = 0; i < sc->n_run; i++) {
        struct seq *q = sc->run[i];
        if (!q->d_catch) continue;
        if (q->d_want) sc->d_seq[o - (n - n_out)] = q;
        draft_rows(sc, q, q->d_past, q->d_past + q->d_catch, k++, max_blocks, &r, &o, q->d_want);
        q->d_past += q->d_catch;
    }
    SHOAL_TRY(draft_forward(sc, n, k, n_out, max_blocks));
    for (int j = 0; j < n_out; j++) {
        struct seq *q = sc->d_seq[j];
        q->d_base = q->n_toks;
        q->toks[q->n_toks] = shoal_sampler_sample(sc->d_greedy, sc->d_logits + (size_t)j * sc->n_vocab, NULL, 0);
        q->n_draft = 1;
    }
    for (int step = 1; step < want; step++) {
        int m = 0;
        max_blocks = 1;
        for (int j = 0; j < n_out; j++)
            if (sc->d_seq[j]->n_draft < sc->d_seq[j]->d_want && sc->d_seq[j]->n_dblocks > max_blocks)
                max_blocks = sc->d_seq[j]->n_dblocks;
        r = 0, o = 0, k = 0;
        for (int j = 0; j < n_out; j++) {
            struct seq *q = sc->d_seq[j];
            if (q->n_draft >= q->d_want) continue;
            sc->d_seq[m++] = q; /* (in place: m <= j) */
            draft_rows(sc, q, q->d_past, q->d_past + 1, k++, max_blocks, &r, &o, 1);
            q->d_past++;
        }
        n_out = m;
        if (!m) break;
        SHOAL_TRY(draft_forward(sc, m, m, m, max_blocks));
        for (int j = 0; j < m; j++) {
            struct seq *q = sc->d_seq[j];
            q->toks[q->n_toks + q->n_draft++] = shoal_sampler_sample(sc->d_greedy, sc->d_logits + (size_t)j * sc->n_vocab,
                                                                     NULL, 0);
        }
    }
    return SHOAL_OK;
}

/* A decoding sequence's drafts by prompt lookup, after its tokens in toks (a draft model's: draft_round). */
static void plan_drafts(struct shoal_sched *sc, struct seq *q) {
    if (sc->ds) return;
    const int room = draft_room(sc, q);
    q->n_draft = room ? shoal_lookup_propose(q->toks, (size_t)q->n_toks, SHOAL_LOOKUP_NGRAM_MIN,
                                             SHOAL_LOOKUP_NGRAM_MAX, room, q->toks + q->n_toks)
                      : 0;
}

shoal_status shoal_sched_step(struct shoal_sched *sc, int *worked) {
    *worked = 0;
    reap_cancelled(sc);
    admit(sc);
    if (sc->n_run == 0) return SHOAL_OK;

    if (sc->ds) SHOAL_TRY(draft_round(sc));
    /* what each sequence feeds: decoding ones their last token (and drafts after it), the
     * others a prompt chunk */
    int budget = sc->s->n_batch, n_tok = 0, n_out = 0, max_blocks = 1;
    for (int i = 0; i < sc->n_run; i++) {
        struct seq *q = sc->run[i];
        plan_drafts(sc, q);
        q->take = plan_feed(sc, i, budget);
        budget -= q->take;
        n_tok += q->take;
        if (q->take && q->n_past + q->take == q->n_toks + q->n_draft) n_out += 1 + q->n_draft;
    }
    for (int i = 0; i < sc->n_run; i++) /* (after every preemption) */
        if (sc->run[i]->n_blocks > max_blocks) max_blocks = sc->run[i]->n_blocks;
    /* a sequence preempted by a younger one's need never happens (younger ones go
     * first), but one with nothing fed (no budget left) simply waits a step */
    if (n_tok == 0) return SHOAL_OK;

    /* the rows: cache-only first, then the output rows of each sequence whose input is all in
     * (its last token's, then its drafts') */
    int r = 0, o = n_tok - n_out, k = 0;
    sc->n_out_seq = 0;
    for (int i = 0; i < sc->n_run; i++) {
        struct seq *q = sc->run[i];
        if (!q->take) continue;
        memcpy(sc->table + (size_t)k * max_blocks, q->blocks, (size_t)q->n_blocks * sizeof(int32_t));
        for (int j = q->n_blocks; j < max_blocks; j++) sc->table[(size_t)k * max_blocks + j] = q->blocks[0];
        sc->meta_id[k] = q->id;
        sc->meta_sp[k] = q->sp;
        sc->ringi[k] = q->ring;
        const int outputs = q->n_past + q->take == q->n_toks + q->n_draft, first_out = q->take - 1 - q->n_draft;
        if (outputs) {
            q->out_row = o - (n_tok - n_out);
            sc->out_seq[sc->n_out_seq++] = q;
        }
        for (int t = 0; t < q->take; t++) {
            const int p = q->n_past + t;
            const int row = outputs && t >= first_out ? o++ : r++;
            sc->tok[row] = q->toks[p]; /* (a draft past n_toks) */
            sc->pos[row] = p;
            sc->seqi[row] = k;
            sc->slot[row] = slot_of(sc, q, p);
        }
        k++;
    }
    struct shoal_batch b = { .n_tokens = n_tok, .token = sc->tok, .pos = sc->pos, .seq = sc->seqi,
                             .slot = sc->slot, .block_table = sc->table, .n_seq = k,
                             .max_blocks = max_blocks, .block_size = sc->p.block_size,
                             .ring = sc->s->ring ? sc->ringi : NULL };
    sc->s->meta = &sc->meta; /* the step's message says whose tokens these are */
    shoal_status rc = shoal_forward(sc->s, &b, n_tok - n_out, n_out, sc->logits);
    sc->last_contact = shoal_now();
    sc->s->meta = NULL;
    SHOAL_TRY(rc);
    *worked = 1;
    sc->st.steps++;
    sc->st.lane_steps = sc->s->lane_steps;
    sc->st.expert_runs = sc->s->expert_runs;
    sc->st.expert_bytes = sc->s->expert_bytes;
    sc->st.last_batch = n_tok;
    sc->st.last_seqs = k;
    for (int i = 0; i < sc->n_run; i++) {
        struct seq *q = sc->run[i];
        if (q->n_gen == 0) sc->st.prompt_tokens += (uint64_t)q->take;
        q->n_past += q->take - q->n_draft; /* the drafts' positions: those accepted, below */
    }

    /* tokens for each sequence with output rows: its drafts in order, each against the row before
     * it (accepted ones are tokens already in the cache; the first rejected one gives its
     * correction instead, and the rows after it are written over later), else the next token;
     * sequences that are done leave */
    for (int j = 0; j < sc->n_out_seq; j++) {
        struct seq *q = sc->out_seq[j];
        int why = 0, a = 0;
        for (int d = 0; d <= q->n_draft && !why; d++) {
            float *row = sc->logits + (size_t)(q->out_row + d) * sc->n_vocab;
            int ok = 0;
            /* draft d is toks[n_toks] (plan_drafts), its history the tokens before it */
            const int32_t t = d < q->n_draft ? shoal_sampler_verify(q->smp, row, q->toks, q->n_toks, q->toks[q->n_toks], &ok)
                                             : shoal_sampler_sample(q->smp, row, q->toks, q->n_toks);
            q->toks[q->n_toks++] = t;
            q->n_gen++;
            sc->st.gen_tokens++;
            if (ok) q->n_past++, a++; /* its row in the cache is the token's */
            why = q->cb.on_token && q->cb.on_token(q->cb.user, t) ? SHOAL_SEQ_STOPPED
                  : q->n_gen >= q->max_tokens                    ? SHOAL_SEQ_LENGTH
                  : q->n_toks - 1 >= sc->p.max_pos               ? SHOAL_SEQ_CONTEXT
                                                                 : 0;
            if (!ok) break;
        }
        if (q->n_draft) {
            sc->st.drafted += (uint64_t)q->n_draft;
            sc->st.accepted += (uint64_t)a;
            /* the draft model's cache holds toks as far as its drafts were accepted */
            if (sc->ds && q->d_past > q->d_base + a) q->d_past = q->d_base + a;
            q->k = shoal_spec_next_k(q->k, sc->p.lookup, q->n_draft, a);
            q->n_draft = 0;
        }
        if (why) {
            for (int i = 0; i < sc->n_run; i++)
                if (sc->run[i] == q) drop_running(sc, i);
            finish(sc, q, why);
        }
    }
    for (int i = 0; i < sc->n_run; i++) sc->run[i]->n_draft = 0;
    return SHOAL_OK;
}

shoal_status shoal_sched_pace(struct shoal_sched *sc, double every, int idle, const struct shoal_rank_pace **pace,
                              int *n) {
    *n = 0;
    *pace = NULL;
    const double now = shoal_now();
    if ((sc->pace && !idle && now - sc->pace_at < every) || sc->st.steps == sc->pace_steps) return SHOAL_OK;
    const int ranks = shoal_pace_ranks(sc->s);
    if (!sc->pace && !(sc->pace = calloc((size_t)ranks, sizeof *sc->pace)))
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    SHOAL_TRY(shoal_gather_pace(sc->s, sc->pace, ranks, n));
    sc->pace_at = sc->last_contact = now;
    sc->pace_steps = sc->st.steps;
    *pace = sc->pace;
    return SHOAL_OK;
}

void shoal_sched_stats(const struct shoal_sched *sc, struct shoal_sched_stats *st) {
    *st = sc->st;
    st->running = sc->n_run;
    st->waiting = sc->n_wait;
    st->blocks = sc->n_blocks;
    st->blocks_used = sc->n_blocks - sc->n_free;
}

shoal_status shoal_sched_keepalive(struct shoal_sched *sc) {
    const double every = shoal_comm_timeout() / 4, now = shoal_now();
    if (!(every > 0) || now - sc->last_contact < every) return SHOAL_OK;
    sc->last_contact = now;
    return shoal_ping(sc->s);
}
