"""The weight types of issue 17 over every layout, under a real mpirun
(oversubscribed on this 2-core machine): on llama.cpp-quantized files
(tests/model/data/kquants/, tests/model/record_kquants.py), tensor parallel
(tp 2, and tp 3, uneven in the FFN), pipeline parallel (pp 2), both (tp 2 x
pp 2, tp 3 x pp 2, and tp 2 weighted 1:3), from `shoal shard`'s files (tp 3,
tp 2 x pp 2) and with offload (--device-mem on the CPU: one rank streaming
every layer, from RAM and from the map; tp 2; an offload group of 2) must give
one rank's greedy ids, every one, and its --logits-out text (every position's
logits as printed, 7 significant digits: enough to see the all-reduce's sums
rounded to f32 on the wire, --comm-dtype f32, which changes 9 of c-mix's 39
positions at tp 2), from one prompt of 8 ids and 32 generated tokens; at
the default SIMD level, and tp 2 and tp 3 at the others too.

The files: shape "c" (head size 128, 3 KV groups of 256 columns, FFN 5 x 256,
so every split falls on a super-block) in llama.cpp's Q4_K_M (Q4_K and Q6_K)
and c-mix (--tensor-type overrides: Q2_K, Q3_K, Q5_K, IQ4_XS): every
super-block type in a row-parallel matrix (attn_output, ffn_down: each rank's
columns summed in f64, the parts all-reduced) and a column-parallel one. Q5_0,
Q5_1 and IQ4_NL (blocks of 32) on shape "a", which splits at tp 2 (and 4) for
them. Shape "a" in K-quants cannot be split (a KV group's 128 columns are half
a super-block): refused, naming the sizes that work.

Left out (the file takes ~20 s here; these add little): sampling and
--pp-weights (test_layouts covers them on other types, and nothing there
depends on the weight type), offload with tp 3 or pp 2 and with prefetch 1
or more (on two layers, two buffers cost what keeping both layers costs: the
planner keeps them; test_offload streams Q8_0 with deeper prefetch), shards
and offload of the shape "a" files, the second recorded prompt.
"""
import json
import re
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DIR = Path(__file__).resolve().parent.parent / "model" / "data" / "kquants"
ORACLE = json.loads((DIR / "oracle.json").read_text())
PROMPT = ",".join(str(i) for i in ORACLE["prompts"][0])
N_GEN = 32
# -c 256: a small cache, so that the offload budgets are about the layers
ARGS = ["--prompt-ids", PROMPT, "-n", N_GEN, "--temp", 0, "--ignore-eos", "--no-echo", "-c", 256]


def run(model_args, tmp_path, label, np_=1, extra=(), check=True):
    """ids, logits text and stderr of one run (-v: the plan and the offload on stderr)."""
    return h.layout_run(model_args, ARGS, tmp_path, label, np_, extra, check, f32=False, timeout=120)


_base = {}


@pytest.fixture(scope="module")
def tmp(tmp_path_factory):
    """One folder for the module: one rank's run of each file is made once and kept."""
    return tmp_path_factory.mktemp("kquant_layouts")


def tag(*parts):
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", "-".join(str(p) for p in parts))


def one_rank(name, tmp_path, simd=()):
    key = (name,) + tuple(simd)
    if key not in _base:
        ids, logits, err = run(["-m", DIR / f"{name}.gguf"], tmp_path, tag(*key, "one"), 1, simd)
        assert ids and len(ids) == len(ORACLE["prompts"][0]) + N_GEN, (ids, err[-2000:])
        _base[key] = (ids, logits)
    return _base[key]


def differs(base_logits, logits):
    """The first position whose printed logits differ, and the largest difference there."""
    for a, b in zip(base_logits.splitlines(), logits.splitlines()):
        if a != b:
            va = [float(x) for x in a.split(":")[1].split()]
            vb = [float(x) for x in b.split(":")[1].split()]
            return f"{a.split(':')[0]}: max |difference| {max(abs(x - y) for x, y in zip(va, vb)):.3g}"
    return f"{len(base_logits.splitlines())} lines against {len(logits.splitlines())}"


def same_as_one_rank(name, case, tmp_path, got, t0, simd=()):
    base_ids, base_logits = one_rank(name, tmp_path, simd)
    ids, logits, err = got
    assert ids is not None, f"{name} {case}: the run failed:\n{err[-3000:]}"
    if ids != base_ids:
        k = next((i for i, (a, b) in enumerate(zip(base_ids, ids)) if a != b), min(len(ids), len(base_ids)))
        pytest.fail(f"{name} {case}: ids differ from one rank's at {k} (of {len(base_ids)}): "
                    f"{ids[k:k + 4]} against {base_ids[k:k + 4]}; logits: {differs(base_logits, logits)}")
    assert logits == base_logits, f"{name} {case}: same ids, but the logits differ at {differs(base_logits, logits)}"
    n_pos = len(logits.splitlines())
    print(f"{name:9s} {case:30s}: {len(ids)} ids and the logits of {n_pos} positions as one rank's "
          f"({time.time() - t0:.1f} s)")


# ------------------------------------------------- layouts from the GGUF

C_FILES = ["c-q4_k_m", "c-mix"]
LAYOUTS = [("tp 2", 2, ["--tp", 2]), ("tp 3", 3, ["--tp", 3]), ("pp 2", 2, ["--pp", 2]),
           ("tp 2 x pp 2", 4, ["--tp", 2, "--pp", 2]), ("tp 3 x pp 2", 6, ["--tp", 3, "--pp", 2]),
           ("tp 2, --tp-weights 1,3", 2, ["--tp", 2, "--tp-weights", "1,3"])]
# what one rank of a layout takes: each split on 256-value blocks
SPLIT = {"tp 2": "tp 1: query heads 4-5, KV heads 2-2, FFN 512-1279",
         "tp 3": "tp 2: query heads 4-5, KV heads 2-2, FFN 1024-1279",
         "tp 2, --tp-weights 1,3": "tp 0: query heads 0-1, KV heads 0-0, FFN 0-255"}


def test_files_hold_the_types():
    """c-q4_k_m and c-mix hold every super-block type in a row- and a column-parallel matrix."""
    row, col = set(), set()
    for name in C_FILES:
        for t, typ in ORACLE["files"][name]["types"].items():
            if t.endswith(("attn_output.weight", "ffn_down.weight")):
                row.add(typ)
            elif t.endswith(("attn_q.weight", "attn_k.weight", "attn_v.weight", "ffn_gate.weight",
                             "ffn_up.weight")):
                col.add(typ)
    want = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "IQ4_XS"}
    assert want <= row and want <= col, f"row-parallel {sorted(row)}, column-parallel {sorted(col)}"


@pytest.mark.parametrize("case,np_,flags", LAYOUTS, ids=[c for c, _, _ in LAYOUTS])
@pytest.mark.parametrize("name", C_FILES)
def test_layouts(name, case, np_, flags, tmp):
    t0 = time.time()
    got = run(["-m", DIR / f"{name}.gguf"], tmp, tag(name, case), np_, flags)
    if case in SPLIT:
        assert SPLIT[case] in got[2], got[2][-2000:]
    same_as_one_rank(name, case, tmp, got, t0)


@pytest.mark.parametrize("case,np_,flags", LAYOUTS[:2], ids=[c for c, _, _ in LAYOUTS[:2]])
@pytest.mark.parametrize("name", C_FILES)
def test_simd_levels(name, case, np_, flags, tmp):
    """tp 2 and tp 3 at each SIMD level this machine has but the default (each level's own
    f64 kernels for the row-parallel sums, against its own one-rank run)."""
    for lv in h.simd_levels()[:-1]:  # the last is the default's choice, tested above
        t0 = time.time()
        simd = ["--simd", lv]
        got = run(["-m", DIR / f"{name}.gguf"], tmp, tag(name, case, lv), np_, flags + simd)
        same_as_one_rank(name, f"{case}, --simd {lv}", tmp, got, t0, simd)


# Q5_0, Q5_1 and IQ4_NL: blocks of 32, Q8_0 activations; shape "a" (2 KV groups)
A_CASES = [("a-q5_0", "tp 2", 2, ["--tp", 2]), ("a-q5_0", "tp 4 (KV heads shared)", 4, ["--tp", 4]),
           ("a-q5_1", "tp 2", 2, ["--tp", 2]), ("a-iq4_nl", "tp 2", 2, ["--tp", 2]),
           ("a-iq4_nl", "tp 2 x pp 2", 4, ["--tp", 2, "--pp", 2])]


@pytest.mark.parametrize("name,case,np_,flags", A_CASES, ids=[f"{n}-{c}" for n, c, _, _ in A_CASES])
def test_blocks_of_32(name, case, np_, flags, tmp):
    t0 = time.time()
    same_as_one_rank(name, case, tmp, run(["-m", DIR / f"{name}.gguf"], tmp, tag(name, case), np_, flags), t0)


@pytest.mark.parametrize("name,np_,msg", [
    ("a-q4_k_m", 2, "off the 256-value quantization blocks of attn_output. Tensor-parallel sizes that work: 1\n"),
    # 4 ranks would share the first KV group, one query head each: rank 1's output columns would start
    # inside a super-block
    ("c-mix", 4, "rank 1's attention output columns would start at 128, off the 256-value quantization "
                 "blocks of attn_output. Tensor-parallel sizes that work: 1, 2, 3\n"),
])
def test_splits_that_cannot_be(name, np_, msg, tmp_path):
    _, _, err = run(["-m", DIR / f"{name}.gguf"], tmp_path, "refused", np_, ["--tp", np_], check=False)
    assert err.count(msg) == 1, f"{name} --tp {np_}: rank 0 alone explains:\n{err[-3000:]}"
    print(f"{name:9s} {'tp ' + str(np_) + ' refused':30s}: ...{msg.strip()[-60:]}")


# ---------------------------------------------------------------- shards

SHARDS = [("tp 3", 3, ["--tp", 3]), ("tp 2 x pp 2", 4, ["--tp", 2, "--pp", 2])]


@pytest.mark.parametrize("case,np_,flags", SHARDS, ids=[c for c, _, _ in SHARDS])
@pytest.mark.parametrize("name", C_FILES)
def test_shards(name, case, np_, flags, tmp):
    t0 = time.time()
    d = tmp / tag(name, "shards", case)
    h.run(["shard", "-m", DIR / f"{name}.gguf", "-o", d, "-q"] + flags)
    same_as_one_rank(name, "shards " + case, tmp, run(["--shards", d], tmp, d.name, np_), t0)


# --------------------------------------------------------------- offload


def least_budget(name, tmp, np_, flags):
    """What a rank needs with every layer streamed, from the refusal of a far too small budget."""
    _, _, err = run(["-m", DIR / f"{name}.gguf"], tmp, "small", np_, flags + ["--device-mem", "64K"], check=False)
    m = re.search(r"this rank needs (\d+\.\d+ \w+)", err)
    assert m, err[-3000:]
    return h.parse_size(m.group(1))


# Two layers: only --prefetch 0 streams (one layer buffer; with prefetch 1 the
# two buffers would cost what keeping both layers costs, and the planner keeps them)
OFFLOAD = [("offload from ram", 1, ["--prefetch", 0, "--offload-from", "ram"]),
           ("offload from the map", 1, ["--prefetch", 0, "--offload-from", "map"]),
           ("offload, tp 2", 2, ["--tp", 2, "--prefetch", 0]),
           ("offload group 2", 2, ["--offload-group", 2, "--prefetch", 0])]


@pytest.mark.parametrize("case,np_,flags", OFFLOAD, ids=[c for c, _, _ in OFFLOAD])
@pytest.mark.parametrize("name", C_FILES)
def test_offload(name, case, np_, flags, tmp):
    t0 = time.time()
    budget = int(least_budget(name, tmp, np_, flags) * 1.02)
    got = run(["-m", DIR / f"{name}.gguf"], tmp, tag(name, case), np_, flags + ["--device-mem", budget])
    assert got[2] and "offload (rank 0): 0 of 2 layers resident" in got[2], got[2][-2000:]
    if "--offload-group" in flags:
        assert "gathered from the offload group" in got[2], got[2][-2000:]
    if "--offload-from" in flags:
        src = flags[flags.index("--offload-from") + 1]
        assert ("from ram" if src == "ram" else "from the map") in got[2], got[2][-2000:]
    same_as_one_rank(name, case, tmp, got, t0)
