import ChunkWise
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// The engine end to end on stories260K (llama2.c + tok512.bin): generation, sampling, stop
/// strings, streaming, cancellation and the bad-input errors users will hit.
final class EngineTests: XCTestCase {
    func storiesEngine(context: Int? = nil, precision: Precision = .exact) throws -> Engine {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        return try Engine(modelPath: bin, options: EngineOptions(precision: precision, threads: 2, contextLength: context))
    }

    func testGreedyGenerationMatchesGolden() async throws {
        let engine = try storiesEngine()
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        for p in prompts where (p["text"] as? String)?.isEmpty == false {
            let text = p["text"] as! String
            let base = (p["variants"] as! [String: Any])["base"] as! [String: Any]
            XCTAssertEqual(engine.tokenize(text), p["ids"] as! [Int], "prompt ids")
            let r = try await engine.complete(GenerationRequest(prompt: .text(text), maxTokens: 32, stopAtEOS: false))
            XCTAssertEqual(r.tokens, base["greedy_ids"] as! [Int])
            XCTAssertEqual(r.text, base["greedy_text"] as! String)
            XCTAssertEqual(r.stats.promptTokens, (p["ids"] as! [Int]).count)
            XCTAssertEqual(r.stats.generatedTokens, 32)
            XCTAssertEqual(r.stats.finishReason, .length)
        }
    }

    func testStreamingEqualsComplete() async throws {
        let engine = try storiesEngine()
        let req = GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 40,
                                    sampling: SamplingParameters(temperature: 0.8, topK: 40, topP: 0.95, seed: 7))
        let whole = try await engine.complete(req)
        var streamed = ""
        var final: String? = nil
        for try await e in engine.generate(req) {
            switch e {
            case .token(_, let t), .text(let t): streamed += t
            case .finished(let t, _, _): final = t
            }
        }
        XCTAssertEqual(streamed, whole.text)
        XCTAssertEqual(final, whole.text)
    }

    func testSeedMakesSamplingReproducible() async throws {
        let engine = try storiesEngine()
        func run(_ seed: UInt64) async throws -> [Int] {
            try await engine.complete(GenerationRequest(prompt: .text("Lily"), maxTokens: 30,
                                                        sampling: SamplingParameters(temperature: 1.0, seed: seed), stopAtEOS: false)).tokens
        }
        let a = try await run(1), b = try await run(1), c = try await run(2)
        XCTAssertEqual(a, b)
        XCTAssertNotEqual(a, c)
    }

    func testStopStringEndsGenerationAndIsNotReturned() async throws {
        let engine = try storiesEngine()
        // Greedy "Once upon a time" continues ", there was a little girl named Lily. ..."
        let r = try await engine.complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 32, stopStrings: ["Lily"]))
        XCTAssertEqual(r.text, ", there was a little girl named ")
        XCTAssertEqual(r.stats.finishReason, .stop)
    }

    func testCancellationStopsTheStream() async throws {
        let engine = try storiesEngine()
        let stream = engine.generate(GenerationRequest(prompt: .text("Once"), maxTokens: 400, stopAtEOS: false))
        var count = 0
        for try await e in stream {
            if case .token = e { count += 1 }
            if count == 3 { break }
        }
        XCTAssertEqual(count, 3)
        // The engine is free again right after.
        let r = try await engine.complete(GenerationRequest(prompt: .text("Once"), maxTokens: 2))
        XCTAssertEqual(r.tokens.count, 2)
    }

    func testPromptLongerThanContextIsAClearError() async throws {
        let engine = try storiesEngine(context: 8)
        do {
            _ = try await engine.complete(GenerationRequest(prompt: .text("Once upon a time there was a little girl named Lily"), maxTokens: 4))
            XCTFail("expected a context overflow")
        } catch let e as InferenceError {
            guard case .contextOverflow(let needed, let limit) = e else { return XCTFail("\(e)") }
            XCTAssertEqual(limit, 8)
            XCTAssertGreaterThan(needed, 8)
            XCTAssertTrue(e.description.contains("context holds 8"), e.description)
        }
    }

    func testGenerationStopsAtTheContextLimit() async throws {
        let engine = try storiesEngine(context: 10)
        let r = try await engine.complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 50, stopAtEOS: false))
        XCTAssertEqual(r.stats.promptTokens + r.stats.generatedTokens, 10 + 1, "the last token needs no KV slot")
        XCTAssertEqual(r.stats.finishReason, .length)
    }

    func testEmptyPromptIsAClearError() async throws {
        // SmolLM2 adds no BOS, so an empty prompt has no tokens at all.
        let engine = try Engine(modelPath: TestPaths.smolLM2Path(), options: EngineOptions(threads: 2))
        do {
            _ = try await engine.complete(GenerationRequest(prompt: .text(""), maxTokens: 4))
            XCTFail("expected an error")
        } catch let e as InferenceError {
            XCTAssertEqual(e, .emptyInput)
            XCTAssertTrue(e.description.contains("empty"))
        }
    }

    func testInvalidUTF8PromptFileIsAClearError() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("bad-\(UUID()).txt")
        try Data([0x48, 0x69, 0x20, 0xC3, 0x28, 0x21]).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try PromptInput.readUTF8File(url.path)) { e in
            let msg = String(describing: e)
            XCTAssertTrue(msg.contains(url.path) && msg.contains("invalid UTF-8 at byte 3"), msg)
        }
        XCTAssertEqual(PromptInput.firstInvalidUTF8Offset(Array("héllo ✓ 😀".utf8)), nil)
        XCTAssertEqual(PromptInput.firstInvalidUTF8Offset([0xF0, 0x9F, 0x98]), 0, "truncated sequence")
        XCTAssertEqual(PromptInput.firstInvalidUTF8Offset([0x41, 0xED, 0xA0, 0x80]), 1, "surrogate")
        XCTAssertEqual(PromptInput.firstInvalidUTF8Offset([0xC0, 0x80]), 0, "overlong")
    }

    func testMissingAndUnrecognizedModelFiles() throws {
        XCTAssertThrowsError(try ModelLoader.load(path: "/nonexistent/model.gguf")) { e in
            XCTAssertTrue(String(describing: e).contains("/nonexistent/model.gguf"))
        }
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("junk-\(UUID()).gguf")
        try Data("NOPE and more bytes".utf8).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try ModelLoader.load(path: url.path)) { e in
            XCTAssertTrue(String(describing: e).contains("not a GGUF file"), String(describing: e))
        }
    }

    func testTokenOutOfRangeIsAnError() async throws {
        let engine = try storiesEngine()
        do {
            _ = try await engine.logits(tokens: [1, 9999])
            XCTFail("expected an error")
        } catch let e as InferenceError {
            XCTAssertEqual(e, .tokenOutOfRange(id: 9999, vocabularySize: 512))
        }
    }
}

/// The sampler on its own.
final class SamplerTests: XCTestCase {
    func testGreedyIsArgmaxWithFirstTieWins() {
        var s = Sampler(.greedy)
        XCTAssertEqual(s.sample([0, 3, 3, 1], history: []), 1)
    }

    func testTopKOneIsGreedy() {
        var s = Sampler(SamplingParameters(temperature: 1.5, topK: 1, seed: 3))
        for _ in 0..<20 { XCTAssertEqual(s.sample([0.1, 2, 1.9, -1], history: []), 1) }
    }

    func testMinPAndTopPCutTheTail() {
        var s = Sampler(SamplingParameters(temperature: 1, minP: 0.5, seed: 1))
        // p ∝ e^[5, 4.5, 0, 0]: only the first two survive min-p 0.5.
        for _ in 0..<200 { XCTAssertTrue([0, 1].contains(s.sample([5, 4.5, 0, 0], history: []))) }
        var t = Sampler(SamplingParameters(temperature: 1, topP: 0.5, seed: 1))
        for _ in 0..<200 { XCTAssertEqual(t.sample([5, 3, 0, 0], history: []), 0) }
    }

    func testSamplingFollowsTheDistribution() {
        var s = Sampler(SamplingParameters(temperature: 1, seed: 42))
        let logits: [Float] = [log(0.5), log(0.3), log(0.2)]
        var counts = [0, 0, 0]
        for _ in 0..<20000 { counts[s.sample(logits, history: [])] += 1 }
        XCTAssertEqual(Double(counts[0]) / 20000, 0.5, accuracy: 0.02)
        XCTAssertEqual(Double(counts[1]) / 20000, 0.3, accuracy: 0.02)
        XCTAssertEqual(Double(counts[2]) / 20000, 0.2, accuracy: 0.02)
    }

    /// The partial-sort walk picks exactly the token a full sort of the vocabulary picks (token order
    /// when nothing is cut), for
    /// peaked, flat and tied distributions and every cut, on a 49,152-token vocabulary.
    func testPartialSortEqualsFullSort() {
        func reference(_ logits: [Float], _ sorted: [Int], _ p: SamplingParameters, _ unit: Double) -> Int {
            let noCut = p.topK == 0 && p.minP == 0 && p.topP == 1
            var idx = noCut ? Array(0..<logits.count) : sorted
            if p.topK > 0 && p.topK < idx.count { idx = Array(idx.prefix(p.topK)) }
            let m = logits.max()!
            let w = idx.map { Double(expf((logits[$0] - m) / p.temperature)) }
            var keep = w.count
            if p.minP > 0 { keep = max(1, w.prefix { $0 >= Double(p.minP) * w[0] }.count) }
            if p.topP < 1 {
                let total = w.reduce(0, +)
                var acc = 0.0, k = 0
                while k < keep { acc += w[k]; k += 1; if acc >= Double(p.topP) * total { break } }
                keep = max(1, k)
            }
            let kept = w.prefix(keep).reduce(0, +)
            let r = unit * kept
            var acc = 0.0
            for i in 0..<keep { acc += w[i]; if r < acc { return idx[i] } }
            return idx[keep - 1]
        }
        var rng = Xoshiro256(seed: 9)
        let n = 49152
        for trial in 0..<24 {
            let spread = [0.5, 3, 10, 40][trial % 4]
            var logits = (0..<n).map { _ in Float((rng.nextUnit() - 0.5) * spread) }
            if trial % 5 == 0 { for i in stride(from: 0, to: n, by: 7) { logits[i] = 1 } }  // many ties
            if trial % 3 == 0 { logits[trial * 11] = Float(spread) }  // one clear winner
            let params = [SamplingParameters(temperature: 1), SamplingParameters(temperature: 0.7, topP: 0.9),
                          SamplingParameters(temperature: 1.3, topK: 40), SamplingParameters(temperature: 1, minP: 0.05),
                          SamplingParameters(temperature: 0.5, topK: 500, topP: 0.95, minP: 0.01), SamplingParameters(temperature: 2, topP: 0.999)]
            let sorted = (0..<n).sorted { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
            for p in params {
                for unit in [0.0, 0.3, 0.97, 0.999999] {
                    XCTAssertEqual(Sampler.pick(logits, p, unit: unit), reference(logits, sorted, p, unit), "trial \(trial) \(p) unit \(unit)")
                }
            }
        }
    }

    func testRepetitionPenalty() {
        var s = Sampler(SamplingParameters(repetitionPenalty: 2))
        XCTAssertEqual(s.sample([3, 2, 0], history: [0]), 1, "3/2 < 2")
        XCTAssertEqual(s.sample([-1, -1.5, -3], history: [0]), 1, "-1×2 < -1.5")
    }

    func testInvalidParametersAreNamed() {
        XCTAssertThrowsError(try SamplingParameters(temperature: -1).validate()) { XCTAssertTrue("\($0)".contains("temperature")) }
        XCTAssertThrowsError(try SamplingParameters(topP: 0).validate()) { XCTAssertTrue("\($0)".contains("top-p")) }
        XCTAssertThrowsError(try SamplingParameters(minP: 1).validate()) { XCTAssertTrue("\($0)".contains("min-p")) }
    }
}


/// Adapters through the engine (unmerged and merged) against the PEFT goldens.
final class EngineAdapterTests: XCTestCase {
    func testStoriesWithAdapterMatchesPEFTGreedy() async throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let adapter = try TestPaths.sharedFile("adapters/stories260K-random-r8")
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let p = try XCTUnwrap((g["prompts"] as? [[String: Any]])?.first { ($0["text"] as? String) == "Once upon a time" })
        let variants = try XCTUnwrap(p["variants"] as? [String: Any])
        for (merge, variant) in [(false, "lora"), (true, "merged")] {
            let engine = try Engine(modelPath: bin, options: EngineOptions(precision: .exact, threads: 2,
                                                                           adapters: [AdapterSpec(path: adapter)], mergeAdapters: merge))
            let expected = try XCTUnwrap((variants[variant] as? [String: Any])?["greedy_ids"] as? [Int])
            let r = try await engine.complete(GenerationRequest(prompt: .text("Once upon a time"), maxTokens: 32, stopAtEOS: false))
            XCTAssertEqual(r.tokens, expected, "merge: \(merge)")
            let adapterBytes = engine.adapterByteCount
            XCTAssertGreaterThan(adapterBytes, 0)
        }
    }

    func testAdapterWeightZeroIsTheBaseModel() async throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let adapter = try TestPaths.sharedFile("adapters/stories260K-random-r8")
        let base = try Engine(modelPath: bin, options: EngineOptions(precision: .exact, threads: 2))
        let zero = try Engine(modelPath: bin, options: EngineOptions(precision: .exact, threads: 2, adapters: [AdapterSpec.parse(adapter + ":0")]))
        let a = try await base.logits(tokens: [1, 403, 407])
        let b = try await zero.logits(tokens: [1, 403, 407])
        XCTAssertEqual(a, b)
    }

    func testAdapterForAnotherModelIsRejected() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let adapter = try TestPaths.sharedFile("adapters/smollm2-wikitext-r16")
        XCTAssertThrowsError(try Engine(modelPath: bin, options: EngineOptions(adapters: [AdapterSpec(path: adapter)]))) { e in
            let m = String(describing: e)
            XCTAssertTrue(m.contains("lora") || m.contains("layer") || m.contains("hidden"), m)
        }
    }
}
