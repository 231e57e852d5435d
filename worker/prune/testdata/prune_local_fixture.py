#!/usr/bin/python3
"""Test fixture for job_test.cc (prune-local): llava_eval_fixture.py's small random LLaVA model
directory, optionally re-written in another weight dtype and/or the transformers >= 4.52 name
layout, plus its sample sets.

  model OUT_DIR [F32|F16|BF16] [old|new]   the model (default F32, old = <= 4.51 names)
  samples OUT_DIR N                        llava_eval_fixture's samples (seeded, deterministic)

The model is written by llava_eval_fixture.write_model (fp32, old names); re-encoding reads that
file back with its own minimal safetensors reader, so no C++ code is involved.
"""
import json
import os
import struct
import sys

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL_TESTDATA = os.path.join(os.path.dirname(os.path.dirname(HERE)), "model", "testdata")
sys.path.insert(0, MODEL_TESTDATA)
sys.path.insert(0, os.path.dirname(MODEL_TESTDATA))
import llava_eval_fixture  # noqa: E402
import llava_reference  # noqa: E402


def read_f32_safetensors(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        assert info["dtype"] == "F32", info
        b, e = info["data_offsets"]
        arr = np.frombuffer(data[b:e], dtype="<f4").reshape(info["shape"])
        out[name] = torch.from_numpy(arr.copy())
    return out


def write_model(out, dtype, layout):
    llava_eval_fixture.write_model(out)
    # A key of the user's own, which the artifact's config.json must keep.
    cfg_path = os.path.join(out, "config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)
    cfg["prunesvc_fixture_note"] = "kept verbatim"
    if dtype == "F32" and layout == "old":
        with open(cfg_path, "w") as f:
            json.dump(cfg, f, indent=1)
        return
    path = os.path.join(out, "model.safetensors")
    tensors = read_f32_safetensors(path)
    files = {}
    for name, t in tensors.items():
        _, raw = llava_reference.quantize(t, dtype)
        files[llava_reference.rename_new(name) if layout == "new" else name] = (tuple(t.shape), raw)
    llava_reference.write_safetensors(path, files, dtype)
    dt = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[dtype]
    cfg["torch_dtype"] = dt
    cfg["text_config"]["torch_dtype"] = dt
    with open(cfg_path, "w") as f:
        json.dump(cfg, f, indent=1)


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "model":
        os.makedirs(sys.argv[2], exist_ok=True)
        write_model(sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else "F32",
                    sys.argv[4] if len(sys.argv) > 4 else "old")
    elif len(sys.argv) >= 4 and sys.argv[1] == "samples":
        os.makedirs(sys.argv[2], exist_ok=True)
        llava_eval_fixture.write_samples(sys.argv[2], int(sys.argv[3]))
    else:
        sys.exit("usage: prune_local_fixture.py model OUT_DIR [F32|F16|BF16] [old|new] | "
                 "samples OUT_DIR N")
