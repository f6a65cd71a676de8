#!/usr/bin/env python3
"""A mixture of experts (issue 18): shoal vs llama.cpp on one synthetic
Qwen3-MoE model, and shoal's two ways of spreading its experts over ranks.

The model: `shoal synth --arch qwen3moe`, dim 1024, 16 layers, 16 heads (4
KV, head size 64), 8 experts of 2048 units a layer, 2 a token, Q4_K
weights, the LLaMA SentencePiece vocabulary of ../shared/testdata (32000
tokens) where it is, else a generated one.

1. One rank against llama.cpp (llama-cpp-python, built from source), the
   same prompt (the same tokens) and the same number of greedy tokens,
   alternating runs, at 1 and 2 threads; medians. A decode step reads the
   attention, the router, the head and 2 of the 8 experts of each layer:
   its bytes, and decode as a share of the memory bandwidth measured in the
   same session (bench/membw.c); shoal's own count of the experts it ran
   (shoal run -v) beside the expected 2/8.
2. shoal under mpirun: tp N (every rank its share of every expert) against
   --ep N (whole experts on each rank), N = 2 and 4, one thread a rank,
   alternating; medians. On a 2-core machine 4 ranks share 2 cores: say so.

usage: python3 bench/bench_moe.py [--threads 1,2] [--runs 3] [--n-gen 64] [--ranks 2,4]
"""
from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llamacpp as bl  # noqa: E402

ROOT = bl.ROOT
SHAPE = ["--arch", "qwen3moe", "--dim", "1024", "--layers", "16", "--heads", "16", "--kv-heads", "4",
         "--head-dim", "64", "--ffn", "2048", "--experts", "8", "--experts-used", "2", "--type", "q4_k",
         "--seed", "1"]
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none", "--mca", "btl", "tcp,vader,self"]
EXPERTS = re.compile(r"experts: a decode step read ([0-9.]+ \w+) of rank 0's ([0-9.]+ \w+) of experts "
                     r"\(([0-9.]+)%\), ([0-9.]+) experts a layer")


def make_model(shoal: str, out: Path) -> Path:
    path = out / "synth-qwen3moe-1024x16-8x2-q4_k.gguf"
    if path.exists():
        return path
    vocab = ROOT.parent / "shared" / "testdata" / "vocab" / "ggml-vocab-llama-spm.gguf"
    extra = ["--vocab-from", str(vocab)] if vocab.exists() else ["--vocab", "32000"]
    bl.sh([shoal, "synth", "-o", str(path)] + SHAPE + extra)
    return path


def bytes_read(model: Path) -> tuple[float, float]:
    """A decode step's bytes (every tensor but the embedding table, the experts 2 in 8,
    the head) and the experts' share of the layers."""
    import gguf
    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(model)).tensors}
    experts = sum(v for k, v in sizes.items() if "_exps." in k)
    rest = sum(v for k, v in sizes.items() if k != "token_embd.weight" and "_exps." not in k)
    if "output.weight" not in sizes:
        rest += sizes["token_embd.weight"]
    return rest + experts * 2 / 8, experts


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=64)
    ap.add_argument("--ranks", default="2,4")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    version, _ = bl.ensure_llama_cpp()
    model = make_model(a.shoal, out)
    read, experts = bytes_read(model)
    prompt_file = out / "moe-prompt.txt"
    prompt_file.write_text(bl.PROMPT)
    date = time.strftime("%Y-%m-%d")
    lines = [f"Synthetic Qwen3-MoE, dim 1024, 16 layers, 8 experts of 2048 units, 2 a token, Q4_K "
             f"({model.stat().st_size / 2**20:.0f} MiB; experts {experts / 2**20:.0f} MiB; a decode step reads "
             f"{read / 2**20:.0f} MiB), {bl.cpu_name()}, llama-cpp-python {version}, {a.runs} alternating runs, "
             f"medians; {date}", "",
             "| threads | prompt tok/s shoal | llama.cpp | ratio | decode tok/s shoal | llama.cpp | ratio | "
             "decode GB/s shoal / llama.cpp (of membw) | experts a layer (shoal -v) |",
             "|---|---|---|---|---|---|---|---|---|"]
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        bw = bl.membw(threads, out)
        s_runs, l_runs, seen = [], [], ""
        for r in range(a.runs):
            s_runs.append(bl.run_shoal(a.shoal, model, threads, a.n_gen, prompt_file, extra=["-v"]))
            l_runs.append(bl.run_llama(model, threads, a.n_gen))
            print(f"t={threads} run {r + 1}: shoal {s_runs[-1]}, llama.cpp {l_runs[-1]}", flush=True)
        p = bl.sh([a.shoal, "run", "-m", str(model), "-f", str(prompt_file), "-n", "16", "--temp", "0",
                   "--ignore-eos", "-t", str(threads), "-v"])
        m = EXPERTS.search(p.stderr)
        seen = f"{m.group(4)} ({m.group(1)} of {m.group(2)})" if m else "?"

        def med(runs, n, t):
            return statistics.median(x[n] / x[t] for x in runs)
        sp, lp = med(s_runs, "n_prompt", "t_prompt"), med(l_runs, "n_prompt", "t_prompt")
        sd, ld = med(s_runs, "n_decode", "t_decode"), med(l_runs, "n_decode", "t_decode")
        gs, gl = sd * read / 1e9, ld * read / 1e9
        rows.append({"threads": threads, "shoal_prompt": sp, "llama_prompt": lp, "shoal_decode": sd,
                     "llama_decode": ld, "membw": bw, "read_mib": read / 2**20, "experts_seen": seen})
        lines.append(f"| {threads} | {sp:.1f} | {lp:.1f} | {sp / lp:.2f} | {sd:.1f} | {ld:.1f} | {sd / ld:.2f} | "
                     f"{gs:.1f} ({100 * gs / bw:.0f}%) / {gl:.1f} ({100 * gl / bw:.0f}%) of {bw:.1f} | {seen} |")

    cores = os.cpu_count() or 1
    lines += ["", f"shoal across ranks (mpirun, one thread a rank, {cores} cores here"
              f"{'; more ranks than cores share them' if max(int(n) for n in a.ranks.split(',')) > cores else ''}), "
              f"{a.runs} alternating runs, medians:", "",
              "| ranks | layout | prompt tok/s | decode tok/s | decode vs tp |", "|---|---|---|---|---|"]
    layouts = []
    for n in [int(x) for x in a.ranks.split(",")]:
        runs = {"tp": [], "ep": []}
        for r in range(a.runs):
            for kind in ("tp", "ep"):
                runs[kind].append(bl.run_shoal(a.shoal, model, 1, a.n_gen, prompt_file,
                                               launcher=MPIRUN + ["-np", str(n)], extra=[f"--{kind}", str(n)]))
                print(f"np {n} {kind} run {r + 1}: {runs[kind][-1]}", flush=True)
        dec = {k: statistics.median(x["n_decode"] / x["t_decode"] for x in v) for k, v in runs.items()}
        for kind in ("tp", "ep"):
            pr = statistics.median(x["n_prompt"] / x["t_prompt"] for x in runs[kind])
            label = f"tp {n} (experts shared)" if kind == "tp" else f"--ep {n} (experts whole)"
            lines.append(f"| {n} | {label} | {pr:.1f} | {dec[kind]:.1f} | {dec[kind] / dec['tp']:.2f} |")
            layouts.append({"ranks": n, "layout": kind, "prompt": pr, "decode": dec[kind]})
    text = "\n".join(lines) + "\n"
    (out / "moe.md").write_text(text)
    (out / "moe.json").write_text(json.dumps({"one_rank": rows, "layouts": layouts}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
