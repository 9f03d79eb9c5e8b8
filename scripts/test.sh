#!/usr/bin/env bash
# The test suite: fetch the default model if needed, then run every test in an optimized build
# (numeric tests are tens of times slower in debug). Tests that need ../shared skip with a
# visible message when it is missing; .ci/run insists on it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
bash scripts/fetch-model.sh
swift build -c release -Xswiftc -enable-testing --build-tests
swift test -c release -Xswiftc -enable-testing --skip-build "$@"
# The server against the official `openai` Python client (throwaway venv, loopback only).
SWIFT_BUILD_FLAGS="-Xswiftc -enable-testing" SKIP_BUILD=1 bash scripts/server/openai_client_test.sh
