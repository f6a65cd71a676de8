/* none.c — the CUDA probe of a build without CUDA: there is never a device. */
#include "cuda.h"

int shoal_cuda_device_count(const char **why) {
    if (why) *why = "this build of shoal has no CUDA support (configure with -DSHOAL_CUDA=ON)";
    return 0;
}
