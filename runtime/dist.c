/*
 * dist.c — how a forward step reaches every rank (model.h: shoal_forward,
 * shoal_follow, shoal_stop).
 *
 * World rank 0 (first stage, first tensor-parallel rank) drives. A step is a
 * frame (magic, version, kind, sizes) and a body: a protobuf Step message
 * (runtime/step.proto: the batch's tokens, positions, sequences, slots and
 * block table, the rows of logits wanted, and from shoal serve the
 * sequences' ids and sampling), then, between stages, the hidden states. Rank 0 broadcasts it within the first stage's
 * tensor-parallel group; each stage's first rank sends it, with the stage's
 * output as hidden states, to the next stage's first rank, which broadcasts
 * it within its group. The last stage's first rank sends the logits asked
 * for back to rank 0. A stop travels the same way. Nothing waits for
 * anything it does not need, so a prompt's micro-batches overlap across
 * stages. With replicas (offload groups), world rank 0 first gives every
 * replica's first rank the step, and each replica runs it as above among its
 * own ranks; their logits stay in the replica.
 */
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "forward.h"
#include "model.h"
#include "runtime/step.pb-c.h"
#include "sampler.h"

#define STEP_MAGIC 0x54534853u /* "SHST" */
#define STEP_VERSION 3
#define STEP_PB_MAX (64u << 20) /* the largest Step message a rank accepts */

/* PING: rank 0 is idle and alive; PACE: and gathers every rank's pace (shoal_gather_pace) */
enum { STEP_RUN = 1, STEP_STOP = 2, STEP_PING = 3, STEP_PACE = 4 };

static shoal_status all_pace(struct shoal_state *s, struct shoal_rank_pace *all);

/* The fixed frame before a step: then pb_bytes of Step (step.proto), then x_bytes of hidden states. */
struct step_head {
    uint32_t magic;
    uint16_t version, kind;
    uint64_t pb_bytes;
    uint64_t x_bytes;
};

/* A step as a rank runs it. */
struct step {
    struct shoal_batch b;
    int out0, n_out, topk;
    int decode; /* a decode step (shoal_state.decoding) */
    const float *x; /* the previous stage's hidden states, or NULL */
};

/* ------------------------------------------------------------------ dist */

shoal_status shoal_dist_create(struct shoal_dist **out, struct shoal_comm *world,
                               const struct shoal_plan *plan, int wire) {
    return shoal_dist_create_replicas(out, world, plan, wire, 1);
}

shoal_status shoal_dist_create_replicas(struct shoal_dist **out, struct shoal_comm *world,
                                        const struct shoal_plan *plan, int wire, int replicas) {
    *out = NULL;
    if (replicas < 1 || shoal_comm_size(world) != plan->n_ranks * replicas)
        return shoal_errorf(SHOAL_INVALID, "the plan is for %d ranks%s but %d are running",
                            plan->n_ranks * (replicas > 0 ? replicas : 1),
                            replicas > 1 ? " (its replicas counted)" : "", shoal_comm_size(world));
    struct shoal_dist *d = calloc(1, sizeof *d);
    if (!d) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    d->top = world;
    d->replicas = replicas;
    d->replica = shoal_comm_rank(world) / plan->n_ranks;
    if (replicas > 1) {
        /* this replica's ranks, then the ranks of the same part across replicas */
        const int wr = shoal_comm_rank(world);
        shoal_status rc = shoal_comm_split(world, d->replica, wr, &d->own);
        if (rc == SHOAL_OK) rc = shoal_comm_split(world, wr % plan->n_ranks, d->replica, &d->group);
        if (rc != SHOAL_OK) {
            shoal_dist_destroy(d);
            return rc;
        }
        world = d->own;
    }
    const int rank = shoal_comm_rank(world);
    const struct shoal_rank_part *p = &plan->part[rank];
    d->world = world;
    d->plan = plan;
    d->wire = wire;
    d->prev = p->first ? -1 : (p->stage - 1) * plan->tp;
    d->next = p->last ? -1 : (p->stage + 1) * plan->tp;
    shoal_status rc = shoal_comm_split(world, p->stage, p->tp_rank, &d->tp);
    if (rc != SHOAL_OK) {
        shoal_dist_destroy(d);
        return rc;
    }
    *out = d;
    return SHOAL_OK;
}

void shoal_dist_destroy(struct shoal_dist *d) {
    if (!d) return;
    shoal_comm_destroy(d->tp_dev);
    shoal_comm_destroy(d->group_dev);
    shoal_comm_destroy(d->tp);
    shoal_comm_destroy(d->group);
    shoal_comm_destroy(d->own);
    free(d);
}

/* -------------------------------------------------------------- messages */

/* Where the hidden states start in a body: after the message, 16-byte aligned. */
static size_t x_offset(uint64_t pb_bytes) { return (size_t)((pb_bytes + 15) & ~(uint64_t)15); }

static size_t body_bytes(const struct step_head *h) {
    return h->kind == STEP_RUN ? x_offset(h->pb_bytes) + (size_t)h->x_bytes : 0;
}

static shoal_status msg_room(struct shoal_state *s, size_t need) {
    if (need <= s->msg_cap) return SHOAL_OK;
    void *p = realloc(s->msg, need);
    if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory for a step of %zu bytes", need);
    s->msg = p;
    s->msg_cap = need;
    return SHOAL_OK;
}

/*
 * Rank 0: the step as a Step message at the start of s->msg (s->msg_pb its
 * bytes), with the sequences' ids and sampling when the caller set s->meta.
 */
static shoal_status encode(struct shoal_state *s, const struct step *st) {
    const struct shoal_batch *b = &st->b;
    const size_t n = (size_t)b->n_tokens;
    Shoal__Step m = SHOAL__STEP__INIT;
    m.n_token = m.n_pos = m.n_seq_of = m.n_slot = n;
    m.token = (int32_t *)b->token;
    m.pos = (int32_t *)b->pos;
    m.seq_of = (int32_t *)b->seq;
    m.slot = (int32_t *)b->slot;
    m.n_block_table = (size_t)b->n_seq * (size_t)b->max_blocks;
    m.block_table = (int32_t *)b->block_table;
    m.n_seq = b->n_seq;
    m.max_blocks = b->max_blocks;
    m.block_size = b->block_size;
    m.n_ring = b->ring ? (size_t)b->n_seq : 0;
    m.ring = (int32_t *)b->ring;
    m.out0 = st->out0;
    m.n_out = st->n_out;
    m.topk = st->topk;
    m.decode = st->decode;
    Shoal__Sampling *sm = NULL, **smp = NULL;
    if (s->meta) {
        sm = calloc((size_t)b->n_seq, sizeof *sm);
        smp = calloc((size_t)b->n_seq, sizeof *smp);
        if (!sm || !smp) {
            free(sm);
            free(smp);
            return shoal_errorf(SHOAL_NOMEM, "out of memory");
        }
        for (int i = 0; i < b->n_seq; i++) {
            const struct shoal_sampler_params *p = &s->meta->sampling[i];
            shoal__sampling__init(&sm[i]);
            sm[i].temperature = p->temp;
            sm[i].top_p = p->top_p;
            sm[i].top_k = p->top_k;
            sm[i].min_p = p->min_p;
            sm[i].presence_penalty = p->presence_penalty;
            sm[i].frequency_penalty = p->freq_penalty;
            sm[i].repeat_penalty = p->repeat_penalty;
            sm[i].seed = p->seed;
            smp[i] = &sm[i];
        }
        m.n_seq_id = m.n_sampling = (size_t)b->n_seq;
        m.seq_id = (uint64_t *)s->meta->seq_id;
        m.sampling = smp;
    }
    const size_t need = shoal__step__get_packed_size(&m);
    shoal_status rc = msg_room(s, x_offset(need));
    if (rc == SHOAL_OK) {
        shoal__step__pack(&m, s->msg);
        s->msg_pb = need;
    }
    free(sm);
    free(smp);
    return rc;
}

/* The stage's hidden states after the message in s->msg, for the next stage. */
static shoal_status put_x(struct shoal_state *s, struct step_head *h, int n_tokens) {
    const size_t xb = (size_t)n_tokens * s->m->hp.dim * sizeof(float);
    SHOAL_TRY(msg_room(s, x_offset(s->msg_pb) + xb));
    *h = (struct step_head){ STEP_MAGIC, STEP_VERSION, STEP_RUN, s->msg_pb, xb };
    return shoal_backend_download(s->m->be, (char *)s->msg + x_offset(s->msg_pb), s->x, xb);
}

/* Checks a received frame before its sizes are used. */
static shoal_status check_head(struct shoal_state *s, const struct step_head *h, int from) {
    if (h->magic != STEP_MAGIC || h->version != STEP_VERSION)
        return shoal_errorf(SHOAL_COMM,
                            "rank %d sent a step this rank cannot read (magic %08x version %u; "
                            "are all ranks the same shoal?)",
                            from, h->magic, h->version);
    if (h->kind == STEP_STOP || h->kind == STEP_PING || h->kind == STEP_PACE) return SHOAL_OK;
    if (h->kind != STEP_RUN || h->pb_bytes == 0 || h->pb_bytes > STEP_PB_MAX ||
        h->x_bytes > (uint64_t)s->n_batch * s->m->hp.dim * sizeof(float))
        return shoal_errorf(SHOAL_COMM, "rank %d sent a malformed step (kind %u, %llu + %llu bytes)", from,
                            h->kind, (unsigned long long)h->pb_bytes, (unsigned long long)h->x_bytes);
    return SHOAL_OK;
}

void shoal_step_release(struct shoal_state *s) {
    if (s->step_rx) shoal__step__free_unpacked(s->step_rx, NULL);
    s->step_rx = NULL;
}

/*
 * Whether this rank can run batch b without reading or writing outside its
 * buffers: tokens in the vocabulary; positions, KV slots and every block the
 * table names inside the cache (whole blocks of block_size slots); each
 * token's position inside its sequence's row of the table. from: the rank
 * that sent the step (SHOAL_COMM, naming it), or -1 for this rank's caller.
 */
static shoal_status check_batch(const struct shoal_state *s, const struct shoal_batch *b, int from) {
    char who[48] = "this rank's caller gave a step";
    if (from >= 0) snprintf(who, sizeof who, "rank %d sent a step", from);
    const shoal_status bad = from >= 0 ? SHOAL_COMM : SHOAL_INVALID;
    if (b->n_tokens < 1 || b->n_tokens > s->n_batch || b->n_seq < 1 || b->max_blocks < 1 || b->block_size < 1 ||
        b->block_size > s->n_ctx || (int64_t)b->n_seq * b->max_blocks > (1 << 24))
        return shoal_errorf(bad, "%s of %d tokens (at most %d) in %d sequences of %d blocks of %d positions", who,
                            b->n_tokens, s->n_batch, b->n_seq, b->max_blocks, b->block_size);
    const int n_blocks = s->n_ctx / b->block_size; /* whole blocks in the cache */
    for (int64_t i = 0; i < (int64_t)b->n_seq * b->max_blocks; i++)
        if (b->block_table[i] < 0 || b->block_table[i] >= n_blocks)
            return shoal_errorf(bad, "%s whose block table names block %d of a cache of %d", who,
                                b->block_table[i], n_blocks);
    for (int t = 0; t < b->n_tokens; t++) {
        if (b->token[t] < 0 || b->token[t] >= s->m->hp.n_vocab)
            return shoal_errorf(bad, "%s whose token %d is id %d, outside the vocabulary of %d", who, t,
                                b->token[t], s->m->hp.n_vocab);
        if (b->seq[t] < 0 || b->seq[t] >= b->n_seq || b->pos[t] < 0 || b->pos[t] >= s->n_ctx ||
            b->pos[t] / b->block_size >= b->max_blocks || b->slot[t] < 0 || b->slot[t] >= s->n_ctx)
            return shoal_errorf(bad, "%s whose token %d is of sequence %d of %d at position %d, KV slot %d "
                                "(a context of %d, rows of %d blocks of %d)", who, t, b->seq[t], b->n_seq,
                                b->pos[t], b->slot[t], s->n_ctx, b->max_blocks, b->block_size);
    }
    return SHOAL_OK;
}

/* A received body: its Step decoded and checked, the batch pointing into it. */
static shoal_status decode(struct shoal_state *s, const struct step_head *h, struct step *st, int from) {
    shoal_step_release(s);
    Shoal__Step *m = shoal__step__unpack(NULL, (size_t)h->pb_bytes, s->msg);
    if (!m) return shoal_errorf(SHOAL_COMM, "rank %d sent a step whose message cannot be decoded", from);
    s->step_rx = m;
    s->msg_pb = (size_t)h->pb_bytes;
    const size_t n = m->n_token;
    /* the arrays' lengths and the outputs; what the batch names, check_batch below */
    if (n < 1 || n > (size_t)s->n_batch || m->n_pos != n || m->n_seq_of != n || m->n_slot != n ||
        m->n_block_table != (size_t)m->n_seq * (size_t)m->max_blocks || m->n_out < 0 || m->out0 < 0 ||
        (m->n_ring && m->n_ring != (size_t)m->n_seq) ||
        (size_t)m->out0 + (size_t)m->n_out > n || m->n_out > s->n_outputs || m->topk < 0 || m->topk > s->topk ||
        (h->x_bytes && h->x_bytes != n * s->m->hp.dim * sizeof(float)))
        return shoal_errorf(SHOAL_COMM, "rank %d sent a malformed step (%zu tokens, %d sequences)", from, n,
                            m->n_seq);
    *st = (struct step){ .b = { .n_tokens = (int)n, .token = m->token, .pos = m->pos, .seq = m->seq_of,
                                .slot = m->slot, .block_table = m->block_table, .n_seq = m->n_seq,
                                .max_blocks = m->max_blocks, .block_size = m->block_size,
                                .ring = m->n_ring ? m->ring : NULL },
                         .out0 = m->out0, .n_out = m->n_out, .topk = m->topk, .decode = m->decode,
                         .x = h->x_bytes ? (const float *)((char *)s->msg + x_offset(h->pb_bytes)) : NULL };
    return check_batch(s, &st->b, from);
}

/* Within a stage: the group's first rank shares the step with the others. */
static shoal_status share(struct shoal_state *s, struct step_head *h) {
    struct shoal_comm *tp = s->dist->tp;
    if (shoal_comm_size(tp) == 1) return SHOAL_OK;
    SHOAL_TRY(shoal_comm_bcast(tp, h, sizeof *h, 0));
    SHOAL_TRY(check_head(s, h, s->dist->plan->part[s->m->part.stage * s->dist->plan->tp].rank));
    if (h->kind != STEP_RUN) return SHOAL_OK;
    SHOAL_TRY(msg_room(s, body_bytes(h)));
    return shoal_comm_bcast(tp, s->msg, body_bytes(h), 0);
}

/* Whether this rank's part has copies in other replicas (an offload group). */
static int replicated(const struct shoal_state *s) {
    return s->dist && s->dist->group && shoal_comm_size(s->dist->group) > 1;
}

/*
 * Across replicas: world rank 0 gives each replica's first rank the step
 * (frame, then body), which runs it in its replica as rank 0 does in its own.
 */
static shoal_status replicas_share(struct shoal_state *s, struct step_head *h) {
    struct shoal_comm *g = s->dist->group;
    SHOAL_TRY(shoal_comm_bcast(g, h, sizeof *h, 0));
    SHOAL_TRY(check_head(s, h, 0));
    if (h->kind != STEP_RUN) return SHOAL_OK;
    SHOAL_TRY(msg_room(s, body_bytes(h)));
    return shoal_comm_bcast(g, s->msg, body_bytes(h), 0);
}

/* First rank of a stage: the step (and hidden states) to the next stage. */
static shoal_status pass_on(struct shoal_state *s, const struct step_head *h) {
    SHOAL_TRY(shoal_comm_send(s->dist->world, h, sizeof *h, s->dist->next));
    if (h->kind != STEP_RUN) return SHOAL_OK;
    return shoal_comm_send(s->dist->world, s->msg, body_bytes(h), s->dist->next);
}

/* Bytes and seconds of communication this rank has spent, all groups. */
static void comm_total(const struct shoal_state *s, uint64_t *bytes, double *seconds) {
    *bytes = 0;
    *seconds = 0;
    if (!s->dist) return;
    const struct shoal_comm_stats *a = shoal_comm_stats(s->dist->world), *b = shoal_comm_stats(s->dist->tp);
    *bytes = a->bytes_sent + b->bytes_sent;
    *seconds = a->seconds + b->seconds;
}

/* Adds what a step of n tokens cost since (bytes0, seconds0), begun (or waited for) at wall0,
 * to its kind's tally: a decode step's (one token, or a step that says it decodes), else the prompt's. */
static void tally(struct shoal_state *s, int n, int decode, uint64_t bytes0, double seconds0, double wall0) {
    uint64_t bytes;
    double seconds;
    comm_total(s, &bytes, &seconds);
    struct shoal_step_comm *c = n == 1 || decode ? &s->comm_decode : &s->comm_prompt;
    c->steps++;
    c->tokens += (uint64_t)n;
    c->bytes += bytes - bytes0;
    c->seconds += seconds - seconds0;
    c->wall += shoal_now() - wall0;
}

/*
 * This rank's share of step st (st->x: the hidden states from the previous
 * stage, NULL on the first). Passes the step on, and on the last stage
 * assembles the logits.
 */
static shoal_status run_step(struct shoal_state *s, const struct step *st) {
    const struct shoal_model *m = s->m;
    const struct shoal_batch *b = &st->b;
    if (m->part.first) SHOAL_TRY(shoal_run_embed(s, b));
    else SHOAL_TRY(shoal_backend_upload(m->be, s->x, st->x, (size_t)b->n_tokens * m->hp.dim * sizeof(float)));
    SHOAL_TRY(shoal_run_layers(s, b));
    int lead = !s->dist || shoal_comm_rank(s->dist->tp) == 0;
    if (!m->part.last) {
        if (!lead) return SHOAL_OK;
        if (!s->msg_pb) SHOAL_TRY(encode(s, st)); /* rank 0 with nobody to share the step with */
        struct step_head out;
        SHOAL_TRY(put_x(s, &out, b->n_tokens));
        return pass_on(s, &out);
    }
    SHOAL_TRY(shoal_run_head(s, b->n_tokens, st->out0, st->n_out, st->topk));
    if (lead && s->dist && shoal_comm_rank(s->dist->world) != 0 && st->n_out > 0) {
        if (st->topk)
            return shoal_comm_send(s->dist->world, s->cands,
                                   (size_t)st->n_out * st->topk * sizeof *s->cands, 0);
        return shoal_comm_send(s->dist->world, s->gathered,
                               (size_t)st->n_out * m->hp.n_vocab * sizeof(float), 0);
    }
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ drive */

shoal_status shoal_forward(struct shoal_state *s, const struct shoal_batch *b, int out0,
                           int n_out, float *logits) {
    const struct shoal_model *m = s->m;
    const int n = b->n_tokens;
    SHOAL_TRY(check_batch(s, b, -1));
    if (n_out < 0 || out0 < 0 || out0 + n_out > n || n_out > s->n_outputs)
        return shoal_errorf(SHOAL_INTERNAL, "output rows %d-%d of a %d-token batch (at most %d)",
                            out0, out0 + n_out - 1, n, s->n_outputs);
    /* top-k candidates travel instead of rows only between ranks */
    const struct step st = { .b = *b, .out0 = out0, .n_out = n_out, .topk = s->dist ? s->topk : 0,
                             .decode = s->decoding };
    uint64_t bytes0;
    double seconds0, wall0 = shoal_now();
    comm_total(s, &bytes0, &seconds0);
    s->msg_pb = 0;
    if (s->dist && (shoal_comm_size(s->dist->tp) > 1 || replicated(s))) {
        SHOAL_TRY(encode(s, &st));
        struct step_head h = { STEP_MAGIC, STEP_VERSION, STEP_RUN, s->msg_pb, 0 };
        if (replicated(s)) SHOAL_TRY(replicas_share(s, &h));
        SHOAL_TRY(share(s, &h));
    }
    /* one stage: the head's rows straight into the caller's */
    s->head_out = n_out > 0 && m->part.last && !st.topk ? logits : NULL;
    shoal_status rc = run_step(s, &st);
    s->head_out = NULL;
    SHOAL_TRY(rc);
    size_t bytes = (size_t)n_out * m->hp.n_vocab * sizeof(float);
    if (n_out > 0 && st.topk) {
        if (!m->part.last) { /* from the last stage */
            int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
            SHOAL_TRY(shoal_comm_recv(s->dist->world, s->cands,
                                      (size_t)n_out * st.topk * sizeof *s->cands, last_lead));
        }
        shoal_expand_cands(s->cands, n_out, st.topk, m->hp.n_vocab, logits);
    } else if (n_out > 0 && !m->part.last) {
        int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
        SHOAL_TRY(shoal_comm_recv(s->dist->world, logits, bytes, last_lead));
    }
    tally(s, n, st.decode, bytes0, seconds0, wall0);
    return SHOAL_OK;
}

shoal_status shoal_follow(struct shoal_state *s) {
    const struct shoal_model *m = s->m;
    struct shoal_comm *tp = s->dist->tp;
    for (;;) {
        struct step_head h;
        int from = 0;
        uint64_t bytes0;
        double seconds0, wall0 = shoal_now(); /* from the wait for the step on */
        comm_total(s, &bytes0, &seconds0);
        /* a replica's first rank: the step comes from world rank 0, as rank 0 runs it */
        const int replica_lead = m->part.first && shoal_comm_rank(tp) == 0 && s->dist->replica > 0;
        if (!m->part.first && shoal_comm_rank(tp) == 0) {
            from = s->dist->prev;
            SHOAL_TRY(shoal_comm_recv(s->dist->world, &h, sizeof h, from));
            SHOAL_TRY(check_head(s, &h, from));
            if (h.kind == STEP_RUN) {
                SHOAL_TRY(msg_room(s, body_bytes(&h)));
                SHOAL_TRY(shoal_comm_recv(s->dist->world, s->msg, body_bytes(&h), from));
            }
        } else if (replica_lead) {
            SHOAL_TRY(replicas_share(s, &h));
        }
        SHOAL_TRY(share(s, &h));
        if (h.kind == STEP_STOP || h.kind == STEP_PING || h.kind == STEP_PACE) {
            if (!m->part.last && shoal_comm_rank(tp) == 0) SHOAL_TRY(pass_on(s, &h));
            if (h.kind == STEP_STOP) return SHOAL_OK;
            if (h.kind == STEP_PACE) SHOAL_TRY(all_pace(s, NULL));
            else SHOAL_TRY(shoal_comm_barrier(s->dist->world)); /* rank 0 hears from every rank */
            continue;
        }
        struct step st;
        SHOAL_TRY(decode(s, &h, &st, from));
        if (!m->part.first && !st.x)
            return shoal_errorf(SHOAL_COMM, "a step reached stage %d without hidden states",
                                m->part.stage);
        SHOAL_TRY(run_step(s, &st));
        if (replica_lead && st.n_out > 0 && !m->part.last) {
            /* what its last stage sends back, as to rank 0; not used */
            const int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
            const size_t bytes = st.topk ? (size_t)st.n_out * st.topk * sizeof *s->cands
                                         : (size_t)st.n_out * m->hp.n_vocab * sizeof(float);
            void *sink = malloc(bytes);
            if (!sink) return shoal_errorf(SHOAL_NOMEM, "out of memory");
            shoal_status rc = shoal_comm_recv(s->dist->world, sink, bytes, last_lead);
            free(sink);
            SHOAL_TRY(rc);
        }
        tally(s, st.b.n_tokens, st.decode, bytes0, seconds0, wall0);
    }
}

/* This rank's pace. */
static struct shoal_rank_pace my_pace(const struct shoal_state *s) {
    const struct shoal_step_comm *a = &s->comm_prompt, *b = &s->comm_decode;
    const double wall = a->wall + b->wall, wait = a->seconds + b->seconds;
    return (struct shoal_rank_pace){ (double)(a->steps + b->steps), (double)(a->tokens + b->tokens),
                                     wall > wait ? wall - wait : 0, wait };
}

/* Every rank's pace into all (world size entries; NULL: not kept), from an all-gather of the world. */
static shoal_status all_pace(struct shoal_state *s, struct shoal_rank_pace *all) {
    const int n = shoal_comm_size(s->dist->world);
    struct shoal_rank_pace mine = my_pace(s), *buf = all ? all : malloc(sizeof *buf * (size_t)n);
    if (!buf) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    shoal_status rc = shoal_comm_allgather(s->dist->world, &mine, sizeof mine, buf);
    if (!all) free(buf);
    return rc;
}

/* A step that runs nothing, then a barrier of every rank: see model.h. */
static shoal_status no_op_step(struct shoal_state *s, int kind) {
    struct step_head h = { STEP_MAGIC, STEP_VERSION, (uint16_t)kind, 0, 0 };
    if (replicated(s)) SHOAL_TRY(replicas_share(s, &h));
    SHOAL_TRY(share(s, &h));
    if (!s->m->part.last) SHOAL_TRY(pass_on(s, &h));
    return SHOAL_OK;
}

shoal_status shoal_ping(struct shoal_state *s) {
    if (!s->dist || (shoal_comm_size(s->dist->world) == 1 && !replicated(s))) return SHOAL_OK;
    SHOAL_TRY(no_op_step(s, STEP_PING));
    return shoal_comm_barrier(s->dist->world);
}

int shoal_pace_ranks(const struct shoal_state *s) {
    return s->dist ? shoal_comm_size(s->dist->world) : 1;
}

shoal_status shoal_gather_pace(struct shoal_state *s, struct shoal_rank_pace *pace, int cap, int *n) {
    *n = 0;
    if (!s->dist || (shoal_comm_size(s->dist->world) == 1 && !replicated(s))) {
        if (cap < 1) return shoal_errorf(SHOAL_INTERNAL, "no room for a rank's pace");
        pace[0] = my_pace(s);
        *n = 1;
        return SHOAL_OK;
    }
    const int size = shoal_comm_size(s->dist->world);
    if (cap < size) return shoal_errorf(SHOAL_INTERNAL, "room for %d ranks' pace, %d running", cap, size);
    SHOAL_TRY(no_op_step(s, STEP_PACE));
    SHOAL_TRY(all_pace(s, pace));
    *n = size;
    return SHOAL_OK;
}

shoal_status shoal_stop(struct shoal_state *s) {
    if (!s->dist || (shoal_comm_size(s->dist->world) == 1 && !replicated(s))) return SHOAL_OK;
    return no_op_step(s, STEP_STOP);
}
