/*
 * nccl.c — the communicator over NCCL, for buffers in a CUDA device's
 * memory: all-reduce of f64 and f32 sums (f64 values on an f32 wire rounded
 * to f32 on the device a chunk at a time, summed, widened again), all-gather,
 * broadcast, gather, send and recv, queued on the compute backend's stream so
 * that they run behind the kernels that fill the buffers and before those
 * that read them.
 *
 * A group is made from an existing (MPI) group of the same ranks: its rank 0
 * asks NCCL for an id and broadcasts it over that group, and every rank says
 * whether it is ready before any enters ncclCommInitRank (a collective that
 * would wait forever for a rank that failed before it). NCCL connects its
 * peers during that set-up (NCCL_RUNTIME_CONNECT=0 unless the environment
 * says otherwise), so that the device memory it takes can be measured there
 * and counted. This file is part of the CUDA module (cuda/module.h), not of
 * every shoal process. NCCL and CUDA errors become SHOAL_COMM errors naming
 * the rank and the call.
 */
#define _GNU_SOURCE /* setenv */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda_runtime_api.h>
#include <nccl.h>

#include "comm_impl.h"

/* f64 values all-reduced on an f32 wire go through this many floats at a time */
enum { WIRE_CHUNK = 1 << 20 };

/* ops.cu: conversions on a stream (cudaError_t as int) */
int shoal_cudamod_f64_to_f32(float *dst, const double *src, size_t n, void *stream);
int shoal_cudamod_f32_to_f64(double *dst, const float *src, size_t n, void *stream);
/* backend_cuda.cu: a stream's work waited for, bounded as the communicators' waits are */
shoal_status shoal_cudamod_stream_wait(void *stream, const char *what);

struct nccl_ctx {
    ncclComm_t comm;
    cudaStream_t stream;
    int device, rank, size;
    void *one;       /* device: 8 bytes for the barrier's all-reduce */
    float *wire;     /* device (WIRE_CHUNK): f64 values rounded for an f32 wire */
    uint64_t taken;  /* device bytes NCCL took during set-up, as the driver saw them */
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
    if (wire == (f64 ? SHOAL_WIRE_F64 : SHOAL_WIRE_F32)) {
        NCCL_TRY(n, ncclAllReduce(buf, buf, count, f64 ? ncclFloat64 : ncclFloat32, ncclSum,
                                  n->comm, n->stream));
        return SHOAL_OK;
    }
    if (!f64 || wire != SHOAL_WIRE_F32)
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "NCCL all-reduces %s values as %s only, not as %s: use --comm-dtype %s, "
                            "or --tp-comm mpi",
                            f64 ? "f64" : "f32", f64 ? "f64 or f32" : "f32", shoal_wire_name(wire),
                            f64 ? "f64 or f32" : "f32");
    /* f64 on an f32 wire: each rank's part rounded to f32, the sum formed in f32 */
    double *d = buf;
    for (size_t at = 0; at < count; at += WIRE_CHUNK) {
        const size_t k = count - at < WIRE_CHUNK ? count - at : WIRE_CHUNK;
        CUDA_TRY(n, (cudaError_t)shoal_cudamod_f64_to_f32(n->wire, d + at, k, n->stream));
        NCCL_TRY(n, ncclAllReduce(n->wire, n->wire, k, ncclFloat32, ncclSum, n->comm, n->stream));
        CUDA_TRY(n, (cudaError_t)shoal_cudamod_f32_to_f64(d + at, n->wire, k, n->stream));
    }
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
    return shoal_cudamod_stream_wait(n->stream, "ncclAllReduce (a barrier)");
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

/* The compute backend's stream must still exist: communicators go before backends. */
static void nc_destroy(void *ctx) {
    struct nccl_ctx *n = ctx;
    if (!n) return;
    if (n->comm) {
        cudaStreamSynchronize(n->stream);
        ncclCommDestroy(n->comm);
    }
    if (n->one) cudaFree(n->one);
    if (n->wire) cudaFree(n->wire);
    free(n);
}

static uint64_t nc_device_bytes(void *ctx) { return ((struct nccl_ctx *)ctx)->taken; }

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
    .device_bytes = nc_device_bytes,
};

/* The device's free memory now (0 when it cannot say). */
static size_t free_now(void) {
    size_t f = 0, t = 0;
    if (cudaMemGetInfo(&f, &t) != cudaSuccess) {
        cudaGetLastError();
        return 0;
    }
    return f;
}

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
    size_t before = 0;
    if (rc == SHOAL_OK && (e = cudaSetDevice(device)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaSetDevice");
    if (rc == SHOAL_OK) before = free_now();
    if (rc == SHOAL_OK && (e = cudaMalloc(&n->one, 8)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaMalloc");
    if (rc == SHOAL_OK && (e = cudaMalloc((void **)&n->wire, sizeof(float) * WIRE_CHUNK)) != cudaSuccess)
        rc = cuda_fail_comm(n, e, "cudaMalloc");
    if (rc == SHOAL_OK && (e = cudaMemset(n->one, 0, 8)) != cudaSuccess) rc = cuda_fail_comm(n, e, "cudaMemset");
    /* every rank ready, or none enters the collective set-up (a rank that failed above
     * would leave the others waiting in it for ever) */
    shoal_status arc = shoal_comm_agree(c, rc, NULL);
    if (rc == SHOAL_OK) rc = arc;
    if (rc == SHOAL_OK) {
        setenv("NCCL_RUNTIME_CONNECT", "0", 0); /* connect at set-up, where it is measured */
        if ((r = ncclCommInitRank(&n->comm, n->size, msg.id, n->rank)) != ncclSuccess) {
            n->comm = NULL;
            rc = nccl_fail(n, r, "ncclCommInitRank");
        }
    }
    if (rc == SHOAL_OK) {
        const size_t after = free_now();
        n->taken = before > after ? before - after : 0;
    }
    if (rc == SHOAL_OK && !(*out = shoal_comm_new(&nccl_iface, n, n->rank, n->size)))
        rc = shoal_errorf(SHOAL_NOMEM, "out of memory");
    if (rc != SHOAL_OK) nc_destroy(n);
    return rc;
}
