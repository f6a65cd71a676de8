/*
 * GGUF (llama.cpp's model format, v2 and v3): a reader that maps the file and
 * checks every length, offset and size against it before anything is used,
 * and a writer that streams tensors to a temporary file and renames it into
 * place only when complete.
 *
 * The reader keeps the map for its lifetime: tensor data pointers point into
 * it. Big-endian files and GGUF v1 are refused.
 */
#ifndef SHOAL_GGUF_H
#define SHOAL_GGUF_H

#include <stdint.h>
#include <stdio.h>

#include "../base/base.h"

#define SHOAL_GGUF_MAGIC 0x46554747u /* "GGUF" read as little-endian u32 */
#define SHOAL_GGUF_DEFAULT_ALIGNMENT 32
#define SHOAL_GGUF_MAX_DIMS 4

enum shoal_gguf_type {
    SHOAL_GGUF_UINT8 = 0,
    SHOAL_GGUF_INT8 = 1,
    SHOAL_GGUF_UINT16 = 2,
    SHOAL_GGUF_INT16 = 3,
    SHOAL_GGUF_UINT32 = 4,
    SHOAL_GGUF_INT32 = 5,
    SHOAL_GGUF_FLOAT32 = 6,
    SHOAL_GGUF_BOOL = 7,
    SHOAL_GGUF_STRING = 8,
    SHOAL_GGUF_ARRAY = 9,
    SHOAL_GGUF_UINT64 = 10,
    SHOAL_GGUF_INT64 = 11,
    SHOAL_GGUF_FLOAT64 = 12,
    SHOAL_GGUF_TYPE_COUNT
};

const char *shoal_gguf_type_name(enum shoal_gguf_type t);

/* One metadata entry. Everything points into the reader's memory. */
struct shoal_gguf_kv {
    const char *key;           /* NUL-terminated */
    enum shoal_gguf_type type; /* of the value; SHOAL_GGUF_ARRAY for arrays */
    enum shoal_gguf_type arr_type;
    uint64_t n;                /* elements of an array; 1 for a scalar */
    const uint8_t *data;       /* the raw value in the map (for arrays, the first element) */
    const uint64_t *str_off;   /* arrays of strings: offset of each element from data */
    union {
        uint64_t u;            /* unsigned integers and bool */
        int64_t i;             /* signed integers */
        double f;              /* floats */
    } num;                     /* scalars, converted */
};

struct shoal_gguf_tensor {
    const char *name;          /* NUL-terminated */
    int type;                  /* enum shoal_dtype, known to shoal */
    int n_dims;
    int64_t ne[SHOAL_GGUF_MAX_DIMS]; /* ne[0] is the innermost (a row); unused dims are 1 */
    uint64_t offset;           /* from the start of the data section */
    uint64_t nbytes;
    const void *data;          /* into the map */
};

struct shoal_gguf {
    char *path;
    int version;
    uint32_t alignment;
    const uint8_t *map;
    uint64_t size;             /* of the file */
    uint64_t data_offset;      /* of the data section in the file */
    int64_t n_kv;
    struct shoal_gguf_kv *kv;  /* (n_kv) */
    int64_t n_tensors;
    struct shoal_gguf_tensor *tensors; /* (n_tensors) */
    void *arena;               /* names and string offsets */
    int64_t *kv_index, *tensor_index; /* hashed name indexes (gguf.c) of kv_cap, tensor_cap slots */
    uint64_t kv_cap, tensor_cap;
    int fd;                    /* kept open for shoal_gguf_read */
};

/*
 * Opens and validates a GGUF file. On success *out owns the map (close with
 * shoal_gguf_close). On failure *out is NULL and the error detail names the
 * file and what is wrong with it.
 */
shoal_status shoal_gguf_open(struct shoal_gguf **out, const char *path);
void shoal_gguf_close(struct shoal_gguf *g);

/*
 * Copies n bytes of the file from where p points into its map, with read(2)
 * rather than through the map: the pages are not mapped into this process
 * (a rank reading the columns it owns from every row of a matrix would
 * otherwise touch, and count in its memory, the whole matrix).
 */
shoal_status shoal_gguf_read(const struct shoal_gguf *g, const void *p, void *dst, size_t n);

/* Index of the key, or -1. */
int64_t shoal_gguf_find_key(const struct shoal_gguf *g, const char *key);
/* NULL when absent. */
const struct shoal_gguf_kv *shoal_gguf_get(const struct shoal_gguf *g, const char *key);
const struct shoal_gguf_tensor *shoal_gguf_find_tensor(const struct shoal_gguf *g, const char *name);

/*
 * Typed getters. A missing key or a value of the wrong kind is SHOAL_FORMAT
 * with a message naming the file and the key. Integers of any width convert
 * when the value fits. The _opt forms leave *out alone and return SHOAL_OK
 * when the key is absent (a present key of the wrong type is still an error).
 */
shoal_status shoal_gguf_get_u32(const struct shoal_gguf *g, const char *key, uint32_t *out);
shoal_status shoal_gguf_get_u32_opt(const struct shoal_gguf *g, const char *key, uint32_t *out);
shoal_status shoal_gguf_get_i64_opt(const struct shoal_gguf *g, const char *key, int64_t *out);
shoal_status shoal_gguf_get_f32_opt(const struct shoal_gguf *g, const char *key, float *out);
shoal_status shoal_gguf_get_bool_opt(const struct shoal_gguf *g, const char *key, int *out);
/* The string is not NUL-terminated in the map: use *len. */
shoal_status shoal_gguf_get_str(const struct shoal_gguf *g, const char *key, const char **s,
                                size_t *len);
shoal_status shoal_gguf_get_str_opt(const struct shoal_gguf *g, const char *key, const char **s,
                                    size_t *len);
/* An array whose elements are of type elem (any type when elem < 0). */
shoal_status shoal_gguf_get_arr(const struct shoal_gguf *g, const char *key, int elem,
                                const struct shoal_gguf_kv **out);

/* Elements of an array kv; i must be < kv->n and the type must match. */
void shoal_gguf_arr_str(const struct shoal_gguf_kv *kv, uint64_t i, const char **s, size_t *len);
float shoal_gguf_arr_f32(const struct shoal_gguf_kv *kv, uint64_t i);
int64_t shoal_gguf_arr_int(const struct shoal_gguf_kv *kv, uint64_t i); /* any integer type */

/* Writes a scalar or array value as text ("[512 strings]" for long arrays). */
void shoal_gguf_kv_print(FILE *f, const struct shoal_gguf_kv *kv, int max_elems);

/* --------------------------------------------------------------- writer */

struct shoal_gguf_writer;

/*
 * Starts a GGUF v3 file at path (written as path.tmp until finished). The
 * caller adds metadata and tensor descriptions, then calls begin_data, then
 * writes every tensor's bytes in the order they were added, then finish.
 * destroy() without finish() removes the temporary file.
 */
shoal_status shoal_gguf_writer_create(struct shoal_gguf_writer **out, const char *path);
void shoal_gguf_writer_destroy(struct shoal_gguf_writer *w);

shoal_status shoal_gguf_set_u32(struct shoal_gguf_writer *w, const char *key, uint32_t v);
shoal_status shoal_gguf_set_i32(struct shoal_gguf_writer *w, const char *key, int32_t v);
shoal_status shoal_gguf_set_u64(struct shoal_gguf_writer *w, const char *key, uint64_t v);
shoal_status shoal_gguf_set_f32(struct shoal_gguf_writer *w, const char *key, float v);
shoal_status shoal_gguf_set_bool(struct shoal_gguf_writer *w, const char *key, int v);
shoal_status shoal_gguf_set_str(struct shoal_gguf_writer *w, const char *key, const char *v);
/* Numeric array: n elements of type elem, packed little-endian in data. */
shoal_status shoal_gguf_set_arr(struct shoal_gguf_writer *w, const char *key,
                                enum shoal_gguf_type elem, const void *data, uint64_t n);
shoal_status shoal_gguf_set_arr_str(struct shoal_gguf_writer *w, const char *key,
                                    const char *const *v, uint64_t n);
/* Copies one entry of a reader (any type) verbatim. */
shoal_status shoal_gguf_copy_kv(struct shoal_gguf_writer *w, const struct shoal_gguf_kv *kv);

shoal_status shoal_gguf_add_tensor(struct shoal_gguf_writer *w, const char *name, int type,
                                   int n_dims, const int64_t *ne);
shoal_status shoal_gguf_writer_begin_data(struct shoal_gguf_writer *w);
/* Appends bytes to the current tensor; a tensor may come in several pieces. */
shoal_status shoal_gguf_write_data(struct shoal_gguf_writer *w, const void *data, size_t n);
/* Checks every tensor is complete, flushes, fsyncs and renames into place. */
shoal_status shoal_gguf_writer_finish(struct shoal_gguf_writer *w);

#endif
