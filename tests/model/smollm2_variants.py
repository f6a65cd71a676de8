"""SmolLM2-135M-Instruct in other weight types, written in numpy with the
`gguf` package: its matrices requantized as llama-quantize
--allow-requantize does (the Q4_1 blocks dequantized to F32, then quantized
again), either every matrix one type (--pure) or each matrix the type a map
names (the types llama.cpp's default mixes chose: Q4_K_M, IQ4_XS, ...), the
norms left in F32, the metadata (tokenizer included) copied.

The gguf package's own quantizer writes the types it has (GGUF_QUANTIZES:
Q4_0, Q4_1, Q5_0, Q5_1, Q8_0); the K-quants and IQ4_NL/IQ4_XS, which it
cannot quantize, come from shoal's tests/tools/quant_rows. Either way these
are the very tensor bytes llama.cpp's llama_model_quantize writes
(record_smollm2_logits.py checks it, through tensor_digest, and the tests
check the digest again), so that tests can hold shoal to logits llama.cpp
computed on its own file without llama.cpp installed: shoal's quantizer
only saves storing the file, it cannot bend what shoal is scored against.
"""
import hashlib
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # shoal_harness, for the record_*.py scripts too

# the types the gguf package's quantizer writes with llama.cpp's bytes, as
# quant_rows does too (the digest checks Q4_0, Q5_0, Q5_1 and Q8_0, in the
# recorded files; Q4_1 is in none): the pure files then need no shoal tool
GGUF_QUANTIZES = ("Q4_0", "Q4_1", "Q5_0", "Q5_1", "Q8_0")


def read_source(src, cache=None):
    """src's metadata, [(key, value, type, array item type or None)] but for
    the architecture and file type, and its tensors, [(name, shape, float32
    array)] (shape outermost first, as numpy), in the file's order. With cache
    (a dict the caller keeps), src is read and dequantized once for all the
    calls that pass it."""
    import gguf
    key = ("source", str(src))
    if cache is not None and key in cache:
        return cache[key]
    r = gguf.GGUFReader(str(src))
    fields = []
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        t = f.types[0]
        fields.append((name, f.contents(), t, f.types[-1] if t == gguf.GGUFValueType.ARRAY else None))
    tensors = []
    for t in r.tensors:
        shape = [int(x) for x in reversed(list(t.shape))]
        v = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(int(t.tensor_type)))
        tensors.append((t.name, shape, v.astype(np.float32).reshape(shape)))
    out = (r.fields["general.architecture"].contents(), fields, tensors)
    if cache is not None:
        cache[key] = out
    return out


def run_quant_rows(quant_rows, qtype, x):
    """quant_rows's blocks for the rows of the 2-D float32 array x: (rows, row bytes) uint8."""
    x = np.ascontiguousarray(x, dtype="<f4")
    p = subprocess.run([str(quant_rows), qtype.name.lower(), str(x.shape[1])], input=x.tobytes(),
                       capture_output=True, timeout=600)
    if p.returncode != 0:
        raise RuntimeError(f"{quant_rows} {qtype.name.lower()} {x.shape[1]} exited {p.returncode}: "
                           f"{p.stderr.decode(errors='replace')}")
    got = np.frombuffer(p.stdout, dtype=np.uint8)
    if got.size % x.shape[0]:
        raise RuntimeError(f"{quant_rows} {qtype.name}: {got.size} bytes for {x.shape[0]} rows")
    return got.reshape(x.shape[0], -1)


def write_variant(src, dst, qtype=None, quant_rows=None, cache=None):
    """src's model with its 2-D tensors requantized; the others stay F32.

    qtype: None (every tensor F32), one GGMLQuantizationType for every 2-D
    tensor, or a dict naming each 2-D tensor's type (tensor name -> a
    GGMLQuantizationType or its name, "Q4_K": record_smollm2_logits.py's
    "tensor_types"). quant_rows: the path of shoal's tests/tools/quant_rows,
    needed for the types outside GGUF_QUANTIZES (ValueError without it).
    cache: a dict the caller keeps between calls, so that src is dequantized,
    and quant_rows run on a tensor for a type, once for all the files written
    (it holds src's tensors as float32, 4 bytes a weight, and those blocks)."""
    import gguf
    Q = gguf.GGMLQuantizationType

    def type_of(name, shape):
        if len(shape) < 2 or qtype is None:
            return Q.F32
        if isinstance(qtype, dict):
            if name not in qtype:
                raise ValueError(f"{src}: the type map names no type for the matrix {name}")
            t = qtype[name]
            return Q[t] if isinstance(t, str) else Q(t)
        return qtype

    arch, fields, tensors = read_source(src, cache)
    if isinstance(qtype, dict):
        extra = set(qtype) - {name for name, shape, _ in tensors if len(shape) >= 2}
        if extra:
            raise ValueError(f"{src} has no matrix named {sorted(extra)[0]} (and {len(extra) - 1} more "
                             "names of the type map): a map for another model?")
    jobs = [(name, t, v) for name, shape, v in tensors
            for t in [type_of(name, shape)] if t != Q.F32 and t.name not in GGUF_QUANTIZES]
    if jobs and not quant_rows:
        raise ValueError(f"{jobs[0][1].name} ({jobs[0][0]}) needs shoal's quant_rows: pass its path")
    blocks = cache if cache is not None else {}
    todo = [(name, t, v) for name, t, v in jobs if ("blocks", str(src), name, t) not in blocks]
    with ThreadPoolExecutor(max_workers=max(1, min(4, os.cpu_count() or 1))) as pool:
        done = pool.map(lambda j: run_quant_rows(quant_rows, j[1], j[2]), todo)
        for (name, t, _), b in zip(todo, done):
            blocks[("blocks", str(src), name, t)] = b

    w = gguf.GGUFWriter(str(dst), arch)
    for name, value, t, sub in fields:
        if sub is not None:
            w.add_key_value(name, value, t, sub_type=sub)
        else:
            w.add_key_value(name, value, t)
    for name, shape, v in tensors:
        t = type_of(name, shape)
        if t == Q.F32:
            w.add_tensor(name, v)
        elif t.name in GGUF_QUANTIZES:
            w.add_tensor(name, gguf.quants.quantize(v, t), raw_dtype=t)
        else:
            w.add_tensor(name, blocks[("blocks", str(src), name, t)], raw_dtype=t)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_types(path):
    """{tensor name: its type's name} of the 2-D tensors of path."""
    import gguf

    import shoal_harness
    return {n: gguf.GGMLQuantizationType(t).name for n, t, d, _, _ in shoal_harness.gguf_layout(path)[1] if len(d) >= 2}


def tensor_digest(path):
    """SHA-256 over every tensor's name, type, shape and bytes, by name (llama.cpp
    writes them in another order)."""
    import shoal_harness
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for name, ttype, dims, offset, size in sorted(shoal_harness.gguf_layout(path)[1]):
            h.update(f"{name} {ttype} {dims}\n".encode())
            f.seek(offset)
            b = f.read(size)
            assert len(b) == size, f"{path}: {name} ends past the end of the file"
            h.update(b)
    return h.hexdigest()
