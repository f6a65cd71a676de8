/*
 * membw.c — how fast this machine streams memory into the cores (the bound
 * that decode tokens/s x weight bytes is compared with): prints the best of
 * five passes in GB/s (cpu/membw.c does the reading).
 *
 * usage: membw [threads] [MiB]   (defaults: all cores, 1024 MiB)
 */
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#include "../cpu/membw.h"

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : (int)sysconf(_SC_NPROCESSORS_ONLN);
    long mib = argc > 2 ? atol(argv[2]) : 1024;
    if (threads < 1 || mib < 64) {
        fprintf(stderr, "usage: membw [threads >= 1] [MiB >= 64]\n");
        return 2;
    }
    double bw;
    if (shoal_membw_measure(threads, (size_t)mib << 20, 5, &bw) != SHOAL_OK) {
        fprintf(stderr, "membw: %s\n", shoal_last_error());
        return 1;
    }
    printf("%.1f GB/s read with %d threads over %ld MiB\n", bw / 1e9, threads, mib);
    return 0;
}
