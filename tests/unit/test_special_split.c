/*
 * test_special_split — how the tokenizer cuts special tokens out of text
 * (issue 19: a vocabulary's thousands of special tokens each took a pass
 * over a request's text, and a text dense with them cost seconds a request).
 *
 * A vocabulary of its own (SentencePiece, byte fallback, thousands of
 * control and user-defined tokens, some texts inside others, runs of one
 * character as Gemma's "\n\n\n" are) against a plain reference of
 * llama.cpp's rule written here: longest token first, each token's every
 * occurrence, leftmost and not overlapping, in what is still raw text;
 * control tokens only when special tokens are parsed. Then the cost: a text
 * made of the vocabulary's special tokens must tokenize in about the time
 * text without them takes (the old splitting took 20 times as long).
 */
#define _GNU_SOURCE /* strdup, clock_gettime */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "runtime/tokenizer.h"
#include "shard/gguf.h"

enum { N_USER = 3000, N_CONTROL = 3000, N_RUNS = 6, N_OVERLAP = 3 };
enum { FIRST = 3 + 256 }; /* <unk> <s> </s>, the 256 bytes, then the special tokens */

#define N_ALL (FIRST + N_USER + N_CONTROL + 2 * N_RUNS + N_OVERLAP)
static char *texts[N_ALL];
static int32_t types[N_ALL];
static int n_tok;

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void add(const char *text, int type) {
    texts[n_tok] = strdup(text);
    types[n_tok++] = type;
}

/* The vocabulary as a GGUF file at path. */
static void write_vocab(const char *path) {
    char buf[64];
    add("<unk>", 2);
    add("<s>", 3);
    add("</s>", 3);
    for (int b = 0; b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        add(buf, 6);
    }
    for (int i = 0; i < N_USER; i++) {
        snprintf(buf, sizeof buf, "<u%d>", i);
        add(buf, 4);
    }
    for (int i = 0; i < N_CONTROL; i++) {
        snprintf(buf, sizeof buf, i % 2 ? "<c%d>" : "<u%d", i); /* "<u12" is the start of "<u12>" and "<u123>" */
        add(buf, 3);
    }
    for (int k = 1; k <= N_RUNS; k++) { /* "\n" .. "\n\n\n\n\n\n" and "ab" .. "abababababab" */
        memset(buf, '\n', (size_t)k);
        buf[k] = 0;
        add(buf, 4);
        for (int j = 0; j < k; j++) memcpy(buf + 2 * j, "ab", 2);
        buf[2 * k] = 0;
        add(buf, k % 2 ? 4 : 3);
    }
    /* of one length, overlapping: the lower id's occurrences are all taken first ("yxyxy" is y [xyx] y); a
       longer one taken first may cover a shorter one's last byte alone ("xyxy" in "yxyxy") */
    add("xyx", 4);
    add("yxy", 4);
    add("xyxy", 3);
    struct shoal_gguf_writer *w = NULL;
    CHECK_OK(shoal_gguf_writer_create(&w, path));
    if (!w) return;
    CHECK_OK(shoal_gguf_set_str(w, "tokenizer.ggml.model", "llama"));
    CHECK_OK(shoal_gguf_set_arr_str(w, "tokenizer.ggml.tokens", (const char *const *)texts, (uint64_t)n_tok));
    float *scores = calloc((size_t)n_tok, sizeof *scores);
    CHECK_OK(shoal_gguf_set_arr(w, "tokenizer.ggml.scores", SHOAL_GGUF_FLOAT32, scores, (uint64_t)n_tok));
    free(scores);
    CHECK_OK(shoal_gguf_set_arr(w, "tokenizer.ggml.token_type", SHOAL_GGUF_INT32, types, (uint64_t)n_tok));
    CHECK_OK(shoal_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", 1));
    CHECK_OK(shoal_gguf_set_u32(w, "tokenizer.ggml.eos_token_id", 2));
    CHECK_OK(shoal_gguf_writer_begin_data(w));
    CHECK_OK(shoal_gguf_writer_finish(w));
    shoal_gguf_writer_destroy(w);
}

/*
 * The reference: the special ids llama.cpp's rule finds in text, in order,
 * written as plainly as it reads (a pass per token over a map of what is
 * taken). out: at most cap ids; returns their count.
 */
static size_t reference(const char *text, size_t len, int parse_special, int32_t *out, size_t cap) {
    int32_t *at = malloc(len * sizeof *at); /* the token that covers each byte, or -1 */
    for (size_t i = 0; i < len; i++) at[i] = -1;
    size_t max_len = 0;
    for (int id = FIRST; id < n_tok; id++)
        if (strlen(texts[id]) > max_len) max_len = strlen(texts[id]);
    for (size_t l = max_len; l >= 1; l--)
        for (int id = FIRST; id < n_tok; id++) {
            if (strlen(texts[id]) != l || (types[id] == 3 && !parse_special)) continue;
            for (size_t p = 0; p + l <= len;) {
                int free_run = memcmp(text + p, texts[id], l) == 0;
                for (size_t j = 0; free_run && j < l; j++) free_run = at[p + j] < 0;
                if (!free_run) {
                    p++;
                    continue;
                }
                for (size_t j = 0; j < l; j++) at[p + j] = id;
                p += l;
            }
        }
    size_t n = 0;
    for (size_t i = 0; i < len; i++) /* the first byte a token covers is where it starts */
        if (at[i] >= 0) {
            if (n < cap) out[n] = at[i];
            n++;
            i += strlen(texts[at[i]]) - 1;
        }
    free(at);
    return n;
}

/* The special ids (>= FIRST) among the tokenizer's ids, in order. */
static size_t specials_of(const int32_t *ids, size_t n, int32_t *out) {
    size_t k = 0;
    for (size_t i = 0; i < n; i++)
        if (ids[i] >= FIRST) out[k++] = ids[i];
    return k;
}

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static uint32_t next(void) {
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)rng;
}

/* Random texts of special tokens, pieces of them and filler: the tokenizer's split against the reference's. */
static void test_against_reference(struct shoal_tokenizer *t) {
    static const char filler[] = "<>\nab u1xyxy";
    char text[2048];
    int32_t want[2048], got[2048];
    for (int iter = 0; iter < 1500; iter++) {
        size_t len = 0;
        for (int parts = 1 + (int)(next() % 30); parts-- > 0 && len < 1900;) {
            if (next() % 2) {
                const char *s = texts[FIRST + next() % (uint32_t)(n_tok - FIRST)];
                size_t l = strlen(s), a = next() % 3 ? 0 : next() % l;
                memcpy(text + len, s + a, l - a);
                len += l - a;
            } else {
                for (int k = (int)(next() % 6); k-- > 0;) text[len++] = filler[next() % (sizeof filler - 1)];
            }
        }
        const int parse_special = (int)(next() % 2);
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(shoal_tokenize(t, text, len, 0, parse_special, &ids, &n));
        size_t nw = reference(text, len, parse_special, want, 2048), ng = ids ? specials_of(ids, n, got) : 0;
        free(ids);
        int same = nw == ng && memcmp(want, got, nw * sizeof *want) == 0;
        CHECK(same, "text %d (%zu bytes, parse_special %d): %zu special tokens, the reference finds %zu", iter, len,
              parse_special, ng, nw);
        if (!same) return;
    }
}

/* Seconds to tokenize text (the least of three tries), or -1. */
static double time_tokenize(struct shoal_tokenizer *t, const char *text, size_t len, size_t *n_ids) {
    double best = -1;
    for (int i = 0; i < 3; i++) {
        int32_t *ids = NULL;
        double t0 = now();
        shoal_status rc = shoal_tokenize(t, text, len, 0, 1, &ids, n_ids);
        double dt = now() - t0;
        free(ids);
        CHECK(rc == SHOAL_OK, "tokenizing %zu bytes: %s", len, shoal_last_error());
        if (rc == SHOAL_OK && (best < 0 || dt < best)) best = dt;
    }
    return best;
}

/* Every special token of the vocabulary, over and over, against as many bytes with none. */
static void test_cost(struct shoal_tokenizer *t) {
    const size_t cap = 1 << 20;
    char *dense = malloc(cap), *plain = malloc(cap);
    size_t len = 0;
    for (int id = FIRST; len + 16 < cap; id = id + 1 < n_tok ? id + 1 : FIRST) {
        size_t l = strlen(texts[id]);
        memcpy(dense + len, texts[id], l);
        len += l;
        dense[len++] = ' ';
    }
    for (size_t i = 0; i < len; i++) plain[i] = "xyz. "[i % 5];
    size_t n_dense = 0, n_plain = 0;
    double td = time_tokenize(t, dense, len, &n_dense), tp = time_tokenize(t, plain, len, &n_plain);
    printf("%zu bytes: %zu ids with %d special tokens in %.3f s; %zu ids without in %.3f s\n", len, n_dense,
           n_tok - FIRST, td, n_plain, tp);
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
    printf("(the cost's bound is not checked under a sanitizer: it slows the two texts unevenly)\n");
#else
    CHECK(td <= 4 * tp + 0.05, "a text of special tokens took %.3f s, %.1fx the %.3f s of as much text without",
          td, td / tp, tp);
#endif
    free(dense);
    free(plain);
}

int main(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/shoal_test_special_%d.gguf", (int)getpid());
    write_vocab(path);
    struct shoal_gguf *g = NULL;
    struct shoal_tokenizer *t = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (g) CHECK_OK(shoal_tokenizer_create(&t, g));
    unlink(path);
    if (t) {
        test_against_reference(t);
        test_cost(t);
    }
    shoal_tokenizer_destroy(t);
    shoal_gguf_close(g);
    for (int i = 0; i < n_tok; i++) free(texts[i]);
    return check_done("test_special_split");
}
