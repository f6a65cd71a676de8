#!/usr/bin/env python3
"""shoal vs llama.cpp on the K-quant and i-quant files people run (issue 17).

The model: a synthetic LLaMA shape written by `shoal synth` in F16 (dim 2048,
22 layers, 32 heads / 4 KV heads, FFN 5632: TinyLlama's shape; the LLaMA 32k
vocabulary when ../shared/testdata has it), quantized by llama.cpp itself
(llama-cpp-python's llama_model_quantize, its default mixes: Q4_K_M is Q4_K
with Q6_K for the head, half the ffn_down and attn_v, ...). The files go to
--dir (default /tmp/shoal-kq), never into the repository.

For each file and thread count, shoal and llama.cpp run alternately (the
same machine noise for both), --runs times: a prompt of --n-prompt tokens
(the same text, the same tokens: shoal's tokenizer matches llama.cpp's) in
one batch, then --n-gen greedy tokens with an f16 KV cache. The table gives
medians, decode as a share of the memory bandwidth measured in the same
session (bench/membw.c: a decode step reads every weight once, the
embedding table aside). Timing as bench_llamacpp.py (whose helpers this
uses): shoal's statistics line; llama.cpp's eval calls by the wall clock.

usage: python3 bench/bench_kquants.py [--threads 1,2] [--runs 3] [--types q4_k_m,q5_k_m,q6_k,iq4_xs]
                                      [--report kquants]  (F16/BF16: --types f16,bf16 --report f16)
                                      [--n-gen 128] [--n-prompt 512] [--dir /tmp/shoal-kq]
                                      [--no-prompt]
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import bench_llamacpp as bl  # noqa: E402

ROOT = bl.ROOT
# bench_llamacpp.py's child, but for prompts as long as its batch: Llama.scores keeps n_batch
# rows (without logits_all), so the batch is the context (prompt and decode tokens fit in it)
# and the micro-batch llama.cpp computes at once stays 512, as shoal's -b 512.
LLAMA_CHILD = bl.LLAMA_CHILD.replace("n_batch=512,", "n_batch=2048, n_ubatch=512,")
assert LLAMA_CHILD != bl.LLAMA_CHILD

SENTENCES = [
    "Once upon a time there was a little girl who lived in a village near the forest.",
    "Every morning she walked to the river to fetch water for her grandmother.",
    "On the way she sang the songs her mother had taught her, and the birds answered.",
    "One day a fox came out of the trees and asked her where she was going so early.",
    "She told him about the river, the old mill and the bridge that nobody crossed any more.",
    "The fox listened, and then he followed her at a distance, curious about the bridge.",
]


def make_f16(shoal: str, d: Path) -> Path:
    path = d / "synth-2048x22-f16.gguf"
    if path.exists():
        return path
    args = [shoal, "synth", "-o", str(path), "--dim", "2048", "--layers", "22", "--heads", "32",
            "--kv-heads", "4", "--ffn", "5632", "--type", "f16", "--seed", "1"]
    vocab = ROOT.parent / "shared" / "testdata" / "vocab" / "ggml-vocab-llama-spm.gguf"
    args += ["--vocab-from", str(vocab)] if vocab.exists() else ["--vocab", "32000"]
    subprocess.run(args, check=True)
    return path


def make_quant(src: Path, d: Path, mix: str) -> Path:
    """llama.cpp's quantization of src by its mix name (LLAMA_FTYPE_MOSTLY_<MIX>); f16: src."""
    import llama_cpp
    if mix == "f16":
        return src
    path = d / f"synth-2048x22-{mix}.gguf"
    if path.exists():
        return path
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + mix.upper())
    p.nthread = os.cpu_count() or 1
    tmp = path.with_suffix(".part")
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(tmp).encode(), ctypes.byref(p))
    if rc != 0:
        raise RuntimeError(f"llama_model_quantize({src}, {mix}) returned {rc}")
    tmp.rename(path)
    return path


def prompt_text(model: Path, n_prompt: int) -> str:
    """A text that llama.cpp tokenizes to n_prompt tokens, BOS included."""
    from llama_cpp import Llama
    llm = Llama(model_path=str(model), vocab_only=True, verbose=False)
    words, i = [], 0
    while len(llm.tokenize(" ".join(words).encode(), add_bos=True)) < n_prompt:
        words += SENTENCES[i % len(SENTENCES)].split()
        i += 1
    while len(llm.tokenize(" ".join(words).encode(), add_bos=True)) > n_prompt:
        words.pop()
    return " ".join(words)


def run_llama(model: Path, threads: int, n_gen: int, prompt: str) -> dict:
    p = bl.sh([sys.executable, "-c", LLAMA_CHILD, str(model), str(threads), str(n_gen), prompt])
    return json.loads(p.stdout.strip().splitlines()[-1])


def type_counts(model: Path) -> str:
    import gguf
    counts: dict[str, int] = {}
    for t in gguf.GGUFReader(str(model)).tensors:
        if len(t.shape) > 1:
            counts[t.tensor_type.name] = counts.get(t.tensor_type.name, 0) + 1
    return ", ".join(f"{k} {v}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--types", default="q4_k_m,q5_k_m,q6_k,iq4_xs")
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--n-prompt", type=int, default=512)
    ap.add_argument("--no-prompt", action="store_true", help="decode only (an 8-token prompt)")
    ap.add_argument("--dir", default="/tmp/shoal-kq")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    ap.add_argument("--make-only", action="store_true", help="write the models and stop")
    ap.add_argument("--report", default="kquants", help="bench/out/REPORT.json and .md (f16: --types f16,bf16)")
    a = ap.parse_args()
    d, out = Path(a.dir), Path(a.out)
    d.mkdir(parents=True, exist_ok=True)
    out.mkdir(parents=True, exist_ok=True)
    version, sysinfo = bl.ensure_llama_cpp()
    f16 = make_f16(a.shoal, d)
    models = {mix: make_quant(f16, d, mix) for mix in a.types.split(",")}
    if a.make_only:
        for mix, m in models.items():
            print(f"{m}: {m.stat().st_size / 2**20:.0f} MiB; {type_counts(m)}")
        return 0
    n_prompt = 8 if a.no_prompt else a.n_prompt
    text = prompt_text(next(iter(models.values())), n_prompt)
    prompt_file = d / f"prompt-{n_prompt}.txt"
    prompt_file.write_text(text)
    rows = []
    for threads in [int(t) for t in a.threads.split(",")]:
        bw = bl.membw(threads, out)
        for mix, model in models.items():
            samples = {"shoal": [], "llama.cpp": []}
            run_llama(model, threads, 4, text)  # the page cache, llama.cpp's repacking path
            for r in range(a.runs):
                samples["shoal"].append(bl.run_shoal(a.shoal, model, threads, a.n_gen, prompt_file))
                samples["llama.cpp"].append(run_llama(model, threads, a.n_gen, text))
                s, l = samples["shoal"][-1], samples["llama.cpp"][-1]
                print(f"{mix} t={threads} run {r + 1}/{a.runs}: prompt {s['n_prompt']}/{l['n_prompt']} tok: "
                      f"shoal {s['n_prompt'] / s['t_prompt']:.1f} llama.cpp {l['n_prompt'] / l['t_prompt']:.1f} "
                      f"tok/s; gen shoal {s['n_decode'] / s['t_decode']:.2f} llama.cpp "
                      f"{l['n_decode'] / l['t_decode']:.2f} tok/s", file=sys.stderr)
            row = {"type": mix, "threads": threads, "membw_gbs": bw, "bytes": model.stat().st_size,
                   "bytes_per_token": bl.read_bytes_per_token(model), "tensors": type_counts(model)}
            for k, runs in samples.items():
                row[k] = {"prompt_tps": statistics.median(s["n_prompt"] / s["t_prompt"] for s in runs),
                          "gen_tps": statistics.median(s["n_decode"] / s["t_decode"] for s in runs),
                          "n_prompt": runs[0]["n_prompt"],
                          "gen_all": [s["n_decode"] / s["t_decode"] for s in runs]}
            rows.append(row)
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpu": bl.cpu_name(), "runs": a.runs, "n_gen": a.n_gen,
              "llama_cpp_python": version, "llama_cpp_system_info": sysinfo, "rows": rows}
    (out / f"{a.report}.json").write_text(json.dumps(report, indent=2))
    lines = [f"shoal vs llama.cpp (llama-cpp-python {version}), {report['cpu']}, synthetic 2048 x 22 "
             f"layers quantized by llama.cpp, median of {a.runs} alternating runs, "
             f"{rows[0]['shoal']['n_prompt']}-token prompt, {a.n_gen} generated tokens",
             "",
             "| model | threads | size | prompt tok/s shoal | llama.cpp | ratio | gen tok/s shoal | llama.cpp "
             "| ratio | gen GB/s shoal / llama.cpp (of membw) |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        s, l, bw = r["shoal"], r["llama.cpp"], r["membw_gbs"]
        gs, gl = s["gen_tps"] * r["bytes_per_token"] / 1e9, l["gen_tps"] * r["bytes_per_token"] / 1e9
        lines.append(f"| {r['type']} | {r['threads']} | {r['bytes'] / 2**20:.0f} MiB | {s['prompt_tps']:.1f} | "
                     f"{l['prompt_tps']:.1f} | {s['prompt_tps'] / l['prompt_tps']:.2f} | {s['gen_tps']:.2f} | "
                     f"{l['gen_tps']:.2f} | {s['gen_tps'] / l['gen_tps']:.2f} | {gs:.1f} ({gs / bw:.0%}) / "
                     f"{gl:.1f} ({gl / bw:.0%}) of {bw:.1f} |")
    table = "\n".join(lines)
    (out / f"{a.report}.md").write_text(table + "\n")
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
