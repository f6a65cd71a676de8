/*
 * x86_sum.h — horizontal sums shared by the x86 kernel files (kernels_avx2.c,
 * kernels_avx2_kq.c). Include it only from files compiled with AVX2
 * enabled (see CMakeLists.txt).
 */
#ifndef SHOAL_CPU_X86_SUM_H
#define SHOAL_CPU_X86_SUM_H

#include <immintrin.h>

/* The sum of v's 8 lanes: halves, then pairs, then the last two (one order, so one result). */
static inline float hsum256(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

#endif
