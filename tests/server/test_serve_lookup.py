"""shoal serve --lookup N (issue 22): requests running together, each
decoding step of each carrying drafts from its own text, give `shoal run`'s
plain greedy text (no drafts), on one rank and on 2 x 2 ranks under mpirun;
/metrics counts the drafts and those accepted, which must not be none. The
prompts make drafts right (a list the model goes on with, a sentence to
copy) and wrong (its numbers, the code to edit), so that rejected drafts'
KV blocks are written over while other requests share the steps.
"""
from __future__ import annotations

import json
import random
import re
import sys
import urllib.request
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402
from serve_harness import Server, at_once  # noqa: E402

N = 48


def prompts():
    r = random.Random(5)
    listing = "".join(f"Line {i}: the value of item {i} is {r.randint(10, 99)}.\n" for i in range(1, 31))
    code = ("Rename the variable count to total.\n\ndef summarize(items):\n    count = 0\n    for item in items:\n"
            "        count += item.value\n    return count\n\nWith count renamed to total:\n\ndef summarize(items):\n")
    return [listing, code, "Copy this sentence exactly: the quick brown fox jumps over the lazy dog. Again: the quick",
            "Count: one two three four five six seven"]


@pytest.fixture(scope="module")
def refs():
    """shoal run's plain greedy continuations (its echo of the prompt cut off)."""
    out = []
    for p in prompts():
        text = h.run(["run", "-m", h.smollm2(), "-p", p, "-n", N, "--temp", 0, "-q", "-t", 1]).stdout.decode()
        assert text.endswith("\n") and text.startswith(p)
        out.append(text[len(p):-1])
    return out


def metric(url, name):
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    m = re.search(rf"^{name} (\d+)$", text, re.M)
    assert m, f"/metrics has no {name}"
    return int(m.group(1))


@pytest.mark.parametrize("np_,layout", [(1, []), (4, ["--tp", 2, "--pp", 2])])
def test_serve_lookup_gives_plain_greedy_text(np_, layout, refs):
    s = Server(["-m", h.smollm2(), "--model-id", "m", "--parallel", 4, "-t", 1, "--lookup", 8] + layout, np_=np_)
    try:
        got = [None] * len(refs)

        def one(i, p):
            body = json.dumps({"model": "m", "prompt": p, "max_tokens": N, "temperature": 0}).encode()
            req = urllib.request.Request(s.url + "/v1/completions", body, {"Content-Type": "application/json"})
            got[i] = json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["text"]

        assert at_once(prompts(), one) == []
        for i, (g, want) in enumerate(zip(got, refs)):
            assert g == want, f"request {i}: {g!r} against shoal run's {want!r}"
        drafted, accepted = metric(s.url, "shoal_spec_draft_tokens_total"), metric(s.url, "shoal_spec_accepted_tokens_total")
        assert 0 < accepted < drafted, f"{accepted} of {drafted} drafts accepted: speculation did not run, or never erred"
        steps = metric(s.url, "shoal_steps_total")
        assert steps < N, f"{steps} steps for {len(refs)} requests of {N} tokens: no step carried several of a request's"
    finally:
        assert s.stop() == 0


def test_serve_lookup_bad_values():
    for args, needle in ((["--lookup", 40, "--parallel", 16], "rows of logits"), (["--lookup", -2], "--lookup must be")):
        p = h.run(["serve", "-m", h.smollm2(), "--port", 0] + args, check=False, timeout=60)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 2 and needle in err, err[-2000:]
