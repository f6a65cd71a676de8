"""`shoal serve` on a file of the K-quant types (issue 17): c-mix.gguf of
tests/model/data/kquants (llama.cpp's quantize: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
and IQ4_XS in row- and column-parallel matrices), and on Gemma 3 270M (issue
18: windowed layers, one KV head shared by the ranks of tp 2 and 3), and a
synthetic mixture of experts (issue 18: Qwen3-MoE's, 8 experts, 2 a token,
Q8_0; each token of a shared batch routed on its own), requests served
together in shared batches, on one rank (one thread, and two: steps cut
into lanes) and under tp 2 (and 3; the experts shared, or whole with
--ep 2): each text equal to `shoal run`'s alone on one rank (the batch- and
row-invariant kernels of these types make it so)."""
import functools
import tempfile
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_harness import Server, at_once  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

openai = h.import_required("openai", "the openai package (pip install openai) drives these tests")

CMIX = Path(__file__).resolve().parent.parent / "model" / "data" / "kquants" / "c-mix.gguf"
PROMPTS = ["Once upon a time", "The cat sat on the mat and", "abc", "In the beginning there was"]
N = 48
_alone = {}


MOE = ["--arch", "qwen3moe", "--dim", 128, "--layers", 3, "--heads", 4, "--kv-heads", 2, "--head-dim", 32,
       "--ffn", 96, "--experts", 8, "--experts-used", 2, "--vocab", 400, "--type", "q8_0", "--seed", 31]
_moe = []


def model_path(name):
    if name == "moe":
        if not _moe:
            d = tempfile.mkdtemp(prefix="shoal-moe-serve-")
            h.run(["synth", "-o", Path(d) / "moe.gguf"] + MOE)
            _moe.append(Path(d) / "moe.gguf")
        return _moe[0]
    return CMIX if name == "c-mix" else h.gemma3()


def alone(name, prompt):
    """shoal run's continuation as the server sends text: valid UTF-8, a byte
    that is not as U+FFFD (random weights make bytes of any value), NUL too."""
    if (name, prompt) in _alone:
        return _alone[(name, prompt)]
    out = h.run(["run", "-m", model_path(name), "-p", prompt, "-n", N, "--temp", 0, "-q", "-t", 1]).stdout
    text = out.replace(b"\0", "\ufffd".encode()).decode(errors="replace")
    assert text.endswith("\n") and text.startswith(prompt), text
    _alone[(name, prompt)] = text[len(prompt):-1]
    return _alone[(name, prompt)]


CASES = [("c-mix", 1, []), ("c-mix", 2, ["--tp", 2]), ("gemma3", 1, []), ("gemma3", 1, ["-t", 2]),
         ("gemma3", 2, ["--tp", 2]), ("gemma3", 3, ["--tp", 3]), ("moe", 1, []), ("moe", 1, ["-t", 2]),
         ("moe", 2, ["--tp", 2]), ("moe", 2, ["--ep", 2])]


@pytest.mark.parametrize("name,np_,layout", CASES, ids=[f"{n}-{np_}-{'_'.join(map(str, l))}" for n, np_, l in CASES])
def test_batched_requests_equal_one_rank_alone(name, np_, layout):
    want = {p: alone(name, p) for p in PROMPTS}
    threads = [] if "-t" in layout else ["-t", 1]
    s = Server(["-m", model_path(name), "--model-id", name, "--parallel", 4, "-c", 256] + threads + layout, np_=np_)
    try:
        got = {}

        def one(i, p):
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=120)
            got[p] = c.completions.create(model=name, prompt=p, max_tokens=N, temperature=0).choices[0].text

        errors = at_once(PROMPTS, one)
        assert not errors, errors
        for p in PROMPTS:
            assert got.get(p) == want[p], f"{layout} {p!r}: served {got.get(p)!r}, alone {want[p]!r}"
        if name == "moe":  # the experts counted: at most 2 of 8 a token in each of 3 layers, all of rank 0's at most
            import re
            import urllib.request
            text = urllib.request.urlopen(s.url + "/metrics", timeout=30).read().decode()
            runs = int(re.search(r"^shoal_expert_runs_total (\d+)$", text, re.M).group(1))
            steps = int(re.search(r"^shoal_steps_total (\d+)$", text, re.M).group(1))
            assert 0 < runs <= steps * 3 * 8 * 2, text
    finally:
        rc = s.stop()
    assert rc == 0, s.err[-3000:]


@functools.cache
def run_alone(model, p):
    """shoal run's 24 tokens after p, alone, with every layer's whole cache (once for both layouts)."""
    out = h.run(["run", "-m", model, "-p", p, "-n", 24, "--temp", 0, "-q", "-t", 1, "-c", 1024, "-b", 1024],
                timeout=300).stdout
    text = out.replace(b"\0", "\ufffd".encode()).decode(errors="replace")
    assert text.startswith(p) and text.endswith("\n"), text[-200:]
    return text[len(p):-1]


@pytest.mark.parametrize("np_,layout", [(1, []), (2, ["--tp", 2])], ids=["one rank", "tp 2"])
def test_windowed_rings_in_the_paged_cache(np_, layout):
    """Gemma 3 270M in shoal serve, prompts past its 512-position window: the
    windowed layers keep a ring of the window and a step's tokens per request
    (3 requests at once: 3 rings of 639 slots each where the context would be
    4096), the global layers the paged context; each text as shoal run's
    alone with every layer's whole cache (-c and -b 1024: no rings). Under
    tp 2 the other rank learns each sequence's ring from the step."""
    import random
    import re
    model = h.gemma3()
    words = ("river forest village morning water grandmother songs mother taught little girl lived near the "
             "every walked fetch sang way road stone bridge light evening bread market window garden").split()
    # 760 words, a token each: the decoded positions wrap around the rings, where the other
    # requests' prompts write at the same time (a shared ring would mix them)
    prompts = [" ".join(random.Random(s).choice(words) for _ in range(760)) for s in range(3)]
    want = {p: run_alone(model, p) for p in prompts}
    s = Server(["-m", model, "--model-id", "g", "--parallel", 3, "-c", 4096, "-b", 128, "-t", 1] + layout, np_=np_,
               timeout=120)
    try:
        m = re.search(r"KV cache 4096 positions in blocks of \d+ \(windowed layers: a ring of (\d+) per request\), "
                      r"([0-9.]+ \w+) on rank 0", s.err)
        assert m, s.err[-2000:]
        ring, kv = int(m.group(1)), h.parse_size(m.group(2))
        row = 2 * 1 * 256 * 2  # K and V of one KV head of 256, f16
        assert ring == 512 + 128 - 1
        assert abs(kv - (3 * 4096 + 15 * 3 * ring) * row) < 0.01 * kv, (kv, ring)  # 3 global layers, 15 windowed
        got = {}

        def one(i, p):
            c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=300)
            got[p] = c.completions.create(model="g", prompt=p, max_tokens=24, temperature=0).choices[0].text

        errors = at_once(prompts, one)
        assert not errors, errors
        for p in prompts:
            assert got.get(p) == want[p], f"served {got.get(p)!r}, alone {want[p]!r}"
    finally:
        rc = s.stop()
    assert rc == 0, s.err[-3000:]
