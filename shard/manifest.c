/*
 * manifest.c — reading, checking and writing DIR/manifest.pb (manifest.h).
 */
#define _GNU_SOURCE
#include "manifest.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <xxhash.h>

#include "shard.h"

/* ------------------------------------------------------------------ read */

static shoal_status read_all(const char *path, uint8_t **buf, size_t *len) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return shoal_errorf(SHOAL_IO, "%s: cannot open: %s%s", path, strerror(errno),
                            errno == ENOENT ? " (is this a directory `shoal shard` wrote?)" : "");
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        close(fd);
        return shoal_errorf(SHOAL_IO, "%s: not a regular file", path);
    }
    if ((uint64_t)st.st_size > SHOAL_MANIFEST_MAX_BYTES) {
        close(fd);
        return shoal_errorf(SHOAL_FORMAT, "%s: %lld bytes is too large for a shard manifest", path,
                            (long long)st.st_size);
    }
    *len = (size_t)st.st_size;
    *buf = malloc(*len ? *len : 1);
    if (!*buf) {
        close(fd);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    size_t got = 0;
    while (got < *len) {
        ssize_t n = read(fd, *buf + got, *len - got);
        if (n <= 0) {
            if (n < 0 && errno == EINTR) continue;
            close(fd);
            free(*buf);
            return shoal_errorf(SHOAL_IO, "%s: read failed", path);
        }
        got += (size_t)n;
    }
    close(fd);
    return SHOAL_OK;
}

/*
 * The parts tile the model exactly: the stages' layers follow one another
 * from 0 to the last; within a stage every rank has the stage's layers, the
 * query heads follow one another to the last (KV heads as they go with
 * them), the FFN units too (each rank all of them under ep) and the experts
 * under ep (else each rank all of them), and on the last stage the
 * vocabulary rows. Parts checked one by one could overlap: two that both
 * claimed rows 0..300 made the logits' gather write past its buffer.
 */
static shoal_status check_tiling(const Shoal__Plan *p, const Shoal__Hparams *hp, const char *path) {
    if (hp->n_kv_heads < 1 || hp->n_heads % hp->n_kv_heads)
        return shoal_errorf(SHOAL_FORMAT, "%s: %u query heads do not group over %u KV heads", path, hp->n_heads,
                            hp->n_kv_heads);
    const uint32_t g = hp->n_heads / hp->n_kv_heads;
    uint32_t layer = 0;
    for (uint32_t s = 0; s < p->pp; s++) {
        const Shoal__RankPart *a = p->parts[(size_t)s * p->tp];
        const int last = s == p->pp - 1;
        uint32_t q = 0, ff = 0, x = 0, v = 0;
        const char *bad = NULL;
        if (a->layer0 != layer) bad = "layers";
        for (uint32_t t = 0; !bad && t < p->tp; t++) {
            const Shoal__RankPart *r = p->parts[(size_t)s * p->tp + t];
            if (r->layer0 != a->layer0 || r->layer1 != a->layer1) bad = "layers";
            else if (r->q0 != q || r->kv0 != r->q0 / g || r->kv1 != (r->q1 + g - 1) / g) bad = "heads";
            else if (p->ep ? r->ff0 != 0 || r->ff1 != hp->ffn_dim || r->x0 != x
                           : r->ff0 != ff || r->x0 != 0 || r->x1 != hp->n_expert) bad = "FFN units or experts";
            else if (last ? r->v0 != v : r->v0 || r->v1) bad = "vocabulary rows";
            q = r->q1;
            ff = r->ff1;
            x = r->x1;
            v = r->v1;
        }
        if (!bad && (q != hp->n_heads || (!p->ep && ff != hp->ffn_dim) || (p->ep && x != hp->n_expert) ||
                     (last && v != hp->n_vocab)))
            bad = q != hp->n_heads ? "heads" : last && v != hp->n_vocab ? "vocabulary rows" : "FFN units or experts";
        if (bad)
            return shoal_errorf(SHOAL_FORMAT, "%s: stage %u's parts do not cover the model's %s exactly once "
                                "(overlapping, or with a gap): the shards are damaged or mixed up; run shoal "
                                "shard again", path, s, bad);
        layer = a->layer1;
    }
    if (layer != hp->n_layers)
        return shoal_errorf(SHOAL_FORMAT, "%s: the stages cover layers 0-%u of %u: the shards are damaged or "
                            "mixed up; run shoal shard again", path, layer ? layer - 1 : 0, hp->n_layers);
    return SHOAL_OK;
}

/* Every part in rank order, within the model and tiling it; a file per rank. */
static shoal_status check_plan(const Shoal__Manifest *m, const char *path) {
    const Shoal__Plan *p = m->plan;
    const Shoal__Hparams *hp = m->hparams;
    if (!p || !hp || !m->source)
        return shoal_errorf(SHOAL_FORMAT, "%s: the manifest has no %s", path,
                            !p ? "plan" : !hp ? "hyperparameters" : "source");
    uint64_t n = (uint64_t)p->tp * p->pp;
    if (p->tp < 1 || p->pp < 1 || n > 65536 || p->n_parts != n || m->n_ranks != n)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: the plan (tp %u x pp %u) does not match its %zu parts and %zu rank "
                            "files", path, p->tp, p->pp, p->n_parts, m->n_ranks);
    for (size_t r = 0; r < n; r++) {
        const Shoal__RankPart *q = p->parts[r];
        const Shoal__RankFile *f = m->ranks[r];
        if (!q || !f || q->rank != r || f->rank != r || q->stage != r / p->tp || q->tp_rank != r % p->tp ||
            q->layer0 >= q->layer1 || q->layer1 > hp->n_layers || q->q0 >= q->q1 ||
            q->q1 > hp->n_heads || q->kv0 >= q->kv1 || q->kv1 > hp->n_kv_heads ||
            q->ff0 >= q->ff1 || q->ff1 > hp->ffn_dim || q->v1 > hp->n_vocab || q->v0 > q->v1 ||
            q->x1 > hp->n_expert || (hp->n_expert > 0) != (q->x0 < q->x1))
            return shoal_errorf(SHOAL_FORMAT, "%s: rank %zu's part of the plan is not a part of "
                                "this model", path, r);
        if (!f->file || !f->file[0] || strchr(f->file, '/') || strcmp(f->file, "..") == 0)
            return shoal_errorf(SHOAL_FORMAT, "%s: rank %zu's file name is missing or not a plain "
                                "name", path, r);
    }
    return check_tiling(p, hp, path);
}

shoal_status shoal_manifest_read(Shoal__Manifest **out, const char *dir) {
    *out = NULL;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, SHOAL_MANIFEST_NAME);
    uint8_t *buf = NULL;
    size_t len = 0;
    SHOAL_TRY(read_all(path, &buf, &len));
    Shoal__Manifest *m = shoal__manifest__unpack(NULL, len, buf);
    free(buf);
    if (!m || !m->magic || strcmp(m->magic, SHOAL_MANIFEST_MAGIC) != 0) {
        if (m) shoal__manifest__free_unpacked(m, NULL);
        return shoal_errorf(SHOAL_FORMAT, "%s: not a shoal shard manifest (write one with "
                            "shoal shard)", path);
    }
    if (m->version > SHOAL_MANIFEST_VERSION || m->version == 0) {
        shoal_status rc = shoal_errorf(SHOAL_UNSUPPORTED,
                                       "%s: manifest version %u (written by %s); this shoal reads "
                                       "version %u only: use a newer shoal, or shard again with "
                                       "this one", path, m->version,
                                       m->created_by && m->created_by[0] ? m->created_by : "?",
                                       SHOAL_MANIFEST_VERSION);
        shoal__manifest__free_unpacked(m, NULL);
        return rc;
    }
    shoal_status rc = SHOAL_OK;
    if (!m->checksum || strcmp(m->checksum, SHOAL_CHECKSUM_NAME) != 0)
        rc = shoal_errorf(SHOAL_UNSUPPORTED, "%s: checksums of kind '%s'; this shoal knows %s",
                          path, m->checksum ? m->checksum : "", SHOAL_CHECKSUM_NAME);
    if (rc == SHOAL_OK) rc = check_plan(m, path);
    if (rc != SHOAL_OK) {
        shoal__manifest__free_unpacked(m, NULL);
        return rc;
    }
    *out = m;
    return SHOAL_OK;
}

void shoal_manifest_free(Shoal__Manifest *m) {
    if (m) shoal__manifest__free_unpacked(m, NULL);
}

shoal_status shoal_manifest_plan(const Shoal__Manifest *m, struct shoal_plan **out) {
    *out = NULL;
    const Shoal__Plan *p = m->plan;
    struct shoal_plan *plan = calloc(1, sizeof *plan);
    if (!plan || !(plan->part = calloc(p->n_parts, sizeof *plan->part))) {
        free(plan);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    plan->tp = (int)p->tp;
    plan->pp = (int)p->pp;
    plan->ep = p->ep;
    plan->n_ranks = (int)p->n_parts;
    for (size_t r = 0; r < p->n_parts; r++) {
        const Shoal__RankPart *q = p->parts[r];
        plan->part[r] = (struct shoal_rank_part){
            .rank = (int)q->rank, .stage = (int)q->stage, .tp_rank = (int)q->tp_rank,
            .layer0 = (int)q->layer0, .layer1 = (int)q->layer1, .q0 = (int)q->q0, .q1 = (int)q->q1,
            .kv0 = (int)q->kv0, .kv1 = (int)q->kv1, .ff0 = (int)q->ff0, .ff1 = (int)q->ff1,
            .v0 = (int)q->v0, .v1 = (int)q->v1, .first = q->stage == 0, .last = q->stage == p->pp - 1,
            .x0 = (int)q->x0, .x1 = (int)q->x1,
        };
    }
    *out = plan;
    return SHOAL_OK;
}

/* ----------------------------------------------------------------- write */

shoal_status shoal_manifest_write(const Shoal__Manifest *m, const char *dir) {
    char path[4096], tmp[4200];
    snprintf(path, sizeof path, "%s/%s", dir, SHOAL_MANIFEST_NAME);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    size_t len = shoal__manifest__get_packed_size(m);
    uint8_t *buf = malloc(len ? len : 1);
    if (!buf) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    shoal__manifest__pack(m, buf);
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (fd < 0) {
        free(buf);
        return shoal_errorf(SHOAL_IO, "%s: cannot create: %s", tmp, strerror(errno));
    }
    size_t put = 0;
    while (put < len) {
        ssize_t n = write(fd, buf + put, len - put);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        put += (size_t)n;
    }
    free(buf);
    int ok = put == len && fsync(fd) == 0;
    ok = close(fd) == 0 && ok;
    if (!ok || rename(tmp, path) != 0) {
        shoal_status rc = shoal_errorf(SHOAL_IO, "%s: write failed: %s", path, strerror(errno));
        unlink(tmp);
        return rc;
    }
    return SHOAL_OK;
}

/* ------------------------------------------------------------- checksums */

shoal_status shoal_file_checksum(const struct shoal_gguf *g, uint64_t offset, uint64_t len,
                                 uint64_t *out, void (*tick)(void *user, uint64_t n), void *user) {
    if (offset > g->size || len > g->size - offset)
        return shoal_errorf(SHOAL_FORMAT, "%s: bytes %llu..%llu are past its end", g->path,
                            (unsigned long long)offset, (unsigned long long)(offset + len));
    XXH3_state_t *st = XXH3_createState();
    const size_t chunk = 4u << 20;
    uint8_t *buf = malloc(chunk);
    if (!st || !buf) {
        XXH3_freeState(st);
        free(buf);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    XXH3_64bits_reset(st);
    shoal_status rc = SHOAL_OK;
    for (uint64_t at = 0; at < len && rc == SHOAL_OK;) {
        size_t n = len - at < chunk ? (size_t)(len - at) : chunk;
        rc = shoal_gguf_read(g, g->map + offset + at, buf, n);
        if (rc == SHOAL_OK) {
            XXH3_64bits_update(st, buf, n);
            at += n;
            if (tick) tick(user, n);
        }
    }
    *out = XXH3_64bits_digest(st);
    XXH3_freeState(st);
    free(buf);
    return rc;
}

/* ------------------------------------------------------------ rank files */

static const struct shoal_gguf_tensor *find_tensor(const struct shoal_gguf *g, const char *name) {
    return shoal_gguf_find_tensor(g, name);
}

uint64_t shoal_manifest_rank_bytes(const Shoal__Manifest *m, int rank) {
    uint64_t total = 0;
    const Shoal__RankFile *f = m->ranks[rank];
    for (size_t i = 0; i < f->n_tensors; i++) total += f->tensors[i]->size;
    return total;
}

shoal_status shoal_manifest_check_rank(const Shoal__Manifest *m, int rank,
                                       const struct shoal_gguf *g, int verify,
                                       void (*tick)(void *user, uint64_t n), void *user) {
    const Shoal__RankFile *f = m->ranks[rank];
    const char *how = "the shards are damaged or mixed up: run shoal shard again";
    uint32_t r = UINT32_MAX, n = 0;
    uint64_t digest = 0;
    SHOAL_TRY(shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_RANK, &r));
    SHOAL_TRY(shoal_gguf_get_u32_opt(g, SHOAL_SHARD_KEY_N_RANKS, &n));
    int64_t k = shoal_gguf_find_key(g, SHOAL_SHARD_KEY_SOURCE_DIGEST);
    if (k >= 0 && g->kv[k].type == SHOAL_GGUF_UINT64) digest = g->kv[k].num.u;
    else k = -1;
    if (r == UINT32_MAX)
        return shoal_errorf(SHOAL_FORMAT, "%s is not a shard (no %s key); %s",
                            g->path, SHOAL_SHARD_KEY_RANK, how);
    if (r != (uint32_t)rank || n != m->n_ranks)
        return shoal_errorf(SHOAL_FORMAT, "%s holds rank %u's part of %u, not rank %d's "
                            "of %zu; %s", g->path, r, n, rank, m->n_ranks, how);
    if (k < 0 || digest != m->source->digest)
        return shoal_errorf(SHOAL_FORMAT, "%s was cut from another model than the "
                            "manifest's %s (digest %016llx, manifest %016llx); %s", g->path,
                            m->source->file_name, (unsigned long long)digest,
                            (unsigned long long)m->source->digest, how);
    if (f->size != g->size)
        return shoal_errorf(SHOAL_FORMAT, "%s is %llu bytes, the manifest says %llu; %s",
                            g->path, (unsigned long long)g->size,
                            (unsigned long long)f->size, how);
    for (size_t i = 0; i < f->n_tensors; i++) {
        const Shoal__Tensor *mt = f->tensors[i];
        const struct shoal_gguf_tensor *t = mt->name ? find_tensor(g, mt->name) : NULL;
        if (!t)
            return shoal_errorf(SHOAL_FORMAT, "%s has no tensor '%s'; %s", g->path,
                                mt->name ? mt->name : "?", how);
        int same = (uint32_t)t->type == mt->type && mt->n_shape == (size_t)t->n_dims &&
                   g->data_offset + t->offset == mt->offset && t->nbytes == mt->size;
        for (size_t d = 0; same && d < mt->n_shape; d++) same = (uint64_t)t->ne[d] == mt->shape[d];
        if (!same)
            return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s' differs from the manifest "
                                "(type, shape, offset or size); %s", g->path, mt->name, how);
        if (!verify) continue;
        uint64_t sum = 0;
        SHOAL_TRY(shoal_file_checksum(g, mt->offset, mt->size, &sum, tick, user));
        if (sum != mt->checksum)
            return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s' fails its checksum "
                                "(%016llx, the manifest says %016llx): the file is damaged; %s",
                                g->path, mt->name, (unsigned long long)sum,
                                (unsigned long long)mt->checksum, how);
    }
    return SHOAL_OK;
}
