#!/usr/bin/python3
"""Reference data for image_test.cc, computed with Debian's python3-pil (Pillow 9.4).

Usage: image_test_ref.py OUTDIR

Writes synthetic PNG/JPEG files, PIL's decoded RGB pixels, PIL bicubic resizes, and CLIP
preprocessing results from a re-implementation of transformers' CLIPImageProcessor (slow path:
PIL resize on uint8, HF center_crop with zero padding, float64 rescale cast to float32, float32
normalisation) — transformers itself is not installed here. Everything is described in
OUTDIR/manifest.json. Deterministic (fixed numpy seed).
"""
import json
import math
import os
import struct
import sys
import zlib

import numpy as np
from PIL import Image

OUT = sys.argv[1]
os.makedirs(OUT, exist_ok=True)
rng = np.random.default_rng(1234)
manifest = {"decode": [], "decode_errors": [], "resize": [], "preprocess": [], "jpeg": []}


# ----------------------------------------------------------------------------------------------
# A minimal PNG writer for what PIL cannot write (16-bit colour, 2/4-bit gray and palette, short
# palettes, Adam7 interlacing). Rows use filter 0.

def _chunk(tag, data):
    return (struct.pack(">I", len(data)) + tag + data +
            struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF))


def _pack_row(samples, bit_depth):
    """samples: 1-D array of ints for one row (all channels interleaved)."""
    if bit_depth == 8:
        return bytes(np.asarray(samples, dtype=np.uint8))
    if bit_depth == 16:
        return np.asarray(samples, dtype=">u2").tobytes()
    per = 8 // bit_depth
    out = bytearray()
    for i in range(0, len(samples), per):
        byte = 0
        for j in range(per):
            v = int(samples[i + j]) if i + j < len(samples) else 0
            byte |= v << (8 - bit_depth * (j + 1))
        out.append(byte)
    return bytes(out)


ADAM7 = [(0, 0, 8, 8), (4, 0, 8, 8), (0, 4, 4, 8), (2, 0, 4, 4), (0, 2, 2, 4), (1, 0, 2, 2),
         (0, 1, 1, 2)]


def write_png_raw(path, arr, color_type, bit_depth, plte=None, trns=None, interlace=False):
    """arr: HxWxC integer array of samples (C = channels of colour type)."""
    h, w = arr.shape[:2]
    arr = arr.reshape(h, w, -1)
    raw = bytearray()
    if not interlace:
        for y in range(h):
            raw += b"\x00" + _pack_row(arr[y].reshape(-1), bit_depth)
    else:
        for x0, y0, dx, dy in ADAM7:
            sub = arr[y0::dy, x0::dx]
            if sub.shape[0] == 0 or sub.shape[1] == 0:
                continue
            for y in range(sub.shape[0]):
                raw += b"\x00" + _pack_row(sub[y].reshape(-1), bit_depth)
    data = b"\x89PNG\r\n\x1a\n"
    data += _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, bit_depth, color_type, 0, 0,
                                        1 if interlace else 0))
    if plte is not None:
        data += _chunk(b"PLTE", bytes(np.asarray(plte, dtype=np.uint8).reshape(-1)))
    if trns is not None:
        data += _chunk(b"tRNS", trns)
    data += _chunk(b"IDAT", zlib.compress(bytes(raw), 9))
    data += _chunk(b"IEND", b"")
    with open(path, "wb") as f:
        f.write(data)


# ----------------------------------------------------------------------------------------------
# Decode cases.

def add_decode(name):
    path = os.path.join(OUT, name)
    im = Image.open(path)
    mode = im.mode
    rgb = np.array(im.convert("RGB"))
    rgb_name = name + ".rgb"
    rgb.tofile(os.path.join(OUT, rgb_name))
    manifest["decode"].append({"file": name, "pil_mode": mode, "width": rgb.shape[1],
                               "height": rgb.shape[0], "rgb": rgb_name})


def noise(h, w, c=3):
    return rng.integers(0, 256, size=(h, w, c), dtype=np.uint8)


def gradient(h, w):
    y, x = np.mgrid[0:h, 0:w]
    img = np.stack([x * 255 // max(w - 1, 1), y * 255 // max(h - 1, 1),
                    (x + y) * 255 // max(w + h - 2, 1)], axis=-1)
    img = img + rng.integers(-12, 13, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def save_pil(name, im, **kw):
    im.save(os.path.join(OUT, name), **kw)
    add_decode(name)


for (w, h) in [(17, 9), (333, 500), (40, 41), (1, 37), (37, 1), (1, 1)]:
    save_pil(f"rgb_{w}x{h}.png", Image.fromarray(noise(h, w), "RGB"))
for (w, h) in [(500, 333), (1000, 700)]:
    save_pil(f"rgb_{w}x{h}.png", Image.fromarray(gradient(h, w), "RGB"))
checker = ((np.indices((64, 64)).sum(axis=0) // 4) % 2 * 255).astype(np.uint8)
save_pil("checker_64x64.png", Image.fromarray(np.stack([checker] * 3, axis=-1), "RGB"))
save_pil("rgba_64x48.png", Image.fromarray(noise(48, 64, 4), "RGBA"))
save_pil("l_45x70.png", Image.fromarray(noise(70, 45, 1)[:, :, 0], "L"))
save_pil("la_20x13.png", Image.fromarray(noise(13, 20, 2), "LA"))
save_pil("bilevel_19x7.png", Image.fromarray(noise(7, 19, 1)[:, :, 0] > 127))
p = Image.fromarray(noise(30, 50, 1)[:, :, 0], "P")
p.putpalette(list(noise(1, 256, 3).reshape(-1)))
save_pil("p_50x30.png", p)
p = Image.fromarray((noise(23, 31, 1)[:, :, 0] % 16), "P")
p.putpalette(list(noise(1, 16, 3).reshape(-1)))
save_pil("p_trns_31x23.png", p, transparency=bytes(range(0, 256, 16)))

# Hand-written PNGs.
for bd in (1, 2, 4):
    write_png_raw(os.path.join(OUT, f"gray{bd}_13x5.png"),
                  rng.integers(0, 1 << bd, size=(5, 13, 1)), 0, bd)
    add_decode(f"gray{bd}_13x5.png")
    n = 1 << bd
    write_png_raw(os.path.join(OUT, f"pal{bd}_11x6.png"),
                  rng.integers(0, n, size=(6, 11, 1)), 3, bd, plte=noise(1, n, 3))
    add_decode(f"pal{bd}_11x6.png")
g16 = rng.integers(0, 65536, size=(9, 16, 1))
g16[0, :8, 0] = [0, 1, 17, 128, 254, 255, 256, 300]  # values around PIL's clamp
write_png_raw(os.path.join(OUT, "gray16_16x9.png"), g16, 0, 16)
add_decode("gray16_16x9.png")
write_png_raw(os.path.join(OUT, "gray16_trns_16x9.png"), g16, 0, 16, trns=struct.pack(">H", 300))
add_decode("gray16_trns_16x9.png")
write_png_raw(os.path.join(OUT, "rgb16_15x7.png"), rng.integers(0, 65536, size=(7, 15, 3)), 2, 16)
add_decode("rgb16_15x7.png")
write_png_raw(os.path.join(OUT, "rgba16_15x7.png"), rng.integers(0, 65536, size=(7, 15, 4)), 6,
              16)
add_decode("rgba16_15x7.png")
write_png_raw(os.path.join(OUT, "la16_15x7.png"), rng.integers(0, 65536, size=(7, 15, 2)), 4, 16)
add_decode("la16_15x7.png")
write_png_raw(os.path.join(OUT, "rgb_trns_12x8.png"), noise(8, 12), 2, 8,
              trns=struct.pack(">HHH", 1, 2, 3))
add_decode("rgb_trns_12x8.png")
# A 4-entry palette with indices up to 255 (out-of-range indices are a benign libpng error and
# PIL falls back to its default gray ramp).
write_png_raw(os.path.join(OUT, "pal_short_10x10.png"), rng.integers(0, 256, size=(10, 10, 1)),
              3, 8, plte=noise(1, 4, 3), trns=b"\x00\x80")
add_decode("pal_short_10x10.png")
write_png_raw(os.path.join(OUT, "interlaced_rgb_13x11.png"), noise(11, 13), 2, 8, interlace=True)
add_decode("interlaced_rgb_13x11.png")
write_png_raw(os.path.join(OUT, "interlaced_pal4_9x10.png"), rng.integers(0, 16, size=(10, 9, 1)),
              3, 4, plte=noise(1, 16, 3), interlace=True)
add_decode("interlaced_pal4_9x10.png")

# ----------------------------------------------------------------------------------------------
# JPEG: PIL decodes with libjpeg-turbo at default settings; the C++ side must match.

jpeg_src = gradient(217, 333)
jpeg_src[50:120, 80:200] = noise(70, 120)
for name, kw in [("q90_420", dict(quality=90)), ("q95_444", dict(quality=95, subsampling=0)),
                 ("q75_422", dict(quality=75, subsampling=1)),
                 ("progressive", dict(quality=85, progressive=True, optimize=True))]:
    fname = f"jpeg_{name}_333x217.jpg"
    Image.fromarray(jpeg_src, "RGB").save(os.path.join(OUT, fname), **kw)
    add_decode(fname)
    manifest["jpeg"].append(manifest["decode"].pop())
Image.fromarray(jpeg_src[:, :, 1], "L").save(os.path.join(OUT, "jpeg_gray_333x217.jpg"),
                                             quality=90)
add_decode("jpeg_gray_333x217.jpg")
manifest["jpeg"].append(manifest["decode"].pop())
Image.fromarray(noise(16, 24, 4), "CMYK").save(os.path.join(OUT, "cmyk_24x16.jpg"))
manifest["decode_errors"].append({"file": "cmyk_24x16.jpg", "error_substr": "CMYK"})

# ----------------------------------------------------------------------------------------------
# Resize: PIL Image.resize(..., BICUBIC) on the RGB image.

resize_cases = [
    ("rgb_17x9.png", [(40, 21), (5, 3), (17, 30), (33, 9), (17, 9), (1, 1), (200, 2)]),
    ("rgb_500x333.png", [(504, 336), (336, 224), (100, 67), (7, 5), (1000, 666)]),
    ("rgb_333x500.png", [(336, 504), (50, 1), (333, 250)]),
    ("rgb_40x41.png", [(336, 344), (39, 40), (41, 40)]),
    ("rgb_1x37.png", [(5, 20), (1, 5), (3, 37)]),
    ("rgb_37x1.png", [(20, 3), (3, 1)]),
    ("rgb_1x1.png", [(7, 5)]),
    ("checker_64x64.png", [(23, 23), (150, 97), (64, 17)]),
    ("rgb_1000x700.png", [(480, 336), (13, 9)]),
]
for src, sizes in resize_cases:
    im = Image.open(os.path.join(OUT, src)).convert("RGB")
    for (w, h) in sizes:
        out_name = f"{src}.resize_{w}x{h}.rgb"
        np.array(im.resize((w, h), Image.BICUBIC)).tofile(os.path.join(OUT, out_name))
        manifest["resize"].append({"src": src, "width": w, "height": h, "out": out_name})

# ----------------------------------------------------------------------------------------------
# CLIPImageProcessor, re-implemented from transformers (image_processing_clip.py,
# image_transforms.py, image_processing_utils.get_size_dict).

CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def size_dict(size, default_to_square):
    if isinstance(size, dict):
        return size
    if isinstance(size, int):
        return {"height": size, "width": size} if default_to_square else {"shortest_edge": size}
    return {"height": size[0], "width": size[1]}


def hf_center_crop(chw, crop_h, crop_w):
    orig_h, orig_w = chw.shape[-2:]
    top = (orig_h - crop_h) // 2
    bottom = top + crop_h
    left = (orig_w - crop_w) // 2
    right = left + crop_w
    if top >= 0 and bottom <= orig_h and left >= 0 and right <= orig_w:
        return chw[..., top:bottom, left:right]
    new_h, new_w = max(crop_h, orig_h), max(crop_w, orig_w)
    new = np.zeros_like(chw, shape=chw.shape[:-2] + (new_h, new_w))
    top_pad = math.ceil((new_h - orig_h) / 2)
    left_pad = math.ceil((new_w - orig_w) / 2)
    new[..., top_pad:top_pad + orig_h, left_pad:left_pad + orig_w] = chw
    top += top_pad
    bottom += top_pad
    left += left_pad
    right += left_pad
    return new[..., max(0, top):min(new_h, bottom), max(0, left):min(new_w, right)]


def hf_clip_preprocess(img, cfg):
    size = size_dict(cfg.get("size", {"shortest_edge": 224}), default_to_square=False)
    crop = size_dict(cfg.get("crop_size", {"height": 224, "width": 224}), default_to_square=True)
    if cfg.get("do_convert_rgb", True):
        img = img.convert("RGB")
    arr = np.array(img)
    if cfg.get("do_resize", True):
        h, w = arr.shape[:2]
        if "shortest_edge" in size:
            s = size["shortest_edge"]
            short, long = (w, h) if w <= h else (h, w)
            new_short, new_long = s, int(s * long / short)
            oh, ow = (new_long, new_short) if w <= h else (new_short, new_long)
        else:
            oh, ow = size["height"], size["width"]
        arr = np.array(Image.fromarray(arr).resize((ow, oh), resample=cfg.get("resample", 3)))
    if cfg.get("do_center_crop", True):
        arr = hf_center_crop(arr.transpose(2, 0, 1), crop["height"], crop["width"])
        arr = arr.transpose(1, 2, 0)
    if cfg.get("do_rescale", True):
        arr = (arr.astype(np.float64) * cfg.get("rescale_factor", 1 / 255)).astype(np.float32)
    if cfg.get("do_normalize", True):
        if not np.issubdtype(arr.dtype, np.floating):
            arr = arr.astype(np.float32)
        mean = cfg.get("image_mean", CLIP_MEAN)
        std = cfg.get("image_std", CLIP_STD)
        mean = np.array(mean if isinstance(mean, list) else [mean] * 3, dtype=arr.dtype)
        std = np.array(std if isinstance(std, list) else [std] * 3, dtype=arr.dtype)
        arr = (arr - mean) / std
    return np.ascontiguousarray(arr.transpose(2, 0, 1)).astype(np.float32)


configs = {
    # llava-hf/llava-1.5-7b-hf's preprocessor_config.json.
    "llava": {"crop_size": {"height": 336, "width": 336}, "do_center_crop": True,
              "do_convert_rgb": True, "do_normalize": True, "do_rescale": True,
              "do_resize": True, "image_mean": CLIP_MEAN,
              "image_processor_type": "CLIPImageProcessor", "image_std": CLIP_STD,
              "processor_class": "LlavaProcessor", "resample": 3,
              "rescale_factor": 0.00392156862745098, "size": {"shortest_edge": 336}},
    # Old CLIPFeatureExtractor style: integer sizes.
    "old_int": {"crop_size": 224, "do_center_crop": True, "do_normalize": True, "do_resize": True,
                "feature_extractor_type": "CLIPFeatureExtractor", "image_mean": CLIP_MEAN,
                "image_std": CLIP_STD, "resample": 3, "size": 224},
    # Exact resize smaller than the crop: zero padding on both axes (odd differences).
    "pad": {"size": {"height": 30, "width": 20}, "crop_size": {"height": 41, "width": 25},
            "image_mean": 0.5, "image_std": 0.25},
    # Portrait images end up narrower than the crop: padding on one axis only; no normalisation.
    "partial": {"size": {"shortest_edge": 64}, "crop_size": [48, 70], "do_normalize": False},
    "noresize": {"do_resize": False, "crop_size": {"height": 30, "width": 30},
                 "do_rescale": False},
}
pre_images = ["rgb_500x333.png", "rgb_333x500.png", "rgb_40x41.png", "rgb_17x9.png",
              "rgba_64x48.png", "p_50x30.png", "rgb_1000x700.png", "rgb_1x37.png",
              "rgb_37x1.png", "l_45x70.png", "checker_64x64.png"]
for cname, cfg in configs.items():
    cfg_name = f"preprocessor_config.{cname}.json"
    with open(os.path.join(OUT, cfg_name), "w") as f:
        json.dump(cfg, f, indent=2)
    for src in pre_images:
        pv = hf_clip_preprocess(Image.open(os.path.join(OUT, src)), cfg)
        out_name = f"{src}.pre_{cname}.f32"
        pv.astype("<f4").tofile(os.path.join(OUT, out_name))
        manifest["preprocess"].append({"src": src, "config": cfg_name, "channels": pv.shape[0],
                                       "height": pv.shape[1], "width": pv.shape[2],
                                       "out": out_name})

with open(os.path.join(OUT, "manifest.json"), "w") as f:
    json.dump(manifest, f, indent=1)
