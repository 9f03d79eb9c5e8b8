import ChunkWise
import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// The OpenAI-compatible endpoints.
struct OpenAIHandlers: Sendable {
    let state: ServerState

    // MARK: helpers

    func readJSON(_ request: Request) async throws -> JSONObject {
        let limit = state.config.maxBodyBytes
        if let len = request.headers[.contentLength].flatMap(Int.init), len > limit { throw APIError.tooLarge(limit) }
        let buffer: ByteBuffer
        do {
            buffer = try await request.body.collect(upTo: limit)
        } catch is NIOTooManyBytesError {
            throw APIError.tooLarge(limit)
        }
        let data = Data(buffer.readableBytesView)
        return try JSONObject(try JSONValue.parse(data))
    }

    func json(_ value: [String: JSONValue], status: HTTPResponse.Status = .ok) throws -> Response {
        let data = try jsonEncoder.encode(value)
        return Response(status: status, headers: [.contentType: "application/json"], body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }

    // MARK: plain endpoints

    func health() async throws -> Response {
        let s = await state.scheduler.snapshot()
        let p = await state.scheduler.prefixCacheSnapshot()
        return try json(["status": .string("ok"), "model": .string(state.modelID), "running": .int(Int64(s.running)),
                         "waiting": .int(Int64(s.waiting)), "kv_cache_bytes": .int(Int64(s.kvBytes)),
                         "prefix_cache_bytes": .int(Int64(p.bytes)), "prefix_cache_entries": .int(Int64(p.positions.count))])
    }

    func metricsText() async throws -> Response {
        // A turn on the scheduler actor: bookkeeping of a step that just ended (gauges updated
        // after the last events were sent) is complete before the registry is read.
        _ = await state.scheduler.snapshot()
        return Response(status: .ok, headers: [.contentType: "text/plain; version=0.0.4; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: state.metrics.render())))
    }

    func models() async throws -> Response {
        var data: [JSONValue] = [.object([
            "id": .string(state.modelID), "object": .string("model"), "created": .int(Int64(state.created)),
            "owned_by": .string("chunkwise"), "root": .string(state.modelID), "parent": .null,
            "max_model_len": .int(Int64(state.contextLength)),
        ])]
        for a in await state.registry.list() {
            data.append(.object([
                "id": .string(a.name), "object": .string("model"), "created": .int(Int64(a.created)),
                "owned_by": .string("chunkwise"), "root": .string(a.path), "parent": .string(state.modelID),
                "max_model_len": .int(Int64(state.contextLength)),
            ]))
        }
        return try json(["object": .string("list"), "data": .array(data)])
    }

    // MARK: adapters

    func loadAdapter(_ request: Request) async throws -> Response {
        let o = try await readJSON(request)
        guard let name = try o.string("lora_name") else { throw APIError.badRequest("'lora_name' is required", param: "lora_name", code: "missing_field") }
        guard let path = try o.string("lora_path") else { throw APIError.badRequest("'lora_path' is required", param: "lora_path", code: "missing_field") }
        try await state.registry.load(name: name, requestedPath: path)
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' added successfully.")))
    }

    func unloadAdapter(_ request: Request) async throws -> Response {
        let o = try await readJSON(request)
        guard let name = try o.string("lora_name") else { throw APIError.badRequest("'lora_name' is required", param: "lora_name", code: "missing_field") }
        try await state.registry.unload(name: name)
        // (its prompts' cached blocks would never be used again, and they keep its factors alive)
        await state.scheduler.forgetCachedPrompts(adapter: name)
        return Response(status: .ok, headers: [.contentType: "text/plain; charset=utf-8"],
                        body: .init(byteBuffer: ByteBuffer(string: "Success: LoRA adapter '\(name)' removed successfully.")))
    }

    // MARK: generation

    /// Token ids of the prompt of a request (completions: text or ids; chat: the rendered template).
    func promptTokens(_ o: JSONObject, chat: Bool) throws(APIError) -> [Int] {
        let tok = state.loaded.tokenizer
        var ids: [Int]
        if chat {
            guard let raw = state.loaded.chatTemplate else {
                throw .badRequest("the model '\(state.modelID)' has no chat template; use /v1/completions", param: "messages",
                                  code: "chat_template_missing")
            }
            guard let template = state.chatTemplate else {
                throw .badRequest("the model's chat template is not one the server can render (ChatML, Llama-2, Llama-3, Mistral); use /v1/completions",
                                  param: "messages", code: "chat_template_unsupported")
            }
            let text = try template.render(try parseMessages(o), defaultSystem: state.defaultSystemPrompt)
            ids = tok.encode(text, addSpecialTokens: false, parseSpecial: true)
            if raw.contains("bos_token"), let bos = tok.bosTokenID, ids.first != bos { ids.insert(bos, at: 0) }
        } else {
            switch try PromptField.parse(o["prompt"]) {
            case .text(let s): ids = tok.encode(s, addSpecialTokens: true, parseSpecial: true)
            case .tokens(let t): ids = t
            }
        }
        guard !ids.isEmpty else { throw .badRequest("the prompt is empty: at least one token is needed", param: chat ? "messages" : "prompt") }
        let vocab = state.loaded.model.config.vocabSize
        if let bad = ids.first(where: { $0 < 0 || $0 >= vocab }) {
            throw .badRequest("token id \(bad) is outside the vocabulary (0..<\(vocab))", param: "prompt")
        }
        return ids
    }

    func completions(_ request: Request, chat: Bool) async throws -> Response {
        let o = try await readJSON(request)
        let settings = try GenerationSettings.parse(o, chat: chat)
        let prompt = try promptTokens(o, chat: chat)
        let ctx = state.contextLength
        guard prompt.count < ctx else {
            throw APIError.badRequest("this model's maximum context length is \(ctx) tokens, but the prompt has \(prompt.count) tokens",
                                      param: chat ? "messages" : "prompt", code: "context_length_exceeded")
        }
        let limit = state.config.maxTokensLimit
        let maxTokens: Int
        if let m = settings.maxTokens {
            guard m <= limit else {
                throw APIError.badRequest("'max_tokens' is \(m) but this server allows at most \(limit)", param: "max_tokens", code: "invalid_max_tokens")
            }
            guard prompt.count + m <= ctx else {
                throw APIError.badRequest("this model's maximum context length is \(ctx) tokens; you requested \(prompt.count + m) tokens (\(prompt.count) in the prompt, \(m) for the completion)",
                                          param: "max_tokens", code: "context_length_exceeded")
            }
            maxTokens = m
        } else {
            maxTokens = min(chat ? limit : min(16, limit), ctx - prompt.count)
        }
        let bound = try await state.registry.resolve(model: settings.model, lora: settings.lora)
        let delta = try state.policyResolver(settings.policy, bound)
        let seq = SequenceRequest(prompt: prompt, maxTokens: maxTokens, sampling: settings.sampling, stopStrings: settings.stop,
                                  stopAtEOS: !settings.ignoreEOS, delta: delta, cacheSalt: settings.cacheSalt,
                                  usesPromptCache: settings.cachePrompt)
        let (seqID, stream) = try await state.scheduler.submit(seq)
        let id = (chat ? "chatcmpl-" : "cmpl-") + UUID().uuidString.replacingOccurrences(of: "-", with: "").lowercased().prefix(24)
        let modelName = settings.model ?? state.modelID
        let created = Int64(Date().timeIntervalSince1970)
        if settings.stream {
            return streamingResponse(stream, sequence: seqID, id: id, model: modelName, created: created, chat: chat, includeUsage: settings.includeUsage,
                                     promptTokens: prompt.count)
        }
        for await event in stream {
            switch event {
            case .failed(let e): throw e
            case .finished(let text, let tokens, let stats):
                let choice: JSONValue = chat
                    ? .object(["index": .int(0), "message": .object(["role": .string("assistant"), "content": .string(text)]),
                               "logprobs": .null, "finish_reason": .string(finishReason(stats.finishReason))])
                    : .object(["index": .int(0), "text": .string(text), "logprobs": .null,
                               "finish_reason": .string(finishReason(stats.finishReason))])
                return try json(["id": .string(id), "object": .string(chat ? "chat.completion" : "text_completion"),
                                 "created": .int(created), "model": .string(modelName), "choices": .array([choice]),
                                 "usage": usage(prompt: prompt.count, completion: tokens.count, cached: stats.cachedPromptTokens)])
            case .token, .text: continue
            }
        }
        await state.scheduler.cancel(seqID)
        throw APIError.unavailable("the request was cancelled before it finished")
    }

    func finishReason(_ r: FinishReason) -> String {
        switch r {
        case .length: return "length"
        case .eos, .stop, .cancelled: return "stop"
        }
    }

    /// OpenAI's usage object; `prompt_tokens_details.cached_tokens` counts the prompt tokens the
    /// prompt cache supplied.
    func usage(prompt: Int, completion: Int, cached: Int) -> JSONValue {
        .object(["prompt_tokens": .int(Int64(prompt)), "completion_tokens": .int(Int64(completion)),
                 "total_tokens": .int(Int64(prompt + completion)),
                 "prompt_tokens_details": .object(["cached_tokens": .int(Int64(cached))])])
    }

    /// Server-sent events in OpenAI's format: `data: {chunk}\n\n` per piece of text, a last chunk
    /// with `finish_reason`, an optional usage chunk (`stream_options.include_usage`, with
    /// `"choices": []`), then `data: [DONE]\n\n`. A write that fails (client gone) ends the body;
    /// dropping the event stream cancels the sequence, which frees its slot at the next step.
    func streamingResponse(_ stream: AsyncStream<SequenceEvent>, sequence: Int, id: String, model: String, created: Int64, chat: Bool,
                           includeUsage: Bool, promptTokens: Int) -> Response {
        let object = chat ? "chat.completion.chunk" : "text_completion"
        @Sendable func chunk(_ choice: JSONValue?, usage: JSONValue? = nil) -> ByteBuffer {
            var o: [String: JSONValue] = ["id": .string(id), "object": .string(object), "created": .int(created), "model": .string(model),
                                          "choices": .array(choice.map { [$0] } ?? [])]
            if includeUsage { o["usage"] = usage ?? .null }
            let data = (try? jsonEncoder.encode(o)) ?? Data("{}".utf8)
            var b = ByteBuffer(string: "data: ")
            b.writeBytes(data)
            b.writeString("\n\n")
            return b
        }
        @Sendable func piece(_ text: String, finish: String?) -> JSONValue {
            if chat {
                return .object(["index": .int(0), "delta": .object(text.isEmpty && finish != nil ? [:] : ["content": .string(text)]),
                                "logprobs": .null, "finish_reason": finish.map(JSONValue.string) ?? .null])
            }
            return .object(["index": .int(0), "text": .string(text), "logprobs": .null, "finish_reason": finish.map(JSONValue.string) ?? .null])
        }
        let scheduler = state.scheduler
        let body = ResponseBody { writer in
          do {
            if chat {
                try await writer.write(chunk(.object(["index": .int(0), "delta": .object(["role": .string("assistant"), "content": .string("")]),
                                                      "logprobs": .null, "finish_reason": .null])))
            }
            for await event in stream {
                switch event {
                case .token(_, let text), .text(let text):
                    if !text.isEmpty { try await writer.write(chunk(piece(text, finish: nil))) }
                case .finished(_, let tokens, let stats):
                    try await writer.write(chunk(piece("", finish: finishReason(stats.finishReason))))
                    if includeUsage { try await writer.write(chunk(nil, usage: usage(prompt: promptTokens, completion: tokens.count, cached: stats.cachedPromptTokens))) }
                case .failed(let e):
                    let data = (try? jsonEncoder.encode(e.body)) ?? Data()
                    var b = ByteBuffer(string: "data: ")
                    b.writeBytes(data)
                    b.writeString("\n\n")
                    try await writer.write(b)
                }
            }
            try await writer.write(ByteBuffer(string: "data: [DONE]\n\n"))
            try await writer.finish(nil)
          } catch {
            // The client went away (or the task was cancelled): free the sequence's slot and KV cache.
            await scheduler.cancel(sequence)
            throw error
          }
        }
        return Response(status: .ok, headers: [.contentType: "text/event-stream", .cacheControl: "no-cache"], body: body)
    }
}
