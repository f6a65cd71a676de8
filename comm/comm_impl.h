/*
 * The table behind a communicator, for the backends in comm/ (self.c,
 * mpi.c). Everyone else uses comm.h.
 */
#ifndef SHOAL_COMM_IMPL_H
#define SHOAL_COMM_IMPL_H

#include "comm.h"

struct shoal_comm_i {
    const char *name;
    void (*destroy)(void *ctx);
    shoal_status (*split)(struct shoal_comm *c, int color, int key, struct shoal_comm **out);
    shoal_status (*allgather)(void *ctx, const void *send, size_t bytes, void *recv);
    shoal_status (*gatherv)(void *ctx, const void *send, const size_t *bytes, void *recv, int root);
    shoal_status (*bcast)(void *ctx, void *buf, size_t bytes, int root);
    shoal_status (*send)(void *ctx, const void *buf, size_t bytes, int peer);
    shoal_status (*recv)(void *ctx, void *buf, size_t bytes, int peer);
    shoal_status (*barrier)(void *ctx);
    int (*local_size)(void *ctx);
    void (*abort)(void *ctx, int code);
    /*
     * optional: a sum the backend forms itself (NCCL on device buffers) of n
     * f32 values, or f64 when f64; a wire it cannot carry is SHOAL_UNSUPPORTED.
     * Without it the sums are built on allgather, in rank order, on the host.
     */
    shoal_status (*allreduce)(void *ctx, void *buf, size_t n, int f64, int wire);
    int device_buffers; /* buffers live in a device's memory, not the host's */
    /* optional: device bytes the backend's library took for itself (NCCL's buffers) */
    uint64_t (*device_bytes)(void *ctx);
};

struct shoal_comm {
    const struct shoal_comm_i *iface;
    void *ctx;
    int rank, size;
    struct shoal_comm_stats stats;
    void *scratch; /* all-reduce staging, grown on demand */
    size_t scratch_cap;
};

/* For backends: a handle around a table and a context (NULL on no memory). */
struct shoal_comm *shoal_comm_new(const struct shoal_comm_i *iface, void *ctx, int rank, int size);

/*
 * For a backend's waits: SHOAL_OK, or SHOAL_COMM when a wait begun at t0 has
 * lasted past the timeout (shoal_comm_set_timeout) or the abandon flag has
 * been set for 0.3 s (*abandoned_at: 0 before, then when it was
 * first seen). For the message: this rank's world rank (-1: the one the
 * world was made with), who it waits for ("rank 3", "ranks 1, 2"), and the
 * call.
 */
shoal_status shoal_comm_wait_limit(double t0, double *abandoned_at, int world_rank, const char *who,
                                   const char *call);

/* The self backend's world and the MPI backend's (mpi.c, or its stand-in). */
shoal_status shoal_comm_self_create(struct shoal_comm **out);
shoal_status shoal_comm_mpi_init(struct shoal_comm **out, int *argc, char ***argv);
int shoal_comm_nccl_built(void);
void shoal_comm_mpi_finalize(void);
int shoal_comm_mpi_built(void);

#endif
