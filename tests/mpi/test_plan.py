"""shoal plan: its per-rank memory against what ranks measure, its host file
and errors, what it says when nothing fits, --json, and shoal run taking
the planner's layout when given no --tp/--pp.

Memory: runs that fill their context (a prompt of ~900 tokens in batches,
then generation to the end of the context: filled by generation alone, 1024
decode steps on 3 ranks took 15 s in CI) so that the KV cache and the
activations are all touched, under several layouts; each rank's peak RSS
(shoal run -v) must be within 10% of `shoal plan`'s total for that rank.
Speed predictions are timings and are checked in bench/bench_plan.py, not
here."""
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

PROMPT = ("Once upon a time there was a little girl who lived in a village near the forest, and every "
          "day she walked to the river to fetch water. ") * 30
# no bandwidth measurement or probe: memory does not depend on them, and tests stay quick
FIXED = ["--membw", "50GB/s", "--corebw", "25GB/s", "--no-probe"]


def plan_json(model, *args):
    p = h.run(["plan", "-m", model, "--json"] + FIXED + list(args), check=False)
    assert p.returncode in (0, 1), p.stderr.decode()
    return p.returncode, json.loads(p.stdout)


def cache_in_small_pages(path):
    """Puts the whole file in the page cache in 4 KiB pages, the state the planner
    assumes (a fault maps the cached pages of its 64 KiB window). What a rank's mapping
    counts depends on how the file's pages got into the cache: since Linux 6.18 a fault
    maps the whole large folio around it, and read() with readahead (a copy, pip,
    another test) or the ranks' own faults leave large folios, so a tensor-parallel
    rank would count its neighbours' rows (shared page cache, not memory it needs),
    by an amount that changes from run to run. Evicted, then read with readahead off:
    the kernel caches it page by page."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_RANDOM)
        while os.read(fd, 1 << 20):
            pass
    finally:
        os.close(fd)


def measured_rss(model, tp, pp, ctx, batch, prompt, kv):
    cache_in_small_pages(model)
    args = ["run", "-m", model, "-f", prompt, "-c", ctx, "-b", batch, "-n", ctx, "--temp", 0,
            "--ignore-eos", "-v", "--tp", tp, "--pp", pp, "--kv-type", kv]
    p = h.mpirun(tp * pp, args, timeout=300) if tp * pp > 1 else h.run(args, timeout=300)
    err = p.stderr.decode()
    assert "context of" in err or "stop: context" in err or "stop: length" in err, err[-2000:]
    return h.peak_rss(err, tp * pp)


@pytest.fixture(scope="module")
def own_model(tmp_path_factory):
    """A copy of the default model that only these runs read: tests running at the same
    time read the original and would bring its pages back in large folios."""
    f = tmp_path_factory.mktemp("plan-model") / "model.gguf"
    shutil.copyfile(h.smollm2(), f)
    return f


@pytest.fixture(scope="module")
def prompt(tmp_path_factory):
    f = tmp_path_factory.mktemp("plan") / "prompt.txt"
    f.write_text(PROMPT)
    return f


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (3, 1), (1, 3)])
def test_memory_prediction_within_10_percent(prompt, own_model, tp, pp):
    model = own_model
    # an f32 cache of 1024 positions: enough of a rank's memory that a KV term gone
    # wrong shows beyond the 10%
    ctx, batch, kv = 1024, 32, "f32"
    _, j = plan_json(model, "--ranks", tp * pp, "-c", ctx, "-b", batch, "--tp", tp, "--pp", pp, "--kv-type", kv)
    shown = j.get("shown", j["best"])
    assert (shown["tp"], shown["pp"]) == (tp, pp)
    pred = [r["total"] for r in shown["ranks"]]
    assert max(r["kv"] / r["total"] for r in shown["ranks"]) > 0.12, "the cache should weigh"
    got = measured_rss(model, tp, pp, ctx, batch, prompt, kv)
    for r, (p_, m) in enumerate(zip(pred, got)):
        print(f"tp {tp} x pp {pp} rank {r}: predicted {p_ / 2**20:.1f} MiB, peak RSS {m / 2**20:.1f} MiB "
              f"({p_ / m - 1:+.1%})")
        assert abs(p_ / m - 1) <= 0.10, f"rank {r}: predicted {p_ / 2**20:.1f} MiB, measured {m / 2**20:.1f} MiB"


def test_kv_cache_and_weights_follow_the_settings():
    model = h.smollm2()
    _, a = plan_json(model, "--ranks", 1, "-c", 1024)
    _, b = plan_json(model, "--ranks", 1, "-c", 2048)
    _, q = plan_json(model, "--ranks", 1, "-c", 2048, "--kv-type", "q8")
    ka, kb, kq = (x["best"]["ranks"][0]["kv"] for x in (a, b, q))
    assert kb == 2 * ka, "the KV cache doubles with the context"
    # SmolLM2: 30 layers, 3 KV heads of 64: f16 K and V
    assert kb == 30 * 2 * 2048 * 3 * 64 * 2
    assert kq == 30 * 2 * 2048 * 3 * (64 + 4), "8-bit cache: a byte a value and a scale per head"
    w1 = a["best"]["ranks"][0]["weights"]
    _, two = plan_json(model, "--ranks", 2, "--tp", 2, "--pp", 1)
    w2 = [r["weights"] for r in two["shown"]["ranks"]]
    # every weight once, plus what the kernel maps around each slice's ends (64 KiB windows;
    # SmolLM2's tensors are small, so it shows)
    assert w1 <= sum(w2) < 1.25 * w1 and max(w2) < 0.65 * w1


def test_host_file(tmp_path):
    model = h.smollm2()
    hosts = tmp_path / "hosts"
    hosts.write_text("# two home machines\nhost desk ranks=1 mem=4G membw=40GB/s cores=8\n"
                     "host laptop ranks=1 mem=2G membw=20GB/s cores=4\nlink * * bw=1Gbit/s lat=0.5ms\n")
    rc, j = plan_json(model, "--hosts", hosts)
    assert rc == 0 and j["fits"]
    assert [x["name"] for x in j["hosts"]] == ["desk", "laptop"]
    assert {(x["tp"], x["pp"]) for x in j["layouts"]} == {(1, 2), (2, 1)}
    p = h.run(["plan", "-m", model, "--hosts", hosts] + FIXED)
    out = p.stdout.decode()
    assert "best: tp" in out and "mpirun -np 2 shoal run" in out and "per rank" in out
    # errors name the file and the line
    hosts.write_text("host desk ranks=1 mem=4G\nhost laptop ranks=1 mem=2Q\n")
    p = h.run(["plan", "-m", model, "--hosts", hosts] + FIXED, check=False)
    assert p.returncode == 1 and f"{hosts}: line 2: mem=2Q is not a size" in p.stderr.decode()
    hosts.write_text("host desk ranks=1 mem=4G\nhost laptop ranks=1 mem=2G\n")
    p = h.run(["plan", "-m", model, "--hosts", hosts] + FIXED, check=False)
    assert p.returncode == 1 and "no link between desk and laptop" in p.stderr.decode()
    p = h.run(["plan", "-m", model, "--hosts", tmp_path / "missing"] + FIXED, check=False)
    assert p.returncode == 1 and "missing" in p.stderr.decode()
    hosts.write_bytes(b"host a ranks=1 mem=1G\x00\n")
    p = h.run(["plan", "-m", model, "--hosts", hosts] + FIXED, check=False)
    assert p.returncode == 1 and "not a text file" in p.stderr.decode()


def test_nothing_fits_says_what_would():
    model = h.smollm2()
    p = h.run(["plan", "-m", model, "--ranks", 2, "--mem-per-rank", "100M", "-c", 4096] + FIXED, check=False)
    out = p.stdout.decode()
    assert p.returncode == 1, "nothing fits: a non-zero exit"
    assert "nothing fits" in out and "it would fit with" in out
    # each suggestion holds
    m = re.search(r"- (\d+)M per rank", out)
    assert m, out
    rc, j = plan_json(model, "--ranks", 2, "--mem-per-rank", f"{m.group(1)}M", "-c", 4096)
    assert rc == 0 and j["fits"], f"{m.group(1)}M per rank was suggested but does not fit"
    m = re.search(r"- (\d+) ranks of .* --mem-per-rank (\d+)M", out)
    assert m, out
    n = int(m.group(1))
    rc, j = plan_json(model, "--ranks", n, "--mem-per-rank", f"{m.group(2)}M", "-c", 4096)
    assert rc == 0 and j["fits"], f"{n} ranks were suggested but do not fit"
    rc, j = plan_json(model, "--ranks", n - 1, "--mem-per-rank", f"{m.group(2)}M", "-c", 4096)
    assert rc == 1 and not j["fits"], f"{n - 1} ranks fit too: {n} was not the fewest"
    m = re.search(r"a context of (\d+) tokens", out)
    assert m, out
    rc, j = plan_json(model, "--ranks", 2, "--mem-per-rank", "100M", "-c", m.group(1))
    assert rc == 0 and j["fits"]
    rc, j = plan_json(model, "--ranks", 2, "--mem-per-rank", "100M", "-c", int(m.group(1)) * 2)
    assert rc == 1 and not j["fits"]


def test_usage_errors():
    model = h.smollm2()
    for args, msg in [([], "one of --hosts FILE, --ranks N or --probe-cluster FILE"),
                      (["--ranks", 2, "--hosts", "x"], "one of --hosts FILE, --ranks N or --probe-cluster FILE"),
                      (["--ranks", 2, "--membw", "fast"], "not a rate"),
                      (["--ranks", 2, "--kv-type", "q4"], "--kv-type"), (["--ranks", 2, "--tp", 2], "together"),
                      (["--ranks", 2, "--frobnicate"], "frobnicate")]:
        p = h.run(["plan", "-m", model] + args, check=False)
        assert p.returncode == 2 and msg in p.stderr.decode(), (args, p.stderr.decode())
    p = h.run(["plan", "--help"])
    assert b"host NAME ranks=N mem=SIZE" in p.stdout
    p = h.run(["plan", "-m", model, "--ranks", 2, "--tp", 4, "--pp", 1] + FIXED, check=False)
    assert p.returncode == 1 and "tp 4 x pp 1 is not a layout" in p.stderr.decode()


def test_run_takes_the_planners_layout(tmp_path):
    """No --tp/--pp: the planner chooses (and says so); the tokens are those of the same
    layout chosen by hand; a host file with a slow link makes it choose a pipeline."""
    model = h.smollm2()
    args = ["run", "-m", model, "-p", "The capital of France is", "-n", 16, "--temp", 0, "--no-echo"]
    auto = h.mpirun(2, args)
    err = auto.stderr.decode()
    m = re.search(r"tp (\d) x pp (\d), the planner's choice for 2 ranks", err)
    assert m, err
    tp, pp = int(m.group(1)), int(m.group(2))
    hand = h.mpirun(2, args + ["--tp", tp, "--pp", pp])
    assert auto.stdout == hand.stdout and len(auto.stdout) > 10
    slow = tmp_path / "hosts"
    slow.write_text("host a ranks=1 mem=4G\nhost b ranks=1 mem=4G\nlink * * bw=10Mbit/s lat=20ms\n")
    p = h.mpirun(2, args + ["--hosts", slow])
    assert "tp 1 x pp 2, the planner's choice" in p.stderr.decode()
    assert p.stdout == h.mpirun(2, args + ["--tp", 1, "--pp", 2]).stdout
    slow.write_text("host a ranks=3 mem=4G\n")
    p = h.mpirun(2, args + ["--hosts", slow], check=False)
    assert p.returncode != 0 and "describes 3 ranks but 2 are running" in p.stderr.decode()
    p = h.mpirun(2, args + ["--hosts", slow, "--tp", 2], check=False)
    assert p.returncode != 0 and "--hosts is for the planner" in p.stderr.decode()


def test_probe_cluster_on_one_machine(tmp_path):
    """Two ranks on this machine: --probe-cluster measures one host of two ranks and the
    link between them (a `local` line), writes a host file that parses, plans on it, and
    refuses what it cannot do with a usage error; shoal run -v prints the measurement."""
    model = h.smollm2()
    hosts = tmp_path / "hosts.txt"
    p = h.mpirun(2, ["plan", "-m", model, "-t", 1, "--probe-cluster", hosts])
    text = hosts.read_text()
    lines = [ln.split("#")[0].split() for ln in text.splitlines() if ln.split("#")[0].strip()]
    assert [ln[0] for ln in lines] == ["host", "local"], text
    kv = dict(w.split("=", 1) for w in lines[0][2:])
    assert kv["ranks"] == "2" and kv["cpu"] and float(kv["layer"].rstrip("us")) > 0, text
    assert "wrote the host file" in p.stderr.decode() and "best: tp" in p.stdout.decode(), p.stderr.decode()
    again = h.run(["plan", "-m", model, "-t", 1, "--hosts", hosts, "--json"])
    assert json.loads(again.stdout)["best"]["tp"] * json.loads(again.stdout)["best"]["pp"] == 2
    for args, msg in [(["--hosts", hosts], "one of --hosts FILE"), (["--membw", "9GB/s"], "leave out --membw"),
                      (["--threads", -1], "--threads")]:
        q = h.run(["plan", "-m", model, "--probe-cluster", tmp_path / "x.txt"] + args, check=False)
        assert q.returncode == 2 and msg in q.stderr.decode(), (args, q.stderr.decode())
    assert not (tmp_path / "x.txt").exists()
    r = h.mpirun(2, ["run", "-m", model, "-p", "Hi", "-n", 4, "--temp", 0, "-t", 1, "-v"])
    err = r.stderr.decode()
    assert "the cluster, measured in" in err and "ranks of one host" in err, err
    assert re.search(r"rank 1 \(stage \d, tp \d\): a decode token [\d.]+ ms computing, [\d.]+ ms waiting", err), err


def test_speculation_prediction(tmp_path):
    """--spec-draft K --spec-accept A: the shown layout's prediction with K drafts a step, its
    tokens a step 1 + A + ... + A^K, its gain that prediction over the plain one; a draft
    model's time makes the step longer; bad values are usage errors."""
    hosts = tmp_path / "lan.txt"
    hosts.write_text("host a ranks=1 mem=8G\nhost b ranks=1 mem=8G\nlink * * bw=1Gbit/s lat=1ms\n")
    model = h.testdata("stories260K.gguf")
    base = ["--hosts", hosts, "--tp", 2, "--pp", 1, "-t", 1]
    _, plain = plan_json(model, *base)
    _, d = plan_json(model, *base, "--spec-draft", 4, "--spec-accept", 0.5)
    s = d["speculation"]
    assert s["tokens_per_step"] == pytest.approx(1.9375)
    assert s["plain_decode_tok_s"] == pytest.approx(plain["shown"]["decode_tok_s"])
    assert s["speedup"] == pytest.approx(s["decode_tok_s"] / s["plain_decode_tok_s"])
    # a tiny model on 1 ms links: the step is its latencies, nearly whatever it carries
    assert 1.4 < s["speedup"] < 1.9375
    _, dm = plan_json(model, *base, "--spec-draft", 4, "--spec-accept", 0.5, "--spec-draft-ms", 5)
    assert dm["speculation"]["step_ms"] == pytest.approx(s["step_ms"] + 20, rel=1e-6)
    text = h.run(["plan", "-m", model] + FIXED + base + ["--spec-draft", 4]).stdout.decode()
    assert re.search(r"speculative decoding, tp 2 x pp 1, 4 tokens drafted a step, each accepted at 0\.60", text), text
    for bad in (["--spec-draft", 0, "--spec-accept", 0.5], ["--spec-draft", 4, "--spec-accept", 1.5],
                ["--spec-draft", 65]):
        p = h.run(["plan", "-m", model] + FIXED + base + [str(x) for x in bad], check=False)
        assert p.returncode == 2 and b"--spec" in p.stderr, p.stderr.decode()
