/*
 * cuda — the CUDA compute backend: device memory, one stream, kernels for
 * every op of runtime/backend.h, prompt batches on tile kernels of our own (each
 * output summed in one order whatever the shape; cuBLAS for the f64 sums). Weights are
 * repacked on upload (Q8_0/Q4_0/Q4_1 blocks split into a plane of values and a
 * plane of scales, rows padded to 16 bytes) so that the decode kernels read
 * them with aligned vector loads; Q5_0, Q5_1, IQ4_NL, the k-quants and IQ4_XS
 * keep their GGUF blocks, rows padded to 16 bytes (cuda/kquant.h decodes them).
 *
 * A build without CUDA (cuda/none.c) has the same functions: the probe
 * reports no device and creating the backend is SHOAL_UNSUPPORTED with a
 * message that says how to get one.
 */
#ifndef SHOAL_CUDA_H
#define SHOAL_CUDA_H

#include <stddef.h>

#include "../runtime/backend.h"

/* Whether this build has the CUDA backend. */
int shoal_cuda_built(void);

/*
 * Number of CUDA devices this process can use; 0 when the build has no CUDA,
 * when no driver is installed, or when the driver is too old ("no device",
 * not an error). *why, if not NULL, is set to a static explanation.
 */
int shoal_cuda_device_count(const char **why);

/* The device's name ("NVIDIA H100 80GB HBM3") and memory, total and free, in bytes. */
shoal_status shoal_cuda_device_info(int device, char *name, size_t len, size_t *total,
                                    size_t *free_bytes);

struct shoal_cuda_params {
    int device;    /* CUDA device ordinal, 0 .. count - 1 */
    int no_graphs; /* run every op as it comes, never recorded as CUDA graphs */
    int rank;      /* named in error messages; -1: not told */
};

/*
 * Creates the backend on one device: a stream, a cuBLAS handle, and scratch
 * that grows with the largest op. Fails with SHOAL_UNSUPPORTED when the build
 * or the machine has no CUDA, SHOAL_INVALID for a device out of range, and
 * SHOAL_CUDA (naming the call and the device) when the runtime refuses.
 */
shoal_status shoal_cuda_backend_create(struct shoal_backend **out,
                                       const struct shoal_cuda_params *params);

/* The backend's stream (a cudaStream_t) and device, for communicators that
 * queue their work behind its kernels (comm/nccl.c); NULL / -1 for another backend. */
void *shoal_cuda_backend_stream(struct shoal_backend *b);
int shoal_cuda_backend_device(struct shoal_backend *b);

#endif
