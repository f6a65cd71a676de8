#!/usr/bin/env python3
"""Records llama.cpp's files and answers for the weight types of issue 17,
the independent oracle that tests/model/test_kquants.py holds shoal to.
shoal's code plays no part in them but for the source weights: `shoal synth`
writes three small LLaMA-shape models in F16 (seeded random floats, nothing
quantized); llama.cpp quantizes them and computes every logit.

    pip install llama-cpp-python==0.3.36 gguf numpy
    cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release && ninja -C build shoal
    SHOAL_BIN=build/shoal python3 tests/model/record_kquants.py
    SHOAL_BIN=build/shoal python3 tests/model/record_kquants.py --only c   # one shape's files

(run on 2026-12-04 with Python 3.11.7 and llama-cpp-python 0.3.36, built
from its sdist by pip on an AMD EPYC with AVX-512, in 2 s; the versions and
settings go into oracle.json too; shape "c" was added on the same day by
--only c, with the same llama-cpp-python build: oracle.json's "meta"
"added".) Prompts are token ids, given to llama.cpp as ids: no tokenizer is
involved on either side.

--only SHAPE[,SHAPE] records the files of those shapes alone and merges them
into the oracle there: every other GGUF stays untouched, and every other
file's entry and logits are carried over as they are.

It writes tests/model/data/kquants/:
- one GGUF per entry of FILES, quantized by llama.cpp's llama_model_quantize
  (llama-quantize's library call) from the F16 source of its shape: the
  default mixes of the ftypes people download (which choose a type per
  tensor, and fall back to other types where a row is not a multiple of 256),
  two pure files (every matrix one type, as llama-quantize --pure) and one
  mix of llama-quantize's --tensor-type overrides (c-mix: MIX_C);
- oracle.json: how it was made (versions, settings, the source models'
  shoal synth flags and SHA-256, every file's SHA-256 and size) and per file
  the type of every tensor, llama.cpp's disagreement with itself (the same
  positions evaluated in one batch and one token at a time: "self_kl"), and
  per prompt the prompt ids, llama.cpp's greedy continuation and the top-2
  gap at each of its steps;
- oracle.npz: per file and prompt, "<file>.p<k>" = llama.cpp's logits at every
  position of prompt + continuation evaluated as one batch (teacher
  forcing), shape (positions, vocab), as int16 fixed point below each row's
  maximum ("<file>.p<k>.max"; see pack_logits); row i predicts token i + 1.

The F16 sources are not kept (shoal synth with the recorded flags writes them
again, byte for byte: check the SHA-256).
"""
import argparse
import ctypes
import datetime
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_llamacpp import sha256  # noqa: E402

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
OUT = HERE / "data" / "kquants"

# "a": every matrix row a multiple of 256, so each ftype's mix is what its
# name says. "b": ffn 448 = 1.75 x 256, so ffn_down's rows (448 values) cannot
# hold K-quant super-blocks and llama.cpp falls back (Q4_K -> Q5_0, Q6_K ->
# Q8_0, ...) as it does on real models (SmolLM2's 576); head size 64.
# (Not tied: shoal synth's embeddings, used as the head, make logits so
# peaked that every distribution is one token and the greedy ids one id.)
# "a" and "b" cannot be split by tensor parallelism: a KV group's query
# columns (128) are half a super-block of attn_output. "c" can, on 256-value
# boundaries everywhere (tests/mpi/test_kquant_layouts.py): head size 128,
# 2 query heads per KV head (a KV group is 256 columns of attn_output), 3 KV
# groups (tp 2 = 2 + 1 groups, tp 3 = 1 + 1 + 1) and an FFN of 5 x 256
# (tp 2 = 2 + 3 super-blocks of ffn_down's rows, tp 3 = 2 + 2 + 1).
SHAPES = {
    "a": dict(dim=256, layers=2, heads=8, kv_heads=2, ffn=512, vocab=1024, seed=1717),
    "b": dict(dim=256, layers=2, heads=4, kv_heads=2, ffn=448, vocab=1024, seed=1718),
    "c": dict(dim=256, layers=2, heads=6, kv_heads=3, head_dim=128, ffn=1280, vocab=1024, seed=1719),
}

# c-mix: llama-quantize's --tensor-type overrides (PATTERN=TYPE, a regex;
# the C API's tt_overrides) on the Q4_K_M mix, so that with c-q4_k_m (Q4_K;
# Q6_K in blk.1's attn_v and ffn_down and in the head) every super-block type
# is in a row-parallel matrix (attn_output, ffn_down: summed in f64 over a
# tensor-parallel group) and in a column-parallel one (q, k, v, gate, up)
# within two files. Default mixes would take five: on two layers none puts
# Q2_K in a row-parallel matrix but --pure, and Q3_K, Q5_K and IQ4_XS there
# each take a file of their own (Q2_K's, Q3_K_L's or Q5_K_M's, IQ4_XS's).
# token_embd (Q4_K) and output (Q6_K) stay as Q4_K_M makes them.
MIX_C = (
    (r"blk\.0\.attn_output\.weight", "Q2_K"), (r"blk\.0\.ffn_down\.weight", "Q3_K"),
    (r"blk\.1\.attn_output\.weight", "Q5_K"), (r"blk\.1\.ffn_down\.weight", "IQ4_XS"),
    (r"blk\.0\.attn_q\.weight", "Q3_K"), (r"blk\.0\.attn_k\.weight", "IQ4_XS"),
    (r"blk\.0\.attn_v\.weight", "Q5_K"), (r"blk\.0\.ffn_gate\.weight", "Q2_K"),
    (r"blk\.0\.ffn_up\.weight", "Q5_K"),
    (r"blk\.1\.attn_q\.weight", "Q2_K"), (r"blk\.1\.attn_k\.weight", "Q3_K"),
    (r"blk\.1\.attn_v\.weight", "IQ4_XS"), (r"blk\.1\.ffn_gate\.weight", "IQ4_XS"),
    (r"blk\.1\.ffn_up\.weight", "Q3_K"),
)

# name, shape, llama.cpp ftype (LLAMA_FTYPE_MOSTLY_*), pure[, tensor-type overrides]
FILES = [
    ("a-q4_k_m", "a", "Q4_K_M", False),
    ("a-q5_k_m", "a", "Q5_K_M", False),
    ("a-q6_k", "a", "Q6_K", False),
    ("a-q3_k_m", "a", "Q3_K_M", False),
    ("a-q2_k", "a", "Q2_K", False),
    ("a-iq4_xs", "a", "IQ4_XS", False),
    ("a-iq4_nl", "a", "IQ4_NL", False),
    ("a-q5_0", "a", "Q5_0", False),
    ("a-q5_1", "a", "Q5_1", False),
    ("a-q8_0-pure", "a", "Q8_0", True),
    ("a-q4_0-pure", "a", "Q4_0", True),
    ("b-q4_0", "b", "Q4_0", False),
    ("b-q4_k_m", "b", "Q4_K_M", False),
    ("c-q4_k_m", "c", "Q4_K_M", False),
    ("c-mix", "c", "Q4_K_M", False, MIX_C),
]

# the types issue 17 adds: the files must hold each somewhere
ISSUE_TYPES = {"Q2_K", "Q3_K", "Q4_K", "Q5_K", "Q6_K", "Q5_0", "Q5_1", "IQ4_NL", "IQ4_XS"}

# BOS (1) and a few ids of the generated vocabulary's pieces
PROMPTS = [
    [1, 421, 87, 903, 655, 318, 742, 29],
    [1, 1000, 512, 377, 260],
]
N_GEN = 32

SETTINGS = dict(n_ctx=512, n_batch=512, n_ubatch=512, n_threads=2, n_threads_batch=2,
                logits_all=True, flash_attn=False, seed=1234)


def synth_flags(shape):
    s = SHAPES[shape]
    flags = ["--arch", "llama", "--dim", s["dim"], "--layers", s["layers"], "--heads", s["heads"],
             "--kv-heads", s["kv_heads"], "--ffn", s["ffn"], "--vocab", s["vocab"], "--type", "f16",
             "--seed", s["seed"]]
    if s.get("head_dim"):
        flags += ["--head-dim", s["head_dim"]]
    if s.get("tied"):
        flags.append("--tied")
    return [str(f) for f in flags]


def quantize(src, dst, ftype, pure, overrides=()):
    import llama_cpp
    p = llama_cpp.llama_model_quantize_default_params()
    p.ftype = getattr(llama_cpp, "LLAMA_FTYPE_MOSTLY_" + ftype)
    p.nthread = 2
    p.pure = pure
    p.allow_requantize = False  # the sources are F16: nothing is requantized
    if overrides:
        # llama-quantize --tensor-type PATTERN=TYPE: an array ended by a NULL pattern
        tt = (llama_cpp.llama_model_tensor_override * (len(overrides) + 1))()
        for i, (pattern, typ) in enumerate(overrides):
            tt[i].pattern = pattern.encode()
            tt[i].type = getattr(llama_cpp, "GGML_TYPE_" + typ)
        tt[len(overrides)].pattern = None
        p.tt_overrides = ctypes.cast(tt, ctypes.POINTER(llama_cpp.llama_model_tensor_override))
    rc = llama_cpp.llama_model_quantize(str(src).encode(), str(dst).encode(), ctypes.byref(p))
    if rc != 0:
        sys.exit(f"record_kquants.py: llama_model_quantize({src}, {ftype}) returned {rc}")


def tensor_types(path):
    from gguf import GGUFReader
    r = GGUFReader(str(path))
    return {t.name: t.tensor_type.name for t in r.tensors}


def greedy(llm, prompt, n):
    """llama-cli's greedy loop: the prompt in one batch, then one token per
    eval; end-of-generation tokens do not stop it."""
    llm.reset()
    llm.eval(prompt)
    out, gaps, rows = [], [], []
    for _ in range(n):
        row = np.asarray(llm.scores[llm.n_tokens - 1], dtype=np.float64)
        rows.append(row)
        top2 = np.argsort(-row, kind="stable")[:2]
        out.append(int(top2[0]))
        gaps.append(round(float(row[top2[0]] - row[top2[1]]), 4))
        llm.eval([out[-1]])
    return out, gaps, np.stack(rows)


def kl_rows(p_logits, q_logits):
    """KL(p || q) of each row, in nats."""
    def log_softmax(x):
        x = x - x.max(axis=1, keepdims=True)
        return x - np.log(np.exp(x).sum(axis=1, keepdims=True))
    lp, lq = log_softmax(p_logits), log_softmax(q_logits)
    return (np.exp(lp) * (lp - lq)).sum(axis=1)


def teacher_forced(llm, seq):
    """llama.cpp's logits at every position of seq, evaluated as one batch."""
    llm.reset()
    llm.eval(seq)
    return np.array(llm.scores[:len(seq)], dtype=np.float32)


# logits are stored as int16 fixed point below each row's maximum: the same
# size as float16, but an error of at most 2^-11 at every value (float16's
# grows with the value), i.e. KL noise well under 1e-7; what falls below
# -32 (a probability under e^-32 of the best's) is clipped there
SCALE = 1024


def pack_logits(logits):
    top = logits.max(axis=1).astype(np.float32)
    q = np.rint((logits.astype(np.float64) - top[:, None]) * SCALE)
    return np.clip(q, -32768, 0).astype(np.int16), top


def ggml_commit():
    import llama_cpp
    lib = Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"
    try:
        g = ctypes.CDLL(str(lib))
        g.ggml_commit.restype = g.ggml_version.restype = ctypes.c_char_p
        return g.ggml_version().decode(), g.ggml_commit().decode()
    except (OSError, AttributeError):
        return None, None


def cpu_name():
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--shoal", default=os.environ.get("SHOAL_BIN") or str(ROOT / "build" / "shoal"),
                    help="the shoal binary whose `synth` writes the F16 sources (default $SHOAL_BIN)")
    ap.add_argument("--keep-sources", type=Path, help="also keep the F16 sources in this folder")
    ap.add_argument("--only", help="record only the files of these shapes (comma-separated, e.g. c) and "
                    "merge them into the oracle there, leaving every other file as it is")
    args = ap.parse_args()
    only = args.only.split(",") if args.only else list(SHAPES)
    bad = [s for s in only if s not in SHAPES]
    if bad:
        sys.exit(f"record_kquants.py: --only {args.only}: no shape {bad[0]} (shapes: {', '.join(SHAPES)})")
    old = None
    if args.only:
        try:
            old = json.loads((OUT / "oracle.json").read_text())
            with np.load(OUT / "oracle.npz") as z:
                old_arrays = {k: z[k] for k in z.files}
        except OSError as e:
            sys.exit(f"record_kquants.py: --only merges into the oracle in {OUT}, which cannot be read: {e}")
        if (old["prompts"], old["n_gen"], old["meta"]["logit_scale"]) != (PROMPTS, N_GEN, SCALE):
            sys.exit("record_kquants.py: --only: the oracle there was recorded with other prompts, "
                     "lengths or logit scale than these: record every shape (no --only)")
    import gguf
    import llama_cpp
    from llama_cpp import Llama

    OUT.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix="record_kquants."))
    src_dir = args.keep_sources or tmp
    src_dir.mkdir(parents=True, exist_ok=True)
    sources = {}
    for shape in only:
        path = src_dir / f"{shape}-f16.gguf"
        cmd = [args.shoal, "synth", "-o", str(path)] + synth_flags(shape)
        subprocess.run(cmd, check=True)
        sources[shape] = {"shoal_synth": " ".join(["shoal", "synth", "-o", path.name] + synth_flags(shape)),
                          **SHAPES[shape], "sha256": sha256(path), "bytes": path.stat().st_size}

    files, arrays = {}, {}
    seen = Counter()
    todo = [f for f in FILES if f[1] in only]
    for name, shape, ftype, pure, *rest in todo:
        overrides = rest[0] if rest else ()
        dst = OUT / f"{name}.gguf"
        quantize(src_dir / f"{shape}-f16.gguf", dst, ftype, pure, overrides)
        types = tensor_types(dst)
        counts = Counter(types.values())
        seen.update(counts)
        llm = Llama(model_path=str(dst), verbose=False, **SETTINGS)
        n_vocab = llm.n_vocab()
        cases, self_kl = [], []
        for k, prompt in enumerate(PROMPTS):
            cont, gaps, one_by_one = greedy(llm, prompt, N_GEN)
            logits = teacher_forced(llm, prompt + cont)
            # llama.cpp against itself: the same positions in one batch and one token at a time
            self_kl.append(kl_rows(logits[len(prompt) - 1:-1].astype(np.float64), one_by_one))
            assert logits.shape == (len(prompt) + N_GEN, n_vocab)
            arrays[f"{name}.p{k}"], arrays[f"{name}.p{k}.max"] = pack_logits(logits)
            srt = np.sort(logits.astype(np.float64), axis=1)
            tf_gap = srt[:, -1] - srt[:, -2]
            # where one batch and one token at a time disagree on the best token
            tf_best = logits.argmax(axis=1)[len(prompt) - 1:-1]
            moved = [i for i, (a, b) in enumerate(zip(tf_best, cont)) if a != b]
            cases.append({"prompt_ids": prompt, "ids": cont, "gap": gaps,
                          "batch_argmax_differs_at": moved})
            print(f"{name} p{k}: {len(cont)} tokens, greedy gaps min {min(gaps):.3f}, "
                  f"teacher-forced positions with gap >= 0.5: {int((tf_gap >= 0.5).sum())}/{len(tf_gap)}"
                  f"{'; one batch picks another token at ' + str(moved) if moved else ''}",
                  file=sys.stderr)
        del llm
        self_kl = np.concatenate(self_kl)
        files[name] = {"shape": shape, "ftype": ftype, "pure": pure, "bytes": dst.stat().st_size,
                       "sha256": sha256(dst), "type_counts": dict(sorted(counts.items())),
                       **({"tensor_type_overrides": [f"{p}={t}" for p, t in overrides]} if overrides else {}),
                       "types": types,
                       "self_kl": {"mean": float(f"{self_kl.mean():.3e}"), "max": float(f"{self_kl.max():.3e}")},
                       "cases": cases}
        print(f"{name}: {dst.stat().st_size} bytes, {dict(sorted(counts.items()))}; llama.cpp's batch "
              f"against one token at a time: KL mean {self_kl.mean():.2e} max {self_kl.max():.2e}",
              file=sys.stderr)
    if old:
        for name, f in old["files"].items():
            if f["shape"] not in only:
                seen.update(f["type_counts"])
    missing = ISSUE_TYPES - set(seen)
    if missing:
        sys.exit(f"record_kquants.py: no file holds {sorted(missing)}: change the shapes or FILES")

    ggml_version, commit = ggml_commit()
    made = {
        "date": datetime.date.today().isoformat(),
        "llama_cpp_python": llama_cpp.__version__,
        "ggml_version": ggml_version,
        "ggml_commit": commit,
        "system_info": llama_cpp.llama_print_system_info().decode().strip(),
        "cpu": cpu_name(),
        "python": platform.python_version(),
        "numpy": np.__version__,
        "gguf": getattr(gguf, "__version__", None) or _dist_version("gguf"),
    }
    if old:
        # the other shapes' files, entries and logits as they were; what was made now, and how
        meta = old["meta"]
        meta["sources"].update(sources)
        meta["added"] = [a for a in meta.get("added", []) if not set(a["shapes"]) <= set(only)]
        meta["added"].append({"shapes": only, "files": [f[0] for f in todo], "how": "--only", **made})
        kept = {k: v for k, v in old["files"].items() if v["shape"] not in only}
        files = {n: kept.get(n) or files[n] for n, *_ in FILES if n in kept or n in files}
        arrays = {**{k: v for k, v in old_arrays.items() if k.split(".p")[0] in kept}, **arrays}
        with open(OUT / "oracle.json", "w") as f:
            json.dump({"meta": meta, "prompts": PROMPTS, "n_gen": N_GEN, "files": files}, f, indent=1)
            f.write("\n")
        np.savez_compressed(OUT / "oracle.npz", **arrays)
        shutil.rmtree(tmp)
        print(f"merged {len(todo)} files of shape {args.only} into {OUT}", file=sys.stderr)
        return
    meta = {
        "made_by": "tests/model/record_kquants.py",
        **made,
        "quantize": "llama_model_quantize with llama_model_quantize_default_params(), nthread 2, "
                    "the ftype named per file (LLAMA_FTYPE_MOSTLY_*), pure where said; no imatrix",
        "settings": SETTINGS,
        "kv_cache": "f16 (llama.cpp's default)",
        "greedy": "prompt in one batch, then one token per eval, EOS ignored; gap = best - second logit",
        "self_kl": "per file, over the generated positions of every prompt: KL(one batch || one token "
                   "at a time) in nats, llama.cpp's own disagreement between its prompt and decode "
                   "paths (another activation quantization or summation order for some types)",
        "logits": "oracle.npz '<file>.p<k>': int16 (positions, vocab), '<file>.p<k>.max': float32 "
                  f"(positions); logits = '.p<k>' / {SCALE} + '.max' (clipped at {-32768 / SCALE} below "
                  "the maximum); prompt + continuation evaluated in one batch; row i is the "
                  "distribution of token i + 1",
        "logit_scale": SCALE,
        "sources": sources,
    }
    with open(OUT / "oracle.json", "w") as f:
        json.dump({"meta": meta, "prompts": PROMPTS, "n_gen": N_GEN, "files": files}, f, indent=1)
        f.write("\n")
    np.savez_compressed(OUT / "oracle.npz", **arrays)
    shutil.rmtree(tmp)
    total = sum(p.stat().st_size for p in OUT.iterdir())
    print(f"wrote {OUT}: {len(FILES)} files, {total / 1e6:.2f} MB in all; llama-cpp-python "
          f"{llama_cpp.__version__} (ggml {ggml_version} {commit})", file=sys.stderr)


def _dist_version(name):
    from importlib.metadata import version
    try:
        return version(name)
    except Exception:
        return None


if __name__ == "__main__":
    main()
