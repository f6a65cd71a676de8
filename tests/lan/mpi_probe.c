/* mpi_probe: what a multi-rank run sees of the emulated LAN (tests/lan).
 *
 * Every rank reports where it runs (hostname, its 10.77 address, its network
 * namespace); then the ranks check an all-reduce (sizes swept, wrong elements
 * counted against the closed form), rank 0 and rank 1 measure ping-pong
 * latency (8 bytes) and one-way bandwidth (a 16 MiB message), and all ranks
 * time a 16 MiB all-reduce. Results are printed by rank 0 as "key value"
 * lines for tests/lan/test_lan_infra.py; exit status is non-zero if the
 * all-reduce was wrong. It measures, it does not judge latency or bandwidth.
 *
 *   mpicc -O2 mpi_probe.c -o mpi_probe && mpirun -np 3 ./mpi_probe [MiB]
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

enum { INFO_LEN = 192, PINGPONG_ITERS = 40, BW_REPS = 3 };

/* ------------------------------------------------------------------------ */
/* Where am I                                                                */

static void describe_self(char *out, size_t len) {
    char host[64] = "?", ip[INET_ADDRSTRLEN] = "none", ns[64] = "?";
    gethostname(host, sizeof host - 1);
    struct ifaddrs *ifs, *i;
    if (getifaddrs(&ifs) == 0) {
        for (i = ifs; i; i = i->ifa_next) {
            if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
            struct in_addr a = ((struct sockaddr_in *)i->ifa_addr)->sin_addr;
            if ((ntohl(a.s_addr) >> 8) == ((10u << 16) | (77u << 8) | 0u)) { /* 10.77.0.x */
                inet_ntop(AF_INET, &a, ip, sizeof ip);
                break;
            }
        }
        freeifaddrs(ifs);
    }
    ssize_t n = readlink("/proc/self/ns/net", ns, sizeof ns - 1);
    ns[n > 0 ? n : 0] = '\0';
    snprintf(out, len, "host %s ip %s netns %s", host, ip, ns);
}

/* ------------------------------------------------------------------------ */
/* All-reduce correctness: rank r contributes r+1+i at element i            */

static long check_allreduce(int rank, int size, int n) {
    double *x = malloc((size_t)n * sizeof *x), *y = malloc((size_t)n * sizeof *y);
    if (!x || !y) MPI_Abort(MPI_COMM_WORLD, 2);
    for (int i = 0; i < n; i++) x[i] = rank + 1 + i;
    MPI_Allreduce(x, y, n, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD);
    long wrong = 0;
    for (int i = 0; i < n; i++) {
        double want = (double)size * (size + 1) / 2 + (double)size * i; /* exact in double */
        if (y[i] != want) wrong++;
    }
    free(x), free(y);
    long total;
    MPI_Allreduce(&wrong, &total, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
    return total;
}

/* ------------------------------------------------------------------------ */
/* Point to point between ranks 0 and 1                                      */

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* Median and minimum round trip of an 8-byte ping-pong, in seconds. */
static void pingpong(int rank, double *median, double *min) {
    double t[PINGPONG_ITERS];
    char msg[8] = {0};
    for (int it = -5; it < PINGPONG_ITERS; it++) { /* 5 warm-up rounds */
        double t0 = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(msg, 8, MPI_CHAR, 1, 1, MPI_COMM_WORLD);
            MPI_Recv(msg, 8, MPI_CHAR, 1, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(msg, 8, MPI_CHAR, 0, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(msg, 8, MPI_CHAR, 0, 1, MPI_COMM_WORLD);
        }
        if (it >= 0) t[it] = MPI_Wtime() - t0;
    }
    qsort(t, PINGPONG_ITERS, sizeof t[0], cmp_double);
    *median = t[PINGPONG_ITERS / 2], *min = t[0];
}

/* Best time for rank 0 to send `bytes` to rank 1 and hear an 8-byte ack. */
static double bandwidth(int rank, char *buf, int bytes) {
    double best = 1e30;
    char ack[8] = {0};
    for (int rep = 0; rep < BW_REPS; rep++) {
        MPI_Barrier(MPI_COMM_WORLD);
        double t0 = MPI_Wtime();
        if (rank == 0) {
            MPI_Send(buf, bytes, MPI_CHAR, 1, 2, MPI_COMM_WORLD);
            MPI_Recv(ack, 8, MPI_CHAR, 1, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        } else if (rank == 1) {
            MPI_Recv(buf, bytes, MPI_CHAR, 0, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
            MPI_Send(ack, 8, MPI_CHAR, 0, 3, MPI_COMM_WORLD);
        }
        double t = MPI_Wtime() - t0;
        if (t < best) best = t;
    }
    return best;
}

int main(int argc, char **argv) {
    MPI_Init(&argc, &argv);
    int rank, size;
    MPI_Comm_rank(MPI_COMM_WORLD, &rank);
    MPI_Comm_size(MPI_COMM_WORLD, &size);
    int mib = argc > 1 ? atoi(argv[1]) : 16;
    if (mib < 1) mib = 16;
    int bytes = mib << 20;

    char me[INFO_LEN], *all = rank == 0 ? malloc((size_t)size * INFO_LEN) : NULL;
    describe_self(me, sizeof me);
    MPI_Gather(me, INFO_LEN, MPI_CHAR, all, INFO_LEN, MPI_CHAR, 0, MPI_COMM_WORLD);
    if (rank == 0) {
        printf("ranks %d\n", size);
        for (int r = 0; r < size; r++) printf("rank %d %s\n", r, all + (size_t)r * INFO_LEN);
        free(all);
    }

    static const int sizes[] = {1, 7, 1000, 65536, 1 << 20};
    long wrong_total = 0;
    for (size_t s = 0; s < sizeof sizes / sizeof sizes[0]; s++) {
        long wrong = check_allreduce(rank, size, sizes[s]);
        wrong_total += wrong;
        if (rank == 0) printf("allreduce_check n %d wrong %ld\n", sizes[s], wrong);
    }

    char *buf = calloc((size_t)bytes, 1);
    if (!buf) MPI_Abort(MPI_COMM_WORLD, 2);
    if (size >= 2) {
        double med, min;
        pingpong(rank, &med, &min);
        double t = bandwidth(rank, buf, bytes);
        if (rank == 0) {
            printf("pingpong_rtt_ms median %.3f min %.3f\n", med * 1e3, min * 1e3);
            printf("p2p_bytes %d reps %d\n", bytes, BW_REPS);
            printf("p2p_time_ms %.1f\n", t * 1e3);
            printf("p2p_gbit_s %.3f\n", bytes * 8.0 / t / 1e9);
        }
    }

    /* 16 MiB all-reduce of floats, a tensor-parallel-sized message. */
    int n = bytes / (int)sizeof(float);
    float *f = (float *)buf, *g = malloc((size_t)bytes);
    if (!g) MPI_Abort(MPI_COMM_WORLD, 2);
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    MPI_Allreduce(f, g, n, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t = MPI_Wtime() - t0;
    MPI_Barrier(MPI_COMM_WORLD);
    t0 = MPI_Wtime();
    float one = 1, sum;
    for (int i = 0; i < 10; i++) MPI_Allreduce(&one, &sum, 1, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD);
    double t_small = (MPI_Wtime() - t0) / 10;
    if (rank == 0) {
        printf("allreduce_%dMiB_ms %.1f\n", mib, t * 1e3);
        printf("allreduce_4B_ms %.3f\n", t_small * 1e3);
        printf("result %s\n", wrong_total == 0 ? "ok" : "WRONG");
    }
    free(buf), free(g);
    MPI_Finalize();
    return wrong_total == 0 ? 0 : 1;
}
