/*
 * test_cuda_kquant — the CUDA kernels' block decoding (cuda/kquant.h) run on
 * the host against base/quant.c's dequantizer, which defines the formats:
 * for random blocks of Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and
 * IQ4_XS (every bit of codes and packed scales random, scales random finite
 * f16 values, subnormals and zeros among them), every value must come out
 * bit for bit the same
 *  - one at a time (kq_dequant: embedding lookups, the prompt tiles), and
 *  - from a slice's packed int8 codes and integer scales and mins
 *    (kq_decode_slice: the decode kernels' dp4a operands), recombined as
 *    (d * sc) * code - dmin * mn, d * code + m for Q5_1;
 * and kq_dequant without its min must be (d * sc) * code. Plain C: it needs
 * no GPU and no CUDA, so it runs everywhere; what it cannot check is the
 * kernels' arithmetic around these (tests/gpu/test_backend_ops.c does, on a
 * GPU).
 */
#include <stdio.h>
#include <string.h>

#include "../../cuda/kquant.h"
#include "check.h"

static uint64_t rng = 0x2545f4914f6cdd1dull;
static uint64_t next(void) {
    uint64_t z = (rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

/* A random finite f16 (any sign, subnormals and zero included), stored little-endian at p. */
static void random_f16(uint8_t *p, int round) {
    uint16_t h = (uint16_t)next();
    if (((h >> 10) & 0x1f) == 0x1f) h &= (uint16_t)~0x4000; /* no inf or NaN */
    if (round % 7 == 0) h = 0x3c00;                        /* 1.0: plain integers */
    if (round % 11 == 0) h = 0x8000;                       /* -0 */
    p[0] = (uint8_t)h;
    p[1] = (uint8_t)(h >> 8);
}

static uint32_t bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static const int types[] = { SHOAL_DTYPE_Q5_0, SHOAL_DTYPE_Q5_1, SHOAL_DTYPE_IQ4_NL,
                             SHOAL_DTYPE_Q2_K, SHOAL_DTYPE_Q3_K, SHOAL_DTYPE_Q4_K,
                             SHOAL_DTYPE_Q5_K, SHOAL_DTYPE_Q6_K, SHOAL_DTYPE_IQ4_XS };

/* Where a type's f16 scales are in its block (the second -1 when it has one). */
static void scale_offsets(int type, int *d, int *m) {
    *m = -1;
    switch (type) {
    case SHOAL_DTYPE_Q2_K: *d = 80, *m = 82; break;
    case SHOAL_DTYPE_Q3_K: *d = 108; break;
    case SHOAL_DTYPE_Q6_K: *d = 208; break;
    case SHOAL_DTYPE_Q5_1: case SHOAL_DTYPE_Q4_K: case SHOAL_DTYPE_Q5_K: *d = 0, *m = 2; break;
    default: *d = 0; break;
    }
}

static void check_type(int type) {
    const struct shoal_dtype_info *ti = shoal_dtype_info(type);
    const char *name = shoal_dtype_name(type);
    CHECK(kq_type(type), "%s: not a kquant.h type", name);
    CHECK(ti && ti->block == kq_values(type) && ti->block_bytes == kq_bytes(type),
          "%s: block of %d values, %d bytes; kquant.h says %d, %d", name, ti ? ti->block : -1,
          ti ? ti->block_bytes : -1, kq_values(type), kq_bytes(type));
    if (!ti || ti->block != kq_values(type) || ti->block_bytes != kq_bytes(type)) return;
    const int bv = kq_values(type), bb = kq_bytes(type), slices = bv / 32;
    int doff, moff;
    scale_offsets(type, &doff, &moff);
    uint8_t blk[256];
    float ref[256];
    int bad = 0;
    for (int round = 0; round < 2000 && bad < 5; round++) {
        for (int i = 0; i < bb; i++) blk[i] = (uint8_t)next();
        random_f16(blk + doff, round);
        if (moff >= 0) random_f16(blk + moff, round / 3);
        CHECK_OK(shoal_dequantize_row(type, blk, ref, bv));
        const float d = shoal_f16_to_f32((uint16_t)(blk[doff] | blk[doff + 1] << 8));
        const float m = moff >= 0 ? shoal_f16_to_f32((uint16_t)(blk[moff] | blk[moff + 1] << 8)) : 0.0f;
        CHECK(bits(kq_f16(kq_d_bits(type, blk))) == bits(d), "%s: d", name);
        if (moff >= 0) CHECK(bits(kq_f16(kq_m_bits(type, blk))) == bits(m), "%s: dmin / m", name);
        for (int v = 0; v < bv; v++) {
            const float got = kq_dequant(type, blk, v, 1);
            if (bits(got) != bits(ref[v]) && bad++ < 5)
                CHECK(0, "%s round %d: value %d: kq_dequant %.9g, quant.c %.9g", name, round, v, got, ref[v]);
        }
        for (int g = 0; g < slices; g++) {
            struct kq_slice s;
            kq_decode_slice(type, blk, g, &s);
            for (int j = 0; j < 32; j++) {
                const int v = 32 * g + j, h = j / 16;
                const int code = (int8_t)(uint8_t)(s.q[j / 4] >> (8 * (j % 4)));
                const float dl = d * (float)s.sc[h];
                float y = dl * (float)code;
                const float nomin = kq_dequant(type, blk, v, 0);
                if (bits(nomin) != bits(y) && bad++ < 5)
                    CHECK(0, "%s round %d: value %d without its min: %.9g, want (d sc) q = %.9g", name,
                          round, v, nomin, y);
                if (type == SHOAL_DTYPE_Q5_1) y = y + m;
                else if (kq_has_min(type)) y = y - m * (float)s.mn[h];
                else CHECK(s.mn[h] == 0, "%s: a min %d where there is none", name, s.mn[h]);
                if (bits(y) != bits(ref[v]) && bad++ < 5)
                    CHECK(0, "%s round %d: value %d (slice %d: code %d, scale %d, min %d): %.9g, "
                          "quant.c %.9g", name, round, v, g, code, s.sc[h], s.mn[h], y, ref[v]);
            }
        }
    }
    printf("%-7s 2000 random blocks: %s\n", name, bad ? "DIFFER" : "bit-exact");
}

int main(void) {
    for (size_t i = 0; i < sizeof types / sizeof *types; i++) check_type(types[i]);
    /* the level table in two words is base/quant.c's */
    static const int levels[16] = { -127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113 };
    for (int n = 0; n < 16; n++) CHECK(kq_iq4_level(n) == levels[n], "iq4 level %d: %d", n, kq_iq4_level(n));
    for (int k = 0; k <= 32; k += 4)
        CHECK(kq_sub_bytes(0x3f000710u, k) == (uint32_t)((uint8_t)(0x10 - k) | (uint8_t)(0x07 - k) << 8 |
                                                         (uint8_t)(0x00 - k) << 16 | (uint32_t)(uint8_t)(0x3f - k) << 24),
              "bytes less %d", k);
    /* no other type is claimed */
    for (int t = 0; t < SHOAL_DTYPE_MAX; t++) {
        int listed = 0;
        for (size_t i = 0; i < sizeof types / sizeof *types; i++) listed |= types[i] == t;
        CHECK(kq_type(t) == listed, "type %d (%s): kq_type %d", t, shoal_dtype_name(t), kq_type(t));
    }
    return check_done("test_cuda_kquant");
}
