#!/usr/bin/env python3
"""Writes a copy of a GGUF file with its quantized tensors re-encoded as Q8_0 or F16 (for speed
comparisons of the same network at other encodings). Uses the `gguf` package from PyPI.

Usage: python3 scripts/requantize.py IN.gguf OUT.gguf Q8_0|F16
"""
import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T


def main() -> None:
    src, dst, kind = sys.argv[1], sys.argv[2], sys.argv[3]
    target = {"Q8_0": T.Q8_0, "F16": T.F16}[kind]
    r = gguf.GGUFReader(src)
    arch = r.fields["general.architecture"].contents()
    w = gguf.GGUFWriter(dst, arch)
    for name, field in r.fields.items():
        if name.startswith("GGUF.") or name == "general.architecture":
            continue
        vt = field.types[0]
        if vt == gguf.GGUFValueType.ARRAY:
            w.add_array(name, field.contents())
        else:
            w.add_key_value(name, field.contents(), vt)
    for t in r.tensors:
        shape = [int(x) for x in reversed(t.shape)]  # numpy order: rows first
        if t.tensor_type in (T.F32,) or len(shape) == 1:
            data = np.asarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
            w.add_tensor(t.name, data)
            continue
        f32 = np.asarray(gguf.dequantize(t.data, t.tensor_type), dtype=np.float32).reshape(shape)
        if target == T.F16:
            w.add_tensor(t.name, f32.astype(np.float16))
        else:
            q = gguf.quantize(f32, target)
            w.add_tensor(t.name, q, raw_shape=q.shape, raw_dtype=target)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()
