import ChunkWise
import CWServer
import CWTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// The prompt cache: a request that starts like an earlier one (same adapter binding) takes the
/// earlier prompt's whole KV blocks, says so in `usage.prompt_tokens_details.cached_tokens` and the
/// prefix-cache metrics, and answers exactly what the engine answers from scratch.
final class PrefixCacheTests: XCTestCase {
    static let system = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends and her dog. "

    func testReusedPromptsAnswerLikeTheEngine() async throws {
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        let prompts = [Self.system + "One day,", Self.system + "The sun was", Self.system + "One day, she"]
        for precision in [Precision.exact, .fast] {
            var expected: [String: String] = [:]
            for (adapter, specs) in [("base", [AdapterSpec]()), ("shakespeare", [AdapterSpec(path: shakes)])] {
                let e = try Engine(modelPath: try Fixture.storiesPath(), options: EngineOptions(precision: precision, threads: 2, adapters: specs))
                for p in prompts { expected["\(adapter)|\(p)"] = try await e.complete(GenerationRequest(prompt: .text(p), maxTokens: 16)).text }
            }
            let want = expected
            let state = try await Fixture.state {
                $0.precision = precision
                $0.adapters = [(name: "shakespeare", path: shakes)]
            }
            let promptTokens = try state.loaded.tokenizer.encode(prompts[0], addSpecialTokens: true, parseSpecial: true).count
            XCTAssertGreaterThan(promptTokens, 36, "the test needs prompts longer than one KV block + 4 tokens")
            try await Fixture.app(state).test(.router) { client in
                for adapter in ["base", "shakespeare"] {
                    var cached: [Int] = []
                    for p in prompts {
                        let model = adapter == "base" ? "" : #""model": "shakespeare", "#
                        let r = try await client.post("/v1/completions", #"{\#(model)"prompt": \#(jsonString(p)), "max_tokens": 16}"#)
                        XCTAssertEqual(r.status, .ok, r.text)
                        XCTAssertEqual(try r.choiceText(), want["\(adapter)|\(p)"], "\(precision) \(adapter): \(p)")
                        let usage = try XCTUnwrap(try r.object()["usage"] as? [String: Any])
                        let details = try XCTUnwrap(usage["prompt_tokens_details"] as? [String: Any])
                        cached.append(try XCTUnwrap(details["cached_tokens"] as? Int))
                    }
                    // The first of each binding computes everything (the other binding's blocks do not
                    // count); the next ones take whole 32-position blocks of the shared start.
                    XCTAssertEqual(cached[0], 0, "\(precision) \(adapter)")
                    XCTAssertGreaterThan(cached[1], 0, "\(precision) \(adapter)")
                    XCTAssertEqual(cached[1] % 32, 0)
                    XCTAssertGreaterThanOrEqual(cached[2], cached[1], "\(precision) \(adapter)")
                }
                // Streaming reports it too.
                let s = try await client.post("/v1/completions",
                    #"{"prompt": \#(jsonString(prompts[1])), "max_tokens": 4, "stream": true, "stream_options": {"include_usage": true}}"#)
                let usageEvent = try XCTUnwrap(s.events.first { $0.contains("\"usage\":{") })
                XCTAssertTrue(usageEvent.contains("\"cached_tokens\":"), usageEvent)
                XCTAssertFalse(usageEvent.contains("\"cached_tokens\":0"), usageEvent)
                let metrics = try await client.execute(uri: "/metrics", method: .get).text
                for name in ["vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "chunkwise:prefix_cache_bytes"] {
                    XCTAssertTrue(metrics.contains(name), "\(name) is exported")
                }
            }
            let health = try await Fixture.app(state).test(.router) { client in try await client.execute(uri: "/health", method: .get).object() }
            let (positions, bytes) = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(health["prefix_cache_bytes"] as? Int, bytes)
            XCTAssertEqual(health["prefix_cache_entries"] as? Int, positions.count)
            XCTAssertFalse(positions.isEmpty)
            XCTAssertTrue(positions.allSatisfy { $0 % 32 == 0 && $0 <= promptTokens }, "whole blocks of prompts only: \(positions)")
            XCTAssertGreaterThan(bytes, 0)
        }
    }

    func testOffAndChunkWisePoliciesComputeEverything() async throws {
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        let p = Self.system + "One day,"
        for (edit, body) in [({ (c: inout ServerConfiguration) in c.prefixCacheBytes = 0 }, #"{"prompt": \#(jsonString(p)), "max_tokens": 4}"#),
                             ({ (c: inout ServerConfiguration) in c.adapters = [(name: "shakespeare", path: shakes)] },
                              #"{"model": "shakespeare", "prompt": \#(jsonString(p)), "max_tokens": 4, "chunkwise": {"policy": "balanced"}}"#)] {
            let state = try await Fixture.state(edit)
            try await Fixture.app(state).test(.router) { client in
                for _ in 0..<2 {
                    let r = try await client.post("/v1/completions", body)
                    XCTAssertEqual(r.status, .ok, r.text)
                    let usage = try XCTUnwrap(try r.object()["usage"] as? [String: Any])
                    XCTAssertEqual((usage["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int, 0, body)
                }
            }
            let (positions, bytes) = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(positions, [])
            XCTAssertEqual(bytes, 0)
        }
    }

    /// `cache_salt` (vLLM's): entries are shared only between requests with the same salt.
    func testSaltsKeepEntriesApart() async throws {
        func salt(_ s: String) -> String { #""cache_salt": \#(jsonString(s)), "# }
        let (cached, entries) = try await Self.cachedTokens([salt("tenant-a"), salt("tenant-b"), "", salt("tenant-a"), ""])
        XCTAssertEqual(Array(cached.prefix(3)), [0, 0, 0], "another salt (or none) does not see an entry")
        XCTAssertGreaterThan(cached[3] ?? 0, 0)
        XCTAssertGreaterThan(cached[4] ?? 0, 0)
        XCTAssertEqual(entries, 3)
    }

    /// `cache_prompt: false` (llama.cpp's): the request computes its whole prompt and leaves no entry.
    func testCachePromptFalseNeitherTakesNorLeavesEntries() async throws {
        let off = #""cache_prompt": false, "#
        let (cached, entries) = try await Self.cachedTokens([off, "", off, #""cache_prompt": true, "#])
        XCTAssertEqual(Array(cached.prefix(3)), [0, 0, 0], "the first request left nothing; the third took nothing")
        XCTAssertGreaterThan(cached[3] ?? 0, 0, "the second one's prompt is cached")
        XCTAssertEqual(entries, 1, "only the second request's prompt")
    }

    func testBadPromptCacheFieldsAre400() async throws {
        try await Fixture.app(try await Fixture.state()).test(.router) { client in
            for (field, body) in [("cache_salt", #"{"cache_salt": "", "prompt": "x", "max_tokens": 1}"#),
                                  ("cache_prompt", #"{"cache_prompt": "no", "prompt": "x", "max_tokens": 1}"#)] {
                let bad = try await client.post("/v1/completions", body)
                XCTAssertEqual(bad.status, .badRequest, body)
                XCTAssertEqual(try bad.error()["param"] as? String, field)
            }
        }
    }

    /// One server; a 2-token completion of the shared prompt per entry of `extras` (fields ahead of
    /// the prompt, each ending in ", "), in order. Returns each one's
    /// `usage.prompt_tokens_details.cached_tokens` and the prompt cache's entries afterwards.
    static func cachedTokens(_ extras: [String]) async throws -> (cached: [Int?], entries: Int) {
        let p = jsonString(system + "One day,")
        let state = try await Fixture.state()
        let cached = try await Fixture.app(state).test(.router) { client in
            var out: [Int?] = []
            for extra in extras {
                let r = try await client.post("/v1/completions", #"{\#(extra)"prompt": \#(p), "max_tokens": 2}"#)
                XCTAssertEqual(r.status, .ok, r.text)
                out.append(((try r.object()["usage"] as? [String: Any])?["prompt_tokens_details"] as? [String: Any])?["cached_tokens"] as? Int)
            }
            return out
        }
        return (cached, await state.scheduler.prefixCacheSnapshot().positions.count)
    }

    /// Unloading an adapter drops its cached prompts (the base model's stay).
    func testUnloadForgetsTheAdaptersPrompts() async throws {
        let p = Self.system + "One day,"
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        let state = try await Fixture.state { $0.adapters = [(name: "shakespeare", path: shakes)] }
        try await Fixture.app(state).test(.router) { client in
            for body in [#"{"prompt": \#(jsonString(p)), "max_tokens": 2}"#, #"{"model": "shakespeare", "prompt": \#(jsonString(p)), "max_tokens": 2}"#] {
                let r = try await client.post("/v1/completions", body)
                XCTAssertEqual(r.status, .ok, r.text)
            }
            let before = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(before.positions.count, 2)
            let unload = try await client.post("/v1/unload_lora_adapter", #"{"lora_name": "shakespeare"}"#)
            XCTAssertEqual(unload.status, .ok, unload.text)
            let after = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(after.positions.count, 1)
            XCTAssertLessThan(after.bytes, before.bytes)
        }
    }

    /// The cache lives inside the KV budget: with room for one request and nothing more, its entry
    /// gives way to the next request instead of making it wait.
    func testEntriesGiveWayToRequests() async throws {
        let p = Self.system + "One day,"
        let perPosition = try await Fixture.state().scheduler.kvBytesPerPosition
        let state = try await Fixture.state { $0.kvBudgetBytes = 160 * perPosition }
        try await Fixture.app(state).test(.router) { client in
            let a = try await client.post("/v1/completions", #"{"prompt": \#(jsonString(p)), "max_tokens": 8}"#)
            XCTAssertEqual(a.status, .ok, a.text)
            let held = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(held.positions.count, 1)
            // This one reserves 150 positions: the entry must go for it to run.
            let b = try await client.post("/v1/completions", #"{"prompt": "Tom", "max_tokens": 140}"#)
            XCTAssertEqual(b.status, .ok, b.text)
            let after = await state.scheduler.prefixCacheSnapshot()
            XCTAssertEqual(after.positions, [], "the entry was evicted for the request")
        }
    }
}
