"""shoal serve --lookup N and --draft-model FILE (issue 22): requests running
together, each decoding step of each carrying drafts (from its own text, or
from the draft model that rank 0 runs on every request's text in a paged
cache of its own), give `shoal run`'s plain greedy text (no drafts), on one
rank and on 2 x 2 ranks under mpirun; /metrics counts the drafts and those
accepted, which must not be none. The
prompts make drafts right (a list the model goes on with, a sentence to
copy) and wrong (its numbers, the code to edit), so that rejected drafts'
KV blocks are written over while other requests share the steps.

Sampling: on stories260K, many seeded requests of two tokens with and
without --lookup, a prompt after which the second token is drafted (the
first occurred before, followed by a word): the pairs' counts must be one
distribution (a chi-square test of homogeneity), with drafts both accepted
and rejected, so that speculative sampling's rule, not greedy acceptance,
is what keeps the target's distribution.
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


def plain_texts(model):
    """shoal run's plain greedy continuations (its echo of the prompt cut off)."""
    out = []
    for p in prompts():
        text = h.run(["run", "-m", model, "-p", p, "-n", N, "--temp", 0, "-q", "-t", 1]).stdout.decode()
        assert text.endswith("\n") and text.startswith(p)
        out.append(text[len(p):-1])
    return out


@pytest.fixture(scope="module")
def refs():
    return plain_texts(h.smollm2())


@pytest.fixture(scope="module")
def q8(tmp_path_factory):
    """SmolLM2 requantized to Q8_0, which its Q4_1 file drafts for; and its plain texts."""
    out = tmp_path_factory.mktemp("serve_draft") / "smollm2-q8_0.gguf"
    h.run(["quantize", h.smollm2(), out, "Q8_0", "--allow-requantize", "-q"])
    return out, plain_texts(out)


def metrics(url, *names):
    """The named counters from one read of /metrics: one snapshot, taken after a step. (Read one at
    a time they could straddle the last step, whose requests are answered before the server's
    figures take it in: 13 drafts accepted of 12 drafted, once.)"""
    text = urllib.request.urlopen(url + "/metrics", timeout=30).read().decode()
    got = []
    for name in names:
        m = re.search(rf"^{name} (\d+)$", text, re.M)
        assert m, f"/metrics has no {name}"
        got.append(int(m.group(1)))
    return got


def check_served(model, spec, np_, layout, refs, few_steps=True, refusals=True):
    s = Server(["-m", model, "--model-id", "m", "--parallel", 4, "-t", 1] + spec + layout, np_=np_)
    try:
        got = [None] * len(refs)

        def one(i, p):
            body = json.dumps({"model": "m", "prompt": p, "max_tokens": N, "temperature": 0}).encode()
            req = urllib.request.Request(s.url + "/v1/completions", body, {"Content-Type": "application/json"})
            got[i] = json.loads(urllib.request.urlopen(req, timeout=120).read())["choices"][0]["text"]

        assert at_once(prompts(), one) == []
        for i, (g, want) in enumerate(zip(got, refs)):
            assert g == want, f"request {i}: {g!r} against shoal run's {want!r}"
        drafted, accepted, steps, draft_steps = metrics(s.url, "shoal_spec_draft_tokens_total",
                                                        "shoal_spec_accepted_tokens_total", "shoal_steps_total",
                                                        "shoal_draft_model_steps_total")
        assert 0 < accepted <= drafted, f"{accepted} of {drafted} drafts accepted: speculation did not run"
        assert accepted < drafted or not refusals, f"every one of {drafted} drafts accepted: none was refused"
        assert steps < N or not few_steps, f"{steps} steps for {len(refs)} requests of {N} tokens: no step carried several of a request's"
        assert (draft_steps > 0) == ("--draft-model" in spec), f"{draft_steps} steps of a draft model"
    finally:
        assert s.stop() == 0


@pytest.mark.parametrize("np_,layout", [(1, []), (4, ["--tp", 2, "--pp", 2])])
def test_serve_lookup_gives_plain_greedy_text(np_, layout, refs):
    check_served(h.smollm2(), ["--lookup", 8], np_, layout, refs)


@pytest.mark.parametrize("spec", [["--lookup", 3], ["--draft-model", "SMOLLM2", "--draft-max", 3]])
def test_serve_speculation_in_small_batches(spec, refs, q8):
    """-b 16 for four requests of up to 3 drafts, a prompt 13 tokens a step: prompts are fed beside the
    others' decoding, so drafts are often cut for want of room (the step then feeds the last token
    alone, and a draft model's cache drops the drafts it fed): still the plain text."""
    model, want = (q8 if "--draft-model" in spec else (h.smollm2(), refs))
    spec = [str(h.smollm2()) if x == "SMOLLM2" else x for x in spec]
    # (prompts take many steps; and which drafts a cut drops depends on the order the requests
    # arrive in, so a run may happen to keep only drafts the model accepts: refusals are the
    # other tests')
    check_served(model, spec + ["-b", 16, "--prompt-chunk", 13], 1, [], want, few_steps=False, refusals=False)


@pytest.mark.parametrize("np_,layout", [(1, []), (4, ["--tp", 2, "--pp", 2])])
def test_serve_draft_model_gives_plain_greedy_text(np_, layout, q8):
    model, refs = q8
    check_served(model, ["--draft-model", h.smollm2(), "--draft-max", 6], np_, layout, refs)


def test_serve_lookup_bad_values():
    for args, needle in ((["--lookup", 40, "--parallel", 16], "rows of logits"), (["--lookup", -2], "--lookup must be")):
        p = h.run(["serve", "-m", h.smollm2(), "--port", 0] + args, check=False, timeout=60)
        err = p.stderr.decode(errors="replace")
        assert p.returncode == 2 and needle in err, err[-2000:]


SAMPLED = 1200
PAIR_PROMPT = "the cat sat on the mat. the dog sat on the rug. the cat sat on the rug. the dog sat on the mat. the"


def pair_counts(lookup, seed0, np_=1):
    """SAMPLED two-token completions of PAIR_PROMPT seeded seed0.. (temperature 2, top-k 3: the
    draft is likely, not sure): their counts by pair, and the server's drafted and accepted totals."""
    model = h.testdata("stories260K.gguf")
    s = Server(["-m", model, "--model-id", "m", "--parallel", 8, "-t", 1] + (["--lookup", lookup] if lookup else []),
               np_=np_)
    counts = {}
    try:
        seeds = list(range(seed0, seed0 + SAMPLED))
        got = [None] * SAMPLED

        def one(i, seed):
            body = json.dumps({"model": "m", "prompt": PAIR_PROMPT, "max_tokens": 2, "temperature": 2.0,
                               "top_k": 3, "top_p": 1.0, "min_p": 0.0, "seed": seed}).encode()
            req = urllib.request.Request(s.url + "/v1/completions", body, {"Content-Type": "application/json"})
            got[i] = json.loads(urllib.request.urlopen(req, timeout=60).read())["choices"][0]["text"]

        for k in range(0, SAMPLED, 8):  # eight at a time: the batch's sequences
            assert at_once(seeds[k:k + 8], lambda i, seed: one(k + i, seed)) == []
        for g in got:
            counts[g] = counts.get(g, 0) + 1
        drafted, accepted = metrics(s.url, "shoal_spec_draft_tokens_total", "shoal_spec_accepted_tokens_total")
    finally:
        assert s.stop() == 0
    return counts, drafted, accepted


def test_serve_lookup_sampling_keeps_the_distribution():
    # other seeds for each: draws of one seed share their first numbers, which would make the two
    # samples alike whatever the rule
    plain, _, _ = pair_counts(0, 0)
    spec, drafted, accepted = pair_counts(4, 1 << 20)
    assert 0 < accepted < drafted, f"{accepted} of {drafted} drafts accepted: the rule's two ways did not both run"
    assert drafted >= SAMPLED // 2, f"only {drafted} drafts for {SAMPLED} requests"
    # chi-square test of homogeneity over the pairs (rare ones pooled), at p = 0.001
    keys = sorted(set(plain) | set(spec), key=lambda k: -(plain.get(k, 0) + spec.get(k, 0)))
    cells, rest = [], [0, 0]
    for k in keys:
        a, b = plain.get(k, 0), spec.get(k, 0)
        if a + b >= 20:
            cells.append((a, b))
        else:
            rest[0] += a
            rest[1] += b
    if sum(rest):
        cells.append(tuple(rest))
    assert len(cells) >= 3, f"too few pairs to compare: {plain}"
    n_a, n_b = sum(c[0] for c in cells), sum(c[1] for c in cells)
    chi2 = 0.0
    for a, b in cells:
        tot = a + b
        for obs, n in ((a, n_a), (b, n_b)):
            exp = tot * n / (n_a + n_b)
            chi2 += (obs - exp) ** 2 / exp
    df = len(cells) - 1
    # the chi-square distribution's 0.999 quantile (Wilson-Hilferty), for df cells
    z = 3.0902
    crit = df * (1 - 2 / (9 * df) + z * (2 / (9 * df)) ** 0.5) ** 3
    assert chi2 < crit, f"pairs with --lookup differ from without: chi2 {chi2:.1f} > {crit:.1f} (df {df})\n" \
                        f"plain {plain}\nlookup {spec}"
