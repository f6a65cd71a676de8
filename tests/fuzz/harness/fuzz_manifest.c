/*
 * fuzz_manifest.c — a shard folder (`shoal shard`'s output) as `shoal run
 * --shards DIR` reads it (launch/cmd_run.c, plan_from_shards): DIR/
 * manifest.pb is read and checked (shard/manifest.c: protobuf, magic,
 * version, the plan tiling the model), turned into a plan, and one rank's
 * file, named by the manifest, is opened and checked against it (its
 * metadata, every tensor's name, type, shape, offset, size and checksum),
 * its hyperparameters compared with the manifest's, and its part of the
 * model prepared for loading (shoal_model_load without a backend).
 *
 * The input: byte 0 the rank (modulo the manifest's ranks), byte 1 bit 0
 * whether checksums are verified, bytes 2-3 the manifest's length (u16,
 * little-endian), the manifest, then the rank's file.
 *
 * Properties: a manifest that is read has a part and a file per rank, in
 * rank order, and parts within the model.
 */
#define _GNU_SOURCE /* nftw */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "parallel/plan.h"
#include "runtime/model.h"
#include "shard/manifest.h"

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static void check_plan(const Shoal__Manifest *m, const struct shoal_plan *plan) {
    const Shoal__Hparams *hp = m->hparams;
    FUZZ_CHECK(plan->n_ranks == plan->tp * plan->pp && (size_t)plan->n_ranks == m->n_ranks, "%d ranks, tp %d pp %d",
               plan->n_ranks, plan->tp, plan->pp);
    for (int r = 0; r < plan->n_ranks; r++) {
        const struct shoal_rank_part *p = &plan->part[r];
        FUZZ_CHECK(p->rank == r && p->stage == r / plan->tp && p->tp_rank == r % plan->tp, "rank %d", r);
        FUZZ_CHECK(p->layer0 >= 0 && p->layer0 < p->layer1 && (uint32_t)p->layer1 <= hp->n_layers, "rank %d's layers", r);
        FUZZ_CHECK(p->q0 >= 0 && p->q0 < p->q1 && (uint32_t)p->q1 <= hp->n_heads, "rank %d's heads", r);
        FUZZ_CHECK(p->v0 >= 0 && p->v0 <= p->v1 && (uint32_t)p->v1 <= hp->n_vocab, "rank %d's rows", r);
        FUZZ_CHECK(m->ranks[r]->file && m->ranks[r]->file[0] && !strchr(m->ranks[r]->file, '/'), "rank %d's file", r);
    }
}

/* What plan_from_shards does with the rank's file once the manifest is read. */
static void rank_file(const char *dir, const Shoal__Manifest *m, const struct shoal_plan *plan, int rank,
                      int verify, const uint8_t *data, size_t size) {
    char path[4352];
    snprintf(path, sizeof path, "%s/%s", dir, m->ranks[rank]->file);
    if (fuzz_write(path, data, size) != 0) return; /* a name no file can have: nothing to open */
    struct shoal_gguf *g = NULL;
    if (shoal_gguf_open(&g, path) == SHOAL_OK) {
        (void)shoal_manifest_rank_bytes(m, rank);
        struct shoal_hparams hp;
        const Shoal__Hparams *mh = m->hparams;
        if (shoal_manifest_check_rank(m, rank, g, verify, NULL, NULL) == SHOAL_OK &&
            shoal_hparams_read(&hp, g) == SHOAL_OK && (uint32_t)hp.dim == mh->dim &&
            (uint32_t)hp.n_layers == mh->n_layers && (uint32_t)hp.n_heads == mh->n_heads &&
            (uint32_t)hp.n_kv_heads == mh->n_kv_heads && (uint32_t)hp.head_dim == mh->head_dim &&
            (uint32_t)hp.ffn_dim == mh->ffn_dim && (uint32_t)hp.n_vocab == mh->n_vocab &&
            (uint32_t)hp.n_expert == mh->n_expert && hp.sharded) {
            struct shoal_model *model = NULL;
            (void)shoal_model_load(&model, g, NULL, &plan->part[rank]);
            shoal_model_destroy(model);
        }
        shoal_gguf_close(g);
    }
    unlink(path);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t rank_sel = fuzz_u8(&in), verify = fuzz_u8(&in) & 1;
    size_t mlen = fuzz_u16(&in);
    if (mlen > in.n) mlen = in.n;
    const char *dir = fuzz_dir();
    char path[256];
    snprintf(path, sizeof path, "%s/%s", dir, SHOAL_MANIFEST_NAME);
    if (fuzz_write(path, in.p, mlen) != 0) abort();
    Shoal__Manifest *m = NULL;
    if (shoal_manifest_read(&m, dir) != SHOAL_OK) {
        FUZZ_CHECK(!m, "a refused manifest was returned");
        return 0;
    }
    struct shoal_plan *plan = NULL;
    FUZZ_CHECK(shoal_manifest_plan(m, &plan) == SHOAL_OK, "%s", shoal_last_error());
    check_plan(m, plan);
    rank_file(dir, m, plan, rank_sel % plan->n_ranks, verify, in.p + mlen, in.n - mlen);
    shoal_plan_destroy(plan);
    shoal_manifest_free(m);
    return 0;
}
