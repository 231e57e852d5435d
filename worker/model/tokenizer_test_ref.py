#!/usr/bin/python3
"""Reference for tokenizer_test.cc, independent of the C++ code.

  train OUT_DIR [--no-letters]   trains a small BPE sentencepiece model (LLaMA-like settings:
                                 identity normalization, byte fallback, whitespace kept) and writes
                                 tokenizer.model, added_tokens.json, tokenizer_config.json
  encode MODEL_DIR IN.json OUT.json
                                 IN is a JSON list of strings; OUT the ids of each, tokenized by
                                 HF's slow LlamaTokenizer rule (legacy=True): BOS, then the text
                                 split on added/special tokens (leftmost-longest), each non-empty
                                 segment sp.encode()d on its own, the token ids between them.
"""
import json
import os
import random
import re
import sys

import sentencepiece as spm


def corpus(letters):
    rng = random.Random(1234)
    words = ("red green blue yellow purple orange circle square triangle star left right top "
             "bottom count how many shapes what colour is the shape in image picture option "
             "answer question letter given choices directly single word phrase user assistant "
             "café naïve über 東京 图片 😀 a b c one two three four five").split()
    lines = []
    for _ in range(3000):
        n = rng.randint(3, 12)
        s = " ".join(rng.choice(words) for _ in range(n))
        if rng.random() < 0.3:
            s = s.capitalize() + "?"
        lines.append(s)
    lines += ["USER: What's the content of the image? ASSISTANT: a red circle"] * 50
    lines += ["Answer with the option's letter from the given choices directly. ASSISTANT: B"] * 50
    lines += ["Answer the question using a single word or phrase. ASSISTANT: blue"] * 50
    if letters:
        for _ in range(60):
            lines.append(" ".join("%s. %s" % (chr(65 + i), rng.choice(words)) for i in range(26)))
            lines.append("ASSISTANT: " + " ".join(chr(65 + i) for i in range(26)))
    return lines


def train(out_dir, letters):
    os.makedirs(out_dir, exist_ok=True)
    text = os.path.join(out_dir, "corpus.txt")
    with open(text, "w", encoding="utf-8") as f:
        f.write("\n".join(corpus(letters)) + "\n")
    spm.SentencePieceTrainer.train(
        input=text, model_prefix=os.path.join(out_dir, "tokenizer"), model_type="bpe",
        vocab_size=600, byte_fallback=True, normalization_rule_name="identity",
        remove_extra_whitespaces=False, character_coverage=1.0, hard_vocab_limit=False,
        num_threads=1, minloglevel=2)
    os.remove(text)
    os.remove(os.path.join(out_dir, "tokenizer.vocab"))
    sp = spm.SentencePieceProcessor(model_file=os.path.join(out_dir, "tokenizer.model"))
    n = sp.get_piece_size()
    with open(os.path.join(out_dir, "added_tokens.json"), "w") as f:
        json.dump({"<image>": n, "<pad>": n + 1}, f)
    special = lambda c: {"content": c, "lstrip": False, "normalized": False, "rstrip": False,
                         "single_word": False, "special": True}
    cfg = {
        "add_bos_token": True, "add_eos_token": False, "legacy": None, "padding_side": "left",
        "bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>", "pad_token": "<pad>",
        "added_tokens_decoder": {"0": special("<unk>"), "1": special("<s>"),
                                 "2": special("</s>"), str(n): special("<image>"),
                                 str(n + 1): special("<pad>")},
        "tokenizer_class": "LlamaTokenizer",
    }
    with open(os.path.join(out_dir, "tokenizer_config.json"), "w") as f:
        json.dump(cfg, f, indent=2)


def encode(model_dir, in_path, out_path):
    sp = spm.SentencePieceProcessor(model_file=os.path.join(model_dir, "tokenizer.model"))
    with open(os.path.join(model_dir, "tokenizer_config.json")) as f:
        cfg = json.load(f)
    added = {v["content"]: int(k) for k, v in cfg["added_tokens_decoder"].items()}
    pattern = re.compile("|".join(re.escape(t) for t in sorted(added, key=len, reverse=True)))
    with open(in_path, encoding="utf-8") as f:
        texts = json.load(f)
    out = []
    for text in texts:
        ids = [sp.bos_id()]
        pos = 0
        for m in pattern.finditer(text):
            seg = text[pos:m.start()]
            if seg:
                ids += sp.encode(seg)
            ids.append(added[m.group(0)])
            pos = m.end()
        if text[pos:]:
            ids += sp.encode(text[pos:])
        out.append(ids)
    with open(out_path, "w") as f:
        json.dump(out, f)


if __name__ == "__main__":
    if sys.argv[1] == "train":
        train(sys.argv[2], "--no-letters" not in sys.argv)
    elif sys.argv[1] == "encode":
        encode(sys.argv[2], sys.argv[3], sys.argv[4])
    else:
        sys.exit("usage: tokenizer_test_ref.py train DIR | encode DIR IN OUT")
