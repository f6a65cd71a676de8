/*
 * tokenizer.c — the vocabulary read from GGUF (texts, scores, types, a hash
 * index of ids by text, BPE merges), the special-token rules (which ids are
 * BOS/EOS/end of generation, splitting literal special tokens out of the
 * text), token_to_piece and the streaming detokenizer.
 *
 * The merging itself lives in tokenizer_spm.c and tokenizer_bpe.c. The rules
 * follow llama.cpp's llama-vocab.cpp (read to learn them; no code is
 * copied): where shoal differs, a comment says so.
 */
#define _GNU_SOURCE /* memmem */
#include "tokenizer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

#define TOK_LOG "tokenizer"

/* ----------------------------------------------------------------- tables */

/* The power of two at least n (and 16); 0 when that is past 2^31 (the doubling would
 * wrap to 0 and loop for ever): the caller refuses the vocabulary. */
static uint32_t pow2_at_least(uint64_t n) {
    if (n > (1u << 31)) return 0;
    uint32_t p = 16;
    while (p < n) p <<= 1;
    return p;
}

int32_t shoal_tok_find(const struct shoal_tokenizer *t, const char *s, size_t len) {
    if (len == 0) return -1;
    uint32_t i = shoal_tok_hash(s, len) & t->index_mask;
    for (;;) {
        int32_t id = t->index[i];
        if (id < 0) return -1;
        const struct tok_entry *e = &t->tok[id];
        if (e->text_len == len && memcmp(t->text + e->text_off, s, len) == 0) return id;
        i = (i + 1) & t->index_mask;
    }
}

static uint32_t pair_hash(int32_t a, int32_t b) { /* seeded: see shoal_tok_hash */
    return (uint32_t)shoal_hash_u64((uint64_t)(uint32_t)a << 32 | (uint32_t)b);
}

const struct tok_merge *shoal_tok_merge_find(const struct shoal_tokenizer *t, int32_t left,
                                             int32_t right) {
    if (!t->merges || left < 0 || right < 0) return NULL;
    uint32_t i = pair_hash(left, right) & t->merge_mask;
    for (;;) {
        const struct tok_merge *m = &t->merges[i];
        if (m->left < 0) return NULL;
        if (m->left == left && m->right == right) return m;
        i = (i + 1) & t->merge_mask;
    }
}

shoal_status shoal_tok_heap_push(struct tok_heap *h, const void *item) {
    if (h->n == h->cap) {
        size_t cap = h->cap ? h->cap * 2 : 256;
        char *v = realloc(h->v, cap * h->size);
        if (!v) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu merge candidates", cap);
        h->v = v;
        h->cap = cap;
    }
    size_t i = h->n++;
    while (i > 0) { /* sift up */
        size_t up = (i - 1) / 2;
        if (!h->before(item, h->v + up * h->size)) break;
        memcpy(h->v + i * h->size, h->v + up * h->size, h->size);
        i = up;
    }
    memcpy(h->v + i * h->size, item, h->size);
    return SHOAL_OK;
}

void shoal_tok_heap_pop(struct tok_heap *h, void *out) {
    memcpy(out, h->v, h->size);
    const char *last = h->v + --h->n * h->size;
    size_t i = 0;
    for (;;) { /* sift the last item down from the top */
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && h->before(h->v + (c + 1) * h->size, h->v + c * h->size)) c++;
        if (!h->before(h->v + c * h->size, last)) break;
        memcpy(h->v + i * h->size, h->v + c * h->size, h->size);
        i = c;
    }
    if (h->n > 0) memcpy(h->v + i * h->size, last, h->size);
}

void shoal_tok_heap_free(struct tok_heap *h) {
    free(h->v);
    h->v = NULL;
    h->n = h->cap = 0;
}

shoal_status shoal_tok_ids_push(struct tok_ids *ids, int32_t id) {
    if (ids->n == ids->cap) {
        size_t cap = ids->cap ? ids->cap * 2 : 64;
        int32_t *v = realloc(ids->v, cap * sizeof *v);
        if (!v) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu token ids", cap);
        ids->v = v;
        ids->cap = cap;
    }
    ids->v[ids->n++] = id;
    return SHOAL_OK;
}

/* ------------------------------------------------------------ GGUF reading */

/* Texts that end a turn in the chat formats llama.cpp knows (its EOG list). */
static const char *const eog_texts[] = {
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "</s>",
    "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<eos>", "<end_of_utterance>",
    "<\xef\xbd\x9c" "end\xe2\x96\x81" "of\xe2\x96\x81" "sentence\xef\xbd\x9c>", /* DeepSeek */
};

/* A special token id key: absent leaves *id alone; -1 (or its u32 form) is "none". */
static shoal_status read_special_id(const struct shoal_gguf *g, const char *key, int32_t n_vocab,
                                    int32_t *id) {
    int64_t v = INT64_MIN;
    SHOAL_TRY(shoal_gguf_get_i64_opt(g, key, &v));
    if (v == INT64_MIN) return SHOAL_OK;
    if (v == -1 || v == 0xFFFFFFFFll) {
        *id = -1;
        return SHOAL_OK;
    }
    if (v < 0 || v >= n_vocab)
        return shoal_errorf(SHOAL_FORMAT, "%s: %s = %lld is out of range (the vocabulary has %d tokens)",
                            g->path, key, (long long)v, n_vocab);
    *id = (int32_t)v;
    return SHOAL_OK;
}

/* tokenizer.ggml.pre -> pre-tokenizer; sets ignore_merges and the add_bos default. */
static void choose_pre(struct shoal_tokenizer *t, const char *pre, size_t len, const char *path,
                       int *add_bos_default) {
    static const struct { const char *name; enum tok_pre pre; int ignore_merges, add_bos; } names[] = {
        /* llama.cpp's "default" is a cascade of four regexes used by old
           conversions; shoal treats it as GPT-2's, the one such files meant. */
        { "default", TOK_PRE_GPT2, 0, 0 },      { "gpt2", TOK_PRE_GPT2, 0, 0 },
        { "gpt-2", TOK_PRE_GPT2, 0, 0 },        { "phi-2", TOK_PRE_GPT2, 0, 0 },
        { "mpt", TOK_PRE_GPT2, 0, 0 },          { "olmo", TOK_PRE_GPT2, 0, 0 },
        { "jais", TOK_PRE_GPT2, 0, 0 },         { "llama3", TOK_PRE_LLAMA3, 1, 1 },
        { "llama-v3", TOK_PRE_LLAMA3, 1, 1 },   { "llama-bpe", TOK_PRE_LLAMA3, 1, 1 },
        { "falcon3", TOK_PRE_LLAMA3, 1, 1 },    { "pixtral", TOK_PRE_LLAMA3, 1, 1 },
        { "dbrx", TOK_PRE_LLAMA3, 0, 0 },       { "smaug-bpe", TOK_PRE_LLAMA3, 0, 0 },
        { "chatglm-bpe", TOK_PRE_LLAMA3, 0, 0 },{ "qwen2", TOK_PRE_QWEN2, 0, 0 },
        { "deepseek-r1-qwen", TOK_PRE_QWEN2, 0, 0 }, { "stablelm2", TOK_PRE_QWEN2, 0, 0 },
        { "megrez", TOK_PRE_QWEN2, 0, 0 },      { "hunyuan", TOK_PRE_QWEN2, 0, 0 },
        { "smollm", TOK_PRE_SMOLLM, 0, 0 },     { "starcoder", TOK_PRE_SMOLLM, 0, 0 },
        { "refact", TOK_PRE_SMOLLM, 0, 0 },     { "command-r", TOK_PRE_SMOLLM, 0, 0 },
        { "codeshell", TOK_PRE_SMOLLM, 0, 0 },  { "exaone", TOK_PRE_SMOLLM, 0, 0 },
        { "minerva-7b", TOK_PRE_SMOLLM, 0, 0 },
    };
    t->pre = TOK_PRE_GPT2;
    *add_bos_default = 0;
    if (!pre) {
        SHOAL_LOGW(TOK_LOG, "%s: no tokenizer.ggml.pre; using the GPT-2 pre-tokenizer", path);
        return;
    }
    for (size_t i = 0; i < sizeof names / sizeof names[0]; i++) {
        if (strlen(names[i].name) == len && memcmp(names[i].name, pre, len) == 0) {
            t->pre = names[i].pre;
            t->ignore_merges = names[i].ignore_merges;
            *add_bos_default = names[i].add_bos;
            return;
        }
    }
    SHOAL_LOGW(TOK_LOG, "%s: unknown pre-tokenizer '%.*s'; using GPT-2's (tokens may differ from "
               "the model's own tokenizer)", path, (int)(len > 64 ? 64 : len), pre);
}

/* Parses "<0xNN>" into a byte; -1 if text is not of that form. */
static int parse_byte_token(const char *s, size_t len) {
    if (len != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return -1;
    int v = 0;
    for (int i = 3; i < 5; i++) {
        int c = (unsigned char)s[i], d;
        if (c >= '0' && c <= '9') d = c - '0';
        else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
        else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
        else return -1;
        v = v * 16 + d;
    }
    return v;
}

/* Writes the piece of token e (text s) into out (room for len bytes); returns its length. */
static uint32_t make_piece(const struct shoal_tokenizer *t, const struct tok_entry *e,
                           const char *s, char *out) {
    uint32_t len = e->text_len, n = 0;
    switch (e->type) {
    case TOK_TYPE_CONTROL:
    case TOK_TYPE_UNKNOWN:
    case TOK_TYPE_USER_DEFINED:
        memcpy(out, s, len);
        return len;
    case TOK_TYPE_BYTE: {
        int b = parse_byte_token(s, len);
        if (b < 0) {
            memcpy(out, s, len);
            return len;
        }
        out[0] = (char)b;
        return 1;
    }
    case TOK_TYPE_NORMAL:
        if (t->kind == TOK_SPM) {
            for (uint32_t i = 0; i < len;) {
                if (i + 3 <= len && memcmp(s + i, "\xe2\x96\x81", 3) == 0) {
                    out[n++] = ' ';
                    i += 3;
                } else {
                    out[n++] = s[i++];
                }
            }
            return n;
        }
        /* Byte-level BPE: each code point stands for one byte. A code point
           outside the map (not in a well-formed vocabulary) is kept as it is;
           llama.cpp writes "[UNK_BYTE_0x..]" there instead. */
        for (uint32_t i = 0; i < len;) {
            int l;
            uint32_t cp = shoal_utf8_decode((const unsigned char *)s + i, len - i, &l);
            int b = cp == SHOAL_UC_INVALID ? -1 : shoal_tok_bpe_cp_byte(cp);
            if (b >= 0) out[n++] = (char)b;
            else {
                memcpy(out + n, s + i, (size_t)l);
                n += (uint32_t)l;
            }
            i += (uint32_t)l;
        }
        return n;
    default: /* unused and undefined tokens decode to nothing, as in llama.cpp */
        return 0;
    }
}

static int cmp_special(const void *a, const void *b, void *ctx) {
    const struct shoal_tokenizer *t = ctx;
    int32_t x = *(const int32_t *)a, y = *(const int32_t *)b;
    uint32_t lx = t->tok[x].text_len, ly = t->tok[y].text_len;
    if (lx != ly) return lx > ly ? -1 : 1;
    return x < y ? -1 : x > y;
}

/* Reads the vocabulary arrays into t (one block), builds the index. */
static shoal_status load_vocab(struct shoal_tokenizer *t, const struct shoal_gguf *g,
                               const struct shoal_gguf_kv *tokens, const struct shoal_gguf_kv *merges) {
    uint64_t n = tokens->n;
    if (n == 0 || n > INT32_MAX / 4)
        return shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.tokens has %llu entries", g->path,
                            (unsigned long long)n);
    t->n_vocab = (int32_t)n;

    const struct shoal_gguf_kv *scores = shoal_gguf_get(g, "tokenizer.ggml.scores");
    const struct shoal_gguf_kv *types = shoal_gguf_get(g, "tokenizer.ggml.token_type");
    if (scores && (scores->type != SHOAL_GGUF_ARRAY ||
                   (scores->arr_type != SHOAL_GGUF_FLOAT32 && scores->arr_type != SHOAL_GGUF_INT32)))
        return shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.scores is not an array of float32",
                            g->path);
    if (scores && scores->n != n)
        return shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.scores has %llu entries for %llu tokens",
                            g->path, (unsigned long long)scores->n, (unsigned long long)n);
    if (types && (types->type != SHOAL_GGUF_ARRAY || types->arr_type == SHOAL_GGUF_STRING ||
                  types->arr_type == SHOAL_GGUF_FLOAT32 || types->arr_type == SHOAL_GGUF_FLOAT64 ||
                  types->arr_type == SHOAL_GGUF_BOOL || types->arr_type == SHOAL_GGUF_ARRAY))
        return shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.token_type is not an array of integers",
                            g->path);
    if (types && types->n != n)
        return shoal_errorf(SHOAL_FORMAT,
                            "%s: tokenizer.ggml.token_type has %llu entries for %llu tokens", g->path,
                            (unsigned long long)types->n, (unsigned long long)n);

    /* Sizes first, then one block carved in order of alignment. */
    uint64_t text_bytes = 0;
    for (uint64_t i = 0; i < n; i++) {
        const char *s;
        size_t len;
        shoal_gguf_arr_str(tokens, i, &s, &len);
        text_bytes += len;
    }
    if (text_bytes > UINT32_MAX / 2)
        return shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.tokens holds %llu bytes of text",
                            g->path, (unsigned long long)text_bytes);
    uint32_t index_size = pow2_at_least(n * 2);
    uint32_t merge_size = merges ? pow2_at_least(merges->n * 2 + 1) : 0;
    if (!index_size || (merges && !merge_size))
        return shoal_errorf(SHOAL_FORMAT, "%s: %llu tokens and %llu merges: more than a tokenizer takes (at most 2^30 "
                            "of each)", g->path, (unsigned long long)n, (unsigned long long)(merges ? merges->n : 0));
    size_t bytes = n * sizeof(struct tok_entry) + (size_t)merge_size * sizeof(struct tok_merge) +
                   (size_t)index_size * sizeof(int32_t) + n * sizeof(int32_t) + 2 * text_bytes + 2;
    char *block = malloc(bytes);
    if (!block)
        return shoal_errorf(SHOAL_NOMEM, "%s: out of memory for a vocabulary of %llu tokens (%zu bytes)",
                            g->path, (unsigned long long)n, bytes);
    t->tok = (struct tok_entry *)block;
    block += n * sizeof(struct tok_entry);
    t->merges = merge_size ? (struct tok_merge *)block : NULL;
    t->merge_mask = merge_size ? merge_size - 1 : 0;
    block += (size_t)merge_size * sizeof(struct tok_merge);
    t->index = (int32_t *)block;
    t->index_mask = index_size - 1;
    block += (size_t)index_size * sizeof(int32_t);
    t->special = (int32_t *)block;
    block += n * sizeof(int32_t);
    t->text = block;
    t->pieces = block + text_bytes + 1;

    memset(t->index, 0xFF, (size_t)index_size * sizeof(int32_t));
    uint32_t off = 0, n_dup = 0;
    for (uint64_t i = 0; i < n; i++) {
        struct tok_entry *e = &t->tok[i];
        const char *s;
        size_t len;
        shoal_gguf_arr_str(tokens, i, &s, &len);
        memcpy(t->text + off, s, len);
        e->text_off = off;
        e->text_len = (uint32_t)len;
        off += (uint32_t)len;
        e->score = !scores ? 0.0f
                   : scores->arr_type == SHOAL_GGUF_FLOAT32 ? shoal_gguf_arr_f32(scores, i)
                                                            : (float)shoal_gguf_arr_int(scores, i);
        int64_t ty = types ? shoal_gguf_arr_int(types, i) : TOK_TYPE_NORMAL;
        e->type = ty >= TOK_TYPE_NORMAL && ty <= TOK_TYPE_BYTE ? (uint8_t)ty : TOK_TYPE_UNDEFINED;
        e->eog = 0;
        if (len == 0) continue; /* an empty token can never be produced by encoding */
        /* A duplicate text keeps its first id (llama.cpp now refuses such files). */
        uint32_t h = shoal_tok_hash(s, len) & t->index_mask;
        int dup = 0;
        while (t->index[h] >= 0) {
            const struct tok_entry *o = &t->tok[t->index[h]];
            if (o->text_len == len && memcmp(t->text + o->text_off, s, len) == 0) {
                dup = 1;
                break;
            }
            h = (h + 1) & t->index_mask;
        }
        if (dup) n_dup++;
        else t->index[h] = (int32_t)i;
    }
    if (n_dup)
        SHOAL_LOGW(TOK_LOG, "%s: %u duplicate token texts in tokenizer.ggml.tokens (the first id is used)",
                   g->path, n_dup);

    if (merges) {
        for (uint32_t i = 0; i < merge_size; i++) t->merges[i].left = -1;
        uint64_t n_bad = 0;
        for (uint64_t r = 0; r < merges->n; r++) {
            const char *s;
            size_t len;
            shoal_gguf_arr_str(merges, r, &s, &len);
            /* "left right": the first space at index 1 or later splits it */
            const char *sp = len > 1 ? memchr(s + 1, ' ', len - 1) : NULL;
            if (!sp) {
                n_bad++;
                continue;
            }
            size_t ll = (size_t)(sp - s), rl = len - ll - 1;
            int32_t a = shoal_tok_find(t, s, ll), b = shoal_tok_find(t, sp + 1, rl);
            /* the merged text must be a token too; the left and right texts
               are adjacent in the merge string but not in the token arena */
            char small[256], *buf = small;
            int32_t res = -1;
            if (a >= 0 && b >= 0) {
                if (ll + rl > sizeof small && !(buf = malloc(ll + rl)))
                    return shoal_errorf(SHOAL_NOMEM, "%s: out of memory reading merges", g->path);
                memcpy(buf, s, ll);
                memcpy(buf + ll, sp + 1, rl);
                res = shoal_tok_find(t, buf, ll + rl);
                if (buf != small) free(buf);
            }
            if (res < 0) {
                n_bad++;
                continue;
            }
            uint32_t h = pair_hash(a, b) & t->merge_mask;
            while (t->merges[h].left >= 0 && !(t->merges[h].left == a && t->merges[h].right == b))
                h = (h + 1) & t->merge_mask;
            if (t->merges[h].left >= 0) continue; /* a repeated pair keeps its first rank */
            t->merges[h] = (struct tok_merge){ a, b, (int32_t)r, res };
        }
        if (n_bad)
            SHOAL_LOGW(TOK_LOG, "%s: %llu of %llu merges name texts that are not tokens; ignored",
                       g->path, (unsigned long long)n_bad, (unsigned long long)merges->n);
    }
    return SHOAL_OK;
}

/* Marks end-of-generation tokens, builds pieces, the byte table and the special list. */
static void finish_vocab(struct shoal_tokenizer *t) {
    for (size_t i = 0; i < sizeof eog_texts / sizeof eog_texts[0]; i++) {
        int32_t id = shoal_tok_find(t, eog_texts[i], strlen(eog_texts[i]));
        if (id < 0) continue;
        t->tok[id].eog = 1;
        /* as llama.cpp: an end-of-turn marker is a control token whatever the file says */
        if (t->tok[id].type != TOK_TYPE_CONTROL) t->tok[id].type = TOK_TYPE_CONTROL;
    }
    int32_t eog_ids[3] = { t->eos, t->eot, t->eom };
    for (int i = 0; i < 3; i++)
        if (eog_ids[i] >= 0) t->tok[eog_ids[i]].eog = 1;

    uint32_t off = 0;
    t->n_special = 0;
    for (int32_t i = 0; i < t->n_vocab; i++) {
        struct tok_entry *e = &t->tok[i];
        e->piece_off = off;
        e->piece_len = make_piece(t, e, t->text + e->text_off, t->pieces + off);
        off += e->piece_len;
        if (e->text_len > 0 && (e->type == TOK_TYPE_CONTROL || e->type == TOK_TYPE_USER_DEFINED ||
                                e->type == TOK_TYPE_UNKNOWN))
            t->special[t->n_special++] = i;
    }
    qsort_r(t->special, (size_t)t->n_special, sizeof(int32_t), cmp_special, t);

    for (int b = 0; b < 256; b++) {
        char buf[8];
        int32_t id;
        if (t->kind == TOK_SPM) {
            snprintf(buf, sizeof buf, "<0x%02X>", b);
            id = shoal_tok_find(t, buf, 6);
            if (id < 0) {
                buf[0] = (char)b;
                id = shoal_tok_find(t, buf, 1);
            }
        } else {
            int l = shoal_utf8_encode(shoal_tok_bpe_byte_cp((unsigned)b), buf);
            id = shoal_tok_find(t, buf, (size_t)l);
        }
        t->byte_tok[b] = id;
    }
}

shoal_status shoal_tokenizer_create(struct shoal_tokenizer **out, const struct shoal_gguf *g) {
    if (!out || !g) return shoal_errorf(SHOAL_INVALID, "shoal_tokenizer_create: NULL argument");
    *out = NULL;
    shoal_status rc = SHOAL_OK;
    struct shoal_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return shoal_errorf(SHOAL_NOMEM, "%s: out of memory for the tokenizer", g->path);
    t->bos = t->eos = t->unk = t->pad = t->eot = t->eom = -1;

    const char *model = NULL;
    size_t model_len = 0;
    SHOAL_TRY_GOTO(shoal_gguf_get_str_opt(g, "tokenizer.ggml.model", &model, &model_len), rc, fail);
    if (!model) {
        rc = shoal_errorf(SHOAL_FORMAT, "%s: no tokenizer.ggml.model key: the file carries no tokenizer",
                          g->path);
        goto fail;
    }
    if (model_len == 5 && memcmp(model, "llama", 5) == 0) t->kind = TOK_SPM;
    else if (model_len == 4 && memcmp(model, "gpt2", 4) == 0) t->kind = TOK_BPE;
    else {
        rc = shoal_errorf(SHOAL_UNSUPPORTED,
                          "%s: tokenizer model '%.*s' is not supported (shoal reads 'llama', "
                          "SentencePiece, and 'gpt2', byte-level BPE)",
                          g->path, (int)(model_len > 64 ? 64 : model_len), model);
        goto fail;
    }

    const struct shoal_gguf_kv *tokens = NULL, *merges = NULL;
    SHOAL_TRY_GOTO(shoal_gguf_get_arr(g, "tokenizer.ggml.tokens", SHOAL_GGUF_STRING, &tokens), rc, fail);
    int add_bos_default = 1;
    if (t->kind == TOK_BPE) {
        SHOAL_TRY_GOTO(shoal_gguf_get_arr(g, "tokenizer.ggml.merges", SHOAL_GGUF_STRING, &merges), rc,
                       fail);
        const char *pre = NULL;
        size_t pre_len = 0;
        SHOAL_TRY_GOTO(shoal_gguf_get_str_opt(g, "tokenizer.ggml.pre", &pre, &pre_len), rc, fail);
        choose_pre(t, pre, pre_len, g->path, &add_bos_default);
    }
    SHOAL_TRY_GOTO(load_vocab(t, g, tokens, merges), rc, fail);

    if (t->kind == TOK_SPM) { /* llama.cpp's defaults for SentencePiece vocabularies */
        t->unk = 0;
        t->bos = t->n_vocab > 1 ? 1 : -1;
        t->eos = t->n_vocab > 2 ? 2 : -1;
    }
    static const struct { const char *key; size_t field; } ids[] = {
        { "tokenizer.ggml.bos_token_id", offsetof(struct shoal_tokenizer, bos) },
        { "tokenizer.ggml.eos_token_id", offsetof(struct shoal_tokenizer, eos) },
        { "tokenizer.ggml.unknown_token_id", offsetof(struct shoal_tokenizer, unk) },
        { "tokenizer.ggml.padding_token_id", offsetof(struct shoal_tokenizer, pad) },
        { "tokenizer.ggml.eot_token_id", offsetof(struct shoal_tokenizer, eot) },
        { "tokenizer.ggml.eom_token_id", offsetof(struct shoal_tokenizer, eom) },
    };
    for (size_t i = 0; i < sizeof ids / sizeof ids[0]; i++)
        SHOAL_TRY_GOTO(read_special_id(g, ids[i].key, t->n_vocab,
                                       (int32_t *)((char *)t + ids[i].field)), rc, fail);

    int add_bos = -1, add_eos = -1, add_space = -1;
    SHOAL_TRY_GOTO(shoal_gguf_get_bool_opt(g, "tokenizer.ggml.add_bos_token", &add_bos), rc, fail);
    SHOAL_TRY_GOTO(shoal_gguf_get_bool_opt(g, "tokenizer.ggml.add_eos_token", &add_eos), rc, fail);
    SHOAL_TRY_GOTO(shoal_gguf_get_bool_opt(g, "tokenizer.ggml.add_space_prefix", &add_space), rc, fail);
    if (add_bos == 1 && t->bos < 0) {
        rc = shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.add_bos_token is true but there is no "
                          "tokenizer.ggml.bos_token_id", g->path);
        goto fail;
    }
    if (add_eos == 1 && t->eos < 0) {
        rc = shoal_errorf(SHOAL_FORMAT, "%s: tokenizer.ggml.add_eos_token is true but there is no "
                          "tokenizer.ggml.eos_token_id", g->path);
        goto fail;
    }
    t->add_bos = (add_bos >= 0 ? add_bos : add_bos_default) && t->bos >= 0;
    t->add_eos = add_eos == 1;
    t->add_space_prefix = t->kind == TOK_SPM && (add_space >= 0 ? add_space : 1);

    finish_vocab(t);
    if (t->kind == TOK_BPE) {
        int missing = 0;
        for (int b = 0; b < 256; b++) missing += t->byte_tok[b] < 0;
        if (missing)
            SHOAL_LOGI(TOK_LOG, "%s: %d of the 256 byte-level tokens are missing from the vocabulary; "
                       "text with those bytes will lose them", g->path, missing);
    }
    *out = t;
    return SHOAL_OK;

fail:
    shoal_tokenizer_destroy(t);
    return rc;
}

void shoal_tokenizer_destroy(struct shoal_tokenizer *t) {
    if (!t) return;
    free(t->tok); /* the one block */
    free(t);
}

int shoal_tokenizer_n_vocab(const struct shoal_tokenizer *t) { return t->n_vocab; }
int32_t shoal_tokenizer_bos(const struct shoal_tokenizer *t) { return t->bos; }
int32_t shoal_tokenizer_eos(const struct shoal_tokenizer *t) { return t->eos; }
int shoal_tokenizer_add_bos(const struct shoal_tokenizer *t) { return t->add_bos; }

int shoal_tokenizer_is_eog(const struct shoal_tokenizer *t, int32_t id) {
    return id >= 0 && id < t->n_vocab && t->tok[id].eog;
}

const char *shoal_tokenizer_text(const struct shoal_tokenizer *t, int32_t id, size_t *len) {
    if (id < 0 || id >= t->n_vocab) return NULL;
    *len = t->tok[id].text_len;
    return t->text + t->tok[id].text_off;
}

int32_t shoal_tokenizer_find(const struct shoal_tokenizer *t, const char *s, size_t len) {
    return shoal_tok_find(t, s, len);
}

/* --------------------------------------------------------------- encoding */

/* A run of the input: raw text (id -1) or one special token; plain: text a control token is not parsed in. */
struct frag {
    size_t off, len;
    int32_t id;
    int plain;
};

struct frags {
    struct frag *v;
    size_t n, cap;
};

static shoal_status frag_push(struct frags *f, size_t off, size_t len, int32_t id, int plain) {
    if (f->n == f->cap) {
        size_t cap = f->cap ? f->cap * 2 : 16;
        struct frag *v = realloc(f->v, cap * sizeof *v);
        if (!v) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory splitting special tokens");
        f->v = v;
        f->cap = cap;
    }
    f->v[f->n++] = (struct frag){ off, len, id, plain };
    return SHOAL_OK;
}

/* A special token's occurrence: where, and its place in t->special (the order tokens are taken in). */
struct hit {
    size_t pos;
    int32_t rank;
};

static int cmp_hit_rank(const void *a, const void *b) {
    const struct hit *x = a, *y = b;
    if (x->rank != y->rank) return x->rank < y->rank ? -1 : 1;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static int cmp_hit_pos(const void *a, const void *b) {
    const struct hit *x = a, *y = b;
    return x->pos < y->pos ? -1 : x->pos > y->pos;
}

static shoal_status hit_push(struct hit **v, size_t *n, size_t *cap, size_t pos, int32_t rank) {
    if (*n == *cap) {
        size_t c = *cap ? *cap * 2 : 64;
        struct hit *p = realloc(*v, c * sizeof *p);
        if (!p) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory splitting special tokens");
        *v = p;
        *cap = c;
    }
    (*v)[(*n)++] = (struct hit){ pos, rank };
    return SHOAL_OK;
}

/* The segment (of seg, n of them, in order, covering the text) that byte p is in. */
static const struct frag *segment_of(const struct frags *seg, size_t p) {
    size_t lo = 0, hi = seg->n;
    while (hi - lo > 1) {
        size_t mid = lo + (hi - lo) / 2;
        if (seg->v[mid].off <= p) lo = mid;
        else hi = mid;
    }
    return &seg->v[lo];
}

/*
 * The special tokens of one text length (ranks r0..r1 of t->special) that
 * may be taken where they occur, appended to *hits as (position, rank): one
 * pass over the text with a rolling hash, each window looked up among the
 * tokens' texts (a hash table of them; equal hashes compared byte for byte).
 * Tokens whose text an earlier (lower) rank has too are never taken, as in
 * the order below.
 */
static shoal_status find_length(const struct shoal_tokenizer *t, const char *text, size_t len, int parse_special,
                                const struct frags *seg, const uint8_t *covered, int r0, int r1, struct hit **hits,
                                size_t *n_hits, size_t *cap_hits) {
    const size_t sl = t->tok[t->special[r0]].text_len;
    if (sl > len) return SHOAL_OK;
    const uint64_t base = shoal_hash_u64(0x5eed) | 1, cap = shoal_hash_cap((uint64_t)(r1 - r0));
    struct slot {
        uint64_t h;
        int32_t rank; /* -1: empty */
    } *tab = malloc(cap * sizeof *tab);
    if (!tab) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory splitting special tokens");
    for (uint64_t i = 0; i < cap; i++) tab[i].rank = -1;
    uint64_t pow = 1; /* base^(sl-1): what the byte leaving the window weighs */
    for (size_t j = 1; j < sl; j++) pow *= base;
    int n_in = 0;
    for (int r = r0; r < r1; r++) {
        const struct tok_entry *e = &t->tok[t->special[r]];
        if (!parse_special && e->type != TOK_TYPE_USER_DEFINED) continue;
        const char *st = t->text + e->text_off;
        uint64_t h = 0;
        for (size_t j = 0; j < sl; j++) h = h * base + (uint8_t)st[j];
        uint64_t i = shoal_hash_u64(h) & (cap - 1);
        int dup = 0;
        for (; tab[i].rank >= 0 && !dup; i = (i + 1) & (cap - 1))
            dup = tab[i].h == h && memcmp(t->text + t->tok[t->special[tab[i].rank]].text_off, st, sl) == 0;
        if (!dup) tab[i] = (struct slot){ h, r }, n_in++;
    }
    if (!n_in) { /* none of this length may be taken (control tokens, unparsed): no pass over the text */
        free(tab);
        return SHOAL_OK;
    }
    shoal_status rc = SHOAL_OK;
    uint64_t h = 0;
    for (size_t j = 0; j < sl - 1; j++) h = h * base + (uint8_t)text[j];
    for (size_t p = 0; p + sl <= len; p++) {
        h = h * base + (uint8_t)text[p + sl - 1];
        if (p > 0) h -= pow * base * (uint8_t)text[p - 1];
        for (uint64_t i = shoal_hash_u64(h) & (cap - 1); tab[i].rank >= 0; i = (i + 1) & (cap - 1)) {
            const struct tok_entry *e = &t->tok[t->special[tab[i].rank]];
            if (tab[i].h != h || memcmp(t->text + e->text_off, text + p, sl) != 0) continue;
            const struct frag *g = segment_of(seg, p);
            /* within one segment, not in a plain one if it is a control token, not under a longer token */
            if (p + sl <= g->off + g->len && !(g->plain && e->type != TOK_TYPE_USER_DEFINED) && !covered[p] &&
                !covered[p + sl - 1])
                rc = hit_push(hits, n_hits, cap_hits, p, tab[i].rank);
            break;
        }
        if (rc != SHOAL_OK) break;
    }
    free(tab);
    return rc;
}

/*
 * Splits the special tokens out of text, as llama.cpp's tokenizer_st_partition:
 * longest token first, each one's every occurrence (leftmost, not
 * overlapping) in what is still raw text. Control and unknown tokens only
 * with parse_special, and never within the plain spans (n_plain of them,
 * { offset, length }, in order: what a request's messages say); user-defined
 * ones always.
 *
 * That order, without a pass over the text per token (a vocabulary has
 * thousands: hostile text made that seconds a request): one pass per length
 * of token text finds every occurrence of that length's tokens
 * (find_length), which are then taken in the order above. Whether an
 * occurrence is still raw text takes two bytes of a map of taken bytes: every
 * token taken before it is at least as long, so one that overlaps it covers
 * its first or its last byte.
 */
static shoal_status partition(const struct shoal_tokenizer *t, const char *text, size_t len, int parse_special,
                              const size_t (*plain)[2], int n_plain, struct frags *cur) {
    struct frags seg = { 0 };
    size_t at0 = 0;
    shoal_status rc = SHOAL_OK;
    for (int i = 0; i < n_plain; i++) { /* the text cut at the spans, each span's runs plain */
        const size_t a = plain[i][0] < len ? plain[i][0] : len, b = plain[i][1] < len - a ? a + plain[i][1] : len;
        if (a < at0) SHOAL_TRY_GOTO(shoal_errorf(SHOAL_INTERNAL, "tokenizer: plain spans out of order"), rc, done);
        if (a > at0) SHOAL_TRY_GOTO(frag_push(&seg, at0, a - at0, -1, 0), rc, done);
        if (b > a) SHOAL_TRY_GOTO(frag_push(&seg, a, b - a, -1, 1), rc, done);
        at0 = b;
    }
    if (at0 < len || seg.n == 0) SHOAL_TRY_GOTO(frag_push(&seg, at0, len - at0, -1, 0), rc, done);

    uint8_t *covered = calloc(len, 1);
    struct hit *hits = NULL, *taken = NULL;
    size_t n_hits = 0, cap_hits = 0, n_taken = 0, cap_taken = 0;
    if (!covered) SHOAL_TRY_GOTO(shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu bytes", len), rc, out);
    for (int r0 = 0, r1; r0 < t->n_special; r0 = r1) { /* a length at a time, longest first */
        const uint32_t sl = t->tok[t->special[r0]].text_len;
        for (r1 = r0 + 1; r1 < t->n_special && t->tok[t->special[r1]].text_len == sl; r1++) {}
        n_hits = 0;
        SHOAL_TRY_GOTO(find_length(t, text, len, parse_special, &seg, covered, r0, r1, &hits, &n_hits, &cap_hits),
                       rc, out);
        if (n_hits) qsort(hits, n_hits, sizeof *hits, cmp_hit_rank); /* each token's occurrences, left to right */
        for (size_t i = 0; i < n_hits; i++) {
            const size_t p = hits[i].pos;
            if (covered[p] || covered[p + sl - 1]) continue; /* overlaps one taken before */
            memset(covered + p, 1, sl);
            SHOAL_TRY_GOTO(hit_push(&taken, &n_taken, &cap_taken, p, hits[i].rank), rc, out);
        }
    }
    if (n_taken) qsort(taken, n_taken, sizeof *taken, cmp_hit_pos);
    size_t k = 0;
    for (size_t i = 0; i < seg.n; i++) { /* each segment: its raw runs and the tokens between them */
        const struct frag g = seg.v[i];
        size_t pos = g.off;
        for (; k < n_taken && taken[k].pos < g.off + g.len; k++) {
            const int32_t id = t->special[taken[k].rank];
            if (taken[k].pos > pos) SHOAL_TRY_GOTO(frag_push(cur, pos, taken[k].pos - pos, -1, g.plain), rc, out);
            SHOAL_TRY_GOTO(frag_push(cur, taken[k].pos, t->tok[id].text_len, id, g.plain), rc, out);
            pos = taken[k].pos + t->tok[id].text_len;
        }
        if (pos < g.off + g.len) SHOAL_TRY_GOTO(frag_push(cur, pos, g.off + g.len - pos, -1, g.plain), rc, out);
    }
out:
    free(covered);
    free(hits);
    free(taken);
done:
    free(seg.v);
    return rc;
}

/* SPM: ' ' -> U+2581, with a leading one when prefix. */
static shoal_status spm_escape(const char *s, size_t len, int prefix, char **buf, size_t *cap,
                               size_t *out_len) {
    size_t need = (len + 1) * 3;
    if (need > *cap) {
        char *b = realloc(*buf, need);
        if (!b) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu bytes of text", len);
        *buf = b;
        *cap = need;
    }
    char *o = *buf;
    size_t n = 0;
    if (prefix) {
        memcpy(o, "\xe2\x96\x81", 3);
        n = 3;
    }
    for (size_t i = 0; i < len; i++) {
        if (s[i] == ' ') {
            memcpy(o + n, "\xe2\x96\x81", 3);
            n += 3;
        } else {
            o[n++] = s[i];
        }
    }
    *out_len = n;
    return SHOAL_OK;
}

shoal_status shoal_tokenize(const struct shoal_tokenizer *t, const char *text, size_t len,
                            int add_bos, int parse_special, int32_t **ids, size_t *n) {
    return shoal_tokenize_plain(t, text, len, add_bos, parse_special, NULL, 0, ids, n);
}

shoal_status shoal_tokenize_plain(const struct shoal_tokenizer *t, const char *text, size_t len, int add_bos,
                                  int parse_special, const size_t (*plain)[2], int n_plain, int32_t **ids,
                                  size_t *n) {
    if (ids) *ids = NULL;
    if (n) *n = 0;
    if (!t || !ids || !n || (!text && len))
        return shoal_errorf(SHOAL_INVALID, "shoal_tokenize: NULL argument");
    shoal_status rc = SHOAL_OK;
    struct tok_ids out = { 0 };
    struct frags frags = { 0 };
    char *esc = NULL;
    size_t esc_cap = 0;

    if (add_bos && t->bos >= 0) SHOAL_TRY_GOTO(shoal_tok_ids_push(&out, t->bos), rc, fail);
    /* empty text has no fragments: no prefix space, no tokens */
    if (len > 0) SHOAL_TRY_GOTO(partition(t, text, len, parse_special, plain, n_plain, &frags), rc, fail);
    /* raw runs side by side are one text again (the spans cut only where control tokens may be) */
    size_t kept = 0;
    for (size_t i = 0; i < frags.n; i++) {
        if (kept && frags.v[i].id < 0 && frags.v[kept - 1].id < 0 &&
            frags.v[kept - 1].off + frags.v[kept - 1].len == frags.v[i].off)
            frags.v[kept - 1].len += frags.v[i].len;
        else
            frags.v[kept++] = frags.v[i];
    }
    frags.n = kept;
    int prev_special = 1; /* SPM: text that starts the input or follows a special token gets ' ' */
    for (size_t i = 0; i < frags.n; i++) {
        const struct frag *f = &frags.v[i];
        if (f->id >= 0) {
            SHOAL_TRY_GOTO(shoal_tok_ids_push(&out, f->id), rc, fail);
            prev_special = 1;
            continue;
        }
        if (t->kind == TOK_SPM) {
            size_t el = 0;
            SHOAL_TRY_GOTO(spm_escape(text + f->off, f->len, t->add_space_prefix && prev_special, &esc,
                                      &esc_cap, &el), rc, fail);
            SHOAL_TRY_GOTO(shoal_tok_spm_encode(t, esc, el, &out), rc, fail);
        } else {
            SHOAL_TRY_GOTO(shoal_tok_bpe_encode(t, text + f->off, f->len, &out), rc, fail);
        }
        prev_special = 0;
    }
    if (add_bos && t->add_eos && t->eos >= 0) SHOAL_TRY_GOTO(shoal_tok_ids_push(&out, t->eos), rc, fail);
    if (!out.v) {
        out.v = malloc(sizeof(int32_t));
        if (!out.v) {
            rc = shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory");
            goto fail;
        }
    }
    free(frags.v);
    free(esc);
    *ids = out.v;
    *n = out.n;
    return SHOAL_OK;

fail:
    free(out.v);
    free(frags.v);
    free(esc);
    return rc;
}

/* --------------------------------------------------------------- decoding */

int shoal_token_to_piece(const struct shoal_tokenizer *t, int32_t id, char *out, int cap,
                         int render_special) {
    if (id < 0 || id >= t->n_vocab) return -1;
    const struct tok_entry *e = &t->tok[id];
    if (!render_special && (e->type == TOK_TYPE_CONTROL || e->type == TOK_TYPE_UNKNOWN)) return 0;
    int len = (int)e->piece_len;
    if (cap > 0 && out) memcpy(out, t->pieces + e->piece_off, (size_t)(len < cap ? len : cap));
    return len;
}

void shoal_detok_init(struct shoal_detok *d, const struct shoal_tokenizer *t) {
    memset(d, 0, sizeof *d);
    d->t = t;
    d->prev = -1;
    d->first = 1;
}

/* Of buf[0..n), how many leading bytes can go out now: all but an incomplete
   (still completable) UTF-8 sequence at the very end. */
static int utf8_ready(const char *buf, int n) {
    const unsigned char *s = (const unsigned char *)buf;
    int i = 0;
    while (i < n) {
        int l;
        uint32_t cp = shoal_utf8_decode(s + i, (size_t)(n - i), &l);
        if (cp == SHOAL_UC_INVALID && shoal_utf8_incomplete(s + i, (size_t)(n - i)) > 0) return i;
        i += l; /* a complete sequence, or one byte that can never be valid: out it goes */
    }
    return n;
}

int shoal_detok_push(struct shoal_detok *d, int32_t id, char *out, int cap) {
    const struct shoal_tokenizer *t = d->t;
    if (id < 0 || id >= t->n_vocab || cap < d->n_pending) return -1;
    memcpy(out, d->pending, (size_t)d->n_pending);
    int room = cap - d->n_pending;
    char *p = out + d->n_pending;
    int len = shoal_token_to_piece(t, id, p, room, 0);
    if (len > room) return -1;
    /* run.c: "if the previous token is BOS and the piece starts with a space,
       strip it" (run.c looks at the vocabulary text, so a <0x20> byte token
       keeps its space) */
    if (t->kind == TOK_SPM && t->add_space_prefix && d->prev >= 0 && d->prev == t->bos && len > 0 &&
        p[0] == ' ' && t->tok[id].type == TOK_TYPE_NORMAL) {
        memmove(p, p + 1, (size_t)len - 1);
        len--;
    }
    int total = d->n_pending + len;
    int ready = utf8_ready(out, total);
    d->n_pending = total - ready; /* at most 3 bytes */
    memcpy(d->pending, out + ready, (size_t)d->n_pending);
    d->prev = id;
    d->first = 0;
    return ready;
}

int shoal_detok_flush(struct shoal_detok *d, char *out, int cap) {
    if (cap < d->n_pending) return -1;
    int n = d->n_pending;
    memcpy(out, d->pending, (size_t)n);
    d->n_pending = 0;
    return n;
}
