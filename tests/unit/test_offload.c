/*
 * test_offload — the offload plan (parallel/offload.h): the most resident
 * layers a budget allows, its peak equal to what it adds up, the buffers,
 * the bytes per token with offload groups, the parts of a layer, and clear
 * refusals.
 */
#include <stdio.h>
#include <string.h>

#include "../../parallel/offload.h"
#include "check.h"

#define MiB (1024ull * 1024)

static struct shoal_offload_plan plan(uint64_t budget, uint64_t fixed, int n, const uint64_t *lb,
                                      int d, int g, shoal_status *rc) {
    struct shoal_offload_params p = { budget, fixed, n, lb, d, g };
    struct shoal_offload_plan o;
    *rc = shoal_offload_plan_make(&p, &o);
    return o;
}

int main(void) {
    uint64_t even[8];
    for (int i = 0; i < 8; i++) even[i] = 100 * MiB;
    shoal_status rc;

    /* no budget, or enough: everything resident, no buffers */
    struct shoal_offload_plan o = plan(0, 50 * MiB, 8, even, 1, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 8 && o.n_buffers == 0 && o.copy_bytes == 0, "no budget");
    o = plan(850 * MiB, 50 * MiB, 8, even, 1, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 8 && o.peak_bytes == 850 * MiB, "exact fit: %d resident, peak %llu",
          o.n_resident, (unsigned long long)o.peak_bytes);

    /* one byte short: streaming one layer needs its buffer, as much as it frees;
     * streaming two (prefetch 1: 2 buffers) frees nothing; three do */
    o = plan(850 * MiB - 1, 50 * MiB, 8, even, 1, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 5 && o.n_buffers == 2, "short by a byte: %d resident, %d buffers",
          o.n_resident, o.n_buffers);

    /* half: fixed 50 + r*100 + 2*100 <= 500 -> r = 2 */
    o = plan(500 * MiB, 50 * MiB, 8, even, 1, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 2 && o.n_buffers == 2, "half: %d resident, %d buffers", o.n_resident,
          o.n_buffers);
    CHECK(o.peak_bytes == 50 * MiB + 2 * 100 * MiB + 2 * 100 * MiB, "peak adds up");
    CHECK(o.peak_bytes <= 500 * MiB, "peak within the budget");
    CHECK(o.copy_bytes == 6 * 100 * MiB && o.gather_bytes == 0 && o.host_bytes == 6 * 100 * MiB,
          "g = 1: every streamed byte copied once per token");
    CHECK(shoal_offload_streamed(&o, 1) == 0 && shoal_offload_streamed(&o, 2) == 1, "which stream");
    CHECK(shoal_offload_buffer(&o, 2) == 0 && shoal_offload_buffer(&o, 3) == 1 && shoal_offload_buffer(&o, 4) == 0,
          "buffers taken in turn");

    /* zero resident, prefetch 2: 3 buffers */
    o = plan(360 * MiB, 50 * MiB, 8, even, 2, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 0 && o.n_buffers == 3, "zero resident: %d, %d buffers", o.n_resident,
          o.n_buffers);
    /* too small even then: refused, saying how much would do */
    o = plan(340 * MiB, 50 * MiB, 8, even, 2, 1, &rc);
    CHECK(rc == SHOAL_NOMEM, "a budget below fixed + buffers accepted");
    CHECK(strstr(shoal_last_error(), "350.00 MiB") != NULL, "the message says what would do: %s", shoal_last_error());

    /* groups: each rank copies 1/g of every streamed layer, receives the rest */
    for (int g = 1; g <= 4; g *= 2) {
        o = plan(360 * MiB, 50 * MiB, 8, even, 2, g, &rc);
        CHECK(rc == SHOAL_OK, "group %d", g);
        CHECK(o.copy_bytes == 8 * 100 * MiB / g, "group %d: copies %llu", g, (unsigned long long)o.copy_bytes);
        CHECK(o.copy_bytes + o.gather_bytes == 8 * 100 * MiB, "group %d: parts add up", g);
    }

    /* uneven layers: the buffer fits the largest streamed one (300 + 100 <= 450),
     * and streaming the large one would need a buffer of its size */
    uint64_t uneven[4] = { 300 * MiB, 100 * MiB, 100 * MiB, 100 * MiB };
    o = plan(450 * MiB, 0, 4, uneven, 0, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 1 && o.buffer_bytes == 100 * MiB, "uneven: %d resident, buffer %llu",
          o.n_resident, (unsigned long long)o.buffer_bytes);
    o = plan(350 * MiB, 0, 4, uneven, 0, 1, &rc);
    CHECK(rc == SHOAL_OK && o.n_resident == 0 && o.buffer_bytes == 300 * MiB, "uneven, all streamed: buffer %llu",
          (unsigned long long)o.buffer_bytes);

    /* parts: cover the layer exactly, at 256-byte boundaries */
    for (uint64_t bytes = 1; bytes < 5000; bytes += 997)
        for (int g = 1; g <= 5; g++) {
            uint64_t at = 0;
            for (int r = 0; r < g; r++) {
                uint64_t off, len;
                shoal_offload_part(bytes, g, r, &off, &len);
                CHECK(off == at, "%llu bytes, g %d: part %d starts at %llu, not %llu", (unsigned long long)bytes,
                      g, r, (unsigned long long)off, (unsigned long long)at);
                CHECK(off % 256 == 0 || len == 0, "part %d unaligned", r);
                at = off + len;
            }
            CHECK(at == bytes, "%llu bytes, g %d: parts cover %llu", (unsigned long long)bytes, g,
                  (unsigned long long)at);
        }

    /* bad parameters */
    plan(0, 0, 0, even, 1, 1, &rc);
    CHECK(rc == SHOAL_INVALID, "no layers accepted");
    plan(0, 0, 8, even, -1, 1, &rc);
    CHECK(rc == SHOAL_INVALID, "negative prefetch accepted");
    plan(0, 0, 8, even, 1, 0, &rc);
    CHECK(rc == SHOAL_INVALID, "group 0 accepted");
    return check_done("test_offload");
}
