/*
 * launch — the shoal command line. main.c dispatches to one function per
 * subcommand; each parses its own flags (args.h), builds what it needs from
 * the library, prints, and returns the process exit status: 0 success, 1 a
 * failure (the message says what and where), 2 a usage error. Only this
 * folder exits the process.
 */
#ifndef SHOAL_LAUNCH_H
#define SHOAL_LAUNCH_H

#include <stdint.h>

#include "../base/base.h"

int cmd_run(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_shard(int argc, char **argv);

/* Prints "shoal CMD: error: <detail>" for a failed status and returns 1. */
int launch_fail(const char *cmd, shoal_status rc);

/* Progress over a known number of bytes, on stderr: a bar on a terminal,
 * plain lines every few seconds otherwise; silent for small totals. */
struct progress {
    const char *label;
    uint64_t total, done;
    double t0, last;
    int tty, shown;
};
void progress_begin(struct progress *p, const char *label, uint64_t total);
void progress_add(struct progress *p, uint64_t n);
void progress_end(struct progress *p);

#endif
