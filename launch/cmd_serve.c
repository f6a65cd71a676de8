/*
 * cmd_serve.c — `shoal serve`: shoal run's setup (cmd_run.c), then on rank 0
 * the OpenAI-compatible server (runtime/server) over the batching scheduler
 * (runtime/sched); the other ranks follow rank 0's steps as under shoal run.
 * SIGTERM or SIGINT drains: no new requests, those in flight finished, then
 * every rank stops and exits 0. When mpirun ends the job (a rank died), rank
 * 0 has a second before its SIGKILL: requests in flight are answered with the
 * error at once, and waits on the dead rank given up (shoal_comm_set_abandon).
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../runtime/chat.h"
#include "../runtime/sched.h"
#include "../runtime/server.h"
#include "launch.h"
#include "run.h"

static volatile sig_atomic_t stop_asked, job_ending, cont_at;

/* When mpirun ends a job (a rank died, or mpirun itself got SIGTERM) it sends each rank SIGCONT,
 * SIGTERM a second later, and SIGKILL a second after that. */
static int now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts); /* async-signal-safe */
    return (int)(ts.tv_sec & 0x3fffffff);
}

static void on_cont(int sig) {
    (void)sig;
    cont_at = now_s();
}

/* SIGTERM or SIGINT: drain; right after SIGCONT, mpirun is ending the job: answer what is in flight
 * at once, and give up waiting for ranks that may be dead (shoal_comm_set_abandon) */
static void on_stop(int sig) {
    const int ending = sig == SIGTERM && cont_at && now_s() - cont_at <= 2;
    if (ending) job_ending = 1;
    stop_asked = ending ? 2 : 1;
}

/* The chat format (run_chat_format); -1, with a warning, when none applies: chat requests are refused. */
static int chat_kind(const struct run *r, char **sys) {
    int kind = -1;
    if (run_chat_format(r, &kind, sys) != SHOAL_OK) {
        fprintf(stderr, "shoal serve: warning: %s; /v1/chat/completions is refused\n", shoal_last_error());
        shoal_error_clear();
        return -1; /* (*sys is NULL) */
    }
    return kind;
}

/* --model-id, else the file's name without its directory and .gguf (the shards' directory). */
static void model_id(const struct run *r, char *out, size_t len) {
    const char *src = r->o.model_id ? r->o.model_id : r->o.shards ? r->o.shards : r->o.model;
    if (r->o.model_id) {
        snprintf(out, len, "%s", src);
        return;
    }
    size_t n = strlen(src);
    while (n > 1 && src[n - 1] == '/') n--;
    const char *b = src + n;
    while (b > src && b[-1] != '/') b--;
    size_t k = (size_t)(src + n - b);
    if (k > 5 && strncmp(b + k - 5, ".gguf", 5) == 0) k -= 5;
    snprintf(out, len, "%.*s", (int)k, b);
}

int serve_lead(struct run *r) {
    const struct run_opts *o = &r->o;
    const struct shoal_hparams *hp = &r->m->hp;
    char *sys = NULL, id[256];
    const int kind = chat_kind(r, &sys);
    model_id(r, id, sizeof id);
    const int max_pos = hp->n_ctx_train < o->n_ctx ? hp->n_ctx_train : o->n_ctx;
    struct shoal_sched *sc = NULL;
    struct shoal_server *srv = NULL;
    struct shoal_sched_params sp = { .block_size = o->block_size, .max_seqs = o->parallel,
                                     .chunk = o->prompt_chunk, .max_pos = max_pos, .lookup = o->lookup,
                                     .draft = r->dst };
    shoal_status rc = shoal_sched_create(&sc, r->st, &sp);
    struct shoal_server_params p = {
        .host = o->host ? o->host : "127.0.0.1", .port = o->port, .api_key = o->api_key, .model_id = id,
        .max_body = (size_t)o->max_body, .max_prompt = o->max_prompt ? o->max_prompt : max_pos - 1,
        .max_tokens = o->max_tokens, .max_streams = o->parallel, .max_queue = o->max_queue,
        .max_conns = o->max_conns, .max_conns_per_client = o->max_conns_per_client, .chat_kind = kind,
        .chat_system = sys,
        .add_bos = shoal_tokenizer_add_bos(r->tok), .n_ctx = max_pos, .drain_seconds = o->drain_seconds,
        .header_seconds = o->header_seconds, .body_seconds = o->body_seconds,
        .parse_special = o->parse_special,
    };
    if (rc == SHOAL_OK) rc = shoal_server_create(&srv, &p, r->tok, sc);
    if (rc == SHOAL_OK) {
        struct sigaction sa = { .sa_handler = on_stop };
        sigemptyset(&sa.sa_mask);
        sigaction(SIGTERM, &sa, NULL);
        sigaction(SIGINT, &sa, NULL);
        if (r->size > 1) {
            struct sigaction sc = { .sa_handler = on_cont };
            sigemptyset(&sc.sa_mask);
            sigaction(SIGCONT, &sc, NULL);
            shoal_comm_set_abandon(&job_ending);
        }
        char wb[32], kb[32], rings[96] = "";
        if (r->st->ring) /* windowed layers: a ring of their window per request */
            snprintf(rings, sizeof rings, " (windowed layers: a ring of %d per request)", r->st->ring);
        if (!o->quiet) /* the listening line below always: it says where */
            fprintf(stderr,
                    "shoal: %s (%s, %d layers, %s %s) | %d rank%s: tp %d x pp %d, %s | %s | KV cache %d positions "
                    "in blocks of %d%s, %s on rank 0, %d requests at once | loaded in %.2f s\n",
                    hp->name, hp->arch, hp->n_layers, shoal_fmt_bytes(wb, sizeof wb, (double)r->m->weight_bytes),
                    shoal_dtype_name(r->m->main_type), r->size, r->size == 1 ? "" : "s", o->tp, o->pp,
                    shoal_comm_backend(r->world), r->dev_desc, o->n_ctx, o->block_size, rings,
                    shoal_fmt_bytes(kb, sizeof kb, (double)r->st->kv_bytes), o->parallel, r->t_load);
        fprintf(stderr, "shoal serve: listening on http://%s:%d (model \"%s\"%s%s%s; pid %d: SIGTERM drains and "
                "stops)\n", p.host, shoal_server_port(srv), id, kind >= 0 ? ", chat " : ", no chat",
                kind >= 0 ? shoal_chat_kind_name(kind) : "", o->api_key ? ", API key required" : "", (int)getpid());
        fflush(stderr);
        rc = shoal_server_run(srv, &stop_asked);
    }
    /* the scheduler ends what is left (failing it after an error), then the connections close */
    shoal_sched_destroy(sc);
    shoal_server_destroy(srv);
    free(sys);
    int status = 0;
    if (rc != SHOAL_OK) {
        status = launch_fail("serve", rc);
        shoal_comm_abort(r->world, 1); /* the others may be anywhere in a step */
    }
    shoal_status stop = shoal_stop(r->st);
    if (stop != SHOAL_OK && status == 0) status = launch_fail("serve", stop);
    if (status == 0) fprintf(stderr, "shoal serve: stopped\n");
    return status;
}
