"""`shoal bench`: llama-bench's tests and table, for one rank and under mpirun.

- The rows are the product of the lists: -t, -b and --kv-type make passes,
  -p, -n and -d the tests of each; each row's runs number -r, and its mean and
  standard deviation are those of its runs (recomputed here).
- The size column is the bytes of the weights a token reads, counted here
  from the GGUF with the gguf package (every matrix but the embedding table),
  the params every tensor's values; under tp 2 the ranks' parts add up to
  the same.
- Under tp 2 a rank sends bytes every token (at least the two all-reduces of
  a layer's dim in f64 per decode step), on one rank none.
- The three outputs agree (md, csv, json); bad lists are refused with a
  message naming the option and exit 2.
"""
import csv
import io
import json
import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DIM, LAYERS = 256, 3


@pytest.fixture(scope="module")
def model(tmp_path_factory):
    path = tmp_path_factory.mktemp("bench") / "m.gguf"
    h.run(["synth", "-o", path, "--type", "q8_0", "--dim", DIM, "--layers", LAYERS, "--heads", 8,
           "--kv-heads", 2, "--ffn", 512, "--vocab", 500, "--seed", 3])
    return path


def gguf_weight_bytes(path):
    gguf = h.import_required("gguf", "the gguf package reads the model's tensor table")
    r = gguf.GGUFReader(str(path))
    names = {t.name for t in r.tensors}
    total = params = 0
    for t in r.tensors:
        params += int(t.n_elements)  # every parameter, as llama-bench's column
        if len(t.shape) < 2 or (t.name == "token_embd.weight" and "output.weight" in names):
            continue  # a lookup: a token reads one row of the embedding table
        total += int(t.n_bytes)
    return total, params


def bench(model, args, np_=1):
    full = ["bench", "-m", model] + [str(a) for a in args]
    p = h.run(full, timeout=300) if np_ == 1 else h.mpirun(np_, full, timeout=300)
    return p.stdout.decode(), p.stderr.decode()


def check_stats(row, reps):
    runs = row["tps_runs"]
    assert len(runs) == reps and all(r > 0 for r in runs), row
    mean = sum(runs) / len(runs)
    assert math.isclose(row["tps_mean"], mean, rel_tol=1e-9), row
    if reps > 1:
        std = math.sqrt(sum((r - mean) ** 2 for r in runs) / (reps - 1))
        assert math.isclose(row["tps_std"], std, rel_tol=1e-6, abs_tol=1e-9), row


def test_rows_are_the_lists_product(model):
    out, err = bench(model, ["-p", "8,16", "-n", "4", "-d", "0,20", "-t", "1,2", "--kv-type", "f16,q8", "-r", 2,
                             "-o", "json"])
    rows = json.loads(out)["rows"]
    assert len(rows) == 2 * 2 * 3 * 2, [r["test"] for r in rows]  # threads x kv x tests x depths
    want_tests = ["pp8", "pp16", "tg4", "pp8 @ d20", "pp16 @ d20", "tg4 @ d20"]
    assert [r["test"] for r in rows[:6]] == want_tests
    assert [(r["threads"], r["kv"]) for r in rows[::6]] == [(1, "f16"), (1, "q8"), (2, "f16"), (2, "q8")]
    size, params = gguf_weight_bytes(model)
    for r in rows:
        check_stats(r, 2)
        assert r["ranks"] == 1 and r["tp"] == 1 and r["pp"] == 1 and r["sent_per_token"] == 0
        assert abs(r["weight_bytes"] - size) <= 0.01 * size, (r["weight_bytes"], size)
        assert abs(r["params"] - params) <= 0.01 * params, (r["params"], params)
        # the process's own: not the buffer (512 MiB) that measured the bandwidth
        assert 0 < r["peak_rss"] < 256 << 20, r["peak_rss"]
        assert (r["gen_gbs"] > 0) == (r["n_gen"] > 0)
    assert "pass 4 of 4" in err


def test_formats_agree(model):
    args = ["-p", "12", "-n", "3", "-r", 3, "-t", 1]
    md, _ = bench(model, args)
    cs, _ = bench(model, args + ["-o", "csv"])
    lines = [ln for ln in md.splitlines() if ln.startswith("| ")]
    assert lines[0].startswith("| model | size | params | backend | threads | layout |"), md
    body = lines[1:]
    assert [ln.split(" | ")[8] for ln in body] == ["pp12", "tg3"], md
    assert all(" ± " in ln and "tp 1 x pp 1" in ln for ln in body), md
    rows = list(csv.DictReader(io.StringIO(cs)))
    assert [r["test"] for r in rows] == ["pp12", "tg3"]
    assert [int(r["n_prompt"]) for r in rows] == [12, 0] and [int(r["n_gen"]) for r in rows] == [0, 3]
    assert all(float(r["tps_mean"]) > 0 for r in rows)


def test_tp2_rows(model):
    out, _ = bench(model, ["-p", "16", "-n", "6", "-r", 2, "-t", 1, "--tp", 2, "-o", "json"], np_=2)
    rows = json.loads(out)["rows"]
    size, params = gguf_weight_bytes(model)
    assert [r["test"] for r in rows] == ["pp16", "tg6"]
    for r in rows:
        check_stats(r, 2)
        assert (r["ranks"], r["tp"], r["pp"]) == (2, 2, 1), r
        assert r["layout"].startswith("tp 2 x pp 1")
        # each rank's part: together the model's weights (norms and the head's share aside)
        assert abs(r["weight_bytes"] - size) <= 0.02 * size, (r["weight_bytes"], size)
    # a decode step: at least two all-reduces of dim values in f64 per layer
    assert rows[1]["sent_per_token"] >= 2 * LAYERS * DIM * 8, rows[1]
    assert rows[0]["sent_per_token"] > 0


@pytest.mark.parametrize("args,needle", [
    (["-p", "abc"], "-p 'abc'"),
    (["-p", "0", "-n", "0"], "nothing to measure"),
    (["-t", "0"], "-t '0'"),
    (["-o", "xml"], "-o 'xml'"),
    (["--kv-type", "f16,f8"], "--kv-type 'f16,f8'"),
    (["-r", "0"], "-r 0"),
    (["-p", ",".join(["8"] * 17)], "at most 16"),
])
def test_bad_lists(model, args, needle):
    p = h.run(["bench", "-m", model] + args, check=False)
    assert p.returncode == 2, p
    assert needle in p.stderr.decode(), p.stderr.decode()
