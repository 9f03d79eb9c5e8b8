// CWLoRA — LoRA adapters (placeholder until the adapter layer lands)
