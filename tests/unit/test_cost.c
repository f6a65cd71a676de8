/*
 * test_cost — the host file and the cost model of `shoal plan`:
 *   - units (sizes, rates in bytes and bits, times) and the host file's
 *     statements, defaults and errors (each names the line and the problem);
 *   - per-rank memory: the ranks of a layout hold every weight byte once
 *     (norms and the head's norm on each rank that needs them), the KV cache
 *     is layers x 2 x context x KV heads x bytes, the host's ranks share
 *     its memory and a layout fits exactly when each host's sum does;
 *   - speed: more bandwidth is faster, a slow link costs tensor parallelism
 *     more than pipeline parallelism, a probe's times are used (and scaled
 *     to a host's bandwidth), and the best layout is the fitting fastest one.
 */
#include <math.h>

#include "check.h"
#include "parallel/cost.h"

static int near(double a, double b, double rel) { return fabs(a - b) <= rel * fmax(fabs(a), fabs(b)); }

static void test_units(void) {
    CHECK(shoal_parse_size("16G") == 16.0 * 1024 * 1024 * 1024, "16G");
    CHECK(shoal_parse_size("512MiB") == 512.0 * 1024 * 1024, "512MiB");
    CHECK(shoal_parse_size("1.5k") == 1536, "1.5k");
    CHECK(shoal_parse_size("4096") == 4096, "plain bytes");
    CHECK(shoal_parse_size("12X") < 0 && shoal_parse_size("") < 0 && shoal_parse_size("-1G") < 0, "bad sizes");
    CHECK(shoal_parse_rate("40GB/s") == 40e9, "40GB/s");
    CHECK(shoal_parse_rate("1Gbit/s") == 125e6, "1Gbit/s");
    CHECK(shoal_parse_rate("100Mbit/s") == 12.5e6, "100Mbit/s");
    CHECK(shoal_parse_rate("40GB") < 0 && shoal_parse_rate("fast") < 0, "bad rates");
    CHECK(near(shoal_parse_time("1ms"), 1e-3, 1e-12) && near(shoal_parse_time("200us"), 200e-6, 1e-12) &&
          shoal_parse_time("2s") == 2 && shoal_parse_time("0ms") == 0, "times");
    CHECK(shoal_parse_time("1") < 0 && shoal_parse_time("1h") < 0, "bad times");
}

static const struct shoal_host machine = { .name = "here", .membw = 50e9, .corebw = 20e9, .cores = 8 };

static void expect_error(const char *text, const char *needle) {
    struct shoal_topology t;
    shoal_status rc = shoal_hosts_parse(text, "h.txt", &machine, &t);
    CHECK(rc == SHOAL_INVALID, "accepted: %s", text);
    CHECK(strstr(shoal_last_error(), needle) != NULL, "for %s: '%s' lacks '%s'", text, shoal_last_error(), needle);
    CHECK(strstr(shoal_last_error(), "h.txt") != NULL, "message names no file: %s", shoal_last_error());
}

static void test_hosts(void) {
    struct shoal_topology t;
    const char *text = "# two boxes and a laptop\n"
                       "host big ranks=2 mem=32G membw=80GB/s cores=16\n"
                       "host small ranks=1 mem=8G ram=16G   # defaults: this machine's\n"
                       "host lap ranks=1 mem=4G membw=20GB/s corebw=10GB/s cores=4\n"
                       "link big small bw=10Gbit/s lat=100us\n"
                       "link * * bw=1Gbit/s lat=1ms\n"
                       "local bw=8GB/s lat=10us\n";
    CHECK_OK(shoal_hosts_parse(text, "h.txt", &machine, &t));
    CHECK(t.n_hosts == 3 && t.n_ranks == 4, "%d hosts, %d ranks", t.n_hosts, t.n_ranks);
    CHECK(strcmp(t.hosts[0].name, "big") == 0 && t.hosts[0].ranks == 2 && t.hosts[0].cores == 16, "big");
    CHECK(t.hosts[0].membw == 80e9 && t.hosts[0].corebw == 80e9 / 16, "big's corebw defaults to membw/cores");
    CHECK(t.hosts[1].membw == machine.membw && t.hosts[1].corebw == machine.corebw &&
          t.hosts[1].cores == machine.cores, "small takes this machine's");
    CHECK(t.hosts[1].ram == 16.0 * (1 << 30), "ram");
    CHECK(t.hosts[2].corebw == 10e9 && t.hosts[2].cores == 4, "lap");
    CHECK(shoal_topology_host_of(&t, 0) == 0 && shoal_topology_host_of(&t, 1) == 0 &&
          shoal_topology_host_of(&t, 2) == 1 && shoal_topology_host_of(&t, 3) == 2, "ranks host by host");
    CHECK(shoal_topology_link(&t, 0, 1)->bw == 1.25e9 && near(shoal_topology_link(&t, 1, 0)->lat, 100e-6, 1e-12), "named link");
    CHECK(shoal_topology_link(&t, 0, 2)->bw == 125e6 && shoal_topology_link(&t, 2, 1)->lat == 1e-3, "default link");
    CHECK(shoal_topology_link(&t, 2, 2)->bw == 8e9 && near(shoal_topology_link(&t, 0, 0)->lat, 10e-6, 1e-12), "local");
    shoal_topology_free(&t);

    expect_error("", "no host lines");
    expect_error("host a ranks=1\n", "mem= is missing");
    expect_error("host a ranks=0 mem=1G\n", "ranks=0");
    expect_error("host a ranks=1 mem=lots\n", "mem=lots");
    expect_error("host a ranks=1 mem=1G speed=3\n", "unknown key 'speed'");
    expect_error("host a ranks=1 mem=1G\nhost a ranks=1 mem=1G\n", "line 2: host a again");
    expect_error("host a ranks=1 mem=1G\nhost b ranks=1 mem=1G\n", "no link between a and b");
    expect_error("host a ranks=1 mem=1G\nlink a c bw=1Gbit/s lat=1ms\n", "host c");
    expect_error("host a ranks=1 mem=1G\nlink a a bw=1Gbit/s lat=1ms\n", "two hosts");
    expect_error("host a ranks=1 mem=1G\nlink * * bw=1Gbit lat=1ms\n", "bw=1Gbit");
    expect_error("host a ranks=1 mem=1G\nswitch x\n", "'switch' is not host, link or local");
    expect_error("host a ranks=1 mem=1G lat\n", "not key=value");
    struct shoal_topology u;
    CHECK(shoal_hosts_parse("host a ranks=1 mem=1G\n", "h.txt", NULL, &u) == SHOAL_INVALID &&
          strstr(shoal_last_error(), "membw"), "no bandwidth anywhere: %s", shoal_last_error());
    /* numbers past any machine: not infinity; ranks past the cap: refused before the sum overflows */
    expect_error("host a ranks=1 mem=1e300T\n", "mem=1e300T");
    expect_error("host a ranks=1 mem=1G\nlink * * bw=1e300Gbit/s lat=1ms\n", "bw=1e300Gbit/s");
    expect_error("host a ranks=1 mem=1G\nlink * * bw=1Gbit/s lat=1e300s\n", "lat=1e300s");
    expect_error("host a ranks=65536 mem=1G\nhost b ranks=65536 mem=1G\nhost c ranks=65536 mem=1G\n",
                 "line 2: more than 65536 ranks");
}

/* A host file of n hosts (a rank each), with a default link or, pairs, a link line for every pair. */
static char *many_hosts(int n, int pairs) {
    const size_t cap = (size_t)n * 64 + (pairs ? (size_t)n * (size_t)n * 24 : 64);
    char *s = malloc(cap), *at = s;
    for (int i = 0; s && i < n; i++) at += sprintf(at, "host h%d ranks=1 mem=1G membw=10GB/s cores=1\n", i);
    for (int a = 0; s && pairs && a < n; a++)
        for (int b = a + 1; b < n; b++) at += sprintf(at, "link h%d h%d bw=1Gbit/s lat=1ms\n", a, b);
    if (s && !pairs) sprintf(at, "link * * bw=1Gbit/s lat=1ms\n");
    return s;
}

/*
 * Many hosts and links cost a line each: 65536 hosts (each host looked up
 * against every other, and every pair's link searched: 4 s), and 800 hosts
 * with a link line for each of their 319,600 pairs (every pair's link
 * searched among all: 5e10 steps, a minute). A missing pair is still found.
 */
static void test_many_hosts(void) {
    struct shoal_topology t;
    char *text = many_hosts(65536, 0);
    double t0 = shoal_now();
    CHECK_OK(shoal_hosts_parse(text, "h.txt", &machine, &t));
    CHECK(t.n_hosts == 65536 && shoal_topology_host_of(&t, 65535) == 65535 && shoal_topology_host_of(&t, 7) == 7,
          "65536 hosts, a rank each");
    shoal_topology_free(&t);
    free(text);
    text = many_hosts(800, 1);
    CHECK_OK(shoal_hosts_parse(text, "h.txt", &machine, &t));
    CHECK(t.n_links == 319600 && shoal_topology_link(&t, 799, 17)->bw == 125e6, "every pair's link");
    shoal_topology_free(&t);
    const double took = shoal_now() - t0;
    CHECK(took < 10, "the host files parsed in %.1f s (linear: well under a second)", took);
    char *last = strstr(text, "link h798 h799");
    if (last) *last = 0; /* the last pair's line gone */
    CHECK(shoal_hosts_parse(text, "h.txt", &machine, &t) == SHOAL_INVALID &&
              strstr(shoal_last_error(), "no link between h798 and h799"),
          "a missing pair: %s", shoal_last_error());
    free(text);
    shoal_error_clear();
}

/* A LLaMA-like shape: 32 heads (8 KV), dim 4096, 32 layers, F16-sized bytes. */
static struct shoal_model_shape shape7b(void) {
    struct shoal_model_shape m = { .n_layers = 32, .dim = 4096, .n_heads = 32, .n_kv_heads = 8, .head_dim = 128,
                                   .ffn_dim = 11008, .n_vocab = 32000, .wo_block = 1, .down_block = 1 };
    m.q_head_bytes = 2.0 * 2 * 128 * 4096;   /* Q rows and wo columns */
    m.kv_head_bytes = 2.0 * 2 * 128 * 4096;  /* K and V rows */
    m.ffn_unit_bytes = 3.0 * 2 * 4096;       /* gate, up rows and a down column */
    m.norm_bytes = 2.0 * 4 * 4096;
    m.layer_bytes = 32 * m.q_head_bytes + 8 * m.kv_head_bytes + 11008 * m.ffn_unit_bytes + m.norm_bytes;
    m.output_bytes = 2.0 * 32000 * 4096;
    m.embd_bytes = m.output_bytes;
    return m;
}

static struct shoal_cost_params params(void) {
    return (struct shoal_cost_params){ .n_ctx = 4096, .n_batch = 512, .kv_head_bytes = 2 * 128, .wire_elem = 8,
                                       .meta_bytes = 1e6, .tokenizer_bytes = 2e6, .decode_fill = 0.5 };
}

static struct shoal_plan *make(const struct shoal_model_shape *m, int tp, int pp) {
    struct shoal_plan *p = NULL;
    struct shoal_plan_params pp_ = { .tp = tp, .pp = pp };
    CHECK_OK(shoal_plan_make(&p, m, &pp_));
    return p;
}

static void test_memory(void) {
    struct shoal_model_shape m = shape7b();
    struct shoal_cost_params p = params();
    const int layouts[][2] = { { 1, 1 }, { 2, 1 }, { 1, 2 }, { 4, 1 }, { 2, 2 }, { 1, 4 }, { 8, 2 } };
    double one = 0;
    for (size_t k = 0; k < sizeof layouts / sizeof *layouts; k++) {
        int tp = layouts[k][0], pp = layouts[k][1], n = tp * pp;
        struct shoal_topology t;
        CHECK_OK(shoal_hosts_single(n, 1e12, &machine, &t));
        struct shoal_plan *plan = make(&m, tp, pp);
        struct shoal_layout_cost c;
        CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &c));
        double weights = 0, kv = 0;
        for (int r = 0; r < n; r++) {
            const struct shoal_rank_mem *x = &c.mem[r];
            weights += x->weights;
            kv += x->kv;
            CHECK(near(x->total, x->weights + x->embd + x->kv + x->act + x->base, 1e-12), "total is the sum");
            CHECK(x->act > 0 && x->base >= 1e6, "activations and process");
            const struct shoal_rank_part *pt = &plan->part[r];
            double want_kv = (double)(pt->layer1 - pt->layer0) * 2 * p.n_ctx * (pt->kv1 - pt->kv0) * p.kv_head_bytes;
            CHECK(near(x->kv, want_kv, 1e-12), "%dx%d rank %d KV %.0f, want %.0f", tp, pp, r, x->kv, want_kv);
            if (r > 0) CHECK(near(c.mem[0].base - x->base, 2e6, 1e-9), "only rank 0 holds the tokenizer");
        }
        /* every weight once; norms on each tensor-parallel rank; mapped-window slack with tp > 1 */
        double want = m.n_layers * m.layer_bytes + m.output_bytes + m.dim * 4.0 + (tp - 1) * m.n_layers * m.norm_bytes +
                      (tp - 1) * m.dim * 4.0;
        double slack = tp > 1 ? (m.n_layers * 5.0 + 1) * tp * 65536 : 0;
        CHECK(near(weights, want + slack, 1e-9), "%dx%d: weights %.0f, want %.0f", tp, pp, weights, want + slack);
        CHECK(near(kv, 32.0 * 2 * 4096 * 8 * 256 * (tp > 8 ? tp / 8.0 : 1), 1e-12), "%dx%d: KV total %.0f", tp, pp, kv);
        if (n == 1) one = c.mem[0].total;
        else CHECK(c.mem[0].total < one, "%dx%d: rank 0 needs less than one rank alone", tp, pp);
        /* fits exactly when the host's memory covers its ranks */
        double need = 0;
        for (int r = 0; r < n; r++) need += c.mem[r].total;
        shoal_layout_cost_free(&c);
        t.hosts[0].mem = need * 1.0001;
        CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &c));
        CHECK(c.fits, "%dx%d fits in %.0f", tp, pp, t.hosts[0].mem);
        shoal_layout_cost_free(&c);
        t.hosts[0].mem = need * 0.9999;
        CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &c));
        CHECK(!c.fits && c.worst_host == 0 && near(c.worst_need, need, 1e-9), "%dx%d does not fit below", tp, pp);
        shoal_layout_cost_free(&c);
        shoal_plan_destroy(plan);
        shoal_topology_free(&t);
    }
}

static double tok_s(const char *hosts, int tp, int pp, struct shoal_cost_params *p) {
    struct shoal_model_shape m = shape7b();
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_parse(hosts, "h.txt", &machine, &t));
    struct shoal_plan *plan = make(&m, tp, pp);
    struct shoal_layout_cost c;
    CHECK_OK(shoal_cost_layout(&m, plan, &t, p, &c));
    double v = c.tok_s;
    CHECK(v > 0 && isfinite(v) && near(1 / v, c.t_compute + c.t_comm, 1e-9), "tok/s %g", v);
    shoal_layout_cost_free(&c);
    shoal_plan_destroy(plan);
    shoal_topology_free(&t);
    return v;
}

static int probe_calls;
static int probe_threads_seen;

static shoal_status fake_probe(void *user, const struct shoal_rank_part *pt, int threads, double *layer_s,
                               double *head_s) {
    (void)user;
    probe_calls++;
    probe_threads_seen = threads;
    /* slow kernels: 10 ms a layer, whatever the part */
    *layer_s = 10e-3 * (pt->q1 - pt->q0) / 32.0;
    *head_s = pt->last ? 5e-3 : 0;
    return SHOAL_OK;
}

static void test_speed(void) {
    struct shoal_cost_params p = params();
    const char *fast = "host a ranks=1 mem=64G membw=100GB/s cores=8\nhost b ranks=1 mem=64G membw=100GB/s cores=8\n"
                       "link * * bw=100Gbit/s lat=5us\n";
    const char *slow = "host a ranks=1 mem=64G membw=100GB/s cores=8\nhost b ranks=1 mem=64G membw=100GB/s cores=8\n"
                       "link * * bw=100Mbit/s lat=2ms\n";
    const char *half = "host a ranks=1 mem=64G membw=50GB/s cores=8\nhost b ranks=1 mem=64G membw=50GB/s cores=8\n"
                       "link * * bw=100Gbit/s lat=5us\n";
    double tp_fast = tok_s(fast, 2, 1, &p), tp_slow = tok_s(slow, 2, 1, &p);
    double pp_fast = tok_s(fast, 1, 2, &p), pp_slow = tok_s(slow, 1, 2, &p);
    CHECK(tp_fast > tp_slow * 2, "a slow link costs tp: %.1f vs %.1f", tp_fast, tp_slow);
    CHECK(pp_slow > tp_slow * 2, "on a slow link pp (%.1f) beats tp (%.1f)", pp_slow, tp_slow);
    CHECK(pp_fast / pp_slow < 1.2, "pp hardly minds the link: %.1f vs %.1f", pp_fast, pp_slow);
    CHECK(tp_fast > pp_fast * 1.5, "on a fast link tp (%.1f) beats pp (%.1f): two hosts read at once", tp_fast, pp_fast);
    double tp_half = tok_s(half, 2, 1, &p);
    CHECK(tp_half < tp_fast * 0.7, "half the bandwidth is slower: %.1f vs %.1f", tp_half, tp_fast);

    /* a probe: its times, scaled to the host's bandwidth */
    struct shoal_cost_params q = p;
    q.probe = fake_probe;
    q.probe_membw = 50e9;
    q.probe_corebw = 50e9 / 8;
    q.probe_cores = 8;
    probe_calls = 0;
    double v = tok_s(half, 1, 2, &q);
    CHECK(probe_calls == 2 && probe_threads_seen == 8, "probed %d times with %d threads", probe_calls, probe_threads_seen);
    /* 32 layers of 10 ms, a 5 ms head, and the hand-offs: about 3 tokens/s */
    CHECK(v < 1 / 0.325 && v > 1 / 0.335, "with the probe's times: %.3f tok/s", v);
    double w = tok_s(fast, 1, 2, &q);
    CHECK(near(w, 2 * v, 0.02), "twice the probe machine's bandwidth, twice as fast: %.3f vs %.3f", w, v);

    /* the best layout: fitting first, then fastest */
    struct shoal_model_shape m = shape7b();
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_parse(slow, "h.txt", &machine, &t));
    struct shoal_layout_cost *all = NULL;
    int n = 0;
    CHECK_OK(shoal_cost_all(&m, &t, &p, &all, &n));
    CHECK(n == 2 && all[0].tp == 1 && all[0].pp == 2 && all[0].fits, "slow link: best %dx%d", all[0].tp, all[0].pp);
    CHECK(all[0].tok_s >= all[1].tok_s, "sorted");
    shoal_layout_costs_free(all, n);
    t.hosts[0].mem = 8.0 * (1 << 30); /* 14 GiB of weights do not fit on a in 8 GiB as half of 1 x 2's stages */
    t.hosts[1].mem = 8.0 * (1 << 30);
    CHECK_OK(shoal_cost_all(&m, &t, &p, &all, &n));
    CHECK(all[0].fits && all[0].tp * all[0].pp == 2, "still fits in two halves");
    shoal_layout_costs_free(all, n);
    t.hosts[0].mem = 2.0 * (1 << 30);
    CHECK_OK(shoal_cost_all(&m, &t, &p, &all, &n));
    CHECK(!all[0].fits && !all[1].fits && all[0].worst_host == 0, "nothing fits in 2 GiB");
    shoal_layout_costs_free(all, n);
    shoal_topology_free(&t);
}

/*
 * Windowed layers (Gemma 3's 5 in 6, window 512): in runs of one sequence
 * each keeps a ring of window + batch - 1 slots, the others the context; in
 * paged runs (serve) a ring per request, where that takes less than the
 * context, else every layer the context. Per stage of pp 2, its own layers
 * counted by the rule.
 */
static void test_windowed_kv(void) {
    struct shoal_model_shape m = shape7b();
    m.n_layers = 18;
    m.swa_window = 512;
    m.swa_period = 6;
    struct shoal_cost_params p = params();
    p.n_ctx = 32768;
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_single(2, 1e12, &machine, &t));
    struct shoal_plan *plan = make(&m, 1, 2);
    struct shoal_layout_cost paged, rings, served, many;
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &paged));
    p.rings = 1;
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &rings));
    p.rings = 16; /* shoal serve --parallel 16: a ring per request */
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &served));
    p.rings = 33; /* 33 rings of 1023 would take more than the context: none */
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &many));
    const double slot = 2.0 * 8 * p.kv_head_bytes; /* K and V of 8 KV heads */
    for (int r = 0; r < 2; r++) {
        const struct shoal_rank_part *pt = &plan->part[r];
        int windowed = 0;
        for (int l = pt->layer0; l < pt->layer1; l++) windowed += (l + 1) % 6 != 0;
        const double whole = (pt->layer1 - pt->layer0) * 32768.0 * slot;
        CHECK(near(paged.mem[r].kv, whole, 1e-12), "rank %d paged: %g of %g", r, paged.mem[r].kv, whole);
        const double ring = whole - windowed * (32768.0 - (512 + 512 - 1)) * slot;
        CHECK(windowed > 0 && near(rings.mem[r].kv, ring, 1e-12), "rank %d rings: %g of %g", r, rings.mem[r].kv,
              ring);
        const double sixteen = whole - windowed * (32768.0 - 16 * (512 + 512 - 1)) * slot;
        CHECK(near(served.mem[r].kv, sixteen, 1e-12), "rank %d, 16 rings: %g of %g", r, served.mem[r].kv, sixteen);
        CHECK(near(many.mem[r].kv, whole, 1e-12), "rank %d, 33 rings: %g of %g", r, many.mem[r].kv, whole);
    }
    shoal_layout_cost_free(&paged);
    shoal_layout_cost_free(&rings);
    shoal_layout_cost_free(&served);
    shoal_layout_cost_free(&many);
    shoal_plan_destroy(plan);
    shoal_topology_free(&t);
}

/*
 * A mixture of experts (Qwen3-30B-A3B's shape: 128 experts of 768 units, 8 a
 * token): what a rank holds counts every expert it has, what a decode step
 * reads only a token's experts; whole experts over the ranks (ep) read the
 * most that one rank holds, more than an even share.
 */
static void test_experts(void) {
    /* 2 of 8 over 2 ranks of 4: both on one rank in 3 draws of 7 */
    const double two = shoal_cost_max_experts(8, 2, 2);
    CHECK(fabs(two - (1 + 3.0 / 7)) < 0.03, "2 of 8 experts over 2 ranks: the busiest runs %.3f, not 1.43", two);
    CHECK(shoal_cost_max_experts(8, 2, 1) == 2 && shoal_cost_max_experts(128, 8, 128) >= 1, "one group, or all");
    const double eight = shoal_cost_max_experts(128, 8, 4);
    CHECK(eight > 2 && eight < 5, "8 of 128 over 4 ranks: the busiest runs %.2f", eight);
    CHECK(shoal_cost_max_experts(128, 8, 4) == eight, "the same figure each time");

    struct shoal_model_shape m = { .n_layers = 48, .dim = 2048, .n_heads = 32, .n_kv_heads = 4, .head_dim = 128,
                                   .ffn_dim = 768, .n_vocab = 151936, .wo_block = 1, .down_block = 1,
                                   .n_expert = 128, .n_expert_used = 8 };
    m.q_head_bytes = 2.0 * 2 * 128 * 2048;
    m.kv_head_bytes = 2.0 * 2 * 128 * 2048;
    m.ffn_unit_bytes = 3.0 * 2 * 2048 * 128; /* every expert's unit */
    m.norm_bytes = 2.0 * 4 * 2048;
    m.layer_bytes = 32 * m.q_head_bytes + 4 * m.kv_head_bytes + 768 * m.ffn_unit_bytes + m.norm_bytes;
    m.output_bytes = 2.0 * 151936 * 2048;
    m.embd_bytes = m.output_bytes;
    struct shoal_cost_params p = params();
    const char *hosts = "host a ranks=1 mem=64G membw=100GB/s cores=8\nhost b ranks=1 mem=64G membw=100GB/s cores=8\n"
                        "link * * bw=100Gbit/s lat=5us\n";
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_parse(hosts, "h.txt", &machine, &t));
    struct shoal_layout_cost share, whole;
    struct shoal_plan *a = NULL, *b = NULL;
    CHECK_OK(shoal_plan_make(&a, &m, &(struct shoal_plan_params){ .tp = 2, .pp = 1 }));
    CHECK_OK(shoal_plan_make(&b, &m, &(struct shoal_plan_params){ .tp = 2, .pp = 1, .ep = 1 }));
    if (a && b) {
        CHECK_OK(shoal_cost_layout(&m, a, &t, &p, &share));
        CHECK_OK(shoal_cost_layout(&m, b, &t, &p, &whole));
        CHECK(share.ep == 0 && whole.ep == 1, "the layouts say which they are");
        /* both hold half of the experts' bytes */
        CHECK(near(share.mem[0].weights, whole.mem[0].weights, 0.02), "held: %.3g and %.3g", share.mem[0].weights,
              whole.mem[0].weights);
        /* a token reads 8 of 128 experts: far less than they hold, so far faster than a dense read */
        const double dense = 2 * share.mem[0].weights / (0.78 * 100e9);
        CHECK(share.t_compute < dense / 4, "the experts a token reads: %.3g s, a dense read %.3g s", share.t_compute, dense);
        CHECK(whole.t_compute > share.t_compute, "decoding, whole experts wait for the busiest rank: %.3g vs %.3g s",
              whole.t_compute, share.t_compute);
        shoal_layout_cost_free(&share);
        shoal_layout_cost_free(&whole);
    }
    shoal_plan_destroy(a);
    shoal_plan_destroy(b);
    /* shoal_cost_all costs both on 2 ranks */
    struct shoal_layout_cost *all = NULL;
    int n = 0, eps = 0;
    CHECK_OK(shoal_cost_all(&m, &t, &p, &all, &n));
    for (int i = 0; i < n; i++) eps += all[i].ep;
    CHECK(n == 3 && eps == 1, "2 x 1, 2 x 1 with --ep, 1 x 2: %d layouts, %d with --ep", n, eps);
    shoal_layout_costs_free(all, n);
    shoal_topology_free(&t);
}

/*
 * Hosts measured (layer=, cpu=: shoal plan --probe-cluster's): a host's
 * time is the probe's scaled by its layer time over the probe's for the
 * same whole layers; a share of the time (a CPU quota) bounds the pace by
 * its rank's compute over that share; unequal hosts get shares in
 * proportion to their speed where that is faster, which the plan then
 * splits so.
 */
static void test_measured_hosts(void) {
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_parse("host a ranks=1 mem=64G layer=1.5ms cpu=0.25\nhost b ranks=1 mem=64G\nlink * * bw=1Gbit/s lat=1ms\n",
                               "h.txt", &machine, &t));
    CHECK(near(t.hosts[0].layer_s, 1.5e-3, 1e-12) && near(t.hosts[0].cpu, 0.25, 1e-12), "layer %g cpu %g",
          t.hosts[0].layer_s, t.hosts[0].cpu);
    CHECK(t.hosts[1].layer_s == 0 && t.hosts[1].cpu == 1, "not given: layer %g cpu %g", t.hosts[1].layer_s, t.hosts[1].cpu);
    shoal_topology_free(&t);
    static const char *const bad[] = { "layer=0", "layer=1h", "cpu=0", "cpu=1.5", "cpu=half", "cpu=" };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        char text[128];
        snprintf(text, sizeof text, "host a ranks=1 mem=1G %s\n", bad[i]);
        CHECK(shoal_hosts_parse(text, "h.txt", &machine, &t) == SHOAL_INVALID &&
                  strstr(shoal_last_error(), "h.txt: line 1") &&
                  strstr(shoal_last_error(), strncmp(bad[i], "cpu", 3) ? "layer=" : "cpu="),
              "%s: %s", bad[i], shoal_last_error());
    }

    struct shoal_cost_params q = params();
    q.probe = fake_probe; /* 10 ms a whole layer */
    q.probe_membw = 100e9;
    q.probe_corebw = 100e9 / 8;
    q.probe_cores = 8;
    const char *even = "host a ranks=1 mem=64G membw=100GB/s cores=8 layer=10ms\n"
                       "host b ranks=1 mem=64G membw=100GB/s cores=8 layer=10ms\nlink * * bw=1Gbit/s lat=2ms\n";
    const char *slow = "host a ranks=1 mem=64G membw=100GB/s cores=8 layer=10ms\n"
                       "host b ranks=1 mem=64G membw=100GB/s cores=8 layer=20ms\nlink * * bw=1Gbit/s lat=10ms\n";
    const char *quota = "host a ranks=1 mem=64G membw=100GB/s cores=8 layer=10ms\n"
                        "host b ranks=1 mem=64G membw=100GB/s cores=8 layer=10ms cpu=0.25\nlink * * bw=1Gbit/s lat=10ms\n";
    /* even pp 2: 16 layers of 10 ms a stage (and the head), the same on both hosts */
    const double e = tok_s(even, 1, 2, &q), s = tok_s(slow, 1, 2, &q);
    CHECK(e > 2.9 && e < 3.1, "two measured hosts like the probe's: %.3f tok/s", e);
    /* b at 20 ms a layer: its 16 layers take 320 ms, a's 160, with the head and two hand-offs of 10 ms */
    CHECK(s > 1 / 0.515 && s < 1 / 0.5, "a slower host measured: %.3f tok/s", s);
    /* a quarter of the time: b computes 165 ms a token, so a token takes at least 660 ms */
    struct shoal_model_shape m = shape7b();
    struct shoal_plan *plan = NULL;
    CHECK_OK(shoal_plan_make(&plan, &m, &(struct shoal_plan_params){ .tp = 1, .pp = 2 }));
    CHECK_OK(shoal_hosts_parse(quota, "h.txt", &machine, &t));
    struct shoal_layout_cost c;
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &q, &c));
    CHECK(near(1 / c.tok_s, (16 * 10e-3 + 5e-3) / 0.25, 1e-6), "the quota bounds the pace: %.4f s a token", 1 / c.tok_s);
    shoal_layout_cost_free(&c);
    shoal_plan_destroy(plan);
    shoal_topology_free(&t);
    /* the best layouts share by speed: b takes fewer layers, and the token comes sooner */
    static const char *const hosts[] = { "slow", "quota" };
    for (int k = 0; k < 2; k++) {
        CHECK_OK(shoal_hosts_parse(k ? quota : slow, "h.txt", &machine, &t));
        struct shoal_layout_cost *all = NULL;
        int n = 0;
        CHECK_OK(shoal_cost_all(&m, &t, &q, &all, &n));
        CHECK(all[0].tp == 1 && all[0].pp == 2 && all[0].pp_weights && !all[0].tp_weights &&
                  all[0].pp_weights[1] < 0.8 * all[0].pp_weights[0],
              "%s: best %dx%d, weights %g, %g", hosts[k], all[0].tp, all[0].pp,
              all[0].pp_weights ? all[0].pp_weights[0] : 0, all[0].pp_weights ? all[0].pp_weights[1] : 0);
        /* slow: at best 2:1, a's 21 layers and b's 11 side by side, 12% sooner; quota: b's stage no longer
         * bounds the pace four times over */
        CHECK(all[0].tok_s > (k ? 1.8 / 0.66 : 1.08 * s), "%s: shared by speed, %.3f tok/s", hosts[k], all[0].tok_s);
        CHECK_OK(shoal_plan_make(&plan, &m, &(struct shoal_plan_params){ .tp = 1, .pp = 2,
                                                                          .pp_weights = all[0].pp_weights }));
        CHECK(plan->part[1].layer1 - plan->part[1].layer0 < 14, "%s: b's stage has %d layers", hosts[k],
              plan->part[1].layer1 - plan->part[1].layer0);
        shoal_plan_destroy(plan);
        shoal_layout_costs_free(all, n);
        shoal_topology_free(&t);
    }
}

/*
 * Speculation's prediction: tokens a step 1 + a + ... + a^k; a step of k + 1
 * tokens costs more than one token's (compute and bytes) but less than k + 1
 * steps; on a LAN whose latency dominates, the gain nears the tokens a step;
 * drafts that are never accepted lose; a draft model's time counts.
 */
static void test_speculation(void) {
    struct shoal_model_shape m = shape7b();
    struct shoal_cost_params p = params();
    struct shoal_topology t;
    CHECK_OK(shoal_hosts_parse("host a ranks=1 mem=64G\nhost b ranks=1 mem=64G\nlink * * bw=10Gbit/s lat=1ms\n", "h.txt",
                               &machine, &t));
    struct shoal_plan *plan = make(&m, 2, 1);
    struct shoal_layout_cost one;
    CHECK_OK(shoal_cost_layout(&m, plan, &t, &p, &one));
    struct shoal_spec_gain g, none, all, slow;
    CHECK_OK(shoal_cost_speculation(&m, plan, &t, &p, 4, 0.5, 0, &g));
    CHECK(near(g.tokens_per_step, 1 + 0.5 + 0.25 + 0.125 + 0.0625, 1e-12), "tokens a step %g", g.tokens_per_step);
    CHECK(near(g.plain_tok_s, one.tok_s, 1e-12), "plain %g against %g", g.plain_tok_s, one.tok_s);
    CHECK(g.step_s > 1 / one.tok_s && g.step_s < 5 / one.tok_s, "a step of 5 tokens %g s, one token's %g", g.step_s,
          1 / one.tok_s);
    CHECK(near(g.tok_s, g.tokens_per_step / g.step_s, 1e-12) && near(g.speedup, g.tok_s / one.tok_s, 1e-12),
          "tok/s %g, speedup %g", g.tok_s, g.speedup);
    CHECK(g.speedup > 1.1 && g.speedup < g.tokens_per_step, "tp 2 over 1 ms, 10 Gbit links: %.2fx of %.2f tokens a step",
          g.speedup, g.tokens_per_step);
    { /* links of 20 ms: the latency is the step, whatever it carries */
        struct shoal_topology far;
        struct shoal_spec_gain f;
        CHECK_OK(shoal_hosts_parse("host a ranks=1 mem=64G\nhost b ranks=1 mem=64G\nlink * * bw=10Gbit/s lat=20ms\n",
                                   "h.txt", &machine, &far));
        CHECK_OK(shoal_cost_speculation(&m, plan, &far, &p, 4, 0.5, 0, &f));
        CHECK(f.speedup > 0.85 * f.tokens_per_step && f.speedup > g.speedup, "20 ms links: %.2fx of %.2f tokens a step",
              f.speedup, f.tokens_per_step);
        shoal_topology_free(&far);
    }
    CHECK_OK(shoal_cost_speculation(&m, plan, &t, &p, 4, 0, 0, &none));
    CHECK(none.tokens_per_step == 1 && none.speedup < 1, "no draft accepted: %.2fx", none.speedup);
    CHECK_OK(shoal_cost_speculation(&m, plan, &t, &p, 4, 1, 0, &all));
    CHECK(all.tokens_per_step == 5 && all.speedup > g.speedup, "every draft accepted: %.2f tokens, %.2fx",
          all.tokens_per_step, all.speedup);
    CHECK_OK(shoal_cost_speculation(&m, plan, &t, &p, 4, 0.5, 0.01, &slow));
    CHECK(near(slow.step_s, g.step_s + 0.04, 1e-9), "4 drafts of 10 ms: a step of %g s, %g without", slow.step_s,
          g.step_s);
    CHECK(shoal_cost_speculation(&m, plan, &t, &p, 0, 0.5, 0, &g) == SHOAL_INVALID &&
              shoal_cost_speculation(&m, plan, &t, &p, 4, 1.5, 0, &g) == SHOAL_INVALID,
          "bad speculation accepted");
    shoal_layout_cost_free(&one);
    shoal_plan_destroy(plan);
    shoal_topology_free(&t);
}

int main(void) {
    test_speculation();
    test_measured_hosts();
    test_units();
    test_hosts();
    test_memory();
    test_windowed_kv();
    test_many_hosts();
    test_experts();
    test_speed();
    return check_done("test_cost");
}
