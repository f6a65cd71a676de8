/*
 * test_chat.c — chat formats: recognising a template's family from the
 * markers of the published templates, the text of each format for a
 * conversation (as the families' Jinja templates render it, written out by
 * hand from their model cards), the default system message of SmolLM2's
 * template, and errors. SmolLM2's ChatML prompt is also checked token by
 * token against llama.cpp in tests/model/test_smollm2.py.
 */
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "runtime/chat.h"

static const struct shoal_chat_msg convo[] = {
    { "system", "Be brief." },
    { "user", "Hi" },
    { "assistant", "Hello!" },
    { "user", "Bye" },
};

static void expect(int kind, const struct shoal_chat_msg *m, int n, int add, const char *want) {
    char *got = NULL;
    CHECK_OK(shoal_chat_format(kind, m, n, add, &got));
    CHECK(got && strcmp(got, want) == 0, "%s:\n got: %s\nwant: %s", shoal_chat_kind_name(kind),
          got ? got : "(null)", want);
    free(got);
}

int main(void) {
    /* detection, from fragments of real templates */
    static const struct {
        const char *tmpl;
        int kind;
    } det[] = {
        { "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n'", SHOAL_CHAT_CHATML },
        { "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n' }}", SHOAL_CHAT_LLAMA3 },
        { "{{ '<|user|>\n' + message['content'] + eos_token }}", SHOAL_CHAT_ZEPHYR },
        { "{{ bos_token + '[INST] ' + '<<SYS>>\\n' + content }}", SHOAL_CHAT_LLAMA2 },
        { "{{ '[INST] ' + message['content'] + ' [/INST]' }}", SHOAL_CHAT_MISTRAL },
        { "{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}",
          SHOAL_CHAT_GEMMA },
    };
    for (size_t i = 0; i < sizeof det / sizeof det[0]; i++) {
        int kind = -1;
        CHECK_OK(shoal_chat_detect(det[i].tmpl, "m.gguf", &kind));
        CHECK(kind == det[i].kind, "template %zu: %s, want %s", i, shoal_chat_kind_name(kind),
              shoal_chat_kind_name(det[i].kind));
    }
    int kind = -1;
    CHECK(shoal_chat_detect("{{ messages }}", "m.gguf", &kind) == SHOAL_UNSUPPORTED &&
              strstr(shoal_last_error(), "m.gguf") && strstr(shoal_last_error(), "--chat-template"),
          "unknown template: %s", shoal_last_error());
    CHECK(shoal_chat_detect(NULL, "m.gguf", &kind) == SHOAL_UNSUPPORTED &&
              strstr(shoal_last_error(), "no chat template"), "no template: %s", shoal_last_error());

    /* names */
    for (int k = 0; k < SHOAL_CHAT_N_KINDS; k++)
        CHECK(shoal_chat_kind_from_name(shoal_chat_kind_name(k)) == k, "name of %d", k);
    CHECK(shoal_chat_kind_from_name("jinja") == -1, "unknown name");

    /* formats */
    expect(SHOAL_CHAT_CHATML, convo, 4, 1,
           "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"
           "<|im_start|>assistant\nHello!<|im_end|>\n<|im_start|>user\nBye<|im_end|>\n"
           "<|im_start|>assistant\n");
    expect(SHOAL_CHAT_LLAMA3, convo + 1, 1, 1,
           "<|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>"
           "<|start_header_id|>assistant<|end_header_id|>\n\n");
    expect(SHOAL_CHAT_ZEPHYR, convo, 2, 1, "<|system|>\nBe brief.</s>\n<|user|>\nHi</s>\n<|assistant|>\n");
    expect(SHOAL_CHAT_LLAMA2, convo, 4, 1,
           "[INST] <<SYS>>\nBe brief.\n<</SYS>>\n\nHi [/INST] Hello! </s><s>[INST] Bye [/INST]");
    expect(SHOAL_CHAT_MISTRAL, convo + 1, 3, 1, "[INST] Hi [/INST]Hello!</s>[INST] Bye [/INST]");
    expect(SHOAL_CHAT_CHATML, convo + 1, 1, 0, "<|im_start|>user\nHi<|im_end|>\n");
    /* Gemma: llama.cpp's rendering of its "gemma" template (llama_chat_apply_template, as
     * tests/model/data/gemma3_llamacpp.json records it): no system turn, the system message
     * opens the next user turn; contents trimmed; the assistant is "model" */
    static const struct shoal_chat_msg g_sys[] = { { "system", "You answer in one short sentence." },
                                                   { "user", "  Why is the sky blue? " } };
    expect(SHOAL_CHAT_GEMMA, g_sys, 2, 1,
           "<start_of_turn>user\nYou answer in one short sentence.\n\nWhy is the sky blue?<end_of_turn>\n"
           "<start_of_turn>model\n");
    static const struct shoal_chat_msg g_turns[] = { { "user", "Hi!" }, { "assistant", "Hello. How can I help?" },
                                                     { "user", "Name three planets." } };
    expect(SHOAL_CHAT_GEMMA, g_turns, 3, 1,
           "<start_of_turn>user\nHi!<end_of_turn>\n<start_of_turn>model\nHello. How can I help?<end_of_turn>\n"
           "<start_of_turn>user\nName three planets.<end_of_turn>\n<start_of_turn>model\n");

    char *out = NULL;
    struct shoal_chat_msg bad = { "tool", "x" };
    CHECK(shoal_chat_format(SHOAL_CHAT_CHATML, &bad, 1, 1, &out) == SHOAL_INVALID && !out &&
              strstr(shoal_last_error(), "'tool'"), "unknown role: %s", shoal_last_error());

    /* SmolLM2's template carries a default system message; a template that
     * inserts the conversation's own has none */
    char *sys = shoal_chat_default_system(
        "{% if loop.first and messages[0]['role'] != 'system' %}{{ '<|im_start|>system\nYou are "
        "a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}{% endif %}");
    CHECK(sys && strcmp(sys, "You are a helpful AI assistant named SmolLM, trained by Hugging Face") == 0,
          "default system: %s", sys ? sys : "(null)");
    free(sys);
    sys = shoal_chat_default_system("{{'<|im_start|>system\n' + message['content'] + '<|im_end|>'}}");
    CHECK(!sys, "an expression is not a default: %s", sys);
    free(sys);
    CHECK(!shoal_chat_default_system(NULL), "no template, no default");
    return check_done("test_chat");
}
