/*
 * args.c — table-driven option parsing and help (args.h).
 */
#include "args.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

void args_help(FILE *f, const char *cmd, const char *usage, const char *about,
               const struct opt *opts) {
    fprintf(f, "usage: %s %s\n\n%s\n\noptions:\n", cmd, usage, about);
    for (const struct opt *o = opts; o->lng; o++) {
        char left[64];
        if (o->shrt)
            snprintf(left, sizeof left, "-%c, %s%s%s", o->shrt, o->lng, o->arg ? " " : "",
                     o->arg ? o->arg : "");
        else
            snprintf(left, sizeof left, "    %s%s%s", o->lng, o->arg ? " " : "", o->arg ? o->arg : "");
        fprintf(f, "  %-28s %s\n", left, o->help);
    }
    fprintf(f, "  %-28s %s\n", "-h, --help", "show this help and exit");
}

int64_t args_parse_size(const char *s) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || !(v >= 0)) return -1;
    double mul = 1;
    switch (*end) {
    case 'k': case 'K': mul = 1024.0; end++; break;
    case 'm': case 'M': mul = 1024.0 * 1024; end++; break;
    case 'g': case 'G': mul = 1024.0 * 1024 * 1024; end++; break;
    case 't': case 'T': mul = 1024.0 * 1024 * 1024 * 1024; end++; break;
    }
    if (*end == 'i' || *end == 'I') end++;
    if (*end == 'b' || *end == 'B') end++;
    if (*end || v * mul > 9.2e18) return -1;
    return (int64_t)(v * mul);
}

static int set_value(FILE *err, const char *cmd, const struct opt *o, const char *val) {
    char *end;
    errno = 0;
    switch (o->kind) {
    case OPT_INT: {
        long v = strtol(val, &end, 10);
        if (errno || end == val || *end || v < -2147483647L || v > 2147483647L) {
            fprintf(err, "%s: %s: '%s' is not an integer\n", cmd, o->lng, val);
            return 2;
        }
        *(int *)o->dst = (int)v;
        return 0;
    }
    case OPT_U64: {
        unsigned long long v = strtoull(val, &end, 0);
        if (errno || end == val || *end || val[0] == '-') {
            fprintf(err, "%s: %s: '%s' is not a non-negative integer\n", cmd, o->lng, val);
            return 2;
        }
        *(uint64_t *)o->dst = v;
        return 0;
    }
    case OPT_FLOAT: {
        float v = strtof(val, &end);
        if (errno || end == val || *end || !isfinite(v)) {
            fprintf(err, "%s: %s: '%s' is not a number\n", cmd, o->lng, val);
            return 2;
        }
        *(float *)o->dst = v;
        return 0;
    }
    case OPT_SIZE: {
        int64_t v = args_parse_size(val);
        if (v < 0) {
            fprintf(err, "%s: %s: '%s' is not a size (e.g. 512M, 8G)\n", cmd, o->lng, val);
            return 2;
        }
        *(uint64_t *)o->dst = (uint64_t)v;
        return 0;
    }
    case OPT_STR:
        *(const char **)o->dst = val;
        return 0;
    case OPT_FLAG:
        break;
    }
    return 2;
}

static int parse(FILE *err, int loud, const char *cmd, const char *usage, const char *about,
                 const struct opt *opts, int argc, char **argv, const char **pos, int max_pos,
                 int *n_pos);

int args_parse(const char *cmd, const char *usage, const char *about, const struct opt *opts,
               int argc, char **argv, const char **pos, int max_pos, int *n_pos) {
    return args_parse_quiet(1, cmd, usage, about, opts, argc, argv, pos, max_pos, n_pos);
}

int args_parse_quiet(int loud, const char *cmd, const char *usage, const char *about,
                     const struct opt *opts, int argc, char **argv, const char **pos, int max_pos,
                     int *n_pos) {
    FILE *err = loud ? stderr : fopen("/dev/null", "w");
    if (!err) err = stderr;
    int rc = parse(err, loud, cmd, usage, about, opts, argc, argv, pos, max_pos, n_pos);
    if (err != stderr) fclose(err);
    return rc;
}

static int parse(FILE *err, int loud, const char *cmd, const char *usage, const char *about,
                 const struct opt *opts, int argc, char **argv, const char **pos, int max_pos,
                 int *n_pos) {
    *n_pos = 0;
    int only_pos = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (only_pos || a[0] != '-' || a[1] == 0) {
            if (*n_pos >= max_pos) {
                fprintf(err, "%s: unexpected argument '%s' (see %s --help)\n", cmd, a, cmd);
                return 2;
            }
            pos[(*n_pos)++] = a;
            continue;
        }
        if (strcmp(a, "--") == 0) {
            only_pos = 1;
            continue;
        }
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            if (loud) args_help(stdout, cmd, usage, about, opts);
            return 1;
        }
        const char *inline_val = NULL;
        char name[64];
        const struct opt *o = NULL;
        if (a[1] == '-') {
            const char *eq = strchr(a, '=');
            size_t len = eq ? (size_t)(eq - a) : strlen(a);
            if (len >= sizeof name) len = sizeof name - 1;
            memcpy(name, a, len);
            name[len] = 0;
            if (eq) inline_val = eq + 1;
            for (const struct opt *p = opts; p->lng; p++)
                if (strcmp(p->lng, name) == 0) o = p;
        } else if (a[2] == 0) {
            for (const struct opt *p = opts; p->lng; p++)
                if (p->shrt == a[1]) o = p;
        }
        if (!o) {
            fprintf(err, "%s: unknown option '%s' (see %s --help)\n", cmd, a, cmd);
            return 2;
        }
        if (o->kind == OPT_FLAG) {
            if (inline_val) {
                fprintf(err, "%s: %s takes no value\n", cmd, o->lng);
                return 2;
            }
            *(int *)o->dst = 1;
            continue;
        }
        const char *val = inline_val;
        if (!val) {
            if (i + 1 >= argc) {
                fprintf(err, "%s: %s needs a value (%s)\n", cmd, o->lng, o->arg ? o->arg : "");
                return 2;
            }
            val = argv[++i];
        }
        int rc = set_value(err, cmd, o, val);
        if (rc) return rc;
    }
    return 0;
}

int args_parse_weights(const char *s, double *w, int max) {
    int n = 0;
    while (*s) {
        char *end;
        double v = strtod(s, &end);
        if (end == s || !(v > 0) || v > 1e6 || n == max || (*end && *end != ',')) return -1;
        w[n++] = v;
        s = *end ? end + 1 : end;
        if (*end && !*s) return -1; /* a trailing comma */
    }
    return n;
}
