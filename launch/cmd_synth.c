/*
 * cmd_synth.c — `shoal synth`: writes a GGUF model of any LLaMA-family
 * shape with seeded random weights in any type shoal can quantize to, and a
 * generated SentencePiece vocabulary (or one copied from another GGUF). For
 * tests (forward pass against the float64 reference, parallel layouts) and
 * benchmarks (realistic shapes without downloading weights).
 *
 * The flags, their checks and the progress report are here; the model is
 * written by shard/synth.c (which tests also call in-process).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../runtime/arch.h"
#include "../shard/synth.h"
#include "args.h"
#include "launch.h"

/* shoal_synth_write's progress, shown on stderr for large models */
static void on_progress(void *user, uint64_t done, uint64_t total) {
    struct progress *pr = user;
    if (done == 0) {
        progress_begin(pr, "synth", total);
        return;
    }
    progress_add(pr, done - pr->done);
    if (done == total) progress_end(pr);
}

static int parse_type(const char *flag, const char *name, int *out) {
    int t = shoal_dtype_from_name(name);
    if (t < 0 || !shoal_can_quantize(t)) {
        fprintf(stderr, "shoal synth: %s '%s' is not one of f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, "
                "q5_1, q2_k, q3_k, q4_k, q5_k, q6_k, iq4_nl, iq4_xs\n",
                flag, name);
        return 2;
    }
    *out = t;
    return 0;
}

int cmd_synth(int argc, char **argv) {
    struct shoal_synth_params s;
    shoal_synth_defaults(&s);
    const char *out = NULL, *type = "f32", *embd_type = NULL, *out_type = NULL;
    const struct opt opts[] = {
        { "--output", 'o', OPT_STR, &out, "FILE", "where to write the model (required)" },
        { "--arch", 0, OPT_STR, &s.arch, "NAME", "llama, mistral, qwen2, qwen3, qwen3moe or gemma3 (default llama)" },
        { "--experts", 0, OPT_INT, &s.experts, "N",
          "a mixture of N experts of --ffn units in every layer (qwen3moe: default 8; llama: Mixtral's layout)" },
        { "--experts-used", 0, OPT_INT, &s.experts_used, "K", "experts each token runs (default 2)" },
        { "--window", 0, OPT_INT, &s.swa_window, "N",
          "gemma3: attention.sliding_window, the windowed layers' positions (default 32)" },
        { "--dim", 0, OPT_INT, &s.dim, "N", "embedding width (default 256)" },
        { "--layers", 0, OPT_INT, &s.layers, "N", "transformer blocks (default 4)" },
        { "--heads", 0, OPT_INT, &s.heads, "N", "query heads (default 8)" },
        { "--kv-heads", 0, OPT_INT, &s.kv_heads, "N", "key/value heads (default 4)" },
        { "--head-dim", 0, OPT_INT, &s.head_dim, "N", "head size (default dim / heads)" },
        { "--ffn", 0, OPT_INT, &s.ffn, "N", "feed-forward width (default 768)" },
        { "--vocab", 0, OPT_INT, &s.vocab, "N", "vocabulary size (default 512, at least 300)" },
        { "--vocab-from", 0, OPT_STR, &s.vocab_from, "FILE", "copy the tokenizer of another GGUF" },
        { "--ctx", 0, OPT_INT, &s.ctx, "N", "context_length to record (default 2048)" },
        { "--type", 0, OPT_STR, &type, "TYPE", "type of the layer weights (default f32)" },
        { "--embd-type", 0, OPT_STR, &embd_type, "TYPE", "type of token_embd (default: --type)" },
        { "--output-type", 0, OPT_STR, &out_type, "TYPE", "type of the output head (default: --type)" },
        { "--tied", 0, OPT_FLAG, &s.tied, NULL, "no output.weight: the head is the embedding table" },
        { "--rope-base", 0, OPT_FLOAT, &s.rope_base, "X", "rope.freq_base (default 10000)" },
        { "--seed", 0, OPT_U64, &s.seed, "N", "seed of the weights (default 1)" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse("shoal synth", "-o FILE [shape options]",
                         "Writes a GGUF model of the given shape with seeded random weights.\n"
                         "Example: shoal synth -o m.gguf --dim 2048 --layers 16 --heads 16 "
                         "--kv-heads 4 --ffn 5632 --vocab 32000 --type q4_0",
                         opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    if (!out) {
        fprintf(stderr, "shoal synth: no output file: use -o FILE (see shoal synth --help)\n");
        return 2;
    }
    if (parse_type("--type", type, &s.type)) return 2;
    s.embd_type = s.out_type = s.type;
    if (embd_type && parse_type("--embd-type", embd_type, &s.embd_type)) return 2;
    if (out_type && parse_type("--output-type", out_type, &s.out_type)) return 2;
    /* the library checks these too; here they are usage errors, in the flags' words */
    if (!shoal_arch_find(s.arch)) {
        char names[256];
        fprintf(stderr, "shoal synth: --arch '%s' is not one of %s\n", s.arch, shoal_arch_names(names, sizeof names));
        return 2;
    }
    if (!strcmp(s.arch, "qwen3moe") && !s.experts) s.experts = 8;
    if (s.experts < 0 || s.experts > 256 || s.experts_used < 0 || s.experts_used > s.experts ||
        (s.experts_used && !s.experts)) {
        fprintf(stderr, "shoal synth: --experts must be 0..256 and --experts-used 1..experts\n");
        return 2;
    }
    if (s.swa_window < 0) {
        fprintf(stderr, "shoal synth: --window must be at least 1\n");
        return 2;
    }
    if (s.head_dim == 0) s.head_dim = s.heads > 0 ? s.dim / s.heads : 0;
    if (s.dim < 1 || s.layers < 1 || s.heads < 1 || s.kv_heads < 1 || s.ffn < 1 || s.ctx < 1 ||
        s.head_dim < 2 || s.head_dim % 2 || s.heads % s.kv_heads || s.dim > (1 << 16) ||
        s.ffn > (1 << 18) || s.layers > 1024 || s.head_dim > 1024) {
        fprintf(stderr, "shoal synth: impossible shape: need dim, layers, heads, ffn >= 1, an even "
                        "head size, and heads a multiple of kv-heads\n");
        return 2;
    }
    if (!s.vocab_from && (s.vocab < 300 || s.vocab > (1 << 20))) {
        fprintf(stderr, "shoal synth: --vocab must be between 300 and 1048576\n");
        return 2;
    }
    shoal_log_init(SHOAL_LOG_WARN, 0, NULL);
    struct progress pr = { 0 };
    s.progress = on_progress;
    s.user = &pr;
    shoal_status rc = shoal_synth_write(&s, out);
    if (rc != SHOAL_OK) return launch_fail("synth", rc);
    return 0;
}
