#!/usr/bin/env python3
"""What the prompt cache of `chunkwise serve` saves (loopback only, standard library only).

Starts the server twice on a free 127.0.0.1 port — with its prompt cache (`--prefix-cache`,
default) and without (`--prefix-cache 0`) — and sends each the same sequence of requests: a long
shared start (the first CHARS characters of WikiText-2 test, like a system prompt or a document
under discussion) followed by a different question each time, `max_tokens` 1, one at a time. Reports
per server the prompt length, `usage.prompt_tokens_details.cached_tokens` and the latency of each
request (the first one fills the cache), and the median over the others; then checks that greedy
40-token answers are the same text with and without the cache (base model and every adapter).

  python3 scripts/server/prefix_cache_bench.py --model .cache/models/SmolLM2-135M-Instruct.Q4_1.gguf \\
      --adapter wiki=../shared/adapters/smollm2-wikitext-r16
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import time

import server_process

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("CHUNKWISE_SHARED", os.path.join(ROOT, "..", "shared"))

ap = argparse.ArgumentParser()
ap.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "chunkwise"))
ap.add_argument("--model", default=os.path.join(ROOT, ".cache", "models", "SmolLM2-135M-Instruct.Q4_1.gguf"),
                help="default: the demo's SmolLM2 (stories260K's 512-token context needs --chars 600 or less)")
ap.add_argument("--adapter", action="append", default=[], help="NAME=PATH (repeatable)")
ap.add_argument("--chars", type=int, default=2600, help="characters of the shared start")
ap.add_argument("--requests", type=int, default=8)
ap.add_argument("--threads", type=int, default=2)
args = ap.parse_args()
names = [a.split("=", 1)[0] for a in args.adapter]
with open(os.path.join(SHARED, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
    START = f.read()[:args.chars]
QUESTIONS = ["\nIn short,", "\nThe main point", "\nTo summarize the article", "\nQ: Who", "\nQ: When", "\nQ: Where",
             "\nOne detail:", "\nThe next section"]

HOST = server_process.HOST


def serve(extra):
    port = server_process.free_port()
    cmd = [args.binary, "serve", "--model", args.model, "--host", HOST, "--port", str(port), "--threads", str(args.threads),
           "--log-level", "warning"] + [x for a in args.adapter for x in ("--adapter", a)] + extra
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server_process.wait_healthy(p, port, ": " + " ".join(cmd))
    return p, port


def complete(port, prompt, max_tokens, model=None):
    body = {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    if model:
        body["model"] = model
    c = http.client.HTTPConnection(HOST, port, timeout=600)
    t0 = time.monotonic()
    c.request("POST", "/v1/completions", body=json.dumps(body), headers={"Content-Type": "application/json"})
    r = c.getresponse()
    data = r.read()
    dt = time.monotonic() - t0
    if r.status != 200:
        sys.exit(f"HTTP {r.status}: {data[:300]!r}")
    o = json.loads(data)
    return o["choices"][0]["text"], o["usage"], dt


answers = {}
for label, extra in [("prompt cache on", []), ("prompt cache off", ["--prefix-cache", "0"])]:
    p, port = serve(extra)
    try:
        rows = [complete(port, START + QUESTIONS[i % len(QUESTIONS)] + f" ({i})", 1) for i in range(args.requests)]
        lat = [r[2] for r in rows]
        cached = [r[1].get("prompt_tokens_details", {}).get("cached_tokens") for r in rows]
        print(f"{label:16}  prompt {rows[0][1]['prompt_tokens']} tokens, cached {cached}, seconds {[round(x, 3) for x in lat]}, "
              f"median after the first {statistics.median(lat[1:]):.3f} s")
        for model in [None] + names:
            for q in QUESTIONS[:4]:
                answers.setdefault((model, q), []).append(complete(port, START + q, 40, model)[0])
    finally:
        server_process.stop(p)
same = sum(1 for v in answers.values() if len(set(v)) == 1)
print(f"greedy 40-token answers equal with and without the cache: {same} of {len(answers)}")
sys.exit(0 if same == len(answers) else 1)
