/*
 * lookup.c — prompt lookup's proposals (lookup.h).
 */
#include "lookup.h"

#include <string.h>

int shoal_lookup_propose(const int32_t *hist, size_t n, int ngram_min, int ngram_max, int k, int32_t *out) {
    if (k < 1 || ngram_min < 1 || ngram_max < ngram_min) return 0;
    for (int g = ngram_max; g >= ngram_min; g--) {
        if ((size_t)g + 1 > n) continue; /* a key and at least one token before it */
        const int32_t *key = hist + n - (size_t)g;
        /* the latest start j whose g tokens equal the key and are followed by one more: j + g < n */
        for (size_t j = n - (size_t)g; j-- > 0;) {
            if (memcmp(hist + j, key, sizeof *key * (size_t)g) != 0) continue;
            size_t avail = n - (j + (size_t)g);
            int m = avail < (size_t)k ? (int)avail : k;
            memcpy(out, hist + j + g, sizeof *out * (size_t)m);
            return m;
        }
    }
    return 0;
}
