/*
 * fuzz_server.c — what shoal serve does with a request body once
 * libmicrohttpd has handed it over: runtime/server.c's parse_request (JSON,
 * the fields OpenAI's API has, the chat messages formatted and tokenized, or
 * the completion's prompt), for /v1/chat/completions and /v1/completions,
 * on SmolLM2's tokenizer of tests/tokenizer/. The request it makes is freed
 * as the server frees it (req_unref).
 *
 * server.c is included to reach its static parser; the library's own copy
 * is then not linked in (this file defines all its symbols).
 *
 * The input: byte 0 the endpoint and the server's settings (bit 0 chat,
 * bit 1 --parse-special, bit 2 BOS added, bits 3-5 the chat format, 6 and 7
 * none, bit 6 a default system message, bit 7 a short --max-prompt); the
 * rest is the body.
 *
 * Properties: a request is refused with 400 or 404 and a message (500 is
 * out of memory: not here), or accepted with a prompt within the limits, of
 * ids in the vocabulary, and within the server's limits on tokens and stop
 * strings.
 */
#include "runtime/server.c"

#include "fuzz_util.h"

static struct shoal_tokenizer *tok;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    char path[512];
    snprintf(path, sizeof path, "%s/tests/tokenizer/smollm.gguf", SHOAL_ROOT);
    struct shoal_gguf *g = NULL;
    if (shoal_gguf_open(&g, path) != SHOAL_OK || shoal_tokenizer_create(&tok, g) != SHOAL_OK) {
        fprintf(stderr, "fuzz_server: %s\n", shoal_last_error());
        abort();
    }
    shoal_gguf_close(g);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t how = fuzz_u8(&in);
    const int chat = how & 1, kind = (how >> 3) & 7;
    struct shoal_server srv;
    memset(&srv, 0, sizeof srv);
    srv.p = (struct shoal_server_params){
        .host = "127.0.0.1", .model_id = "smollm", .max_body = 1 << 20, .max_prompt = how & 0x80 ? 8 : 511,
        .max_tokens = 256, .max_streams = 4, .max_queue = 16, .max_conns = 64, .max_conns_per_client = 32,
        .chat_kind = kind < SHOAL_CHAT_N_KINDS ? kind : -1, .chat_system = how & 0x40 ? "You are a fish." : NULL,
        .add_bos = (how >> 2) & 1, .n_ctx = 512, .drain_seconds = 1, .parse_special = (how >> 1) & 1,
    };
    srv.tok = tok;
    struct refusal f;
    memset(&f, 0, sizeof f);
    struct req *r = parse_request(&srv, chat, (const char *)in.p, in.n, &f);
    if (!r) {
        FUZZ_CHECK((f.status == 400 || f.status == 404) && f.msg[0], "refused with %u: %s", f.status, f.msg);
        return 0;
    }
    const int n_vocab = shoal_tokenizer_n_vocab(tok);
    FUZZ_CHECK(r->n_prompt >= 1 && (int)r->n_prompt <= srv.p.max_prompt && (int)r->n_prompt < srv.p.n_ctx,
               "a prompt of %zu tokens", r->n_prompt);
    for (size_t i = 0; i < r->n_prompt; i++)
        FUZZ_CHECK(r->prompt[i] >= 0 && r->prompt[i] < n_vocab, "prompt token %zu is %d", i, r->prompt[i]);
    FUZZ_CHECK(r->max_tokens >= 1 && r->max_tokens <= srv.p.max_tokens, "max_tokens %d", r->max_tokens);
    FUZZ_CHECK(r->n_stop >= 0 && r->n_stop <= MAX_STOP, "%d stop strings", r->n_stop);
    for (int i = 0; i < r->n_stop; i++)
        FUZZ_CHECK(r->stop[i][0] && strlen(r->stop[i]) <= MAX_STOP_BYTES, "stop string %d", i);
    FUZZ_CHECK(r->refs == 1 && r->chat == chat, "refs %d", r->refs);
    req_unref(r);
    return 0;
}
