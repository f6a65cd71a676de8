/*
 * gguf.c — GGUF v2/v3 reader and v3 writer (see gguf.h).
 *
 * The reader walks the header twice: a first pass checks every length against
 * the end of the file and counts what must be allocated; the second fills the
 * tables. Nothing is read before its bounds have been checked, and every
 * multiplication of sizes read from the file is checked for overflow.
 */
#define _GNU_SOURCE
#include "gguf.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define MAX_ARRAY_DEPTH 4

static const char *const type_names[SHOAL_GGUF_TYPE_COUNT] = {
    "u8", "i8", "u16", "i16", "u32", "i32", "f32", "bool", "string", "array", "u64", "i64", "f64",
};
static const uint8_t type_sizes[SHOAL_GGUF_TYPE_COUNT] = { 1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8 };

const char *shoal_gguf_type_name(enum shoal_gguf_type t) {
    return (unsigned)t < SHOAL_GGUF_TYPE_COUNT ? type_names[t] : "invalid";
}

/* ------------------------------------------------------------- the cursor */

struct cursor {
    const uint8_t *base;
    uint64_t pos, end;
    const char *path;
    const char *what; /* what is being read, for messages */
};

static shoal_status need(struct cursor *c, uint64_t n) {
    if (n > c->end - c->pos)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: truncated or corrupt: %s needs %" PRIu64 " bytes at offset %" PRIu64
                            " but the file has %" PRIu64 " bytes",
                            c->path, c->what, n, c->pos, c->end);
    return SHOAL_OK;
}

static shoal_status rd(struct cursor *c, void *dst, uint64_t n) {
    SHOAL_TRY(need(c, n));
    memcpy(dst, c->base + c->pos, n);
    c->pos += n;
    return SHOAL_OK;
}

static shoal_status rd_u32(struct cursor *c, uint32_t *v) { return rd(c, v, 4); }
static shoal_status rd_u64(struct cursor *c, uint64_t *v) { return rd(c, v, 8); }

/* A GGUF string: u64 length, bytes. Returns a pointer into the map. */
static shoal_status rd_str(struct cursor *c, const char **s, uint64_t *len) {
    SHOAL_TRY(rd_u64(c, len));
    SHOAL_TRY(need(c, *len));
    *s = (const char *)c->base + c->pos;
    c->pos += *len;
    return SHOAL_OK;
}

/*
 * Skips (and bounds-checks) a value of type t. For arrays, *n_strings
 * accumulates how many string elements were seen (their offsets get a table).
 */
static shoal_status skip_value(struct cursor *c, uint32_t t, int depth, uint64_t *n_strings) {
    if (t >= SHOAL_GGUF_TYPE_COUNT)
        return shoal_errorf(SHOAL_FORMAT, "%s: %s has invalid value type %u", c->path, c->what, t);
    if (t == SHOAL_GGUF_STRING) {
        const char *s;
        uint64_t len;
        return rd_str(c, &s, &len);
    }
    if (t != SHOAL_GGUF_ARRAY) {
        SHOAL_TRY(need(c, type_sizes[t]));
        c->pos += type_sizes[t];
        return SHOAL_OK;
    }
    if (depth >= MAX_ARRAY_DEPTH)
        return shoal_errorf(SHOAL_FORMAT, "%s: %s nests arrays deeper than %d", c->path, c->what,
                            MAX_ARRAY_DEPTH);
    uint32_t et;
    uint64_t n;
    SHOAL_TRY(rd_u32(c, &et));
    SHOAL_TRY(rd_u64(c, &n));
    if (et >= SHOAL_GGUF_TYPE_COUNT)
        return shoal_errorf(SHOAL_FORMAT, "%s: %s is an array of invalid type %u", c->path, c->what,
                            et);
    if (et == SHOAL_GGUF_STRING || et == SHOAL_GGUF_ARRAY) {
        /* each element takes at least 8 bytes: refuse counts the file cannot hold */
        if (n > (c->end - c->pos) / 8)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: %s claims %" PRIu64 " elements, more than the file can hold",
                                c->path, c->what, n);
        if (et == SHOAL_GGUF_STRING && depth == 0) *n_strings += n;
        for (uint64_t i = 0; i < n; i++) SHOAL_TRY(skip_value(c, et, depth + 1, n_strings));
        return SHOAL_OK;
    }
    uint64_t bytes;
    if (!shoal_mul_ok(n, type_sizes[et], &bytes))
        return shoal_errorf(SHOAL_FORMAT, "%s: %s: array length %" PRIu64 " overflows", c->path,
                            c->what, n);
    SHOAL_TRY(need(c, bytes));
    c->pos += bytes;
    return SHOAL_OK;
}

/* --------------------------------------------------------------- reading */

static uint64_t read_scalar_u(const uint8_t *p, enum shoal_gguf_type t) {
    uint8_t u8; uint16_t u16; uint32_t u32; uint64_t u64;
    switch (t) {
    case SHOAL_GGUF_UINT8: case SHOAL_GGUF_BOOL: memcpy(&u8, p, 1); return u8;
    case SHOAL_GGUF_UINT16: memcpy(&u16, p, 2); return u16;
    case SHOAL_GGUF_UINT32: memcpy(&u32, p, 4); return u32;
    default: memcpy(&u64, p, 8); return u64;
    }
}

static int64_t read_scalar_i(const uint8_t *p, enum shoal_gguf_type t) {
    int8_t i8; int16_t i16; int32_t i32; int64_t i64;
    switch (t) {
    case SHOAL_GGUF_INT8: memcpy(&i8, p, 1); return i8;
    case SHOAL_GGUF_INT16: memcpy(&i16, p, 2); return i16;
    case SHOAL_GGUF_INT32: memcpy(&i32, p, 4); return i32;
    default: memcpy(&i64, p, 8); return i64;
    }
}

static int is_unsigned(enum shoal_gguf_type t) {
    return t == SHOAL_GGUF_UINT8 || t == SHOAL_GGUF_UINT16 || t == SHOAL_GGUF_UINT32 ||
           t == SHOAL_GGUF_UINT64 || t == SHOAL_GGUF_BOOL;
}
static int is_signed(enum shoal_gguf_type t) {
    return t == SHOAL_GGUF_INT8 || t == SHOAL_GGUF_INT16 || t == SHOAL_GGUF_INT32 ||
           t == SHOAL_GGUF_INT64;
}

static void fill_scalar(struct shoal_gguf_kv *kv) {
    const uint8_t *p = kv->data;
    if (is_unsigned(kv->type)) {
        kv->num.u = read_scalar_u(p, kv->type);
    } else if (is_signed(kv->type)) {
        kv->num.i = read_scalar_i(p, kv->type);
    } else if (kv->type == SHOAL_GGUF_FLOAT32) {
        float f;
        memcpy(&f, p, 4);
        kv->num.f = f;
    } else if (kv->type == SHOAL_GGUF_FLOAT64) {
        memcpy(&kv->num.f, p, 8);
    }
}

/* Copies a GGUF string to a NUL-terminated one in the arena, which has *left bytes (NULL when
 * they do not hold it: the file changed since the first pass sized the arena). */
static char *arena_str(char **arena, uint64_t *left, const char *s, uint64_t len) {
    if (len >= *left) return NULL;
    char *d = *arena;
    memcpy(d, s, len);
    d[len] = 0;
    *arena += len + 1;
    *left -= len + 1;
    return d;
}

/*
 * Name indexes: open addressing over a power-of-two table of 1 + the index
 * of a name (0: empty), hashed with a seed of this process's (shoal_hash_str:
 * a file cannot choose its names to collide), so that duplicate checks and
 * lookups cost a name each, not the number of names (40,000 keys took 12 s
 * pairwise).
 */
/* The slot of name in the index: its entry's, or the free one where it would go. */
static uint64_t index_slot(const int64_t *slots, uint64_t cap, const char *name,
                           const char *(*name_of)(const void *, int64_t), const void *tab) {
    uint64_t h = shoal_hash_str(name) & (cap - 1);
    while (slots[h] && strcmp(name_of(tab, slots[h] - 1), name) != 0) h = (h + 1) & (cap - 1);
    return h;
}

/* Adds name (number i) to the index; the number of an equal name already there, or -1. */
static int64_t index_add(int64_t *slots, uint64_t cap, const char *name, int64_t i,
                         const char *(*name_of)(const void *, int64_t), const void *tab) {
    const uint64_t h = index_slot(slots, cap, name, name_of, tab);
    if (slots[h]) return slots[h] - 1;
    slots[h] = i + 1;
    return -1;
}

static int64_t index_find(const int64_t *slots, uint64_t cap, const char *name,
                          const char *(*name_of)(const void *, int64_t), const void *tab) {
    return slots ? slots[index_slot(slots, cap, name, name_of, tab)] - 1 : -1;
}

static const char *key_of(const void *tab, int64_t i) { return ((const struct shoal_gguf_kv *)tab)[i].key; }
static const char *tensor_name_of(const void *tab, int64_t i) { return ((const struct shoal_gguf_tensor *)tab)[i].name; }

static shoal_status parse(struct shoal_gguf *g) {
    struct cursor c = { g->map, 0, g->size, g->path, "the header" };
    uint32_t magic, version;
    SHOAL_TRY(rd_u32(&c, &magic));
    if (magic != SHOAL_GGUF_MAGIC)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: not a GGUF file (the first four bytes are %02x %02x %02x %02x, "
                            "expected \"GGUF\")",
                            g->path, g->map[0], g->map[1], g->map[2], g->map[3]);
    SHOAL_TRY(rd_u32(&c, &version));
    if (version == 0x02000000u || version == 0x03000000u)
        return shoal_errorf(SHOAL_UNSUPPORTED, "%s: big-endian GGUF is not supported", g->path);
    if (version != 2 && version != 3)
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "%s: GGUF version %u is not supported (shoal reads versions 2 and 3; "
                            "convert the file with a current llama.cpp)",
                            g->path, version);
    g->version = (int)version;
    uint64_t n_tensors, n_kv;
    SHOAL_TRY(rd_u64(&c, &n_tensors));
    SHOAL_TRY(rd_u64(&c, &n_kv));
    /* A kv takes at least 8+4+1 bytes and a tensor info at least 8+4+8+4+8. */
    if (n_kv > g->size / 13 || n_tensors > g->size / 32)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: header claims %" PRIu64 " metadata entries and %" PRIu64
                            " tensors, more than a %" PRIu64 "-byte file can hold",
                            g->path, n_kv, n_tensors, g->size);

    /* Pass 1: bounds and sizes. */
    uint64_t names_bytes = 0, n_strings = 0;
    uint64_t kv_start = c.pos;
    char what[160];
    for (uint64_t i = 0; i < n_kv; i++) {
        const char *key;
        uint64_t len;
        snprintf(what, sizeof what, "the key of metadata entry %" PRIu64, i);
        c.what = what;
        SHOAL_TRY(rd_str(&c, &key, &len));
        names_bytes += len + 1;
        snprintf(what, sizeof what, "metadata '%.*s'", (int)(len > 100 ? 100 : len), key);
        uint32_t t;
        SHOAL_TRY(rd_u32(&c, &t));
        SHOAL_TRY(skip_value(&c, t, 0, &n_strings));
    }
    uint64_t ti_start = c.pos;
    for (uint64_t i = 0; i < n_tensors; i++) {
        const char *name;
        uint64_t len;
        snprintf(what, sizeof what, "the name of tensor %" PRIu64, i);
        c.what = what;
        SHOAL_TRY(rd_str(&c, &name, &len));
        names_bytes += len + 1;
        snprintf(what, sizeof what, "tensor '%.*s'", (int)(len > 100 ? 100 : len), name);
        uint32_t nd;
        SHOAL_TRY(rd_u32(&c, &nd));
        if (nd > SHOAL_GGUF_MAX_DIMS)
            return shoal_errorf(SHOAL_FORMAT, "%s: %s has %u dimensions (at most %d allowed)",
                                g->path, what, nd, SHOAL_GGUF_MAX_DIMS);
        SHOAL_TRY(need(&c, 8ull * nd + 4 + 8));
        c.pos += 8ull * nd + 4 + 8;
    }
    uint64_t header_end = c.pos;

    g->arena = calloc(1, names_bytes + n_strings * sizeof(uint64_t) + 16);
    g->kv = calloc(n_kv ? n_kv : 1, sizeof *g->kv);
    g->tensors = calloc(n_tensors ? n_tensors : 1, sizeof *g->tensors);
    g->kv_cap = shoal_hash_cap(n_kv);
    g->tensor_cap = shoal_hash_cap(n_tensors);
    g->kv_index = calloc(g->kv_cap, sizeof *g->kv_index);
    g->tensor_index = calloc(g->tensor_cap, sizeof *g->tensor_index);
    if (!g->arena || !g->kv || !g->tensors || !g->kv_index || !g->tensor_index)
        return shoal_errorf(SHOAL_NOMEM, "%s: out of memory for the header tables", g->path);
    uint64_t *offs = g->arena, strings_left = n_strings, names_left = names_bytes + 1;
    char *names = (char *)(offs + n_strings);
    /* the second pass reads what the first checked: the same, unless the file changed meanwhile */
#define CHANGED() shoal_errorf(SHOAL_FORMAT, "%s: the file changed while it was read", g->path)

    /* Pass 2: fill the tables (bounds already checked). */
    c.pos = kv_start;
    g->alignment = SHOAL_GGUF_DEFAULT_ALIGNMENT;
    for (uint64_t i = 0; i < n_kv; i++) {
        struct shoal_gguf_kv *kv = &g->kv[i];
        const char *key;
        uint64_t len;
        uint32_t t;
        if (rd_str(&c, &key, &len) != SHOAL_OK || !(kv->key = arena_str(&names, &names_left, key, len)))
            return CHANGED();
        if (index_add(g->kv_index, g->kv_cap, kv->key, (int64_t)i, key_of, g->kv) >= 0)
            return shoal_errorf(SHOAL_FORMAT, "%s: metadata key '%s' appears twice", g->path, kv->key);
        if (rd_u32(&c, &t) != SHOAL_OK) return CHANGED();
        kv->type = t;
        kv->n = 1;
        if (t == SHOAL_GGUF_ARRAY) {
            uint32_t et;
            if (rd_u32(&c, &et) != SHOAL_OK || rd_u64(&c, &kv->n) != SHOAL_OK) return CHANGED();
            kv->arr_type = et;
            kv->data = c.base + c.pos;
            if (et == SHOAL_GGUF_STRING) {
                kv->str_off = offs;
                if (kv->n > strings_left) return CHANGED();
                strings_left -= kv->n;
                for (uint64_t j = 0; j < kv->n; j++) {
                    *offs++ = c.pos - (uint64_t)(kv->data - c.base);
                    const char *s;
                    uint64_t sl;
                    if (rd_str(&c, &s, &sl) != SHOAL_OK) return CHANGED();
                }
            } else {
                uint64_t none = 0;
                c.pos = (uint64_t)(kv->data - c.base) - 12; /* back to the array header */
                if (skip_value(&c, SHOAL_GGUF_ARRAY, 0, &none) != SHOAL_OK || none) return CHANGED();
            }
        } else {
            kv->data = c.base + c.pos;
            uint64_t none = 0;
            if (skip_value(&c, t, 0, &none) != SHOAL_OK || none) return CHANGED();
            fill_scalar(kv);
        }
        if (strcmp(kv->key, "general.alignment") == 0) {
            if (kv->type != SHOAL_GGUF_UINT32 || kv->num.u == 0 || (kv->num.u & (kv->num.u - 1)))
                return shoal_errorf(SHOAL_FORMAT,
                                    "%s: general.alignment must be a u32 power of two", g->path);
            g->alignment = (uint32_t)kv->num.u;
        }
    }
    g->n_kv = (int64_t)n_kv;

    uint64_t data_offset = (header_end + g->alignment - 1) / g->alignment * g->alignment;
    if (data_offset > g->size && n_tensors > 0)
        return shoal_errorf(SHOAL_FORMAT, "%s: truncated: the file ends before its tensor data",
                            g->path);
    g->data_offset = data_offset;
    uint64_t data_size = g->size > data_offset ? g->size - data_offset : 0;

    c.pos = ti_start;
    for (uint64_t i = 0; i < n_tensors; i++) {
        struct shoal_gguf_tensor *t = &g->tensors[i];
        const char *name;
        uint64_t len;
        uint32_t nd, type;
        if (rd_str(&c, &name, &len) != SHOAL_OK || !(t->name = arena_str(&names, &names_left, name, len)) ||
            rd_u32(&c, &nd) != SHOAL_OK || nd > SHOAL_GGUF_MAX_DIMS)
            return CHANGED();
        t->n_dims = (int)nd;
        uint64_t count = 1;
        for (int d = 0; d < SHOAL_GGUF_MAX_DIMS; d++) t->ne[d] = 1;
        for (uint32_t d = 0; d < nd; d++) {
            uint64_t ne;
            if (rd_u64(&c, &ne) != SHOAL_OK) return CHANGED();
            if (ne > (uint64_t)INT64_MAX || !shoal_mul_ok(count, ne, &count) ||
                count > (uint64_t)INT64_MAX)
                return shoal_errorf(SHOAL_FORMAT,
                                    "%s: tensor '%s': its dimensions overflow 64 bits", g->path,
                                    t->name);
            t->ne[d] = (int64_t)ne;
        }
        if (rd_u32(&c, &type) != SHOAL_OK || rd_u64(&c, &t->offset) != SHOAL_OK) return CHANGED();
        const struct shoal_dtype_info *ti = shoal_dtype_info((int)type);
        if (!ti)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: tensor '%s' has type %u, which is not a GGUF type shoal knows "
                                "(a newer format than this shoal, or a damaged file)",
                                g->path, t->name, type);
        t->type = (int)type;
        if (t->ne[0] % ti->block)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: tensor '%s': row length %" PRId64
                                " is not a multiple of the %s block size %d",
                                g->path, t->name, t->ne[0], ti->name, ti->block);
        uint64_t nbytes;
        if (!shoal_mul_ok(count / (uint64_t)ti->block, (uint64_t)ti->block_bytes, &nbytes))
            return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s': its size overflows 64 bits",
                                g->path, t->name);
        t->nbytes = nbytes;
        if (t->offset % g->alignment)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: tensor '%s': data offset %" PRIu64
                                " is not aligned to %u bytes",
                                g->path, t->name, t->offset, g->alignment);
        uint64_t end;
        if (!shoal_add_ok(t->offset, nbytes, &end) || end > data_size)
            return shoal_errorf(SHOAL_FORMAT,
                                "%s: tensor '%s' (%" PRIu64 " bytes at data offset %" PRIu64
                                ") lies past the end of the file (%" PRIu64
                                " bytes of data): the file is truncated or corrupt",
                                g->path, t->name, nbytes, t->offset, data_size);
        t->data = g->map + data_offset + t->offset;
    }
    g->n_tensors = (int64_t)n_tensors;
    /* duplicate names would make lookups ambiguous */
    for (int64_t i = 0; i < g->n_tensors; i++)
        if (index_add(g->tensor_index, g->tensor_cap, g->tensors[i].name, i, tensor_name_of, g->tensors) >= 0)
            return shoal_errorf(SHOAL_FORMAT, "%s: tensor '%s' appears twice", g->path, g->tensors[i].name);
    return SHOAL_OK;
#undef CHANGED
}

shoal_status shoal_gguf_open(struct shoal_gguf **out, const char *path) {
    *out = NULL;
    struct shoal_gguf *g = calloc(1, sizeof *g);
    if (!g) return shoal_errorf(SHOAL_NOMEM, "out of memory opening %s", path);
    g->path = strdup(path);
    shoal_status rc = SHOAL_OK;
    g->fd = -1;
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        rc = shoal_errorf(SHOAL_IO, "%s: cannot open: %s", path, strerror(errno));
        goto fail;
    }
    struct stat st;
    if (fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
        rc = shoal_errorf(SHOAL_IO, "%s: not a regular file", path);
        close(fd);
        goto fail;
    }
    g->size = (uint64_t)st.st_size;
    if (g->size < 24) {
        close(fd);
        rc = shoal_errorf(SHOAL_FORMAT,
                          "%s: truncated: %" PRIu64 " bytes is too short for a GGUF header", path,
                          g->size);
        goto fail;
    }
    void *m = mmap(NULL, g->size, PROT_READ, MAP_PRIVATE, fd, 0);
    g->fd = fd;
    if (m == MAP_FAILED) {
        rc = shoal_errorf(SHOAL_IO, "%s: cannot map: %s", path, strerror(errno));
        goto fail;
    }
    g->map = m;
    shoal_map_note(m, g->size, g->path);
    SHOAL_TRY_GOTO(parse(g), rc, fail);
    *out = g;
    return SHOAL_OK;
fail:
    shoal_gguf_close(g);
    return rc;
}

void shoal_gguf_close(struct shoal_gguf *g) {
    if (!g) return;
    if (g->map) {
        shoal_map_forget(g->map);
        munmap((void *)g->map, g->size);
    }
    if (g->fd >= 0) close(g->fd);
    free(g->kv);
    free(g->tensors);
    free(g->kv_index);
    free(g->tensor_index);
    free(g->arena);
    free(g->path);
    free(g);
}

shoal_status shoal_gguf_read(const struct shoal_gguf *g, const void *p, void *dst, size_t n) {
    const uint8_t *at = p;
    if (at < g->map || (uint64_t)(at - g->map) > g->size || n > g->size - (uint64_t)(at - g->map))
        return shoal_errorf(SHOAL_INTERNAL, "%s: read outside the file", g->path);
    off_t off = (off_t)(at - g->map);
    size_t done = 0;
    while (done < n) {
        ssize_t k = pread(g->fd, (char *)dst + done, n - done, off + (off_t)done);
        if (k < 0 && errno == EINTR) continue;
        if (k <= 0)
            return shoal_errorf(SHOAL_IO, "%s: read failed at offset %lld: %s", g->path,
                                (long long)(off + (off_t)done), k < 0 ? strerror(errno) : "end of file");
        done += (size_t)k;
    }
    return SHOAL_OK;
}

/* --------------------------------------------------------------- lookups */

int64_t shoal_gguf_find_key(const struct shoal_gguf *g, const char *key) {
    return index_find(g->kv_index, g->kv_cap, key, key_of, g->kv);
}

const struct shoal_gguf_kv *shoal_gguf_get(const struct shoal_gguf *g, const char *key) {
    int64_t i = shoal_gguf_find_key(g, key);
    return i < 0 ? NULL : &g->kv[i];
}

const struct shoal_gguf_tensor *shoal_gguf_find_tensor(const struct shoal_gguf *g,
                                                       const char *name) {
    const int64_t i = index_find(g->tensor_index, g->tensor_cap, name, tensor_name_of, g->tensors);
    return i < 0 ? NULL : &g->tensors[i];
}

static shoal_status wrong_type(const struct shoal_gguf *g, const struct shoal_gguf_kv *kv,
                               const char *wanted) {
    return shoal_errorf(SHOAL_FORMAT, "%s: metadata '%s' is a %s, expected %s", g->path, kv->key,
                        kv->type == SHOAL_GGUF_ARRAY ? "array" : shoal_gguf_type_name(kv->type),
                        wanted);
}

static shoal_status missing(const struct shoal_gguf *g, const char *key) {
    return shoal_errorf(SHOAL_FORMAT, "%s: required metadata '%s' is missing", g->path, key);
}

static shoal_status get_int(const struct shoal_gguf *g, const char *key, int required, int64_t lo,
                            int64_t hi, int64_t *out) {
    const struct shoal_gguf_kv *kv = shoal_gguf_get(g, key);
    if (!kv) return required ? missing(g, key) : SHOAL_OK;
    int64_t v;
    if (is_unsigned(kv->type) && kv->type != SHOAL_GGUF_BOOL) {
        if (kv->num.u > (uint64_t)INT64_MAX) goto range;
        v = (int64_t)kv->num.u;
    } else if (is_signed(kv->type)) {
        v = kv->num.i;
    } else {
        return wrong_type(g, kv, "an integer");
    }
    if (v < lo || v > hi) goto range;
    *out = v;
    return SHOAL_OK;
range:
    return shoal_errorf(SHOAL_FORMAT, "%s: metadata '%s' is out of range", g->path, key);
}

shoal_status shoal_gguf_get_u32(const struct shoal_gguf *g, const char *key, uint32_t *out) {
    int64_t v = 0;
    SHOAL_TRY(get_int(g, key, 1, 0, UINT32_MAX, &v));
    *out = (uint32_t)v;
    return SHOAL_OK;
}

shoal_status shoal_gguf_get_u32_opt(const struct shoal_gguf *g, const char *key, uint32_t *out) {
    int64_t v = *out;
    SHOAL_TRY(get_int(g, key, 0, 0, UINT32_MAX, &v));
    *out = (uint32_t)v;
    return SHOAL_OK;
}

shoal_status shoal_gguf_get_i64_opt(const struct shoal_gguf *g, const char *key, int64_t *out) {
    return get_int(g, key, 0, INT64_MIN, INT64_MAX, out);
}

shoal_status shoal_gguf_get_f32_opt(const struct shoal_gguf *g, const char *key, float *out) {
    const struct shoal_gguf_kv *kv = shoal_gguf_get(g, key);
    if (!kv) return SHOAL_OK;
    if (kv->type == SHOAL_GGUF_FLOAT32 || kv->type == SHOAL_GGUF_FLOAT64)
        *out = (float)kv->num.f;
    else if (is_unsigned(kv->type) && kv->type != SHOAL_GGUF_BOOL)
        *out = (float)kv->num.u;
    else if (is_signed(kv->type))
        *out = (float)kv->num.i;
    else
        return wrong_type(g, kv, "a number");
    return SHOAL_OK;
}

shoal_status shoal_gguf_get_bool_opt(const struct shoal_gguf *g, const char *key, int *out) {
    const struct shoal_gguf_kv *kv = shoal_gguf_get(g, key);
    if (!kv) return SHOAL_OK;
    if (kv->type != SHOAL_GGUF_BOOL) return wrong_type(g, kv, "a bool");
    *out = kv->num.u != 0;
    return SHOAL_OK;
}

static shoal_status get_str(const struct shoal_gguf *g, const char *key, int required,
                            const char **s, size_t *len) {
    const struct shoal_gguf_kv *kv = shoal_gguf_get(g, key);
    if (!kv) return required ? missing(g, key) : SHOAL_OK;
    if (kv->type != SHOAL_GGUF_STRING) return wrong_type(g, kv, "a string");
    uint64_t n;
    memcpy(&n, kv->data, 8);
    *s = (const char *)kv->data + 8;
    *len = (size_t)n;
    return SHOAL_OK;
}

shoal_status shoal_gguf_get_str(const struct shoal_gguf *g, const char *key, const char **s,
                                size_t *len) {
    return get_str(g, key, 1, s, len);
}

shoal_status shoal_gguf_get_str_opt(const struct shoal_gguf *g, const char *key, const char **s,
                                    size_t *len) {
    return get_str(g, key, 0, s, len);
}

shoal_status shoal_gguf_get_arr(const struct shoal_gguf *g, const char *key, int elem,
                                const struct shoal_gguf_kv **out) {
    const struct shoal_gguf_kv *kv = shoal_gguf_get(g, key);
    if (!kv) return missing(g, key);
    if (kv->type != SHOAL_GGUF_ARRAY) return wrong_type(g, kv, "an array");
    if (elem >= 0 && kv->arr_type != (enum shoal_gguf_type)elem) {
        int ok = (is_signed(elem) || is_unsigned(elem)) && elem != SHOAL_GGUF_BOOL &&
                 (is_signed(kv->arr_type) || is_unsigned(kv->arr_type)) &&
                 kv->arr_type != SHOAL_GGUF_BOOL;
        if (!ok)
            return shoal_errorf(SHOAL_FORMAT, "%s: metadata '%s' is an array of %s, expected %s",
                                g->path, key, shoal_gguf_type_name(kv->arr_type),
                                shoal_gguf_type_name(elem));
    }
    *out = kv;
    return SHOAL_OK;
}

void shoal_gguf_arr_str(const struct shoal_gguf_kv *kv, uint64_t i, const char **s, size_t *len) {
    const uint8_t *p = kv->data + kv->str_off[i];
    uint64_t n;
    memcpy(&n, p, 8);
    *s = (const char *)p + 8;
    *len = (size_t)n;
}

float shoal_gguf_arr_f32(const struct shoal_gguf_kv *kv, uint64_t i) {
    if (kv->arr_type == SHOAL_GGUF_FLOAT64) {
        double d;
        memcpy(&d, kv->data + 8 * i, 8);
        return (float)d;
    }
    float f;
    memcpy(&f, kv->data + 4 * i, 4);
    return f;
}

int64_t shoal_gguf_arr_int(const struct shoal_gguf_kv *kv, uint64_t i) {
    const uint8_t *p = kv->data + (uint64_t)type_sizes[kv->arr_type] * i;
    if (is_signed(kv->arr_type)) return read_scalar_i(p, kv->arr_type);
    return (int64_t)read_scalar_u(p, kv->arr_type);
}

static void print_str(FILE *f, const char *s, size_t len, size_t max) {
    fputc('"', f);
    for (size_t i = 0; i < len && i < max; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '\n') fputs("\\n", f);
        else if (ch == '"' || ch == '\\') fprintf(f, "\\%c", ch);
        else if (ch < 0x20) fprintf(f, "\\x%02x", ch);
        else fputc(ch, f);
    }
    fputc('"', f);
    if (len > max) fprintf(f, "...(%zu bytes)", len);
}

static void print_scalar(FILE *f, enum shoal_gguf_type t, const uint8_t *p) {
    if (is_unsigned(t) && t != SHOAL_GGUF_BOOL) fprintf(f, "%" PRIu64, read_scalar_u(p, t));
    else if (t == SHOAL_GGUF_BOOL) fputs(read_scalar_u(p, t) ? "true" : "false", f);
    else if (is_signed(t)) fprintf(f, "%" PRId64, read_scalar_i(p, t));
    else if (t == SHOAL_GGUF_FLOAT32) {
        float v;
        memcpy(&v, p, 4);
        fprintf(f, "%g", v);
    } else if (t == SHOAL_GGUF_FLOAT64) {
        double v;
        memcpy(&v, p, 8);
        fprintf(f, "%g", v);
    }
}

void shoal_gguf_kv_print(FILE *f, const struct shoal_gguf_kv *kv, int max_elems) {
    if (kv->type == SHOAL_GGUF_STRING) {
        uint64_t n;
        memcpy(&n, kv->data, 8);
        print_str(f, (const char *)kv->data + 8, (size_t)n, 200);
        return;
    }
    if (kv->type != SHOAL_GGUF_ARRAY) {
        print_scalar(f, kv->type, kv->data);
        return;
    }
    fprintf(f, "[%s x %" PRIu64 "]", shoal_gguf_type_name(kv->arr_type), kv->n);
    if (kv->arr_type == SHOAL_GGUF_ARRAY) return;
    fputs(" [", f);
    for (uint64_t i = 0; i < kv->n && i < (uint64_t)max_elems; i++) {
        if (i) fputs(", ", f);
        if (kv->arr_type == SHOAL_GGUF_STRING) {
            const char *s;
            size_t len;
            shoal_gguf_arr_str(kv, i, &s, &len);
            print_str(f, s, len, 40);
        } else {
            print_scalar(f, kv->arr_type, kv->data + (uint64_t)type_sizes[kv->arr_type] * i);
        }
    }
    if (kv->n > (uint64_t)max_elems) fputs(", ...", f);
    fputc(']', f);
}

/* --------------------------------------------------------------- writer */

struct wtensor {
    char *name;
    int type, n_dims;
    int64_t ne[SHOAL_GGUF_MAX_DIMS];
    uint64_t nbytes, offset;
};

struct shoal_gguf_writer {
    char *path, *tmp_path;
    FILE *f;
    uint8_t *kvbuf; /* serialized metadata entries */
    size_t kvlen, kvcap;
    uint64_t n_kv;
    char **keys;
    struct wtensor *t;
    int64_t n_t, cap_t;
    int data_started, finished;
    int64_t cur;          /* tensor being written */
    uint64_t cur_written; /* its bytes so far */
    uint64_t data_pos;    /* bytes written into the data section */
};

static shoal_status kv_put(struct shoal_gguf_writer *w, const void *p, size_t n) {
    if (w->kvlen + n > w->kvcap) {
        size_t cap = w->kvcap ? w->kvcap : 4096;
        while (cap < w->kvlen + n) cap *= 2;
        uint8_t *b = realloc(w->kvbuf, cap);
        if (!b) return shoal_errorf(SHOAL_NOMEM, "%s: out of memory for metadata", w->path);
        w->kvbuf = b;
        w->kvcap = cap;
    }
    memcpy(w->kvbuf + w->kvlen, p, n);
    w->kvlen += n;
    return SHOAL_OK;
}

static shoal_status kv_put_str(struct shoal_gguf_writer *w, const char *s, uint64_t len) {
    SHOAL_TRY(kv_put(w, &len, 8));
    return kv_put(w, s, len);
}

static shoal_status kv_begin(struct shoal_gguf_writer *w, const char *key, uint32_t type) {
    if (w->data_started)
        return shoal_errorf(SHOAL_INTERNAL, "%s: metadata '%s' added after the data began",
                            w->path, key);
    for (uint64_t i = 0; i < w->n_kv; i++)
        if (strcmp(w->keys[i], key) == 0)
            return shoal_errorf(SHOAL_INVALID, "%s: metadata '%s' set twice", w->path, key);
    char **keys = realloc(w->keys, (w->n_kv + 1) * sizeof *keys);
    if (!keys) return shoal_errorf(SHOAL_NOMEM, "%s: out of memory", w->path);
    w->keys = keys;
    if (!(w->keys[w->n_kv] = strdup(key))) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    w->n_kv++;
    SHOAL_TRY(kv_put_str(w, key, strlen(key)));
    return kv_put(w, &type, 4);
}

shoal_status shoal_gguf_writer_create(struct shoal_gguf_writer **out, const char *path) {
    *out = NULL;
    struct shoal_gguf_writer *w = calloc(1, sizeof *w);
    if (!w) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    w->path = strdup(path);
    size_t n = strlen(path) + 8;
    w->tmp_path = malloc(n);
    if (!w->path || !w->tmp_path) {
        shoal_gguf_writer_destroy(w);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    snprintf(w->tmp_path, n, "%s.tmp", path);
    w->f = fopen(w->tmp_path, "wb");
    if (!w->f) {
        shoal_status rc = shoal_errorf(SHOAL_IO, "%s: cannot create: %s", w->tmp_path,
                                       strerror(errno));
        shoal_gguf_writer_destroy(w);
        return rc;
    }
    w->cur = -1;
    *out = w;
    return SHOAL_OK;
}

void shoal_gguf_writer_destroy(struct shoal_gguf_writer *w) {
    if (!w) return;
    if (w->f) {
        fclose(w->f);
        if (!w->finished) unlink(w->tmp_path);
    }
    for (uint64_t i = 0; i < w->n_kv; i++) free(w->keys[i]);
    free(w->keys);
    for (int64_t i = 0; i < w->n_t; i++) free(w->t[i].name);
    free(w->t);
    free(w->kvbuf);
    free(w->path);
    free(w->tmp_path);
    free(w);
}

#define SET_SCALAR(fn, ctype, gtype)                                                           \
    shoal_status fn(struct shoal_gguf_writer *w, const char *key, ctype v) {                   \
        SHOAL_TRY(kv_begin(w, key, gtype));                                                    \
        return kv_put(w, &v, sizeof v);                                                        \
    }
SET_SCALAR(shoal_gguf_set_u32, uint32_t, SHOAL_GGUF_UINT32)
SET_SCALAR(shoal_gguf_set_i32, int32_t, SHOAL_GGUF_INT32)
SET_SCALAR(shoal_gguf_set_u64, uint64_t, SHOAL_GGUF_UINT64)
SET_SCALAR(shoal_gguf_set_f32, float, SHOAL_GGUF_FLOAT32)
#undef SET_SCALAR

shoal_status shoal_gguf_set_bool(struct shoal_gguf_writer *w, const char *key, int v) {
    uint8_t b = v != 0;
    SHOAL_TRY(kv_begin(w, key, SHOAL_GGUF_BOOL));
    return kv_put(w, &b, 1);
}

shoal_status shoal_gguf_set_str(struct shoal_gguf_writer *w, const char *key, const char *v) {
    SHOAL_TRY(kv_begin(w, key, SHOAL_GGUF_STRING));
    return kv_put_str(w, v, strlen(v));
}

shoal_status shoal_gguf_set_arr(struct shoal_gguf_writer *w, const char *key,
                                enum shoal_gguf_type elem, const void *data, uint64_t n) {
    if ((unsigned)elem >= SHOAL_GGUF_TYPE_COUNT || !type_sizes[elem])
        return shoal_errorf(SHOAL_INVALID, "%s: '%s': not a numeric element type", w->path, key);
    uint32_t et = elem;
    SHOAL_TRY(kv_begin(w, key, SHOAL_GGUF_ARRAY));
    SHOAL_TRY(kv_put(w, &et, 4));
    SHOAL_TRY(kv_put(w, &n, 8));
    return kv_put(w, data, (size_t)n * type_sizes[elem]);
}

shoal_status shoal_gguf_set_arr_str(struct shoal_gguf_writer *w, const char *key,
                                    const char *const *v, uint64_t n) {
    uint32_t et = SHOAL_GGUF_STRING;
    SHOAL_TRY(kv_begin(w, key, SHOAL_GGUF_ARRAY));
    SHOAL_TRY(kv_put(w, &et, 4));
    SHOAL_TRY(kv_put(w, &n, 8));
    for (uint64_t i = 0; i < n; i++) SHOAL_TRY(kv_put_str(w, v[i], strlen(v[i])));
    return SHOAL_OK;
}

/* Bytes of a value as stored (its type already read), by walking it. */
static uint64_t value_span(const struct shoal_gguf_kv *kv) {
    if (kv->type != SHOAL_GGUF_ARRAY) {
        if (kv->type != SHOAL_GGUF_STRING) return type_sizes[kv->type];
        uint64_t n;
        memcpy(&n, kv->data, 8);
        return 8 + n;
    }
    /* from the array header (12 bytes before data) to the end of the last element */
    struct cursor c = { kv->data - 12, 0, UINT64_MAX, "", "" };
    uint64_t dummy = 0;
    skip_value(&c, SHOAL_GGUF_ARRAY, 0, &dummy);
    return c.pos;
}

shoal_status shoal_gguf_copy_kv(struct shoal_gguf_writer *w, const struct shoal_gguf_kv *kv) {
    SHOAL_TRY(kv_begin(w, kv->key, kv->type));
    const uint8_t *start = kv->type == SHOAL_GGUF_ARRAY ? kv->data - 12 : kv->data;
    return kv_put(w, start, value_span(kv));
}

shoal_status shoal_gguf_add_tensor(struct shoal_gguf_writer *w, const char *name, int type,
                                   int n_dims, const int64_t *ne) {
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    if (w->data_started || !ti || n_dims < 1 || n_dims > SHOAL_GGUF_MAX_DIMS)
        return shoal_errorf(SHOAL_INVALID, "%s: cannot add tensor '%s'", w->path, name);
    if (w->n_t == w->cap_t) {
        int64_t cap = w->cap_t ? w->cap_t * 2 : 64;
        struct wtensor *t = realloc(w->t, (size_t)cap * sizeof *t);
        if (!t) return shoal_errorf(SHOAL_NOMEM, "out of memory");
        w->t = t;
        w->cap_t = cap;
    }
    struct wtensor *t = &w->t[w->n_t];
    memset(t, 0, sizeof *t);
    uint64_t count = 1;
    for (int d = 0; d < SHOAL_GGUF_MAX_DIMS; d++) t->ne[d] = d < n_dims ? ne[d] : 1;
    for (int d = 0; d < n_dims; d++)
        if (ne[d] <= 0 || !shoal_mul_ok(count, (uint64_t)ne[d], &count))
            return shoal_errorf(SHOAL_INVALID, "%s: tensor '%s': bad shape", w->path, name);
    if (ne[0] % ti->block)
        return shoal_errorf(SHOAL_INVALID,
                            "%s: tensor '%s': row length %" PRId64
                            " is not a multiple of the %s block size %d",
                            w->path, name, ne[0], ti->name, ti->block);
    t->name = strdup(name);
    if (!t->name) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    t->type = type;
    t->n_dims = n_dims;
    t->nbytes = count / (uint64_t)ti->block * (uint64_t)ti->block_bytes;
    uint64_t off = 0;
    if (w->n_t) {
        const struct wtensor *p = &w->t[w->n_t - 1];
        off = (p->offset + p->nbytes + SHOAL_GGUF_DEFAULT_ALIGNMENT - 1) /
              SHOAL_GGUF_DEFAULT_ALIGNMENT * SHOAL_GGUF_DEFAULT_ALIGNMENT;
    }
    t->offset = off;
    w->n_t++;
    return SHOAL_OK;
}

static shoal_status wr(struct shoal_gguf_writer *w, const void *p, size_t n) {
    if (n && fwrite(p, 1, n, w->f) != n)
        return shoal_errorf(SHOAL_IO, "%s: write failed: %s", w->tmp_path, strerror(errno));
    return SHOAL_OK;
}

static shoal_status wr_zeros(struct shoal_gguf_writer *w, size_t n) {
    static const uint8_t zeros[64];
    while (n) {
        size_t k = n < sizeof zeros ? n : sizeof zeros;
        SHOAL_TRY(wr(w, zeros, k));
        n -= k;
    }
    return SHOAL_OK;
}

shoal_status shoal_gguf_writer_begin_data(struct shoal_gguf_writer *w) {
    if (w->data_started) return shoal_errorf(SHOAL_INTERNAL, "begin_data called twice");
    uint32_t hdr[2] = { SHOAL_GGUF_MAGIC, 3 };
    uint64_t counts[2] = { (uint64_t)w->n_t, w->n_kv };
    SHOAL_TRY(wr(w, hdr, sizeof hdr));
    SHOAL_TRY(wr(w, counts, sizeof counts));
    SHOAL_TRY(wr(w, w->kvbuf, w->kvlen));
    uint64_t pos = 24 + w->kvlen;
    for (int64_t i = 0; i < w->n_t; i++) {
        const struct wtensor *t = &w->t[i];
        uint64_t len = strlen(t->name);
        uint32_t nd = (uint32_t)t->n_dims, type = (uint32_t)t->type;
        SHOAL_TRY(wr(w, &len, 8));
        SHOAL_TRY(wr(w, t->name, len));
        SHOAL_TRY(wr(w, &nd, 4));
        for (int d = 0; d < t->n_dims; d++) SHOAL_TRY(wr(w, &t->ne[d], 8));
        SHOAL_TRY(wr(w, &type, 4));
        SHOAL_TRY(wr(w, &t->offset, 8));
        pos += 8 + len + 4 + 8ull * nd + 4 + 8;
    }
    uint64_t pad = (SHOAL_GGUF_DEFAULT_ALIGNMENT - pos % SHOAL_GGUF_DEFAULT_ALIGNMENT) %
                   SHOAL_GGUF_DEFAULT_ALIGNMENT;
    SHOAL_TRY(wr_zeros(w, (size_t)pad));
    w->data_started = 1;
    w->cur = 0;
    w->cur_written = 0;
    w->data_pos = 0;
    return SHOAL_OK;
}

shoal_status shoal_gguf_write_data(struct shoal_gguf_writer *w, const void *data, size_t n) {
    const uint8_t *p = data;
    if (!w->data_started) return shoal_errorf(SHOAL_INTERNAL, "write_data before begin_data");
    while (n) {
        if (w->cur >= w->n_t)
            return shoal_errorf(SHOAL_INTERNAL, "%s: more tensor data than tensors", w->path);
        struct wtensor *t = &w->t[w->cur];
        if (w->cur_written == 0 && w->data_pos < t->offset) {
            SHOAL_TRY(wr_zeros(w, (size_t)(t->offset - w->data_pos)));
            w->data_pos = t->offset;
        }
        uint64_t room = t->nbytes - w->cur_written;
        size_t k = n < room ? n : (size_t)room;
        SHOAL_TRY(wr(w, p, k));
        p += k;
        n -= k;
        w->cur_written += k;
        w->data_pos += k;
        if (w->cur_written == t->nbytes) {
            w->cur++;
            w->cur_written = 0;
        }
    }
    return SHOAL_OK;
}

shoal_status shoal_gguf_writer_finish(struct shoal_gguf_writer *w) {
    if (!w->data_started) SHOAL_TRY(shoal_gguf_writer_begin_data(w));
    if (w->cur < w->n_t)
        return shoal_errorf(SHOAL_INTERNAL, "%s: tensor '%s' was not fully written", w->path,
                            w->t[w->cur].name);
    if (fflush(w->f) != 0 || fsync(fileno(w->f)) != 0)
        return shoal_errorf(SHOAL_IO, "%s: flush failed: %s", w->tmp_path, strerror(errno));
    if (fclose(w->f) != 0) {
        w->f = NULL;
        unlink(w->tmp_path);
        return shoal_errorf(SHOAL_IO, "%s: close failed: %s", w->tmp_path, strerror(errno));
    }
    w->f = NULL;
    if (rename(w->tmp_path, w->path) != 0) {
        shoal_status rc = shoal_errorf(SHOAL_IO, "cannot rename %s to %s: %s", w->tmp_path,
                                       w->path, strerror(errno));
        unlink(w->tmp_path);
        return rc;
    }
    w->finished = 1;
    return SHOAL_OK;
}
