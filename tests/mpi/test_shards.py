"""shoal shard and shoal run --shards under a real mpirun: sharded runs give
the tokens of runs from the GGUF for the layouts of SmolLM2 and for
synthetic models; manifest.pb decodes with protoc against
shard/manifest.proto; damaged, truncated, swapped and foreign files and
manifests are refused with messages that say what is wrong; sharding a
multi-GB model keeps a small peak RSS; an interrupted shard leaves no
manifest.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent.parent
PROTO = ROOT / "shard" / "manifest.proto"
CHAT = ["--chat", "-p", "Give me three tips for staying healthy.", "-n", 32, "--temp", 0, "-q"]


def ids_of(tmp_path, tag, np_, args):
    out = tmp_path / f"ids_{tag}.txt"
    args = ["run"] + list(args) + ["--ids-out", out]
    if np_ == 1:
        h.run(args)
    else:
        h.mpirun(np_, args)
    return h.read_ids(out)


def shard(model, d, *flags):
    return h.run(["shard", "-m", model, "-o", d, "-q"] + [str(f) for f in flags])


def decode(manifest: Path) -> str:
    protoc = shutil.which("protoc")
    if not protoc:
        h.require("protoc not found (apt-get install protobuf-compiler): cannot decode the manifest")
    p = subprocess.run([protoc, f"--proto_path={PROTO.parent}", "--decode=shoal.Manifest", PROTO.name],
                       stdin=open(manifest, "rb"), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr.decode()
    return p.stdout.decode()


LAYOUTS = [(1, 1, []), (2, 1, []), (3, 1, []), (1, 2, []), (2, 2, []), (1, 3, []),
           (2, 1, ["--tp-weights", "2,1"])]


def test_smollm2_shards_match_the_gguf(tmp_path):
    model = h.smollm2()
    base = ids_of(tmp_path, "gguf", 1, ["-m", model] + CHAT)
    n_p = len(h.prompt_ids(["-m", model] + CHAT, tmp_path))  # the chat template's ids come first
    assert len(base) == n_p + 32, f"the GGUF run generated {len(base) - n_p} tokens, not 32"
    bad = []
    for tp, pp, extra in LAYOUTS:
        d = tmp_path / f"s{tp}x{pp}{'w' if extra else ''}"
        shard(model, d, "--tp", tp, "--pp", pp, *extra)
        ids = ids_of(tmp_path, d.name, tp * pp, ["--shards", d] + CHAT)
        if ids != base:
            bad.append(f"tp {tp} x pp {pp} {extra}: sharded run differs from the GGUF run")
        text = decode(d / "manifest.pb")
        assert f"tp: {tp}" in text and (pp == 1 or f"pp: {pp}" in text)
        assert text.count("ranks {") == tp * pp and 'checksum: "xxh3-64"' in text
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("tp,pp", [(4, 1), (1, 4), (2, 2)])
def test_stories_shards_match_the_oracle(tmp_path, tp, pp):
    """The previous issue's wide layouts, on the model with run.c's oracle: sharded
    runs give the oracle's greedy text."""
    model = h.testdata("stories260K.gguf")
    oracle = h.testdata("oracle/runc_greedy_bos_256.txt").read_bytes()
    d = tmp_path / f"st{tp}x{pp}"
    shard(model, d, "--tp", tp, "--pp", pp)
    p = h.mpirun(tp * pp, ["run", "--shards", d, "-n", 256, "--temp", 0, "-q"])
    assert p.stdout == oracle, f"tp {tp} x pp {pp} from shards: the 256-token text differs from run.c's"


def test_synthetic_shards_match(tmp_path):
    """q8_0 with grouped-query attention and a separate output head, tp 2 x pp 2."""
    model = tmp_path / "m.gguf"
    h.run(["synth", "-o", model, "--type", "q8_0", "--dim", 256, "--layers", 4, "--heads", 8,
           "--kv-heads", 4, "--ffn", 512, "--vocab", 512, "--seed", 3])
    args = ["-p", "the quick brown fox", "-n", 24, "--temp", 0, "--ignore-eos", "-q"]
    base = ids_of(tmp_path, "one", 1, ["-m", model] + args)
    shard(model, tmp_path / "s", "--tp", 2, "--pp", 2)
    assert ids_of(tmp_path, "sh", 4, ["--shards", tmp_path / "s"] + args) == base


@pytest.fixture(scope="module")
def smol_shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards") / "tp2"
    shard(h.smollm2(), d, "--tp", 2)
    return d


def refused(d, np_=2, extra=()):
    p = h.mpirun(np_, ["run", "--shards", d, "-p", "hi", "-n", 2] + list(extra), check=False, timeout=120)
    assert p.returncode != 0, "a bad shard set was accepted"
    err = p.stderr.decode(errors="replace")
    assert "shoal run: error:" in err, err[-3000:]
    return err


def copy(src, tmp_path, name):
    d = tmp_path / name
    shutil.copytree(src, d)
    return d


def test_flipped_byte_is_refused(smol_shards, tmp_path):
    d = copy(smol_shards, tmp_path, "flip")
    f = d / "rank-1.gguf"
    with open(f, "r+b") as fp:
        fp.seek(f.stat().st_size // 2)
        b = fp.read(1)
        fp.seek(f.stat().st_size // 2)
        fp.write(bytes([b[0] ^ 0x10]))
    err = refused(d)
    assert "rank-1.gguf" in err and "fails its checksum" in err and "shoal shard" in err, err


def test_truncated_shard_is_refused(smol_shards, tmp_path):
    d = copy(smol_shards, tmp_path, "trunc")
    os.truncate(d / "rank-0.gguf", (d / "rank-0.gguf").stat().st_size - 4096)
    err = refused(d)
    assert "rank-0.gguf" in err and ("truncated" in err or "bytes" in err), err


def test_swapped_files_are_refused(smol_shards, tmp_path):
    d = copy(smol_shards, tmp_path, "swap")
    os.rename(d / "rank-0.gguf", d / "tmp")
    os.rename(d / "rank-1.gguf", d / "rank-0.gguf")
    os.rename(d / "tmp", d / "rank-1.gguf")
    err = refused(d)
    assert "holds rank 1's part of 2, not rank 0's" in err, err


def test_manifest_for_another_rank_count(smol_shards, tmp_path):
    err = refused(smol_shards, np_=3)
    assert "holds shards for 2 ranks" in err and "mpirun -np 2" in err, err
    p = h.run(["run", "--shards", smol_shards, "-p", "hi"], check=False)
    assert p.returncode == 1 and b"holds shards for 2 ranks" in p.stderr
    err = refused(smol_shards, extra=["--pp", 2])
    assert "was cut for tp 2 x pp 1" in err, err


def test_random_manifest_is_refused(smol_shards, tmp_path):
    d = copy(smol_shards, tmp_path, "rand")
    (d / "manifest.pb").write_bytes(os.urandom(5000))
    err = refused(d)
    assert "manifest.pb: not a shoal shard manifest" in err, err
    (d / "manifest.pb").write_bytes(b"")
    assert "not a shoal shard manifest" in refused(d)
    (d / "manifest.pb").unlink()
    assert "manifest.pb: cannot open" in refused(d)


def test_newer_manifest_version_is_refused(smol_shards, tmp_path):
    d = copy(smol_shards, tmp_path, "newer")
    text = decode(d / "manifest.pb").replace("version: 1\n", "version: 2\n", 1)
    p = subprocess.run([shutil.which("protoc"), f"--proto_path={PROTO.parent}", "--encode=shoal.Manifest",
                        PROTO.name], input=text.encode(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    (d / "manifest.pb").write_bytes(p.stdout)
    err = refused(d)
    assert "manifest version 2" in err and "reads version 1 only" in err, err


def test_shard_of_a_shard_and_a_shard_as_model(smol_shards, tmp_path):
    p = h.run(["shard", "-m", smol_shards / "rank-0.gguf", "--tp", 2, "-o", tmp_path / "x"], check=False)
    assert p.returncode == 1 and b"already one rank's shard" in p.stderr
    p = h.run(["run", "-m", smol_shards / "rank-0.gguf", "-p", "hi"], check=False)
    assert p.returncode == 1 and b"--shards" in p.stderr
    out = h.run(["info", smol_shards / "rank-1.gguf", "--no-tensors"]).stdout.decode()
    assert "shard:       rank 1 of 2 (tp 2 x pp 1)" in out
    # standard GGUF readers take the rank files too
    import gguf
    r = gguf.GGUFReader(str(smol_shards / "rank-1.gguf"))
    names = {t.name: [int(x) for x in t.shape] for t in r.tensors}
    assert names["blk.0.attn_q.weight"] == [576, 192]  # 3 query heads of 64
    assert names["output.weight"] == [576, 24576]


def peak_rss_of(cmd):
    """Peak RSS (KiB) of cmd, measured by a fresh Python whose only child it is."""
    code = ("import resource, subprocess, sys\n"
            "rc = subprocess.run(sys.argv[1:]).returncode\n"
            "print(rc, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")
    p = subprocess.run([sys.executable, "-c", code] + [str(c) for c in cmd], capture_output=True,
                       timeout=600)
    rc, kib = p.stdout.decode().split()
    return int(rc), int(kib), p.stderr.decode()


@pytest.fixture(scope="module")
def big_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("big") / "big.gguf"
    h.run(["synth", "-o", path, "--dim", 4096, "--layers", 6, "--heads", 32, "--kv-heads", 8,
           "--ffn", 11008, "--vocab", 32000, "--type", "q8_0", "--seed", 1], timeout=600)
    yield path
    path.unlink()


def test_sharding_a_big_model_keeps_memory_small(big_model, tmp_path):
    size = big_model.stat().st_size
    assert size > 2**30, "the test model should be over a GiB"
    d = tmp_path / "bigsh"
    rc, kib, err = peak_rss_of([h.shoal_bin(), "shard", "-m", big_model, "--tp", 2, "--pp", 2, "-o", d])
    assert rc == 0, err
    written = sum(f.stat().st_size for f in d.glob("rank-*.gguf"))
    print(f"sharded {size / 2**30:.2f} GiB into {written / 2**30:.2f} GiB: peak RSS {kib / 1024:.1f} MiB")
    assert kib < 64 * 1024, f"peak RSS {kib / 1024:.0f} MiB for a {size / 2**30:.1f} GiB model"
    assert re.search(r"shard: +100%", err), "no progress report"
    shutil.rmtree(d)


def test_interrupted_shard_leaves_no_manifest(big_model, tmp_path):
    d = tmp_path / "cut"
    shard(h.smollm2(), d, "--tp", 2)  # an old, complete set in the directory
    p = subprocess.Popen([h.shoal_bin(), "shard", "-m", str(big_model), "--tp", "2", "-o", str(d)],
                         stderr=subprocess.DEVNULL)
    # the new run removes the old manifest before it writes anything: kill it right then,
    # in the middle of writing the rank files
    t0 = time.time()
    while (d / "manifest.pb").exists() and p.poll() is None and time.time() - t0 < 60:
        time.sleep(0.001)
    time.sleep(0.2)
    assert p.poll() is None, "shard finished before it could be interrupted"
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    assert not (d / "manifest.pb").exists(), "an interrupted shard left a manifest"
    err = refused(d)
    assert "manifest.pb: cannot open" in err, err


def encode(text: str) -> bytes:
    p = subprocess.run([shutil.which("protoc"), f"--proto_path={PROTO.parent}", "--encode=shoal.Manifest",
                        PROTO.name], input=text.encode(), capture_output=True, timeout=60)
    assert p.returncode == 0, p.stderr
    return p.stdout


@pytest.mark.parametrize("field,value", [("v0", 0), ("v0", 1), ("q0", 0), ("ff0", 0)],
                         ids=["vocab overlaps", "vocab gap", "heads overlap", "ffn overlaps"])
def test_parts_that_do_not_tile_are_refused(smol_shards, tmp_path, field, value):
    """Parts each within the model but overlapping rank 0's (rank 1 claiming vocabulary rows 0 and
    up, as many as its file holds; or its heads or FFN units from 0), or leaving a gap (rank 1's
    rows one further on): refused before anything loads (overlapping vocabulary rows made the
    logits' gather write past its buffer)."""
    d = copy(smol_shards, tmp_path, f"tile_{field}")
    text = decode(d / "manifest.pb")
    parts = text.split("parts {")
    assert len(parts) == 3, text[:2000]
    m = re.search(rf"\b{field}: (\d+)", parts[2])
    assert m, parts[2]
    old = int(m.group(1))
    if field == "v0" and value == 0:  # as many rows as rank 1's file holds, from 0: rank 0's
        parts[2] = re.sub(r"\bv1: (\d+)", lambda x: f"v1: {int(x.group(1)) - old}", parts[2])
    elif field == "v0":  # from one past its start: a row no rank has
        value = old + 1
    parts[2] = re.sub(rf"\b{field}: \d+", f"{field}: {value}", parts[2], count=1)
    (d / "manifest.pb").write_bytes(encode("parts {".join(parts)))
    err = refused(d)
    assert "parts do not cover the model's" in err and "exactly once" in err, err


def test_rank_file_shape_not_the_manifests(smol_shards, tmp_path):
    """A rank's file whose own vocabulary size disagrees with the manifest's: refused (the ranks'
    logits buffers are sized by their files)."""
    d = copy(smol_shards, tmp_path, "shape")
    h.rewrite_gguf_key(smol_shards / "rank-1.gguf", d / "rank-1.gguf", "shoal.shard.n_vocab", 49153)
    err = refused(d)
    assert "rank-1.gguf: its shape" in err and "is not the manifest's" in err, err
