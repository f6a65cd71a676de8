/*
 * cmd_info.c — `shoal info MODEL`: the file's header, its metadata, its
 * tensor table and what shoal makes of it (hyperparameters, bytes and
 * tensors per type, bits per weight, whether shoal can run it); or, with
 * --dump NAME, one tensor's values as f32. A malformed file is an error, not
 * a crash.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../runtime/chat.h"
#include "../runtime/model.h"
#include "../runtime/tokenizer.h"
#include "../shard/default_model.h"
#include "../shard/shard.h"
#include "args.h"
#include "launch.h"

/* The chat format the model's template names, as `shoal run --chat` would use it. */
static void print_chat(const struct shoal_gguf *g) {
    const char *t = NULL;
    size_t len = 0;
    if (shoal_gguf_get_str_opt(g, "tokenizer.chat_template", &t, &len) != SHOAL_OK || !t) {
        printf("chat:        no template (shoal run --chat needs --chat-template)\n");
        return;
    }
    char *tmpl = strndup(t, len);
    int kind = 0;
    if (tmpl && shoal_chat_detect(tmpl, g->path, &kind) == SHOAL_OK) {
        char *sys = shoal_chat_default_system(tmpl);
        printf("chat:        %s template%s%s%s\n", shoal_chat_kind_name(kind),
               sys ? ", default system message \"" : "", sys ? sys : "", sys ? "\"" : "");
        free(sys);
    } else {
        printf("chat:        a template shoal does not recognise (%zu bytes)\n", len);
    }
    free(tmpl);
}

/* ----------------------------------------------------------------- --dump */

/* The types shoal_dequantize_row knows, for messages: "f32, f16, ...". */
static void dequantizable_names(char *buf, size_t len) {
    buf[0] = 0;
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++)
        if (shoal_dtype_info(t) && shoal_can_dequantize(t)) {
            size_t used = strlen(buf);
            snprintf(buf + used, len - used, "%s%s", used ? ", " : "", shoal_dtype_name(t));
        }
}

/*
 * Writes tensor `name` of g dequantized to f32, in the file's order (row
 * after row), to out_path or (NULL) stdout, in the host's byte order, which
 * is little-endian as GGUF is (shoal maps GGUF files as they are). The
 * reader has checked the tensor: its row is a multiple of its block and its
 * nbytes lie inside the file, so the values are nbytes / block_bytes whole
 * blocks. A partly written out_path is removed.
 */
static shoal_status dump_tensor(const struct shoal_gguf *g, const char *name,
                                const char *out_path) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
    if (!t)
        return shoal_errorf(SHOAL_INVALID,
                            "%s: no tensor named '%s' (shoal info without --dump lists the "
                            "file's %" PRId64 " tensors)",
                            g->path, name, g->n_tensors);
    if (!shoal_can_dequantize(t->type)) {
        char names[512];
        dequantizable_names(names, sizeof names);
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "%s: tensor '%s' is %s, which shoal cannot dequantize (it can: %s)",
                            g->path, name, shoal_dtype_name(t->type), names);
    }
    if (!out_path && isatty(STDOUT_FILENO))
        return shoal_errorf(SHOAL_INVALID,
                            "--dump writes binary f32 values: redirect stdout or pass -o FILE");
    const struct shoal_dtype_info *ti = shoal_dtype_info(t->type);
    const uint64_t n_blocks = t->nbytes / (uint64_t)ti->block_bytes;
    const uint64_t chunk = 65536 / (uint64_t)ti->block; /* blocks per write: 256 KiB of f32 */
    struct stat in_st, out_st;
    if (out_path && stat(g->path, &in_st) == 0 && stat(out_path, &out_st) == 0 &&
        in_st.st_dev == out_st.st_dev && in_st.st_ino == out_st.st_ino)
        return shoal_errorf(SHOAL_INVALID, "--dump would overwrite the file it reads (%s): pick "
                            "another -o", out_path);
    /*
     * Each chunk of blocks is copied to the end of a heap buffer before it is
     * dequantized: a dequantizer that read past its row would then read past
     * an allocation, which a sanitizer build reports (past a row inside the
     * map, nothing would). --dump is not a hot path; the copy is cheap.
     */
    const size_t cap = (size_t)chunk * (size_t)ti->block_bytes;
    float *buf = malloc(65536 * sizeof(float));
    uint8_t *raw = malloc(cap);
    FILE *f = NULL;
    shoal_status rc = SHOAL_OK;
    if (!buf || !raw) {
        rc = shoal_errorf(SHOAL_NOMEM, "--dump: no memory for %zu bytes of buffers",
                          65536 * sizeof(float) + cap);
        goto done;
    }
    f = out_path ? fopen(out_path, "wb") : stdout;
    if (!f) {
        rc = shoal_errorf(SHOAL_IO, "cannot create %s: %s", out_path, strerror(errno));
        goto done;
    }
    for (uint64_t b = 0; b < n_blocks; b += chunk) {
        uint64_t nb = n_blocks - b < chunk ? n_blocks - b : chunk;
        size_t n = (size_t)(nb * (uint64_t)ti->block), len = (size_t)nb * (size_t)ti->block_bytes;
        uint8_t *src = raw + (cap - len); /* a whole number of blocks: alignment kept */
        memcpy(src, (const uint8_t *)t->data + b * (uint64_t)ti->block_bytes, len);
        rc = shoal_dequantize_row(t->type, src, buf, (int64_t)n);
        if (rc != SHOAL_OK) {
            shoal_error_prefix("%s: tensor '%s'", g->path, name);
            goto done;
        }
        if (fwrite(buf, sizeof(float), n, f) != n) {
            rc = shoal_errorf(SHOAL_IO, "writing tensor '%s' to %s: %s", name,
                              out_path ? out_path : "stdout", strerror(errno));
            goto done;
        }
    }
    if (fflush(f) != 0)
        rc = shoal_errorf(SHOAL_IO, "writing tensor '%s' to %s: %s", name,
                          out_path ? out_path : "stdout", strerror(errno));
done:
    if (f && f != stdout && fclose(f) != 0 && rc == SHOAL_OK)
        rc = shoal_errorf(SHOAL_IO, "writing %s: %s", out_path, strerror(errno));
    if (rc != SHOAL_OK && f && out_path) remove(out_path);
    free(raw);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------------- info */

/* "types: q4_k 108 tensors (4.50 bits per weight), q6_k 19 (6.56), ...; 4.86 bits per weight":
 * most tensors first. */
static void print_types(const uint64_t count[SHOAL_DTYPE_MAX], uint64_t params, uint64_t bytes) {
    int done[SHOAL_DTYPE_MAX] = { 0 }, first = 1;
    printf("types:      ");
    for (;;) {
        int best = -1;
        for (int t = 0; t < SHOAL_DTYPE_MAX; t++)
            if (count[t] && !done[t] && (best < 0 || count[t] > count[best])) best = t;
        if (best < 0) break;
        done[best] = 1;
        const struct shoal_dtype_info *ti = shoal_dtype_info(best);
        double bpw = 8.0 * ti->block_bytes / ti->block;
        printf("%s %s %" PRIu64 "%s (%.2f%s)", first ? "" : ",", ti->name, count[best],
               first ? (count[best] == 1 ? " tensor" : " tensors") : "", bpw,
               first ? " bits per weight" : "");
        first = 0;
    }
    if (first) printf(" none");
    if (params) printf("; %.2f bits per weight", 8.0 * (double)bytes / (double)params);
    putchar('\n');
}

/*
 * general.file_type as llama.cpp names it (its enum llama_ftype: the mix
 * llama-quantize was asked for, "Q4_K_M"), or NULL for a value it does not
 * name. The mix is what the file says it is; the tensors say what it holds.
 */
static const char *ftype_name(uint32_t v) {
    static const char *const names[] = {
        [0] = "F32", [1] = "F16", [2] = "Q4_0", [3] = "Q4_1", [7] = "Q8_0", [8] = "Q5_0", [9] = "Q5_1",
        [10] = "Q2_K", [11] = "Q3_K_S", [12] = "Q3_K_M", [13] = "Q3_K_L", [14] = "Q4_K_S", [15] = "Q4_K_M",
        [16] = "Q5_K_S", [17] = "Q5_K_M", [18] = "Q6_K", [19] = "IQ2_XXS", [20] = "IQ2_XS", [21] = "Q2_K_S",
        [22] = "IQ3_XS", [23] = "IQ3_XXS", [24] = "IQ1_S", [25] = "IQ4_NL", [26] = "IQ3_S", [27] = "IQ3_M",
        [28] = "IQ2_S", [29] = "IQ2_M", [30] = "IQ4_XS", [31] = "IQ1_M", [32] = "BF16", [36] = "TQ1_0",
        [37] = "TQ2_0", [38] = "MXFP4_MOE",
    };
    return v < sizeof names / sizeof names[0] ? names[v] : NULL;
}

int cmd_info(int argc, char **argv) {
    int no_tensors = 0, no_meta = 0, max_elems = 8;
    const char *dump = NULL, *out_path = NULL;
    const struct opt opts[] = {
        { "--no-tensors", 0, OPT_FLAG, &no_tensors, NULL, "do not list the tensors" },
        { "--no-metadata", 0, OPT_FLAG, &no_meta, NULL, "do not list the metadata" },
        { "--array-items", 0, OPT_INT, &max_elems, "N", "array elements to show per key (default 8)" },
        { "--dump", 0, OPT_STR, &dump, "NAME",
          "write tensor NAME as f32 (little-endian) to stdout, nothing else" },
        { "--output", 'o', OPT_STR, &out_path, "FILE", "with --dump: write to FILE, not stdout" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse("shoal info", "[MODEL.gguf] [options]",
                         "Prints a GGUF file's metadata, its tensor table and a summary of what\n"
                         "shoal makes of it. Checks every offset and size on the way.\n"
                         "Without MODEL: the default model (see shoal run --help).\n"
                         "With --dump NAME: that tensor's values dequantized to f32, row after\n"
                         "row (ne[0] values each), little-endian, and nothing else; for any GGUF\n"
                         "file shoal parses, model or not. E.g. to compare two files:\n"
                         "  shoal info a.gguf --dump output.weight -o a.f32",
                         opts, argc, argv, pos, 1, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    if (out_path && !dump) {
        fprintf(stderr, "shoal info: error: -o/--output goes with --dump NAME\n");
        return 2;
    }
    shoal_log_init(SHOAL_LOG_WARN, 0, NULL);
    char dflt[4096];
    if (n_pos == 0) {
        shoal_status drc = shoal_default_model(dflt, sizeof dflt);
        if (drc != SHOAL_OK) return launch_fail("info", drc);
        pos[0] = dflt;
    }
    struct shoal_gguf *g = NULL;
    shoal_status rc = shoal_gguf_open(&g, pos[0]);
    if (rc != SHOAL_OK) return launch_fail("info", rc);
    if (dump) {
        rc = dump_tensor(g, dump, out_path);
        shoal_gguf_close(g);
        return rc == SHOAL_OK ? 0 : launch_fail("info", rc);
    }

    char b1[32];
    printf("file:        %s\n", g->path);
    printf("format:      GGUF v%d, %s, alignment %u, data at offset %" PRIu64 "\n", g->version,
           shoal_fmt_bytes(b1, sizeof b1, (double)g->size), g->alignment, g->data_offset);
    printf("metadata:    %" PRId64 " keys\ntensors:     %" PRId64 "\n", g->n_kv, g->n_tensors);

    if (!no_meta) {
        printf("\n%-48s %-10s %s\n", "key", "type", "value");
        for (int64_t i = 0; i < g->n_kv; i++) {
            const struct shoal_gguf_kv *kv = &g->kv[i];
            char type[24];
            if (kv->type == SHOAL_GGUF_ARRAY)
                snprintf(type, sizeof type, "arr[%s]", shoal_gguf_type_name(kv->arr_type));
            else
                snprintf(type, sizeof type, "%s", shoal_gguf_type_name(kv->type));
            printf("%-48s %-10s ", kv->key, type);
            shoal_gguf_kv_print(stdout, kv, max_elems);
            putchar('\n');
        }
    }

    uint64_t by_type[SHOAL_DTYPE_MAX] = { 0 }, count[SHOAL_DTYPE_MAX] = { 0 }, params = 0, bytes = 0;
    if (!no_tensors) printf("\n%-5s %-36s %-6s %-24s %12s %14s\n", "#", "tensor", "type", "shape",
                            "bytes", "offset");
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        uint64_t n = 1;
        char shape[64] = "[";
        for (int d = 0; d < t->n_dims; d++) {
            char part[24];
            snprintf(part, sizeof part, "%s%" PRId64, d ? ", " : "", t->ne[d]);
            strncat(shape, part, sizeof shape - strlen(shape) - 2);
            n *= (uint64_t)t->ne[d];
        }
        strcat(shape, "]");
        params += n;
        bytes += t->nbytes;
        by_type[t->type] += t->nbytes;
        count[t->type]++;
        if (!no_tensors)
            printf("%-5" PRId64 " %-36s %-6s %-24s %12" PRIu64 " %14" PRIu64 "\n", i, t->name,
                   shoal_dtype_name(t->type), shape, t->nbytes, t->offset);
    }
    printf("\nparameters:  %" PRIu64 " (%.2fM) in %s\n", params, (double)params / 1e6,
           shoal_fmt_bytes(b1, sizeof b1, (double)bytes));
    printf("by type:    ");
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++)
        if (by_type[t])
            printf(" %s %s (%.1f%%)", shoal_dtype_name(t), shoal_fmt_bytes(b1, sizeof b1, (double)by_type[t]),
                   100.0 * (double)by_type[t] / (double)(bytes ? bytes : 1));
    putchar('\n');
    print_types(count, params, bytes);
    uint32_t ftype;
    if (shoal_gguf_get(g, "general.file_type") && shoal_gguf_get_u32(g, "general.file_type", &ftype) == SHOAL_OK)
        printf("file type:   %s (general.file_type %u, as llama.cpp names it)\n",
               ftype_name(ftype) ? ftype_name(ftype) : "unknown", ftype);
    else
        shoal_error_clear(); /* absent, or not an integer: said by the metadata table */

    /* what shoal makes of it: a model it can run, or why not */
    int status = 0;
    if (shoal_gguf_get(g, "general.architecture") && g->n_tensors > 0) {
        struct shoal_hparams hp;
        rc = shoal_hparams_read(&hp, g);
        if (rc == SHOAL_OK && !hp.sharded) rc = shoal_model_check(g);
        if (rc == SHOAL_OK) {
            printf("model:       %s: %s, %d layers, dim %d, %d heads (%d KV, head size %d), ffn %d, "
                   "vocab %d, context %d\n",
                   hp.name, hp.arch, hp.n_layers, hp.dim, hp.n_heads, hp.n_kv_heads, hp.head_dim,
                   hp.ffn_dim, hp.n_vocab, hp.n_ctx_train);
            printf("             rope %s over %d dims, base %g; rms eps %g; output head %s\n",
                   hp.rope.mode == SHOAL_ROPE_NEOX ? "neox" : "norm", hp.rope.rope_dim,
                   hp.rope.freq_base, hp.rms_eps, hp.tied_output ? "tied to the embeddings" : "separate");
            const struct shoal_arch *f = hp.fam;
            if (f && (f->qkv_bias || f->qk_norm || f->post_norms || f->act != SHOAL_ACT_SILU || f->embd_scale))
                printf("             block: %s%s%s%s FFN%s\n", f->qkv_bias ? "Q/K/V biases; " : "",
                       f->qk_norm ? "per-head Q/K norms; " : "",
                       f->post_norms ? "norms after attention and FFN; " : "",
                       f->act == SHOAL_ACT_GELU_TANH ? "GELU (tanh)" : "SiLU",
                       f->embd_scale ? "; embeddings times sqrt(dim)" : "");
            if (hp.n_expert) {
                /* what a token reads of the layers: the experts' share of their bytes */
                double layers = 0, experts = 0;
                for (int64_t i = 0; i < g->n_tensors; i++) {
                    const struct shoal_gguf_tensor *t = &g->tensors[i];
                    if (strncmp(t->name, "blk.", 4)) continue;
                    layers += (double)t->nbytes;
                    if (strstr(t->name, "_exps.")) experts += (double)t->nbytes;
                }
                char all[32], read[32];
                printf("             mixture of experts: %d experts of %d units a layer, %d a token (each token "
                       "reads %s of the layers' %s)\n", hp.n_expert, hp.ffn_dim, hp.n_expert_used,
                       shoal_fmt_bytes(read, sizeof read, layers - experts * (1.0 - (double)hp.n_expert_used / hp.n_expert)),
                       shoal_fmt_bytes(all, sizeof all, layers));
            }
            if (hp.swa_window > 0) {
                int windowed = 0;
                for (int l = 0; l < hp.n_layers; l++) windowed += shoal_layer_windowed(&hp, l);
                printf("             sliding window %d positions on %d of %d layers (rope base %g); the "
                       "others attend to the whole context\n",
                       hp.swa_window, windowed, hp.n_layers, hp.rope_swa.freq_base);
            }
            if (hp.sharded) {
                uint32_t rank = 0, n = 0, tp = 0, pp = 0;
                shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_RANK, &rank);
                shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_N_RANKS, &n);
                shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_TP, &tp);
                shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_PP, &pp);
                printf("shard:       rank %u of %u (tp %u x pp %u): this rank's slices only; run the "
                       "set with shoal run --shards DIR\n", rank, n, tp, pp);
            }
        } else {
            printf("model:       shoal cannot run this file: %s\n", shoal_last_error());
            status = rc == SHOAL_UNSUPPORTED ? 0 : 1;
        }
    }
    if (shoal_gguf_get(g, "tokenizer.ggml.model")) {
        struct shoal_tokenizer *tok = NULL;
        rc = shoal_tokenizer_create(&tok, g);
        const char *s;
        size_t len;
        shoal_gguf_get_str_opt(g, "tokenizer.ggml.model", &s, &len);
        if (rc == SHOAL_OK) {
            const char *pre = NULL;
            size_t pre_len = 0;
            if (shoal_gguf_get_str_opt(g, "tokenizer.ggml.pre", &pre, &pre_len) != SHOAL_OK) pre = NULL;
            printf("tokenizer:   %.*s%s%.*s%s, %d tokens, BOS %d%s, EOS %d\n", (int)len, s,
                   pre ? " (pre-tokenizer " : "", pre ? (int)pre_len : 0, pre ? pre : "", pre ? ")" : "",
                   shoal_tokenizer_n_vocab(tok), shoal_tokenizer_bos(tok),
                   shoal_tokenizer_add_bos(tok) ? " (added)" : " (not added)", shoal_tokenizer_eos(tok));
            print_chat(g);
        } else {
            printf("tokenizer:   unusable: %s\n", shoal_last_error());
            if (rc != SHOAL_UNSUPPORTED) status = 1;
        }
        shoal_tokenizer_destroy(tok);
    }
    if (status) fprintf(stderr, "shoal info: error: %s\n", shoal_last_error());
    shoal_gguf_close(g);
    return status;
}
