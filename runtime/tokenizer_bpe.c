/*
 * tokenizer_bpe.c — byte-level BPE (tokenizer.ggml.model "gpt2"), as
 * llama.cpp and HuggingFace tokenizers do it:
 *   1. pre-tokenize: cut the text into pre-tokens with the regex the model
 *      was trained with (tokenizer.ggml.pre). The regexes are matched by hand
 *      here, one function per pattern, each alternative in the pattern's
 *      order with the pattern's backtracking worked out (no regex engine);
 *      \p{L}, \p{N} and \s come from the generated table in unicode_data.h;
 *   2. map each byte of a pre-token to its GPT-2 code point (the token
 *      texts are written in those), one symbol per byte;
 *   3. merge the adjacent pair of lowest merge rank (ties: the leftmost)
 *      until no pair has a merge; a heap keeps this O(n log n).
 *
 * Special tokens are split out before this, by tokenizer.c.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

/* ------------------------------------------------------ GPT-2 byte map */

/*
 * GPT-2's bytes_to_unicode: the printable bytes '!'..'~', 0xA1..0xAC and
 * 0xAE..0xFF stand for themselves; the other 68 (0x00..0x20, 0x7F..0xA0,
 * 0xAD) for U+0100.. in byte order.
 */
uint32_t shoal_tok_bpe_byte_cp(unsigned b) {
    if ((b >= 0x21 && b <= 0x7E) || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF)) return b;
    if (b <= 0x20) return 0x100 + b;
    if (b >= 0x7F && b <= 0xA0) return 0x100 + 33 + (b - 0x7F);
    return 0x100 + 67; /* 0xAD */
}

int shoal_tok_bpe_cp_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF))
        return (int)cp;
    if (cp >= 0x100 && cp <= 0x120) return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142) return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143) return 0xAD;
    return -1;
}

/* ------------------------------------------------------------ merging */

struct bpe_sym {
    int32_t id;       /* its token; -1 for a byte whose code point is not in the vocabulary */
    int32_t prev, next;
    int alive;
};

struct bpe_pair {
    int32_t rank, left, right;
    int32_t lid, rid; /* the ids the sides had when pushed: a change means stale */
};

/* The state of one encode call: the text, its code points, and scratch
   space reused by every pre-token. */
struct bpe_work {
    const struct shoal_tokenizer *t;
    const unsigned char *text;
    uint32_t *cp;     /* (n_cp) code points (SHOAL_UC_INVALID for a bad byte) */
    size_t *off;      /* (n_cp + 1) byte offset of each in text */
    struct tok_ids *out;
    struct bpe_sym *sym;
    size_t sym_cap;
    struct tok_heap heap; /* of struct bpe_pair */
    char *enc;        /* a pre-token in GPT-2 code points (ignore_merges lookups) */
    size_t enc_cap;
};

static int before(const void *va, const void *vb) {
    const struct bpe_pair *a = va, *b = vb;
    return a->rank < b->rank || (a->rank == b->rank && a->left < b->left);
}

static shoal_status try_pair(struct bpe_work *w, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return SHOAL_OK;
    int32_t lid = w->sym[left].id, rid = w->sym[right].id;
    const struct tok_merge *m = shoal_tok_merge_find(w->t, lid, rid);
    if (!m) return SHOAL_OK;
    struct bpe_pair p = { m->rank, left, right, lid, rid };
    return shoal_tok_heap_push(&w->heap, &p);
}

/* A byte the vocabulary lacks (id < 0) is dropped, as llama.cpp does: its
 * unknown token is often <|endoftext|>, which must not end up in a prompt. */
static shoal_status emit(struct bpe_work *w, int32_t id) {
    return id >= 0 ? shoal_tok_ids_push(w->out, id) : SHOAL_OK;
}

/* Encodes the pre-token made of code points [s, e). */
static shoal_status word(struct bpe_work *w, size_t s, size_t e) {
    const struct shoal_tokenizer *t = w->t;
    const unsigned char *b = w->text + w->off[s];
    size_t n = w->off[e] - w->off[s];
    if (n == 0) return SHOAL_OK;
    if (n == 1) return emit(w, t->byte_tok[b[0]]);

    if (t->ignore_merges) { /* LLaMA-3: a pre-token that is a token is taken whole */
        if (n * 2 > w->enc_cap) {
            char *p = realloc(w->enc, n * 2);
            if (!p) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for a %zu-byte word", n);
            w->enc = p;
            w->enc_cap = n * 2;
        }
        size_t m = 0;
        for (size_t i = 0; i < n; i++) m += (size_t)shoal_utf8_encode(shoal_tok_bpe_byte_cp(b[i]), w->enc + m);
        int32_t id = shoal_tok_find(t, w->enc, m);
        if (id >= 0) return shoal_tok_ids_push(w->out, id);
    }

    if (n > INT32_MAX) return shoal_errorf(SHOAL_INVALID, "tokenizer: a %zu-byte word is too long", n);
    if (n > w->sym_cap) {
        struct bpe_sym *p = realloc(w->sym, n * sizeof *p);
        if (!p) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for a %zu-byte word", n);
        w->sym = p;
        w->sym_cap = n;
    }
    for (size_t i = 0; i < n; i++)
        w->sym[i] = (struct bpe_sym){ t->byte_tok[b[i]], (int32_t)i - 1, i + 1 < n ? (int32_t)i + 1 : -1, 1 };
    w->heap.n = 0;
    for (size_t i = 1; i < n; i++) SHOAL_TRY(try_pair(w, (int32_t)i - 1, (int32_t)i));

    while (w->heap.n > 0) {
        struct bpe_pair p;
        shoal_tok_heap_pop(&w->heap, &p);
        struct bpe_sym *l = &w->sym[p.left], *r = &w->sym[p.right];
        /* a side that merged since has a new id (or is gone): stale */
        if (!l->alive || !r->alive || l->id != p.lid || r->id != p.rid) continue;
        l->id = shoal_tok_merge_find(t, p.lid, p.rid)->result;
        r->alive = 0;
        l->next = r->next;
        if (r->next >= 0) w->sym[r->next].prev = p.left;
        SHOAL_TRY(try_pair(w, l->prev, p.left));
        SHOAL_TRY(try_pair(w, p.left, l->next));
    }
    for (int32_t i = 0; i >= 0; i = w->sym[i].next) SHOAL_TRY(emit(w, w->sym[i].id));
    return SHOAL_OK;
}

/* ------------------------------------------------------ pre-tokenizers */

#define UC_L SHOAL_UC_LETTER
#define UC_N SHOAL_UC_NUMBER
#define UC_S SHOAL_UC_SPACE

static unsigned flags(const struct bpe_work *w, size_t i) { return shoal_unicode_flags(w->cp[i]); }
/* [^\s\p{L}\p{N}] */
static int other(unsigned f) { return !(f & (UC_L | UC_N | UC_S)); }
static uint32_t ascii_lower(uint32_t c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }

/* 's|'t|'re|'ve|'m|'ll|'d at pos, case-insensitive (ASCII only, as llama.cpp)
   when ci: the length matched, or 0. */
static size_t contraction(const struct bpe_work *w, size_t pos, size_t e, int ci) {
    if (w->cp[pos] != '\'' || pos + 1 >= e) return 0;
    uint32_t a = w->cp[pos + 1], b = pos + 2 < e ? w->cp[pos + 2] : 0;
    if (ci) {
        a = ascii_lower(a);
        b = ascii_lower(b);
    }
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return 3;
    return 0;
}

/* End of the whitespace run from pos: \s+(?!\S)|\s+ — all of it at the end
   of the text, else all but the last (which then leads the next pre-token),
   unless it is only one. */
static size_t space_run(const struct bpe_work *w, size_t pos, size_t e) {
    size_t q = pos;
    while (q < e && (flags(w, q) & UC_S)) q++;
    if (q - pos > 1 && q < e) return q - 1;
    return q > pos ? q : pos + 1;
}

/* GPT-2: 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
   The end of the pre-token that starts at pos. */
static size_t gpt2_next(const struct bpe_work *w, size_t pos, size_t e) {
    size_t k = contraction(w, pos, e, 0);
    if (k) return pos + k;
    unsigned f0 = flags(w, pos), f1 = pos + 1 < e ? flags(w, pos + 1) : UC_S;
    int sp = w->cp[pos] == ' ';
    static const unsigned classes[2] = { UC_L, UC_N };
    for (int c = 0; c < 2; c++) { /* ' ?\p{L}+' then ' ?\p{N}+' */
        unsigned cl = classes[c];
        if ((f0 & cl) || (sp && (f1 & cl))) {
            size_t q = (f0 & cl) ? pos : pos + 1;
            while (q < e && (flags(w, q) & cl)) q++;
            return q;
        }
    }
    if (other(f0) || (sp && pos + 1 < e && other(f1))) { /* ' ?[^\s\p{L}\p{N}]+' */
        size_t q = other(f0) ? pos : pos + 1;
        while (q < e && other(flags(w, q))) q++;
        return q;
    }
    return space_run(w, pos, e);
}

static shoal_status split_gpt2(struct bpe_work *w, size_t s, size_t e) {
    for (size_t pos = s; pos < e;) {
        size_t q = gpt2_next(w, pos, e);
        SHOAL_TRY(word(w, pos, q));
        pos = q;
    }
    return SHOAL_OK;
}

/* LLaMA-3 (max_digits 3) and Qwen2 (1):
   (?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|
   ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+ */
static size_t llama3_next(const struct bpe_work *w, size_t pos, size_t e, size_t max_digits) {
    size_t k = contraction(w, pos, e, 1);
    if (k) return pos + k;
    uint32_t c0 = w->cp[pos];
    unsigned f0 = flags(w, pos), f1 = pos + 1 < e ? flags(w, pos + 1) : 0;
    int nl0 = c0 == '\r' || c0 == '\n';
    if ((f0 & UC_L) || (!nl0 && !(f0 & UC_N) && (f1 & UC_L))) { /* [^\r\n\p{L}\p{N}]?\p{L}+ */
        size_t q = pos + 1;
        while (q < e && (flags(w, q) & UC_L)) q++;
        return q;
    }
    if (f0 & UC_N) { /* \p{N}{1,max} */
        size_t q = pos + 1;
        while (q < e && q - pos < max_digits && (flags(w, q) & UC_N)) q++;
        return q;
    }
    if (other(f0) || (c0 == ' ' && pos + 1 < e && other(f1))) { /* ' ?[^\s\p{L}\p{N}]+[\r\n]*' */
        size_t q = other(f0) ? pos : pos + 1;
        while (q < e && other(flags(w, q))) q++;
        while (q < e && (w->cp[q] == '\r' || w->cp[q] == '\n')) q++;
        return q;
    }
    /* \s*[\r\n]+: the whitespace run up to and including its last \r or \n */
    size_t q = pos, last_nl = 0;
    while (q < e && (flags(w, q) & UC_S)) {
        if (w->cp[q] == '\r' || w->cp[q] == '\n') last_nl = q + 1;
        q++;
    }
    if (last_nl) return last_nl;
    return space_run(w, pos, e);
}

static shoal_status split_llama3(struct bpe_work *w, size_t s, size_t e, size_t max_digits) {
    for (size_t pos = s; pos < e;) {
        size_t q = llama3_next(w, pos, e, max_digits);
        SHOAL_TRY(word(w, pos, q));
        pos = q;
    }
    return SHOAL_OK;
}

/* SmolLM (and StarCoder): \p{N} isolated one by one, then GPT-2's regex on
   each stretch between digits, as a text of its own. */
static shoal_status split_smollm(struct bpe_work *w, size_t s, size_t e) {
    for (size_t pos = s; pos < e;) {
        if (flags(w, pos) & UC_N) {
            SHOAL_TRY(word(w, pos, pos + 1));
            pos++;
            continue;
        }
        size_t q = pos;
        while (q < e && !(flags(w, q) & UC_N)) q++;
        SHOAL_TRY(split_gpt2(w, pos, q));
        pos = q;
    }
    return SHOAL_OK;
}

shoal_status shoal_tok_bpe_encode(const struct shoal_tokenizer *t, const char *text, size_t len,
                                  struct tok_ids *out) {
    if (len == 0) return SHOAL_OK;
    shoal_status rc = SHOAL_OK;
    struct bpe_work w = { .t = t, .text = (const unsigned char *)text, .out = out,
                          .heap = { .size = sizeof(struct bpe_pair), .before = before } };
    w.cp = malloc(len * sizeof *w.cp);
    w.off = malloc((len + 1) * sizeof *w.off);
    if (!w.cp || !w.off) {
        rc = shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu bytes of text", len);
        goto done;
    }
    size_t n = 0;
    for (size_t i = 0; i < len; n++) {
        int l;
        w.off[n] = i;
        w.cp[n] = shoal_utf8_decode(w.text + i, len - i, &l);
        i += (size_t)l;
    }
    w.off[n] = len;
    switch (t->pre) {
    case TOK_PRE_LLAMA3: rc = split_llama3(&w, 0, n, 3); break;
    case TOK_PRE_QWEN2: rc = split_llama3(&w, 0, n, 1); break;
    case TOK_PRE_SMOLLM: rc = split_smollm(&w, 0, n); break;
    case TOK_PRE_GPT2:
    default: rc = split_gpt2(&w, 0, n); break;
    }
done:
    free(w.cp);
    free(w.off);
    free(w.sym);
    shoal_tok_heap_free(&w.heap);
    free(w.enc);
    return rc;
}
