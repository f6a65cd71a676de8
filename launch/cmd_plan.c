/*
 * cmd_plan.c — `shoal plan`: what fits where and how fast it will go, before
 * a long download or a failed run; and the same choice for `shoal run`
 * when it is given no --tp/--pp (launch_auto_layout).
 */
#define _GNU_SOURCE
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../comm/comm.h"
#include "../cpu/cpu.h"
#include "../cpu/membw.h"
#include "../parallel/cost.h"
#include "../runtime/backend.h"
#include "../runtime/model.h"
#include "../shard/default_model.h"
#include "args.h"
#include "launch.h"

/* ------------------------------------------------------------ this machine */

shoal_status launch_measure_machine(struct shoal_host *h, size_t bytes) {
    memset(h, 0, sizeof *h);
    snprintf(h->name, sizeof h->name, "this machine");
    h->cpu = 1;
    h->cores = shoal_cpu_online_cores();
    if (h->cores < 1) h->cores = 1;
    h->mem = shoal_host_available();
    SHOAL_TRY(shoal_membw_measure(h->cores, bytes, 3, &h->membw));
    SHOAL_TRY(shoal_membw_measure(1, bytes, 3, &h->corebw));
    if (h->corebw > h->membw) h->membw = h->corebw;
    return SHOAL_OK;
}

/* What the model needs besides its tensors: the header every rank parses (with
 * an offset per string of the vocabulary) and rank 0's tokenizer. */
static void header_bytes(const struct shoal_gguf *g, double *meta, double *tok) {
    double strings = 0;
    for (int64_t i = 0; i < g->n_kv; i++)
        if (g->kv[i].type == SHOAL_GGUF_ARRAY && g->kv[i].arr_type == SHOAL_GGUF_STRING)
            strings += (double)g->kv[i].n;
    *meta = (double)g->data_offset + 8 * strings;
    *tok = 64 * strings; /* tokens and merges in hash tables */
}

/*
 * The cost parameters of a run of g with these settings (kv_type, wire: the
 * enums; n_ctx 0: as shoal run, the model's up to 4096), with the probe timing
 * parts on machine unless that is NULL (probe is filled in for it).
 */
static void cost_params(const struct shoal_gguf *g, const struct shoal_model_shape *m, int n_ctx_train,
                        int n_ctx, int n_batch, int rings, int kv_type, int wire, const struct shoal_host *machine,
                        struct launch_probe *probe, struct shoal_cost_params *p) {
    if (!n_ctx) n_ctx = n_ctx_train < 4096 ? n_ctx_train : 4096;
    struct shoal_kv_desc kd;
    shoal_kv_desc_init(&kd, kv_type, 1, m->head_dim, 1);
    double meta, tok;
    header_bytes(g, &meta, &tok);
    *p = (struct shoal_cost_params){ .n_ctx = n_ctx, .n_batch = n_batch, .rings = rings,
                                     .kv_head_bytes = (double)kd.head_bytes,
                                     .wire_elem = (double)shoal_wire_bytes(wire, 1024) / 1024,
                                     .meta_bytes = meta, .tokenizer_bytes = tok, .decode_fill = 0.5 };
    if (!machine) return;
    *probe = (struct launch_probe){ .g = g, .shape = m, .kv_type = kv_type, .simd = SHOAL_SIMD_AUTO,
                                    .pos = (int)(n_ctx * p->decode_fill) };
    p->probe = launch_probe;
    p->probe_user = probe;
    p->probe_membw = machine->membw;
    p->probe_corebw = machine->corebw;
    p->probe_cores = machine->cores;
}

shoal_status launch_auto_layout(const struct shoal_model_shape *m, const struct shoal_topology *topo,
                                const struct shoal_cost_params *p, struct shoal_layout_cost *best) {
    memset(best, 0, sizeof *best);
    struct shoal_layout_cost *all = NULL;
    int n = 0;
    SHOAL_TRY(shoal_cost_all(m, topo, p, &all, &n));
    *best = all[0];
    all[0].mem = NULL; /* now best's */
    all[0].tp_weights = all[0].pp_weights = NULL;
    shoal_layout_costs_free(all, n);
    return SHOAL_OK;
}

/* ------------------------------------------------------------------ output */

static const char *mib(char *b, size_t n, double bytes) { return shoal_fmt_bytes(b, n, bytes); }

static void print_ranks(const struct shoal_layout_cost *c, const struct shoal_topology *t) {
    char b[6][32];
    printf("\nper rank, tp %d x pp %d%s:\n", c->tp, c->pp, c->ep ? ", experts whole (--ep)" : "");
    printf("  %-4s  %-16s %5s %3s  %11s %11s %11s %11s %11s  %11s\n", "rank", "host", "stage", "tp",
           "weights", "embedding", "KV cache", "activations", "process", "total");
    for (int r = 0; r < c->tp * c->pp; r++) {
        const struct shoal_rank_mem *x = &c->mem[r];
        printf("  %-4d  %-16s %5d %3d  %11s %11s %11s %11s %11s  %11s\n", r,
               t->hosts[shoal_topology_host_of(t, r)].name, r / c->tp, r % c->tp,
               mib(b[0], 32, x->weights), mib(b[1], 32, x->embd), mib(b[2], 32, x->kv), mib(b[3], 32, x->act),
               mib(b[4], 32, x->base), mib(b[5], 32, x->total));
    }
    for (int h = 0, r0 = 0; h < t->n_hosts; r0 += t->hosts[h].ranks, h++) {
        double need = 0;
        for (int r = r0; r < r0 + t->hosts[h].ranks; r++) need += c->mem[r].total;
        printf("  host %s: %d rank%s need %s of %s%s\n", t->hosts[h].name, t->hosts[h].ranks,
               t->hosts[h].ranks == 1 ? "" : "s", mib(b[0], 32, need), mib(b[1], 32, t->hosts[h].mem),
               need > t->hosts[h].mem ? "  << does not fit" : "");
    }
}

static cJSON *json_cost(const struct shoal_layout_cost *c) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddNumberToObject(o, "tp", c->tp);
    cJSON_AddNumberToObject(o, "pp", c->pp);
    cJSON_AddBoolToObject(o, "ep", c->ep);
    cJSON_AddBoolToObject(o, "fits", c->fits);
    cJSON_AddNumberToObject(o, "decode_tok_s", c->tok_s);
    cJSON_AddNumberToObject(o, "compute_ms", c->t_compute * 1e3);
    cJSON_AddNumberToObject(o, "comm_ms", c->t_comm * 1e3);
    if (c->tp_weights) cJSON_AddItemToObject(o, "tp_weights", cJSON_CreateDoubleArray(c->tp_weights, c->tp));
    if (c->pp_weights) cJSON_AddItemToObject(o, "pp_weights", cJSON_CreateDoubleArray(c->pp_weights, c->pp));
    cJSON *ranks = cJSON_AddArrayToObject(o, "ranks");
    for (int r = 0; r < c->tp * c->pp; r++) {
        const struct shoal_rank_mem *x = &c->mem[r];
        cJSON *e = cJSON_CreateObject();
        cJSON_AddNumberToObject(e, "rank", r);
        cJSON_AddNumberToObject(e, "weights", x->weights);
        cJSON_AddNumberToObject(e, "embedding", x->embd);
        cJSON_AddNumberToObject(e, "kv", x->kv);
        cJSON_AddNumberToObject(e, "activations", x->act);
        cJSON_AddNumberToObject(e, "process", x->base);
        cJSON_AddNumberToObject(e, "total", x->total);
        cJSON_AddItemToArray(ranks, e);
    }
    return o;
}

size_t launch_weights_text(char *b, size_t len, const double *w, int n) {
    double most = 0;
    for (int i = 0; i < n; i++) most = fmax(most, w[i]);
    size_t at = 0;
    if (len) b[0] = 0;
    for (int i = 0; i < n; i++) {
        const int k = snprintf(at < len ? b + at : NULL, at < len ? len - at : 0, "%s%.3g", i ? "," : "",
                               most > 0 ? w[i] / most : 1);
        at += k > 0 ? (size_t)k : 0;
    }
    return at;
}

/* " --tp-weights a,b --pp-weights c,d" of a layout that shares unevenly (the largest 1), or "". */
static const char *shares_text(char *b, size_t len, const struct shoal_layout_cost *c) {
    size_t at = 0;
    b[0] = 0;
    for (int d = 0; d < 2 && at < len; d++) {
        const double *w = d ? c->pp_weights : c->tp_weights;
        if (!w) continue;
        const int k = snprintf(b + at, len - at, " --%s-weights ", d ? "pp" : "tp");
        at += k > 0 ? (size_t)k : 0;
        if (at < len) at += launch_weights_text(b + at, len - at, w, d ? c->pp : c->tp);
    }
    if (at >= len && len > 4) memcpy(b + len - 4, "...", 4); /* cut, and says so */
    return b;
}

/* ------------------------------------------------------------ what would fit */

/* Whether some layout of n ranks on one host like h, per bytes each, fits. */
static int fits_with(const struct shoal_model_shape *m, int n, double per, const struct shoal_host *h,
                     const struct shoal_cost_params *p) {
    struct shoal_topology t;
    if (shoal_hosts_single(n, per, h, &t) != SHOAL_OK) return 0;
    struct shoal_cost_params q = *p;
    q.probe = NULL; /* memory is all that matters here */
    struct shoal_layout_cost c;
    int fits = launch_auto_layout(m, &t, &q, &c) == SHOAL_OK && c.fits;
    shoal_layout_cost_free(&c);
    shoal_topology_free(&t);
    return fits;
}

static void suggest(const struct shoal_model_shape *m, const struct shoal_topology *t,
                    const struct shoal_cost_params *p, const struct shoal_layout_cost *best, int kv_type) {
    char b[2][32];
    const struct shoal_host *h = &t->hosts[best->worst_host];
    printf("\nnothing fits: the best layout, tp %d x pp %d, needs %s on host %s, which has %s.\n", best->tp,
           best->pp, mib(b[0], 32, best->worst_need), h->name, mib(b[1], 32, best->worst_have));
    printf("it would fit with any of:\n");
    double per = h->mem / h->ranks;
    printf("  - %.0fM per rank on %s (now %s)\n", ceil(best->worst_need / h->ranks * 1.02 / 1048576), h->name,
           mib(b[1], 32, per));
    /* more ranks of the same memory (each host as the smallest) */
    for (int n = t->n_ranks + 1; n <= 4096; n = n < 64 ? n + 1 : n * 2) {
        if (fits_with(m, n, per, h, p)) {
            printf("  - %d ranks of %s each (shoal plan --ranks %d --mem-per-rank %.0fM)\n", n, mib(b[0], 32, per),
                   n, floor(per / 1048576));
            break;
        }
    }
    /* a shorter context (memory alone: no probe) */
    struct shoal_cost_params q = *p;
    q.probe = NULL;
    int lo = 0, hi = p->n_ctx;
    while (hi - lo > 1) {
        q.n_ctx = (lo + hi) / 2;
        struct shoal_layout_cost c;
        int fits = launch_auto_layout(m, t, &q, &c) == SHOAL_OK && c.fits;
        shoal_layout_cost_free(&c);
        if (fits) lo = q.n_ctx;
        else hi = q.n_ctx;
    }
    if (lo >= 16) printf("  - a context of %d tokens (-c %d)\n", lo, lo);
    if (kv_type != SHOAL_KV_Q8) {
        struct shoal_kv_desc kd;
        shoal_kv_desc_init(&kd, SHOAL_KV_Q8, 1, m->head_dim, 1);
        q = *p;
        q.probe = NULL;
        q.kv_head_bytes = (double)kd.head_bytes;
        struct shoal_layout_cost c;
        int fits = launch_auto_layout(m, t, &q, &c) == SHOAL_OK && c.fits;
        shoal_layout_cost_free(&c);
        if (fits) printf("  - an 8-bit KV cache (--kv-type q8)\n");
    }
}

/* ------------------------------------------------------------------- entry */

/* A host file's text: no NUL bytes, at most 16 MiB. */
static shoal_status read_text(const char *path, char **out) {
    size_t n;
    SHOAL_TRY(launch_read_file(path, out, &n));
    const char *why = n > (16u << 20) ? "too large for a host file" : strlen(*out) != n ? "not a text file (a NUL byte)" : NULL;
    if (!why) return SHOAL_OK;
    free(*out);
    *out = NULL;
    return shoal_errorf(SHOAL_FORMAT, "%s: %s", path, why);
}

shoal_status launch_read_hosts(const char *path, const struct shoal_host *machine, struct shoal_topology *t) {
    char *text = NULL;
    SHOAL_TRY(read_text(path, &text));
    shoal_status rc = shoal_hosts_parse(text, path, machine, t);
    free(text);
    return rc;
}

shoal_status launch_choose_layout(const struct shoal_gguf *g, const struct launch_layout_params *lp,
                                  struct shoal_layout_cost *best, struct launch_start *start) {
    memset(best, 0, sizeof *best);
    struct shoal_model_shape shape;
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, g));
    SHOAL_TRY(shoal_model_shape(&shape, g));
    struct shoal_host machine;
    SHOAL_TRY(launch_measure_machine(&machine, (size_t)128 << 20));
    struct shoal_topology t;
    const int n_ranks = lp->n_ranks;
    int local_ranks = lp->local_ranks;
    if (lp->hosts_path || lp->hosts_text) {
        const char *name = lp->hosts_path ? lp->hosts_path : "(the cluster as measured)";
        if (lp->hosts_path) SHOAL_TRY(launch_read_hosts(lp->hosts_path, &machine, &t));
        else SHOAL_TRY(shoal_hosts_parse(lp->hosts_text, name, &machine, &t));
        if (t.n_ranks != n_ranks) {
            int n = t.n_ranks;
            shoal_topology_free(&t);
            return shoal_errorf(SHOAL_INVALID, "%s describes %d ranks but %d are running", name, n, n_ranks);
        }
    } else {
        /* hosts like this one, local_ranks each, joined by what a home LAN has */
        if (local_ranks < 1 || n_ranks % local_ranks) local_ranks = n_ranks;
        int n_hosts = n_ranks / local_ranks;
        char text[256 + 96 * 64];
        int at = 0;
        for (int h = 0; h < n_hosts && h < 64; h++)
            at += snprintf(text + at, sizeof text - (size_t)at, "host h%d ranks=%d mem=%.0f\n", h,
                           h == 63 ? n_ranks - 63 * local_ranks : local_ranks, machine.mem > 0 ? machine.mem : 1e12);
        snprintf(text + at, sizeof text - (size_t)at, "link * * bw=%s lat=%s\n", LAUNCH_LINK_BW, LAUNCH_LINK_LAT);
        SHOAL_TRY(shoal_hosts_parse(text, "(the ranks running)", &machine, &t));
    }
    struct shoal_cost_params cp;
    struct launch_probe probe;
    cost_params(g, &shape, hp.n_ctx_train, lp->n_ctx, lp->n_batch, lp->rings, lp->kv_type, lp->wire, &machine,
                &probe, &cp);
    cp.threads = lp->threads;
    shoal_status rc = launch_auto_layout(&shape, &t, &cp, best);
    if (rc == SHOAL_OK && start) {
        /* the same layout with the context empty: decode slows as the cache fills, and a run
         * compares its pace with the prediction at its own positions */
        struct launch_probe *p0 = malloc(sizeof *p0);
        struct shoal_plan *plan = NULL;
        const struct shoal_plan_params pa = { .tp = best->tp, .pp = best->pp, .ep = best->ep,
                                              .tp_weights = best->tp_weights, .pp_weights = best->pp_weights };
        if (!p0) rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        if (rc == SHOAL_OK) rc = shoal_plan_make(&plan, &shape, &pa);
        if (rc == SHOAL_OK) {
            *p0 = probe;
            p0->n = 0;
            p0->pos = 0;
            struct shoal_cost_params c0 = cp;
            c0.decode_fill = 0;
            c0.probe_user = p0;
            struct shoal_layout_cost c;
            rc = shoal_cost_layout(&shape, plan, &t, &c0, &c);
            if (rc == SHOAL_OK) start->tok_s = c.tok_s;
            shoal_layout_cost_free(&c);
        }
        start->n_ctx = cp.n_ctx;
        shoal_plan_destroy(plan);
        free(p0);
        if (rc != SHOAL_OK) shoal_layout_cost_free(best);
    }
    shoal_topology_free(&t);
    return rc;
}

/*
 * --probe-cluster: the world's ranks measure their hosts and links
 * (launch_probe_cluster); rank 0 writes the host file to path, under a
 * temporary name renamed when whole. *rank: this rank's.
 */
static shoal_status probe_cluster(int *argc, char ***argv, const char *model, int threads, int kv_type, int n_ctx,
                                  const char *path, int *rank) {
    struct shoal_comm *world = NULL;
    SHOAL_TRY(shoal_comm_init_world(&world, argc, argv));
    *rank = shoal_comm_rank(world);
    struct launch_cluster cl = { 0 };
    const struct launch_cluster_params cp = { .model = model, .threads = threads, .kv_type = kv_type, .n_ctx = n_ctx };
    shoal_status rc = launch_probe_cluster(world, &cp, &cl);
    if (rc == SHOAL_OK && *rank == 0) {
        launch_cluster_print(stderr, &cl);
        char tmp[4200];
        snprintf(tmp, sizeof tmp, "%s.tmp%ld", path, (long)getpid());
        FILE *f = fopen(tmp, "w");
        if (!f) rc = shoal_errorf(SHOAL_IO, "%s: cannot write: %s", tmp, strerror(errno));
        else {
            const int bad = fputs(cl.text, f) < 0;
            if ((fclose(f) != 0 || bad) && rc == SHOAL_OK) rc = shoal_errorf(SHOAL_IO, "%s: write failed", tmp);
            if (rc == SHOAL_OK && rename(tmp, path) != 0)
                rc = shoal_errorf(SHOAL_IO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
            if (rc != SHOAL_OK) unlink(tmp);
        }
        if (rc == SHOAL_OK) fprintf(stderr, "shoal plan: wrote the host file %s (give it back with --hosts)\n", path);
    }
    launch_cluster_free(&cl);
    shoal_comm_finalize(world);
    return rc;
}

int cmd_plan(int argc, char **argv) {
    const char *model = NULL, *hosts_path = NULL, *kv_name = "f16", *comm = "f64", *membw_s = NULL,
               *corebw_s = NULL, *probe_out = NULL, *tpw_s = NULL, *ppw_s = NULL;
    int ranks = 0, n_ctx = 0, n_batch = 512, cores = 0, tp = 0, pp = 0, json = 0, no_probe = 0, ep = 0, threads = 0;
    uint64_t device_mem = 0;
    int prefetch = 1, group = 1;
    struct shoal_offload_plan *off = NULL; /* (tp * pp) of the shown layout, with --device-mem */
    struct shoal_layout_cost given = { 0 }; /* --tp-weights/--pp-weights: the layout shown */
    uint64_t mem_per_rank = 0;
    int spec_k = 0;
    float spec_accept = 0.6f, spec_draft_ms = 0;
    struct shoal_spec_gain spec = { 0 };
    const struct opt opts[] = {
        { "--model", 'm', OPT_STR, &model, "FILE", "GGUF model (default: the default model, as shoal run)" },
        { "--hosts", 0, OPT_STR, &hosts_path, "FILE", "the hosts: ranks, memory, bandwidth, links (see below)" },
        { "--ranks", 0, OPT_INT, &ranks, "N", "N ranks on this machine (instead of --hosts)" },
        { "--mem-per-rank", 0, OPT_SIZE, &mem_per_rank, "SIZE", "memory each rank may use, e.g. 4G (default: this machine's available memory / N)" },
        { "--ctx-size", 'c', OPT_INT, &n_ctx, "N", "context to plan for (default: as shoal run, the model's up to 4096)" },
        { "--batch-size", 'b', OPT_INT, &n_batch, "N", "prompt tokens per forward pass (default 512)" },
        { "--kv-type", 0, OPT_STR, &kv_name, "TYPE", "KV cache type: f32, f16 or q8 (default f16)" },
        { "--comm-dtype", 0, OPT_STR, &comm, "TYPE", "all-reduce payload: f64, f32, f16, bf16, q8 (default f64)" },
        { "--membw", 0, OPT_STR, &membw_s, "RATE", "read bandwidth of a host with all cores, e.g. 50GB/s (default: measured here)" },
        { "--corebw", 0, OPT_STR, &corebw_s, "RATE", "read bandwidth of one core (default: measured here)" },
        { "--cores", 0, OPT_INT, &cores, "N", "cores of a host (default: this machine's)" },
        { "--tp", 0, OPT_INT, &tp, "N", "show this layout's ranks (with --pp) rather than the best one's" },
        { "--ep", 0, OPT_FLAG, &ep, NULL, "with --tp: the layout with a mixture of experts' experts whole over the tp ranks" },
        { "--pp", 0, OPT_INT, &pp, "N", "pipeline stages of the layout to show" },
        { "--tp-weights", 0, OPT_STR, &tpw_s, "W,W..", "with --tp/--pp: show the layout with these shares of a stage's ranks (shoal run's; 1,1: even) rather than the planner's" },
        { "--pp-weights", 0, OPT_STR, &ppw_s, "W,W..", "with --tp/--pp: show the layout with these shares of the stages (1,1: even)" },
        { "--no-probe", 0, OPT_FLAG, &no_probe, NULL, "predict compute from bytes and bandwidth alone, without timing a layer here" },
        { "--device-mem", 0, OPT_SIZE, &device_mem, "SIZE", "device memory per rank (shoal run --device-mem): which layers stay resident, which stream, the device peak and the bytes copied per token" },
        { "--prefetch", 0, OPT_INT, &prefetch, "N", "with --device-mem: layers fetched ahead (default 1)" },
        { "--offload-group", 0, OPT_INT, &group, "G", "with --device-mem: the shown layout's ranks replicated G times (shoal run --offload-group), each holding 1/G of every streamed layer and copying only that" },
        { "--probe-cluster", 0, OPT_STR, &probe_out, "FILE", "under mpirun, with the ranks of the run: measure the hosts they run on and the links between them (what shoal run does when given no --tp/--pp), write that host file to FILE to keep and edit, and plan on it" },
        { "--threads", 't', OPT_INT, &threads, "N", "threads each rank runs (shoal run -t; default: a host's cores / its ranks)" },
        { "--spec-draft", 0, OPT_INT, &spec_k, "K", "speculative decoding (shoal run --lookup K, or --draft-model with --draft-max K): the shown layout's decoding with K tokens drafted a step" },
        { "--spec-accept", 0, OPT_FLOAT, &spec_accept, "A", "with --spec-draft: the chance that a draft is accepted once the one before it was (shoal run -v says how many were; default 0.6)" },
        { "--spec-draft-ms", 0, OPT_FLOAT, &spec_draft_ms, "T", "with --spec-draft: a draft model's milliseconds a token on rank 0 (default 0: prompt lookup, whose drafts cost nothing)" },
        { "--json", 0, OPT_FLAG, &json, NULL, "print JSON (for scripts) instead of tables" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse(
        "shoal plan", "[-m MODEL.gguf] (--hosts FILE | --ranks N [--mem-per-rank SIZE] | --probe-cluster FILE)",
        "Says, before a run, which tp x pp layouts fit the hosts' memory and how fast\n"
        "each will decode: per rank the memory it needs (weights, KV cache for the\n"
        "context, activations, the process) and the predicted tokens/s, from the\n"
        "bytes each rank reads per token, each host's memory bandwidth, and the\n"
        "messages over each link. Exits 1 when nothing fits, saying what would.\n"
        "shoal run chooses its layout the same way when given no --tp/--pp, on\n"
        "the cluster as it measures it at start-up (unless --hosts describes it).\n"
        "Under mpirun, --probe-cluster FILE takes those measurements for you\n"
        "(mpirun -np 4 --hostfile H shoal plan -m M -t 1 --probe-cluster hosts.txt).\n\n"
        "A host file, one statement per line (# starts a comment):\n"
        "  host NAME ranks=N mem=SIZE [ram=SIZE] [membw=RATE] [corebw=RATE] [cores=N]\n"
        "       [layer=TIME] [cpu=F]   (a rank's time for one layer of the model's decode\n"
        "       step, and its share of the time when busy: --probe-cluster measures them)\n"
        "  link NAME NAME bw=RATE lat=TIME     (between two hosts)\n"
        "  link * * bw=RATE lat=TIME           (any pair not named)\n"
        "  local bw=RATE lat=TIME              (ranks of one host)\n"
        "SIZE 16G, 512M; RATE 40GB/s, 1Gbit/s; TIME 1ms, 200us (lat: one way, half a\n"
        "ping's round trip). Ranks are numbered host by host as mpirun --hostfile\n"
        "places them. membw/corebw/cores left out are this machine's, measured.",
        opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
#define USAGE(...) do { fprintf(stderr, __VA_ARGS__); return 2; } while (0)
    if (!!hosts_path + !!ranks + !!probe_out != 1)
        USAGE("shoal plan: give one of --hosts FILE, --ranks N or --probe-cluster FILE (see shoal plan --help)\n");
    if (threads < 0 || threads > SHOAL_HOSTS_MAX_RANKS) USAGE("shoal plan: --threads must be 1..%d\n", SHOAL_HOSTS_MAX_RANKS);
    if (probe_out && (membw_s || corebw_s || cores))
        USAGE("shoal plan: --probe-cluster measures bandwidth and cores; leave out --membw, --corebw and --cores\n");
    if (spec_k < 0 || spec_k > 64 || !(spec_accept >= 0 && spec_accept <= 1) || !(spec_draft_ms >= 0))
        USAGE("shoal plan: --spec-draft must be 1..64, --spec-accept 0..1, --spec-draft-ms >= 0\n");
    if (!spec_k && (spec_accept != 0.6f || spec_draft_ms != 0))
        USAGE("shoal plan: --spec-accept and --spec-draft-ms go with --spec-draft K\n");
    if (ranks < 0 || n_ctx < 0 || n_batch < 1 || cores < 0 || tp < 0 || pp < 0)
        USAGE("shoal plan: --ranks, -c, -b, --cores, --tp and --pp must be positive\n");
    if (mem_per_rank && hosts_path) USAGE("shoal plan: --mem-per-rank goes with --ranks; a host file says mem=\n");
    int kv_type = shoal_kv_type_from_name(kv_name), wire = shoal_wire_from_name(comm);
    if (kv_type < 0) USAGE("shoal plan: --kv-type '%s' is not one of f32, f16, q8\n", kv_name);
    if (wire < 0) USAGE("shoal plan: --comm-dtype '%s' is not one of f64, f32, f16, bf16, q8\n", comm);
    double membw = membw_s ? shoal_parse_rate(membw_s) : 0, corebw = corebw_s ? shoal_parse_rate(corebw_s) : 0;
    if (membw_s && !(membw > 0)) USAGE("shoal plan: --membw '%s' is not a rate such as 50GB/s\n", membw_s);
    if (corebw_s && !(corebw > 0)) USAGE("shoal plan: --corebw '%s' is not a rate such as 20GB/s\n", corebw_s);
    if (!!tp != !!pp) USAGE("shoal plan: give --tp and --pp together\n");
    double tpw[ARGS_MAX_WEIGHTS], ppw[ARGS_MAX_WEIGHTS];
    int n_tpw = 0, n_ppw = 0;
    if ((tpw_s || ppw_s) && !tp) USAGE("shoal plan: --tp-weights and --pp-weights go with --tp and --pp\n");
    if (tpw_s && (n_tpw = args_parse_weights(tpw_s, tpw, ARGS_MAX_WEIGHTS)) != tp)
        USAGE("shoal plan: --tp-weights '%s' is not %d positive numbers, one a tensor-parallel rank\n", tpw_s, tp);
    if (ppw_s && (n_ppw = args_parse_weights(ppw_s, ppw, ARGS_MAX_WEIGHTS)) != pp)
        USAGE("shoal plan: --pp-weights '%s' is not %d positive numbers, one a stage\n", ppw_s, pp);
    if (ep && !tp) USAGE("shoal plan: --ep goes with --tp and --pp (the layout to show)\n");
    if (prefetch < 0 || prefetch > 64) USAGE("shoal plan: --prefetch must be 0..64\n");
    if (group < 1 || group > 4096) USAGE("shoal plan: --offload-group must be 1..4096\n");
    if (group > 1 && !device_mem) USAGE("shoal plan: --offload-group goes with --device-mem\n");
    shoal_log_init(SHOAL_LOG_WARN, 0, getenv("SHOAL_DEBUG"));

    char dflt[4096];
    shoal_status rc = SHOAL_OK;
    if (!model) {
        if ((rc = shoal_default_model(dflt, sizeof dflt)) != SHOAL_OK) return launch_fail("plan", rc);
        model = dflt;
    }
    if (probe_out) {
        /* every rank measures; rank 0 writes the host file and plans on it, the others are done */
        int rank = 0;
        if ((rc = probe_cluster(&argc, &argv, model, threads, shoal_kv_type_from_name(kv_name), n_ctx, probe_out,
                                &rank)) != SHOAL_OK)
            return launch_fail("plan", rc);
        if (rank != 0) return 0;
        hosts_path = probe_out;
    }
    struct shoal_gguf *g = NULL;
    struct shoal_model_shape shape;
    struct shoal_hparams hp;
    struct shoal_topology topo = { 0 };
    struct shoal_layout_cost *all = NULL;
    int n_all = 0, status = 1;
    struct shoal_host machine;
    SHOAL_TRY_GOTO(shoal_gguf_open(&g, model), rc, fail);
    SHOAL_TRY_GOTO(shoal_hparams_read(&hp, g), rc, fail);
    if (hp.sharded) {
        rc = shoal_errorf(SHOAL_INVALID, "%s is one rank's shard: plan with the whole model", model);
        goto fail;
    }
    SHOAL_TRY_GOTO(shoal_model_shape(&shape, g), rc, fail);
    /* this machine, measured unless the flags say */
    if (!membw || !corebw) {
        SHOAL_TRY_GOTO(launch_measure_machine(&machine, (size_t)256 << 20), rc, fail);
    } else {
        memset(&machine, 0, sizeof machine);
        machine.cores = shoal_cpu_online_cores();
        machine.mem = shoal_host_available();
    }
    int measured = !membw;
    if (cores) machine.cores = cores;
    if (membw) machine.membw = membw;
    if (corebw) machine.corebw = corebw;
    else if (membw) machine.corebw = membw / machine.cores;
    if (hosts_path) {
        SHOAL_TRY_GOTO(launch_read_hosts(hosts_path, &machine, &topo), rc, fail);
    } else {
        double per = mem_per_rank ? (double)mem_per_rank : machine.mem / ranks;
        SHOAL_TRY_GOTO(shoal_hosts_single(ranks, per, &machine, &topo), rc, fail);
    }
    struct shoal_cost_params cp;
    struct launch_probe probe;
    /* what shoal run would use: one sequence, so windowed layers keep rings */
    cost_params(g, &shape, hp.n_ctx_train, n_ctx, n_batch, 1, kv_type, wire, no_probe ? NULL : &machine, &probe, &cp);
    cp.threads = threads;
    n_ctx = cp.n_ctx;
    SHOAL_TRY_GOTO(shoal_cost_all(&shape, &topo, &cp, &all, &n_all), rc, fail);
    const struct shoal_layout_cost *show = &all[0];
    if (tp) {
        show = NULL;
        for (int i = 0; i < n_all; i++)
            if (all[i].tp == tp && all[i].pp == pp && all[i].ep == ep) show = &all[i];
        if (!show) {
            rc = shoal_errorf(SHOAL_INVALID, "tp %d x pp %d%s is not a layout of these %d ranks that splits "
                              "this model (see the table without --tp/--pp)", tp, pp, ep ? " with --ep" : "",
                              topo.n_ranks);
            goto fail;
        }
    }
    if (n_tpw || n_ppw) { /* the layout with the shares given */
        struct shoal_plan *sp = NULL;
        const struct shoal_plan_params spp = { .tp = tp, .pp = pp, .ep = ep, .tp_weights = n_tpw ? tpw : NULL,
                                               .pp_weights = n_ppw ? ppw : NULL };
        SHOAL_TRY_GOTO(shoal_plan_make(&sp, &shape, &spp), rc, fail);
        rc = shoal_cost_layout(&shape, sp, &topo, &cp, &given);
        shoal_plan_destroy(sp);
        if (rc != SHOAL_OK) goto fail;
        if ((n_tpw && !(given.tp_weights = malloc(sizeof tpw))) || (n_ppw && !(given.pp_weights = malloc(sizeof ppw)))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto fail;
        }
        if (n_tpw) memcpy(given.tp_weights, tpw, sizeof *tpw * (size_t)tp);
        if (n_ppw) memcpy(given.pp_weights, ppw, sizeof *ppw * (size_t)pp);
        show = &given;
    }
    if (spec_k) { /* the shown layout, speculating */
        struct shoal_plan *sp = NULL;
        const struct shoal_plan_params spp = { .tp = show->tp, .pp = show->pp, .ep = show->ep,
                                               .tp_weights = show->tp_weights, .pp_weights = show->pp_weights };
        SHOAL_TRY_GOTO(shoal_plan_make(&sp, &shape, &spp), rc, fail);
        rc = shoal_cost_speculation(&shape, sp, &topo, &cp, spec_k, spec_accept, spec_draft_ms / 1e3, &spec);
        shoal_plan_destroy(sp);
        if (rc != SHOAL_OK) goto fail;
    }
    double weights = 0;
    for (int64_t i = 0; i < g->n_tensors; i++) weights += (double)g->tensors[i].nbytes;
    /* offload of the shown layout's ranks under --device-mem */
    if (device_mem) {
        struct shoal_plan *sp = NULL;
        struct shoal_plan_params spp = { .tp = show->tp, .pp = show->pp, .ep = show->ep };
        if (!(off = calloc((size_t)(show->tp * show->pp), sizeof *off))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            goto fail;
        }
        rc = shoal_plan_make(&sp, &shape, &spp);
        for (int r = 0; rc == SHOAL_OK && r < show->tp * show->pp; r++) {
            rc = shoal_cost_offload(&shape, &sp->part[r], &cp, device_mem, prefetch, group, &off[r]);
            if (rc != SHOAL_OK) shoal_error_prefix("rank %d", r);
        }
        shoal_plan_destroy(sp);
        if (rc != SHOAL_OK) goto fail;
    }

    if (json) {
        cJSON *o = cJSON_CreateObject();
        cJSON_AddStringToObject(o, "model", model);
        cJSON_AddNumberToObject(o, "weight_bytes", weights);
        cJSON_AddNumberToObject(o, "n_ctx", n_ctx);
        cJSON_AddStringToObject(o, "kv_type", kv_name);
        cJSON_AddStringToObject(o, "comm_dtype", comm);
        cJSON *hs = cJSON_AddArrayToObject(o, "hosts");
        for (int h = 0; h < topo.n_hosts; h++) {
            cJSON *e = cJSON_CreateObject();
            cJSON_AddStringToObject(e, "name", topo.hosts[h].name);
            cJSON_AddNumberToObject(e, "ranks", topo.hosts[h].ranks);
            cJSON_AddNumberToObject(e, "mem", topo.hosts[h].mem);
            cJSON_AddNumberToObject(e, "membw", topo.hosts[h].membw);
            cJSON_AddNumberToObject(e, "corebw", topo.hosts[h].corebw);
            cJSON_AddNumberToObject(e, "cores", topo.hosts[h].cores);
            cJSON_AddItemToArray(hs, e);
        }
        cJSON_AddBoolToObject(o, "fits", all[0].fits);
        cJSON_AddItemToObject(o, "best", json_cost(&all[0]));
        cJSON_AddItemToObject(o, "shown", json_cost(show)); /* --tp/--pp, else the best */
        if (off) {
            cJSON *oa = cJSON_AddArrayToObject(o, "offload"); /* the shown layout's ranks */
            for (int r = 0; r < show->tp * show->pp; r++) {
                cJSON *e = cJSON_CreateObject();
                cJSON_AddNumberToObject(e, "rank", r);
                cJSON_AddNumberToObject(e, "layers", off[r].n_layers);
                cJSON_AddNumberToObject(e, "resident", off[r].n_resident);
                cJSON_AddNumberToObject(e, "buffers", off[r].n_buffers);
                cJSON_AddNumberToObject(e, "buffer_bytes", (double)off[r].buffer_bytes);
                cJSON_AddNumberToObject(e, "device_peak", (double)off[r].peak_bytes);
                cJSON_AddNumberToObject(e, "copy_bytes_per_token", (double)off[r].copy_bytes);
                cJSON_AddNumberToObject(e, "offload_group", off[r].group);
                cJSON_AddNumberToObject(e, "gather_bytes_per_token", (double)off[r].gather_bytes);
                cJSON_AddNumberToObject(e, "host_bytes", (double)off[r].host_bytes);
                cJSON_AddItemToArray(oa, e);
            }
        }
        if (spec_k) {
            cJSON *e = cJSON_AddObjectToObject(o, "speculation"); /* the shown layout's */
            cJSON_AddNumberToObject(e, "drafts", spec_k);
            cJSON_AddNumberToObject(e, "accept", spec_accept);
            cJSON_AddNumberToObject(e, "draft_ms", spec_draft_ms);
            cJSON_AddNumberToObject(e, "tokens_per_step", spec.tokens_per_step);
            cJSON_AddNumberToObject(e, "step_ms", spec.step_s * 1e3);
            cJSON_AddNumberToObject(e, "decode_tok_s", spec.tok_s);
            cJSON_AddNumberToObject(e, "plain_decode_tok_s", spec.plain_tok_s);
            cJSON_AddNumberToObject(e, "speedup", spec.speedup);
        }
        cJSON *ls = cJSON_AddArrayToObject(o, "layouts");
        for (int i = 0; i < n_all; i++) cJSON_AddItemToArray(ls, json_cost(&all[i]));
        char *s = cJSON_Print(o);
        if (s) puts(s);
        free(s);
        cJSON_Delete(o);
    } else {
        char b[3][32];
        printf("model: %s: %s, %d layers, dim %d, %d heads (%d KV), %s of weights\n", model, hp.arch,
               shape.n_layers, shape.dim, shape.n_heads, shape.n_kv_heads, mib(b[0], 32, weights));
        printf("context %d (%s KV cache), batch %d, all-reduce %s\n", n_ctx, kv_name, n_batch, comm);
        for (int h = 0; h < topo.n_hosts; h++) {
            const struct shoal_host *x = &topo.hosts[h];
            char lt[96] = "";
            if (x->layer_s > 0)
                snprintf(lt, sizeof lt, ", a layer %.3f ms, %.0f%% of the time when busy", x->layer_s * 1e3,
                         (x->cpu > 0 ? x->cpu : 1) * 100);
            printf("host %s: %d rank%s, %d cores, %s, reads %.1f GB/s (one core %.1f GB/s)%s%s\n", x->name,
                   x->ranks, x->ranks == 1 ? "" : "s", x->cores, mib(b[0], 32, x->mem), x->membw / 1e9,
                   x->corebw / 1e9, lt, measured && x->membw == machine.membw ? ", measured here" : "");
        }
        printf("\n  %-9s %-5s %12s %11s %9s  %s\n", "tp x pp", "fits", "decode tok/s", "compute ms", "comm ms",
               "most memory on a rank");
        for (int i = 0; i < n_all; i++) {
            const struct shoal_layout_cost *c = &all[i];
            double most = 0;
            int at = 0;
            for (int r = 0; r < c->tp * c->pp; r++)
                if (c->mem[r].total > most) most = c->mem[r].total, at = r;
            char lay[24], sh[160];
            snprintf(lay, sizeof lay, "%d x %d%s", c->tp, c->pp, c->ep ? " ep" : "");
            printf("  %-9s %-5s %12.1f %11.2f %9.2f  %s (rank %d)%s\n", lay, c->fits ? "yes" : "no", c->tok_s,
                   c->t_compute * 1e3, c->t_comm * 1e3, mib(b[0], 32, most), at, shares_text(sh, sizeof sh, c));
        }
        print_ranks(show, &topo);
        if (off) {
            printf("\ndevice memory, %s per rank, prefetch %d", mib(b[0], 32, (double)device_mem), prefetch);
            if (group > 1)
                printf(", offload groups of %d (each rank below replicated %d times, %d ranks in all)", group, group,
                       group * show->tp * show->pp);
            printf(":\n");
            for (int r = 0; r < show->tp * show->pp; r++) {
                printf("  rank %d: %d of %d layers resident, %d streamed through %d buffer%s of %s; device peak "
                       "%s; %s copied host to device per token", r, off[r].n_resident, off[r].n_layers,
                       off[r].n_layers - off[r].n_resident, off[r].n_buffers, off[r].n_buffers == 1 ? "" : "s",
                       mib(b[1], 32, (double)off[r].buffer_bytes), mib(b[2], 32, (double)off[r].peak_bytes),
                       mib(b[0], 32, (double)off[r].copy_bytes));
                if (group > 1)
                    printf(", %s gathered from its group; %s of streamed layers in host memory",
                           mib(b[1], 32, (double)off[r].gather_bytes), mib(b[2], 32, (double)off[r].host_bytes));
                printf("\n");
            }
        }
        if (spec_k) {
            char dr[64] = "";
            if (spec_draft_ms > 0) snprintf(dr, sizeof dr, ", after %d drafts of %.2f ms", spec_k, spec_draft_ms);
            printf("\nspeculative decoding, tp %d x pp %d, %d tokens drafted a step, each accepted at %.2f once the one "
                   "before was: %.2f tokens a step of %.2f ms (%d tokens' compute and bytes%s): predicted %.1f "
                   "tokens/s, %.2fx the %.1f without\n", show->tp, show->pp, spec_k, spec_accept,
                   spec.tokens_per_step, spec.step_s * 1e3, spec_k + 1, dr, spec.tok_s, spec.speedup,
                   spec.plain_tok_s);
        }
        printf("\n");
        shoal_cost_print_assumptions(stdout, !no_probe);
        char dm[96] = "", gm[32] = "";
        if (group > 1) snprintf(gm, sizeof gm, " --offload-group %d", group);
        if (device_mem)
            snprintf(dm, sizeof dm, " --device-mem %.0fK --prefetch %d%s", (double)device_mem / 1024, prefetch, gm);
        char sh[160], tb[24] = "";
        if (threads) snprintf(tb, sizeof tb, " -t %d", threads);
        if (all[0].fits)
            printf("\nbest: tp %d x pp %d%s, predicted %.1f tokens/s decoding\n"
                   "run:  mpirun -np %d shoal run -m %s --%s %d --pp %d%s -c %d%s%s\n",
                   all[0].tp, all[0].pp, all[0].ep ? " with experts whole (--ep)" : "", all[0].tok_s,
                   topo.n_ranks * group, model, all[0].ep ? "ep" : "tp", all[0].tp, all[0].pp,
                   shares_text(sh, sizeof sh, &all[0]), n_ctx, dm, tb);
    }
    if (!all[0].fits && !json) suggest(&shape, &topo, &cp, &all[0], kv_type);
    status = all[0].fits ? 0 : 1;
    goto done;
fail:
    status = launch_fail("plan", rc);
done:
    free(off);
    shoal_layout_cost_free(&given);
    shoal_layout_costs_free(all, n_all);
    shoal_topology_free(&topo);
    shoal_gguf_close(g);
    return status;
}
