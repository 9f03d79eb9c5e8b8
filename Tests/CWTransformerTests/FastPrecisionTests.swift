import CWFormats
import CWKernels
import CWTestSupport
import CWTransformer
import XCTest

/// `fast` precision (int16 activations, integer dot products) against the HF goldens, with the
/// bounds the kernel issue sets: relative L2 of the final logits ≤ 1e-2, WikiText perplexity
/// within 0.3% of the golden, and greedy continuations (24 decode steps on the integer path)
/// that agree up to the first golden step whose top-1/top-2 margin is below 0.05.
///
/// (With the earlier int8 activations decode-step logits moved by up to ~0.9 absolute / ~10%
/// relative L2 from exact, and `capital`'s last step, margin 0.061, flipped; int16 activations
/// keep them within ~0.005 absolute.)
///
/// Fast mode uses integer products for every matmul of SmolLM2 Q4_1 (Q4_1 layers and the Q8_0
/// head), in prefill and decode, on x86.
final class FastPrecisionTests: XCTestCase {
    static let pool = ThreadPool(threads: ProcessInfo.processInfo.activeProcessorCount)
    static let greedyMargin = 0.05

    func model() throws -> LlamaModel { try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path())) }

    func testFinalLogitsAndGreedyWithinBounds() throws {
        let m = try model()
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        let opts = ForwardOptions(precision: .fast, pool: Self.pool)
        for p in prompts {
            let name = p["name"] as! String
            let ids = p["ids"] as! [Int]
            let golden = try TestPaths.floats("golden/smollm2-logits/" + (p["final_logits_file"] as! String))
            let cache = m.makeCache()
            var logits = try m.forward(ids, cache: cache, options: opts)
            let rel = Compare.relativeL2(logits[...], golden[...])
            XCTAssertLessThanOrEqual(rel, 1e-2, "\(name): relative L2 in fast mode")
            print("fast mode \(name): relative L2 \(rel), max |diff| \(Compare.maxAbsDiff(logits[...], golden[...]))")

            let greedy = p["greedy"] as! [String: Any]
            let expected = greedy["ids"] as! [Int]
            let steps = greedy["steps"] as! [[String: Any]]
            // Steps up to (and including) the first one whose golden margin is < 0.05 must agree.
            let firstClose = steps.firstIndex { ($0["margin_top1_top2"] as? Double ?? 1) < Self.greedyMargin } ?? expected.count
            for i in 0..<min(expected.count, firstClose + 1) where i < expected.count {
                let next = Compare.argmax(logits[...])
                if i < firstClose { XCTAssertEqual(next, expected[i], "\(name): greedy step \(i)") }
                if next != expected[i] { break }
                logits = try m.forward([next], cache: cache, options: opts)
            }
        }
    }

    /// The final-logits check above covers prefill; this one covers every decode step: along each prompt's golden greedy continuation
    /// (teacher-forced), every decode step's logits in fast mode stay within the 1e-2
    /// relative L2 of exact mode's (int8 activations were at up to ~0.1; int16 are at ~4e-4).
    func testDecodeStepLogitsMatchExactMode() throws {
        let m = try model()
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        let fast = ForwardOptions(precision: .fast, pool: Self.pool), exact = ForwardOptions(precision: .exact, pool: Self.pool)
        for p in prompts {
            let name = try XCTUnwrap(p["name"] as? String)
            let ids = try XCTUnwrap(p["ids"] as? [Int])
            let greedy = try XCTUnwrap(p["greedy"] as? [String: Any])
            let path = try XCTUnwrap(greedy["ids"] as? [Int]).prefix(12)
            let cf = m.makeCache(), ce = m.makeCache()
            _ = try m.forward(ids, cache: cf, options: fast)
            _ = try m.forward(ids, cache: ce, options: exact)
            var worst = 0.0, worstAbs: Float = 0
            for id in path {
                let lf = try m.forward([id], cache: cf, options: fast), le = try m.forward([id], cache: ce, options: exact)
                worst = max(worst, Compare.relativeL2(lf[...], le[...]))
                worstAbs = max(worstAbs, Compare.maxAbsDiff(lf[...], le[...]))
            }
            print("fast mode \(name): decode steps vs exact, worst relative L2 \(worst), max |diff| \(worstAbs)")
            XCTAssertLessThanOrEqual(worst, 1e-2, "\(name): decode-step logits in fast mode")
        }
    }

    func testWikitextPerplexityWithinPointThreePercent() throws {
        let m = try model()
        let v = m.config.vocabSize
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let ppl = try XCTUnwrap(g["perplexity"] as? [String: Any])
        let windows = try XCTUnwrap(ppl["windows"] as? [[String: Any]])
        var nll = 0.0, golden = 0.0, count = 0
        for win in windows {
            let ids = win["ids"] as! [Int]
            let logits = try m.forward(ids, cache: m.makeCache(), options: ForwardOptions(precision: .fast, pool: Self.pool, logits: .all))
            for j in 0..<(ids.count - 1) { nll += Compare.nll(logits[(j * v)..<((j + 1) * v)], target: ids[j + 1]) }
            count += ids.count - 1
            golden += win["nll_sum"] as! Double
        }
        let ours = Foundation.exp(nll / Double(count)), ref = Foundation.exp(golden / Double(count))
        print("fast mode WikiText perplexity \(ours) vs golden \(ref) (\(100 * (ours / ref - 1))%)")
        XCTAssertEqual(ours, ref, accuracy: ref * 0.003)
    }
}
