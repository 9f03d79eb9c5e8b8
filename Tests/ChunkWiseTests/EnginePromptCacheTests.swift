import ChunkWise
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// The engine's prompt cache (`EngineOptions.promptCache`): questions on one passage take the
/// passage's whole KV blocks from the request before and answer exactly as without the cache —
/// SmolLM2 Q4_1, `fast` precision, base model and a static LoRA adapter.
final class EnginePromptCacheTests: XCTestCase {
    func testQuestionsOnOnePassageAnswerAsWithoutTheCache() async throws {
        let model = try TestPaths.smolLM2Path()
        let adapter = try TestPaths.sharedFile("adapters/smollm2-wikitext-r16")
        let passage = String(try String(contentsOfFile: try TestPaths.sharedFile("data/wikitext-2/wiki.test.raw"), encoding: .utf8).prefix(700))
        let questions = ["\nIn short,", "\nThe main point", "\nQ: Who", "\nQ: When was"]
        for adapters in [[], [AdapterSpec(path: adapter)]] {
            var on = EngineOptions(precision: .fast, threads: 2, adapters: adapters)
            var off = on
            on.promptCache = true
            off.promptCache = false
            let cached = try Engine(modelPath: model, options: on), plain = try Engine(modelPath: model, options: off)
            var taken: [Int] = []
            for q in questions {
                let req = GenerationRequest(prompt: .text(passage + q), maxTokens: 12, stopAtEOS: false)
                let a = try await cached.complete(req), b = try await plain.complete(req)
                XCTAssertEqual(a.tokens, b.tokens, "adapters \(adapters.count): \(q)")
                XCTAssertEqual(b.stats.cachedPromptTokens, 0)
                taken.append(a.stats.cachedPromptTokens)
            }
            XCTAssertEqual(taken.first, 0, "the first request computes its whole prompt")
            XCTAssertTrue(taken.dropFirst().allSatisfy { $0 > 0 && $0 % 32 == 0 }, "\(taken)")
        }
    }
}
