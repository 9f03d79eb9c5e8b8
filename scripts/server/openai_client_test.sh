#!/usr/bin/env bash
# Integration test of `chunkwise serve` with the official `openai` Python client.
#
# Builds the release binary, starts the server on a free loopback port with stories260K and two
# adapters, creates a throwaway venv, installs `openai` from PyPI and runs
# openai_client_test.py (completions, chat, streaming, adapter selection via `model`,
# /v1/models, load/unload). Exits non-zero on any failure; always stops the server.
#
#   scripts/server/openai_client_test.sh            # stories260K (+ SmolLM2 chat if present)
#   SKIP_BUILD=1 scripts/server/openai_client_test.sh
#   SWIFT_BUILD_FLAGS="-Xswiftc -enable-testing" scripts/server/openai_client_test.sh   # reuse a test build
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/../.." && pwd)"
SHARED="${CHUNKWISE_SHARED:-$ROOT/../shared}"
cd "$ROOT"
export PATH="/opt/swift/usr/bin:$PATH"
# shellcheck disable=SC2086
if [[ -z "${SKIP_BUILD:-}" ]]; then swift build -c release ${SWIFT_BUILD_FLAGS:-} --product chunkwise; fi
BIN="$(swift build -c release ${SWIFT_BUILD_FLAGS:-} --show-bin-path)/chunkwise"

WORK="$(mktemp -d)"
SERVER_PID=""
cleanup() {
  if [[ -n "$SERVER_PID" ]] && kill -0 "$SERVER_PID" 2>/dev/null; then
    kill -TERM "$SERVER_PID" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$SERVER_PID" 2>/dev/null || true
  fi
  rm -rf "$WORK"
}
trap cleanup EXIT INT TERM

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()'; }

start_server() { # $1 = log file, rest = args
  local log="$1"; shift
  PORT="$(free_port)"
  "$BIN" serve --host 127.0.0.1 --port "$PORT" "$@" >"$log" 2>&1 &
  SERVER_PID=$!
  for _ in $(seq 300); do
    if curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; then return 0; fi
    kill -0 "$SERVER_PID" 2>/dev/null || { echo "server exited:"; cat "$log"; return 1; }
    sleep 0.1
  done
  echo "server did not come up"; cat "$log"; return 1
}

stop_server() {
  kill -TERM "$SERVER_PID"
  for _ in $(seq 100); do kill -0 "$SERVER_PID" 2>/dev/null || break; sleep 0.1; done
  if kill -0 "$SERVER_PID" 2>/dev/null; then echo "server did not stop on SIGTERM"; return 1; fi
  wait "$SERVER_PID" || { echo "server exited with status $?"; return 1; }
  SERVER_PID=""
}

python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q openai
PY="$WORK/venv/bin/python"

mkdir -p "$WORK/adapters"
cp -r "$SHARED/adapters/stories260K-random-r8" "$WORK/adapters/rnd"
start_server "$WORK/server.log" --model "$SHARED/models/stories260K/stories260K.bin" --served-model-name stories \
  --adapter "shakespeare=$SHARED/adapters/stories260K-shakespeare-r16" --adapter-dir "$WORK/adapters" \
  --api-key test-key --threads 2
echo "server up on 127.0.0.1:$PORT (pid $SERVER_PID)"
"$PY" "$ROOT/scripts/server/openai_client_test.py" --base-url "http://127.0.0.1:$PORT/v1" --api-key test-key --model stories
stop_server
echo "stories260K: OK (graceful shutdown OK)"

SMOL="$ROOT/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
if [[ -f "$SMOL" ]]; then
  start_server "$WORK/smol.log" --model "$SMOL" --served-model-name smol --threads 2 \
    --adapter "squad=$SHARED/adapters/smollm2-squad-r16"
  "$PY" "$ROOT/scripts/server/openai_client_test.py" --base-url "http://127.0.0.1:$PORT/v1" --model smol --chat-only --adapter squad
  stop_server
  echo "SmolLM2 chat: OK"
fi
echo "ALL OK"
