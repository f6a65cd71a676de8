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
#include <stdio.h>

#include "../base/base.h"
#include "../comm/comm.h"
#include "../parallel/cost.h"
#include "../shard/gguf.h"

int cmd_run(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_shard(int argc, char **argv);
int cmd_plan(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_quantize(int argc, char **argv);

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

/* "w,w,..." of n weights as --tp-weights takes them (the largest 1) into b (len bytes, cut to fit);
 * returns the length of the whole text (len or more: cut). */
size_t launch_weights_text(char *b, size_t len, const double *w, int n);

/* A host file (shoal plan --help), hosts that leave things out taking machine's. */
shoal_status launch_read_hosts(const char *path, const struct shoal_host *machine, struct shoal_topology *t);

/*
 * The layout shoal run takes when given no --tp/--pp: the planner's best for
 * the ranks running, described by a host file (or its text: the cluster as
 * measured), or else as hosts like this one (measured) with local_ranks
 * ranks each, joined by links of LAUNCH_LINK_BW / LAUNCH_LINK_LAT (a home
 * LAN; a host file says better); best->tp_weights, pp_weights: the shares
 * for unequal hosts, or NULL.
 * rings: the windowed layers' rings (shoal_ring_slots): 1 for shoal run,
 * the sequences a step holds for shoal serve.
 */
#define LAUNCH_LINK_BW "1Gbit/s"
#define LAUNCH_LINK_LAT "0.25ms"
struct launch_layout_params {
    const char *hosts_path; /* a host file, or NULL */
    const char *hosts_text; /* else a host file's text (the cluster measured), or NULL */
    int n_ranks, local_ranks;
    int threads;            /* per rank (-t), or 0: a host's cores / its ranks */
    int n_ctx, n_batch, rings, kv_type, wire;
};
/* Where asked (start not NULL): the chosen layout's decode with the context empty, and the
 * context planned for (it predicts best->tok_s at half of it). */
struct launch_start {
    double tok_s;
    int n_ctx;
};
shoal_status launch_choose_layout(const struct shoal_gguf *g, const struct launch_layout_params *p,
                                  struct shoal_layout_cost *best, struct launch_start *start);

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
/*
 * This machine's time for a decode step of one of the model's layers, whole
 * (the part launch_probe times for the model's layers on one rank, not
 * cached; at most max_bytes of them), with threads, over steps that fill
 * window seconds: *layer_s from their median (as launch_probe times),
 * *sustained_s from their mean over the window, which a CPU quota or other
 * work on the machine lengthens where short bursts do not see it.
 */
shoal_status launch_probe_sustained(struct launch_probe *pr, int threads, double window, double max_bytes,
                                    double *layer_s, double *sustained_s);

/*
 * The cluster the ranks run on, measured (cluster.c): collective over world.
 * Each host (a run of consecutive ranks with one host name) in turn: its
 * free memory, bandwidth, cores, and its rank's time for a decode step of one
 * of the model's layers with its threads (threads, or its cores / its
 * ranks), sustained over a window; then each link between hosts (all pairs
 * up to 8 hosts, else host 0's) and between the ranks of a host: latency and
 * bandwidth. On rank 0, out holds the hosts, the links and a host file's
 * text of them (shoal_hosts_parse reads it); elsewhere only the links'
 * count. A rank that fails tells the others, which fail too.
 */
struct launch_cluster_params {
    const char *model; /* the GGUF every rank can open */
    int threads;       /* per rank; 0: a host's cores / its ranks */
    int kv_type, n_ctx; /* the KV cache and its positions (0: as shoal run, the model's up to 4096) */
    double window;     /* (set inside: seconds of timed steps per host) */
};
struct launch_cluster_host {
    char name[64];
    int ranks, cores, threads;
    double mem, membw, corebw, layer_s;
    double cpu; /* the share of the time its rank had to itself, running flat out (a quota, other work) */
};
struct launch_cluster_link {
    int a, b;       /* hosts; a == b: the ranks of host a */
    double lat, bw; /* seconds one way, bytes/s */
};
struct launch_cluster {
    struct launch_cluster_host *hosts;
    int n_hosts;
    struct launch_cluster_link *links;
    int n_links;
    double seconds; /* what measuring took */
    char *text;     /* the host file */
};
shoal_status launch_probe_cluster(struct shoal_comm *world, const struct launch_cluster_params *p,
                                  struct launch_cluster *out);
void launch_cluster_free(struct launch_cluster *c);
/* What was measured, a line a host and a link (rank 0). */
void launch_cluster_print(FILE *f, const struct launch_cluster *c);

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
