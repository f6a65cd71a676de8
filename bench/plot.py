#!/usr/bin/env python3
"""Plots `shoal bench -o json` runs as a PNG: tokens/s by threads, layout or depth.

One panel per kind of test (prompt processing, generation), one group of bars
per value of --x, one bar per test (pp64, pp512, ... or tg128 ...) with its
standard deviation as an error bar. Several JSON files (one per mpirun layout,
say) are merged into one figure.

usage: python3 bench/plot.py RUN.json [RUN.json ...] -o OUT.png [--x layout|threads|depth|kv|n_batch]
                             [--title TEXT]

Needs matplotlib (python3 -m pip install matplotlib).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def label(row: dict, x: str) -> str:
    if x == "layout":
        t = row["threads"]
        return f"{row['layout']}\n{row['ranks']} rank{'s' if row['ranks'] > 1 else ''} x {t} thread{'s' if t > 1 else ''}"
    if x == "depth":
        return f"depth {row['depth']}"
    if x == "threads":
        return f"{row['threads']} thread{'s' if row['threads'] > 1 else ''}"
    return f"{x} {row[x]}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="JSON files written by shoal bench -o json")
    ap.add_argument("-o", "--out", required=True, help="the PNG to write")
    ap.add_argument("--x", default="layout", choices=["layout", "threads", "depth", "kv", "n_batch"])
    ap.add_argument("--title", default="")
    a = ap.parse_args()
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("bench/plot.py needs matplotlib: python3 -m pip install matplotlib", file=sys.stderr)
        return 1
    rows = []
    for path in a.runs:
        try:
            rows += json.loads(Path(path).read_text())["rows"]
        except (OSError, ValueError, KeyError) as e:
            print(f"bench/plot.py: {path}: not a shoal bench JSON file ({e})", file=sys.stderr)
            return 1
    if not rows:
        print("bench/plot.py: no rows in the files given", file=sys.stderr)
        return 1
    # tests without their depth: the depth can be the x axis
    for r in rows:
        r["base"] = r["test"].split(" @ ")[0]
    kinds = [k for k in ("pp", "tg") if any(r["base"].startswith(k) for r in rows)]
    fig, axes = plt.subplots(1, len(kinds), figsize=(6.5 * len(kinds), 4.8), squeeze=False)
    for ax, kind in zip(axes[0], kinds):
        sel = [r for r in rows if r["base"].startswith(kind)]
        xs = list(dict.fromkeys(label(r, a.x) for r in sel))
        tests = list(dict.fromkeys(r["base"] for r in sel))
        width = 0.8 / len(tests)
        for i, t in enumerate(tests):
            pos, val, err = [], [], []
            for j, xv in enumerate(xs):
                match = [r for r in sel if r["base"] == t and label(r, a.x) == xv]
                if match:
                    pos.append(j - 0.4 + width * (i + 0.5))
                    val.append(match[0]["tps_mean"])
                    err.append(match[0]["tps_std"])
            bars = ax.bar(pos, val, width, yerr=err, capsize=3, label=t)
            ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=2)
        ax.set_xticks(range(len(xs)))
        ax.set_xticklabels(xs, fontsize=8)
        ax.set_ylabel("tokens/s")
        ax.set_title("prompt processing" if kind == "pp" else "generation")
        ax.legend(fontsize=8)
        ax.grid(axis="y", alpha=0.3)
    model = rows[0]["model"]
    fig.suptitle(a.title or f"shoal bench: {model}, {rows[0]['backend']}")
    fig.tight_layout()
    fig.savefig(a.out, dpi=110)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
