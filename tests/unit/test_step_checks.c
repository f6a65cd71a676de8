/*
 * test_step_checks — what a follower does with a step message another rank
 * sent (issue 19: followers trusted the block tables in steps, so a step that
 * named a block past the KV cache made attention read outside it).
 *
 * The step protocol's own decoding (runtime/dist.c, compiled into this test
 * to reach its static functions) on a small synthetic model: a step as rank
 * 0 builds it decodes and runs; the same step with one field made hostile
 * (a block past the cache, a token outside the vocabulary, a KV slot or a
 * position outside the context, a position past its row of the table, no
 * blocks at all) is refused with SHOAL_COMM naming the sender, before
 * anything runs.
 */
#define _GNU_SOURCE
#include "../../runtime/dist.c"

#include <unistd.h>

#include "../../cpu/cpu.h"
#include "../../shard/synth.h"
#include "check.h"

enum { N_CTX = 64, N_BATCH = 8, BLOCK = 16 };

/* A hostile change to a step, or none (0). */
enum spoil { FINE, BLOCK_PAST, BLOCK_NEG, TOKEN, SLOT, POS, POS_PAST_ROW, BLOCK_SIZE0, BLOCK_SIZE_BIG, N_SPOIL };
static const char *const spoil_name[N_SPOIL] = { "none", "block past the cache", "negative block", "token id",
                                                 "KV slot", "position", "position past its row",
                                                 "block size 0", "block size past the cache" };

/*
 * Rank 0's step for 3 tokens of 2 sequences (2 blocks each), spoiled as
 * asked, packed into s->msg as a follower receives it; *h its frame.
 */
static void put_step(struct shoal_state *s, enum spoil how, struct step_head *h) {
    int32_t token[3] = { 5, 6, 7 }, pos[3] = { 0, 17, 3 }, seq[3] = { 0, 0, 1 }, slot[3] = { 32, 17, 51 };
    int32_t table[4] = { 2, 1, 3, 0 }; /* sequence 0: blocks 2, 1; sequence 1: blocks 3, 0 */
    int block_size = BLOCK;
    switch (how) {
    case BLOCK_PAST: table[1] = N_CTX / BLOCK; break; /* sequence 0's position 17 is in its block 1 */
    case BLOCK_NEG: table[3] = -1; break;
    case TOKEN: token[1] = s->m->hp.n_vocab; break;
    case SLOT: slot[2] = N_CTX; break;
    case POS: pos[0] = N_CTX; break;
    case POS_PAST_ROW: pos[1] = 2 * BLOCK; break;
    case BLOCK_SIZE0: block_size = 0; break;
    case BLOCK_SIZE_BIG: block_size = 4 * N_CTX; break;
    default: break;
    }
    Shoal__Step m = SHOAL__STEP__INIT;
    m.n_token = m.n_pos = m.n_seq_of = m.n_slot = 3;
    m.token = token;
    m.pos = pos;
    m.seq_of = seq;
    m.slot = slot;
    m.n_block_table = 4;
    m.block_table = table;
    m.n_seq = 2;
    m.max_blocks = 2;
    m.block_size = block_size;
    m.out0 = 2;
    m.n_out = 1;
    const size_t n = shoal__step__get_packed_size(&m);
    CHECK_OK(msg_room(s, n));
    shoal__step__pack(&m, s->msg);
    *h = (struct step_head){ STEP_MAGIC, STEP_VERSION, STEP_RUN, n, 0 };
}

int main(void) {
    char path[64];
    snprintf(path, sizeof path, "/tmp/shoal_test_step_%d.gguf", (int)getpid());
    struct shoal_synth_params sp;
    shoal_synth_defaults(&sp);
    sp.dim = 64;
    sp.layers = 2;
    sp.heads = 4;
    sp.kv_heads = 2;
    sp.ffn = 128;
    sp.vocab = 320;
    CHECK_OK(shoal_synth_write(&sp, path));
    struct shoal_gguf *g = NULL;
    struct shoal_backend *be = NULL;
    struct shoal_model *m = NULL;
    struct shoal_state *s = NULL;
    struct shoal_cpu_params cp = { .n_threads = 1, .simd = SHOAL_SIMD_AUTO, .spin = -1 };
    CHECK_OK(shoal_gguf_open(&g, path));
    if (g) CHECK_OK(shoal_cpu_backend_create(&be, &cp));
    if (be) CHECK_OK(shoal_model_load(&m, g, be, NULL));
    struct shoal_state_params stp = { .n_ctx = N_CTX, .n_batch = N_BATCH, .n_outputs = 1, .kv_type = SHOAL_KV_F32 };
    if (m) CHECK_OK(shoal_state_create(&s, m, &stp));
    for (int how = 0; s && how < N_SPOIL; how++) {
        struct step_head h;
        struct step st;
        put_step(s, (enum spoil)how, &h);
        CHECK_OK(check_head(s, &h, 3));
        shoal_error_clear();
        shoal_status rc = decode(s, &h, &st, 3);
        if (how == FINE) {
            CHECK(rc == SHOAL_OK, "rank 0's own step was refused: %s", shoal_last_error());
            if (rc == SHOAL_OK) CHECK_OK(run_step(s, &st)); /* and runs */
            continue;
        }
        CHECK(rc == SHOAL_COMM && strstr(shoal_last_error(), "rank 3 sent a step"),
              "a step with a hostile %s: %s (%s)", spoil_name[how], shoal_status_str(rc), shoal_last_error());
    }
    /* the caller's own batch goes through the same checks in shoal_forward (SHOAL_INVALID) */
    if (s) {
        const int32_t token = 1, pos = 0, seq = 0, slot = 0, table = N_CTX / BLOCK;
        const struct shoal_batch b = { .n_tokens = 1, .token = &token, .pos = &pos, .seq = &seq, .slot = &slot,
                                       .block_table = &table, .n_seq = 1, .max_blocks = 1, .block_size = BLOCK };
        float logits[320];
        shoal_status rc = shoal_forward(s, &b, 0, 1, logits);
        CHECK(rc == SHOAL_INVALID, "shoal_forward with a block past the cache: %s (%s)", shoal_status_str(rc),
              shoal_last_error());
    }
    shoal_step_release(s);
    shoal_state_destroy(s);
    shoal_model_destroy(m);
    shoal_backend_destroy(be);
    shoal_gguf_close(g);
    unlink(path);
    return check_done("test_step_checks");
}
