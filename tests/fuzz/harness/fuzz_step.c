/*
 * fuzz_step.c — what a follower rank does with a step another rank sent:
 * runtime/dist.c's frame check (check_head) and decoding (decode: the Step
 * message, its sizes, every token, position, KV slot and block the batch
 * names), then the step itself (run_step) on a small synthetic model, as
 * shoal_follow runs it.
 *
 * dist.c is included to reach its statics; the library's own copy is then
 * not linked in (this file defines all its symbols).
 *
 * The input: byte 0 the frame (bit 0 a wrong magic, bit 1 a wrong version,
 * bits 2-3 the kind: run, stop, ping or 7; bit 4 hidden states follow the
 * message; bit 5 a message length one past the input's), byte 1 the tokens
 * the hidden states are for, the rest the Step message (step.proto).
 *
 * Properties: a frame or step that is refused says why (SHOAL_COMM); one
 * that is taken runs without an error (every check a step needs is made
 * before it runs), and sanitizers see no access outside the state's buffers
 * whatever the step named.
 */
#define _GNU_SOURCE /* fuzz_util.h: nftw */
#include "runtime/dist.c"

#include "cpu/cpu.h"
#include "fuzz_util.h"
#include "shard/synth.h"

enum { N_CTX = 64, N_BATCH = 8, N_OUTPUTS = 4 };

static struct shoal_state *st;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    char path[256];
    snprintf(path, sizeof path, "%s/step-model.gguf", fuzz_dir());
    struct shoal_synth_params sp;
    shoal_synth_defaults(&sp);
    sp.dim = 64;
    sp.layers = 2;
    sp.heads = 4;
    sp.kv_heads = 2;
    sp.ffn = 128;
    sp.vocab = 320;
    struct shoal_gguf *g = NULL;
    struct shoal_backend *be = NULL;
    struct shoal_model *m = NULL;
    struct shoal_cpu_params cp = { .n_threads = 1, .simd = SHOAL_SIMD_AUTO, .spin = -1 };
    struct shoal_state_params stp = { .n_ctx = N_CTX, .n_batch = N_BATCH, .n_outputs = N_OUTPUTS,
                                      .kv_type = SHOAL_KV_F32 };
    if (shoal_synth_write(&sp, path) != SHOAL_OK || shoal_gguf_open(&g, path) != SHOAL_OK ||
        shoal_cpu_backend_create(&be, &cp) != SHOAL_OK || shoal_model_load(&m, g, be, NULL) != SHOAL_OK ||
        shoal_state_create(&st, m, &stp) != SHOAL_OK) {
        fprintf(stderr, "fuzz_step: %s\n", shoal_last_error());
        abort();
    }
    return 0; /* the model and state live as long as the process */
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t how = fuzz_u8(&in), x_tokens = fuzz_u8(&in);
    static const uint16_t kinds[4] = { STEP_RUN, STEP_STOP, STEP_PING, 7 };
    const uint64_t x_bytes = how & 16 ? (uint64_t)x_tokens * (uint64_t)st->m->hp.dim * sizeof(float) : 0;
    struct step_head h = { how & 1 ? STEP_MAGIC ^ 1 : STEP_MAGIC, how & 2 ? STEP_VERSION + 1 : STEP_VERSION,
                           kinds[(how >> 2) & 3], in.n + (how & 32 ? 1 : 0), x_bytes };
    shoal_error_clear();
    shoal_status rc = check_head(st, &h, 1);
    if (rc != SHOAL_OK) {
        FUZZ_CHECK(rc == SHOAL_COMM && shoal_last_error()[0], "a frame refused with %s", shoal_status_str(rc));
        return 0;
    }
    if (h.kind != STEP_RUN) return 0;
    /* the body as shoal_follow receives it: the message, then zeroed hidden states at their offset */
    FUZZ_CHECK(msg_room(st, body_bytes(&h)) == SHOAL_OK, "room for %zu bytes", body_bytes(&h));
    memset(st->msg, 0, body_bytes(&h));
    memcpy(st->msg, in.p, in.n);
    struct step s;
    rc = decode(st, &h, &s, 1);
    if (rc != SHOAL_OK) {
        FUZZ_CHECK(rc == SHOAL_COMM && strstr(shoal_last_error(), "rank 1"), "a step refused with %s: %s",
                   shoal_status_str(rc), shoal_last_error());
        return 0;
    }
    rc = run_step(st, &s);
    FUZZ_CHECK(rc == SHOAL_OK, "a step taken by decode failed to run: %s", shoal_last_error());
    shoal_step_release(st);
    return 0;
}
