/*
 * nccl.c — the communicator over NCCL, for buffers in a CUDA device's
 * memory: all-reduce of f64 and f32 sums, all-gather, broadcast, gather,
 * send and recv, queued on the compute backend's stream so that they run
 * behind the kernels that fill the buffers and before those that read them.
 *
 * A group is made from an existing (MPI) group of the same ranks: its rank 0
 * asks NCCL for an id and broadcasts it over that group. This file is part
 * of the CUDA module (cuda/module.h), not of every shoal process. NCCL and CUDA errors
 * become SHOAL_COMM errors naming the rank and the call.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm_impl.h"

struct nccl_ctx {
    ncclComm_t comm;
    cudaStream_t stream;
    int device, rank, size;
    void *one; /* device: 8 bytes for the barrier's all-reduce */
};

static shoal_status nccl_fail(const struct nccl_ctx *n, ncclResult_t r, const char *call) {
    const char *last = n && n->comm ? ncclGetLastError(n->comm) : NULL;
    return shoal_errorf(SHOAL_COMM, "rank %d (CUDA device %d): %s failed: %s%s%s",
                        n ? n->rank : -1, n ? n->device : -1, call, ncclGetErrorString(r),
                        last && *last ? ": " : "", last ? last : "");
}

static shoal_status cuda_fail_comm(const struct nccl_ctx *n, cudaError_t e, const char *call) {
    return shoal_errorf(SHOAL_COMM, "rank %d (CUDA device %d): %s failed: %s", n->rank, n->device,
                        call, cudaGetErrorString(e));
}

#define NCCL_TRY(n, call)                                                                  \
    do {                                                                                   \
        ncclResult_t r_ = (call);                                                          \
        if (r_ != ncclSuccess) return nccl_fail((n), r_, #call);                           \
    } while (0)

#define CUDA_TRY(n, call)                                                                  \
    do {                                                                                   \
        cudaError_t e_ = (call);                                                           \
        if (e_ != cudaSuccess) return cuda_fail_comm((n), e_, #call);                      \
    } while (0)

/* ------------------------------------------------------------------ calls */

static shoal_status nc_allreduce(void *ctx, void *buf, size_t count, int f64, int wire) {
    struct nccl_ctx *n = ctx;
    if (wire != (f64 ? SHOAL_WIRE_F64 : SHOAL_WIRE_F32))
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "NCCL all-reduces %s values as %s only, not as %s: use --comm-dtype %s, "
                            "or --tp-comm mpi",
                            f64 ? "f64" : "f32", f64 ? "f64" : "f32", shoal_wire_name(wire),
                            f64 ? "f64" : "f32");
    NCCL_TRY(n, ncclAllReduce(buf, buf, count, f64 ? ncclFloat64 : ncclFloat32, ncclSum, n->comm,
                              n->stream));
    return SHOAL_OK;
}

static shoal_status nc_allgather(void *ctx, const void *send, size_t bytes, void *recv) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclAllGather(send, recv, bytes, ncclUint8, n->comm, n->stream));
    return SHOAL_OK;
}

static shoal_status nc_gatherv(void *ctx, const void *send, const size_t *bytes, void *recv,
                               int root) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclGroupStart());
    ncclResult_t r = ncclSuccess;
    if (n->rank == root) {
        size_t off = 0;
        for (int p = 0; p < n->size && r == ncclSuccess; p++) {
            char *at = (char *)recv + off;
            if (p == root) {
                cudaError_t e = cudaMemcpyAsync(at, send, bytes[p], cudaMemcpyDeviceToDevice, n->stream);
                if (e != cudaSuccess) {
                    ncclGroupEnd();
                    return cuda_fail_comm(n, e, "cudaMemcpyAsync");
                }
            } else if (bytes[p]) {
                r = ncclRecv(at, bytes[p], ncclUint8, p, n->comm, n->stream);
            }
            off += bytes[p];
        }
    } else if (bytes[n->rank]) {
        r = ncclSend(send, bytes[n->rank], ncclUint8, root, n->comm, n->stream);
    }
    ncclResult_t e = ncclGroupEnd();
    if (r != ncclSuccess) return nccl_fail(n, r, "ncclSend/ncclRecv (gather)");
    if (e != ncclSuccess) return nccl_fail(n, e, "ncclGroupEnd");
    return SHOAL_OK;
}

static shoal_status nc_bcast(void *ctx, void *buf, size_t bytes, int root) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclBroadcast(buf, buf, bytes, ncclUint8, root, n->comm, n->stream));
    return SHOAL_OK;
}

static shoal_status nc_send(void *ctx, const void *buf, size_t bytes, int peer) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclSend(buf, bytes, ncclUint8, peer, n->comm, n->stream));
    return SHOAL_OK;
}

static shoal_status nc_recv(void *ctx, void *buf, size_t bytes, int peer) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclRecv(buf, bytes, ncclUint8, peer, n->comm, n->stream));
    return SHOAL_OK;
}

/* Every rank has queued everything before it and that work has run. */
static shoal_status nc_barrier(void *ctx) {
    struct nccl_ctx *n = ctx;
    NCCL_TRY(n, ncclAllReduce(n->one, n->one, 1, ncclFloat64, ncclSum, n->comm, n->stream));
    CUDA_TRY(n, cudaStreamSynchronize(n->stream));
    return SHOAL_OK;
}

static int nc_local_size(void *ctx) { return 1; }

static void nc_abort(void *ctx, int code) {
    struct nccl_ctx *n = ctx;
    ncclCommAbort(n->comm);
    exit(code);
}

static shoal_status nc_split(struct shoal_comm *c, int color, int key, struct shoal_comm **out) {
    return shoal_errorf(SHOAL_UNSUPPORTED, "an NCCL group is not split: split the MPI group and "
                        "make an NCCL group of each part");
}

static void nc_destroy(void *ctx) {
    struct nccl_ctx *n = ctx;
    if (!n) return;
    if (n->comm) {
        cudaStreamSynchronize(n->stream);
        ncclCommDestroy(n->comm);
    }
    if (n->one) cudaFree(n->one);
    free(n);
}

static const struct shoal_comm_i nccl_iface = {
    .name = "nccl",
    .destroy = nc_destroy,
    .split = nc_split,
    .allgather = nc_allgather,
    .gatherv = nc_gatherv,
    .bcast = nc_bcast,
    .send = nc_send,
    .recv = nc_recv,
    .barrier = nc_barrier,
    .local_size = nc_local_size,
    .abort = nc_abort,
    .allreduce = nc_allreduce,
    .device_buffers = 1,
};

/* shoal_comm_nccl_create (comm.h), as the module's entry point (comm/nccl_loader.c) */
shoal_status shoal_commmod_nccl_create(struct shoal_comm *c, int device, void *stream,
                                       struct shoal_comm **out);
shoal_status shoal_commmod_nccl_create(struct shoal_comm *c, int device, void *stream,
                                       struct shoal_comm **out) {
    *out = NULL;
    struct nccl_ctx *n = calloc(1, sizeof *n);
    if (!n) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    n->device = device;
    n->rank = shoal_comm_rank(c);
    n->size = shoal_comm_size(c);
    n->stream = (cudaStream_t)stream;
    /* the id travels with a flag: a rank 0 that could not make one says so to all */
    struct {
        int32_t ok;
        ncclUniqueId id;
    } msg;
    memset(&msg, 0, sizeof msg);
    shoal_status rc = SHOAL_OK;
    if (n->rank == 0) {
        ncclResult_t r = ncclGetUniqueId(&msg.id);
        msg.ok = r == ncclSuccess;
        if (!msg.ok) rc = nccl_fail(n, r, "ncclGetUniqueId");
    }
    shoal_status brc = shoal_comm_bcast(c, &msg, sizeof msg, 0);
    if (brc != SHOAL_OK) rc = brc;
    if (rc == SHOAL_OK && !msg.ok)
        rc = shoal_errorf(SHOAL_REMOTE, "rank 0 of the group could not make an NCCL id");
    cudaError_t e;
    ncclResult_t r;
    if (rc == SHOAL_OK && (e = cudaSetDevice(device)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaSetDevice");
    if (rc == SHOAL_OK && (e = cudaMalloc(&n->one, 8)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaMalloc");
    if (rc == SHOAL_OK && (e = cudaMemset(n->one, 0, 8)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaMemset");
    if (rc == SHOAL_OK && (r = ncclCommInitRank(&n->comm, n->size, msg.id, n->rank)) != ncclSuccess) {
        n->comm = NULL;
        rc = nccl_fail(n, r, "ncclCommInitRank");
    }
    if (rc == SHOAL_OK && !(*out = shoal_comm_new(&nccl_iface, n, n->rank, n->size)))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
    if (rc != SHOAL_OK) nc_destroy(n);
    return rc;
}
