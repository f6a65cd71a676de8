/*
 * test_sampler — the sampler against probabilities worked out here: sampled
 * frequencies match softmax(logits / T) restricted and renormalised as top-k,
 * top-p and min-p define, within a 5-sigma binomial bound; greedy takes the
 * first maximum; penalties move the logits as defined; a seed reproduces.
 * Speculative verification of a drafted token (shoal_sampler_verify): what
 * comes out is distributed as those draws are, whichever token was drafted
 * (one the target favours, one it keeps little of, one it leaves out), the
 * draft accepted as often as the target's probability of it; greedy accepts
 * exactly the best token.
 */
#include <math.h>

#include "check.h"
#include "runtime/sampler.h"

#define N 6
static const float base[N] = { 2.0f, 1.5f, 1.0f, 0.0f, -1.0f, -3.0f };

/* Expected distribution: softmax at T over the kept set, in the sampler's order. */
static void expect(const struct shoal_sampler_params *p, double *want) {
    double prob[N], sum = 0;
    int keep[N];
    /* logits are already sorted descending */
    int n = N;
    if (p->top_k > 0 && p->top_k < n) n = p->top_k;
    for (int i = 0; i < n; i++) sum += exp(base[i]);
    for (int i = 0; i < n; i++) prob[i] = exp(base[i]) / sum;
    int k = n;
    if (p->top_p < 1) {
        double c = 0;
        for (int i = 0; i < n; i++) {
            c += prob[i];
            if (c >= p->top_p) {
                k = i + 1;
                break;
            }
        }
    }
    int m = 1;
    while (m < k && prob[m] >= prob[0] * p->min_p) m++;
    if (p->min_p <= 0) m = k;
    for (int i = 0; i < N; i++) keep[i] = i < m;
    sum = 0;
    for (int i = 0; i < N; i++) sum += keep[i] ? exp(base[i] / p->temp) : 0;
    for (int i = 0; i < N; i++) want[i] = keep[i] ? exp(base[i] / p->temp) / sum : 0;
}

static void check_distribution(const char *what, struct shoal_sampler_params p) {
    const int draws = 200000;
    struct shoal_sampler *s = NULL;
    CHECK_OK(shoal_sampler_create(&s, &p, N));
    if (!s) return;
    int count[N] = { 0 };
    float logits[N];
    for (int d = 0; d < draws; d++) {
        memcpy(logits, base, sizeof logits);
        int32_t id = shoal_sampler_sample(s, logits, NULL, 0);
        CHECK(id >= 0 && id < N, "%s: id %d", what, id);
        if (id >= 0 && id < N) count[id]++;
    }
    double want[N];
    expect(&p, want);
    for (int i = 0; i < N; i++) {
        double f = (double)count[i] / draws, sd = sqrt(want[i] * (1 - want[i]) / draws);
        CHECK(fabs(f - want[i]) <= 5 * sd + 1e-9, "%s: token %d sampled %.4f, expected %.4f", what, i,
              f, want[i]);
    }
    shoal_sampler_destroy(s);
}

/* verify(draft) many times: the tokens out as the target's distribution, the draft accepted with its probability */
static void check_verify(const char *what, struct shoal_sampler_params p, int32_t draft) {
    const int draws = 100000;
    struct shoal_sampler *s = NULL;
    CHECK_OK(shoal_sampler_create(&s, &p, N));
    if (!s) return;
    int count[N] = { 0 }, acc = 0;
    float logits[N];
    for (int d = 0; d < draws; d++) {
        memcpy(logits, base, sizeof logits);
        int ok = -1;
        int32_t id = shoal_sampler_verify(s, logits, NULL, 0, draft, &ok);
        CHECK(id >= 0 && id < N && (ok == 0 || ok == 1) && (!ok || id == draft), "%s, draft %d: id %d, accepted %d",
              what, draft, id, ok);
        if (id >= 0 && id < N) count[id]++;
        acc += ok == 1;
    }
    double want[N];
    expect(&p, want);
    for (int i = 0; i < N; i++) {
        double f = (double)count[i] / draws, sd = sqrt(want[i] * (1 - want[i]) / draws);
        CHECK(fabs(f - want[i]) <= 5 * sd + 1e-9, "%s, draft %d: token %d came out %.4f, expected %.4f", what,
              draft, i, f, want[i]);
    }
    double fa = (double)acc / draws, sa = sqrt(want[draft] * (1 - want[draft]) / draws);
    CHECK(fabs(fa - want[draft]) <= 5 * sa + 1e-9, "%s, draft %d: accepted %.4f of the time, expected %.4f", what,
          draft, fa, want[draft]);
    shoal_sampler_destroy(s);
}

static void check_both(const char *what, struct shoal_sampler_params p) {
    check_distribution(what, p);
    for (int32_t d = 0; d < N; d += 2) check_verify(what, p, d);
    check_verify(what, p, N - 1); /* the least likely: outside every restricted set */
}

int main(void) {
    struct shoal_sampler_params p;
    shoal_sampler_defaults(&p);
    p.seed = 7;

    /* distributions */
    p.temp = 1.0f, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0;
    check_both("plain T=1", p);
    p.temp = 0.5f;
    check_both("T=0.5", p);
    p.temp = 2.0f;
    check_both("T=2", p);
    p.temp = 1.0f, p.top_k = 3;
    check_both("top-k 3", p);
    p.top_k = 0, p.top_p = 0.8f;
    check_both("top-p 0.8", p);
    p.top_p = 1.0f, p.min_p = 0.2f;
    check_both("min-p 0.2", p);
    p.top_k = 5, p.top_p = 0.95f, p.min_p = 0.05f, p.temp = 0.8f;
    check_both("defaults", p);

    /* greedy over a vocabulary of 16 lanes and a tail: the first maximum wherever it is
     * (in the lanes, in the tail, repeated across both), never a NaN */
    {
        enum { V = 16 * 5 + 7 };
        struct shoal_sampler *g = NULL;
        struct shoal_sampler_params gp = p;
        gp.temp = 0, gp.repeat_penalty = 1.0f, gp.freq_penalty = 0, gp.presence_penalty = 0;
        CHECK_OK(shoal_sampler_create(&g, &gp, V));
        float l[V];
        for (int at = 0; g && at < V; at++) {
            for (int i = 0; i < V; i++) l[i] = (float)((i * 37) % 11) - 20.0f;
            l[at] = 5.0f;
            if (at + 16 < V) l[at + 16] = 5.0f; /* the same value later, in another lane */
            l[(at + 3) % V] = NAN;
            if ((at + 3) % V == at) continue;
            CHECK(shoal_sampler_sample(g, l, NULL, 0) == at, "greedy: maximum at %d not found", at);
        }
        for (int i = 0; g && i < V; i++) l[i] = -INFINITY;
        if (g) CHECK(shoal_sampler_sample(g, l, NULL, 0) == 0, "greedy: all -inf should give 0");
        shoal_sampler_destroy(g);
    }

    /* greedy: first maximum; penalties as defined */
    struct shoal_sampler *s = NULL;
    p.temp = 0;
    p.repeat_penalty = 2.0f;
    p.repeat_last_n = 2;
    CHECK_OK(shoal_sampler_create(&s, &p, 4));
    if (s) {
        float l[4] = { 1.0f, 3.0f, 3.0f, -1.0f };
        CHECK(shoal_sampler_sample(s, l, NULL, 0) == 1, "greedy tie should take the lowest id");
        float l2[4] = { 1.0f, 1.8f, 1.0f, -1.0f };
        int32_t hist[3] = { 1, 0, 3 };
        /* window is the last 2: tokens 0 and 3 are penalised, 1 is not */
        CHECK(shoal_sampler_sample(s, l2, hist, 3) == 1, "penalty window");
        CHECK(l2[0] == 0.5f && l2[3] == -2.0f && l2[1] == 1.8f, "penalised logits %g %g %g", l2[0],
              l2[3], l2[1]);
        shoal_sampler_destroy(s);
    }
    p.repeat_penalty = 1.0f;
    p.freq_penalty = 0.5f;
    p.presence_penalty = 0.25f;
    p.repeat_last_n = -1;
    CHECK_OK(shoal_sampler_create(&s, &p, 4));
    if (s) {
        float l[4] = { 2.0f, 1.0f, 0.0f, 0.0f };
        int32_t hist[4] = { 0, 0, 0, 2 };
        shoal_sampler_sample(s, l, hist, 4);
        CHECK(fabsf(l[0] - (2.0f - 1.5f - 0.25f)) < 1e-6f && fabsf(l[2] - (-0.75f)) < 1e-6f &&
                  l[1] == 1.0f,
              "frequency/presence penalties: %g %g %g", l[0], l[1], l[2]);
        shoal_sampler_destroy(s);
    }

    /* greedy verification: the best token, accepted exactly when it is the draft */
    {
        struct shoal_sampler *g = NULL;
        struct shoal_sampler_params gp;
        shoal_sampler_defaults(&gp);
        gp.temp = 0;
        CHECK_OK(shoal_sampler_create(&g, &gp, N));
        for (int32_t d = 0; g && d < N; d++) {
            float l[N];
            memcpy(l, base, sizeof l);
            int ok = -1;
            int32_t id = shoal_sampler_verify(g, l, NULL, 0, d, &ok);
            CHECK(id == 0 && ok == (d == 0), "greedy verify of draft %d: id %d, accepted %d", d, id, ok);
        }
        shoal_sampler_destroy(g);
    }

    /* a seed reproduces; another seed differs */
    int32_t seq[3][64];
    for (int run = 0; run < 3; run++) {
        shoal_sampler_defaults(&p);
        p.temp = 1.0f, p.top_k = 0, p.top_p = 1.0f, p.min_p = 0;
        p.seed = run < 2 ? 1234 : 1235;
        CHECK_OK(shoal_sampler_create(&s, &p, N));
        for (int i = 0; s && i < 64; i++) {
            float l[N];
            memcpy(l, base, sizeof l);
            seq[run][i] = shoal_sampler_sample(s, l, NULL, 0);
        }
        shoal_sampler_destroy(s);
    }
    CHECK(memcmp(seq[0], seq[1], sizeof seq[0]) == 0, "same seed, different draws");
    CHECK(memcmp(seq[0], seq[2], sizeof seq[0]) != 0, "different seeds, same 64 draws");

    /* bad parameters are refused */
    shoal_sampler_defaults(&p);
    p.top_p = 0;
    CHECK(shoal_sampler_create(&s, &p, 4) == SHOAL_INVALID, "top-p 0 accepted");
    return check_done("test_sampler");
}
