/*
 * shard_write.c — `shoal shard`: cuts a GGUF into one file per rank of a
 * plan, and writes the manifest last.
 *
 * Streaming: bytes go from the source to a rank's file through one 4 MiB
 * buffer, read with pread (the source's pages are never mapped into this
 * process), so memory use does not grow with the model. Each rank file is
 * written under a temporary name, fsynced and renamed by the GGUF writer; an
 * old manifest is removed first and the new one written after every rank
 * file, so an interrupted run leaves no directory that looks complete.
 */
#define _GNU_SOURCE
#include "shard_write.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "../runtime/model.h"
#include "manifest.h"
#include "shard.h"

#define CHUNK (4u << 20)

struct job {
    const struct shoal_gguf *g;
    const struct shoal_shard_params *p;
    uint64_t done, total;
    uint8_t *buf;
};

static void tick(void *user, uint64_t n) {
    struct job *j = user;
    j->done += n;
    if (j->p->progress) j->p->progress(j->p->user, j->done, j->total);
}

/* The source tensor a slice cuts, checked against the slice's shape and blocks. */
static shoal_status source_tensor(const struct shoal_gguf *g, const struct shoal_slice *s,
                                  const struct shoal_gguf_tensor **out) {
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, s->src);
    if (!t) return shoal_errorf(SHOAL_FORMAT, "%s: required tensor '%s' is missing", g->path, s->src);
    int nd = s->n_exp ? 3 : s->rows ? 2 : 1; /* experts: rows counts the n_exp matrices' */
    if (t->n_dims != nd || t->ne[0] != s->cols ||
        (s->rows && t->ne[1] * (s->n_exp ? t->ne[2] : 1) != s->rows) || (s->n_exp && t->ne[2] != s->n_exp))
        return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s' has shape [%" PRId64 ", %" PRId64
                            "], expected [%" PRId64 ", %" PRId64 "]",
                            g->path, s->src, t->ne[0], t->ne[1], s->cols, s->rows);
    const struct shoal_dtype_info *ti = shoal_dtype_info(t->type);
    if (s->c0 % ti->block || (s->c1 - s->c0) % ti->block)
        return shoal_errorf(SHOAL_INVALID, "%s: tensor '%s': columns %" PRId64 "-%" PRId64
                            " are off its %d-value %s blocks", g->path, s->src, s->c0, s->c1 - 1,
                            ti->block, ti->name);
    *out = t;
    return SHOAL_OK;
}

/* Copies a slice's bytes to the writer, hashing them. */
static shoal_status copy_slice(struct job *j, struct shoal_gguf_writer *w, const struct shoal_slice *s,
                               const struct shoal_gguf_tensor *t, uint64_t *sum) {
    const struct shoal_gguf *g = j->g;
    const int64_t rows = s->rows ? s->r1 - s->r0 : 1, r0 = s->rows ? s->r0 : 0;
    const size_t rb = shoal_dtype_row_bytes(t->type, s->cols);
    const size_t lb = shoal_dtype_row_bytes(t->type, s->c1 - s->c0);
    const size_t off = shoal_dtype_row_bytes(t->type, s->c0);
    const uint8_t *base = (const uint8_t *)t->data;
    XXH3_state_t *st = XXH3_createState();
    if (!st) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    XXH3_64bits_reset(st);
    shoal_status rc = SHOAL_OK;
    if (lb == rb) { /* whole rows: one contiguous range */
        uint64_t len = (uint64_t)rows * rb, start = (uint64_t)r0 * rb;
        for (uint64_t at = 0; at < len && rc == SHOAL_OK; at += CHUNK) {
            size_t n = len - at < CHUNK ? (size_t)(len - at) : CHUNK;
            rc = shoal_gguf_read(g, base + start + at, j->buf, n);
            if (rc == SHOAL_OK) rc = shoal_gguf_write_data(w, j->buf, n);
            if (rc == SHOAL_OK) {
                XXH3_64bits_update(st, j->buf, n);
                tick(j, n);
            }
        }
    } else { /* a column range of every row: gather rows into the buffer */
        int64_t per = (int64_t)(CHUNK / lb) > 0 ? (int64_t)(CHUNK / lb) : 1;
        for (int64_t r = 0; r < rows && rc == SHOAL_OK; r += per) {
            int64_t k = rows - r < per ? rows - r : per;
            for (int64_t i = 0; i < k && rc == SHOAL_OK; i++)
                rc = shoal_gguf_read(g, base + (size_t)(r0 + r + i) * rb + off, j->buf + (size_t)i * lb, lb);
            size_t n = (size_t)k * lb;
            if (rc == SHOAL_OK) rc = shoal_gguf_write_data(w, j->buf, n);
            if (rc == SHOAL_OK) {
                XXH3_64bits_update(st, j->buf, n);
                tick(j, n);
            }
        }
    }
    *sum = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    return rc;
}

/* What a rank file holds besides its slices: llama3's rope frequencies, whole. */
static const struct shoal_gguf_tensor *extra_tensor(const struct shoal_gguf *g) {
    return shoal_gguf_find_tensor(g, "rope_freqs.weight");
}

/* Fills f (already zeroed by the caller's INIT) from the finished file. */
static shoal_status describe_file(const char *path, const char *base, int rank,
                                  const uint64_t *sums, Shoal__RankFile *f) {
    struct shoal_gguf *out = NULL;
    SHOAL_TRY(shoal_gguf_open(&out, path));
    f->rank = (uint32_t)rank;
    f->file = strdup(base);
    f->size = out->size;
    f->n_tensors = (size_t)out->n_tensors;
    f->tensors = calloc(f->n_tensors, sizeof *f->tensors);
    shoal_status rc = f->file && f->tensors ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (size_t i = 0; rc == SHOAL_OK && i < f->n_tensors; i++) {
        const struct shoal_gguf_tensor *t = &out->tensors[i];
        Shoal__Tensor *mt = malloc(sizeof *mt);
        uint64_t *shape = malloc(sizeof(uint64_t) * (size_t)t->n_dims);
        char *name = strdup(t->name);
        if (!mt || !shape || !name) {
            free(mt), free(shape), free(name);
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            break;
        }
        shoal__tensor__init(mt);
        for (int d = 0; d < t->n_dims; d++) shape[d] = (uint64_t)t->ne[d];
        mt->name = name;
        mt->type = (uint32_t)t->type;
        mt->n_shape = (size_t)t->n_dims;
        mt->shape = shape;
        mt->offset = out->data_offset + t->offset;
        mt->size = t->nbytes;
        mt->checksum = sums[i];
        f->tensors[i] = mt;
    }
    shoal_gguf_close(out);
    return rc;
}

/* One rank's file: the source's metadata, the shard keys, its slices. */
static shoal_status write_rank(struct job *j, const struct shoal_plan *plan, int rank,
                               const struct shoal_hparams *hp, const char *dir, uint64_t digest,
                               Shoal__RankFile *f) {
    const struct shoal_gguf *g = j->g;
    struct shoal_slice *sl = NULL;
    int n = 0;
    SHOAL_TRY(shoal_model_slices(hp, &plan->part[rank], &sl, &n));
    const struct shoal_gguf_tensor **src = calloc((size_t)n + 1, sizeof *src);
    uint64_t *sums = calloc((size_t)n + 1, sizeof *sums);
    char base[64], path[4200];
    snprintf(base, sizeof base, "rank-%d.gguf", rank);
    snprintf(path, sizeof path, "%s/%s", dir, base);
    struct shoal_gguf_writer *w = NULL;
    shoal_status rc = src && sums ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int i = 0; rc == SHOAL_OK && i < n; i++) rc = source_tensor(g, &sl[i], &src[i]);
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_create(&w, path);
    for (int64_t i = 0; rc == SHOAL_OK && i < g->n_kv; i++) {
        const char *key = g->kv[i].key;
        if (strcmp(key, "general.alignment") == 0) continue; /* the writer aligns as it does */
        rc = shoal_gguf_copy_kv(w, &g->kv[i]);
    }
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, SHOAL_SHARD_KEY_RANK, (uint32_t)rank);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, SHOAL_SHARD_KEY_N_RANKS, (uint32_t)plan->n_ranks);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, SHOAL_SHARD_KEY_TP, (uint32_t)plan->tp);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, SHOAL_SHARD_KEY_PP, (uint32_t)plan->pp);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u32(w, SHOAL_SHARD_KEY_N_VOCAB, (uint32_t)hp->n_vocab);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_bool(w, SHOAL_SHARD_KEY_TIED, hp->tied_output);
    if (rc == SHOAL_OK) rc = shoal_gguf_set_u64(w, SHOAL_SHARD_KEY_SOURCE_DIGEST, digest);
    for (int i = 0; rc == SHOAL_OK && i < n; i++) {
        int64_t ne[2] = { sl[i].c1 - sl[i].c0, sl[i].r1 - sl[i].r0 };
        rc = shoal_gguf_add_tensor(w, sl[i].name, src[i]->type, sl[i].rows ? 2 : 1, ne);
    }
    const struct shoal_gguf_tensor *extra = extra_tensor(g);
    if (rc == SHOAL_OK && extra) rc = shoal_gguf_add_tensor(w, extra->name, extra->type, extra->n_dims, extra->ne);
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_begin_data(w);
    for (int i = 0; rc == SHOAL_OK && i < n; i++) rc = copy_slice(j, w, &sl[i], src[i], &sums[i]);
    if (rc == SHOAL_OK && extra) {
        struct shoal_slice whole = { .cols = extra->ne[0], .c1 = extra->ne[0] };
        rc = copy_slice(j, w, &whole, extra, &sums[n]);
    }
    if (rc == SHOAL_OK) rc = shoal_gguf_writer_finish(w);
    shoal_gguf_writer_destroy(w); /* without finish: removes the temporary file */
    /* the writer keeps the order tensors were added in: sums[i] is tensor i's */
    if (rc == SHOAL_OK) rc = describe_file(path, base, rank, sums, f);
    free(sl);
    free(src);
    free(sums);
    return rc;
}

/* --------------------------------------------------------------- manifest */

static char *dup_or_empty(const char *s) { return strdup(s ? s : ""); }

static shoal_status fill_manifest(Shoal__Manifest *m, const struct shoal_gguf *g,
                                  const struct shoal_hparams *hp, const struct shoal_plan *plan,
                                  const struct shoal_shard_params *p, uint64_t digest, int main_type) {
    static Shoal__Source src_init = SHOAL__SOURCE__INIT;
    static Shoal__Hparams hp_init = SHOAL__HPARAMS__INIT;
    static Shoal__Plan plan_init = SHOAL__PLAN__INIT;
    static Shoal__Offload off_init = SHOAL__OFFLOAD__INIT;
    m->magic = strdup(SHOAL_MANIFEST_MAGIC);
    m->version = SHOAL_MANIFEST_VERSION;
    m->created_by = strdup("shoal 0.1.0");
    m->checksum = strdup(SHOAL_CHECKSUM_NAME);
    m->source = malloc(sizeof *m->source);
    m->hparams = malloc(sizeof *m->hparams);
    m->plan = malloc(sizeof *m->plan);
    if (!m->magic || !m->created_by || !m->checksum || !m->source || !m->hparams || !m->plan)
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    *m->source = src_init;
    *m->hparams = hp_init;
    *m->plan = plan_init;
    const char *slash = strrchr(g->path, '/');
    m->source->file_name = strdup(slash ? slash + 1 : g->path);
    m->source->size = g->size;
    m->source->digest = digest;
    m->source->n_tensors = (uint32_t)g->n_tensors;

    Shoal__Hparams *h = m->hparams;
    h->arch = strdup(hp->arch);
    h->name = strdup(hp->name);
    h->n_layers = (uint32_t)hp->n_layers;
    h->dim = (uint32_t)hp->dim;
    h->n_heads = (uint32_t)hp->n_heads;
    h->n_kv_heads = (uint32_t)hp->n_kv_heads;
    h->head_dim = (uint32_t)hp->head_dim;
    h->ffn_dim = (uint32_t)hp->ffn_dim;
    h->n_expert = (uint32_t)hp->n_expert;
    h->n_vocab = (uint32_t)hp->n_vocab;
    h->n_ctx_train = (uint32_t)hp->n_ctx_train;
    h->rope_base = hp->rope.freq_base;
    h->rms_eps = hp->rms_eps;
    h->tied_output = hp->tied_output;
    h->main_type = strdup(shoal_dtype_name(main_type));
    const char *s = NULL;
    size_t len = 0;
    char tmp[128];
    tmp[0] = 0;
    if (shoal_gguf_get_str_opt(g, "tokenizer.ggml.model", &s, &len) == SHOAL_OK && s)
        snprintf(tmp, sizeof tmp, "%.*s", (int)(len < 127 ? len : 127), s);
    h->tokenizer = strdup(tmp);
    tmp[0] = 0;
    s = NULL;
    if (shoal_gguf_get_str_opt(g, "tokenizer.ggml.pre", &s, &len) == SHOAL_OK && s)
        snprintf(tmp, sizeof tmp, "%.*s", (int)(len < 127 ? len : 127), s);
    h->tokenizer_pre = strdup(tmp);

    Shoal__Plan *pl = m->plan;
    pl->tp = (uint32_t)plan->tp;
    pl->pp = (uint32_t)plan->pp;
    pl->ep = plan->ep;
    pl->comm_dtype = dup_or_empty(p->comm_dtype);
    if ((pl->offload = malloc(sizeof *pl->offload))) *pl->offload = off_init;
    if (p->tp_weights && (pl->tp_weights = malloc(sizeof(double) * (size_t)plan->tp))) {
        pl->n_tp_weights = (size_t)plan->tp;
        memcpy(pl->tp_weights, p->tp_weights, sizeof(double) * (size_t)plan->tp);
    }
    if (p->pp_weights && (pl->pp_weights = malloc(sizeof(double) * (size_t)plan->pp))) {
        pl->n_pp_weights = (size_t)plan->pp;
        memcpy(pl->pp_weights, p->pp_weights, sizeof(double) * (size_t)plan->pp);
    }
    pl->parts = calloc((size_t)plan->n_ranks, sizeof *pl->parts);
    if (!h->arch || !h->name || !h->main_type || !h->tokenizer || !h->tokenizer_pre ||
        !m->source->file_name || !pl->comm_dtype || !pl->offload || !pl->parts)
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    pl->n_parts = (size_t)plan->n_ranks;
    for (int r = 0; r < plan->n_ranks; r++) {
        const struct shoal_rank_part *q = &plan->part[r];
        Shoal__RankPart *rp = malloc(sizeof *rp);
        if (!rp) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        shoal__rank_part__init(rp);
        rp->rank = (uint32_t)q->rank;
        rp->stage = (uint32_t)q->stage;
        rp->tp_rank = (uint32_t)q->tp_rank;
        rp->layer0 = (uint32_t)q->layer0;
        rp->layer1 = (uint32_t)q->layer1;
        rp->q0 = (uint32_t)q->q0;
        rp->q1 = (uint32_t)q->q1;
        rp->kv0 = (uint32_t)q->kv0;
        rp->kv1 = (uint32_t)q->kv1;
        rp->ff0 = (uint32_t)q->ff0;
        rp->ff1 = (uint32_t)q->ff1;
        rp->v0 = (uint32_t)q->v0;
        rp->v1 = (uint32_t)q->v1;
        rp->x0 = (uint32_t)q->x0;
        rp->x1 = (uint32_t)q->x1;
        pl->parts[r] = rp;
    }
    return SHOAL_OK;
}

/* Frees what fill_manifest and write_rank allocated (protobuf-c's own free
 * is for unpacked messages only). */
static void free_manifest(Shoal__Manifest *m) {
    free(m->magic), free(m->created_by), free(m->checksum);
    if (m->source) free(m->source->file_name);
    free(m->source);
    if (m->hparams) {
        Shoal__Hparams *h = m->hparams;
        free(h->arch), free(h->name), free(h->main_type), free(h->tokenizer), free(h->tokenizer_pre);
    }
    free(m->hparams);
    if (m->plan) {
        Shoal__Plan *pl = m->plan;
        for (size_t r = 0; pl->parts && r < pl->n_parts; r++) free(pl->parts[r]);
        free(pl->parts), free(pl->comm_dtype), free(pl->offload), free(pl->tp_weights), free(pl->pp_weights);
    }
    free(m->plan);
    for (size_t r = 0; m->ranks && r < m->n_ranks; r++) {
        Shoal__RankFile *f = m->ranks[r];
        if (!f) continue;
        for (size_t i = 0; f->tensors && i < f->n_tensors; i++) {
            if (!f->tensors[i]) continue;
            free(f->tensors[i]->name);
            free(f->tensors[i]->shape);
            free(f->tensors[i]);
        }
        free(f->tensors);
        free(f->file);
        free(f);
    }
    free(m->ranks);
}

/* ------------------------------------------------------------------ entry */

shoal_status shoal_shard_write(const struct shoal_gguf *g, const struct shoal_plan *plan,
                               const char *dir, const struct shoal_shard_params *p) {
    struct shoal_hparams hp;
    SHOAL_TRY(shoal_hparams_read(&hp, g));
    if (hp.sharded)
        return shoal_errorf(SHOAL_INVALID, "%s is already one rank's shard: shard the original "
                            "GGUF instead", g->path);
    if (mkdir(dir, 0755) != 0 && errno != EEXIST)
        return shoal_errorf(SHOAL_IO, "%s: cannot create the directory: %s", dir, strerror(errno));
    struct stat st;
    if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode))
        return shoal_errorf(SHOAL_IO, "%s: not a directory", dir);
    char mpath[4200];
    snprintf(mpath, sizeof mpath, "%s/%s", dir, SHOAL_MANIFEST_NAME);
    if (unlink(mpath) != 0 && errno != ENOENT) /* no old manifest may describe half-new files */
        return shoal_errorf(SHOAL_IO, "%s: cannot remove the old manifest: %s", mpath, strerror(errno));

    struct job j = { .g = g, .p = p, .total = g->size };
    int main_type = 0; /* the type holding most of the layers' weights */
    uint64_t type_params[SHOAL_DTYPE_MAX] = { 0 };
    for (int r = 0; r < plan->n_ranks; r++) {
        struct shoal_slice *sl = NULL;
        int n = 0;
        SHOAL_TRY(shoal_model_slices(&hp, &plan->part[r], &sl, &n));
        for (int i = 0; i < n; i++) {
            const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, sl[i].src);
            if (!t) continue; /* reported when the rank is written */
            int64_t rows = sl[i].rows ? sl[i].r1 - sl[i].r0 : 1;
            j.total += (uint64_t)rows * shoal_dtype_row_bytes(t->type, sl[i].c1 - sl[i].c0);
            if (sl[i].rows && strncmp(sl[i].name, "blk.", 4) == 0 && t->type >= 0 && t->type < SHOAL_DTYPE_MAX) {
                type_params[t->type] += (uint64_t)rows * (uint64_t)(sl[i].c1 - sl[i].c0);
                if (type_params[t->type] > type_params[main_type]) main_type = t->type;
            }
        }
        free(sl);
    }
    if (!(j.buf = malloc(CHUNK))) return shoal_errorf(SHOAL_NOMEM, "out of memory");

    Shoal__Manifest m = SHOAL__MANIFEST__INIT;
    uint64_t digest = 0;
    shoal_status rc = shoal_file_checksum(g, 0, g->size, &digest, tick, &j);
    if (rc == SHOAL_OK) rc = fill_manifest(&m, g, &hp, plan, p, digest, main_type);
    if (rc == SHOAL_OK && !(m.ranks = calloc((size_t)plan->n_ranks, sizeof *m.ranks)))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
    for (int r = 0; rc == SHOAL_OK && r < plan->n_ranks; r++) {
        if (!(m.ranks[r] = malloc(sizeof *m.ranks[r]))) {
            rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
            break;
        }
        shoal__rank_file__init(m.ranks[r]);
        m.n_ranks = (size_t)r + 1;
        rc = write_rank(&j, plan, r, &hp, dir, digest, m.ranks[r]);
    }
    if (rc == SHOAL_OK) rc = shoal_manifest_write(&m, dir);
    free_manifest(&m);
    free(j.buf);
    return rc;
}
