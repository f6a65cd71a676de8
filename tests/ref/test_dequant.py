"""shoal's dequantization against the gguf package's numpy dequantizer
(`gguf.quants.dequantize`), bit for bit.

shoal's values come from `shoal info FILE --dump NAME -o OUT` (f32,
little-endian); the reference is an implementation shoal shares no code
with (llama.cpp's Python package). Three sources of blocks:
- random block bytes of every type shoal dequantizes, written with
  gguf.GGUFWriter: the f16 scale fields drawn from all finite f16 values
  (every magnitude, subnormals, zeros of both signs, never inf or NaN), all
  other bytes uniformly random, so every bit of every field is exercised;
- every tensor of the default model, SmolLM2-135M (F32, Q4_1, Q8_0);
- every tensor of the real Gemma 3 270M Q4_K_M file (F32, Q5_0, Q4_K, Q8_0,
  Q6_K), which scripts/install-deps.sh assembles into a cache folder; the
  test skips, saying so, without it.
Values are compared as uint32 (NaN-free by construction), so a -0 for a +0
or one ulp anywhere fails.
"""
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

gguf = h.import_required("gguf", "the gguf package (pip install gguf) is the reference dequantizer")
Q = gguf.GGMLQuantizationType

# type -> byte offsets, inside one block, of its f16 scale fields (the layouts
# of ggml's block structs); None for F32/F16/BF16, whose values are drawn whole
TYPES = {
    Q.F32: None, Q.F16: None, Q.BF16: None,
    Q.Q4_0: [0], Q.Q4_1: [0, 2], Q.Q5_0: [0], Q.Q5_1: [0, 2], Q.Q8_0: [0], Q.IQ4_NL: [0],
    Q.Q2_K: [80, 82], Q.Q3_K: [108], Q.Q4_K: [0, 2], Q.Q5_K: [0, 2], Q.Q6_K: [208],
    Q.IQ4_XS: [0],
}
# (rows..., values per row): rows of 256/512/1024 values for every type, a
# 1-D and a 3-D tensor, and rows of 32/96 for the 32-value blocks
SHAPES = [(1, 256), (3, 512), (5, 1024), (2, 3, 256), (256,)]
SHAPES_32 = [(4, 32), (7, 96)]

F16_MAX, F16_MIN_SUB = 0x7BFF, 0x0001


def finite_f16(rng, n):
    """n f16 bit patterns drawn over every finite value (all exponents, both
    signs), a few of them +0 and -0."""
    bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
    exp = (bits >> 10) & 0x1F
    bits = np.where(exp == 0x1F, bits & ~np.uint16(0x4000), bits)  # 11111 -> 01111: finite
    zero = rng.random(n) < 0.03
    return np.where(zero, bits & np.uint16(0x8000), bits).astype(np.uint16)


def random_blocks(rng, qtype, shape):
    """Bytes of a tensor of `shape` values of qtype: (rows..., bytes per row) uint8."""
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = int(np.prod(shape))
    if qtype == Q.F32:
        v = rng.standard_normal(n).astype(np.float32) * np.float32(10) ** rng.integers(-30, 30, n)
        raw = v.astype(np.float32).view(np.uint8)
    elif qtype == Q.F16:
        raw = finite_f16(rng, n).view(np.uint8)
    elif qtype == Q.BF16:
        bits = rng.integers(0, 1 << 16, n, dtype=np.uint32).astype(np.uint16)
        exp = (bits >> 7) & 0xFF
        raw = np.where(exp == 0xFF, bits & ~np.uint16(0x4000), bits).astype(np.uint16).view(np.uint8)
    else:
        blocks = rng.integers(0, 256, (n // block, size), dtype=np.uint16).astype(np.uint8)
        for off in TYPES[qtype]:
            blocks[:, off:off + 2] = finite_f16(rng, len(blocks)).view(np.uint8).reshape(-1, 2)
        # the extremes: the first block all ones at the largest scale, the
        # second all zeros at the smallest subnormal scale, the third -0
        for b, fill, scale in ((0, 0xFF, F16_MAX), (1, 0x00, F16_MIN_SUB), (2, 0x5A, 0x8000)):
            if b < len(blocks):
                blocks[b, :] = fill
                for off in TYPES[qtype]:
                    blocks[b, off:off + 2] = np.array([scale], dtype=np.uint16).view(np.uint8)
        raw = blocks
    return np.ascontiguousarray(raw).reshape(*shape[:-1], shape[-1] // block * size)


def dump(path, name, out):
    """shoal's values of tensor `name` (f32), through `shoal info --dump -o`."""
    h.run(["info", path, "--dump", name, "-o", out])
    return np.fromfile(out, dtype="<f4")


def assert_same(got, want, what, block):
    """Bit-for-bit equality of two f32 arrays; on failure, says where and how many."""
    want = np.ascontiguousarray(want, dtype=np.float32).reshape(-1)
    assert got.size == want.size, f"{what}: shoal gave {got.size} values, gguf {want.size}"
    assert not np.isnan(want).any(), f"{what}: the reference holds NaN (the test's inputs are wrong)"
    g, w = got.view(np.uint32), want.view(np.uint32)
    if not np.array_equal(g, w):
        bad = np.flatnonzero(g != w)
        i = bad[0]
        shown = ", ".join(f"[{j}] block {j // block} value {j % block}: shoal {got[j]!r} "
                          f"gguf {want[j]!r}" for j in bad[:5])
        pytest.fail(f"{what}: {bad.size} of {got.size} values differ (first at {i}): {shown}")


# --------------------------------------------------------- random blocks

@pytest.fixture(scope="module")
def random_file(tmp_path_factory):
    """One GGUF holding, per type, one tensor per shape of random blocks;
    returns (path, {name: (qtype, raw bytes)})."""
    path = tmp_path_factory.mktemp("dequant") / "random.gguf"
    rng = np.random.default_rng(17)
    w = gguf.GGUFWriter(str(path), "llama")  # no model: --dump reads any GGUF
    tensors = {}
    for qtype in TYPES:
        block = gguf.GGML_QUANT_SIZES[qtype][0]
        shapes = SHAPES + (SHAPES_32 if block == 32 else [])
        for k, shape in enumerate(shapes):
            raw = random_blocks(rng, qtype, shape)
            name = f"{qtype.name.lower()}.{k}"
            w.add_tensor(name, raw, raw_dtype=qtype)
            tensors[name] = (qtype, raw)
    w.add_tensor("ints", np.arange(64, dtype=np.int32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path, tensors


@pytest.mark.parametrize("qtype", list(TYPES), ids=lambda t: t.name.lower())
def test_random_blocks(random_file, qtype, tmp_path):
    path, tensors = random_file
    block = gguf.GGML_QUANT_SIZES[qtype][0]
    names = [n for n, (t, _) in tensors.items() if t == qtype]
    assert names
    for name in names:
        raw = tensors[name][1]
        want = gguf.quants.dequantize(raw, qtype)
        got = dump(path, name, tmp_path / "out.f32")
        assert_same(got, want, f"{name} ({want.shape} values)", block)


def test_dump_to_stdout_equals_file(random_file, tmp_path):
    path, _ = random_file
    p = h.run(["info", path, "--dump", "q4_k.1"])
    h.run(["info", path, "--dump", "q4_k.1", "-o", tmp_path / "x"])
    assert p.stdout == (tmp_path / "x").read_bytes() and len(p.stdout) == 3 * 512 * 4


def test_dump_errors_name_tensor_and_type(random_file, tmp_path):
    path, _ = random_file
    p = h.run(["info", path, "--dump", "no.such.tensor"], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "no.such.tensor" in err and str(path) in err and not p.stdout
    out = tmp_path / "ints.f32"
    p = h.run(["info", path, "--dump", "ints", "-o", out], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "'ints'" in err and "i32" in err and "q4_k" in err, err
    assert not out.exists()
    p = h.run(["info", path, "-o", out], check=False)
    assert p.returncode == 2 and "--dump" in p.stderr.decode()


# --------------------------------------------------------- malformed files

def test_dump_of_corrupt_files_is_a_clean_error(tmp_path):
    """Truncated files and flipped header bytes (types, shapes, offsets):
    --dump ends with status 0 or 1 and a message, never a signal or a
    sanitizer report (run it on a sanitizer build)."""
    import random
    import subprocess
    path = tmp_path / "small.gguf"
    rng = np.random.default_rng(5)
    w = gguf.GGUFWriter(str(path), "llama")
    names = []
    for qtype, shape in ((Q.Q4_K, (2, 256)), (Q.Q6_K, (1, 512)), (Q.IQ4_XS, (3, 256)),
                         (Q.Q5_0, (2, 64)), (Q.IQ4_NL, (1, 32))):
        names.append(qtype.name.lower())
        w.add_tensor(names[-1], random_blocks(rng, qtype, shape), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    data = path.read_bytes()
    start = min(int(t.data_offset) for t in gguf.GGUFReader(str(path)).tensors)
    env = dict(os.environ, ASAN_OPTIONS="exitcode=99:detect_leaks=1",
               UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")
    bad = tmp_path / "bad.gguf"
    out = tmp_path / "out.f32"
    r = random.Random(17)
    cases = [data[:n] for n in range(0, len(data), max(1, len(data) // 60))]
    for _ in range(150):
        d = bytearray(data)
        for _ in range(r.choice([1, 2, 4])):
            d[r.randrange(start)] = r.randrange(256)  # the header: types, dims, offsets
        cases.append(bytes(d))
    for i, case in enumerate(cases):
        bad.write_bytes(case)
        for name in (names[i % len(names)], names[(i + 2) % len(names)]):
            p = subprocess.run([h.shoal_bin(), "info", bad, "--dump", name, "-o", out],
                               capture_output=True, timeout=60, env=env)
            err = p.stderr.decode(errors="replace")
            what = f"case {i} ({len(case)} bytes), --dump {name}"
            assert p.returncode in (0, 1), f"{what}: exit status {p.returncode}:\n{err[-2000:]}"
            assert "Sanitizer" not in err and "runtime error" not in err, f"{what}:\n{err[-2000:]}"
            if p.returncode == 1:
                assert "error:" in err, f"{what}: failed without a message"


# --------------------------------------------------------- real files

def check_types_line(path):
    """`shoal info`'s "types:" line: tensors per type and bits per weight,
    against the tensors' types, sizes and shapes as the file states them
    (h.gguf_layout; sizes by the gguf package's table of block sizes)."""
    count, nbytes, n = {}, 0, 0
    for _, ttype, dims, _, size in h.gguf_layout(path)[1]:
        name = Q(ttype).name.lower()
        count[name] = count.get(name, 0) + 1
        nbytes += size
        n += math.prod(dims)
    out = h.run(["info", path, "--no-tensors", "--no-metadata"]).stdout.decode()
    line = next(ln for ln in out.splitlines() if ln.startswith("types:"))
    for k, (name, c) in enumerate(sorted(count.items(), key=lambda kv: -kv[1])):
        assert f" {name} {c}" + (" tensor" if k == 0 else " (") in line, line
    assert line.endswith(f"; {8 * nbytes / n:.2f} bits per weight"), line


def compare_file(path, tmp_path, rows_per_chunk=1 << 14):
    """Every tensor of the GGUF at path, dumped by shoal, against gguf's
    dequantization of the same bytes (found by h.gguf_layout's walk of the
    header: a GGUFReader took 16 s on Gemma's 262,144-token vocabulary), in
    chunks of rows so that a large embedding table does not need GiBs.
    Returns {type name: tensor count}."""
    out = tmp_path / "t.f32"
    seen = {}
    data = np.memmap(path, dtype=np.uint8, mode="r")
    for name, ttype, dims, offset, nbytes in h.gguf_layout(path)[1]:
        qtype = Q(ttype)
        block, size = gguf.GGML_QUANT_SIZES[qtype]
        assert offset + nbytes <= data.size, f"{name}: its bytes end past the end of {path}"
        raw = data[offset:offset + nbytes].reshape(-1, dims[0] // block * size)  # (rows, bytes per row)
        h.run(["info", path, "--dump", name, "-o", out])
        got = np.memmap(out, dtype="<f4", mode="r") if out.stat().st_size else np.zeros(0, "<f4")
        per_row = raw.shape[1] // size * block
        assert got.size == raw.shape[0] * per_row, f"{name}: {got.size} values"
        for r0 in range(0, raw.shape[0], rows_per_chunk):
            r1 = min(raw.shape[0], r0 + rows_per_chunk)
            want = gguf.quants.dequantize(np.ascontiguousarray(raw[r0:r1]), qtype)
            assert_same(np.asarray(got[r0 * per_row:r1 * per_row]), want,
                        f"{path.name}: {name} ({qtype.name}) rows {r0}..{r1}", block)
        del got
        seen[qtype.name] = seen.get(qtype.name, 0) + 1
    return seen


def test_smollm2_every_tensor(tmp_path):
    seen = compare_file(h.smollm2(), tmp_path)
    print(f"SmolLM2: {seen}")
    check_types_line(h.smollm2())
    assert sum(seen.values()) == 272


def gemma3_path() -> Path:
    return h.gemma3()


def test_gemma3_every_tensor(tmp_path):
    seen = compare_file(gemma3_path(), tmp_path)
    print(f"Gemma 3 270M: {seen}")
    check_types_line(gemma3_path())
    for t in ("Q4_K", "Q6_K", "Q5_0", "Q8_0", "F32"):
        assert t in seen, f"the file holds no {t} tensor: {seen}"
