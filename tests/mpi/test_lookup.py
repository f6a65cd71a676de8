"""Speculative decoding by prompt lookup (`shoal run --lookup N`, issue 22):
greedy decoding with drafts verified several to a step gives one rank's plain
decoding, id for id and every position's logits byte for byte, in the
layouts 1x1, tp 2, pp 2 and 2 x 2, on SmolLM2 with a prompt it copies from
(most drafts accepted) and one it edits (drafts rejected too, so that the
cache rows of rejected tokens are written over); the runs must really have
speculated (drafts accepted, fewer steps than tokens). Kernels that are not
batch-invariant are refused with the reason, as are bad values.
"""
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


def test_lookup_refuses_batch_dependent_kernels(tmp_path):
    if "avx2" not in h.simd_levels():
        pytest.skip("this machine cannot run the AVX2 kernels")
    p = h.run(["run", "-m", h.smollm2(), "--simd", "avx2", "--lookup", 4, "-p", "Hello", "-n", 4], check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode != 0 and "--lookup" in err and "batch" in err, err[-2000:]


@pytest.mark.parametrize("value,needle", [("-1", "--lookup must be"), ("65", "--lookup must be"),
                                          ("8 -b 8", "-b 9")])
def test_lookup_bad_values(value, needle):
    p = h.run(["run", "-m", h.smollm2(), "-p", "Hi", "--lookup"] + value.split(), check=False)
    err = p.stderr.decode(errors="replace")
    assert p.returncode == 2 and needle in err, err[-2000:]
