#!/usr/bin/env python3
"""shoal vs llama.cpp on the same GGUF, same machine, same threads.

For each synthetic model of a realistic shape (written by `shoal synth`;
dim 2048, 16 layers, 32 heads / 4 KV heads, FFN 5632, the LLaMA 32k
vocabulary when ../shared/testdata has it), both runtimes process the same
prompt text (the same tokens: shoal's tokenizer matches llama.cpp's) and
then generate the same number of tokens greedily, with an f16 KV cache, a
2048-token context and 512-token batches. Runs alternate between the two so
that both see the same machine noise; the table gives medians.

llama.cpp is the PyPI package llama-cpp-python (it builds llama.cpp from
source with the host's instruction sets); each of its eval calls (one
llama_decode) is timed with the wall clock, the greedy argmax between them
left out (llama.cpp's own perf counters read zero through these bindings). shoal's come from the statistics line `shoal run`
prints. Memory bandwidth is measured by bench/membw.c in the same session,
and generation is reported as a fraction of it (a token reads every weight
once, the embedding table aside: one row of it).

usage: python3 bench/bench_llamacpp.py [--threads 2] [--runs 5] [--types q8_0,q4_0]
                                        [--n-gen 128] [--out bench/out]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROMPT = ("Once upon a time there was a little girl who lived in a village near the forest. "
          "Every morning she walked to the river to fetch water for her grandmother, and on the "
          "way she sang the songs her mother had taught her. ") * 3

LLAMA_CHILD = r"""
import json, sys, time
from llama_cpp import Llama
path, threads, n_gen, prompt = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
llm = Llama(model_path=path, n_threads=threads, n_threads_batch=threads, n_ctx=2048, n_batch=512,
            verbose=False)
toks = llm.tokenize(prompt.encode(), add_bos=True)
t0 = time.perf_counter()
llm.eval(toks)
t_prompt = time.perf_counter() - t0
t_decode = 0.0
for _ in range(n_gen - 1):
    nxt = int(llm.scores[llm.n_tokens - 1].argmax())  # greedy, outside the timed call
    t0 = time.perf_counter()
    llm.eval([nxt])
    t_decode += time.perf_counter() - t0
print(json.dumps({"n_prompt": len(toks), "n_decode": n_gen - 1, "t_prompt": t_prompt,
                  "t_decode": t_decode}))
"""

STATS = re.compile(r"prompt (\d+) tokens in ([0-9.]+) s .*? (\d+) decode steps in ([0-9.]+) s")


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.machine()


def sh(cmd, **kw):
    return subprocess.run(cmd, check=True, capture_output=True, text=True, errors="replace", **kw)


LLAMA_CPP_PYTHON = "0.3.36"  # the version tests/model's oracles were recorded with

# ggml's native build (its default) uses AMX where the processor has it, and on the VMs here
# (amx_tile in /proc/cpuinfo) its first tile instruction dies with SIGILL. (Linux hands a process
# the tiles' state only when it asks, with arch_prctl(ARCH_REQ_XCOMP_PERM); a test program that
# asks runs tile instructions on these VMs, so it is that build's way to them that fails, not the
# processor.) So there the build names the instruction sets the processor has, AMX left out.
# /proc/cpuinfo's flag -> ggml's CMake option:
GGML_ISA = {"avx": "AVX", "avx2": "AVX2", "fma": "FMA", "f16c": "F16C", "avx512f": "AVX512",
            "avx512_vnni": "AVX512_VNNI", "avx512_vbmi": "AVX512_VBMI", "avx512_bf16": "AVX512_BF16",
            "avx_vnni": "AVX_VNNI", "bmi2": "BMI2"}


def cpu_flags() -> set:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    m = re.search(r"^flags\s*:(.*)$", text, re.M)
    return set(m.group(1).split()) if m else set()


def no_amx_cmake_args(flags: set) -> str:
    return " ".join(["-DGGML_NATIVE=OFF"] + [f"-DGGML_{opt}={'ON' if f in flags else 'OFF'}"
                                             for f, opt in GGML_ISA.items()])


def ensure_llama_cpp():
    try:
        import llama_cpp  # noqa: F401
    except ImportError:
        env = dict(os.environ)
        flags = cpu_flags()
        note = ""
        if "amx_tile" in flags and "CMAKE_ARGS" not in env:
            env["CMAKE_ARGS"] = no_amx_cmake_args(flags)
            note = f", without AMX: CMAKE_ARGS={env['CMAKE_ARGS']}"
        print(f"installing llama-cpp-python=={LLAMA_CPP_PYTHON} from PyPI (builds llama.cpp from source: "
              f"about 10 minutes on 2 cores{note})", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", f"llama-cpp-python=={LLAMA_CPP_PYTHON}"],
                       check=True, env=env)
    import llama_cpp
    if llama_cpp.__version__ != LLAMA_CPP_PYTHON:
        print(f"note: llama-cpp-python {llama_cpp.__version__} is installed; the oracles were recorded with "
              f"{LLAMA_CPP_PYTHON}", file=sys.stderr)
    return llama_cpp.__version__, llama_cpp.llama_print_system_info().decode().strip()


def membw(threads: int, out: Path) -> float:
    """GB/s that threads read (build/membw, from bench/membw.c; out is unused)."""
    exe = Path(os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal"))).parent / "membw"
    best = 0.0
    for _ in range(3):
        m = re.match(r"([0-9.]+) GB/s", sh([str(exe), str(threads), "1024"]).stdout)
        best = max(best, float(m.group(1)))
    return best


def read_bytes_per_token(model: Path) -> int:
    """Weights a decode step reads: every tensor but the embedding table (a
    token reads one row of it), plus the output head (the table itself when
    the head is tied to it)."""
    import gguf
    sizes = {t.name: int(t.n_bytes) for t in gguf.GGUFReader(str(model)).tensors}
    rest = sum(v for k, v in sizes.items() if k != "token_embd.weight")
    return rest if "output.weight" in sizes else rest + sizes["token_embd.weight"]


def make_model(shoal: str, out: Path, wtype: str) -> Path:
    path = out / f"synth-2048x16-{wtype}.gguf"
    if path.exists():
        return path
    args = [shoal, "synth", "-o", str(path), "--dim", "2048", "--layers", "16", "--heads", "32",
            "--kv-heads", "4", "--ffn", "5632", "--type", wtype, "--seed", "1"]
    vocab = ROOT.parent / "shared" / "testdata" / "vocab" / "ggml-vocab-llama-spm.gguf"
    args += ["--vocab-from", str(vocab)] if vocab.exists() else ["--vocab", "32000"]
    subprocess.run(args, check=True)
    return path


def run_shoal(shoal: str, model: Path, threads: int, n_gen: int, prompt_file: Path,
              launcher=(), extra=()) -> dict:
    """One `shoal run` (under launcher, e.g. mpirun -np 2, when given); its statistics."""
    p = sh(list(launcher) + [shoal, "run", "-m", str(model), "-f", str(prompt_file), "-n", str(n_gen),
                             "--temp", "0", "--ignore-eos", "-t", str(threads), "-c", "2048", "-b", "512",
                             "--kv-type", "f16"] + list(extra))
    m = STATS.search(p.stderr)
    if not m:
        raise RuntimeError(f"no statistics line from shoal:\n{p.stderr}")
    return {"n_prompt": int(m.group(1)), "t_prompt": float(m.group(2)),
            "n_decode": int(m.group(3)), "t_decode": float(m.group(4))}


def run_llama(model: Path, threads: int, n_gen: int, prompt: str = PROMPT) -> dict:
    p = sh([sys.executable, "-c", LLAMA_CHILD, str(model), str(threads), str(n_gen), prompt])
    return json.loads(p.stdout.strip().splitlines()[-1])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--types", default="q8_0,q4_0")
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    if not os.access(a.shoal, os.X_OK):
        print(f"{a.shoal} not found: build shoal first (bash scripts/demo.sh)", file=sys.stderr)
        return 1
    version, sysinfo = ensure_llama_cpp()
    prompt_file = out / "prompt.txt"
    prompt_file.write_text(PROMPT)
    bw = membw(a.threads, out)
    rows = []
    for wtype in a.types.split(","):
        model = make_model(a.shoal, out, wtype)
        size = model.stat().st_size
        samples = {"shoal": [], "llama.cpp": []}
        run_llama(model, a.threads, 4)  # warm the page cache and llama.cpp's repacking path
        for r in range(a.runs):
            samples["shoal"].append(run_shoal(a.shoal, model, a.threads, a.n_gen, prompt_file))
            samples["llama.cpp"].append(run_llama(model, a.threads, a.n_gen))
            print(f"{wtype} run {r + 1}/{a.runs}: shoal gen "
                  f"{samples['shoal'][-1]['n_decode'] / samples['shoal'][-1]['t_decode']:.2f} tok/s, "
                  f"llama.cpp gen "
                  f"{samples['llama.cpp'][-1]['n_decode'] / samples['llama.cpp'][-1]['t_decode']:.2f} tok/s",
                  file=sys.stderr)
        row = {"type": wtype, "bytes": size, "bytes_per_token": read_bytes_per_token(model)}
        for k, runs in samples.items():
            row[k] = {"prompt_tps": statistics.median(s["n_prompt"] / s["t_prompt"] for s in runs),
                      "gen_tps": statistics.median(s["n_decode"] / s["t_decode"] for s in runs),
                      "n_prompt": runs[0]["n_prompt"]}
        rows.append(row)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": platform.processor() or platform.machine(),
              "cpu": cpu_name(),
              "threads": a.threads, "runs": a.runs, "n_gen": a.n_gen, "membw_gbs": bw,
              "llama_cpp_python": version, "llama_cpp_system_info": sysinfo, "rows": rows}
    (out / "llamacpp.json").write_text(json.dumps(report, indent=2))
    lines = [f"shoal vs llama.cpp (llama-cpp-python {version}), {report['cpu']}, {a.threads} threads, "
             f"median of {a.runs} alternating runs, {rows[0]['shoal']['n_prompt']}-token prompt, "
             f"{a.n_gen} generated tokens; memory read bandwidth {bw:.1f} GB/s (bench/membw.c)",
             "",
             "| model | size | prompt tok/s shoal | llama.cpp | ratio | gen tok/s shoal | llama.cpp | ratio "
             "| shoal gen GB/s (of bandwidth) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, l = r["shoal"], r["llama.cpp"]
        gbs = s["gen_tps"] * r["bytes_per_token"] / 1e9
        lines.append(f"| 2048x16 {r['type']} | {r['bytes'] / 2**20:.0f} MiB | {s['prompt_tps']:.1f} | "
                     f"{l['prompt_tps']:.1f} | {s['prompt_tps'] / l['prompt_tps']:.2f} | {s['gen_tps']:.2f} | "
                     f"{l['gen_tps']:.2f} | {s['gen_tps'] / l['gen_tps']:.2f} | {gbs:.1f} ({gbs / bw:.0%}) |")
    table = "\n".join(lines)
    (out / "llamacpp.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
