/*
 * server — the OpenAI-compatible HTTP server of `shoal serve`, on rank 0.
 *
 * libmicrohttpd serves the endpoints on its own threads (one per
 * connection): GET /v1/models, POST /v1/completions and
 * /v1/chat/completions (JSON, or server-sent events with "stream": true),
 * GET /health and GET /metrics (Prometheus text). A request is checked,
 * tokenized and queued on its connection's thread; the engine loop
 * (shoal_server_run, on the caller's thread) moves queued requests into the
 * scheduler (runtime/sched), runs its steps, and hands each request its
 * text as it comes. A client that goes away has its sequence cancelled and
 * its KV blocks freed at the next step.
 *
 * Errors are OpenAI's shape: {"error": {"message", "type", "param", "code"}}
 * with 400 (a bad request), 401 (API key), 404 (unknown model or path), 405,
 * 413 (body too large), 429 (queue full), 503 (draining) or 500.
 */
#ifndef SHOAL_SERVER_H
#define SHOAL_SERVER_H

#include <signal.h>
#include <stddef.h>

#include "../base/base.h"
#include "sched.h"
#include "tokenizer.h"

struct shoal_server_params {
    const char *host;     /* address to bind (default 127.0.0.1) */
    int port;             /* 0: any free port (shoal_server_port says which) */
    const char *api_key;  /* NULL: none; else every request but /health needs "Authorization: Bearer KEY" */
    const char *model_id; /* the name /v1/models gives and requests must use */
    size_t max_body;      /* bytes of a request body (default 1 MiB) */
    int max_prompt;       /* prompt tokens (default: the sequence's context) */
    int max_tokens;       /* generated tokens per request, and the default of max_tokens */
    int max_streams;      /* requests generating at once (the scheduler's max_seqs) */
    int max_queue;        /* requests waiting for a place in the batch (beyond: 429) */
    int max_conns;        /* open connections (beyond: refused) */
    int max_conns_per_client; /* of them from one address (default half): one client cannot take them all */
    int chat_kind;        /* enum shoal_chat_kind of the model, or -1: no chat */
    const char *chat_system; /* the template's default system message, or NULL */
    int add_bos;          /* the tokenizer adds BOS to prompts */
    int n_ctx;            /* positions a sequence may reach */
    double drain_seconds; /* after SIGTERM: how long in-flight requests may take (default 30) */
    /* a connection's request headers must be in within header_seconds of its opening or of its
     * last answer (default 30), and a request's body within body_seconds of its headers (default
     * 60); past them the connection is closed, however slowly bytes still come */
    double header_seconds, body_seconds;
    int parse_special;    /* special tokens written in a request's text are control tokens; 0: text is text */
};

struct shoal_server;

/*
 * Binds and starts serving (the connection threads); requests queue until
 * shoal_server_run runs the engine. The tokenizer and scheduler are the
 * caller's and must outlive the server. SHOAL_IO when the address cannot be
 * bound (the message names it).
 */
shoal_status shoal_server_create(struct shoal_server **out, const struct shoal_server_params *p,
                                 const struct shoal_tokenizer *tok, struct shoal_sched *sc);
/* The port it listens on. */
int shoal_server_port(const struct shoal_server *srv);

/*
 * The engine loop on this thread: until *stop is set (a signal handler),
 * then draining: new requests refused with 503, in-flight ones finished
 * (cancelled after drain_seconds; 0.3 s when *stop is 2: mpirun is ending
 * the job). Returns an error of the forward pass, after failing every
 * request with 500 saying what failed. While idle, keeps the other ranks'
 * bounded waits alive (shoal_sched_keepalive).
 */
shoal_status shoal_server_run(struct shoal_server *srv, volatile sig_atomic_t *stop);

/* Stops the connection threads and frees; accepts NULL. */
void shoal_server_destroy(struct shoal_server *srv);

#endif
