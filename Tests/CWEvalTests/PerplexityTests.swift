import ChunkWise
@testable import CWEval
import CWTestSupport
import Foundation
import XCTest

final class PerplexityTests: XCTestCase {
    func testWindowPlansFollowTheHFGuide() throws {
        // Non-overlapping: 511 scored per full window; the last partial window scores what it has.
        let p = try Perplexity.plan(streamCount: 1100, config: .init(context: 512))
        XCTAssertEqual(p.map(\.begin), [0, 512, 1024])
        XCTAssertEqual(p.map(\.end), [512, 1024, 1100])
        XCTAssertEqual(p.map(\.scored), [511, 511, 75])
        // Sliding (stride 256): the first window scores 511 tokens, later ones their last 256.
        let s = try Perplexity.plan(streamCount: 1100, config: .init(context: 512, stride: 256))
        XCTAssertEqual(s.map(\.begin), [0, 256, 512, 768])
        XCTAssertEqual(s.map(\.end), [512, 768, 1024, 1100])
        XCTAssertEqual(s.map(\.firstScored), [1, 512, 768, 1024])
        XCTAssertEqual(s.reduce(0) { $0 + $1.scored }, 1099) // every token but the first, once
        // BOS: BOS + 255 stream tokens, all 255 scored.
        let b = try Perplexity.plan(streamCount: 600, config: .init(context: 256, maxWindows: 2, bos: true))
        XCTAssertEqual(b.map(\.begin), [0, 255])
        XCTAssertEqual(b.map(\.scored), [255, 255])
        XCTAssertThrowsError(try Perplexity.plan(streamCount: 10, config: .init(context: 512, stride: 0)))
        XCTAssertThrowsError(try Perplexity.plan(streamCount: 10, config: .init(context: 1)))
    }

    struct GoldenWindow { var ids: [Int]; var nll: Double; var count: Int }

    func goldenWindows() throws -> [GoldenWindow] {
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let ppl = try XCTUnwrap(g["perplexity"] as? [String: Any])
        let ws = try XCTUnwrap(ppl["windows"] as? [[String: Any]])
        return try ws.map { w in
            GoldenWindow(ids: try XCTUnwrap(w["ids"] as? [Int]), nll: try XCTUnwrap(w["nll_sum"] as? Double), count: try XCTUnwrap(w["count"] as? Int))
        }
    }

    /// Windows 0..3 of the golden, from the stored ids and from our tokenization of wiki.test.raw.
    func testSmolLM2WikitextWindowsMatchGolden() async throws {
        let model = try TestPaths.smolLM2Path()
        let golden = try goldenWindows()
        XCTAssertEqual(golden.count, 4)
        let engine = try Engine(modelPath: model, options: EngineOptions(precision: .exact, contextLength: 512))
        let stream = golden.flatMap(\.ids)
        XCTAssertEqual(stream.count, 2048)
        let cfg = Perplexity.Config(context: 512, maxWindows: 4)
        let r = try await Perplexity.evaluate(stream: stream, config: cfg, bosID: nil, vocab: engine.model.config.vocabSize,
                                              logits: { try await engine.logits(tokens: $0, mode: .all) })
        XCTAssertEqual(r.windows.count, 4)
        for (w, g) in zip(r.windows, golden) {
            XCTAssertEqual(w.count, g.count)
            XCTAssertEqual(w.nll_sum, g.nll, accuracy: 1e-3 * g.nll, "window \(w.index)")
        }
        XCTAssertEqual(r.tokens_scored, 2044)

        // Our tokenization of the whole file gives the same ids, so the same windows.
        let text = try String(contentsOfFile: try TestPaths.sharedFile("data/wikitext-2/wiki.test.raw"), encoding: .utf8)
        let ids = engine.tokenize(text, addSpecialTokens: false, parseSpecial: true)
        XCTAssertEqual(Array(ids.prefix(2048)), stream)
        // The prefix tokenization used when only the first windows are needed gives the same ids.
        XCTAssertEqual(Perplexity.streamTokens(engine: engine, text: text, config: Perplexity.Config(context: 512, maxWindows: 4)), stream)
    }
}
