#!/usr/bin/env bash
# The demo: fetch SmolLM2-135M-Instruct (Q4_1 GGUF) if needed, build an optimized chunkwise, and
# stream a short answer to a chat prompt.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/fetch-model.sh
echo "Building chunkwise (release) ..." >&2
swift build -c release --product chunkwise >&2
prompt="${1:-What is the capital of France? Answer in one sentence.}"
chat="<|im_start|>system
You are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>
<|im_start|>user
${prompt}<|im_end|>
<|im_start|>assistant
"
exec .build/release/chunkwise generate --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \
  --prompt "$chat" --max-tokens "${MAX_TOKENS:-96}"
