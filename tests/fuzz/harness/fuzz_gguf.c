/*
 * fuzz_gguf.c — the GGUF reader (shard/gguf.c) on hostile files, and what
 * reads a model's metadata after it: the input is written to a file and
 * opened; every metadata entry is looked up by its key and read with each
 * typed getter, every array element read, every entry printed; every tensor
 * is looked up by name and the first and last bytes of its data read back;
 * then the hyperparameters, the model's shape and the load checks
 * (runtime/model.c), the tokenizer and the chat template are read from it,
 * as shoal info and shoal run do.
 *
 * Properties beyond "no crash": a key or tensor name finds its own entry, and
 * a tensor's data lies within the file.
 */
#define _GNU_SOURCE /* strndup, memmem, nftw */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "runtime/chat.h"
#include "runtime/model.h"
#include "runtime/tokenizer.h"
#include "shard/gguf.h"

static char path[128];
static FILE *devnull;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    snprintf(path, sizeof path, "%s/input.gguf", fuzz_dir());
    devnull = fopen("/dev/null", "w");
    return 0;
}

static void walk_kv(const struct shoal_gguf *g) {
    for (int64_t i = 0; i < g->n_kv; i++) {
        const struct shoal_gguf_kv *kv = &g->kv[i];
        FUZZ_CHECK(shoal_gguf_find_key(g, kv->key) == i, "key '%s' does not find entry %lld", kv->key,
                   (long long)i);
        FUZZ_CHECK(shoal_gguf_get(g, kv->key) == kv, "key '%s'", kv->key);
        uint32_t u32 = 0;
        int64_t i64 = 0;
        float f = 0;
        int b = 0;
        const char *s = NULL;
        size_t len = 0;
        const struct shoal_gguf_kv *arr = NULL;
        (void)shoal_gguf_get_u32(g, kv->key, &u32);
        (void)shoal_gguf_get_u32_opt(g, kv->key, &u32);
        (void)shoal_gguf_get_i64_opt(g, kv->key, &i64);
        (void)shoal_gguf_get_f32_opt(g, kv->key, &f);
        (void)shoal_gguf_get_bool_opt(g, kv->key, &b);
        if (shoal_gguf_get_str_opt(g, kv->key, &s, &len) == SHOAL_OK && s && len)
            FUZZ_CHECK((const uint8_t *)s + len <= g->map + g->size, "string '%s' past the end", kv->key);
        shoal_gguf_kv_print(devnull, kv, 64);
        if (shoal_gguf_get_arr(g, kv->key, -1, &arr) != SHOAL_OK) continue;
        FUZZ_CHECK(arr == kv, "array '%s'", kv->key);
        volatile uint64_t sink = 0;
        for (uint64_t j = 0; j < kv->n; j++) {
            switch (kv->arr_type) {
            case SHOAL_GGUF_STRING:
                shoal_gguf_arr_str(kv, j, &s, &len);
                FUZZ_CHECK((const uint8_t *)s + len <= g->map + g->size, "'%s'[%llu] past the end", kv->key,
                           (unsigned long long)j);
                if (len) sink += (uint8_t)s[len - 1];
                break;
            case SHOAL_GGUF_FLOAT32:
            case SHOAL_GGUF_FLOAT64:
                sink += (uint64_t)(shoal_gguf_arr_f32(kv, j) != 0);
                break;
            case SHOAL_GGUF_ARRAY:
                break; /* nested arrays have no element accessor */
            default:
                sink += (uint64_t)shoal_gguf_arr_int(kv, j);
                break;
            }
        }
        (void)sink;
    }
}

static void walk_tensors(const struct shoal_gguf *g) {
    for (int64_t i = 0; i < g->n_tensors; i++) {
        const struct shoal_gguf_tensor *t = &g->tensors[i];
        FUZZ_CHECK(shoal_gguf_find_tensor(g, t->name) == t, "tensor '%s' does not find itself", t->name);
        const uint8_t *d = t->data;
        FUZZ_CHECK(d >= g->map + g->data_offset && t->nbytes <= g->size &&
                       (uint64_t)(d - g->map) <= g->size - t->nbytes,
                   "tensor '%s' (%llu bytes at %llu) lies outside the %llu-byte file", t->name,
                   (unsigned long long)t->nbytes, (unsigned long long)t->offset, (unsigned long long)g->size);
        if (!t->nbytes) continue;
        uint8_t b[2];
        FUZZ_CHECK(shoal_gguf_read(g, d, b, 1) == SHOAL_OK, "%s", shoal_last_error());
        FUZZ_CHECK(shoal_gguf_read(g, d + t->nbytes - 1, b + 1, 1) == SHOAL_OK, "%s", shoal_last_error());
        FUZZ_CHECK(b[0] == d[0] && b[1] == d[t->nbytes - 1], "tensor '%s': read and map differ", t->name);
    }
}

/* What shoal info and shoal run read of a model after the header. */
static void read_model(const struct shoal_gguf *g) {
    struct shoal_hparams hp;
    struct shoal_model_shape shape;
    (void)shoal_hparams_read(&hp, g);
    (void)shoal_model_shape(&shape, g);
    (void)shoal_model_check(g);
    struct shoal_tokenizer *tok = NULL;
    if (shoal_tokenizer_create(&tok, g) == SHOAL_OK) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (shoal_tokenize(tok, "Hello <|im_start|> world", 24, 1, 1, &ids, &n) == SHOAL_OK) free(ids);
        shoal_tokenizer_destroy(tok);
    }
    const char *s;
    size_t len;
    if (shoal_gguf_get_str(g, "tokenizer.chat_template", &s, &len) == SHOAL_OK) {
        char *tmpl = strndup(s, len);
        int kind;
        (void)shoal_chat_detect(tmpl, g->path, &kind);
        free(shoal_chat_default_system(tmpl));
        free(tmpl);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (fuzz_write(path, data, size) != 0) abort();
    struct shoal_gguf *g = NULL;
    shoal_error_clear();
    if (shoal_gguf_open(&g, path) != SHOAL_OK) {
        FUZZ_CHECK(g == NULL, "a failed open left *out set");
        FUZZ_CHECK(shoal_last_error()[0], "a refusal without a message");
        return 0;
    }
    walk_kv(g);
    walk_tensors(g);
    read_model(g);
    shoal_gguf_close(g);
    return 0;
}
