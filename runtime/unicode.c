/*
 * unicode.c — UTF-8 decoding that never fails (a bad byte is one invalid
 * code point of one byte), UTF-8 encoding, and code point classes looked up
 * in the generated table runtime/unicode_data.h (binary search over ranges,
 * a direct table below U+0100).
 */
#include "unicode.h"

#include "unicode_data.h"

unsigned shoal_unicode_flags(uint32_t cp) {
    if (cp < 256) return unicode_latin1_flags[cp];
    if (cp > 0x10FFFF) return 0;
    size_t lo = 0, hi = sizeof unicode_ranges / sizeof unicode_ranges[0];
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (cp < unicode_ranges[mid].first) hi = mid;
        else if (cp > unicode_ranges[mid].last) lo = mid + 1;
        else return unicode_ranges[mid].flags;
    }
    return 0;
}

/* ------------------------------------------------------------------ UTF-8 */

/* The allowed range of the second byte of a sequence led by c (RFC 3629's
   table), which is where overlong forms, surrogates and values past
   U+10FFFF are refused; later continuation bytes are always 0x80-0xBF. */
static int second_ok(unsigned char c, unsigned char b) {
    switch (c) {
    case 0xE0: return b >= 0xA0 && b <= 0xBF;
    case 0xED: return b >= 0x80 && b <= 0x9F;
    case 0xF0: return b >= 0x90 && b <= 0xBF;
    case 0xF4: return b >= 0x80 && b <= 0x8F;
    default: return b >= 0x80 && b <= 0xBF;
    }
}

/* Bytes a well-formed sequence led by c has; 0 when c cannot lead one. */
static int seq_len(unsigned char c) {
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) return 3;
    if (c >= 0xF0 && c <= 0xF4) return 4;
    return 0;
}

uint32_t shoal_utf8_decode(const unsigned char *s, size_t n, int *len) {
    unsigned char c = s[0];
    int need = seq_len(c);
    *len = 1;
    if (need == 1) return c;
    if (need == 0 || (size_t)need > n || !second_ok(c, s[1])) return SHOAL_UC_INVALID;
    for (int i = 2; i < need; i++)
        if ((s[i] & 0xC0) != 0x80) return SHOAL_UC_INVALID;
    uint32_t cp;
    if (need == 2) cp = (uint32_t)(c & 0x1F) << 6 | (s[1] & 0x3F);
    else if (need == 3) cp = (uint32_t)(c & 0x0F) << 12 | (uint32_t)(s[1] & 0x3F) << 6 | (s[2] & 0x3F);
    else
        cp = (uint32_t)(c & 0x07) << 18 | (uint32_t)(s[1] & 0x3F) << 12 |
             (uint32_t)(s[2] & 0x3F) << 6 | (s[3] & 0x3F);
    *len = need;
    return cp;
}

int shoal_utf8_encode(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

int shoal_utf8_incomplete(const unsigned char *s, size_t n) {
    int need = seq_len(s[0]);
    if (need <= 1 || n >= (size_t)need) return 0;
    if (n >= 2 && !second_ok(s[0], s[1])) return 0;
    for (size_t i = 2; i < n; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    return (int)n;
}
