/*
 * mpi_none.c — stands in for mpi.c in builds without MPI: there is only
 * ever one rank.
 */
#include "comm_impl.h"

shoal_status shoal_comm_mpi_init(struct shoal_comm **out, int *argc, char ***argv) {
    *out = NULL;
    return shoal_errorf(SHOAL_UNSUPPORTED, "this shoal was built without MPI");
}

void shoal_comm_mpi_finalize(void) {}

int shoal_comm_mpi_built(void) { return 0; }
