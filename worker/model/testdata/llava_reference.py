#!/usr/bin/python3
"""Independent reference for the C++ LLaVA-1.5 runtime (worker/model/llava_model_test.cc).

Builds small random LLaVA checkpoints (config.json + model.safetensors, the safetensors bytes
written by hand) and computes logits with its own float64 implementation of HuggingFace's
formulas (modeling_clip.py, modeling_llava.py, modeling_llama.py) in plain torch. It never calls
the C++ code.

Usage: llava_reference.py OUT_DIR
Writes OUT_DIR/cases.json and, per case, OUT_DIR/<case>/{config.json, model.safetensors,
inputs.json, pixels.bin, ref_logits.bin}. ref_logits.bin holds float32 [num_samples, 2, vocab]:
for each sample, the logits at unexpanded token positions len-2 and len-1 (the last prompt
token), each sample run alone without padding.
"""
import json
import math
import os
import struct
import sys

import numpy as np
import torch

CASES = [
    # (a) transformers<=4.51 names, fp32, MHA, default strategy, feature layer -2.
    dict(name="old_fp32_mha", prefix="old", dtype="F32", seed=1,
         vision=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                     num_hidden_layers=3, patch_size=4, image_size=16, layer_norm_eps=1e-5),
         text=dict(hidden_size=48, intermediate_size=80, num_attention_heads=4,
                   num_key_value_heads=4, num_hidden_layers=2, vocab_size=120,
                   rms_norm_eps=1e-5, rope_theta=10000.0),
         image_token_index=110, pad_token_id=111, feature_layer=-2, strategy="default",
         tied=False, lengths=[(5, 4), (9, 3), (3, 7)], two_images=True),
    # (b) transformers>=4.52 names, fp16 file, GQA (6 heads, 2 kv heads), positive feature layer.
    dict(name="new_fp16_gqa", prefix="new", dtype="F16", seed=2,
         vision=dict(hidden_size=24, intermediate_size=40, num_attention_heads=3,
                     num_hidden_layers=4, patch_size=7, image_size=21, layer_norm_eps=1e-5),
         text=dict(hidden_size=48, intermediate_size=72, num_attention_heads=6,
                   num_key_value_heads=2, num_hidden_layers=3, vocab_size=96,
                   rms_norm_eps=1e-6, rope_theta=500000.0),
         image_token_index=90, pad_token_id=91, feature_layer=2, strategy="default",
         tied=False, lengths=[(2, 6), (7, 2), (4, 4), (1, 1)], two_images=False),
    # (c) tied embeddings (no lm_head tensor), bf16 file, strategy "full", last layer.
    dict(name="tied_bf16_full", prefix="old", dtype="BF16", seed=3,
         vision=dict(hidden_size=32, intermediate_size=48, num_attention_heads=2,
                     num_hidden_layers=2, patch_size=8, image_size=16, layer_norm_eps=1e-6),
         text=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                   num_key_value_heads=4, num_hidden_layers=2, vocab_size=80,
                   rms_norm_eps=1e-5, rope_theta=10000.0),
         image_token_index=70, pad_token_id=71, feature_layer=-1, strategy="full",
         tied=True, lengths=[(3, 5), (6, 2)], two_images=False),
]


def make_weights(c, gen):
    v, t = c["vision"], c["text"]
    D, M, L = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"]
    P = (v["image_size"] // v["patch_size"]) ** 2
    H, I, V = t["hidden_size"], t["intermediate_size"], t["vocab_size"]
    hd = H // t["num_attention_heads"]
    kvw = t["num_key_value_heads"] * hd

    def lin(o, i):
        return torch.randn(o, i, generator=gen) / math.sqrt(i)

    def vec(n, scale=0.1, base=0.0):
        return base + scale * torch.randn(n, generator=gen)

    w = {}
    vp = "vision_tower.vision_model."
    w[vp + "embeddings.class_embedding"] = vec(D, 1.0)
    w[vp + "embeddings.patch_embedding.weight"] = torch.randn(
        D, 3, v["patch_size"], v["patch_size"], generator=gen) / math.sqrt(3 * v["patch_size"] ** 2)
    w[vp + "embeddings.position_embedding.weight"] = 0.5 * torch.randn(P + 1, D, generator=gen)
    w[vp + "pre_layrnorm.weight"] = vec(D, 0.1, 1.0)
    w[vp + "pre_layrnorm.bias"] = vec(D)
    for l in range(L):
        p = vp + f"encoder.layers.{l}."
        for n in ["q", "k", "v", "out"]:
            w[p + f"self_attn.{n}_proj.weight"] = lin(D, D)
            w[p + f"self_attn.{n}_proj.bias"] = vec(D)
        for n in ["layer_norm1", "layer_norm2"]:
            w[p + n + ".weight"] = vec(D, 0.1, 1.0)
            w[p + n + ".bias"] = vec(D)
        w[p + "mlp.fc1.weight"] = lin(M, D)
        w[p + "mlp.fc1.bias"] = vec(M)
        w[p + "mlp.fc2.weight"] = lin(D, M)
        w[p + "mlp.fc2.bias"] = vec(D)
    w[vp + "post_layernorm.weight"] = vec(D, 0.1, 1.0)  # present in checkpoints, never used
    w[vp + "post_layernorm.bias"] = vec(D)
    w["multi_modal_projector.linear_1.weight"] = lin(H, D)
    w["multi_modal_projector.linear_1.bias"] = vec(H)
    w["multi_modal_projector.linear_2.weight"] = lin(H, H)
    w["multi_modal_projector.linear_2.bias"] = vec(H)
    lp = "language_model.model."
    w[lp + "embed_tokens.weight"] = torch.randn(V, H, generator=gen)
    for l in range(t["num_hidden_layers"]):
        p = lp + f"layers.{l}."
        w[p + "self_attn.q_proj.weight"] = lin(H, H)
        w[p + "self_attn.k_proj.weight"] = lin(kvw, H)
        w[p + "self_attn.v_proj.weight"] = lin(kvw, H)
        w[p + "self_attn.o_proj.weight"] = lin(H, H)
        w[p + "mlp.gate_proj.weight"] = lin(I, H)
        w[p + "mlp.up_proj.weight"] = lin(I, H)
        w[p + "mlp.down_proj.weight"] = lin(H, I)
        w[p + "input_layernorm.weight"] = vec(H, 0.1, 1.0)
        w[p + "post_attention_layernorm.weight"] = vec(H, 0.1, 1.0)
    w[lp + "norm.weight"] = vec(H, 0.1, 1.0)
    if not c["tied"]:
        w["language_model.lm_head.weight"] = lin(V, H)
    return w


def rename_new(name):
    # transformers >= 4.52 layout.
    if name.startswith("vision_tower."):
        return "model." + name
    if name.startswith("multi_modal_projector."):
        return "model." + name
    if name.startswith("language_model.model."):
        return "model.language_model." + name[len("language_model.model."):]
    if name == "language_model.lm_head.weight":
        return "lm_head.weight"
    raise ValueError(name)


def quantize(w, dtype):
    """Round to the file dtype; returns (values as float64 as the file stores them, raw bytes)."""
    if dtype == "F32":
        q = w.float()
        raw = q.numpy().astype("<f4").tobytes()
    elif dtype == "F16":
        q = w.half()
        raw = q.numpy().astype("<f2").tobytes()
    else:
        q = w.bfloat16()
        raw = q.view(torch.int16).numpy().astype("<i2").tobytes()
    return q.double(), raw


def write_safetensors(path, tensors, dtype):
    header, blobs, off = {}, [], 0
    for name in sorted(tensors):
        shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


# ---- reference forward pass (float64), written from HF's formulas ----

def layer_norm(x, w, b, eps):
    mu = x.mean(-1, keepdim=True)
    var = ((x - mu) ** 2).mean(-1, keepdim=True)
    return (x - mu) / torch.sqrt(var + eps) * w + b


def vision_features(c, w, pixels):
    """pixels [N,3,S,S] → image features [N, image_seq_length, H_text] (after the projector)."""
    v = c["vision"]
    D, nh, p = v["hidden_size"], v["num_attention_heads"], v["patch_size"]
    hd = D // nh
    vp = "vision_tower.vision_model."
    x = torch.nn.functional.conv2d(pixels, w[vp + "embeddings.patch_embedding.weight"], stride=p)
    x = x.flatten(2).transpose(1, 2)  # [N, P, D], row-major patches
    cls = w[vp + "embeddings.class_embedding"].expand(x.shape[0], 1, D)
    x = torch.cat([cls, x], 1) + w[vp + "embeddings.position_embedding.weight"][None]
    x = layer_norm(x, w[vp + "pre_layrnorm.weight"], w[vp + "pre_layrnorm.bias"],
                   v["layer_norm_eps"])
    hidden_states = [x]
    for l in range(v["num_hidden_layers"]):
        pre = vp + f"encoder.layers.{l}."
        g = lambda n: w[pre + n]
        h = layer_norm(x, g("layer_norm1.weight"), g("layer_norm1.bias"), v["layer_norm_eps"])
        N, S, _ = h.shape
        q = (h @ g("self_attn.q_proj.weight").T + g("self_attn.q_proj.bias")) * hd ** -0.5
        k = h @ g("self_attn.k_proj.weight").T + g("self_attn.k_proj.bias")
        vv = h @ g("self_attn.v_proj.weight").T + g("self_attn.v_proj.bias")
        sp = lambda t: t.view(N, S, nh, hd).transpose(1, 2)
        a = torch.softmax(sp(q) @ sp(k).transpose(-1, -2), -1) @ sp(vv)
        a = a.transpose(1, 2).reshape(N, S, D)
        x = x + a @ g("self_attn.out_proj.weight").T + g("self_attn.out_proj.bias")
        h = layer_norm(x, g("layer_norm2.weight"), g("layer_norm2.bias"), v["layer_norm_eps"])
        h = h @ g("mlp.fc1.weight").T + g("mlp.fc1.bias")
        h = h * torch.sigmoid(1.702 * h)  # quick_gelu
        x = x + h @ g("mlp.fc2.weight").T + g("mlp.fc2.bias")
        hidden_states.append(x)
    f = hidden_states[c["feature_layer"]]
    if c["strategy"] == "default":
        f = f[:, 1:]
    h = f @ w["multi_modal_projector.linear_1.weight"].T + w["multi_modal_projector.linear_1.bias"]
    h = 0.5 * h * (1.0 + torch.erf(h / math.sqrt(2.0)))  # exact gelu
    return h @ w["multi_modal_projector.linear_2.weight"].T + w["multi_modal_projector.linear_2.bias"]


def rms_norm(x, wt, eps):
    return wt * (x / torch.sqrt((x * x).mean(-1, keepdim=True) + eps))


def text_logits(c, w, ids, feats):
    """One unpadded sequence: ids (unexpanded, with image tokens) and feats [n_img, S, H].
    Returns the logits at every expanded position and the map unexpanded → expanded index."""
    t = c["text"]
    H, nh, nkv = t["hidden_size"], t["num_attention_heads"], t["num_key_value_heads"]
    hd = H // nh
    lp = "language_model.model."
    emb, pos_map, img = [], [], 0
    for tok in ids:
        if tok == c["image_token_index"]:
            for r in feats[img]:
                emb.append(r)
            img += 1
        else:
            emb.append(w[lp + "embed_tokens.weight"][tok])
        pos_map.append(len(emb) - 1)
    x = torch.stack(emb)  # [T, H]
    T = x.shape[0]
    pos = torch.arange(T, dtype=torch.float64)
    inv_freq = 1.0 / (t["rope_theta"] ** (torch.arange(0, hd, 2, dtype=torch.float64) / hd))
    ang = torch.cat([pos[:, None] * inv_freq[None]] * 2, -1)  # [T, hd]
    cos, sin = torch.cos(ang), torch.sin(ang)

    def rope(q):  # q [heads, T, hd]
        a, b = q[..., : hd // 2], q[..., hd // 2:]
        return q * cos + torch.cat([-b, a], -1) * sin

    causal = torch.ones(T, T, dtype=torch.bool).tril()
    for l in range(t["num_hidden_layers"]):
        pre = lp + f"layers.{l}."
        g = lambda n: w[pre + n]
        h = rms_norm(x, g("input_layernorm.weight"), t["rms_norm_eps"])
        q = (h @ g("self_attn.q_proj.weight").T).view(T, nh, hd).transpose(0, 1)
        k = (h @ g("self_attn.k_proj.weight").T).view(T, nkv, hd).transpose(0, 1)
        vv = (h @ g("self_attn.v_proj.weight").T).view(T, nkv, hd).transpose(0, 1)
        q, k = rope(q), rope(k)
        outs = []
        for head in range(nh):
            kv = head // (nh // nkv)  # repeat_kv: query head h uses kv head h // groups
            s = (q[head] @ k[kv].T) * hd ** -0.5
            s = s.masked_fill(~causal, float("-inf"))
            outs.append(torch.softmax(s, -1) @ vv[kv])
        a = torch.cat(outs, -1)  # [T, nh*hd]
        x = x + a @ g("self_attn.o_proj.weight").T
        h = rms_norm(x, g("post_attention_layernorm.weight"), t["rms_norm_eps"])
        gate = h @ g("mlp.gate_proj.weight").T
        up = h @ g("mlp.up_proj.weight").T
        x = x + (gate * torch.sigmoid(gate) * up) @ g("mlp.down_proj.weight").T
    x = rms_norm(x, w[lp + "norm.weight"], t["rms_norm_eps"])
    head = w[lp + "embed_tokens.weight"] if c["tied"] else w["language_model.lm_head.weight"]
    return x @ head.T, pos_map


def config_json(c):
    v, t = c["vision"], c["text"]
    P = (v["image_size"] // v["patch_size"]) ** 2
    seq = P if c["strategy"] == "default" else P + 1
    dt = {"F32": "float32", "F16": "float16", "BF16": "bfloat16"}[c["dtype"]]
    return {
        "architectures": ["LlavaForConditionalGeneration"],
        "model_type": "llava",
        "image_token_index": c["image_token_index"],
        "pad_token_id": c["pad_token_id"],
        "projector_hidden_act": "gelu",
        "vision_feature_layer": c["feature_layer"],
        "vision_feature_select_strategy": c["strategy"],
        "tie_word_embeddings": c["tied"],
        "image_seq_length": seq,
        "torch_dtype": dt,
        "vision_config": dict(model_type="clip_vision_model", hidden_act="quick_gelu",
                              num_channels=3, projection_dim=v["hidden_size"], **v),
        "text_config": dict(model_type="llama", hidden_act="silu", max_position_embeddings=512,
                            bos_token_id=1, eos_token_id=2, tie_word_embeddings=c["tied"],
                            torch_dtype=dt, **t),
    }


def main():
    out = sys.argv[1]
    names = []
    for c in CASES:
        gen = torch.Generator().manual_seed(c["seed"])
        d = os.path.join(out, c["name"])
        os.makedirs(d, exist_ok=True)
        w32 = make_weights(c, gen)
        w, files = {}, {}
        for name, t in w32.items():
            q, raw = quantize(t, c["dtype"])
            w[name] = q
            fname = rename_new(name) if c["prefix"] == "new" else name
            files[fname] = (tuple(t.shape), raw)
        write_safetensors(os.path.join(d, "model.safetensors"), files, c["dtype"])
        with open(os.path.join(d, "config.json"), "w") as f:
            json.dump(config_json(c), f, indent=1)
        v, t = c["vision"], c["text"]
        img_tok, V = c["image_token_index"], t["vocab_size"]
        samples, pix_all, logits = [], [], []
        for si, (before, after) in enumerate(c["lengths"]):
            text_ids = lambda n: torch.randint(3, img_tok - 5, (n,), generator=gen).tolist()
            ids = [1] + text_ids(before) + [img_tok] + text_ids(after)
            n_img = 1
            if c["two_images"] and si == 0:
                ids += [img_tok] + text_ids(2)
                n_img = 2
            pix = torch.randn(n_img, 3, v["image_size"], v["image_size"], generator=gen)
            pix = pix.float().double()
            feats = vision_features(c, w, pix)
            lg, pos_map = text_logits(c, w, ids, feats)
            logits.append(torch.stack([lg[pos_map[-2]], lg[pos_map[-1]]]))
            pix_all.append(pix.float().numpy().reshape(-1))
            samples.append({"ids": ids, "num_images": n_img})
        np.concatenate(pix_all).astype("<f4").tofile(os.path.join(d, "pixels.bin"))
        torch.stack(logits).float().numpy().astype("<f4").tofile(os.path.join(d, "ref_logits.bin"))
        with open(os.path.join(d, "inputs.json"), "w") as f:
            json.dump({"samples": samples, "image_size": v["image_size"], "vocab": V}, f)
        names.append(c["name"])
    with open(os.path.join(out, "cases.json"), "w") as f:
        json.dump(names, f)


if __name__ == "__main__":
    main()
