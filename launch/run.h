/*
 * run.h — what `shoal run` and `shoal serve` share (cmd_run.c): the options,
 * and everything a rank holds once its part of the model is loaded. shoal
 * serve is shoal run's setup (layout, plan, backend, loading, the other
 * ranks following rank 0's steps) with another loop on rank 0 (cmd_serve.c).
 */
#ifndef SHOAL_LAUNCH_RUN_H
#define SHOAL_LAUNCH_RUN_H

#include "../comm/comm.h"
#include "../runtime/model.h"
#include "../runtime/sampler.h"
#include "../runtime/tokenizer.h"
#include "../shard/gguf.h"
#include "../shard/manifest.h"
#include "args.h"
#include "launch.h"

/* shoal bench's lists (-p 64,512 -t 1,2 ...), as given and parsed (cmd_bench.c) */
#define BENCH_MAX 16
struct bench_opts {
    const char *p_s, *n_s, *t_s, *b_s, *kv_s, *d_s, *fmt;
    int p[BENCH_MAX], n[BENCH_MAX], t[BENCH_MAX], b[BENCH_MAX], kv[BENCH_MAX], d[BENCH_MAX];
    int np, nn, nt, nb, nkv, nd;
    int reps;
};

struct run_opts {
    const char *model, *prompt, *prompt_file, *kv_name, *simd_name, *logits_path, *ids_path;
    const char *prompt_ids; /* shoal run --prompt-ids: the prompt as token ids, as typed */
    const char *comm_name, *tp_weights_s, *pp_weights_s, *system, *template_name, *shards, *hosts;
    const char *device_name, *tp_comm_name;
    int device, gpu, tp_comm;
    int64_t device_mem;
    int prefetch, offload_from, offload_group;
    const char *offload_from_name;
    int n_predict, threads, n_ctx, n_batch, ignore_eos, no_bos, no_echo, verbose, quiet, seed;
    int logits_f32; /* --logits-f32 */
    int tp, pp, kv_type, simd, wire, chat, interactive, verify, no_verify;
    int ep; /* --ep: a mixture of experts' experts whole over the tp ranks */
    int lookup; /* shoal run --lookup: most tokens drafted a step by prompt lookup (0: off) */
    const char *draft_model; /* shoal run --draft-model: rank 0 drafts with it */
    int draft_max;           /* --draft-max: most tokens it drafts a step */
    double tp_weights[ARGS_MAX_WEIGHTS], pp_weights[ARGS_MAX_WEIGHTS];
    int n_tp_weights, n_pp_weights;
    struct shoal_sampler_params sp;
    char model_buf[4096];
    /* shoal perplexity */
    int perplexity, chunks;
    /* shoal bench */
    int bench;
    struct bench_opts bo;
    /* shoal serve */
    int serve;
    const char *host, *api_key, *model_id, *system_default;
    int port, parallel, max_queue, max_prompt, max_tokens, max_conns, block_size, prompt_chunk;
    int parse_special; /* serve --parse-special */
    int max_conns_per_client; /* serve --max-conns-per-client (0: half of --max-conns) */
    int64_t max_body;
    float drain_seconds;
    float header_seconds, body_seconds; /* serve --header-timeout, --body-timeout */
    float comm_seconds; /* --comm-timeout (0: none) */
};

/* Everything a rank holds for a run, released by teardown(). */
struct run {
    struct run_opts o;
    Shoal__Manifest *man; /* --shards */
    struct shoal_comm *world;
    int rank, size;
    struct shoal_gguf *g;
    struct shoal_plan *plan;
    struct shoal_dist *dist;
    struct shoal_backend *be;
    struct shoal_model *m;
    struct shoal_tokenizer *tok;
    struct shoal_state *st;
    int threads;
    int local, n_part;   /* this rank among its replica's, and their number (size / offload group) */
    int gpu;             /* the CUDA device this rank computes on, or -1 */
    char dev_desc[192];  /* what it computes on, for the load line */
    double t_load;
    /* rank 0, where the planner chose the layout: its decode figures for it with the context
     * half full and empty (0: none) */
    double predicted_tok_s;
    struct launch_start start;
    struct bench_state *bench; /* shoal bench: the rows so far (rank 0) */
    /* rank 0 with --draft-model: the draft model, alone on a backend of its own */
    struct shoal_gguf *dg;
    struct shoal_backend *dbe;
    struct shoal_model *dm;
    struct shoal_state *dst;
    struct shoal_tokenizer *dtok;
    struct shoal_draft *draft;
};

/*
 * The chat format of r's model: --chat-template, else the model's template
 * (shoal_chat_detect: an error naming the model when it is none shoal
 * knows, or absent); *sys the system message to begin with (--system, else
 * the template's own for a model's template or ChatML), or NULL; the
 * caller frees it.
 */
shoal_status run_chat_format(const struct run *r, int *kind, char **sys);

/*
 * Rank 0 of shoal serve, once loaded: serves until SIGTERM or SIGINT, then
 * stops the other ranks (shoal_stop). Returns the exit status.
 */
int serve_lead(struct run *r);

/* Rank 0 of shoal perplexity, once loaded (cmd_perplexity.c): scores the text, stops the others. */
int perplexity_lead(struct run *r);

/* shoal run, serve, perplexity and bench: every rank's setup, then rank 0 leads and the others follow. */
enum { RUN_RUN, RUN_SERVE, RUN_PERPLEXITY, RUN_BENCH };
int run_main(int argc, char **argv, int mode);

/*
 * One pass of a command on every rank, after the options: the layout, the
 * plan, the backend, loading, then rank 0 leads (mode's lead) while the
 * others follow, and everything released again (r keeps its world, rank,
 * size and options). Returns the exit status.
 */
int run_pass(struct run *r, int mode);

/*
 * Every rank's figures for a run (per prompt token or decode step), gathered to
 * rank 0 (a collective: every rank calls it once, after the run): REP_N values a
 * rank, in rank order. With print, rank 0 prints a line a rank (a decode token's
 * time computing and waiting, for the others, the links and rank 0 between
 * steps; the bytes it sent; its peak RSS), then which rank held the others back.
 * On rank 0, *all_out is the figures, the caller's to free, where asked (NULL
 * after a failure).
 */
enum {
    REP_PROMPT_BYTES, REP_DECODE_BYTES, REP_DECODE_WAIT, REP_PROMPT_WAIT, REP_RSS, REP_DECODE_COMPUTE,
    REP_WEIGHTS, REP_PARAMS, /* the rank's part: bytes a token reads, parameters */
    REP_DEVICE_PEAK,         /* its device memory's peak (a GPU, or --device-mem), else 0 */
    REP_N
};
void run_report(struct run *r, int print, double **all_out);

/*
 * shoal bench (cmd_bench.c). bench_parse: its lists, checked (0, else 3: a
 * usage error, said on err when not NULL); bench_main: every pass (a pass a
 * combination of -t, -b and --kv-type), then the table on rank 0;
 * bench_lead: rank 0's tests in one pass; bench_gather: after them, every
 * rank's figures for the pass (run_report's) into the pass's rows (a collective).
 */
int bench_parse(struct run_opts *o, FILE *err);
int bench_main(struct run *r);
int bench_lead(struct run *r);
void bench_gather(struct run *r);

#endif
