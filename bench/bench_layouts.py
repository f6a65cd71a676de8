#!/usr/bin/env python3
"""Tokens/s and communication bytes per token of each tp x pp layout, on one
machine and on an emulated LAN (tests/lan/lan.sh: a network namespace per
rank, links shaped to 1 Gbit with 1 ms each way), with the all-reduce payload
as f64 (exact, the default), f32 and 8-bit blocks.

Each run prints its statistics (`shoal run -v`): prompt and generation
tokens/s on rank 0, and per rank the bytes it sent and the time it spent in
communication per token. For the LAN the table adds the bound that compute
and the links allow for decoding, from a simple model:

  per token  >=  compute  +  messages on the critical path x (latency + bytes / bandwidth)

(bytes beyond tbf's 128 KiB bucket: smaller messages leave at once)

where compute is the one-rank, one-thread decode time on this machine
divided by the ranks that compute at once (a stage's tensor-parallel
ranks, at most the machine's cores: the emulated hosts share them, and
pipeline stages decode one after the other), the critical path
of a tensor-parallel stage is 2 all-reduces per layer (each an all-gather:
ceil(log2 tp) rounds for Open MPI's recursive doubling), and of a pipeline
is one hand-off per stage plus the logits back to rank 0, plus the step
broadcast in each tensor-parallel group.

Needs root for the LAN part (it is skipped, saying why, otherwise).
usage: python3 bench/bench_layouts.py [--model FILE] [--runs 1] [--n-gen 32] [--out bench/out]
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "tests" / "lan" / "lan.sh"
MPIRUN = ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
          "--mca", "mpi_yield_when_idle", "1", "--mca", "pml", "ob1", "--mca", "btl", "tcp,vader,self"]
LAYOUTS = [(1, 1), (2, 1), (1, 2), (2, 2), (4, 1), (1, 4)]
WIRES = ["f64", "f32", "q8"]
RTT_MS, GBIT = 2.0, 1.0  # the emulated link: 1 ms each way, 1 Gbit/s
BURST = 128 * 1024      # tbf's bucket (lan.sh): a message this small passes at once

STATS = re.compile(r"prompt (\d+) tokens in ([0-9.]+) s .*? (\d+) decode steps in ([0-9.]+) s")
RANK = re.compile(r"rank (\d+) \(stage (\d+), tp (\d+)\): a decode token [0-9.]+ ms computing, ([0-9.]+) ms "
                  r"waiting, ([0-9.]+) KiB sent \| prompt ([0-9.]+) KiB/token")


def make_model(shoal, out):
    path = out / "synth-2048x16-q8_0.gguf"
    if not path.exists():
        vocab = ROOT.parent / "shared" / "testdata" / "vocab" / "ggml-vocab-llama-spm.gguf"
        args = [shoal, "synth", "-o", str(path), "--dim", "2048", "--layers", "16", "--heads", "32",
                "--kv-heads", "4", "--ffn", "5632", "--type", "q8_0", "--seed", "1"]
        args += ["--vocab-from", str(vocab)] if vocab.exists() else ["--vocab", "32000"]
        subprocess.run(args, check=True)
    return path


def parse(stderr: str) -> dict:
    m = STATS.search(stderr)
    if not m:
        raise RuntimeError("no statistics in:\n" + stderr[-2000:])
    ranks = [dict(rank=int(r[0]), stage=int(r[1]), tp=int(r[2]), ms=float(r[3]), kib=float(r[4]),
                  prompt_kib=float(r[5])) for r in RANK.findall(stderr)]
    return {"prompt_tps": int(m.group(1)) / float(m.group(2)),
            "gen_tps": int(m.group(3)) / float(m.group(4)) if float(m.group(4)) > 0 else 0,
            "kib_per_token_max": max((r["kib"] for r in ranks), default=0.0),
            "kib_per_token_total": sum(r["kib"] for r in ranks),
            "prompt_kib_per_token_max": max((r["prompt_kib"] for r in ranks), default=0.0),
            "comm_ms_per_token_max": max((r["ms"] for r in ranks), default=0.0)}


def run_args(shoal, model, prompt, n_gen, tp, pp, wire, threads):
    return [shoal, "run", "-m", str(model), "-f", str(prompt), "-n", str(n_gen), "--temp", "0",
            "--ignore-eos", "-v", "-t", str(threads), "--tp", str(tp), "--pp", str(pp),
            "--comm-dtype", wire]


def link_ms(nbytes):
    """Time a message of nbytes takes on an emulated link: latency, then what tbf's bucket cannot pass."""
    return RTT_MS / 2 + max(0.0, nbytes - BURST) * 8 / (GBIT * 1e9) * 1e3


def bound_ms(t1_ms, cores, tp, pp, layers, dim, wire):
    """The decode bound on the emulated LAN (see the module docstring)."""
    wb = {"f64": 8, "f32": 4, "f16": 2, "q8": 34 / 32}[wire]
    t = t1_ms / min(tp, cores)
    if tp > 1:
        rounds = math.ceil(math.log2(tp))
        per_ar = rounds * link_ms(dim * wb * tp / 2)  # recursive doubling: half the data in the last round
        t += 2 * layers * per_ar          # two all-reduces per layer, every layer in series
        t += pp * rounds * link_ms(256)   # each stage shares the step within its group
    if pp > 1:
        t += pp * link_ms(dim * 4 + 256)  # hand-offs, and the candidates back to rank 0
    return t


def lan_up(n):
    r = subprocess.run([str(LAN), "check"], capture_output=True, text=True)
    if r.returncode != 0:
        return None, (r.stderr.strip() or "lan.sh check failed")
    r = subprocess.run([str(LAN), "up", str(n), "--rate", "1gbit", "--delay-ms", "1",
                        "--id", f"bl{os.getpid()}", "--owner", str(os.getpid())],
                       capture_output=True, text=True, check=True)
    kv = dict(line.split("=", 1) for line in r.stdout.split())
    return kv["SHOAL_LAN_ID"], None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", help="GGUF to run (default: a synthetic 2048x16 Q8_0 model)")
    ap.add_argument("--runs", type=int, default=1)
    ap.add_argument("--n-gen", type=int, default=32)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    ap.add_argument("--no-lan", action="store_true")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else make_model(a.shoal, out)
    prompt = out / "layout-prompt.txt"
    prompt.write_text("Once upon a time there was a little girl who lived in a village near the "
                      "forest, and every day she walked to the river to fetch water. " * 2)
    info = subprocess.run([a.shoal, "info", str(model), "--no-tensors", "--no-metadata"],
                          capture_output=True, text=True, check=True).stdout
    layers = int(re.search(r"(\d+) layers", info).group(1))
    dim = int(re.search(r"dim (\d+)", info).group(1))
    cores = os.cpu_count()

    results = []
    def measure(where, tp, pp, wire, launcher, threads):
        samples = []
        for _ in range(a.runs):
            args = run_args(a.shoal, model, prompt, a.n_gen, tp, pp, wire, threads)
            cmd = (launcher + ["-np", str(tp * pp)] + args) if tp * pp > 1 else args
            p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=900)
            if p.returncode != 0:
                raise RuntimeError(f"{' '.join(cmd)}\n{p.stderr[-3000:]}")
            samples.append(parse(p.stderr))
        row = {k: statistics.median(s[k] for s in samples) for k in samples[0]}
        row.update(where=where, tp=tp, pp=pp, wire=wire, threads=threads)
        results.append(row)
        print(f"{where:8} tp {tp} x pp {pp} {wire:4}: prompt {row['prompt_tps']:7.1f} tok/s, "
              f"gen {row['gen_tps']:6.2f} tok/s, sent {row['kib_per_token_max']:7.1f} KiB/token/rank "
              f"(max), {row['comm_ms_per_token_max']:6.1f} ms/token in comm", file=sys.stderr)
        return row

    configs = [(tp, pp, w) for tp, pp in LAYOUTS for w in (WIRES if tp > 1 else ["f64"])]
    for tp, pp, wire in configs:
        # one machine: the ranks share its cores
        measure("local", tp, pp, wire, MPIRUN, max(1, cores // (tp * pp)))
    one_thread = measure("1 thread", 1, 1, "f64", MPIRUN, 1)
    lan_id, why = (None, "--no-lan") if a.no_lan else lan_up(4)
    if lan_id:
        try:
            launcher = [str(LAN), "run", lan_id]
            for tp, pp, wire in configs:
                if tp * pp == 1:
                    continue
                measure("lan", tp, pp, wire, launcher, 1)
        finally:
            subprocess.run([str(LAN), "down", lan_id], capture_output=True)
    else:
        print(f"emulated LAN skipped: {why}", file=sys.stderr)

    t1_ms = 1e3 / one_thread["gen_tps"]
    lines = [f"shoal layouts, {model.name} ({layers} layers, dim {dim}), {a.n_gen} generated tokens, "
             f"median of {a.runs}; local: {cores} cores shared by the ranks; LAN: one rank per "
             f"namespace host, 1 Gbit, 1 ms each way, 1 thread per rank (all on the same {cores} cores)",
             "",
             "| where | tp x pp | all-reduce | prompt tok/s | gen tok/s | KiB sent per generated token (max rank) | "
             "KiB sent per prompt token (max rank) | ms/token in comm (max rank) | LAN decode bound tok/s | of bound |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        b = ""
        if r["where"] == "lan":
            bt = 1e3 / bound_ms(t1_ms, cores, r["tp"], r["pp"], layers, dim, r["wire"])
            r["bound_tps"] = bt
            b = f"{bt:.2f} | {r['gen_tps'] / bt:.0%}"
        else:
            b = " | "
        lines.append(f"| {r['where']} | {r['tp']} x {r['pp']} | {r['wire']} | {r['prompt_tps']:.1f} | "
                     f"{r['gen_tps']:.2f} | {r['kib_per_token_max']:.1f} | {r['prompt_kib_per_token_max']:.1f} | "
                     f"{r['comm_ms_per_token_max']:.1f} | {b} |")
    table = "\n".join(lines)
    (out / "layouts.md").write_text(table + "\n")
    (out / "layouts.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M"),
                                                  "results": results}, indent=2))
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
