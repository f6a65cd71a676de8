"""Tests of the float64 numpy reference (tests/ref/reference.py) and of
compare_logits.py.  Run:  python3 -m pytest -s tests/ref

The stories260K checks need the shared test data (found through the
SHOAL_TESTDATA environment variable, else ../shared/testdata from the project
root); they skip, naming the missing file, when it is absent (in CI mode,
SHOAL_CI_STRICT=1, they fail saying so).  The synthetic
checks write tiny GGUF files with gguf.GGUFWriter and need nothing else.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import gguf  # noqa: E402
from gguf import GGMLQuantizationType as QT  # noqa: E402

import compare_logits  # noqa: E402
import reference  # noqa: E402
import shoal_harness  # noqa: E402  (require: a skip, or in CI mode a failure)

REFERENCE_PY = HERE / "reference.py"
COMPARE_PY = HERE / "compare_logits.py"

# Tolerance asserted against run.c's float32 logits (values printed with 7
# significant digits, so ~1e-5 is the floor at |logit| ~ 10).
RUNC_LOGITS_ATOL = 1e-3


# --------------------------------------------------------------------------
# shared test data
# --------------------------------------------------------------------------

def _testdata_dirs():
    env = os.environ.get("SHOAL_TESTDATA")
    if env:
        yield Path(env)
    yield HERE.parent.parent.parent / "shared" / "testdata"   # <root>/../shared/testdata


def find_testdata(rel: str) -> Path:
    tried = []
    for d in _testdata_dirs():
        p = d / rel
        if p.is_file():
            return p
        tried.append(str(p))
    shoal_harness.require(f"test data file {rel} not found (tried: {', '.join(tried)}; set SHOAL_TESTDATA)")


def read_ids(path: Path) -> list:
    return [int(x) for x in path.read_text().split()]


@pytest.fixture(scope="module")
def stories():
    path = find_testdata("stories260K.gguf")
    return reference.load_model(str(path))


# --------------------------------------------------------------------------
# 1. stories260K against run.c
# --------------------------------------------------------------------------

def test_stories_greedy_once_upon_a_time(stories):
    expected = read_ids(find_testdata("oracle/runc_greedy_once_upon_a_time_n32.ids"))
    assert len(expected) == 32
    prompt = [1, 403, 407, 261, 378]
    assert expected[:4] == prompt[1:]
    ref = reference.Reference(stories)
    gen = ref.greedy(prompt, 28)
    assert prompt[1:] + gen == expected


def test_stories_logits_vs_runc(stories, tmp_path):
    oracle_path = find_testdata("oracle/runc_logits_once_upon_a_time_n32.txt")
    ids = read_ids(find_testdata("oracle/runc_greedy_once_upon_a_time_n32.ids"))
    tokens = [1] + ids[:31]
    oracle = compare_logits.parse_logits_file(str(oracle_path))
    assert sorted(oracle) == list(range(32))
    assert [oracle[p][0] for p in range(32)] == tokens

    ref = reference.Reference(stories)
    logits = ref.forward(tokens)
    assert logits.shape == (32, 512)
    runc = np.stack([oracle[p][1] for p in range(32)])
    diff = np.abs(logits - runc)
    p, i = np.unravel_index(int(np.argmax(diff)), diff.shape)
    print(f"\nstories260K vs run.c logits (32 positions x 512): max abs diff {diff.max():.3e} "
          f"at pos {p} index {i}; mean abs diff {diff.mean():.3e}")
    assert diff.max() <= RUNC_LOGITS_ATOL
    assert (np.argmax(logits, axis=1) == np.argmax(runc, axis=1)).all()

    # The CLI writes the same numbers in the same layout, and compare_logits
    # accepts it against the oracle.
    out = tmp_path / "ref.txt"
    subprocess.run([sys.executable, str(REFERENCE_PY), str(find_testdata("stories260K.gguf")),
                    "--tokens", ",".join(map(str, tokens)), "--logits-out", str(out)],
                   check=True)
    ref_lines = out.read_text().splitlines()
    runc_lines = oracle_path.read_text().splitlines()
    assert len(ref_lines) == len(runc_lines) == 32
    for a, b in zip(ref_lines, runc_lines):
        wa, wb = a.split(" "), b.split(" ")
        assert len(wa) == len(wb) == 4 + 512
        assert wa[:4] == wb[:4]
    r = subprocess.run([sys.executable, str(COMPARE_PY), str(out), str(oracle_path),
                        "--atol", str(RUNC_LOGITS_ATOL)], capture_output=True, text=True)
    print(r.stdout)
    assert r.returncode == 0, r.stdout + r.stderr


def test_stories_greedy_bos_256(stories):
    expected = read_ids(find_testdata("oracle/runc_greedy_bos_256.ids"))
    assert len(expected) == 256
    t0 = time.perf_counter()
    gen = reference.Reference(stories).greedy([1], 256)
    dt = time.perf_counter() - t0
    print(f"\ngreedy 256 from BOS: {dt:.2f} s")
    first_bad = next((i for i, (a, b) in enumerate(zip(gen, expected)) if a != b), None)
    assert gen == expected, f"first difference at generated index {first_bad}"
    assert dt < 60


def test_stories_incremental_equals_batch(stories):
    tokens = [1, 403, 407, 261, 378, 432, 383, 286]
    full = reference.Reference(stories).forward(tokens)
    ref = reference.Reference(stories)
    inc = np.concatenate([ref.forward(tokens[:3]), ref.forward(tokens[3:4]), ref.forward(tokens[4:])])
    assert np.max(np.abs(full - inc)) < 1e-12


# --------------------------------------------------------------------------
# synthetic GGUF models
# --------------------------------------------------------------------------

def make_weights(rng, dim=64, n_layers=2, n_heads=4, n_kv=2, head_dim=None, ffn=96, vocab=128,
                 biases=False, tied=False) -> dict:
    hd = head_dim or dim // n_heads
    f32 = np.float32
    w = {"token_embd.weight": rng.standard_normal((vocab, dim)).astype(f32),
         "output_norm.weight": (1 + 0.1 * rng.standard_normal(dim)).astype(f32)}
    if not tied:
        w["output.weight"] = (0.2 * rng.standard_normal((vocab, dim))).astype(f32)
    s = 1 / np.sqrt(dim)
    for L in range(n_layers):
        p = f"blk.{L}."
        w[p + "attn_norm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(f32)
        w[p + "attn_q.weight"] = (2 * s * rng.standard_normal((n_heads * hd, dim))).astype(f32)
        w[p + "attn_k.weight"] = (2 * s * rng.standard_normal((n_kv * hd, dim))).astype(f32)
        w[p + "attn_v.weight"] = (s * rng.standard_normal((n_kv * hd, dim))).astype(f32)
        w[p + "attn_output.weight"] = (s * rng.standard_normal((dim, n_heads * hd))).astype(f32)
        w[p + "ffn_norm.weight"] = (1 + 0.1 * rng.standard_normal(dim)).astype(f32)
        w[p + "ffn_gate.weight"] = (s * rng.standard_normal((ffn, dim))).astype(f32)
        w[p + "ffn_up.weight"] = (s * rng.standard_normal((ffn, dim))).astype(f32)
        w[p + "ffn_down.weight"] = (rng.standard_normal((dim, ffn)) / np.sqrt(ffn)).astype(f32)
        if biases:
            w[p + "attn_q.bias"] = (0.1 * rng.standard_normal(n_heads * hd)).astype(f32)
            w[p + "attn_k.bias"] = (0.1 * rng.standard_normal(n_kv * hd)).astype(f32)
            w[p + "attn_v.bias"] = (0.1 * rng.standard_normal(n_kv * hd)).astype(f32)
    return w


def write_gguf(path, weights: dict, *, arch="llama", n_heads=4, n_kv=2, head_dim=None,
               rope_dim=None, rope_base=None, eps=1e-5, qtypes=None) -> None:
    """Write weights (numpy (rows, cols) float32) as a GGUF file.

    qtypes maps a tensor name to the GGML type to store it as (default F32).
    """
    qtypes = qtypes or {}
    dim = weights["token_embd.weight"].shape[1]
    n_layers = 1 + max(int(n.split(".")[1]) for n in weights if n.startswith("blk."))
    ffn = weights["blk.0.ffn_gate.weight"].shape[0]
    w = gguf.GGUFWriter(str(path), arch)
    w.add_context_length(256)
    w.add_embedding_length(dim)
    w.add_block_count(n_layers)
    w.add_feed_forward_length(ffn)
    w.add_head_count(n_heads)
    w.add_head_count_kv(n_kv)
    if head_dim is not None:
        w.add_key_length(head_dim)
        w.add_value_length(head_dim)
    if rope_dim is not None:
        w.add_rope_dimension_count(rope_dim)
    if rope_base is not None:
        w.add_rope_freq_base(rope_base)
    w.add_layer_norm_rms_eps(eps)
    for name, arr in weights.items():
        qt = qtypes.get(name, QT.F32)
        if qt == QT.F32:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float32))
        elif qt == QT.F16:
            w.add_tensor(name, np.ascontiguousarray(arr, dtype=np.float16))
        else:
            w.add_tensor(name, gguf.quants.quantize(np.ascontiguousarray(arr, dtype=np.float32), qt),
                         raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


TOKENS = [1, 17, 99, 5, 64, 127, 3, 42, 42, 8, 77, 0]


def run_ref(path, tokens=TOKENS, rope_mode=None):
    return reference.Reference(reference.load_model(str(path)), rope_mode=rope_mode).forward(tokens)


# --------------------------------------------------------------------------
# 3. property tests on synthetic models
# --------------------------------------------------------------------------

def test_gqa_equals_duplicated_kv_heads(tmp_path):
    """A GQA model (4 query heads, 2 KV heads) must equal the MHA model whose
    KV heads are the GQA heads duplicated so query head h sees KV head h // 2."""
    rng = np.random.default_rng(1)
    n_heads, n_kv, hd, dim = 4, 2, 16, 64
    w = make_weights(rng, dim=dim, n_heads=n_heads, n_kv=n_kv, tied=True)
    write_gguf(tmp_path / "gqa.gguf", w, n_heads=n_heads, n_kv=n_kv)
    group = n_heads // n_kv
    w2 = dict(w)
    for L in range(2):
        for t in ("attn_k.weight", "attn_v.weight"):
            a = w[f"blk.{L}.{t}"].reshape(n_kv, hd, dim)
            w2[f"blk.{L}.{t}"] = np.repeat(a, group, axis=0).reshape(n_heads * hd, dim)
    write_gguf(tmp_path / "mha.gguf", w2, n_heads=n_heads, n_kv=n_heads)
    la, lb = run_ref(tmp_path / "gqa.gguf"), run_ref(tmp_path / "mha.gguf")
    assert reference.load_model(str(tmp_path / "gqa.gguf")).config.n_kv_heads == 2
    d = np.max(np.abs(la - lb))
    print(f"\nGQA vs duplicated-KV MHA: max abs diff {d:.3e}")
    assert d < 1e-11
    # and it is not trivially insensitive: grouping KV heads the other way
    # round (h % n_kv) gives different logits
    w3 = dict(w)
    for L in range(2):
        for t in ("attn_k.weight", "attn_v.weight"):
            a = w[f"blk.{L}.{t}"].reshape(n_kv, hd, dim)
            w3[f"blk.{L}.{t}"] = np.tile(a, (group, 1, 1)).reshape(n_heads * hd, dim)
    write_gguf(tmp_path / "mha_wrong.gguf", w3, n_heads=n_heads, n_kv=n_heads)
    assert np.max(np.abs(la - run_ref(tmp_path / "mha_wrong.gguf"))) > 1e-3


def test_neox_equals_permuted_norm(tmp_path):
    """NEOX RoPE (halves) on q/k rows permuted as [even dims, odd dims] must equal
    NORM RoPE (adjacent pairs) on the original rows; with partial rotary dims
    (rope_dim 8 of head_dim 16) and q/k/v biases (qwen2 style)."""
    rng = np.random.default_rng(2)
    n_heads, n_kv, hd, rd, dim = 4, 2, 16, 8, 64
    w = make_weights(rng, dim=dim, n_heads=n_heads, n_kv=n_kv, biases=True)
    write_gguf(tmp_path / "norm.gguf", w, arch="llama", n_heads=n_heads, n_kv=n_kv,
               rope_dim=rd, rope_base=500.0)
    perm = np.concatenate([np.arange(0, rd, 2), np.arange(1, rd, 2), np.arange(rd, hd)])
    w2 = dict(w)
    for L in range(2):
        for t, nh in (("attn_q", n_heads), ("attn_k", n_kv)):
            W = w[f"blk.{L}.{t}.weight"].reshape(nh, hd, dim)
            w2[f"blk.{L}.{t}.weight"] = W[:, perm, :].reshape(nh * hd, dim)
            b = w[f"blk.{L}.{t}.bias"].reshape(nh, hd)
            w2[f"blk.{L}.{t}.bias"] = b[:, perm].reshape(nh * hd)
    write_gguf(tmp_path / "neox.gguf", w2, arch="qwen2", n_heads=n_heads, n_kv=n_kv,
               rope_dim=rd, rope_base=500.0)
    ln = run_ref(tmp_path / "norm.gguf")
    lx = run_ref(tmp_path / "neox.gguf")          # qwen2 -> neox by default
    d = np.max(np.abs(ln - lx))
    print(f"\nNEOX(permuted) vs NORM: max abs diff {d:.3e}")
    assert d < 1e-11
    # forcing the mode works, and the mode matters
    assert np.max(np.abs(ln - run_ref(tmp_path / "neox.gguf", rope_mode="neox"))) < 1e-11
    assert np.max(np.abs(ln - run_ref(tmp_path / "neox.gguf", rope_mode="norm"))) > 1e-3


def test_tied_output_equals_explicit(tmp_path):
    rng = np.random.default_rng(3)
    w = make_weights(rng, tied=True)
    write_gguf(tmp_path / "tied.gguf", w)
    w2 = dict(w, **{"output.weight": w["token_embd.weight"]})
    write_gguf(tmp_path / "untied.gguf", w2)
    assert np.max(np.abs(run_ref(tmp_path / "tied.gguf") - run_ref(tmp_path / "untied.gguf"))) == 0


# --------------------------------------------------------------------------
# dequantization: F32, F16, BF16, Q8_0, Q4_0 via the gguf package
# --------------------------------------------------------------------------

def _manual_dequant(raw: np.ndarray, qt) -> np.ndarray:
    """Dequantize from the GGUF block layout, written here independently of
    gguf.quants, to cross-check it.  raw: uint8 (rows, bytes)."""
    rows = raw.shape[0]
    if qt == QT.Q8_0:      # block: f16 d, 32 x int8 q; x = d * q
        b = raw.reshape(rows, -1, 34)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)
        q = b[..., 2:].copy().view(np.int8).astype(np.float64)
        return (d * q).reshape(rows, -1)
    if qt == QT.Q4_0:      # block: f16 d, 16 bytes; low nibbles = x[0:16], high = x[16:32]; x = d*(q-8)
        b = raw.reshape(rows, -1, 18)
        d = b[..., :2].copy().view(np.float16).astype(np.float64)
        qs = b[..., 2:]
        q = np.concatenate([qs & 0x0F, qs >> 4], axis=-1).astype(np.float64) - 8
        return (d * q).reshape(rows, -1)
    if qt == QT.BF16:
        u = raw.copy().view(np.uint16).astype(np.uint32) << 16
        return u.view(np.float32).astype(np.float64)
    raise ValueError(qt)


@pytest.mark.parametrize("qt", [QT.F32, QT.F16, QT.BF16, QT.Q8_0, QT.Q4_0], ids=lambda q: q.name)
def test_dequantize_types(tmp_path, qt):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 96)).astype(np.float32)
    x[2, 40] = 7.5          # an outlier inside one block
    path = tmp_path / f"{qt.name}.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    if qt == QT.F32:
        w.add_tensor("t", x)
    elif qt == QT.F16:
        w.add_tensor("t", x.astype(np.float16))
    else:
        w.add_tensor("t", gguf.quants.quantize(x, qt), raw_dtype=qt)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    t = gguf.GGUFReader(str(path)).tensors[0]
    assert t.tensor_type == qt
    assert [int(s) for s in t.shape] == [96, 6]
    y = reference.dequantize_tensor(t)
    assert y.dtype == np.float64 and y.shape == (6, 96)
    err = np.abs(y - x)
    xb = np.abs(x.astype(np.float64)).reshape(6, 3, 32)
    amax = np.repeat(xb.max(axis=-1), 32, axis=-1).reshape(6, 96)
    if qt == QT.F32:
        assert err.max() == 0
    elif qt == QT.F16:
        assert np.all(err <= np.abs(x) * 2.0**-11 + 1e-7)
    elif qt == QT.BF16:
        assert np.all(err <= np.abs(x) * 2.0**-8)
        assert np.array_equal(y, _manual_dequant(np.asarray(t.data), qt))
    elif qt == QT.Q8_0:
        # scale d = amax/127 (stored as f16): error <= d/2 plus the f16 rounding of d
        assert np.all(err <= amax / 127 * (0.5 + 127 * 2.0**-11) + 1e-7)
        assert np.array_equal(y, _manual_dequant(np.asarray(t.data), qt))
    elif qt == QT.Q4_0:
        # scale |d| = amax/8: error <= |d|/2 inside the range, |d| at the clamped end
        assert np.all(err <= amax / 8 * (1 + 16 * 2.0**-11) + 1e-7)
        assert np.array_equal(y, _manual_dequant(np.asarray(t.data), qt))
    print(f"\n{qt.name}: max abs dequantization error {err.max():.3e} (max |x| {np.abs(x).max():.2f})")


def test_quantized_model_matches_dequantized_f32_model(tmp_path):
    """Tensors stored as F16/BF16/Q8_0/Q4_0 inside a model are laid out and
    applied the same as the F32 model holding their dequantized values."""
    rng = np.random.default_rng(5)
    w = make_weights(rng, ffn=128)
    qtypes = {"token_embd.weight": QT.F16, "output.weight": QT.BF16,
              "blk.0.attn_q.weight": QT.Q4_0, "blk.0.attn_k.weight": QT.Q8_0,
              "blk.0.ffn_down.weight": QT.Q4_0, "blk.1.ffn_gate.weight": QT.Q8_0,
              "blk.1.attn_output.weight": QT.Q8_0, "blk.1.ffn_up.weight": QT.BF16}
    write_gguf(tmp_path / "q.gguf", w, qtypes=qtypes)
    wd = dict(w)
    for name, qt in qtypes.items():
        if qt == QT.F16:
            wd[name] = w[name].astype(np.float16).astype(np.float32)
        else:
            wd[name] = gguf.quants.dequantize(gguf.quants.quantize(w[name], qt), qt).astype(np.float32)
    write_gguf(tmp_path / "d.gguf", wd)
    m = reference.load_model(str(tmp_path / "q.gguf"))
    assert m.tensor_types["blk.0.attn_q.weight"] == "Q4_0"
    lq, ld = run_ref(tmp_path / "q.gguf"), run_ref(tmp_path / "d.gguf")
    assert np.max(np.abs(lq - ld)) < 1e-11
    # quantization perturbs, but does not wreck, the logits
    assert 0 < np.max(np.abs(lq - run_ref_weights(tmp_path, w))) < 1.0


def run_ref_weights(tmp_path, w):
    write_gguf(tmp_path / "orig.gguf", w)
    return run_ref(tmp_path / "orig.gguf")


def test_unknown_tensor_is_refused(tmp_path):
    rng = np.random.default_rng(6)
    w = make_weights(rng)
    w["rope_freqs.weight"] = np.ones(8, dtype=np.float32)
    write_gguf(tmp_path / "x.gguf", w)
    with pytest.raises(NotImplementedError, match="rope_freqs"):
        reference.load_model(str(tmp_path / "x.gguf"))


# --------------------------------------------------------------------------
# CLI and compare_logits
# --------------------------------------------------------------------------

def test_cli_greedy_and_compare(tmp_path):
    rng = np.random.default_rng(7)
    write_gguf(tmp_path / "m.gguf", make_weights(rng))
    toks = "1,17,99,5"
    r = subprocess.run([sys.executable, str(REFERENCE_PY), str(tmp_path / "m.gguf"), "--tokens", toks,
                        "--greedy", "6", "--logits-out", str(tmp_path / "a.txt")],
                       capture_output=True, text=True, check=True)
    gen = [int(x) for x in r.stdout.split()]
    assert len(gen) == 6
    ref = reference.Reference(reference.load_model(str(tmp_path / "m.gguf")))
    assert gen == ref.greedy([1, 17, 99, 5], 6)
    a = compare_logits.parse_logits_file(str(tmp_path / "a.txt"))
    assert sorted(a) == [0, 1, 2, 3] and [a[p][0] for p in range(4)] == [1, 17, 99, 5]
    assert all(v.size == 128 for _, v in a.values())

    def cmp(*args):
        return subprocess.run([sys.executable, str(COMPARE_PY), *map(str, args)],
                              capture_output=True, text=True)

    assert cmp(tmp_path / "a.txt", tmp_path / "a.txt").returncode == 0
    lines = (tmp_path / "a.txt").read_text().splitlines()
    # perturb one value by 0.01: fails at atol 1e-3, passes at atol 0.1
    head, vals = lines[2].split(": ")
    vals = vals.split(" ")
    vals[5] = "%e" % (float(vals[5]) + 0.01)
    (tmp_path / "b.txt").write_text("\n".join(lines[:2] + [head + ": " + " ".join(vals)] + lines[3:]) + "\n")
    r = cmp(tmp_path / "b.txt", tmp_path / "a.txt")
    assert r.returncode == 1 and "pos 2 index 5" in r.stdout, r.stdout
    assert cmp(tmp_path / "b.txt", tmp_path / "a.txt", "--atol", "0.1").returncode == 0
    assert cmp(tmp_path / "b.txt", tmp_path / "a.txt", "--positions", "0-1,3").returncode == 0
    # a different token at a position fails
    (tmp_path / "c.txt").write_text("\n".join([lines[0].replace("token 1:", "token 2:", 1)] + lines[1:]) + "\n")
    assert cmp(tmp_path / "c.txt", tmp_path / "a.txt").returncode == 1
    # missing positions fail, unless excluded with --positions
    (tmp_path / "d.txt").write_text("\n".join(lines[:3]) + "\n")
    assert cmp(tmp_path / "d.txt", tmp_path / "a.txt").returncode == 1
    assert cmp(tmp_path / "d.txt", tmp_path / "a.txt", "--positions", "0-3").returncode == 1
    assert cmp(tmp_path / "d.txt", tmp_path / "a.txt", "--positions", "0-2").returncode == 0
    # a changed argmax fails even when the tolerance is loose enough for the values
    head, vals = lines[1].split(": ")
    vals = [float(v) for v in vals.split(" ")]
    j = int(np.argsort(vals)[-2])
    vals[j] = max(vals) + 0.05
    (tmp_path / "e.txt").write_text("\n".join([lines[0], head + ": " + " ".join("%e" % v for v in vals)]
                                              + lines[2:]) + "\n")
    r = cmp(tmp_path / "e.txt", tmp_path / "a.txt")
    assert r.returncode == 1 and "FAIL: position 1: argmax" in r.stdout, r.stdout
    # ... a swap within a loose tolerance is a tie: accepted with a note,
    # unless --strict-argmax
    r = cmp(tmp_path / "e.txt", tmp_path / "a.txt", "--atol", "100")
    assert r.returncode == 0 and "note: position 1: argmax" in r.stdout, r.stdout
    r = cmp(tmp_path / "e.txt", tmp_path / "a.txt", "--atol", "100", "--strict-argmax")
    assert r.returncode == 1 and "FAIL: position 1: argmax" in r.stdout, r.stdout
    # unparsable input is a usage error
    (tmp_path / "f.txt").write_text("hello\n")
    assert cmp(tmp_path / "f.txt", tmp_path / "a.txt").returncode == 2
