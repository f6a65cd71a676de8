"""`shoal serve` on a file of the K-quant types (issue 17): c-mix.gguf of
tests/model/data/kquants (llama.cpp's quantize: Q2_K, Q3_K, Q4_K, Q5_K, Q6_K
and IQ4_XS in row- and column-parallel matrices), requests served together
in shared batches, on one rank and under tp 2: each text equal to `shoal
run`'s alone on one rank (the batch- and row-invariant kernels of these
types make it so)."""
import sys
import threading
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_harness import Server  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

openai = pytest.importorskip("openai", reason="the openai package (pip install openai) drives these tests")

MODEL = Path(__file__).resolve().parent.parent / "model" / "data" / "kquants" / "c-mix.gguf"
PROMPTS = ["Once upon a time", "The cat sat on the mat and", "abc", "In the beginning there was"]
N = 48


def alone(prompt):
    """shoal run's continuation as the server sends text: valid UTF-8, a byte
    that is not as U+FFFD (random weights make bytes of any value), NUL too."""
    out = h.run(["run", "-m", MODEL, "-p", prompt, "-n", N, "--temp", 0, "-q", "-t", 1]).stdout
    text = out.replace(b"\0", "\ufffd".encode()).decode(errors="replace")
    assert text.endswith("\n") and text.startswith(prompt), text
    return text[len(prompt):-1]


@pytest.mark.parametrize("np_,layout", [(1, []), (2, ["--tp", 2])])
def test_batched_requests_equal_one_rank_alone(np_, layout):
    want = {p: alone(p) for p in PROMPTS}
    s = Server(["-m", MODEL, "-t", 1, "--parallel", 4, "-c", 256] + layout, np_=np_)
    try:
        got, errors = {}, []
        start = threading.Barrier(len(PROMPTS))

        def one(p):
            try:
                c = openai.OpenAI(base_url=s.url + "/v1", api_key="none", max_retries=0, timeout=120)
                start.wait(30)
                got[p] = c.completions.create(model="c-mix", prompt=p, max_tokens=N, temperature=0).choices[0].text
            except Exception as e:  # noqa: BLE001 - reported below
                errors.append(f"{p!r}: {e!r}")

        ts = [threading.Thread(target=one, args=(p,)) for p in PROMPTS]
        for t in ts:
            t.start()
        for t in ts:
            t.join(180)
        assert not errors, errors
        for p in PROMPTS:
            assert got.get(p) == want[p], f"{layout} {p!r}: served {got.get(p)!r}, alone {want[p]!r}"
    finally:
        rc = s.stop()
    assert rc == 0, s.err[-3000:]
