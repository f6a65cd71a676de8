/*
 * test_matmul — every weight type's matmul, on every SIMD level this machine
 * can run (and the scalar one), against a float64 reference: the weights
 * dequantized by the format's definition and multiplied in double.
 *
 * Tolerances are derived, not guessed: for Q8_0/Q4_0 the activations are
 * rounded to 8 bits per block of 32 (error at most half a step, d/2 per
 * value), so |y - ref| <= sum_b d_b/2 * sum_{i in b} |w_i|, plus float
 * rounding; for float weights, f32 accumulation: 1e-5 * sum |w_i x_i|.
 * Shapes include odd row counts and column counts that are not multiples of
 * the SIMD width, and several tokens at once.
 */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "cpu/cpu.h"
#include "cpu/kernels.h" /* inside cpu/: the per-level activation quantizers */

static uint64_t rng = 0x9e3779b97f4a7c15ull;
static float frand(void) { /* uniform in [-1, 1) */
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (float)((rng >> 11) * (1.0 / 9007199254740992.0)) * 2.0f - 1.0f;
}

/* x as a weight of type meets it: BF16 weights meet x rounded to bf16 (kernels.h). */
static double x_as(int type, float x) {
    return type == SHOAL_DTYPE_BF16 ? shoal_bf16_to_f32(shoal_f32_to_bf16(x)) : x;
}

static void run_case(struct shoal_backend *be, const char *level, int type, int rows, int cols,
                     int n) {
    size_t rb = shoal_dtype_row_bytes(type, cols);
    float *wf = malloc(sizeof(float) * rows * cols), *x = malloc(sizeof(float) * n * cols);
    float *wd = malloc(sizeof(float) * cols), *y = malloc(sizeof(float) * n * rows);
    uint8_t *wq = malloc(rb * rows);
    for (int i = 0; i < rows * cols; i++) wf[i] = frand() * (1 + (i % 7 == 0) * 3);
    for (int i = 0; i < n * cols; i++) x[i] = frand() * 2;
    for (int r = 0; r < rows; r++) CHECK_OK(shoal_quantize_row(type, wf + r * cols, wq + r * rb, cols));
    struct shoal_weight w;
    CHECK_OK(shoal_weight_prepare(be, &w, type, rows, cols, wq, NULL));
    CHECK_OK(shoal_op_matmul(be, y, &w, x, n));
    int quant = type == SHOAL_DTYPE_Q8_0 || type == SHOAL_DTYPE_Q4_0 || type == SHOAL_DTYPE_Q4_1;
    int bad = 0;
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        shoal_dequantize_row(type, wq + r * rb, wd, cols);
        for (int t = 0; t < n; t++) {
            const float *xt = x + t * cols;
            double ref = 0, mag = 0, bound = 0;
            for (int i = 0; i < cols; i++) {
                ref += (double)wd[i] * x_as(type, xt[i]);
                mag += fabs((double)wd[i] * xt[i]);
            }
            if (quant)
                for (int b = 0; b < cols / 32; b++) {
                    double amax = 0, wsum = 0;
                    for (int i = b * 32; i < b * 32 + 32; i++) {
                        amax = fmax(amax, fabs(xt[i]));
                        wsum += fabs(wd[i]);
                    }
                    bound += amax / 127.0 / 2.0 * wsum * 1.001;
                }
            bound += 2e-5 * mag + 1e-6;
            double err = fabs(y[t * rows + r] - ref);
            if (err / bound > worst) worst = err / bound;
            if (err > bound && bad++ < 3)
                fprintf(stderr, "  %s %s %dx%d n=%d row %d tok %d: got %.7g want %.7g (bound %.3g)\n",
                        level, shoal_dtype_name(type), rows, cols, n, r, t, y[t * rows + r], ref, bound);
        }
    }
    CHECK(bad == 0, "%s %s %dx%d n=%d: %d values outside the bound", level, shoal_dtype_name(type),
          rows, cols, n, bad);
    if (getenv("VERBOSE"))
        printf("%-7s %-5s %5dx%-5d n=%-2d worst err/bound %.3f\n", level, shoal_dtype_name(type),
               rows, cols, n, worst);
    shoal_weight_release(be, &w);
    free(wf), free(x), free(wd), free(y), free(wq);
}

/*
 * The f64 matmul of a matrix equals, rounded to f32, the sum of the f64
 * matmuls of its two column halves (split on a block boundary), as tensor
 * parallelism computes it; and it stays within the same bound of the
 * reference as the f32 matmul.
 */
static void run_split_case(struct shoal_backend *be, const char *level, int type, int rows,
                           int cols, int n, int split, int run) {
    size_t rb = shoal_dtype_row_bytes(type, cols), rb1 = shoal_dtype_row_bytes(type, split);
    size_t rb2 = shoal_dtype_row_bytes(type, cols - split);
    float *row = malloc(sizeof(float) * cols), *x = malloc(sizeof(float) * n * cols);
    float *x1 = malloc(sizeof(float) * n * cols), *x2 = malloc(sizeof(float) * n * cols);
    uint8_t *wq = malloc(rb * rows), *w1 = malloc(rb1 * rows), *w2 = malloc(rb2 * rows);
    double *y = malloc(sizeof(double) * n * rows), *y1 = malloc(sizeof(double) * n * rows);
    double *y2 = malloc(sizeof(double) * n * rows);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand();
        shoal_quantize_row(type, row, wq + r * rb, cols);
        memcpy(w1 + r * rb1, wq + r * rb, rb1);
        memcpy(w2 + r * rb2, wq + r * rb + rb1, rb2);
    }
    for (int t = 0; t < n; t++)
        for (int c = 0; c < cols; c++) {
            float v = frand() * 3;
            x[t * cols + c] = v;
            if (c < split) x1[t * split + c] = v;
            else x2[t * (cols - split) + c - split] = v;
        }
    struct shoal_weight w, wa, wb;
    CHECK_OK(shoal_weight_prepare(be, &w, type, rows, cols, wq, NULL));
    CHECK_OK(shoal_weight_prepare(be, &wa, type, rows, split, w1, NULL));
    CHECK_OK(shoal_weight_prepare(be, &wb, type, rows, cols - split, w2, NULL));
    w.f64_block = wa.f64_block = wb.f64_block = run;
    CHECK_OK(shoal_op_matmul_f64(be, y, &w, x, n));
    CHECK_OK(shoal_op_matmul_f64(be, y1, &wa, x1, n));
    CHECK_OK(shoal_op_matmul_f64(be, y2, &wb, x2, n));
    int differ = 0, far = 0;
    for (int i = 0; i < n * rows; i++) {
        double sum = y1[i] + y2[i];
        if ((float)sum != (float)y[i] || fabs(sum - y[i]) > 1e-12 * (fabs(y[i]) + 1e-30)) differ++;
    }
    CHECK(differ == 0, "%s %s f64 %dx%d n=%d split at %d (runs of %d): %d values differ from the whole", level,
          shoal_dtype_name(type), rows, cols, n, split, run, differ);
    /* a float weight's whole within run_case's float bound of the f64 reference (runs sum in
     * f32; quantized types' activations are 8-bit, run_case's bound) */
    const int is_float = type == SHOAL_DTYPE_F32 || type == SHOAL_DTYPE_F16 || type == SHOAL_DTYPE_BF16;
    for (int r = 0; is_float && r < rows; r++) {
        shoal_dequantize_row(type, wq + r * rb, row, cols);
        for (int t = 0; t < n; t++) {
            double ref = 0, mag = 0;
            for (int c = 0; c < cols; c++) {
                ref += (double)row[c] * x_as(type, x[t * cols + c]);
                mag += fabs((double)row[c] * x[t * cols + c]);
            }
            far += fabs(y[t * rows + r] - ref) > 2e-5 * mag + 1e-6;
        }
    }
    CHECK(far == 0, "%s %s f64 %dx%d n=%d (runs of %d): %d values off the reference", level, shoal_dtype_name(type),
          rows, cols, n, run, far);
    shoal_weight_release(be, &w), shoal_weight_release(be, &wa), shoal_weight_release(be, &wb);
    free(row), free(x), free(x1), free(x2), free(wq), free(w1), free(w2), free(y), free(y1), free(y2);
}

/*
 * A level that says it is batch-invariant (cpu_kernels.batch_invariant, the
 * promise that lets the backend cut steps into lanes) gives each token of a
 * batch the same bits, f32 and f64, as the same token alone: shapes whose
 * tokens and rows fall in full and partial tiles, and rows that end inside
 * a SIMD vector.
 */
static void run_invariance_case(struct shoal_backend *be, const char *level, int type, int rows,
                                int cols, int n, int run) {
    size_t rb = shoal_dtype_row_bytes(type, cols);
    float *row = malloc(sizeof(float) * cols), *x = malloc(sizeof(float) * n * cols);
    float *y = malloc(sizeof(float) * n * rows), *y1 = malloc(sizeof(float) * rows);
    double *yd = malloc(sizeof(double) * n * rows), *yd1 = malloc(sizeof(double) * rows);
    uint8_t *wq = malloc(rb * rows);
    for (int r = 0; r < rows; r++) {
        for (int c = 0; c < cols; c++) row[c] = frand();
        CHECK_OK(shoal_quantize_row(type, row, wq + r * rb, cols));
    }
    for (int i = 0; i < n * cols; i++) x[i] = frand() * 2;
    struct shoal_weight w;
    CHECK_OK(shoal_weight_prepare(be, &w, type, rows, cols, wq, NULL));
    w.f64_block = run;
    CHECK_OK(shoal_op_matmul(be, y, &w, x, n));
    CHECK_OK(shoal_op_matmul_f64(be, yd, &w, x, n));
    int differ = 0;
    for (int t = 0; t < n; t++) {
        CHECK_OK(shoal_op_matmul(be, y1, &w, x + (size_t)t * cols, 1));
        CHECK_OK(shoal_op_matmul_f64(be, yd1, &w, x + (size_t)t * cols, 1));
        differ += memcmp(y1, y + (size_t)t * rows, sizeof(float) * rows) != 0;
        differ += memcmp(yd1, yd + (size_t)t * rows, sizeof(double) * rows) != 0;
    }
    CHECK(differ == 0, "%s %s %dx%d n=%d (f64 runs %d): %d tokens' results depend on their batch", level,
          shoal_dtype_name(type), rows, cols, n, run, differ);
    shoal_weight_release(be, &w);
    free(row), free(x), free(y), free(y1), free(yd), free(yd1), free(wq);
}

/*
 * The AVX-512 level's f64 sums are the scalar level's, bit for bit, for
 * every block type shoal quantizes (and so can make weights of here),
 * whatever the tile the tokens fall in: each block's product is exact and
 * the blocks are added in order, so ranks of one tensor-parallel group on
 * either level add up to what one rank gives. (AVX2 splits a block's
 * product over lanes and adds the lanes' shares; the float types' lanes
 * add their products in another order: within 1e-12 of each other,
 * run_split_case's bound, not the same bits.)
 */
static void test_f64_levels(int best) {
    enum { ROWS = 37, COLS = 512, N = 19 };
    float *wf = malloc(sizeof(float) * ROWS * COLS), *x = malloc(sizeof(float) * N * COLS);
    double *want = malloc(sizeof(double) * N * ROWS), *got = malloc(sizeof(double) * N * ROWS);
    uint8_t *wq = malloc(shoal_dtype_row_bytes(SHOAL_DTYPE_F32, COLS) * ROWS);
    /* blocks of magnitudes 2^-12..2^12, so that the f64 sums round (an order of additions
     * other than the scalar level's shows) */
    for (int i = 0; i < ROWS * COLS; i++) wf[i] = ldexpf(frand(), (i / 32 * 7) % 25 - 12);
    for (int i = 0; i < N * COLS; i++) x[i] = ldexpf(frand(), (i / 32 * 5) % 25 - 12);
    for (int type = 0; type < SHOAL_DTYPE_MAX; type++) {
        if (!shoal_can_quantize(type) || !shoal_cpu_kernels_scalar.mm_f64[type] || shoal_dtype_info(type)->block == 1)
            continue;
        const size_t rb = shoal_dtype_row_bytes(type, COLS);
        for (int r = 0; r < ROWS; r++) CHECK_OK(shoal_quantize_row(type, wf + r * COLS, wq + r * rb, COLS));
        for (int simd = SHOAL_SIMD_SCALAR; simd <= best; simd++) {
            if (simd != SHOAL_SIMD_SCALAR && simd != SHOAL_SIMD_AVX512) continue;
            struct shoal_backend *be = NULL;
            struct shoal_cpu_params p = { .n_threads = 2, .simd = simd, .spin = -1 };
            CHECK_OK(shoal_cpu_backend_create(&be, &p));
            struct shoal_weight w;
            CHECK_OK(shoal_weight_prepare(be, &w, type, ROWS, COLS, wq, NULL));
            if (simd == SHOAL_SIMD_SCALAR) /* token t's sums do not depend on the batch */
                CHECK_OK(shoal_op_matmul_f64(be, want, &w, x, N));
            for (int n = 1; simd != SHOAL_SIMD_SCALAR && n <= N; n += 6) {
                CHECK_OK(shoal_op_matmul_f64(be, got, &w, x, n));
                int differ = 0;
                for (int i = 0; i < n * ROWS; i++) differ += memcmp(&got[i], &want[i], sizeof(double)) != 0;
                CHECK(differ == 0, "%s %s f64 %dx%d n=%d: %d of %d sums differ from the scalar level's",
                      shoal_cpu_simd_name(simd), shoal_dtype_name(type), ROWS, COLS, n, differ, n * ROWS);
            }
            shoal_weight_release(be, &w);
            shoal_backend_destroy(be);
        }
    }
    free(wf), free(x), free(want), free(got), free(wq);
}

/* Each level's activation quantizer writes exactly the scalar one's bytes. */
static void test_quantize_x(const struct cpu_kernels *k, const char *level) {
    enum { COLS = 32 * 11 };
    float x[COLS];
    for (int i = 0; i < COLS; i++) x[i] = frand() * 3;
    /* a block whose scale is exactly 1 and whose values sit on halves (ties
     * round to even), and an all-zero block */
    x[0] = 127.0f;
    for (int i = 1; i < 32; i++) x[i] = (float)(i % 2 ? i : -i) + (i % 2 ? 0.5f : -0.5f);
    for (int i = 32; i < 64; i++) x[i] = 0;
    for (int grouped = 0; grouped <= 1; grouped++)
        for (int lanes = 0; lanes <= 8; lanes += 4) {
            int8_t q[2][COLS];
            float d[2][11], s[2][11], vd[2][8 * 8 * 4];
            int32_t sum[2][11], vc[2][8 * 8 * 4];
            shoal_cpu_quantize_x(x, COLS, q[0], d[0], s[0], sum[0], grouped, lanes, 8, vc[0], vd[0]);
            k->quantize_x(x, COLS, q[1], d[1], s[1], sum[1], grouped, lanes, 8, vc[1], vd[1]);
            CHECK(memcmp(q[0], q[1], sizeof q[0]) == 0 && memcmp(d[0], d[1], sizeof d[0]) == 0 &&
                      memcmp(sum[0], sum[1], sizeof sum[0]) == 0 && memcmp(s[0], s[1], sizeof s[0]) == 0,
                  "%s quantize_x (grouped %d) differs from the scalar one", level, grouped);
            if (lanes)
                CHECK(memcmp(vc[0], vc[1], sizeof(int32_t) * 8 * lanes) == 0 &&
                          memcmp(vd[0], vd[1], sizeof(float) * 8 * lanes) == 0,
                      "%s lane vectors differ", level);
        }
}

/* a's distance from b in units of b's last place (0 when equal, both NaN included) */
static double ulps(float a, float b) {
    if (isnan(a) || isnan(b)) return isnan(a) && isnan(b) ? 0 : INFINITY;
    if (a == b) return 0;
    if (isinf(b)) return INFINITY;
    return fabs((double)a - (double)b) / ((double)nextafterf(fabsf(b), INFINITY) - fabs((double)b));
}

/*
 * A level's silu_mul within 4 ulps of the exact value (taken in double;
 * the scalar loop's four roundings, expf's included, reach 3), and the
 * scalar loop's value at the edges: |g| >= 87, where e^-g leaves the
 * floats and g / (1 + e^-g) is g or 0, infinities and NaN.
 */
static void silu_scalar(float *g, const float *u, long long n) { /* the backend's loop, for scale */
    for (long long i = 0; i < n; i++) g[i] = g[i] / (1.0f + expf(-g[i])) * u[i];
}

static void test_silu(void (*silu_mul)(float *, const float *, long long), const char *level) {
    enum { N = 20011 };
    static float g[N], u[N], y[N];
    static const float edge[] = { 0.0f, -0.0f, 1e-30f, -1e-30f, 80.0f, -80.0f, 87.3f, -87.3f, 88.7f,
                                  -88.7f, 89.0f, -89.0f, 100.0f, -100.0f, 1e30f, -1e30f, INFINITY,
                                  -INFINITY, NAN };
    const int ne = (int)(sizeof edge / sizeof edge[0]);
    for (int i = 0; i < N; i++) {
        g[i] = i < ne ? edge[i] : i % 3 ? (float)(frand() * 24) : (float)(frand() * 4);
        u[i] = i < ne ? 1.0f : (float)frand() * 2;
        y[i] = g[i];
    }
    silu_mul(y, u, N - 3); /* the last three stay as they were: no write past n */
    int bad = 0;
    double worst = 0;
    for (int i = 0; i < N; i++) {
        double want;
        if (i >= N - 3) want = g[i];
        else if (!(fabsf(g[i]) < 87)) want = (double)(g[i] / (1.0f + expf(-g[i])) * u[i]);
        else want = (double)g[i] / (1.0 + exp(-(double)g[i])) * (double)u[i];
        const float w = (float)want;
        const double e = fabs(want) >= 1.2e-38 || !isfinite(w) ? ulps(y[i], w)
                         : fabs(y[i] - want) <= 1.2e-38 ? 0 : INFINITY;
        if (e > worst) worst = e;
        if (e > 4 && bad++ < 5)
            fprintf(stderr, "%s silu_mul(%g) x %g = %g, want %g (%.1f ulps)\n", level, g[i], u[i], y[i], want, e);
    }
    CHECK(bad == 0, "%s silu_mul: %d of %d values more than 4 ulps from exact", level, bad, N);
    printf("%-7s silu_mul: worst %.2f ulps over %d values\n", level, worst, N);
}

int main(void) {
    static const int types[] = { SHOAL_DTYPE_F32, SHOAL_DTYPE_F16, SHOAL_DTYPE_BF16,
                                 SHOAL_DTYPE_Q8_0, SHOAL_DTYPE_Q4_0, SHOAL_DTYPE_Q4_1 };
    static const int shapes[][3] = {
        /* rows, cols, tokens */
        { 1, 32, 1 }, { 7, 64, 1 }, { 13, 96, 3 }, { 64, 172, 1 }, { 33, 224, 2 },
        { 100, 256, 5 }, { 17, 4096, 1 }, { 5, 32 * 37, 9 }, { 129, 160, 17 }, { 11, 172, 13 },
    };
    int best = shoal_cpu_simd_best();
    printf("best SIMD level here: %s\n", shoal_cpu_simd_name(best));
    test_quantize_x(&shoal_cpu_kernels_scalar, "scalar");
    test_silu(silu_scalar, "scalar");
    test_f64_levels(best);
#if defined(SHOAL_X86)
    if (best >= SHOAL_SIMD_AVX2) test_quantize_x(&shoal_cpu_kernels_avx2, "avx2");
    if (best >= SHOAL_SIMD_AVX512) test_quantize_x(&shoal_cpu_kernels_avx512, "avx512");
    if (best >= SHOAL_SIMD_AVX2) test_silu(shoal_cpu_kernels_avx2.silu_mul, "avx2");
    if (best >= SHOAL_SIMD_AVX512) test_silu(shoal_cpu_kernels_avx512.silu_mul, "avx512");
#endif
    for (int simd = SHOAL_SIMD_SCALAR; simd <= best; simd++) {
        for (int threads = 1; threads <= 3; threads += 2) {
            struct shoal_backend *be = NULL;
            struct shoal_cpu_params p = { .n_threads = threads, .simd = simd, .spin = -1 };
            CHECK_OK(shoal_cpu_backend_create(&be, &p));
            if (!be) continue;
            for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
                for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++) {
                    int type = types[ti], cols = shapes[si][1];
                    if (!shoal_dtype_row_bytes(type, cols)) continue; /* 172 is not a block multiple */
                    run_case(be, shoal_cpu_simd_name(simd), type, shapes[si][0], cols, shapes[si][2]);
                }
            /* splits at every kind of block boundary: inside and between groups of four */
            static const int splits[][4] = { /* rows, cols, tokens, split */
                { 9, 256, 1, 128 }, { 9, 256, 3, 96 }, { 5, 1184, 2, 32 }, { 17, 352, 1, 160 },
                { 7, 4096, 1, 2080 }, { 33, 224, 7, 192 }, { 4, 64, 5, 32 },
            };
            static const int tiles[][3] = { { 37, 172, 13 }, { 9, 1184, 8 }, { 70, 96, 3 }, { 19, 768, 11 } };
            const struct cpu_kernels *k = simd == SHOAL_SIMD_SCALAR ? &shoal_cpu_kernels_scalar
#if defined(SHOAL_X86)
                                          : simd == SHOAL_SIMD_AVX2 ? &shoal_cpu_kernels_avx2
                                                                    : &shoal_cpu_kernels_avx512;
#else
                                                                    : NULL;
#endif
            /* every type the level computes and shoal can make weights of (the K-quants at 768 columns) */
            for (int type = 0; k && k->batch_invariant && type < SHOAL_DTYPE_MAX; type++)
                for (size_t si = 0; k->mm[type] && shoal_can_quantize(type) && si < sizeof tiles / sizeof *tiles; si++)
                    if (shoal_dtype_row_bytes(type, tiles[si][1]))
                        for (int run = 0; run <= 64; run += 64)
                            run_invariance_case(be, shoal_cpu_simd_name(simd), type, tiles[si][0], tiles[si][1],
                                                tiles[si][2], run);
            for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
                for (size_t si = 0; si < sizeof splits / sizeof *splits; si++) {
                    run_split_case(be, shoal_cpu_simd_name(simd), types[ti], splits[si][0],
                                   splits[si][1], splits[si][2], splits[si][3], 0);
                    /* float weights with f64 runs, cut on a run (shoal_weight.f64_block) */
                    const int is_float = types[ti] == SHOAL_DTYPE_F32 || types[ti] == SHOAL_DTYPE_F16 ||
                                         types[ti] == SHOAL_DTYPE_BF16;
                    for (int run = 64; is_float && run <= 256; run *= 4) {
                        if (splits[si][3] % run == 0)
                            run_split_case(be, shoal_cpu_simd_name(simd), types[ti], splits[si][0],
                                           splits[si][1], splits[si][2], splits[si][3], run);
                    }
                }
            shoal_backend_destroy(be);
        }
    }
#if defined(SHOAL_X86)
    /* AVX-512's BF16 kernels as on a processor without AVX512_BF16 (the widening ones; this
     * one may have it): against the reference, cut on a run, and batch-invariant */
    if (best >= SHOAL_SIMD_AVX512) {
        struct shoal_backend *be = NULL;
        struct shoal_cpu_params p = { .n_threads = 3, .simd = SHOAL_SIMD_AVX512, .spin = -1 };
        CHECK_OK(shoal_cpu_backend_create(&be, &p));
        shoal_cpu_avx512_set_bf16(0);
        for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
            if (shoal_dtype_row_bytes(SHOAL_DTYPE_BF16, shapes[si][1]))
                run_case(be, "avx512 (no avx512_bf16)", SHOAL_DTYPE_BF16, shapes[si][0], shapes[si][1], shapes[si][2]);
        run_split_case(be, "avx512 (no avx512_bf16)", SHOAL_DTYPE_BF16, 9, 256, 3, 128, 64);
        run_split_case(be, "avx512 (no avx512_bf16)", SHOAL_DTYPE_BF16, 7, 4096, 1, 2080, 0);
        for (int run = 0; run <= 64; run += 64)
            run_invariance_case(be, "avx512 (no avx512_bf16)", SHOAL_DTYPE_BF16, 37, 172, 13, run);
        shoal_cpu_avx512_set_bf16(1);
        shoal_backend_destroy(be);
    }
#endif
    /* asking for a level the processor lacks is refused, not a crash */
    if (best < SHOAL_SIMD_AVX512) {
        struct shoal_backend *be = NULL;
        struct shoal_cpu_params p = { .n_threads = 1, .simd = SHOAL_SIMD_AVX512 };
        CHECK(shoal_cpu_backend_create(&be, &p) == SHOAL_UNSUPPORTED, "unsupported level accepted");
    }
    return check_done("test_matmul");
}
