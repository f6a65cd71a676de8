/*
 * cluster.c — the cluster the ranks run on, measured at start-up (launch.h:
 * launch_probe_cluster), for the planner: no host file to write by hand, no
 * assumption that every host is rank 0's or that every link is a home LAN's.
 *
 * A host is a run of consecutive ranks with one host name (mpirun places
 * them so); its first rank, the leader, measures it while the others wait:
 * its free memory, its read bandwidth with all cores and with one, the
 * time its rank takes for a decode step of one of the model's layers (the
 * median step), and the share of the time the rank keeps when it runs flat
 * out: the median over the mean of steps that fill a window, where a CPU
 * quota or other work on the host shows. Hosts take turns, so that hosts sharing one machine (containers,
 * namespaces, VMs) do not skew each other. Then each pair of hosts (every
 * pair up to PAIRS_ALL hosts, in rounds of pairs apart, each round's at
 * once; else host 0 with each in turn, the rest taking the slowest of those)
 * and the ranks of one host, where a host has several: a few ping-pongs for
 * the latency and bulk transfers for the bandwidth. The result is a host file's text, which the planner reads
 * as it reads a user's (shoal plan --probe-cluster writes it to keep).
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "../comm/comm.h"
#include "../cpu/cpu.h"
#include "../runtime/model.h"
#include "launch.h"

#define PAIRS_ALL 8          /* hosts up to which every pair's link is measured */
#define PINGS 12             /* round trips per link, the first 2 not counted */
#define BULK (2u << 20)      /* bytes of a bandwidth transfer */
#define BULKS 3              /* transfers per link, the fastest counted (TCP's window opens) */
#define MEMBW_BYTES (64u << 20)
#define WINDOW_ALL 1.0       /* s of layer timing shared by the hosts, each at most WINDOW_MAX */
#define WINDOW_MAX 0.3
#define WINDOW_MIN 0.05
#define PROBE_HOST_BYTES (128.0 * 1024 * 1024) /* of layers a host times at most (what it maps costs) */
#define MSG_SOFTWARE 20e-6   /* s of a message that is software, not the link (cost.c's MSG_COST) */

/* What a host's leader measured, as it travels. */
struct host_wire {
    double mem, membw, corebw, layer_s, cpu;
    int32_t cores, threads;
};

void launch_cluster_free(struct launch_cluster *c) {
    if (!c) return;
    free(c->hosts);
    free(c->links);
    free(c->text);
    memset(c, 0, sizeof *c);
}

/* A name as a host file may spell it: [A-Za-z0-9._-], at most 40 bytes ("host" for none). */
static void clean_name(const char *raw, char *out, size_t len) {
    size_t n = 0;
    for (const char *p = raw; *p && n + 1 < len && n < 40; p++) {
        const char c = *p;
        const int ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
                       c == '-' || c == '_';
        out[n++] = ok ? c : '_';
    }
    out[n] = 0;
    if (!n) snprintf(out, len, "host");
}

/* This machine's name, cleaned. */
static void host_name(char *out, size_t len) {
    char raw[256] = "";
    if (gethostname(raw, sizeof raw - 1) != 0) raw[0] = 0;
    clean_name(raw, out, len);
}

/* The median of n values (sorted in place). */
static double median(double *v, int n) {
    for (int i = 1; i < n; i++)
        for (int j = i; j > 0 && v[j] < v[j - 1]; j--) {
            const double t = v[j];
            v[j] = v[j - 1];
            v[j - 1] = t;
        }
    return n ? v[n / 2] : 0;
}

/*
 * The link between world ranks a and b, measured by a (b answers): one-way
 * latency (half the median round trip, less the software's share) and
 * bandwidth (a bulk transfer and its answer, less a round trip). Ranks other
 * than a and b return at once.
 */
static shoal_status measure_link(struct shoal_comm *w, int a, int b, void *buf, double *lat, double *bw) {
    const int me = shoal_comm_rank(w);
    *lat = *bw = 0;
    if (me != a && me != b) return SHOAL_OK;
    const int peer = me == a ? b : a;
    uint64_t token = 0;
    double rtt[PINGS];
    for (int i = 0; i < PINGS; i++) {
        const double t0 = shoal_now();
        if (me == a) {
            SHOAL_TRY(shoal_comm_send(w, &token, sizeof token, peer));
            SHOAL_TRY(shoal_comm_recv(w, &token, sizeof token, peer));
        } else {
            SHOAL_TRY(shoal_comm_recv(w, &token, sizeof token, peer));
            SHOAL_TRY(shoal_comm_send(w, &token, sizeof token, peer));
        }
        rtt[i] = shoal_now() - t0;
    }
    const double r = median(rtt + 2, PINGS - 2);
    double best = INFINITY;
    for (int i = 0; i < BULKS; i++) {
        const double t0 = shoal_now();
        if (me == a) {
            SHOAL_TRY(shoal_comm_send(w, buf, BULK, peer));
            SHOAL_TRY(shoal_comm_recv(w, &token, sizeof token, peer));
        } else {
            SHOAL_TRY(shoal_comm_recv(w, buf, BULK, peer));
            SHOAL_TRY(shoal_comm_send(w, &token, sizeof token, peer));
        }
        best = fmin(best, shoal_now() - t0);
    }
    *lat = fmax(r / 2 - MSG_SOFTWARE, 1e-6);
    *bw = BULK / fmax(best - r, 1e-6);
    return SHOAL_OK;
}

/* Rates and times as a host file writes them, precise enough to give the same plan back. */
static const char *rate_text(char *b, size_t n, double v) {
    if (v >= 1e9) snprintf(b, n, "%.4gGB/s", v / 1e9);
    else snprintf(b, n, "%.4gMB/s", v / 1e6);
    return b;
}
static const char *time_text(char *b, size_t n, double v) {
    snprintf(b, n, "%.4gus", v * 1e6);
    return b;
}

/* Appends to t (cap bytes) at *at; past the end, only counts (the caller checks *at < cap). */
static void put(char *t, size_t cap, size_t *at, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
static void put(char *t, size_t cap, size_t *at, const char *fmt, ...) {
    if (*at >= cap) return;
    va_list ap;
    va_start(ap, fmt);
    const int k = vsnprintf(t + *at, cap - *at, fmt, ap);
    va_end(ap);
    *at += k > 0 ? (size_t)k : 0;
}

/* The host file of what was measured (rank 0). */
static shoal_status write_text(struct launch_cluster *c, const char *model, const struct shoal_link *dflt) {
    const size_t cap = 1024 + strlen(model) + (size_t)c->n_hosts * 320 + (size_t)c->n_links * 200;
    char *t = malloc(cap), b[4][48];
    if (!t) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    size_t at = 0;
    time_t now = time(NULL);
    struct tm tm;
    char when[32] = "";
    if (gmtime_r(&now, &tm)) strftime(when, sizeof when, "%Y-%m-%d %H:%M UTC", &tm);
    put(t, cap, &at,
                           "# the hosts of this job, measured by shoal in %.2f s on %s (shoal plan --help: the format).\n"
                           "# layer= is a rank's time for a decode step of one layer of %s with the threads shown;\n"
                           "# the rest is the machines' and links'. Edit as needed; give back with --hosts.\n",
                           c->seconds, when, model);
    for (int h = 0; h < c->n_hosts; h++) {
        const struct launch_cluster_host *x = &c->hosts[h];
        put(t, cap, &at,
                               "host %s ranks=%d mem=%.0fM membw=%s corebw=%s cores=%d layer=%s cpu=%.3g  # %d thread%s a rank\n",
                               x->name, x->ranks, floor(x->mem / 1048576), rate_text(b[0], 48, x->membw),
                               rate_text(b[1], 48, x->corebw), x->cores, time_text(b[2], 48, x->layer_s), x->cpu,
                               x->threads, x->threads == 1 ? "" : "s");
    }
    for (int i = 0; i < c->n_links; i++) {
        const struct launch_cluster_link *l = &c->links[i];
        if (l->a == l->b)
            put(t, cap, &at, "local bw=%s lat=%s\n", rate_text(b[0], 48, l->bw),
                                   time_text(b[1], 48, l->lat));
        else
            put(t, cap, &at, "link %s %s bw=%s lat=%s\n", c->hosts[l->a].name,
                                   c->hosts[l->b].name, rate_text(b[0], 48, l->bw), time_text(b[1], 48, l->lat));
    }
    if (dflt)
        put(t, cap, &at, "link * * bw=%s lat=%s  # pairs not measured: the slowest measured\n",
                               rate_text(b[0], 48, dflt->bw), time_text(b[1], 48, dflt->lat));
    if (at >= cap) {
        free(t);
        return shoal_errorf(SHOAL_INTERNAL, "the host file outgrew its buffer");
    }
    c->text = t;
    return SHOAL_OK;
}

/* Measures this rank's host (its leader). */
static shoal_status measure_host(const struct launch_cluster_params *p, int ranks_here, struct host_wire *out) {
    struct shoal_host m;
    memset(out, 0, sizeof *out);
    SHOAL_TRY(launch_measure_machine(&m, MEMBW_BYTES));
    out->mem = m.mem;
    out->membw = m.membw;
    out->corebw = m.corebw;
    out->cores = m.cores;
    out->threads = p->threads > 0 ? p->threads : m.cores / ranks_here;
    if (out->threads < 1) out->threads = 1;
    struct shoal_gguf *g = NULL;
    SHOAL_TRY(shoal_gguf_open(&g, p->model));
    struct shoal_model_shape shape;
    struct shoal_hparams hp;
    shoal_status rc = shoal_model_shape(&shape, g);
    if (rc == SHOAL_OK) rc = shoal_hparams_read(&hp, g);
    if (rc == SHOAL_OK) {
        /* the position the planner's probe reads up to: the context half full */
        const int n_ctx = p->n_ctx > 0 ? p->n_ctx : hp.n_ctx_train < 4096 ? hp.n_ctx_train : 4096;
        struct launch_probe *pr = calloc(1, sizeof *pr);
        if (!pr) rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
        else {
            *pr = (struct launch_probe){ .g = g, .shape = &shape, .kv_type = p->kv_type, .simd = SHOAL_SIMD_AUTO,
                                         .pos = n_ctx / 2 };
            double sustained = 0;
            rc = launch_probe_sustained(pr, out->threads, p->window, PROBE_HOST_BYTES, &out->layer_s, &sustained);
            /* the share of the time the rank had, flat out: 1 within the timing's noise */
            out->cpu = sustained > 0 ? out->layer_s / sustained : 1;
            out->cpu = out->cpu > 0.9 ? 1 : out->cpu;
            free(pr);
        }
    }
    shoal_gguf_close(g);
    return rc;
}

static shoal_status host_file(struct launch_cluster *out, const char *model, int nh, const char *names,
                              const int *leader, int *host_of, const struct host_wire *hw, int all_pairs);

/* qsort_r's order of runs of ranks: by host name, then by place. */
struct runs {
    const char *names; /* 64 bytes a rank */
    const int *leader; /* each run's first rank */
};
static int by_name(const void *a, const void *b, void *arg) {
    const struct runs *r = arg;
    const int x = *(const int *)a, y = *(const int *)b;
    const int c = strcmp(r->names + r->leader[x] * 64, r->names + r->leader[y] * 64);
    return c ? c : (x > y) - (x < y);
}

shoal_status launch_probe_cluster(struct shoal_comm *w, const struct launch_cluster_params *p,
                                  struct launch_cluster *out) {
    memset(out, 0, sizeof *out);
    const double t0 = shoal_now();
    const int me = shoal_comm_rank(w), n = shoal_comm_size(w);
    char mine[64] = "", *names = malloc((size_t)n * 64);
    int *host_of = calloc((size_t)n, sizeof *host_of), *leader = malloc(sizeof *leader * (size_t)(n + 1));
    struct host_wire *hw = calloc((size_t)n, sizeof *hw);
    void *bulk = malloc(BULK);
    shoal_status rc = !names || !host_of || !leader || !hw || !bulk ? shoal_errorf(SHOAL_NOMEM, "out of memory")
                                                                    : SHOAL_OK;
    SHOAL_TRY_GOTO(shoal_comm_agree(w, rc, NULL), rc, done); /* a rank that failed says so to the others */
    host_name(mine, sizeof mine);
    SHOAL_TRY_GOTO(shoal_comm_allgather(w, mine, 64, names), rc, done);
    /* hosts: runs of consecutive ranks of one name; a name met again is another host */
    int nh = 0;
    for (int r = 0; r < n; r++) {
        char raw[64];
        memcpy(raw, names + r * 64, 63);
        raw[63] = 0;
        clean_name(raw, names + r * 64, 64); /* as another rank sent it: a host file's word again */
        if (r == 0 || strcmp(names + r * 64, names + (r - 1) * 64) != 0) leader[nh++] = r;
        host_of[r] = nh - 1;
    }
    leader[nh] = n;
    const int h_me = host_of[me], ranks_here = leader[h_me + 1] - leader[h_me];
    /* the links to measure: the ranks of a host (the first host with two), then pairs of hosts */
    int loc = -1;
    for (int h = 0; h < nh && loc < 0; h++)
        if (leader[h + 1] - leader[h] > 1) loc = h;
    const int all_pairs = nh <= PAIRS_ALL, n_pairs = all_pairs ? nh * (nh - 1) / 2 : nh - 1;
    const int n_links = n_pairs + (loc >= 0);
    struct launch_cluster_link *links = calloc((size_t)(n_links > 0 ? n_links : 1), sizeof *links);
    out->links = links;
    out->n_links = links ? n_links : 0;
    /* each host in turn, its leader measuring while the others wait */
    struct launch_cluster_params q = *p;
    q.window = fmin(WINDOW_MAX, fmax(WINDOW_MIN, WINDOW_ALL / nh));
    shoal_status mrc = links ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int h = 0; h < nh; h++) {
        if (me == leader[h] && mrc == SHOAL_OK) mrc = measure_host(&q, ranks_here, &hw[me]);
        SHOAL_TRY_GOTO(shoal_comm_barrier(w), rc, done);
    }
    SHOAL_TRY_GOTO(shoal_comm_agree(w, mrc, NULL), rc, done);
    struct host_wire one = hw[me];
    SHOAL_TRY_GOTO(shoal_comm_allgather(w, &one, sizeof one, hw), rc, done);
    /* the pairs in rounds where no host is in two (the circle method: one host stays, the others turn;
     * an odd count has a host out each round), so that pairs of a round are measured at once, over links
     * of their own in a switched LAN: a rank takes its pairs in this order, and waits only for its partner */
    int k = 0;
    if (loc >= 0) links[k++] = (struct launch_cluster_link){ loc, loc, 0, 0 };
    if (all_pairs) {
        const int m = nh + (nh & 1);
        for (int r = 0; r < m - 1; r++)
            for (int i = 0; i < m / 2; i++) {
                const int a = i == 0 ? m - 1 : (r + i) % (m - 1), b = i == 0 ? r : (r - i + m - 1) % (m - 1);
                if (a < nh && b < nh) links[k++] = (struct launch_cluster_link){ a < b ? a : b, a < b ? b : a, 0, 0 };
            }
    } else {
        for (int b = 1; b < nh; b++) links[k++] = (struct launch_cluster_link){ 0, b, 0, 0 };
    }
    for (int i = 0; i < k; i++) {
        const int a = leader[links[i].a], b = links[i].a == links[i].b ? a + 1 : leader[links[i].b];
        SHOAL_TRY_GOTO(measure_link(w, a, b, bulk, &links[i].lat, &links[i].bw), rc, done);
    }
    /* rank 0 learns what the other leaders measured: each link's first rank sends it */
    shoal_status vrc = SHOAL_OK; /* rank 0's checks of it all, agreed on at the end */
    for (int i = 0; i < n_links; i++) {
        const int from = leader[links[i].a];
        if (from == 0) continue;
        double v[2] = { links[i].lat, links[i].bw };
        if (me == from) SHOAL_TRY_GOTO(shoal_comm_send(w, v, sizeof v, 0), rc, done);
        if (me == 0) {
            SHOAL_TRY_GOTO(shoal_comm_recv(w, v, sizeof v, from), rc, done);
            if (!(v[0] > 0 && v[0] < 3600 && v[1] > 0 && v[1] < 1e15) && vrc == SHOAL_OK)
                vrc = shoal_errorf(SHOAL_COMM, "rank %d measured its link as %g s and %g bytes/s", from, v[0], v[1]);
            links[i].lat = v[0];
            links[i].bw = v[1];
        }
    }
    out->seconds = shoal_now() - t0;
    if (me == 0 && vrc == SHOAL_OK) vrc = host_file(out, p->model, nh, names, leader, host_of, hw, all_pairs);
    rc = shoal_comm_agree(w, vrc, NULL);
done:
    free(names);
    free(host_of);
    free(leader);
    free(hw);
    free(bulk);
    if (rc != SHOAL_OK) launch_cluster_free(out);
    return rc;
}

/* Rank 0: the hosts from their leaders' figures, checked, and the host file of them all. */
static shoal_status host_file(struct launch_cluster *out, const char *model, int nh, const char *names,
                              const int *leader, int *host_of, const struct host_wire *hw, int all_pairs) {
    const struct launch_cluster_link *links = out->links;
    const int n_links = out->n_links;
    if (!(out->hosts = calloc((size_t)nh, sizeof *out->hosts))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    out->n_hosts = nh;
    /* a name met again (ranks placed round the hosts): each later run of its ranks named apart, name~2 ..;
     * the runs sorted by name, then by place, say which is which */
    struct runs runs = { names, leader };
    for (int h = 0; h < nh; h++) host_of[h] = h; /* (host_of is free now: the runs' order) */
    qsort_r(host_of, (size_t)nh, sizeof *host_of, by_name, &runs);
    for (int i = 0, seen = 0; i < nh; i++) {
        const int h = host_of[i];
        seen = i > 0 && strcmp(names + leader[h] * 64, names + leader[host_of[i - 1]] * 64) == 0 ? seen + 1 : 0;
        if (seen) snprintf(out->hosts[h].name, sizeof out->hosts[h].name, "%s~%d", names + leader[h] * 64, seen + 1);
        else snprintf(out->hosts[h].name, sizeof out->hosts[h].name, "%s", names + leader[h] * 64);
    }
    for (int h = 0; h < nh; h++) {
        struct launch_cluster_host *x = &out->hosts[h];
        const struct host_wire *v = &hw[leader[h]];
        x->ranks = leader[h + 1] - leader[h];
        x->cores = v->cores;
        x->threads = v->threads;
        x->mem = v->mem;
        x->membw = v->membw;
        x->corebw = v->corebw;
        x->layer_s = v->layer_s;
        x->cpu = v->cpu;
        if (!(x->mem > 0 && x->membw > 0 && x->corebw > 0 && x->layer_s > 0 && x->cpu > 0 && x->cpu <= 1 &&
              x->cores > 0 && x->threads > 0))
            return shoal_errorf(SHOAL_COMM, "rank %d measured its host as nothing (bandwidth %g, a layer %g s, "
                                "%d cores)", leader[h], x->membw, x->layer_s, x->cores);
    }
    /* pairs not measured: the slowest measured link */
    struct shoal_link slow = { -1, -1, INFINITY, 0 }, *dflt = NULL;
    if (!all_pairs) {
        for (int i = 0; i < n_links; i++)
            if (links[i].a != links[i].b) {
                slow.bw = fmin(slow.bw, links[i].bw);
                slow.lat = fmax(slow.lat, links[i].lat);
            }
        dflt = &slow;
    }
    return write_text(out, model, dflt);
}

void launch_cluster_print(FILE *f, const struct launch_cluster *c) {
    char b[2][32];
    fprintf(f, "shoal: the cluster, measured in %.2f s:\n", c->seconds);
    for (int h = 0; h < c->n_hosts; h++) {
        const struct launch_cluster_host *x = &c->hosts[h];
        fprintf(f, "  host %s: %d rank%s, %d cores, %s free, reads %.1f GB/s (one core %.1f GB/s), a layer "
                   "%.3f ms with %d thread%s, %.0f%% of the time when busy\n", x->name, x->ranks, x->ranks == 1 ? "" : "s",
                x->cores, shoal_fmt_bytes(b[0], sizeof b[0], x->mem), x->membw / 1e9, x->corebw / 1e9,
                x->layer_s * 1e3, x->threads, x->threads == 1 ? "" : "s", x->cpu * 100);
    }
    for (int i = 0; i < c->n_links; i++) {
        const struct launch_cluster_link *l = &c->links[i];
        if (l->a == l->b)
            fprintf(f, "  ranks of one host (%s): %.3f ms one way, %.2f Gbit/s\n", c->hosts[l->a].name, l->lat * 1e3,
                    l->bw * 8 / 1e9);
        else
            fprintf(f, "  link %s - %s: %.3f ms one way, %.2f Gbit/s\n", c->hosts[l->a].name, c->hosts[l->b].name,
                    l->lat * 1e3, l->bw * 8 / 1e9);
    }
}
