"""`shoal perplexity` against llama.cpp's perplexity of the same file on the
same text, windows and method (data/perplexity_llamacpp.json, recorded by
tests/model/record_perplexity.py with llama-cpp-python, its version in the
file): the GNU GPL 3 as Debian's base-files ships it, windows of 512, the
second half of each scored.

- One rank: the estimate within 0.5% of llama.cpp's, the token count equal,
  each window's running figure within 1%, the standard error within 5%; for
  SmolLM2 (Q4_1) and Gemma 3 270M (Q4_K_M).
- tp 2 and pp 2: the same printed figures as one rank, to the last digit.
- Bad input: no text, a text too short for two windows, a NUL byte: a
  message and a non-zero exit.
"""
import functools
import hashlib
import json
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

HERE = Path(__file__).resolve().parent
REF = json.loads((HERE / "data" / "perplexity_llamacpp.json").read_text())
TEXT = Path(REF["text"])


@pytest.fixture(scope="module")
def text():
    if not TEXT.exists():
        h.require(f"{TEXT} (Debian's base-files) is not on this machine")
    digest = hashlib.sha256(TEXT.read_bytes()).hexdigest()
    if digest != REF["text_sha256"]:
        h.require(f"{TEXT} is not the text llama.cpp's figures were recorded on (sha256 {digest})")
    return TEXT


def ref_for(model: Path) -> dict:
    for m in REF["models"]:
        if m["file"] == model.name:
            return m
    pytest.fail(f"no recorded perplexity for {model.name}")


def parse(stdout: str, stderr: str):
    running = [float(x) for x in re.findall(r"\[\d+\]([\d.]+)", stdout)]
    m = re.search(r"Final estimate: PPL = ([\d.]+) \+/- ([\d.]+)", stdout)
    t = re.search(r": (\d+) tokens, (\d+) windows? of", stderr)
    assert m and t, stdout + stderr
    return running, float(m.group(1)), float(m.group(2)), int(t.group(1)), int(t.group(2))


def run_ppl(model, text, extra=(), np_=1):
    args = ["perplexity", "-m", model, "-f", text, "-c", REF["n_ctx"], "-t", 1 if np_ > 1 else 2] + list(extra)
    p = h.run(args, timeout=600) if np_ == 1 else h.mpirun(np_, args, timeout=600)
    return p.stdout.decode(), p.stderr.decode()


@pytest.mark.parametrize("which", ["smollm2", "gemma3"])
def test_matches_llamacpp(which, text):
    model = Path(h.smollm2() if which == "smollm2" else h.gemma3())
    ref = ref_for(model)
    assert hashlib.sha256(model.read_bytes()).hexdigest() == ref["sha256"], \
        f"{model} is not the file llama.cpp's figure was recorded on"
    out, err = run_ppl(model, text)
    running, ppl, se, n_tok, n_win = parse(out, err)
    print(f"{model.name}: shoal {ppl:.4f} +/- {se:.4f}, llama.cpp {ref['ppl']:.4f} +/- {ref['stderr']:.4f} "
          f"({ppl / ref['ppl'] - 1:+.3%})")
    assert n_tok == ref["n_tokens"] and n_win == ref["n_chunks"], (n_tok, n_win, ref)
    assert abs(ppl / ref["ppl"] - 1) < 0.005, f"PPL {ppl} against llama.cpp's {ref['ppl']}"
    assert abs(se / ref["stderr"] - 1) < 0.05, f"standard error {se} against llama.cpp's {ref['stderr']}"
    assert len(running) == ref["n_chunks"]
    for k, (a, b) in enumerate(zip(running, ref["running_ppl"])):
        assert abs(a / b - 1) < 0.01, f"window {k + 1}: running PPL {a} against llama.cpp's {b}"


@functools.cache
def one_rank_ppl(model, text):
    """One rank's printed figures for the layouts to equal (run once for both)."""
    return run_ppl(model, text, ["--chunks", 3, "-t", 1])[0]


@pytest.mark.parametrize("layout", [["--tp", 2], ["--pp", 2]])
def test_layouts_give_one_ranks_figure(layout, text):
    model = h.smollm2()
    one = one_rank_ppl(model, text)
    many = run_ppl(model, text, ["--chunks", 3] + layout, np_=2)[0]
    assert "Final estimate" in one and many == one, f"{layout}: {many!r} against one rank's {one!r}"


def test_bad_input(tmp_path, text):
    model = h.smollm2()
    p = h.run(["perplexity", "-m", model], check=False)
    assert p.returncode == 2 and "-f FILE" in p.stderr.decode()
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of text.\n")
    p = h.run(["perplexity", "-m", model, "-f", short], check=False)
    assert p.returncode == 1 and "needs at least 1024" in p.stderr.decode() and str(short) in p.stderr.decode()
    nul = tmp_path / "nul.txt"
    nul.write_bytes(text.read_bytes()[:5000] + b"\0" + text.read_bytes()[5000:])
    p = h.run(["perplexity", "-m", model, "-f", nul], check=False)
    assert p.returncode == 1 and "a NUL byte at 5000" in p.stderr.decode()
    p = h.run(["perplexity", "-m", model, "-f", tmp_path / "absent.txt"], check=False)
    assert p.returncode == 1 and "absent.txt" in p.stderr.decode()
