"""Many ranks under a real mpirun (oversubscribed on this 2-core machine):
every tp x pp layout must produce, token for token, what one rank produces,
on stories260K (and so the run.c oracles) and on synthetic models with
Q8_0, Q4_0 and F16 weights, grouped-query attention and uneven head splits.
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)]


def run_layout(tp, pp, args, tmp_path, tag):
    ids = tmp_path / f"ids_{tag}_{tp}x{pp}.txt"
    args = list(args) + ["--ids-out", ids]
    if tp * pp == 1:
        p = h.run(["run"] + args)
    else:
        p = h.mpirun(tp * pp, ["run", "--tp", tp, "--pp", pp] + args)
    return p.stdout, h.read_ids(ids)


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_stories_layouts_match_oracle(tp, pp, tmp_path):
    model = h.testdata("stories260K.gguf")
    text = h.testdata("oracle/runc_greedy_bos_256.txt").read_bytes()
    out, _ = run_layout(tp, pp, ["-m", model, "-n", 256, "--temp", 0, "-q"], tmp_path, "bos")
    assert out == text, f"tp {tp} x pp {pp}: the 256-token text differs from run.c's"
    want = h.read_ids(h.testdata("oracle/runc_greedy_once_upon_a_time_n32.ids"))
    _, ids = run_layout(tp, pp, ["-m", model, "-p", "Once upon a time", "-n", 28, "--temp", 0, "-q"],
                        tmp_path, "ouat")
    assert ids == want, f"tp {tp} x pp {pp}: ids differ from run.c's"


SYNTH = {
    # name: synth flags (grouped-query attention throughout)
    "q8_0": ["--type", "q8_0", "--dim", 256, "--layers", 4, "--heads", 8, "--kv-heads", 4, "--ffn", 512],
    "q4_0": ["--type", "q4_0", "--dim", 256, "--layers", 4, "--heads", 8, "--kv-heads", 4, "--ffn", 512],
    "f16": ["--type", "f16", "--dim", 256, "--layers", 4, "--heads", 8, "--kv-heads", 2, "--ffn", 384],
    # 12 query heads in 3 KV groups: tp 2 takes 2 groups + 1
    "uneven": ["--type", "q8_0", "--dim", 384, "--layers", 4, "--heads", 12, "--kv-heads", 3,
               "--ffn", 640],
}


@pytest.fixture(scope="module")
def synth_models(tmp_path_factory):
    d = tmp_path_factory.mktemp("layouts")
    out = {}
    for name, flags in SYNTH.items():
        out[name] = d / f"{name}.gguf"
        h.run(["synth", "-o", out[name], "--vocab", 512, "--seed", 5] + flags)
    return out


@pytest.mark.parametrize("name", list(SYNTH))
def test_synthetic_layouts_match_one_rank(name, synth_models, tmp_path):
    args = ["-m", synth_models[name], "-p", "the quick brown fox", "-n", 48, "--temp", 0,
            "--ignore-eos", "-q"]
    _, base = run_layout(1, 1, args, tmp_path, name)
    assert len(base) >= 48
    layouts = LAYOUTS[1:] if name != "uneven" else [(2, 1), (2, 2), (3, 1)]
    for tp, pp in layouts:
        _, ids = run_layout(tp, pp, args, tmp_path, name)
        same = next((i for i, (a, b) in enumerate(zip(base, ids)) if a != b), len(base))
        assert ids == base, f"{name}: tp {tp} x pp {pp} differs from one rank at token {same}"


@pytest.mark.parametrize("wire", ["f32", "f16", "bf16", "q8"])
def test_compressed_all_reduce_runs(wire, synth_models, tmp_path):
    """Lossy payloads may change late tokens but must run and stay close."""
    args = ["-m", synth_models["q8_0"], "-p", "the quick brown fox", "-n", 32, "--temp", 0,
            "--ignore-eos", "-q"]
    _, base = run_layout(1, 1, args, tmp_path, "wire")
    _, ids = run_layout(2, 1, args + ["--comm-dtype", wire], tmp_path, "wire" + wire)
    assert len(ids) == len(base)
    assert ids[:6] == base[:6], f"--comm-dtype {wire}: even the first tokens differ"


def test_verbose_reports_every_rank():
    p = h.mpirun(4, ["run", "-m", h.testdata("stories260K.gguf"), "-n", 16, "--temp", 0, "--tp", 2,
                     "--pp", 2, "-v"])
    err = p.stderr.decode()
    for r in range(4):
        assert f"rank {r} (stage {r // 2}, tp {r % 2}): generation" in err, err
        assert f"rank {r}: stage {r // 2} layers" in err, err
    assert p.stdout.count(b"Once upon a time") == 1, "only rank 0 prints"


@pytest.mark.parametrize("args,msg", [
    (["--tp", 3], "does not match the 2 ranks"),
    (["--tp", 2, "--pp", 2], "does not match the 2 ranks"),
    (["--pp", 9], "does not match the 2 ranks"),
])
def test_layout_errors(args, msg):
    p = h.mpirun(2, ["run", "-m", h.testdata("stories260K.gguf"), "-n", 4] + args, check=False)
    assert p.returncode != 0
    assert p.stderr.decode().count(msg) == 1, "rank 0 alone explains: " + p.stderr.decode()


def test_plan_refusal_says_what_works():
    """stories260K has 8 query heads: 9 ranks cannot have one each."""
    p = h.mpirun(9, ["run", "-m", h.testdata("stories260K.gguf"), "-n", 4, "--tp", 9], check=False)
    assert p.returncode != 0
    err = p.stderr.decode()
    assert err.count("9 ranks cannot share 8 query heads (one each at least). Tensor-parallel sizes that "
                     "work: 1, 2, 3, 4, 5, 6, 7, 8") == 1, err


@pytest.mark.parametrize("sampling", [
    ["--temp", 1.0, "--seed", 7],                                   # top-k 40: candidates travel
    ["--temp", 0.9, "--seed", 3, "--repeat-penalty", 1.2],          # penalties: whole rows travel
    ["--temp", 1.0, "--seed", 9, "--top-k", 0, "--top-p", 0.9],     # no top-k: whole rows
])
def test_sampling_matches_one_rank(sampling, tmp_path):
    """Sampled text (same seed) is the same over any layout: the logits that
    reach the sampler, whole or as top-k candidates, are the same."""
    args = ["-m", h.testdata("stories260K.gguf"), "-p", "Once upon", "-n", 96, "-q"] + sampling
    one, _ = run_layout(1, 1, args, tmp_path, "s")
    for tp, pp in [(2, 1), (1, 2), (2, 2)]:
        out, _ = run_layout(tp, pp, args, tmp_path, "s")
        assert out == one, f"tp {tp} x pp {pp} sampled other text with {sampling}"


# SmolLM2-135M-Instruct (9 query heads in 3 KV groups, Q4_1): the layouts of
# its issue, and weighted splits; tp 2 gives 2 groups + 1, tp 3 one each, tp 4
# two ranks sharing the first group
SMOLLM2_LAYOUTS = [
    (2, 1, []), (3, 1, []), (4, 1, []), (1, 2, []), (2, 2, []), (1, 3, []),
    (2, 1, ["--tp-weights", "2,1"]), (2, 1, ["--tp-weights", "1,3"]),
    (1, 2, ["--pp-weights", "1,2"]), (2, 2, ["--tp-weights", "2,1", "--pp-weights", "3,2"]),
]


def test_smollm2_layouts_match_one_rank(tmp_path):
    model = h.smollm2()
    args = ["-m", model, "--chat", "-p", "Give me three tips for staying healthy.", "-n", 40,
            "--temp", 0, "-q"]
    _, base = run_layout(1, 1, args, tmp_path, "smol")
    assert len(base) >= 40
    bad = []
    for tp, pp, extra in SMOLLM2_LAYOUTS:
        _, ids = run_layout(tp, pp, args + extra, tmp_path, "smol")
        if ids != base:
            same = next((i for i, (a, b) in enumerate(zip(base, ids)) if a != b), len(base))
            bad.append(f"tp {tp} x pp {pp} {' '.join(extra)}: differs from one rank at token {same}")
    assert not bad, "\n".join(bad)


def test_smollm2_weighted_split_is_uneven(tmp_path):
    """--tp-weights 2,1 gives rank 0 two KV groups and more of every layer."""
    model = h.smollm2()
    p = h.mpirun(2, ["run", "-m", model, "--tp", 2, "--tp-weights", "2,1", "-p", "Hi", "-n", 1,
                     "--temp", 0, "-v"])
    err = p.stderr.decode()
    assert "rank 0: stage 0 layers 0-29, tp 0: query heads 0-5, KV heads 0-1" in err, err
    assert "rank 1: stage 0 layers 0-29, tp 1: query heads 6-8, KV heads 2-2" in err, err
    p = h.mpirun(2, ["run", "-m", model, "--tp", 2, "--tp-weights", "2,1,1", "-p", "Hi"], check=False)
    assert p.returncode != 0 and b"--tp-weights gives 3 values" in p.stderr
    # 4 ranks over 3 KV groups: two share the first (a copy of its KV head each, 2 and 1 of its
    # 3 query heads)
    p = h.mpirun(4, ["run", "-m", model, "--tp", 4, "-p", "Hi", "-n", 1, "--temp", 0, "-v"])
    err = p.stderr.decode()
    for line in ("tp 0: query heads 0-1, KV heads 0-0", "tp 1: query heads 2-2, KV heads 0-0",
                 "tp 2: query heads 3-5, KV heads 1-1", "tp 3: query heads 6-8, KV heads 2-2"):
        assert line in err, err


def test_smollm2_conversation_on_two_ranks():
    """-i under mpirun: stdin reaches rank 0, the other rank follows every turn."""
    import subprocess
    model = h.smollm2()
    lines = b"Hello\nWhat is 2+2?\n"
    args = ["run", "-m", str(model), "-i", "-n", "24", "--temp", "0", "-q"]
    one = subprocess.run([h.shoal_bin()] + args, input=lines, capture_output=True, timeout=120)
    two = h.mpirun(2, args + ["--tp", "2"], input=lines)
    three = h.mpirun(3, args + ["--pp", "3"], input=lines)
    assert one.returncode == 0 and one.stdout.count(b"\n") >= 2, one.stderr
    assert two.stdout == one.stdout and three.stdout == one.stdout
