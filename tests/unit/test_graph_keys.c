/*
 * test_graph_keys — what a backend that records steps (CUDA graphs) is told:
 * a state's steps are named by a serial the backend hands out, not by the
 * state's address, and a freed state's recordings are dropped, so that a
 * new state where a freed one was never replays a recording whose buffers
 * are gone. Also what a state reserves: its model's step shape (the batch,
 * the cache, every matmul). Checked on stories260K with the CPU backend
 * behind a table that notes the calls (the CPU itself records nothing).
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../cpu/cpu.h"
#include "../../runtime/backend_impl.h"
#include "../../runtime/generate.h"
#include "../../runtime/tokenizer.h"
#include "../../shard/gguf.h"
#include "check.h"

/* What the spy saw (a test's own state: the table's slots get only the CPU's context). */
static struct {
    uint64_t keys[256];
    int n_keys, forgotten, reserved;
    struct shoal_work_shape last;
} seen;

static shoal_status spy_begin(void *ctx, uint64_t key, const struct shoal_batch *b, int *replayed) {
    (void)ctx, (void)b;
    if (seen.n_keys < 256) seen.keys[seen.n_keys++] = key;
    *replayed = 0;
    return SHOAL_OK;
}
static shoal_status spy_end(void *ctx, int ok) { return (void)ctx, (void)ok, SHOAL_OK; }
static void spy_forget(void *ctx) { (void)ctx, seen.forgotten++; }
static shoal_status spy_reserve(void *ctx, const struct shoal_work_shape *w) {
    (void)ctx;
    seen.reserved++;
    seen.last = *w;
    return SHOAL_OK;
}

/* Generates a few tokens on a fresh state; the keys its steps used are seen.keys[from..). */
static void one_state(struct shoal_model *m, const struct shoal_tokenizer *tok, const int32_t *prompt,
                      int n_prompt, struct shoal_state **keep) {
    struct shoal_state *s = NULL;
    struct shoal_state_params sp = { .n_ctx = 64, .n_batch = 16, .n_outputs = 1, .kv_type = SHOAL_KV_F32 };
    CHECK_OK(shoal_state_create(&s, m, &sp));
    struct shoal_sampler *smp = NULL;
    struct shoal_sampler_params p;
    shoal_sampler_defaults(&p);
    p.temp = 0;
    CHECK_OK(shoal_sampler_create(&smp, &p, m->hp.n_vocab));
    struct shoal_gen_params gp = { .n_predict = 3, .ignore_eos = 1 };
    struct shoal_gen_stats st;
    if (s && smp) CHECK_OK(shoal_generate(s, tok, smp, prompt, n_prompt, &gp, &st));
    shoal_sampler_destroy(smp);
    *keep = s;
}

int main(void) {
    char buf[4096];
    const char *path = testdata_path("stories260K.gguf", buf, sizeof buf);
    if (!path) return CHECK_SKIP;
    struct shoal_gguf *g = NULL;
    struct shoal_backend *cpu = NULL, *be = NULL;
    struct shoal_model *m = NULL;
    struct shoal_tokenizer *tok = NULL;
    struct shoal_cpu_params cp = { .n_threads = 1, .simd = SHOAL_SIMD_AUTO, .spin = -1 };
    CHECK_OK(shoal_gguf_open(&g, path));
    if (g) CHECK_OK(shoal_cpu_backend_create(&cpu, &cp));
    static struct shoal_backend_i spy;
    if (cpu) {
        spy = *cpu->iface;
        spy.destroy = NULL; /* the CPU's context is the CPU backend's to free */
        spy.graph_begin = spy_begin;
        spy.graph_end = spy_end;
        spy.graph_forget = spy_forget;
        spy.reserve = spy_reserve;
        be = shoal_backend_new(&spy, cpu->ctx);
    }
    if (be) CHECK_OK(shoal_model_load(&m, g, be, NULL));
    if (m) CHECK_OK(shoal_tokenizer_create(&tok, g));
    int32_t *prompt = NULL;
    size_t n_prompt = 0;
    if (tok) CHECK_OK(shoal_tokenize(tok, "Once upon a time", 16, 1, 1, &prompt, &n_prompt));
    if (!prompt) goto done;

    /* state A: its steps' keys; freeing it drops the recordings */
    struct shoal_state *a = NULL, *b = NULL;
    one_state(m, tok, prompt, (int)n_prompt, &a);
    const int n_a = seen.n_keys;
    CHECK(n_a > 0, "the steps of a state asked for no recording");
    CHECK(seen.reserved == 1 && seen.last.n_tokens == 16 && seen.last.n_slots == 64 &&
              seen.last.n_heads == m->hp.n_heads && seen.last.head_dim == m->hp.head_dim,
          "the state reserved %d times, last for %d tokens, %lld slots, %d heads of %d", seen.reserved,
          seen.last.n_tokens, (long long)seen.last.n_slots, seen.last.n_heads, seen.last.head_dim);
    int f64 = 0, f32 = 0;
    for (int i = 0; i < seen.last.n_mm; i++) {
        f64 += seen.last.mm[i].f64;
        f32 += !seen.last.mm[i].f64;
    }
    /* stories260K: q, k/v (one shape), the FFN's gate/up, the head; wo and down in f64 */
    CHECK(f64 == 2 && f32 == 4, "the step shape has %d f64 and %d f32 matmuls (want 2 and 4)", f64, f32);
    const void *where_a = a;
    shoal_state_destroy(a);
    CHECK(seen.forgotten == 1, "freeing a state dropped recordings %d times", seen.forgotten);

    /* more states, one at a time (malloc hands a freed state's place to the next one of its
     * size: the case an address key gets wrong): none may use a key seen before */
    int same_place = 0;
    for (int round = 0; round < 4; round++) {
        const int from = seen.n_keys;
        one_state(m, tok, prompt, (int)n_prompt, &b);
        same_place += (const void *)b == where_a;
        for (int i = from; i < seen.n_keys; i++)
            for (int j = 0; j < from; j++)
                CHECK(seen.keys[i] != seen.keys[j], "state %d (%s the first one's address) used key %016llx "
                      "of an earlier state", round + 2, (const void *)b == where_a ? "at" : "not at",
                      (unsigned long long)seen.keys[j]);
        shoal_state_destroy(b);
    }
    CHECK(seen.forgotten == 5, "5 states freed, recordings dropped %d times", seen.forgotten);
    printf("5 states one after another (%d at the first one's address): %d step keys\n",
           same_place, seen.n_keys);
done:
    free(prompt);
    shoal_tokenizer_destroy(tok);
    shoal_model_destroy(m);
    shoal_backend_destroy(be);
    shoal_backend_destroy(cpu);
    shoal_gguf_close(g);
    return check_done("test_graph_keys");
}
