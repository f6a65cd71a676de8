/*
 * nccl_loader.c — the NCCL communicator as every shoal process has it: the
 * code (comm/nccl.c) is in the CUDA module (cuda/module.h), opened only when
 * a GPU is wanted, so that a CPU run does not load NCCL.
 */
#include "../cuda/module.h"
#include "comm_impl.h"

int shoal_comm_nccl_built(void) {
#ifdef SHOAL_HAVE_NCCL
    return 1;
#else
    return 0;
#endif
}

shoal_status shoal_comm_nccl_create(struct shoal_comm *c, int device, void *stream,
                                    struct shoal_comm **out) {
    *out = NULL;
    if (!shoal_comm_nccl_built())
        return shoal_errorf(SHOAL_UNSUPPORTED, "this build of shoal has no NCCL (configure with "
                            "CUDA and NCCL present): use --tp-comm mpi");
    const char *why = "";
    shoal_status (*f)(struct shoal_comm *, int, void *, struct shoal_comm **) =
        (shoal_status (*)(struct shoal_comm *, int, void *, struct shoal_comm **))
            shoal_cuda_module_symbol("shoal_commmod_nccl_create", &why);
    return f ? f(c, device, stream, out) : shoal_errorf(SHOAL_UNSUPPORTED, "NCCL: %s", why);
}
