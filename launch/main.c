/*
 * main.c — `shoal COMMAND ...`: finds the subcommand and hands it the rest
 * of the command line.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "launch.h"

static const struct {
    const char *name;
    int (*fn)(int argc, char **argv);
    const char *about;
} commands[] = {
    { "run", cmd_run, "generate text from a prompt" },
    { "serve", cmd_serve, "serve the model over HTTP with OpenAI's API (continuous batching)" },
    { "info", cmd_info, "print a GGUF file's metadata and tensor table" },
    { "shard", cmd_shard, "cut a GGUF into one file per rank, with a manifest" },
    { "plan", cmd_plan, "say which layouts fit the hosts and how fast they will decode" },
    { "perplexity", cmd_perplexity, "a model's perplexity on a text, as llama.cpp computes it" },
    { "bench", cmd_bench, "measure prompt and generation speed, as llama-bench does, in any layout" },
    { "quantize", cmd_quantize, "write a model in another weight type or one of llama.cpp's mixes (Q4_K_M, ...)" },
    { "synth", cmd_synth, "write a synthetic model with random weights (tests, benchmarks)" },
};

static void usage(FILE *f) {
    fprintf(f,
            "usage: shoal COMMAND [options]\n\n"
            "shoal runs GGUF language models (LLaMA, Mistral, Qwen2/3, Gemma 3, mixtures of\n"
            "experts) on CPUs and NVIDIA GPUs, on one machine or across several: started\n"
            "under mpirun, each rank holds its share of the model (tensor and pipeline\n"
            "parallel), and layers that do not fit a device stream from host memory.\n\n"
            "  shoal run -m model.gguf -p \"Hello\"                 one machine\n"
            "  mpirun -np 2 shoal run -m model.gguf -p \"Hello\"    two ranks: the planner lays them out\n"
            "\ncommands:\n");
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        fprintf(f, "  %-10s %s\n", commands[i].name, commands[i].about);
    fprintf(f, "\n'shoal COMMAND --help' describes a command's options.\n"
               "Environment: SHOAL_DEBUG=all (or a list of subsystems) turns on debug logging.\n");
}

int launch_fail(const char *cmd, shoal_status rc) {
    const char *detail = shoal_last_error();
    fprintf(stderr, "shoal %s: error: %s\n", cmd, detail[0] ? detail : shoal_status_str(rc));
    return 1;
}

int main(int argc, char **argv) {
    shoal_catch_sigbus(); /* a model file that shrinks while mapped: an error naming it, not a crash */
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    if (strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "help") == 0) {
        usage(stdout);
        return 0;
    }
    if (strcmp(argv[1], "--version") == 0) {
        printf("shoal 0.1.0\n");
        return 0;
    }
    for (size_t i = 0; i < sizeof commands / sizeof *commands; i++)
        if (strcmp(argv[1], commands[i].name) == 0) return commands[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "shoal: unknown command '%s'\n\n", argv[1]);
    usage(stderr);
    return 2;
}

/* Reads a whole file into a NUL-terminated buffer (caller frees). */
shoal_status launch_read_file(const char *path, char **out, size_t *len) {
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

