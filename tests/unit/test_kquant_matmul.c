/*
 * test_kquant_matmul — the matmuls of the 32- and 256-value block types
 * (Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, IQ4_NL; Q2_K..Q6_K, IQ4_XS) against a
 * reference written here from the formats' definitions, on every SIMD level
 * this machine runs (a level without its own kernel for a type lends the
 * scalar one's).
 *
 * - The activation forms: the Q8_K quantizer against llama.cpp's
 *   quantize_row_q8_K_ref, copied below as written there (its nearest_int,
 *   its MIN clamp), on edge cases (zeros, one value, ties at .5, the largest
 *   magnitude negative or positive, or both) and random blocks; the Q8_32
 *   one (llama.cpp's quantize_row_q8_0/q8_1: d = amax / 127 as f16, q =
 *   x * 127 / amax rounded to even, s = d * sum as f16) likewise. And each
 *   type's pairing (shoal_cpu_xform) against llama.cpp's vec_dot_type.
 * - The matmuls: random valid blocks (random bytes, f16 scales drawn so the
 *   weights are about U(-1, 1)), activations with outliers, a zero block and
 *   a one-value block. The reference sums, in long double, the weights
 *   shoal_dequantize_row gives (gguf.quants' values, tests/ref) times the
 *   activations as the form quantizes them, dequantized (d * q). A Q8_32
 *   type with a minimum (Q4_1, Q5_1) meets the block's sum as s, rounded to
 *   f16 (llama.cpp's block_q8_1): the reference adds m * (s - d * sum(q)),
 *   m read from the block. The kernels add exact products, so:
 *     f64: |y - ref| <= 1e-12 * sum |w x| (their f64 sums' rounding), when
 *       the dequantized weights are exact; they are not where a minimum and
 *       a scale of different binades meet (d * q - dmin * m rounds in f32,
 *       at most 2^-24 |w|, while the kernels keep it exact): the "wide"
 *       scales add 2^-23 * sum |w x| for those types, the "tight" ones (d and
 *       the minimum's scale in one binade: exact) do not;
 *     f32: the f64 sum rounded: within 1 ulp of the reference rounded.
 * - matmul_f64 over two column halves (tensor parallelism's row-parallel
 *   split, at a block boundary) adds up to the whole's, as test_matmul asks
 *   of the older types.
 * - matmul_n: weights of several forms and layouts on one input give, bit
 *   for bit, what each gives alone.
 */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "cpu/cpu.h"
#include "cpu/kernels.h" /* inside cpu/: the activation forms and their quantizers */

static uint64_t rng = 0x243f6a8885a308d3ull;
static uint64_t next(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}
static double uni(void) { return (double)(next() >> 11) * 0x1p-53 * 2 - 1; } /* [-1, 1) */

/* ------------------------------------------------ llama.cpp's quantizers */

/* ggml-quants.c, as written there */
static inline int nearest_int(float fval) {
    float val = fval + 12582912.f;
    int i;
    memcpy(&i, &val, sizeof(int));
    return (i & 0x007fffff) - 0x00400000;
}

/* quantize_row_q8_K_ref, for one block (its bsums set for a zero block too) */
static void ref_q8k(const float *x, int8_t *qs, float *d, int16_t *bsums) {
    float max = 0, amax = 0;
    for (int j = 0; j < 256; ++j) {
        float ax = fabsf(x[j]);
        if (ax > amax) {
            amax = ax;
            max = x[j];
        }
    }
    if (!amax) {
        *d = 0;
        memset(qs, 0, 256);
        memset(bsums, 0, 32);
        return;
    }
    const float iscale = -127.f / max;
    for (int j = 0; j < 256; ++j) {
        int v = nearest_int(iscale * x[j]);
        qs[j] = (int8_t)(v < 127 ? v : 127);
    }
    for (int j = 0; j < 16; ++j) {
        int sum = 0;
        for (int ii = 0; ii < 16; ++ii) sum += qs[j * 16 + ii];
        bsums[j] = (int16_t)sum;
    }
    *d = 1 / iscale;
}

/*
 * llama.cpp's Q8_0 and Q8_1 activations as its x86 code makes them
 * (quantize_row_q8_0 and q8_1 under AVX2: x * (127 / amax) rounded to
 * nearest even; d = amax / 127, and s = d * sum(q), stored as f16), which
 * shoal's levels all match (the C reference of ggml-quants.c, roundf(x * (1
 * / d)), differs from it by a step now and then). And the int sum.
 */
static void ref_q8_32(const float *x, int8_t *qs, float *d, float *s, int *isum) {
    float amax = 0;
    for (int j = 0; j < 32; j++) amax = fmaxf(amax, fabsf(x[j]));
    const float dd = amax / 127.f, id = amax != 0.0f ? 127.f / amax : 0.0f;
    int sum = 0;
    for (int j = 0; j < 32; ++j) {
        qs[j] = (int8_t)nearest_int(x[j] * id);
        sum += qs[j];
    }
    *d = shoal_f16_to_f32(shoal_f32_to_f16(dd));
    *s = shoal_f16_to_f32(shoal_f32_to_f16(dd * (float)sum));
    *isum = sum;
}

static void test_forms(void) {
    /* the pairings: llama.cpp's vec_dot_type (ggml-cpu.c's type_traits_cpu), but F16, which meets x in f32 here
     * (llama.cpp rounds it to f16) */
    static const struct { int type, form; } pairs[] = {
        { SHOAL_DTYPE_F32, XFORM_F32 },       { SHOAL_DTYPE_F16, XFORM_F32 },
        { SHOAL_DTYPE_BF16, XFORM_BF16 },     { SHOAL_DTYPE_Q8_0, XFORM_Q8_32 },
        { SHOAL_DTYPE_Q4_0, XFORM_Q8_32 },    { SHOAL_DTYPE_Q4_1, XFORM_Q8_32 },
        { SHOAL_DTYPE_Q5_0, XFORM_Q8_32 },    { SHOAL_DTYPE_Q5_1, XFORM_Q8_32 },
        { SHOAL_DTYPE_IQ4_NL, XFORM_Q8_32 },  { SHOAL_DTYPE_Q2_K, XFORM_Q8_K },
        { SHOAL_DTYPE_Q3_K, XFORM_Q8_K },     { SHOAL_DTYPE_Q4_K, XFORM_Q8_K },
        { SHOAL_DTYPE_Q5_K, XFORM_Q8_K },     { SHOAL_DTYPE_Q6_K, XFORM_Q8_K },
        { SHOAL_DTYPE_IQ4_XS, XFORM_Q8_K },
    };
    for (size_t i = 0; i < sizeof pairs / sizeof *pairs; i++)
        CHECK(shoal_cpu_xform[pairs[i].type] == pairs[i].form, "%s pairs with form %d, not %d",
              shoal_dtype_name(pairs[i].type), shoal_cpu_xform[pairs[i].type], pairs[i].form);

    /* Q8_K: edge cases, one block each, then random blocks of every magnitude */
    enum { NB = 12 + 64 };
    static float x[NB * 256];
    memset(x, 0, sizeof x);                          /* block 0: zeros */
    x[256 + 100] = 0.37f;                            /* 1: one positive value */
    x[512 + 255] = -3e-3f;                           /* 2: one negative value, last */
    for (int j = 0; j < 256; j++) /* 3: max -127 (iscale 1): ties at .5 */
        x[768 + j] = (float)(j % 2 ? (j / 2) % 120 : -((j / 2) % 120)) + (j % 4 < 2 ? 0.5f : -0.5f);
    x[768 + 7] = -127.0f;
    x[768 + 200] = 126.5f;
    for (int j = 0; j < 256; j++) x[1024 + j] = (float)uni(); /* 4: +100 first, -100 later */
    x[1024 + 5] = 100.0f, x[1024 + 77] = -100.0f;
    for (int j = 0; j < 256; j++) x[1280 + j] = (float)uni(); /* 5: -100 first, +100 later */
    x[1280 + 5] = -100.0f, x[1280 + 77] = 100.0f;
    for (int j = 0; j < 256; j++) x[1536 + j] = (float)uni() * 1e-3f; /* 6: max positive */
    x[1536 + 31] = 0.5f;
    for (int j = 0; j < 256; j++) x[1792 + j] = (float)uni() * 1e3f; /* 7: max negative */
    x[1792 + 128] = -2000.0f;
    for (int j = 0; j < 256; j++) x[2048 + j] = j % 3 ? 0.0f : -0.0f; /* 8: signed zeros */
    for (int j = 0; j < 256; j++) x[2304 + j] = (float)(j - 128) / 127.0f * 3.0f; /* 9: a ramp */
    for (int j = 0; j < 256; j++) x[2560 + j] = 1.0f; /* 10: all equal */
    for (int j = 0; j < 256; j++) x[2816 + j] = j % 2 ? 1e-30f : -1e-30f; /* 11: tiny */
    for (int b = 12; b < NB; b++) {
        double mag = pow(10.0, uni() * 6);
        for (int j = 0; j < 256; j++) x[b * 256 + j] = (float)(uni() * mag);
    }
    static int8_t q[2][NB * 256];
    static float d[2][NB];
    static int16_t bs[2][NB * 16];
    shoal_cpu_quantize_q8k(x, NB * 256, q[0], d[0], bs[0]);
    for (int b = 0; b < NB; b++) ref_q8k(x + b * 256, q[1] + b * 256, &d[1][b], bs[1] + b * 16);
    for (int b = 0; b < NB; b++)
        CHECK(!memcmp(q[0] + b * 256, q[1] + b * 256, 256) && !memcmp(&d[0][b], &d[1][b], 4) &&
                  !memcmp(bs[0] + b * 16, bs[1] + b * 16, 32),
              "Q8_K block %d differs from llama.cpp's (d %g vs %g)", b, d[0][b], d[1][b]);
    /* what the edge cases must give, spelled out */
    CHECK(d[0][0] == 0 && q[0][5] == 0 && bs[0][3] == 0, "a zero block");
    CHECK(q[0][256 + 100] == -127 && d[0][1] < 0 && q[0][256] == 0, "one positive value: q -127, d < 0");
    CHECK(q[0][512 + 255] == -127 && d[0][2] > 0, "one negative value: q -127, d > 0");
    const int8_t *t3 = q[0] + 768;
    CHECK(d[0][3] == 1 && t3[0] == 0 && t3[1] == 0 && t3[2] == -2 && t3[4] == -2 && t3[5] == 2 &&
              t3[6] == -4 && t3[200] == 126 && t3[7] == -127,
          "ties at .5 go to even (%d %d %d %d %d %d %d, d %g)", t3[0], t3[1], t3[2], t3[4], t3[5], t3[6],
          t3[200], d[0][3]);
    CHECK(q[0][1024 + 5] == -127 && q[0][1024 + 77] == 127 && q[0][1280 + 5] == -127 &&
              q[0][1280 + 77] == 127, "the first value of largest magnitude sets the sign");

    /* Q8_32: shoal's quantizer against the definition above */
    for (int b = 0; b < NB * 8; b++) {
        int8_t qa[32], qb[32];
        float da, sa, db, sb;
        int32_t ia;
        int ib;
        shoal_cpu_quantize_x(x + b * 32, 32, qa, &da, &sa, &ia, 0, 0, 0, NULL, NULL);
        ref_q8_32(x + b * 32, qb, &db, &sb, &ib);
        CHECK(!memcmp(qa, qb, 32) && da == db && sa == sb && ia == ib,
              "Q8_32 block %d differs from llama.cpp's (d %g vs %g, s %g vs %g)", b, da, db, sa, sb);
    }
}

/* ------------------------------------------------------- random blocks */

static uint16_t h16(double v) { return shoal_f32_to_f16((float)v); }

/* A random f16 of about mag (a factor 2^-2..2^1, either sign); with bin, in that binade. */
static uint16_t scale_near(double mag, int *bin) {
    int e;
    frexp(mag * pow(2.0, uni() * 1.5 - 0.5), &e);
    if (bin) {
        if (*bin == INT32_MIN) *bin = e;
        e = *bin;
    }
    double v = ldexp(0.5 + 0.5 * fabs(uni()), e); /* [2^(e-1), 2^e) */
    uint16_t h = h16(uni() < 0 ? -v : v);
    return h;
}

/*
 * n blocks of type at p: random bytes, then the f16 scales: the weights about U(-1, 1).
 * tight: a minimum's scale in the binade of d (the dequantized weights then exact).
 */
static void random_blocks(int type, uint8_t *p, int64_t n, int tight) {
    const int bb = shoal_dtype_info(type)->block_bytes;
    for (int64_t i = 0; i < n * bb; i++) p[i] = (uint8_t)next();
    for (int64_t i = 0; i < n; i++, p += bb) {
        int bin = INT32_MIN, *pb = tight ? &bin : NULL;
        switch (type) {
        case SHOAL_DTYPE_Q8_0: ((struct shoal_block_q8_0 *)p)->d = scale_near(1.0 / 127, NULL); break;
        case SHOAL_DTYPE_Q4_0: ((struct shoal_block_q4_0 *)p)->d = scale_near(1.0 / 8, NULL); break;
        case SHOAL_DTYPE_Q5_0: ((struct shoal_block_q5_0 *)p)->d = scale_near(1.0 / 16, NULL); break;
        case SHOAL_DTYPE_IQ4_NL: ((struct shoal_block_iq4_nl *)p)->d = scale_near(1.0 / 127, NULL); break;
        case SHOAL_DTYPE_Q4_1: {
            struct shoal_block_q4_1 *b = (void *)p;
            b->d = scale_near(1.0 / 8, pb);
            b->m = scale_near(1.0, pb);
            break;
        }
        case SHOAL_DTYPE_Q5_1: {
            struct shoal_block_q5_1 *b = (void *)p;
            b->d = scale_near(1.0 / 16, pb);
            b->m = scale_near(1.0, pb);
            break;
        }
        case SHOAL_DTYPE_Q2_K: {
            struct shoal_block_q2_k *b = (void *)p;
            b->d = scale_near(1.0 / 45, pb);
            b->dmin = scale_near(1.0 / 15, pb);
            break;
        }
        case SHOAL_DTYPE_Q3_K: ((struct shoal_block_q3_k *)p)->d = scale_near(1.0 / 128, NULL); break;
        case SHOAL_DTYPE_Q4_K: {
            struct shoal_block_q4_k *b = (void *)p;
            b->d = scale_near(1.0 / 945, pb);
            b->dmin = scale_near(1.0 / 63, pb);
            break;
        }
        case SHOAL_DTYPE_Q5_K: {
            struct shoal_block_q5_k *b = (void *)p;
            b->d = scale_near(1.0 / 1953, pb);
            b->dmin = scale_near(1.0 / 63, pb);
            break;
        }
        case SHOAL_DTYPE_Q6_K: ((struct shoal_block_q6_k *)p)->d = scale_near(1.0 / 4096, NULL); break;
        case SHOAL_DTYPE_IQ4_XS: ((struct shoal_block_iq4_xs *)p)->d = scale_near(1.0 / 4064, NULL); break;
        }
    }
}

/* Types whose dequantizer adds a minimum (d * q + m, or d * q - dmin * m: one f32 rounding). */
static int has_min(int type) {
    return type == SHOAL_DTYPE_Q4_1 || type == SHOAL_DTYPE_Q5_1 || type == SHOAL_DTYPE_Q2_K ||
           type == SHOAL_DTYPE_Q4_K || type == SHOAL_DTYPE_Q5_K;
}

/* ------------------------------------------------------------ matmuls */

/* x (n, cols): uniform, an outlier per token, block 1 zeros, block 2 a single value. */
static void random_x(float *x, int n, int cols, int bs) {
    for (int t = 0; t < n; t++) {
        float *xt = x + (size_t)t * cols;
        for (int i = 0; i < cols; i++) xt[i] = (float)uni();
        xt[(int)(next() % (uint64_t)cols)] = uni() < 0 ? -50.0f : 50.0f;
        if (cols >= 3 * bs) {
            memset(xt + bs, 0, sizeof(float) * (size_t)bs);
            memset(xt + 2 * bs, 0, sizeof(float) * (size_t)bs);
            xt[2 * bs + 5] = (float)uni() * 4;
        }
    }
}

/* ulps between two floats of one sign (or zeros) */
static long ulps(float a, float b) {
    int32_t ia, ib;
    memcpy(&ia, &a, 4), memcpy(&ib, &b, 4);
    if (ia < 0) ia = INT32_MIN - ia;
    if (ib < 0) ib = INT32_MIN - ib;
    return labs((long)ia - (long)ib);
}

/*
 * own: the level has its own f32 kernel for the type, which sums in f32 (in
 * another order): 1e-5 * sum |w x| more. The scalar kernels' f32 sums are
 * their f64 sums rounded.
 */
static void run_case(struct shoal_backend *be, const char *level, int own, int type, int rows,
                     int cols, int n, int tight) {
    const size_t rb = shoal_dtype_row_bytes(type, cols);
    const int form = shoal_cpu_xform[type], bs = form == XFORM_Q8_K ? 256 : 32, nb = cols / bs;
    uint8_t *wq = malloc(rb * rows);
    float *x = malloc(sizeof(float) * n * cols), *wd = malloc(sizeof(float) * cols);
    double *xh = malloc(sizeof(double) * n * cols); /* activations as the form quantizes them */
    long double *fix = calloc((size_t)n * nb, sizeof(long double)); /* Q8_1's s - d * sum(q) */
    float *y = malloc(sizeof(float) * n * rows);
    double *yd = malloc(sizeof(double) * n * rows);
    char what[64];
    snprintf(what, sizeof what, "%s %s %dx%d n=%d", shoal_dtype_name(type), tight ? "tight" : "wide", rows, cols, n);
    random_blocks(type, wq, (int64_t)rows * (cols / shoal_dtype_info(type)->block), tight);
    random_x(x, n, cols, bs);
    for (int t = 0; t < n; t++)
        for (int b = 0; b < nb; b++) {
            const float *xb = x + (size_t)t * cols + b * bs;
            if (form == XFORM_Q8_K) {
                int8_t q[256];
                int16_t sums[16];
                float d;
                ref_q8k(xb, q, &d, sums);
                for (int j = 0; j < 256; j++) /* exact in f64 */
                    xh[(size_t)t * cols + b * bs + j] = (double)d * q[j];
            } else {
                int8_t q[32];
                float d, s;
                int isum;
                ref_q8_32(xb, q, &d, &s, &isum);
                for (int j = 0; j < 32; j++) xh[(size_t)t * cols + b * bs + j] = (double)d * q[j];
                fix[(size_t)t * nb + b] = (long double)s - (long double)d * isum;
            }
        }
    struct shoal_weight w;
    CHECK_OK(shoal_weight_prepare(be, &w, type, rows, cols, wq, NULL));
    CHECK_OK(shoal_op_matmul(be, y, &w, x, n));
    CHECK_OK(shoal_op_matmul_f64(be, yd, &w, x, n));
    int bad64 = 0, bad32 = 0;
    double worst = 0;
    for (int r = 0; r < rows; r++) {
        CHECK_OK(shoal_dequantize_row(type, wq + r * rb, wd, cols));
        for (int t = 0; t < n; t++) {
            const double *xt = xh + (size_t)t * cols;
            long double ref = 0, mag = 0;
            for (int i = 0; i < cols; i++) {
                CHECK(isfinite(wd[i]), "%s row %d: a weight is %g", shoal_dtype_name(type), r, wd[i]);
                ref += (long double)wd[i] * xt[i];
                mag += fabsl((long double)wd[i] * xt[i]);
            }
            if (type == SHOAL_DTYPE_Q4_1 || type == SHOAL_DTYPE_Q5_1) /* m meets s */
                for (int b = 0; b < nb; b++) {
                    uint16_t m;
                    memcpy(&m, wq + r * rb + (size_t)b * shoal_dtype_info(type)->block_bytes + 2, 2);
                    ref += (long double)shoal_f16_to_f32(m) * fix[(size_t)t * nb + b];
                }
            const int loose = has_min(type) && !tight; /* the weights rounded in f32 */
            const double tol = 1e-12 * (double)mag + (loose ? 0x1p-23 * (double)mag : 0) + 1e-300;
            const double got = yd[(size_t)t * rows + r], err = fabs(got - (double)ref);
            if (err / tol > worst) worst = err / tol;
            if (err > tol && bad64++ < 3)
                fprintf(stderr, "  %s %s: row %d tok %d: f64 %.17g, reference %.17Lg (error %.3g, allowed %.3g)\n",
                        level, what, r, t, got, ref, err, tol);
            const float gf = y[(size_t)t * rows + r], want = (float)ref;
            const double err32 = fabs(gf - (double)ref);
            const int ok32 = own ? err32 <= tol + 1e-5 * (double)mag
                                 : ulps(gf, want) <= 1 || (loose && err32 <= tol + fabs((double)want) * 0x1p-24);
            if (!ok32 && bad32++ < 3)
                fprintf(stderr, "  %s %s: row %d tok %d: f32 %.9g, reference %.9g (%ld ulps)\n", level, what, r,
                        t, gf, want, ulps(gf, want));
        }
    }
    CHECK(bad64 == 0 && bad32 == 0, "%s %s: %d f64 and %d f32 values off the reference", level, what, bad64,
          bad32);
    if (getenv("VERBOSE")) printf("%-7s %-28s worst err/tol %.3g\n", level, what, worst);
    shoal_weight_release(be, &w);
    free(wq), free(x), free(wd), free(xh), free(fix), free(y), free(yd);
}

/*
 * Tensor parallelism's row-parallel split: the f64 matmul of a weight equals,
 * rounded to f32 and to 1e-12, the sum of the f64 matmuls of its two column
 * halves (cut at a block boundary: a super-block's for the 256-value types).
 */
static void run_split(struct shoal_backend *be, const char *level, int type, int rows, int cols, int n,
                      int split) {
    const size_t rb = shoal_dtype_row_bytes(type, cols), rb1 = shoal_dtype_row_bytes(type, split);
    const size_t rb2 = shoal_dtype_row_bytes(type, cols - split);
    uint8_t *wq = malloc(rb * rows), *w1 = malloc(rb1 * rows), *w2 = malloc(rb2 * rows);
    float *x = malloc(sizeof(float) * n * cols), *x1 = malloc(sizeof(float) * n * split);
    float *x2 = malloc(sizeof(float) * n * (cols - split));
    double *y = malloc(sizeof(double) * n * rows), *y1 = malloc(sizeof(double) * n * rows);
    double *y2 = malloc(sizeof(double) * n * rows);
    random_blocks(type, wq, (int64_t)rows * (cols / shoal_dtype_info(type)->block), 0);
    random_x(x, n, cols, 32);
    for (int r = 0; r < rows; r++) {
        memcpy(w1 + r * rb1, wq + r * rb, rb1);
        memcpy(w2 + r * rb2, wq + r * rb + rb1, rb2);
    }
    for (int t = 0; t < n; t++) {
        memcpy(x1 + (size_t)t * split, x + (size_t)t * cols, sizeof(float) * split);
        memcpy(x2 + (size_t)t * (cols - split), x + (size_t)t * cols + split, sizeof(float) * (cols - split));
    }
    struct shoal_weight w, wa, wb;
    CHECK_OK(shoal_weight_prepare(be, &w, type, rows, cols, wq, NULL));
    CHECK_OK(shoal_weight_prepare(be, &wa, type, rows, split, w1, NULL));
    CHECK_OK(shoal_weight_prepare(be, &wb, type, rows, cols - split, w2, NULL));
    CHECK_OK(shoal_op_matmul_f64(be, y, &w, x, n));
    CHECK_OK(shoal_op_matmul_f64(be, y1, &wa, x1, n));
    CHECK_OK(shoal_op_matmul_f64(be, y2, &wb, x2, n));
    int differ = 0;
    for (int i = 0; i < n * rows; i++) {
        const double sum = y1[i] + y2[i];
        differ += (float)sum != (float)y[i] || fabs(sum - y[i]) > 1e-12 * fabs(y[i]);
    }
    CHECK(differ == 0, "%s %s f64 %dx%d n=%d split at %d: %d values differ from the whole", level,
          shoal_dtype_name(type), rows, cols, n, split, differ);
    shoal_weight_release(be, &w), shoal_weight_release(be, &wa), shoal_weight_release(be, &wb);
    free(wq), free(w1), free(w2), free(x), free(x1), free(x2), free(y), free(y1), free(y2);
}

/* matmul_n of weights of several forms and layouts on one input: each as it gives alone. */
static void run_mixed(struct shoal_backend *be, const char *level, const int *types, int k, int cols,
                      int n) {
    struct shoal_weight w[SHOAL_MATMUL_MAX];
    uint8_t *wq[SHOAL_MATMUL_MAX];
    float *y[SHOAL_MATMUL_MAX], *y1 = malloc(sizeof(float) * 64 * n);
    float *x = malloc(sizeof(float) * n * cols);
    const int rows[SHOAL_MATMUL_MAX] = { 33, 17, 64, 5 };
    random_x(x, n, cols, 32);
    for (int i = 0; i < k; i++) {
        const int bk = shoal_dtype_info(types[i])->block;
        wq[i] = malloc(shoal_dtype_row_bytes(types[i], cols) * rows[i]);
        if (shoal_can_quantize(types[i])) {
            float *row = malloc(sizeof(float) * cols);
            for (int r = 0; r < rows[i]; r++) {
                for (int c = 0; c < cols; c++) row[c] = (float)uni();
                shoal_quantize_row(types[i], row, wq[i] + r * shoal_dtype_row_bytes(types[i], cols), cols);
            }
            free(row);
        } else {
            random_blocks(types[i], wq[i], (int64_t)rows[i] * (cols / bk), 0);
        }
        CHECK_OK(shoal_weight_prepare(be, &w[i], types[i], rows[i], cols, wq[i], NULL));
        y[i] = malloc(sizeof(float) * rows[i] * n);
    }
    const struct shoal_weight *wp[SHOAL_MATMUL_MAX] = { &w[0], &w[1], &w[2], &w[3] };
    CHECK_OK(shoal_op_matmul_n(be, k, y, wp, x, n));
    for (int i = 0; i < k; i++) {
        CHECK_OK(shoal_op_matmul(be, y1, &w[i], x, n));
        CHECK(!memcmp(y1, y[i], sizeof(float) * rows[i] * n), "%s matmul_n: the %s weight (%d of %d) "
              "differs from its matmul alone", level, shoal_dtype_name(types[i]), i + 1, k);
    }
    for (int i = 0; i < k; i++) shoal_weight_release(be, &w[i]), free(wq[i]), free(y[i]);
    free(y1), free(x);
}

int main(void) {
    static const int types[] = { SHOAL_DTYPE_Q8_0, SHOAL_DTYPE_Q4_0, SHOAL_DTYPE_Q4_1, SHOAL_DTYPE_Q5_0,
                                 SHOAL_DTYPE_Q5_1, SHOAL_DTYPE_IQ4_NL, SHOAL_DTYPE_Q2_K, SHOAL_DTYPE_Q3_K,
                                 SHOAL_DTYPE_Q4_K, SHOAL_DTYPE_Q5_K, SHOAL_DTYPE_Q6_K, SHOAL_DTYPE_IQ4_XS };
    static const int shapes[][3] = { /* rows, cols, tokens */
        { 1, 256, 1 }, { 7, 512, 3 }, { 33, 1024, 2 }, { 5, 4096, 1 }, { 17, 768, 9 },
    };
    test_forms();
    const int best = shoal_cpu_simd_best();
    for (int simd = SHOAL_SIMD_SCALAR; simd <= best; simd++) {
        struct shoal_backend *be = NULL;
        struct shoal_cpu_params p = { .n_threads = 2, .simd = simd, .spin = -1 };
        CHECK_OK(shoal_cpu_backend_create(&be, &p));
        if (!be) continue;
        const char *level = shoal_cpu_simd_name(simd);
        const struct cpu_kernels *k = &shoal_cpu_kernels_scalar;
#if defined(SHOAL_X86)
        if (simd == SHOAL_SIMD_AVX2) k = &shoal_cpu_kernels_avx2;
        if (simd == SHOAL_SIMD_AVX512) k = &shoal_cpu_kernels_avx512;
#endif
        for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++) {
            const int own = simd != SHOAL_SIMD_SCALAR && k->mm[types[ti]];
            for (size_t si = 0; si < sizeof shapes / sizeof *shapes; si++)
                for (int tight = 0; tight <= has_min(types[ti]); tight++)
                    run_case(be, level, own, types[ti], shapes[si][0], shapes[si][1], shapes[si][2], tight);
            /* 32-value blocks in rows that are not a multiple of 256 */
            if (shoal_dtype_info(types[ti])->block == 32) run_case(be, level, own, types[ti], 9, 96, 2, 0);
            const int bk = shoal_dtype_info(types[ti])->block;
            run_split(be, level, types[ti], 9, 1024, 3, 2 * bk);
            run_split(be, level, types[ti], 17, 1536, 1, 1024);
        }
        static const int mixes[][4] = {
            { SHOAL_DTYPE_Q4_K, SHOAL_DTYPE_Q8_0, SHOAL_DTYPE_Q5_0, SHOAL_DTYPE_Q4_0 },
            { SHOAL_DTYPE_Q6_K, SHOAL_DTYPE_Q4_1, SHOAL_DTYPE_IQ4_XS, SHOAL_DTYPE_F16 },
            { SHOAL_DTYPE_Q5_1, SHOAL_DTYPE_Q4_0, SHOAL_DTYPE_Q8_0, SHOAL_DTYPE_IQ4_NL },
        };
        for (int mi = 0; mi < 3; mi++)
            for (int n = 1; n <= 9; n += 8) run_mixed(be, level, mixes[mi], 4, 512, n);
        shoal_backend_destroy(be);
    }
    return check_done("test_kquant_matmul");
}
