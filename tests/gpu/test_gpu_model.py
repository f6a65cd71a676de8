"""The CUDA backend with several ranks, whole binary under a real mpirun: what
tests/gpu/test_gpu_model.c (one process, one rank: stories260K against run.c,
synthetic models of every weight type against the CPU, offload budgets) cannot
cover.

What is compared, and why that way:
- ranks on one GPU (--tp-comm mpi: sums staged through the host): the same
  ids as one rank on the GPU, every one (the row-parallel sums are exact in
  f64 there as on the CPU, and the column-parallel rows of prompt batches
  come from tile kernels that sum each output in one order whatever the
  rank's share: cuBLAS, which chose its algorithm by the shape, did not).
- NCCL: tp 2 with the sums over NCCL, f64 (one rank's ids) and f32 (the
  ids of tp 2 over MPI on an f32 wire). With one GPU both ranks share it,
  each told a distinct NCCL_HOSTID (NCCL then connects them as hosts, and
  shoal takes the same host ids); if NCCL still refuses that, the case is an
  expected failure (xfail), not a failure.
- offload groups (--device-mem with --offload-group 2 and 4, every layer
  streamed): the same ids as one rank without a budget on the device, every
  one (streaming moves bytes, it changes no arithmetic).
Each case prints one line (pytest -rA shows them): where the ids part, and
when they do, how far the logits were apart.

The models are written once per module with `shoal synth`, into /dev/shm when
it is writable (else pytest's temporary directory).

Skipped, saying why, only where there is no GPU at all: nvidia-smi absent or
listing none, and shoal reporting no CUDA device ("no NVIDIA driver here").
Where a GPU is listed but `shoal run --device cuda` fails, or shoal fails for
another reason than finding no device, every test fails with shoal's message.

Environment:
  SHOAL_BIN              the binary (default build/shoal); the GPU run uses build-gpu/shoal
  SHOAL_GPU_TEST_DEVICE  cpu: run all of it against the CPU backend (a dry run on
                         machines without a GPU: cpu vs cpu must pass)
  SHOAL_GPU_TEST_ARGS    extra flags for the device side only (e.g. "--simd scalar"
                         with SHOAL_GPU_TEST_DEVICE=cpu)
  SHOAL_MPIRUN           mpirun to use (default: from PATH)
"""
from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DEVICE = os.environ.get("SHOAL_GPU_TEST_DEVICE", "cuda")
ON_GPU = DEVICE == "cuda"
EXTRA = shlex.split(os.environ.get("SHOAL_GPU_TEST_ARGS", ""))
N_GEN = 48          # generated tokens per case


# ------------------------------------------------------------- the device

def gpus_listed() -> int:
    """GPUs that nvidia-smi lists (0 when it is absent or lists none)."""
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return 0
    return sum(1 for ln in p.stdout.splitlines() if ln.startswith("GPU "))


def n_gpus() -> int:
    """GPUs to plan the layouts for (1 when nvidia-smi cannot say)."""
    return gpus_listed() or 1


def model_dir(tmp_path_factory, name: str) -> Path:
    """A directory for models: in memory (/dev/shm) when it is writable."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return Path(tempfile.mkdtemp(prefix=f"shoal-{name}-", dir=shm))
    return tmp_path_factory.mktemp(name)


NO_DEVICE = "no CUDA device can be used here: "


def _cuda_state() -> tuple:
    """(why to skip, why to fail): both None when `shoal run --device cuda`
    runs here. Skip only when nothing has a GPU: nvidia-smi lists none and
    shoal finds no CUDA device; anything else that stops it is a failure."""
    if not ON_GPU:
        return None, None
    shoal = h.shoal_bin()
    d = Path(tempfile.mkdtemp(prefix="shoal-gpu-probe-",
                              dir="/dev/shm" if os.access("/dev/shm", os.W_OK) else None))
    try:
        m = d / "probe.gguf"
        subprocess.run([shoal, "synth", "-o", str(m), "--dim", "64", "--layers", "1", "--heads", "2",
                        "--kv-heads", "1", "--ffn", "64", "--vocab", "300"],
                       capture_output=True, timeout=60, check=True)
        p = subprocess.run([shoal, "run", "-m", str(m), "--device", "cuda", "-p", "a", "-n", "1",
                            "--temp", "0", "-q"], capture_output=True, timeout=120)
    finally:
        shutil.rmtree(d, ignore_errors=True)
    if p.returncode == 0:
        return None, None
    err = p.stderr.decode(errors="replace").strip()
    listed = gpus_listed()
    line = next((ln for ln in err.splitlines() if NO_DEVICE in ln), None)
    if line is not None and listed == 0:
        return line.split(NO_DEVICE, 1)[1], None
    where = f"nvidia-smi lists {listed} GPU(s), but " if listed else ""
    return None, f"{where}`shoal run --device cuda` fails here (exit {p.returncode}):\n{err[-3000:]}"


# Every test skips with the reason (pytest -rs prints it once, counted), and
# pytest exits 0: a module-level skip would collect nothing and exit 5, which
# a CTest entry reads as a failure.
_skip, _fail = _cuda_state()
pytestmark = pytest.mark.skipif(_skip is not None, reason=f"no CUDA device: {_skip}")


@pytest.fixture(autouse=True)
def _cuda_must_start():
    """A GPU that is there but will not run is every test's failure, never a skip."""
    if _fail is not None:
        pytest.fail(_fail)


def dev(gpu: int | None = None) -> list:
    """Flags for the device under test (with --gpu N only on a real GPU)."""
    out = ["--device", DEVICE] + EXTRA
    if ON_GPU and gpu is not None:
        out += ["--gpu", gpu]
    return out


# ------------------------------------------------------------- the models

BASE = ["--dim", 256, "--layers", 4, "--heads", 8, "--kv-heads", 2, "--ffn", 768, "--vocab", 2048]
SYNTH = {  # as test_gpu_model.c's table (shoal synth's flags, seed 11)
    "q8_0": BASE + ["--type", "q8_0"],
    "q4_0": BASE + ["--type", "q4_0"],
    "f16": BASE + ["--type", "f16"],
    "hd80-q8_0": ["--dim", 320, "--layers", 4, "--heads", 4, "--kv-heads", 2, "--head-dim", 80,
                  "--ffn", 864, "--vocab", 2048, "--type", "q8_0"],
    "qwen2-tied-q8_0": ["--arch", "qwen2", "--tied", "--dim", 256, "--layers", 4, "--heads", 8,
                        "--kv-heads", 2, "--ffn", 768, "--vocab", 3000, "--type", "q8_0"],
}
OFFLOAD = ["--dim", 512, "--layers", 8, "--heads", 8, "--kv-heads", 4, "--ffn", 1408, "--vocab", 4000,
           "--type", "q8_0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = model_dir(tmp_path_factory, "gpu-models")
    out = {}
    try:
        if _skip is None and _fail is None:
            for name, flags in SYNTH.items():
                out[name] = d / f"{name}.gguf"
                h.run(["synth", "-o", out[name], "--seed", 11] + flags)
            out["offload-q8_0"] = d / "offload-q8_0.gguf"
            h.run(["synth", "-o", out["offload-q8_0"], "--seed", 5] + OFFLOAD)
        yield out
    finally:
        shutil.rmtree(d, ignore_errors=True)


# words(40, 1): ~60-100 ids with these vocabularies (the batched path); the same
# prompt as test_gpu_model.c's
PROMPT = ("ar w wcso ecme rhol e p c me fw uh fd m n oly ysdd yctw cm up afy n uwew d nnyh s cy ufr c "
          "yp mt upsy wumu p feh pn p taa f r ro")


# ------------------------------------------------------------- runs

def first_diff(a: list, b: list) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def read_logits(path: Path) -> dict:
    """{pos: (token, values)} of a --logits-out file."""
    rows = {}
    with open(path) as f:
        for line in f:
            head, _, rest = line.partition(":")
            w = head.split()
            if len(w) == 4 and w[0] == "pos":
                rows[int(w[1])] = (int(w[3]), np.array(rest.split(), dtype=np.float64))
    assert rows, f"{path}: no logits"
    return rows


def logit_diff(ref: dict, got: dict) -> tuple:
    """Over the positions both runs fed the same tokens (in order, from the
    first): (positions compared, worst max|diff| / max|ref| of a position,
    the largest |diff|, the position of the worst)."""
    n, worst, worst_abs, at = 0, 0.0, 0.0, None
    for p in sorted(ref):
        if p not in got or got[p][0] != ref[p][0]:
            break
        a, b = ref[p][1], got[p][1]
        d = float(np.max(np.abs(a - b)))
        r = d / max(float(np.max(np.abs(a))), 1e-30)
        n += 1
        worst_abs = max(worst_abs, d)
        if r >= worst:
            worst, at = r, p
    return n, worst, worst_abs, at


def one_rank_run(model, tmp_path, tag, logits=False) -> tuple:
    """One rank on the device: (ids: the prompt's after BOS and the generated, logits or None)."""
    ids, lg = tmp_path / f"{tag}.ids", tmp_path / f"{tag}.logits"
    cmd = ["run", "-m", model, "-p", PROMPT, "-n", N_GEN, "--temp", 0, "--ignore-eos", "-q",
           "--ids-out", ids] + dev(0)
    if logits:
        cmd += ["--logits-out", lg]
    h.run(cmd, timeout=300)
    return h.read_ids(ids), (read_logits(lg) if logits else None)


def mpirun_shoal(np_, args, wrapper=None, timeout=300) -> subprocess.CompletedProcess:
    """mpirun -np np_ shoal args (or a wrapper script that runs shoal), unchecked."""
    prog = str(wrapper) if wrapper else h.shoal_bin()
    cmd = [h.mpirun_bin()] + h.MPIRUN_FLAGS + ["-np", str(np_), prog] + [str(a) for a in args]
    return subprocess.run(cmd, capture_output=True, timeout=timeout)


def skip_without_mpi(p: subprocess.CompletedProcess):
    err = p.stderr.decode(errors="replace")
    if p.returncode != 0 and "built without MPI" in err:
        pytest.skip("this shoal was built without MPI: " + err.strip().splitlines()[-1])


_one_rank = {}


def one_rank(models, name, tmp_path) -> list:
    """One rank's greedy ids on the device (cached per model)."""
    if name not in _one_rank:
        _one_rank[name] = one_rank_run(models[name], tmp_path, f"one-{name}")[0]
    return _one_rank[name]


def explain(models, name, tmp_path, np_, args, base, got, wrapper=None) -> str:
    """Why a layout's ids part from one rank's: both rerun with --logits-out;
    how far their logits are apart while the inputs are the same, and one
    rank's margin where they part (a near-tie, or not)."""
    try:
        _, one = one_rank_run(models[name], tmp_path, "why-one", logits=True)
        lg = tmp_path / "why-layout.logits"
        p = mpirun_shoal(np_, list(args) + ["--logits-out", lg], wrapper)
        if p.returncode != 0:
            return "(the rerun with --logits-out failed)"
        multi = read_logits(lg)
        n, worst, worst_abs, at = logit_diff(one, multi)
        d = first_diff(base, got)  # ids[d] is predicted by the logits at position d (BOS first)
        row, mrow = one.get(d), multi.get(d)
        margin = ""
        if row is not None and mrow is not None:
            gap = float(row[1][base[d]] - row[1][got[d]])
            margin = (f"; where they part (pos {d}) one rank's margin is {gap:.3g}, the layout moved "
                      f"those logits by <= {float(np.max(np.abs(row[1] - mrow[1]))):.3g}")
        return (f"logits of {n} positions with the same inputs: max |diff| {worst_abs:.3g} "
                f"({worst:.2e} x max|logit|, pos {at}){margin}")
    except Exception as e:  # a diagnosis only: never hide the failure it explains
        return f"(no diagnosis: {e})"


def layout_case(models, tmp_path, name, np_, args, wrapper=None):
    """Runs a layout; returns (process, its args, its ids or None when it failed)."""
    ids = tmp_path / "ids.txt"
    args = list(args) + ["-m", models[name], "-p", PROMPT, "-n", N_GEN, "--temp", 0, "--ignore-eos",
                         "--ids-out", ids]
    p = mpirun_shoal(np_, args, wrapper)
    skip_without_mpi(p)
    return p, args, (h.read_ids(ids) if p.returncode == 0 else None)


def assert_same(models, tmp_path, name, np_, args, base, got, what, wrapper=None):
    same = got == base
    line = f"{name}: {what}: " + ("ids identical to one rank" if same else
                                  f"ids part from one rank's at id {first_diff(got, base)} of {len(base)} "
                                  f"(generated token {first_diff(got, base) - len(base) + N_GEN})")
    if not same:
        line += "; " + explain(models, name, tmp_path, np_, args, base, got, wrapper)
    print(line)
    assert same, line


# ------------------------------------------------------------- ranks sharing one GPU

@pytest.mark.parametrize("name,tp,pp,how", [
    ("q8_0", 2, 1, "mpi"), ("q8_0", 1, 2, "mpi"), ("q8_0", 2, 2, "mpi"),
    ("q4_0", 2, 2, "mpi"), ("f16", 2, 1, "mpi"), ("qwen2-tied-q8_0", 2, 1, "mpi"),
    ("hd80-q8_0", 2, 1, "mpi"),
    ("q8_0", 2, 1, "auto"),  # auto on one GPU: NCCL would refuse, so MPI with host staging
])
def test_ranks_share_one_gpu(models, tmp_path, name, tp, pp, how):
    base = one_rank(models, name, tmp_path)
    what = f"tp {tp} x pp {pp} --tp-comm {how}, every rank on one {DEVICE} device"
    p, args, got = layout_case(models, tmp_path, name, tp * pp,
                               ["run", "--tp", tp, "--pp", pp, "--tp-comm", how] + dev(0))
    err = p.stderr.decode(errors="replace")
    assert got is not None, f"{what}: exited {p.returncode}:\n{err[-4000:]}"
    if how == "auto" and ON_GPU and n_gpus() == 1:
        assert "+ nccl" not in err, "--tp-comm auto chose NCCL for ranks sharing a GPU:\n" + err
    assert_same(models, tmp_path, name, tp * pp, args, base, got, what)


# ------------------------------------------------------------- NCCL

@pytest.mark.parametrize("wire", ["f64", "f32"])
def test_nccl_tp2(models, tmp_path, wire):
    """tp 2 with the sums over NCCL. With >= 2 GPUs: a GPU per rank. With one:
    both ranks on GPU 0, each told a distinct NCCL_HOSTID (NCCL then talks
    between them as between hosts, P2P and shared memory off; shoal takes the
    same host id). f64 sums: one rank's ids. f32 (each rank's part rounded to
    f32 on the device, summed there): the ids of the same layout with the sums
    over MPI on an f32 wire (two ranks' f32 sum is the same either way round).
    If NCCL still refuses the shared GPU, that is an expected failure (xfail)."""
    if not ON_GPU:
        pytest.skip("NCCL needs --device cuda (SHOAL_GPU_TEST_DEVICE is cpu)")
    name = "q8_0"
    gpus = n_gpus()
    wrapper = None
    gpu_flags = []
    if gpus < 2:
        wrapper = tmp_path / "nccl-one-gpu.sh"
        wrapper.write_text("#!/bin/sh\n# one GPU for every rank: NCCL told they are on different hosts\n"
                           'exec env NCCL_HOSTID="shoal-rank-${OMPI_COMM_WORLD_RANK:-0}" '
                           f"NCCL_P2P_DISABLE=1 NCCL_SHM_DISABLE=1 {shlex.quote(h.shoal_bin())} \"$@\"\n")
        wrapper.chmod(0o755)
        gpu_flags = ["--gpu", 0]
    common = ["run", "--tp", 2, "--comm-dtype", wire, "--device", "cuda"] + EXTRA + gpu_flags
    if wire == "f64":
        base, against = one_rank(models, name, tmp_path), "one rank"
    else:
        p, _, base = layout_case(models, tmp_path, name, 2, common + ["--tp-comm", "mpi"])
        assert base is not None, f"tp 2 over MPI, f32 wire: exited {p.returncode}:\n{p.stderr.decode()[-3000:]}"
        against = "tp 2 over MPI on an f32 wire"
    what = f"tp 2 over NCCL, {wire} sums, on {gpus} GPU(s)" + (" (NCCL_HOSTID per rank)" if wrapper else "")
    p, args, got = layout_case(models, tmp_path, name, 2, common + ["--tp-comm", "nccl"], wrapper)
    err = p.stderr.decode(errors="replace")
    if got is None:
        if "has no NCCL" in err:
            pytest.skip("this shoal was built without NCCL")
        if gpus < 2 and ("share a GPU" in err or "Duplicate GPU" in err):
            line = next(ln for ln in err.splitlines() if "share a GPU" in ln or "Duplicate GPU" in ln)
            pytest.xfail(f"one GPU: NCCL with both ranks on it is refused ({line.strip()})")
        pytest.fail(f"{what}: exited {p.returncode}:\n{err[-4000:]}")
    assert "+ nccl" in err, "the load line does not say NCCL carries the sums:\n" + err
    if wire == "f64":
        assert_same(models, tmp_path, name, 2, args, base, got, what, wrapper)
    else:
        line = f"{name}: {what}: " + ("ids identical to " + against if got == base else
                                      f"ids part from {against}'s at id {first_diff(got, base)}")
        print(line)
        assert got == base, line


# ------------------------------------------------------------- offload groups (--device-mem)

def offload_run(model, args, tmp_path, tag, np_=1):
    """A run with -v (and a budget in args): (ids or None when it failed, stderr)."""
    ids = tmp_path / f"{tag}.ids"
    full = ["run", "-m", model, "-p", PROMPT, "-n", N_GEN, "--temp", 0, "--ignore-eos", "-v",
            "--ids-out", ids] + [str(a) for a in args]
    p = h.run(full, check=False, timeout=300) if np_ == 1 else mpirun_shoal(np_, full)
    if np_ > 1:
        skip_without_mpi(p)
    err = p.stderr.decode(errors="replace")
    return (h.read_ids(ids) if p.returncode == 0 else None), err


@pytest.mark.parametrize("group", [2, 4])
def test_offload_groups(models, tmp_path, group):
    """--offload-group G on the device, every layer streamed: the ids of one rank
    without a budget. Ranks sharing one GPU gather the parts in host memory (NCCL
    refuses a shared GPU); with a GPU per rank the group all-gathers on the devices
    over NCCL and each rank copies 1/G of every layer."""
    model = models["offload-q8_0"]
    base, err = offload_run(model, dev(0), tmp_path, "nobudget")
    assert base is not None, err[-3000:]
    gpus = n_gpus()
    own = ON_GPU and gpus >= group
    flags = dev(None if own else 0) + ["--prefetch", 1, "--offload-group", group]
    _, err = offload_run(model, flags + ["--device-mem", "64K"], tmp_path, "gsmall", group)
    m = re.search(r"this rank needs (\d+\.\d+ \w+)", err)
    assert m, err[-3000:]
    budget = int(h.parse_size(m.group(1)) * 1.02)
    got, err = offload_run(model, flags + ["--device-mem", budget], tmp_path, f"g{group}", group)
    assert got is not None, f"offload group {group}: exited:\n{err[-3000:]}"
    assert got == base, f"offload group {group} ({gpus} GPUs): ids differ from one rank's"
    where = "on the device" if "all-gathers the others on the device" in err else "in host memory"
    on = f"{gpus} GPU(s)" if ON_GPU else DEVICE
    print(f"offload group {group} on {on}: parts gathered {where}; ids identical to one rank")
    if ON_GPU and not own:
        assert where == "in host memory", err[-1500:]
