import CWFormats
import CWKernels
import CWLoRA
import CWTestSupport
import CWTransformer
import XCTest

/// stories260K with the random r8 PEFT adapter against PEFT (../shared/golden/stories260k), on the
/// llama2.c checkpoint (interleaved rows: q/k lora_B permuted at binding) and the HF folder.
/// Tolerance: logits max |diff| ≤ 1e-4 at every position, greedy ids exact, fox PPL relative 1e-5.
final class StoriesLoRAGoldenTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    static func models() throws -> [(String, LlamaModel)] {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let hf = try TestPaths.sharedFile("models/stories260K-hf")
        return [("llama2.c", try LlamaModel(llama2c: Llama2cFile(path: bin))),
                ("HF", try LlamaModel(huggingFaceDirectory: hf))]
    }

    static func adapter() throws -> LoRAAdapter {
        try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-random-r8"))
    }

    /// Logits at every position plus 32 greedy ids through the KV cache.
    static func run(_ model: LlamaModel, _ ids: [Int], delta: ProjectionDelta?, steps: Int, pool: ThreadPool) throws -> (logits: [Float], greedy: [Int]) {
        let cache = model.makeCache()
        let logits = try model.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: pool, logits: .all), delta: delta)
        let v = model.config.vocabSize
        var last = Array(logits[((ids.count - 1) * v)...])
        var out: [Int] = []
        for _ in 0..<steps {
            let next = Compare.argmax(last[...])
            out.append(next)
            last = try model.forward([next], cache: cache, options: ForwardOptions(precision: .exact, pool: pool), delta: delta)
        }
        return (logits, out)
    }

    func testLoRAAndMergedLogitsAndGreedy() throws {
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        let adapter = try Self.adapter()
        XCTAssertEqual(adapter.modules.count, 35)
        XCTAssertTrue(adapter.modules.allSatisfy { $0.rank == 8 && $0.scale == 2 })
        for (name, model) in try Self.models() {
            let stack = try LoRAStack(model: model, adapter: adapter)
            let merged = try LoRAStack.merged(model: model, adapters: [AdapterBinding(adapter)])
            for p in prompts {
                let ids = try XCTUnwrap(p["ids"] as? [Int])
                let variants = try XCTUnwrap(p["variants"] as? [String: Any])
                for variant in ["lora", "merged"] {
                    let vg = try XCTUnwrap(variants[variant] as? [String: Any])
                    let golden = try TestPaths.floats("golden/stories260k/" + (vg["logits_file"] as! String))
                    let expected = try XCTUnwrap(vg["greedy_ids"] as? [Int])
                    let label = "\(name) '\(p["name"]!)' \(variant)"
                    // Both our paths against both PEFT variants (they differ by ~2e-5).
                    for (path, m, d) in [("unmerged", model, stack as ProjectionDelta?), ("merged", merged.model, nil)] {
                        let r = try Self.run(m, ids, delta: d, steps: expected.count, pool: pool)
                        XCTAssertEqual(r.logits.count, golden.count)
                        let diff = Compare.maxAbsDiff(r.logits[...], golden[...])
                        print("[stories \(label) via \(path)] max|diff| \(diff)")
                        XCTAssertLessThanOrEqual(diff, 1e-4, "\(label) via \(path): max |logit diff|")
                        XCTAssertEqual(r.greedy, expected, "\(label) via \(path): greedy ids")
                    }
                }
            }
        }
    }

    func testFoxPerplexityWithAdapter() throws {
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let fox = try XCTUnwrap(g["fox_perplexity"] as? [String: Any])
        let ids = try XCTUnwrap(fox["ids"] as? [Int])
        let golden = try XCTUnwrap((fox["lora"] as? [String: Any])?["perplexity"] as? Double)
        let adapter = try Self.adapter()
        for (name, model) in try Self.models() {
            let stack = try LoRAStack(model: model, adapter: adapter)
            let logits = try model.forward(ids, cache: model.makeCache(), options: ForwardOptions(precision: .exact, pool: pool, logits: .all), delta: stack)
            let v = model.config.vocabSize
            var nll = 0.0
            for j in 0..<(ids.count - 1) { nll += Compare.nll(logits[(j * v)..<((j + 1) * v)], target: ids[j + 1]) }
            let ppl = Foundation.exp(nll / Double(ids.count - 1))
            print("[stories \(name)] fox PPL with LoRA \(ppl) (golden \(golden))")
            XCTAssertEqual(ppl, golden, accuracy: golden * 1e-5, "\(name): fox perplexity with the adapter")
        }
    }
}
