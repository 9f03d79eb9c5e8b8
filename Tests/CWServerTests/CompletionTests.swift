import ChunkWise
import CWServer
import CWTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// `/v1/completions`, `/v1/chat/completions`, `/v1/models`, `/health`, `/metrics` through the router.
final class CompletionTests: XCTestCase {
    let prompt = "Once upon a time"

    func testHealthAndModels() async throws {
        let state = try await Fixture.state { $0.adapters = [(name: "shakespeare", path: try! Fixture.adapterPath("stories260K-shakespeare-r16"))] }
        try await Fixture.app(state).test(.router) { client in
            let h = try await client.execute(uri: "/health", method: .get)
            XCTAssertEqual(h.status, .ok)
            XCTAssertEqual(try h.object()["status"] as? String, "ok")
            let m = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual(m.status, .ok)
            let data = try XCTUnwrap(try m.object()["data"] as? [[String: Any]])
            XCTAssertEqual(data.map { $0["id"] as? String }, ["stories", "shakespeare"])
            XCTAssertTrue(data[0]["parent"] is NSNull)
            XCTAssertEqual(data[1]["parent"] as? String, "stories")
            XCTAssertEqual(data[1]["object"] as? String, "model")
        }
    }

    func testGreedyCompletionEqualsEngine() async throws {
        let expected = try await Fixture.engine().complete(GenerationRequest(prompt: .text(prompt), maxTokens: 24))
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            let r = try await client.post("/v1/completions", #"{"model": "stories", "prompt": "Once upon a time", "max_tokens": 24, "temperature": 0}"#)
            XCTAssertEqual(r.status, .ok, r.text)
            XCTAssertEqual(try r.choiceText(), expected.text)
            let o = try r.object()
            XCTAssertEqual(o["object"] as? String, "text_completion")
            XCTAssertEqual(o["model"] as? String, "stories")
            let usage = try XCTUnwrap(o["usage"] as? [String: Any])
            XCTAssertEqual(usage["prompt_tokens"] as? Int, expected.stats.promptTokens)
            XCTAssertEqual(usage["completion_tokens"] as? Int, expected.tokens.count)
            XCTAssertEqual(usage["total_tokens"] as? Int, expected.stats.promptTokens + expected.tokens.count)
            XCTAssertEqual((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int, 0, "a short prompt is never cached")
            let choice = try XCTUnwrap((o["choices"] as? [[String: Any]])?.first)
            XCTAssertEqual(choice["finish_reason"] as? String, expected.stats.finishReason == .length ? "length" : "stop")
        }
    }

    func testSeededSamplingAndStopEqualEngine() async throws {
        let engine = try Fixture.engine()
        let sampled = try await engine.complete(GenerationRequest(prompt: .text(prompt), maxTokens: 30,
                                                                  sampling: SamplingParameters(temperature: 0.8, topK: 40, topP: 0.95, seed: 7)))
        let stopped = try await engine.complete(GenerationRequest(prompt: .text(prompt), maxTokens: 40, stopStrings: ["."]))
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            let a = try await client.post("/v1/completions",
                                          #"{"prompt": "Once upon a time", "max_tokens": 30, "temperature": 0.8, "top_k": 40, "top_p": 0.95, "seed": 7}"#)
            XCTAssertEqual(try a.choiceText(), sampled.text)
            let b = try await client.post("/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 40, "stop": ["."]}"#)
            XCTAssertEqual(try b.choiceText(), stopped.text)
            XCTAssertEqual(((try b.object()["choices"] as? [[String: Any]])?.first?["finish_reason"]) as? String,
                           stopped.stats.finishReason == .length ? "length" : "stop")
        }
    }

    func testTokenPromptEqualsTextPrompt() async throws {
        let state = try await Fixture.state()
        let ids = state.loaded.tokenizer.encode(prompt)
        try await Fixture.app(state).test(.router) { client in
            let a = try await client.post("/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 10}"#)
            let b = try await client.post("/v1/completions", #"{"prompt": \#(ids), "max_tokens": 10}"#)
            XCTAssertEqual(b.status, .ok, b.text)
            XCTAssertEqual(try a.choiceText(), try b.choiceText())
        }
    }

    func testStreamingFormat() async throws {
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            let whole = try await client.post("/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 20}"#)
            let r = try await client.post("/v1/completions",
                                          #"{"prompt": "Once upon a time", "max_tokens": 20, "stream": true, "stream_options": {"include_usage": true}}"#)
            XCTAssertEqual(r.status, .ok)
            XCTAssertEqual(r.headers[.contentType], "text/event-stream")
            let events = r.events
            XCTAssertEqual(events.last, "[DONE]")
            var text = ""
            var finish: String? = nil
            var usage: [String: Any]? = nil
            for e in events.dropLast() {
                let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any], e)
                XCTAssertEqual(o["object"] as? String, "text_completion")
                XCTAssertNotNil(o["id"] as? String)
                XCTAssertNotNil(o["created"] as? Int)
                let choices = try XCTUnwrap(o["choices"] as? [[String: Any]])
                if let u = o["usage"] as? [String: Any] { usage = u; XCTAssertTrue(choices.isEmpty) } else { XCTAssertTrue(o["usage"] is NSNull) }
                for c in choices {
                    text += c["text"] as? String ?? ""
                    if let f = c["finish_reason"] as? String { finish = f }
                }
            }
            XCTAssertEqual(text, try whole.choiceText())
            XCTAssertEqual(finish, "length")
            XCTAssertEqual(usage?["completion_tokens"] as? Int, 20)
            XCTAssertEqual(usage?["total_tokens"] as? Int, (usage?["prompt_tokens"] as? Int ?? 0) + 20)
        }
    }

    func testChatNeedsATemplate() async throws {
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            let r = try await client.post("/v1/chat/completions", #"{"messages": [{"role": "user", "content": "hi"}]}"#)
            XCTAssertEqual(r.status, .badRequest)
            XCTAssertEqual(try r.error()["code"] as? String, "chat_template_missing")
        }
    }

    func testSmolLM2ChatStreamingAndNonStreaming() async throws {
        let path = try TestPaths.smolLM2Path()
        let loaded = try ModelLoader.load(path: path)
        let state = try await ServerState(loaded: loaded, config: Fixture.config { $0.servedModelName = "smol"; $0.precision = .fast })
        XCTAssertEqual(state.chatTemplate, .chatML)
        XCTAssertNotNil(state.defaultSystemPrompt)
        // The rendered prompt, through the engine, must give the same text as the chat endpoint.
        let rendered = try ChatTemplate.chatML.render([ChatMessage(role: "user", content: "What is the capital of France?")],
                                                      defaultSystem: state.defaultSystemPrompt)
        let engine = try Engine(model: loaded, options: EngineOptions(precision: .fast, threads: 2))
        let expected = try await engine.complete(GenerationRequest(prompt: .text(rendered), maxTokens: 12, addSpecialTokens: false))
        try await Fixture.app(state).test(.router) { client in
            let body = #"{"model": "smol", "messages": [{"role": "user", "content": "What is the capital of France?"}], "max_tokens": 12}"#
            let r = try await client.post("/v1/chat/completions", body)
            XCTAssertEqual(r.status, .ok, r.text)
            let o = try r.object()
            XCTAssertEqual(o["object"] as? String, "chat.completion")
            XCTAssertEqual(try r.choiceText(), expected.text)
            let s = try await client.post("/v1/chat/completions", String(body.dropLast()) + #", "stream": true}"#)
            let events = s.events
            XCTAssertEqual(events.last, "[DONE]")
            var text = ""
            for (i, e) in events.dropLast().enumerated() {
                let o = try XCTUnwrap(try JSONSerialization.jsonObject(with: Data(e.utf8)) as? [String: Any])
                XCTAssertEqual(o["object"] as? String, "chat.completion.chunk")
                let delta = try XCTUnwrap((o["choices"] as? [[String: Any]])?.first?["delta"] as? [String: Any])
                if i == 0 { XCTAssertEqual(delta["role"] as? String, "assistant") }
                text += delta["content"] as? String ?? ""
            }
            XCTAssertEqual(text, expected.text)
        }
    }

    func testMetricsExposition() async throws {
        let state = try await Fixture.state { $0.adapters = [(name: "rnd", path: try! Fixture.adapterPath("stories260K-random-r8"))] }
        try await Fixture.app(state).test(.router) { client in
            _ = try await client.post("/v1/completions", #"{"model": "rnd", "prompt": "Once", "max_tokens": 5, "ignore_eos": true}"#)
            let m = try await client.execute(uri: "/metrics", method: .get)
            XCTAssertEqual(m.status, .ok)
            let t = m.text
            for needle in ["vllm:num_requests_running 0", "vllm:num_requests_waiting 0", "vllm:time_to_first_token_seconds_bucket",
                           "vllm:time_per_output_token_seconds_count", "vllm:prompt_tokens_total", "vllm:generation_tokens_total 5",
                           "chunkwise:kv_cache_bytes{format=\"fp32\"} 0", "vllm:lora_requests_info{", "max_lora=\"8\"",
                           "# TYPE chunkwise:chunk_rank histogram", "chunkwise:requests_total{"] {
                XCTAssertTrue(t.contains(needle), "missing \(needle) in\n\(t)")
            }
            // One sequence of 5 tokens: the prompt's step (which samples the first token) and 4 decode
            // steps, each with that one sequence.
            func value(_ name: String) -> Double? {
                t.split(separator: "\n").first { $0.hasPrefix(name + " ") }.flatMap { Double($0.split(separator: " ").last ?? "") }
            }
            XCTAssertEqual(value("chunkwise:batch_sequences_count"), 5, t)
            XCTAssertEqual(value("chunkwise:batch_sequences_sum"), 5, t)
            XCTAssertEqual(value("chunkwise:step_seconds_count"), 5, t)
            XCTAssertGreaterThan(value("chunkwise:step_seconds_sum") ?? 0, 0, t)
        }
    }
}
