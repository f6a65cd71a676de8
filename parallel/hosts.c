/*
 * hosts.c — the host file of `shoal plan` (hosts.h).
 */
#define _GNU_SOURCE
#include "hosts.h"

#include <ctype.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Shared memory between ranks of one host, as measured with Open MPI's vader
 * transport on the development machines. */
#define LOCAL_LAT 30e-6
#define LOCAL_BW 4e9

/* ------------------------------------------------------------------ units */

/* The number at the start of s and where its unit begins; NAN if none. */
static double number(const char *s, const char **unit) {
    char *end;
    double v = strtod(s, &end);
    if (end == s || !isfinite(v) || v < 0) return NAN;
    *unit = end;
    return v;
}

/* v times its unit's factor, unless that is past any machine's (an exbibyte, an exabyte a
 * second, a day; 1e300T was infinity): -1. */
static double scaled(double v, double mul, double most) {
    const double x = v * mul;
    return isfinite(x) && x <= most ? x : -1;
}

static int unit_is(const char *u, const char *const *names) {
    for (; *names; names++)
        if (strcasecmp(u, *names) == 0) return 1;
    return 0;
}

double shoal_parse_size(const char *s) {
    const char *u;
    double v = number(s, &u);
    if (isnan(v)) return -1;
    static const char *const b[] = { "", "b", NULL }, *const k[] = { "k", "kb", "kib", NULL },
                             *const m[] = { "m", "mb", "mib", NULL }, *const g[] = { "g", "gb", "gib", NULL },
                             *const t[] = { "t", "tb", "tib", NULL };
    const double most = 0x1p60; /* an exbibyte */
    if (unit_is(u, b)) return scaled(v, 1, most);
    if (unit_is(u, k)) return scaled(v, 1024.0, most);
    if (unit_is(u, m)) return scaled(v, 1024.0 * 1024, most);
    if (unit_is(u, g)) return scaled(v, 1024.0 * 1024 * 1024, most);
    if (unit_is(u, t)) return scaled(v, 1024.0 * 1024 * 1024 * 1024, most);
    return -1;
}

double shoal_parse_rate(const char *s) {
    const char *u;
    double v = number(s, &u);
    if (isnan(v)) return -1;
    static const struct {
        const char *name;
        double mul;
    } units[] = {
        { "B/s", 1 },          { "KB/s", 1e3 },        { "MB/s", 1e6 },       { "GB/s", 1e9 },
        { "bit/s", 1 / 8.0 },  { "Kbit/s", 1e3 / 8 },  { "Mbit/s", 1e6 / 8 }, { "Gbit/s", 1e9 / 8 },
        { "Tbit/s", 1e12 / 8 },
    };
    for (size_t i = 0; i < sizeof units / sizeof units[0]; i++)
        if (strcmp(u, units[i].name) == 0) return scaled(v, units[i].mul, 1e18);
    return -1;
}

double shoal_parse_time(const char *s) {
    const char *u;
    double v = number(s, &u);
    if (isnan(v)) return -1;
    if (strcmp(u, "s") == 0) return scaled(v, 1, 86400);
    if (strcmp(u, "ms") == 0) return scaled(v, 1e-3, 86400);
    if (strcmp(u, "us") == 0) return scaled(v, 1e-6, 86400);
    if (strcmp(u, "ns") == 0) return scaled(v, 1e-9, 86400);
    return -1;
}

/* ------------------------------------------------------------------ parse */

/* The host named name, or -1: its slot in the index (a free one when it is not there). */
static uint64_t host_slot(const struct shoal_topology *t, const char *name) {
    uint64_t h = shoal_hash_str(name) & (t->host_cap - 1);
    while (t->host_slots[h] && strcmp(t->hosts[t->host_slots[h] - 1].name, name) != 0) h = (h + 1) & (t->host_cap - 1);
    return h;
}

static int find_host(const struct shoal_topology *t, const char *name) {
    return t->host_slots ? t->host_slots[host_slot(t, name)] - 1 : -1;
}

/* Room in the host index for one more (grown, and every host placed again, when half full). */
static shoal_status host_index_room(struct shoal_topology *t) {
    if (t->host_slots && 2 * (uint64_t)(t->n_hosts + 1) <= t->host_cap) return SHOAL_OK;
    const uint64_t cap = shoal_hash_cap((uint64_t)t->n_hosts + 1);
    int *slots = calloc(cap, sizeof *slots);
    if (!slots) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    free(t->host_slots);
    t->host_slots = slots;
    t->host_cap = cap;
    for (int i = 0; i < t->n_hosts; i++) t->host_slots[host_slot(t, t->hosts[i].name)] = i + 1;
    return SHOAL_OK;
}

/* The slot of the link between hosts a < b in the index (a free one when there is none). */
static uint64_t link_slot(const struct shoal_topology *t, int a, int b) {
    const uint64_t key = (uint64_t)a << 32 | (uint32_t)b;
    uint64_t h = shoal_hash_u64(key) & (t->link_cap - 1);
    while (t->link_slots[h]) {
        const struct shoal_link *l = &t->links[t->link_slots[h] - 1];
        if ((l->a < l->b ? l->a : l->b) == a && (l->a < l->b ? l->b : l->a) == b) break;
        h = (h + 1) & (t->link_cap - 1);
    }
    return h;
}

/* key=value words after the first ones: fills the fields named in keys. */
struct field {
    const char *key;
    char kind; /* 'i' int, 's' size, 'r' rate, 't' time, 'f' a fraction (0, 1] */
    void *dst;
    int required, seen;
};

static shoal_status fields(char **words, int n, struct field *f, int nf, const char *where) {
    for (int i = 0; i < n; i++) {
        char *eq = strchr(words[i], '=');
        if (!eq) return shoal_errorf(SHOAL_INVALID, "%s: '%s' is not key=value", where, words[i]);
        *eq = 0;
        const char *val = eq + 1;
        int k = 0;
        while (k < nf && strcmp(f[k].key, words[i]) != 0) k++;
        if (k == nf) return shoal_errorf(SHOAL_INVALID, "%s: unknown key '%s'", where, words[i]);
        double v = -1;
        char *end = NULL;
        switch (f[k].kind) {
        case 'i': v = (double)strtol(val, &end, 10); if (!*val || *end || v < 1 || v > SHOAL_HOSTS_MAX_RANKS) v = -1; break;
        case 's': v = shoal_parse_size(val); break;
        case 'r': v = shoal_parse_rate(val); break;
        case 't': v = shoal_parse_time(val); break;
        case 'f': v = strtod(val, &end); if (!*val || *end || !(v > 0 && v <= 1)) v = -1; break;
        }
        static const char *const what[] = { ['i'] = "a whole number from 1 to 65536",
                                            ['s'] = "a size such as 16G or 512M",
                                            ['r'] = "a rate such as 40GB/s or 1Gbit/s",
                                            ['t'] = "a time such as 1ms or 200us",
                                            ['f'] = "a share of the time, more than 0 and at most 1" };
        if (v < 0 || (f[k].kind != 't' && v == 0))
            return shoal_errorf(SHOAL_INVALID, "%s: %s=%s is not %s", where, f[k].key, val,
                                what[(int)f[k].kind]);
        if (f[k].kind == 'i') *(int *)f[k].dst = (int)v;
        else *(double *)f[k].dst = v;
        f[k].seen = 1;
    }
    for (int k = 0; k < nf; k++)
        if (f[k].required && !f[k].seen)
            return shoal_errorf(SHOAL_INVALID, "%s: %s= is missing", where, f[k].key);
    return SHOAL_OK;
}

static shoal_status parse_line(struct shoal_topology *t, char **w, int n, const char *where,
                               const struct shoal_host *dflt) {
    if (strcmp(w[0], "host") == 0) {
        if (n < 2) return shoal_errorf(SHOAL_INVALID, "%s: host needs a name", where);
        if (find_host(t, w[1]) >= 0) return shoal_errorf(SHOAL_INVALID, "%s: host %s again", where, w[1]);
        if (strlen(w[1]) >= sizeof t->hosts[0].name || strcmp(w[1], "*") == 0)
            return shoal_errorf(SHOAL_INVALID, "%s: '%s' cannot name a host", where, w[1]);
        SHOAL_TRY(host_index_room(t));
        if ((t->n_hosts & (t->n_hosts - 1)) == 0) { /* room doubled at each power of two: a host each, not the list */
            void *h = realloc(t->hosts, sizeof *t->hosts * (size_t)(t->n_hosts ? 2 * t->n_hosts : 1));
            if (!h) return shoal_errorf(SHOAL_NOMEM, "out of memory");
            t->hosts = h;
        }
        struct shoal_host *x = &t->hosts[t->n_hosts];
        memset(x, 0, sizeof *x);
        snprintf(x->name, sizeof x->name, "%s", w[1]);
        struct field f[] = { { "ranks", 'i', &x->ranks, 1, 0 },  { "mem", 's', &x->mem, 1, 0 },
                             { "ram", 's', &x->ram, 0, 0 },      { "membw", 'r', &x->membw, 0, 0 },
                             { "corebw", 'r', &x->corebw, 0, 0 }, { "cores", 'i', &x->cores, 0, 0 },
                             { "layer", 't', &x->layer_s, 0, 0 },  { "cpu", 'f', &x->cpu, 0, 0 } };
        SHOAL_TRY(fields(w + 2, n - 2, f, 8, where));
        if (!f[7].seen) x->cpu = 1;
        if (f[6].seen && !(x->layer_s > 0 && x->layer_s < 3600))
            return shoal_errorf(SHOAL_INVALID, "%s: layer= is the time of one layer's decode step, more than 0 and "
                                "under an hour", where);
        /* what the file leaves out: this machine's (a given membw with linear scaling) */
        if (!f[5].seen) x->cores = dflt ? dflt->cores : 0;
        if (!f[3].seen) x->membw = dflt ? dflt->membw : 0;
        if (!f[4].seen) x->corebw = f[3].seen || !dflt ? x->membw / (x->cores > 0 ? x->cores : 1) : dflt->corebw;
        if (x->corebw > x->membw) x->corebw = x->membw;
        /* each host at most 65536 ranks: checked before the sum can pass an int */
        if (x->ranks > SHOAL_HOSTS_MAX_RANKS - t->n_ranks)
            return shoal_errorf(SHOAL_INVALID, "%s: more than %d ranks in all; shoal plans for at most %d", where,
                                SHOAL_HOSTS_MAX_RANKS, SHOAL_HOSTS_MAX_RANKS);
        t->host_slots[host_slot(t, x->name)] = t->n_hosts + 1;
        t->n_hosts++;
        t->n_ranks += x->ranks;
        return SHOAL_OK;
    }
    if (strcmp(w[0], "link") == 0 || strcmp(w[0], "local") == 0) {
        int local = w[0][1] == 'o';
        if (!local && n < 3) return shoal_errorf(SHOAL_INVALID, "%s: link needs two hosts", where);
        struct shoal_link l = { -1, -1, 0, 0 };
        if (!local) {
            int any = strcmp(w[1], "*") == 0 && strcmp(w[2], "*") == 0;
            if (!any) {
                l.a = find_host(t, w[1]);
                l.b = find_host(t, w[2]);
                if (l.a < 0 || l.b < 0)
                    return shoal_errorf(SHOAL_INVALID, "%s: link names host %s, which no host line "
                                        "before it defines", where, l.a < 0 ? w[1] : w[2]);
                if (l.a == l.b)
                    return shoal_errorf(SHOAL_INVALID, "%s: a link joins two hosts (for ranks of "
                                        "one host, say local bw=.. lat=..)", where);
            }
        }
        struct field f[] = { { "bw", 'r', &l.bw, 1, 0 }, { "lat", 't', &l.lat, 1, 0 } };
        SHOAL_TRY(fields(w + (local ? 1 : 3), n - (local ? 1 : 3), f, 2, where));
        if (local) {
            t->local = l;
        } else if (l.a < 0) {
            t->dflt = l;
        } else {
            if ((t->n_links & (t->n_links - 1)) == 0) { /* doubled, as the hosts */
                void *p = realloc(t->links, sizeof *t->links * (size_t)(t->n_links ? 2 * t->n_links : 1));
                if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory");
                t->links = p;
            }
            t->links[t->n_links++] = l;
        }
        return SHOAL_OK;
    }
    return shoal_errorf(SHOAL_INVALID, "%s: '%s' is not host, link or local", where, w[0]);
}

/* The links' index by their pair of hosts (the first line of a pair counts) and each host's
 * first rank. */
static shoal_status index_topology(struct shoal_topology *t) {
    t->link_cap = shoal_hash_cap((uint64_t)t->n_links);
    if (!(t->link_slots = calloc(t->link_cap, sizeof *t->link_slots)) ||
        !(t->rank0 = malloc(sizeof *t->rank0 * (size_t)(t->n_hosts + 1))))
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int i = 0; i < t->n_links; i++) {
        const struct shoal_link *l = &t->links[i];
        const uint64_t s = link_slot(t, l->a < l->b ? l->a : l->b, l->a < l->b ? l->b : l->a);
        if (!t->link_slots[s]) t->link_slots[s] = i + 1;
    }
    t->rank0[0] = 0;
    for (int h = 0; h < t->n_hosts; h++) t->rank0[h + 1] = t->rank0[h] + t->hosts[h].ranks;
    return SHOAL_OK;
}

shoal_status shoal_hosts_parse(const char *text, const char *name, const struct shoal_host *dflt,
                               struct shoal_topology *out) {
    memset(out, 0, sizeof *out);
    out->local = (struct shoal_link){ -1, -1, LOCAL_BW, LOCAL_LAT };
    out->dflt = (struct shoal_link){ -1, -1, 0, 0 };
    char *copy = strdup(text);
    if (!copy) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    shoal_status rc = SHOAL_OK;
    int line_no = 0;
    for (char *save = NULL, *line = strtok_r(copy, "\n", &save); line && rc == SHOAL_OK;
         line = strtok_r(NULL, "\n", &save)) {
        line_no++;
        char *hash = strchr(line, '#');
        if (hash) *hash = 0;
        char *w[16];
        int n = 0;
        for (char *s2 = NULL, *tok = strtok_r(line, " \t\r", &s2); tok; tok = strtok_r(NULL, " \t\r", &s2)) {
            if (n == 16) {
                rc = shoal_errorf(SHOAL_INVALID, "%s: line %d: too many words", name, line_no);
                break;
            }
            w[n++] = tok;
        }
        if (rc != SHOAL_OK || n == 0) continue;
        char where[512];
        snprintf(where, sizeof where, "%s: line %d", name, line_no);
        rc = parse_line(out, w, n, where, dflt);
    }
    free(copy);
    if (rc == SHOAL_OK && out->n_hosts == 0)
        rc = shoal_errorf(SHOAL_INVALID, "%s: no host lines (host NAME ranks=N mem=SIZE ...)", name);
    for (int i = 0; rc == SHOAL_OK && i < out->n_hosts; i++)
        if (!(out->hosts[i].membw > 0) || !(out->hosts[i].corebw > 0) || out->hosts[i].cores < 1)
            rc = shoal_errorf(SHOAL_INVALID, "%s: host %s: give membw= and cores=", name, out->hosts[i].name);
    if (rc == SHOAL_OK) rc = index_topology(out);
    /* every pair of hosts needs a link: named, or the default. Without the default, the
     * distinct pairs the links name must be all of them; then the pairs up to the first
     * missing one are each a link, so finding it costs no more than the links */
    if (rc == SHOAL_OK && !(out->dflt.bw > 0)) {
        uint64_t named = 0;
        for (uint64_t s = 0; s < out->link_cap; s++) named += out->link_slots[s] != 0;
        const uint64_t pairs = (uint64_t)out->n_hosts * (uint64_t)(out->n_hosts - 1) / 2;
        for (int a = 0; named < pairs && rc == SHOAL_OK && a < out->n_hosts; a++)
            for (int b = a + 1; rc == SHOAL_OK && b < out->n_hosts; b++)
                if (shoal_topology_link(out, a, b)->bw <= 0)
                    rc = shoal_errorf(SHOAL_INVALID, "%s: no link between %s and %s (add link %s %s "
                                      "bw=.. lat=.., or link * * bw=.. lat=..)", name, out->hosts[a].name,
                                      out->hosts[b].name, out->hosts[a].name, out->hosts[b].name);
    }
    if (rc != SHOAL_OK) shoal_topology_free(out);
    return rc;
}

shoal_status shoal_hosts_single(int n, double mem_per_rank, const struct shoal_host *machine,
                                struct shoal_topology *out) {
    memset(out, 0, sizeof *out);
    if (n < 1 || !(mem_per_rank > 0) || !(machine->membw > 0) || !(machine->corebw > 0) || machine->cores < 1)
        return shoal_errorf(SHOAL_INVALID, "ranks, memory per rank, bandwidth and cores must be positive");
    if (!(out->hosts = calloc(1, sizeof *out->hosts))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    out->n_hosts = 1;
    out->hosts[0] = *machine;
    out->hosts[0].ranks = n;
    out->hosts[0].mem = mem_per_rank * n;
    snprintf(out->hosts[0].name, sizeof out->hosts[0].name, "this machine");
    out->local = (struct shoal_link){ -1, -1, LOCAL_BW, LOCAL_LAT };
    out->n_ranks = n;
    shoal_status rc = index_topology(out);
    if (rc != SHOAL_OK) shoal_topology_free(out);
    return rc;
}

void shoal_topology_free(struct shoal_topology *t) {
    free(t->hosts);
    free(t->links);
    free(t->host_slots);
    free(t->link_slots);
    free(t->rank0);
    memset(t, 0, sizeof *t);
}

int shoal_topology_host_of(const struct shoal_topology *t, int rank) {
    int lo = 0, hi = t->n_hosts - 1; /* the last host whose first rank is at most rank */
    while (lo < hi) {
        const int mid = lo + (hi - lo + 1) / 2;
        if (t->rank0[mid] <= rank) lo = mid;
        else hi = mid - 1;
    }
    return lo;
}

const struct shoal_link *shoal_topology_link(const struct shoal_topology *t, int a, int b) {
    if (a == b) return &t->local;
    if (!t->link_slots) return &t->dflt;
    const int s = t->link_slots[link_slot(t, a < b ? a : b, a < b ? b : a)];
    return s ? &t->links[s - 1] : &t->dflt;
}
