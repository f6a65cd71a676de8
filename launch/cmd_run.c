/*
 * cmd_run.c — `shoal run`: load a model, generate from a prompt, stream the
 * text to stdout, and report speed and memory on stderr.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../cpu/cpu.h"
#include "../runtime/generate.h"
#include "args.h"
#include "launch.h"

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

struct run_out {
    FILE *logits, *ids;
    int failed; /* errno of a failed write to stdout, or 0 */
};

static int on_text(void *user, const char *text, size_t len) {
    struct run_out *o = user;
    if (fwrite(text, 1, len, stdout) != len || fflush(stdout) != 0) {
        o->failed = errno ? errno : EIO;
        return 1;
    }
    return interrupted;
}

static void on_logits(void *user, int pos, int32_t token, const float *logits, int n_vocab) {
    struct run_out *o = user;
    fprintf(o->logits, "pos %d token %d:", pos, token);
    for (int i = 0; i < n_vocab; i++) fprintf(o->logits, " %e", logits[i]);
    fputc('\n', o->logits);
}

static void on_token(void *user, int32_t id) {
    struct run_out *o = user;
    if (o->ids) fprintf(o->ids, "%d ", id);
}

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
static shoal_status read_file(const char *path, char **out, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return shoal_errorf(SHOAL_IO, "%s: cannot open: %s", path, strerror(errno));
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        n += fread(buf + n, 1, cap - n, f);
        if (n < cap) break;
        char *nb = realloc(buf, cap * 2 + 1);
        if (!nb) {
            free(buf);
            buf = NULL;
            break;
        }
        buf = nb;
        cap *= 2;
    }
    int err = ferror(f);
    fclose(f);
    if (!buf) return shoal_errorf(SHOAL_NOMEM, "%s: out of memory reading it", path);
    if (err) {
        free(buf);
        return shoal_errorf(SHOAL_IO, "%s: read error", path);
    }
    buf[n] = 0;
    *out = buf;
    *len = n;
    return SHOAL_OK;
}

int cmd_run(int argc, char **argv) {
    const char *model = NULL, *prompt = NULL, *prompt_file = NULL, *kv_name = "f16";
    const char *simd_name = "auto", *logits_path = NULL, *ids_path = NULL;
    int n_predict = 256, threads = 0, n_ctx = 0, n_batch = 512, ignore_eos = 0, no_bos = 0;
    int no_echo = 0, verbose = 0, quiet = 0, seed_given = 0;
    uint64_t seed = 0;
    struct shoal_sampler_params sp;
    shoal_sampler_defaults(&sp);
    int seed_int = -1;
    const struct opt opts[] = {
        { "--model", 'm', OPT_STR, &model, "FILE", "GGUF model to run (required)" },
        { "--prompt", 'p', OPT_STR, &prompt, "TEXT", "prompt text (default: empty, start from BOS)" },
        { "--file", 'f', OPT_STR, &prompt_file, "FILE", "read the prompt from a file" },
        { "--n-predict", 'n', OPT_INT, &n_predict, "N", "tokens to generate (default 256; -1: until EOS or full context)" },
        { "--threads", 't', OPT_INT, &threads, "N", "CPU threads (default: all cores)" },
        { "--ctx-size", 'c', OPT_INT, &n_ctx, "N", "context length (default: the model's, at most 4096)" },
        { "--batch-size", 'b', OPT_INT, &n_batch, "N", "prompt tokens per forward pass (default 512)" },
        { "--temp", 0, OPT_FLOAT, &sp.temp, "T", "temperature; 0 = greedy (default 0.8)" },
        { "--top-k", 0, OPT_INT, &sp.top_k, "K", "keep the K most likely tokens; 0 = off (default 40)" },
        { "--top-p", 0, OPT_FLOAT, &sp.top_p, "P", "nucleus sampling; 1 = off (default 0.95)" },
        { "--min-p", 0, OPT_FLOAT, &sp.min_p, "P", "drop tokens below P x the best's probability (default 0.05)" },
        { "--repeat-penalty", 0, OPT_FLOAT, &sp.repeat_penalty, "X", "penalise recent tokens; 1 = off (default 1)" },
        { "--repeat-last-n", 0, OPT_INT, &sp.repeat_last_n, "N", "how many recent tokens to penalise (default 64)" },
        { "--seed", 0, OPT_INT, &seed_int, "N", "random seed, for reproducible sampling (default: random)" },
        { "--kv-type", 0, OPT_STR, &kv_name, "TYPE", "KV cache type: f32, f16 or q8 (default f16)" },
        { "--simd", 0, OPT_STR, &simd_name, "LEVEL", "CPU kernels: auto, scalar, avx2, avx512 (default auto)" },
        { "--ignore-eos", 0, OPT_FLAG, &ignore_eos, NULL, "keep generating past end-of-sequence tokens" },
        { "--no-bos", 0, OPT_FLAG, &no_bos, NULL, "do not start the prompt with BOS" },
        { "--no-echo", 0, OPT_FLAG, &no_echo, NULL, "do not print the prompt before the generated text" },
        { "--logits-out", 0, OPT_STR, &logits_path, "FILE", "write every position's logits as text (for tests)" },
        { "--ids-out", 0, OPT_STR, &ids_path, "FILE", "write the prompt's ids (after BOS) and the generated ids, on one line" },
        { "--verbose", 'v', OPT_FLAG, &verbose, NULL, "more detail on stderr" },
        { "--quiet", 'q', OPT_FLAG, &quiet, NULL, "no load line or statistics on stderr" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse("shoal run", "-m MODEL [-p PROMPT] [options]",
                         "Generates text from a prompt with a GGUF model, streaming it to stdout.\n"
                         "Speed (prompt and generation tokens/s) and peak memory go to stderr.",
                         opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    if (!model) {
        fprintf(stderr, "shoal run: no model given: use -m FILE.gguf (see shoal run --help)\n");
        return 2;
    }
    if (prompt && prompt_file) {
        fprintf(stderr, "shoal run: give -p or -f, not both\n");
        return 2;
    }
    int kv_type = shoal_kv_type_from_name(kv_name);
    if (kv_type < 0) {
        fprintf(stderr, "shoal run: --kv-type '%s' is not one of f32, f16, q8\n", kv_name);
        return 2;
    }
    int simd = shoal_cpu_simd_from_name(simd_name);
    if (simd == -2) {
        fprintf(stderr, "shoal run: --simd '%s' is not one of auto, scalar, avx2, avx512\n", simd_name);
        return 2;
    }
    if (n_batch < 1 || threads < 0 || n_ctx < 0 || n_predict < -1) {
        fprintf(stderr, "shoal run: -b must be >= 1, -t and -c >= 0, -n >= -1\n");
        return 2;
    }
    if (seed_int >= 0) {
        seed = (uint64_t)seed_int;
        seed_given = 1;
    } else {
        seed = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    }
    sp.seed = seed;
    shoal_log_init(verbose ? SHOAL_LOG_INFO : SHOAL_LOG_WARN, 0, getenv("SHOAL_DEBUG"));

    struct shoal_gguf *g = NULL;
    struct shoal_backend *be = NULL;
    struct shoal_model *m = NULL;
    struct shoal_tokenizer *tok = NULL;
    struct shoal_state *st = NULL;
    struct shoal_sampler *smp = NULL;
    char *text = NULL;
    int32_t *ids = NULL;
    struct run_out out = { 0 };
    int status = 1;
    shoal_status rc;

    double t_load = shoal_now();
    if ((rc = shoal_gguf_open(&g, model)) != SHOAL_OK) goto fail;
    struct shoal_cpu_params cp = { .n_threads = threads, .simd = simd, .spin = -1 };
    if ((rc = shoal_cpu_backend_create(&be, &cp)) != SHOAL_OK) goto fail;
    if ((rc = shoal_model_load(&m, g, be)) != SHOAL_OK) goto fail;
    if ((rc = shoal_tokenizer_create(&tok, g)) != SHOAL_OK) goto fail;
    const struct shoal_hparams *hp = &m->hp;
    if (shoal_tokenizer_n_vocab(tok) > hp->n_vocab) {
        rc = shoal_errorf(SHOAL_FORMAT, "%s: the tokenizer has %d tokens but token_embd.weight only %d rows",
                          model, shoal_tokenizer_n_vocab(tok), hp->n_vocab);
        goto fail;
    }
    if (n_ctx == 0) n_ctx = hp->n_ctx_train < 4096 ? hp->n_ctx_train : 4096;
    if (n_ctx > hp->n_ctx_train)
        fprintf(stderr, "shoal run: warning: context %d is longer than the %d the model was trained on\n",
                n_ctx, hp->n_ctx_train);
    struct shoal_state_params stp = { .n_ctx = n_ctx, .n_batch = n_batch,
                                      .n_outputs = logits_path ? n_batch : 1, .kv_type = kv_type };
    if ((rc = shoal_state_create(&st, m, &stp)) != SHOAL_OK) goto fail;
    t_load = shoal_now() - t_load;

    /* the prompt */
    size_t text_len = 0;
    if (prompt_file) {
        if ((rc = read_file(prompt_file, &text, &text_len)) != SHOAL_OK) goto fail;
    } else {
        text = strdup(prompt ? prompt : "");
        text_len = strlen(text);
    }
    size_t n_ids = 0;
    int add_bos = !no_bos && shoal_tokenizer_add_bos(tok);
    if ((rc = shoal_tokenize(tok, text, text_len, add_bos, 1, &ids, &n_ids)) != SHOAL_OK) goto fail;
    if (n_ids == 0) {
        rc = shoal_errorf(SHOAL_INVALID, "the prompt is empty and the model adds no BOS token: "
                          "give a prompt with -p");
        goto fail;
    }
    if ((rc = shoal_sampler_create(&smp, &sp, hp->n_vocab)) != SHOAL_OK) goto fail;

    if (logits_path && !(out.logits = fopen(logits_path, "w"))) {
        rc = shoal_errorf(SHOAL_IO, "%s: cannot create: %s", logits_path, strerror(errno));
        goto fail;
    }
    if (ids_path) {
        if (!(out.ids = fopen(ids_path, "w"))) {
            rc = shoal_errorf(SHOAL_IO, "%s: cannot create: %s", ids_path, strerror(errno));
            goto fail;
        }
        for (size_t i = add_bos ? 1 : 0; i < n_ids; i++) fprintf(out.ids, "%d ", ids[i]);
    }

    if (!quiet) {
        char wb[32], kb[32];
        fprintf(stderr,
                "shoal: %s (%s, %d layers, dim %d, %.1fM params, %s %s) | cpu %s, %d threads | "
                "ctx %d, kv %s %s | loaded in %.2f s\n",
                hp->name, hp->arch, hp->n_layers, hp->dim, (double)m->n_params / 1e6,
                shoal_fmt_bytes(wb, sizeof wb, (double)m->weight_bytes), shoal_dtype_name(m->main_type),
                shoal_cpu_simd_name(simd == SHOAL_SIMD_AUTO ? shoal_cpu_simd_best() : simd),
                threads > 0 ? threads : shoal_cpu_online_cores(), n_ctx, kv_name,
                shoal_fmt_bytes(kb, sizeof kb, (double)st->kv_bytes), t_load);
        if (verbose)
            fprintf(stderr, "shoal: seed %llu%s, prompt %zu tokens\n", (unsigned long long)seed,
                    seed_given ? "" : " (random)", n_ids);
    }

    signal(SIGINT, on_sigint);
    signal(SIGPIPE, SIG_IGN);
    struct shoal_gen_params gp = {
        .n_predict = n_predict,
        .ignore_eos = ignore_eos,
        .echo_prompt = !no_echo,
        .all_logits = out.logits != NULL,
        .on_text = on_text,
        .on_logits = out.logits ? on_logits : NULL,
        .on_token = on_token,
        .user = &out,
    };
    struct shoal_gen_stats gs;
    rc = shoal_generate(st, tok, smp, ids, (int)n_ids, &gp, &gs);
    if (rc != SHOAL_OK) goto fail;
    if (!out.failed) {
        fputc('\n', stdout);
        fflush(stdout);
    }
    if (!quiet) {
        char rss[32];
        double bw = gs.t_decode > 0 ? (double)gs.n_decode * (double)m->weight_bytes / gs.t_decode : 0;
        fprintf(stderr,
                "shoal: prompt %d tokens in %.3f s (%.1f tok/s) | generation %d tokens, %d decode "
                "steps in %.3f s (%.2f tok/s, %.1f GB/s of weights) | peak RSS %s | stop: %s\n",
                gs.n_prompt, gs.t_prompt, gs.t_prompt > 0 ? gs.n_prompt / gs.t_prompt : 0, gs.n_gen,
                gs.n_decode, gs.t_decode, gs.t_decode > 0 ? gs.n_decode / gs.t_decode : 0, bw / 1e9,
                shoal_fmt_bytes(rss, sizeof rss, (double)shoal_peak_rss()), gs.stop);
    }
    if (strcmp(gs.stop, "context") == 0)
        fprintf(stderr, "shoal run: stopped early: the context of %d tokens is full (raise -c)\n", n_ctx);
    if (out.failed == EPIPE) { /* the reader went away (| head): stop quietly, as cat does */
        status = 128 + SIGPIPE;
        goto done;
    }
    if (out.failed) {
        rc = shoal_errorf(SHOAL_IO, "cannot write to stdout: %s", strerror(out.failed));
        goto fail;
    }
    status = interrupted ? 130 : 0;
    goto done;
fail:
    status = launch_fail("run", rc);
done:
    if (out.logits && fclose(out.logits) != 0 && status == 0)
        status = launch_fail("run", shoal_errorf(SHOAL_IO, "%s: write failed", logits_path));
    if (out.ids) fputc('\n', out.ids);
    if (out.ids && fclose(out.ids) != 0 && status == 0)
        status = launch_fail("run", shoal_errorf(SHOAL_IO, "%s: write failed", ids_path));
    free(ids);
    free(text);
    shoal_sampler_destroy(smp);
    shoal_state_destroy(st);
    shoal_tokenizer_destroy(tok);
    shoal_model_destroy(m);
    shoal_backend_destroy(be);
    shoal_gguf_close(g);
    return status;
}
