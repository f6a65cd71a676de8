/*
 * progress.c — progress reports for long work (writing models, loading).
 */
#include <stdio.h>
#include <unistd.h>

#include "launch.h"

void progress_begin(struct progress *p, const char *label, uint64_t total) {
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t0 = p->last = shoal_now();
    p->tty = isatty(STDERR_FILENO);
    p->shown = 0;
}

static void show(struct progress *p, int final) {
    double now = shoal_now(), el = now - p->t0;
    double rate = el > 0 ? (double)p->done / el : 0;
    double eta = rate > 0 ? (double)(p->total - p->done) / rate : 0;
    char a[32], b[32], r[32];
    shoal_fmt_bytes(a, sizeof a, (double)p->done);
    shoal_fmt_bytes(b, sizeof b, (double)p->total);
    shoal_fmt_bytes(r, sizeof r, rate);
    int pct = p->total ? (int)(100.0 * (double)p->done / (double)p->total) : 100;
    if (p->tty) {
        char bar[31];
        int fill = pct * 30 / 100;
        for (int i = 0; i < 30; i++) bar[i] = i < fill ? '#' : '.';
        bar[30] = 0;
        fprintf(stderr, "\r%s [%s] %3d%% %s / %s  %s/s  ETA %.0fs  ", p->label, bar, pct, a, b, r,
                final ? 0.0 : eta);
        if (final) fputc('\n', stderr);
    } else {
        fprintf(stderr, "%s: %3d%% %s / %s, %s/s, ETA %.0fs\n", p->label, pct, a, b, r,
                final ? 0.0 : eta);
    }
    p->last = now;
    p->shown = 1;
}

#define PROGRESS_MIN_BYTES (64u << 20) /* smaller work: no report */

void progress_add(struct progress *p, uint64_t n) {
    p->done += n;
    if (p->total < PROGRESS_MIN_BYTES) return;
    double now = shoal_now();
    if (now - p->last >= (p->tty ? 0.2 : 5.0)) show(p, 0);
}

/* The last report, for all work large enough for reports, though it ended before the first
 * was due (5 s apart in a log: 2.4 GB sharded in 4 s left a log without a line). */
void progress_end(struct progress *p) {
    if (p->shown || p->total >= PROGRESS_MIN_BYTES) show(p, 1);
}
