/*
 * test_gguf — the GGUF reader and writer: a written file reads back with
 * every key type and tensor intact; the real stories260K file parses with the
 * shapes its README gives; and every truncation and many corruptions of a
 * small file are refused with an error (never a crash: ASan watches in CI).
 */
#include <stdint.h>

#include "check.h"
#include "shard/gguf.h"

/* The path of a scratch file of this process, into the caller's buf (one buffer each: a
 * shared static one made two paths of one test the same file). */
#define TMP_PATH_MAX 256
static const char *tmp_path(char buf[TMP_PATH_MAX], const char *name) {
    snprintf(buf, TMP_PATH_MAX, "/tmp/shoal_test_gguf_%d_%s", (int)getpid(), name);
    return buf;
}

static void write_sample(const char *path) {
    struct shoal_gguf_writer *w = NULL;
    CHECK_OK(shoal_gguf_writer_create(&w, path));
    if (!w) return;
    CHECK_OK(shoal_gguf_set_str(w, "general.architecture", "llama"));
    CHECK_OK(shoal_gguf_set_u32(w, "llama.block_count", 2));
    CHECK_OK(shoal_gguf_set_i32(w, "test.neg", -7));
    CHECK_OK(shoal_gguf_set_u64(w, "test.big", 1ull << 40));
    CHECK_OK(shoal_gguf_set_f32(w, "test.eps", 1e-5f));
    CHECK_OK(shoal_gguf_set_bool(w, "test.flag", 1));
    const char *words[] = { "a", "", "hello world" };
    CHECK_OK(shoal_gguf_set_arr_str(w, "test.words", words, 3));
    float scores[] = { 1.5f, -2.0f, 0.25f };
    CHECK_OK(shoal_gguf_set_arr(w, "test.scores", SHOAL_GGUF_FLOAT32, scores, 3));
    int32_t ids[] = { 3, -1, 9 };
    CHECK_OK(shoal_gguf_set_arr(w, "test.ids", SHOAL_GGUF_INT32, ids, 3));
    CHECK(shoal_gguf_set_u32(w, "test.neg", 1) != SHOAL_OK, "duplicate key accepted");
    int64_t ne_a[2] = { 4, 3 }, ne_b[1] = { 64 };
    CHECK_OK(shoal_gguf_add_tensor(w, "a", SHOAL_DTYPE_F32, 2, ne_a));
    CHECK_OK(shoal_gguf_add_tensor(w, "b", SHOAL_DTYPE_Q8_0, 1, ne_b));
    int64_t bad[1] = { 33 };
    CHECK(shoal_gguf_add_tensor(w, "c", SHOAL_DTYPE_Q8_0, 1, bad) != SHOAL_OK,
          "row length off the block size accepted");
    CHECK_OK(shoal_gguf_writer_begin_data(w));
    float a[12];
    for (int i = 0; i < 12; i++) a[i] = (float)i;
    CHECK_OK(shoal_gguf_write_data(w, a, 20)); /* in two pieces */
    CHECK_OK(shoal_gguf_write_data(w, (char *)a + 20, sizeof a - 20));
    uint8_t b[68];
    for (int i = 0; i < 68; i++) b[i] = (uint8_t)i;
    CHECK_OK(shoal_gguf_write_data(w, b, sizeof b));
    CHECK_OK(shoal_gguf_writer_finish(w));
    shoal_gguf_writer_destroy(w);
}

static void test_roundtrip(void) {
    char path_buf[TMP_PATH_MAX];
    const char *path = tmp_path(path_buf, "rt.gguf");
    write_sample(path);
    struct shoal_gguf *g = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (!g) return;
    CHECK(g->version == 3, "version %d", g->version);
    uint32_t u = 0;
    CHECK_OK(shoal_gguf_get_u32(g, "llama.block_count", &u));
    CHECK(u == 2, "block_count %u", u);
    CHECK(shoal_gguf_get_u32(g, "test.neg", &u) != SHOAL_OK, "negative value read as u32");
    CHECK(shoal_gguf_get_u32(g, "missing.key", &u) != SHOAL_OK, "missing key read");
    CHECK(strstr(shoal_last_error(), "missing.key") != NULL, "message '%s' lacks the key",
          shoal_last_error());
    int64_t big = 0;
    CHECK_OK(shoal_gguf_get_i64_opt(g, "test.big", &big));
    CHECK(big == (1ll << 40), "big %lld", (long long)big);
    float eps = 0;
    CHECK_OK(shoal_gguf_get_f32_opt(g, "test.eps", &eps));
    CHECK(eps == 1e-5f, "eps %g", eps);
    int flag = 0;
    CHECK_OK(shoal_gguf_get_bool_opt(g, "test.flag", &flag));
    CHECK(flag == 1, "flag %d", flag);
    const char *s;
    size_t len;
    CHECK_OK(shoal_gguf_get_str(g, "general.architecture", &s, &len));
    CHECK(len == 5 && memcmp(s, "llama", 5) == 0, "arch %.*s", (int)len, s);
    const struct shoal_gguf_kv *kv = NULL;
    CHECK_OK(shoal_gguf_get_arr(g, "test.words", SHOAL_GGUF_STRING, &kv));
    if (kv) {
        CHECK(kv->n == 3, "n %llu", (unsigned long long)kv->n);
        shoal_gguf_arr_str(kv, 2, &s, &len);
        CHECK(len == 11 && memcmp(s, "hello world", 11) == 0, "word 2 %.*s", (int)len, s);
        shoal_gguf_arr_str(kv, 1, &s, &len);
        CHECK(len == 0, "word 1 len %zu", len);
    }
    CHECK_OK(shoal_gguf_get_arr(g, "test.scores", SHOAL_GGUF_FLOAT32, &kv));
    if (kv) CHECK(shoal_gguf_arr_f32(kv, 1) == -2.0f, "score 1");
    CHECK_OK(shoal_gguf_get_arr(g, "test.ids", SHOAL_GGUF_INT32, &kv));
    if (kv) CHECK(shoal_gguf_arr_int(kv, 1) == -1, "id 1");
    CHECK(shoal_gguf_get_arr(g, "test.scores", SHOAL_GGUF_STRING, &kv) != SHOAL_OK,
          "float array read as strings");
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, "a");
    CHECK(t && t->type == SHOAL_DTYPE_F32 && t->ne[0] == 4 && t->ne[1] == 3 && t->nbytes == 48,
          "tensor a");
    if (t) CHECK(((const float *)t->data)[11] == 11.0f, "a[11]");
    t = shoal_gguf_find_tensor(g, "b");
    CHECK(t && t->type == SHOAL_DTYPE_Q8_0 && t->nbytes == 68 && t->offset % 32 == 0, "tensor b");
    if (t) CHECK(((const uint8_t *)t->data)[67] == 67, "b[67]");

    /* copy_kv reproduces every entry byte for byte */
    char path2_buf[TMP_PATH_MAX];
    const char *path2 = tmp_path(path2_buf, "copy.gguf");
    struct shoal_gguf_writer *w = NULL;
    CHECK_OK(shoal_gguf_writer_create(&w, path2));
    for (int64_t i = 0; w && i < g->n_kv; i++) CHECK_OK(shoal_gguf_copy_kv(w, &g->kv[i]));
    if (w) CHECK_OK(shoal_gguf_writer_finish(w));
    shoal_gguf_writer_destroy(w);
    struct shoal_gguf *g2 = NULL;
    CHECK_OK(shoal_gguf_open(&g2, path2));
    if (g2) {
        CHECK(g2->n_kv == g->n_kv, "copied %lld of %lld", (long long)g2->n_kv, (long long)g->n_kv);
        CHECK_OK(shoal_gguf_get_arr(g2, "test.words", SHOAL_GGUF_STRING, &kv));
        if (kv) {
            shoal_gguf_arr_str(kv, 2, &s, &len);
            CHECK(len == 11 && memcmp(s, "hello world", 11) == 0, "copied word 2");
        }
    }
    shoal_gguf_close(g2);
    shoal_gguf_close(g);
    unlink(path2);
}

/* Every prefix of the file must be refused; no read may go past it (ASan). */
static void test_truncations(void) {
    char path_buf[TMP_PATH_MAX];
    const char *path = tmp_path(path_buf, "rt.gguf");
    FILE *f = fopen(path, "rb");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    static uint8_t buf[4096];
    size_t n = fread(buf, 1, sizeof buf, f);
    fclose(f);
    char cut_buf[TMP_PATH_MAX];
    const char *cut = tmp_path(cut_buf, "cut.gguf");
    int accepted = 0;
    for (size_t len = 0; len < n; len++) {
        f = fopen(cut, "wb");
        fwrite(buf, 1, len, f);
        fclose(f);
        struct shoal_gguf *g = NULL;
        shoal_status rc = shoal_gguf_open(&g, cut);
        if (rc == SHOAL_OK) accepted++;
        else CHECK(strstr(shoal_last_error(), cut) != NULL, "message lacks the file: %s",
                   shoal_last_error());
        shoal_gguf_close(g);
    }
    /* Only the tail padding of the last tensor may go without being noticed:
     * a file cut inside tensor data must be refused. */
    CHECK(accepted == 0, "%d truncated copies accepted", accepted);

    /* Corruptions: every byte of the header set to a few bad values. */
    size_t header = 0;
    {
        struct shoal_gguf *g = NULL;
        shoal_gguf_open(&g, path);
        if (g) header = (size_t)g->data_offset;
        shoal_gguf_close(g);
    }
    CHECK(header > 0 && header < n, "the sample's header: %zu of %zu bytes", header, n); /* else nothing below runs */
    static const uint8_t vals[] = { 0x00, 0xff, 0x7f, 0x80, 0x13 };
    int crashes_would_show_under_asan = 0;
    for (size_t i = 0; i < header; i++) {
        for (size_t v = 0; v < sizeof vals; v++) {
            uint8_t save = buf[i];
            buf[i] = vals[v];
            f = fopen(cut, "wb");
            fwrite(buf, 1, n, f);
            fclose(f);
            buf[i] = save;
            struct shoal_gguf *g = NULL;
            shoal_status rc = shoal_gguf_open(&g, cut);
            if (rc == SHOAL_OK) {
                /* Some bytes (a value, a name) can change harmlessly: then
                 * everything read through the API must still be in bounds. */
                for (int64_t k = 0; k < g->n_tensors; k++) {
                    const struct shoal_gguf_tensor *t = &g->tensors[k];
                    CHECK((const uint8_t *)t->data + t->nbytes <= g->map + g->size,
                          "tensor %s past end after flipping byte %zu", t->name, i);
                }
            } else {
                CHECK(shoal_last_error()[0] != 0, "error without a message at byte %zu", i);
            }
            shoal_gguf_close(g);
        }
    }
    (void)crashes_would_show_under_asan;
    unlink(cut);
    unlink(path);
}

static void test_messages(void) {
    char p_buf[TMP_PATH_MAX];
    const char *p = tmp_path(p_buf, "bad.gguf");
    FILE *f = fopen(p, "wb");
    fputs("GGML this is not a gguf file at all", f);
    fclose(f);
    struct shoal_gguf *g = NULL;
    CHECK(shoal_gguf_open(&g, p) == SHOAL_FORMAT, "bad magic accepted");
    CHECK(strstr(shoal_last_error(), "not a GGUF file") != NULL, "message: %s", shoal_last_error());
    uint8_t hdr[24] = { 'G', 'G', 'U', 'F', 1, 0, 0, 0 };
    f = fopen(p, "wb");
    fwrite(hdr, 1, sizeof hdr, f);
    fclose(f);
    CHECK(shoal_gguf_open(&g, p) == SHOAL_UNSUPPORTED, "version 1 accepted");
    CHECK(strstr(shoal_last_error(), "version 1") != NULL, "message: %s", shoal_last_error());
    /* absurd counts */
    uint8_t hdr2[24] = { 'G', 'G', 'U', 'F', 3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x0f };
    f = fopen(p, "wb");
    fwrite(hdr2, 1, sizeof hdr2, f);
    fclose(f);
    CHECK(shoal_gguf_open(&g, p) == SHOAL_FORMAT, "absurd tensor count accepted");
    CHECK(shoal_gguf_open(&g, "/nonexistent/x.gguf") == SHOAL_IO, "missing file");
    CHECK(strstr(shoal_last_error(), "/nonexistent/x.gguf") != NULL, "message: %s",
          shoal_last_error());
    unlink(p);
}

/* A GGUF header of n keys and n tensors (F32 [8], one block of data each) written by hand;
 * dup_key / dup_tensor: the last one named as the first. */
static void write_many(const char *path, uint64_t n, int dup_key, int dup_tensor) {
    FILE *f = fopen(path, "wb");
    if (!f) return;
    const uint32_t version = 3, u32 = 4, f32 = 0;
    fwrite("GGUF", 1, 4, f);
    fwrite(&version, 4, 1, f);
    fwrite(&n, 8, 1, f); /* tensors */
    fwrite(&n, 8, 1, f); /* keys */
    char name[32];
    uint64_t at = 16 + 8;
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t len = (uint64_t)snprintf(name, sizeof name, "key.%07llu", (unsigned long long)(dup_key && i == n - 1 ? 0 : i));
        const uint32_t v = (uint32_t)i;
        fwrite(&len, 8, 1, f), fwrite(name, 1, len, f), fwrite(&u32, 4, 1, f), fwrite(&v, 4, 1, f);
        at += 8 + len + 8;
    }
    for (uint64_t i = 0; i < n; i++) {
        const uint64_t len = (uint64_t)snprintf(name, sizeof name, "t.%07llu", (unsigned long long)(dup_tensor && i == n - 1 ? 0 : i));
        const uint32_t nd = 1;
        const uint64_t ne = 8, off = i * 32;
        fwrite(&len, 8, 1, f), fwrite(name, 1, len, f), fwrite(&nd, 4, 1, f), fwrite(&ne, 8, 1, f);
        fwrite(&f32, 4, 1, f), fwrite(&off, 8, 1, f);
        at += 8 + len + 4 + 8 + 4 + 8;
    }
    static const uint8_t zero[4096];
    for (uint64_t pad = (32 - at % 32) % 32 + n * 32; pad > 0;) { /* to the alignment, then the data */
        const size_t k = pad < sizeof zero ? (size_t)pad : sizeof zero;
        fwrite(zero, 1, k, f);
        pad -= k;
    }
    fclose(f);
}

/*
 * Many keys and tensors: their duplicate checks and lookups cost a name each
 * (pairwise, 40,000 keys took 12 s; 200,000 would take minutes), and a
 * repeated key or tensor name is still refused.
 */
static void test_many_names(void) {
    char p_buf[TMP_PATH_MAX];
    const char *p = tmp_path(p_buf, "many.gguf");
    const uint64_t n = 200000;
    write_many(p, n, 0, 0);
    struct shoal_gguf *g = NULL;
    const double t0 = shoal_now();
    CHECK_OK(shoal_gguf_open(&g, p));
    int found = 0;
    char name[32];
    for (uint64_t i = 0; g && i < n; i += 7) {
        snprintf(name, sizeof name, "t.%07llu", (unsigned long long)i);
        const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, name);
        snprintf(name, sizeof name, "key.%07llu", (unsigned long long)i);
        uint32_t v = 0;
        found += t && t->offset == i * 32 && shoal_gguf_get_u32(g, name, &v) == SHOAL_OK && v == i;
    }
    const double took = shoal_now() - t0;
    CHECK(found == (int)((n + 6) / 7), "found %d of %d", found, (int)((n + 6) / 7));
    CHECK(g && !shoal_gguf_find_tensor(g, "t.missing") && shoal_gguf_find_key(g, "key") < 0, "absent names");
    /* linear: well under a second here (measured 0.1 s); pairwise: minutes */
    CHECK(took < 10, "%llu keys and tensors opened and looked up in %.1f s", (unsigned long long)n, took);
    shoal_gguf_close(g);
    g = NULL;
    write_many(p, 1000, 1, 0);
    CHECK(shoal_gguf_open(&g, p) == SHOAL_FORMAT && strstr(shoal_last_error(), "key.0000000' appears twice"),
          "a repeated key: %s", shoal_last_error());
    write_many(p, 1000, 0, 1);
    CHECK(shoal_gguf_open(&g, p) == SHOAL_FORMAT && strstr(shoal_last_error(), "t.0000000' appears twice"),
          "a repeated tensor: %s", shoal_last_error());
    shoal_error_clear();
    unlink(p);
}

static void test_stories(void) {
    char buf[512];
    const char *path = testdata_path("stories260K.gguf", buf, sizeof buf);
    if (!path) return;
    struct shoal_gguf *g = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (!g) return;
    CHECK(g->n_tensors == 48, "%lld tensors", (long long)g->n_tensors);
    uint32_t dim = 0, heads = 0, kv = 0;
    CHECK_OK(shoal_gguf_get_u32(g, "llama.embedding_length", &dim));
    CHECK_OK(shoal_gguf_get_u32(g, "llama.attention.head_count", &heads));
    CHECK_OK(shoal_gguf_get_u32(g, "llama.attention.head_count_kv", &kv));
    CHECK(dim == 64 && heads == 8 && kv == 4, "dim %u heads %u kv %u", dim, heads, kv);
    const struct shoal_gguf_tensor *t = shoal_gguf_find_tensor(g, "blk.0.ffn_down.weight");
    CHECK(t && t->ne[0] == 172 && t->ne[1] == 64 && t->type == SHOAL_DTYPE_F32, "ffn_down");
    const struct shoal_gguf_kv *toks = NULL;
    CHECK_OK(shoal_gguf_get_arr(g, "tokenizer.ggml.tokens", SHOAL_GGUF_STRING, &toks));
    CHECK(toks && toks->n == 512, "vocab");
    shoal_gguf_close(g);
}

int main(void) {
    test_roundtrip();
    test_truncations();
    test_messages();
    test_many_names();
    test_stories();
    return check_done("test_gguf");
}
