#!/usr/bin/env python3
"""The planner on the cluster it measures (issue 20): on emulated LANs of two
fake hosts (tests/lan/lan.sh: network namespaces, one rank of one thread on
each), a 1.1B LLaMA-shape Q4_0 model (shoal synth: dim 2048, 22 layers, 32
heads / 4 KV heads, FFN 5632, vocabulary 32000), decode tokens/s of

- the planner's choice (shoal run with no --tp/--pp: it measures the
  cluster, then chooses tp x pp and the weights), with what measuring cost
  and what the planner predicted for the run's own positions (-v);
- tp 2 and pp 2 chosen by hand (even shares), with the planner's prediction
  for each from the host file that `shoal plan --probe-cluster` wrote on the
  same LAN (given back with --hosts; -c set so that half of it is the run's
  mean position, where the planner predicts);
- whether that host file, given back to shoal run with --hosts, makes the
  same choice;

in three cases: links of 1 Gbit with 1 ms each way; unshaped links; and 1 ms
links with host 1 under a CPU quota of 0.3 of a core (cgroup v1 cpu,
tests/lan/quota_rank.sh). Runs alternate, --runs times each; medians.
The emulated hosts share this machine's two cores: one thread a rank keeps
them from crowding each other.

Needs root (the namespaces, the cgroup). Writes bench/out/cluster.{json,md}.
usage: python3 bench/bench_cluster.py [--runs 3] [--n-gen 128] [--shoal build/shoal]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "tests" / "lan" / "lan.sh"
QUOTA = ROOT / "tests" / "lan" / "quota_rank.sh"
CGROUP = Path("/sys/fs/cgroup/cpu")
STATS = re.compile(r"generation (\d+) tokens, (\d+) decode steps in ([\d.]+) s")
CHOICE = re.compile(r"tp (\d+) x pp (\d+)((?: --(?:tp|pp)-weights [\d.,e+-]+)*), the planner's choice")
PRED = re.compile(r"the planner predicted ([\d.]+) at these positions")
COST = re.compile(r"the cluster, measured in ([\d.]+) s")
PROMPT = "Once upon a time"


def sh(cmd, timeout=600, check=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def make_model(shoal, out: Path) -> Path:
    path = out / "synth-2048x22-q4_0.gguf"
    if not path.exists():
        sh([shoal, "synth", "-o", path, "--dim", 2048, "--layers", 22, "--heads", 32, "--kv-heads", 4, "--ffn", 5632,
            "--vocab", 32000, "--type", "q4_0", "--seed", 1])
    return path


def lan_up(opts):
    r = sh([LAN, "up", 2, *opts, "--id", f"bc{os.getpid()}", "--owner", os.getpid()])
    return dict(line.split("=", 1) for line in r.stdout.split())["SHOAL_LAN_ID"]


def run(lan_id, shoal, model, n_gen, extra, wrap):
    cmd = [LAN, "run", lan_id, "-np", 2, *wrap, shoal, "run", "-m", model, "-p", PROMPT, "-n", n_gen, "--temp", 0,
           "--ignore-eos", "-t", 1, "-v", *extra]
    p = sh(cmd)
    m = STATS.search(p.stderr)
    n_prompt = int(re.search(r"prompt (\d+) tokens in", p.stderr).group(1))
    row = {"tok_s": int(m.group(2)) / float(m.group(3)), "mean_pos": n_prompt + int(m.group(2)) / 2}
    c, pr, co = CHOICE.search(p.stderr), PRED.search(p.stderr), COST.search(p.stderr)
    if c:
        row["choice"] = f"tp {c.group(1)} x pp {c.group(2)}{c.group(3)}"
    if pr:
        row["pred"] = float(pr.group(1))
    if co:
        row["cost_s"] = float(co.group(1))
    return row


def plan_pred(shoal, model, hosts, tp, pp, n_ctx):
    """The planner's figure for tp x pp with even shares, as the hand-chosen runs have them."""
    even = ["--tp-weights", ",".join(["1"] * tp)] if tp > 1 else ["--pp-weights", ",".join(["1"] * pp)]
    p = sh([shoal, "plan", "-m", model, "-t", 1, "--hosts", hosts, "--tp", tp, "--pp", pp, *even, "-c", n_ctx,
            "--json"], check=False)
    return json.loads(p.stdout)["shown"]["decode_tok_s"] if p.stdout.strip() else None


def case(name, opts, wrap, a, model, out):
    lan_id = lan_up(opts)
    try:
        hosts = out / f"cluster-hosts-{name}.txt"
        sh([LAN, "run", lan_id, "-np", 2, *wrap, a.shoal, "plan", "-m", model, "-t", 1, "--probe-cluster", hosts])
        layouts = {"planner": [], "tp 2": ["--tp", 2, "--pp", 1], "pp 2": ["--tp", 1, "--pp", 2],
                   "planner, --hosts file": ["--hosts", hosts]}
        rows = {k: [] for k in layouts}
        for _ in range(a.runs):
            for k, extra in layouts.items():
                rows[k].append(run(lan_id, a.shoal, model, a.n_gen, extra, wrap))
                print(f"  {name} {k}: {rows[k][-1]}", file=sys.stderr)
    finally:
        sh([LAN, "down", lan_id], check=False)
    res = {"case": name, "hosts_file": hosts.read_text(), "layouts": {}}
    for k, rs in rows.items():
        r = {"tok_s": statistics.median(x["tok_s"] for x in rs), "runs": [x["tok_s"] for x in rs],
             "mean_pos": rs[0]["mean_pos"]}
        for f in ("pred", "cost_s"):
            if all(f in x for x in rs):
                r[f] = statistics.median(x[f] for x in rs)
        if "choice" in rs[0]:
            r["choice"] = rs[0]["choice"]
            r["choices"] = sorted({x["choice"] for x in rs})
        if k in ("tp 2", "pp 2"):
            n_ctx = max(16, int(round(2 * r["mean_pos"])))
            r["pred"] = plan_pred(a.shoal, model, hosts, int(layouts[k][1]), int(layouts[k][3]), n_ctx)
        res["layouts"][k] = r
    return res


def table(results, machine):
    lines = [f"Planner on measured clusters: {machine}; 2 fake hosts (network namespaces), one rank of one thread "
             f"each; 1.1B LLaMA-shape Q4_0 (synthetic); medians of the runs; predicted = the planner's figure at the "
             f"run's positions.", "",
             "| case | layout | chosen as | decode tok/s | predicted | measured / predicted | measuring took |",
             "|---|---|---|---|---|---|---|"]
    for res in results:
        best_hand = max(res["layouts"]["tp 2"]["tok_s"], res["layouts"]["pp 2"]["tok_s"])
        for k, r in res["layouts"].items():
            pred, cost = r.get("pred"), r.get("cost_s")
            runs = ", ".join(f"{x:.1f}" for x in r["runs"])
            p_txt = f"{pred:.1f}" if pred else "-"
            ratio = f"{r['tok_s'] / pred:.2f}" if pred else "-"
            c_txt = f"{cost:.2f} s" if cost else "-"
            lines.append(f"| {res['case']} | {k} | {r.get('choice', '(by hand, even)')} | {r['tok_s']:.1f} ({runs}) "
                         f"| {p_txt} | {ratio} | {c_txt} |")
        auto = res["layouts"]["planner"]["tok_s"]
        lines.append(f"| {res['case']} | **planner / best by hand** | | **{auto / best_hand:.2f}** | | | |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    ap.add_argument("--cases", default="1ms,unshaped,slowed")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if sh([LAN, "check"], check=False).returncode != 0:
        print("bench_cluster: lan.sh check failed: cannot emulate a LAN here (root?)", file=sys.stderr)
        return 77
    model = make_model(a.shoal, out)
    group = f"shoal-bench-{os.getpid()}"
    results = []
    try:
        for name in a.cases.split(","):
            wrap = ()
            if name == "slowed":
                d = CGROUP / group
                d.mkdir(exist_ok=True)
                (d / "cpu.cfs_period_us").write_text("100000")
                (d / "cpu.cfs_quota_us").write_text("30000")
                wrap = (QUOTA, group, "1", "--")
            opts = ["--rate", 0, "--delay-ms", 0] if name == "unshaped" else ["--rate", "1gbit", "--delay-ms", 1]
            res = case(name, opts, wrap, a, model, out)
            # the weights' gain: the chosen layout against the same layout with even shares, by hand
            c = re.match(r"tp (\d+) x pp (\d+) --", res["layouts"]["planner"].get("choice", ""))
            if c and (c.group(1), c.group(2)) in (("2", "1"), ("1", "2")):
                even = res["layouts"]["tp 2" if c.group(1) == "2" else "pp 2"]["tok_s"]
                res["even_split_tok_s"] = even
                res["weights_gain"] = res["layouts"]["planner"]["tok_s"] / even
            results.append(res)
            (out / "cluster.json").write_text(json.dumps({"results": results}, indent=1))  # kept as it goes
    finally:
        d = CGROUP / group
        for _ in range(50):
            try:
                d.rmdir() if d.exists() else None
                break
            except OSError:
                time.sleep(0.1)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    machine = f"{cpu}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    md = table(results, machine)
    for res in results:
        if "weights_gain" in res:
            md += (f"\n\n{res['case']}: the chosen layout with even shares decodes {res['even_split_tok_s']:.1f} "
                   f"tok/s; with the planner's shares {res['layouts']['planner']['tok_s']:.1f} "
                   f"({res['weights_gain']:.2f}x).")
    (out / "cluster.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    (out / "cluster.md").write_text(md + "\n")
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
