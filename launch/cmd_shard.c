/*
 * cmd_shard.c — `shoal shard`: cut a GGUF into one file per rank of a
 * tp x pp plan, plus the manifest, with progress on stderr.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../comm/comm.h"
#include "../runtime/model.h"
#include "../shard/default_model.h"
#include "../shard/shard_write.h"
#include "args.h"
#include "launch.h"

static void on_progress(void *user, uint64_t done, uint64_t total) {
    struct progress *p = user;
    p->total = total;
    progress_add(p, done - p->done);
}

int cmd_shard(int argc, char **argv) {
    const char *model = NULL, *dir = NULL, *tpw_s = NULL, *ppw_s = NULL, *comm = "f64";
    int tp = 1, pp = 1, quiet = 0, ep = 0;
    const struct opt opts[] = {
        { "--model", 'm', OPT_STR, &model, "FILE", "GGUF model to cut (default: the default model, as shoal run)" },
        { "--output", 'o', OPT_STR, &dir, "DIR", "directory for manifest.pb and rank-K.gguf (created if missing)" },
        { "--tp", 0, OPT_INT, &tp, "N", "tensor-parallel ranks per stage (default 1)" },
        { "--pp", 0, OPT_INT, &pp, "N", "pipeline stages (default 1)" },
        { "--ep", 0, OPT_INT, &ep, "N", "a mixture of experts: whole experts over N tensor-parallel ranks (as shoal run; sets --tp N)" },
        { "--tp-weights", 0, OPT_STR, &tpw_s, "W,W..", "relative speeds of a stage's ranks (as shoal run)" },
        { "--pp-weights", 0, OPT_STR, &ppw_s, "W,W..", "relative speeds of the stages (as shoal run)" },
        { "--comm-dtype", 0, OPT_STR, &comm, "TYPE", "the all-reduce payload runs will use, recorded in the manifest (default f64)" },
        { "--quiet", 'q', OPT_FLAG, &quiet, NULL, "no progress or summary" },
        OPT_END,
    };
    const char *pos[1];
    int n_pos;
    int prc = args_parse("shoal shard", "[-m MODEL.gguf] --tp T --pp P -o DIR",
                         "Cuts a GGUF into one file per rank of a tp x pp plan (each a valid GGUF\n"
                         "holding exactly that rank's slices) and a manifest (manifest.pb) with\n"
                         "every tensor's checksum. Then run with shoal run --shards DIR: each rank\n"
                         "reads the manifest and its own file only.",
                         opts, argc, argv, pos, 0, &n_pos);
    if (prc) return prc == 1 ? 0 : 2;
    double tpw[ARGS_MAX_WEIGHTS], ppw[ARGS_MAX_WEIGHTS];
    int ntpw = 0, nppw = 0;
    if (!dir) {
        fprintf(stderr, "shoal shard: say where with -o DIR (see shoal shard --help)\n");
        return 2;
    }
    if (ep > 1 && tp > 1 && tp != ep) {
        fprintf(stderr, "shoal shard: --ep %d spreads the experts over a stage's tensor-parallel ranks: give --tp %d "
                "with it, or leave --tp out\n", ep, ep);
        return 2;
    }
    if (ep > 1) tp = ep;
    if (tp < 1 || pp < 1) {
        fprintf(stderr, "shoal shard: --tp and --pp must be at least 1\n");
        return 2;
    }
    if (tpw_s && (ntpw = args_parse_weights(tpw_s, tpw, ARGS_MAX_WEIGHTS)) != tp) {
        fprintf(stderr, "shoal shard: --tp-weights '%s': give %d positive numbers, one per rank\n", tpw_s, tp);
        return 2;
    }
    if (ppw_s && (nppw = args_parse_weights(ppw_s, ppw, ARGS_MAX_WEIGHTS)) != pp) {
        fprintf(stderr, "shoal shard: --pp-weights '%s': give %d positive numbers, one per stage\n", ppw_s, pp);
        return 2;
    }
    if (shoal_wire_from_name(comm) < 0) {
        fprintf(stderr, "shoal shard: --comm-dtype '%s' is not one of f64, f32, f16, bf16, q8\n", comm);
        return 2;
    }
    shoal_log_init(SHOAL_LOG_WARN, 0, getenv("SHOAL_DEBUG"));
    char dflt[4096];
    shoal_status rc = SHOAL_OK;
    if (!model) {
        if ((rc = shoal_default_model(dflt, sizeof dflt)) != SHOAL_OK) return launch_fail("shard", rc);
        model = dflt;
    }
    struct shoal_gguf *g = NULL;
    struct shoal_plan *plan = NULL;
    struct shoal_model_shape shape;
    rc = shoal_gguf_open(&g, model);
    if (rc == SHOAL_OK) rc = shoal_model_shape(&shape, g);
    if (rc == SHOAL_OK) {
        struct shoal_plan_params pp_ = { .tp = tp, .pp = pp, .ep = ep > 1, .tp_weights = ntpw ? tpw : NULL,
                                         .pp_weights = nppw ? ppw : NULL };
        rc = shoal_plan_make(&plan, &shape, &pp_);
    }
    if (rc == SHOAL_OK) {
        struct progress pr;
        progress_begin(&pr, "shard", 1);
        if (quiet) pr.total = 0;
        struct shoal_shard_params sp = { .tp_weights = ntpw ? tpw : NULL, .pp_weights = nppw ? ppw : NULL,
                                         .comm_dtype = comm, .progress = quiet ? NULL : on_progress,
                                         .user = &pr };
        double t0 = shoal_now();
        rc = shoal_shard_write(g, plan, dir, &sp);
        if (!quiet) progress_end(&pr);
        if (rc == SHOAL_OK && !quiet) {
            char b[32];
            fprintf(stderr, "shoal shard: %s -> %s: %d rank files (tp %d x pp %d) and %s in %.1f s, "
                    "%s written\n", model, dir, plan->n_ranks, tp, pp, "manifest.pb",
                    shoal_now() - t0, shoal_fmt_bytes(b, sizeof b, (double)(pr.done > g->size ? pr.done - g->size : 0)));
            shoal_plan_print(stderr, plan);
        }
    }
    shoal_plan_destroy(plan);
    shoal_gguf_close(g);
    return rc == SHOAL_OK ? 0 : launch_fail("shard", rc);
}
