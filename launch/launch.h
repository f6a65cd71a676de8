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
#include "../parallel/cost.h"
#include "../shard/gguf.h"

int cmd_run(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_shard(int argc, char **argv);
int cmd_plan(int argc, char **argv);

/* ------------------------------------------------------- devices (device.c) */

enum { LAUNCH_DEVICE_AUTO = 0, LAUNCH_DEVICE_CPU = 1, LAUNCH_DEVICE_CUDA = 2 };
/* "auto", "cpu", "cuda" (or "gpu"); -1 for another name */
int launch_device_from_name(const char *name);
/* SHOAL_CPU_AS_DEVICE=1 in the environment: the CPU backend behaves as a GPU's without NCCL (tests). */
int launch_cpu_as_device(void);
/* This rank's index among the ranks of its machine (mpirun's, Slurm's), 0 when not told. */
int launch_local_rank(void);
/*
 * The backend a rank computes on: device (LAUNCH_DEVICE_*; auto is CUDA when
 * a device is present), gpu (-1: the local rank modulo the GPUs), rank (for
 * messages), cp for the CPU. *be is the caller's; *gpu_out the CUDA device taken (-1 for the CPU);
 * desc a short description for the load line. Asking for CUDA where there is
 * none is SHOAL_UNSUPPORTED with the reason.
 */
struct shoal_cpu_params;
struct shoal_backend;
shoal_status launch_backend_create(int device, int gpu, int rank, const struct shoal_cpu_params *cp,
                                   struct shoal_backend **be, int *gpu_out, char *desc, size_t len);

/* Prints "shoal CMD: error: <detail>" for a failed status and returns 1. */
int launch_fail(const char *cmd, shoal_status rc);

/* Reads a whole file into a NUL-terminated buffer (*out, the caller's; *len bytes). */
shoal_status launch_read_file(const char *path, char **out, size_t *len);

/*
 * The planner's side of the command line (cmd_plan.c), shared with shoal run.
 * This machine: its cores, available memory, and read bandwidth with all
 * cores and with one, over a buffer of `bytes`.
 */
shoal_status launch_measure_machine(struct shoal_host *h, size_t bytes);
/* The best layout of topo's ranks (fitting, then fastest); best->mem is the caller's. */
shoal_status launch_auto_layout(const struct shoal_model_shape *m, const struct shoal_topology *topo,
                                const struct shoal_cost_params *p, struct shoal_layout_cost *best);

/* A host file (shoal plan --help), hosts that leave things out taking machine's. */
shoal_status launch_read_hosts(const char *path, const struct shoal_host *machine, struct shoal_topology *t);

/*
 * The layout shoal run takes when given no --tp/--pp: the planner's best for
 * the ranks running, described by hosts_path, or else as hosts like this one
 * (measured) with local_ranks ranks each, joined by links of
 * LAUNCH_LINK_BW / LAUNCH_LINK_LAT (a home LAN; a host file says better).
 * rings: the windowed layers' rings (shoal_ring_slots): 1 for shoal run,
 * the sequences a step holds for shoal serve.
 */
#define LAUNCH_LINK_BW "1Gbit/s"
#define LAUNCH_LINK_LAT "0.25ms"
shoal_status launch_choose_layout(const struct shoal_gguf *g, const char *hosts_path, int n_ranks,
                                  int local_ranks, int n_ctx, int n_batch, int rings, int kv_type, int wire,
                                  struct shoal_layout_cost *best);

/*
 * The planner's measurements of this machine (probe.c): one layer of a
 * rank's part, and its output head, timed here (shoal_cost_params.probe).
 */
struct probe_entry {
    int q, kv, ff, v, threads;
    double layer_s, head_s;
};
struct launch_probe {
    const struct shoal_gguf *g;
    const struct shoal_model_shape *shape;
    int kv_type, simd, pos; /* pos: the position a decode step reads up to */
    struct probe_entry e[64];
    int n;
};
shoal_status launch_probe(void *user, const struct shoal_rank_part *pt, int threads, double *layer_s,
                          double *head_s);

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
