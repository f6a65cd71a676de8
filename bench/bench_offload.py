#!/usr/bin/env python3
"""Offload on the CPU's device arena: decode time per token with every layer
streamed (shoal run --device-mem at the smallest budget that runs), against
the bound that copying sets (the bytes copied per token over the copy
bandwidth, measured here with numpy on one thread, as the copy thread does),
and how much of the copying was hidden behind compute; with prefetch 0, 1 and
2, and the same model with every layer resident for comparison.

On a CPU the "device" is host memory, so this measures the scheduler (what
overlaps what), not a PCIe link: the copy thread and the two compute threads
share this machine's cores and memory bandwidth. On a GPU the same runs use
pinned host memory and a copy stream (bench/gpu when one is lent).

usage: python3 bench/bench_offload.py [--model FILE] [--runs 3] [--out bench/out]
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def size(text: str) -> float:
    v, u = text.split()
    return float(v) * UNITS[u]


def copy_bandwidth(mib: int = 512, reps: int = 5) -> float:
    """Bytes/s of one thread copying a buffer much larger than the caches."""
    a = np.ones(mib * 1024 * 1024, dtype=np.uint8)
    b = np.empty_like(a)
    best = 0.0
    for _ in range(reps):
        t0 = time.perf_counter()
        np.copyto(b, a)
        best = max(best, a.nbytes / (time.perf_counter() - t0))
    return best


MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "mpi_yield_when_idle",
          "1", "--mca", "pml", "ob1", "--mca", "btl", "tcp,vader,self"]


def run(shoal: str, model: Path, extra: list, n: int, ranks: int = 1) -> dict:
    cmd = (MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + [shoal, "run", "-m", str(model), "-p", "a b c d", "-n", str(n), "--temp", "0",
           "--ignore-eos", "-c", "256", "-b", "16", "-v"] + [str(x) for x in extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stderr[-2000:]}")
    err = p.stderr
    m = re.search(r"generation \d+ tokens, (\d+) decode steps in ([\d.]+) s", err)
    out = {"ms_per_token": float(m.group(2)) / int(m.group(1)) * 1e3}
    m = re.search(r"per token (\d+\.\d+ \w+) copied host to device(?:, [\d.]+ \w+ gathered from the offload group)?, "
                  r"[\d.]+ ms computing, ([\d.]+) ms waited for copies"
                  r"(?:, copying ([\d.]+) ms \(([\d.]+) GB/s\), (\d+)% of it hidden)?", err)
    if m:
        out.update(copied=size(m.group(1)), waited_ms=float(m.group(2)))
        if m.group(3):
            out.update(copy_ms=float(m.group(3)), copy_gbs=float(m.group(4)), hidden=int(m.group(5)))
    m = re.search(r"(\d+) of (\d+) layers resident", err)
    out["resident"] = int(m.group(1)) if m else None
    return out


def smallest_budget(shoal: str, model: Path, prefetch: int, group: int = 1) -> int:
    p = subprocess.run((MPIRUN + ["-np", str(group)] if group > 1 else []) +
                       [shoal, "run", "-m", str(model), "-p", "a", "-n", "1", "-c", "256", "-b", "16",
                        "--device-mem", "64K", "--prefetch", str(prefetch), "--offload-group", str(group)],
                       capture_output=True, text=True)
    return int(size(re.search(r"this rank needs (\d+\.\d+ \w+)", p.stderr).group(1)) * 1.01)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF to run (default: a synthetic 1024x16 q8_0 model)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n", type=int, default=32, help="tokens generated per run")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=str(ROOT / "build" / "shoal"))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else out / "synth-1024x16-q8_0.gguf"
    if not model.exists():
        subprocess.run([a.shoal, "synth", "-o", str(model)] +
                       [str(x) for x in ["--dim", 1024, "--layers", 16, "--heads", 16, "--kv-heads", 4,
                                         "--ffn", 2816, "--vocab", 32000, "--type", "q8_0"]], check=True)
    bw = copy_bandwidth()
    rows = []
    # two compute threads share this machine's cores with the copy thread; one leaves it a core
    for t in (2, 1):
        resident = [run(a.shoal, model, ["--device-mem", "64G", "-t", t], a.n) for _ in range(a.runs)]
        rows.append({"layout": f"-t {t}: all resident", "prefetch": "-",
                     "ms_per_token": statistics.median(r["ms_per_token"] for r in resident)})
        for d in (0, 1, 2):
            budget = smallest_budget(a.shoal, model, d)
            rs = [run(a.shoal, model, ["--device-mem", budget, "--prefetch", d, "-t", t], a.n)
                  for _ in range(a.runs)]
            med = lambda k: statistics.median(r[k] for r in rs if r.get(k) is not None)  # noqa: E731
            bound = rs[0]["copied"] / bw * 1e3
            rows.append({"layout": f"-t {t}: all streamed ({rs[0]['resident']} resident), "
                                   f"budget {budget / 2**20:.1f} MiB",
                         "prefetch": d, "ms_per_token": med("ms_per_token"), "copied_mib": rs[0]["copied"] / 2**20,
                         "copy_bound_ms": bound, "vs_bound": med("ms_per_token") / bound,
                         "copy_ms": med("copy_ms"), "waited_ms": med("waited_ms"), "hidden_pct": med("hidden")})
    # an offload group of 2 (two ranks of one thread each): each copies half of every layer and
    # the two all-gather the rest over MPI in the arena
    for g in (1, 2):
        budget = smallest_budget(a.shoal, model, 1, g)
        rs = [run(a.shoal, model, ["--device-mem", budget, "--prefetch", 1, "-t", 1, "--offload-group", g], a.n, g)
              for _ in range(a.runs)]
        med = lambda k: statistics.median(r[k] for r in rs if r.get(k) is not None)  # noqa: E731
        bound = rs[0]["copied"] / bw * 1e3
        rows.append({"layout": f"-t 1, offload group {g} ({g} rank{'s' if g > 1 else ''}): per rank",
                     "prefetch": 1, "ms_per_token": med("ms_per_token"), "copied_mib": rs[0]["copied"] / 2**20,
                     "copy_bound_ms": bound, "vs_bound": med("ms_per_token") / bound,
                     "copy_ms": med("copy_ms"), "waited_ms": med("waited_ms"), "hidden_pct": med("hidden")})
    lines = [f"Offload on the CPU arena: {model.name}, {a.n} tokens, medians of {a.runs} runs; "
             f"copy bandwidth (numpy, one thread) {bw / 1e9:.1f} GB/s; {time.strftime('%Y-%m-%d')}", "",
             "| layout | prefetch | ms/token | copied/token (MiB) | copy bound (ms) | time / bound | "
             "copying (ms) | waited (ms) | copy hidden |", "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if "copy_bound_ms" not in r:
            lines.append(f"| {r['layout']} | - | {r['ms_per_token']:.2f} | 0 | - | - | - | - | - |")
            continue
        lines.append(f"| {r['layout']} | {r['prefetch']} | {r['ms_per_token']:.2f} | {r['copied_mib']:.1f} | "
                     f"{r['copy_bound_ms']:.2f} | {r['vs_bound']:.2f} | {r['copy_ms']:.2f} | {r['waited_ms']:.2f} | "
                     f"{r['hidden_pct']:.0f}% |")
    text = "\n".join(lines) + "\n"
    (out / "offload.md").write_text(text)
    (out / "offload.json").write_text(json.dumps({"copy_bw": bw, "rows": rows}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
