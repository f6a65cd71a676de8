/*
 * tokenizer_spm.c — SentencePiece-style merging, as llama.cpp's SPM
 * tokenizer (tokenizer.ggml.model "llama"): split the escaped text into UTF-8
 * characters, then keep merging the adjacent pair whose concatenation is the
 * vocabulary token with the highest score (ties: the leftmost pair), and
 * finally emit each symbol's token, or its bytes as <0xNN> tokens when it is
 * not in the vocabulary.
 *
 * The candidate pairs live in a binary heap, so n characters cost
 * O(n log n), not the O(n^2) of rescanning for the best pair. Pairs that went
 * stale (a side was merged since) are recognised by their length and
 * skipped, as llama.cpp does.
 *
 * Escaping (' ' -> U+2581, the prefix space) and special tokens are done by
 * the caller, tokenizer.c.
 */
#include <stdlib.h>
#include <string.h>

#include "tokenizer_impl.h"
#include "unicode.h"

struct spm_sym {
    const char *text;
    uint32_t n;       /* bytes; 0 once merged into its left neighbour */
    int32_t prev, next;
};

struct spm_pair {
    float score;
    int32_t left, right;
    uint32_t size;    /* bytes of the pair when it was pushed */
};

/* a goes out before b: higher score, then the leftmost */
static int before(const void *va, const void *vb) {
    const struct spm_pair *a = va, *b = vb;
    return a->score > b->score || (a->score == b->score && a->left < b->left);
}

/* Pushes the pair (left, right) when their concatenation is a token. */
static shoal_status try_pair(const struct shoal_tokenizer *t, const struct spm_sym *sym,
                             struct tok_heap *h, int32_t left, int32_t right) {
    if (left < 0 || right < 0) return SHOAL_OK;
    uint32_t size = sym[left].n + sym[right].n; /* adjacent symbols are adjacent in memory */
    int32_t id = shoal_tok_find(t, sym[left].text, size);
    if (id < 0) return SHOAL_OK;
    struct spm_pair p = { t->tok[id].score, left, right, size };
    return shoal_tok_heap_push(h, &p);
}

static shoal_status emit_bytes(const struct shoal_tokenizer *t, const char *s, uint32_t n,
                               struct tok_ids *out) {
    for (uint32_t i = 0; i < n; i++) {
        int32_t id = t->byte_tok[(unsigned char)s[i]];
        /* no byte token: llama.cpp would throw; shoal says <unk> (or drops the byte) */
        if (id < 0) id = t->unk;
        if (id >= 0) SHOAL_TRY(shoal_tok_ids_push(out, id));
    }
    return SHOAL_OK;
}

shoal_status shoal_tok_spm_encode(const struct shoal_tokenizer *t, const char *text, size_t len,
                                  struct tok_ids *out) {
    if (len == 0) return SHOAL_OK;
    if (len > INT32_MAX) return shoal_errorf(SHOAL_INVALID, "tokenizer: %zu bytes of text is too long", len);
    shoal_status rc = SHOAL_OK;
    struct tok_heap heap = { .size = sizeof(struct spm_pair), .before = before };
    /* One symbol per UTF-8 character. llama.cpp goes by the lead byte
       alone, so that a truncated sequence swallows the bytes after it (even
       the U+2581 of an escaped space, which then decodes as "▁"); here a byte
       that is not part of a well-formed sequence is a symbol of its own. The
       two agree on valid UTF-8. */
    size_t n_sym = 0;
    for (size_t off = 0; off < len; n_sym++) {
        int l;
        shoal_utf8_decode((const unsigned char *)text + off, len - off, &l);
        off += (size_t)l;
    }
    struct spm_sym *sym = malloc(n_sym * sizeof *sym);
    if (!sym) return shoal_errorf(SHOAL_NOMEM, "tokenizer: out of memory for %zu characters", n_sym);
    size_t off = 0;
    for (size_t i = 0; i < n_sym; i++) {
        int l;
        shoal_utf8_decode((const unsigned char *)text + off, len - off, &l);
        sym[i] = (struct spm_sym){ text + off, (uint32_t)l, (int32_t)i - 1,
                                   i + 1 < n_sym ? (int32_t)i + 1 : -1 };
        off += (size_t)l;
    }

    for (size_t i = 1; i < n_sym; i++)
        SHOAL_TRY_GOTO(try_pair(t, sym, &heap, (int32_t)i - 1, (int32_t)i), rc, done);

    while (heap.n > 0) {
        struct spm_pair p;
        shoal_tok_heap_pop(&heap, &p);
        struct spm_sym *l = &sym[p.left], *r = &sym[p.right];
        if (l->n == 0 || r->n == 0 || l->n + r->n != p.size) continue; /* stale */
        l->n += r->n;
        r->n = 0;
        l->next = r->next;
        if (r->next >= 0) sym[r->next].prev = p.left;
        SHOAL_TRY_GOTO(try_pair(t, sym, &heap, l->prev, p.left), rc, done);
        SHOAL_TRY_GOTO(try_pair(t, sym, &heap, p.left, l->next), rc, done);
    }

    /* Every merged symbol is a token by construction; a single character
       that is not goes out as its bytes. */
    for (int32_t i = 0; i >= 0; i = sym[i].next) {
        int32_t id = shoal_tok_find(t, sym[i].text, sym[i].n);
        if (id >= 0) SHOAL_TRY_GOTO(shoal_tok_ids_push(out, id), rc, done);
        else SHOAL_TRY_GOTO(emit_bytes(t, sym[i].text, sym[i].n, out), rc, done);
    }

done:
    shoal_tok_heap_free(&heap);
    free(sym);
    return rc;
}
