#!/usr/bin/python3
"""Test fixture for llava_eval_test.cc: a complete small random LLaVA model directory and a
sample set, written independently of the C++ code.

  model OUT_DIR     config.json + model.safetensors (random weights, llava_reference.py's writer,
                    transformers<=4.51 names, fp32), tokenizer.model + added_tokens.json +
                    tokenizer_config.json (sentencepiece trained here, as tokenizer_test_ref.py
                    does, " A".." Z" single tokens), preprocessor_config.json (CLIPImageProcessor,
                    shortest edge and crop = the vision tower's image size)
  samples OUT_DIR N samples.jsonl + images/NNNN.png: multiple choice (2-4 options, types colour /
                    shape / count) and open-answer samples (type "open"), images of varied sizes
                    (resized up and down) and modes (RGB, RGBA, palette, grey)
"""
import json
import os
import random
import sys

import torch
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))
import llava_reference  # noqa: E402
import tokenizer_test_ref  # noqa: E402

IMAGE_SIZE = 16


def write_model(out):
    tokenizer_test_ref.train(out, letters=True)
    with open(os.path.join(out, "added_tokens.json")) as f:
        added = json.load(f)
    image_id, pad_id = added["<image>"], added["<pad>"]
    case = dict(
        name="eval", prefix="old", dtype="F32", seed=7,
        vision=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_hidden_layers=3, patch_size=4, image_size=IMAGE_SIZE,
                    layer_norm_eps=1e-5),
        text=dict(hidden_size=48, intermediate_size=96, num_attention_heads=4,
                  num_key_value_heads=2, num_hidden_layers=2, vocab_size=pad_id + 1,
                  rms_norm_eps=1e-5, rope_theta=10000.0),
        image_token_index=image_id, pad_token_id=pad_id, feature_layer=-2, strategy="default",
        tied=False)
    gen = torch.Generator().manual_seed(case["seed"])
    weights = llava_reference.make_weights(case, gen)
    files = {}
    for name, t in weights.items():
        _, raw = llava_reference.quantize(t, "F32")
        files[name] = (tuple(t.shape), raw)
    llava_reference.write_safetensors(os.path.join(out, "model.safetensors"), files, "F32")
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(llava_reference.config_json(case), f, indent=1)
    with open(os.path.join(out, "preprocessor_config.json"), "w") as f:
        json.dump({
            "image_processor_type": "CLIPImageProcessor",
            "crop_size": {"height": IMAGE_SIZE, "width": IMAGE_SIZE},
            "size": {"shortest_edge": IMAGE_SIZE},
            "do_center_crop": True, "do_normalize": True, "do_rescale": True,
            "do_resize": True, "do_convert_rgb": True, "resample": 3,
            "rescale_factor": 1 / 255,
            "image_mean": [0.48145466, 0.4578275, 0.40821073],
            "image_std": [0.26862954, 0.26130258, 0.27577711],
        }, f, indent=1)


COLOURS = ["red", "green", "blue", "yellow", "purple", "orange"]
SHAPES = ["circle", "square", "triangle", "star"]


def write_samples(out, n):
    rng = random.Random(42)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    lines = []
    for i in range(n):
        w, h = rng.choice([(16, 16), (40, 24), (9, 13), (64, 64), (20, 31)])
        img = Image.new("RGB", (w, h), tuple(rng.randrange(256) for _ in range(3)))
        px = img.load()
        for _ in range(w * h // 3):
            px[rng.randrange(w), rng.randrange(h)] = tuple(rng.randrange(256) for _ in range(3))
        mode = rng.choice(["RGB", "RGB", "RGBA", "P", "L"])
        if mode == "P":
            img = img.convert("P", palette=Image.ADAPTIVE, colors=16)
        elif mode != "RGB":
            img = img.convert(mode)
        rel = "images/%04d.png" % i
        img.save(os.path.join(out, rel))
        kind = i % 4
        if kind == 3:
            s = {"id": "s%d" % i, "image": rel, "question": "What colour is the shape?",
                 "answer": rng.choice(COLOURS), "type": "open"}
        else:
            typ, pool = [("colour", COLOURS), ("shape", SHAPES), ("count", ["one", "two",
                                                                              "three", "four"])][kind]
            k = rng.randint(2, 4)
            options = rng.sample(pool, k)
            s = {"id": "s%d" % i, "image": rel,
                 "question": "Which %s is shown in the image?" % typ, "options": options,
                 "answer": chr(65 + rng.randrange(k)), "type": typ}
        lines.append(json.dumps(s))
    with open(os.path.join(out, "samples.jsonl"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "model":
        os.makedirs(sys.argv[2], exist_ok=True)
        write_model(sys.argv[2])
    elif len(sys.argv) >= 4 and sys.argv[1] == "samples":
        os.makedirs(sys.argv[2], exist_ok=True)
        write_samples(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: llava_eval_fixture.py model OUT_DIR | samples OUT_DIR N")
