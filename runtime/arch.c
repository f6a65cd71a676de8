/*
 * arch.c — the list of families (arch.h); each is defined in its own file.
 */
#include "arch.h"

#include <stdio.h>
#include <string.h>

static const struct shoal_arch *const families[] = {
    &shoal_arch_llama, &shoal_arch_mistral, &shoal_arch_qwen2, &shoal_arch_qwen3, &shoal_arch_qwen3moe,
    &shoal_arch_gemma3,
};
#define N_FAMILIES (sizeof families / sizeof *families)

const struct shoal_arch *shoal_arch_find(const char *name) {
    for (size_t i = 0; i < N_FAMILIES; i++)
        if (strcmp(families[i]->name, name) == 0) return families[i];
    return NULL;
}

const char *shoal_arch_names(char *buf, size_t len) {
    size_t n = 0;
    buf[0] = 0;
    for (size_t i = 0; i < N_FAMILIES && n < len; i++) {
        int w = snprintf(buf + n, len - n, "%s%s", i ? ", " : "", families[i]->name);
        n += w > 0 ? (size_t)w : 0;
    }
    return buf;
}
