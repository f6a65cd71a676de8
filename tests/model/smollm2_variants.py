"""SmolLM2-135M-Instruct in other weight types, written in numpy with the
`gguf` package: every matrix requantized to one type (llama-quantize --pure
--allow-requantize: the Q4_1 blocks dequantized, then quantized again), the
norms left in F32, the metadata (tokenizer included) copied. For Q5_0, Q5_1
and Q8_0 these are the very tensor bytes llama.cpp's llama_model_quantize
writes (record_smollm2_logits.py checks it, through tensor_digest), so that
tests can hold shoal to logits llama.cpp computed on its own file without
llama.cpp installed."""
import hashlib

import numpy as np


def write_variant(src, dst, qtype=None):
    """src's model with every 2-D tensor as qtype (a GGMLQuantizationType; None: F32)."""
    import gguf
    r = gguf.GGUFReader(str(src))
    w = gguf.GGUFWriter(str(dst), r.fields["general.architecture"].contents())
    for name, f in r.fields.items():
        if name.startswith("GGUF.") or name in ("general.architecture", "general.file_type"):
            continue
        t = f.types[0]
        if t == gguf.GGUFValueType.ARRAY:
            w.add_key_value(name, f.contents(), t, sub_type=f.types[-1])
        else:
            w.add_key_value(name, f.contents(), t)
    for t in r.tensors:
        shape = [int(x) for x in reversed(list(t.shape))]
        v = gguf.quants.dequantize(np.asarray(t.data), gguf.GGMLQuantizationType(int(t.tensor_type)))
        v = v.astype(np.float32).reshape(shape)
        if qtype is None or len(shape) < 2:
            w.add_tensor(t.name, v)
        else:
            w.add_tensor(t.name, gguf.quants.quantize(v, qtype), raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def tensor_digest(path):
    """SHA-256 over every tensor's name, type, shape and bytes, by name (llama.cpp
    writes them in another order)."""
    import gguf
    h = hashlib.sha256()
    for t in sorted(gguf.GGUFReader(str(path)).tensors, key=lambda t: t.name):
        h.update(f"{t.name} {int(t.tensor_type)} {[int(x) for x in t.shape]}\n".encode())
        h.update(np.ascontiguousarray(t.data).tobytes())
    return h.hexdigest()
