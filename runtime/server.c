/*
 * server.c — the OpenAI-compatible HTTP server (server.h).
 *
 * Threads: libmicrohttpd runs a thread per connection; the caller's thread
 * runs the engine (shoal_server_run). They meet in two places: the server's
 * inbox (requests accepted, under srv->mu, with srv->cv waking the engine)
 * and each request (its text so far and whether it is done, under req->mu,
 * with req->cv waking its connection). A request has two owners, the
 * connection and the engine, and is freed when both have let go (refs).
 */
#define _GNU_SOURCE
#include "server.h"

#include <arpa/inet.h>
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <microhttpd.h>
#include <netdb.h>
#include <poll.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <time.h>

#include "chat.h"
#include "unicode.h"

#define MAX_STOP 4
#define MAX_STOP_IDS 64 /* stop_token_ids */
#define MAX_STOP_BYTES 512 /* a stop string's: each token looks for every tail of each that the text ends with */
#define N_TTFT 11
#define N_ITL 11
static const double TTFT_BUCKETS[N_TTFT] = { 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30 };
static const double ITL_BUCKETS[N_ITL] = { 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5 };
#define N_SEQS 10
#define PACE_EVERY 5.0 /* s between gatherings of every rank's pace, while steps run */
static const double SEQS_BUCKETS[N_SEQS] = { 1, 2, 4, 8, 16, 32, 64, 128, 256, 512 };

/* 64 bits from the kernel's randomness (a response's id, a request's seed when it gives none);
 * should that fail, the clock and a counter, never an address. */
static uint64_t random_u64(void) {
    uint64_t v;
    if (getrandom(&v, sizeof v, 0) == (ssize_t)sizeof v) return v;
    static _Atomic uint64_t n;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return shoal_hash_u64((uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec + ++n);
}

/* The CLOCK_REALTIME time ms milliseconds from now, as pthread_cond_timedwait takes it. */
static struct timespec in_ms(long ms) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    ts.tv_nsec += ms * 1000 * 1000;
    ts.tv_sec += ts.tv_nsec / 1000000000;
    ts.tv_nsec %= 1000000000;
    return ts;
}

struct hist {
    uint64_t n[16], count;
    double sum;
};

static void hist_add(struct hist *h, const double *bounds, int nb, double v) {
    for (int i = 0; i < nb; i++)
        if (v <= bounds[i]) h->n[i]++;
    h->count++;
    h->sum += v;
}

struct req {
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int refs;
    struct shoal_server *srv;
    int chat, stream, include_usage;
    char id[48];
    long created;
    /* what to generate */
    int32_t *prompt;
    size_t n_prompt;
    int max_tokens;
    struct shoal_sampler_params sp;
    char *stop[MAX_STOP];
    int n_stop;
    int ignore_eos;                  /* end-of-generation tokens do not end it */
    int32_t stop_ids[MAX_STOP_IDS];  /* tokens that end it (stop_token_ids) */
    int n_stop_ids;
    /* engine side: the sequence, its text */
    uint64_t seq;
    int queued, cancel_sent;
    struct shoal_detok detok;
    char *text;
    size_t len, cap, safe; /* text[0, safe) cannot be part of a stop string */
    size_t *ends;          /* where each token's text ends: a streamed event per token */
    size_t n_ends, cap_ends, ends_sent;
    int done, failed, cancel, stopped_by_string;
    char why[320]; /* failed: what the engine said, or "" */
    const char *finish;
    int n_prompt_used, n_gen;
    double t_start, t_last;
    /* connection side: what was written */
    size_t sent;
    int role_sent, end_sent;
    char *out;
    size_t out_len, out_off, out_cap;
    struct req *next; /* the inbox */
};

struct shoal_server {
    struct shoal_server_params p;
    const struct shoal_tokenizer *tok;
    struct shoal_sched *sc;
    struct MHD_Daemon *d;
    int port;
    pthread_mutex_t mu; /* everything below */
    pthread_cond_t cv;
    struct req *inbox, *inbox_tail;
    int n_inflight; /* accepted and not yet ended */
    int n_http;     /* HTTP requests begun and not yet answered to the end */
    int draining;
    struct req **live; /* engine thread only: the requests given to the scheduler */
    int n_live, cap_live;
    /* metrics */
    uint64_t requests[2][6]; /* [chat][status class: 200, 400, 401/404/405, 413, 429, 500/503] */
    uint64_t prompt_tokens, gen_tokens, cancelled;
    struct hist ttft, itl, step_seqs;
    struct shoal_sched_stats st;
    uint64_t batch_tokens_sum, batch_steps;
    struct shoal_rank_pace *pace; /* every rank's, as last gathered (PACE_EVERY) */
    int n_pace;
    /* the connections' deadlines (watch_mu: the list and each one's stage) */
    pthread_mutex_t watch_mu;
    pthread_cond_t watch_cv;
    struct watch *watched;
    pthread_t watchdog;
    int watchdog_on, watch_stop;
    uint64_t cut_header, cut_body; /* connections closed at a deadline */
};

/* ------------------------------------------------------------ requests */

static void req_unref(struct req *r) {
    pthread_mutex_lock(&r->mu);
    int left = --r->refs;
    pthread_mutex_unlock(&r->mu);
    if (left) return;
    pthread_mutex_destroy(&r->mu);
    pthread_cond_destroy(&r->cv);
    free(r->prompt);
    for (int i = 0; i < r->n_stop; i++) free(r->stop[i]);
    free(r->text);
    free(r->ends);
    free(r->out);
    free(r);
}

/* Room for need elements of elem bytes in *p (*cap of them now), doubling; 0 when out of memory. */
static int room(void *p, size_t *cap, size_t need, size_t elem) {
    if (need <= *cap) return 1;
    size_t c = *cap ? *cap : 64;
    while (c < need) c *= 2;
    void *q = realloc(*(void **)p, c * elem);
    if (!q) return 0;
    *(void **)p = q;
    *cap = c;
    return 1;
}

/*
 * New text in; a stop string cuts it there (1: stop). Otherwise text that
 * could still turn out to start a stop string is held back from `safe`.
 */
static int take_text(struct req *r, const char *s, size_t n) {
    if (n > (SIZE_MAX - r->len - 1) / 3 || !room(&r->text, &r->cap, r->len + 3 * n + 1, 1)) return 1;
    size_t from = r->len;
    /* a NUL byte (a model's <0x00> token) as U+FFFD: the JSON strings are C
     * strings, and everything after a NUL would be lost */
    for (size_t i = 0; i < n; i++) {
        if (s[i]) {
            r->text[r->len++] = s[i];
        } else {
            memcpy(r->text + r->len, "\xEF\xBF\xBD", 3);
            r->len += 3;
        }
    }
    r->text[r->len] = 0;
    size_t hold = 0;
    for (int i = 0; i < r->n_stop; i++) {
        size_t sl = strlen(r->stop[i]);
        size_t start = from >= sl ? from - sl + 1 : 0;
        char *hit = memmem(r->text + start, r->len - start, r->stop[i], sl);
        if (hit) {
            r->len = (size_t)(hit - r->text);
            r->text[r->len] = 0;
            r->safe = r->len;
            r->stopped_by_string = 1;
            return 1;
        }
        for (size_t k = sl - 1; k > hold; k--) /* the longest tail that begins the stop string */
            if (k <= r->len && memcmp(r->text + r->len - k, r->stop[i], k) == 0) {
                hold = k;
                break;
            }
    }
    size_t safe = r->len - hold;
    while (safe > 0 && safe < r->len && ((unsigned char)r->text[safe] & 0xC0) == 0x80) safe--;
    if (safe > r->safe) r->safe = safe;
    return 0;
}

/* JSON is UTF-8: bytes that are not (a model's byte tokens can be anything) become U+FFFD. */
static size_t utf8_clean(const char *s, size_t n, char *out) {
    size_t o = 0;
    for (size_t i = 0; i < n;) {
        int len = 1;
        uint32_t cp = shoal_utf8_decode((const unsigned char *)s + i, n - i, &len);
        if (cp == SHOAL_UC_INVALID || len < 1) {
            memcpy(out + o, "\xEF\xBF\xBD", 3);
            o += 3;
            i += 1;
        } else {
            memcpy(out + o, s + i, (size_t)len);
            o += (size_t)len;
            i += (size_t)len;
        }
    }
    return o;
}

static int on_token(void *user, int32_t t) {
    struct req *r = user;
    struct shoal_server *srv = r->srv;
    double now = shoal_now();
    int stop = 0;
    pthread_mutex_lock(&srv->mu);
    if (r->n_gen == 0) hist_add(&srv->ttft, TTFT_BUCKETS, N_TTFT, now - r->t_start);
    else hist_add(&srv->itl, ITL_BUCKETS, N_ITL, now - r->t_last);
    pthread_mutex_unlock(&srv->mu);
    pthread_mutex_lock(&r->mu);
    r->t_last = now;
    r->n_gen++;
    int stop_id = 0;
    for (int i = 0; i < r->n_stop_ids; i++) stop_id |= r->stop_ids[i] == t;
    if (stop_id || (!r->ignore_eos && shoal_tokenizer_is_eog(srv->tok, t))) {
        stop = 1; /* the token's text is not the answer's */
    } else {
        char buf[4096], clean[3 * 4096]; /* a piece longer than 3.8 KiB is lost (none known) */
        int n = shoal_detok_push(&r->detok, t, buf, sizeof buf);
        if (n > 0) n = (int)utf8_clean(buf, (size_t)n, clean);
        if (n > 0) stop = take_text(r, clean, (size_t)n);
        if (n > 0 && room(&r->ends, &r->cap_ends, r->n_ends + 1, sizeof *r->ends)) r->ends[r->n_ends++] = r->len;
    }
    if (r->cancel) stop = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    return stop;
}

static void on_end(void *user, int why, int n_prompt, int n_gen) {
    struct req *r = user;
    struct shoal_server *srv = r->srv;
    pthread_mutex_lock(&r->mu);
    if (!r->stopped_by_string) {
        char tail[64], clean[3 * 64];
        int n = shoal_detok_flush(&r->detok, tail, sizeof tail);
        if (n > 0) take_text(r, clean, utf8_clean(tail, (size_t)n, clean));
        r->safe = r->len;
    }
    r->finish = why == SHOAL_SEQ_STOPPED ? "stop" : "length";
    const int cancelled = why == SHOAL_SEQ_CANCELLED || r->cancel; /* on_token stops those it sees */
    r->n_prompt_used = n_prompt;
    r->n_gen = n_gen;
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    /* off the engine's list (on_end runs on the engine's thread), then its reference */
    for (int i = 0; i < srv->n_live; i++)
        if (srv->live[i] == r) {
            srv->live[i] = srv->live[--srv->n_live];
            break;
        }
    pthread_mutex_lock(&srv->mu);
    srv->n_inflight--;
    srv->prompt_tokens += (uint64_t)n_prompt;
    srv->gen_tokens += (uint64_t)n_gen;
    if (cancelled) srv->cancelled++;
    pthread_mutex_unlock(&srv->mu);
    req_unref(r); /* the engine's */
}

/* A request the engine never ran (cancelled in the inbox, refused, failed). */
static void end_unrun(struct req *r, int failed) {
    pthread_mutex_lock(&r->mu);
    r->finish = "length";
    r->failed = failed;
    r->done = 1;
    pthread_cond_broadcast(&r->cv);
    pthread_mutex_unlock(&r->mu);
    pthread_mutex_lock(&r->srv->mu);
    r->srv->n_inflight--;
    pthread_mutex_unlock(&r->srv->mu);
    req_unref(r);
}

/* ------------------------------------------------------------ responses */

static enum MHD_Result send_text(struct MHD_Connection *c, unsigned status, const char *type, const char *body) {
    struct MHD_Response *resp =
        MHD_create_response_from_buffer(strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    if (!resp) return MHD_NO;
    MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    enum MHD_Result ok = MHD_queue_response(c, status, resp);
    MHD_destroy_response(resp);
    return ok;
}

static enum MHD_Result send_json(struct MHD_Connection *c, unsigned status, cJSON *o) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (!s) return send_text(c, 500, "application/json", "{\"error\":{\"message\":\"out of memory\",\"type\":\"server_error\",\"param\":null,\"code\":null}}");
    enum MHD_Result ok = send_text(c, status, "application/json", s);
    free(s);
    return ok;
}

static cJSON *error_body(const char *type, const char *param, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static cJSON *error_body(const char *type, const char *param, const char *code, const char *fmt, ...) {
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    cJSON *o = cJSON_CreateObject(), *e = cJSON_AddObjectToObject(o, "error");
    cJSON_AddStringToObject(e, "message", msg);
    cJSON_AddStringToObject(e, "type", type);
    if (param) cJSON_AddStringToObject(e, "param", param);
    else cJSON_AddNullToObject(e, "param");
    if (code) cJSON_AddStringToObject(e, "code", code);
    else cJSON_AddNullToObject(e, "code");
    return o;
}

static int status_class(unsigned status) {
    return status == 200 ? 0 : status == 400 ? 1 : status == 413 ? 3 : status == 429 ? 4
           : status >= 500                   ? 5 : 2;
}

static void count(struct shoal_server *srv, int chat, unsigned status) {
    pthread_mutex_lock(&srv->mu);
    srv->requests[chat][status_class(status)]++;
    pthread_mutex_unlock(&srv->mu);
}

#define FAIL(status, type, param, code, ...)                                                   \
    do {                                                                                       \
        count(srv, chat, status);                                                              \
        return send_json(c, status, error_body(type, param, code, __VA_ARGS__));               \
    } while (0)

/* ------------------------------------------------------------ the output of a request */

static void usage_json(cJSON *o, const struct req *r) {
    cJSON *u = cJSON_AddObjectToObject(o, "usage");
    cJSON_AddNumberToObject(u, "prompt_tokens", r->n_prompt_used);
    cJSON_AddNumberToObject(u, "completion_tokens", r->n_gen);
    cJSON_AddNumberToObject(u, "total_tokens", r->n_prompt_used + r->n_gen);
}

static cJSON *head_json(const struct req *r, const char *object) {
    cJSON *o = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "id", r->id);
    cJSON_AddStringToObject(o, "object", object);
    cJSON_AddNumberToObject(o, "created", (double)r->created);
    cJSON_AddStringToObject(o, "model", r->srv->p.model_id);
    return o;
}

/* The whole answer of a request that is done (not streamed). */
static cJSON *answer_json(const struct req *r) {
    cJSON *o = head_json(r, r->chat ? "chat.completion" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c0 = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c0);
    cJSON_AddNumberToObject(c0, "index", 0);
    if (r->chat) {
        cJSON *m = cJSON_AddObjectToObject(c0, "message");
        cJSON_AddStringToObject(m, "role", "assistant");
        cJSON_AddStringToObject(m, "content", r->text ? r->text : "");
    } else {
        cJSON_AddStringToObject(c0, "text", r->text ? r->text : "");
    }
    cJSON_AddNullToObject(c0, "logprobs");
    cJSON_AddStringToObject(c0, "finish_reason", r->finish);
    usage_json(o, r);
    return o;
}

/* One server-sent event: the text in (may be NULL), finish (NULL while going on). */
static cJSON *chunk_json(const struct req *r, const char *text, size_t n, const char *finish, int role) {
    cJSON *o = head_json(r, r->chat ? "chat.completion.chunk" : "text_completion");
    cJSON *ch = cJSON_AddArrayToObject(o, "choices"), *c0 = cJSON_CreateObject();
    cJSON_AddItemToArray(ch, c0);
    cJSON_AddNumberToObject(c0, "index", 0);
    char *t = strndup(text ? text : "", text ? n : 0);
    if (r->chat) {
        cJSON *d = cJSON_AddObjectToObject(c0, "delta");
        if (role) cJSON_AddStringToObject(d, "role", "assistant");
        if (text || role) cJSON_AddStringToObject(d, "content", t ? t : "");
    } else {
        cJSON_AddStringToObject(c0, "text", t ? t : "");
    }
    free(t);
    cJSON_AddNullToObject(c0, "logprobs");
    if (finish) cJSON_AddStringToObject(c0, "finish_reason", finish);
    else cJSON_AddNullToObject(c0, "finish_reason");
    return o;
}

/* Appends "data: JSON\n\n" (o consumed) or raw text to the request's pending output. */
static int out_add(struct req *r, cJSON *o, const char *raw) {
    char *s = o ? cJSON_PrintUnformatted(o) : NULL;
    cJSON_Delete(o);
    if (o && !s) return 0;
    const char *body = s ? s : raw;
    size_t n = strlen(body) + (s ? 8 : 0);
    if (r->out_off == r->out_len) r->out_off = r->out_len = 0;
    if (!room(&r->out, &r->out_cap, r->out_len + n + 1, 1)) {
        free(s);
        return 0;
    }
    r->out_len += (size_t)sprintf(r->out + r->out_len, s ? "data: %s\n\n" : "%s", body);
    free(s);
    return 1;
}

/* The next bytes of a streamed answer: blocks until there are some, or the end. */
static ssize_t stream_reader(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    struct req *r = cls;
    pthread_mutex_lock(&r->mu);
    for (;;) {
        if (r->out_off < r->out_len) {
            size_t n = r->out_len - r->out_off < max ? r->out_len - r->out_off : max;
            memcpy(buf, r->out + r->out_off, n);
            r->out_off += n;
            pthread_mutex_unlock(&r->mu);
            return (ssize_t)n;
        }
        if (r->end_sent) {
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_OF_STREAM;
        }
        int ok = 1;
        if (r->chat && !r->role_sent) {
            ok = out_add(r, chunk_json(r, NULL, 0, NULL, 1), NULL);
            r->role_sent = 1;
        } else if (r->sent < r->safe) {
            /* up to the next token's end (one event per token, as OpenAI's), or what is safe */
            while (r->ends_sent < r->n_ends && r->ends[r->ends_sent] <= r->sent) r->ends_sent++;
            size_t to = r->ends_sent < r->n_ends && r->ends[r->ends_sent] < r->safe ? r->ends[r->ends_sent] : r->safe;
            ok = out_add(r, chunk_json(r, r->text + r->sent, to - r->sent, NULL, 0), NULL);
            r->sent = to;
        } else if (r->done) {
            if (r->failed) {
                ok = out_add(r, error_body("server_error", NULL, NULL, "the model failed: %s",
                                           r->why[0] ? r->why : "see the server's log"), NULL);
            } else {
                cJSON *last = chunk_json(r, NULL, 0, r->finish, 0);
                if (!r->include_usage) usage_json(last, r);
                ok = out_add(r, last, NULL);
                if (ok && r->include_usage) {
                    cJSON *u = head_json(r, r->chat ? "chat.completion.chunk" : "text_completion");
                    cJSON_AddArrayToObject(u, "choices");
                    usage_json(u, r);
                    ok = out_add(r, u, NULL);
                }
            }
            ok = ok && out_add(r, NULL, "data: [DONE]\n\n");
            r->end_sent = 1;
        } else {
            /* nothing yet: wait, and now and then a comment line, which finds a client gone */
            const struct timespec ts = in_ms(2000);
            if (pthread_cond_timedwait(&r->cv, &r->mu, &ts) == ETIMEDOUT && !r->done && r->sent == r->safe)
                ok = out_add(r, NULL, ": keep-alive\n\n");
        }
        if (!ok) {
            pthread_mutex_unlock(&r->mu);
            return MHD_CONTENT_READER_END_WITH_ERROR;
        }
    }
}

/* The connection is over (answered, or the client went away): cancel what is left. */
static void stream_done(void *cls) {
    struct req *r = cls;
    struct shoal_server *srv = r->srv;
    pthread_mutex_lock(&r->mu);
    int gone = !r->done;
    if (gone) r->cancel = 1;
    pthread_mutex_unlock(&r->mu);
    if (gone) {
        pthread_mutex_lock(&srv->mu);
        pthread_cond_signal(&srv->cv);
        pthread_mutex_unlock(&srv->mu);
    }
    req_unref(r);
}

/* ------------------------------------------------------------ parsing a request */

struct msgs {
    struct shoal_chat_msg m[256];
    int n;
};

static const char *KNOWN[] = { "model", "prompt", "messages", "max_tokens", "max_completion_tokens", "temperature",
                               "top_p", "stop", "seed", "presence_penalty", "frequency_penalty", "n", "stream",
                               "stream_options", "user", "logprobs", "echo", "best_of", "logit_bias", "suffix",
                               "top_logprobs", "response_format", "tools", "tool_choice", "functions",
                               "function_call", "parallel_tool_calls",
                               /* vLLM's and llama.cpp's servers' extensions */
                               "top_k", "min_p", "repetition_penalty", "repeat_penalty", "repeat_last_n",
                               "ignore_eos", "stop_token_ids", NULL };

/* The value of a "number" field within [lo, hi], or an error message. */
static const char *get_number(const cJSON *o, const char *key, double lo, double hi, double *v) {
    const cJSON *x = cJSON_GetObjectItemCaseSensitive(o, key);
    if (!x || cJSON_IsNull(x)) return NULL;
    if (!cJSON_IsNumber(x)) return "must be a number";
    if (!(x->valuedouble >= lo && x->valuedouble <= hi)) return "is out of range";
    *v = x->valuedouble;
    return NULL;
}

/*
 * A chat message's content: a string, or an array of {"type": "text", "text": ...}
 * parts (joined into *buf). NULL on a content shoal cannot take.
 */
static const char *content_text(const cJSON *content, char **buf) {
    if (cJSON_IsString(content)) return content->valuestring;
    if (!cJSON_IsArray(content)) return NULL;
    size_t n = 0;
    const cJSON *part;
    cJSON_ArrayForEach(part, content) {
        const cJSON *ty = cJSON_GetObjectItemCaseSensitive(part, "type");
        const cJSON *tx = cJSON_GetObjectItemCaseSensitive(part, "text");
        if (!cJSON_IsString(ty) || strcmp(ty->valuestring, "text") || !cJSON_IsString(tx)) return NULL;
        size_t k = strlen(tx->valuestring);
        char *b = realloc(*buf, n + k + 1);
        if (!b) return NULL;
        *buf = b;
        memcpy(b + n, tx->valuestring, k + 1);
        n += k;
    }
    return *buf ? *buf : "";
}

/* Why a request is refused. */
struct refusal {
    unsigned status;
    const char *param, *code; /* param: NULL or param_buf (the request's JSON is gone by then) */
    char msg[512], param_buf[64];
};

/*
 * A request body checked and turned into a request (its prompt tokenized),
 * or NULL with *f saying why not.
 */
static struct req *parse_request(struct shoal_server *srv, int chat, const char *body, size_t len,
                                 struct refusal *f) {
    const struct shoal_server_params *p = &srv->p;
    struct req *r = NULL;
    char *prompt_text = NULL, *parts[256] = { 0 }, scratch[512];
    int n_parts = 0;
#define BAD(st, par, cod, ...)                                                                 \
    do {                                                                                       \
        f->status = st;                                                                        \
        f->param = (par) ? f->param_buf : NULL;                                                \
        snprintf(f->param_buf, sizeof f->param_buf, "%s", (par) ? (const char *)(par) : "");   \
        f->code = cod;                                                                         \
        snprintf(f->msg, sizeof f->msg, __VA_ARGS__);                                          \
        goto refuse;                                                                           \
    } while (0)
    cJSON *j = cJSON_ParseWithLength(body, len);
    if (!j || !cJSON_IsObject(j)) BAD(400, NULL, NULL, "the body is not a JSON object");
    const cJSON *x;
    cJSON_ArrayForEach(x, j) {
        int known = 0;
        for (int i = 0; KNOWN[i]; i++) known |= strcmp(x->string, KNOWN[i]) == 0;
        if (!known) BAD(400, x->string, "unrecognized_argument", "unrecognized request argument: %s", x->string);
    }
    const cJSON *model = cJSON_GetObjectItemCaseSensitive(j, "model");
    if (!cJSON_IsString(model)) BAD(400, "model", NULL, "'model' must be given, as a string");
    if (strcmp(model->valuestring, p->model_id))
        BAD(404, "model", "model_not_found", "the model '%.200s' does not exist here (this server has '%s')",
            model->valuestring, p->model_id);
    /* what shoal does not do: refused rather than ignored */
    double n_choices = 1, v;
    const char *why;
    if ((why = get_number(j, "n", 1, 1, &n_choices))) BAD(400, "n", NULL, "'n' %s: only n = 1 is supported", why);
    if ((why = get_number(j, "best_of", 1, 1, &v))) BAD(400, "best_of", NULL, "'best_of' %s: only 1", why);
    static const char *const NOT_DONE[] = { "logprobs", "echo", "suffix", "top_logprobs", "tools", "functions",
                                            "tool_choice", "function_call", NULL };
    for (int i = 0; NOT_DONE[i]; i++) {
        x = cJSON_GetObjectItemCaseSensitive(j, NOT_DONE[i]);
        if (x && !cJSON_IsNull(x) && !cJSON_IsFalse(x))
            BAD(400, NOT_DONE[i], "unsupported_parameter", "'%s' is not supported by shoal serve", NOT_DONE[i]);
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "logit_bias");
    if (x && !cJSON_IsNull(x) && !(cJSON_IsObject(x) && !x->child))
        BAD(400, "logit_bias", "unsupported_parameter", "'logit_bias' is not supported by shoal serve");
    x = cJSON_GetObjectItemCaseSensitive(j, "response_format");
    if (x && !cJSON_IsNull(x)) {
        const cJSON *t = cJSON_GetObjectItemCaseSensitive(x, "type");
        if (!cJSON_IsString(t) || strcmp(t->valuestring, "text"))
            BAD(400, "response_format", "unsupported_parameter", "only 'response_format' {\"type\": \"text\"}");
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "user");
    if (x && !cJSON_IsString(x) && !cJSON_IsNull(x)) BAD(400, "user", NULL, "'user' must be a string");
    if (!(r = calloc(1, sizeof *r))) BAD(500, NULL, NULL, "out of memory");
    pthread_mutex_init(&r->mu, NULL);
    pthread_cond_init(&r->cv, NULL);
    r->refs = 1;
    r->srv = srv;
    r->chat = chat;
    shoal_sampler_defaults(&r->sp);
    r->sp.temp = 1.0f; /* OpenAI's defaults: temperature 1, no top-p, top-k or min-p */
    r->sp.top_k = 0;
    r->sp.top_p = 1.0f;
    r->sp.min_p = 0;
    double temp = 1, top_p = 1, pres = 0, freq = 0, seed = -1, max_tokens = -1;
    if ((why = get_number(j, "temperature", 0, 2, &temp))) BAD(400, "temperature", NULL, "'temperature' %s (0 to 2)", why);
    if ((why = get_number(j, "top_p", 0, 1, &top_p))) BAD(400, "top_p", NULL, "'top_p' %s (0 to 1)", why);
    if ((why = get_number(j, "presence_penalty", -2, 2, &pres)))
        BAD(400, "presence_penalty", NULL, "'presence_penalty' %s (-2 to 2)", why);
    if ((why = get_number(j, "frequency_penalty", -2, 2, &freq)))
        BAD(400, "frequency_penalty", NULL, "'frequency_penalty' %s (-2 to 2)", why);
    if ((why = get_number(j, "seed", -9.2e18, 9.2e18, &seed))) BAD(400, "seed", NULL, "'seed' %s", why);
    const char *mt = cJSON_GetObjectItemCaseSensitive(j, "max_completion_tokens") ? "max_completion_tokens" : "max_tokens";
    if ((why = get_number(j, mt, 1, 1e9, &max_tokens))) BAD(400, mt, NULL, "'%s' %s (at least 1)", mt, why);
    if (max_tokens > p->max_tokens)
        BAD(400, mt, NULL, "'%s' %.0f is more than this server allows (%d; shoal serve --max-tokens)", mt,
            max_tokens, p->max_tokens);
    r->max_tokens = max_tokens > 0 ? (int)max_tokens : p->max_tokens;
    r->sp.temp = (float)temp;
    r->sp.top_p = (float)top_p;
    r->sp.presence_penalty = (float)pres;
    r->sp.freq_penalty = (float)freq;
    r->sp.repeat_last_n = -1;
    r->sp.seed = seed >= 0 ? (uint64_t)seed : random_u64();
    /* the extensions vLLM's and llama.cpp's servers take (shoal run's --top-k, --min-p, ...) */
    double top_k = 0, min_p = 0, rep = 1, last_n = -1;
    if ((why = get_number(j, "top_k", -1, 1e9, &top_k)) || top_k != floor(top_k))
        BAD(400, "top_k", NULL, "'top_k' %s (a whole number: -1 or 0 for none)", why ? why : "is not whole");
    if ((why = get_number(j, "min_p", 0, 1, &min_p))) BAD(400, "min_p", NULL, "'min_p' %s (0 to 1)", why);
    const char *rk = cJSON_GetObjectItemCaseSensitive(j, "repeat_penalty") ? "repeat_penalty" : "repetition_penalty";
    if (cJSON_GetObjectItemCaseSensitive(j, "repeat_penalty") && cJSON_GetObjectItemCaseSensitive(j, "repetition_penalty"))
        BAD(400, "repetition_penalty", NULL, "give 'repetition_penalty' or 'repeat_penalty' (the same thing), not both");
    if ((why = get_number(j, rk, 1e-6, 10, &rep))) BAD(400, rk, NULL, "'%s' %s (more than 0, at most 10; 1: none)", rk, why);
    if ((why = get_number(j, "repeat_last_n", -1, 1e9, &last_n)) || last_n != floor(last_n))
        BAD(400, "repeat_last_n", NULL, "'repeat_last_n' %s (a whole number: -1 for every token)",
            why ? why : "is not whole");
    r->sp.top_k = top_k > 0 ? (int)fmin(top_k, 1e9) : 0;
    r->sp.min_p = (float)min_p;
    r->sp.repeat_penalty = (float)rep;
    r->sp.repeat_last_n = (int)last_n;
    x = cJSON_GetObjectItemCaseSensitive(j, "ignore_eos");
    if (x && !cJSON_IsBool(x) && !cJSON_IsNull(x)) BAD(400, "ignore_eos", NULL, "'ignore_eos' must be true or false");
    r->ignore_eos = cJSON_IsTrue(x);
    x = cJSON_GetObjectItemCaseSensitive(j, "stop_token_ids");
    if (x && !cJSON_IsNull(x)) {
        if (!cJSON_IsArray(x) || cJSON_GetArraySize(x) > MAX_STOP_IDS)
            BAD(400, "stop_token_ids", NULL, "'stop_token_ids' must be an array of at most %d token ids", MAX_STOP_IDS);
        const int n_vocab = shoal_tokenizer_n_vocab(srv->tok);
        const cJSON *s;
        cJSON_ArrayForEach(s, x) {
            if (!cJSON_IsNumber(s) || s->valuedouble != floor(s->valuedouble) || s->valuedouble < 0 ||
                s->valuedouble >= n_vocab)
                BAD(400, "stop_token_ids", NULL, "'stop_token_ids' holds token ids, whole numbers from 0 to %d",
                    n_vocab - 1);
            r->stop_ids[r->n_stop_ids++] = (int32_t)s->valuedouble;
        }
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "stream");
    if (x && !cJSON_IsBool(x) && !cJSON_IsNull(x)) BAD(400, "stream", NULL, "'stream' must be true or false");
    r->stream = cJSON_IsTrue(x);
    x = cJSON_GetObjectItemCaseSensitive(j, "stream_options");
    if (x && !cJSON_IsNull(x)) {
        const cJSON *u = cJSON_GetObjectItemCaseSensitive(x, "include_usage");
        if (!cJSON_IsObject(x) || (u && !cJSON_IsBool(u)))
            BAD(400, "stream_options", NULL, "'stream_options' must be {\"include_usage\": true|false}");
        r->include_usage = cJSON_IsTrue(u);
    }
    x = cJSON_GetObjectItemCaseSensitive(j, "stop");
    if (cJSON_IsString(x)) {
        if (strlen(x->valuestring) > MAX_STOP_BYTES)
            BAD(400, "stop", NULL, "a stop string is at most %d bytes", MAX_STOP_BYTES);
        if (*x->valuestring && !(r->stop[r->n_stop++] = strdup(x->valuestring))) BAD(500, NULL, NULL, "out of memory");
    } else if (cJSON_IsArray(x)) {
        const cJSON *s;
        if (cJSON_GetArraySize(x) > MAX_STOP) BAD(400, "stop", NULL, "'stop' holds at most %d strings", MAX_STOP);
        cJSON_ArrayForEach(s, x) {
            if (!cJSON_IsString(s)) BAD(400, "stop", NULL, "'stop' must be a string or an array of strings");
            if (strlen(s->valuestring) > MAX_STOP_BYTES)
                BAD(400, "stop", NULL, "a stop string is at most %d bytes", MAX_STOP_BYTES);
            if (*s->valuestring && !(r->stop[r->n_stop++] = strdup(s->valuestring)))
                BAD(500, NULL, NULL, "out of memory");
        }
    } else if (x && !cJSON_IsNull(x)) {
        BAD(400, "stop", NULL, "'stop' must be a string or an array of strings");
    }

    /* the prompt's tokens */
    if (chat) {
        if (p->chat_kind < 0)
            BAD(400, "messages", NULL, "this model has no chat template shoal recognises: start shoal serve with "
                "--chat-template (%s), or use /v1/completions", shoal_chat_kind_names());
        const cJSON *ms = cJSON_GetObjectItemCaseSensitive(j, "messages");
        if (!cJSON_IsArray(ms) || cJSON_GetArraySize(ms) < 1)
            BAD(400, "messages", NULL, "'messages' must be a non-empty array");
        struct msgs *mm = calloc(1, sizeof *mm);
        if (!mm) BAD(500, NULL, NULL, "out of memory");
        const cJSON *m;
        int has_system = 0, bad = 0;
        cJSON_ArrayForEach(m, ms) {
            const cJSON *role = cJSON_GetObjectItemCaseSensitive(m, "role");
            const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
            const char *text = content && n_parts < 256 ? content_text(content, &parts[n_parts]) : NULL;
            n_parts++;
            const char *rs = cJSON_IsString(role) ? role->valuestring : "";
            if (!strcmp(rs, "developer")) rs = "system";
            if (mm->n >= 255 || !text || (strcmp(rs, "system") && strcmp(rs, "user") && strcmp(rs, "assistant"))) {
                bad = !text ? 1 : mm->n >= 255 ? 3 : 2;
                break;
            }
            if (!strcmp(rs, "system")) has_system = 1;
            mm->m[mm->n++] = (struct shoal_chat_msg){ !strcmp(rs, "system") ? "system" : !strcmp(rs, "user") ? "user" : "assistant", text };
        }
        if (!bad && !has_system && p->chat_system) {
            memmove(mm->m + 1, mm->m, (size_t)mm->n * sizeof mm->m[0]);
            mm->m[0] = (struct shoal_chat_msg){ "system", p->chat_system };
            mm->n++;
        }
        size_t(*spans)[2] = NULL; /* where the messages' text is: no control token parsed there */
        int n_spans = 0;
        shoal_status rc = bad ? SHOAL_OK
                              : shoal_chat_format_spans(p->chat_kind, mm->m, mm->n, 1, &prompt_text, &spans, &n_spans);
        free(mm);
        if (bad == 1) BAD(400, "messages", NULL, "a message's 'content' must be a string or an array of text parts");
        if (bad == 2) BAD(400, "messages", NULL, "a message's 'role' must be system, developer, user or assistant");
        if (bad == 3) BAD(400, "messages", NULL, "at most 255 messages");
        if (rc != SHOAL_OK) BAD(400, "messages", NULL, "%s", shoal_last_error());
        rc = shoal_tokenize_plain(srv->tok, prompt_text, strlen(prompt_text), p->add_bos, 1,
                                  p->parse_special ? NULL : spans, p->parse_special ? 0 : n_spans, &r->prompt,
                                  &r->n_prompt);
        free(spans);
        if (rc != SHOAL_OK) BAD(500, NULL, NULL, "out of memory");
    } else {
        const cJSON *pr = cJSON_GetObjectItemCaseSensitive(j, "prompt");
        if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) == 1 && cJSON_IsString(pr->child)) pr = pr->child;
        if (cJSON_IsString(pr)) {
            if (shoal_tokenize(srv->tok, pr->valuestring, strlen(pr->valuestring), p->add_bos, p->parse_special,
                               &r->prompt, &r->n_prompt) != SHOAL_OK)
                BAD(500, NULL, NULL, "out of memory");
        } else if (cJSON_IsArray(pr) && cJSON_GetArraySize(pr) > 0 && cJSON_IsNumber(pr->child)) {
            int n = cJSON_GetArraySize(pr), i = 0;
            if (!(r->prompt = malloc((size_t)n * sizeof *r->prompt))) BAD(500, NULL, NULL, "out of memory");
            const cJSON *t;
            cJSON_ArrayForEach(t, pr) {
                if (!cJSON_IsNumber(t) || t->valuedouble != floor(t->valuedouble) || t->valuedouble < 0 ||
                    t->valuedouble >= shoal_tokenizer_n_vocab(srv->tok))
                    BAD(400, "prompt", NULL, "'prompt' token %d is not a token id of this model (0 to %d)", i,
                        shoal_tokenizer_n_vocab(srv->tok) - 1);
                r->prompt[i++] = (int32_t)t->valuedouble;
            }
            r->n_prompt = (size_t)n;
        } else {
            BAD(400, "prompt", NULL, "'prompt' must be a string, or an array of token ids (n = 1: one prompt)");
        }
    }
    if (r->n_prompt == 0) BAD(400, "prompt", NULL, "the prompt is empty and the model adds no BOS token");
    if ((int)r->n_prompt > p->max_prompt || (int)r->n_prompt >= p->n_ctx)
        BAD(400, chat ? "messages" : "prompt", "context_length_exceeded",
            "the prompt is %zu tokens; this server takes at most %d (a sequence holds %d positions)", r->n_prompt,
            p->max_prompt < p->n_ctx - 1 ? p->max_prompt : p->n_ctx - 1, p->n_ctx);
    /* random: neither the request's memory (an id was once seed x K ^ its address) nor its seed */
    snprintf(r->id, sizeof r->id, "%s-%016llx", chat ? "chatcmpl" : "cmpl", (unsigned long long)random_u64());
    r->created = (long)time(NULL);
    r->t_start = shoal_now();
    shoal_detok_init(&r->detok, srv->tok);
    /* the detokenizer sees the prompt's last token first (a piece after BOS loses its space) */
    shoal_detok_push(&r->detok, r->prompt[r->n_prompt - 1], scratch, sizeof scratch);
    for (int i = 0; i < n_parts && i < 256; i++) free(parts[i]);
    free(prompt_text);
    cJSON_Delete(j);
    return r;

refuse:
    for (int i = 0; i < n_parts && i < 256; i++) free(parts[i]);
    free(prompt_text);
    if (r) req_unref(r);
    cJSON_Delete(j);
    return NULL;
#undef BAD
}

/* Whether the peer of a connection waiting for its answer has closed it (or reset it): its
 * socket reads as ended, or hangs up. Anything it sent beyond its request stays unread. */
static int client_gone(int fd) {
    struct pollfd p = { .fd = fd, .events = POLLIN | POLLRDHUP };
    if (poll(&p, 1, 0) <= 0) return 0;
    if (p.revents & (POLLHUP | POLLERR | POLLRDHUP)) return 1;
    char b;
    return recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == 0;
}

static enum MHD_Result generate(struct shoal_server *srv, struct MHD_Connection *c, int chat, const char *body,
                                size_t len) {
    struct refusal f = { 0 };
    struct req *r = parse_request(srv, chat, body, len, &f);
    if (!r) FAIL(f.status, f.status >= 500 ? "server_error" : "invalid_request_error", f.param, f.code, "%s", f.msg);
    /* in the queue, or refused */
    pthread_mutex_lock(&srv->mu);
    const int draining = srv->draining, full = srv->n_inflight >= srv->p.max_streams + srv->p.max_queue;
    if (!draining && !full) {
        srv->n_inflight++;
        r->refs++; /* the engine's */
        if (srv->inbox_tail) srv->inbox_tail->next = r;
        else srv->inbox = r;
        srv->inbox_tail = r;
        pthread_cond_signal(&srv->cv);
    }
    const int inflight = srv->n_inflight;
    pthread_mutex_unlock(&srv->mu);
    if (draining || full) {
        req_unref(r);
        if (draining) FAIL(503, "server_error", NULL, "server_shutting_down", "the server is shutting down");
        FAIL(429, "rate_limit_error", NULL, "too_many_requests",
             "too many requests: %d running or queued (shoal serve --parallel %d, --max-queue %d); try again later",
             inflight, srv->p.max_streams, srv->p.max_queue);
    }
    if (r->stream) {
        struct MHD_Response *resp = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, stream_reader, r,
                                                                      stream_done);
        if (!resp) {
            stream_done(r);
            return MHD_NO;
        }
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
        MHD_add_response_header(resp, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
        enum MHD_Result ok = MHD_queue_response(c, 200, resp);
        MHD_destroy_response(resp);
        count(srv, chat, 200);
        return ok;
    }
    /* the answer whole when it is done; meanwhile, every fifth of a second, whether the client
     * is still there: one that went away has its request cancelled (as a stream's is), not
     * run to its end for nobody */
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    const int fd = ci ? ci->connect_fd : -1;
    pthread_mutex_lock(&r->mu);
    double checked = shoal_now();
    while (!r->done) {
        const struct timespec until = in_ms(200);
        pthread_cond_timedwait(&r->cv, &r->mu, &until); /* woken by each token too */
        if (r->done || r->cancel || fd < 0 || shoal_now() - checked < 0.2) continue;
        checked = shoal_now();
        if (client_gone(fd)) {
            r->cancel = 1;
            pthread_mutex_unlock(&r->mu);
            pthread_mutex_lock(&srv->mu);
            pthread_cond_signal(&srv->cv); /* the engine cancels its sequence */
            pthread_mutex_unlock(&srv->mu);
            pthread_mutex_lock(&r->mu);
        }
    }
    const int failed = r->failed;
    char why[sizeof r->why];
    memcpy(why, r->why, sizeof why);
    cJSON *o = failed ? NULL : answer_json(r);
    pthread_mutex_unlock(&r->mu);
    req_unref(r);
    if (failed) FAIL(500, "server_error", NULL, NULL, "the model failed: %s", why[0] ? why : "see the server's log");
    count(srv, chat, 200);
    return send_json(c, 200, o);
}

/* ------------------------------------------------------------ the other endpoints */

static enum MHD_Result models(struct shoal_server *srv, struct MHD_Connection *c) {
    cJSON *o = cJSON_CreateObject(), *a = cJSON_AddArrayToObject(o, "data"), *m = cJSON_CreateObject();
    cJSON_AddStringToObject(o, "object", "list");
    cJSON_AddItemToArray(a, m);
    cJSON_AddStringToObject(m, "id", srv->p.model_id);
    cJSON_AddStringToObject(m, "object", "model");
    cJSON_AddNumberToObject(m, "created", 0);
    cJSON_AddStringToObject(m, "owned_by", "shoal");
    cJSON *meta = cJSON_AddObjectToObject(m, "meta");
    cJSON_AddNumberToObject(meta, "n_ctx", srv->p.n_ctx);
    cJSON_AddNumberToObject(meta, "n_vocab", shoal_tokenizer_n_vocab(srv->tok));
    return send_json(c, 200, o);
}

static void hist_text(char **at, char *end, const char *name, const char *help, const struct hist *h,
                      const double *bounds, int nb) {
    *at += snprintf(*at, (size_t)(end - *at), "# HELP %s %s\n# TYPE %s histogram\n", name, help, name);
    for (int i = 0; i < nb && *at < end; i++)
        *at += snprintf(*at, (size_t)(end - *at), "%s_bucket{le=\"%g\"} %llu\n", name, bounds[i],
                        (unsigned long long)h->n[i]);
    if (*at < end)
        *at += snprintf(*at, (size_t)(end - *at), "%s_bucket{le=\"+Inf\"} %llu\n%s_sum %.6f\n%s_count %llu\n", name,
                        (unsigned long long)h->count, name, h->sum, name, (unsigned long long)h->count);
}

static enum MHD_Result metrics(struct shoal_server *srv, struct MHD_Connection *c) {
    static const char *const CLASS[6] = { "200", "400", "4xx", "413", "429", "5xx" };
    pthread_mutex_lock(&srv->mu);
    const size_t cap = 16384 + (size_t)srv->n_pace * 256; /* three lines a rank */
    char *buf = malloc(cap), *at = buf, *end = buf + cap;
    if (!buf) {
        pthread_mutex_unlock(&srv->mu);
        return MHD_NO;
    }
    at += snprintf(at, (size_t)(end - at), "# HELP shoal_requests_total HTTP requests to the generation endpoints, "
                   "by endpoint and status\n# TYPE shoal_requests_total counter\n");
    for (int k = 0; k < 2; k++)
        for (int s = 0; s < 6; s++)
            at += snprintf(at, (size_t)(end - at), "shoal_requests_total{endpoint=\"%s\",status=\"%s\"} %llu\n",
                           k ? "chat" : "completions", CLASS[s], (unsigned long long)srv->requests[k][s]);
    const struct shoal_sched_stats *st = &srv->st;
    at += snprintf(at, (size_t)(end - at),
                   "# HELP shoal_prompt_tokens_total Prompt tokens of finished requests\n"
                   "# TYPE shoal_prompt_tokens_total counter\nshoal_prompt_tokens_total %llu\n"
                   "# HELP shoal_generation_tokens_total Tokens generated by finished requests\n"
                   "# TYPE shoal_generation_tokens_total counter\nshoal_generation_tokens_total %llu\n"
                   "# HELP shoal_requests_cancelled_total Requests whose client went away, or cut by a drain\n"
                   "# TYPE shoal_requests_cancelled_total counter\nshoal_requests_cancelled_total %llu\n"
                   "# HELP shoal_requests_running Sequences in the batch\n"
                   "# TYPE shoal_requests_running gauge\nshoal_requests_running %d\n"
                   "# HELP shoal_queue_length Requests waiting for a place in the batch\n"
                   "# TYPE shoal_queue_length gauge\nshoal_queue_length %d\n"
                   "# HELP shoal_batch_size Tokens in the last forward step\n"
                   "# TYPE shoal_batch_size gauge\nshoal_batch_size %d\n"
                   "# HELP shoal_batch_sequences Sequences in the last forward step\n"
                   "# TYPE shoal_batch_sequences gauge\nshoal_batch_sequences %d\n"
                   "# HELP shoal_steps_total Forward steps\n# TYPE shoal_steps_total counter\nshoal_steps_total %llu\n"
                   "# HELP shoal_batch_tokens_total Tokens over all forward steps\n"
                   "# TYPE shoal_batch_tokens_total counter\nshoal_batch_tokens_total %llu\n"
                   "# HELP shoal_lane_steps_total Forward steps whose layers rank 0 ran cut into lanes, a "
                   "thread's share of the sequences each\n"
                   "# TYPE shoal_lane_steps_total counter\nshoal_lane_steps_total %llu\n"
                   "# HELP shoal_expert_runs_total A mixture of experts: experts rank 0 ran (each once a layer in "
                   "a step, or a lane's)\n# TYPE shoal_expert_runs_total counter\nshoal_expert_runs_total %llu\n"
                   "# HELP shoal_expert_bytes_total The bytes of those experts' weights (what their reads cost)\n"
                   "# TYPE shoal_expert_bytes_total counter\nshoal_expert_bytes_total %llu\n"
                   "# HELP shoal_preemptions_total Sequences preempted for KV blocks (recomputed later)\n"
                   "# TYPE shoal_preemptions_total counter\nshoal_preemptions_total %llu\n"
                   "# HELP shoal_kv_blocks_used KV cache blocks taken\n"
                   "# TYPE shoal_kv_blocks_used gauge\nshoal_kv_blocks_used %d\n"
                   "# HELP shoal_kv_blocks KV cache blocks in all\n# TYPE shoal_kv_blocks gauge\nshoal_kv_blocks %d\n"
                   "# HELP shoal_kv_cache_usage_ratio Share of the KV cache taken\n"
                   "# TYPE shoal_kv_cache_usage_ratio gauge\nshoal_kv_cache_usage_ratio %.4f\n"
                   "# HELP shoal_spec_draft_tokens_total Speculative decoding (--lookup): tokens drafted\n"
                   "# TYPE shoal_spec_draft_tokens_total counter\nshoal_spec_draft_tokens_total %llu\n"
                   "# HELP shoal_spec_accepted_tokens_total Of them, accepted: tokens generated without a step "
                   "of their own\n# TYPE shoal_spec_accepted_tokens_total counter\nshoal_spec_accepted_tokens_total %llu\n"
                   "# HELP shoal_draft_model_steps_total Forward steps of the draft model (--draft-model)\n"
                   "# TYPE shoal_draft_model_steps_total counter\nshoal_draft_model_steps_total %llu\n",
                   (unsigned long long)srv->prompt_tokens, (unsigned long long)srv->gen_tokens,
                   (unsigned long long)srv->cancelled, st->running,
                   srv->n_inflight - st->running > 0 ? srv->n_inflight - st->running : 0, st->last_batch,
                   st->last_seqs, (unsigned long long)st->steps, (unsigned long long)srv->batch_tokens_sum,
                   (unsigned long long)st->lane_steps, (unsigned long long)st->expert_runs,
                   (unsigned long long)st->expert_bytes, (unsigned long long)st->preemptions, st->blocks_used, st->blocks,
                   st->blocks ? (double)st->blocks_used / st->blocks : 0.0, (unsigned long long)st->drafted,
                   (unsigned long long)st->accepted, (unsigned long long)st->draft_steps);
    if (srv->n_pace) {
        at += snprintf(at, (size_t)(end - at),
                       "# HELP shoal_rank_compute_seconds_total Each rank's time computing its part of the steps (gathered "
                       "when idle, or every %.0f s while steps run)\n# TYPE shoal_rank_compute_seconds_total counter\n", PACE_EVERY);
        for (int k = 0; k < srv->n_pace && at < end; k++)
            at += snprintf(at, (size_t)(end - at), "shoal_rank_compute_seconds_total{rank=\"%d\"} %.6f\n", k,
                           srv->pace[k].compute_s);
        if (at < end)
            at += snprintf(at, (size_t)(end - at),
                           "# HELP shoal_rank_wait_seconds_total Each rank's time waiting: for the others, the links, "
                           "and for the next step\n# TYPE shoal_rank_wait_seconds_total counter\n");
        for (int k = 0; k < srv->n_pace && at < end; k++)
            at += snprintf(at, (size_t)(end - at), "shoal_rank_wait_seconds_total{rank=\"%d\"} %.6f\n", k,
                           srv->pace[k].wait_s);
        if (at < end)
            at += snprintf(at, (size_t)(end - at), "# HELP shoal_rank_steps_total Steps each rank ran\n"
                           "# TYPE shoal_rank_steps_total counter\n");
        for (int k = 0; k < srv->n_pace && at < end; k++)
            at += snprintf(at, (size_t)(end - at), "shoal_rank_steps_total{rank=\"%d\"} %.0f\n", k,
                           srv->pace[k].steps);
    }
    hist_text(&at, end, "shoal_time_to_first_token_seconds", "From a request's arrival to its first token",
              &srv->ttft, TTFT_BUCKETS, N_TTFT);
    hist_text(&at, end, "shoal_inter_token_latency_seconds", "Between a request's consecutive tokens", &srv->itl,
              ITL_BUCKETS, N_ITL);
    hist_text(&at, end, "shoal_step_sequences", "Sequences in each forward step (the batch)", &srv->step_seqs,
              SEQS_BUCKETS, N_SEQS);
    pthread_mutex_unlock(&srv->mu);
    pthread_mutex_lock(&srv->watch_mu);
    at += snprintf(at, (size_t)(end - at),
                   "# HELP shoal_http_connections_cut_total Connections closed at a deadline: a request's headers "
                   "not in within --header-timeout, or its body within --body-timeout\n"
                   "# TYPE shoal_http_connections_cut_total counter\n"
                   "shoal_http_connections_cut_total{stage=\"headers\"} %llu\n"
                   "shoal_http_connections_cut_total{stage=\"body\"} %llu\n",
                   (unsigned long long)srv->cut_header, (unsigned long long)srv->cut_body);
    pthread_mutex_unlock(&srv->watch_mu);
    enum MHD_Result ok = send_text(c, 200, "text/plain; version=0.0.4", buf);
    free(buf);
    return ok;
}

/* ------------------------------------------------------------ the connection handler */

/*
 * Deadlines (issue 19): libmicrohttpd closes a connection only when it has
 * been idle for its timeout, so a client that sends a header byte every
 * minute holds a connection for ever. Each connection is watched from its
 * opening: its request's headers must be in within header_seconds (of the
 * opening, or of the previous answer's end on a kept-alive connection), then
 * its body within body_seconds; answering has no deadline. A thread looks
 * every quarter second and shuts a late connection's socket down, which ends
 * it in libmicrohttpd's own thread. The socket is shut down only while its
 * connection is in the list, and libmicrohttpd takes it out (the CLOSED
 * notice) before it closes the socket, so a number reused by a later
 * connection is never touched.
 */
enum { WAIT_HEADERS, IN_BODY, ANSWERING };

struct watch {
    struct watch *prev, *next;
    int fd, stage, cut;
    double since; /* when the stage began */
};

static struct watch *watch_of(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_SOCKET_CONTEXT);
    return ci ? ci->socket_context : NULL;
}

static void watch_stage(struct shoal_server *srv, struct MHD_Connection *c, int stage) {
    struct watch *w = watch_of(c);
    if (!w) return;
    pthread_mutex_lock(&srv->watch_mu);
    w->stage = stage;
    w->since = shoal_now();
    pthread_mutex_unlock(&srv->watch_mu);
}

static void watch_connection(void *cls, struct MHD_Connection *c, void **socket_context,
                             enum MHD_ConnectionNotificationCode code) {
    struct shoal_server *srv = cls;
    if (code == MHD_CONNECTION_NOTIFY_STARTED) {
        const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
        struct watch *w = ci ? calloc(1, sizeof *w) : NULL;
        if (!w) return; /* unwatched: the idle timeout still ends it */
        w->fd = ci->connect_fd;
        w->stage = WAIT_HEADERS;
        w->since = shoal_now();
        pthread_mutex_lock(&srv->watch_mu);
        w->next = srv->watched;
        if (w->next) w->next->prev = w;
        srv->watched = w;
        pthread_mutex_unlock(&srv->watch_mu);
        *socket_context = w;
    } else if (code == MHD_CONNECTION_NOTIFY_CLOSED && *socket_context) {
        struct watch *w = *socket_context;
        pthread_mutex_lock(&srv->watch_mu);
        if (w->prev) w->prev->next = w->next;
        else srv->watched = w->next;
        if (w->next) w->next->prev = w->prev;
        pthread_mutex_unlock(&srv->watch_mu);
        free(w);
        *socket_context = NULL;
    }
}

static void *watchdog_main(void *arg) {
    struct shoal_server *srv = arg;
    pthread_mutex_lock(&srv->watch_mu);
    while (!srv->watch_stop) {
        const double now = shoal_now();
        for (struct watch *w = srv->watched; w; w = w->next) {
            const int late_headers = w->stage == WAIT_HEADERS && now - w->since > srv->p.header_seconds,
                      late_body = w->stage == IN_BODY && now - w->since > srv->p.body_seconds;
            if (w->cut || !(late_headers || late_body)) continue;
            shutdown(w->fd, SHUT_RDWR);
            w->cut = 1;
            if (late_headers) srv->cut_header++;
            else srv->cut_body++;
        }
        const struct timespec ts = in_ms(250);
        pthread_cond_timedwait(&srv->watch_cv, &srv->watch_mu, &ts);
    }
    pthread_mutex_unlock(&srv->watch_mu);
    return NULL;
}

struct conn {
    char *body;
    size_t len, cap;
    int too_big;
    size_t seen; /* bytes of the body received, kept or not */
};

static int authorized(const struct shoal_server *srv, struct MHD_Connection *c) {
    if (!srv->p.api_key) return 1;
    const char *h = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    if (!h || strncmp(h, "Bearer ", 7)) return 0;
    /* the same time whatever the key's first differing byte */
    const char *k = srv->p.api_key, *g = h + 7;
    size_t kl = strlen(k), gl = strlen(g);
    unsigned diff = kl != gl;
    for (size_t i = 0; i < kl; i++) diff |= (unsigned)(k[i] ^ (i < gl ? g[i] : 0));
    return diff == 0;
}

static enum MHD_Result handle(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                              const char *version, const char *upload, size_t *upload_size, void **con_cls) {
    (void)version;
    struct shoal_server *srv = cls;
    struct conn *cn = *con_cls;
    const int post = strcmp(method, "POST") == 0, get = strcmp(method, "GET") == 0;
    const int chat = strcmp(url, "/v1/chat/completions") == 0, gen = chat || strcmp(url, "/v1/completions") == 0;
    if (!cn) {
        /* the headers: a request without the key is refused before its body is read (it
         * would hold --max-body of memory per connection), and so is a body announced far
         * too large (a client still sending sees the connection close), on any method; one
         * somewhat too large is read and dropped, so that every client gets to read the 413 */
        if (!(cn = calloc(1, sizeof *cn))) return MHD_NO;
        *con_cls = cn;
        watch_stage(srv, c, IN_BODY);
        pthread_mutex_lock(&srv->mu);
        srv->n_http++;
        pthread_mutex_unlock(&srv->mu);
        if (strcmp(url, "/health") != 0 && !authorized(srv, c))
            FAIL(401, "invalid_request_error", NULL, "invalid_api_key",
                 "a valid API key is needed: send the header 'Authorization: Bearer KEY'");
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > 16 * (unsigned long long)srv->p.max_body)
            FAIL(413, "invalid_request_error", NULL, "request_too_large",
                 "the body is %s bytes; this server takes at most %zu (shoal serve --max-body)", cl, srv->p.max_body);
        return MHD_YES;
    }
    if (*upload_size) { /* the body, kept up to the limit */
        /* a body with no length (chunked) that goes on past what an announced one may: refused
         * as it comes, the connection closed, rather than read and dropped without end */
        cn->seen += *upload_size;
        if (cn->seen > 16 * srv->p.max_body) {
            *upload_size = 0;
            FAIL(413, "invalid_request_error", NULL, "request_too_large",
                 "the body is over %zu bytes; this server takes at most %zu (shoal serve --max-body)",
                 16 * srv->p.max_body, srv->p.max_body);
        }
        if (cn->len + *upload_size > srv->p.max_body) {
            cn->too_big = 1;
        } else {
            if (cn->len + *upload_size > cn->cap) {
                size_t cap = (cn->len + *upload_size) * 2;
                if (cap > srv->p.max_body) cap = srv->p.max_body;
                char *b = realloc(cn->body, cap);
                if (!b) return MHD_NO;
                cn->body = b;
                cn->cap = cap;
            }
            memcpy(cn->body + cn->len, upload, *upload_size);
            cn->len += *upload_size;
        }
        *upload_size = 0;
        return MHD_YES;
    }
    watch_stage(srv, c, ANSWERING); /* the body is in */
    if (strcmp(url, "/health") == 0) {
        if (!get) FAIL(405, "invalid_request_error", NULL, NULL, "use GET /health");
        pthread_mutex_lock(&srv->mu);
        int draining = srv->draining;
        pthread_mutex_unlock(&srv->mu);
        return send_text(c, draining ? 503 : 200, "application/json",
                         draining ? "{\"status\":\"draining\"}" : "{\"status\":\"ok\"}");
    }
    if (cn->too_big)
        FAIL(413, "invalid_request_error", NULL, "request_too_large",
             "the body is over %zu bytes (shoal serve --max-body)", srv->p.max_body);
    if (strcmp(url, "/v1/models") == 0) {
        if (!get) FAIL(405, "invalid_request_error", NULL, NULL, "use GET /v1/models");
        return models(srv, c);
    }
    if (strcmp(url, "/metrics") == 0) {
        if (!get) FAIL(405, "invalid_request_error", NULL, NULL, "use GET /metrics");
        return metrics(srv, c);
    }
    if (gen) {
        if (!post) FAIL(405, "invalid_request_error", NULL, NULL, "use POST %s", url);
        return generate(srv, c, chat, cn->body ? cn->body : "", cn->len);
    }
    FAIL(404, "invalid_request_error", NULL, "not_found", "no such endpoint: %s %.200s", method, url);
}

/* A request answered to its last byte, or its connection gone. */
static void completed(void *cls, struct MHD_Connection *c, void **con_cls, enum MHD_RequestTerminationCode toe) {
    (void)toe;
    struct shoal_server *srv = cls;
    struct conn *cn = *con_cls;
    watch_stage(srv, c, WAIT_HEADERS); /* a kept-alive connection's next request */
    if (!cn) return;
    free(cn->body);
    free(cn);
    *con_cls = NULL;
    pthread_mutex_lock(&srv->mu);
    srv->n_http--;
    pthread_mutex_unlock(&srv->mu);
}

/* ------------------------------------------------------------ lifetime */

shoal_status shoal_server_create(struct shoal_server **out, const struct shoal_server_params *p,
                                 const struct shoal_tokenizer *tok, struct shoal_sched *sc) {
    *out = NULL;
    struct shoal_server *srv = calloc(1, sizeof *srv);
    if (!srv) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    srv->p = *p;
    if (!srv->p.host) srv->p.host = "127.0.0.1";
    if (!srv->p.max_body) srv->p.max_body = 1 << 20;
    if (srv->p.max_streams < 1) srv->p.max_streams = 1;
    if (srv->p.max_conns < 1) srv->p.max_conns = 512;
    if (srv->p.max_conns_per_client < 1 || srv->p.max_conns_per_client > srv->p.max_conns)
        srv->p.max_conns_per_client = srv->p.max_conns / 2 > 0 ? srv->p.max_conns / 2 : 1;
    if (srv->p.drain_seconds <= 0) srv->p.drain_seconds = 30;
    if (!(srv->p.header_seconds > 0)) srv->p.header_seconds = 30;
    if (!(srv->p.body_seconds > 0)) srv->p.body_seconds = 60;
    if (srv->p.max_prompt <= 0) srv->p.max_prompt = p->n_ctx;
    srv->tok = tok;
    srv->sc = sc;
    pthread_mutex_init(&srv->mu, NULL);
    pthread_cond_init(&srv->cv, NULL);
    pthread_mutex_init(&srv->watch_mu, NULL);
    pthread_cond_init(&srv->watch_cv, NULL);
    shoal_sched_stats(sc, &srv->st);
    if (pthread_create(&srv->watchdog, NULL, watchdog_main, srv) != 0) {
        shoal_server_destroy(srv);
        return shoal_errorf(SHOAL_NOMEM, "cannot start the server's connection watchdog thread");
    }
    srv->watchdog_on = 1;

    struct addrinfo hints = { .ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_NUMERICSERV },
                    *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int gai = getaddrinfo(srv->p.host, port, &hints, &ai);
    if (gai != 0) {
        shoal_server_destroy(srv);
        return shoal_errorf(SHOAL_INVALID, "--host %s: %s", p->host, gai_strerror(gai));
    }
    unsigned flags = MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_ITC | MHD_USE_ERROR_LOG;
    if (ai->ai_family == AF_INET6) flags |= MHD_USE_IPv6;
    srv->d = MHD_start_daemon(flags, (uint16_t)p->port, NULL, NULL, handle, srv, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                              MHD_OPTION_NOTIFY_COMPLETED, completed, srv, MHD_OPTION_NOTIFY_CONNECTION,
                              watch_connection, srv, MHD_OPTION_CONNECTION_LIMIT,
                              (unsigned)srv->p.max_conns, MHD_OPTION_PER_IP_CONNECTION_LIMIT,
                              (unsigned)srv->p.max_conns_per_client, MHD_OPTION_CONNECTION_TIMEOUT, 120u,
                              MHD_OPTION_THREAD_STACK_SIZE, (size_t)(512 * 1024), MHD_OPTION_END);
    freeaddrinfo(ai);
    if (!srv->d) {
        shoal_server_destroy(srv);
        return shoal_errorf(SHOAL_IO, "cannot listen on %s port %d: %s (another server there? --port to choose)",
                            p->host, p->port, strerror(errno));
    }
    const union MHD_DaemonInfo *info = MHD_get_daemon_info(srv->d, MHD_DAEMON_INFO_BIND_PORT);
    srv->port = info ? info->port : p->port;
    *out = srv;
    return SHOAL_OK;
}

int shoal_server_port(const struct shoal_server *srv) { return srv->port; }

void shoal_server_destroy(struct shoal_server *srv) {
    if (!srv) return;
    /* nothing new; requests that never reached the engine fail (their connections wait) */
    pthread_mutex_lock(&srv->mu);
    srv->draining = 1;
    struct req *r = srv->inbox;
    srv->inbox = srv->inbox_tail = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (r) {
        struct req *next = r->next;
        end_unrun(r, 1);
        r = next;
    }
    if (srv->d) {
        /* answers still being written (the end of a stream, a final JSON) go out first:
         * stopping the daemon closes every connection; 10 s at most */
        MHD_quiesce_daemon(srv->d);
        for (int i = 0; i < 1000; i++) {
            pthread_mutex_lock(&srv->mu);
            int busy = srv->n_http;
            pthread_mutex_unlock(&srv->mu);
            if (!busy) break;
            struct timespec ts = { 0, 10 * 1000 * 1000 };
            nanosleep(&ts, NULL);
        }
        MHD_stop_daemon(srv->d);
    }
    if (srv->watchdog_on) {
        pthread_mutex_lock(&srv->watch_mu);
        srv->watch_stop = 1;
        pthread_cond_signal(&srv->watch_cv);
        pthread_mutex_unlock(&srv->watch_mu);
        pthread_join(srv->watchdog, NULL);
    }
    free(srv->live);
    free(srv->pace);
    pthread_mutex_destroy(&srv->mu);
    pthread_cond_destroy(&srv->cv);
    pthread_mutex_destroy(&srv->watch_mu);
    pthread_cond_destroy(&srv->watch_cv);
    free(srv);
}

/* ------------------------------------------------------------ the engine */

/* The inbox into the scheduler; requests whose client left meanwhile end at once. */
static void take_inbox(struct shoal_server *srv) {
    pthread_mutex_lock(&srv->mu);
    struct req *r = srv->inbox;
    srv->inbox = srv->inbox_tail = NULL;
    pthread_mutex_unlock(&srv->mu);
    while (r) {
        struct req *next = r->next;
        r->next = NULL;
        pthread_mutex_lock(&r->mu);
        int cancel = r->cancel;
        pthread_mutex_unlock(&r->mu);
        struct shoal_seq_cb cb = { on_token, on_end, r };
        shoal_status rc = SHOAL_INVALID;
        if (!cancel && srv->n_live < srv->cap_live) {
            rc = shoal_sched_add(srv->sc, r->prompt, (int)r->n_prompt, r->max_tokens, &r->sp, &cb, &r->seq);
            if (rc != SHOAL_OK) SHOAL_LOGW("serve", "a request was refused: %s", shoal_last_error());
        }
        if (rc == SHOAL_OK) {
            r->queued = 1;
            srv->live[srv->n_live++] = r;
        } else {
            end_unrun(r, !cancel);
        }
        r = next;
    }
}

shoal_status shoal_server_run(struct shoal_server *srv, volatile sig_atomic_t *stop) {
    srv->cap_live = srv->p.max_streams + srv->p.max_queue + 1;
    if (!(srv->live = calloc((size_t)srv->cap_live, sizeof *srv->live))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    double deadline = 0;
    shoal_status rc = SHOAL_OK;
    for (;;) {
        if (*stop && !deadline) {
            pthread_mutex_lock(&srv->mu);
            srv->draining = 1;
            pthread_mutex_unlock(&srv->mu);
            /* 2: mpirun is ending the job (its SIGKILL is a second away): what finishes at once */
            const double drain = *stop > 1 ? 0.3 : srv->p.drain_seconds;
            deadline = shoal_now() + drain;
            SHOAL_LOGW("serve", "draining: %d request(s) in flight, at most %.1f s%s", srv->n_live, drain,
                       *stop > 1 ? " (mpirun is ending the job)" : "");
        }
        take_inbox(srv);
        /* clients gone (or the drain's time up): their sequences cancelled */
        const int late = deadline && shoal_now() > deadline;
        for (int i = 0; i < srv->n_live; i++) {
            struct req *r = srv->live[i];
            pthread_mutex_lock(&r->mu);
            int cancel = (r->cancel || late) && !r->cancel_sent && !r->done;
            if (cancel) r->cancel_sent = 1;
            pthread_mutex_unlock(&r->mu);
            if (cancel) shoal_sched_cancel(srv->sc, r->seq);
        }
        int worked = 0;
        rc = shoal_sched_step(srv->sc, &worked);
        if (rc == SHOAL_OK && !worked) rc = shoal_sched_keepalive(srv->sc);
        /* every rank's pace for /metrics, now and then */
        const struct shoal_rank_pace *pace = NULL;
        int n_pace = 0;
        if (rc == SHOAL_OK) rc = shoal_sched_pace(srv->sc, PACE_EVERY, !worked, &pace, &n_pace);
        if (n_pace) {
            pthread_mutex_lock(&srv->mu);
            if (!srv->pace) srv->pace = calloc((size_t)n_pace, sizeof *srv->pace);
            if (srv->pace) {
                memcpy(srv->pace, pace, sizeof *pace * (size_t)n_pace);
                srv->n_pace = n_pace;
            }
            pthread_mutex_unlock(&srv->mu);
        }
        struct shoal_sched_stats st;
        shoal_sched_stats(srv->sc, &st);
        pthread_mutex_lock(&srv->mu);
        if (worked) {
            srv->batch_tokens_sum += (uint64_t)st.last_batch;
            hist_add(&srv->step_seqs, SEQS_BUCKETS, N_SEQS, st.last_seqs);
        }
        srv->st = st;
        const int idle = !srv->inbox && !srv->n_live;
        if (rc != SHOAL_OK || (deadline && idle)) {
            srv->draining = 1;
            pthread_mutex_unlock(&srv->mu);
            break;
        }
        if (!worked && !*stop) {
            const struct timespec ts = in_ms(50);
            if (!srv->inbox) pthread_cond_timedwait(&srv->cv, &srv->mu, &ts);
        }
        pthread_mutex_unlock(&srv->mu);
    }
    if (rc != SHOAL_OK) { /* the model failed: every request still there fails */
        char why[1024];
        snprintf(why, sizeof why, "%s", shoal_last_error());
        for (int i = 0; i < srv->n_live; i++) {
            struct req *r = srv->live[i];
            pthread_mutex_lock(&r->mu);
            r->failed = 1;
            snprintf(r->why, sizeof r->why, "%.300s", why);
            pthread_mutex_unlock(&r->mu);
            shoal_sched_cancel(srv->sc, r->seq);
        }
        /* they end (as failed) when the caller destroys the scheduler */
        shoal_errorf(rc, "%s", why);
    }
    return rc;
}
