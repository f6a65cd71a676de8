"""One rank against the oracles of ../shared/testdata (karpathy's run.c on
stories260K): the 256-token greedy text from BOS, the ids of "Once upon a
time" + 28 tokens, and the logits of those 32 positions.

Each is checked with every SIMD level this machine runs, and with the KV
cache types (f32 and f16 must match exactly; the 8-bit cache is checked on
the short run, where it agrees).
"""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "ref"))
import shoal_harness as h  # noqa: E402
import compare_logits  # noqa: E402


@pytest.fixture(scope="module")
def stories():
    return h.testdata("stories260K.gguf")


@pytest.mark.parametrize("kv", ["f16", "f32"])
@pytest.mark.parametrize("threads", [1, 2])
def test_greedy_bos_256_text(stories, kv, threads):
    want = h.testdata("oracle/runc_greedy_bos_256.txt").read_bytes()
    for simd in h.simd_levels():
        p = h.run(["run", "-m", stories, "-n", 256, "--temp", 0, "--kv-type", kv, "-t", threads,
                   "--simd", simd])
        assert p.stdout == want, f"--simd {simd} --kv-type {kv} -t {threads}: text differs:\n" \
                                 f"{p.stdout[:400]!r}"


@pytest.mark.parametrize("kv", ["f16", "f32", "q8"])
def test_greedy_once_upon_a_time_ids(stories, kv, tmp_path):
    want = h.read_ids(h.testdata("oracle/runc_greedy_once_upon_a_time_n32.ids"))
    for simd in h.simd_levels():
        ids = tmp_path / f"ids_{simd}.txt"
        p = h.run(["run", "-m", stories, "-p", "Once upon a time", "-n", 28, "--temp", 0,
                   "--kv-type", kv, "--simd", simd, "--ids-out", ids])
        assert h.read_ids(ids) == want, f"--simd {simd} --kv-type {kv}"
        text = h.testdata("oracle/runc_greedy_once_upon_a_time_n32.txt").read_bytes()
        assert p.stdout == text


def test_logits_once_upon_a_time(stories, tmp_path):
    oracle = compare_logits.parse_logits_file(
        str(h.testdata("oracle/runc_logits_once_upon_a_time_n32.txt")))
    for simd in h.simd_levels():
        out = tmp_path / f"logits_{simd}.txt"
        h.run(["run", "-m", stories, "-p", "Once upon a time", "-n", 28, "--temp", 0,
               "--kv-type", "f32", "--simd", simd, "--logits-out", out])
        mine = compare_logits.parse_logits_file(str(out))
        assert sorted(mine) == list(range(32))
        # run.c prints 7 significant digits of f32: agreement to 1e-4 is expected
        assert compare_logits.compare(mine, oracle, atol=1e-4, rtol=0, names=("shoal", "run.c"),
                                      strict_argmax=True), f"--simd {simd}"


def test_stats_on_stderr(stories):
    p = h.run(["run", "-m", stories, "-n", 16, "--temp", 0, "-p", "Once"])
    err = p.stderr.decode()
    for want in ("prompt", "tok/s", "generation", "peak RSS"):
        assert want in err, f"stderr lacks {want!r}: {err}"


def test_sampling_is_reproducible_with_seed(stories):
    args = ["run", "-m", stories, "-n", 64, "--temp", 1.0, "--top-k", 0, "--top-p", 0.9,
            "--seed", 42, "-p", "Once"]
    a, b = h.run(args).stdout, h.run(args).stdout
    c = h.run(args[:-4] + ["--seed", 43, "-p", "Once"]).stdout
    assert a == b, "same seed, different text"
    assert a != c, "different seeds gave the same 64 sampled tokens"
