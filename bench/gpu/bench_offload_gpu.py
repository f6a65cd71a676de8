#!/usr/bin/env python3
"""Offload on a GPU: decode time per token of `shoal run --device cuda
--device-mem` with every layer streamed (the smallest budget that runs) and
with about half, against the bound the copies set: the bytes copied per
token over the pinned host-to-device bandwidth (measured by bench/gpu/h2d_bw,
built beside shoal, else PyTorch), and the share of the copying hidden behind
compute. Prefetch 1 and 2; with two GPUs or more, an offload group of 2 (one
rank per GPU, every layer streamed), whose ranks each copy half. Writes a
markdown table (--out DIR/offload.md) and prints it.

usage: python3 bench/gpu/bench_offload_gpu.py --model FILE [--shoal build-gpu/shoal] [--n 64] [--out DIR]
"""
from __future__ import annotations

import argparse
import re
import subprocess
import sys
import time
from pathlib import Path

UNITS = {"B": 1, "KiB": 1024, "MiB": 1024 ** 2, "GiB": 1024 ** 3}


def size(text: str) -> float:
    v, u = text.split()
    return float(v) * UNITS[u]


def h2d_bandwidth(shoal: str) -> float | None:
    """Bytes/s of a 1 GiB copy from pinned host memory to the GPU (best of 5): h2d_bw,
    built beside shoal, else PyTorch; None when neither can say."""
    probe = Path(shoal).resolve().parent / "h2d_bw"
    if probe.exists():
        p = subprocess.run([str(probe), "1024"], capture_output=True, text=True, timeout=120)
        m = re.match(r"h2d (\d+)", p.stdout)
        if m:
            return float(m.group(1))
        print(f"h2d_bw: {p.stderr.strip()}", file=sys.stderr)
    try:
        import torch
    except ImportError:
        return None
    if not torch.cuda.is_available():
        return None
    src = torch.empty(1 << 30, dtype=torch.uint8, pin_memory=True)
    dst = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    best = 0.0
    for _ in range(5):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        dst.copy_(src, non_blocking=True)
        torch.cuda.synchronize()
        best = max(best, src.numel() / (time.perf_counter() - t0))
    return best


MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1",
          "--mca", "btl", "tcp,vader,self"]


def n_gpus() -> int:
    try:
        p = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=30)
        return sum(1 for ln in p.stdout.splitlines() if ln.startswith("GPU "))
    except (OSError, subprocess.TimeoutExpired):
        return 0


def run(shoal: str, model: str, extra: list, n: int, ranks: int = 1) -> dict:
    cmd = (MPIRUN + ["-np", str(ranks)] if ranks > 1 else []) + [shoal, "run", "-m", model, "--device", "cuda", "-p", "a b c d", "-n", str(n), "--temp", "0",
           "--ignore-eos", "-c", "512", "-b", "64", "-v"] + [str(x) for x in extra]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if p.returncode != 0:
        return {"error": p.stderr.strip().splitlines()[-1] if p.stderr.strip() else f"exit {p.returncode}"}
    m = re.search(r"generation \d+ tokens, (\d+) decode steps in ([\d.]+) s", p.stderr)
    r = {"ms": float(m.group(2)) / int(m.group(1)) * 1e3}
    m = re.search(r"device peak (\d+\.\d+ \w+)", p.stderr)
    r["peak"] = size(m.group(1)) if m else None
    m = re.search(r"per token (\d+\.\d+ \w+) copied host to device(?:, [\d.]+ \w+ gathered from the offload "
                  r"group)?, ([\d.]+) ms computing, ([\d.]+) ms waited", p.stderr)
    if m:
        r.update(copied=size(m.group(1)), computing=float(m.group(2)), waited=float(m.group(3)))
    m = re.search(r"(\d+)% of it hidden behind compute", p.stderr)
    r["hidden"] = f"{m.group(1)}%" if m else "-"
    m = re.search(r"(\d+) of (\d+) layers resident", p.stderr)
    r["resident"] = f"{m.group(1)} of {m.group(2)}" if m else "all"
    return r


def smallest(shoal: str, model: str, prefetch: int, group: int = 1) -> int | None:
    """The least budget that runs, from the refusal of a far too small one."""
    p = subprocess.run((MPIRUN + ["-np", str(group)] if group > 1 else []) +
                       [shoal, "run", "-m", model, "--device", "cuda", "-p", "a", "-n", "1", "-c", "512",
                        "-b", "64", "--device-mem", "64K", "--prefetch", str(prefetch), "--offload-group", str(group)],
                       capture_output=True, text=True)
    m = re.search(r"this rank needs (\d+\.\d+ \w+)", p.stderr)
    return int(size(m.group(1)) * 1.01) if m else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--shoal", default="build-gpu/shoal")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--out", default="bench/out")
    a = ap.parse_args()
    bw = h2d_bandwidth(a.shoal)
    base = run(a.shoal, a.model, [], a.n)
    rows = [("no budget", "-", base)]
    for d in (1, 2):
        low = smallest(a.shoal, a.model, d)
        if not low or not base.get("peak"):
            continue
        for label, budget in (("every layer streamed", low), ("about half streamed", int((low + base["peak"]) / 2))):
            rows.append((f"{label}: {budget / 2**30:.2f} GiB", d,
                         run(a.shoal, a.model, ["--device-mem", budget, "--prefetch", d], a.n)))
    if n_gpus() >= 2:  # an offload group of 2, a GPU each: each rank copies half of every layer
        low = smallest(a.shoal, a.model, 1, 2)
        if low:
            rows.append((f"offload group 2 (2 GPUs), every layer streamed: {low / 2**30:.2f} GiB, per rank", 1,
                         run(a.shoal, a.model, ["--device-mem", low, "--prefetch", 1, "--offload-group", 2], a.n, 2)))
    head = (f"Offload on the GPU: {Path(a.model).name}, {a.n} tokens, pinned host-to-device copies at "
            f"{bw / 1e9:.1f} GB/s (1 GiB, best of 5)" if bw else
            f"Offload on the GPU: {Path(a.model).name}, {a.n} tokens (no h2d_bw, no PyTorch: the copy bound "
            f"is not given)")
    lines = [head, "", "| budget | prefetch | layers resident | ms/token | copied/token (GiB) | copy bound (ms) | "
             "time / bound | computing (ms) | waited for copies (ms) | copy hidden |", "|---|---|---|---|---|---|---|---|---|---|"]
    for label, d, r in rows:
        if "error" in r:
            lines.append(f"| {label} | {d} | error: {r['error'][:100]} | | | | | | | |")
            continue
        c = r.get("copied", 0)
        bound = c / bw * 1e3 if bw and c else None
        lines.append(f"| {label} | {d} | {r['resident']} | {r['ms']:.2f} | {c / 2**30:.2f} | "
                     + (f"{bound:.2f} | {r['ms'] / bound:.2f}" if bound else "- | -")
                     + f" | {r.get('computing', 0):.2f} | {r.get('waited', 0):.2f} | {r.get('hidden', '-')} |")
    text = "\n".join(lines) + "\n"
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "offload.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
