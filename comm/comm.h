/*
 * comm — how ranks talk. One interface over a group of ranks: all-reduce of
 * f32 sums (the payload travelling as f32, f16, bf16 or 8-bit blocks, the
 * sum always in f32 and bit-identical on every rank), all-gather, broadcast,
 * send, recv and barrier. Backends: self (one rank, no MPI), mpi, and nccl
 * (device buffers). Nothing outside comm/ calls MPI or NCCL.
 *
 * Buffers live in host memory (self, mpi) or in a CUDA device's (nccl). Every call counts
 * its bytes and time in the group's statistics. A failed call returns
 * SHOAL_COMM with a message naming the call and the rank.
 */
#ifndef SHOAL_COMM_H
#define SHOAL_COMM_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "../base/base.h"

struct shoal_comm; /* a group of ranks */

/* How all-reduce payloads travel. */
enum shoal_wire {
    SHOAL_WIRE_F32 = 0,
    SHOAL_WIRE_F16 = 1,
    SHOAL_WIRE_BF16 = 2,
    SHOAL_WIRE_Q8 = 3, /* blocks of 32: an f16 scale and 32 int8 (34 bytes) */
    SHOAL_WIRE_F64 = 4, /* f64 sums stay f64: what one rank would compute */
    SHOAL_WIRE_COUNT
};
const char *shoal_wire_name(int wire);
int shoal_wire_from_name(const char *name); /* -1 if unknown */
/* Bytes n floats take on the wire. */
size_t shoal_wire_bytes(int wire, size_t n);

struct shoal_comm_stats {
    uint64_t bytes_sent;  /* payload bytes this rank sent (collectives: its share) */
    uint64_t calls;
    double seconds;       /* wall time inside communication calls */
};

/*
 * The world group. When the process was started by mpirun (or srun) and the
 * build has MPI, MPI is initialised and the world is MPI_COMM_WORLD;
 * otherwise it is a one-rank self group. A launch by mpirun of a build
 * without MPI is an error that says so. finalize destroys the world and
 * shuts MPI down; call it once, last.
 */
shoal_status shoal_comm_init_world(struct shoal_comm **world, int *argc, char ***argv);
void shoal_comm_finalize(struct shoal_comm *world);

/* Whether this build can run more than one rank; whether it has NCCL. */
int shoal_comm_have_mpi(void);
int shoal_comm_have_nccl(void);

/*
 * The ranks of c again as a group over NCCL (comm/nccl.c), for buffers in
 * the memory of CUDA device `device` (this rank's), its calls queued on
 * `stream` (a cudaStream_t; NULL: the device's default stream) behind the
 * kernels already there and returning before they run. Collective over c:
 * c's rank 0 makes the NCCL id and broadcasts it over c. Every rank of c
 * needs a device of its own (NCCL refuses two ranks on one GPU). *out is
 * owned by the caller. SHOAL_UNSUPPORTED in a build without NCCL; SHOAL_COMM
 * naming the rank and the call when NCCL fails. Such a group all-reduces f32
 * values on an f32 wire and f64 values on an f64 or an f32 wire (rounded to f32
 * on the device, summed there, widened again); the smaller wires are not its.
 * A rank that fails before NCCL's set-up says so to the others, which then
 * fail too rather than wait in it.
 */
shoal_status shoal_comm_nccl_create(struct shoal_comm *c, int device, void *stream,
                                    struct shoal_comm **out);
/* Whether c's buffers are device memory (NCCL) rather than host memory. */
int shoal_comm_device_buffers(const struct shoal_comm *c);
/* Device memory the group's library took on this rank's device when the group was
 * made (NCCL's buffers and connections, measured by the driver), for the device's
 * memory count; 0 for a group of host buffers. */
uint64_t shoal_comm_device_bytes(const struct shoal_comm *c);

/*
 * Splits c into groups of the ranks with the same color, ordered by key
 * (collective over c). *out is owned by the caller (shoal_comm_destroy).
 */
shoal_status shoal_comm_split(struct shoal_comm *c, int color, int key, struct shoal_comm **out);
void shoal_comm_destroy(struct shoal_comm *c); /* accepts NULL; not for the world */

int shoal_comm_rank(const struct shoal_comm *c);
int shoal_comm_size(const struct shoal_comm *c);
const char *shoal_comm_backend(const struct shoal_comm *c);
/* Ranks of the world that share this rank's machine (1 for self); a collective: every
 * rank of world calls it. */
int shoal_comm_local_size(struct shoal_comm *world);
const struct shoal_comm_stats *shoal_comm_stats(const struct shoal_comm *c);
void shoal_comm_stats_reset(struct shoal_comm *c);

/*
 * buf (n floats) becomes the element-wise sum over the group's ranks. Each
 * rank's contribution travels as wire; the sum is formed in f32, in rank
 * order, from what travelled (a rank's own part too), so every rank ends
 * with the same bits.
 */
shoal_status shoal_comm_allreduce_sum(struct shoal_comm *c, float *buf, size_t n, int wire);
/*
 * The same for f64 values (partial sums of the row-parallel projections).
 * With SHOAL_WIRE_F64 they travel and add up in f64; with another wire they
 * are rounded to it, as shoal_comm_allreduce_sum sends f32 values.
 */
shoal_status shoal_comm_allreduce_sum_f64(struct shoal_comm *c, double *buf, size_t n, int wire);
/* recv (size * bytes) = every rank's send (bytes), in rank order. In place when
 * send is this rank's slot of recv (recv + rank * bytes), as NCCL has it. */
shoal_status shoal_comm_allgather(struct shoal_comm *c, const void *send, size_t bytes, void *recv);
/* recv at root = rank r's bytes[r] at offset sum(bytes[0..r)); others' recv unused. */
shoal_status shoal_comm_gatherv(struct shoal_comm *c, const void *send, const size_t *bytes,
                                void *recv, int root);
shoal_status shoal_comm_bcast(struct shoal_comm *c, void *buf, size_t bytes, int root);
shoal_status shoal_comm_send(struct shoal_comm *c, const void *buf, size_t bytes, int peer);
shoal_status shoal_comm_recv(struct shoal_comm *c, void *buf, size_t bytes, int peer);
shoal_status shoal_comm_barrier(struct shoal_comm *c);

/*
 * Agreement after work that may fail on some ranks only (loading a file):
 * every rank passes its status; all get SHOAL_OK when every rank succeeded,
 * else SHOAL_REMOTE (or the rank's own status) with the detail "rank K:
 * <its message>" of the lowest failed rank, and *n_failed (if not NULL) the
 * number of ranks that failed. Collective over c.
 */
shoal_status shoal_comm_agree(struct shoal_comm *c, shoal_status mine, int *n_failed);

/* Ends every rank of the job now (after a failure that leaves them out of step). */
void shoal_comm_abort(struct shoal_comm *c, int code);

/*
 * How long this process's calls wait for other ranks (every communicator,
 * from now on): a call still waiting after seconds (0: for ever, the
 * default) ends with SHOAL_COMM naming the world ranks it was waiting for,
 * which have stopped answering or whose link has gone silent. The MPI
 * backend's waits; NCCL's run on the device and are not bounded here.
 */
void shoal_comm_set_timeout(double seconds);
double shoal_comm_timeout(void);
/*
 * A flag (a signal handler's) that, once set, ends any call that is still
 * waiting 0.3 s later with SHOAL_COMM: the job is being stopped
 * (mpirun's SIGTERM, which its SIGKILL follows a second later), and a rank
 * that waits on a dead one must give up in time to say so. NULL: none.
 */
void shoal_comm_set_abandon(volatile sig_atomic_t *flag);

#endif
