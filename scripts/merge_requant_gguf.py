#!/usr/bin/env python3
"""Writes a SmolLM2 Q4_1 GGUF with a PEFT LoRA adapter merged into its Q4_1 blocks, keeping every
block's scale and min (the grid) and moving each 4-bit index by the rounded delta:

  nearest: q + round(δ/d)          (what requantizing to nearest on the same grid does)
  stoch:   q + floor(δ/d + u)      u ~ U[0,1) from numpy's generator with --seed (unbiased;
                                   the engine's --merge-format base does the same with its own hash)

For measuring how much of the adapter survives, e.g.
  python3 scripts/merge_requant_gguf.py stoch OUT.gguf --seed 1
  chunkwise eval perplexity --model OUT.gguf --file ../shared/data/wikitext-2/wiki.test.raw --context 512 --max-windows 16
Defaults: .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf and ../shared/adapters/smollm2-wikitext-r16.
Needs numpy, gguf and safetensors (pip). q_proj/k_proj lora_B rows are permuted to GGUF order (see the
adapter's README).
"""
import argparse
import json
import os

import gguf
import numpy as np
from gguf import GGMLQuantizationType as T
from safetensors.numpy import load_file

root = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
ap = argparse.ArgumentParser()
ap.add_argument("mode", choices=["nearest", "stoch"])
ap.add_argument("out")
ap.add_argument("--model", default=os.path.join(root, ".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"))
ap.add_argument("--adapter", default=os.path.join(root, "../shared/adapters/smollm2-wikitext-r16"))
ap.add_argument("--seed", type=int, default=0)
args = ap.parse_args()

cfg = json.load(open(os.path.join(args.adapter, "adapter_config.json")))
scale = cfg["lora_alpha"] / cfg["r"]
ad = load_file(os.path.join(args.adapter, "adapter_model.safetensors"))
modules = {"attn_q": ("self_attn.q_proj", 9), "attn_k": ("self_attn.k_proj", 3), "attn_v": ("self_attn.v_proj", 0),
           "attn_output": ("self_attn.o_proj", 0), "ffn_gate": ("mlp.gate_proj", 0), "ffn_up": ("mlp.up_proj", 0),
           "ffn_down": ("mlp.down_proj", 0)}  # GGUF name -> (PEFT module, heads to permute lora_B rows by)
rng = np.random.default_rng(args.seed)
r = gguf.GGUFReader(args.model)
w = gguf.GGUFWriter(args.out, r.fields["general.architecture"].contents())
for name, field in r.fields.items():
    if name.startswith("GGUF.") or name == "general.architecture":
        continue
    if field.types[0] == gguf.GGUFValueType.ARRAY:
        w.add_array(name, field.contents())
    else:
        w.add_key_value(name, field.contents(), field.types[0])
changed = []
for t in r.tensors:
    shape = [int(x) for x in reversed(t.shape)]
    raw = np.array(t.data)
    parts = t.name.split(".")
    if t.tensor_type == T.Q4_1 and parts[0] == "blk" and parts[2] in modules:
        module, heads = modules[parts[2]]
        prefix = f"base_model.model.model.layers.{int(parts[1])}.{module}"
        B = ad[prefix + ".lora_B.weight"].astype(np.float64)
        A = ad[prefix + ".lora_A.weight"].astype(np.float64)
        if heads:
            B = B.reshape(heads, 2, B.shape[0] // heads // 2, B.shape[1]).swapaxes(1, 2).reshape(B.shape)
        rows, cols = shape
        blk = raw.reshape(rows, cols // 32, 20)  # Q4_1 block: fp16 d, fp16 m, 16 bytes of nibbles
        d = blk[..., 0:2].copy().view(np.float16).astype(np.float64)
        qs = blk[..., 4:20]
        q = np.concatenate([qs & 15, qs >> 4], axis=-1).astype(np.int64)
        steps = (scale * B @ A).reshape(rows, cols // 32, 32) / np.where(d == 0, 1, d)
        moved = np.round(steps) if args.mode == "nearest" else np.floor(steps + rng.random(steps.shape))
        q2 = np.clip(q + moved.astype(np.int64), 0, 15)
        changed.append(float((q2 != q).mean()))
        packed = (q2[..., :16] | (q2[..., 16:] << 4)).astype(np.uint8)
        w.add_tensor(t.name, np.concatenate([blk[..., :4], packed], axis=-1).reshape(raw.shape), raw_shape=raw.shape, raw_dtype=T.Q4_1)
    elif t.tensor_type == T.F32:
        w.add_tensor(t.name, np.asarray(t.data, dtype=np.float32).reshape(shape))
    else:
        w.add_tensor(t.name, raw, raw_shape=raw.shape, raw_dtype=t.tensor_type)
w.write_header_to_file()
w.write_kv_data_to_file()
w.write_tensors_to_file()
w.close()
print(f"{args.mode}: {len(changed)} matrices, {100 * np.mean(changed):.3f}% of the weights moved")
