"""The command line as a user meets it: help on every command, usage errors
(exit 2) that say what is wrong, failures (exit 1) that name the file, the
context limit, end of generation, and files shoal can read but not run.
"""
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import shoal_harness as h  # noqa: E402


@pytest.mark.parametrize("cmd", [[], ["run"], ["serve"], ["info"], ["synth"]])
def test_help(cmd):
    p = h.run(cmd + ["--help"])
    out = p.stdout.decode()
    assert out.startswith("usage: shoal"), out
    if cmd:
        assert "-h, --help" in out


@pytest.mark.parametrize("args,msg", [
    ([], "usage"),
    (["frobnicate"], "unknown command 'frobnicate'"),
    (["run", "--tp-weights", "2,x"], "--tp-weights '2,x'"),
    (["run", "--pp-weights", "0,1"], "--pp-weights '0,1'"),
    (["run", "--chat-template", "jinja"], "--chat-template 'jinja' is not one of"),
    (["run", "--system", "be brief"], "--system and --chat-template go with --chat"),
    (["run", "-m", "x.gguf", "--bogus"], "unknown option '--bogus'"),
    (["run", "-m", "x.gguf", "--threads", "abc"], "'abc' is not an integer"),
    (["run", "-m", "x.gguf", "--kv-type", "f8"], "--kv-type 'f8'"),
    (["run", "-m", "x.gguf", "--simd", "neon"], "--simd 'neon'"),
    (["run", "-m", "x.gguf", "-n"], "needs a value"),
    (["run", "-m", "x.gguf", "--device", "tpu"], "--device 'tpu' is not one of"),
    (["serve", "-m", "x.gguf", "--port", "70000"], "shoal serve: --port must be 0..65535"),
    (["serve", "-m", "x.gguf", "--parallel", "0"], "--parallel must be 1..1024"),
    (["serve", "-m", "x.gguf", "--parallel", "64", "-b", "32"], "--parallel 64 is more than -b 32"),
    (["serve", "-m", "x.gguf", "--max-tokens", "0"], "--max-tokens"),
    (["serve", "-m", "x.gguf", "--block-size", "0"], "--block-size must be 1..4096"),
    (["serve", "-m", "x.gguf", "--prompt-chunk", "-1"], "--prompt-chunk must be >= 1"),
    (["serve", "-m", "x.gguf", "--chat-template", "jinja"], "--chat-template 'jinja' is not one of"),
    (["serve", "-m", "x.gguf", "-p", "hello"], "unknown option '-p'"),
    (["run", "-m", "x.gguf", "--tp-comm", "gloo"], "--tp-comm 'gloo' is not one of"),
    (["run", "-m", "x.gguf", "--device-mem", "lots"], "'lots' is not a size"),
    (["run", "-m", "x.gguf", "--device-mem", "1G", "--prefetch", "-1"], "--prefetch must be 0..64"),
    (["run", "-m", "x.gguf", "--device-mem", "1G", "--offload-from", "tape"], "--offload-from 'tape'"),
    (["run", "-m", "x.gguf", "--offload-group", "2"], "--offload-group goes with --device-mem"),
    (["plan", "--ranks", "1", "--device-mem", "1G", "--prefetch", "99"], "--prefetch must be 0..64"),
    (["plan", "--ranks", "1", "--device-mem", "1G", "--offload-group", "0"], "--offload-group must be 1..4096"),
    (["plan", "--ranks", "2", "--offload-group", "2"], "--offload-group goes with --device-mem"),
    (["info", "a.gguf", "b.gguf"], "unexpected argument 'b.gguf'"),
    (["synth", "-o", "/tmp/x.gguf", "--type", "q9_9"], "--type 'q9_9'"),
    (["synth", "-o", "/tmp/x.gguf", "--heads", "3", "--kv-heads", "2"], "impossible shape"),
])
def test_usage_errors(args, msg):
    p = h.run(args, check=False)
    assert p.returncode == 2, (args, p.returncode)
    assert msg in p.stderr.decode(), p.stderr.decode()


def test_missing_file_is_named():
    for args in (["run", "-m", "/nonexistent/model.gguf"], ["info", "/nonexistent/model.gguf"]):
        p = h.run(args, check=False)
        assert p.returncode == 1
        err = p.stderr.decode()
        assert "/nonexistent/model.gguf" in err and "error:" in err, err


def test_info_stories():
    out = h.run(["info", h.testdata("stories260K.gguf")]).stdout.decode()
    for want in ("GGUF v3", "llama.block_count", "blk.4.ffn_down.weight", "5 layers, dim 64",
                 "8 heads (4 KV, head size 8)", "tokenizer:   llama, 512 tokens"):
        assert want in out, f"{want!r} missing from shoal info"


@pytest.mark.parametrize("name,ftype", [("a-q4_k_m", "Q4_K_M"), ("a-q5_k_m", "Q5_K_M"), ("a-q3_k_m", "Q3_K_M"),
                                        ("a-q2_k", "Q2_K"), ("a-q6_k", "Q6_K"), ("a-iq4_xs", "IQ4_XS"),
                                        ("a-iq4_nl", "IQ4_NL"), ("b-q4_0", "Q4_0"), ("a-q8_0-pure", "Q8_0")])
def test_info_file_type(name, ftype):
    """The mix llama.cpp's quantize was asked for (data/kquants/: each file named by
    the ftype record_kquants.py gave it), named as llama.cpp names it."""
    path = Path(__file__).resolve().parent / "data" / "kquants" / f"{name}.gguf"
    out = h.run(["info", "--no-tensors", "--no-metadata", path]).stdout.decode()
    assert f"file type:   {ftype} (general.file_type " in out, out


def test_info_vocab_only_file():
    out = h.run(["info", h.testdata("vocab/ggml-vocab-llama-spm.gguf")]).stdout.decode()
    assert "32000 tokens" in out


def test_context_limit(tmp_path):
    ids = tmp_path / "ids"
    p = h.run(["run", "-m", h.testdata("stories260K.gguf"), "-c", 16, "-n", 100, "--temp", 0,
               "--ids-out", ids])
    assert "context of 16 tokens is full" in p.stderr.decode()
    # BOS and 15 fed tokens fill the 16 positions; the 16th token is sampled from the last
    assert len(h.read_ids(ids)) == 16


def test_prompt_longer_than_context():
    p = h.run(["run", "-m", h.testdata("stories260K.gguf"), "-c", 4, "-p",
               "Once upon a time there was a girl"], check=False)
    assert p.returncode == 1
    assert "longer than the context of 4" in p.stderr.decode()


def field_value_offset(reader, key):
    f = reader.fields[key]
    return f.offset + sum(len(bytes(part)) for part in f.parts[:-1])


def test_stops_at_end_of_generation(tmp_path):
    """A model whose logits are all zero picks token 0 greedily; with the EOS
    id patched to 0 generation must stop at once, saying so."""
    import gguf
    model = tmp_path / "m.gguf"
    h.run(["synth", "-o", model, "--dim", 64, "--layers", 1, "--heads", 2, "--kv-heads", 1,
           "--ffn", 64, "--vocab", 300])
    r = gguf.GGUFReader(str(model))
    data = bytearray(model.read_bytes())
    off = field_value_offset(r, "tokenizer.ggml.eos_token_id")
    data[off:off + 4] = struct.pack("<I", 0)
    norm = next(t for t in r.tensors if t.name == "output_norm.weight")
    data[norm.data_offset:norm.data_offset + norm.n_bytes] = bytes(norm.n_bytes)
    model.write_bytes(bytes(data))
    ids = tmp_path / "ids"
    p = h.run(["run", "-m", model, "-p", "abc", "-n", 20, "--temp", 0, "--ids-out", ids, "--no-echo"])
    assert "stop: eos" in p.stderr.decode()
    gen = h.read_ids(ids)
    assert gen[-1] == 0 and p.stdout == b"\n"
    p = h.run(["run", "-m", model, "-p", "abc", "-n", 20, "--temp", 0, "--ignore-eos"])
    assert "stop: length" in p.stderr.decode()


@pytest.mark.parametrize("qtype", ["I8", "IQ2_XXS", "IQ3_S", "IQ1_M", "TQ1_0", "MXFP4"])
def test_unsupported_weight_type_is_named(tmp_path, qtype):
    """A tensor type shoal reads but cannot compute with (i8; GGUF's 1- to
    3-bit i-quants, ternary and MXFP4 blocks) is reported by name, by `shoal
    run` (exit 1, with the types that work) and by `shoal info` (exit 0,
    explained, the type counted)."""
    import gguf
    path = tmp_path / "k.gguf"
    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(64)
    w.add_embedding_length(256)
    w.add_block_count(1)
    w.add_feed_forward_length(256)
    w.add_head_count(2)
    w.add_head_count_kv(2)
    w.add_layer_norm_rms_eps(1e-5)
    rng = np.random.default_rng(0)
    f32 = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    w.add_tensor("token_embd.weight", f32(300, 256))
    w.add_tensor("output_norm.weight", f32(256))
    w.add_tensor("blk.0.attn_norm.weight", f32(256))
    w.add_tensor("blk.0.ffn_norm.weight", f32(256))
    if qtype == "I8":
        w.add_tensor("blk.0.attn_q.weight", rng.integers(-128, 127, (256, 256), dtype=np.int8))
    else:
        qt = gguf.GGMLQuantizationType[qtype]
        block, size = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, (256, 256 // block * size), dtype=np.uint16).astype(np.uint8)
        w.add_tensor("blk.0.attn_q.weight", raw, raw_dtype=qt)
    for name in ("attn_k", "attn_v", "attn_output", "ffn_gate", "ffn_up", "ffn_down"):
        w.add_tensor(f"blk.0.{name}.weight", f32(256, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    p = h.run(["run", "-m", path, "-p", "x"], check=False)
    assert p.returncode == 1
    err = p.stderr.decode()
    name = qtype.lower()
    assert "blk.0.attn_q.weight" in err and f"is {name}," in err and "q4_k" in err, err  # and what works
    out = h.run(["info", path]).stdout.decode()
    assert f"is {name}," in out and "cannot run" in out and f"{name} 1 (" in out, out


def test_chat_without_template():
    """A model without a chat template: --chat says so and names the way out."""
    stories = h.testdata("stories260K.gguf")
    p = h.run(["run", "-m", stories, "--chat", "-p", "hi"], check=False)
    err = p.stderr.decode()
    assert p.returncode == 1 and "stories260K.gguf" in err and "--chat-template" in err, err
    p = h.run(["run", "-m", stories, "--chat", "--chat-template", "llama2", "-p", "hi", "-n", 4,
               "--temp", 0, "-v"])
    assert b"chat llama2" in p.stderr


def test_serve_port_taken():
    """A port another program holds: a clear error naming it, exit 1."""
    import socket
    model = h.testdata("stories260K.gguf")
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen(1)
    port = s.getsockname()[1]
    try:
        p = h.run(["serve", "-m", model, "--port", port], check=False, timeout=60)
    finally:
        s.close()
    err = p.stderr.decode()
    assert p.returncode == 1 and f"cannot listen on 127.0.0.1 port {port}" in err, err
