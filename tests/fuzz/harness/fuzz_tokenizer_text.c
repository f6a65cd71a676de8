/*
 * fuzz_tokenizer_text.c — hostile text (any bytes: broken UTF-8, NULs,
 * control tokens written out, long runs) through the tokenizer against fixed
 * vocabularies: the four byte-level BPE ones of tests/tokenizer/ (gpt2,
 * llama-bpe, qwen2, smollm pre-tokenizers) and a small SentencePiece one
 * made here (control tokens, byte fallback for every byte, a few merges).
 *
 * The input: byte 0 picks the vocabulary (bits 0-2) and the call (bit 3
 * add_bos, bit 4 parse_special, bits 5-7 how many plain spans); then two
 * bytes per span (start, length), then the text.
 *
 * Properties: every id is in the vocabulary; without BOS, the pieces
 * (special tokens rendered) give the text back: byte for byte with BPE, and
 * with SPM as " " + the text with U+2581 as a space (text only: no
 * special token parsed); with BPE the streaming detokenizer's chunks join to
 * the same bytes as the pieces.
 */
#define _GNU_SOURCE /* strndup, memmem, nftw */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "runtime/tokenizer.h"
#include "shard/gguf.h"

static const char *const FILES[] = { "gpt2", "llama-bpe", "qwen2", "smollm" };
#define N_VOCABS 5 /* the four files, then the SPM one */

static struct shoal_tokenizer *toks[N_VOCABS];
static int whole_bytes[N_VOCABS]; /* every byte has a token: decoding gives the text back */

static struct shoal_tokenizer *load(const char *path) {
    struct shoal_gguf *g = NULL;
    struct shoal_tokenizer *t = NULL;
    if (shoal_gguf_open(&g, path) != SHOAL_OK || shoal_tokenizer_create(&t, g) != SHOAL_OK) {
        fprintf(stderr, "fuzz_tokenizer_text: %s\n", shoal_last_error());
        abort();
    }
    shoal_gguf_close(g);
    return t;
}

/* A small SentencePiece vocabulary: <unk> <s> </s>, a control token, the 256 byte tokens,
 * and pieces whose scores make merges. */
static void write_spm(const char *path) {
    static const char *const pieces[] = { "\xe2\x96\x81", "\xe2\x96\x81t", "he", "\xe2\x96\x81the", "in",
                                          "\xe2\x96\x81\x61", "er", "on", "\xe2\x96\x81\xe2\x96\x81", "es",
                                          "\xd0\xbf\xd1\x80", "\xe4\xb8\xad", "12", "t", "h", "e", "a", "i",
                                          "n", "r", "o", "s", "1", "2" };
    enum { N_SPECIAL = 4, N_PIECES = sizeof pieces / sizeof pieces[0], N = N_SPECIAL + 256 + N_PIECES };
    static char bytes[256][8];
    const char *tok[N];
    float score[N];
    int32_t type[N];
    const char *special[N_SPECIAL] = { "<unk>", "<s>", "</s>", "<|im_start|>" };
    for (int i = 0; i < N_SPECIAL; i++) tok[i] = special[i], score[i] = 0, type[i] = i ? 3 : 2;
    for (int b = 0; b < 256; b++) {
        snprintf(bytes[b], sizeof bytes[b], "<0x%02X>", b);
        tok[N_SPECIAL + b] = bytes[b], score[N_SPECIAL + b] = 0, type[N_SPECIAL + b] = 6;
    }
    for (int i = 0; i < N_PIECES; i++)
        tok[N_SPECIAL + 256 + i] = pieces[i], score[N_SPECIAL + 256 + i] = -(float)i, type[N_SPECIAL + 256 + i] = 1;
    struct shoal_gguf_writer *w = NULL;
    shoal_status rc = shoal_gguf_writer_create(&w, path);
    if (!rc) rc = shoal_gguf_set_str(w, "tokenizer.ggml.model", "llama");
    if (!rc) rc = shoal_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tok, N);
    if (!rc) rc = shoal_gguf_set_arr(w, "tokenizer.ggml.scores", SHOAL_GGUF_FLOAT32, score, N);
    if (!rc) rc = shoal_gguf_set_arr(w, "tokenizer.ggml.token_type", SHOAL_GGUF_INT32, type, N);
    if (!rc) rc = shoal_gguf_writer_begin_data(w);
    if (!rc) rc = shoal_gguf_writer_finish(w);
    shoal_gguf_writer_destroy(w);
    if (rc) {
        fprintf(stderr, "fuzz_tokenizer_text: %s\n", shoal_last_error());
        abort();
    }
}

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    char path[512];
    for (int i = 0; i < 4; i++) {
        snprintf(path, sizeof path, "%s/tests/tokenizer/%s.gguf", SHOAL_ROOT, FILES[i]);
        toks[i] = load(path);
    }
    snprintf(path, sizeof path, "%s/spm.gguf", fuzz_dir());
    write_spm(path);
    toks[4] = load(path);
    for (int v = 0; v < N_VOCABS; v++) {
        whole_bytes[v] = 1;
        for (int b = 0; b < 256; b++) {
            char s[8];
            int32_t *ids = NULL;
            size_t n = 0;
            s[0] = (char)b;
            /* a lone byte comes out as one or more tokens either way; what matters is that it comes out */
            if (shoal_tokenize(toks[v], s, 1, 0, 0, &ids, &n) != SHOAL_OK || n == 0) whole_bytes[v] = 0;
            free(ids);
        }
    }
    return 0;
}

/* Appends the pieces of ids to *out (render_special as asked); returns the length. */
static size_t pieces(const struct shoal_tokenizer *t, const int32_t *ids, size_t n, int render, char **out) {
    size_t len = 0, cap = 64;
    char *s = malloc(cap);
    FUZZ_CHECK(s, "malloc");
    for (size_t i = 0; i < n; i++) {
        const int pl = shoal_token_to_piece(t, ids[i], NULL, 0, render);
        FUZZ_CHECK(pl >= 0, "to_piece(%d) = %d", ids[i], pl);
        while (len + (size_t)pl + 1 > cap) s = realloc(s, cap *= 2);
        FUZZ_CHECK(s, "realloc");
        FUZZ_CHECK(shoal_token_to_piece(t, ids[i], s + len, pl, render) == pl, "to_piece(%d) changed", ids[i]);
        len += (size_t)pl;
    }
    *out = s;
    return len;
}

/* The streaming detokenizer's output for ids. */
static size_t streamed(const struct shoal_tokenizer *t, const int32_t *ids, size_t n, char **out) {
    struct shoal_detok d;
    shoal_detok_init(&d, t);
    size_t len = 0, cap = 1024;
    char *s = malloc(cap);
    FUZZ_CHECK(s, "malloc");
    for (size_t i = 0; i <= n; i++) {
        const int pl = i < n ? shoal_token_to_piece(t, ids[i], NULL, 0, 0) : 0;
        while (len + (size_t)pl + 256 > cap) s = realloc(s, cap *= 2);
        FUZZ_CHECK(s, "realloc");
        const int k = i < n ? shoal_detok_push(&d, ids[i], s + len, pl + 256) : shoal_detok_flush(&d, s + len, 256);
        FUZZ_CHECK(k >= 0 && k <= pl + 256, "detok of id %d: %d", i < n ? ids[i] : -1, k);
        len += (size_t)k;
    }
    *out = s;
    return len;
}

/* SPM's text for a text of no special tokens: a space first, U+2581 a space too. */
static size_t spm_expected(const char *text, size_t len, char *out) {
    size_t n = 0;
    if (len) out[n++] = ' ';
    for (size_t i = 0; i < len; i++) {
        if (i + 3 <= len && memcmp(text + i, "\xe2\x96\x81", 3) == 0) {
            out[n++] = ' ';
            i += 2;
        } else {
            out[n++] = text[i];
        }
    }
    return n;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t how = fuzz_u8(&in);
    const int v = (how & 7) % N_VOCABS, add_bos = (how >> 3) & 1, special = (how >> 4) & 1, n_spans = how >> 5;
    size_t spans[8][2], at = 0;
    for (int i = 0; i < n_spans; i++) { /* in order, as the chat formatter gives them */
        at += fuzz_u8(&in);
        spans[i][0] = at;
        spans[i][1] = fuzz_u8(&in);
        at += spans[i][1];
    }
    size_t len;
    char *text = fuzz_rest(&in, &len);
    const struct shoal_tokenizer *t = toks[v];
    const int n_vocab = shoal_tokenizer_n_vocab(t);
    int32_t *ids = NULL;
    size_t n = 0;
    FUZZ_CHECK(shoal_tokenize_plain(t, text, len, add_bos, special, (const size_t(*)[2])spans, n_spans, &ids, &n) ==
                   SHOAL_OK, "tokenize: %s", shoal_last_error());
    for (size_t i = 0; i < n; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d of %d", ids[i], n_vocab);
    if (!add_bos && whole_bytes[v]) {
        char *dec = NULL, *exp = NULL;
        size_t dl = pieces(t, ids, n, 1, &dec), el = len;
        if (v == 4) {
            exp = malloc(len + 1);
            FUZZ_CHECK(exp, "malloc");
            el = spm_expected(text, len, exp);
        }
        if (v < 4 || !special)
            FUZZ_CHECK(dl == el && memcmp(dec, v < 4 ? text : exp, el) == 0,
                       "vocabulary %d: %zu bytes of text decode to %zu bytes", v, el, dl);
        free(exp);
        free(dec);
    }
    if (v < 4) {
        char *a = NULL, *b = NULL;
        const size_t al = pieces(t, ids, n, 0, &a), bl = streamed(t, ids, n, &b);
        FUZZ_CHECK(al == bl && memcmp(a, b, al) == 0, "vocabulary %d: the stream (%zu bytes) is not the pieces (%zu)",
                   v, bl, al);
        free(a);
        free(b);
    }
    free(ids);
    free(text);
    return 0;
}
