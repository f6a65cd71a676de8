/*
 * cpu — the CPU compute backend (the fallback on every machine, and the
 * reference that other backends are checked against).
 *
 * Kernels come in a portable scalar form and, on x86-64, AVX2/FMA and
 * AVX-512 (VNNI) forms compiled separately; the best one the processor
 * supports is chosen when the backend is created, or forced with params.simd.
 */
#ifndef SHOAL_CPU_H
#define SHOAL_CPU_H

#include <stdint.h>

#include "../runtime/backend.h"

enum shoal_simd {
    SHOAL_SIMD_AUTO = -1,
    SHOAL_SIMD_SCALAR = 0,
    SHOAL_SIMD_AVX2 = 1,   /* AVX2 + FMA + F16C */
    SHOAL_SIMD_AVX512 = 2, /* AVX-512 F/BW/VL/DQ + VNNI */
    SHOAL_SIMD_COUNT
};

struct shoal_cpu_params {
    int n_threads; /* <= 0: one per online core */
    int simd;      /* enum shoal_simd; SHOAL_SIMD_AUTO picks the best supported */
    int spin;      /* microseconds a worker polls before sleeping (and a waiting caller before yielding); < 0: default */
    /*
     * Behave like a device backend (for tests of the code around one): the
     * weights are copied into the caller's device block instead of used in
     * place, and the buffers do not count as host memory, so that sums
     * between ranks are staged through the host as they are for a GPU.
     */
    int as_device;
    /* Steps of many sequences are not cut into lanes (shoal_backend_run_lanes): every op
     * on every thread, as with few (to measure what lanes give, and to test that a step
     * cut so computes what it does whole) */
    int no_lanes;
};

/* The best SIMD level this processor (and this build) supports. */
int shoal_cpu_simd_best(void);
const char *shoal_cpu_simd_name(int simd);
int shoal_cpu_simd_from_name(const char *name); /* "auto", "scalar", "avx2", "avx512"; -2 if unknown */
int shoal_cpu_online_cores(void);

/*
 * Creates the backend. Fails with SHOAL_UNSUPPORTED when params.simd names a
 * level this processor cannot run. The backend owns its threads.
 */
shoal_status shoal_cpu_backend_create(struct shoal_backend **out,
                                      const struct shoal_cpu_params *params);

#endif
