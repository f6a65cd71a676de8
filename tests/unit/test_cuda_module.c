/*
 * test_cuda_module — the CUDA backend is a module that shoal opens at run
 * time (cuda/module.h): in a build with CUDA, it must open, every function of
 * shoal's it calls must resolve in the executable (dlopen with RTLD_NOW
 * fails otherwise), and its entry points must be there. Where there is no
 * driver, asking for the backend must fail with a message, not a crash.
 * Skipped (77) in a build without CUDA.
 */
#include <stdio.h>
#include <string.h>

#include "../../comm/comm.h"
#include "../../cuda/cuda.h"
#include "../../cuda/module.h"
#include "check.h"

int main(void) {
    if (!shoal_cuda_built()) {
        printf("skipped: this build has no CUDA\n");
        return 77;
    }
    static const char *const entries[] = { "shoal_cudamod_backend_create", "shoal_cudamod_device_count",
                                           "shoal_cudamod_device_info", "shoal_cudamod_backend_stream",
                                           "shoal_cudamod_backend_device" };
    for (size_t i = 0; i < sizeof entries / sizeof *entries; i++) {
        const char *why = "";
        void *f = shoal_cuda_module_symbol(entries[i], &why);
        CHECK(f != NULL, "%s: %s", entries[i], why);
    }
    if (shoal_comm_have_nccl()) {
        const char *why = "";
        CHECK(shoal_cuda_module_symbol("shoal_commmod_nccl_create", &why) != NULL, "NCCL entry: %s", why);
    }
    /* the module's own count agrees with the driver probe's */
    int (*count)(const char **) = (int (*)(const char **))shoal_cuda_module_symbol("shoal_cudamod_device_count", NULL);
    const char *why_mod = "", *why_probe = "";
    int n_mod = count(&why_mod), n_probe = shoal_cuda_device_count(&why_probe);
    printf("devices: driver probe %d (%s), module %d (%s)\n", n_probe, why_probe, n_mod, why_mod);
    CHECK(n_mod == n_probe, "the driver says %d devices, the module %d", n_probe, n_mod);
    struct shoal_backend *be = NULL;
    shoal_status rc = shoal_cuda_backend_create(&be, &(struct shoal_cuda_params){ .device = n_probe, .rank = -1 });
    CHECK(rc != SHOAL_OK && be == NULL, "a device past the last one was accepted");
    CHECK(strlen(shoal_last_error()) > 10, "no message for a refused device");
    printf("refused as it should be: %s\n", shoal_last_error());
    return check_done("test_cuda_module");
}
