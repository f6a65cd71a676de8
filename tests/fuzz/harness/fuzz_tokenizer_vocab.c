/*
 * fuzz_tokenizer_vocab.c — the tokenizer (runtime/tokenizer*.c) built from a
 * hostile vocabulary: the input becomes a small GGUF file (written with
 * shard/gguf.h's writer) whose tokenizer.ggml.* keys, tokens, token types,
 * scores, merges and special ids come from the input, then a text from the
 * input is tokenized and every id turned back into text, as a server does.
 *
 * The input (all of it optional; missing bytes read as 0):
 *   byte 0   flags: bit 0 BPE ("gpt2") else SPM ("llama"); bit 1 scores;
 *            bit 2 token types; bits 3-4 add_bos_token (absent, false,
 *            true, a u32); bit 5 add_eos_token true; bit 6
 *            add_space_prefix false; bit 7 no merges (BPE) / no pre
 *   byte 1   tokenizer.ggml.pre, an index into PRES
 *   bytes 2-5  bos, eos, unknown, eot token ids: 0xff absent, 0xfe -1,
 *            else the value (perhaps past the vocabulary)
 *   byte 6   tokenize: bit 0 add_bos, bit 1 parse_special, bits 2-7 the
 *            length of the one plain span (from byte 7)
 *   byte 7   where the plain span starts
 *   then     the tokens, NUL-terminated, up to an empty one (a token whose
 *            first byte is 1..7 has that type, 7 standing for an unknown
 *            type, and the rest as its text; its score favours longer and
 *            earlier tokens, unless its last byte is 0xf8..0xff: NaN,
 *            infinities, zeros, extremes); the merges the same way; the
 *            rest is the text.
 *
 * Properties: every id tokenize gives is in the vocabulary; the id found for
 * a token's text has that text; the streaming detokenizer takes every id
 * with the room its header promises is enough.
 */
#define _GNU_SOURCE /* strndup, memmem, nftw */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "runtime/tokenizer.h"
#include "shard/gguf.h"

#define MAX_TOKENS 1024
#define MAX_MERGES 1024

static const char *const PRES[] = { "gpt2",  "llama-bpe", "qwen2",   "smollm", "default",
                                    "llama3", "dbrx",     "stablelm2", "no-such-pre" };

static char path[128];

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    snprintf(path, sizeof path, "%s/vocab.gguf", fuzz_dir());
    return 0;
}

struct vocab {
    char *tok[MAX_TOKENS];
    int32_t type[MAX_TOKENS];
    float score[MAX_TOKENS];
    int n_tok;
    char *merge[MAX_MERGES];
    int n_merge;
};

static void vocab_free(struct vocab *v) {
    for (int i = 0; i < v->n_tok; i++) free(v->tok[i]);
    for (int i = 0; i < v->n_merge; i++) free(v->merge[i]);
}

/* Writes the vocabulary file; 0, or -1 when the writer refuses it (a finding only if it should not). */
static int write_vocab(const struct vocab *v, uint8_t flags, uint8_t pre, const uint8_t ids[4]) {
    struct shoal_gguf_writer *w = NULL;
    if (shoal_gguf_writer_create(&w, path) != SHOAL_OK) abort();
    shoal_status rc = shoal_gguf_set_str(w, "tokenizer.ggml.model", flags & 1 ? "gpt2" : "llama");
    const char *tokens[MAX_TOKENS + 1], *merges[MAX_MERGES + 1];
    for (int i = 0; i < v->n_tok; i++) tokens[i] = v->tok[i];
    for (int i = 0; i < v->n_merge; i++) merges[i] = v->merge[i];
    if (!rc) rc = shoal_gguf_set_arr_str(w, "tokenizer.ggml.tokens", tokens, (uint64_t)v->n_tok);
    if (!rc && (flags & 2)) rc = shoal_gguf_set_arr(w, "tokenizer.ggml.scores", SHOAL_GGUF_FLOAT32, v->score, (uint64_t)v->n_tok);
    if (!rc && (flags & 4)) rc = shoal_gguf_set_arr(w, "tokenizer.ggml.token_type", SHOAL_GGUF_INT32, v->type, (uint64_t)v->n_tok);
    if (!rc && !(flags & 0x80)) {
        rc = shoal_gguf_set_arr_str(w, "tokenizer.ggml.merges", merges, (uint64_t)v->n_merge);
        if (!rc) rc = shoal_gguf_set_str(w, "tokenizer.ggml.pre", PRES[pre % (sizeof PRES / sizeof PRES[0])]);
    }
    static const char *const keys[4] = { "tokenizer.ggml.bos_token_id", "tokenizer.ggml.eos_token_id",
                                         "tokenizer.ggml.unknown_token_id", "tokenizer.ggml.eot_token_id" };
    for (int k = 0; k < 4 && !rc; k++)
        if (ids[k] == 0xfe) rc = shoal_gguf_set_i32(w, keys[k], -1);
        else if (ids[k] != 0xff) rc = shoal_gguf_set_u32(w, keys[k], ids[k]);
    const int add_bos = (flags >> 3) & 3;
    if (!rc && add_bos == 1) rc = shoal_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 0);
    if (!rc && add_bos == 2) rc = shoal_gguf_set_bool(w, "tokenizer.ggml.add_bos_token", 1);
    if (!rc && add_bos == 3) rc = shoal_gguf_set_u32(w, "tokenizer.ggml.add_bos_token", 1);
    if (!rc && (flags & 0x20)) rc = shoal_gguf_set_bool(w, "tokenizer.ggml.add_eos_token", 1);
    if (!rc && (flags & 0x40)) rc = shoal_gguf_set_bool(w, "tokenizer.ggml.add_space_prefix", 0);
    if (!rc) rc = shoal_gguf_writer_begin_data(w);
    if (!rc) rc = shoal_gguf_writer_finish(w);
    shoal_gguf_writer_destroy(w);
    return rc == SHOAL_OK ? 0 : -1;
}

static void use_tokenizer(const struct shoal_tokenizer *t, const char *text, size_t len, uint8_t how,
                          uint8_t span_at) {
    const int n_vocab = shoal_tokenizer_n_vocab(t);
    /* every token's text finds a token of that text; its piece fits what to_piece says */
    char piece[512];
    for (int32_t id = 0; id < n_vocab; id++) {
        size_t tl = 0;
        const char *s = shoal_tokenizer_text(t, id, &tl);
        FUZZ_CHECK(s != NULL, "id %d has no text", id);
        if (tl) {
            const int32_t f = shoal_tokenizer_find(t, s, tl);
            size_t fl = 0;
            const char *fs = f >= 0 ? shoal_tokenizer_text(t, f, &fl) : NULL;
            FUZZ_CHECK(fs && fl == tl && memcmp(fs, s, tl) == 0, "token %d's text finds %d", id, f);
        }
        const int pl = shoal_token_to_piece(t, id, piece, 4, id & 1);
        FUZZ_CHECK(pl >= 0, "token %d: to_piece %d", id, pl);
        (void)shoal_tokenizer_is_eog(t, id);
    }
    FUZZ_CHECK(shoal_token_to_piece(t, n_vocab, piece, sizeof piece, 1) == -1, "id past the vocabulary");
    FUZZ_CHECK(shoal_token_to_piece(t, -1, piece, sizeof piece, 1) == -1, "id -1");

    const size_t span[1][2] = { { span_at, (size_t)(how >> 2) * 4 } };
    int32_t *ids = NULL;
    size_t n = 0;
    shoal_status rc = shoal_tokenize_plain(t, text, len, how & 1, how & 2, span, how >> 2 ? 1 : 0, &ids, &n);
    FUZZ_CHECK(rc == SHOAL_OK, "tokenize: %s", shoal_last_error());
    struct shoal_detok d;
    shoal_detok_init(&d, t);
    for (size_t i = 0; i < n; i++) {
        FUZZ_CHECK(ids[i] >= 0 && ids[i] < n_vocab, "id %d of %d", ids[i], n_vocab);
        const int pl = shoal_token_to_piece(t, ids[i], NULL, 0, 0);
        char *out = malloc((size_t)pl + 256);
        FUZZ_CHECK(out, "malloc");
        const int k = shoal_detok_push(&d, ids[i], out, pl + 256);
        FUZZ_CHECK(k >= 0 && k <= pl + 256, "detok_push of %d: %d", ids[i], k);
        free(out);
    }
    char tail[16];
    FUZZ_CHECK(shoal_detok_flush(&d, tail, sizeof tail) >= 0, "detok_flush");
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t flags = fuzz_u8(&in), pre = fuzz_u8(&in);
    uint8_t ids[4];
    for (int k = 0; k < 4; k++) ids[k] = fuzz_u8(&in);
    const uint8_t how = fuzz_u8(&in), span_at = fuzz_u8(&in);
    static struct vocab v;
    memset(&v, 0, sizeof v);
    char *s;
    size_t len;
    while (v.n_tok < MAX_TOKENS && (s = fuzz_field(&in, &len))) {
        if (!len) {
            free(s);
            break;
        }
        int type = 1;
        if (s[0] >= 1 && s[0] <= 7) {
            type = s[0] == 7 ? 9 : s[0];
            memmove(s, s + 1, len--);
        }
        v.type[v.n_tok] = type;
        /* longer texts first, then earlier; a token ending in a byte 0xf8..0xff has an odd score */
        static const float odd[8] = { NAN, INFINITY, -INFINITY, 0.0f, -0.0f, 3e38f, -3e38f, 1e-45f };
        const unsigned char last = len ? (unsigned char)s[len - 1] : 0;
        v.score[v.n_tok] = last >= 0xf8 ? odd[last & 7] : (float)((int)len * 3 - v.n_tok) / 8;
        v.tok[v.n_tok++] = s;
    }
    while (v.n_merge < MAX_MERGES && (s = fuzz_field(&in, &len))) {
        if (!len) {
            free(s);
            break;
        }
        v.merge[v.n_merge++] = s;
    }
    char *text = fuzz_rest(&in, &len);
    if (write_vocab(&v, flags, pre, ids) == 0) {
        struct shoal_gguf *g = NULL;
        FUZZ_CHECK(shoal_gguf_open(&g, path) == SHOAL_OK, "the writer's file does not open: %s", shoal_last_error());
        struct shoal_tokenizer *t = NULL;
        if (shoal_tokenizer_create(&t, g) == SHOAL_OK) {
            shoal_gguf_close(g); /* the tokenizer keeps no pointer into the file */
            g = NULL;
            use_tokenizer(t, text, len, how, span_at);
            shoal_tokenizer_destroy(t);
        }
        shoal_gguf_close(g);
    }
    free(text);
    vocab_free(&v);
    return 0;
}
