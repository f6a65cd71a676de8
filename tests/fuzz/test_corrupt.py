"""Truncated and corrupted GGUF files fed to `shoal info` and `shoal run`:
every one must end in a clean exit, status 0 (a harmless change) or 1 with
an error message (never a signal, never a sanitizer report). A truncated
file must always be refused, with a message naming the file.

Run it against a sanitizer build (SHOAL_BIN=build-asan/shoal) to catch
out-of-bounds reads that do not crash.
"""
import os
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

ENV = dict(os.environ,
           ASAN_OPTIONS="exitcode=99:detect_leaks=1",
           UBSAN_OPTIONS="halt_on_error=1:exitcode=98:print_stacktrace=1")


def shoal(args, timeout=60):
    p = subprocess.run([h.shoal_bin()] + [str(a) for a in args], capture_output=True,
                       timeout=timeout, env=ENV)
    return p.returncode, p.stderr.decode(errors="replace")


def shoal_many(cases):
    """[(args, what)] run a core each at once (hundreds of short processes: one at a time, the
    truncations and corruptions took 33 s of CI under ASan); [(rc, err, what)] in their order."""
    from concurrent.futures import ThreadPoolExecutor
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        done = list(pool.map(lambda c: shoal(c[0]), cases))
    return [(rc, err, what) for (rc, err), (_, what) in zip(done, cases)]


def check_clean(rc, err, what):
    assert rc in (0, 1), f"{what}: exit status {rc} (signal or sanitizer):\n{err[-2000:]}"
    assert "Sanitizer" not in err and "runtime error" not in err, f"{what}:\n{err[-2000:]}"
    if rc == 1:
        assert "error:" in err, f"{what}: failed without an error message:\n{err}"


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "small.gguf"
    h.run(["synth", "-o", path, "--dim", 32, "--layers", 1, "--heads", 2, "--kv-heads", 1,
           "--ffn", 64, "--vocab", 300, "--type", "q8_0"])
    return path


def data_start(path) -> int:
    import gguf
    return min(int(t.data_offset) for t in gguf.GGUFReader(str(path)).tensors)


def commands(path):
    return [["info", path], ["run", "-m", path, "-n", 2, "--temp", 0, "-p", "a b", "-t", 1]]


def test_truncations_are_refused(small_model, tmp_path):
    data = small_model.read_bytes()
    start = data_start(small_model)
    # every cut in the first 64 bytes, a spread over the header and the data, the last bytes
    cuts = set(range(0, 64)) | set(range(64, start, max(1, start // 150)))
    cuts |= set(range(start, len(data), max(1, (len(data) - start) // 40)))
    cuts |= {len(data) - k for k in range(1, 4)}
    cases = []
    for n in sorted(cuts):
        cut = tmp_path / f"cut-{n}.gguf"
        cut.write_bytes(data[:n])
        cases += [(cmd, (cmd[0], n, cut)) for cmd in commands(cut)]
    for rc, err, (what, n, cut) in shoal_many(cases):
        check_clean(rc, err, f"{what} of the first {n} of {len(data)} bytes")
        assert rc == 1, f"{what} accepted a file truncated to {n} of {len(data)} bytes"
        assert str(cut) in err, f"message does not name the file: {err}"


def test_random_corruptions(small_model, tmp_path):
    data = bytearray(small_model.read_bytes())
    start = data_start(small_model)
    rng = random.Random(1234)
    cases = []
    for i in range(250):
        d = bytearray(data)
        for _ in range(rng.choice([1, 1, 2, 4])):
            pos = rng.randrange(0, start) if rng.random() < 0.9 else rng.randrange(len(d))
            d[pos] = rng.choice([0, 0xff, 0x7f, 0x80, rng.randrange(256)])
        bad = tmp_path / f"bad-{i}.gguf"
        bad.write_bytes(bytes(d))
        cases += [(cmd, f"{cmd[0]} after corruption {i}") for cmd in commands(bad)]
    for rc, err, what in shoal_many(cases):
        check_clean(rc, err, what)


def patch_u64(data, off, value):
    d = bytearray(data)
    d[off:off + 8] = struct.pack("<Q", value)
    return bytes(d)


def test_targeted_corruptions(small_model, tmp_path):
    """Lengths and counts set to values that overflow or point past the end."""
    data = small_model.read_bytes()
    bad = tmp_path / "t.gguf"
    cases = {
        "tensor count 2^63": patch_u64(data, 8, 1 << 63),
        "kv count 2^64-1": patch_u64(data, 16, (1 << 64) - 1),
        "first key length 2^62": patch_u64(data, 24, 1 << 62),
        "first key length 2^64-1": patch_u64(data, 24, (1 << 64) - 1),
        "magic": b"GGUX" + data[4:],
        "version 1": data[:4] + struct.pack("<I", 1) + data[8:],
        "version 99": data[:4] + struct.pack("<I", 99) + data[8:],
        "empty": b"",
    }
    for what, blob in cases.items():
        bad.write_bytes(blob)
        for cmd in commands(bad):
            rc, err = shoal(cmd)
            check_clean(rc, err, what)
            assert rc == 1, f"{what}: accepted"


def test_tensor_table_corruptions(small_model, tmp_path):
    """Each tensor's dims, type and offset set to absurd values."""
    import gguf
    r = gguf.GGUFReader(str(small_model))
    data = small_model.read_bytes()
    bad = tmp_path / "tt.gguf"
    for t in r.tensors[:6]:
        f = t.field  # parts: name len, name, n_dims, dims..., type, offset
        n_dims = int(f.parts[2][0])
        dims_off = f.offset + 8 + len(bytes(f.parts[1])) + 4
        type_off = dims_off + 8 * n_dims
        off_off = type_off + 4
        for what, off, blob in [
            ("dim 2^62", dims_off, struct.pack("<Q", 1 << 62)),
            ("dim 0", dims_off, struct.pack("<Q", 0)),
            ("type 99", type_off, struct.pack("<I", 99)),
            ("type q4_k", type_off, struct.pack("<I", 12)),
            ("offset past end", off_off, struct.pack("<Q", 1 << 40)),
            ("offset misaligned", off_off, struct.pack("<Q", 3)),
            ("n_dims 9", dims_off - 4, struct.pack("<I", 9)),
        ]:
            d = bytearray(data)
            d[off:off + len(blob)] = blob
            bad.write_bytes(bytes(d))
            for cmd in commands(bad):
                rc, err = shoal(cmd)
                check_clean(rc, err, f"{t.name}: {what}")
                if what != "dim 0":
                    assert rc == 1, f"{cmd[0]}: {t.name}: {what} accepted"


def test_stories_truncated(tmp_path):
    """The real model cut inside its tensor data."""
    data = h.testdata("stories260K.gguf").read_bytes()
    cut = tmp_path / "stories_cut.gguf"
    for frac in (0.1, 0.5, 0.99):
        cut.write_bytes(data[:int(len(data) * frac)])
        for cmd in commands(cut):
            rc, err = shoal(cmd)
            check_clean(rc, err, f"stories cut at {frac}")
            assert rc == 1 and "truncated" in err, err


def test_file_truncated_while_running(tmp_path):
    """A model file cut short while `shoal run` uses it (its weights are read from the map): the
    next read of a page past the new end raised SIGBUS and the process died of it (status 135); now
    it ends with status 1 and a message naming the file."""
    import time
    path = h.synth_slow(tmp_path / "running.gguf")
    p = subprocess.Popen([h.shoal_bin(), "run", "-m", str(path), "-n", "100000", "--ignore-eos", "-t", "1", "-q"],
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ENV)
    try:
        time.sleep(1.5)
        assert p.poll() is None, "the run ended before the cut"
        os.truncate(path, path.stat().st_size // 4)
        err = p.communicate(timeout=30)[1].decode(errors="replace")
    finally:
        if p.poll() is None:
            p.kill()
            p.communicate()
    assert p.returncode == 1, f"exit status {p.returncode}:\n{err[-2000:]}"
    assert str(path) in err and "shrank" in err, err[-2000:]
