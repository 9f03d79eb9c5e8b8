#!/usr/bin/env python3
"""How much of a LoRA delta survives merging into a requantized base (why merges are fp16/fp32).

For a few SmolLM2 Q4_1 matrices: W = dequantized base, D = s·B·A from the PEFT adapter;
requantize W + D to Q4_1 and Q8_0 (ggml's rounding: Q4_1 min/max per 32, Q8_0 amax/127, fp16
scales) and report how close the change Q(W+D) − W is to D (relative error and cosine).

  python3 scripts/merge_requant_check.py [GGUF] [ADAPTER_DIR]
Needs numpy, gguf and safetensors (pip).
"""
import json
import os
import sys

import gguf
import numpy as np
from safetensors.numpy import load_file

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
model = sys.argv[1] if len(sys.argv) > 1 else os.path.join(root, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
adapter = sys.argv[2] if len(sys.argv) > 2 else os.path.join(root, "../shared/adapters/smollm2-wikitext-r16")

cfg = json.load(open(os.path.join(adapter, "adapter_config.json")))
scale = cfg["lora_alpha"] / cfg["r"]
tensors = {t.name: t for t in gguf.GGUFReader(model).tensors}
ad = load_file(os.path.join(adapter, "adapter_model.safetensors"))


def dequant(t):
    return gguf.quants.dequantize(t.data, t.tensor_type).reshape(list(reversed([int(x) for x in t.shape]))).astype(np.float32)


def fp16(x):
    return x.astype(np.float16).astype(np.float32)


def q4_1(w):
    b = w.reshape(-1, 32)
    lo, hi = b.min(1, keepdims=True), b.max(1, keepdims=True)
    d = (hi - lo) / 15
    d[d == 0] = 1
    d, m = fp16(d), fp16(lo)
    return (np.clip(np.round((b - m) / d), 0, 15) * d + m).reshape(w.shape)


def q8_0(w):
    b = w.reshape(-1, 32)
    d = np.abs(b).max(1, keepdims=True) / 127
    d[d == 0] = 1
    d = fp16(d)
    return (np.clip(np.round(b / d), -127, 127) * d).reshape(w.shape)


for layer, module, name in [(3, "self_attn.v_proj", "attn_v"), (10, "mlp.down_proj", "ffn_down"), (20, "mlp.gate_proj", "ffn_gate")]:
    W = dequant(tensors[f"blk.{layer}.{name}.weight"])
    prefix = f"base_model.model.model.layers.{layer}.{module}"
    D = scale * ad[prefix + ".lora_B.weight"].astype(np.float32) @ ad[prefix + ".lora_A.weight"].astype(np.float32)
    for label, q in [("Q4_1", q4_1), ("Q8_0", q8_0)]:
        E = q(W + D) - W
        rel = np.linalg.norm(E - D) / np.linalg.norm(D)
        cos = float((E * D).sum() / (np.linalg.norm(E) * np.linalg.norm(D)))
        print(f"layer {layer:2d} {module:17s} {label}: |D|/|W| = {np.linalg.norm(D) / np.linalg.norm(W):.4f}  "
              f"|Q(W+D)-W-D|/|D| = {rel:.3f}  cosine(Q(W+D)-W, D) = {cos:.3f}")
