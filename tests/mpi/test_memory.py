"""Each rank holds only its share of the weights: a rank's peak RSS, less
what the same layout costs with a tiny model (MPI, buffers), is about the
model's weight bytes divided by the number of ranks."""
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

SHAPE = ["--layers", 8, "--heads", 8, "--kv-heads", 4, "--vocab", 2048, "--type", "q8_0"]


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    d = tmp_path_factory.mktemp("mem")
    big, tiny = d / "big.gguf", d / "tiny.gguf"
    h.run(["synth", "-o", big, "--dim", 1024, "--ffn", 2816] + SHAPE)
    h.run(["synth", "-o", tiny, "--dim", 128, "--ffn", 256] + SHAPE)
    return big, tiny


def peak_rss(model, tp, pp):
    args = ["run", "-m", model, "-p", "a", "-n", 1, "-c", 64, "-b", 8, "--temp", 0, "-v",
            "--tp", tp, "--pp", pp]
    p = h.mpirun(tp * pp, args) if tp * pp > 1 else h.run(args)
    return h.peak_rss(p.stderr.decode(), tp * pp)


def test_weight_memory_per_rank_falls(models):
    big, tiny = models
    weights = big.stat().st_size - tiny.stat().st_size  # the tiny model's share is in the baseline
    seen = {}
    for tp, pp in [(1, 1), (2, 1), (4, 1), (1, 2), (1, 4), (2, 2)]:
        n = tp * pp
        over = [b - t for b, t in zip(peak_rss(big, tp, pp), peak_rss(tiny, tp, pp))]
        seen[(tp, pp)] = max(over)
        share = weights / n
        print(f"tp {tp} x pp {pp}: weight memory per rank {max(over) / 2**20:.1f} MiB "
              f"(weights / ranks = {share / 2**20:.1f} MiB)")
        # about 1/N of the weights: the pipeline's last stage carries the
        # output head, hence the slack
        assert max(over) <= 1.25 * share + (4 << 20), f"tp {tp} x pp {pp}: {max(over) / 2**20:.1f} MiB per rank"
        assert max(over) >= 0.6 * share, "less memory than the share: the weights were not read?"
    assert seen[(4, 1)] < 0.4 * seen[(1, 1)] and seen[(1, 4)] < 0.45 * seen[(1, 1)]
