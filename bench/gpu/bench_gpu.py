#!/usr/bin/env python3
"""Decode and prompt speed of `shoal run --device cuda` on synthetic models of
LLaMA shapes (1B, 7B, 13B; written by `shoal synth`) in f16, q8_0 and q4_0,
and the weight bandwidth that decoding achieves against the GPU's peak.

Per model, three runs of `shoal run` (greedy, --ignore-eos):
  decode    a 4-id prompt ("a b c" after BOS), -n 128: batch-1 decode tok/s
            from the statistics line; achieved bandwidth = the weight bytes a
            token reads (the load line's size: every weight but the embedding
            table, of which a token reads one row) x tok/s, as a fraction of
            the peak (H100 SXM 3.35 TB/s, H100 PCIe 2.0, H100 NVL 3.9, H200
            4.8; others: "unknown peak", or --peak-tbs).
  prompt    512 prompt ids (-b 512), then 1,024 ids: the second run's extra
            512 ids (a batch attending to positions 512-1023) over its extra
            time is the prompt tok/s; the first batch of a run also pays for
            first use (lazy kernel loading, cuBLAS's heuristics and workspace,
            scratch growth), reported apart as "cold".
The synthetic vocabulary (32,000 tokens) makes each one-letter word one id,
so the prompts are exactly that long (checked against the statistics).

Models go to --models-dir (default /dev/shm/shoal-gpu-models: memory, where
/dev/shm is writable; else /tmp/shoal-gpu-models), written as
NAME.part and renamed when complete; files already there are reused. `shoal
synth` is single-threaded, so the models are written in parallel (--jobs),
and each is measured as soon as it is ready. Rows that would not fit the GPU's
memory or the disk are skipped, saying so. Each finished row is written to
the JSON and markdown at once, so a timeout keeps them; --budget SECONDS stops
cleanly before an outer timeout (rows not reached say so).

--prepare-only writes the models and stops (run it in the background while
something else uses the GPU). --device cpu --sizes tiny is a dry run on any
machine.

Measured on the 2-core development VM (AMD EPYC Zen 5, quiet), one `shoal
synth` writes ~98 M parameters/s in f16 (195 MB/s), ~143 M/s in q8_0 (152
MB/s) and ~260 M/s in q4_0 (147 MB/s): the 1B shape in 4-11 s, the 7B in 26 s
(q4_0), 47 s (q8_0), 69 s (f16), the 13B in 50, 91 and 133 s. The default
grid's seven models take ~36 GB (the 1B ~4 GB, the 7B ~25, the 13B q4_0 ~7):
tests/gpu/run.sh writes the 1B ones in its first, quick call and the rest
only in the bench's own call, never while the tests run.

usage: python3 bench/gpu/bench_gpu.py [--device cuda] [--sizes 1b,7b,13b:q4_0] [--types f16,q8_0,q4_0]
          [--quick] [--n-gen 128] [--out bench/out] [--tag gpu] [--models-dir DIR] [--jobs N]
          [--budget 330] [--prepare-only] [--peak-tbs X]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent

# --------------------------------------------------------------- the models

SIZES = {
    # name: synth shape (LLaMA-1/2 shapes; the 1B is TinyLlama's)
    "tiny": dict(dim=256, layers=4, heads=8, kv=4, ffn=768, vocab=32000),
    "1b": dict(dim=2048, layers=22, heads=32, kv=4, ffn=5632, vocab=32000),
    "7b": dict(dim=4096, layers=32, heads=32, kv=32, ffn=11008, vocab=32000),
    "13b": dict(dim=5120, layers=40, heads=40, kv=40, ffn=13824, vocab=32000),
}
BYTES_PER_PARAM = {"f32": 4.0, "f16": 2.0, "bf16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32, "q4_1": 20 / 32}
# one synth process on the development VM, parameters per second
SYNTH_RATE = {"f32": 70e6, "f16": 98e6, "bf16": 98e6, "q8_0": 143e6, "q4_0": 260e6, "q4_1": 240e6}
PEAK_TBS = [  # (substring of nvidia-smi's name, TB/s), first match wins; None: unknown
    ("GH200", None), ("H200", 4.8), ("H100 NVL", 3.9), ("H100 PCIe", 2.0), ("H100", 3.35),
]
CTX = 2048
N_PROMPT = 512
N_PROMPT_LONG = 1024
DECODE_PROMPT = "a b c"

LOAD = re.compile(r"params on rank 0, ([0-9.]+) (B|KiB|MiB|GiB|TiB) (\w+)\).*loaded in ([0-9.]+) s")
STATS = re.compile(r"prompt (\d+) tokens in ([0-9.]+) s .*? (\d+) decode steps in ([0-9.]+) s "
                   r"\([0-9.]+ tok/s, ([0-9.]+) GB/s")
UNIT = {"B": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def params(shape: dict) -> tuple:
    """(all parameters, those of the embedding table)."""
    d, hd = shape["dim"], shape["dim"] // shape["heads"]
    layer = d * shape["heads"] * hd * 2 + d * shape["kv"] * hd * 2 + 3 * d * shape["ffn"] + 2 * d
    embd = shape["vocab"] * d
    return shape["layers"] * layer + 2 * embd + d, embd


def model_name(size: str, wtype: str) -> str:
    s = SIZES[size]
    return f"synth-{size}-{s['dim']}x{s['layers']}-{wtype}.gguf"


def fmt_bytes(n: float) -> str:
    for u in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or u == "GiB":
            return f"{n:.0f} {u}" if u == "B" else f"{n:.2f} {u}"
        n /= 1024
    return f"{n:.2f} GiB"


# --------------------------------------------------------------- the machine

def gpu_info() -> dict:
    """nvidia-smi's first GPU: name, memory in bytes, driver, GPU count; {} when absent."""
    try:
        p = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version",
                            "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return {}
    lines = [ln for ln in p.stdout.splitlines() if ln.strip()]
    if p.returncode != 0 or not lines:
        return {}
    name, mem, driver = [x.strip() for x in lines[0].split(",")[:3]]
    return {"name": name, "memory_bytes": int(float(mem)) << 20, "driver": driver, "count": len(lines)}


def peak_tbs(name: str) -> float | None:
    for key, tbs in PEAK_TBS:
        if key in name:
            return tbs
    return None


def cpu_name() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine()


def git_rev() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "-uno"], capture_output=True,
                               text=True, timeout=10).stdout.strip()
        return rev + ("+changes" if dirty else "") if rev else "?"
    except (OSError, subprocess.TimeoutExpired):
        return "?"


# --------------------------------------------------------------- writing models

class Synth:
    """One `shoal synth` writing NAME.part (renamed to NAME when it succeeds),
    with NAME.lock holding its pid so that another bench process waits for it."""

    def __init__(self, shoal: str, path: Path, size: str, wtype: str):
        s = SIZES[size]
        self.path, self.part = path, path.with_name(path.name + ".part")
        self.lock, self.log = path.with_name(path.name + ".lock"), path.with_name(path.name + ".log")
        self.t0 = time.monotonic()
        args = [shoal, "synth", "-o", str(self.part), "--dim", s["dim"], "--layers", s["layers"], "--heads",
                s["heads"], "--kv-heads", s["kv"], "--ffn", s["ffn"], "--vocab", s["vocab"], "--type", wtype,
                "--seed", 1]
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([str(a) for a in args], stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        self.lock.write_text(str(self.proc.pid))

    def poll(self) -> str | None:
        """None while running; then "" on success, else the error."""
        rc = self.proc.poll()
        if rc is None:
            return None
        self.lock.unlink(missing_ok=True)
        if rc == 0 and self.part.exists():
            os.replace(self.part, self.path)
            self.seconds = time.monotonic() - self.t0
            return ""
        tail = self.log.read_text(errors="replace").strip().splitlines()[-3:] if self.log.exists() else []
        self.part.unlink(missing_ok=True)
        return f"shoal synth exited {rc}: {' | '.join(tail)}"

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        self.lock.unlink(missing_ok=True)
        self.part.unlink(missing_ok=True)


def writer_alive(path: Path) -> bool:
    """Whether another process is writing path (its .lock names a live pid)."""
    lock = path.with_name(path.name + ".lock")
    try:
        pid = int(lock.read_text().strip())
        os.kill(pid, 0)
        return True
    except (OSError, ValueError):
        return False


# --------------------------------------------------------------- running shoal

def run_shoal(shoal: str, model: Path, device: list, args: list, timeout: float) -> dict:
    """One `shoal run`; the load line's weight bytes and load time and the statistics."""
    cmd = [shoal, "run", "-m", str(model), "--temp", "0", "--ignore-eos", "-c", str(CTX)] + device + \
          [str(a) for a in args]
    p = subprocess.run(cmd, capture_output=True, text=True, errors="replace", timeout=timeout,
                       stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} exited {p.returncode}: {p.stderr.strip()[-1500:]}")
    lm, sm = LOAD.search(p.stderr), STATS.search(p.stderr)
    if not lm or not sm:
        raise RuntimeError(f"no load or statistics line from shoal:\n{p.stderr[-2000:]}")
    return {"weight_bytes": float(lm.group(1)) * UNIT[lm.group(2)], "main_type": lm.group(3),
            "load_s": float(lm.group(4)), "n_prompt": int(sm.group(1)), "t_prompt": float(sm.group(2)),
            "n_decode": int(sm.group(3)), "t_decode": float(sm.group(4)), "shoal_gbs": float(sm.group(5)),
            "load_line": next((ln for ln in p.stderr.splitlines() if "loaded in" in ln), "")}


def letters(n: int) -> str:
    """n one-letter words: n ids with the synthetic vocabulary (BOS aside)."""
    abc = "etaoinshrdlucmfwypvbgkjqxz"
    return " ".join(abc[(i * 7) % 26] for i in range(n))


def measure(shoal: str, model: Path, device: list, work: Path, n_gen: int, hard_deadline: float) -> dict:
    """The three runs; each may take until hard_deadline (monotonic), 10 minutes at most."""
    def timeout() -> float:
        return max(5.0, min(600.0, hard_deadline - time.monotonic()))

    p1, p2 = work / f"prompt-{N_PROMPT}.txt", work / f"prompt-{N_PROMPT_LONG}.txt"
    p1.write_text(letters(N_PROMPT - 1))          # + BOS = 512 ids
    p2.write_text(letters(N_PROMPT_LONG - 1))
    dec = run_shoal(shoal, model, device, ["-p", DECODE_PROMPT, "-n", n_gen], timeout())
    a = run_shoal(shoal, model, device, ["-f", p1, "-b", N_PROMPT, "-n", 1], timeout())
    b = run_shoal(shoal, model, device, ["-f", p2, "-b", N_PROMPT, "-n", 1], timeout())
    row = {"weight_bytes": dec["weight_bytes"], "main_type": dec["main_type"], "load_s": dec["load_s"],
           "decode_prompt": dec["n_prompt"], "decode_steps": dec["n_decode"], "t_decode": dec["t_decode"],
           "decode_tps": dec["n_decode"] / dec["t_decode"] if dec["t_decode"] > 0 else 0.0,
           "shoal_gbs": dec["shoal_gbs"], "prompt_ids": [a["n_prompt"], b["n_prompt"]],
           "t_prompt": [a["t_prompt"], b["t_prompt"]], "load_line": dec["load_line"]}
    row["decode_gbs"] = row["weight_bytes"] * row["decode_tps"] / 1e9
    row["prompt_cold_tps"] = a["n_prompt"] / a["t_prompt"] if a["t_prompt"] > 0 else 0.0
    dt, dn = b["t_prompt"] - a["t_prompt"], b["n_prompt"] - a["n_prompt"]
    row["prompt_tps"] = dn / dt if dt > 0 and dn > 0 else None
    notes = row["notes"] = []
    if a["n_prompt"] != N_PROMPT or b["n_prompt"] != N_PROMPT_LONG:
        notes.append(f"prompts of {a['n_prompt']} and {b['n_prompt']} ids, not {N_PROMPT} and {N_PROMPT_LONG}")
    if row["prompt_tps"] is None:
        notes.append("the longer prompt was not slower: no warm prompt figure")
    return row


# --------------------------------------------------------------- the report

class Report:
    def __init__(self, out: Path, tag: str, meta: dict):
        self.json, self.md, self.meta, self.rows = out / f"{tag}.json", out / f"{tag}.md", meta, []

    def add(self, row: dict):
        self.rows.append(row)
        if not self.meta.get("prepare_only"):
            self.write()

    def write(self):
        tmp = self.json.with_suffix(".json.tmp")
        tmp.write_text(json.dumps({"meta": self.meta, "rows": self.rows}, indent=2))
        os.replace(tmp, self.json)
        tmp = self.md.with_suffix(".md.tmp")
        tmp.write_text(self.markdown() + "\n")
        os.replace(tmp, self.md)

    def markdown(self) -> str:
        m = self.meta
        peak = f"peak {m['peak_tbs']} TB/s" if m["peak_tbs"] else "unknown peak"
        lines = [f"shoal {m['shoal_rev']} on {m['device_desc']} ({peak}), {m['date']}; batch-1 decode of "
                 f"{m['n_gen']} tokens after a {m['decode_prompt_ids']}-id prompt; prompt tok/s: ids "
                 f"{N_PROMPT + 1}-{N_PROMPT_LONG} of a {N_PROMPT_LONG}-id prompt in batches of {N_PROMPT} "
                 f"(cold: the first {N_PROMPT} ids of a run, with first-use costs); greedy, f16 KV cache, "
                 f"ctx {CTX}.", "",
                 "| model | type | file | weights/token | load s | decode tok/s | GB/s | of peak "
                 "| prompt tok/s | cold | notes |",
                 "|---|---|---|---|---|---|---|---|---|---|---|"]
        order = {tuple(g): i for i, g in enumerate(m["grid"])}
        for r in sorted(self.rows, key=lambda r: order.get((r["size"], r["type"]), len(order))):
            head = f"| {r['size']} ({r['shape']}) | {r['type']} | {fmt_bytes(r['file_bytes']) if r.get('file_bytes') else '-'} "
            if r["status"] != "ok":
                lines.append(head + f"| - | - | - | - | - | - | - | {r['status']}: {r.get('error', '')[:200]} |")
                continue
            frac = f"{r['decode_gbs'] / 1e3 / m['peak_tbs']:.0%}" if m["peak_tbs"] else "unknown peak"
            ptps = f"{r['prompt_tps']:.0f}" if r["prompt_tps"] else "-"
            lines.append(head + f"| {fmt_bytes(r['weight_bytes'])} | {r['load_s']:.1f} | {r['decode_tps']:.1f} "
                         f"| {r['decode_gbs']:.{0 if r['decode_gbs'] >= 100 else 1}f} | {frac} | {ptps} | {r['prompt_cold_tps']:.0f} "
                         f"| {r['notes']} |")
        return "\n".join(lines)


# --------------------------------------------------------------- main

def default_models_dir() -> str:
    """Memory (/dev/shm) where it can be written: the models are read back at once, and a
    GPU machine's disk is small; else /tmp."""
    shm = Path("/dev/shm")
    if shm.is_dir() and os.access(shm, os.W_OK):
        return str(shm / "shoal-gpu-models")
    return "/tmp/shoal-gpu-models"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    ap.add_argument("--sizes", default="1b,7b,13b:q4_0",
                    help=f"of {','.join(SIZES)}; SIZE:TYPE+TYPE limits that size to those types "
                         "(default 1b,7b,13b:q4_0)")
    ap.add_argument("--types", default="f16,q8_0,q4_0", help="weight types (default f16,q8_0,q4_0)")
    ap.add_argument("--quick", action="store_true", help="1b only (unless --sizes is given)")
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--tag", default="gpu", help="output files OUT/TAG.json and OUT/TAG.md (default gpu)")
    ap.add_argument("--models-dir", default=default_models_dir(),
                    help="where the models are written (default /dev/shm/shoal-gpu-models: memory, not "
                         "the disk, where /dev/shm is writable; else /tmp/shoal-gpu-models)")
    ap.add_argument("--jobs", type=int, default=max(1, min(8, (os.cpu_count() or 2) // 2)),
                    help="shoal synth processes at once (default: half the cores, at most 8)")
    ap.add_argument("--budget", type=float, default=330,
                    help="seconds: start nothing new after this, stop what runs (0: no limit; default 330)")
    ap.add_argument("--prepare-only", action="store_true", help="write the models, measure nothing")
    ap.add_argument("--peak-tbs", type=float, help="the device's peak memory bandwidth, TB/s")
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    a = ap.parse_args()
    # a timeout's SIGTERM ends through the finally below, which stops the writers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    t_start = time.monotonic()
    deadline = t_start + a.budget if a.budget > 0 else float("inf")
    if a.quick and a.sizes == ap.get_default("sizes"):
        a.sizes = "1b"
    types = a.types.split(",")
    grid = []  # (size, type), in the order asked
    for item in a.sizes.split(","):
        size, _, only = item.partition(":")
        grid += [(size, t) for t in (only.split("+") if only else types)]
    sizes = list(dict.fromkeys(s for s, _ in grid))
    bad = [s for s in sizes if s not in SIZES] + [t for _, t in grid if t not in BYTES_PER_PARAM]
    if bad:
        ap.error(f"unknown size or type: {', '.join(bad)}")
    if not os.access(a.shoal, os.X_OK):
        print(f"{a.shoal} not found: build shoal first or pass --shoal / SHOAL_BIN", file=sys.stderr)
        return 1
    out, mdir = Path(a.out), Path(a.models_dir)
    out.mkdir(parents=True, exist_ok=True)
    mdir.mkdir(parents=True, exist_ok=True)
    say = lambda *x: print(f"[bench_gpu {time.monotonic() - t_start:6.1f}s]", *x, flush=True)  # noqa: E731

    gpu = gpu_info() if a.device == "cuda" else {}
    peak = a.peak_tbs or (peak_tbs(gpu["name"]) if gpu else None)
    if a.device == "cuda":
        desc = f"{gpu['name']}, {gpu['memory_bytes'] >> 30} GiB, driver {gpu['driver']}" if gpu else \
               "a CUDA device (nvidia-smi did not answer)"
    else:
        desc = f"CPU: {cpu_name()}, {os.cpu_count()} cores"
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "device": a.device, "device_desc": desc, "gpu": gpu,
            "peak_tbs": peak, "cpu": cpu_name(), "cores": os.cpu_count(), "shoal_rev": git_rev(),
            "n_gen": a.n_gen, "decode_prompt_ids": len(DECODE_PROMPT.split()) + 1, "sizes": sizes,
            "types": types, "grid": grid, "ctx": CTX, "prepare_only": a.prepare_only}
    say(f"{desc}; {'peak %.2f TB/s' % peak if peak else 'unknown peak'}; models in {mdir}")

    # --- plan: what fits the device and the disk, smallest first
    plan = []
    for size, wtype in grid:
        n, s = params(SIZES[size])[0], SIZES[size]
        row = {"size": size, "type": wtype, "shape": f"{s['dim']}x{s['layers']}",
               "file_bytes_est": n * BYTES_PER_PARAM[wtype], "params": n, "status": "planned"}
        kv = 2 * s["layers"] * CTX * s["kv"] * (s["dim"] // s["heads"]) * 2
        need = row["file_bytes_est"] + kv + (3 << 30)  # + context, cuBLAS, scratch
        if gpu and need > gpu["memory_bytes"]:
            row.update(status="skipped", error=f"needs ~{fmt_bytes(need)} of the GPU's "
                                               f"{fmt_bytes(gpu['memory_bytes'])}")
        plan.append(row)
    plan.sort(key=lambda r: r["file_bytes_est"])
    free = shutil.disk_usage(mdir).free - (2 << 30)
    for r in plan:
        r["path"] = mdir / model_name(r["size"], r["type"])
        if r["status"] == "planned" and not r["path"].exists():
            if r["file_bytes_est"] > free:
                r.update(status="skipped", error=f"~{fmt_bytes(r['file_bytes_est'])} does not fit the "
                                                 f"{fmt_bytes(max(free, 0))} left on {mdir}")
            else:
                free -= r["file_bytes_est"]
    report = Report(out, a.tag, meta)
    for r in plan:
        if r["status"] == "skipped":
            say(f"{r['size']} {r['type']}: skipped: {r['error']}")
            report.add(public(r))
    todo = [r for r in plan if r["status"] == "planned"]
    est = max((r["params"] / SYNTH_RATE[r["type"]] for r in todo if not r["path"].exists()), default=0)
    say(f"{len(todo)} models; writing {sum(not r['path'].exists() for r in todo)} of them "
        f"(~{est:.0f} s for the slowest at the development VM's speed), {a.jobs} at a time")

    # --- write and measure: each model as soon as it is ready
    writers, failed = {}, 0
    device = ["--device", a.device]
    try:
        while todo:
            now = time.monotonic()
            if now > deadline:
                for r in todo:
                    r.update(status="not run", error=f"out of time (--budget {a.budget:g} s)")
                    report.add(public(r))
                    say(f"{r['size']} {r['type']}: not run, out of time")
                break
            # start writers, smallest first
            for r in todo:
                if len(writers) >= a.jobs:
                    break
                if id(r) in writers or r["path"].exists() or writer_alive(r["path"]):
                    continue
                writers[id(r)] = Synth(a.shoal, r["path"], r["size"], r["type"])
                say(f"writing {r['path'].name} (~{fmt_bytes(r['file_bytes_est'])})")
            # finished writers
            for r in todo:
                w = writers.get(id(r))
                if w is None:
                    continue
                err = w.poll()
                if err is None:
                    continue
                del writers[id(r)]
                if err:
                    r.update(status="failed", error=err)
                else:
                    say(f"wrote {r['path'].name} in {w.seconds:.0f} s")
                    r["synth_s"] = round(w.seconds, 1)
            for r in [r for r in todo if r["status"] == "failed"]:
                todo.remove(r)
                failed += 1
                report.add(public(r))
                say(f"{r['size']} {r['type']}: {r['error']}")
            ready = next((r for r in todo if r["path"].exists() and id(r) not in writers), None)
            if ready is None or a.prepare_only:
                if a.prepare_only:
                    for r in [r for r in todo if r["path"].exists() and id(r) not in writers]:
                        todo.remove(r)
                if todo:
                    time.sleep(0.5)
                continue
            todo.remove(ready)
            r = ready
            r["file_bytes"] = r["path"].stat().st_size
            r["busy_synths"] = len(writers)
            try:
                # a model started before the deadline may finish up to 30 s after it
                r.update(measure(a.shoal, r["path"], device, mdir, a.n_gen, deadline + 30))
                r["status"] = "ok"
                if writers:
                    r["notes"].append(f"measured while {len(writers)} shoal synth wrote other models")
                r["notes"] = "; ".join(r["notes"])
                frac = f", {r['decode_gbs'] / 1e3 / peak:.0%} of peak" if peak else ""
                ptps = f"{r['prompt_tps']:.0f}" if r["prompt_tps"] else "-"
                say(f"{r['size']} {r['type']}: decode {r['decode_tps']:.1f} tok/s = {r['decode_gbs']:.0f} GB/s"
                    f"{frac}; prompt {ptps} tok/s (cold {r['prompt_cold_tps']:.0f}); loaded in {r['load_s']:.1f} s")
            except subprocess.TimeoutExpired as e:
                r.update(status="failed", error=f"timed out after {e.timeout:.0f} s")
                failed += 1
            except RuntimeError as e:
                r.update(status="failed", error=str(e))
                failed += 1
            if r["status"] != "ok":
                say(f"{r['size']} {r['type']}: {r['error']}")
            report.add(public(r))
    finally:
        for w in writers.values():
            w.kill()
    if not a.prepare_only:
        print(report.markdown())
        say(f"wrote {report.md} and {report.json}")
    return 1 if failed else 0


def public(r: dict) -> dict:
    """A row as the JSON keeps it."""
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in r.items()}


if __name__ == "__main__":
    sys.exit(main())
