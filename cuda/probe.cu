/* probe.cu — asks the CUDA runtime how many devices there are. */
#include <cuda_runtime.h>

extern "C" {
#include "cuda.h"
}

extern "C" int shoal_cuda_device_count(const char **why) {
    int n = 0;
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        /* With no GPU or driver this is "insufficient driver" or "no device":
         * both mean there is nothing to run on, not that shoal is broken. */
        if (why) *why = cudaGetErrorString(e);
        return 0;
    }
    if (why) *why = n ? "ok" : "no CUDA device found";
    return n;
}
