import ChunkWise
import CWServer
import CWTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest

/// Adapter selection, weighted combinations, load/unload (and its sandbox), continuous batching
/// and cancellation.
final class AdapterAndBatchingTests: XCTestCase {
    func testAdapterSelectionAndCombinationEqualEngine() async throws {
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        let rnd = try Fixture.adapterPath("stories260K-random-r8")
        let one = try await Fixture.engine(adapters: [AdapterSpec(path: shakes)]).complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 20))
        let mix = try await Fixture.engine(adapters: [AdapterSpec(path: shakes, weight: 0.5), AdapterSpec(path: rnd, weight: 0.25)])
            .complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 20))
        let base = try await Fixture.engine().complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 20))
        XCTAssertNotEqual(one.text, base.text, "the adapter should change the output")
        let state = try await Fixture.state { $0.adapters = [(name: "shakespeare", path: shakes), (name: "rnd", path: rnd)] }
        try await Fixture.app(state).test(.router) { client in
            let a = try await client.post("/v1/completions", #"{"model": "shakespeare", "prompt": "Once upon a time", "max_tokens": 20}"#)
            XCTAssertEqual(a.status, .ok, a.text)
            XCTAssertEqual(try a.choiceText(), one.text)
            XCTAssertEqual(try a.object()["model"] as? String, "shakespeare")
            let b = try await client.post("/v1/completions",
                                          #"{"model": "stories", "prompt": "Once upon a time", "max_tokens": 20, "lora": [{"name": "shakespeare", "scale": 0.5}, {"name": "rnd", "scale": 0.25}]}"#)
            XCTAssertEqual(b.status, .ok, b.text)
            XCTAssertEqual(try b.choiceText(), mix.text)
            let c = try await client.post("/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 20}"#)
            XCTAssertEqual(try c.choiceText(), base.text)
        }
    }

    /// ChunkWise policies per request: the server's greedy output equals the engine's with the
    /// same policy, also when requests with different policies share decode steps.
    func testChunkWisePoliciesPerRequestEqualEngine() async throws {
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        var collected: [String: String] = [:]
        for p in ["balanced", "static:4", "static"] {
            let e = try Engine(modelPath: try Fixture.storiesPath(),
                               options: EngineOptions(precision: .exact, threads: 2, adapters: [AdapterSpec(path: shakes)], policy: p))
            collected[p] = try await e.complete(GenerationRequest(prompt: .text("ROMEO:"), maxTokens: 24)).text
        }
        let expected = collected
        XCTAssertNotEqual(expected["static:4"], expected["static"], "rank 4 should change the greedy text")
        let state = try await Fixture.state { $0.adapters = [(name: "shakespeare", path: shakes)] }
        try await Fixture.app(state).test(.router) { client in
            try await withThrowingTaskGroup(of: (String, String).self) { group in
                for p in ["balanced", "static:4", "static"] {
                    group.addTask {
                        let r = try await client.post("/v1/completions",
                            #"{"model": "shakespeare", "prompt": "ROMEO:", "max_tokens": 24, "chunkwise": {"policy": "\#(p)"}}"#)
                        XCTAssertEqual(r.status, .ok, r.text)
                        return (p, try r.choiceText())
                    }
                }
                for try await (p, text) in group { XCTAssertEqual(text, expected[p], "policy \(p)") }
            }
            let metrics = try await client.execute(uri: "/metrics", method: .get)
            XCTAssertTrue(metrics.text.contains("chunkwise:chunk_rank"), "the chunk-rank histogram is exported")
        }
    }

    /// A temporary adapter directory holding a copy of the random adapter and a symlink that
    /// points outside it.
    func makeAdapterDir() throws -> URL {
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cw-adapters-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        try FileManager.default.copyItem(atPath: try Fixture.adapterPath("stories260K-random-r8"), toPath: dir.appendingPathComponent("rnd").path)
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("escape").path,
                                                   withDestinationPath: try Fixture.adapterPath("stories260K-shakespeare-r16"))
        try FileManager.default.createSymbolicLink(atPath: dir.appendingPathComponent("inside").path, withDestinationPath: dir.appendingPathComponent("rnd").path)
        return dir
    }

    func testLoadUnloadAndSandbox() async throws {
        let dir = try makeAdapterDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = try await Fixture.state { $0.adapterDir = dir.path }
        let expected = try await Fixture.engine(adapters: [AdapterSpec(path: try Fixture.adapterPath("stories260K-random-r8"))])
            .complete(GenerationRequest(prompt: .text("Once"), maxTokens: 8))
        try await Fixture.app(state).test(.router) { client in
            let load = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "r", "lora_path": "rnd"}"#)
            XCTAssertEqual(load.status, .ok, load.text)
            let models = try await client.execute(uri: "/v1/models", method: .get)
            XCTAssertEqual((try models.object()["data"] as? [[String: Any]])?.map { $0["id"] as? String }, ["stories", "r"])
            let gen = try await client.post("/v1/completions", #"{"model": "r", "prompt": "Once", "max_tokens": 8}"#)
            XCTAssertEqual(try gen.choiceText(), expected.text)
            // A symlink that stays inside the directory is fine, by absolute path too.
            let viaLink = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "r2", "lora_path": \#(jsonString(dir.appendingPathComponent("inside").path))}"#)
            XCTAssertEqual(viaLink.status, .ok, viaLink.text)

            let dup = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "r", "lora_path": "rnd"}"#)
            XCTAssertEqual(dup.status, .badRequest)
            XCTAssertEqual(try dup.error()["code"] as? String, "adapter_exists")
            let traversal = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "x", "lora_path": "../../etc"}"#)
            XCTAssertEqual(traversal.status, .badRequest)
            XCTAssertEqual(try traversal.error()["code"] as? String, "invalid_path")
            let absolute = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "x", "lora_path": "/etc"}"#)
            XCTAssertEqual(absolute.status, .forbidden)
            let escape = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "x", "lora_path": "escape"}"#)
            XCTAssertEqual(escape.status, .forbidden, escape.text)
            let missing = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "x", "lora_path": "nothing-here"}"#)
            XCTAssertEqual(missing.status, .notFound)
            let noName = try await client.post("/v1/load_lora_adapter", #"{"lora_path": "rnd"}"#)
            XCTAssertEqual(try noName.error()["param"] as? String, "lora_name")

            let unload = try await client.post("/v1/unload_lora_adapter", #"{"lora_name": "r"}"#)
            XCTAssertEqual(unload.status, .ok)
            let again = try await client.post("/v1/unload_lora_adapter", #"{"lora_name": "r"}"#)
            XCTAssertEqual(again.status, .notFound)
            let gone = try await client.post("/v1/completions", #"{"model": "r", "prompt": "Once"}"#)
            XCTAssertEqual(gone.status, .notFound)
        }
    }

    func testLoadingIsOffWithoutAdapterDir() async throws {
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            let r = try await client.post("/v1/load_lora_adapter", #"{"lora_name": "r", "lora_path": "rnd"}"#)
            XCTAssertEqual(r.status, .forbidden)
        }
    }

    /// In-flight requests finish on the adapter version they started with.
    func testUnloadDuringGenerationKeepsTheBinding() async throws {
        let dir = try makeAdapterDir()
        defer { try? FileManager.default.removeItem(at: dir) }
        let state = try await Fixture.state { $0.adapterDir = dir.path }
        try await state.registry.load(name: "r", requestedPath: "rnd")
        let expected = try await Fixture.engine(adapters: [AdapterSpec(path: try Fixture.adapterPath("stories260K-random-r8"))])
            .complete(GenerationRequest(prompt: .text("Once"), maxTokens: 200, stopAtEOS: false))
        try await Fixture.app(state).test(.router) { client in
            let long = Task { try await client.post("/v1/completions", #"{"model": "r", "prompt": "Once", "max_tokens": 200, "ignore_eos": true}"#) }
            for _ in 0..<500 where await state.scheduler.snapshot().running == 0 { try await Task.sleep(for: .milliseconds(2)) }
            let unload = try await client.post("/v1/unload_lora_adapter", #"{"lora_name": "r"}"#)
            XCTAssertEqual(unload.status, .ok)
            let r = try await long.value
            XCTAssertEqual(r.status, .ok)
            XCTAssertEqual(try r.choiceText(), expected.text)
        }
    }

    /// Concurrent requests (different prompts and adapters) share steps and give the same text
    /// as sequential ones.
    func testConcurrentRequestsEqualSequential() async throws {
        let shakes = try Fixture.adapterPath("stories260K-shakespeare-r16")
        let state = try await Fixture.state { $0.adapters = [(name: "shakespeare", path: shakes)] }
        let bodies = [
            #"{"prompt": "Once upon a time", "max_tokens": 40, "ignore_eos": true}"#,
            #"{"model": "shakespeare", "prompt": "The little dog", "max_tokens": 30, "ignore_eos": true}"#,
            #"{"prompt": "Lily and Tom went", "max_tokens": 35, "temperature": 0.7, "seed": 3, "ignore_eos": true}"#,
        ]
        try await Fixture.app(state).test(.router) { client in
            var sequential: [String] = []
            for b in bodies { sequential.append(try await client.post("/v1/completions", b).choiceText()) }
            let stepsBefore = await state.scheduler.steps
            let concurrent = try await withThrowingTaskGroup(of: (Int, String).self) { group in
                for (i, b) in bodies.enumerated() { group.addTask { (i, try await client.post("/v1/completions", b).choiceText()) } }
                var out = [String](repeating: "", count: bodies.count)
                for try await (i, t) in group { out[i] = t }
                return out
            }
            XCTAssertEqual(concurrent, sequential)
            let steps = await state.scheduler.steps - stepsBefore
            let peak = await state.scheduler.peakBatch
            XCTAssertGreaterThanOrEqual(peak, 2, "requests should have shared a step")
            XCTAssertLessThan(steps, 40 + 30 + 35, "batched steps should be fewer than the sum of tokens")
        }
    }

    /// A consumer that goes away frees its slot and KV cache at the next step.
    func testCancellationFreesTheSlot() async throws {
        let state = try await Fixture.state()
        let prompt = state.loaded.tokenizer.encode("Once")
        let (id, events) = try await state.scheduler.submit(SequenceRequest(prompt: prompt, maxTokens: 400, stopAtEOS: false))
        var got = 0
        for await e in events {
            if case .token = e { got += 1 }
            if got == 3 { break }
        }
        let during = await state.scheduler.snapshot()
        XCTAssertEqual(during.running, 1)
        XCTAssertGreaterThan(during.kvBytes, 0)
        await state.scheduler.cancel(id)
        var after = await state.scheduler.snapshot()
        for _ in 0..<500 where after.running > 0 {
            try await Task.sleep(for: .milliseconds(2))
            after = await state.scheduler.snapshot()
        }
        XCTAssertEqual(after.running, 0)
        XCTAssertEqual(after.kvBytes, 0)
        // A streaming consumer task that is cancelled cancels its sequence too.
        let (_, events2) = try await state.scheduler.submit(SequenceRequest(prompt: prompt, maxTokens: 400, stopAtEOS: false))
        let consumer = Task { for await _ in events2 {} }
        try await Task.sleep(for: .milliseconds(20))
        consumer.cancel()
        after = await state.scheduler.snapshot()
        for _ in 0..<500 where after.running > 0 {
            try await Task.sleep(for: .milliseconds(2))
            after = await state.scheduler.snapshot()
        }
        XCTAssertEqual(after.running, 0)
    }
}
