/*
 * hosts — the machines a job runs on, as `shoal plan --hosts FILE` reads
 * them: per host its ranks, memory, memory bandwidth and cores, and the
 * links between hosts. Parsing works on text in memory (no I/O), so it is
 * tested like the plan.
 *
 * The file, one statement per line, '#' to the end of a line a comment:
 *
 *   host  NAME  ranks=N  mem=SIZE  [ram=SIZE]  [membw=RATE]  [corebw=RATE]  [cores=N]  [layer=TIME]  [cpu=F]
 *   link  NAME  NAME  bw=RATE  lat=TIME      (both ways)
 *   link  *     *     bw=RATE  lat=TIME      (any pair not named)
 *   local bw=RATE lat=TIME                   (ranks of one host, shared memory)
 *
 * SIZE: 16G, 512M, 64GiB (binary units); RATE: 40GB/s, 125MB/s (bytes), or
 * 1Gbit/s, 100Mbit/s (bits); TIME: 1ms, 200us, 0.5ms, 2s. mem is what a
 * host gives its ranks (RAM on CPU hosts, device memory on GPU hosts),
 * shared by its ranks; ram is the host's RAM where mem is device memory.
 * membw is what all its cores read together, corebw what one core reads
 * (default: membw / cores). layer is the time a rank there takes for a decode
 * step of one of the model's layers (a measurement for one model and one
 * thread count: shoal plan --probe-cluster writes it); cpu the share of the
 * time a rank there keeps when it computes without pause (a CPU quota, a
 * busy machine: 0.3), 1 by default. Ranks are numbered host by host, in file order, as
 * mpirun --hostfile places them by slot.
 */
#ifndef SHOAL_HOSTS_H
#define SHOAL_HOSTS_H

#include "../base/base.h"

struct shoal_host {
    char name[64];
    int ranks;
    double mem;    /* bytes for all its ranks */
    double membw;  /* bytes/s its memory reads with all its cores */
    double corebw; /* bytes/s one core reads */
    double ram;    /* host RAM (for offload; 0: not given) */
    int cores;
    /* seconds one decode step of one of the model's layers, whole, takes a rank of this
     * host with its threads, sustained (shoal plan --probe-cluster measures it); 0: not
     * known, the host's speed scaled from its bandwidth */
    double layer_s;
    /* the share of the time a rank of it keeps running flat out (a CPU quota, other work): it
     * computes at layer_s, but over a run at most this share of the time; 1 when not given */
    double cpu;
};

struct shoal_link {
    int a, b;      /* host indices; -1, -1 for the default */
    double bw;     /* bytes/s */
    double lat;    /* seconds one way */
};

#define SHOAL_HOSTS_MAX_RANKS 65536 /* ranks the planner plans for, and a host's cores */

struct shoal_topology {
    struct shoal_host *hosts;
    int n_hosts;
    struct shoal_link *links;
    int n_links;
    struct shoal_link local;   /* between ranks of one host */
    struct shoal_link dflt;    /* between hosts no link line names */
    int n_ranks;
    /* indexes (hosts.c), so that a file of many hosts and links costs a line each: hosts by
     * name, links by their pair of hosts (slots of 1 + an index; 0 empty), each host's first rank */
    int *host_slots, *link_slots, *rank0;
    uint64_t host_cap, link_cap;
};

/*
 * Parses a host file's text (name for messages). Errors name the line and
 * what is wrong. A host without membw, corebw or cores gets dflt's (the
 * caller's measurement of this machine). *out is owned by the caller
 * (shoal_topology_free).
 */
shoal_status shoal_hosts_parse(const char *text, const char *name, const struct shoal_host *dflt,
                               struct shoal_topology *out);

/* One host of n ranks: the simple case (--ranks N --mem-per-rank SIZE). */
shoal_status shoal_hosts_single(int n, double mem_per_rank, const struct shoal_host *machine,
                                struct shoal_topology *out);

void shoal_topology_free(struct shoal_topology *t);

/* The host rank r runs on. */
int shoal_topology_host_of(const struct shoal_topology *t, int rank);

/* The link between two hosts (the local link when a == b). */
const struct shoal_link *shoal_topology_link(const struct shoal_topology *t, int a, int b);

/* "1.5G" -> bytes, "40GB/s" or "1Gbit/s" -> bytes/s, "1ms" -> s; -1 when not one. */
double shoal_parse_size(const char *s);
double shoal_parse_rate(const char *s);
double shoal_parse_time(const char *s);

#endif
