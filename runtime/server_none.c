/*
 * server_none.c — shoal built without its HTTP server (-DSHOAL_SERVER=OFF):
 * shoal serve says so.
 */
#include "server.h"

shoal_status shoal_server_create(struct shoal_server **out, const struct shoal_server_params *p,
                                 const struct shoal_tokenizer *tok, struct shoal_sched *sc) {
    (void)p;
    (void)tok;
    (void)sc;
    *out = NULL;
    return shoal_errorf(SHOAL_UNSUPPORTED, "this shoal was built without its server (cmake -DSHOAL_SERVER=ON, "
                        "with libmicrohttpd-dev and libcjson-dev installed)");
}

int shoal_server_port(const struct shoal_server *srv) {
    (void)srv;
    return 0;
}

shoal_status shoal_server_run(struct shoal_server *srv, volatile sig_atomic_t *stop) {
    (void)srv;
    (void)stop;
    return shoal_errorf(SHOAL_UNSUPPORTED, "this shoal was built without its server");
}

void shoal_server_destroy(struct shoal_server *srv) { (void)srv; }
