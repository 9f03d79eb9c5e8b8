import CWFormats
import CWKernels
import CWLoRA
import CWTestSupport
import CWTransformer
import XCTest

/// PEFT adapters a (r16 all-linear, float16) and b (r8 rsLoRA q/v with rank/alpha patterns) on the
/// SmolLM2 Q4_1 GGUF against PEFT (../shared/golden/smollm2-lora), exact precision. Tolerances from
/// the golden's README: final logits max |diff| ≤ 2e-3, relative L2 ≤ 1e-4, argmax equal; greedy
/// 24 tokens identical except after a step whose golden margin is < 1e-3.
final class SmolLM2LoRAGoldenTests: XCTestCase {
    static let pool = ThreadPool(threads: ProcessInfo.processInfo.activeProcessorCount)
    nonisolated(unsafe) static var cachedModel: LlamaModel?

    static func model() throws -> LlamaModel {
        if let m = cachedModel { return m }
        let m = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        cachedModel = m
        return m
    }

    static let adapterDirs = ["a": "golden/smollm2-lora/adapter-a-r16-all-linear", "b": "golden/smollm2-lora/adapter-b-r8-rslora-qv-patterns"]

    func goldens() throws -> [String: Any] { try TestPaths.json("golden/smollm2-lora/goldens.json") }

    func adapterGolden(_ key: String) throws -> [String: Any] {
        try XCTUnwrap((goldens()["adapters"] as? [String: Any])?[key] as? [String: Any])
    }

    func testParsedRanksAndScalingsMatchPEFT() throws {
        for key in ["a", "b"] {
            let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile(Self.adapterDirs[key]!))
            XCTAssertEqual(adapter.format, .peft)
            let sample = try XCTUnwrap(adapterGolden(key)["effective_scalings_sample"] as? [String: [String: Any]])
            XCTAssertFalse(sample.isEmpty)
            for (name, v) in sample {
                let m = try XCTUnwrap(adapter.module(named: name), "\(key): module \(name)")
                XCTAssertEqual(m.rank, v["r"] as? Int, "\(key) \(name): r")
                XCTAssertEqual(m.scale, try XCTUnwrap(v["scaling"] as? Double), accuracy: 1e-12, "\(key) \(name): scaling")
            }
            XCTAssertEqual(adapter.modules.count, key == "a" ? 210 : 60)
        }
        // Adapter a is stored as float16: its values widen exactly (every value is an fp16 value).
        let a = try LoRAAdapter.load(path: TestPaths.sharedFile(Self.adapterDirs["a"]!))
        let m = try XCTUnwrap(a.module(named: "model.layers.0.mlp.down_proj"))
        XCTAssertEqual(m.a.count, 16 * 1536)
        XCTAssertTrue(m.a.allSatisfy { Float(Float16($0)) == $0 })
    }

    /// Runs a prompt and 24 greedy steps with the KV cache; checks logits and ids against a variant.
    func check(model: LlamaModel, delta: ProjectionDelta?, variant: [String: Any], ids: [Int], label: String,
               golden: [Float]) throws {
        let cache = model.makeCache()
        let logits = try model.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: Self.pool), delta: delta)
        let maxDiff = Compare.maxAbsDiff(logits[...], golden[...])
        let rel = Compare.relativeL2(logits[...], golden[...])
        print("[\(label)] final logits max|diff| \(maxDiff) relL2 \(rel)")
        XCTAssertLessThanOrEqual(maxDiff, 2e-3, "\(label): max |diff|")
        XCTAssertLessThanOrEqual(rel, 1e-4, "\(label): relative L2")
        XCTAssertEqual(Compare.argmax(logits[...]), variant["argmax"] as? Int, "\(label): argmax")

        let expected = try XCTUnwrap(variant["greedy_ids"] as? [Int])
        let margins = (variant["greedy_margins"] as? [Double]) ?? []
        var last = logits
        var out: [Int] = []
        for i in 0..<expected.count {
            let next = Compare.argmax(last[...])
            out.append(next)
            if next != expected[i] { break }
            last = try model.forward([next], cache: cache, options: ForwardOptions(precision: .exact, pool: Self.pool), delta: delta)
        }
        if let k = zip(out, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            let margin = k < margins.count ? margins[k] : 1
            XCTAssertLessThan(margin, 1e-3, "\(label): greedy diverges at step \(k) where the golden margin is \(margin)")
        }
    }

    func runAdapter(_ key: String) throws {
        let model = try Self.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile(Self.adapterDirs[key]!))
        let stack = try LoRAStack(model: model, adapter: adapter)
        let g = try adapterGolden(key)
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        XCTAssertEqual(prompts.count, 3)
        let merged = try LoRAStack.merged(model: model, adapters: [AdapterBinding(adapter)])
        print("[\(key)] merged: \(merged.touched.count) matrices as fp32, \(merged.extraBytes) extra bytes")
        for p in prompts {
            let name = try XCTUnwrap(p["name"] as? String)
            let ids = try XCTUnwrap(p["ids"] as? [Int])
            for variant in ["unmerged", "merged"] {
                let v = try XCTUnwrap(p[variant] as? [String: Any])
                let golden = try TestPaths.floats("golden/smollm2-lora/" + (v["final_logits_file"] as! String))
                if variant == "unmerged" {
                    try check(model: model, delta: stack, variant: v, ids: ids, label: "\(key).\(name).unmerged", golden: golden)
                } else {
                    try check(model: merged.model, delta: nil, variant: v, ids: ids, label: "\(key).\(name).merged", golden: golden)
                }
            }
        }
    }

    func testAdapterA() throws { try runAdapter("a") }

    /// Adapter a was saved in float16, so fp16 factor storage (what `--precision fast` binds) loses
    /// nothing: logits are bit-identical to fp32 storage, decode and prefill.
    func testF16FactorStorageIsLosslessForAFloat16Adapter() throws {
        let model = try Self.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile(Self.adapterDirs["a"]!))
        let s32 = try LoRAStack(model: model, adapter: adapter)
        let s16 = try LoRAStack(model: model, adapter: adapter, storage: .f16)
        XCTAssertEqual(s16.boundBytes * 2, s32.boundBytes)
        let ids = [1, 504, 3458, 282, 4045, 314, 216, 1345, 28, 17]
        for precision in [Precision.exact, .fast] {
            let opts = ForwardOptions(precision: precision, pool: Self.pool, logits: .all)
            let c32 = model.makeCache(maxContext: 64), c16 = model.makeCache(maxContext: 64)
            var a = try model.forward(ids, cache: c32, options: opts, delta: s32)
            var b = try model.forward(ids, cache: c16, options: opts, delta: s16)
            XCTAssertEqual(a, b, "prefill \(precision)")
            a = try model.forward([42], cache: c32, options: opts, delta: s32)
            b = try model.forward([42], cache: c16, options: opts, delta: s16)
            XCTAssertEqual(a, b, "decode \(precision)")
        }
    }
    func testAdapterB() throws { try runAdapter("b") }
}
