/* nccl_none.c — stands in for comm/nccl.c in a build without NCCL. */
#include "comm_impl.h"

int shoal_comm_nccl_built(void) { return 0; }

shoal_status shoal_comm_nccl_create(struct shoal_comm *c, int device, void *stream,
                                    struct shoal_comm **out) {
    *out = NULL;
    return shoal_errorf(SHOAL_UNSUPPORTED, "this build of shoal has no NCCL (configure with CUDA "
                        "and NCCL present): use --tp-comm mpi");
}
