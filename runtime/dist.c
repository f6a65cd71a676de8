/*
 * dist.c — how a forward step reaches every rank (model.h: shoal_forward,
 * shoal_follow, shoal_stop).
 *
 * World rank 0 (first stage, first tensor-parallel rank) drives. A step is a
 * message: a header (magic, version, kind, sizes) and a body (the batch's
 * token, position, sequence and slot arrays and block table, then, between
 * stages, the hidden states). Rank 0 broadcasts it within the first stage's
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

#define STEP_MAGIC 0x54534853u /* "SHST" */
#define STEP_VERSION 1

enum { STEP_RUN = 1, STEP_STOP = 2 };

struct step_head {
    uint32_t magic;
    uint16_t version, kind;
    uint64_t body_bytes;
    int32_t n_tokens, n_seq, max_blocks, block_size;
    int32_t out0, n_out;
    int32_t has_x; /* the body ends with n_tokens x dim f32 hidden states */
    int32_t topk;  /* > 0: only each row's topk best logits come back */
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

static size_t body_bytes(const struct step_head *h, int dim) {
    size_t ints = 4 * (size_t)h->n_tokens + (size_t)h->n_seq * (size_t)h->max_blocks;
    return ints * sizeof(int32_t) + (h->has_x ? (size_t)h->n_tokens * dim * sizeof(float) : 0);
}

static shoal_status msg_room(struct shoal_state *s, size_t need) {
    if (need <= s->msg_cap) return SHOAL_OK;
    void *p = realloc(s->msg, need);
    if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory for a step of %zu bytes", need);
    s->msg = p;
    s->msg_cap = need;
    return SHOAL_OK;
}

/* Writes the batch into the message body; hidden states, if any, go after it. */
static shoal_status pack(struct shoal_state *s, struct step_head *h, const struct shoal_batch *b,
                         int has_x) {
    const int n = b->n_tokens;
    *h = (struct step_head){ STEP_MAGIC, STEP_VERSION, STEP_RUN, 0, n, b->n_seq, b->max_blocks,
                             b->block_size, 0, 0, has_x, 0 };
    h->body_bytes = body_bytes(h, s->m->hp.dim);
    if (b->token == s->msg && h->body_bytes > s->msg_cap)
        return shoal_errorf(SHOAL_INTERNAL, "a received step grew when passed on");
    SHOAL_TRY(msg_room(s, h->body_bytes));
    int32_t *p = s->msg;
    /* a follower passing on the step it received: the arrays are already in place */
    if (b->token != p) {
        memcpy(p, b->token, (size_t)n * 4);
        memcpy(p + n, b->pos, (size_t)n * 4);
        memcpy(p + 2 * n, b->seq, (size_t)n * 4);
        memcpy(p + 3 * n, b->slot, (size_t)n * 4);
        memcpy(p + 4 * n, b->block_table, (size_t)b->n_seq * b->max_blocks * 4);
    }
    if (has_x)
        SHOAL_TRY(shoal_backend_download(s->m->be, p + 4 * n + b->n_seq * b->max_blocks, s->x,
                                         (size_t)n * s->m->hp.dim * sizeof(float)));
    return SHOAL_OK;
}

/* Checks a received header before its sizes are used. */
static shoal_status check_head(struct shoal_state *s, const struct step_head *h, int from) {
    if (h->magic != STEP_MAGIC || h->version != STEP_VERSION)
        return shoal_errorf(SHOAL_COMM,
                            "rank %d sent a step this rank cannot read (magic %08x version %u; "
                            "are all ranks the same shoal?)",
                            from, h->magic, h->version);
    if (h->kind == STEP_STOP) return SHOAL_OK;
    if (h->kind != STEP_RUN || h->n_tokens < 1 || h->n_tokens > s->n_batch || h->n_seq < 1 ||
        h->max_blocks < 1 || h->block_size < 1 || h->n_out < 0 || h->out0 < 0 ||
        h->out0 + h->n_out > h->n_tokens || h->n_out > s->n_outputs || h->topk < 0 ||
        h->topk > s->topk ||
        (int64_t)h->n_seq * h->max_blocks > (1 << 24) ||
        h->body_bytes != body_bytes(h, s->m->hp.dim))
        return shoal_errorf(SHOAL_COMM, "rank %d sent a malformed step (%d tokens, %llu bytes)",
                            from, h->n_tokens, (unsigned long long)h->body_bytes);
    return SHOAL_OK;
}

/* The batch a received body describes (pointing into it). */
static void unpack(const struct shoal_state *s, const struct step_head *h, struct shoal_batch *b,
                   const float **x) {
    const int32_t *p = s->msg;
    const int n = h->n_tokens;
    *b = (struct shoal_batch){ .n_tokens = n, .token = p, .pos = p + n, .seq = p + 2 * n,
                               .slot = p + 3 * n, .block_table = p + 4 * n, .n_seq = h->n_seq,
                               .max_blocks = h->max_blocks, .block_size = h->block_size };
    *x = h->has_x ? (const float *)(p + 4 * n + h->n_seq * h->max_blocks) : NULL;
}

/* Within a stage: the group's first rank shares the step with the others. */
static shoal_status share(struct shoal_state *s, struct step_head *h) {
    struct shoal_comm *tp = s->dist->tp;
    if (shoal_comm_size(tp) == 1) return SHOAL_OK;
    SHOAL_TRY(shoal_comm_bcast(tp, h, sizeof *h, 0));
    SHOAL_TRY(check_head(s, h, s->dist->plan->part[s->m->part.stage * s->dist->plan->tp].rank));
    if (h->kind == STEP_STOP) return SHOAL_OK;
    SHOAL_TRY(msg_room(s, h->body_bytes));
    return shoal_comm_bcast(tp, s->msg, h->body_bytes, 0);
}

/* Whether this rank's part has copies in other replicas (an offload group). */
static int replicated(const struct shoal_state *s) {
    return s->dist && s->dist->group && shoal_comm_size(s->dist->group) > 1;
}

/*
 * Across replicas: world rank 0 gives each replica's first rank the step
 * (header, then body), which runs it in its replica as rank 0 does in its own.
 */
static shoal_status replicas_share(struct shoal_state *s, struct step_head *h) {
    struct shoal_comm *g = s->dist->group;
    SHOAL_TRY(shoal_comm_bcast(g, h, sizeof *h, 0));
    SHOAL_TRY(check_head(s, h, 0));
    if (h->kind == STEP_STOP) return SHOAL_OK;
    SHOAL_TRY(msg_room(s, h->body_bytes));
    return shoal_comm_bcast(g, s->msg, h->body_bytes, 0);
}

/* First rank of a stage: the step (and hidden states) to the next stage. */
static shoal_status pass_on(struct shoal_state *s, const struct step_head *h) {
    SHOAL_TRY(shoal_comm_send(s->dist->world, h, sizeof *h, s->dist->next));
    if (h->kind == STEP_STOP) return SHOAL_OK;
    return shoal_comm_send(s->dist->world, s->msg, h->body_bytes, s->dist->next);
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

/* Adds what a step of n tokens cost since (bytes0, seconds0) to its kind's tally. */
static void tally(struct shoal_state *s, int n, uint64_t bytes0, double seconds0) {
    uint64_t bytes;
    double seconds;
    comm_total(s, &bytes, &seconds);
    struct shoal_step_comm *c = n == 1 ? &s->comm_decode : &s->comm_prompt;
    c->steps++;
    c->tokens += (uint64_t)n;
    c->bytes += bytes - bytes0;
    c->seconds += seconds - seconds0;
}

/*
 * This rank's share of a step whose batch is b; x holds the hidden states
 * from the previous stage (NULL on the first). Passes the step on, and on
 * the last stage assembles the logits.
 */
static shoal_status run_step(struct shoal_state *s, const struct step_head *h,
                             const struct shoal_batch *b, const float *x) {
    const struct shoal_model *m = s->m;
    if (m->part.first) SHOAL_TRY(shoal_run_embed(s, b));
    else SHOAL_TRY(shoal_backend_upload(m->be, s->x, x, (size_t)b->n_tokens * m->hp.dim * sizeof(float)));
    SHOAL_TRY(shoal_run_layers(s, b));
    int lead = !s->dist || shoal_comm_rank(s->dist->tp) == 0;
    if (!m->part.last) {
        if (!lead) return SHOAL_OK;
        struct step_head out;
        SHOAL_TRY(pack(s, &out, b, 1));
        out.out0 = h->out0;
        out.n_out = h->n_out;
        out.topk = h->topk;
        return pass_on(s, &out);
    }
    SHOAL_TRY(shoal_run_head(s, b->n_tokens, h->out0, h->n_out, h->topk));
    if (lead && s->dist && shoal_comm_rank(s->dist->world) != 0 && h->n_out > 0) {
        if (h->topk)
            return shoal_comm_send(s->dist->world, s->cands,
                                   (size_t)h->n_out * h->topk * sizeof *s->cands, 0);
        return shoal_comm_send(s->dist->world, s->gathered,
                               (size_t)h->n_out * m->hp.n_vocab * sizeof(float), 0);
    }
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ drive */

shoal_status shoal_forward(struct shoal_state *s, const struct shoal_batch *b, int out0,
                           int n_out, float *logits) {
    const struct shoal_model *m = s->m;
    const int n = b->n_tokens;
    if (n < 1 || n > s->n_batch)
        return shoal_errorf(SHOAL_INTERNAL, "batch of %d tokens (limit %d)", n, s->n_batch);
    for (int t = 0; t < n; t++)
        if (b->slot[t] < 0 || b->slot[t] >= s->n_ctx)
            return shoal_errorf(SHOAL_INVALID, "KV slot %d is outside the context of %d",
                                b->slot[t], s->n_ctx);
    if (n_out < 0 || out0 < 0 || out0 + n_out > n || n_out > s->n_outputs)
        return shoal_errorf(SHOAL_INTERNAL, "output rows %d-%d of a %d-token batch (at most %d)",
                            out0, out0 + n_out - 1, n, s->n_outputs);
    /* top-k candidates travel instead of rows only between ranks */
    const int topk = s->dist ? s->topk : 0;
    struct step_head h = { STEP_MAGIC, STEP_VERSION, STEP_RUN, 0, n, b->n_seq, b->max_blocks,
                           b->block_size, out0, n_out, 0, topk };
    uint64_t bytes0;
    double seconds0;
    comm_total(s, &bytes0, &seconds0);
    if (s->dist && (shoal_comm_size(s->dist->tp) > 1 || replicated(s))) {
        SHOAL_TRY(pack(s, &h, b, 0));
        h.out0 = out0;
        h.n_out = n_out;
        h.topk = topk;
        if (replicated(s)) SHOAL_TRY(replicas_share(s, &h));
        SHOAL_TRY(share(s, &h));
    }
    SHOAL_TRY(run_step(s, &h, b, NULL));
    size_t bytes = (size_t)n_out * m->hp.n_vocab * sizeof(float);
    if (n_out > 0 && topk) {
        if (!m->part.last) { /* from the last stage */
            int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
            SHOAL_TRY(shoal_comm_recv(s->dist->world, s->cands,
                                      (size_t)n_out * topk * sizeof *s->cands, last_lead));
        }
        shoal_expand_cands(s->cands, n_out, topk, m->hp.n_vocab, logits);
    } else if (n_out > 0 && m->part.last) { /* one stage: the logits are here */
        memcpy(logits, s->gathered, bytes);
    } else if (n_out > 0) {
        int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
        SHOAL_TRY(shoal_comm_recv(s->dist->world, logits, bytes, last_lead));
    }
    tally(s, n, bytes0, seconds0);
    return SHOAL_OK;
}

shoal_status shoal_follow(struct shoal_state *s) {
    const struct shoal_model *m = s->m;
    struct shoal_comm *tp = s->dist->tp;
    for (;;) {
        struct step_head h;
        int from = 0;
        uint64_t bytes0;
        double seconds0;
        comm_total(s, &bytes0, &seconds0);
        /* a replica's first rank: the step comes from world rank 0, as rank 0 runs it */
        const int replica_lead = m->part.first && shoal_comm_rank(tp) == 0 && s->dist->replica > 0;
        if (!m->part.first && shoal_comm_rank(tp) == 0) {
            from = s->dist->prev;
            SHOAL_TRY(shoal_comm_recv(s->dist->world, &h, sizeof h, from));
            SHOAL_TRY(check_head(s, &h, from));
            if (h.kind == STEP_RUN) {
                SHOAL_TRY(msg_room(s, h.body_bytes));
                SHOAL_TRY(shoal_comm_recv(s->dist->world, s->msg, h.body_bytes, from));
            }
        } else if (replica_lead) {
            SHOAL_TRY(replicas_share(s, &h));
            /* room for the hidden states it adds when passing the step on (the batch's
             * arrays stay where they were received) */
            if (h.kind == STEP_RUN)
                SHOAL_TRY(msg_room(s, h.body_bytes + (size_t)h.n_tokens * m->hp.dim * sizeof(float)));
        }
        SHOAL_TRY(share(s, &h));
        if (h.kind == STEP_STOP) {
            if (!m->part.last && shoal_comm_rank(tp) == 0) SHOAL_TRY(pass_on(s, &h));
            return SHOAL_OK;
        }
        struct shoal_batch b;
        const float *x;
        unpack(s, &h, &b, &x);
        if (!m->part.first && !x)
            return shoal_errorf(SHOAL_COMM, "a step reached stage %d without hidden states",
                                m->part.stage);
        SHOAL_TRY(run_step(s, &h, &b, x));
        if (replica_lead && h.n_out > 0 && !m->part.last) {
            /* what its last stage sends back, as to rank 0; not used */
            const int last_lead = (s->dist->plan->pp - 1) * s->dist->plan->tp;
            const size_t bytes = h.topk ? (size_t)h.n_out * h.topk * sizeof *s->cands
                                        : (size_t)h.n_out * m->hp.n_vocab * sizeof(float);
            void *sink = malloc(bytes);
            if (!sink) return shoal_errorf(SHOAL_NOMEM, "out of memory");
            shoal_status rc = shoal_comm_recv(s->dist->world, sink, bytes, last_lead);
            free(sink);
            SHOAL_TRY(rc);
        }
        tally(s, h.n_tokens, bytes0, seconds0);
    }
}

shoal_status shoal_stop(struct shoal_state *s) {
    if (!s->dist || (shoal_comm_size(s->dist->world) == 1 && !replicated(s))) return SHOAL_OK;
    struct step_head h = { STEP_MAGIC, STEP_VERSION, STEP_STOP, 0, 0, 0, 0, 0, 0, 0, 0, 0 };
    if (replicated(s)) SHOAL_TRY(replicas_share(s, &h));
    SHOAL_TRY(share(s, &h));
    if (!s->m->part.last) SHOAL_TRY(pass_on(s, &h));
    return SHOAL_OK;
}
