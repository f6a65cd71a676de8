"""The whole forward pass against an independent float64 reference
(tests/ref/reference.py, numpy, reading the GGUF with the `gguf` package):
synthetic models written by `shoal synth` in every weight type, with
grouped-query attention, both RoPE modes (llama: adjacent pairs; qwen2:
halves, with Q/K/V biases), tied and separate output heads, and the
families that change the block: qwen3 (per-head Q/K norms), gemma3
(those, norms after the attention and the FFN, a GELU gate, embeddings
times sqrt(dim), and a window of 8 positions on all layers but the sixth,
with their own rope base; the prompt and its continuation are longer), and
mixtures of experts (qwen3moe with 8 experts, 2 a token; Mixtral's layout
of llama with 4, 2 a token).

shoal's logits for every position of a prompt plus a greedy continuation
are compared with the reference's for the same tokens.

Tolerances: F32 and F16 weights are computed in f32 with f32 activations,
so agreement is to f32 rounding (the text format keeps 7 digits): atol 2e-4
on logits of magnitude ~10. BF16 weights meet activations rounded to bf16
(as llama.cpp's do), which the reference rounds the same way: like the 8-bit
ones below, a value within f32 noise of a rounding boundary can flip.

Q8_0, Q4_0 and Q4_1 weights are multiplied with activations rounded to 8
bits per block of 32 (as llama.cpp does); the reference rounds them the same
way (act_quant: the codes, the f16 scales, Q4_1's kept block sums), in
float64 otherwise. The two then agree to f32 rounding (~3e-7 of the largest
|logit|) until a rounding flip: an activation within f32 noise of an 8-bit
rounding boundary that rounds the other way. A flip persists in the KV cache,
so every later position carries 8-bit noise (~1e-2). Hence: up to the first
position that differs by more than EXACT x the largest |logit|, agreement to
EXACT (and that prefix is at least position 0, which reads every weight);
after it, LOOSE. Every weight 1% too large puts ~1e-2 on every position, so
it fails at position 0 (each test checks that it does).
"""
import sys
from pathlib import Path

import numpy as np
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
    # per-head Q/K norms, heads wider than dim / heads
    "qwen3": ["--arch", "qwen3", "--dim", 128, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--head-dim", 48,
              "--ffn", 256, "--vocab", 350],
    # and norms after attention and FFN, GELU, scaled embeddings, one KV head, a window of 8
    # positions on layers 0-4 and 6 (rope base 10000), layer 5 global: the prompt is longer
    "gemma3": ["--arch", "gemma3", "--dim", 128, "--layers", 7, "--heads", 4, "--kv-heads", 1, "--head-dim", 64,
               "--ffn", 256, "--vocab", 350, "--window", 8, "--tied", "--rope-base", 1000000],
    # mixtures of experts: Qwen3-MoE's (8 experts, 2 a token) and Mixtral's llama (4, 2)
    "qwen3moe": ["--arch", "qwen3moe", "--dim", 128, "--layers", 2, "--heads", 4, "--kv-heads", 2,
                 "--head-dim", 32, "--ffn", 64, "--experts", 8, "--experts-used", 2, "--vocab", 350],
    "mixtral": ["--dim", 128, "--layers", 2, "--heads", 4, "--kv-heads", 1, "--ffn", 96, "--experts", 4,
                "--experts-used", 2, "--vocab", 320],
}
TYPES = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1"]
QUANTIZED = ("q8_0", "q4_0", "q4_1", "bf16")  # activations rounded: flips possible (below)
EXACT, LOOSE = 1e-5, 0.05  # of the largest |logit|


PROMPT = "the quick brown fox jumps over"


def run_shoal(tmp_path, model, extra=()):
    ids, logits = tmp_path / "ids.txt", tmp_path / "logits.txt"
    h.run(["run", "-m", model, "-p", PROMPT, "-n", 6, "--temp", 0, "--kv-type", "f32",
           "--ids-out", ids, "--logits-out", logits, "-b", 5] + list(extra))
    mine = compare_logits.parse_logits_file(str(logits))
    tokens = [1] + h.read_ids(ids)[:-1]  # BOS, prompt, generated but the last (never fed)
    assert [mine[p][0] for p in sorted(mine)] == tokens
    return mine, tokens


def reference_logits(model, tokens, scale_weights=1.0):
    m = reference.load_model(str(model))
    if scale_weights != 1.0:
        for name, w in m.weights.items():
            if w.ndim >= 2:
                m.weights[name] = w * scale_weights
        for name in m.block_mins:
            m.block_mins[name] = m.block_mins[name] * scale_weights
    want = reference.Reference(m, act_quant=True).forward(tokens)
    return {i: (t, want[i]) for i, t in enumerate(tokens)}


def exact_prefix(mine, ref, exact):
    """The positions before the first one that differs by more than exact."""
    out = set()
    for p in sorted(mine):
        if np.abs(np.asarray(mine[p][1]) - ref[p][1]).max() > exact:
            break
        out.add(p)
    return out


def check_quantized(mine, ref, names):
    largest = max(abs(v).max() for _, v in ref.values())
    prefix = exact_prefix(mine, ref, EXACT * largest)
    assert prefix, f"{names[0]}: position 0 differs from the reference by more than {EXACT:g} of the largest |logit|"
    assert compare_logits.compare(mine, ref, atol=EXACT * largest, rtol=0, positions=prefix,
                                  strict_argmax=True, names=names)
    assert compare_logits.compare(mine, ref, atol=LOOSE * largest, rtol=0, names=names)
    return prefix


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
            names = (f"shoal --simd {simd} -t {threads}", "reference")
            if wtype not in QUANTIZED:
                assert compare_logits.compare(mine, ref, atol=2e-4, rtol=0, names=names)
                continue
            prefix = check_quantized(mine, ref, names)
            print(f"{names[0]}: exact to position {max(prefix)} of {max(mine)}")
            if threads == 1 and simd == "scalar":
                # the tolerance is tight enough to see every weight 1% too large
                big = reference_logits(model, tokens, scale_weights=1.01)
                largest = max(abs(v).max() for _, v in big.values())
                assert not exact_prefix(mine, big, EXACT * largest), "1% larger weights pass"
