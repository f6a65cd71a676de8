/*
 * tokenizer_impl.h — what tokenizer.c (vocabulary, special tokens, pieces,
 * streaming detokenizer), tokenizer_spm.c (SentencePiece merging) and
 * tokenizer_bpe.c (pre-tokenizers, byte-level BPE merging) share. Not for
 * other modules: they include tokenizer.h.
 */
#ifndef SHOAL_TOKENIZER_IMPL_H
#define SHOAL_TOKENIZER_IMPL_H

#include <stddef.h>
#include <stdint.h>

#include "tokenizer.h"

enum tok_kind { TOK_SPM, TOK_BPE };

/* Pre-tokenizers (the regexes llama.cpp names after tokenizer.ggml.pre). */
enum tok_pre {
    TOK_PRE_GPT2,   /* 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+ */
    TOK_PRE_LLAMA3, /* (?i:'s|...)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|
                       \s*[\r\n]+|\s+(?!\S)|\s+ */
    TOK_PRE_QWEN2,  /* LLaMA-3's with \p{N} one digit at a time */
    TOK_PRE_SMOLLM, /* \p{N} split one by one, then GPT-2's on the rest */
};

/* GGUF token types (tokenizer.ggml.token_type). */
enum {
    TOK_TYPE_UNDEFINED = 0,
    TOK_TYPE_NORMAL = 1,
    TOK_TYPE_UNKNOWN = 2,
    TOK_TYPE_CONTROL = 3,
    TOK_TYPE_USER_DEFINED = 4,
    TOK_TYPE_UNUSED = 5,
    TOK_TYPE_BYTE = 6,
};

struct tok_entry {
    uint32_t text_off, text_len;   /* the vocabulary text, in t->text */
    uint32_t piece_off, piece_len; /* the bytes it decodes to (special: its text), in t->pieces */
    float score;                   /* SPM merge priority (higher first) */
    uint8_t type;                  /* TOK_TYPE_*, after llama.cpp's fix-ups */
    uint8_t eog;                   /* ends generation */
};

/* A BPE merge: the pair (left, right) of token ids becomes token result. */
struct tok_merge {
    int32_t left, right; /* -1 left: empty slot */
    int32_t rank;        /* position in tokenizer.ggml.merges: lower merges first */
    int32_t result;
};

struct shoal_tokenizer {
    enum tok_kind kind;
    enum tok_pre pre;
    int32_t n_vocab;
    struct tok_entry *tok;   /* (n_vocab) */
    char *text;              /* all vocabulary texts */
    char *pieces;            /* all decoded pieces */
    int32_t *index;          /* (index_mask + 1) open-addressing table of ids by text; -1 empty */
    uint32_t index_mask;
    struct tok_merge *merges; /* (merge_mask + 1) open-addressing table; BPE only */
    uint32_t merge_mask;
    int32_t *special;        /* (n_special) control/user-defined/unknown ids, longest text first */
    int n_special;
    int32_t byte_tok[256];   /* SPM: <0xNN> token of each byte; BPE: token of its mapped char; -1 none */
    int32_t bos, eos, unk, pad, eot, eom; /* -1: none */
    int add_bos, add_eos;
    int add_space_prefix;    /* SPM: prepend ' ' to text that starts a sequence or follows a special token */
    int ignore_merges;       /* BPE: a pre-token that is itself a token is not merged (LLaMA-3) */
};

/* A growing array of token ids. */
struct tok_ids {
    int32_t *v;
    size_t n, cap;
};
shoal_status shoal_tok_ids_push(struct tok_ids *ids, int32_t id);

/*
 * A binary heap of fixed-size items (size bytes each), the one before()
 * ranks first on top. SPM and BPE keep their merge candidates in one.
 * Zero-initialise with size and before set; free with tok_heap_free.
 */
struct tok_heap {
    char *v;
    size_t n, cap, size;
    int (*before)(const void *a, const void *b);
};
shoal_status shoal_tok_heap_push(struct tok_heap *h, const void *item);
void shoal_tok_heap_pop(struct tok_heap *h, void *out); /* h->n must be > 0 */
void shoal_tok_heap_free(struct tok_heap *h);

/* The id whose text is s[0..len), or -1 (hash lookup). */
int32_t shoal_tok_find(const struct shoal_tokenizer *t, const char *s, size_t len);

/* The merge of the pair (left, right), or NULL. */
const struct tok_merge *shoal_tok_merge_find(const struct shoal_tokenizer *t, int32_t left,
                                             int32_t right);

/* Hash of a token's text for the index: seeded per process (shoal_hash_bytes), so that a
 * vocabulary cannot be made of texts that all collide and load in quadratic time. */
static inline uint32_t shoal_tok_hash(const char *s, size_t len) { return (uint32_t)shoal_hash_bytes(s, len); }

/*
 * Encode one run of raw text (no special tokens in it) and append the ids.
 * SPM: text is the already escaped text (' ' as U+2581, prefix space added).
 * Both fail only with SHOAL_NOMEM.
 */
shoal_status shoal_tok_spm_encode(const struct shoal_tokenizer *t, const char *text, size_t len,
                                  struct tok_ids *out);
shoal_status shoal_tok_bpe_encode(const struct shoal_tokenizer *t, const char *text, size_t len,
                                  struct tok_ids *out);

/* GPT-2's byte-level map: byte b stands for code point bpe_byte_to_cp(b). */
uint32_t shoal_tok_bpe_byte_cp(unsigned b);
/* The byte code point cp stands for, or -1 if it stands for none. */
int shoal_tok_bpe_cp_byte(uint32_t cp);

#endif
