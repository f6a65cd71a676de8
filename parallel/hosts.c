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
    if (unit_is(u, b)) return v;
    if (unit_is(u, k)) return v * 1024.0;
    if (unit_is(u, m)) return v * 1024.0 * 1024;
    if (unit_is(u, g)) return v * 1024.0 * 1024 * 1024;
    if (unit_is(u, t)) return v * 1024.0 * 1024 * 1024 * 1024;
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
        if (strcmp(u, units[i].name) == 0) return v * units[i].mul;
    return -1;
}

double shoal_parse_time(const char *s) {
    const char *u;
    double v = number(s, &u);
    if (isnan(v)) return -1;
    if (strcmp(u, "s") == 0) return v;
    if (strcmp(u, "ms") == 0) return v * 1e-3;
    if (strcmp(u, "us") == 0) return v * 1e-6;
    if (strcmp(u, "ns") == 0) return v * 1e-9;
    return -1;
}

/* ------------------------------------------------------------------ parse */

static int find_host(const struct shoal_topology *t, const char *name) {
    for (int i = 0; i < t->n_hosts; i++)
        if (strcmp(t->hosts[i].name, name) == 0) return i;
    return -1;
}

/* key=value words after the first ones: fills the fields named in keys. */
struct field {
    const char *key;
    char kind; /* 'i' int, 's' size, 'r' rate, 't' time */
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
        case 'i': v = (double)strtol(val, &end, 10); if (!*val || *end || v < 1 || v > 65536) v = -1; break;
        case 's': v = shoal_parse_size(val); break;
        case 'r': v = shoal_parse_rate(val); break;
        case 't': v = shoal_parse_time(val); break;
        }
        static const char *const what[] = { ['i'] = "a whole number from 1 to 65536",
                                            ['s'] = "a size such as 16G or 512M",
                                            ['r'] = "a rate such as 40GB/s or 1Gbit/s",
                                            ['t'] = "a time such as 1ms or 200us" };
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
        void *h = realloc(t->hosts, sizeof *t->hosts * (size_t)(t->n_hosts + 1));
        if (!h) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        t->hosts = h;
        struct shoal_host *x = &t->hosts[t->n_hosts];
        memset(x, 0, sizeof *x);
        snprintf(x->name, sizeof x->name, "%s", w[1]);
        struct field f[] = { { "ranks", 'i', &x->ranks, 1, 0 },  { "mem", 's', &x->mem, 1, 0 },
                             { "ram", 's', &x->ram, 0, 0 },      { "membw", 'r', &x->membw, 0, 0 },
                             { "corebw", 'r', &x->corebw, 0, 0 }, { "cores", 'i', &x->cores, 0, 0 } };
        SHOAL_TRY(fields(w + 2, n - 2, f, 6, where));
        /* what the file leaves out: this machine's (a given membw with linear scaling) */
        if (!f[5].seen) x->cores = dflt ? dflt->cores : 0;
        if (!f[3].seen) x->membw = dflt ? dflt->membw : 0;
        if (!f[4].seen) x->corebw = f[3].seen || !dflt ? x->membw / (x->cores > 0 ? x->cores : 1) : dflt->corebw;
        if (x->corebw > x->membw) x->corebw = x->membw;
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
            void *p = realloc(t->links, sizeof *t->links * (size_t)(t->n_links + 1));
            if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory");
            t->links = p;
            t->links[t->n_links++] = l;
        }
        return SHOAL_OK;
    }
    return shoal_errorf(SHOAL_INVALID, "%s: '%s' is not host, link or local", where, w[0]);
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
    if (rc == SHOAL_OK && out->n_ranks > 65536)
        rc = shoal_errorf(SHOAL_INVALID, "%s: %d ranks in all; shoal plans for at most 65536", name, out->n_ranks);
    for (int i = 0; rc == SHOAL_OK && i < out->n_hosts; i++)
        if (!(out->hosts[i].membw > 0) || !(out->hosts[i].corebw > 0) || out->hosts[i].cores < 1)
            rc = shoal_errorf(SHOAL_INVALID, "%s: host %s: give membw= and cores=", name, out->hosts[i].name);
    /* every pair of hosts needs a link: named, or the default */
    for (int a = 0; rc == SHOAL_OK && a < out->n_hosts; a++)
        for (int b = a + 1; rc == SHOAL_OK && b < out->n_hosts; b++)
            if (shoal_topology_link(out, a, b)->bw <= 0)
                rc = shoal_errorf(SHOAL_INVALID, "%s: no link between %s and %s (add link %s %s "
                                  "bw=.. lat=.., or link * * bw=.. lat=..)", name, out->hosts[a].name,
                                  out->hosts[b].name, out->hosts[a].name, out->hosts[b].name);
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
    return SHOAL_OK;
}

void shoal_topology_free(struct shoal_topology *t) {
    free(t->hosts);
    free(t->links);
    memset(t, 0, sizeof *t);
}

int shoal_topology_host_of(const struct shoal_topology *t, int rank) {
    for (int h = 0; h < t->n_hosts; h++) {
        if (rank < t->hosts[h].ranks) return h;
        rank -= t->hosts[h].ranks;
    }
    return t->n_hosts - 1;
}

const struct shoal_link *shoal_topology_link(const struct shoal_topology *t, int a, int b) {
    if (a == b) return &t->local;
    for (int i = 0; i < t->n_links; i++) {
        const struct shoal_link *l = &t->links[i];
        if ((l->a == a && l->b == b) || (l->a == b && l->b == a)) return l;
    }
    return &t->dflt;
}
