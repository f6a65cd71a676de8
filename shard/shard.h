/*
 * shard — one file per rank (`shoal shard`): each a valid GGUF holding the
 * source's metadata unchanged, the keys below, and exactly that rank's
 * slices of the weights (runtime/model.h, shoal_model_slices), beside a
 * protobuf manifest (shard/manifest.proto) that lists every rank's file and
 * every tensor's checksum. A rank reads the manifest and its own file only.
 */
#ifndef SHOAL_SHARD_H
#define SHOAL_SHARD_H

/* Metadata every rank file carries besides the source's. */
#define SHOAL_SHARD_KEY_RANK "shoal.shard.rank"             /* u32 */
#define SHOAL_SHARD_KEY_N_RANKS "shoal.shard.n_ranks"       /* u32 */
#define SHOAL_SHARD_KEY_TP "shoal.shard.tp"                 /* u32 */
#define SHOAL_SHARD_KEY_PP "shoal.shard.pp"                 /* u32 */
#define SHOAL_SHARD_KEY_N_VOCAB "shoal.shard.n_vocab"       /* u32: the whole model's */
#define SHOAL_SHARD_KEY_TIED "shoal.shard.tied_output"      /* bool: the source's head is the embedding table */
#define SHOAL_SHARD_KEY_SOURCE_DIGEST "shoal.shard.source_digest" /* u64: xxh3-64 of the source GGUF */

#endif
