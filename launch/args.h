/*
 * args — the option parser every subcommand uses: one table per command
 * gives each option's names, argument, help line and destination, so that
 * parsing and --help cannot disagree. Errors name the command and the option
 * and the caller exits with status 2.
 */
#ifndef SHOAL_LAUNCH_ARGS_H
#define SHOAL_LAUNCH_ARGS_H

#include <stdint.h>
#include <stdio.h>

enum opt_kind { OPT_FLAG, OPT_INT, OPT_FLOAT, OPT_STR, OPT_U64, OPT_SIZE };

struct opt {
    const char *lng;   /* "--threads" */
    char shrt;         /* 't' or 0 */
    enum opt_kind kind;
    void *dst;         /* int* for FLAG/INT, float*, const char**, uint64_t* (U64 and SIZE) */
    const char *arg;   /* "N" in the help text */
    const char *help;
};

#define OPT_END { 0, 0, OPT_FLAG, 0, 0, 0 }

/*
 * Parses argv[1..argc) against opts. Positional arguments are collected in
 * pos (at most max_pos; more is an error). Returns 0 on success, 1 when
 * --help was asked (help already printed to stdout), 2 on a usage error
 * (message already printed to stderr).
 */
int args_parse(const char *cmd, const char *usage, const char *about, const struct opt *opts,
               int argc, char **argv, const char **pos, int max_pos, int *n_pos);
/* The same, printing help and errors only when loud (one rank of many speaks). */
int args_parse_quiet(int loud, const char *cmd, const char *usage, const char *about,
                     const struct opt *opts, int argc, char **argv, const char **pos, int max_pos,
                     int *n_pos);
void args_help(FILE *f, const char *cmd, const char *usage, const char *about,
               const struct opt *opts);

/* "2,1,1" -> weights (at most max); the count, or -1 unless every value is a
 * positive number. */
#define ARGS_MAX_WEIGHTS 256
int args_parse_weights(const char *s, double *w, int max);

/* "1.5G", "512M", "4096" -> bytes; -1 on error. */
int64_t args_parse_size(const char *s);

#endif
