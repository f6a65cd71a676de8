#!/usr/bin/env python3
"""shoal plan's predictions against measured runs: per rank the memory it
needs (predicted total against the rank's peak RSS) and the decode tokens/s,
for several layouts on this machine and on the emulated LAN (tests/lan/lan.sh:
a network namespace per host, 1 Gbit links, 1 ms each way).

Each run fills its context (prompt, then generation until the context is
full), with a prompt longer than the batch, so that the KV cache and the
activations are all touched: the prediction is for a full context. The
prediction comes from `shoal plan --json` with the same settings, given this
machine's bandwidth measured just before the run (memory bandwidth here moves
by tens of percent from minute to minute). On the LAN, each namespace host
runs one rank of one thread and is described to the planner as a host of one
core; the link's latency is half the round trip that ping measures between
the namespaces (what a user would write in a host file). Layouts where more
ranks compute at once than this machine has cores are left out of the LAN
part: the emulated hosts share the real cores, which a host file cannot say.

Needs root for the LAN part (skipped, saying why, otherwise).
usage: python3 bench/bench_plan.py [--runs 1] [--out bench/out] [--no-lan]
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import bench_layouts as bl  # noqa: E402
import bench_llamacpp as bll  # noqa: E402
import shoal_harness as h  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
STATS = re.compile(r"(\d+) decode steps in ([0-9.]+) s")
PROMPT = ("Once upon a time there was a little girl who lived in a village near the forest, and every "
          "day she walked to the river to fetch water. ") * 6
LOCAL = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1)]
LAN_LAYOUTS = [(2, 1), (1, 2), (2, 2), (1, 4)]


def plan(shoal, model, n_ctx, n_batch, tp, pp, extra):
    cmd = [shoal, "plan", "-m", str(model), "-c", str(n_ctx), "-b", str(n_batch), "--tp", str(tp),
           "--pp", str(pp), "--json"] + extra
    p = subprocess.run(cmd, capture_output=True, text=True)
    if p.returncode == 1 and not p.stdout:  # a layout this model cannot be split into
        return None
    if p.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr}")
    j = json.loads(p.stdout)
    return j.get("shown", j["best"])


def run(shoal, model, prompt, n_ctx, n_batch, tp, pp, launcher, threads):
    args = [shoal, "run", "-m", str(model), "-f", str(prompt), "-c", str(n_ctx), "-b", str(n_batch),
            "-n", str(n_ctx), "--temp", "0", "--ignore-eos", "-v", "--tp", str(tp), "--pp", str(pp)]
    if threads:
        args += ["-t", str(threads)]
    cmd = (launcher + ["-np", str(tp * pp)] + args) if tp * pp > 1 or launcher is not bl.MPIRUN else args
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=900)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr[-3000:]}")
    m = STATS.search(p.stderr)
    tps = int(m.group(1)) / float(m.group(2))
    return tps, h.peak_rss(p.stderr, tp * pp)


def membw(out):
    """GB/s read with one core and with all of them (bench_llamacpp's measurement)."""
    return bll.membw(1, out), bll.membw(os.cpu_count(), out)


def ping_lat_ms(lan_id):
    r = subprocess.run([str(bl.LAN), "exec", lan_id, "0", "--", "ping", "-c", "20", "-i", "0.05", "-q",
                        "10.77.0.2"], capture_output=True, text=True)
    m = re.search(r"= [0-9.]+/([0-9.]+)/", r.stdout)
    return float(m.group(1)) / 2 if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    ap.add_argument("--no-lan", action="store_true")
    ap.add_argument("--no-local", action="store_true")
    ap.add_argument("--ctx", type=int, default=512)
    ap.add_argument("--batch", type=int, default=64)
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    prompt = out / "plan-prompt.txt"
    prompt.write_text(PROMPT)
    models = [Path(h.smollm2()), bl.make_model(a.shoal, out)]
    cores = os.cpu_count()
    rows = []

    def measure(where, model, tp, pp, launcher, threads, plan_args):
        """Each run right after its own prediction (bandwidth measured, then shoal plan, then
        the run): this machine's bandwidth drifts, so a prediction is set against the run
        next to it in time; the medians of both are reported."""
        preds, tps, rss = [], [], None
        for _ in range(a.runs):
            pred = plan(a.shoal, model, a.ctx, a.batch, tp, pp, plan_args())
            if pred is None:
                print(f"{where:5} {model.name[:28]:28} {tp}x{pp}: the model does not split so", file=sys.stderr)
                return
            preds.append(pred)
            t, r = run(a.shoal, model, prompt, a.ctx, a.batch, tp, pp, launcher, threads)
            tps.append(t)
            rss = r if rss is None else [max(x, y) for x, y in zip(rss, r)]
        pred = preds[0]
        row = {"where": where, "model": model.name, "tp": tp, "pp": pp, "tok_s": statistics.median(tps),
               "pred_tok_s": statistics.median(p["decode_tok_s"] for p in preds), "rss": rss,
               "pred_mem": [x["total"] for x in pred["ranks"]], "runs_tok_s": tps,
               "runs_pred_tok_s": [p["decode_tok_s"] for p in preds]}
        row["speed_err"] = row["pred_tok_s"] / row["tok_s"] - 1
        row["mem_err"] = max((p / m - 1 for p, m in zip(row["pred_mem"], rss)), key=abs)
        rows.append(row)
        print(f"{where:5} {model.name[:28]:28} {tp}x{pp}: {row['tok_s']:7.1f} tok/s, predicted "
              f"{row['pred_tok_s']:7.1f} ({row['speed_err']:+.0%}); memory "
              f"{', '.join(f'{m / 2**20:.1f}' for m in rss)} MiB, predicted "
              f"{', '.join(f'{m / 2**20:.1f}' for m in row['pred_mem'])} ({row['mem_err']:+.0%} worst)",
              file=sys.stderr)

    for model in ([] if a.no_local else models):
        for tp, pp in LOCAL:
            def local_args(n=tp * pp):
                c1, call = membw(out)
                return ["--ranks", str(n), "--membw", f"{call}GB/s", "--corebw", f"{c1}GB/s"]
            measure("local", model, tp, pp, bl.MPIRUN, 0, local_args)

    lan_id, why = (None, "--no-lan") if a.no_lan else bl.lan_up(4)
    lat = None
    if lan_id:
        try:
            lat = ping_lat_ms(lan_id)
            launcher = [str(bl.LAN), "run", lan_id]
            for model in models:
                for tp, pp in LAN_LAYOUTS:
                    hf = out / "plan-lan.hosts"

                    def lan_args(n=tp * pp, hf=hf):
                        c1, _ = membw(out)
                        hf.write_text("".join(f"host h{i} ranks=1 mem=4G cores=1 membw={c1}GB/s corebw={c1}GB/s\n"
                                              for i in range(n)) + f"link * * bw=1Gbit/s lat={lat:.3f}ms\n")
                        return ["--hosts", str(hf)]
                    measure("lan", model, tp, pp, launcher, 1, lan_args)
                    hf.unlink()
        finally:
            subprocess.run([str(bl.LAN), "down", lan_id], capture_output=True)
    else:
        print(f"emulated LAN skipped: {why}", file=sys.stderr)

    lines = [f"shoal plan: predicted against measured, context {a.ctx} filled, batch {a.batch}, "
             f"median of {a.runs}; local: {cores} cores shared by the ranks; LAN: one rank of one thread "
             f"per namespace host, 1 Gbit links, latency {lat if lat else 0:.2f} ms one way (ping / 2)",
             "",
             "| where | model | tp x pp | decode tok/s measured | predicted | error | peak RSS per rank (MiB) | "
             "predicted (MiB) | worst error |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['where']} | {r['model']} | {r['tp']} x {r['pp']} | {r['tok_s']:.1f} | "
                     f"{r['pred_tok_s']:.1f} | {r['speed_err']:+.0%} | "
                     f"{' / '.join(f'{m / 2**20:.1f}' for m in r['rss'])} | "
                     f"{' / '.join(f'{m / 2**20:.1f}' for m in r['pred_mem'])} | {r['mem_err']:+.1%} |")
    table = "\n".join(lines)
    (out / "plan.md").write_text(table + "\n")
    (out / "plan.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"), "rows": rows},
                                              indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
