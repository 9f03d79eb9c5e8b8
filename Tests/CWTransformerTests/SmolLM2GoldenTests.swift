import CWFormats
import CWKernels
import CWTestSupport
import CWTransformer
import XCTest

/// SmolLM2-135M-Instruct Q4_1 GGUF against HF transformers (../shared/golden/smollm2-logits),
/// in exact precision. Tolerances from the golden's README: final logits max |diff| ≤ 2e-3 and
/// relative L2 ≤ 1e-4, argmax exact; top-10 ids per position equal where adjacent logits differ
/// by > 1e-3; greedy continuations identical except after a step whose margin is < 1e-3;
/// perplexity per-window NLL sums within 1e-3 relative.
final class SmolLM2GoldenTests: XCTestCase {
    static let pool = ThreadPool(threads: ProcessInfo.processInfo.activeProcessorCount)
    nonisolated(unsafe) static var cached: LlamaModel?

    func model() throws -> LlamaModel {
        if let m = Self.cached { return m }
        let m = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        Self.cached = m
        return m
    }

    func goldens() throws -> [String: Any] { try TestPaths.json("golden/smollm2-logits/goldens.json") }

    func testConfigMatchesTransformers() throws {
        let c = try model().config
        XCTAssertEqual(c.layers, 30)
        XCTAssertEqual(c.hiddenSize, 576)
        XCTAssertEqual(c.intermediateSize, 1536)
        XCTAssertEqual(c.heads, 9)
        XCTAssertEqual(c.kvHeads, 3)
        XCTAssertEqual(c.headDim, 64)
        XCTAssertEqual(c.vocabSize, 49152)
        XCTAssertEqual(c.ropeTheta, 100000)
        XCTAssertEqual(c.ropeStyle, .interleaved)
        XCTAssertTrue(try model().weights.outputIsTied)
    }

    func testFinalLogitsTopTenAndGreedy() throws {
        let m = try model()
        let v = m.config.vocabSize
        let prompts = try XCTUnwrap(goldens()["prompts"] as? [[String: Any]])
        XCTAssertEqual(prompts.count, 6)
        for p in prompts {
            let name = p["name"] as! String
            let ids = try XCTUnwrap(p["ids"] as? [Int])
            let golden = try TestPaths.floats("golden/smollm2-logits/" + (p["final_logits_file"] as! String))
            let cache = m.makeCache()
            let all = try m.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: Self.pool, logits: .all))
            let last = all[((ids.count - 1) * v)...]
            let maxDiff = Compare.maxAbsDiff(last, golden[...])
            let rel = Compare.relativeL2(last, golden[...])
            XCTAssertLessThanOrEqual(maxDiff, 2e-3, "\(name): max |diff|")
            XCTAssertLessThanOrEqual(rel, 1e-4, "\(name): relative L2")
            XCTAssertEqual(Compare.argmax(last), Compare.argmax(golden[...]), "\(name): argmax")

            // Top-10 ids per position.
            let topIDs = try XCTUnwrap(p["top10_ids_per_position"] as? [[Int]])
            let topLogits = try XCTUnwrap(p["top10_logits_per_position"] as? [[Double]])
            for t in 0..<ids.count {
                let row = all[(t * v)..<((t + 1) * v)]
                let ours = row.indices.sorted { row[$0] > row[$1] }.prefix(10).map { $0 - t * v }
                let gl = topLogits[t]
                // Compare ids rank by rank where the golden's neighbours are separated by > 1e-3.
                for r in 0..<10 {
                    let sepBefore = r == 0 || gl[r - 1] - gl[r] > 1e-3
                    let sepAfter = r == 9 || gl[r] - gl[r + 1] > 1e-3
                    if sepBefore && sepAfter {
                        XCTAssertEqual(ours[r], topIDs[t][r], "\(name): position \(t) rank \(r)")
                    }
                    XCTAssertEqual(Double(row[row.startIndex + topIDs[t][r]]), gl[r], accuracy: 2e-3, "\(name): position \(t) logit of rank \(r)")
                }
            }

            // Greedy 24 tokens, decoded one token at a time through the KV cache.
            let greedy = try XCTUnwrap(p["greedy"] as? [String: Any])
            let expected = try XCTUnwrap(greedy["ids"] as? [Int])
            let steps = (greedy["steps"] as? [[String: Any]]) ?? []
            var logits = Array(last)
            var out: [Int] = []
            for i in 0..<expected.count {
                let next = Compare.argmax(logits[...])
                out.append(next)
                if next != expected[i] { break }
                logits = try m.forward([next], cache: cache, options: ForwardOptions(precision: .exact, pool: Self.pool))
            }
            let firstMismatch = zip(out, expected).enumerated().first { $0.element.0 != $0.element.1 }?.offset
            if let k = firstMismatch {
                let margin = (steps.count > k ? steps[k]["margin_top1_top2"] as? Double : nil) ?? 1
                XCTAssertLessThan(margin, 1e-3, "\(name): greedy diverges at step \(k) where the golden margin is \(margin)")
            }
        }
    }

    func testWikitextPerplexityWindows() throws {
        let m = try model()
        let v = m.config.vocabSize
        let ppl = try XCTUnwrap(goldens()["perplexity"] as? [String: Any])
        let windows = try XCTUnwrap(ppl["windows"] as? [[String: Any]])
        let perToken = try TestPaths.floats("golden/smollm2-logits/wikitext_ppl_windows0-3.per_token_nll.f32.bin")
        for (w, win) in windows.enumerated() {
            let ids = try XCTUnwrap(win["ids"] as? [Int])
            let goldenSum = try XCTUnwrap(win["nll_sum"] as? Double)
            let cache = m.makeCache()
            let logits = try m.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: Self.pool, logits: .all))
            var sum = 0.0
            var worst = 0.0
            for j in 0..<(ids.count - 1) {
                let nll = Compare.nll(logits[(j * v)..<((j + 1) * v)], target: ids[j + 1])
                sum += nll
                worst = max(worst, abs(nll - Double(perToken[w * 511 + j])))
            }
            XCTAssertEqual(sum, goldenSum, accuracy: goldenSum * 1e-3, "window \(w) NLL sum")
            XCTAssertLessThanOrEqual(worst, 1e-3, "window \(w): per-token NLL max |diff|")
        }
    }
}
