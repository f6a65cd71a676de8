"""Lanes (shoal_backend_run_lanes): with two threads, a step of eight tokens
or more runs cut into two runs of tokens, one per thread, each through every
layer alone. A prompt is one sequence, so the cut falls inside it, and every
layer waits for both lanes to store their keys and values before either
attends (the barrier). The kernels of every level (scalar, AVX2, AVX-512)
give a token the same bits whatever its batch, so lanes change nothing: the logits
of every prompt position and every generated token must equal, byte for
byte, those of the same run with lanes off (SHOAL_CPU_LANES=0), on synthetic
models of every weight type shoal packs differently and on the default
model. `-v` says how many steps ran cut, so that the test knows the lanes
ran.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

# 42 tokens on the synthetic vocabularies, 10 on SmolLM2's: at least 8 (two lanes of 4), at
# most 64 (a prompt cut inside waits at every layer, which pays on short ones only)
PROMPT = "the quick brown fox jumps over the lazy dog"
SHAPE = ["--dim", 128, "--layers", 3, "--heads", 8, "--kv-heads", 2, "--ffn", 320, "--vocab", 400]


def run(model, out, lanes, simd="auto", n=8):
    env = {**os.environ, "SHOAL_CPU_LANES": lanes}
    p = h.run(["run", "-m", model, "-p", PROMPT, "-n", n, "--temp", 0, "-t", 2, "--simd", simd, "-v",
               "--logits-out", out], env=env)
    err = p.stderr.decode()
    cut = [ln for ln in err.splitlines() if "ran cut into lanes" in ln]
    return p.stdout, Path(out).read_bytes(), int(cut[0].split()[1]) if cut else 0


def check_same(model, tmp_path, simd="auto"):
    text1, logits1, cut1 = run(model, tmp_path / "on.txt", "1", simd)
    text0, logits0, cut0 = run(model, tmp_path / "off.txt", "0", simd)
    assert cut1 >= 1, "the prompt step did not run in lanes"
    assert cut0 == 0, f"SHOAL_CPU_LANES=0, yet {cut0} steps ran in lanes"
    assert len(logits1) > 1000
    assert logits1 == logits0, "the logits with lanes differ from those without"
    assert text1 == text0


@pytest.mark.parametrize("wtype", ["f32", "f16", "bf16", "q8_0", "q4_1", "q5_0", "q4_k", "q6_k", "iq4_xs"])
def test_lanes_change_nothing(tmp_path, wtype):
    model = tmp_path / f"m-{wtype}.gguf"
    h.run(["synth", "-o", model, "--type", wtype, "--seed", 5] + [str(a) for a in SHAPE] +
          (["--dim", 256, "--ffn", 512] if wtype in ("q4_k", "q6_k", "iq4_xs") else []))
    check_same(model, tmp_path)


def test_lanes_change_nothing_smollm2(tmp_path):
    check_same(h.smollm2(), tmp_path)


@pytest.mark.parametrize("wtype", ["q4_1", "q8_0", "q4_0"])
def test_scalar_and_avx2_cut_too(tmp_path, wtype):
    """The other levels: scalar, and AVX2, whose Q8_0 and Q4_0 tiles sum an output in one order
    whatever their shape (two banks in every tile)."""
    model = tmp_path / "m.gguf"
    h.run(["synth", "-o", model, "--type", wtype, "--seed", 5] + [str(a) for a in SHAPE])
    if wtype == "q4_1":
        check_same(model, tmp_path, "scalar")
    if "avx2" not in h.simd_levels():
        pytest.skip("this processor has no AVX2")
    check_same(model, tmp_path, "avx2")
