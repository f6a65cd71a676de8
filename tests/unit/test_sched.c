/*
 * test_sched — continuous batching (runtime/sched) against one sequence at a
 * time: on stories260K (../shared/testdata), several prompts of different
 * lengths generated together must give, each, the greedy tokens that
 * shoal_generate gives it alone, and run.c's oracle for "Once upon a time".
 * Run with a cache big enough for all (every sequence joins at once), with
 * room for two at a time (the others queue), with a cache too small for all
 * of them (sequences preempted and recomputed) and with prompt chunks of 3
 * tokens (prompts spread over steps beside the decoding ones). A sequence
 * cancelled mid-way ends as cancelled; every block comes back at the end. A
 * long prompt read in chunks does not hold up a sequence that is decoding.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../cpu/cpu.h"
#include "../../runtime/generate.h"
#include "../../runtime/sched.h"
#include "../../runtime/tokenizer.h"
#include "../../shard/gguf.h"
#include "check.h"

#define N_SEQ 6
#define N_GEN 40

static const char *PROMPTS[N_SEQ] = {
    "Once upon a time",
    "Tom and Lily went to the park. They saw a big dog",
    "The sun",
    "One day, a little girl named Sue found a shiny red ball in the garden. She wanted to show it to her mom, so",
    "Ben liked",
    "It was a cold night and the stars",
};

struct out {
    int32_t ids[N_GEN + 1];
    int n, ended, why, n_prompt, n_gen, cancel_at;
};

static int on_token(void *user, int32_t t) {
    struct out *o = user;
    if (o->n < N_GEN + 1) o->ids[o->n] = t;
    o->n++;
    return 0;
}

static void on_end(void *user, int why, int n_prompt, int n_gen) {
    struct out *o = user;
    o->ended++;
    o->why = why;
    o->n_prompt = n_prompt;
    o->n_gen = n_gen;
}

static void on_gen_token(void *user, int32_t id) {
    struct out *o = user;
    if (o->n < N_GEN + 1) o->ids[o->n] = id;
    o->n++;
}

struct fixture {
    struct shoal_gguf *g;
    struct shoal_backend *be;
    struct shoal_model *m;
    struct shoal_tokenizer *tok;
    int32_t *prompt[N_SEQ];
    size_t n_prompt[N_SEQ];
    struct out alone[N_SEQ];
};

static struct shoal_sampler_params greedy(void) {
    struct shoal_sampler_params sp;
    shoal_sampler_defaults(&sp);
    sp.temp = 0;
    return sp;
}

/* Each prompt alone, through shoal_generate on a fresh contiguous cache. */
static void generate_alone(struct fixture *f) {
    for (int i = 0; i < N_SEQ; i++) {
        struct shoal_state *s = NULL;
        struct shoal_state_params sp = { .n_ctx = 256, .n_batch = 64, .n_outputs = 1, .kv_type = SHOAL_KV_F32 };
        CHECK_OK(shoal_state_create(&s, f->m, &sp));
        struct shoal_sampler *smp = NULL;
        struct shoal_sampler_params p = greedy();
        CHECK_OK(shoal_sampler_create(&smp, &p, f->m->hp.n_vocab));
        struct shoal_gen_params gp = { .n_predict = N_GEN, .ignore_eos = 1, .on_token = on_gen_token,
                                       .user = &f->alone[i] };
        struct shoal_gen_stats st;
        if (s && smp)
            CHECK_OK(shoal_generate(s, f->tok, smp, f->prompt[i], (int)f->n_prompt[i], &gp, &st));
        shoal_sampler_destroy(smp);
        shoal_state_destroy(s);
        CHECK(f->alone[i].n == N_GEN, "prompt %d alone: %d tokens", i, f->alone[i].n);
    }
}

/* A state (f32 cache) and a scheduler on it, or 0 (the failure reported, nothing left open). */
static int open_sched(struct fixture *f, int n_ctx, int n_batch, int max_seqs, int chunk,
                      struct shoal_state **s, struct shoal_sched **sc) {
    struct shoal_state_params sp = { .n_ctx = n_ctx, .n_batch = n_batch, .n_outputs = max_seqs,
                                     .kv_type = SHOAL_KV_F32 };
    struct shoal_sched_params pp = { .block_size = 16, .max_seqs = max_seqs, .chunk = chunk };
    *s = NULL, *sc = NULL;
    CHECK_OK(shoal_state_create(s, f->m, &sp));
    if (*s) CHECK_OK(shoal_sched_create(sc, *s, &pp));
    if (*sc) return 1;
    shoal_state_destroy(*s);
    *s = NULL;
    return 0;
}

/* All prompts through the scheduler; each must give its tokens alone. */
static void run_batched(struct fixture *f, const char *what, int n_ctx, int max_seqs, int chunk, int n_batch,
                        int cancel, uint64_t *preempted) {
    struct shoal_state *s;
    struct shoal_sched *sc;
    if (!open_sched(f, n_ctx, n_batch, max_seqs, chunk, &s, &sc)) return;
    struct out got[N_SEQ];
    memset(got, 0, sizeof got);
    uint64_t ids[N_SEQ] = { 0 };
    struct shoal_sampler_params p = greedy();
    for (int i = 0; i < N_SEQ; i++) {
        struct shoal_seq_cb cb = { on_token, on_end, &got[i] };
        CHECK_OK(shoal_sched_add(sc, f->prompt[i], (int)f->n_prompt[i], N_GEN, &p, &cb, &ids[i]));
    }
    int worked = 1, steps = 0, most = 0;
    while (worked && steps < 10000) {
        if (cancel && got[cancel].n == 5) shoal_sched_cancel(sc, ids[cancel]);
        shoal_status rc = shoal_sched_step(sc, &worked);
        CHECK(rc == SHOAL_OK, "%s: step %d: %s", what, steps, shoal_last_error());
        if (rc != SHOAL_OK) break;
        struct shoal_sched_stats st;
        shoal_sched_stats(sc, &st);
        if (st.last_seqs > most) most = st.last_seqs;
        CHECK(st.running <= max_seqs, "%s: %d running", what, st.running);
        steps++;
    }
    struct shoal_sched_stats st;
    shoal_sched_stats(sc, &st);
    CHECK(st.running == 0 && st.waiting == 0 && st.blocks_used == 0,
          "%s: at the end %d running, %d waiting, %d blocks taken", what, st.running, st.waiting, st.blocks_used);
    CHECK(most > 1, "%s: never more than %d sequences in a step", what, most);
    *preempted = st.preemptions;
    for (int i = 0; i < N_SEQ; i++) {
        CHECK(got[i].ended == 1, "%s: sequence %d ended %d times", what, i, got[i].ended);
        if (i == cancel && cancel) {
            CHECK(got[i].why == SHOAL_SEQ_CANCELLED && got[i].n < N_GEN,
                  "%s: the cancelled sequence ended %d after %d tokens", what, got[i].why, got[i].n);
            continue;
        }
        CHECK(got[i].why == SHOAL_SEQ_LENGTH && got[i].n_gen == N_GEN && got[i].n == N_GEN,
              "%s: sequence %d ended %d after %d tokens", what, i, got[i].why, got[i].n);
        CHECK(got[i].n_prompt == (int)f->n_prompt[i], "%s: sequence %d prompt %d", what, i, got[i].n_prompt);
        int diff = -1;
        for (int t = 0; t < N_GEN && diff < 0; t++)
            if (got[i].ids[t] != f->alone[i].ids[t]) diff = t;
        CHECK(diff < 0, "%s: sequence %d: token %d is %d, alone %d", what, i, diff, diff < 0 ? 0 : got[i].ids[diff],
              diff < 0 ? 0 : f->alone[i].ids[diff]);
    }
    shoal_sched_destroy(sc);
    shoal_state_destroy(s);
}

/*
 * A long prompt does not stall a sequence that is decoding: with prompt chunks
 * of 16, every step that reads part of the long prompt also gives the short
 * one its next token.
 */
static void no_stall(struct fixture *f) {
    struct shoal_state *s;
    struct shoal_sched *sc;
    if (!open_sched(f, 1024, 32, 2, 16, &s, &sc)) return;
    struct shoal_sampler_params p = greedy();
    struct out a = { 0 }, b = { 0 };
    struct shoal_seq_cb ca = { on_token, on_end, &a }, cb = { on_token, on_end, &b };
    int32_t *lng = malloc(300 * sizeof *lng);
    for (int i = 0; i < 300; i++) lng[i] = f->prompt[3][i % f->n_prompt[3]];
    uint64_t id;
    CHECK_OK(shoal_sched_add(sc, f->prompt[0], (int)f->n_prompt[0], N_GEN, &p, &ca, &id));
    int worked = 1, reading = 0, stalled = 0;
    CHECK_OK(shoal_sched_step(sc, &worked)); /* the short prompt read: it decodes from now on */
    CHECK_OK(shoal_sched_add(sc, lng, 300, 4, &p, &cb, &id));
    while (worked && !a.ended) {
        int before = a.n;
        CHECK_OK(shoal_sched_step(sc, &worked));
        if (b.n == 0) { /* the long prompt still being read this step */
            reading++;
            if (a.n != before + 1) stalled++;
        }
    }
    while (worked) CHECK_OK(shoal_sched_step(sc, &worked));
    CHECK(reading >= 10, "the long prompt was read in %d steps beside the decoding", reading);
    CHECK(stalled == 0, "the decoding sequence got no token in %d of %d steps reading a long prompt", stalled,
          reading);
    for (int t = 0; t < N_GEN; t++)
        CHECK(a.ids[t] == f->alone[0].ids[t], "beside a long prompt: token %d is %d, alone %d", t, a.ids[t],
              f->alone[0].ids[t]);
    free(lng);
    shoal_sched_destroy(sc);
    shoal_state_destroy(s);
}

static void bad_input(struct fixture *f) {
    struct shoal_state *s = NULL;
    struct shoal_state_params sp = { .n_ctx = 64, .n_batch = 16, .n_outputs = 4, .kv_type = SHOAL_KV_F32 };
    CHECK_OK(shoal_state_create(&s, f->m, &sp));
    struct shoal_sched *sc = NULL;
    struct shoal_sched_params pp = { .block_size = 16, .max_seqs = 8 };
    CHECK(s && shoal_sched_create(&sc, s, &pp) == SHOAL_INVALID, "8 sequences with room for 4 accepted");
    pp.max_seqs = 4;
    if (s) CHECK_OK(shoal_sched_create(&sc, s, &pp));
    if (sc) {
        struct shoal_sampler_params p = greedy();
        struct out o = { 0 };
        struct shoal_seq_cb cb = { on_token, on_end, &o };
        int32_t big[65] = { 0 }, bad[2] = { 1, 999999 };
        uint64_t id;
        CHECK(shoal_sched_add(sc, big, 65, 4, &p, &cb, &id) == SHOAL_INVALID, "a prompt longer than the cache");
        CHECK(shoal_sched_add(sc, bad, 2, 4, &p, &cb, &id) == SHOAL_INVALID, "a token outside the vocabulary");
        CHECK(shoal_sched_add(sc, bad, 0, 4, &p, &cb, &id) == SHOAL_INVALID, "an empty prompt");
        CHECK(shoal_sched_add(sc, bad, 1, 0, &p, &cb, &id) == SHOAL_INVALID, "max_tokens 0");
        /* a prompt that fills the cache: one token, then the context is full */
        CHECK_OK(shoal_sched_add(sc, big, 64, 10, &p, &cb, &id));
        int worked = 1;
        for (int k = 0; worked && k < 100; k++) CHECK_OK(shoal_sched_step(sc, &worked));
        CHECK(o.ended == 1 && o.why == SHOAL_SEQ_CONTEXT && o.n == 1, "a full context: ended %d (%d) after %d",
              o.ended, o.why, o.n);
        /* destroy ends what is still queued */
        struct out w = { 0 };
        struct shoal_seq_cb cw = { on_token, on_end, &w };
        CHECK_OK(shoal_sched_add(sc, bad, 1, 4, &p, &cw, &id));
        shoal_sched_destroy(sc);
        CHECK(w.ended == 1 && w.why == SHOAL_SEQ_CANCELLED, "destroy: a queued sequence ended %d (%d)", w.ended,
              w.why);
    }
    shoal_state_destroy(s);
}

int main(void) {
    char buf[4096];
    const char *path = testdata_path("stories260K.gguf", buf, sizeof buf);
    if (!path) return CHECK_SKIP;
    struct fixture f;
    memset(&f, 0, sizeof f);
    struct shoal_cpu_params cp = { .n_threads = 1, .simd = SHOAL_SIMD_AUTO, .spin = -1 };
    CHECK_OK(shoal_gguf_open(&f.g, path));
    if (f.g) CHECK_OK(shoal_cpu_backend_create(&f.be, &cp));
    if (f.be) CHECK_OK(shoal_model_load(&f.m, f.g, f.be, NULL));
    if (f.m) CHECK_OK(shoal_tokenizer_create(&f.tok, f.g));
    if (!f.tok) return check_done("test_sched");
    for (int i = 0; i < N_SEQ; i++)
        CHECK_OK(shoal_tokenize(f.tok, PROMPTS[i], strlen(PROMPTS[i]), 1, 1, &f.prompt[i], &f.n_prompt[i]));
    generate_alone(&f);

    /* run.c's greedy tokens for "Once upon a time" (BOS, the prompt, 28 more) */
    char ibuf[4096];
    const char *ids_path = testdata_path("oracle/runc_greedy_once_upon_a_time_n32.ids", ibuf, sizeof ibuf);
    FILE *fi = ids_path ? fopen(ids_path, "r") : NULL;
    if (fi) {
        int want[64], n = 0;
        while (n < 64 && fscanf(fi, "%d", &want[n]) == 1) n++;
        fclose(fi);
        int np = (int)f.n_prompt[0] - 1; /* the oracle's ids after BOS */
        for (int t = 0; t + np < n && t < N_GEN; t++)
            CHECK(f.alone[0].ids[t] == want[np + t], "oracle: generated token %d is %d, run.c %d", t,
                  f.alone[0].ids[t], want[np + t]);
    }

    uint64_t pre = 0;
    run_batched(&f, "all at once", 1024, N_SEQ, 64, 256, 0, &pre);
    CHECK(pre == 0, "all at once: %llu preemptions", (unsigned long long)pre);
    run_batched(&f, "two at a time", 1024, 2, 64, 64, 0, &pre);
    run_batched(&f, "chunks of 3", 1024, N_SEQ, 3, 32, 0, &pre);
    run_batched(&f, "a small cache", 160, N_SEQ, 8, 64, 0, &pre);
    CHECK(pre > 0, "a small cache: no sequence was preempted");
    printf("a cache of 160 positions for %d sequences: %llu preemptions\n", N_SEQ, (unsigned long long)pre);
    run_batched(&f, "one cancelled", 1024, N_SEQ, 64, 256, 2, &pre);
    no_stall(&f);
    bad_input(&f);

    for (int i = 0; i < N_SEQ; i++) free(f.prompt[i]);
    shoal_tokenizer_destroy(f.tok);
    shoal_model_destroy(f.m);
    shoal_backend_destroy(f.be);
    shoal_gguf_close(f.g);
    return check_done("test_sched");
}
