/*
 * sampler.c — see sampler.h. Candidates are (id, logit) pairs; top-k uses a
 * partial selection so that a 150k vocabulary is not sorted for k = 40.
 */
#include "sampler.h"

#include <math.h>
#if defined(__SSE__)
#include <xmmintrin.h>
#endif
#include <stdlib.h>
#include <string.h>

struct cand {
    int32_t id;
    float logit;
    float p;
};

struct shoal_sampler {
    struct shoal_sampler_params p;
    int n_vocab;
    uint64_t rng[4];  /* xoshiro256** */
    struct cand *c;   /* (n_vocab) */
    int32_t *counts;  /* (n_vocab): occurrences in the penalty window */
};

void shoal_sampler_defaults(struct shoal_sampler_params *p) {
    memset(p, 0, sizeof *p);
    p->temp = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static inline uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

static double uniform(uint64_t s[4]) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

shoal_status shoal_sampler_create(struct shoal_sampler **out, const struct shoal_sampler_params *p,
                                  int n_vocab) {
    *out = NULL;
    if (n_vocab < 1) return shoal_errorf(SHOAL_INVALID, "vocabulary of %d tokens", n_vocab);
    if (!(p->top_p > 0) || p->min_p > 1 || !(p->repeat_penalty > 0) || isnan(p->temp))
        return shoal_errorf(SHOAL_INVALID,
                            "sampling parameters out of range (top-p must be in (0, 1], min-p "
                            "in [0, 1], repeat penalty > 0)");
    struct shoal_sampler *s = calloc(1, sizeof *s);
    if (!s) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    s->p = *p;
    s->n_vocab = n_vocab;
    s->c = malloc((size_t)n_vocab * sizeof *s->c);
    s->counts = calloc((size_t)n_vocab, sizeof *s->counts);
    if (!s->c || !s->counts) {
        shoal_sampler_destroy(s);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return SHOAL_OK;
}

void shoal_sampler_destroy(struct shoal_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->counts);
    free(s);
}

static void apply_penalties(struct shoal_sampler *s, float *logits, const int32_t *hist, int n) {
    const struct shoal_sampler_params *p = &s->p;
    if (p->repeat_penalty == 1.0f && p->freq_penalty == 0 && p->presence_penalty == 0) return;
    int window = p->repeat_last_n < 0 || p->repeat_last_n > n ? n : p->repeat_last_n;
    const int32_t *h = hist + n - window;
    for (int i = 0; i < window; i++)
        if (h[i] >= 0 && h[i] < s->n_vocab) s->counts[h[i]]++;
    for (int i = 0; i < window; i++) {
        int32_t id = h[i];
        if (id < 0 || id >= s->n_vocab || s->counts[id] == 0) continue;
        float l = logits[id];
        l = l > 0 ? l / p->repeat_penalty : l * p->repeat_penalty;
        l -= (float)s->counts[id] * p->freq_penalty + p->presence_penalty;
        logits[id] = l;
        s->counts[id] = 0; /* once per distinct token; also resets for the next call */
    }
}

static int by_logit_desc(const void *a, const void *b) {
    float x = ((const struct cand *)a)->logit, y = ((const struct cand *)b)->logit;
    if (x != y) return x > y ? -1 : 1;
    return ((const struct cand *)a)->id - ((const struct cand *)b)->id;
}

/* Moves the k largest to the front (unordered), by quickselect. */
static void select_top(struct cand *c, int n, int k) {
    int lo = 0, hi = n - 1;
    while (lo < hi) {
        float pivot = c[(lo + hi) / 2].logit;
        int i = lo, j = hi;
        while (i <= j) {
            while (c[i].logit > pivot) i++;
            while (c[j].logit < pivot) j--;
            if (i <= j) {
                struct cand t = c[i];
                c[i] = c[j];
                c[j] = t;
                i++;
                j--;
            }
        }
        if (k - 1 <= j) hi = j;
        else if (k - 1 >= i) lo = i;
        else break;
    }
}

/* Softmax of c[0..n) at temperature 1 / inv_temp, into .p; c is sorted. */
static void softmax(struct cand *c, int n, float inv_temp) {
    double sum = 0;
    float max = c[0].logit;
    for (int i = 0; i < n; i++) {
        c[i].p = expf((c[i].logit - max) * inv_temp);
        sum += c[i].p;
    }
    for (int i = 0; i < n; i++) c[i].p = (float)(c[i].p / sum);
}

/*
 * The first index of the largest value (NaNs never win; all NaN or -inf: 0).
 * The largest first, in 16 independent lanes (x > m ? x : m is maxps: greedy
 * decoding of 16 streams spent 4% of a step here a value at a time), then
 * where it first is.
 */
static int32_t argmax(const float *x, int n) {
    int i = 0;
    float m = -INFINITY;
#if defined(__SSE__)
    __m128 v[4];
    for (int k = 0; k < 4; k++) v[k] = _mm_set1_ps(-INFINITY);
    for (; i + 16 <= n; i += 16)
        for (int k = 0; k < 4; k++) v[k] = _mm_max_ps(_mm_loadu_ps(x + i + 4 * k), v[k]);
    float lane[16];
    for (int k = 0; k < 4; k++) _mm_storeu_ps(lane + 4 * k, v[k]);
    for (int k = 0; k < 16; k++) m = lane[k] > m ? lane[k] : m;
#endif
    for (; i < n; i++) m = x[i] > m ? x[i] : m;
    for (i = 0; i < n; i++)
        if (x[i] == m) return i;
    return 0;
}

/*
 * The distribution a sampling (not greedy) draw takes its token from: the
 * penalised logits' candidates after top-k, top-p and min-p, their
 * probabilities at the temperature, in s->c[0..n), most likely first.
 */
static int distribution(struct shoal_sampler *s, float *logits, const int32_t *history, int n_history) {
    const struct shoal_sampler_params *p = &s->p;
    apply_penalties(s, logits, history, n_history);
    struct cand *c = s->c;
    int n = s->n_vocab;
    for (int i = 0; i < n; i++) c[i] = (struct cand){ i, logits[i], 0 };
    if (p->top_k > 0 && p->top_k < n) {
        select_top(c, n, p->top_k);
        n = p->top_k;
    }
    qsort(c, (size_t)n, sizeof *c, by_logit_desc);
    softmax(c, n, 1.0f);
    if (p->top_p < 1.0f) {
        double cum = 0;
        int keep = n;
        for (int i = 0; i < n; i++) {
            cum += c[i].p;
            if (cum >= p->top_p) {
                keep = i + 1;
                break;
            }
        }
        n = keep;
    }
    if (p->min_p > 0) {
        int keep = 1;
        float floor = c[0].p * p->min_p;
        while (keep < n && c[keep].p >= floor) keep++;
        n = keep;
    }
    softmax(c, n, 1.0f / p->temp);
    return n;
}

/* A draw from c[0..n) by probability, skip's left out (-1: none); total: the probabilities' sum without it. */
static int32_t draw(struct shoal_sampler *s, int n, double total, int32_t skip) {
    const struct cand *c = s->c;
    double r = uniform(s->rng) * total, cum = 0;
    int last = -1;
    for (int i = 0; i < n; i++) {
        if (c[i].id == skip || !(c[i].p > 0)) continue;
        cum += c[i].p;
        last = i;
        if (r < cum) return c[i].id;
    }
    return last >= 0 ? c[last].id : c[0].id; /* rounding at the end of the sum */
}

int32_t shoal_sampler_sample(struct shoal_sampler *s, float *logits, const int32_t *history,
                             int n_history) {
    if (s->p.temp <= 0) {
        apply_penalties(s, logits, history, n_history);
        return argmax(logits, s->n_vocab);
    }
    const int n = distribution(s, logits, history, n_history);
    return draw(s, n, 1.0, -1);
}

int32_t shoal_sampler_verify(struct shoal_sampler *s, float *logits, const int32_t *history, int n_history,
                             int32_t draft, int *accepted) {
    *accepted = 0;
    if (s->p.temp <= 0) {
        apply_penalties(s, logits, history, n_history);
        const int32_t t = argmax(logits, s->n_vocab);
        *accepted = t == draft;
        return t;
    }
    const int n = distribution(s, logits, history, n_history);
    double pd = 0; /* the target's probability of the draft */
    for (int i = 0; i < n; i++)
        if (s->c[i].id == draft) pd = s->c[i].p;
    /* accepted with probability min(1, p(d) / q(d)), q(d) = 1 */
    if (pd > 0 && uniform(s->rng) < pd) {
        *accepted = 1;
        return draft;
    }
    /* else a draw from max(0, p - q), normalised: p without the draft */
    if (pd >= 1) return draft; /* (nothing else has weight: only rounding got here) */
    return draw(s, n, 1.0 - pd, draft);
}
