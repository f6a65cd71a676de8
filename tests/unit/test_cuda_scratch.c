/*
 * test_cuda_scratch — the CUDA backend's scratch layouts (cuda/scratch.h),
 * which need no GPU to check: every piece of every op's scratch starts on a
 * 256-byte boundary (an f64 piece 4 bytes off 8 raised
 * cudaErrorMisalignedAddress once: activations quantized for n x cols/32
 * odd), the pieces do not overlap and lie inside the size the layout asks
 * for, and the working memory reserved for a model's steps covers every op
 * of every step up to its batch (so that nothing grows during a run, past
 * the budget's count).
 */
#include <stdio.h>
#include <string.h>

#include "../../cuda/scratch.h"
#include "check.h"

struct piece {
    size_t at, bytes;
    const char *what;
};

/* Every piece aligned, disjoint from the others, inside total. */
static void check_pieces(const char *op, const struct piece *p, int n, size_t total) {
    for (int i = 0; i < n; i++) {
        CHECK(p[i].at % 256 == 0, "%s: %s at %zu, not on a 256-byte boundary", op, p[i].what, p[i].at);
        CHECK(p[i].at + p[i].bytes <= total, "%s: %s ends at %zu, past the %zu bytes asked for", op,
              p[i].what, p[i].at + p[i].bytes, total);
        for (int j = 0; j < i; j++)
            if (p[i].bytes && p[j].bytes)
                CHECK(p[i].at >= p[j].at + p[j].bytes || p[j].at >= p[i].at + p[i].bytes,
                      "%s: %s [%zu, %zu) overlaps %s [%zu, %zu)", op, p[i].what, p[i].at,
                      p[i].at + p[i].bytes, p[j].what, p[j].at, p[j].at + p[j].bytes);
    }
}

static int xq8_pieces(const struct xq8_layout *l, int64_t cols, int n, struct piece *p) {
    const size_t nb = (size_t)n * (size_t)(cols / 32);
    p[0] = (struct piece){ l->q, (size_t)n * (size_t)cols, "int8 values" };
    p[1] = (struct piece){ l->d, nb * 4, "scales" };
    p[2] = (struct piece){ l->s, nb * 4, "scaled sums" };
    p[3] = (struct piece){ l->sum, nb * 4, "block sums" };
    return 4;
}

static const int types[] = { SHOAL_DTYPE_F32, SHOAL_DTYPE_F16, SHOAL_DTYPE_BF16,
                             SHOAL_DTYPE_Q8_0, SHOAL_DTYPE_Q4_0, SHOAL_DTYPE_Q4_1 };

static void layouts(void) {
    static const int64_t cols_[] = { 32, 96, 576, 672, 864, 1536, 4096, 14336 };
    static const int64_t rows_[] = { 1, 7, 576, 49152 };
    static const int ns[] = { 1, 2, 3, 5, 8, 9, 13, 31, 64, 511 };
    int cases = 0;
    for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
        for (size_t ci = 0; ci < sizeof cols_ / sizeof *cols_; ci++)
            for (size_t ri = 0; ri < sizeof rows_ / sizeof *rows_; ri++)
                for (size_t ni = 0; ni < sizeof ns / sizeof *ns; ni++) {
                    const int type = types[ti], n = ns[ni], q = quantized_type(type);
                    const int64_t cols = cols_[ci], rows = rows_[ri];
                    struct piece p[8];
                    char op[96];
                    int k = 0;
                    cases++;
                    if (n <= 8) {
                        struct mmv_layout l;
                        mmv_layout(cols, n, q, !q, &l);
                        if (q) k = xq8_pieces(&l.xq, cols, n, p);
                        else p[k++] = (struct piece){ l.x64, (size_t)n * (size_t)cols * 8, "x as f64" };
                        snprintf(op, sizeof op, "mmv %s %lld cols n=%d", shoal_dtype_name(type), (long long)cols, n);
                        check_pieces(op, p, k, l.bytes);
                        continue;
                    }
                    struct gemm_layout g;
                    gemm_layout(type, cols, n, &g);
                    p[0] = (struct piece){ g.xh, type == SHOAL_DTYPE_F32 ? 0 : (size_t)n * (size_t)cols * 2, "x f16" };
                    snprintf(op, sizeof op, "gemm %s %lld cols n=%d", shoal_dtype_name(type), (long long)cols, n);
                    check_pieces(op, p, 1, g.bytes);
                    struct gemm_f64_layout f;
                    gemm_f64_layout(type, rows, cols, n, &f);
                    k = 0;
                    p[k++] = (struct piece){ f.xd, (size_t)n * (size_t)cols * 8, "x as f64" };
                    if (q) k += xq8_pieces(&f.xq, cols, n, p + k);
                    if (type == SHOAL_DTYPE_Q4_1)
                        p[k++] = (struct piece){ f.xs, (size_t)n * (size_t)(cols / 32) * 8, "block sums f64" };
                    p[k++] = (struct piece){ f.wt, (size_t)f.tile * (size_t)cols * 8, "f64 tile" };
                    CHECK(f.tile >= 1 && f.tile <= rows, "gemm_f64: a tile of %lld rows of %lld",
                          (long long)f.tile, (long long)rows);
                    snprintf(op, sizeof op, "gemm_f64 %s %lldx%lld n=%d", shoal_dtype_name(type),
                             (long long)rows, (long long)cols, n);
                    check_pieces(op, p, k, f.bytes);
                }
    /* the case that faulted: q8_0, 96 columns, 9 tokens: 27 blocks of activations */
    struct gemm_f64_layout f;
    gemm_f64_layout(SHOAL_DTYPE_Q8_0, 1, 96, 9, &f);
    CHECK(f.wt % 8 == 0 && f.xd % 8 == 0, "q8_0 1x96 n=9: the f64 pieces at %zu and %zu", f.xd, f.wt);
    printf("layouts: %d shapes checked\n", cases);
}

/* Attention's chunks cover the cache and its parts fit their piece. */
static void attention(void) {
    static const int64_t slots[] = { 1, 255, 256, 4096, 32768, 131072 };
    static const int heads[] = { 1, 9, 32 }, sms[] = { 1, 108, 132 }, ntok[] = { 1, 8, 512 };
    for (size_t a = 0; a < 6; a++)
        for (size_t b = 0; b < 3; b++)
            for (size_t s = 0; s < 3; s++)
                for (size_t t = 0; t < 3; t++) {
                    struct att_layout l;
                    att_layout(ntok[t], heads[b], 128, slots[a], sms[s], &l);
                    CHECK(l.chunk >= ATT_CHUNK_MIN && l.chunk <= ATT_CHUNK_MAX && l.chunk % ATT_CHUNK_MIN == 0,
                          "attention: chunk %d", l.chunk);
                    CHECK((int64_t)l.n_chunks * l.chunk >= slots[a] && (int64_t)(l.n_chunks - 1) * l.chunk < slots[a],
                          "attention: %d chunks of %d for %lld slots", l.n_chunks, l.chunk, (long long)slots[a]);
                    const struct piece p = { l.part, (size_t)ntok[t] * heads[b] * l.n_chunks * 130 * 4, "parts" };
                    check_pieces("attention", &p, 1, l.bytes);
                }
}

/*
 * A model's steps: SmolLM2-135M's shapes (dim 576, 9 heads of 64, FFN 1536) on one
 * rank and as a tp 2 share (5 heads, FFN 864, vocabulary 24576), in each type: every
 * op of a step of 1..n_batch tokens needs no more scratch than the work bound.
 */
static void work_bound(void) {
    struct share { int heads, ffn, vocab; } shares[] = { { 9, 1536, 49152 }, { 5, 864, 24576 }, { 4, 672, 24576 } };
    static const int batches[] = { 1, 8, 9, 64, 512 };
    const int dim = 576, hd = 64;
    for (size_t si = 0; si < 3; si++)
        for (size_t ti = 0; ti < sizeof types / sizeof *types; ti++)
            for (size_t bi = 0; bi < 5; bi++) {
                const struct share *sh = &shares[si];
                const int type = types[ti], nb = batches[bi], q = quantized_type(type);
                struct shoal_work_shape w = { .n_tokens = nb, .n_heads = sh->heads, .head_dim = hd,
                                              .n_slots = 2048, .topk_rows = 1, .topk = 40 };
                const struct shoal_work_mm mm[] = {
                    { type, (int64_t)sh->heads * hd, dim, 0 }, { type, 3 * hd, dim, 0 },
                    { type, dim, (int64_t)sh->heads * hd, 1 }, { type, sh->ffn, dim, 0 },
                    { type, dim, sh->ffn, 1 },                 { SHOAL_DTYPE_Q8_0, sh->vocab, dim, 0 },
                };
                w.n_mm = (int)(sizeof mm / sizeof *mm);
                memcpy(w.mm, mm, sizeof mm);
                const size_t bound = work_scratch_bytes(&w, 132);
                for (int n = 1; n <= nb; n += n < 16 ? 1 : 37) {
                    for (int i = 0; i < w.n_mm; i++) {
                        const struct shoal_work_mm *m = &w.mm[i];
                        const int mq = quantized_type(m->type);
                        size_t need;
                        if (n <= 8) {
                            struct mmv_layout l;
                            mmv_layout(m->cols, n, mq, m->f64 && !mq, &l);
                            need = l.bytes;
                        } else if (m->f64) {
                            struct gemm_f64_layout l;
                            gemm_f64_layout(m->type, m->rows, m->cols, n, &l);
                            need = l.bytes;
                        } else {
                            struct gemm_layout l;
                            gemm_layout(m->type, m->cols, n, &l);
                            need = l.bytes;
                        }
                        CHECK(need <= bound, "%s share %zu, batch %d: a matmul %lldx%lld of %d tokens needs %zu "
                              "bytes of scratch, the work bound is %zu", shoal_dtype_name(type), si, nb,
                              (long long)m->rows, (long long)m->cols, n, need, bound);
                    }
                    struct att_layout a;
                    att_layout(n, w.n_heads, hd, w.n_slots, 132, &a);
                    CHECK(a.bytes <= bound, "attention of %d tokens needs %zu, the bound is %zu", n, a.bytes, bound);
                }
                (void)q;
            }
    /* batches: the arrays of a step of 512 tokens over a 2048-slot table fit what is reserved */
    CHECK(batch_values(512, 2048) >= 4 * 512 + 2048, "batch arrays: %zu values", batch_values(512, 2048));
    /* an upload through a small reserved scratch goes a row at a time, not past it */
    CHECK(upload_chunk_rows(1000, 50, 4096) == 4, "upload: %lld rows", (long long)upload_chunk_rows(1000, 50, 4096));
    CHECK(upload_chunk_rows(5000, 50, 4096) == 1, "upload of a row longer than the scratch");
    CHECK(upload_chunk_rows(1000, 50, 0) == 50, "upload without a reserve");
}

int main(void) {
    layouts();
    attention();
    work_bound();
    return check_done("test_cuda_scratch");
}
