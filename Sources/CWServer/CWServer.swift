/// # CWServer — `chunkwise serve`
///
/// An OpenAI-compatible HTTP server (Hummingbird 2) over one loaded model.
///
/// Endpoints:
/// - `POST /v1/completions`, `POST /v1/chat/completions` — `stream: true` gives server-sent
///   events in OpenAI's chunk format ending with `data: [DONE]`; `stream_options.include_usage`
///   adds a last chunk with `usage` and `"choices": []`. Sampling fields: see `GenerationSettings`.
///   Chat prompts are rendered in Swift from the model's template (`ChatTemplate`: ChatML,
///   Llama-2, Llama-3, Mistral); any other template, or none, is a 400.
/// - Adapters: the `model` field names the base model or a registered adapter; `"lora": [{"name",
///   "scale"}]` (llama.cpp's convention) adds a weighted combination; `"chunkwise": {"policy": …}`
///   selects the ChunkWise rank policy (see `ChunkWisePolicy`, `PolicyResolvers`).
/// - `GET /v1/models` — the base model (`parent: null`) and every adapter (`parent`: the base id).
/// - `POST /v1/load_lora_adapter {"lora_name", "lora_path"}`, `POST /v1/unload_lora_adapter
///   {"lora_name"}` (vLLM's names) — only under `--adapter-dir` (see `AdapterRegistry`).
/// - `GET /health` (JSON: status, running, waiting, KV bytes, the prompt cache's bytes and entries), `GET /metrics` (Prometheus text,
///   see `ServerMetrics`). These two are not behind `--api-key`.
///
/// Batching (`BatchScheduler`): one actor owns the running sequences; each step is ONE
/// `LlamaModel.forward(batch:)` over every running sequence — one decode token each, plus a chunk
/// of prompt for sequences still in prefill (chunked prefill shares the step with the decodes,
/// at most `prefillTokensPerStep` = 256 prompt tokens per step). Requests are admitted between
/// steps while slots (`--max-concurrent`) and KV budget (`--kv-budget`; each sequence reserves
/// prompt + max_tokens positions up front) allow. The pass runs on a dedicated queue, so HTTP
/// handlers keep running during a step.
///
/// Prompt cache (`PrefixCache`, `--prefix-cache BYTES`, default 128 MiB, 0 = off): a finished
/// request's prompt leaves its whole KV blocks behind; a later request with the same adapter
/// binding whose prompt starts the same way (a system prompt, an earlier chat turn) takes them and
/// computes only the rest — `usage.prompt_tokens_details.cached_tokens` says how many, and the
/// answer is the one a fresh prefill gives, bit for bit. Its bytes are part of `--kv-budget`.
///
/// Limits: a full server answers **429** at once (`queue_full`, `Retry-After: 1`) when
/// `--max-queue` requests already wait — the queue is never unbounded; **503** only while
/// shutting down. Body over `--max-body-bytes` → 413; `max_tokens` < 1 or over
/// `--max-tokens-limit` → 400; prompt + max_tokens over the context → 400
/// `context_length_exceeded`; a request that could never fit the KV budget → 400
/// `kv_budget_exceeded`; unknown model/adapter → 404; missing/wrong API key → 401.
/// Every error is `{"error": {"message", "type", "param", "code"}}`.
///
/// Shutdown: SIGTERM/SIGINT start a graceful shutdown (swift-service-lifecycle): the HTTP server
/// stops accepting and lets in-flight requests finish, then the scheduler stops.
enum CWServerDocumentation {}
