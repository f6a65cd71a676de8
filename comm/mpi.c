/*
 * mpi.c — the MPI communicator. Errors come back (MPI_ERRORS_RETURN) and
 * become SHOAL_COMM with the call, the rank and MPI's own words. Counts
 * above INT_MAX bytes go in pieces. Only the thread that called
 * shoal_comm_init_world makes MPI calls (MPI_THREAD_FUNNELED).
 *
 * Waiting: a blocking MPI call polls its transports flat out, so a rank
 * waiting for the next pipeline step (most of the time, in a pipeline)
 * would take a core from a rank that computes, when ranks share cores.
 * Calls are started non-blocking instead and waited for by polling for a
 * short while, then sleeping between polls with a growing pause (at most
 * 100 us): a little latency on a long wait for the cores back.
 */
#define _GNU_SOURCE
#include <limits.h>
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "comm_impl.h"

struct mpi_ctx {
    MPI_Comm comm;
    int owned;     /* MPI_Comm_free on destroy */
    int size;
    int *world_of; /* (size) each rank's rank in MPI_COMM_WORLD, for messages */
    int world_rank;
};

static shoal_status check(int err, const char *call, int rank) {
    if (err == MPI_SUCCESS) return SHOAL_OK;
    char msg[MPI_MAX_ERROR_STRING];
    int len = 0;
    MPI_Error_string(err, msg, &len);
    return shoal_errorf(SHOAL_COMM, "%s failed on rank %d: %.*s", call, rank, len, msg);
}

static int my_rank(const struct mpi_ctx *m) {
    int r = -1;
    MPI_Comm_rank(m->comm, &r);
    return r;
}

#define MPI_TRY(m, call) SHOAL_TRY(check((call), #call, my_rank(m)))

/* Who a wait is for, in world ranks: the peer, or (peer < 0) the group's others (the first 8). */
static void waited_for(const struct mpi_ctx *m, int peer, char *who, size_t len) {
    if (peer >= 0) {
        snprintf(who, len, "rank %d", m->world_of[peer]);
        return;
    }
    int n = 0, at = snprintf(who, len, "rank%s", m->size > 2 ? "s" : "");
    for (int r = 0; r < m->size && (size_t)at < len; r++) {
        if (m->world_of[r] == m->world_rank) continue;
        at += snprintf(who + at, len - (size_t)at, n == 0 ? " %d" : n < 8 ? ", %d" : ", ...", m->world_of[r]);
        if (++n > 8) break;
    }
}

/*
 * Completes a request: polls for 50 us, then sleeps between polls (see the
 * top). Bounded by shoal_comm_set_timeout and the abandon flag: peer is the
 * rank waited for, or -1 for the group's others (a collective).
 */
static shoal_status wait(struct mpi_ctx *m, MPI_Request *req, MPI_Status *st, const char *call, int peer) {
    double t0 = shoal_now(), abandoned_at = 0, checked = t0;
    long pause_ns = 2000;
    for (;;) {
        int done = 0;
        int err = MPI_Test(req, &done, st ? st : MPI_STATUS_IGNORE);
        if (err != MPI_SUCCESS) return check(err, call, my_rank(m));
        if (done) return SHOAL_OK;
        const double now = shoal_now();
        if (now - t0 < 50e-6) continue;
        if (now - checked > 0.05) { /* the limits, every 50 ms */
            checked = now;
            char who[128];
            waited_for(m, peer, who, sizeof who);
            SHOAL_TRY(shoal_comm_wait_limit(t0, &abandoned_at, m->world_rank, who, call));
        }
        struct timespec ts = { 0, pause_ns };
        nanosleep(&ts, NULL);
        if (pause_ns < 100000) pause_ns *= 2;
    }
}

static void mpi_destroy(void *ctx) {
    struct mpi_ctx *m = ctx;
    if (m && m->owned) MPI_Comm_free(&m->comm);
    if (m) free(m->world_of);
    free(m);
}

/* Wraps an MPI communicator in a handle. */
static shoal_status wrap(MPI_Comm comm, int owned, struct shoal_comm **out);

static shoal_status mpi_split(struct shoal_comm *c, int color, int key, struct shoal_comm **out) {
    struct mpi_ctx *m = c->ctx;
    MPI_Comm sub;
    MPI_TRY(m, MPI_Comm_split(m->comm, color, key, &sub));
    return wrap(sub, 1, out);
}

static shoal_status mpi_allgather(void *ctx, const void *send, size_t bytes, void *recv) {
    struct mpi_ctx *m = ctx;
    if (bytes > INT_MAX)
        return shoal_errorf(SHOAL_UNSUPPORTED, "all-gather of %zu bytes per rank (limit 2 GiB)", bytes);
    MPI_Request req;
    if (send == (const char *)recv + (size_t)my_rank(m) * bytes) send = MPI_IN_PLACE; /* MPI's way */
    MPI_TRY(m, MPI_Iallgather(send, (int)bytes, MPI_BYTE, recv, (int)bytes, MPI_BYTE, m->comm, &req));
    return wait(m, &req, NULL, "MPI_Iallgather", -1);
}

static shoal_status mpi_gatherv(void *ctx, const void *send, const size_t *bytes, void *recv,
                                int root) {
    struct mpi_ctx *m = ctx;
    int size, rank = my_rank(m);
    MPI_Comm_size(m->comm, &size);
    int *counts = calloc((size_t)size * 2, sizeof *counts), *displs = counts + size;
    if (!counts) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    size_t off = 0;
    for (int r = 0; r < size; r++) {
        if (bytes[r] > INT_MAX || off > INT_MAX) {
            free(counts);
            return shoal_errorf(SHOAL_UNSUPPORTED, "gather of more than 2 GiB");
        }
        counts[r] = (int)bytes[r];
        displs[r] = (int)off;
        off += bytes[r];
    }
    MPI_Request req;
    shoal_status rc = check(MPI_Igatherv(send, counts[rank], MPI_BYTE, recv, counts, displs,
                                         MPI_BYTE, root, m->comm, &req),
                            "MPI_Igatherv", rank);
    if (rc == SHOAL_OK) rc = wait(m, &req, NULL, "MPI_Igatherv", rank == root ? -1 : root);
    free(counts);
    return rc;
}

static shoal_status mpi_bcast(void *ctx, void *buf, size_t bytes, int root) {
    struct mpi_ctx *m = ctx;
    for (size_t off = 0; off < bytes; off += INT_MAX) {
        size_t k = bytes - off < INT_MAX ? bytes - off : INT_MAX;
        MPI_Request req;
        MPI_TRY(m, MPI_Ibcast((char *)buf + off, (int)k, MPI_BYTE, root, m->comm, &req));
        SHOAL_TRY(wait(m, &req, NULL, "MPI_Ibcast", my_rank(m) == root ? -1 : root));
    }
    return SHOAL_OK;
}

static shoal_status mpi_send(void *ctx, const void *buf, size_t bytes, int peer) {
    struct mpi_ctx *m = ctx;
    size_t off = 0;
    do {
        size_t k = bytes - off < INT_MAX ? bytes - off : INT_MAX;
        MPI_Request req;
        MPI_TRY(m, MPI_Isend((const char *)buf + off, (int)k, MPI_BYTE, peer, 0, m->comm, &req));
        SHOAL_TRY(wait(m, &req, NULL, "MPI_Isend", peer));
        off += k;
    } while (off < bytes);
    return SHOAL_OK;
}

static shoal_status mpi_recv(void *ctx, void *buf, size_t bytes, int peer) {
    struct mpi_ctx *m = ctx;
    size_t off = 0;
    do {
        size_t k = bytes - off < INT_MAX ? bytes - off : INT_MAX;
        MPI_Status st;
        MPI_Request req;
        MPI_TRY(m, MPI_Irecv((char *)buf + off, (int)k, MPI_BYTE, peer, 0, m->comm, &req));
        SHOAL_TRY(wait(m, &req, &st, "MPI_Irecv", peer));
        int got = 0;
        MPI_Get_count(&st, MPI_BYTE, &got);
        if ((size_t)got != k)
            return shoal_errorf(SHOAL_COMM, "rank %d expected %zu bytes from rank %d, got %d",
                                my_rank(m), k, peer, got);
        off += k;
    } while (off < bytes);
    return SHOAL_OK;
}

static shoal_status mpi_barrier(void *ctx) {
    struct mpi_ctx *m = ctx;
    MPI_Request req;
    MPI_TRY(m, MPI_Ibarrier(m->comm, &req));
    return wait(m, &req, NULL, "MPI_Ibarrier", -1);
}

static int mpi_local_size(void *ctx) {
    struct mpi_ctx *m = ctx;
    MPI_Comm node;
    int n = 1;
    if (MPI_Comm_split_type(m->comm, MPI_COMM_TYPE_SHARED, 0, MPI_INFO_NULL, &node) == MPI_SUCCESS) {
        MPI_Comm_size(node, &n);
        MPI_Comm_free(&node);
    }
    return n;
}

static void mpi_abort(void *ctx, int code) {
    struct mpi_ctx *m = ctx;
    MPI_Abort(m->comm, code);
    exit(code); /* not reached */
}

static const struct shoal_comm_i mpi_iface = {
    .name = "mpi",
    .destroy = mpi_destroy,
    .split = mpi_split,
    .allgather = mpi_allgather,
    .gatherv = mpi_gatherv,
    .bcast = mpi_bcast,
    .send = mpi_send,
    .recv = mpi_recv,
    .barrier = mpi_barrier,
    .local_size = mpi_local_size,
    .abort = mpi_abort,
};

static shoal_status wrap(MPI_Comm comm, int owned, struct shoal_comm **out) {
    struct mpi_ctx *m = calloc(1, sizeof *m);
    if (!m) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    m->comm = comm;
    m->owned = owned;
    MPI_Comm_set_errhandler(comm, MPI_ERRORS_RETURN);
    int rank, size;
    MPI_Comm_rank(comm, &rank);
    MPI_Comm_size(comm, &size);
    MPI_Comm_rank(MPI_COMM_WORLD, &m->world_rank);
    m->size = size;
    int *ranks = malloc(sizeof(int) * (size_t)size);
    m->world_of = malloc(sizeof(int) * (size_t)size);
    MPI_Group g, wg;
    if (!ranks || !m->world_of || MPI_Comm_group(comm, &g) != MPI_SUCCESS) {
        free(ranks);
        mpi_destroy(m);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    MPI_Comm_group(MPI_COMM_WORLD, &wg);
    for (int r = 0; r < size; r++) ranks[r] = r;
    MPI_Group_translate_ranks(g, size, ranks, wg, m->world_of);
    MPI_Group_free(&g);
    MPI_Group_free(&wg);
    free(ranks);
    *out = shoal_comm_new(&mpi_iface, m, rank, size);
    if (!*out) {
        mpi_destroy(m);
        return shoal_errorf(SHOAL_NOMEM, "out of memory");
    }
    return SHOAL_OK;
}

shoal_status shoal_comm_mpi_init(struct shoal_comm **out, int *argc, char ***argv) {
    int provided = 0, inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int err = MPI_Init_thread(argc, argv, MPI_THREAD_FUNNELED, &provided);
        if (err != MPI_SUCCESS) return shoal_errorf(SHOAL_COMM, "MPI_Init_thread failed (%d)", err);
    }
    return wrap(MPI_COMM_WORLD, 0, out);
}

void shoal_comm_mpi_finalize(void) {
    int fin = 0;
    MPI_Finalized(&fin);
    if (!fin) MPI_Finalize();
}

int shoal_comm_mpi_built(void) { return 1; }
