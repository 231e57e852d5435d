"""Independent safetensors writer/reader for safetensors_test (run with Debian's /usr/bin/python3).

Written by hand from the format spec with struct + json (no safetensors package), so the C++
reader and writer are checked against code that shares nothing with them.

  write OUT.safetensors   writes tensors of every float dtype (and one I64) with an unpadded,
                          odd-length header and data deliberately not in name order; each
                          F16/BF16 tensor NAME has a companion NAME.expected (F32) holding the
                          exact float value of every element.
  verify IN.safetensors   checks a file written by the C++ writer for the test "writer_check"
                          (see safetensors_test.cc): layout, padding, order, values.
"""
import json
import struct
import sys

import numpy as np
import torch


def write(path):
    torch.manual_seed(7)
    tensors = {}  # name -> (dtype string, shape, bytes)

    f32 = torch.randn(3, 5)
    tensors["a.f32"] = ("F32", [3, 5], f32.numpy().astype("<f4").tobytes())

    # F16 with normals, subnormals, signed zero, the largest finite value and infinities.
    f16_vals = np.concatenate([
        torch.randn(17).numpy().astype(np.float16),
        np.array([6.0e-8, -6.0e-8, 3.0e-5, -0.0, 0.0, 65504.0, -65504.0, np.inf, -np.inf],
                 dtype=np.float16),
    ]).reshape(2, 13)
    tensors["b.f16"] = ("F16", [2, 13], f16_vals.astype("<f2").tobytes())
    tensors["b.f16.expected"] = ("F32", [2, 13], f16_vals.astype(np.float32).astype("<f4").tobytes())

    # BF16: the high 16 bits of each fp32 value (truncation), via a numpy uint32 view.
    src = (torch.randn(4, 3) * 100).numpy().astype(np.float32)
    bits = src.view(np.uint32)
    bf16 = (bits >> 16).astype("<u2")
    expected = (bits & np.uint32(0xFFFF0000)).view(np.float32)
    tensors["c.bf16"] = ("BF16", [4, 3], bf16.tobytes())
    tensors["c.bf16.expected"] = ("F32", [4, 3], expected.astype("<f4").tobytes())

    tensors["d.i64"] = ("I64", [4], np.array([1, -2, 3, 1 << 40], dtype="<i8").tobytes())
    tensors["e.scalar"] = ("F32", [], np.array(2.5, dtype="<f4").tobytes())
    tensors["f.empty"] = ("F16", [0, 7], b"")

    header = {"__metadata__": {"format": "pt", "writer": "python-by-hand"}}
    data = b""
    for name in sorted(tensors, reverse=True):  # data in reverse name order
        dtype, shape, raw = tensors[name]
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(raw)]}
        data += raw
    text = json.dumps(header).encode()
    if len(text) % 2 == 0:
        text += b" "  # odd header length: every tensor in the data section is misaligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        f.write(data)


def verify(path):
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert n % 8 == 0, f"header length {n} not a multiple of 8"
    text = raw[8:8 + n]
    assert text.startswith(b"{"), "header does not start with '{'"
    assert text.rstrip(b" ").endswith(b"}"), "padding is not spaces after the JSON object"
    header = json.loads(text)
    assert list(header)[0] == "__metadata__", "metadata is not first"
    assert header["__metadata__"] == {"format": "pt", "k": "v"}, header["__metadata__"]
    data = raw[8 + n:]
    names = [k for k in header if k != "__metadata__"]
    assert names == sorted(names), names
    offset = 0
    for name in names:  # contiguous, in name order, no gaps, covering the data
        b, e = header[name]["data_offsets"]
        assert b == offset, (name, b, offset)
        offset = e
    assert offset == len(data), (offset, len(data))

    def get(name, np_dtype):
        b, e = header[name]["data_offsets"]
        return np.frombuffer(data[b:e], dtype=np_dtype).reshape(header[name]["shape"])

    assert header["w.f32"]["dtype"] == "F32"
    assert np.array_equal(get("w.f32", "<f4"), np.arange(6, dtype=np.float32).reshape(2, 3))
    assert header["x.f16"]["dtype"] == "F16"
    assert np.array_equal(get("x.f16", "<f2"), np.array([0.5, -1.0, 65504.0], dtype=np.float16))
    assert header["y.bf16"]["dtype"] == "BF16"
    bf = get("y.bf16", "<u2").astype(np.uint32) << 16
    assert np.array_equal(bf.view(np.float32), np.array([1.0, -2.0], dtype=np.float32))
    assert header["z.i64"]["dtype"] == "I64" and header["z.i64"]["shape"] == [2]
    assert list(get("z.i64", "<i8")) == [7, -9]
    print("ok")


if __name__ == "__main__":
    {"write": write, "verify": verify}[sys.argv[1]](sys.argv[2])
