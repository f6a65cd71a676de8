/*
 * cost.c — memory and speed of a layout before it runs (cost.h).
 */
#include "cost.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* The constants of the model, measured on the development machines (2-core
 * AMD EPYC, Open MPI 4.1 over shared memory and over TCP): */
#define BW_FRACTION 0.78     /* of the measured read bandwidth that decode kernels reach */
#define BOUND_FRACTION 0.92  /* the most of it they reach when nothing else limits them */
#define LAYER_COST 45e-6     /* s per layer per token with one thread: small ops, hand-offs */
#define LAYER_COST_MT 95e-6  /* the same with several threads (a fork and join per op) */
#define TOKEN_COST 100e-6    /* s per token: sampling, the step message, bookkeeping */
/* a step's tokens beyond the first (speculative decoding's drafts), each: this share of a decode
 * step's compute (SmolLM2 Q4_1, 2 threads, here: pp16 at 3795 tok/s against tg at 670, 0.18, and a
 * row of logits each) */
#define STEP_TOKEN_SHARE 0.2
#define MSG_COST 20e-6       /* s of software per message beyond the link's latency */
#define WAKE_COST 450e-6     /* s for a rank that waited a whole stage to notice its message */
#define POLL_SHARE 0.25      /* of a core that a rank waiting for its stage takes, polling */
#define SWITCH_COST 80e-6    /* s per all-gather round and extra thread per core: waiting for a turn */
#define BASE_BYTES 6e6       /* a process: code, libraries, stacks, small buffers */
#define MPI_BYTES 8e6        /* what Open MPI adds to each rank (shared-memory segments) */
#define PAGE 4096.0          /* a lookup maps the page of the row it reads */
/* A fault in a mapped file maps the cached pages of its 64 KiB window. Where the page
 * cache holds the file in large folios (read() with readahead left them; Linux 6.18
 * maps a faulting folio whole), a tensor-parallel rank counts more of its neighbours'
 * rows in its RSS: shared cache, not memory the rank needs, and not counted here. */
#define FAULT_AROUND 65536.0

/* Bytes of one layer's FFN in a rank's part: its units of each expert it holds (of every unit's
 * bytes, ffn_unit_bytes, summed over the experts), or of the dense FFN. */
static double ffn_part_bytes(const struct shoal_model_shape *m, const struct shoal_rank_part *pt) {
    const double held = (pt->ff1 - pt->ff0) * m->ffn_unit_bytes;
    return m->n_expert ? held * (pt->x1 - pt->x0) / m->n_expert : held;
}

/* Bytes of one layer's matrices in a rank's part (without its norms). */
static double layer_part_bytes(const struct shoal_model_shape *m, const struct shoal_rank_part *pt) {
    return (pt->q1 - pt->q0) * m->q_head_bytes + (pt->kv1 - pt->kv0) * m->kv_head_bytes + ffn_part_bytes(m, pt);
}

/* Bytes of one rank's weights: what it holds. */
static double rank_weights(const struct shoal_model_shape *m, const struct shoal_rank_part *pt) {
    double w = (layer_part_bytes(m, pt) + m->norm_bytes) * (pt->layer1 - pt->layer0);
    if (pt->last) w += m->output_bytes * (pt->v1 - pt->v0) / m->n_vocab + (double)m->dim * 4;
    return w;
}

double shoal_cost_max_experts(int n_expert, int used, int groups) {
    if (n_expert < 1 || used < 1 || groups < 2) return used;
    if (used > 64) return (double)used / groups; /* many a token: near even */
    if (used > n_expert) used = n_expert;
    if (groups > 64) groups = 64;
    /* a fixed sequence of draws, so that the figure is the same every time */
    uint64_t s = 0x9e3779b97f4a7c15ull;
    const int draws = 4096;
    double sum = 0;
    for (int d = 0; d < draws; d++) {
        int chosen[64], count[64] = { 0 }, n = 0, most = 0;
        while (n < used) {
            s = s * 6364136223846793005ull + 1442695040888963407ull;
            const int e = (int)((s >> 33) % (uint64_t)n_expert);
            int seen = 0;
            for (int j = 0; j < n; j++) seen |= chosen[j] == e;
            if (seen) continue;
            chosen[n++] = e;
            const int r = (int)((int64_t)e * groups / n_expert); /* runs of consecutive experts */
            if (++count[r] > most) most = count[r];
        }
        sum += most;
    }
    return sum / draws;
}

/* Bytes of one rank's weights a decode step reads: what it holds, but of a mixture of
 * experts only a token's: its share of each of the used experts (every rank alike), or
 * with whole experts (ep) the most of them that one rank of the stage holds, on average. */
static double rank_read(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                        const struct shoal_rank_part *pt) {
    double w = rank_weights(m, pt);
    if (!m->n_expert) return w;
    const double layers = pt->layer1 - pt->layer0, ffn = ffn_part_bytes(m, pt) * layers;
    const double expert = m->ffn_dim * m->ffn_unit_bytes / m->n_expert * layers; /* one whole expert's */
    const double used = plan->ep ? shoal_cost_max_experts(m->n_expert, m->n_expert_used, plan->tp) * expert
                                 : ffn * m->n_expert_used / m->n_expert;
    return w - ffn + used;
}

/* The KV cache of n_ctx positions; a windowed layer's, its ring where the runs have one. */
static double kv_bytes(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                       const struct shoal_cost_params *p) {
    const int ring = shoal_ring_slots(m->swa_window, p->n_ctx, p->n_batch, p->rings);
    double slots = 0;
    for (int l = pt->layer0; l < pt->layer1; l++)
        slots += ring && shoal_windowed_layer(m->swa_window, m->swa_period, l) ? (double)ring * p->rings : p->n_ctx;
    return slots * 2 * (pt->kv1 - pt->kv0) * p->kv_head_bytes;
}

/* The activations' block (the backend's memory), as shoal_state_create lays it out,
 * each slot rounded to 64 bytes. */
static double act_block_bytes(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                              const struct shoal_cost_params *p) {
    double nb = p->n_batch < p->n_ctx ? p->n_batch : p->n_ctx;
    double qd = (double)(pt->q1 - pt->q0) * m->head_dim, kvd = (double)(pt->kv1 - pt->kv0) * m->head_dim;
    double ff = pt->ff1 - pt->ff0, vocab_l = pt->last ? pt->v1 - pt->v0 : 0;
    double floats = nb * (2.0 * m->dim + 2 * qd + 2 * kvd + 2 * ff + 2.0 * m->dim) + vocab_l;
    return floats * 4 + 10 * 64;
}

/* The activations and the host's copies of the logits. */
static double act_bytes(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                        const struct shoal_cost_params *p) {
    double a = act_block_bytes(m, pt, p);
    if (pt->last) a += (double)m->n_vocab * 4;            /* the gathered logits */
    if (pt->rank == 0) a += (double)m->n_vocab * 4 * 3;   /* the sampler's and the loop's copies */
    return a;
}

static void rank_mem(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                     const struct shoal_cost_params *p, int tp, int n_ranks, struct shoal_rank_mem *r) {
    r->weights = rank_weights(m, pt);
    /* rows mapped in place: a slice of a tensor maps half a window past each end, on
     * average (Q, K, V, gate and up of each layer, and the output head) */
    if (tp > 1) r->weights += ((pt->layer1 - pt->layer0) * 5.0 + pt->last) * FAULT_AROUND;
    /* a lookup maps the page of each row it reads, at most one per position; a tied
     * head on this rank has some of the table's rows already */
    r->embd = 0;
    if (pt->first) {
        double touched = fmin((double)p->n_ctx, (double)m->n_vocab) * fmax(PAGE, m->embd_bytes / m->n_vocab);
        double have = pt->last && m->tied_head ? m->embd_bytes * (pt->v1 - pt->v0) / m->n_vocab : 0;
        r->embd = fmin(m->embd_bytes - have, touched);
    }
    r->kv = kv_bytes(m, pt, p);
    r->act = act_bytes(m, pt, p);
    r->base = BASE_BYTES + (n_ranks > 1 ? MPI_BYTES : 0) + p->meta_bytes + (pt->rank == 0 ? p->tokenizer_bytes : 0);
    r->total = r->weights + r->embd + r->kv + r->act + r->base;
}

/* An all-gather of n ranks' bytes each over a link: recursive doubling. */
static double allgather_s(int n, double bytes, const struct shoal_link *l) {
    if (n < 2) return 0;
    int rounds = (int)ceil(log2((double)n));
    return rounds * (l->lat + MSG_COST) + (n - 1) * bytes / l->bw;
}

/* The slowest link among a stage's ranks. */
static const struct shoal_link *stage_link(const struct shoal_topology *t, const struct shoal_plan *plan,
                                           int stage) {
    const struct shoal_link *worst = &t->local;
    for (int i = 0; i < plan->tp; i++)
        for (int j = i + 1; j < plan->tp; j++) {
            const struct shoal_link *l = shoal_topology_link(t, shoal_topology_host_of(t, stage * plan->tp + i),
                                                             shoal_topology_host_of(t, stage * plan->tp + j));
            if (l->lat + 1e5 / l->bw > worst->lat + 1e5 / worst->bw) worst = l;
        }
    return worst;
}

/* Threads of each rank on host (as shoal run starts them: -t, else cores / ranks there). */
static int rank_threads(const struct shoal_cost_params *p, const struct shoal_host *host) {
    int th = p->threads > 0 ? p->threads : host->cores / host->ranks;
    return th < 1 ? 1 : th;
}

/* Threads the stage's ranks run on host h. */
static int stage_threads(const struct shoal_topology *t, const struct shoal_cost_params *p,
                         const struct shoal_plan *plan, int stage, int h) {
    int n = 0;
    for (int i = 0; i < plan->tp; i++)
        if (shoal_topology_host_of(t, stage * plan->tp + i) == h) n++;
    return n * rank_threads(p, &t->hosts[h]);
}

/* The bandwidth one rank reads with while its stage runs: its host's, shared by
 * the stage's threads there (one rank runs cores / ranks-on-host threads). */
static double rank_bw(const struct shoal_topology *t, const struct shoal_cost_params *p,
                      const struct shoal_plan *plan, int rank, int *threads, double *crowd) {
    int h = shoal_topology_host_of(t, rank);
    const struct shoal_host *host = &t->hosts[h];
    int th = rank_threads(p, host), active = stage_threads(t, p, plan, rank / plan->tp, h);
    double busy = active < host->cores ? active : host->cores;
    double bw = fmin(host->membw, busy * host->corebw);
    *threads = th;
    /* threads per core: the stage's, and the other stages' ranks waking to poll */
    double load = active + POLL_SHARE * (host->ranks * th - active);
    *crowd = load > host->cores ? load / host->cores : 1;
    return bw * th / (active > host->cores ? active : busy);
}

/* The most threads per core the stage's ranks put on one of their hosts (at least 1). */
static double stage_oversubscription(const struct shoal_topology *t, const struct shoal_cost_params *p,
                                     const struct shoal_plan *plan, int stage) {
    double worst = 1;
    for (int h = 0; h < t->n_hosts; h++)
        worst = fmax(worst, (double)stage_threads(t, p, plan, stage, h) / t->hosts[h].cores);
    return worst;
}

/* Whether every host was measured (shoal_host.layer_s): then their layer times say how
 * fast each is, rather than their bandwidth. */
static int all_measured(const struct shoal_topology *t) {
    for (int h = 0; h < t->n_hosts; h++)
        if (!(t->hosts[h].layer_s > 0)) return 0;
    return 1;
}

/*
 * A measured host's time over the probe's, for the same work: its layer time
 * (its rank alone, the median step: what it takes when it runs) over what the
 * probe gives for the model's whole layers with as many threads. 0 when there
 * is nothing to compare.
 */
static shoal_status host_factor(const struct shoal_model_shape *m, const struct shoal_cost_params *p,
                                const struct shoal_host *host, int threads, double *out) {
    *out = 0;
    if (!(host->layer_s > 0) || !p->probe) return SHOAL_OK;
    struct shoal_rank_part whole = { .layer1 = m->n_layers, .q1 = m->n_heads, .kv1 = m->n_kv_heads,
                                     .ff1 = m->ffn_dim, .x1 = m->n_expert };
    double layer_s, head_s;
    SHOAL_TRY(p->probe(p->probe_user, &whole, threads, &layer_s, &head_s));
    if (layer_s > 0) *out = host->layer_s / layer_s;
    return SHOAL_OK;
}

/* Seconds of compute one rank spends on a decode step. */
static shoal_status rank_time(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                              const struct shoal_topology *topo, const struct shoal_cost_params *p,
                              const struct shoal_rank_mem *mem, int r, double *out) {
    const struct shoal_rank_part *q = &plan->part[r];
    const struct shoal_host *host = &topo->hosts[shoal_topology_host_of(topo, r)];
    int layers = q->layer1 - q->layer0, th;
    double crowd;
    double read = rank_read(m, plan, q) + mem->kv * p->decode_fill; /* and the cache filled so far */
    double bw = rank_bw(topo, p, plan, r, &th, &crowd);
    if (!p->probe) {
        *out = read / (BW_FRACTION * bw) + layers * (th > 1 ? LAYER_COST_MT : LAYER_COST) * crowd;
        return SHOAL_OK;
    }
    double layer_s, head_s;
    int pth = th < p->probe_cores ? th : p->probe_cores;
    SHOAL_TRY(p->probe(p->probe_user, q, pth, &layer_s, &head_s));
    /* a measured host: as its own time for the same layers; another machine, or more
     * threads than the probe had: as their bandwidths */
    double factor;
    SHOAL_TRY(host_factor(m, p, host, pth, &factor));
    if (!(factor > 0)) {
        double probe_bw = fmin(p->probe_membw, pth * p->probe_corebw), host_bw = fmin(host->membw, th * host->corebw);
        factor = probe_bw > 0 ? probe_bw / host_bw : 1;
    }
    double t = (layers * layer_s + head_s) * factor * crowd;
    /* alone on the machine the probe reads with all of it; here the stage's ranks share it */
    double bound = read / (BOUND_FRACTION * bw);
    *out = t > bound ? t : bound;
    return SHOAL_OK;
}

shoal_status shoal_cost_layout(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                               const struct shoal_topology *topo, const struct shoal_cost_params *p,
                               struct shoal_layout_cost *c) {
    memset(c, 0, sizeof *c);
    if (plan->n_ranks != topo->n_ranks)
        return shoal_errorf(SHOAL_INVALID, "the plan has %d ranks, the hosts %d", plan->n_ranks, topo->n_ranks);
    c->tp = plan->tp;
    c->pp = plan->pp;
    c->ep = plan->ep;
    if (!(c->mem = calloc((size_t)plan->n_ranks, sizeof *c->mem)))
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int r = 0; r < plan->n_ranks; r++) rank_mem(m, &plan->part[r], p, plan->tp, plan->n_ranks, &c->mem[r]);

    /* memory: a host's ranks share its memory */
    c->fits = 1;
    double worst_spare = INFINITY;
    for (int h = 0, r0 = 0; h < topo->n_hosts; r0 += topo->hosts[h].ranks, h++) {
        double need = 0;
        int big = r0;
        for (int r = r0; r < r0 + topo->hosts[h].ranks; r++) {
            need += c->mem[r].total;
            if (c->mem[r].total > c->mem[big].total) big = r;
        }
        double spare = topo->hosts[h].mem - need;
        if (spare < worst_spare) {
            worst_spare = spare;
            c->worst_host = h;
            c->worst_rank = big;
            c->worst_need = need;
            c->worst_have = topo->hosts[h].mem;
        }
        if (spare < 0) c->fits = 0;
    }

    /* speed: the stages in turn, each as slow as its slowest rank plus its all-reduces; and
     * no faster than a rank with a share of its host's time (cpu) computes its part in it */
    const int nt = p->step_tokens > 1 ? p->step_tokens : 1; /* a step's tokens */
    const double more = 1 + (nt - 1) * STEP_TOKEN_SHARE;
    double wire = p->wire_elem * nt, busiest = 0;
    for (int s = 0; s < plan->pp; s++) {
        double slowest = 0;
        const struct shoal_rank_part *pt = &plan->part[s * plan->tp];
        int layers = pt->layer1 - pt->layer0;
        for (int i = 0; i < plan->tp; i++) {
            double t;
            shoal_status rc = rank_time(m, plan, topo, p, &c->mem[s * plan->tp + i], s * plan->tp + i, &t);
            if (rc != SHOAL_OK) {
                shoal_layout_cost_free(c);
                return rc;
            }
            t *= more;
            if (t > slowest) slowest = t;
            const double cpu = topo->hosts[shoal_topology_host_of(topo, s * plan->tp + i)].cpu;
            busiest = fmax(busiest, cpu > 0 && cpu < 1 ? t / cpu : t);
        }
        const struct shoal_link *l = stage_link(topo, plan, s);
        double comm = 2.0 * layers * allgather_s(plan->tp, m->dim * wire, l);
        if (plan->tp > 1) /* the step shared within the group; the candidates gathered */
            comm += 2 * allgather_s(plan->tp, 256.0 * nt, l);
        /* more of the stage's threads than a host has cores: a rank an all-gather waits
         * for is often not running, and waits its turn for a core */
        double over = stage_oversubscription(topo, p, plan, s);
        if (plan->tp > 1 && over > 1)
            comm += (2.0 * layers + 2) * ceil(log2((double)plan->tp)) * SWITCH_COST * (over - 1);
        c->t_compute += slowest;
        c->t_comm += comm;
    }
    /* hand-offs between stages and the candidates back to rank 0 */
    for (int s = 0; s + 1 < plan->pp; s++) {
        const struct shoal_link *l = shoal_topology_link(topo, shoal_topology_host_of(topo, s * plan->tp),
                                                         shoal_topology_host_of(topo, (s + 1) * plan->tp));
        c->t_comm += l->lat + MSG_COST + WAKE_COST + (m->dim * 4.0 + 256) * nt / l->bw;
    }
    if (plan->pp > 1) {
        const struct shoal_link *l = shoal_topology_link(topo, shoal_topology_host_of(topo, (plan->pp - 1) * plan->tp),
                                                         shoal_topology_host_of(topo, 0));
        c->t_comm += l->lat + MSG_COST + WAKE_COST + 512.0 * nt / l->bw;
    }
    c->t_compute += TOKEN_COST;
    c->tok_s = 1.0 / fmax(c->t_compute + c->t_comm, busiest);
    return SHOAL_OK;
}

shoal_status shoal_cost_speculation(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                                    const struct shoal_topology *topo, const struct shoal_cost_params *p, int k,
                                    double accept, double draft_s, struct shoal_spec_gain *g) {
    memset(g, 0, sizeof *g);
    if (k < 1 || !(accept >= 0 && accept <= 1) || !(draft_s >= 0))
        return shoal_errorf(SHOAL_INVALID, "speculation of %d drafts at acceptance %g", k, accept);
    struct shoal_cost_params q = *p;
    struct shoal_layout_cost one, step;
    q.step_tokens = 1;
    SHOAL_TRY(shoal_cost_layout(m, plan, topo, &q, &one));
    q.step_tokens = k + 1;
    shoal_status rc = shoal_cost_layout(m, plan, topo, &q, &step);
    if (rc == SHOAL_OK) {
        /* drafts 1..k accepted in turn, each with probability accept: 1 + accept + ... + accept^k tokens */
        double e = 0, a = 1;
        for (int i = 0; i <= k; i++, a *= accept) e += a;
        g->tokens_per_step = e;
        g->step_s = 1.0 / step.tok_s + k * draft_s;
        g->tok_s = e / g->step_s;
        g->plain_tok_s = one.tok_s;
        g->speedup = g->tok_s / one.tok_s;
        shoal_layout_cost_free(&step);
    }
    shoal_layout_cost_free(&one);
    return rc;
}

void shoal_layout_cost_free(struct shoal_layout_cost *c) {
    free(c->mem);
    free(c->tp_weights);
    free(c->pp_weights);
    c->mem = NULL;
    c->tp_weights = c->pp_weights = NULL;
}

/* How fast rank r is, relatively: where every host was measured, 1 / its host's layer time
 * times its share of the time (cpu) to the power e (0: flat out, 1: over a run that keeps it
 * busy, 0.5 between), else the bandwidth its threads read with. */
static double rank_speed(const struct shoal_topology *t, const struct shoal_cost_params *p, int r, double e) {
    const struct shoal_host *h = &t->hosts[shoal_topology_host_of(t, r)];
    if (all_measured(t)) return (h->cpu > 0 && h->cpu < 1 ? pow(h->cpu, e) : 1) / h->layer_s;
    return fmin(h->membw / h->ranks, rank_threads(p, h) * h->corebw);
}

/*
 * The shares of a tp x pp layout in proportion to its ranks' speeds: a
 * stage's tensor-parallel ranks by their speed (each position's, averaged
 * over the stages), the stages by the sum of theirs. 0 when the ranks are
 * within 10% of each other (even shares then), else 1 with tpw (tp) and ppw
 * (pp) filled, NULL for an even dimension.
 */
static int speed_weights(const struct shoal_topology *t, const struct shoal_cost_params *p, int tp, int pp,
                         double e, double *tpw, double *ppw) {
    const int n = tp * pp;
    double lo = INFINITY, hi = 0;
    for (int r = 0; r < n; r++) {
        const double v = rank_speed(t, p, r, e);
        lo = fmin(lo, v);
        hi = fmax(hi, v);
    }
    if (!(lo > 0) || hi <= 1.1 * lo) return 0;
    for (int i = 0; i < tp; i++) tpw[i] = 0;
    for (int s = 0; s < pp; s++) {
        ppw[s] = 0;
        for (int i = 0; i < tp; i++) {
            const double v = rank_speed(t, p, s * tp + i, e);
            tpw[i] += v / pp;
            ppw[s] += v;
        }
    }
    return 1;
}

/* The cost of tp x pp (ep) with weights (NULL: even), into c (its weights copied in). 1 when the
 * model can be split so; 0 with why filled when not. */
static shoal_status cost_one(const struct shoal_model_shape *m, const struct shoal_topology *topo,
                             const struct shoal_cost_params *p, int tp, int pp, int ep, const double *tpw,
                             const double *ppw, struct shoal_layout_cost *c, int *made, char *why, size_t len) {
    struct shoal_plan *plan = NULL;
    struct shoal_plan_params pa = { .tp = tp, .pp = pp, .ep = ep, .tp_weights = tp > 1 ? tpw : NULL,
                                    .pp_weights = pp > 1 ? ppw : NULL };
    *made = 0;
    if (shoal_plan_make(&plan, m, &pa) != SHOAL_OK) {
        snprintf(why, len, "%s", shoal_last_error());
        return SHOAL_OK;
    }
    shoal_status rc = shoal_cost_layout(m, plan, topo, p, c);
    shoal_plan_destroy(plan);
    SHOAL_TRY(rc);
    if (pa.tp_weights && !(c->tp_weights = malloc(sizeof *c->tp_weights * (size_t)tp))) rc = SHOAL_NOMEM;
    if (pa.pp_weights && !(c->pp_weights = malloc(sizeof *c->pp_weights * (size_t)pp))) rc = SHOAL_NOMEM;
    if (rc != SHOAL_OK) {
        shoal_layout_cost_free(c);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    if (c->tp_weights) memcpy(c->tp_weights, tpw, sizeof *tpw * (size_t)tp);
    if (c->pp_weights) memcpy(c->pp_weights, ppw, sizeof *ppw * (size_t)pp);
    *made = 1;
    return SHOAL_OK;
}

static int better(const void *a, const void *b) {
    const struct shoal_layout_cost *x = a, *y = b;
    if (x->fits != y->fits) return y->fits - x->fits;
    if (x->tok_s != y->tok_s) return x->tok_s > y->tok_s ? -1 : 1;
    if (x->pp != y->pp) return x->pp - y->pp; /* equal speed: fewer stages */
    return x->ep - y->ep;
}

shoal_status shoal_cost_all(const struct shoal_model_shape *m, const struct shoal_topology *topo,
                            const struct shoal_cost_params *p, struct shoal_layout_cost **out, int *n) {
    *out = NULL;
    *n = 0;
    int N = topo->n_ranks;
    struct shoal_layout_cost *all = calloc(2 * (size_t)N, sizeof *all); /* each tp, and with ep */
    if (!all) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    double *w = malloc(sizeof *w * 2 * (size_t)N);
    if (!w) {
        free(all);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    int k = 0;
    char why[512] = "";
    shoal_status rc = SHOAL_OK;
    for (int i = 0; i < 2 * N && rc == SHOAL_OK; i++) {
        const int tp = i / 2 + 1, ep = i % 2;
        if (tp > N || N % tp || (ep && (tp < 2 || m->n_expert < tp))) continue;
        int made = 0;
        rc = cost_one(m, topo, p, tp, N / tp, ep, NULL, NULL, &all[k], &made, why, sizeof why);
        /* unequal hosts: shares in proportion to their speeds (flat out, over their share of
         * the time, and between), where that is faster */
        for (int e = 0; e < 3 && rc == SHOAL_OK && made && !ep; e++) {
            if (e > 0 && !all_measured(topo)) break; /* bandwidth alone: one set of shares */
            if (!speed_weights(topo, p, tp, N / tp, e * 0.5, w, w + N)) continue;
            struct shoal_layout_cost c;
            int ok = 0;
            char why2[512];
            rc = cost_one(m, topo, p, tp, N / tp, 0, w, w + N, &c, &ok, why2, sizeof why2);
            if (rc == SHOAL_OK && ok) {
                const int better_fit = c.fits > all[k].fits, worse_fit = c.fits < all[k].fits;
                if (better_fit || (!worse_fit && c.tok_s > all[k].tok_s)) {
                    shoal_layout_cost_free(&all[k]);
                    all[k] = c;
                } else {
                    shoal_layout_cost_free(&c);
                }
            }
        }
        k += made;
    }
    free(w);
    if (rc != SHOAL_OK) {
        shoal_layout_costs_free(all, k);
        return rc;
    }
    if (k == 0) {
        free(all);
        return shoal_errorf(SHOAL_INVALID, "no layout of %d ranks splits this model (%s)", N, why);
    }
    qsort(all, (size_t)k, sizeof *all, better);
    *out = all;
    *n = k;
    return SHOAL_OK;
}

void shoal_layout_costs_free(struct shoal_layout_cost *c, int n) {
    for (int i = 0; c && i < n; i++) shoal_layout_cost_free(&c[i]);
    free(c);
}

void shoal_cost_print_assumptions(FILE *f, int probed) {
    if (probed)
        fprintf(f, "compute: each part's layers and output head timed on this machine with the rank's "
                   "threads, scaled to its host's bandwidth; at least its bytes at %.0f%% of its share of "
                   "the bandwidth\n", BOUND_FRACTION * 100);
    else
        fprintf(f, "compute: bytes at %.0f%% of the memory bandwidth, %.0f us per layer (%.0f us with "
                   "several threads)\n", BW_FRACTION * 100, LAYER_COST * 1e6, LAYER_COST_MT * 1e6);
    fprintf(f, "assumed: %.0f us per token (a speculative step's tokens beyond the first %.0f%% of a decode "
               "step's compute each, its messages that many times the bytes); %.0f us per message beyond the link's latency, %.0f us more "
               "for a rank that waits on a pipeline hand-off, %.0f%% of a core for one that polls meanwhile, %.0f us per all-gather round for each thread beyond one per core; all-gathers by recursive doubling; %.0f MiB "
               "per process (+%.0f MiB under MPI); the context half full when decoding\n",
            TOKEN_COST * 1e6, STEP_TOKEN_SHARE * 100, MSG_COST * 1e6, WAKE_COST * 1e6, POLL_SHARE * 100, SWITCH_COST * 1e6, BASE_BYTES / 1048576, MPI_BYTES / 1048576);
}

/* ------------------------------------------------------------- offload */

shoal_status shoal_cost_offload(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                                const struct shoal_cost_params *p, uint64_t budget, int prefetch, int group,
                                struct shoal_offload_plan *out) {
    /* as a device backend holds them: each matrix in the model's block at a
     * 256-byte boundary (128 bytes of padding each, on average) */
    const int nl = pt->layer1 - pt->layer0;
    const double layer = layer_part_bytes(m, pt) + 7 * 128.0;
    uint64_t *lb = malloc(sizeof *lb * (size_t)(nl > 0 ? nl : 1));
    if (!lb) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int l = 0; l < nl; l++) lb[l] = (uint64_t)layer;
    /* the rest: norms, the embedding table (first stage), the head (last), the KV cache
     * and the activations (device buffers only, not the host's copies of the logits) */
    double fixed = m->norm_bytes * nl + (pt->last ? m->dim * 4.0 : 0) + 256;
    const int shared = pt->first && pt->last && m->tied_head && pt->v0 == 0 && pt->v1 == m->n_vocab;
    if (pt->first) fixed += m->embd_bytes + 128;
    if (pt->last && !shared) fixed += m->output_bytes * (pt->v1 - pt->v0) / m->n_vocab + 128;
    fixed += kv_bytes(m, pt, p) + act_block_bytes(m, pt, p);
    struct shoal_offload_params op = { budget, (uint64_t)fixed, nl, lb, prefetch, group };
    shoal_status rc = shoal_offload_plan_make(&op, out);
    free(lb);
    return rc;
}
