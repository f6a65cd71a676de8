/*
 * chat.c — chat formats (chat.h).
 */
#define _GNU_SOURCE
#include "chat.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *const kind_names[SHOAL_CHAT_N_KINDS] = { "chatml", "llama3", "llama2",
                                                            "mistral", "zephyr", "gemma" };

const char *shoal_chat_kind_name(int kind) {
    return kind >= 0 && kind < SHOAL_CHAT_N_KINDS ? kind_names[kind] : "?";
}

int shoal_chat_kind_from_name(const char *name) {
    for (int k = 0; k < SHOAL_CHAT_N_KINDS; k++)
        if (strcmp(name, kind_names[k]) == 0) return k;
    return -1;
}

const char *shoal_chat_kind_names(void) { return "chatml, llama3, llama2, mistral, zephyr, gemma"; }

shoal_status shoal_chat_detect(const char *tmpl, const char *source, int *kind) {
    /* the most specific markers first: LLaMA-2's template also has [INST] */
    static const struct {
        const char *marker;
        int kind;
    } rules[] = {
        { "<|im_start|>", SHOAL_CHAT_CHATML }, { "<|start_header_id|>", SHOAL_CHAT_LLAMA3 },
        { "<|user|>", SHOAL_CHAT_ZEPHYR },     { "<<SYS>>", SHOAL_CHAT_LLAMA2 },
        { "[INST]", SHOAL_CHAT_MISTRAL },      { "<start_of_turn>", SHOAL_CHAT_GEMMA },
    };
    for (size_t i = 0; tmpl && i < sizeof rules / sizeof rules[0]; i++)
        if (strstr(tmpl, rules[i].marker)) {
            *kind = rules[i].kind;
            return SHOAL_OK;
        }
    return shoal_errorf(SHOAL_UNSUPPORTED,
                        "%s: %s that shoal does not recognise; name the format with "
                        "--chat-template (one of %s)",
                        source, tmpl ? "the chat template is one" : "there is no chat template, so the format is one",
                        shoal_chat_kind_names());
}

char *shoal_chat_default_system(const char *tmpl) {
    static const char open[] = "<|im_start|>system\n";
    const char *p = tmpl ? strstr(tmpl, open) : NULL;
    if (!p) return NULL;
    p += sizeof open - 1;
    const char *end = strstr(p, "<|im_end|>");
    if (!end || end == p) return NULL;
    /* a literal, not an expression that inserts the conversation's own system message */
    for (const char *c = p; c < end; c++)
        if (*c == '{' || *c == '}' || *c == '\'' || *c == '"' || *c == '+') return NULL;
    return strndup(p, (size_t)(end - p));
}

/* ------------------------------------------------------------- formatting */

struct text {
    char *s;
    size_t len, cap;
    int failed;
    size_t (*spans)[2]; /* where the messages' own text went: { offset, length } */
    int n_spans, cap_spans;
};

static void add(struct text *t, const char *fmt, ...) {
    if (t->failed) return;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || t->len + (size_t)n + 1 > t->cap) {
        size_t cap = (t->cap ? t->cap : 256);
        while (n >= 0 && cap < t->len + (size_t)n + 1) cap *= 2;
        char *s = n < 0 ? NULL : realloc(t->s, cap);
        if (!s) {
            t->failed = 1;
            return;
        }
        t->s = s;
        t->cap = cap;
    }
    va_start(ap, fmt);
    vsnprintf(t->s + t->len, t->cap - t->len, fmt, ap);
    va_end(ap);
    t->len += (size_t)n;
}

/* A message's own text (len bytes of s), its place noted: the tokenizer parses no control token in it. */
static void add_content(struct text *t, const char *s, int len) {
    if (t->failed || len <= 0) return;
    if (t->n_spans == t->cap_spans) {
        const int cap = t->cap_spans ? 2 * t->cap_spans : 16;
        size_t(*v)[2] = realloc(t->spans, (size_t)cap * sizeof *v);
        if (!v) {
            t->failed = 1;
            return;
        }
        t->spans = v;
        t->cap_spans = cap;
    }
    const size_t at = t->len;
    add(t, "%.*s", len, s);
    if (t->failed) return;
    if (t->n_spans && t->spans[t->n_spans - 1][0] + t->spans[t->n_spans - 1][1] == at)
        t->spans[t->n_spans - 1][1] += t->len - at; /* right after the last: one span */
    else
        t->spans[t->n_spans][0] = at, t->spans[t->n_spans][1] = t->len - at, t->n_spans++;
}

static void content(struct text *t, const char *s) { add_content(t, s, (int)strnlen(s, 1 << 30)); }

static int is(const struct shoal_chat_msg *m, const char *role) { return strcmp(m->role, role) == 0; }

/* The length of s without its leading and trailing white space; *s moves past the leading. */
static int trimmed(const char **s) {
    const char *a = *s, *b = a + strlen(a);
    while (a < b && (*a == ' ' || *a == '\t' || *a == '\n' || *a == '\r')) a++;
    while (b > a && (b[-1] == ' ' || b[-1] == '\t' || b[-1] == '\n' || b[-1] == '\r')) b--;
    *s = a;
    return (int)(b - a);
}

/*
 * Gemma: turns of <start_of_turn>user or model; Gemma has no system turn,
 * so system messages (trimmed, joined) open the next user turn, followed by
 * a blank line; every message trimmed (llama.cpp's rendering of its
 * "gemma" template).
 */
static void format_gemma(struct text *t, const struct shoal_chat_msg *msgs, int n) {
    struct text sys = { 0 };
    add(&sys, "%s", "");
    for (int i = 0; i < n; i++) {
        const char *c = msgs[i].content;
        const int len = trimmed(&c);
        if (is(&msgs[i], "system")) {
            add(&sys, "%.*s", len, c);
            continue;
        }
        const int model = is(&msgs[i], "assistant");
        add(t, "<start_of_turn>%s\n", model ? "model" : "user");
        if (!model && sys.len) {
            add_content(t, sys.s, (int)sys.len);
            add(t, "\n\n");
            sys.len = 0;
            sys.s[0] = 0;
        }
        add_content(t, c, len);
        add(t, "<end_of_turn>\n");
    }
    t->failed |= sys.failed;
    free(sys.s);
}

/* [INST] formats: the system message goes into the first user turn. */
static void format_inst(struct text *t, int llama2, const struct shoal_chat_msg *msgs, int n) {
    const char *sys = NULL;
    int first_user = 1;
    for (int i = 0; i < n; i++) {
        const struct shoal_chat_msg *m = &msgs[i];
        if (is(m, "system")) {
            sys = m->content;
        } else if (is(m, "user")) {
            if (!first_user) add(t, llama2 ? "<s>" : "");
            add(t, sys && llama2 ? "[INST] <<SYS>>\n" : "[INST] ");
            if (sys) {
                content(t, sys);
                add(t, llama2 ? "\n<</SYS>>\n\n" : "\n\n");
            }
            content(t, m->content);
            add(t, " [/INST]");
            sys = NULL;
            first_user = 0;
        } else {
            add(t, llama2 ? " " : "");
            content(t, m->content);
            add(t, llama2 ? " </s>" : "</s>");
        }
    }
}

shoal_status shoal_chat_format(int kind, const struct shoal_chat_msg *msgs, int n,
                               int add_assistant, char **out) {
    return shoal_chat_format_spans(kind, msgs, n, add_assistant, out, NULL, NULL);
}

shoal_status shoal_chat_format_spans(int kind, const struct shoal_chat_msg *msgs, int n, int add_assistant,
                                     char **out, size_t (**spans)[2], int *n_spans) {
    *out = NULL;
    if (spans) *spans = NULL;
    if (n_spans) *n_spans = 0;
    for (int i = 0; i < n; i++)
        if (!is(&msgs[i], "system") && !is(&msgs[i], "user") && !is(&msgs[i], "assistant"))
            return shoal_errorf(SHOAL_INVALID, "chat message %d: role '%s' is not system, user or "
                                "assistant", i, msgs[i].role);
    struct text t = { 0 };
    add(&t, "%s", "");
    switch (kind) {
    case SHOAL_CHAT_CHATML:
        for (int i = 0; i < n; i++) {
            add(&t, "<|im_start|>%s\n", msgs[i].role);
            content(&t, msgs[i].content);
            add(&t, "<|im_end|>\n");
        }
        if (add_assistant) add(&t, "<|im_start|>assistant\n");
        break;
    case SHOAL_CHAT_LLAMA3:
        for (int i = 0; i < n; i++) {
            add(&t, "<|start_header_id|>%s<|end_header_id|>\n\n", msgs[i].role);
            content(&t, msgs[i].content);
            add(&t, "<|eot_id|>");
        }
        if (add_assistant) add(&t, "<|start_header_id|>assistant<|end_header_id|>\n\n");
        break;
    case SHOAL_CHAT_ZEPHYR:
        for (int i = 0; i < n; i++) {
            add(&t, "<|%s|>\n", msgs[i].role);
            content(&t, msgs[i].content);
            add(&t, "</s>\n");
        }
        if (add_assistant) add(&t, "<|assistant|>\n");
        break;
    case SHOAL_CHAT_LLAMA2:
    case SHOAL_CHAT_MISTRAL:
        format_inst(&t, kind == SHOAL_CHAT_LLAMA2, msgs, n);
        break;
    case SHOAL_CHAT_GEMMA:
        format_gemma(&t, msgs, n);
        if (add_assistant) add(&t, "<start_of_turn>model\n");
        break;
    default:
        free(t.s);
        free(t.spans);
        return shoal_errorf(SHOAL_INVALID, "unknown chat format %d", kind);
    }
    if (t.failed) {
        free(t.s);
        free(t.spans);
        return shoal_errorf(SHOAL_NOMEM, "out of memory formatting a chat prompt");
    }
    *out = t.s;
    if (spans) *spans = t.spans, *n_spans = t.n_spans;
    else free(t.spans);
    return SHOAL_OK;
}
