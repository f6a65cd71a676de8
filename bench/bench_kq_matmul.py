#!/usr/bin/env python3
"""The matmul kernels of issue 17's weight types, level by level, against memory bandwidth.

For each type, shape (the dim-2048 model's: 2048 x 2048, 5632 x 2048, 2048 x
5632) and number of tokens, bench_matmul (build*/bench_matmul: the best of
its repetitions, weights cycled through 256 MiB so that decoding reads them
from memory) runs at each SIMD level in turn, --runs times alternating, and
the table gives the median GB/s of weights read, the ratio of each level to
the scalar kernels (what every level ran for these types before it had its
own), and decoding's share of the read bandwidth that bench/membw.c measures
with the same threads. f64: the mm_f64 kernels (row-parallel projections:
attn_output and ffn_down run these, even on one rank).

usage: python3 bench/bench_kq_matmul.py [--types q4_k,q6_k,...] [--threads 1,2] [--n 1,4,16]
                                        [--levels scalar,avx2,avx512] [--runs 3] [--f64]
"""
from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TYPES = "q4_k,q6_k,q5_k,iq4_xs,q5_0,q5_1,iq4_nl,q3_k,q2_k"
SHAPES = [(2048, 2048), (5632, 2048), (2048, 5632)]


# bytes per value of each type (GGUF's blocks)
BYTES = {"q4_k": 144 / 256, "q5_k": 176 / 256, "q6_k": 210 / 256, "iq4_xs": 136 / 256, "q3_k": 110 / 256,
         "q2_k": 84 / 256, "q5_0": 22 / 32, "q5_1": 24 / 32, "iq4_nl": 18 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32,
         "q8_0": 34 / 32}


def run(exe: Path, args: list[str]) -> float:
    """GB/s of weights from bench_matmul's time (its own GB/s has one decimal: the scalar ones read 0.0)."""
    out = subprocess.run([str(exe)] + args, check=True, capture_output=True, text=True).stdout
    us = float(re.search(r"n=\d+: ([0-9.]+) us", out).group(1))
    return int(args[1]) * int(args[2]) * BYTES[args[0]] / (us * 1e3)


def membw(exe: Path, threads: int) -> float:
    best = 0.0
    for _ in range(3):
        out = subprocess.run([str(exe), str(threads), "1024"], check=True, capture_output=True, text=True).stdout
        best = max(best, float(re.match(r"([0-9.]+) GB/s", out).group(1)))
    return best


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--types", default=TYPES)
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--n", default="1,4,16")
    ap.add_argument("--levels", default="scalar,avx2,avx512")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--f64", action="store_true", help="the mm_f64 kernels instead of mm")
    ap.add_argument("--build", default=os.environ.get("SHOAL_BUILD", str(ROOT / "build")))
    a = ap.parse_args()
    bench, mbw = Path(a.build) / "bench_matmul", Path(a.build) / "membw"
    if not bench.exists():
        print(f"{bench} not found: build shoal first", file=sys.stderr)
        return 1
    levels = a.levels.split(",")
    print(f"bench_matmul, median of {a.runs} alternating runs, GB/s of weights"
          f"{' (mm_f64)' if a.f64 else ''}; x: against scalar; %: of membw with the same threads\n")
    for threads in [int(t) for t in a.threads.split(",")]:
        bw = membw(mbw, threads)
        print(f"threads {threads}: membw {bw:.1f} GB/s\n")
        print("| type | shape | n | " + " | ".join(levels) + " |")
        print("|---|---|---|" + "---|" * len(levels))
        for t in a.types.split(","):
            for rows, cols in SHAPES:
                for n in [int(v) for v in a.n.split(",")]:
                    got = {lv: [] for lv in levels}
                    for _ in range(a.runs):
                        for lv in levels:
                            args = [t, str(rows), str(cols), str(n), str(threads), lv] + (["f64"] if a.f64 else [])
                            got[lv].append(run(bench, args))
                    med = {lv: statistics.median(v) for lv, v in got.items()}
                    cells = []
                    for lv in levels:
                        c = f"{med[lv]:.1f}" if med[lv] >= 1 else f"{med[lv]:.2f}"
                        if lv != "scalar" and "scalar" in med:
                            c += f" ({med[lv] / med['scalar']:.0f}x"
                            c += f", {med[lv] / bw:.0%})" if n == 1 else ")"
                        cells.append(c)
                    print(f"| {t} | {rows}x{cols} | {n} | " + " | ".join(cells) + " |", flush=True)
        print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
