/*
 * cost — what a layout costs before it runs: per rank the memory it needs
 * and the decode speed the layout will reach, from a model of the hardware
 * (parallel/hosts: hosts with ranks, memory, memory bandwidth and cores;
 * the links between them), and the choice of the best layout that fits.
 * Pure functions, like the plan.
 *
 * The speed model, per generated token (decoding is memory-bound):
 *   a rank computes   its weight and KV bytes / its share of its host's
 *                     memory bandwidth (the stage's ranks on a host read at
 *                     once), or, when slower, what the kernels reach: its
 *                     part's layers and output head timed on this machine by
 *                     a probe with its thread count (scaled to its host's
 *                     bandwidth, and slowed where a host's ranks crowd its
 *                     cores); without a probe, bytes / (bandwidth x the
 *                     fraction kernels reach) + a fixed cost per layer;
 *   a stage takes     its slowest rank, plus two all-reduces per layer over
 *                     the links among its ranks (latency x rounds + bytes /
 *                     bandwidth);
 *   a token takes     every stage in turn, the hand-offs between stages and
 *                     the sampled candidates back to rank 0; and at least
 *                     each rank's compute over its host's share of the time
 *                     (shoal_host.cpu: a CPU quota, a busy machine), which a
 *                     rank that computes less than that share never feels.
 * The constants (the fraction of bandwidth, the fixed costs, shared-memory
 * latency) were measured on the development machines; `shoal plan` prints
 * what it assumed, and bench/bench_plan.py sets predictions against runs.
 */
#ifndef SHOAL_COST_H
#define SHOAL_COST_H

#include <stdio.h>

#include "../base/base.h"
#include "hosts.h"
#include "offload.h"
#include "plan.h"

struct shoal_cost_params {
    int n_ctx;          /* KV cache positions */
    int n_batch;        /* prompt tokens per forward pass (activations) */
    int rings;          /* windowed layers' rings (shoal_ring_slots): 1 for shoal run, a step's most sequences
                         * for shoal serve */
    double kv_head_bytes;   /* bytes of one head's K (or V) at one position (the KV type's) */
    double wire_elem;       /* bytes per all-reduced value: 8 (f64) ... 34/32 (q8) */
    double meta_bytes;      /* the model file's header every rank parses (and its index) */
    double tokenizer_bytes; /* rank 0's tokenizer (vocabulary and merges in tables) */
    double decode_fill;     /* the part of the cache a decoded token reads, on average (0..1) */
    int step_tokens;        /* tokens a decode step carries: 1 (0 too), or a speculative step's 1 + drafts */
    int threads;            /* threads each rank runs (shoal run -t), or 0: a host's cores / its ranks */
    /*
     * Measured compute, or NULL for bytes over bandwidth alone: the seconds
     * one decode step of one of part's layers (and its output head, for a
     * last stage) takes with `threads` threads on the machine that probes,
     * which reads probe_membw with all its cores and probe_corebw with one.
     * A host scales the times by the bandwidth the probe's threads had over
     * the bandwidth its rank's threads have; a host that was measured
     * (shoal_host.layer_s) by its own time for a whole layer over the
     * probe's for the same layers.
     */
    shoal_status (*probe)(void *user, const struct shoal_rank_part *part, int threads, double *layer_s,
                          double *head_s);
    void *probe_user;
    double probe_membw, probe_corebw;
    int probe_cores;
};

/* Memory of one rank, in bytes. */
struct shoal_rank_mem {
    double weights;     /* the layers' slices, the output head slice, norms */
    double embd;        /* the embedding rows a run touches (first stage) */
    double kv;          /* the KV cache for n_ctx positions */
    double act;         /* activations for a batch, logits */
    double base;        /* the process: code, libraries, MPI, thread stacks, tokenizer */
    double total;
};

struct shoal_layout_cost {
    int tp, pp, fits;
    int ep;                   /* a mixture of experts' experts whole over the tp ranks */
    double tok_s;             /* predicted decode tokens/s */
    /* the shares of unequal hosts (shoal_plan_params' weights): (tp) and (pp), or NULL for
     * even ones; the cost's own (shoal_layout_cost_free) */
    double *tp_weights, *pp_weights;
    double t_compute, t_comm; /* seconds per token on the critical path */
    struct shoal_rank_mem *mem; /* (tp * pp) */
    int worst_host;           /* the host with the least memory to spare */
    int worst_rank;           /* its rank that needs the most */
    double worst_need, worst_have; /* that host's need and memory */
};

/*
 * The cost of plan on topo (ranks in host order, as mpirun places them).
 * c->mem is allocated (shoal_layout_cost_free).
 */
shoal_status shoal_cost_layout(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                               const struct shoal_topology *topo, const struct shoal_cost_params *p,
                               struct shoal_layout_cost *c);
void shoal_layout_cost_free(struct shoal_layout_cost *c);

/*
 * Speculative decoding on plan (shoal run --lookup, --draft-model): k tokens
 * drafted a step, each accepted with probability accept once the one before
 * it was, so a step gives 1 + accept + ... + accept^k tokens; a step carries
 * k + 1 tokens (shoal_cost_params.step_tokens: its compute and its messages'
 * bytes grow, its latencies do not), after k drafts of draft_s seconds each
 * on rank 0 (a draft model; 0 for prompt lookup).
 */
struct shoal_spec_gain {
    double tokens_per_step, step_s, tok_s; /* with speculation */
    double plain_tok_s, speedup;           /* without, and tok_s over it */
};
shoal_status shoal_cost_speculation(const struct shoal_model_shape *m, const struct shoal_plan *plan,
                                    const struct shoal_topology *topo, const struct shoal_cost_params *p, int k,
                                    double accept, double draft_s, struct shoal_spec_gain *g);

/*
 * Every layout of topo's ranks that the model can be split into, costed;
 * *out (n entries, best first: fitting, then fastest) is owned by the
 * caller (shoal_layout_costs_free). SHOAL_INVALID when no layout splits the
 * model at all. Where the hosts differ in speed (their measured layer
 * times, else their bandwidth per rank), each layout is costed with even
 * shares and with shares in proportion to its ranks' speeds (tensor-
 * parallel shares by position in the stage, stages by the sum of their
 * ranks'), and the faster of the two is kept.
 */
shoal_status shoal_cost_all(const struct shoal_model_shape *m, const struct shoal_topology *topo,
                            const struct shoal_cost_params *p, struct shoal_layout_cost **out,
                            int *n);
void shoal_layout_costs_free(struct shoal_layout_cost *c, int n);

/*
 * A mixture of experts under ep: of a token's `used` experts (of n_expert, drawn
 * at random), the most that one of `groups` ranks holding equal runs of them
 * runs, on average: the whole experts the slowest rank reads (2 of 8 over 2
 * ranks: 1.43).
 */
double shoal_cost_max_experts(int n_expert, int used, int groups);

/* The constants of the model, printed so that a user sees what was assumed. */
void shoal_cost_print_assumptions(FILE *f, int probed);

/*
 * The offload plan of a rank with part pt under a device budget (see
 * parallel/offload.h), from the model's shape: its layers' slices as a device
 * backend holds them, and the rest of what it allocates on the device (norms,
 * embedding table, head, KV cache, activations); group: the ranks of its
 * offload group (1: none).
 */
shoal_status shoal_cost_offload(const struct shoal_model_shape *m, const struct shoal_rank_part *pt,
                                const struct shoal_cost_params *p, uint64_t budget, int prefetch, int group,
                                struct shoal_offload_plan *out);

#endif
