/*
 * fuzz_chat.c — chat templates (runtime/chat.c): a template text from a GGUF
 * file is recognised (shoal_chat_detect, shoal_chat_default_system), and a
 * conversation from a request is written in a format
 * (shoal_chat_format_spans) with the spans of the messages' own text.
 *
 * The input: byte 0 the format (bits 0-2, 6 and 7 out of range) and
 * add_assistant (bit 3); the template, NUL-terminated; then messages, each a
 * role byte (0 system, 1 user, 2 assistant, 3 an unknown role) and its
 * content, NUL-terminated.
 *
 * Properties: the spans are in order, apart and inside the text; with
 * ChatML, LLaMA-3 and Zephyr (which write every message as it is), the
 * spans hold exactly the messages' contents, one after another.
 */
#define _GNU_SOURCE /* strndup, memmem, nftw */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "fuzz_util.h"
#include "runtime/chat.h"

#define MAX_MSGS 64

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    fuzz_quiet();
    return 0;
}

static void template_text(const char *tmpl) {
    int kind = -1;
    if (shoal_chat_detect(tmpl, "fuzz", &kind) == SHOAL_OK)
        FUZZ_CHECK(kind >= 0 && kind < SHOAL_CHAT_N_KINDS, "kind %d", kind);
    char *sys = shoal_chat_default_system(tmpl);
    if (sys) FUZZ_CHECK(strstr(tmpl, sys) != NULL, "the default system message is not in the template");
    free(sys);
    const int k = shoal_chat_kind_from_name(tmpl);
    FUZZ_CHECK(k < 0 || strcmp(shoal_chat_kind_name(k), tmpl) == 0, "name '%s' gives kind %d", tmpl, k);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    struct fuzz_in in = { data, size };
    const uint8_t how = fuzz_u8(&in);
    const int kind = how & 7, add_assistant = (how >> 3) & 1;
    char *tmpl = fuzz_field(&in, NULL);
    template_text(tmpl ? tmpl : "");
    (void)shoal_chat_detect(NULL, "fuzz", &(int){ 0 });
    free(tmpl);

    static const char *const roles[] = { "system", "user", "assistant", "tool" };
    struct shoal_chat_msg msgs[MAX_MSGS];
    char *contents[MAX_MSGS];
    int n = 0, unknown_role = 0;
    while (n < MAX_MSGS && in.n) {
        const uint8_t r = fuzz_u8(&in) & 3;
        char *c = fuzz_field(&in, NULL);
        if (!c) c = strdup("");
        unknown_role |= r == 3;
        contents[n] = c;
        msgs[n] = (struct shoal_chat_msg){ roles[r], c };
        n++;
    }
    char *out = NULL;
    size_t(*spans)[2] = NULL;
    int n_spans = -1;
    shoal_status rc = shoal_chat_format_spans(kind, msgs, n, add_assistant, &out, &spans, &n_spans);
    if (unknown_role || kind >= SHOAL_CHAT_N_KINDS) {
        FUZZ_CHECK(rc == SHOAL_INVALID && !out && !spans, "a bad role or format: %d", rc);
    } else {
        FUZZ_CHECK(rc == SHOAL_OK && out, "format %d: %s", kind, shoal_last_error());
        const size_t len = strlen(out);
        size_t end = 0, joined = 0;
        for (int i = 0; i < n_spans; i++) {
            FUZZ_CHECK(spans[i][0] >= end && spans[i][1] > 0 && spans[i][1] <= len - spans[i][0],
                       "span %d (%zu, %zu) of %zu bytes, after %zu", i, spans[i][0], spans[i][1], len, end);
            end = spans[i][0] + spans[i][1];
            joined += spans[i][1];
        }
        if (kind == SHOAL_CHAT_CHATML || kind == SHOAL_CHAT_LLAMA3 || kind == SHOAL_CHAT_ZEPHYR) {
            char *want = malloc(size + 1), *got = malloc(joined + 1);
            FUZZ_CHECK(want && got, "malloc");
            size_t wl = 0, gl = 0;
            for (int i = 0; i < n; i++) {
                memcpy(want + wl, contents[i], strlen(contents[i]));
                wl += strlen(contents[i]);
            }
            for (int i = 0; i < n_spans; i++) {
                memcpy(got + gl, out + spans[i][0], spans[i][1]);
                gl += spans[i][1];
            }
            FUZZ_CHECK(wl == gl && memcmp(want, got, wl) == 0, "format %d: the spans hold %zu bytes, the messages %zu",
                       kind, gl, wl);
            free(want);
            free(got);
        }
    }
    free(out);
    free(spans);
    for (int i = 0; i < n; i++) free(contents[i]);
    return 0;
}
