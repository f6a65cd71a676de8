/*
 * tokenizer — text to token ids and back, from the tokenizer.ggml.* keys of a
 * GGUF file, reproducing llama.cpp's tokenizers:
 *   - "llama": SentencePiece-style (SPM) merging of the pair whose merged
 *     token has the highest score, with <0xNN> byte fallback;
 *   - "gpt2": byte-level BPE (merges by rank) after a hand-written
 *     pre-tokenizer chosen by tokenizer.ggml.pre: "gpt2"/"default" (GPT-2's
 *     regex), "llama-bpe"/"llama3" (LLaMA-3's), "qwen2", "smollm" (digits
 *     split one by one, then GPT-2's); any other falls back to GPT-2's with a
 *     warning.
 * Control and user-defined tokens written literally in the text are split
 * out first (user-defined always, control only with parse_special).
 *
 * Not here: unigram (T5), WordPiece (BERT), RWKV tokenizers; chat templates;
 * Unicode normalization (the LLaMA family has none).
 *
 * A tokenizer is immutable after create: it may be used from many threads at
 * once. It keeps no pointer into the GGUF file (close it when you like).
 */
#ifndef SHOAL_TOKENIZER_H
#define SHOAL_TOKENIZER_H

#include <stddef.h>
#include <stdint.h>

#include "../base/base.h"
#include "../shard/gguf.h"

struct shoal_tokenizer; /* opaque */

/*
 * Builds the tokenizer from g's tokenizer.ggml.* keys: model, tokens, scores,
 * token_type, merges, pre, bos/eos/unknown/padding/eot/eom token ids,
 * add_bos_token, add_eos_token, add_space_prefix. On success *out is owned by
 * the caller (shoal_tokenizer_destroy). On failure *out is NULL and:
 *   SHOAL_UNSUPPORTED  the tokenizer model is not "llama" or "gpt2";
 *   SHOAL_FORMAT       a key is missing or malformed (array of the wrong type
 *                      or length, a special token id out of range, a BPE
 *                      vocabulary without merges);
 *   SHOAL_NOMEM.
 * The error detail names the file and the key.
 */
shoal_status shoal_tokenizer_create(struct shoal_tokenizer **out, const struct shoal_gguf *g);
void shoal_tokenizer_destroy(struct shoal_tokenizer *t); /* accepts NULL */

int shoal_tokenizer_n_vocab(const struct shoal_tokenizer *t);
int32_t shoal_tokenizer_bos(const struct shoal_tokenizer *t); /* -1 if none */
int32_t shoal_tokenizer_eos(const struct shoal_tokenizer *t); /* -1 if none */
/* Whether prompts get BOS by default (add_bos_token; default: yes for SPM and
   the LLaMA-3 pre-tokenizer, no for other BPE). */
int shoal_tokenizer_add_bos(const struct shoal_tokenizer *t);
/*
 * End of generation: EOS, the eot/eom ids the file names, and tokens whose
 * text is one of llama.cpp's end-of-turn markers (<|eot_id|>, <|im_end|>,
 * <|end_of_text|>, <|endoftext|>, <|end|>, <|eom_id|>, <end_of_turn>, </s>,
 * ...). 0 for ids out of range.
 */
int shoal_tokenizer_is_eog(const struct shoal_tokenizer *t, int32_t id);
/* The token's text as stored in the vocabulary (not NUL-terminated), or NULL
   for an id out of range. */
const char *shoal_tokenizer_text(const struct shoal_tokenizer *t, int32_t id, size_t *len);
/* The id of the token whose vocabulary text is s[0..len), or -1. */
int32_t shoal_tokenizer_find(const struct shoal_tokenizer *t, const char *s, size_t len);

/*
 * Encodes len bytes of text (any bytes: need not be valid UTF-8, may contain
 * NULs) into token ids. add_bos prepends BOS (when the vocabulary has one)
 * and then also appends EOS when the file's add_eos_token is true (that is,
 * add_bos is llama.cpp's add_special). parse_special lets control tokens
 * written literally in the text ("<|im_start|>", "<s>") map to their ids, as
 * llama.cpp's parse_special; user-defined tokens always do.
 *
 * Bytes that are not valid UTF-8 are kept: SPM encodes them with its byte
 * tokens; byte-level BPE encodes every byte, and its pre-tokenizer classes
 * such a byte as "neither letter, number nor space" (llama.cpp instead turns
 * it into U+FFFD; on valid UTF-8 the two agree).
 *
 * On success *ids is malloc'd and owned by the caller (free it; it is
 * non-NULL even when *n is 0) and *n is its length. On failure (SHOAL_NOMEM,
 * or SHOAL_INVALID for NULL arguments) *ids is NULL and *n is 0.
 */
shoal_status shoal_tokenize(const struct shoal_tokenizer *t, const char *text, size_t len,
                            int add_bos, int parse_special, int32_t **ids, size_t *n);
/*
 * shoal_tokenize, but no control token parsed within the plain spans
 * (n_plain of them, { offset, length }, in order: the text a request's
 * messages hold, shoal_chat_format_spans): text from a request is text.
 */
shoal_status shoal_tokenize_plain(const struct shoal_tokenizer *t, const char *text, size_t len, int add_bos,
                                  int parse_special, const size_t (*plain)[2], int n_plain, int32_t **ids,
                                  size_t *n);

/*
 * The bytes token id stands for, as llama.cpp's token_to_piece: SPM turns
 * U+2581 into ' ' and <0xNN> into that byte; BPE undoes the byte-level
 * mapping. Control and unknown tokens give "" unless render_special (then
 * their text); user-defined tokens give their text. Writes at most cap bytes
 * (no NUL) and returns the full length (like snprintf), or -1 for an id out
 * of range.
 */
int shoal_token_to_piece(const struct shoal_tokenizer *t, int32_t id, char *out, int cap,
                         int render_special);

/*
 * Streaming detokenizer for generation: feed tokens one by one, get text
 * out. It (a) strips the single leading space of a piece that follows BOS
 * when the vocabulary is SPM with add_space_prefix (so that BOS + tokenize
 * ("Hello") decodes to "Hello"), as llama2.c's run.c does; (b) holds back an
 * incomplete UTF-8 sequence at the end until it is complete, so that every
 * chunk it returns is valid UTF-8 on its own; bytes that cannot become valid
 * UTF-8 pass through unchanged as soon as that is clear. Control tokens give
 * no text.
 *
 * The struct is plain data owned by the caller (no destroy); its fields are
 * private.
 */
struct shoal_detok {
    const struct shoal_tokenizer *t;
    int32_t prev;     /* the previous token, -1 at the start */
    int first;        /* no token pushed yet */
    char pending[8];  /* held-back bytes of an incomplete UTF-8 sequence */
    int n_pending;
};
void shoal_detok_init(struct shoal_detok *d, const struct shoal_tokenizer *t);
/* Appends the text of token id to out (cap bytes); returns bytes written, or
   -1 if cap is too small (nothing is consumed then; cap >= 256 + the piece's
   length is always enough) or the id is out of range. */
int shoal_detok_push(struct shoal_detok *d, int32_t id, char *out, int cap);
/* Writes whatever is held back (an incomplete sequence, as it is) and resets
   the hold; returns bytes written, or -1 if cap is too small. */
int shoal_detok_flush(struct shoal_detok *d, char *out, int cap);

#endif
