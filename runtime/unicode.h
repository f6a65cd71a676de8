/*
 * unicode — the little of Unicode the tokenizer needs: decoding one code
 * point from bytes that may not be valid UTF-8, encoding one, and the class
 * of a code point (letter, number, punctuation, symbol, mark, separator,
 * white space) from a table generated from Python's unicodedata by
 * tests/tools/gen_unicode.py.
 *
 * No normalization, no case mapping, no grapheme rules.
 */
#ifndef SHOAL_UNICODE_H
#define SHOAL_UNICODE_H

#include <stddef.h>
#include <stdint.h>

/* Class flags of a code point (general category's first letter, and \s). */
enum {
    SHOAL_UC_LETTER = 1,  /* \p{L} */
    SHOAL_UC_NUMBER = 2,  /* \p{N} */
    SHOAL_UC_PUNCT = 4,   /* \p{P} */
    SHOAL_UC_SYMBOL = 8,  /* \p{S} */
    SHOAL_UC_MARK = 16,   /* \p{M} */
    SHOAL_UC_SEP = 32,    /* \p{Z} */
    SHOAL_UC_SPACE = 64,  /* \s: the White_Space property */
};

/* A value no code point has: what the decoder returns for a byte that does
   not start a well-formed sequence. Its class flags are 0 (like U+FFFD's
   absence of L/N/space), so pre-tokenizers treat it as "other". */
#define SHOAL_UC_INVALID 0xFFFFFFFFu

/* Flags of code point cp (0 for SHOAL_UC_INVALID). */
unsigned shoal_unicode_flags(uint32_t cp);

/*
 * Decodes the code point at s[0..n) (n >= 1) and sets *len to the bytes it
 * used. A lead byte with well-formed continuation bytes gives its code point
 * (overlong forms and surrogates are refused); anything else is one byte of
 * SHOAL_UC_INVALID, so that every byte of the input is accounted for.
 */
uint32_t shoal_utf8_decode(const unsigned char *s, size_t n, int *len);

/* Writes cp as UTF-8 into out (4 bytes of room), returns the length. */
int shoal_utf8_encode(uint32_t cp, char *out);

/*
 * How many bytes at the start of s[0..n) could still become one well-formed
 * sequence if more bytes followed: 0 when s[0] does not start an incomplete
 * sequence (it is complete, or cannot be completed).
 */
int shoal_utf8_incomplete(const unsigned char *s, size_t n);

#endif
