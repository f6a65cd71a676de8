#!/usr/bin/env python3
"""Records llama.cpp's logits on synthetic models of the families that
change the LLaMA block (qwen3, gemma3) and of mixtures of experts
(qwen3moe, Mixtral's llama), the oracle test_families.py holds
shoal to on the same files. The files are written by `shoal synth` (the
arguments and each file's SHA-256 go into the json, so the test rewrites
and checks the very bytes); the logits are llama.cpp's alone.

    pip install llama-cpp-python==0.3.36
    SHOAL_BIN=build/shoal python3 tests/model/record_families.py

For each file: the prompt's ids (llama.cpp's tokenization, BOS first) and
llama.cpp's greedy continuation, then the whole sequence evaluated in one
batch with an f32 KV cache (type_k = type_v = F32, no flash attention, 2
threads): the logits of every position (the vocabularies are small).
Writes tests/model/data/families_llamacpp.json and .npz.
"""
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from record_llamacpp import greedy  # noqa: E402
PROMPT = "the quick brown fox jumps over the lazy dog"
N_GEN = 16
# name: shoal synth arguments (gemma3: a window of 8 positions on 5 layers of 6, one KV head)
FILES = {
    "qwen3-f32": ["--arch", "qwen3", "--dim", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                  "--head-dim", "48", "--ffn", "256", "--vocab", "350", "--type", "f32", "--seed", "3"],
    "qwen3-q8_0": ["--arch", "qwen3", "--dim", "256", "--layers", "3", "--heads", "8", "--kv-heads", "2",
                   "--head-dim", "64", "--ffn", "512", "--vocab", "400", "--type", "q8_0", "--seed", "4"],
    "gemma3-f32": ["--arch", "gemma3", "--dim", "128", "--layers", "7", "--heads", "4", "--kv-heads", "1",
                   "--head-dim", "64", "--ffn", "256", "--vocab", "350", "--window", "8", "--tied",
                   "--rope-base", "1000000", "--type", "f32", "--seed", "5"],
    "gemma3-q8_0": ["--arch", "gemma3", "--dim", "256", "--layers", "6", "--heads", "4", "--kv-heads", "2",
                    "--head-dim", "64", "--ffn", "512", "--vocab", "400", "--window", "12", "--tied",
                    "--type", "q8_0", "--seed", "6"],
    # mixtures of experts: 8 experts 2 a token, 16 experts 4 a token, Mixtral's llama with 4 and 2
    "qwen3moe-f32": ["--arch", "qwen3moe", "--dim", "128", "--layers", "2", "--heads", "4", "--kv-heads", "2",
                     "--head-dim", "32", "--ffn", "64", "--experts", "8", "--experts-used", "2", "--vocab", "350",
                     "--type", "f32", "--seed", "7"],
    "qwen3moe-q8_0": ["--arch", "qwen3moe", "--dim", "256", "--layers", "3", "--heads", "8", "--kv-heads", "4",
                      "--head-dim", "32", "--ffn", "128", "--experts", "16", "--experts-used", "4", "--vocab", "400",
                      "--type", "q8_0", "--seed", "8"],
    "mixtral-f32": ["--dim", "128", "--layers", "3", "--heads", "4", "--kv-heads", "1", "--ffn", "96",
                    "--experts", "4", "--experts-used", "2", "--vocab", "350", "--type", "f32", "--seed", "9"],
}


def sha256(path):
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def main():
    import llama_cpp
    from llama_cpp import Llama
    shoal = os.environ.get("SHOAL_BIN", str(HERE.parent.parent / "build" / "shoal"))
    meta = {"made_by": "tests/model/record_families.py", "llama_cpp_python": llama_cpp.__version__,
            "prompt": PROMPT, "settings": "n_ctx 256, 2 threads, f32 KV cache, no flash attention",
            "files": {}}
    arrays = {}
    with tempfile.TemporaryDirectory() as d:
        for name, args in FILES.items():
            path = Path(d) / f"{name}.gguf"
            subprocess.run([shoal, "synth", "-o", str(path)] + args, check=True)
            llm = Llama(model_path=str(path), n_ctx=256, n_threads=2, verbose=False, logits_all=True,
                        type_k=0, type_v=0, flash_attn=False)
            toks, gen, gaps = greedy(llm, PROMPT, N_GEN, add_bos=True)
            seq = toks + gen
            llm.reset()
            llm.eval(seq)
            arrays[name] = np.array(llm.scores[:len(seq)], dtype=np.float32)
            meta["files"][name] = {"synth": args, "sha256": sha256(path), "seq": seq, "n_prompt": len(toks),
                                   "gap": gaps}
            print(f"{name}: {len(toks)} prompt ids, greedy {gen[:8]}..., smallest gap {min(gaps):.3f}",
                  file=sys.stderr)
    (HERE / "data" / "families_llamacpp.json").write_text(json.dumps(meta, indent=1) + "\n")
    np.savez_compressed(HERE / "data" / "families_llamacpp.npz", **arrays)


if __name__ == "__main__":
    main()
