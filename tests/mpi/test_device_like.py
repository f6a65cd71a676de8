"""The code around a device backend, checked without a GPU: the CPU backend
made to behave as the CUDA one does (SHOAL_CPU_AS_DEVICE=1: weights copied
into one device block the model carves, a tied head prepared once, buffers
that are not host memory, so that tensor-parallel sums are downloaded,
all-reduced over MPI and uploaded again) must give the tokens of the plain
CPU backend, on one rank and in every layout.
"""
import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DEVICE_LIKE = dict(os.environ, SHOAL_CPU_AS_DEVICE="1")


def ids_of(np_, args, tmp_path, tag, env=None):
    ids = tmp_path / f"{tag}.ids"
    full = list(args) + ["--ids-out", ids]
    p = h.run(["run"] + full, env=env) if np_ == 1 else h.mpirun(np_, ["run"] + full, env=env)
    return h.read_ids(ids), p.stderr.decode(errors="replace")


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2)])
def test_stories_device_like_matches_oracle(tp, pp, tmp_path):
    model = h.testdata("stories260K.gguf")
    want = h.read_ids(h.testdata("oracle/runc_greedy_once_upon_a_time_n32.ids"))
    args = ["-m", model, "-p", "Once upon a time", "-n", 28, "--temp", 0]
    if tp * pp > 1:
        args += ["--tp", tp, "--pp", pp]
    got, err = ids_of(tp * pp, args, tmp_path, f"dev{tp}x{pp}", DEVICE_LIKE)
    assert got == want, f"device-like CPU backend, tp {tp} x pp {pp}: ids differ from run.c's"
    if tp > 1:
        assert "staged through the host" in err, f"the sums were not staged:\n{err[-2000:]}"


@pytest.mark.parametrize("flags", [
    ["--type", "q4_0", "--tied", "--arch", "qwen2"],   # tied head: prepared once
    ["--type", "f16", "--heads", 8, "--kv-heads", 2],
])
def test_synthetic_device_like_equals_cpu(flags, tmp_path):
    model = tmp_path / "m.gguf"
    h.run(["synth", "-o", model, "--dim", 256, "--layers", 3, "--ffn", 512, "--vocab", 600,
           "--seed", 9] + flags)
    args = ["-m", model, "-p", "a b c d e f g h i j k l", "-n", 24, "--temp", 0, "--ignore-eos"]
    want, _ = ids_of(1, args, tmp_path, "cpu")
    for tp in (1, 2):
        extra = ["--tp", 2] if tp == 2 else []
        got, _ = ids_of(tp, args + extra, tmp_path, f"dev{tp}", DEVICE_LIKE)
        assert got == want, f"{flags} tp {tp}: the device-like backend's ids differ from the CPU's"
