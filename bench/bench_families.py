#!/usr/bin/env python3
"""shoal vs llama.cpp on the families beyond LLaMA (issue 18): Gemma 3 270M
(the Q4_K_M file scripts/install-deps.sh assembles from PyPI: Q8_0 embeddings
and head of 262k rows, Q5_0/Q4_K/Q6_K/Q8_0 layers, windowed attention), the
same prompt text (the same tokens) and the same number of greedy tokens,
alternating runs so that both see the same machine noise, at 1 and 2
threads; medians. The helpers and the timing are bench_llamacpp.py's
(shoal's statistics line; llama.cpp's eval calls by the wall clock). Decode
is also given as a share of the memory bandwidth measured in the same
session (a token reads every weight but the embedding table, plus the tied
head: the table itself).

usage: python3 bench/bench_families.py [--threads 1,2] [--runs 3] [--n-gen 128] [--model FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llamacpp as bl  # noqa: E402

ROOT = bl.ROOT


def gemma3_path() -> Path:
    import os
    cache = Path(os.environ.get("SHOAL_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "shoal")
    return cache / "gemma-3-270m-q4_k_m.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--model", type=Path, default=gemma3_path())
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=str(ROOT / "build" / "shoal"))
    a = ap.parse_args()
    if not a.model.exists():
        sys.exit(f"{a.model} does not exist: bash scripts/install-deps.sh assembles Gemma 3 270M")
    version, _ = bl.ensure_llama_cpp()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    read = bl.read_bytes_per_token(a.model)
    rows = []
    with tempfile.TemporaryDirectory() as d:
        prompt_file = Path(d) / "prompt.txt"
        prompt_file.write_text(bl.PROMPT)
        for threads in [int(t) for t in a.threads.split(",")]:
            bw = bl.membw(threads, out)
            s_runs, l_runs = [], []
            for r in range(a.runs):
                s_runs.append(bl.run_shoal(a.shoal, a.model, threads, a.n_gen, prompt_file))
                l_runs.append(bl.run_llama(a.model, threads, a.n_gen))
                print(f"t={threads} run {r + 1}/{a.runs}: prompt {s_runs[-1]['n_prompt']}/{l_runs[-1]['n_prompt']} "
                      f"tokens: shoal {s_runs[-1]['n_prompt'] / s_runs[-1]['t_prompt']:.1f} llama.cpp "
                      f"{l_runs[-1]['n_prompt'] / l_runs[-1]['t_prompt']:.1f} tok/s; decode shoal "
                      f"{s_runs[-1]['n_decode'] / s_runs[-1]['t_decode']:.1f} llama.cpp "
                      f"{l_runs[-1]['n_decode'] / l_runs[-1]['t_decode']:.1f} tok/s", flush=True)

            def med(runs, n, t):
                return statistics.median(x[n] / x[t] for x in runs)
            sp, lp = med(s_runs, "n_prompt", "t_prompt"), med(l_runs, "n_prompt", "t_prompt")
            sd, ld = med(s_runs, "n_decode", "t_decode"), med(l_runs, "n_decode", "t_decode")
            rows.append({"threads": threads, "prompt_tokens": s_runs[0]["n_prompt"], "shoal_prompt": sp,
                         "llama_prompt": lp, "shoal_decode": sd, "llama_decode": ld, "membw": bw,
                         "read_mib": read / 2**20})
    lines = [f"Gemma 3 270M Q4_K_M ({a.model.stat().st_size / 2**20:.0f} MiB; a decode step reads "
             f"{read / 2**20:.0f} MiB), {bl.cpu_name()}, llama-cpp-python {version}, {a.runs} alternating "
             f"runs, medians; {time.strftime('%Y-%m-%d')}", "",
             "| threads | prompt tok/s shoal | llama.cpp | ratio | decode tok/s shoal | llama.cpp | ratio | "
             "decode GB/s shoal / llama.cpp (of membw) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        gs, gl = r["shoal_decode"] * read / 1e9, r["llama_decode"] * read / 1e9
        lines.append(f"| {r['threads']} | {r['shoal_prompt']:.1f} | {r['llama_prompt']:.1f} | "
                     f"{r['shoal_prompt'] / r['llama_prompt']:.2f} | {r['shoal_decode']:.2f} | {r['llama_decode']:.2f} | "
                     f"{r['shoal_decode'] / r['llama_decode']:.2f} | {gs:.1f} ({100 * gs / r['membw']:.0f}%) / "
                     f"{gl:.1f} ({100 * gl / r['membw']:.0f}%) of {r['membw']:.1f} |")
    text = "\n".join(lines) + "\n"
    (out / "families.md").write_text(text)
    (out / "families.json").write_text(json.dumps(rows, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
