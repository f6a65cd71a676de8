"""Mutated host files to `shoal plan --hosts` and mutated shard manifests to
`shoal run --shards`: every one ends in a clean exit, status 0 or 1 with an
error message (never a signal, never a sanitizer report; the suite runs
again against the ASan + UBSan build)."""
import random
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402
from test_corrupt import check_clean, shoal  # noqa: E402

HOSTS = ("# a LAN\nhost a ranks=1 mem=1G membw=20GB/s cores=2\n"
         "host b ranks=2 mem=512M ram=2G membw=10GB/s corebw=5GB/s cores=4\n"
         "link a b bw=1Gbit/s lat=0.5ms\nlink * * bw=100Mbit/s lat=2ms\nlocal bw=4GB/s lat=20us\n")
FIXED = ["--membw", "20GB/s", "--corebw", "10GB/s", "--no-probe"]


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    """4 layers, 4 heads in 2 KV groups: 3 ranks can run it (1 x 3), 2 either way."""
    path = tmp_path_factory.mktemp("fuzzplan") / "small.gguf"
    h.run(["synth", "-o", path, "--dim", 64, "--layers", 4, "--heads", 4, "--kv-heads", 2,
           "--ffn", 128, "--vocab", 300, "--type", "q8_0"])
    return path


def mutate(rng, data: bytes) -> bytes:
    b = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        op = rng.random()
        i = rng.randrange(len(b)) if b else 0
        if op < 0.3 and b:
            b[i] = rng.randrange(256)
        elif op < 0.5 and b:
            del b[i:i + rng.randint(1, 8)]
        elif op < 0.7:
            b[i:i] = rng.choice([b"=", b" ", b"\n", b"#", b"*", b"0", b"-1", b"1e308", b"G", b"ms",
                                 b"ranks=", b"host x ranks=3 mem=1\n", bytes([rng.randrange(256)])])
        else:
            b[i:i] = bytes(b[rng.randrange(len(b)):][:rng.randint(1, 40)]) if b else b""
    return bytes(b)


def test_host_files(small_model, tmp_path):
    rc, err = shoal(["plan", "-m", small_model, "--hosts", _write(tmp_path / "ok", HOSTS.encode())] + FIXED)
    assert rc == 0, err
    rng = random.Random(6)
    for k in range(150):
        f = _write(tmp_path / f"h{k}", mutate(rng, HOSTS.encode()))
        rc, err = shoal(["plan", "-m", small_model, "--hosts", f] + FIXED)
        check_clean(rc, err, f"host file {k}: {f.read_bytes()!r}")
    for k, data in enumerate([b"", b"\n" * 1000, b"host " + b"a" * 5000 + b" ranks=1 mem=1G\n",
                              b"host a ranks=99999999999 mem=1G\n", b"host a ranks=1 mem=1e400G\n",
                              b"host a ranks=1 mem=nan\n", b"host a ranks=1 mem=inf\n",
                              b"".join(b"host h%d ranks=1 mem=1G\n" % i for i in range(300))]):
        f = _write(tmp_path / f"e{k}", data)
        rc, err = shoal(["plan", "-m", small_model, "--hosts", f] + FIXED)
        check_clean(rc, err, f"host file {data[:60]!r}")


def test_manifests(small_model, tmp_path):
    d = tmp_path / "shards"
    rc, err = shoal(["shard", "-m", small_model, "--pp", 1, "--tp", 1, "-o", d, "-q"])
    assert rc == 0, err
    good = (d / "manifest.pb").read_bytes()
    rc, err = shoal(["run", "--shards", d, "-p", "a", "-n", 2])
    assert rc == 0, err
    rng = random.Random(7)
    for k in range(120):
        (d / "manifest.pb").write_bytes(mutate(rng, good))
        rc, err = shoal(["run", "--shards", d, "-p", "a", "-n", 2])
        check_clean(rc, err, f"manifest {k}")
    shutil.rmtree(d)


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


if __name__ == "__main__":
    sys.exit(pytest.main([__file__]))
