/*
 * test_lookup — prompt lookup's proposals: cases worked out by hand (the
 * latest earlier occurrence wins, shorter n-grams when longer ones are not
 * found, never the key itself, never past the history's end, at most k),
 * then random histories over a small alphabet against a reference written
 * here the other way round (every start, forwards, keeping the last match).
 */
#include <stdint.h>
#include <stdlib.h>

#include "check.h"
#include "runtime/lookup.h"

static int propose(const int32_t *h, size_t n, int gmin, int gmax, int k, int32_t *out) {
    return shoal_lookup_propose(h, n, gmin, gmax, k, out);
}

static int same(const int32_t *a, const int32_t *b, int n) {
    for (int i = 0; i < n; i++)
        if (a[i] != b[i]) return 0;
    return 1;
}

/* The reference: for each g from gmax down, every start forwards, the last whose g tokens equal
 * the history's last g and that has a token after it. */
static int reference(const int32_t *h, size_t n, int gmin, int gmax, int k, int32_t *out) {
    if (k < 1) return 0;
    for (int g = gmax; g >= gmin; g--) {
        long best = -1;
        for (size_t j = 0; j + (size_t)g < n; j++) {
            int eq = 1;
            for (int i = 0; i < g && eq; i++) eq = h[j + (size_t)i] == h[n - (size_t)g + (size_t)i];
            if (eq) best = (long)j;
        }
        if (best >= 0) {
            int m = 0;
            for (size_t i = (size_t)best + (size_t)g; i < n && m < k; i++) out[m++] = h[i];
            return m;
        }
    }
    return 0;
}

int main(void) {
    int32_t out[16];
    {   /* a b c d a b: "a b" before -> c d a (k 3) */
        const int32_t h[] = { 1, 2, 3, 4, 1, 2 };
        CHECK(propose(h, 6, 1, 2, 3, out) == 3 && same(out, (const int32_t[]){ 3, 4, 1 }, 3), "a b c d a b");
    }
    {   /* x y 1 x y 2 x y: the latest earlier "x y" is followed by 2 */
        const int32_t h[] = { 9, 8, 1, 9, 8, 2, 9, 8 };
        CHECK(propose(h, 8, 1, 2, 2, out) == 2 && same(out, (const int32_t[]){ 2, 9 }, 2), "the latest occurrence");
    }
    {   /* no 2-gram "z q" before; the 1-gram "q" at 1 is followed by r s z q */
        const int32_t h[] = { 7, 5, 6, 3, 4, 5 };
        CHECK(propose(h, 6, 1, 2, 8, out) == 4 && same(out, (const int32_t[]){ 6, 3, 4, 5 }, 4),
              "a shorter n-gram, up to the history's end");
        CHECK(propose(h, 6, 2, 2, 8, out) == 0, "no shorter n-gram below ngram_min");
    }
    {   /* the key alone, or a history of one token: nothing */
        const int32_t h[] = { 1, 2, 3 };
        CHECK(propose(h, 3, 1, 3, 4, out) == 0, "nothing repeats");
        CHECK(propose(h, 1, 1, 1, 4, out) == 0, "one token");
        CHECK(propose(h, 0, 1, 1, 4, out) == 0, "no history");
    }
    {   /* a run of one token: its latest earlier occurrence is the one just before */
        const int32_t h[] = { 4, 4, 4, 4 };
        CHECK(propose(h, 4, 1, 3, 5, out) == 1 && out[0] == 4, "a run");
    }
    {   /* k and the n-gram bounds */
        const int32_t h[] = { 1, 2, 3, 1, 2 };
        CHECK(propose(h, 5, 1, 2, 0, out) == 0, "k 0");
        CHECK(propose(h, 5, 0, 2, 2, out) == 0 && propose(h, 5, 3, 2, 2, out) == 0, "bad n-gram bounds");
    }
    /* random histories, alphabet of 3 (many repeats) and 20 (few) */
    uint64_t x = 0x2545f4914f6cdd1dull;
    int32_t h[200], want[16];
    for (int trial = 0; trial < 4000; trial++) {
        const int alpha = trial % 2 ? 3 : 20;
        const size_t n = (size_t)(trial % 200);
        for (size_t i = 0; i < n; i++) {
            x ^= x << 13, x ^= x >> 7, x ^= x << 17;
            h[i] = (int32_t)(x % (uint64_t)alpha);
        }
        const int gmax = 1 + trial % 4, gmin = 1 + (trial / 4) % gmax, k = trial % 9;
        const int got = propose(h, n, gmin, gmax, k, out), ref = reference(h, n, gmin, gmax, k, want);
        if (got != ref || !same(out, want, got)) {
            CHECK(0, "trial %d (n %zu, alphabet %d, g %d..%d, k %d): %d proposed, the reference %d", trial, n,
                  alpha, gmin, gmax, k, got, ref);
            break;
        }
    }
    return check_done("test_lookup");
}
