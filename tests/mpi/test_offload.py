"""Offload (ZeRO-3 style) on the CPU's device arena (--device-mem): layers that
do not fit the budget stream into layer buffers before they run. For budgets
that keep every layer, about half, one and none resident, with prefetch
depths 0, 1 and 2, greedy tokens must equal the run without a budget; the
arena's peak must stay within the budget and within 5% of what the planner
predicted; a model whose weights exceed the budget several times over must
still run; and tensor- and pipeline-parallel ranks each offload their own
part with the same tokens.
"""
import os
import re
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

size = h.parse_size


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("offload") / "m.gguf"
    h.run(["synth", "-o", path, "--type", "q8_0", "--dim", 256, "--layers", 8, "--heads", 8,
           "--kv-heads", 4, "--ffn", 768, "--vocab", 700, "--seed", 3])
    return path


ARGS = ["-p", "a b c d e f g h i j", "-n", 24, "--temp", 0, "--ignore-eos", "-c", 256, "-v"]


def run(model, tmp_path, extra, np_=1, tag="x", check=True, env=None):
    ids = tmp_path / f"{tag}.ids"
    args = ["run", "-m", model, "--ids-out", ids] + ARGS + [str(a) for a in extra]
    p = h.run(args, check=check, env=env) if np_ == 1 else h.mpirun(np_, args, check=check, env=env)
    err = p.stderr.decode(errors="replace")
    out = {"rc": p.returncode, "err": err, "ids": h.read_ids(ids) if p.returncode == 0 else None}
    m = re.search(r"device peak (\d+\.\d+ \w+) of (\d+\.\d+ \w+)", err)
    if m:
        out["peak"], out["budget"] = size(m.group(1)), size(m.group(2))
    m = re.search(r"offload \(rank 0\): (\d+) of (\d+) layers resident.*predicted device peak (\d+\.\d+ \w+)", err)
    out["resident"] = int(m.group(1)) if m else None
    out["predicted"] = size(m.group(3)) if m else None
    return out


def smallest_budget(model, tmp_path, prefetch, extra=()):
    """The least budget that runs, from the refusal of a far too small one."""
    r = run(model, tmp_path, ["--device-mem", "64K", "--prefetch", prefetch] + list(extra), tag="small",
            check=False)
    assert r["rc"] != 0 and "too small" in r["err"], r["err"][-1500:]
    return size(re.search(r"this rank needs (\d+\.\d+ \w+)", r["err"]).group(1))


@pytest.mark.parametrize("prefetch", [0, 1, 2])
def test_every_budget_gives_the_same_tokens(model, tmp_path, prefetch):
    want = run(model, tmp_path, [], tag="plain")["ids"]
    full = run(model, tmp_path, ["--device-mem", "1G"], tag="full")
    lo, hi = smallest_budget(model, tmp_path, prefetch) * 1.002, full["peak"] * 1.01
    seen = set()
    for k in range(14):
        budget = int(lo + (hi - lo) * k / 13)
        r = run(model, tmp_path, ["--device-mem", budget, "--prefetch", prefetch], tag=f"b{k}")
        resident = 8 if r["resident"] is None else r["resident"]
        seen.add(resident)
        assert r["ids"] == want, f"budget {budget} ({resident} layers resident, prefetch {prefetch}): tokens differ"
        assert r["peak"] <= budget, f"budget {budget}: the arena peaked at {r['peak']}"
        if r["predicted"]:
            assert abs(r["peak"] / r["predicted"] - 1) <= 0.05, \
                f"budget {budget}: peak {r['peak']} against the predicted {r['predicted']}"
    assert {0, 1, 8} <= seen and any(3 <= s <= 5 for s in seen), \
        f"prefetch {prefetch}: the budgets kept {sorted(seen)} layers resident, not all, half, one and none"


def test_weights_several_times_the_budget(tmp_path):
    path = tmp_path / "big.gguf"
    h.run(["synth", "-o", path, "--type", "q8_0", "--dim", 512, "--layers", 16, "--heads", 8,
           "--kv-heads", 4, "--ffn", 1536, "--vocab", 500, "--seed", 4])
    small_state = ["-b", 16]  # activations for 16 tokens: the layers are what weigh
    want = run(path, tmp_path, small_state, tag="plain")["ids"]
    budget = int(smallest_budget(path, tmp_path, 1, small_state) * 1.01)
    r = run(path, tmp_path, ["--device-mem", budget] + small_state, tag="big")
    weights = re.search(r"params on rank 0, (\d+\.\d+ \w+)", r["err"]).group(1)
    assert size(weights) > 4 * budget, f"weights {weights} against a budget of {budget}"
    assert r["resident"] == 0 and r["ids"] == want and r["peak"] <= budget


@pytest.mark.parametrize("tp,pp", [(2, 1), (1, 2)])
def test_parallel_ranks_offload_their_parts(model, tmp_path, tp, pp):
    want = run(model, tmp_path, [], tag="plain")["ids"]
    layout = ["--tp", tp, "--pp", pp, "--prefetch", 1]
    r = run(model, tmp_path, layout + ["--device-mem", "64K"], np_=tp * pp, tag="small", check=False)
    need = size(re.search(r"this rank needs (\d+\.\d+ \w+)", r["err"]).group(1))
    r = run(model, tmp_path, layout + ["--device-mem", int(need * 1.1)], np_=tp * pp, tag=f"p{tp}{pp}")
    assert r["resident"] is not None and r["resident"] < 8 // pp, r["err"][-1500:]
    assert r["ids"] == want, f"tp {tp} x pp {pp} with offload: tokens differ from one rank's"


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2)])
def test_plan_predicts_the_offload(model, tmp_path, tp, pp):
    """shoal plan --device-mem: each rank's resident layers as the run keeps them, and
    its device peak within 5% of the run's."""
    import json
    layout = ["--tp", tp, "--pp", pp]
    for budget in ("7M", "9M", "11M"):
        p = h.run(["plan", "-m", model, "--ranks", tp * pp, "--no-probe", "--json", "-c", 256,
                   "--device-mem", budget] + layout)
        plan = json.loads(p.stdout)["offload"]
        r = run(model, tmp_path, layout + ["--device-mem", budget], np_=tp * pp, tag=f"pl{tp}{pp}{budget}")
        got = 8 // pp if r["resident"] is None else r["resident"]
        assert plan[0]["resident"] == got, f"{budget}: plan keeps {plan[0]['resident']} resident, the run {got}"
        assert abs(r["peak"] / plan[0]["device_peak"] - 1) <= 0.05, \
            f"{budget}: rank 0's device peak {r['peak']}, planned {plan[0]['device_peak']}"


@pytest.mark.parametrize("source", ["ram", "map"])
@pytest.mark.parametrize("prefetch", [1, 2])
def test_sources_give_the_same_tokens(model, tmp_path, source, prefetch):
    """--offload-from ram (each layer's image packed at load) and map (packed from the file
    into a staging buffer as it goes, once that buffer's last copy has left)."""
    want = run(model, tmp_path, [], tag="plain")["ids"]
    low = smallest_budget(model, tmp_path, prefetch)
    for k, budget in enumerate((int(low * 1.01), int(low * 1.3))):
        r = run(model, tmp_path, ["--device-mem", budget, "--prefetch", prefetch, "--offload-from", source],
                tag=f"{source}{k}")
        assert ("from ram" if source == "ram" else "from the map") in r["err"], r["err"][-800:]
        assert r["ids"] == want, f"--offload-from {source}, budget {budget}: tokens differ"
        assert r["peak"] <= budget


def plan_copy_bytes(err):
    m = re.search(r"predicted device peak [\d.]+ \w+; (\d+\.\d+ \w+) copied per token", err)
    return size(m.group(1)) if m else None


def copied_bytes(err):
    """What -v counted: bytes copied host to device per token (rank 0)."""
    m = re.search(r"per token (\d+\.\d+ \w+) copied host to device", err)
    return size(m.group(1)) if m else None


@pytest.mark.parametrize("group,layout", [(2, []), (4, []), (2, ["--tp", 2]), (2, ["--pp", 2])])
def test_offload_groups(model, tmp_path, group, layout):
    """--offload-group G: G replicas of the layout, each rank holding 1/G of every streamed
    layer, copying that part into its layer buffer and all-gathering the others there (the
    CPU arena's buffers are host memory: over MPI, as NCCL does on GPUs); the parts
    gathered give the tokens of one rank, and each rank's copy per token falls G-fold,
    planned and counted."""
    want = run(model, tmp_path, [], tag="plain")["ids"]
    parts = 2 if layout else 1
    base = layout + ["--prefetch", 1]
    r = run(model, tmp_path, base + ["--device-mem", "64K", "--offload-group", group], np_=group * parts,
            tag="small", check=False)
    need = size(re.search(r"this rank needs (\d+\.\d+ \w+)", r["err"]).group(1))
    budget = int(need * 1.05)
    one = run(model, tmp_path, base + ["--device-mem", budget], np_=parts, tag=f"one{group}{parts}")
    r = run(model, tmp_path, base + ["--device-mem", budget, "--offload-group", group], np_=group * parts,
            tag=f"g{group}{parts}")
    assert r["resident"] is not None and r["resident"] < 8 // (2 if "--pp" in layout else 1), r["err"][-1500:]
    assert r["ids"] == want, f"offload group {group} {layout}: tokens differ from one rank's"
    assert one["ids"] == want
    assert "gathered from the offload group" in r["err"], r["err"][-800:]
    assert "all-gathers the others on the device" in r["err"], r["err"][-800:]
    mine, alone = plan_copy_bytes(r["err"]), plan_copy_bytes(one["err"])
    assert alone and mine and abs(mine * group / alone - 1) < 0.05, \
        f"group {group}: each rank's part {mine} against {alone} alone"
    mine, alone = copied_bytes(r["err"]), copied_bytes(one["err"])
    assert alone and mine and abs(mine * group / alone - 1) < 0.05, \
        f"group {group}: copied {mine} per token on a rank against {alone} alone"
    # shoal plan --offload-group predicts the same for rank 0
    tp, pp = (2, 1) if "--tp" in layout else (1, 2) if "--pp" in layout else (1, 1)
    import json
    p = h.run(["plan", "-m", model, "--ranks", parts, "--no-probe", "--json", "-c", 256, "--device-mem", budget,
               "--prefetch", 1, "--offload-group", group, "--tp", tp, "--pp", pp])
    plan = json.loads(p.stdout)["offload"][0]
    assert plan["offload_group"] == group and plan["resident"] == r["resident"], plan
    assert abs(plan["copy_bytes_per_token"] / mine - 1) < 0.05, f"plan copies {plan}, the run {mine}"
    assert abs(plan["gather_bytes_per_token"] / (mine * (group - 1)) - 1) < 0.05, plan
    assert abs(r["peak"] / plan["device_peak"] - 1) <= 0.05, f"device peak {r['peak']}, planned {plan}"


def test_offload_group_gathered_on_host(model, tmp_path):
    """Where the group cannot reach device buffers (a GPU without NCCL; here the CPU made to
    behave as one, SHOAL_CPU_AS_DEVICE=1) the parts are all-gathered in host memory and the
    whole layer copied: the same tokens, and each rank copies a whole layer again."""
    want = run(model, tmp_path, [], tag="plain")["ids"]
    base = ["--prefetch", 1]
    r = run(model, tmp_path, base + ["--device-mem", "64K", "--offload-group", 2], np_=2, tag="small", check=False)
    budget = int(size(re.search(r"this rank needs (\d+\.\d+ \w+)", r["err"]).group(1)) * 1.05)
    env = dict(os.environ, SHOAL_CPU_AS_DEVICE="1")
    one = run(model, tmp_path, base + ["--device-mem", budget], tag="hone")
    r = run(model, tmp_path, base + ["--device-mem", budget, "--offload-group", 2], np_=2, tag="hg2", env=env)
    assert r["ids"] == want, "offload group gathered on the host: tokens differ from one rank's"
    assert "all-gathered in host memory" in r["err"], r["err"][-800:]
    assert r["peak"] <= budget
    mine, alone = copied_bytes(r["err"]), copied_bytes(one["err"])
    assert alone and mine and abs(mine / alone - 1) < 0.05, f"copied {mine} per token against {alone} alone"
