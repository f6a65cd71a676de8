#!/usr/bin/env python3
"""A bounded load test of shoal serve against llama-cpp-python's
OpenAI-compatible server, on the same GGUF, threads and machine.

For each concurrency level (default 1, 4, 16, 64 streams) a fixed number of
clients each send their requests one after another (streamed completions,
max_tokens tokens, prompts of ~30 tokens that differ per request), all
levels bounded in requests and in time. Reported per level and server:
aggregate generated tokens/s (tokens over the level's wall time), time to
first token and inter-token latency percentiles (p50, p90, p99, from the
server-sent events as the client sees them), and the requests that failed.

Both servers listen on 127.0.0.1 only. The model is a synthetic one of a
realistic shape (`shoal synth`: dim 1024, 16 layers, 16 heads / 4 KV heads,
FFN 2816, a 32k vocabulary, Q8_0) unless --model names one; its weights are
random, so the text means nothing, but every token costs what a real
model's does. Generation ignores end-of-sequence on neither side; a request
that stops early counts the tokens it got.

llama-cpp-python runs one request at a time (its server has no batching),
and by default a new request interrupts the one running (the interrupted
client gets a truncated answer); it runs here with --interrupt_requests
False, so that it queues them and every request gets its tokens: the
comparison is what each does with the same load.

usage: python3 bench/serve/bench_serve.py [--levels 1,4,16,64] [--threads 2] [--max-tokens 64]
                                          [--out bench/out] [--skip-peer] [--repeat N]
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
WORDS = ("the of and to in a is that for it as was with be by on not he I this are or his from at which but "
         "have an they you were her she there been one all we their has would when if so no out what up said "
         "about other into than its time only could new them man some these then two first may any like now").split()


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def prompt(i: int) -> str:
    rng = random.Random(i)
    return " ".join(rng.choice(WORDS) for _ in range(24))


def pct(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100 * (len(xs) - 1)))))
    return xs[k]


def one_request(port, model, i, max_tokens, res, lock, deadline):
    body = json.dumps({"model": model, "prompt": prompt(i), "max_tokens": max_tokens, "temperature": 0,
                       "stream": True})
    t0 = time.perf_counter()
    times, n_usage, ok = [], None, False
    try:
        c = http.client.HTTPConnection("127.0.0.1", port, timeout=max(1.0, deadline - time.time()))
        c.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = c.getresponse()
        if r.status == 200:
            while True:
                line = r.readline()
                if not line:
                    break
                line = line.decode().strip()
                if line == "data: [DONE]":
                    break  # the end, whether or not the server closes the stream
                if not line.startswith("data: "):
                    continue
                ev = json.loads(line[6:])
                if ev.get("usage"):
                    n_usage = ev["usage"].get("completion_tokens")
                ch = ev.get("choices") or []
                if ch and ch[0].get("text"):
                    times.append(time.perf_counter())
            ok = bool(times)
        c.close()
    except (OSError, http.client.HTTPException, ValueError) as e:
        ok = False
        with lock:
            res.setdefault("errors", []).append(repr(e))
    with lock:
        if not ok:
            res["failed"] += 1
            return
        res["ttft"].append(times[0] - t0)
        res["itl"].extend(b - a for a, b in zip(times, times[1:]))
        res["tokens"] += n_usage if n_usage else len(times)
        res["requests"] += 1


def level(port, model, streams, per_client, max_tokens, deadline_s):
    """streams clients, each sending per_client requests one after another; bounded by deadline_s."""
    res = {"ttft": [], "itl": [], "tokens": 0, "requests": 0, "failed": 0}
    lock = threading.Lock()
    deadline = time.time() + deadline_s

    def client_loop(c):
        for k in range(per_client):
            if time.time() > deadline:
                return
            one_request(port, model, c * 1000 + k, max_tokens, res, lock, deadline)

    t0, cpu0 = time.perf_counter(), time.process_time()
    ts = [threading.Thread(target=client_loop, args=(c,), daemon=True) for c in range(streams)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(max(0.0, deadline - time.time()) + 5)
    res["timed_out"] = any(t.is_alive() for t in ts)
    res["wall"] = time.perf_counter() - t0
    res["client_cpu"] = time.process_time() - cpu0  # this process's own CPU: the clients (the server is a child)
    return res


def wait_ready(port, proc, timeout=600):
    end = time.time() + timeout
    while time.time() < end:
        if proc.poll() is not None:
            raise SystemExit(f"the server exited ({proc.returncode}) before answering (see its log in --out)")
        try:
            c = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            c.request("GET", "/v1/models")
            if c.getresponse().status == 200:
                return
        except (OSError, http.client.HTTPException):
            pass
        time.sleep(0.5)
    raise SystemExit(f"127.0.0.1:{port} did not answer within {timeout} s")


def start_shoal(a, model, port, max_streams):
    ctx = max(4096, max_streams * (48 + a.max_tokens) + 512)
    cmd = [a.shoal, "serve", "-m", str(model), "--port", str(port), "-t", str(a.threads), "--parallel",
           str(max_streams), "-b", str(max(512, max_streams)), "-c", str(ctx), "--max-queue", "256",
           "--model-id", "bench"]
    return subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(Path(a.out) / "serve-shoal.log", "w"),
                            start_new_session=True), cmd


def start_peer(a, model, port):
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model), "--host", "127.0.0.1", "--port",
           str(port), "--n_threads", str(a.threads), "--n_threads_batch", str(a.threads), "--n_ctx", "2048",
           "--model_alias", "bench", "--interrupt_requests", "False"]
    log = open(Path(a.out) / "serve-llamacpp.log", "w")  # it logs much: a pipe nobody reads would block it
    return subprocess.Popen(cmd, stdout=log, stderr=log, start_new_session=True), cmd


def stop(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def run_server(name, start, levels, a):
    """Every level, a.repeat rounds of them one after another (1, 16, 1, 16, ...: a machine
    whose speed drifts from minute to minute then weighs on each level alike); a level's
    tokens/s is the median of its rounds, its latencies those of all its requests."""
    port = free_port()
    proc, cmd = start(port)
    out = {n: {"ttft": [], "itl": [], "tokens": 0, "requests": 0, "failed": 0, "wall": 0.0, "rounds": []}
           for n in levels}
    try:
        wait_ready(port, proc)
        level(port, "bench", 1, 1, 8, 120)  # warm-up
        for k in range(a.repeat):
            for n in levels:
                per_client = max(1, a.requests // n)
                r = level(port, "bench", n, per_client, a.max_tokens, a.level_timeout)
                r["tok_s"] = r["tokens"] / r["wall"] if r["wall"] > 0 else 0
                o = out[n]
                for key in ("ttft", "itl"):
                    o[key] += r[key]
                for key in ("tokens", "requests", "failed", "wall"):
                    o[key] += r[key]
                o["rounds"].append(r["tok_s"])
                o["timed_out"] = o.get("timed_out") or r.get("timed_out")
                if r.get("errors"):
                    o.setdefault("errors", []).extend(r["errors"])
                    print(f"{name:>8} {n:3d} streams: errors: {r['errors'][:3]}", flush=True)
                print(f"{name:>8} {n:3d} streams{f' (round {k + 1})' if a.repeat > 1 else ''}: {r['requests']} "
                      f"requests ({r['failed']} failed{', timed out' if r.get('timed_out') else ''}), {r['tokens']} "
                      f"tokens in {r['wall']:.1f} s = {r['tok_s']:.1f} tok/s; TTFT p50 {pct(r['ttft'], 50) * 1e3:.0f} "
                      f"ms; ITL p50 {pct(r['itl'], 50) * 1e3:.1f} ms; clients' CPU {r['client_cpu']:.2f} s", flush=True)
        for o in out.values():
            o["tok_s"] = statistics.median(o["rounds"])
    finally:
        stop(proc)
    return out, cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model")
    ap.add_argument("--levels", default="1,4,16,64")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--requests", type=int, default=64, help="requests per level (at least one per stream)")
    ap.add_argument("--level-timeout", type=float, default=300)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=str(ROOT / "build" / "shoal"))
    ap.add_argument("--skip-peer", action="store_true")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of all the levels, one after another; tok/s is each level's median")
    a = ap.parse_args()
    levels = [int(x) for x in a.levels.split(",")]
    if a.repeat < 1:
        ap.error("--repeat must be at least 1")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = Path(a.model) if a.model else out / "synth-1024x16-q8_0.gguf"
    if not model.exists():
        subprocess.run([a.shoal, "synth", "-o", str(model), "--dim", "1024", "--layers", "16", "--heads", "16",
                        "--kv-heads", "4", "--ffn", "2816", "--vocab", "32000", "--type", "q8_0"], check=True)
    results = {"shoal": run_server("shoal", lambda p: start_shoal(a, model, p, max(levels)), levels, a)}
    if not a.skip_peer:
        try:
            import llama_cpp.server.app  # noqa: F401
            results["llama.cpp"] = run_server("llama.cpp", lambda p: start_peer(a, model, p), levels, a)
        except ImportError as e:
            print(f"llama-cpp-python's server is not installed ({e}): pip install 'llama-cpp-python[server]==0.3.36' "
                  "(on a processor with AMX, with CMAKE_ARGS as bench/bench_llamacpp.py's no_amx_cmake_args gives)")
    lines = [f"Serving {model.name} ({model.stat().st_size / 2**20:.0f} MiB), {a.threads} threads, streamed "
             f"completions of {a.max_tokens} tokens, ~30-token prompts, {a.requests} requests per level"
             f"{f' in each of {a.repeat} rounds (tok/s: the median round, min-max after it)' if a.repeat > 1 else ''}; "
             f"{time.strftime('%Y-%m-%d')}", "",
             "| server | streams | requests (failed) | aggregate tok/s | vs 1 stream | TTFT p50 / p90 / p99 (ms) | "
             "ITL p50 / p90 / p99 (ms) |", "|---|---|---|---|---|---|---|"]
    for name, (res, _) in results.items():
        base = res.get(levels[0], {}).get("tok_s") or float("nan")
        for n in levels:
            r = res[n]
            spread = f" ({min(r['rounds']):.0f}-{max(r['rounds']):.0f})" if len(r["rounds"]) > 1 else ""
            lines.append(f"| {name} | {n} | {r['requests']} ({r['failed']}) | {r['tok_s']:.1f}{spread} | "
                         f"{r['tok_s'] / base:.2f}x | {pct(r['ttft'], 50) * 1e3:.0f} / {pct(r['ttft'], 90) * 1e3:.0f} / "
                         f"{pct(r['ttft'], 99) * 1e3:.0f} | {pct(r['itl'], 50) * 1e3:.1f} / "
                         f"{pct(r['itl'], 90) * 1e3:.1f} / {pct(r['itl'], 99) * 1e3:.1f} |")
    if "llama.cpp" in results:
        lines.append("")
        for n in levels:
            s, l = results["shoal"][0][n]["tok_s"], results["llama.cpp"][0][n]["tok_s"]
            lines.append(f"- {n} stream(s): shoal {s:.1f} tok/s, llama.cpp {l:.1f} tok/s: shoal/llama.cpp = "
                         f"{s / l:.2f}" if l else f"- {n} stream(s): llama.cpp gave no tokens")
    lines += ["", "commands: " + "; ".join(" ".join(c) for _, c in results.values())]
    text = "\n".join(lines) + "\n"
    (out / "serve.md").write_text(text)
    (out / "serve.json").write_text(json.dumps({k: {str(n): {kk: vv for kk, vv in r.items() if kk not in ("ttft", "itl")}
                                                    for n, r in v[0].items()} for k, v in results.items()}, indent=1))
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
