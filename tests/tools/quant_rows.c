/*
 * quant_rows.c — quantizes rows of f32 with shoal_quantize_row, stdin to
 * stdout, so that a script can hold shoal's bytes against another
 * quantizer's (tests/model/test_quant_oracle.py against llama.cpp's).
 *
 *     quant_rows TYPE N_PER_ROW < rows.f32 > rows.TYPE
 *
 * Input: whole rows of N_PER_ROW little-endian f32 values, back to back;
 * output: each row's GGUF bytes (shoal_dtype_row_bytes), back to back. It
 * does not dequantize, and it reads no GGUF (little-endian hosts, as GGUF).
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "base/base.h"

static void usage(FILE *f) {
    fprintf(f,
            "usage: quant_rows TYPE N_PER_ROW < f32_rows > blocks\n"
            "  Quantizes rows of N_PER_ROW little-endian f32 values from stdin to TYPE\n"
            "  with shoal_quantize_row and writes their bytes (GGUF's layout) to stdout.\n"
            "  TYPE is a type name as shoal prints them (q4_k, iq4_xs, f16, ...); N_PER_ROW\n"
            "  a positive multiple of its block size. Types shoal quantizes to:");
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++)
        if (shoal_dtype_info(t) && shoal_can_quantize(t)) fprintf(f, " %s", shoal_dtype_name(t));
    fprintf(f, "\n");
}

int main(int argc, char **argv) {
    if (argc == 2 && (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h"))) {
        usage(stdout);
        return 0;
    }
    if (argc != 3) {
        usage(stderr);
        return 2;
    }
    int type = shoal_dtype_from_name(argv[1]);
    if (type < 0 || !shoal_can_quantize(type)) {
        fprintf(stderr, "quant_rows: '%s' is not a type shoal quantizes to (quant_rows --help lists them)\n",
                argv[1]);
        return 2;
    }
    char *end;
    errno = 0;
    long long n = strtoll(argv[2], &end, 10);
    const int block = shoal_dtype_info(type)->block;
    if (errno || *end || end == argv[2] || n <= 0 || n > (1 << 26) || n % block) {
        fprintf(stderr, "quant_rows: N_PER_ROW '%s' is not a positive multiple of %s's block of %d "
                "(at most 2^26)\n", argv[2], shoal_dtype_name(type), block);
        return 2;
    }
    const size_t in_bytes = (size_t)n * sizeof(float), out_bytes = shoal_dtype_row_bytes(type, n);
    float *row = malloc(in_bytes);
    void *q = malloc(out_bytes);
    int rc = 1;
    if (!row || !q) {
        fprintf(stderr, "quant_rows: out of memory for a row of %lld values\n", n);
        goto done;
    }
    for (long long r = 0;; r++) {
        size_t got = fread(row, 1, in_bytes, stdin);
        if (got == 0 && feof(stdin)) break;
        if (got != in_bytes) {
            if (ferror(stdin))
                fprintf(stderr, "quant_rows: reading row %lld: %s\n", r, strerror(errno));
            else
                fprintf(stderr, "quant_rows: stdin ends inside row %lld (%zu of its %zu bytes): "
                        "the input must be whole rows of %lld f32 values\n", r, got, in_bytes, n);
            goto done;
        }
        if (shoal_quantize_row(type, row, q, n) != SHOAL_OK) {
            fprintf(stderr, "quant_rows: row %lld: %s\n", r, shoal_last_error());
            goto done;
        }
        if (fwrite(q, 1, out_bytes, stdout) != out_bytes) {
            fprintf(stderr, "quant_rows: writing row %lld: %s\n", r, strerror(errno));
            goto done;
        }
    }
    if (fflush(stdout)) {
        fprintf(stderr, "quant_rows: writing: %s\n", strerror(errno));
        goto done;
    }
    rc = 0;
done:
    free(row);
    free(q);
    return rc;
}
