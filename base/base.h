/*
 * base — what every other module of shoal uses: the one status type, the
 * error detail that travels with it, logging, and the tensor element types
 * (with their half-precision and quantized-block layouts).
 *
 * It does no I/O of its own beyond writing log lines to stderr and knows
 * nothing of models, ranks or devices.
 */
#ifndef SHOAL_BASE_H
#define SHOAL_BASE_H

#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

/* ---------------------------------------------------------------- status */

typedef enum shoal_status {
    SHOAL_OK = 0,
    SHOAL_INVALID,     /* bad argument, flag or request */
    SHOAL_NOMEM,       /* an allocation failed */
    SHOAL_IO,          /* open/read/write/mmap failed */
    SHOAL_FORMAT,      /* a file is malformed or of an unsupported kind */
    SHOAL_UNSUPPORTED, /* well-formed, but not something shoal can run */
    SHOAL_CUDA,        /* a CUDA, cuBLAS or driver call failed */
    SHOAL_COMM,        /* an MPI or NCCL call failed */
    SHOAL_REMOTE,      /* another rank failed */
    SHOAL_TIMEOUT,
    SHOAL_INTERNAL,    /* a bug in shoal */
    SHOAL_STATUS_COUNT
} shoal_status;

const char *shoal_status_str(shoal_status s);

/*
 * The detail of the most recent error on this thread: which file, tensor,
 * rank or field, and what to do about it. It is per thread, like errno, so
 * it is not state shared between contexts; it is overwritten by the next
 * error. shoal_errorf() records a message and returns its status so that a
 * failing function can `return shoal_errorf(SHOAL_FORMAT, "...")`.
 */
shoal_status shoal_errorf(shoal_status s, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
/* Prepends "context: " to the current detail (e.g. the file name). */
void shoal_error_prefix(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
const char *shoal_last_error(void); /* "" when none was recorded */
void shoal_error_clear(void);

#define SHOAL_TRY(call)                                                                    \
    do {                                                                                   \
        shoal_status shoal_try_rc_ = (call);                                               \
        if (shoal_try_rc_ != SHOAL_OK) return shoal_try_rc_;                               \
    } while (0)

#define SHOAL_TRY_GOTO(call, rc, label)                                                    \
    do {                                                                                   \
        (rc) = (call);                                                                     \
        if ((rc) != SHOAL_OK) goto label;                                                  \
    } while (0)

/* ----------------------------------------------------------------- logging */

enum shoal_log_level { SHOAL_LOG_ERROR, SHOAL_LOG_WARN, SHOAL_LOG_INFO, SHOAL_LOG_DEBUG };

/*
 * The logger is configured once by launch/ before any other thread starts
 * (level, rank, and the subsystems named in SHOAL_DEBUG=comm,offload or
 * "all") and only read afterwards. Every line carries the rank.
 */
void shoal_log_init(enum shoal_log_level level, int rank, const char *debug_subsystems);
int shoal_log_enabled(enum shoal_log_level level, const char *subsystem);
void shoal_log(enum shoal_log_level level, const char *subsystem, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

#define SHOAL_LOGE(sub, ...) shoal_log(SHOAL_LOG_ERROR, sub, __VA_ARGS__)
#define SHOAL_LOGW(sub, ...) shoal_log(SHOAL_LOG_WARN, sub, __VA_ARGS__)
#define SHOAL_LOGI(sub, ...) shoal_log(SHOAL_LOG_INFO, sub, __VA_ARGS__)
#define SHOAL_LOGD(sub, ...) shoal_log(SHOAL_LOG_DEBUG, sub, __VA_ARGS__)

/* ------------------------------------------------------------ element types */

/*
 * Tensor element types. The values are GGUF's (ggml_type) so that a type read
 * from a file needs no translation; only the ones listed are known to shoal.
 */
enum shoal_dtype {
    SHOAL_DTYPE_F32 = 0,
    SHOAL_DTYPE_F16 = 1,
    SHOAL_DTYPE_Q4_0 = 2,
    SHOAL_DTYPE_Q4_1 = 3,
    SHOAL_DTYPE_Q5_0 = 6,
    SHOAL_DTYPE_Q5_1 = 7,
    SHOAL_DTYPE_Q8_0 = 8,
    SHOAL_DTYPE_Q8_1 = 9,
    SHOAL_DTYPE_Q2_K = 10,
    SHOAL_DTYPE_Q3_K = 11,
    SHOAL_DTYPE_Q4_K = 12,
    SHOAL_DTYPE_Q5_K = 13,
    SHOAL_DTYPE_Q6_K = 14,
    SHOAL_DTYPE_Q8_K = 15,
    /* known by name and size only (shoal refuses to compute with them, naming them) */
    SHOAL_DTYPE_IQ2_XXS = 16,
    SHOAL_DTYPE_IQ2_XS = 17,
    SHOAL_DTYPE_IQ3_XXS = 18,
    SHOAL_DTYPE_IQ1_S = 19,
    SHOAL_DTYPE_IQ4_NL = 20,
    SHOAL_DTYPE_IQ3_S = 21,
    SHOAL_DTYPE_IQ2_S = 22,
    SHOAL_DTYPE_IQ4_XS = 23,
    SHOAL_DTYPE_I8 = 24,
    SHOAL_DTYPE_I16 = 25,
    SHOAL_DTYPE_I32 = 26,
    SHOAL_DTYPE_I64 = 27,
    SHOAL_DTYPE_F64 = 28,
    SHOAL_DTYPE_IQ1_M = 29,
    SHOAL_DTYPE_BF16 = 30,
    SHOAL_DTYPE_TQ1_0 = 34,
    SHOAL_DTYPE_TQ2_0 = 35,
    SHOAL_DTYPE_MXFP4 = 39,
    SHOAL_DTYPE_MAX = 40 /* exclusive bound on the values above */
};

struct shoal_dtype_info {
    const char *name;  /* as llama.cpp prints it: "q4_0", "f16" */
    int block;         /* values per block (1 for plain types) */
    int block_bytes;   /* bytes per block */
    int computable;    /* the CPU backend computes with it as a weight (CUDA: cuda_weight_layout says) */
};

/* NULL for a value that is not a known type. */
const struct shoal_dtype_info *shoal_dtype_info(int type);
const char *shoal_dtype_name(int type); /* "type 17" style text for unknown */
/* -1 when unknown; else the enum value. Case-insensitive. */
int shoal_dtype_from_name(const char *name);
/*
 * Bytes of one row of n values; fails (returns 0) when n is not a multiple of
 * the block size or the type is unknown.
 */
size_t shoal_dtype_row_bytes(int type, int64_t n);

/* Quantized block layouts (GGUF's). Blocks are packed: no padding. */
#define SHOAL_QK 32
struct shoal_block_q8_0 {
    uint16_t d; /* f16 scale */
    int8_t qs[SHOAL_QK];
};
struct shoal_block_q4_0 {
    uint16_t d;               /* f16 scale */
    uint8_t qs[SHOAL_QK / 2]; /* value j in low nibble of qs[j], j+16 in the high */
};
struct shoal_block_q4_1 {
    uint16_t d, m; /* f16 scale and minimum */
    uint8_t qs[SHOAL_QK / 2];
};

/* (the CUDA backend includes this header as C++, which spells it static_assert) */
#ifdef __cplusplus
#define SHOAL_STATIC_ASSERT static_assert
#else
#define SHOAL_STATIC_ASSERT _Static_assert
#endif
struct shoal_block_q5_0 {
    uint16_t d;               /* f16 scale */
    uint8_t qh[4];            /* bit j (of the 32, little-endian) is value j's fifth bit */
    uint8_t qs[SHOAL_QK / 2]; /* low four bits, ordered as in q4_0 */
};
struct shoal_block_q5_1 {
    uint16_t d, m; /* f16 scale and minimum */
    uint8_t qh[4];
    uint8_t qs[SHOAL_QK / 2];
};
/* IQ4_NL: q4_0's layout, but each nibble indexes a 16-entry non-linear table. */
struct shoal_block_iq4_nl {
    uint16_t d; /* f16 scale */
    uint8_t qs[SHOAL_QK / 2];
};

/*
 * The super-block types (k-quants and IQ4_XS): 256 values per block, cut
 * into sub-blocks of 16 or 32 that carry their own small scale. Where a
 * layout spreads a value over several fields, the dequantizer in quant.c
 * says which bits go where.
 */
#define SHOAL_QK_K 256
struct shoal_block_q2_k {
    uint8_t scales[SHOAL_QK_K / 16]; /* per 16 values: scale in the low nibble, min in the high */
    uint8_t qs[SHOAL_QK_K / 4];      /* 2-bit values, four to a byte */
    uint16_t d, dmin;                /* f16 super-block scales of the scales and of the mins */
};
struct shoal_block_q3_k {
    uint8_t hmask[SHOAL_QK_K / 8]; /* the third bit of each value (set: no -4 offset) */
    uint8_t qs[SHOAL_QK_K / 4];    /* low two bits, four to a byte */
    uint8_t scales[12];            /* sixteen 6-bit scales, stored +32 */
    uint16_t d;                    /* f16 super-block scale */
};
struct shoal_block_q4_k {
    uint16_t d, dmin;             /* f16 super-block scales of the scales and of the mins */
    uint8_t scales[12];           /* eight 6-bit scales and eight 6-bit mins */
    uint8_t qs[SHOAL_QK_K / 2];   /* per 64 values: the first 32 in low nibbles, the next 32 high */
};
struct shoal_block_q5_k {
    uint16_t d, dmin;
    uint8_t scales[12];           /* as in q4_k */
    uint8_t qh[SHOAL_QK_K / 8];   /* fifth bits: bit g of qh[j] for value 32 g + j */
    uint8_t qs[SHOAL_QK_K / 2];   /* low four bits, as in q4_k */
};
struct shoal_block_q6_k {
    uint8_t ql[SHOAL_QK_K / 2];   /* low four bits */
    uint8_t qh[SHOAL_QK_K / 4];   /* high two bits */
    int8_t scales[SHOAL_QK_K / 16]; /* per 16 values */
    uint16_t d;                   /* f16 super-block scale */
};
struct shoal_block_iq4_xs {
    uint16_t d;                   /* f16 super-block scale */
    uint16_t scales_h;            /* high two bits of the eight 6-bit scales (stored +32) */
    uint8_t scales_l[SHOAL_QK_K / 64]; /* low four bits, two to a byte */
    uint8_t qs[SHOAL_QK_K / 2];   /* per 32 values: the first 16 in low nibbles, the next 16 high */
};

SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q8_0) == 34, "q8_0 block is 34 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q4_0) == 18, "q4_0 block is 18 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q4_1) == 20, "q4_1 block is 20 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q5_0) == 22, "q5_0 block is 22 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q5_1) == 24, "q5_1 block is 24 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_iq4_nl) == 18, "iq4_nl block is 18 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q2_k) == 84, "q2_k block is 84 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q3_k) == 110, "q3_k block is 110 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q4_k) == 144, "q4_k block is 144 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q5_k) == 176, "q5_k block is 176 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_q6_k) == 210, "q6_k block is 210 bytes");
SHOAL_STATIC_ASSERT(sizeof(struct shoal_block_iq4_xs) == 136, "iq4_xs block is 136 bytes");

/*
 * Row conversion between f32 and the stored formats (base/quant.c): n values,
 * a multiple of the type's block size. The formats are GGUF's. Both ways
 * know F32, F16, BF16, Q8_0, Q4_0, Q4_1, Q5_0, Q5_1, Q2_K, Q3_K, Q4_K,
 * Q5_K, Q6_K, IQ4_NL and IQ4_XS. Quantizing gives, byte for byte, what
 * llama.cpp's reference quantizers give without an importance matrix (what
 * llama-quantize writes without --imatrix); dequantizing gives, bit for
 * bit, what the gguf Python package's numpy dequantizer gives. Other types
 * (and an n that is not a multiple of the block) are SHOAL_INVALID. The row
 * must hold shoal_dtype_row_bytes(type, n) bytes, 2-byte aligned for the
 * block types.
 */
int shoal_can_quantize(int type);
int shoal_can_dequantize(int type);
shoal_status shoal_quantize_row(int type, const float *x, void *out, int64_t n);
shoal_status shoal_dequantize_row(int type, const void *in, float *y, int64_t n);

/* ------------------------------------------------------- half precision */

float shoal_f16_to_f32(uint16_t h);
uint16_t shoal_f32_to_f16(float f); /* round to nearest even */
static inline float shoal_bf16_to_f32(uint16_t h) {
    union { uint32_t u; float f; } v;
    v.u = (uint32_t)h << 16;
    return v.f;
}
/* round to nearest even, NaN kept (quiet); inline: activations go through it by the million */
static inline uint16_t shoal_f32_to_bf16(float f) {
    union { float f; uint32_t u; } v = { .f = f };
    if ((v.u & 0x7fffffff) > 0x7f800000u) return (uint16_t)((v.u >> 16) | 0x40); /* quiet NaN */
    return (uint16_t)((v.u + 0x7fff + ((v.u >> 16) & 1)) >> 16);
}

/* ------------------------------------------------------------- small utils */

/* Bytes in human units: "1.23 GiB". Writes into buf and returns it. */
const char *shoal_fmt_bytes(char *buf, size_t len, double bytes);
/* Monotonic seconds. */
double shoal_now(void);
/* Peak resident set size of this process, bytes (0 if unknown). */
size_t shoal_peak_rss(void);
/* Memory the machine can give without swapping (MemAvailable), bytes (0 if unknown). */
double shoal_host_available(void);
/*
 * Checked arithmetic for sizes read from files: returns 1 and sets *out when
 * a*b (a+b) fits in 64 bits, else returns 0 and leaves *out alone.
 */
int shoal_mul_ok(uint64_t a, uint64_t b, uint64_t *out);
int shoal_add_ok(uint64_t a, uint64_t b, uint64_t *out);

/*
 * Hashes for the indexes of names read from files (GGUF keys and tensors,
 * host files, a vocabulary's texts and merges): seeded once per process from the kernel's randomness, so
 * that a file cannot choose names that collide and make its lookups slow.
 */
uint64_t shoal_hash_str(const char *s);
uint64_t shoal_hash_bytes(const void *p, size_t n);
uint64_t shoal_hash_u64(uint64_t v);
/* The slots of an open-addressing table for n entries: a power of two, at least 2n and 16. */
uint64_t shoal_hash_cap(uint64_t n);

/*
 * Files mapped into memory (GGUF files and shards): reading a page of one
 * that shrank, or was replaced in place, after it was mapped raises SIGBUS.
 * With shoal_catch_sigbus, the process then ends with exit status 1 and a
 * message naming the file, not a crash. path must stay valid while noted;
 * at most 64 maps at once are named (others get a message without a name).
 */
void shoal_map_note(const void *base, size_t len, const char *path);
void shoal_map_forget(const void *base);
void shoal_catch_sigbus(void);

#endif
