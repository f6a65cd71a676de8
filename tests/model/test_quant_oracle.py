"""shoal_quantize_row against llama.cpp's quantizers, byte for byte, for the
types shoal quantizes to since issue 17's follow-up: Q5_0, Q5_1, IQ4_NL,
Q2_K, Q3_K, Q4_K, Q5_K, Q6_K and IQ4_XS, as llama-quantize writes them
without an importance matrix.

The oracle (data/quant_oracle.npz and .json) was recorded by
tests/model/record_quant_oracle.py with llama-cpp-python 0.3.36's libggml
(ggml_quantize_chunk, imatrix NULL); shoal's code played no part in it. The
rows stress the scale searches: random and heavy-tailed rows, zero, constant,
tiny, huge and subnormal rows, outliers, one-signed rows, ties, sparse rows,
several super-blocks per row, and real SmolLM2 weight rows. shoal's bytes
come from tests/tools/quant_rows ($SHOAL_QUANT_ROWS, which CTest sets; else
beside $SHOAL_BIN: build/tests/quant_rows).

A second check stands on its own: the gguf package's numpy dequantizer, on
shoal's bytes, gives back every block of the well-scaled rows within the
type's error (ERROR), so that bytes recorded wrong could not pass unnoticed.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
ORACLE = json.loads((DATA / "quant_oracle.json").read_text())
TYPES = ORACLE["types"]
CASES = ORACLE["cases"]

# each type's block fields as (name, first byte, end) (ggml's block structs,
# base/base.h), to say which field a differing byte is in
FIELDS = {
    "q5_0": [("d", 0, 2), ("qh", 2, 6), ("qs", 6, 22)],
    "q5_1": [("d", 0, 2), ("m", 2, 4), ("qh", 4, 8), ("qs", 8, 24)],
    "iq4_nl": [("d", 0, 2), ("qs", 2, 18)],
    "q2_k": [("scales", 0, 16), ("qs", 16, 80), ("d", 80, 82), ("dmin", 82, 84)],
    "q3_k": [("hmask", 0, 32), ("qs", 32, 96), ("scales", 96, 108), ("d", 108, 110)],
    "q4_k": [("d", 0, 2), ("dmin", 2, 4), ("scales", 4, 16), ("qs", 16, 144)],
    "q5_k": [("d", 0, 2), ("dmin", 2, 4), ("scales", 4, 16), ("qh", 16, 48), ("qs", 48, 176)],
    "q6_k": [("ql", 0, 128), ("qh", 128, 192), ("scales", 192, 208), ("d", 208, 210)],
    "iq4_xs": [("d", 0, 2), ("scales_h", 2, 4), ("scales_l", 4, 8), ("qs", 8, 136)],
}

# The dequantized error allowed per block: ERROR[type] x the block's largest
# magnitude (over 32 values, or the 256 of a super-block), plus what f16
# scales cannot resolve: SCALE_STEPS[type] steps of f16's smallest, 2^-24
# (the most a rounded scale is multiplied by: the largest quant times the
# largest sub-block scale; it matters only for blocks near 1e-6 and below).
# ERROR is about 1.5x the worst error of llama.cpp's own bytes over the
# recorded rows (q5_0 0.0625: the value opposite the largest lands on 15,
# one step short of 16; q5_1 0.032, half a step of range / 31; iq4_nl 0.10,
# iq4_xs 0.10; q2_k 0.34, q3_k 0.19, q4_k 0.080, q5_k 0.038, q6_k 0.025).
ERROR = {"q5_0": 0.07, "q5_1": 0.04, "iq4_nl": 0.15, "q2_k": 0.5, "q3_k": 0.3, "q4_k": 0.12,
         "q5_k": 0.06, "q6_k": 0.04, "iq4_xs": 0.15}
SCALE_STEPS = {"q5_0": 16, "q5_1": 32, "iq4_nl": 127, "q2_k": 60, "q3_k": 128, "q4_k": 1008,
               "q5_k": 2016, "q6_k": 4096, "iq4_xs": 4064}


@pytest.fixture(scope="module")
def oracle():
    with np.load(DATA / "quant_oracle.npz") as z:
        return {k: z[k] for k in z.files}


def quant_rows_bin() -> str:
    path = os.environ.get("SHOAL_QUANT_ROWS") or str(Path(h.shoal_bin()).parent / "tests" / "quant_rows")
    if not os.access(path, os.X_OK):
        pytest.fail(f"quant_rows {path} not found: build it (ninja quant_rows) or set SHOAL_QUANT_ROWS")
    return path


def quant_rows(type_name, x):
    """shoal's bytes for the rows of x: (rows, row bytes) uint8."""
    x = np.ascontiguousarray(x, dtype="<f4")
    p = subprocess.run([quant_rows_bin(), type_name, str(x.shape[1])], input=x.tobytes(),
                       capture_output=True, timeout=60)
    if p.returncode != 0:
        pytest.fail(f"quant_rows {type_name} {x.shape[1]} exited {p.returncode}: {p.stderr.decode()}")
    got = np.frombuffer(p.stdout, dtype=np.uint8)
    assert got.size % x.shape[0] == 0, f"quant_rows {type_name}: {got.size} bytes for {x.shape[0]} rows"
    return got.reshape(x.shape[0], -1)


def first_difference(type_name, case, got, want):
    """Where got first differs from want: the row, block, byte and field."""
    bad_rows = np.flatnonzero((got != want).any(axis=1))
    r = bad_rows[0]
    i = np.flatnonzero(got[r] != want[r])[0]
    bb = TYPES[type_name]["block_bytes"]
    blk, off = divmod(int(i), bb)
    field = next(f"{name}[{off - lo}]" for name, lo, hi in FIELDS[type_name] if lo <= off < hi)
    n_bad = int((got[r] != want[r]).sum())
    return (f"{type_name}, case {case} ({CASES[case]['what']}): {bad_rows.size} of {got.shape[0]} rows "
            f"differ; first: row {r}, block {blk}, byte {off} ({field}): shoal 0x{got[r, i]:02x}, "
            f"llama.cpp 0x{want[r, i]:02x} ({n_bad} bytes of the row differ)\n"
            f"  shoal's block:     {got[r, blk * bb:(blk + 1) * bb].tobytes().hex()}\n"
            f"  llama.cpp's block: {want[r, blk * bb:(blk + 1) * bb].tobytes().hex()}")


@pytest.mark.parametrize("type_name", list(TYPES))
def test_bytes_equal_llamacpp(oracle, type_name):
    """Every recorded row quantizes to llama.cpp's bytes."""
    failures = []
    for case in CASES:
        want = oracle[f"{case}.{type_name}"]
        got = quant_rows(type_name, oracle[f"{case}.x"])
        assert got.shape == want.shape, \
            f"{type_name} {case}: shoal wrote {got.shape}, llama.cpp {want.shape}"
        if not np.array_equal(got, want):
            failures.append(first_difference(type_name, case, got, want))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("type_name", list(TYPES))
def test_dequantized_within_error(oracle, type_name):
    """gguf's dequantizer gives shoal's bytes back near the input: within
    ERROR on the well-scaled rows, never larger than the input where the
    scales are 0 (zero, tiny and subnormal rows). (Huge rows overflow f16
    scales: not checked.)"""
    gguf = h.import_required("gguf", "the gguf package (pip install gguf) dequantizes the blocks")
    qtype = gguf.GGMLQuantizationType[type_name.upper()]
    block = TYPES[type_name]["block"]
    failures = []
    for case, meta in CASES.items():
        if meta["sanity"] == "none":
            continue
        x = oracle[f"{case}.x"]
        y = np.asarray(gguf.quants.dequantize(quant_rows(type_name, x), qtype), dtype=np.float32)
        y = y.reshape(x.shape)
        if meta["sanity"] == "small":
            bound = np.abs(x).max(axis=1, keepdims=True)
            bad = ~(np.abs(y) <= bound)
            if bad.any():
                r, j = np.argwhere(bad)[0]
                failures.append(f"{case}: row {r} value {j}: dequantized {y[r, j]!r}, larger than the "
                                f"row's largest magnitude {bound[r, 0]!r}")
            continue
        xb, yb = x.reshape(-1, block).astype(np.float64), y.reshape(-1, block).astype(np.float64)
        amax = np.abs(xb).max(axis=1)
        err = np.abs(yb - xb).max(axis=1)
        allowed = ERROR[type_name] * amax + SCALE_STEPS[type_name] * 2.0 ** -24
        bad = np.flatnonzero(~(err <= allowed))
        if bad.size:
            b = bad[np.argmax((err / allowed)[bad])]
            r, k = divmod(int(b), x.shape[1] // block)
            failures.append(f"{case}: {bad.size} blocks beyond the bound; worst row {r} block {k}: "
                            f"error {err[b]:.4g} (max |x| {amax[b]:.4g}), allowed {allowed[b]:.4g}")
    assert not failures, f"{type_name}: " + "; ".join(failures)


def test_quant_rows_refuses_bad_input(tmp_path):
    """quant_rows says what is wrong and exits non-zero."""
    qr = quant_rows_bin()
    cases = [
        (["q8_k", "256"], b"", "not a type shoal quantizes to"),
        (["nonsense", "256"], b"", "not a type shoal quantizes to"),
        (["q4_k", "100"], b"", "not a positive multiple of q4_k's block of 256"),
        (["q5_0", "0"], b"", "not a positive multiple"),
        (["q5_0", "32x"], b"", "not a positive multiple"),
        (["iq4_xs", "256"], b"\0" * (4 * 256 + 6), "stdin ends inside row 1 (6 of its 1024 bytes)"),
        (["q6_k"], b"", "usage: quant_rows"),
    ]
    for args, data, expect in cases:
        p = subprocess.run([qr] + args, input=data, capture_output=True, timeout=30)
        err = p.stderr.decode()
        assert p.returncode != 0 and expect in err, \
            f"quant_rows {' '.join(args)}: exit {p.returncode}, stderr {err!r}"
    p = subprocess.run([qr, "--help"], capture_output=True, timeout=30)
    assert p.returncode == 0 and all(t in p.stdout.decode() for t in TYPES), p.stdout.decode()
