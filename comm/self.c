/*
 * self.c — the one-rank communicator: every collective is a copy or
 * nothing, so the model code runs unchanged in one process without MPI.
 */
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"

static shoal_status self_allgather(void *ctx, const void *send, size_t bytes, void *recv) {
    if (recv != send) memmove(recv, send, bytes);
    return SHOAL_OK;
}

static shoal_status self_gatherv(void *ctx, const void *send, const size_t *bytes, void *recv,
                                 int root) {
    if (recv != send) memmove(recv, send, bytes[0]);
    return SHOAL_OK;
}

static shoal_status self_bcast(void *ctx, void *buf, size_t bytes, int root) { return SHOAL_OK; }

static shoal_status self_p2p(void *ctx, const void *buf, size_t bytes, int peer) {
    return shoal_errorf(SHOAL_INTERNAL, "send/recv to rank %d in a one-rank group", peer);
}

static shoal_status self_recv(void *ctx, void *buf, size_t bytes, int peer) {
    return self_p2p(ctx, buf, bytes, peer);
}

static shoal_status self_barrier(void *ctx) { return SHOAL_OK; }
static int self_local_size(void *ctx) { return 1; }
static void self_abort(void *ctx, int code) { exit(code); }

static shoal_status self_split(struct shoal_comm *c, int color, int key, struct shoal_comm **out) {
    return shoal_comm_self_create(out);
}

static const struct shoal_comm_i self_iface = {
    .name = "self",
    .destroy = NULL,
    .split = self_split,
    .allgather = self_allgather,
    .gatherv = self_gatherv,
    .bcast = self_bcast,
    .send = self_p2p,
    .recv = self_recv,
    .barrier = self_barrier,
    .local_size = self_local_size,
    .abort = self_abort,
};

shoal_status shoal_comm_self_create(struct shoal_comm **out) {
    *out = shoal_comm_new(&self_iface, NULL, 0, 1);
    return *out ? SHOAL_OK : shoal_errorf(SHOAL_NOMEM, "out of memory");
}
