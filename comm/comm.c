/*
 * comm.c — the public side of a communicator (comm.h): timing and byte
 * counts around the backend's calls, the wire formats, all-reduce built on
 * all-gather (so that every rank sums the same values in the same order),
 * agreement on failures, and choosing the world's backend.
 */
#define _GNU_SOURCE
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "comm_impl.h"

/* the waiting limits (shoal_comm_set_timeout, shoal_comm_set_abandon), for the whole process */
static double wait_seconds;                   /* 0: for ever */
static volatile sig_atomic_t *abandon_flag; /* set: the job is being stopped */
static int process_rank;                    /* this process's world rank, for waits that do not know it */

struct shoal_comm *shoal_comm_new(const struct shoal_comm_i *iface, void *ctx, int rank, int size) {
    struct shoal_comm *c = calloc(1, sizeof *c);
    if (!c) return NULL;
    c->iface = iface;
    c->ctx = ctx;
    c->rank = rank;
    c->size = size;
    return c;
}

void shoal_comm_destroy(struct shoal_comm *c) {
    if (!c) return;
    if (c->iface->destroy) c->iface->destroy(c->ctx);
    free(c->scratch);
    free(c);
}

int shoal_comm_rank(const struct shoal_comm *c) { return c->rank; }
int shoal_comm_size(const struct shoal_comm *c) { return c->size; }
const char *shoal_comm_backend(const struct shoal_comm *c) { return c->iface->name; }
int shoal_comm_local_size(struct shoal_comm *c) { return c->iface->local_size(c->ctx); }
const struct shoal_comm_stats *shoal_comm_stats(const struct shoal_comm *c) { return &c->stats; }
void shoal_comm_stats_reset(struct shoal_comm *c) { memset(&c->stats, 0, sizeof c->stats); }
int shoal_comm_have_mpi(void) { return shoal_comm_mpi_built(); }
int shoal_comm_have_nccl(void) { return shoal_comm_nccl_built(); }
int shoal_comm_device_buffers(const struct shoal_comm *c) { return c->iface->device_buffers; }
uint64_t shoal_comm_device_bytes(const struct shoal_comm *c) {
    return c && c->iface->device_bytes ? c->iface->device_bytes(c->ctx) : 0;
}

/* ------------------------------------------------------------------ world */

/*
 * Whether a launcher (mpirun, srun, another PMI) started this process as one
 * of its ranks, and how many there are (0 if it does not say). A batch
 * script's own shell has SLURM_NTASKS but no SLURM_PROCID: not a rank.
 */
static int launched_by_mpi(int *size) {
    static const char *const rank_vars[] = { "OMPI_COMM_WORLD_RANK", "PMIX_RANK", "PMI_RANK",
                                             "SLURM_PROCID" };
    static const char *const size_vars[] = { "OMPI_COMM_WORLD_SIZE", "PMI_SIZE", "SLURM_NTASKS" };
    int ranked = 0;
    for (size_t i = 0; i < sizeof rank_vars / sizeof *rank_vars; i++)
        if (getenv(rank_vars[i])) ranked = 1;
    if (!ranked) return 0;
    *size = 0;
    for (size_t i = 0; i < sizeof size_vars / sizeof *size_vars && !*size; i++) {
        const char *v = getenv(size_vars[i]);
        if (v && *v) *size = atoi(v);
    }
    return 1;
}

shoal_status shoal_comm_init_world(struct shoal_comm **world, int *argc, char ***argv) {
    *world = NULL;
    int size = 0;
    if (!launched_by_mpi(&size)) return shoal_comm_self_create(world);
    if (!shoal_comm_mpi_built()) {
        if (size <= 1) return shoal_comm_self_create(world);
        return shoal_errorf(SHOAL_UNSUPPORTED,
                            "started as one of %d ranks, but this shoal was built without MPI "
                            "(install libopenmpi-dev and rebuild)",
                            size);
    }
    shoal_status rc = shoal_comm_mpi_init(world, argc, argv);
    if (rc == SHOAL_OK) process_rank = (*world)->rank;
    return rc;
}

void shoal_comm_finalize(struct shoal_comm *world) {
    if (!world) return;
    int mpi = strcmp(world->iface->name, "mpi") == 0;
    shoal_comm_destroy(world);
    if (mpi) shoal_comm_mpi_finalize();
}

/* ------------------------------------------------------------------ calls */

#define TIMED(c, bytes, call)                                                                  \
    do {                                                                                       \
        double t0_ = shoal_now();                                                              \
        shoal_status rc_ = (call);                                                             \
        (c)->stats.seconds += shoal_now() - t0_;                                               \
        (c)->stats.calls++;                                                                    \
        (c)->stats.bytes_sent += (bytes);                                                      \
        return rc_;                                                                            \
    } while (0)

shoal_status shoal_comm_split(struct shoal_comm *c, int color, int key, struct shoal_comm **out) {
    *out = NULL;
    return c->iface->split(c, color, key, out);
}

shoal_status shoal_comm_allgather(struct shoal_comm *c, const void *send, size_t bytes, void *recv) {
    if (c->size == 1) {
        if (recv != send) memmove(recv, send, bytes);
        return SHOAL_OK;
    }
    TIMED(c, bytes * (size_t)(c->size - 1), c->iface->allgather(c->ctx, send, bytes, recv));
}

shoal_status shoal_comm_gatherv(struct shoal_comm *c, const void *send, const size_t *bytes,
                                void *recv, int root) {
    if (c->size == 1) {
        if (recv != send) memmove(recv, send, bytes[0]);
        return SHOAL_OK;
    }
    TIMED(c, c->rank == root ? 0 : bytes[c->rank], c->iface->gatherv(c->ctx, send, bytes, recv, root));
}

shoal_status shoal_comm_bcast(struct shoal_comm *c, void *buf, size_t bytes, int root) {
    if (c->size == 1) return SHOAL_OK;
    TIMED(c, c->rank == root ? bytes : 0, c->iface->bcast(c->ctx, buf, bytes, root));
}

shoal_status shoal_comm_send(struct shoal_comm *c, const void *buf, size_t bytes, int peer) {
    TIMED(c, bytes, c->iface->send(c->ctx, buf, bytes, peer));
}

shoal_status shoal_comm_recv(struct shoal_comm *c, void *buf, size_t bytes, int peer) {
    TIMED(c, 0, c->iface->recv(c->ctx, buf, bytes, peer));
}

shoal_status shoal_comm_barrier(struct shoal_comm *c) {
    if (c->size == 1) return SHOAL_OK;
    TIMED(c, 0, c->iface->barrier(c->ctx));
}

void shoal_comm_abort(struct shoal_comm *c, int code) {
    fflush(stdout);
    fflush(stderr);
    c->iface->abort(c->ctx, code);
}

/* ----------------------------------------------------------------- limits */


void shoal_comm_set_timeout(double seconds) { wait_seconds = seconds > 0 ? seconds : 0; }
double shoal_comm_timeout(void) { return wait_seconds; }
void shoal_comm_set_abandon(volatile sig_atomic_t *flag) { abandon_flag = flag; }

shoal_status shoal_comm_wait_limit(double t0, double *abandoned_at, int world_rank, const char *who,
                                   const char *call) {
    const double now = shoal_now();
    if (world_rank < 0) world_rank = process_rank;
    if (wait_seconds > 0 && now - t0 > wait_seconds)
        return shoal_errorf(SHOAL_COMM,
                            "rank %d waited %.0f s for %s (%s), which stopped answering: a rank that hangs or "
                            "died, or a link gone silent (--comm-timeout %g s)",
                            world_rank, now - t0, who, call, wait_seconds);
    if (abandon_flag && *abandon_flag) {
        if (!*abandoned_at) *abandoned_at = now;
        else if (now - *abandoned_at > 0.3)
            return shoal_errorf(SHOAL_COMM, "rank %d gave up waiting for %s (%s): the job is being stopped "
                                "(mpirun's SIGTERM: a rank died, or mpirun was asked to stop)", world_rank, who, call);
    }
    return SHOAL_OK;
}

/* ------------------------------------------------------------------- wire */

static const char *const wire_names[SHOAL_WIRE_COUNT] = { "f32", "f16", "bf16", "q8", "f64" };

const char *shoal_wire_name(int wire) {
    return wire >= 0 && wire < SHOAL_WIRE_COUNT ? wire_names[wire] : "unknown";
}

int shoal_wire_from_name(const char *name) {
    for (int i = 0; i < SHOAL_WIRE_COUNT; i++)
        if (strcmp(name, wire_names[i]) == 0) return i;
    if (strcmp(name, "q8_0") == 0 || strcmp(name, "8bit") == 0) return SHOAL_WIRE_Q8;
    return -1;
}

size_t shoal_wire_bytes(int wire, size_t n) {
    switch (wire) {
    case SHOAL_WIRE_F64: return n * 8;
    case SHOAL_WIRE_F32: return n * 4;
    case SHOAL_WIRE_F16:
    case SHOAL_WIRE_BF16: return n * 2;
    default: return (n + SHOAL_QK - 1) / SHOAL_QK * sizeof(struct shoal_block_q8_0);
    }
}

/* n floats to the wire format (a partial last Q8 block is padded with zeros). */
static void wire_pack(int wire, const float *x, size_t n, void *out) {
    if (wire == SHOAL_WIRE_F64) {
        double *o = out;
        for (size_t i = 0; i < n; i++) o[i] = x[i];
    } else if (wire == SHOAL_WIRE_F32) {
        memcpy(out, x, n * 4);
    } else if (wire == SHOAL_WIRE_F16) {
        uint16_t *o = out;
        for (size_t i = 0; i < n; i++) o[i] = shoal_f32_to_f16(x[i]);
    } else if (wire == SHOAL_WIRE_BF16) {
        uint16_t *o = out;
        for (size_t i = 0; i < n; i++) o[i] = shoal_f32_to_bf16(x[i]);
    } else {
        struct shoal_block_q8_0 *o = out;
        for (size_t b = 0; b * SHOAL_QK < n; b++) {
            float v[SHOAL_QK] = { 0 };
            size_t k = n - b * SHOAL_QK < SHOAL_QK ? n - b * SHOAL_QK : SHOAL_QK;
            memcpy(v, x + b * SHOAL_QK, k * sizeof(float));
            shoal_quantize_row(SHOAL_DTYPE_Q8_0, v, &o[b], SHOAL_QK);
        }
    }
}

/* acc[i] += the i-th value of a wire buffer. */
static void wire_add(int wire, const void *in, size_t n, float *acc) {
    if (wire == SHOAL_WIRE_F64) {
        const double *v = in;
        for (size_t i = 0; i < n; i++) acc[i] += (float)v[i];
    } else if (wire == SHOAL_WIRE_F32) {
        const float *v = in;
        for (size_t i = 0; i < n; i++) acc[i] += v[i];
    } else if (wire == SHOAL_WIRE_F16) {
        const uint16_t *v = in;
        for (size_t i = 0; i < n; i++) acc[i] += shoal_f16_to_f32(v[i]);
    } else if (wire == SHOAL_WIRE_BF16) {
        const uint16_t *v = in;
        for (size_t i = 0; i < n; i++) acc[i] += shoal_bf16_to_f32(v[i]);
    } else {
        const struct shoal_block_q8_0 *v = in;
        for (size_t b = 0; b * SHOAL_QK < n; b++) {
            float d = shoal_f16_to_f32(v[b].d);
            size_t k = n - b * SHOAL_QK < SHOAL_QK ? n - b * SHOAL_QK : SHOAL_QK;
            for (size_t j = 0; j < k; j++) acc[b * SHOAL_QK + j] += d * (float)v[b].qs[j];
        }
    }
}

/* Room for this rank's packed part and everyone's. */
static shoal_status scratch(struct shoal_comm *c, size_t need, size_t n) {
    if (need <= c->scratch_cap) return SHOAL_OK;
    void *p = realloc(c->scratch, need);
    if (!p) return shoal_errorf(SHOAL_NOMEM, "out of memory for an all-reduce of %zu values", n);
    c->scratch = p;
    c->scratch_cap = need;
    return SHOAL_OK;
}

shoal_status shoal_comm_allreduce_sum_f64(struct shoal_comm *c, double *buf, size_t n, int wire) {
    if (c->size == 1 || n == 0) return SHOAL_OK;
    if (wire < 0 || wire >= SHOAL_WIRE_COUNT)
        return shoal_errorf(SHOAL_INVALID, "unknown wire type %d", wire);
    if (c->iface->allreduce)
        TIMED(c, n * sizeof(double), c->iface->allreduce(c->ctx, buf, n, 1, wire));
    if (wire != SHOAL_WIRE_F64) { /* rounded to the wire: through f32 */
        size_t fb = n * sizeof(float), wb = shoal_wire_bytes(wire, n);
        SHOAL_TRY(scratch(c, fb + wb * (size_t)(c->size + 1), n));
        float *f = c->scratch;
        for (size_t i = 0; i < n; i++) f[i] = (float)buf[i];
        char *mine = (char *)c->scratch + fb, *all = mine + wb;
        wire_pack(wire, f, n, mine);
        SHOAL_TRY(shoal_comm_allgather(c, mine, wb, all));
        memset(f, 0, fb);
        for (int r = 0; r < c->size; r++) wire_add(wire, all + (size_t)r * wb, n, f);
        for (size_t i = 0; i < n; i++) buf[i] = f[i];
        return SHOAL_OK;
    }
    size_t wb = n * sizeof(double);
    SHOAL_TRY(scratch(c, wb * (size_t)c->size, n));
    double *all = c->scratch;
    SHOAL_TRY(shoal_comm_allgather(c, buf, wb, all));
    for (size_t i = 0; i < n; i++) {
        double s = 0;
        for (int r = 0; r < c->size; r++) s += all[(size_t)r * n + i];
        buf[i] = s;
    }
    return SHOAL_OK;
}

shoal_status shoal_comm_allreduce_sum(struct shoal_comm *c, float *buf, size_t n, int wire) {
    if (c->size == 1 || n == 0) return SHOAL_OK;
    if (wire < 0 || wire >= SHOAL_WIRE_COUNT)
        return shoal_errorf(SHOAL_INVALID, "unknown wire type %d", wire);
    if (c->iface->allreduce)
        TIMED(c, n * sizeof(float), c->iface->allreduce(c->ctx, buf, n, 0, wire));
    size_t wb = shoal_wire_bytes(wire, n);
    SHOAL_TRY(scratch(c, wb * (size_t)(c->size + 1), n));
    char *mine = c->scratch, *all = mine + wb;
    wire_pack(wire, buf, n, mine);
    SHOAL_TRY(shoal_comm_allgather(c, mine, wb, all));
    memset(buf, 0, n * sizeof(float));
    for (int r = 0; r < c->size; r++) wire_add(wire, all + (size_t)r * wb, n, buf);
    return SHOAL_OK;
}

/* ------------------------------------------------------------- agreement */

shoal_status shoal_comm_agree(struct shoal_comm *c, shoal_status mine, int *n_failed) {
    if (n_failed) *n_failed = mine != SHOAL_OK;
    if (c->size == 1) return mine;
    int32_t *all = calloc((size_t)c->size, sizeof *all);
    if (!all) return shoal_errorf(SHOAL_NOMEM, "out of memory");
    int32_t me = mine;
    shoal_status rc = shoal_comm_allgather(c, &me, sizeof me, all);
    int failed = -1, count = 0;
    for (int r = 0; rc == SHOAL_OK && r < c->size; r++)
        if (all[r] != SHOAL_OK) {
            if (failed < 0) failed = r;
            count++;
        }
    if (n_failed) *n_failed = count;
    if (rc == SHOAL_OK && failed >= 0) {
        char msg[1024];
        snprintf(msg, sizeof msg, "%s", c->rank == failed ? shoal_last_error() : "");
        rc = shoal_comm_bcast(c, msg, sizeof msg, failed);
        if (rc == SHOAL_OK) {
            msg[sizeof msg - 1] = 0;
            rc = shoal_errorf(c->rank == failed ? mine : SHOAL_REMOTE, "rank %d: %s", failed,
                              msg[0] ? msg : shoal_status_str(all[failed]));
        }
    }
    free(all);
    return rc;
}
