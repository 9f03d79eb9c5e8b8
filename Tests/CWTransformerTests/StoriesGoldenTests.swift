import CWFormats
import CWKernels
import CWTestSupport
import CWTransformer
import XCTest

/// stories260K against the HF transformers goldens (../shared/golden/stories260k), loaded both
/// from the llama2.c checkpoint (interleaved RoPE, original rows) and from the HF folder
/// (rotate_half RoPE, permuted rows). Tolerance from the golden's README: logits max |diff| ≤ 1e-4.
final class StoriesGoldenTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    func models() throws -> [(String, LlamaModel)] {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let hf = try TestPaths.sharedFile("models/stories260K-hf")
        return [("llama2.c", try LlamaModel(llama2c: Llama2cFile(path: bin))),
                ("HF", try LlamaModel(huggingFaceDirectory: hf))]
    }

    func testFoxPerplexity() throws {
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let fox = try XCTUnwrap(g["fox_perplexity"] as? [String: Any])
        let ids = try XCTUnwrap(fox["ids"] as? [Int])
        XCTAssertEqual(ids.count, 35)
        for (name, model) in try models() {
            let cache = model.makeCache()
            let logits = try model.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: pool, logits: .all))
            let v = model.config.vocabSize
            var nll = 0.0
            for j in 0..<(ids.count - 1) { nll += Compare.nll(logits[(j * v)..<((j + 1) * v)], target: ids[j + 1]) }
            let ppl = Foundation.exp(nll / Double(ids.count - 1))
            XCTAssertEqual(ppl, 4.953633, accuracy: 0.01, "\(name): fox perplexity")
            XCTAssertEqual(ppl, 4.953637, accuracy: 1e-4, "\(name): fox perplexity vs the HF golden (relative 1e-5)")
        }
    }

    func testLogitsAtEveryPositionAndGreedy() throws {
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        for (name, model) in try models() {
            let v = model.config.vocabSize
            for p in prompts {
                let ids = try XCTUnwrap(p["ids"] as? [Int])
                let base = try XCTUnwrap((p["variants"] as? [String: Any])?["base"] as? [String: Any])
                let golden = try TestPaths.floats("golden/stories260k/" + (base["logits_file"] as! String))
                let cache = model.makeCache()
                let logits = try model.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: pool, logits: .all))
                XCTAssertEqual(logits.count, golden.count)
                let diff = Compare.maxAbsDiff(logits[...], golden[...])
                XCTAssertLessThanOrEqual(diff, 1e-4, "\(name) '\(p["name"]!)': max |logit diff| \(diff)")

                // Greedy 32 tokens with the KV cache (single-token decode steps).
                let expected = try XCTUnwrap(base["greedy_ids"] as? [Int])
                var last = Array(logits[((ids.count - 1) * v)...])
                var out: [Int] = []
                for _ in 0..<expected.count {
                    let next = Compare.argmax(last[...])
                    out.append(next)
                    last = try model.forward([next], cache: cache, options: ForwardOptions(precision: .exact, pool: pool))
                }
                XCTAssertEqual(out, expected, "\(name) '\(p["name"]!)': greedy continuation")
            }
        }
    }
}
