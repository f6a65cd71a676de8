"""`shoal quantize` against llama.cpp's llama_model_quantize on the same
source: SmolLM2-135M-Instruct (Q4_1, requantized as llama-quantize
--allow-requantize does) into every mix and pure type that
tests/model/record_smollm2_logits.py had llama.cpp write (llama-cpp-python,
version in data/smollm2_logits.json): each tensor's type must be the one
llama.cpp chose, and the tensors' bytes, names and shapes must be llama.cpp's
file's, by the digest recorded from it (smollm2_variants.tensor_digest),
which makes their quantization error llama.cpp's too. The metadata is the
source's but for general.file_type (llama.cpp's ftype) and
general.quantization_version (2). A float source (a synthetic F32 model)
goes to F16, BF16 and Q8_0 with the gguf package's bytes. Refusals: a
quantized source without --allow-requantize, an unknown type, IN as OUT, a
directory that is not there (and no file left behind).
"""
import json
import sys
from pathlib import Path

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import shoal_harness as h  # noqa: E402

gguf = h.import_required("gguf", "the gguf package (pip install gguf) reads the files written")
import smollm2_variants as sv  # noqa: E402

VARIANTS = {k: v for k, v in json.loads((HERE / "data" / "smollm2_logits.json").read_text())["variants"].items()
            if v.get("llama_ftype")}


def fields(r):
    """A reader's metadata, but GGUF's own fields. (A reader of SmolLM2 takes 1.5 s: its 49,152-token arrays.)"""
    return {name: f.contents() for name, f in r.fields.items() if not name.startswith("GGUF.")}


_source = {}


def source_fields():
    if "f" not in _source:
        _source["f"] = fields(gguf.GGUFReader(str(h.smollm2())))
    return dict(_source["f"])


@pytest.mark.parametrize("name", sorted(VARIANTS))
def test_as_llamacpp_writes_it(name, tmp_path):
    v = VARIANTS[name]
    src = h.smollm2()
    out = tmp_path / f"{name}.gguf"
    args = ["quantize", "--allow-requantize"] + (["--pure"] if v["pure"] else []) + [src, out, v["llama_ftype"]]
    p = h.run(args)
    assert f"-> {out}: {v['llama_ftype']}" in p.stderr.decode()
    r = gguf.GGUFReader(str(out))
    types = {t.name: t.tensor_type.name for t in r.tensors}
    if v.get("tensor_types"):
        wrong = {k: (types.get(k), t) for k, t in v["tensor_types"].items() if types.get(k) != t}
        assert not wrong, f"{name}: tensors whose type is not llama.cpp's (shoal's, llama.cpp's): {wrong}"
    assert sv.tensor_digest(out) == v["tensor_sha256"], f"{name}: the tensors' bytes are not llama.cpp's file's"
    a, b = source_fields(), fields(r)
    ftypes = {"Q5_0": 8, "Q5_1": 9, "Q8_0": 7, "Q4_K_M": 15, "Q5_K_M": 17, "Q6_K": 18, "Q3_K_M": 12, "Q2_K": 10,
              "IQ4_XS": 30, "IQ4_NL": 25}
    assert b.pop("general.file_type") == ftypes[v["llama_ftype"]] and b.pop("general.quantization_version") == 2
    a.pop("general.file_type", None)
    a.pop("general.quantization_version", None)
    assert a.keys() == b.keys() and all(np.array_equal(np.asarray(a[k]), np.asarray(b[k])) for k in a), name


def test_from_floats(tmp_path):
    """F32 into F16, BF16 and Q8_0: the bytes the gguf package's quantizer gives; the norms stay F32."""
    src = tmp_path / "f32.gguf"
    h.run(["synth", "-o", src, "--dim", 128, "--layers", 2, "--heads", 4, "--kv-heads", 2, "--ffn", 256])
    ref = {t.name: (np.asarray(t.data).copy(), t.tensor_type) for t in gguf.GGUFReader(str(src)).tensors}
    for qtype in ["F16", "BF16", "Q8_0"]:
        out = tmp_path / f"{qtype}.gguf"
        h.run(["quantize", "-q", src, out, qtype])
        for t in gguf.GGUFReader(str(out)).tensors:
            x, st = ref[t.name]
            if len(t.shape) < 2 or len([d for d in t.shape if d > 1]) < 2:
                assert t.tensor_type == st and np.array_equal(np.asarray(t.data), x), t.name
                continue
            want = gguf.quants.quantize(x.astype(np.float32), gguf.GGMLQuantizationType[qtype])
            assert t.tensor_type.name == qtype and np.array_equal(np.asarray(t.data).view(np.uint8).ravel(),
                                                                  want.view(np.uint8).ravel()), (qtype, t.name)


def test_refusals(tmp_path):
    src = h.smollm2()
    out = tmp_path / "out.gguf"
    p = h.run(["quantize", src, out, "Q4_K_M"], check=False)
    assert p.returncode == 1 and "is q4_1" in p.stderr.decode() and "--allow-requantize" in p.stderr.decode()
    p = h.run(["quantize", src, out, "Q7_K"], check=False)
    assert p.returncode == 2 and "'Q7_K' is not a type or mix" in p.stderr.decode()
    p = h.run(["quantize", src, src, "Q8_0"], check=False)
    assert p.returncode == 2 and "the same file" in p.stderr.decode()
    p = h.run(["quantize", "--allow-requantize", src, tmp_path / "no" / "such" / "dir.gguf", "Q8_0"], check=False)
    assert p.returncode == 1 and "dir.gguf" in p.stderr.decode()
    p = h.run(["quantize", src, out], check=False)
    assert p.returncode == 2
    assert not list(tmp_path.rglob("*")), f"left behind: {list(tmp_path.rglob('*'))}"
