"""Synthetic models of the families that change the LLaMA block (qwen3:
per-head Q/K norms; gemma3: those, norms after attention and FFN, a GELU
gate, embeddings times sqrt(dim), a window of 8 or 12 positions on five
layers of six with their own rope base) and of mixtures of experts
(qwen3moe: 8 experts 2 a token, 16 experts 4 a token; Mixtral's llama: 4
experts 2 a token) against llama.cpp on the same files:
data/families_llamacpp.*, recorded by tests/model/record_families.py with
llama-cpp-python 0.3.36 (the synth arguments and each file's SHA-256 are in
the json: the test writes the file again and checks it is the same bytes).

- the prompt's ids are llama.cpp's (BOS first);
- along the prompt and llama.cpp's greedy continuation (teacher forcing,
  every position: 58-61 of them, past the windows), shoal's logits against
  llama.cpp's, both with an f32 KV cache: within TOL x the largest |logit| of
  the file. Measured (2026-12-05): qwen3 f32 4.6e-7 (both compute in f32,
  in other orders); gemma3 f32 6.2e-4, which is llama.cpp's GELU: it looks
  the gate up in a table of f16 values at the f16-rounded input (ggml's
  GGML_GELU_FP16), where shoal computes it in f32 (simulating that table in
  the float64 reference brings the difference to 2.2e-4); Q8_0 1.1e-2 and
  1.5e-2 at their worst positions (both round activations to 8 bits per
  block of 32, and a value at a rounding boundary goes either way; the
  median position 1e-7 and 1e-2); the mixtures of experts in f32 8.3e-7
  (qwen3moe) and 6.5e-7 (mixtral), Q8_0 1.8e-2 (median 8.8e-3): every
  token routed to llama.cpp's experts, or a whole expert's output would
  differ. Within the bound, the greedy token is llama.cpp's wherever its
  top two are further apart than twice the bound. The float64 reference
  (test_forward.py) checks the same families on its own, to f32 rounding.
- a file of any other architecture is refused, naming it and the families
  that run.
"""
import hashlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402

DATA = Path(__file__).resolve().parent / "data"
META = json.loads((DATA / "families_llamacpp.json").read_text())
LOGITS = np.load(DATA / "families_llamacpp.npz")
TOL = {"qwen3-f32": 1e-5, "gemma3-f32": 2e-3, "qwen3-q8_0": 3e-2, "gemma3-q8_0": 3e-2,
       "qwen3moe-f32": 1e-5, "qwen3moe-q8_0": 3e-2, "mixtral-f32": 1e-5}


@pytest.mark.parametrize("name", list(META["files"]))
def test_logits_match_llamacpp(name, tmp_path):
    f = META["files"][name]
    model = tmp_path / f"{name}.gguf"
    h.run(["synth", "-o", model] + f["synth"])
    assert hashlib.sha256(model.read_bytes()).hexdigest() == f["sha256"], \
        f"{name}: shoal synth no longer writes the file llama.cpp was recorded on: re-record"
    seq, n_p = f["seq"], f["n_prompt"]
    ids = tmp_path / "ids.txt"
    h.run(["run", "-m", model, "-p", META["prompt"], "-n", 0, "-q", "--ids-out", ids])
    assert [seq[0]] + h.read_ids(ids) == seq[:n_p], f"{name}: the prompt's ids are not llama.cpp's"
    want = LOGITS[name].astype(np.float64)
    mine = h.prompt_logits(model, seq, tmp_path / "logits.f32", want.shape[1], ["--kv-type", "f32"]).astype(np.float64)
    largest = np.abs(want).max()
    err = np.abs(mine - want).max(axis=1) / largest
    tol = TOL[name]
    print(f"{name}: {len(seq)} positions, max |shoal - llama.cpp| / max |logit| = {err.max():.2e} "
          f"(at position {int(err.argmax())}), median {np.median(err):.2e}")
    assert err.max() <= tol, f"{name}: position {int(err.argmax())} differs by {err.max():.2e} of the largest logit"


def test_other_architectures_are_refused(tmp_path):
    """A file of an architecture shoal does not run (a synthetic llama relabelled "mamba"):
    refused before anything loads, naming it and the families that run."""
    import struct
    model = tmp_path / "m.gguf"
    h.run(["synth", "-o", model, "--dim", 64, "--layers", 1, "--heads", 4, "--kv-heads", 2, "--ffn", 128])
    data = bytearray(model.read_bytes())
    key = b"general.architecture"
    enc = struct.pack("<Q", len(key)) + key + struct.pack("<I", 8) + struct.pack("<Q", 5) + b"llama"
    at = data.find(enc)
    assert at >= 0
    data[at + len(enc) - 5:at + len(enc)] = b"mamba"
    model.write_bytes(bytes(data))
    p = h.run(["run", "-m", model, "-p", "hi", "-n", 1], check=False)
    err = p.stderr.decode()
    assert p.returncode != 0 and "architecture 'mamba' is not supported" in err, err
    assert "shoal runs llama, mistral, qwen2, qwen3, qwen3moe, gemma3" in err, err
