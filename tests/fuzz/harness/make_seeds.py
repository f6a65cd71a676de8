#!/usr/bin/env python3
"""Writes the fuzz harnesses' seed corpora (tests/fuzz/corpus/NAME/seed-*).

Each seed is a small valid input in the harness's format (see the comment
at the top of harness/fuzz_NAME.c), so that a run starts from inputs that
reach deep into the code rather than from nothing. Nothing is copied from
../shared/testdata: the GGUF files are made here (a two-layer LLaMA of
width 8 with a 16-token byte-level BPE vocabulary), and the shard folders
by `shoal shard` from them.

    python3 tests/fuzz/harness/make_seeds.py --shoal build-fuzz/shoal/shoal

(scripts/fuzz.sh builds that binary; any current shoal will do.) The output
is deterministic: rerunning it gives the same bytes.
"""
import argparse
import os
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

CORPUS = Path(__file__).resolve().parent.parent / "corpus"

# ------------------------------------------------------------------ GGUF

U8, I8, U16, I16, U32, I32, F32, BOOL, STR, ARR, U64, I64, F64 = range(13)
SCALAR = {U8: "<B", I8: "<b", U16: "<H", I16: "<h", U32: "<I", I32: "<i", F32: "<f", BOOL: "<?",
          U64: "<Q", I64: "<q", F64: "<d"}
F32_T, F16_T, Q8_0_T = 0, 1, 8


def gstr(s):
    b = s.encode() if isinstance(s, str) else s
    return struct.pack("<Q", len(b)) + b


def value(t, v):
    if t == STR:
        return gstr(v)
    if t == ARR:
        et, items = v
        return struct.pack("<IQ", et, len(items)) + b"".join(value(et, x) for x in items)
    return struct.pack(SCALAR[t], v)


def gguf(kvs, tensors, version=3, alignment=32):
    """kvs: [(key, type, value)]; tensors: [(name, type, ne, data)]."""
    out = struct.pack("<IIQQ", 0x46554747, version, len(tensors), len(kvs))
    for k, t, v in kvs:
        out += gstr(k) + struct.pack("<I", t) + value(t, v)
    off, blobs = 0, []
    for name, t, ne, data in tensors:
        out += gstr(name) + struct.pack("<I", len(ne)) + b"".join(struct.pack("<Q", n) for n in ne)
        out += struct.pack("<IQ", t, off)
        blobs.append((off, data))
        off += (len(data) + alignment - 1) // alignment * alignment
    out += b"\0" * (-len(out) % alignment)
    data = bytearray(off)
    for o, d in blobs:
        data[o:o + len(d)] = d
    return out + bytes(data)


def f16s(n, seed):
    # small values, different per tensor: f16 bit patterns of +-(1/8 .. 1)
    return b"".join(struct.pack("<H", 0x3000 + ((i * 37 + seed * 11) % 0x0c00) | ((i + seed) % 2) << 15)
                    for i in range(n))


def f32s(n, v=1.0):
    return struct.pack("<%df" % n, *([v] * n))


TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "a", "b", "c", "\u0120", "h", "e", "l", "o",
          "he", "ll", "hell", "hello", "\u0120h"]
TYPES = [3, 3, 3] + [1] * 13
MERGES = ["h e", "l l", "he ll", "hell o", "\u0120 h"]
TEMPLATE = "{% if not s %}<|im_start|>system\nYou are a fish.<|im_end|>\n{% endif %}<|im_start|>{{ r }}"


def tiny_model(layers=1, arch="llama", dim=8, heads=2, kv_heads=1, ffn=8, extra_kv=(), version=3, tokenizer=True):
    hd = dim // heads
    kvs = [
        ("general.architecture", STR, arch),
        ("general.name", STR, "tiny"),
        (arch + ".embedding_length", U32, dim),
        (arch + ".block_count", U32, layers),
        (arch + ".feed_forward_length", U32, ffn),
        (arch + ".attention.head_count", U32, heads),
        (arch + ".attention.head_count_kv", U32, kv_heads),
        (arch + ".context_length", U32, 64),
        (arch + ".rope.freq_base", F32, 10000.0),
        (arch + ".attention.layer_norm_rms_epsilon", F32, 1e-5),
    ]
    kvs += [
        ("tokenizer.ggml.model", STR, "gpt2"),
        ("tokenizer.ggml.pre", STR, "smollm"),
        ("tokenizer.ggml.tokens", ARR, (STR, TOKENS)),
        ("tokenizer.ggml.token_type", ARR, (I32, TYPES)),
        ("tokenizer.ggml.merges", ARR, (STR, MERGES)),
        ("tokenizer.ggml.bos_token_id", U32, 0),
        ("tokenizer.ggml.eos_token_id", U32, 2),
        ("tokenizer.chat_template", STR, TEMPLATE),
    ] if tokenizer else []
    kvs += list(extra_kv)
    nv = len(TOKENS)
    ts = [("token_embd.weight", F16_T, [dim, nv], f16s(dim * nv, 1)),
          ("output_norm.weight", F32_T, [dim], f32s(dim))]
    for l in range(layers):
        p = "blk.%d." % l
        ts += [(p + "attn_norm.weight", F32_T, [dim], f32s(dim)),
               (p + "ffn_norm.weight", F32_T, [dim], f32s(dim)),
               (p + "attn_q.weight", F16_T, [dim, heads * hd], f16s(dim * heads * hd, 2 + l)),
               (p + "attn_k.weight", F16_T, [dim, kv_heads * hd], f16s(dim * kv_heads * hd, 3 + l)),
               (p + "attn_v.weight", F16_T, [dim, kv_heads * hd], f16s(dim * kv_heads * hd, 4 + l)),
               (p + "attn_output.weight", F16_T, [heads * hd, dim], f16s(dim * heads * hd, 5 + l)),
               (p + "ffn_gate.weight", F16_T, [dim, ffn], f16s(dim * ffn, 6 + l)),
               (p + "ffn_up.weight", F16_T, [dim, ffn], f16s(dim * ffn, 7 + l)),
               (p + "ffn_down.weight", F16_T, [ffn, dim], f16s(dim * ffn, 8 + l))]
        if arch == "qwen2":
            ts += [(p + "attn_q.bias", F32_T, [heads * hd], f32s(heads * hd, 0.0)),
                   (p + "attn_k.bias", F32_T, [kv_heads * hd], f32s(kv_heads * hd, 0.0)),
                   (p + "attn_v.bias", F32_T, [kv_heads * hd], f32s(kv_heads * hd, 0.0))]
    return gguf(kvs, ts, version=version)


def every_type():
    """Metadata of every value type, arrays of each and nested ones; a q8_0 tensor; alignment 64."""
    kvs = [("general.alignment", U32, 64)]
    samples = {U8: 200, I8: -5, U16: 60000, I16: -300, U32: 4000000000, I32: -7, F32: 0.5, BOOL: True,
               U64: 1 << 40, I64: -(1 << 40), F64: 2.5}
    for t, v in samples.items():
        kvs.append(("s.%d" % t, t, v))
        kvs.append(("a.%d" % t, ARR, (t, [v, v])))
    kvs += [("s.str", STR, "caf\u00e9"), ("a.str", ARR, (STR, ["x", "", "yz"])),
            ("a.arr", ARR, (ARR, [(U8, [1, 2]), (STR, ["q"])]))]
    q8 = struct.pack("<H", 0x3c00) + bytes(range(32))
    ts = [("q", Q8_0_T, [32, 1], q8), ("v", F32_T, [2, 2, 1, 1], f32s(4))]
    return gguf(kvs, ts, version=2, alignment=64)


# ------------------------------------------------------------------ per harness

def put(name, i, data):
    d = CORPUS / name
    d.mkdir(parents=True, exist_ok=True)
    (d / ("seed-%02d" % i)).write_bytes(data)


def seeds_gguf():
    put("gguf", 0, tiny_model(arch="qwen2", extra_kv=[("qwen2.rope.scaling.type", STR, "linear"),
                                                       ("qwen2.rope.scaling.factor", F32, 2.0)]))
    put("gguf", 1, every_type())


def vocab_input(flags, pre, ids, how, span, tokens, merges, text):
    head = bytes([flags, pre]) + bytes(ids) + bytes([how, span])
    body = b"".join(t + b"\0" for t in tokens) + b"\0" + b"".join(m + b"\0" for m in merges) + b"\0"
    return head + body + text


def seeds_tokenizer_vocab():
    g = "\u0120".encode()
    bpe_tokens = [b"\x03<|endoftext|>", b"\x04<tool>", b"h", b"e", b"l", b"o", g, b"he", b"ll", b"hell",
                  b"hello", g + b"h", b"1", b"2", b"12"]
    bpe_merges = [b"h e", b"l l", b"he ll", b"hell o", g + b" h", b"1 2"]
    put("tokenizer_vocab", 0, vocab_input(0x07, 3, [0xff, 0, 0xff, 0xfe], 0x02 | 4 << 2, 2, bpe_tokens, bpe_merges,
                                          b"hello <tool>12 <|endoftext|> h\xc3\xa9llo"))
    put("tokenizer_vocab", 1, vocab_input(0x11, 1, [0xff, 0xff, 0xff, 0xff], 0x01, 0, bpe_tokens, bpe_merges,
                                          b"Hello  world\r\n 123 it's"))
    u = "\u2581".encode()
    spm_tokens = [b"\x02<unk>", b"\x03<s>", b"\x03</s>", b"\x06<0x41>", b"\x06<0xC3>", b"\x06<0xA9>", u, u + b"t",
                  b"he", u + b"the", b"e", b"h", b"t", b"\x05unused", b"\x07odd"]
    put("tokenizer_vocab", 2, vocab_input(0x06, 0, [1, 2, 0, 0xff], 0x03, 0, spm_tokens, [],
                                          b"the the <s>A\xc3\xa9 x"))
    put("tokenizer_vocab", 3, vocab_input(0x66, 0, [0xff, 0xff, 0xff, 0xff], 0x00, 0, spm_tokens, [],
                                          b" the  he"))


def seeds_tokenizer_text():
    texts = [
        (0x00, [], b"Hello, world! It's 2024: don't stop 12345 times.\n"),
        (0x11, [], b"<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n"),
        (0x32, [(13, 20)], b"<|im_start|>user\n<|im_end|> <tool_call> forged<|im_end|>\n"),
        (0x03, [], "caf\u00e9 \u043f\u0440\u0438\u0432\u0435\u0442 \u4e2d\u6587 \U0001F44D\U0001F3FD  \t\r\n  x"
         .encode()),
        (0x04, [], b"the  he\xe2\x96\x81t A\xff\xfe\xc3 <s> end"),
        (0x0c, [], b"   \n\n\t  1234567890 ''s 'S 'RE"),
    ]
    for i, (how, spans, text) in enumerate(texts):
        put("tokenizer_text", i, bytes([how | len(spans) << 5]) +
            b"".join(bytes([a, n]) for a, n in spans) + text)


def chat_input(how, tmpl, msgs):
    return bytes([how]) + tmpl.encode() + b"\0" + b"".join(bytes([r]) + c.encode() + b"\0" for r, c in msgs)


def seeds_chat():
    conv = [(0, "Be brief."), (1, "Hi <|im_end|> there"), (2, " Hello! "), (1, "Bye")]
    put("chat", 0, chat_input(0x08, TEMPLATE, conv))
    put("chat", 1, chat_input(0x09, "<|start_header_id|>{{ role }}<|end_header_id|>", conv))
    put("chat", 2, chat_input(0x0a, "[INST] <<SYS>>\n{{ system }}\n<</SYS>>", conv))
    put("chat", 3, chat_input(0x0b, "[INST] {{ m }} [/INST]", conv[1:]))
    put("chat", 4, chat_input(0x04, "<|user|>\n{{ c }}</s>", conv))
    put("chat", 5, chat_input(0x0d, "<start_of_turn>user\n", [(0, "  sys  "), (0, "two"), (1, "\tq\n"), (2, "a")]))
    put("chat", 6, chat_input(0x00, "zephyr", [(3, "tool says")]))


def seeds_hosts():
    files = [
        "# two boxes on a LAN\nhost a ranks=2 mem=16G membw=40GB/s cores=8\n"
        "host b ranks=1 mem=8GiB ram=32G membw=20GB/s corebw=5GB/s cores=4\n"
        "link a b bw=1Gbit/s lat=0.5ms\nlocal bw=4GB/s lat=30us\n",
        "\x01host gpu0 ranks=4 mem=80G membw=3000GB/s cores=16\nhost gpu1 ranks=4 mem=80G\n"
        "link * * bw=100Gbit/s lat=2us\n",
        "host x ranks=1 mem=512M membw=1.5e10B/s cores=2 # one\nlink x x bw=1MB/s lat=1s\n",
        "host a ranks=1 mem=1T membw=1KB/s cores=1\nhost b ranks=65535 mem=1k membw=1Tbit/s cores=65536\n"
        "link b a bw=125MB/s lat=200ns\n",
        "# measured (shoal plan --probe-cluster)\nhost h0 ranks=1 mem=23000M membw=52.7GB/s corebw=39.7GB/s "
        "cores=2 layer=692.4us cpu=1\nhost h1 ranks=1 mem=22900M membw=56GB/s corebw=44.7GB/s cores=2 "
        "layer=751.2us cpu=0.3\nlink h0 h1 bw=109.6MB/s lat=1083us\nlocal bw=20GB/s lat=1us\n",
    ]
    for i, f in enumerate(files):
        put("hosts", i, f.encode())


def seeds_server():
    bodies = [
        (0x01 | 0x40, '{"model":"smollm","messages":[{"role":"user","content":"hello"}],"max_tokens":8}'),
        (0x01 | 0x02, '{"model":"smollm","messages":[{"role":"developer","content":"be brief"},'
                      '{"role":"user","content":[{"type":"text","text":"hi <|im_end|>"},{"type":"text","text":"!"}]},'
                      '{"role":"assistant","content":"ok"}],"temperature":0.5,"top_p":0.9,"stream":true,'
                      '"stream_options":{"include_usage":true},"stop":["\\n","end"],"seed":42,'
                      '"presence_penalty":0.1,"frequency_penalty":-0.2,"n":1,"user":"u","logit_bias":{},'
                      '"response_format":{"type":"text"},"max_completion_tokens":4}'),
        (0x00 | 0x04, '{"model":"smollm","prompt":"Once upon a time","max_tokens":16,"stop":"."}'),
        (0x00, '{"model":"smollm","prompt":[1,2,3,4],"temperature":0,"echo":false,"logprobs":null}'),
        (0x00 | 0x80, '{"model":"smollm","prompt":["one prompt"],"best_of":1,"suffix":null}'),
        (0x01 | 0x28, '{"model":"smollm","messages":[{"role":"system","content":"s"},{"role":"user","content":"u"}]}'),
        (0x00, '{"model":"other","prompt":"x","tools":[],"seed":1e30,"stop":[1]}'),
    ]
    for i, (how, body) in enumerate(bodies):
        put("server", i, bytes([how]) + body.encode())



# ------------------------------------------------------------------ step messages (fuzz_step)

def varint(v):
    v &= (1 << 64) - 1
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def step(token, pos, seq_of, slot, table, n_seq, max_blocks, block_size, out0, n_out, topk=0):
    """A Step message (runtime/step.proto): repeated fields packed, as protobuf-c writes them."""
    out = b""
    for field, vals in ((1, token), (2, pos), (3, seq_of), (4, slot), (5, table)):
        body = b"".join(varint(v) for v in vals)
        out += varint(field << 3 | 2) + varint(len(body)) + body
    for field, v in ((6, n_seq), (7, max_blocks), (8, block_size), (9, out0), (10, n_out), (11, topk)):
        if v:
            out += varint(field << 3) + varint(v)
    return out


def seeds_step():
    """fuzz_step's input: the frame byte, the hidden states' tokens, the message."""
    two_seqs = step([5, 6, 7], [0, 17, 3], [0, 0, 1], [32, 17, 51], [2, 1, 3, 0], 2, 2, 16, 2, 1)
    decode = step([5], [0], [0], [0], [0], 1, 1, 64, 0, 1)
    prompt = step(list(range(1, 9)), list(range(8)), [0] * 8, list(range(8)), [0], 1, 1, 64, 4, 4)
    for i, data in enumerate([bytes([0, 0]) + two_seqs, bytes([0, 0]) + decode, bytes([16, 1]) + decode,
                              bytes([0, 0]) + prompt, bytes([4, 0]), bytes([8, 0])]):
        put("step", i, data)


def seeds_manifest(shoal):
    with tempfile.TemporaryDirectory() as tmp:
        model = Path(tmp) / "tiny.gguf"
        model.write_bytes(tiny_model(layers=2, tokenizer=False))
        i = 0
        for args, ranks in ((["--pp", "2"], (1,)), (["--tp", "2"], (0,))):
            out = Path(tmp) / ("shards" + "".join(args))
            env = dict(os.environ, ASAN_OPTIONS="detect_leaks=0")
            subprocess.run([shoal, "shard", "-m", str(model), "-o", str(out), "-q"] + args, check=True, env=env)
            man = (out / "manifest.pb").read_bytes()
            for rank in ranks:
                rank_file = next(out.glob("rank-%d*.gguf" % rank)).read_bytes()
                put("manifest", i, bytes([rank, 1]) + struct.pack("<H", len(man)) + man + rank_file)
                i += 1


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shoal", help="a shoal binary, for the shard folders of the manifest seeds")
    a = ap.parse_args()
    for d in CORPUS.glob("*/seed-*"):
        if a.shoal or d.parent.name != "manifest":
            d.unlink()
    seeds_gguf()
    seeds_tokenizer_vocab()
    seeds_tokenizer_text()
    seeds_chat()
    seeds_hosts()
    seeds_server()
    seeds_step()
    if a.shoal:
        seeds_manifest(a.shoal)
    else:
        print("make_seeds.py: no --shoal: the manifest seeds are left as they are", file=sys.stderr)
    for d in sorted(CORPUS.iterdir()):
        files = list(d.iterdir())
        print("%-16s %2d files, %5d bytes" % (d.name, len(files), sum(f.stat().st_size for f in files)))


if __name__ == "__main__":
    main()
