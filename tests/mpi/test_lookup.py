"""Speculative decoding (issue 22), by prompt lookup (`shoal run --lookup N`)
and with a draft model (`--draft-model FILE`: SmolLM2 Q4_1 drafting for
itself requantized to Q8_0, the only real pair these machines have):
greedy decoding with drafts verified several to a step gives one rank's plain
decoding, id for id and every position's logits byte for byte, in the
layouts 1x1, tp 2, pp 2 and 2 x 2, on SmolLM2 with a prompt it copies from
(most drafts accepted) and one it edits (drafts rejected too, so that the
cache rows of rejected tokens are written over); with offload (streamed
layers); and Gemma 3, whose windowed layers keep rings of the window and a
batch (-b 16 here) that a long list wraps while drafts are rejected. The runs
must really have speculated (drafts accepted, fewer steps than tokens); on
AVX2's kernels too. Bad values are refused.
"""
import random
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2)]

COPY = ("Copy this sentence exactly, word for word: The quick brown fox jumps over the lazy dog "
        "while the cat sleeps on the warm mat near the old wooden door.")
EDIT = """Rename the variable count to total in this function and return the code.

def summarize(items):
    count = 0
    for item in items:
        if item.valid:
            count += item.value
    print("count is", count)
    return count

Here is the function with count renamed to total:

def summarize(items):
"""

STATS = re.compile(r"lookup: (\d+) of (\d+) decode steps drafted, (\d+) tokens drafted, (\d+) accepted")
GEN = re.compile(r"generation (\d+) tokens, (\d+) decode steps")


def prompt_args(name, tmp):
    if name == "copy":
        return ["--chat", "-p", COPY, "-n", 48]
    if name.startswith("list"):  # earlier lines propose the next's words, and wrong numbers
        r = random.Random(5)
        f = tmp / f"{name}.txt"
        lines = 32 if name == "list32" else 45
        f.write_text("".join(f"Line {i}: the value of item {i} is {r.randint(10, 99)}.\n" for i in range(1, lines + 1)))
        return ["-f", f, "-n", 64]
    f = tmp / "edit.txt"
    f.write_text(EDIT)
    return ["-f", f, "-n", 40]


def layout_args(tp, pp):
    return [] if tp * pp == 1 else ["--tp", tp, "--pp", pp]


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """One rank's plain greedy decoding of each prompt: (ids, logits)."""
    tmp = tmp_path_factory.mktemp("lookup_base")
    out = {}
    for name in ("copy", "edit"):
        ids, logits, err = h.layout_run(["-m", h.smollm2()], prompt_args(name, tmp) + ["--temp", 0, "-t", 2],
                                        tmp, f"base_{name}")
        assert "lookup:" not in err
        out[name] = (ids, logits)
    return out


def speculated(err, case):
    """The run's lookup figures, checked to show speculation happened."""
    m, g = STATS.search(err), GEN.search(err)
    assert m and g, f"{case}: no lookup or generation figures:\n{err[-2000:]}"
    spec_steps, steps, drafted, accepted = (int(x) for x in m.groups())
    n_gen, n_steps = (int(x) for x in g.groups())
    assert n_steps == steps
    assert spec_steps > 0 and drafted > 0 and accepted > 0, f"{case}: nothing was drafted or accepted: {m.group(0)}"
    # every accepted draft is a token without a step of its own
    assert n_steps == n_gen - 1 - accepted or n_steps == n_gen - accepted, f"{case}: {g.group(0)}, {m.group(0)}"
    return drafted, accepted


@pytest.mark.parametrize("prompt", ["copy", "edit"])
@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_lookup_gives_decodings_tokens_and_logits(tp, pp, prompt, base, tmp_path):
    case = f"--lookup 8, tp {tp} x pp {pp}, {prompt} prompt"
    threads = 2 if tp * pp == 1 else 1
    got = h.layout_run(["-m", h.smollm2()], prompt_args(prompt, tmp_path) + ["--temp", 0, "-t", threads],
                       tmp_path, f"lookup_{prompt}_{tp}x{pp}", np_=tp * pp,
                       extra=["--lookup", 8] + layout_args(tp, pp))
    h.assert_same_run(case, got, base[prompt])
    drafted, accepted = speculated(got[2], case)
    if prompt == "copy":  # the model copies the sentence: most drafts are right
        assert accepted >= 0.6 * drafted, f"{case}: {accepted} of {drafted} drafts accepted"
    else:  # and some wrong: rejected drafts' cache rows were written over
        assert accepted < drafted, f"{case}: every draft accepted, none rejected"


def test_lookup_top1_between_ranks(base, tmp_path):
    """Without --logits-out, greedy ranks send rank 0 each row's best token alone (top-k 1):
    the same ids with drafts verified on those."""
    ids = tmp_path / "ids.txt"
    p = h.mpirun(4, ["run", "-m", h.smollm2(), "--tp", 2, "--pp", 2, "-t", 1, "--temp", 0, "--lookup", 6,
                     "--ids-out", ids] + prompt_args("copy", tmp_path))
    assert h.read_ids(ids) == base["copy"][0]
    speculated(p.stderr.decode(errors="replace"), "tp 2 x pp 2, top-1 candidates")


def test_lookup_on_avx2(base, tmp_path):
    """AVX2's kernels are batch-invariant too (its Q8_0 and Q4_0 tiles' two banks): the same
    ids and logits with --lookup as without, both on AVX2."""
    if "avx2" not in h.simd_levels():
        pytest.skip("this machine cannot run the AVX2 kernels")
    run = prompt_args("edit", tmp_path) + ["--temp", 0, "-t", 2, "--simd", "avx2"]
    plain = h.layout_run(["-m", h.smollm2()], run, tmp_path, "avx2_plain")
    got = h.layout_run(["-m", h.smollm2()], run, tmp_path, "avx2_lookup", extra=["--lookup", 8])
    h.assert_same_run("--simd avx2 --lookup 8", got, plain[:2])
    speculated(got[2], "avx2")


@pytest.mark.parametrize("value,needle", [("-1", "--lookup must be"), ("65", "--lookup must be"),
                                          ("8 -b 8", "-b 9")])
def test_lookup_bad_values(value, needle):
    p = h.run(["run", "-m", h.smollm2(), "-p", "Hi", "--lookup"] + value.split(), check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2 and needle in err, err[-2000:]


@pytest.mark.parametrize("tp,extra", [(1, ["--device-mem", "280M"]), (2, ["--device-mem", "170M"])])
def test_lookup_with_offload(tp, extra, tmp_path):
    """Streamed layers (the CPU's device arena, smaller than the model) under --lookup."""
    run = prompt_args("edit", tmp_path) + ["--temp", 0, "-t", 2 if tp == 1 else 1]
    base = h.layout_run(["-m", h.smollm2()], run, tmp_path, "offload_base")
    got = h.layout_run(["-m", h.smollm2()], run, tmp_path, f"offload_{tp}", np_=tp,
                       extra=["--lookup", 8] + extra + layout_args(tp, 1))
    assert re.search(r"offload \(rank 0\): \d+ of 30 layers resident, [1-9]\d* streamed", got[2]), got[2][-2000:]
    h.assert_same_run(f"--lookup 8, tp {tp}, {' '.join(extra)}", got, base)
    speculated(got[2], f"tp {tp} offloaded")


def test_lookup_gemma3_rings(tmp_path):
    """Gemma 3's sliding-window layers keep rings of 512 + 15 positions at -b 16: the 560-token
    list wraps them, and refused drafts write ring slots that later steps write over. (One rank:
    tensor parallelism changes nothing in the rings, and each run writes ~600 MB of logits.)"""
    run = prompt_args("list32", tmp_path) + ["--temp", 0, "-b", 16, "-t", 2]
    base = h.layout_run(["-m", h.gemma3()], run, tmp_path, "gemma_base")
    assert len(base[1]) // (4 * 262144) > 512 + 16, "the sequence does not wrap the rings"
    got = h.layout_run(["-m", h.gemma3()], run, tmp_path, "gemma_lookup", extra=["--lookup", 8])
    h.assert_same_run("Gemma 3, --lookup 8", got, base)
    drafted, accepted = speculated(got[2], "Gemma 3")
    assert accepted < drafted, "no draft was rejected"


@pytest.fixture(scope="module")
def smollm2_q8(tmp_path_factory):
    """SmolLM2 requantized to Q8_0 (shoal quantize): the model the Q4_1 file drafts for."""
    out = tmp_path_factory.mktemp("draft") / "smollm2-q8_0.gguf"
    h.run(["quantize", h.smollm2(), out, "Q8_0", "--allow-requantize", "-q"])
    return out


@pytest.mark.parametrize("tp,pp", LAYOUTS)
def test_draft_model_gives_decodings_tokens_and_logits(tp, pp, smollm2_q8, tmp_path):
    run = prompt_args("edit", tmp_path) + ["--temp", 0, "-t", 2 if tp * pp == 1 else 1]
    base = h.layout_run(["-m", smollm2_q8], run, tmp_path, "draft_base")
    got = h.layout_run(["-m", smollm2_q8], run, tmp_path, f"draft_{tp}x{pp}", np_=tp * pp,
                       extra=["--draft-model", h.smollm2(), "--draft-max", 6] + layout_args(tp, pp))
    case = f"--draft-model, tp {tp} x pp {pp}"
    h.assert_same_run(case, got, base)
    m = re.search(r"draft model: \d+ of (\d+) decode steps drafted, (\d+) tokens drafted, (\d+) accepted", got[2])
    assert m, got[2][-2000:]
    steps, drafted, accepted = (int(x) for x in m.groups())
    # the same model at 4 bits: most of its drafts are right, some not
    assert 0.5 * drafted <= accepted < drafted, f"{case}: {accepted} of {drafted} drafts accepted"
    assert steps < len(base[0]) - 1, f"{case}: {steps} steps"


def test_draft_model_needs_the_same_vocabulary(smollm2_q8):
    p = h.run(["run", "-m", smollm2_q8, "--draft-model", h.testdata("stories260K.gguf"), "-p", "Hi", "-n", 4],
              check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "stories260K.gguf" in err and "vocabulary" in err, err[-2000:]


@pytest.mark.parametrize("args,needle", [(["--draft-max", 4], "--draft-max goes with --draft-model"),
                                         (["--draft-model", "x.gguf", "--lookup", 4], "not both"),
                                         (["--draft-model", "/nonexistent/draft.gguf"], "/nonexistent/draft.gguf")])
def test_draft_model_bad_options(args, needle):
    p = h.run(["run", "-m", h.smollm2(), "-p", "Hi", "-n", 4] + args, check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and needle in err, err[-2000:]
