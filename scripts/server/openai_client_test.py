"""Drives `chunkwise serve` with the official openai client; any failure raises (exit 1)."""
import argparse
import json
import sys
import urllib.error
import urllib.request

import openai
from openai import OpenAI

ap = argparse.ArgumentParser()
ap.add_argument("--base-url", required=True)
ap.add_argument("--api-key", default="none")
ap.add_argument("--model", required=True)
ap.add_argument("--adapter", default="shakespeare")
ap.add_argument("--chat-only", action="store_true")
args = ap.parse_args()

client = OpenAI(base_url=args.base_url, api_key=args.api_key, max_retries=0, timeout=120)
checks = 0


def check(cond, what):
    global checks
    if not cond:
        print(f"FAIL: {what}", file=sys.stderr)
        sys.exit(1)
    checks += 1
    print(f"ok  {what}")


def post(path, body):
    req = urllib.request.Request(args.base_url + path, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json", "Authorization": f"Bearer {args.api_key}"})
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


models = [m.id for m in client.models.list().data]
check(args.model in models and args.adapter in models, f"/v1/models lists base and adapter: {models}")

if args.chat_only:
    chat = client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=16)
    check(chat.choices[0].message.role == "assistant" and chat.choices[0].message.content, f"chat: {chat.choices[0].message.content!r}")
    check(chat.usage.prompt_tokens > 0 and chat.usage.completion_tokens > 0, "chat usage")
    parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
        model=args.model, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=16, stream=True) if c.choices]
    check("".join(parts) == chat.choices[0].message.content, "chat streaming equals non-streaming")
    a = client.chat.completions.create(model=args.adapter, messages=[{"role": "user", "content": "What is 2+2?"}], max_tokens=16)
    check(a.model == args.adapter and a.choices[0].message.content is not None, f"chat via adapter: {a.choices[0].message.content!r}")
    print(f"{checks} checks passed")
    sys.exit(0)

c = client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=24, temperature=0)
text = c.choices[0].text
check(len(text) > 0 and c.choices[0].finish_reason in ("length", "stop"), f"completion: {text!r}")
check(c.usage.completion_tokens > 0 and c.usage.total_tokens == c.usage.prompt_tokens + c.usage.completion_tokens, "usage")

chunks = list(client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=24, temperature=0, stream=True,
                                        stream_options={"include_usage": True}))
streamed = "".join(ch.choices[0].text for ch in chunks if ch.choices)
check(streamed == text, "streamed completion equals non-streamed")
check(chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == c.usage.completion_tokens, "stream usage chunk")

# The prompt cache: a second request that starts with the same 40+ tokens takes them from the first.
story = ("Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her "
         "friends and her dog. One day, she found a big red ball under a tree.")
first = client.completions.create(model=args.model, prompt=story + " Lily", max_tokens=8, temperature=0)
again = client.completions.create(model=args.model, prompt=story + " The dog", max_tokens=8, temperature=0)
cached = [u.prompt_tokens_details.cached_tokens if u.prompt_tokens_details else None for u in (first.usage, again.usage)]
check(cached[0] == 0 and cached[1] is not None and cached[1] > 0, f"prompt cache: cached_tokens {cached} of {again.usage.prompt_tokens}")

a = client.completions.create(model=args.adapter, prompt="Once upon a time", max_tokens=24, temperature=0)
check(a.model == args.adapter and a.choices[0].text != text, f"adapter via model changes output: {a.choices[0].text!r}")
mix = client.completions.create(model=args.model, prompt="Once upon a time", max_tokens=24,
                                extra_body={"lora": [{"name": args.adapter, "scale": 0.5}], "chunkwise": {"policy": "static"}})
check(mix.choices[0].text, "weighted lora via extra_body")

cw = client.completions.create(model=args.adapter, prompt="Once upon a time", max_tokens=16,
                               extra_body={"chunkwise": {"policy": "balanced"}})
check(cw.choices[0].text, "ChunkWise balanced policy via extra_body")

try:
    client.completions.create(model=args.model, prompt="Once", max_tokens=4, extra_body={"chunkwise": {"policy": "balanced"}})
    check(False, "a policy without an adapter should be refused")
except openai.BadRequestError as e:
    check("exactly one adapter" in str(e), "policy without adapter → 400")

try:
    client.completions.create(model="no-such-model", prompt="Once", max_tokens=4)
    check(False, "unknown model should 404")
except openai.NotFoundError:
    check(True, "unknown model → 404")

try:
    OpenAI(base_url=args.base_url, api_key="wrong", max_retries=0).models.list()
    check(False, "wrong key should 401")
except openai.AuthenticationError:
    check(True, "wrong API key → 401")

try:
    client.chat.completions.create(model=args.model, messages=[{"role": "user", "content": "hi"}])
    check(False, "chat without a template should 400")
except openai.BadRequestError as e:
    check("chat template" in str(e), "chat on a model without a template → 400")

status, body = post("/load_lora_adapter", {"lora_name": "rnd", "lora_path": "rnd"})
check(status == 200, f"load_lora_adapter: {status} {body}")
check("rnd" in [m.id for m in client.models.list().data], "loaded adapter listed")
r = client.completions.create(model="rnd", prompt="Once upon a time", max_tokens=8)
check(r.model == "rnd", "completion on the loaded adapter")
status, body = post("/load_lora_adapter", {"lora_name": "evil", "lora_path": "../../../etc"})
check(status == 400, f"path traversal refused: {status}")
status, body = post("/load_lora_adapter", {"lora_name": "evil", "lora_path": "/etc"})
check(status == 403, f"path outside the adapter dir refused: {status}")
status, body = post("/unload_lora_adapter", {"lora_name": "rnd"})
check(status == 200, "unload_lora_adapter")
check("rnd" not in [m.id for m in client.models.list().data], "unloaded adapter gone")
print(f"{checks} checks passed")
