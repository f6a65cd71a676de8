/*
 * manifest — DIR/manifest.pb, the protobuf (shard/manifest.proto, compiled
 * by protoc-c at build time) that describes a sharded model: the source, the
 * hyperparameters, the plan, and per rank its file and every tensor's
 * offset, size and checksum. Reading it checks what a rank relies on before
 * it opens its file; checksums are XXH3-64 (xxHash).
 */
#ifndef SHOAL_MANIFEST_H
#define SHOAL_MANIFEST_H

#include <stdint.h>

#include "../base/base.h"
#include "../parallel/plan.h"
#include "gguf.h"
#include "shard/manifest.pb-c.h"

#define SHOAL_MANIFEST_MAGIC "shoal-manifest"
#define SHOAL_MANIFEST_VERSION 1u
#define SHOAL_MANIFEST_NAME "manifest.pb"
#define SHOAL_MANIFEST_MAX_BYTES (64u << 20)
#define SHOAL_CHECKSUM_NAME "xxh3-64"

/*
 * Reads and checks DIR's manifest: size, protobuf encoding, magic, version
 * (a newer one is refused, naming the versions this shoal reads), the
 * checksum kind, and that the plan is whole (a part per rank, in order, a
 * file per rank). *out is owned by the caller (shoal_manifest_free).
 */
shoal_status shoal_manifest_read(Shoal__Manifest **out, const char *dir);
void shoal_manifest_free(Shoal__Manifest *m);

/* Writes m as DIR/manifest.pb: a temporary file, fsync, rename. */
shoal_status shoal_manifest_write(const Shoal__Manifest *m, const char *dir);

/* The plan a manifest records, as parallel/plan.h's struct (caller destroys). */
shoal_status shoal_manifest_plan(const Shoal__Manifest *m, struct shoal_plan **out);

/*
 * XXH3-64 of len bytes of g's file from byte offset, read with pread in
 * chunks (nothing is mapped: checking a file does not grow the resident
 * memory); tick, when not NULL, is told of each chunk's bytes.
 */
shoal_status shoal_file_checksum(const struct shoal_gguf *g, uint64_t offset, uint64_t len,
                                 uint64_t *out, void (*tick)(void *user, uint64_t n), void *user);

/* Bytes of tensor data in rank's file (what verifying it reads). */
uint64_t shoal_manifest_rank_bytes(const Shoal__Manifest *m, int rank);

/*
 * Checks that g is rank's file of m: the rank and source recorded in its
 * metadata, and every tensor's name, type, shape, offset and size; with
 * verify, every tensor's checksum too. Errors name the rank, the file, the
 * tensor and the way out (shoal shard again). tick, when not NULL, is told
 * of the bytes checked as they go.
 */
shoal_status shoal_manifest_check_rank(const Shoal__Manifest *m, int rank,
                                       const struct shoal_gguf *g, int verify,
                                       void (*tick)(void *user, uint64_t n), void *user);

#endif
