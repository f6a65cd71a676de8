/*
 * arch_llama.c — LLaMA and Mistral: the common block as it is (arch.h),
 * rope on adjacent pairs. (Mistral files give attention.sliding_window for
 * the first Mistral 7B; llama.cpp runs them without a window, and so does
 * shoal.)
 */
#include "arch.h"
#include "backend.h"

const struct shoal_arch shoal_arch_llama = { .name = "llama", .rope_mode = SHOAL_ROPE_NORM };
const struct shoal_arch shoal_arch_mistral = { .name = "mistral", .rope_mode = SHOAL_ROPE_NORM };
