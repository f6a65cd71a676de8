/*
 * check.h — the few helpers the unit tests share: a failure counter, CHECK
 * macros that print what differed, and where the shared test data lives.
 * Header-only so that each test stays one file.
 */
#ifndef SHOAL_TEST_CHECK_H
#define SHOAL_TEST_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int check_failures;

#define CHECK(cond, ...)                                                                   \
    do {                                                                                   \
        if (!(cond)) {                                                                     \
            check_failures++;                                                              \
            fprintf(stderr, "FAIL %s:%d: %s: ", __FILE__, __LINE__, #cond);                \
            fprintf(stderr, __VA_ARGS__);                                                  \
            fputc('\n', stderr);                                                           \
        }                                                                                  \
    } while (0)

#define CHECK_OK(call)                                                                     \
    do {                                                                                   \
        shoal_status check_rc_ = (call);                                                   \
        CHECK(check_rc_ == SHOAL_OK, "%s returned %s: %s", #call,                          \
              shoal_status_str(check_rc_), shoal_last_error());                            \
    } while (0)

/* Prints a summary and returns the exit status for main. */
static inline int check_done(const char *name) {
    if (check_failures) {
        fprintf(stderr, "%s: %d check(s) failed\n", name, check_failures);
        return 1;
    }
    printf("%s: all checks passed\n", name);
    return 0;
}

/*
 * Path of a file in the shared test data ($SHOAL_TESTDATA, else
 * ../shared/testdata beside the source tree). NULL, with a message saying
 * which file is missing, when it is not there; the caller then skips.
 */
static inline const char *testdata_path(const char *rel, char *buf, size_t len) {
    const char *dir = getenv("SHOAL_TESTDATA");
    if (!dir || !*dir) dir = "../shared/testdata";
    snprintf(buf, len, "%s/%s", dir, rel);
    if (access(buf, R_OK) != 0) {
        printf("SKIP: test data %s not found (set SHOAL_TESTDATA)\n", buf);
        return NULL;
    }
    return buf;
}

/* CTest treats exit code 77 as "skipped" when SKIP_RETURN_CODE is set. */
#define CHECK_SKIP 77

#endif
