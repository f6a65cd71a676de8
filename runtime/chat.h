/*
 * chat — turning a conversation into the prompt text a chat model was
 * trained on. GGUF files carry a Jinja template (tokenizer.chat_template);
 * shoal does not run Jinja but recognises the common families by their
 * markers and writes their format itself: ChatML (SmolLM2, Qwen), LLaMA-3,
 * LLaMA-2, Mistral, Zephyr and Gemma. The text has no BOS: the tokenizer
 * adds it where the model wants one.
 */
#ifndef SHOAL_CHAT_H
#define SHOAL_CHAT_H

#include <stddef.h>

#include "../base/base.h"

enum shoal_chat_kind {
    SHOAL_CHAT_CHATML,
    SHOAL_CHAT_LLAMA3,
    SHOAL_CHAT_LLAMA2,
    SHOAL_CHAT_MISTRAL,
    SHOAL_CHAT_ZEPHYR,
    SHOAL_CHAT_GEMMA,
    SHOAL_CHAT_N_KINDS
};

struct shoal_chat_msg {
    const char *role; /* "system", "user" or "assistant" */
    const char *content;
};

const char *shoal_chat_kind_name(int kind);
/* -1 if unknown. */
int shoal_chat_kind_from_name(const char *name);
/* "chatml, llama3, llama2, mistral, zephyr, gemma": for messages. */
const char *shoal_chat_kind_names(void);

/*
 * The family of a template's text; SHOAL_UNSUPPORTED, with a message naming
 * source and the families known, when it is none of them.
 */
shoal_status shoal_chat_detect(const char *tmpl, const char *source, int *kind);

/*
 * The system message a template adds by itself when the conversation has
 * none (SmolLM2's does), as a new string; NULL when it adds none.
 */
char *shoal_chat_default_system(const char *tmpl);

/*
 * The prompt text for msgs[0..n) in the given format, ending with the
 * opening of the assistant's turn when add_assistant; *out is a new string.
 */
shoal_status shoal_chat_format(int kind, const struct shoal_chat_msg *msgs, int n,
                               int add_assistant, char **out);
/*
 * The same, and where the messages' own text lies in *out: *n_spans spans
 * { offset, length }, in order (*spans a new array, NULL for none), so that
 * the tokenizer parses the template's markers as special tokens but not
 * what a message says (shoal_tokenize_plain).
 */
shoal_status shoal_chat_format_spans(int kind, const struct shoal_chat_msg *msgs, int n, int add_assistant,
                                     char **out, size_t (**spans)[2], int *n_spans);

#endif
