"""Gemma 3 270M (one KV head of 256 values, 4 query heads, windowed layers,
a 262k vocabulary) in every layout, against one rank: the generated ids and
the logits of every position (raw f32, --logits-f32), byte for byte.

- tp 2 and tp 4: the ranks share the one KV head (each a copy of it) and
  split the query heads evenly; tp 3 unevenly (2, 1, 1);
- pp 2 (windowed and global layers on both stages), tp 2 x pp 2;
- from shards (tp 3);
- offload: 16 layers or more of 18 streamed through one buffer (--prefetch 0;
  the least budget that runs, and 2% more), from RAM.
The prompt reaches past nothing (the window is 512): test_gemma3.py checks
the window against llama.cpp; here the layouts must only agree.
"""
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

PROMPT = "The capital of France is"
ARGS = ["-p", PROMPT, "-n", 16, "--temp", 0, "--ignore-eos", "--no-echo", "-c", 128, "-t", 1]
LAYOUTS = [("tp 2", 2, ["--tp", 2]), ("tp 3", 3, ["--tp", 3]), ("tp 4", 4, ["--tp", 4]),
           ("pp 2", 2, ["--pp", 2]), ("tp 2 x pp 2", 4, ["--tp", 2, "--pp", 2])]
_base = {}


@pytest.fixture(scope="module")
def model():
    return h.gemma3()


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    return tmp_path_factory.mktemp("gemma3_layouts")


def run(model_args, tmp, label, np_=1, extra=(), check=True):
    return h.layout_run(model_args, ARGS, tmp, label, np_, extra, check)


def same_as_one_rank(model, tmp, case, got):
    if "one" not in _base:
        ids, logits, err = run(["-m", model], tmp, "one")
        assert ids and len(logits) > 0, err[-2000:]
        _base["one"] = (ids, logits)
    h.assert_same_run(case, got, _base["one"])


@pytest.mark.parametrize("case,np_,flags", LAYOUTS, ids=[c for c, _, _ in LAYOUTS])
def test_layouts(model, tmp, case, np_, flags):
    t0 = time.time()
    got = run(["-m", model], tmp, re.sub(r"\W+", "_", case), np_, flags)
    if case == "tp 3":  # the one KV head on every rank, the query heads 2, 1, 1
        assert "tp 2: query heads 3-3, KV heads 0-0" in got[2], got[2][-2000:]
    same_as_one_rank(model, tmp, case, got)
    print(f"{case}: as one rank ({time.time() - t0:.1f} s)")


def test_shards(model, tmp):
    d = tmp / "shards_tp3"
    h.run(["shard", "-m", model, "-o", d, "-q", "--tp", 3], timeout=300)
    same_as_one_rank(model, tmp, "shards tp 3", run(["--shards", d], tmp, "shards", 3))


def test_offload(model, tmp):
    _, _, err = run(["-m", model], tmp, "small", 1, ["--device-mem", "64K", "--prefetch", 0], check=False)
    m = re.search(r"this rank needs (\d+\.\d+ \w+)", err)
    assert m, err[-3000:]
    budget = int(h.parse_size(m.group(1)) * 1.02)
    got = run(["-m", model], tmp, "offload", 1, ["--device-mem", budget, "--prefetch", 0, "--offload-from", "ram"])
    m = re.search(r"offload \(rank 0\): \d+ of 18 layers resident, (\d+) streamed", got[2] or "")
    assert m and int(m.group(1)) >= 16, (got[2] or "")[-2000:]
    same_as_one_rank(model, tmp, "offload", got)
