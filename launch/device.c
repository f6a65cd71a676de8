/*
 * device.c — which compute backend a rank runs on: --device cpu|cuda|auto
 * (auto: CUDA when a device is present), --gpu N or, by default, one GPU per
 * rank of this machine (its local rank from mpirun or Slurm, modulo the
 * GPUs), and the backend made from that choice with a line saying what it is.
 * SHOAL_CUDA_GRAPHS=0 in the environment turns CUDA graphs off;
 * SHOAL_CPU_AS_DEVICE=1 makes the CPU backend behave as a device's (tests);
 * SHOAL_CPU_LANES=0 keeps it from cutting steps of many sequences into lanes
 * (to measure what they give).
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../cpu/cpu.h"
#include "../cuda/cuda.h"
#include "launch.h"

/* SHOAL_CPU_AS_DEVICE=1 (tests): the CPU backend behaving as a GPU's does without NCCL, its
 * weights copied, its sums between ranks and an offload group's parts staged through the host */
int launch_cpu_as_device(void) {
    const char *v = getenv("SHOAL_CPU_AS_DEVICE");
    return v && strcmp(v, "1") == 0;
}

int launch_device_from_name(const char *name) {
    if (strcmp(name, "auto") == 0) return LAUNCH_DEVICE_AUTO;
    if (strcmp(name, "cpu") == 0) return LAUNCH_DEVICE_CPU;
    if (strcmp(name, "cuda") == 0 || strcmp(name, "gpu") == 0) return LAUNCH_DEVICE_CUDA;
    return -1;
}

int launch_local_rank(void) {
    static const char *const vars[] = { "OMPI_COMM_WORLD_LOCAL_RANK", "SLURM_LOCALID",
                                        "MPI_LOCALRANKID", "PMI_LOCAL_RANK", "PMIX_LOCAL_RANK" };
    for (size_t i = 0; i < sizeof vars / sizeof *vars; i++) {
        const char *v = getenv(vars[i]);
        if (v && *v) return atoi(v);
    }
    return 0;
}

static shoal_status make_cuda(int gpu, int rank, int count, const char *why,
                              struct shoal_backend **be, int *gpu_out, char *desc, size_t len);

shoal_status launch_backend_create(int device, int gpu, int rank, const struct shoal_cpu_params *cp,
                                   struct shoal_backend **be, int *gpu_out, char *desc, size_t len) {
    *be = NULL;
    *gpu_out = -1;
    const char *why = NULL;
    int count = device == LAUNCH_DEVICE_CPU ? 0 : shoal_cuda_device_count(&why);
    const int automatic = device == LAUNCH_DEVICE_AUTO;
    if (automatic) device = count > 0 ? LAUNCH_DEVICE_CUDA : LAUNCH_DEVICE_CPU;
    if (device == LAUNCH_DEVICE_CUDA) {
        shoal_status rc = make_cuda(gpu, rank, count, why, be, gpu_out, desc, len);
        /* auto: a driver too old for this CUDA, or no module, leaves the CPU */
        if (rc != SHOAL_UNSUPPORTED || !automatic) return rc;
        fprintf(stderr, "shoal: rank %d: CUDA not usable (%s); computing on the CPU\n", rank,
                shoal_last_error());
        shoal_error_clear();
        gpu = -1;
    }
    if (gpu >= 0) return shoal_errorf(SHOAL_INVALID, "--gpu goes with --device cuda");
    struct shoal_cpu_params p = *cp;
    p.as_device = p.as_device || launch_cpu_as_device();
    const char *lanes = getenv("SHOAL_CPU_LANES");
    p.no_lanes = p.no_lanes || (lanes && strcmp(lanes, "0") == 0);
    SHOAL_TRY(shoal_cpu_backend_create(be, &p));
    int simd = cp->simd == SHOAL_SIMD_AUTO ? shoal_cpu_simd_best() : cp->simd;
    snprintf(desc, len, "cpu %s, %d threads/rank", shoal_cpu_simd_name(simd), cp->n_threads);
    return SHOAL_OK;
}

/* The CUDA backend on gpu (-1: by local rank) of count devices. */
static shoal_status make_cuda(int gpu, int rank, int count, const char *why,
                              struct shoal_backend **be, int *gpu_out, char *desc, size_t len) {
    if (count == 0)
        return shoal_errorf(SHOAL_UNSUPPORTED, "--device cuda: no CUDA device can be used here: %s "
                            "(use --device cpu)", why);
    if (gpu >= count)
        return shoal_errorf(SHOAL_INVALID, "--gpu %d: this machine has %d CUDA device%s (0..%d)", gpu,
                            count, count == 1 ? "" : "s", count - 1);
    if (gpu < 0) gpu = launch_local_rank() % count;
    /* SHOAL_CUDA_GRAPHS=0: every op launched as it comes (to measure what graphs save) */
    const char *graphs = getenv("SHOAL_CUDA_GRAPHS");
    struct shoal_cuda_params p = { .device = gpu, .no_graphs = graphs && strcmp(graphs, "0") == 0,
                                   .rank = rank };
    SHOAL_TRY(shoal_cuda_backend_create(be, &p));
    char name[128] = "?", mem[32];
    size_t total = 0;
    if (shoal_cuda_device_info(gpu, name, sizeof name, &total, NULL) != SHOAL_OK) shoal_error_clear();
    snprintf(desc, len, "cuda %d: %s, %s", gpu, name, shoal_fmt_bytes(mem, sizeof mem, (double)total));
    *gpu_out = gpu;
    return SHOAL_OK;
}
