/*
 * bench_matmul — times the CPU backend's matmul alone: a rows x cols weight
 * of the given type, n tokens, t threads, best of several repetitions;
 * prints microseconds per call, weight GB/s and token-row products per
 * second. For tuning kernels; not a test.
 *
 * usage: bench_matmul TYPE ROWS COLS N [THREADS] [SIMD] [f64[:RUN]]
 *   e.g. bench_matmul q4_0 5632 2048 1 2     (decode-shaped)
 *        bench_matmul q4_0 5632 2048 256 2   (prompt-shaped)
 *        bench_matmul q8_0 1024 2816 16 2 auto f64   (the f64 sums of row-parallel weights)
 *        bench_matmul q4_1 576 1536 16 2 auto f64:128  (the same with f64 runs of 128 columns)
 * Types shoal cannot quantize (the k-quants, ...) get random blocks.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cpu/cpu.h"

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: bench_matmul TYPE ROWS COLS N [THREADS] [SIMD] [f64[:RUN]]\n");
        return 2;
    }
    int type = shoal_dtype_from_name(argv[1]);
    long rows = atol(argv[2]), cols = atol(argv[3]), n = atol(argv[4]);
    int threads = argc > 5 ? atoi(argv[5]) : 0;
    int simd = argc > 6 ? shoal_cpu_simd_from_name(argv[6]) : SHOAL_SIMD_AUTO;
    int f64 = argc > 7 && strncmp(argv[7], "f64", 3) == 0;
    int run = f64 && argv[7][3] == ':' ? atoi(argv[7] + 4) : 0; /* shoal_weight.f64_block */
    size_t rb = type >= 0 ? shoal_dtype_row_bytes(type, cols) : 0;
    if (!rb || rows < 1 || n < 1 || simd == -2 || run < 0 || (run && cols % run)) {
        fprintf(stderr, "bench_matmul: bad type, shape or SIMD level\n");
        return 2;
    }
    struct shoal_backend *be = NULL;
    struct shoal_cpu_params p = { .n_threads = threads, .simd = simd, .spin = -1 };
    if (shoal_cpu_backend_create(&be, &p) != SHOAL_OK) {
        fprintf(stderr, "bench_matmul: %s\n", shoal_last_error());
        return 1;
    }
    /* weights: several copies so that decode-shaped runs stream from memory */
    size_t wbytes = rb * (size_t)rows;
    int copies = wbytes < (256u << 20) ? (int)((256u << 20) / wbytes) + 1 : 1;
    uint8_t *w = malloc(wbytes * (size_t)copies);
    float *row = malloc(sizeof(float) * (size_t)cols), *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *y = malloc(sizeof(float) * (size_t)(n * rows));
    double *yd = malloc(sizeof(double) * (size_t)(n * rows));
    uint64_t s = 88172645463325252ull;
    for (long r = 0; r < rows; r++) {
        for (long c = 0; c < cols; c++) {
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            row[c] = (float)((s >> 40) * (1.0 / 16777216.0)) - 0.5f;
        }
        if (shoal_can_quantize(type)) {
            shoal_quantize_row(type, row, w + rb * (size_t)r, cols);
            continue;
        }
        for (size_t i = 0; i < rb; i++) { /* k-quants and the like: random bytes (the time is the same) */
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            w[rb * (size_t)r + i] = (uint8_t)(s >> 40);
        }
    }
    for (int k = 1; k < copies; k++) memcpy(w + wbytes * (size_t)k, w, wbytes);
    for (long i = 0; i < n * cols; i++) x[i] = (float)((i * 7919) % 1000) / 1000.0f - 0.5f;
    struct shoal_weight *ws = calloc((size_t)copies, sizeof *ws);
    for (int k = 0; k < copies; k++) {
        shoal_weight_prepare(be, &ws[k], type, rows, cols, w + wbytes * (size_t)k, NULL);
        ws[k].f64_block = run;
    }
    double best = 1e30;
    int reps = n == 1 ? 200 : 5;
    for (int rep = 0; rep < reps; rep++) {
        double t0 = shoal_now();
        if (f64) shoal_op_matmul_f64(be, yd, &ws[rep % copies], x, (int)n);
        else shoal_op_matmul(be, y, &ws[rep % copies], x, (int)n);
        double t = shoal_now() - t0;
        if (t < best) best = t;
    }
    printf("%s%s%s %ldx%ld n=%ld: %.1f us, %.1f GB/s of weights, %.2f G row-token dots/s\n", argv[1],
           f64 ? " (f64 sums)" : "", run ? " (runs)" : "", rows, cols, n, best * 1e6, (double)wbytes / best / 1e9, (double)rows * n / best / 1e9);
    for (int k = 0; k < copies; k++) shoal_weight_release(be, &ws[k]);
    free(ws);
    free(w), free(row), free(x), free(y), free(yd);
    shoal_backend_destroy(be);
    return 0;
}
