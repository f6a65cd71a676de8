/*
 * cmd_bench.c — `shoal bench`: llama-bench's measurements, for every layout.
 *
 * Tests as llama-bench's: "ppN" runs a prompt of N tokens in batches of -b
 * from an empty context (its last token's logits computed), "tgN" decodes N
 * tokens one step at a time; both on pseudo-random tokens (a fixed sequence:
 * every run and layout the same), optionally after -d tokens already in the
 * context (run untimed before each repetition). Each test runs once to warm
 * up, then -r times; a row gives tokens/s as the mean and the standard
 * deviation of the runs' rates.
 *
 * A pass is a combination of the lists -t, -b and --kv-type: every rank sets
 * up, loads (from the page cache after the first), runs the tests (rank 0
 * drives them, the others follow its steps) and releases all (run_pass).
 * After the tests every rank's figures are gathered to rank 0: the bytes of
 * weights it holds, its peak RSS and device memory, the bytes it sent per
 * prompt token and per decode step. Rank 0 measures the memory bandwidth
 * with the threads of every rank on its machine before the tests (the
 * others wait, sleeping), so that a generation row can say what share of it
 * the ranks' weights, read once a token, took; on several machines that
 * share would mix hosts and is left out.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cjson/cJSON.h>

#include "../cpu/cpu.h"
#include "../cpu/membw.h"
#include "../runtime/backend.h"
#include "../runtime/generate.h"
#include "../runtime/model.h"
#include "../runtime/tokenizer.h"
#include "launch.h"
#include "run.h"

#define BENCH_MAX_TOKENS (1 << 20) /* the largest -p, -n or -d item */

struct bench_row {
    char model[160], backend[192], layout[96], kv[8], test[48];
    int threads, n_batch, tp, pp, ranks, gen, n_tokens, depth, n_runs;
    double device_mem;   /* --device-mem, bytes (0: none) */
    double tps_mean, tps_std, *runs;
    /* gathered after the pass */
    double weight_bytes, params; /* of one replica's ranks together */
    double peak_rss, dev_peak;   /* the most of any rank */
    double sent;                 /* bytes a rank sent per token: the most of any rank */
    double membw;                /* bytes/s of rank 0's machine, with every local rank's threads (0: not measured) */
};

struct bench_state {
    struct bench_row *rows;
    int n, cap, first; /* rows [first, n): the pass under way's */
    int local;         /* ranks on rank 0's machine (of every rank's: shoal_comm_local_size) */
    int n_batch;       /* the pass's -b */
    int multi_host;
    double membw[BENCH_MAX][2]; /* the bandwidth measured for a thread count: {threads, bytes/s} */
    int n_membw;
};

/* ------------------------------------------------------------------ options */

/* "64,512" -> ints in [lo, hi]: their count, or -1 (said on err, naming the option). */
static int parse_list(const char *s, int *out, int lo, int hi, const char *opt, FILE *err) {
    int n = 0;
    for (const char *p = s;;) {
        char *end;
        errno = 0;
        const long v = strtol(p, &end, 10);
        if (end == p || errno || v < lo || v > hi || (*end && *end != ',')) {
            if (err)
                fprintf(err, "shoal bench: %s '%s': give whole numbers from %d to %d, separated by commas\n",
                        opt, s, lo, hi);
            return -1;
        }
        if (n == BENCH_MAX) {
            if (err) fprintf(err, "shoal bench: %s '%s': at most %d values\n", opt, s, BENCH_MAX);
            return -1;
        }
        out[n++] = (int)v;
        if (!*end) return n;
        p = end + 1;
    }
}

int bench_parse(struct run_opts *o, FILE *err) {
    struct bench_opts *bo = &o->bo;
    if ((bo->np = parse_list(bo->p_s ? bo->p_s : "512", bo->p, 0, BENCH_MAX_TOKENS, "-p", err)) < 0 ||
        (bo->nn = parse_list(bo->n_s ? bo->n_s : "128", bo->n, 0, BENCH_MAX_TOKENS, "-n", err)) < 0 ||
        (bo->nd = parse_list(bo->d_s ? bo->d_s : "0", bo->d, 0, BENCH_MAX_TOKENS, "-d", err)) < 0 ||
        (bo->nt = parse_list(bo->t_s ? bo->t_s : "0", bo->t, bo->t_s ? 1 : 0, 4096, "-t", err)) < 0 ||
        (bo->nb = parse_list(bo->b_s ? bo->b_s : "512", bo->b, 1, 65536, "-b", err)) < 0)
        return 3;
    bo->nkv = 0;
    char kv[64];
    snprintf(kv, sizeof kv, "%s", bo->kv_s ? bo->kv_s : "f16");
    if (bo->kv_s && strlen(bo->kv_s) >= sizeof kv) {
        if (err) fprintf(err, "shoal bench: --kv-type '%.40s...': too long\n", bo->kv_s);
        return 3;
    }
    for (char *save = NULL, *t = strtok_r(kv, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        const int k = shoal_kv_type_from_name(t);
        if (k < 0 || bo->nkv == BENCH_MAX) {
            if (err) fprintf(err, "shoal bench: --kv-type '%s': give f32, f16 or q8, separated by commas\n", bo->kv_s);
            return 3;
        }
        bo->kv[bo->nkv++] = k;
    }
    if (!bo->nkv) {
        if (err) fprintf(err, "shoal bench: --kv-type '%s': give f32, f16 or q8\n", bo->kv_s);
        return 3;
    }
    int most = 0, depth = 0;
    for (int i = 0; i < bo->np; i++) most = bo->p[i] > most ? bo->p[i] : most;
    for (int i = 0; i < bo->nn; i++) most = bo->n[i] > most ? bo->n[i] : most;
    for (int i = 0; i < bo->nd; i++) depth = bo->d[i] > depth ? bo->d[i] : depth;
    if (!most) {
        if (err) fprintf(err, "shoal bench: nothing to measure: every -p and -n is 0\n");
        return 3;
    }
    if (bo->reps < 1 || bo->reps > 1000) {
        if (err) fprintf(err, "shoal bench: -r %d: give 1 to 1000 repetitions\n", bo->reps);
        return 3;
    }
    if (!bo->fmt) bo->fmt = "md";
    if (strcmp(bo->fmt, "md") && strcmp(bo->fmt, "csv") && strcmp(bo->fmt, "json")) {
        if (err) fprintf(err, "shoal bench: -o '%s' is not one of md, csv, json\n", bo->fmt);
        return 3;
    }
    /* the context every test fits in (each item at most 2^20: no overflow) */
    o->n_ctx = depth + most;
    o->threads = bo->t[0];
    o->n_batch = bo->b[0];
    o->kv_name = shoal_kv_type_name(bo->kv[0]);
    o->kv_type = bo->kv[0];
    o->sp.temp = 0; /* only the best logit travels between ranks, as in a greedy run */
    return 0;
}

/* --------------------------------------------------------------- the tests */

/* n tokens of toks from position pos0, in batches of n_batch (one a step when one): the last
 * token's logits computed, as a prompt's are. */
static shoal_status run_tokens(struct run *r, struct shoal_seq_batch *sb, const int32_t *toks, int n, int pos0,
                               int n_batch, float *logits) {
    for (int i = 0; i < n; i += n_batch) {
        const int k = n - i < n_batch ? n - i : n_batch;
        shoal_seq_batch_set(sb, toks + i, k, pos0 + i);
        SHOAL_TRY(shoal_forward(r->st, &sb->b, k - 1, 1, logits));
    }
    return SHOAL_OK;
}

/* A new row, zeroed; NULL when out of memory. */
static struct bench_row *add_row(struct bench_state *bs) {
    if (bs->n == bs->cap) {
        const int cap = bs->cap ? 2 * bs->cap : 16;
        struct bench_row *rows = realloc(bs->rows, sizeof *rows * (size_t)cap);
        if (!rows) return NULL;
        bs->rows = rows;
        bs->cap = cap;
    }
    struct bench_row *row = &bs->rows[bs->n++];
    memset(row, 0, sizeof *row);
    return row;
}

/* The bandwidth of rank 0's machine with threads threads, measured once per count. */
static double membw(struct bench_state *bs, int threads) {
    for (int i = 0; i < bs->n_membw; i++)
        if ((int)bs->membw[i][0] == threads) return bs->membw[i][1];
    double bw = 0;
    if (shoal_membw_measure(threads, (size_t)512 << 20, 5, &bw) != SHOAL_OK) bw = 0;
    if (bs->n_membw < BENCH_MAX) {
        bs->membw[bs->n_membw][0] = threads;
        bs->membw[bs->n_membw++][1] = bw;
    }
    return bw;
}

/* One test: a warm-up, then the repetitions, each after the depth's tokens; into row. */
static shoal_status one_test(struct run *r, struct shoal_seq_batch *sb, const int32_t *toks, float *logits,
                             struct bench_row *row) {
    const int reps = r->o.bo.reps, n = row->n_tokens, d = row->depth;
    const int step = row->gen ? 1 : r->o.n_batch;
    if (!(row->runs = malloc(sizeof *row->runs * (size_t)reps))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int k = -1; k < reps; k++) {
        if (d) SHOAL_TRY(run_tokens(r, sb, toks, d, 0, r->o.n_batch, logits));
        const int m = k < 0 && row->gen && n > 16 ? 16 : n; /* a generation's warm-up: 16 steps */
        const double t0 = shoal_now();
        SHOAL_TRY(run_tokens(r, sb, toks + d, m, d, step, logits));
        const double dt = shoal_now() - t0;
        if (k >= 0) row->runs[row->n_runs++] = dt > 0 ? n / dt : 0;
    }
    double sum = 0, sq = 0;
    for (int k = 0; k < reps; k++) sum += row->runs[k];
    row->tps_mean = sum / reps;
    for (int k = 0; k < reps; k++) sq += (row->runs[k] - row->tps_mean) * (row->runs[k] - row->tps_mean);
    row->tps_std = reps > 1 ? sqrt(sq / (reps - 1)) : 0;
    return SHOAL_OK;
}

int bench_lead(struct run *r) {
    struct bench_state *bs = r->bench;
    const struct bench_opts *bo = &r->o.bo;
    const int n_ctx = r->st->n_ctx, n_vocab = r->m->hp.n_vocab;
    int vocab = shoal_tokenizer_n_vocab(r->tok);
    vocab = vocab > 0 && vocab < n_vocab ? vocab : n_vocab;
    bs->first = bs->n;
    /* rank 0's machine's bandwidth, every rank there reading at once as they decode (measured
     * before the first pass: bench_main) */
    const double bw = bs->multi_host ? 0 : membw(bs, r->threads * bs->local);
    struct shoal_seq_batch sb = { 0 };
    int32_t *toks = malloc(sizeof *toks * (size_t)n_ctx);
    float *logits = malloc(sizeof *logits * (size_t)n_vocab);
    shoal_status rc = toks && logits ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
    if (rc == SHOAL_OK) rc = shoal_seq_batch_init(&sb, r->o.n_batch, n_ctx);
    uint64_t x = 0x9e3779b97f4a7c15ull; /* the same pseudo-random tokens in every run */
    for (int i = 0; toks && i < n_ctx; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        toks[i] = (int32_t)(x % (uint64_t)vocab);
    }
    char desc[sizeof r->dev_desc];
    snprintf(desc, sizeof desc, "%s", r->dev_desc);
    desc[strcspn(desc, ",:")] = 0; /* "cpu avx512", "cuda 0" */
    for (int di = 0; rc == SHOAL_OK && di < bo->nd; di++)
        for (int ti = 0; rc == SHOAL_OK && ti < bo->np + bo->nn; ti++) {
            const int gen = ti >= bo->np, n = gen ? bo->n[ti - bo->np] : bo->p[ti];
            if (!n) continue;
            struct bench_row *row = add_row(bs);
            if (!row) {
                rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
                break;
            }
            snprintf(row->model, sizeof row->model, "%.120s %s", r->m->hp.name, shoal_dtype_name(r->m->main_type));
            snprintf(row->backend, sizeof row->backend, "%s", desc);
            row->threads = r->threads;
            row->n_batch = bs->n_batch; /* as asked: a prompt shorter than it is one batch */
            row->tp = r->o.tp;
            row->pp = r->o.pp;
            row->ranks = r->size;
            row->device_mem = (double)r->o.device_mem;
            char dm[32] = "";
            if (r->o.device_mem > 0) shoal_fmt_bytes(dm, sizeof dm, (double)r->o.device_mem);
            snprintf(row->layout, sizeof row->layout, "tp %d x pp %d%s%s%s", r->o.tp, r->o.pp,
                     r->size > r->n_part ? " x group" : "", dm[0] ? ", device-mem " : "", dm);
            snprintf(row->kv, sizeof row->kv, "%s", shoal_kv_type_name(r->o.kv_type));
            row->gen = gen;
            row->n_tokens = n;
            row->depth = bo->d[di];
            snprintf(row->test, sizeof row->test, "%s%d", gen ? "tg" : "pp", n);
            if (row->depth) snprintf(row->test + strlen(row->test), sizeof row->test - strlen(row->test), " @ d%d", row->depth);
            row->membw = bw;
            rc = one_test(r, &sb, toks, logits, row);
            if (rc == SHOAL_OK && !r->o.quiet)
                fprintf(stderr, "shoal bench: %-14s %d thread%s/rank, %s: %.2f +/- %.2f tokens/s (%d runs)\n", row->test,
                        row->threads, row->threads == 1 ? "" : "s", row->layout, row->tps_mean, row->tps_std,
                        row->n_runs);
        }
    shoal_status stop = shoal_stop(r->st);
    if (rc == SHOAL_OK) rc = stop;
    shoal_seq_batch_free(&sb);
    free(toks);
    free(logits);
    return rc == SHOAL_OK ? 0 : launch_fail("bench", rc);
}

/* ------------------------------------------------------ every rank's figures */

void bench_gather(struct run *r) {
    double *all = NULL;
    run_report(r, 0, &all);
    struct bench_state *bs = r->bench;
    for (int i = bs && all ? bs->first : 0; bs && all && i < bs->n; i++) {
        struct bench_row *row = &bs->rows[i];
        for (int k = 0; k < r->size; k++) {
            const double *v = all + (size_t)k * REP_N;
            if (k < r->n_part) row->weight_bytes += v[REP_WEIGHTS], row->params += v[REP_PARAMS];
            row->peak_rss = fmax(row->peak_rss, v[REP_RSS]);
            row->dev_peak = fmax(row->dev_peak, v[REP_DEVICE_PEAK]);
            row->sent = fmax(row->sent, v[row->gen ? REP_DECODE_BYTES : REP_PROMPT_BYTES]);
        }
    }
    free(all);
}

/* ------------------------------------------------------------------ output */

static void print_md(FILE *f, const struct bench_state *bs) {
    fprintf(f, "| model | size | params | backend | threads | layout | n_batch | kv | test | t/s | "
               "GB/s (of membw) | peak RSS | device mem | sent/token/rank |\n"
               "|---|--:|--:|---|--:|---|--:|---|--:|--:|--:|--:|--:|--:|\n");
    for (int i = 0; i < bs->n; i++) {
        const struct bench_row *w = &bs->rows[i];
        char size[32], rss[32], dev[32] = "-", sent[32] = "-", gbs[48] = "-";
        shoal_fmt_bytes(size, sizeof size, w->weight_bytes);
        shoal_fmt_bytes(rss, sizeof rss, w->peak_rss);
        if (w->dev_peak > 0) shoal_fmt_bytes(dev, sizeof dev, w->dev_peak);
        if (w->ranks > 1) shoal_fmt_bytes(sent, sizeof sent, w->sent);
        if (w->gen) {
            const double g = w->tps_mean * w->weight_bytes / 1e9;
            if (w->membw > 0) snprintf(gbs, sizeof gbs, "%.1f (%.0f%% of %.1f)", g, 100 * g / (w->membw / 1e9), w->membw / 1e9);
            else snprintf(gbs, sizeof gbs, "%.1f", g);
        }
        char params[32];
        if (w->params >= 1e9) snprintf(params, sizeof params, "%.2f B", w->params / 1e9);
        else snprintf(params, sizeof params, "%.1f M", w->params / 1e6);
        fprintf(f, "| %s | %s | %s | %s | %d | %s | %d | %s | %s | %.2f ± %.2f | %s | %s | %s | %s |\n", w->model,
                size, params, w->backend, w->threads, w->layout, w->n_batch, w->kv, w->test, w->tps_mean,
                w->tps_std, gbs, rss, dev, sent);
    }
}

/* A CSV field: quoted, its quotes doubled. */
static void csv_str(FILE *f, const char *s) {
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"') fputc('"', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void print_csv(FILE *f, const struct bench_state *bs) {
    fprintf(f, "model,weight_bytes,params,backend,threads,ranks,tp,pp,device_mem,n_batch,kv,test,n_prompt,n_gen,"
               "depth,tps_mean,tps_std,gen_gbs,membw_gbs,peak_rss,device_peak,sent_per_token\n");
    for (int i = 0; i < bs->n; i++) {
        const struct bench_row *w = &bs->rows[i];
        csv_str(f, w->model);
        fprintf(f, ",%.0f,%.0f,", w->weight_bytes, w->params);
        csv_str(f, w->backend);
        fprintf(f, ",%d,%d,%d,%d,%.0f,%d,%s,%s,%d,%d,%d,%.4f,%.4f,%.3f,%.3f,%.0f,%.0f,%.0f\n", w->threads, w->ranks,
                w->tp, w->pp, w->device_mem, w->n_batch, w->kv, w->test, w->gen ? 0 : w->n_tokens,
                w->gen ? w->n_tokens : 0, w->depth, w->tps_mean, w->tps_std,
                w->gen ? w->tps_mean * w->weight_bytes / 1e9 : 0, w->membw / 1e9, w->peak_rss, w->dev_peak, w->sent);
    }
}

static shoal_status print_json(FILE *f, const struct bench_state *bs, const struct run *r) {
    cJSON *root = cJSON_CreateObject(), *rows = cJSON_AddArrayToObject(root, "rows");
    cJSON_AddStringToObject(root, "model_path", r->o.model ? r->o.model : "");
    cJSON_AddNumberToObject(root, "repetitions", r->o.bo.reps);
    for (int i = 0; rows && i < bs->n; i++) {
        const struct bench_row *w = &bs->rows[i];
        cJSON *o = cJSON_CreateObject();
        cJSON_AddItemToArray(rows, o);
        cJSON_AddStringToObject(o, "model", w->model);
        cJSON_AddNumberToObject(o, "weight_bytes", w->weight_bytes);
        cJSON_AddNumberToObject(o, "params", w->params);
        cJSON_AddStringToObject(o, "backend", w->backend);
        cJSON_AddNumberToObject(o, "threads", w->threads);
        cJSON_AddNumberToObject(o, "ranks", w->ranks);
        cJSON_AddNumberToObject(o, "tp", w->tp);
        cJSON_AddNumberToObject(o, "pp", w->pp);
        cJSON_AddStringToObject(o, "layout", w->layout);
        cJSON_AddNumberToObject(o, "device_mem", w->device_mem);
        cJSON_AddNumberToObject(o, "n_batch", w->n_batch);
        cJSON_AddStringToObject(o, "kv", w->kv);
        cJSON_AddStringToObject(o, "test", w->test);
        cJSON_AddNumberToObject(o, "n_prompt", w->gen ? 0 : w->n_tokens);
        cJSON_AddNumberToObject(o, "n_gen", w->gen ? w->n_tokens : 0);
        cJSON_AddNumberToObject(o, "depth", w->depth);
        cJSON_AddNumberToObject(o, "tps_mean", w->tps_mean);
        cJSON_AddNumberToObject(o, "tps_std", w->tps_std);
        cJSON_AddItemToObject(o, "tps_runs", cJSON_CreateDoubleArray(w->runs, w->n_runs));
        cJSON_AddNumberToObject(o, "gen_gbs", w->gen ? w->tps_mean * w->weight_bytes / 1e9 : 0);
        cJSON_AddNumberToObject(o, "membw_gbs", w->membw / 1e9);
        cJSON_AddNumberToObject(o, "peak_rss", w->peak_rss);
        cJSON_AddNumberToObject(o, "device_peak", w->dev_peak);
        cJSON_AddNumberToObject(o, "sent_per_token", w->sent);
    }
    char *text = cJSON_Print(root);
    cJSON_Delete(root);
    if (!text) return shoal_errorf(SHOAL_NOMEM, "out of memory writing JSON");
    fprintf(f, "%s\n", text);
    free(text);
    return SHOAL_OK;
}

int bench_main(struct run *r) {
    struct bench_state bs = { 0 };
    const struct bench_opts *bo = &r->o.bo;
    bs.local = shoal_comm_local_size(r->world); /* a collective: every rank */
    bs.multi_host = bs.local < r->size;
    r->bench = &bs;
    /*
     * The bandwidth for each thread count, before anything is loaded (the others wait at the
     * barrier): then its buffer's pages are gone, and the peak RSS starts again from what is
     * resident (VmHWM, reset through /proc/self/clear_refs), so that no row counts them.
     */
    if (r->rank == 0 && !bs.multi_host) {
        const int cores = shoal_cpu_online_cores();
        for (int ti = 0; ti < bo->nt; ti++) {
            const int per = bo->t[ti] > 0 ? bo->t[ti] : cores / bs.local > 0 ? cores / bs.local : 1;
            membw(&bs, per * bs.local);
        }
        FILE *f = fopen("/proc/self/clear_refs", "w");
        if (f) fputs("5", f), fclose(f);
    }
    if (shoal_comm_barrier(r->world) != SHOAL_OK) {
        if (r->rank == 0) launch_fail("bench", SHOAL_COMM);
        return 1;
    }
    int status = 0, pass = 0;
    const int passes = bo->nt * bo->nb * bo->nkv;
    for (int ti = 0; !status && ti < bo->nt; ti++)
        for (int bi = 0; !status && bi < bo->nb; bi++)
            for (int ki = 0; !status && ki < bo->nkv; ki++) {
                r->o.threads = bo->t[ti];
                bs.n_batch = bo->b[bi];
                r->o.n_batch = bo->b[bi] < r->o.n_ctx ? bo->b[bi] : r->o.n_ctx;
                r->o.kv_type = bo->kv[ki];
                r->o.kv_name = shoal_kv_type_name(bo->kv[ki]);
                if (r->rank == 0 && !r->o.quiet && passes > 1)
                    fprintf(stderr, "shoal bench: pass %d of %d: -t %d -b %d --kv-type %s\n", ++pass, passes,
                            bo->t[ti], bo->b[bi], r->o.kv_name);
                status = run_pass(r, RUN_BENCH);
                /* a pass that failed on any rank ends the bench on every rank */
                if (shoal_comm_agree(r->world, status ? SHOAL_REMOTE : SHOAL_OK, NULL) != SHOAL_OK && !status)
                    status = 1;
            }
    if (r->rank == 0 && !status) {
        shoal_status rc = SHOAL_OK;
        if (!strcmp(bo->fmt, "json")) rc = print_json(stdout, &bs, r);
        else if (!strcmp(bo->fmt, "csv")) print_csv(stdout, &bs);
        else print_md(stdout, &bs);
        if (rc == SHOAL_OK && fflush(stdout) != 0) rc = shoal_errorf(SHOAL_IO, "writing stdout failed");
        if (rc != SHOAL_OK) status = launch_fail("bench", rc);
    }
    for (int i = 0; i < bs.n; i++) free(bs.rows[i].runs);
    free(bs.rows);
    r->bench = NULL;
    return status;
}

int cmd_bench(int argc, char **argv) { return run_main(argc, argv, RUN_BENCH); }
