"""Many ranks under a real mpirun (oversubscribed on this 2-core machine):
every tp x pp layout must produce, token for token, what one rank produces,
on stories260K (and so the run.c oracles) and on synthetic models with
Q8_0, Q4_0 and F16 weights, grouped-query attention and uneven head splits;
the all-reduce payload types (--comm-dtype) against one rank. Lengths count
the generated ids: --ids-out writes the prompt's first.
"""
import re
import sys
from pathlib import Path

import numpy as np
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
    # float weights summed in f64 runs (shoal_weight.f64_block): attn_output's of 64 (its heads'
    # width), ffn_down's of 256 (8 of them: the planner cuts there)
    "bf16": ["--type", "bf16", "--dim", 256, "--layers", 4, "--heads", 4, "--kv-heads", 2, "--ffn", 2048],
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


@pytest.mark.parametrize("name", ["f16", "bf16"])
def test_float_layouts_give_one_ranks_logits(name, synth_models, tmp_path):
    """The float models' logits, every position, byte for byte as one rank's: ids alone would
    not see a row-parallel sum that parts from one rank's in its last bits (f64 runs cut
    elsewhere than one rank cuts them, say)."""
    model = ["-m", synth_models[name]]
    run = ["-p", "the quick brown fox", "-n", 8, "--temp", 0, "--ignore-eos", "-t", 1]
    base = h.layout_run(model, run, tmp_path, f"{name}-1")
    for tp, pp in [(2, 1), (4, 1), (2, 2)]:
        got = h.layout_run(model, run, tmp_path, f"{name}-{tp}x{pp}", np_=tp * pp, extra=["--tp", tp, "--pp", pp])
        h.assert_same_run(f"{name} tp {tp} x pp {pp}", got, base[:2])


@pytest.mark.parametrize("name", list(SYNTH))
def test_synthetic_layouts_match_one_rank(name, synth_models, tmp_path):
    args = ["-m", synth_models[name], "-p", "the quick brown fox", "-n", 48, "--temp", 0,
            "--ignore-eos", "-q"]
    _, base = run_layout(1, 1, args, tmp_path, name)
    n_p = len(h.prompt_ids(args, tmp_path, name))  # --ids-out writes the prompt's ids first
    assert len(base) == n_p + 48, f"{name}: one rank generated {len(base) - n_p} tokens, not 48"
    layouts = LAYOUTS[1:] if name != "uneven" else [(2, 1), (2, 2), (3, 1)]
    for tp, pp in layouts:
        _, ids = run_layout(tp, pp, args, tmp_path, name)
        same = next((i for i, (a, b) in enumerate(zip(base, ids)) if a != b), len(base))
        assert ids == base, f"{name}: tp {tp} x pp {pp} differs from one rank at token {same}"


# --comm-dtype over tp 2, on the f16 model: its activations stay f32, so how far the logits
# move follows the wire's rounding (on the q8_0 model any change re-rounds the 8-bit
# activations, and every lossy wire moves them about as far).
WIRE_ARGS = ["-p", "the quick brown fox", "-n", 32, "--temp", 0, "--ignore-eos"]
WIRE_GEN = 32
WIRE_BOS = 1              # shoal synth's tokenizer.ggml.bos_token_id
WIRE_BYTES = {"f64": 8, "f32": 4, "f16": 2, "bf16": 2, "q8": 34 / 32}  # a value, on the wire
# the largest |logit difference| from one rank's, over the largest |logit|: about 4 times
# what each wire gave here (f32 6e-5, f16 5e-4, bf16 3e-3, q8 1.2e-2: for f16 and bf16 their
# unit roundoff, 2^-11 and 2^-8)
WIRE_TOL = {"f64": 0.0, "f32": 3e-4, "f16": 2e-3, "bf16": 1.2e-2, "q8": 4e-2}
WIRE_FIRST = 8            # generated tokens a lossy wire must leave as one rank's
WIRE_AGREE = 28           # of the 32 generated positions fed one rank's ids: the same argmax


def prompt_sent_per_token(err: str) -> float:
    """Rank 0's bytes sent per token of the prompt (`shoal run -v`)."""
    m = re.search(r"rank 0 \(stage 0, tp 0\): .*\| prompt ([0-9.]+ \w+)/token", err)
    assert m, f"no prompt bytes per token from rank 0 in:\n{err[-2000:]}"
    return h.parse_size(m.group(1))


@pytest.fixture(scope="module")
def wire_base(synth_models, tmp_path_factory):
    """One rank's run of WIRE_ARGS (ids, logits of every position), how many of its ids are the
    prompt's, and the same ids fed back as a prompt (--prompt-ids, BOS first, generating
    nothing): one rank's logits of every position and rank 0's bytes a token over tp 2 on f64."""
    tmp = tmp_path_factory.mktemp("wire")
    model = ["-m", synth_models["f16"]]
    n_p = len(h.prompt_ids(model + WIRE_ARGS, tmp))
    ids, logits, err = h.layout_run(model, WIRE_ARGS, tmp, "one")
    assert len(ids) == n_p + WIRE_GEN, f"one rank generated {len(ids) - n_p} tokens, not {WIRE_GEN}"
    fed = ["--prompt-ids", ",".join(map(str, [WIRE_BOS] + ids)), "-n", 0, "--no-echo"]
    _, fed_logits, _ = h.layout_run(model, fed, tmp, "one-fed")
    _, _, err64 = h.layout_run(model, fed, tmp, "f64-fed", np_=2, extra=["--tp", 2, "--comm-dtype", "f64"])
    return dict(model=model, n_p=n_p, ids=ids, logits=logits, fed=fed, fed_logits=fed_logits,
                bytes_f64=prompt_sent_per_token(err64))


def as_rows(raw: bytes) -> np.ndarray:
    return np.frombuffer(raw, dtype="<f4").reshape(-1, 512)  # the synthetic models' vocab


@pytest.mark.parametrize("wire", ["f64", "f32", "f16", "bf16", "q8"])
def test_compressed_all_reduce_runs(wire, wire_base, tmp_path):
    """tp 2 with the all-reduce payloads as f64, f32, f16, bf16 or q8, against one rank, on
    the generated tokens (--ids-out writes the prompt's first: those say nothing). f64 is
    one rank's run, ids and logits, byte for byte (the design: f64 sums are what one rank
    computes); f32 gives one rank's tokens (its WIRE_TOL is under half the smallest top-2
    margin of one rank's logits here); the lossy wires its first WIRE_FIRST. And every
    wire really is on the wire: rank 0 sends its bytes per value (against f64's 8), the
    logits move (every wire but f64), but by at most WIRE_TOL of the largest, at every
    position, and fed one rank's ids the argmax is one rank's at WIRE_AGREE of 32 positions
    at least."""
    b = wire_base
    n_p, base = b["n_p"], b["ids"]
    extra = ["--tp", 2, "--comm-dtype", wire]
    ids, logits, err = h.layout_run(b["model"], WIRE_ARGS, tmp_path, wire, np_=2, extra=extra)
    assert ids[:n_p] == base[:n_p], f"--comm-dtype {wire}: the prompt's ids differ"
    gen, want = ids[n_p:], base[n_p:]
    assert len(gen) == WIRE_GEN, f"--comm-dtype {wire}: {len(gen)} tokens generated, not {WIRE_GEN}"
    same = next((i for i, (x, y) in enumerate(zip(gen, want)) if x != y), WIRE_GEN)
    print(f"--comm-dtype {wire}: {same} of {WIRE_GEN} generated tokens as one rank's")
    if wire == "f64":
        assert ids == base, f"--comm-dtype f64: generated token {same} differs from one rank's"
        assert logits == b["logits"], "--comm-dtype f64: the same ids, but the logits differ from one rank's"
    elif wire == "f32":
        assert gen == want, f"--comm-dtype f32: generated token {same} differs from one rank's"
    else:
        assert same >= WIRE_FIRST, \
            f"--comm-dtype {wire}: generated token {same} differs from one rank's: {gen[:WIRE_FIRST]} " \
            f"against {want[:WIRE_FIRST]}"

    # one rank's ids fed to both: every position's logits, from the same inputs
    _, fed, err = h.layout_run(b["model"], b["fed"], tmp_path, wire + "-fed", np_=2, extra=extra)
    one, got = as_rows(b["fed_logits"]), as_rows(fed)
    assert got.shape == one.shape, f"--comm-dtype {wire}: {got.shape[0]} positions' logits, not {one.shape[0]}"
    rel = float(np.max(np.abs(got - one))) / float(np.max(np.abs(one)))
    rows = slice(n_p, n_p + WIRE_GEN)  # (BOS first: position n_p predicts the first generated token)
    agree = int(np.sum(got[rows].argmax(axis=1) == one[rows].argmax(axis=1)))
    ratio = prompt_sent_per_token(err) / b["bytes_f64"]
    print(f"--comm-dtype {wire}: logits within {rel:.2e} of the largest (at most {WIRE_TOL[wire]:.2g}), "
          f"argmax as one rank's at {agree} of {WIRE_GEN}, {ratio:.3f} of f64's bytes")
    assert abs(ratio / (WIRE_BYTES[wire] / 8) - 1) < 0.05, \
        f"--comm-dtype {wire}: rank 0 sent {ratio:.3f} of f64's bytes a token, not {WIRE_BYTES[wire] / 8:.3f}"
    assert rel <= WIRE_TOL[wire], \
        f"--comm-dtype {wire}: logits {rel:.2e} of the largest away from one rank's (at most {WIRE_TOL[wire]:.2g})"
    if wire != "f64":
        assert rel > 0, f"--comm-dtype {wire}: logits exactly one rank's: was the payload rounded to {wire}?"
    assert agree >= WIRE_AGREE, f"--comm-dtype {wire}: argmax as one rank's at only {agree} of {WIRE_GEN}"


def test_verbose_reports_every_rank():
    p = h.mpirun(4, ["run", "-m", h.testdata("stories260K.gguf"), "-n", 16, "--temp", 0, "--tp", 2,
                     "--pp", 2, "-v"])
    err = p.stderr.decode()
    for r in range(4):
        assert re.search(rf"rank {r} \(stage {r // 2}, tp {r % 2}\): a decode token [\d.]+ ms computing, [\d.]+ ms "
                         rf"waiting, [\d.]+ KiB sent", err), err
        assert f"rank {r}: stage {r // 2} layers" in err, err
    assert p.stdout.count(b"Once upon a time") == 1, "only rank 0 prints"


@pytest.mark.parametrize("np_,args,msg", [
    (2, ["--tp", 3], "--tp 3 does not divide the 2 ranks running (start a multiple of 3 ranks"),
    (2, ["--tp", 2, "--pp", 2], "--tp 2 x --pp 2 does not match the 2 ranks"),
    (2, ["--pp", 9], "--pp 9 does not divide the 2 ranks running"),
    (3, ["--tp", 2], "--tp 2 does not divide the 3 ranks running (start a multiple of 2 ranks"),
])
def test_layout_errors(np_, args, msg):
    p = h.mpirun(np_, ["run", "-m", h.testdata("stories260K.gguf"), "-n", 4] + args, check=False)
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
    n_p = len(h.prompt_ids(args, tmp_path, "smol"))  # the chat template's ids come first
    assert len(base) == n_p + 40, f"one rank generated {len(base) - n_p} tokens, not 40"
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
