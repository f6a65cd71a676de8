/* none.c — the CUDA functions of a build without CUDA: there is never a device. */
#include "cuda.h"

static const char no_cuda[] = "this build of shoal has no CUDA support (install the CUDA toolkit "
                              "and configure with -DSHOAL_CUDA=ON)";

int shoal_cuda_built(void) { return 0; }

int shoal_cuda_device_count(const char **why) {
    if (why) *why = no_cuda;
    return 0;
}

shoal_status shoal_cuda_device_info(int device, char *name, size_t len, size_t *total,
                                    size_t *free_bytes) {
    return shoal_errorf(SHOAL_UNSUPPORTED, "%s", no_cuda);
}

shoal_status shoal_cuda_backend_create(struct shoal_backend **out,
                                       const struct shoal_cuda_params *params) {
    *out = NULL;
    return shoal_errorf(SHOAL_UNSUPPORTED, "%s", no_cuda);
}

void *shoal_cuda_backend_stream(struct shoal_backend *b) { return NULL; }
int shoal_cuda_backend_device(struct shoal_backend *b) { return -1; }
