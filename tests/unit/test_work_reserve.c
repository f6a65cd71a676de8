/*
 * test_work_reserve — a device budget with a backend that needs working
 * memory of its own (the CUDA backend's scratch and batch arrays): the
 * offload plan counts it, the model reserves it before its weights, and a
 * backend that already holds it from an earlier model is not charged twice,
 * so that the same budget keeps the same layers resident run after run and
 * the counted peak stays within it. On stories260K with the CPU backend as a
 * device (its weights copied into a budgeted arena) behind a table whose
 * reserve allocates through the handle's count as the CUDA backend does.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "../../cpu/cpu.h"
#include "../../runtime/backend_impl.h"
#include "../../runtime/model.h"
#include "../../shard/gguf.h"
#include "check.h"

/* The spy's working memory: 16 KiB a token of a step, held until a larger shape comes. */
static struct {
    struct shoal_backend *be;
    void *held;
    size_t bytes;
    int reserves;
} work;

static size_t need_for(const struct shoal_work_shape *w) { return (size_t)w->n_tokens * 16384; }

static uint64_t spy_work_bytes(void *ctx, const struct shoal_work_shape *w) {
    (void)ctx;
    return need_for(w) > work.bytes ? need_for(w) - work.bytes : 0;
}

static shoal_status spy_reserve(void *ctx, const struct shoal_work_shape *w) {
    (void)ctx;
    work.reserves++;
    const size_t need = need_for(w);
    if (need <= work.bytes) return SHOAL_OK;
    shoal_backend_free(work.be, work.held);
    work.held = NULL;
    work.bytes = 0;
    SHOAL_TRY(shoal_backend_alloc(work.be, need, &work.held));
    work.bytes = need;
    return SHOAL_OK;
}

/* A model and a state under budget (0: none); the layers it kept resident, or -1. */
static int load_once(const struct shoal_gguf *g, uint64_t budget, uint64_t *peak) {
    struct shoal_state_params sp = { .n_ctx = 64, .n_batch = 16, .n_outputs = 1, .kv_type = SHOAL_KV_F32 };
    struct shoal_model_offload off = { .budget = budget, .prefetch = 1, .state = &sp };
    struct shoal_model *m = NULL;
    struct shoal_state *s = NULL;
    shoal_backend_set_budget(work.be, budget);
    shoal_backend_peak_reset(work.be);
    int resident = -1;
    shoal_status rc = shoal_model_load_offload(&m, g, work.be, NULL, &off);
    if (rc == SHOAL_OK) rc = shoal_state_create(&s, m, &sp);
    if (rc == SHOAL_OK) resident = m->off.n_resident;
    else printf("budget %llu: %s\n", (unsigned long long)budget, shoal_last_error());
    shoal_backend_mem(work.be, NULL, peak);
    shoal_state_destroy(s);
    shoal_model_destroy(m);
    shoal_backend_set_budget(work.be, 0);
    return resident;
}

int main(void) {
    char buf[4096];
    const char *path = testdata_path("stories260K.gguf", buf, sizeof buf);
    if (!path) return CHECK_SKIP;
    struct shoal_gguf *g = NULL;
    struct shoal_backend *cpu = NULL;
    struct shoal_cpu_params cp = { .n_threads = 1, .simd = SHOAL_SIMD_AUTO, .spin = -1, .as_device = 1 };
    CHECK_OK(shoal_gguf_open(&g, path));
    if (g) CHECK_OK(shoal_cpu_backend_create(&cpu, &cp));
    static struct shoal_backend_i spy;
    if (cpu) {
        spy = *cpu->iface;
        spy.destroy = NULL; /* the CPU's context is the CPU backend's to free */
        spy.work_bytes = spy_work_bytes;
        spy.reserve = spy_reserve;
        work.be = shoal_backend_new(&spy, cpu->ctx);
    }
    if (!work.be) goto done;

    /* without a budget: everything resident; the most the process then holds */
    uint64_t all = 0;
    const int n_layers = load_once(g, 0, &all);
    CHECK(n_layers == 5, "no budget: %d layers resident", n_layers);
    CHECK(work.bytes == 16 * 16384, "the working memory reserved is %zu bytes", work.bytes);

    /* budgets short of that by one to three layers' worth (the layers are ~180 KiB; the
     * working memory held from before is 256 KiB: charged again, it would cost a layer) */
    for (int short_by = 1; short_by <= 3; short_by++) {
        const uint64_t budget = all - (uint64_t)short_by * 150000;
        int first = -2;
        for (int round = 0; round < 3; round++) {
            uint64_t peak = 0;
            const int r = load_once(g, budget, &peak);
            CHECK(r >= 0, "budget %llu, round %d: refused", (unsigned long long)budget, round);
            if (first == -2) first = r;
            CHECK(r == first, "budget %llu: %d layers resident the first time, %d in round %d",
                  (unsigned long long)budget, first, r, round);
            CHECK(peak <= budget, "budget %llu, round %d: the counted peak %llu is over it",
                  (unsigned long long)budget, round, (unsigned long long)peak);
        }
        printf("budget of all less %d x 150000 bytes: %d of %d layers resident, three times\n", short_by,
               first, n_layers);
        CHECK(first < n_layers, "budget %llu streams nothing", (unsigned long long)budget);
    }
    CHECK(work.reserves > 0, "the model never reserved its working memory");

done:
    if (work.be) shoal_backend_free(work.be, work.held);
    shoal_backend_destroy(work.be);
    shoal_backend_destroy(cpu);
    shoal_gguf_close(g);
    return check_done("test_work_reserve");
}
