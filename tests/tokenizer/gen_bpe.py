#!/usr/bin/env python3
"""
gen_bpe.py -- golden data for shoal's byte-level BPE tokenizer, made with an
independent implementation: HuggingFace `tokenizers` (PyPI) trains a small
byte-level BPE on the corpus below for each pre-tokenizer shoal implements,
the `gguf` package writes it as a vocabulary-only GGUF file, and `tokenizers`
encodes the test strings (most of them not in the corpus) to give the
expected ids.

For each NAME in gpt2, llama-bpe, qwen2, smollm it writes, beside itself:
  NAME.gguf              tokenizer.ggml.model "gpt2", pre NAME, tokens,
                         token_type, merges, bos/eos, add_bos_token false
  NAME.gguf.inp          the test strings, separated by lines
                         "__ggml_vocab_test__" (llama.cpp's test-tokenizer-0
                         format: each string is the text between "\n<sep>\n")
  NAME.gguf.out          per line, the ids of the matching string
                         (special tokens in the text become their ids:
                         shoal's parse_special = 1)
  NAME.gguf.out-nospecial  the same with tokenizers' encode_special_tokens
                         (control tokens are plain text: parse_special = 0;
                         user-defined tokens are still split out)

Usage: python3 tests/tokenizer/gen_bpe.py   (pip install tokenizers gguf numpy)
The output is deterministic for a given tokenizers version.
"""
import importlib.metadata
import json
import os
import sys

import gguf
import tokenizers
from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
SEP = "__ggml_vocab_test__"

GPT2_RE = None  # ByteLevel(use_regex=True) is GPT-2's pattern
LLAMA3_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
             r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
            r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")

SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]  # control tokens
USER = ["<tool_call>"]                                       # user-defined token

CORPUS = [
    "Once upon a time, there was a little girl named Lily. She loved to play outside in the sun.",
    "One day, she saw a big, red ball in the park. \"Can I play with it?\" she asked her mom.",
    "They're happy. We've been there. I'm sure you'll like it; he'd say it's fine, isn't it?",
    "THEY'RE HAPPY. WE'VE BEEN THERE. I'M SURE YOU'LL LIKE IT; HE'D SAY IT'S FINE, ISN'T IT?",
    "The quick brown fox jumps over the lazy dog. The five boxing wizards jump quickly.",
    "def tokenize(text: str) -> list[int]:\n    ids = []\n    for word in text.split():\n"
    "        ids.append(vocab.get(word, 0))\n    return ids\n",
    "int main(int argc, char **argv) {\n\tfor (int i = 0; i < argc; i++) {\n\t\tprintf(\"%s\\n\", argv[i]);\n"
    "\t}\n\treturn 0;\n}\n",
    "if (x != NULL && y->next == z) { return -1; } else { x += 42; y <<= 3; }",
    "SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name ORDER BY 2 DESC;",
    "<html><body><p class=\"note\">Hello &amp; welcome!</p></body></html>",
    "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}",
    "3.14159 2.71828 1,000,000 1234567890 0x1F 0b1011 42nd 7th 100% $19.99 -273.15",
    "2024-01-15T12:34:56Z 192.168.0.1 +1 (555) 123-4567 v1.2.3",
    "Привет, мир! Как дела? Москва — столица России. Ёлка, щука, объём.",
    "Γειά σου Κόσμε! Η Ελλάδα είναι όμορφη. Αλφάβητο: αβγδεζηθ.",
    "我想在apple工作。今天天气很好，我们去公园散步吧！中华人民共和国成立于1949年。",
    "日本語のテキストです。ひらがな、カタカナ、漢字を使います。東京タワー。",
    "안녕하세요 세계! 한국어 텍스트입니다. 서울특별시.",
    "مرحبا بالعالم! هذا نص عربي. السلام عليكم.",
    "नमस्ते दुनिया! यह हिंदी पाठ है। भारत एक विशाल देश है।",
    "สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Cộng hòa xã hội chủ nghĩa Việt Nam. Tiếng Việt có dấu.",
    "Ça va? Où est la bibliothèque? Über, Straße, Mädchen, Führer, naïve café, résumé.",
    "Emoji: 😀 😃 😄 😁 🚀 🌍 ❤️ 👍🏽 👨‍👩‍👧‍👦 🇺🇸 🇯🇵 ✅ ⭐ 🦙🦙🦙",
    "   leading spaces and trailing spaces   \n\n\n  \t\t mixed\twhitespace \r\n windows line\r\n",
    "    indented code\n        more indented\n            deeper\n",
    "!!!!!! ?????? ...... ------ ======= ''''''' \"\"\"\" ``````` ~~~~ ____ ****",
    "x² + y³ = z⁴; ½ + ¼ = ¾; Ⅻ o'clock; ① ② ③; ٠١٢٣٤٥٦٧٨٩; १२३",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa bbbbbbbbbbbbbbbbbbbbb abababababababab",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n<|endoftext|>",
]

TESTS = [
    "",
    " ",
    "  ",
    "   ",
    "\t",
    "\n",
    "\n\n",
    "\n\n\n",
    "\t\n",
    "Hello world",
    " Hello world",
    "Hello World",
    " Hello World!",
    "Hello, world!",
    "  Hello",
    "    Hello\n    Hello",
    " (",
    "\n =",
    "' era",
    "Hello, y'all! How are you 😁 ?我想在apple工作1314151天～",
    "They're here; we've gone. I'm OK, you'll see, he'd know, it's 'quoted'.",
    "THEY'RE HERE; WE'VE GONE. I'M OK, YOU'LL SEE, HE'D KNOW, IT'S.",
    "they'Re we'vE i'M you'Ll he'D it'S don'T",
    "3", "33", "333", "3333", "33333", "333333", "3333333", "33333333", "333333333",
    "3.14 1,000 12:30 -5 +7 1e9 0xFF x86_64 4K 1080p",
    "нещо на Български",
    "Ελληνικά γράμματα και αριθμοί 123",
    "កាន់តែពិសេសអាចខលចេញ",
    "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ (only emoji that has its own token)",
    "नमस्ते, आप कैसे हैं?",
    "안녕하세요, 반갑습니다!",
    "مرحبا، كيف حالك؟",
    "東京は日本の首都です。",
    "Ça coûte 5€, n'est-ce pas? Straße über Äpfel.",
    "e\u0301 cafe\u0301 (combining accent)",
    "x² ½ Ⅻ ① ٣ ५ — numbers of other kinds",
    "no\u00a0break\u3000ideographic\u2003em space\u2028line sep",
    "a\u001cb\u0085c\u000bd\u000ce",
    "tabs\tand\t\tmore\t\t\ttabs",
    "trailing spaces   ",
    "   leading spaces",
    "line one\r\nline two\r\n\r\nline four\n\r",
    " \n \n\n \t \t\t \t\n  \n   \n    \n     \n",
    "mixed   \n\n   whitespace\t \n runs",
    "!!!!!!", "??!!..,,;;", "''''''```````\"\"\"\"......!!!!!!??????",
    "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
    "def f(x):\n    return x ** 2  # square\n",
    "for (int i = 0; i < n; ++i) { sum += a[i] * b[i]; }",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.com, @mention #hashtag $VAR %d {{template}}",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>user\nHi!<|im_end|>\n",
    "text<|endoftext|>more text",
    "<|endoftext|><|endoftext|>",
    " <|im_end|> spaced <|im_start|> ",
    "call <tool_call>{\"name\": \"f\"}<tool_call> done",
    "<|im_start|<|im_end|>|>",
    "nul\u0000byte",
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
    "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " supercalifragilisticexpialidocious",
    "antidisestablishmentarianism!",
    "Once upon a time, there was a little girl named Lily.",
    "👨‍👩‍👧‍👦🇺🇸🏳️‍🌈",
    "\u0300\u0301 marks first",
    "end with newline\n",
]


def pre_tokenizer(name):
    if name == "gpt2":
        return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if name == "smollm":  # SmolLM2's tokenizer.json: digits one by one, then GPT-2's regex
        return pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    # LLaMA-3's and Qwen2's tokenizer.json: Split(regex) then ByteLevel without its regex
    pattern = LLAMA3_RE if name == "llama-bpe" else QWEN2_RE
    return pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(pattern), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])


def train(name):
    """A byte-level BPE trained on CORPUS with pre-tokenizer name: (vocab, merges)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizer(name)
    trainer = trainers.BpeTrainer(vocab_size=1200, min_frequency=2, show_progress=False,
                                  special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS * 3, trainer)
    spec = json.loads(tok.to_str())
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in spec["model"]["merges"]]
    return dict(spec["model"]["vocab"]), merges


def build(name, vocab, merges):
    """The tokenizer under test: a trained vocabulary with pre-tokenizer name."""
    vocab = dict(vocab)
    ignore_merges = name == "llama-bpe"
    if ignore_merges:
        # LLaMA-3's BPE has ignore_merges: a pre-token that is a token is taken
        # whole. Add tokens that the merges cannot build, so that it shows.
        for extra in ["Ġsupercalifragilisticexpialidocious", "antidisestablishmentarianism"]:
            vocab[extra] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, ignore_merges=ignore_merges))
    tok.pre_tokenizer = pre_tokenizer(name)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens([AddedToken(s, special=True) for s in SPECIAL])
    tok.add_tokens([AddedToken(u, special=False, normalized=False) for u in USER])
    return tok


def write_gguf(tok, name, path):
    spec = json.loads(tok.to_str())
    vocab = tok.get_vocab(with_added_tokens=True)
    n = len(vocab)
    tokens = [None] * n
    for text, i in vocab.items():
        tokens[i] = text
    assert all(t is not None for t in tokens), "token ids are not contiguous"
    added = {a["content"]: a["special"] for a in spec["added_tokens"]}
    types = [(3 if added[t] else 4) if t in added else 1 for t in tokens]
    merges = [" ".join(m) if isinstance(m, list) else m for m in spec["model"]["merges"]]
    w = gguf.GGUFWriter(path, arch="llama")
    w.add_name("shoal BPE test vocabulary (%s)" % name)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre(name)
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(vocab["<|endoftext|>"])
    w.add_eos_token_id(vocab["<|endoftext|>"])
    w.add_add_bos_token(False)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def main():
    # Each pre-tokenizer gets a vocabulary trained with its own regex, except
    # that qwen2 (LLaMA-3's regex, one digit at a time) and smollm (GPT-2's,
    # digits isolated) reuse the llama-bpe and gpt2 vocabularies: those have
    # merges of digits, which the digit rules must then keep from applying.
    trained = {"gpt2": train("gpt2"), "llama-bpe": train("llama-bpe")}
    base = {"gpt2": "gpt2", "llama-bpe": "llama-bpe", "qwen2": "llama-bpe", "smollm": "gpt2"}
    for name in ["gpt2", "llama-bpe", "qwen2", "smollm"]:
        tok = build(name, *trained[base[name]])
        path = os.path.join(HERE, name + ".gguf")
        write_gguf(tok, name, path)
        with open(path + ".inp", "w", encoding="utf-8", newline="") as f:
            for s in TESTS:
                f.write(s + "\n" + SEP + "\n")
        tok.encode_special_tokens = False
        with_special = [tok.encode(s, add_special_tokens=False).ids for s in TESTS]
        tok.encode_special_tokens = True
        without = [tok.encode(s, add_special_tokens=False).ids for s in TESTS]
        for s, ids in zip(TESTS, with_special):
            back = tok.decode(ids, skip_special_tokens=False)
            assert back == s, "tokenizers does not round-trip %r: %r" % (s, back)
        for suffix, rows in ((".out", with_special), (".out-nospecial", without)):
            with open(path + suffix, "w") as f:
                for ids in rows:
                    f.write(" ".join(str(i) for i in ids) + "\n")
        print("%s: %d tokens, %d test strings" % (path, tok.get_vocab_size(), len(TESTS)))
    print("tokenizers %s, gguf %s, python %s" % (tokenizers.__version__,
          importlib.metadata.version("gguf"), sys.version.split()[0]))


if __name__ == "__main__":
    main()
