/*
 * test_comm — the communicator on however many ranks it is started with
 * (one: the self backend; under mpirun: MPI). Sweeps all-reduce sizes for
 * every wire type and counts wrong elements (exact for f32/f16/bf16 on
 * values they represent exactly; within half a quantization step per rank
 * for q8), checks that every rank ends with the same bits, and checks
 * all-gather, gather, broadcast, a send/recv ring, split and agreement.
 */
#include <math.h>
#include <stdint.h>

#include "check.h"
#include "comm/comm.h"

static uint64_t hash(const void *p, size_t n) {
    const uint8_t *b = p;
    uint64_t h = 1469598103934665603ull;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

/* A value every wire type holds exactly: a multiple of 1/8 below 64. */
static float value(int rank, size_t i) { return (float)(((i * 7 + (size_t)rank * 13) % 512)) / 8.0f - 32.0f; }

static void test_allreduce(struct shoal_comm *c) {
    const int rank = shoal_comm_rank(c), size = shoal_comm_size(c);
    static const size_t sizes[] = { 1, 7, 31, 32, 33, 100, 1000, 4096, 65537 };
    for (int wire = 0; wire < SHOAL_WIRE_COUNT; wire++)
        for (size_t si = 0; si < sizeof sizes / sizeof *sizes; si++) {
            size_t n = sizes[si];
            float *buf = malloc(n * sizeof(float));
            for (size_t i = 0; i < n; i++) buf[i] = value(rank, i);
            CHECK_OK(shoal_comm_allreduce_sum(c, buf, n, wire));
            size_t wrong = 0;
            for (size_t i = 0; i < n; i++) {
                double want = 0, tol = 0;
                for (int r = 0; r < size; r++) {
                    want += value(r, i);
                    if (wire == SHOAL_WIRE_Q8) {
                        /* the block's amax over 127, halved, per rank (amax <= 32) */
                        tol += 32.0 / 127.0 / 2.0 + 1e-6;
                    }
                }
                if (fabs(buf[i] - want) > tol) wrong++;
            }
            CHECK(wrong == 0, "allreduce %s n=%zu on %d ranks: %zu wrong elements",
                  shoal_wire_name(wire), n, size, wrong);
            /* every rank holds the same bits */
            uint64_t h = hash(buf, n * sizeof(float)), *all = malloc((size_t)size * sizeof h);
            CHECK_OK(shoal_comm_allgather(c, &h, sizeof h, all));
            for (int r = 0; r < size; r++)
                CHECK(all[r] == h, "allreduce %s n=%zu: rank %d and %d differ", shoal_wire_name(wire), n,
                      r, rank);
            free(all);
            free(buf);
        }
}

static void test_collectives(struct shoal_comm *c) {
    const int rank = shoal_comm_rank(c), size = shoal_comm_size(c);
    int32_t mine[3] = { rank, rank * 10, -rank }, *all = calloc((size_t)size * 3, sizeof *all);
    CHECK_OK(shoal_comm_allgather(c, mine, sizeof mine, all));
    for (int r = 0; r < size; r++)
        CHECK(all[3 * r] == r && all[3 * r + 1] == r * 10 && all[3 * r + 2] == -r, "allgather slot %d", r);
    /* gather of uneven sizes: rank r sends r + 1 ints */
    size_t *bytes = calloc((size_t)size, sizeof *bytes), total = 0;
    for (int r = 0; r < size; r++) total += (bytes[r] = (size_t)(r + 1) * sizeof(int32_t));
    int32_t send[64], *recv = calloc(total, 1);
    for (int k = 0; k <= rank; k++) send[k] = rank * 100 + k;
    int root = size - 1;
    CHECK_OK(shoal_comm_gatherv(c, send, bytes, recv, root));
    if (rank == root) {
        int at = 0;
        for (int r = 0; r < size; r++)
            for (int k = 0; k <= r; k++, at++) CHECK(recv[at] == r * 100 + k, "gatherv [%d]", at);
    }
    char msg[32] = { 0 };
    if (rank == root) snprintf(msg, sizeof msg, "from %d", root);
    CHECK_OK(shoal_comm_bcast(c, msg, sizeof msg, root));
    char want[32];
    snprintf(want, sizeof want, "from %d", root);
    CHECK(strcmp(msg, want) == 0, "bcast got '%s'", msg);
    if (size > 1) { /* a ring: even ranks send first */
        int next = (rank + 1) % size, prev = (rank + size - 1) % size, got = -1;
        if (rank % 2 == 0) {
            CHECK_OK(shoal_comm_send(c, &rank, sizeof rank, next));
            CHECK_OK(shoal_comm_recv(c, &got, sizeof got, prev));
        } else {
            CHECK_OK(shoal_comm_recv(c, &got, sizeof got, prev));
            CHECK_OK(shoal_comm_send(c, &rank, sizeof rank, next));
        }
        CHECK(got == prev, "ring: rank %d got %d from %d", rank, got, prev);
    }
    CHECK_OK(shoal_comm_barrier(c));
    CHECK(shoal_comm_stats(c)->calls > 0 || size == 1, "no calls counted");
    free(all), free(bytes), free(recv);
}

static void test_split_and_agree(struct shoal_comm *world) {
    const int rank = shoal_comm_rank(world), size = shoal_comm_size(world);
    struct shoal_comm *half = NULL;
    CHECK_OK(shoal_comm_split(world, rank % 2, rank, &half));
    if (half) {
        CHECK(shoal_comm_size(half) == (size + 1 - rank % 2) / 2, "split size %d", shoal_comm_size(half));
        CHECK(shoal_comm_rank(half) == rank / 2, "split rank %d", shoal_comm_rank(half));
        float v = 1.0f;
        CHECK_OK(shoal_comm_allreduce_sum(half, &v, 1, SHOAL_WIRE_F32));
        CHECK(v == (float)shoal_comm_size(half), "sum over the half: %g", v);
    }
    shoal_comm_destroy(half);
    CHECK(shoal_comm_agree(world, SHOAL_OK, NULL) == SHOAL_OK, "agree on success");
    if (size > 1) {
        shoal_status mine = SHOAL_OK;
        if (rank == size - 1) mine = shoal_errorf(SHOAL_IO, "disk on fire");
        int n_failed = 0;
        shoal_status rc = shoal_comm_agree(world, mine, &n_failed);
        CHECK(rc == (rank == size - 1 ? SHOAL_IO : SHOAL_REMOTE), "agree status %d", rc);
        CHECK(n_failed == 1, "agree counted %d failures", n_failed);
        char want[64];
        snprintf(want, sizeof want, "rank %d: disk on fire", size - 1);
        CHECK(strstr(shoal_last_error(), want) != NULL, "agree message '%s'", shoal_last_error());
    }
}

int main(int argc, char **argv) {
    struct shoal_comm *world = NULL;
    CHECK_OK(shoal_comm_init_world(&world, &argc, &argv));
    if (!world) return 1;
    printf("rank %d of %d (%s)\n", shoal_comm_rank(world), shoal_comm_size(world),
           shoal_comm_backend(world));
    test_allreduce(world);
    test_collectives(world);
    test_split_and_agree(world);
    int failed = check_failures;
    /* the exit status must not depend on which rank failed: agree on it */
    int32_t f = failed, *all = calloc((size_t)shoal_comm_size(world), sizeof f);
    shoal_comm_allgather(world, &f, sizeof f, all);
    for (int r = 0; r < shoal_comm_size(world); r++) check_failures += r == shoal_comm_rank(world) ? 0 : all[r];
    free(all);
    shoal_comm_finalize(world);
    return check_done("test_comm");
}
