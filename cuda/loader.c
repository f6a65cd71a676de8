/*
 * loader.c — the CUDA functions of cuda.h as every shoal process has them:
 * whether there is a device is asked of the driver (libcuda.so.1, opened with
 * dlopen: a machine without one answers at once and loads nothing more), and
 * the backend itself is in the module libshoal_cuda.so (cuda/module.h),
 * opened the first time a backend is made.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "cuda.h"
#include "module.h"

int shoal_cuda_built(void) {
#ifdef SHOAL_HAVE_CUDA
    return 1;
#else
    return 0;
#endif
}

static const char no_cuda[] = "this build of shoal has no CUDA support (install the CUDA toolkit "
                              "and configure with -DSHOAL_CUDA=ON)";

/* ---------------------------------------------------------------- module */

/*
 * The functions of shoal's own that the module calls (nm -D --undefined-only
 * libshoal_cuda.so): named here so that every executable that can open the
 * module has them linked in and exported, also a test that uses no
 * communicator of its own.
 */
#include "../comm/comm_impl.h"
#include "../runtime/backend_impl.h"
__attribute__((used)) static const void *const module_needs[] = {
    (const void *)shoal_backend_new,     (const void *)shoal_backend_alloc,
    (const void *)shoal_backend_free,    (const void *)shoal_backend_destroy,
    (const void *)shoal_comm_bcast,      (const void *)shoal_comm_new,
    (const void *)shoal_comm_rank,       (const void *)shoal_comm_size,
    (const void *)shoal_comm_agree,      (const void *)shoal_dtype_name,
    (const void *)shoal_dtype_row_bytes, (const void *)shoal_error_prefix,
    (const void *)shoal_errorf,          (const void *)shoal_fmt_bytes,
    (const void *)shoal_wire_name,
};

/* Opened once per process; what it found is then only read. */
static struct {
    pthread_once_t once;
    void *handle;
    char why[512];
} mod = { PTHREAD_ONCE_INIT, NULL, "" };

#ifdef SHOAL_HAVE_CUDA
static void *try_open(const char *path, char *err, size_t len) {
    void *h = dlopen(path, RTLD_NOW | RTLD_LOCAL);
    if (!h && !err[0]) snprintf(err, len, "%s", dlerror());
    return h;
}
#endif

static void open_module(void) {
#ifndef SHOAL_HAVE_CUDA
    snprintf(mod.why, sizeof mod.why, "%s", no_cuda);
#else
    char err[384] = "", path[PATH_MAX + 32];
    const char *env = getenv("SHOAL_CUDA_MODULE");
    if (env && *env) {
        mod.handle = try_open(env, err, sizeof err);
    } else {
        /* beside the executable (an installed shoal), then the build's own */
        ssize_t n = readlink("/proc/self/exe", path, PATH_MAX);
        if (n > 0) {
            path[n] = 0;
            char *slash = strrchr(path, '/');
            if (slash) {
                strcpy(slash + 1, "libshoal_cuda.so");
                if (access(path, R_OK) == 0) mod.handle = try_open(path, err, sizeof err);
            }
        }
#ifdef SHOAL_CUDA_MODULE_PATH
        if (!mod.handle && access(SHOAL_CUDA_MODULE_PATH, R_OK) == 0)
            mod.handle = try_open(SHOAL_CUDA_MODULE_PATH, err, sizeof err);
#endif
        if (!mod.handle) mod.handle = try_open("libshoal_cuda.so", err, sizeof err);
    }
    if (!mod.handle)
        snprintf(mod.why, sizeof mod.why, "cannot open shoal's CUDA module: %s (set "
                 "SHOAL_CUDA_MODULE to libshoal_cuda.so)", err);
#endif
}

void *shoal_cuda_module_symbol(const char *name, const char **why) {
    pthread_once(&mod.once, open_module);
    if (!mod.handle) {
        if (why) *why = mod.why;
        return NULL;
    }
    void *f = dlsym(mod.handle, name);
    if (!f && why) *why = "shoal's CUDA module lacks an entry point (a module of another build?)";
    return f;
}

/* ------------------------------------------------------------------ probe */

/*
 * The driver's count of devices, through the driver API (cuInit,
 * cuDeviceGetCount): no driver, or none of its devices, is 0 with the reason.
 */
static struct {
    pthread_once_t once;
    int count;
    char why[256];
} probe = { PTHREAD_ONCE_INIT, 0, "" };

static void ask_driver(void) {
    void *h = dlopen("libcuda.so.1", RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        snprintf(probe.why, sizeof probe.why, "no NVIDIA driver here (%s)", dlerror());
        return;
    }
    int (*init)(unsigned) = (int (*)(unsigned))dlsym(h, "cuInit");
    int (*count)(int *) = (int (*)(int *))dlsym(h, "cuDeviceGetCount");
    int (*name)(int, const char **) = (int (*)(int, const char **))dlsym(h, "cuGetErrorString");
    if (!init || !count) {
        snprintf(probe.why, sizeof probe.why, "the NVIDIA driver's libcuda.so.1 lacks cuInit");
        return;
    }
    int rc = init(0), n = 0;
    if (rc == 0) rc = count(&n);
    if (rc != 0) {
        const char *s = NULL;
        if (name) name(rc, &s);
        snprintf(probe.why, sizeof probe.why, "the NVIDIA driver says: %s (error %d)",
                 s ? s : "unknown error", rc);
        return;
    }
    probe.count = n;
    snprintf(probe.why, sizeof probe.why, "%s", n ? "ok" : "no CUDA device found");
    /* the driver stays open: the module will use it */
}

int shoal_cuda_device_count(const char **why) {
    if (!shoal_cuda_built()) {
        if (why) *why = no_cuda;
        return 0;
    }
    pthread_once(&probe.once, ask_driver);
    if (why) *why = probe.why;
    return probe.count;
}

/* ------------------------------------------------------------- backend */

shoal_status shoal_cuda_device_info(int device, char *name, size_t len, size_t *total,
                                    size_t *free_bytes) {
    const char *why = no_cuda;
    shoal_status (*f)(int, char *, size_t, size_t *, size_t *) =
        (shoal_status (*)(int, char *, size_t, size_t *, size_t *))shoal_cuda_module_symbol(
            "shoal_cudamod_device_info", &why);
    return f ? f(device, name, len, total, free_bytes) : shoal_errorf(SHOAL_UNSUPPORTED, "%s", why);
}

shoal_status shoal_cuda_backend_create(struct shoal_backend **out,
                                       const struct shoal_cuda_params *params) {
    *out = NULL;
    const char *why = no_cuda;
    if (shoal_cuda_built() && shoal_cuda_device_count(&why) == 0)
        return shoal_errorf(SHOAL_UNSUPPORTED, "no CUDA device can be used here: %s", why);
    shoal_status (*f)(struct shoal_backend **, const struct shoal_cuda_params *) =
        (shoal_status (*)(struct shoal_backend **, const struct shoal_cuda_params *))
            shoal_cuda_module_symbol("shoal_cudamod_backend_create", &why);
    return f ? f(out, params) : shoal_errorf(SHOAL_UNSUPPORTED, "%s", why);
}

/* For a backend this module did not make (the CPU's), no module is opened. */
void *shoal_cuda_backend_stream(struct shoal_backend *b) {
    if (!b || strcmp(shoal_backend_name(b), "cuda") != 0) return NULL;
    void *(*f)(struct shoal_backend *) =
        (void *(*)(struct shoal_backend *))shoal_cuda_module_symbol("shoal_cudamod_backend_stream", NULL);
    return f ? f(b) : NULL;
}

int shoal_cuda_backend_device(struct shoal_backend *b) {
    if (!b || strcmp(shoal_backend_name(b), "cuda") != 0) return -1;
    int (*f)(struct shoal_backend *) =
        (int (*)(struct shoal_backend *))shoal_cuda_module_symbol("shoal_cudamod_backend_device", NULL);
    return f ? f(b) : -1;
}
