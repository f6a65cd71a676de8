"""The whole forward pass against an independent float64 reference
(tests/ref/reference.py, numpy, reading the GGUF with the `gguf` package):
synthetic models written by `shoal synth` in every weight type, with
grouped-query attention, both RoPE modes (llama: adjacent pairs; qwen2:
halves, with Q/K/V biases), tied and separate output heads.

shoal's logits for every position of a prompt plus a greedy continuation
are compared with the reference's for the same tokens.

Tolerances: float weights (f32, f16, bf16) are computed in f32 with f32
activations, so agreement is to f32 rounding (the text format keeps 7
digits): atol 2e-4 on logits of magnitude ~10. Q8_0/Q4_0 weights are
multiplied with activations rounded to 8 bits per block of 32 (as llama.cpp
does), an error of ~0.5% per matmul that accumulates over the layers:
atol = 5% of the largest |logit|, and the argmax must agree (up to ties
within that tolerance).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ref"))
import shoal_harness as h  # noqa: E402
import compare_logits  # noqa: E402
import reference  # noqa: E402

SHAPES = {
    # name: synth flags
    "gqa": ["--dim", 128, "--layers", 3, "--heads", 8, "--kv-heads", 2, "--ffn", 320, "--vocab", 400],
    "mha": ["--dim", 96, "--layers", 2, "--heads", 3, "--kv-heads", 3, "--ffn", 256, "--vocab", 320],
    "tied": ["--dim", 64, "--layers", 2, "--heads", 4, "--kv-heads", 1, "--ffn", 192, "--vocab", 300, "--tied"],
    "qwen2": ["--arch", "qwen2", "--dim", 128, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--ffn", 256,
              "--vocab", 350],
    "headdim": ["--dim", 64, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--head-dim", 32, "--ffn", 128,
                "--vocab", 300],
}
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0"]


PROMPT = "the quick brown fox jumps over"


def run_shoal(tmp_path, model, extra=()):
    ids, logits = tmp_path / "ids.txt", tmp_path / "logits.txt"
    h.run(["run", "-m", model, "-p", PROMPT, "-n", 6, "--temp", 0, "--kv-type", "f32",
           "--ids-out", ids, "--logits-out", logits, "-b", 5] + list(extra))
    mine = compare_logits.parse_logits_file(str(logits))
    tokens = [1] + h.read_ids(ids)[:-1]  # BOS, prompt, generated but the last (never fed)
    assert [mine[p][0] for p in sorted(mine)] == tokens
    return mine, tokens


def reference_logits(model, tokens):
    want = reference.Reference(reference.load_model(str(model))).forward(tokens)
    return {i: (t, want[i]) for i, t in enumerate(tokens)}


@pytest.mark.parametrize("wtype", TYPES)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_forward_matches_reference(tmp_path, shape, wtype):
    """Every SIMD level this machine runs (scalar included), one and three threads.

    The levels are not compared with each other for quantized weights: a
    difference in the last bit of an activation can flip its 8-bit rounding,
    and the flip then persists in the KV cache, so two correct kernels may
    differ by ~0.1 on later positions; each must be within tolerance of the
    reference instead. A level that greedily picks another token at a near
    tie would feed different tokens: the reference is then rerun on those."""
    model = tmp_path / f"{shape}_{wtype}.gguf"
    h.run(["synth", "-o", model, "--type", wtype, "--seed", 11] + SHAPES[shape])
    refs = {}
    for simd in h.simd_levels():
        for threads in (1, 3):
            mine, tokens = run_shoal(tmp_path, model, ["--simd", simd, "-t", threads])
            key = tuple(tokens)
            if key not in refs:
                refs[key] = reference_logits(model, tokens)
            ref = refs[key]
            if wtype in ("q8_0", "q4_0"):
                atol = 0.05 * max(abs(v).max() for _, v in ref.values())
            else:
                atol = 2e-4
            assert compare_logits.compare(mine, ref, atol=atol, rtol=0,
                                          names=(f"shoal --simd {simd} -t {threads}", "reference"))
