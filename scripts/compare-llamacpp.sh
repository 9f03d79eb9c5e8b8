#!/usr/bin/env bash
# Side-by-side speed of chunkwise and llama.cpp on the same GGUF files, same machine, same threads.
#
# llama.cpp is not part of this repository: build it yourself from a local checkout and point
# LLAMA_CPP_DIR at it (we used a Feb-2025 snapshot, built with
#   cmake -B build -DCMAKE_BUILD_TYPE=Release -DGGML_NATIVE=ON && cmake --build build --target llama-bench).
# The Q8_0 and F16 files are made from the Q4_1 GGUF by scripts/requantize.py (PyPI `gguf`), so
# all three hold the same network (the F16/Q8_0 copies carry Q4_1's rounding, which is fine for speed).
#
# Usage: LLAMA_CPP_DIR=/path/to/llama.cpp bash scripts/compare-llamacpp.sh [threads] [repetitions]
# (SKIP_BUILD=1 uses the .build/release/chunkwise already there, e.g. the test command's build.)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
threads="${1:-2}"
reps="${2:-5}"
: "${LLAMA_CPP_DIR:?set LLAMA_CPP_DIR to a llama.cpp checkout with build/bin/llama-bench}"
bench="$LLAMA_CPP_DIR/build/bin/llama-bench"
bash scripts/fetch-model.sh
[ -n "${SKIP_BUILD:-}" ] || swift build -c release --product chunkwise >&2
models=".cache/models"
q41="$models/SmolLM2-135M-Instruct.Q4_1.gguf"
for t in Q8_0 F16; do
  f="$models/SmolLM2-135M-Instruct.$t.gguf"
  [ -f "$f" ] || python3 scripts/requantize.py "$q41" "$f" "$t"
done
printf '| model | engine | pp512 tok/s | tg128 tok/s |\n|---|---|---|---|\n'
for t in Q4_1 Q8_0 F16; do
  f="$models/SmolLM2-135M-Instruct.$t.gguf"
  lc=$("$bench" -m "$f" -t "$threads" -p 512 -n 128 -r "$reps" -o json 2>/dev/null)
  lpp=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.1f" % [r["avg_ts"] for r in d if r["n_prompt"]>0][0])' <<<"$lc")
  ltg=$(python3 -c 'import json,sys; d=json.loads(sys.stdin.read()); print("%.1f" % [r["avg_ts"] for r in d if r["n_gen"]>0][0])' <<<"$lc")
  cw=$(.build/release/chunkwise bench --model "$f" --threads "$threads" --prompt-tokens 512 --gen-tokens 128 --depth 0 --repetitions "$reps" --json)
  cpp=$(python3 -c 'import json,sys; print("%.1f" % json.loads(sys.stdin.read())["prefill_tok_s"])' <<<"$cw")
  ctg=$(python3 -c 'import json,sys; print("%.1f" % json.loads(sys.stdin.read())["decode_tok_s"])' <<<"$cw")
  printf '| %s | llama.cpp | %s | %s |\n| %s | chunkwise | %s (%.2f×) | %s (%.2f×) |\n' "$t" "$lpp" "$ltg" "$t" "$cpp" "$(python3 -c "print($cpp/$lpp)")" "$ctg" "$(python3 -c "print($ctg/$ltg)")"
done
