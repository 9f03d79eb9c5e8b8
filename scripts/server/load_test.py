#!/usr/bin/env python3
"""Bounded load test of `chunkwise serve` (loopback only, standard library only).

Starts the server itself on a free 127.0.0.1 port (so it can read its peak RSS from
/proc/PID/status VmHWM), then runs phases of N concurrent streaming clients, each for a fixed
time, with requests spread over the base model and the adapters. Reports per phase: requests ok,
errors by HTTP status, generated tokens per second, mean/p50/p95 time to first token, and, from the
server's own metrics, its forward steps in the phase's window (count, mean sequences per step, mean
step time, the share of the window they took); and the server's peak RSS. Stops the server at the
end (SIGTERM) whatever happens.

  python3 scripts/server/load_test.py --phases 1,8,32 --seconds 20

`--policies none,balanced,aggressive,quality` cycles ChunkWise policies over the adapter requests
(mixed adapters and policies in one batch).

`--system-chars N` starts every prompt with the same N characters (a shared system prompt), so the
server's prompt cache serves most of each prompt; each phase then also reports its requests' prompt
tokens and how many of them came from the cache.
"""
import argparse
import http.client
import json
import os
import statistics
import subprocess
import sys
import threading
import time

import server_process

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SHARED = os.environ.get("CHUNKWISE_SHARED", os.path.join(ROOT, "..", "shared"))

ap = argparse.ArgumentParser()
ap.add_argument("--binary", default=os.path.join(ROOT, ".build", "release", "chunkwise"))
ap.add_argument("--model", default=os.path.join(SHARED, "models", "stories260K", "stories260K.bin"))
ap.add_argument("--adapter", action="append", default=None, help="NAME=PATH (repeatable)")
ap.add_argument("--phases", default="1,8,32", help="concurrent clients per phase")
ap.add_argument("--seconds", type=float, default=20, help="duration of each phase")
ap.add_argument("--max-tokens", type=int, default=64)
ap.add_argument("--max-concurrent", type=int, default=8, help="server --max-concurrent")
ap.add_argument("--max-queue", type=int, default=64, help="server --max-queue")
ap.add_argument("--threads", type=int, default=2)
ap.add_argument("--extra", default="", help="extra server arguments")
ap.add_argument("--policies", default="none",
                help="ChunkWise policies cycled over the adapter requests (comma list; `none` sends no "
                     "`chunkwise` field), e.g. none,balanced,aggressive,quality")
ap.add_argument("--system-chars", type=int, default=0,
                help="start every prompt with this many characters of WikiText-2 test (a shared system prompt: exercises the prompt cache)")
args = ap.parse_args()
if args.adapter is None:
    args.adapter = [f"shakespeare={SHARED}/adapters/stories260K-shakespeare-r16", f"rnd={SHARED}/adapters/stories260K-random-r8"]
names = [a.split("=", 1)[0] for a in args.adapter]

HOST = server_process.HOST
PORT = server_process.free_port()
cmd = [args.binary, "serve", "--model", args.model, "--host", HOST, "--port", str(PORT), "--served-model-name", "base",
       "--threads", str(args.threads), "--max-concurrent", str(args.max_concurrent), "--max-queue", str(args.max_queue),
       "--log-level", "warning"] + [x for a in args.adapter for x in ("--adapter", a)] + args.extra.split()
server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open("/tmp/chunkwise-load-test-server.log", "w"))


def stop_server():
    server_process.stop(server)


def peak_rss_kib():
    try:
        with open(f"/proc/{server.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        return None


POLICIES = [p.strip() for p in args.policies.split(",") if p.strip()] or ["none"]
PROMPTS = ["Once upon a time", "The little dog", "Lily and Tom went to the park", "One day, a big bird", "Sam had a red ball"]
SYSTEM = ""
if args.system_chars > 0:
    with open(os.path.join(SHARED, "data", "wikitext-2", "wiki.test.raw"), encoding="utf-8") as f:
        SYSTEM = f.read()[:args.system_chars] + "\n"


def one_request(i):
    """One streaming completion; returns (status, tokens, ttft_seconds or None, (prompt tokens, of them cached))."""
    model = (["base"] + names)[i % (len(names) + 1)]
    request = {"model": model, "prompt": SYSTEM + PROMPTS[i % len(PROMPTS)], "max_tokens": args.max_tokens, "stream": True,
               "stream_options": {"include_usage": True}, "temperature": 0.8, "seed": i, "ignore_eos": True}
    policy = POLICIES[(i // (len(names) + 1)) % len(POLICIES)]
    if model != "base" and policy != "none":
        request["chunkwise"] = {"policy": policy}
    body = json.dumps(request)
    conn = http.client.HTTPConnection(HOST, PORT, timeout=120)
    t0 = time.monotonic()
    ttft = None
    tokens = 0
    prompt = (0, 0)
    try:
        conn.request("POST", "/v1/completions", body=body, headers={"Content-Type": "application/json"})
        r = conn.getresponse()
        if r.status != 200:
            r.read()
            return r.status, 0, None, prompt
        done = False
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data: "):
                continue
            data = line[6:]
            if data == "[DONE]":
                done = True
                break
            # Only the first chunk (time to first token) and the one with usage are parsed: the
            # client shares the server's cores, so it does as little per token as it can.
            if ttft is None or '"usage"' in data:
                o = json.loads(data)
                if o.get("choices") and ttft is None:
                    ttft = time.monotonic() - t0
                if o.get("usage"):
                    u = o["usage"]
                    tokens = u["completion_tokens"]
                    prompt = (u["prompt_tokens"], (u.get("prompt_tokens_details") or {}).get("cached_tokens", 0))
        return (200 if done else -1), tokens, ttft, prompt
    except Exception:
        return -2, 0, None, prompt
    finally:
        conn.close()


COUNTERS = ("vllm:generation_tokens_total", "chunkwise:batch_sequences_sum", "chunkwise:batch_sequences_count",
            "chunkwise:step_seconds_sum", "chunkwise:step_seconds_count")


def counters():
    """The server's counters above: tokens sampled so far (all requests); the forward steps, their
    sequences and their time."""
    c = http.client.HTTPConnection(HOST, PORT, timeout=5)
    out = dict.fromkeys(COUNTERS, 0.0)
    try:
        c.request("GET", "/metrics")
        for line in c.getresponse().read().decode().splitlines():
            name = line.split(" ")[0].split("{")[0]
            if name in out:
                out[name] = float(line.split()[-1])
    finally:
        c.close()
    return out


def phase(n):
    """N clients, each sending requests back to back until the deadline. Throughput is measured
    two ways: `tokens_per_second` = the server's generated-token counter over the window
    [start, deadline], while all N clients are sending (steady state); `completed_tokens_per_second`
    = tokens of the requests that completed / time until the last one finished (that includes the
    drain after the deadline, when fewer than N requests remain, so it can understate N-client
    throughput; with requests of equal length they end together and the two agree)."""
    c0 = counters()
    deadline = time.monotonic() + args.seconds
    window = {}

    def sample_at_deadline():
        time.sleep(max(0.0, deadline - time.monotonic()))
        c1 = counters()
        window["seconds"] = time.monotonic() - t0
        window.update({k: c1[k] - c0[k] for k in COUNTERS})
        window["tokens"] = window["vllm:generation_tokens_total"]
    lock = threading.Lock()
    stats = {"ok": 0, "errors": {}, "tokens": 0, "ttft": [], "prompt": 0, "cached": 0}
    counter = [0]

    def worker():
        while time.monotonic() < deadline:
            with lock:
                i = counter[0]; counter[0] += 1
            status, toks, ttft, (ptoks, cached) = one_request(i)
            with lock:
                if status == 200:
                    stats["ok"] += 1
                    stats["tokens"] += toks
                    stats["prompt"] += ptoks
                    stats["cached"] += cached
                    if ttft is not None:
                        stats["ttft"].append(ttft)
                else:
                    stats["errors"][status] = stats["errors"].get(status, 0) + 1
            if status == 429:
                time.sleep(0.05)

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(n)] + [threading.Thread(target=sample_at_deadline)]
    for t in threads: t.start()
    for t in threads: t.join()
    elapsed = time.monotonic() - t0
    tt = sorted(stats["ttft"])
    return {"clients": n, "seconds": round(elapsed, 1), "requests_ok": stats["ok"], "errors_by_status": stats["errors"],
            "tokens": stats["tokens"], "tokens_per_second": round(window["tokens"] / window["seconds"], 1),
            "completed_tokens_per_second": round(stats["tokens"] / elapsed, 1),
            # Over the window: forward steps, the mean sequences per step, the mean step time, and
            # the share of the window the forward passes took (the rest: sampling, streaming,
            # admission, waiting for requests).
            "steps": int(window["chunkwise:step_seconds_count"]),
            "mean_batch": round(window["chunkwise:batch_sequences_sum"] / max(1, window["chunkwise:batch_sequences_count"]), 2),
            "mean_step_ms": round(1000 * window["chunkwise:step_seconds_sum"] / max(1, window["chunkwise:step_seconds_count"]), 2),
            "forward_share": round(window["chunkwise:step_seconds_sum"] / window["seconds"], 3),
            "prompt_tokens": stats["prompt"], "cached_prompt_tokens": stats["cached"],
            "ttft_mean_ms": round(1000 * statistics.mean(tt), 1) if tt else None,
            "ttft_p50_ms": round(1000 * tt[len(tt) // 2], 1) if tt else None,
            "ttft_p95_ms": round(1000 * tt[int(len(tt) * 0.95)], 1) if tt else None}


rc = 0
try:
    server_process.wait_healthy(server, PORT, "; see /tmp/chunkwise-load-test-server.log", tries=300)
    print(f"server pid {server.pid} on {HOST}:{PORT}; load average {os.getloadavg()}", flush=True)
    results = []
    single = None
    for n in [int(x) for x in args.phases.split(",")]:
        r = phase(n)
        r["load_average_1m"] = round(os.getloadavg()[0], 2)
        # Scaling: this phase's steady-state throughput over the latest one-client phase's.
        if n == 1:
            single = r["tokens_per_second"]
        elif single:
            r["vs_latest_single"] = round(r["tokens_per_second"] / single, 2)
        results.append(r)
        print(json.dumps(r), flush=True)
    c = http.client.HTTPConnection(HOST, PORT, timeout=5); c.request("GET", "/metrics")
    metrics = c.getresponse().read().decode()
    running = [l for l in metrics.splitlines() if l.startswith("vllm:num_requests_running")]
    # Scaling over the run: the machine's speed drifts within a minute, so a single pair says
    # little; alternating phases (e.g. --phases 1,8,1,8,1,8,...) give one ratio per pair.
    scaling = {}
    for n in sorted({r["clients"] for r in results if "vs_latest_single" in r}):
        ratios = [r["vs_latest_single"] for r in results if r["clients"] == n and "vs_latest_single" in r]
        scaling[str(n)] = {"pairs": len(ratios), "median_vs_latest_single": round(statistics.median(ratios), 2),
                           "min": min(ratios), "max": max(ratios)}
    report = {"phases": results, "scaling": scaling, "policies": POLICIES, "server_peak_rss_mib": round((peak_rss_kib() or 0) / 1024, 1),
              "metrics_after": running, "server": " ".join(cmd[1:])}
    print(json.dumps(report, indent=1))
    if server.poll() is not None:
        print("server died during the test", file=sys.stderr); rc = 1
finally:
    stop_server()
sys.exit(rc)
