import CWFormats
import CWKernels
import CWLoRA
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// Adapters on the SmolLM2 Q4_1 base as the engine runs them under `--precision fast`: merged in the
/// base's own encoding, and unmerged with the deltas running beside the base product.
final class QuantizedBaseTests: XCTestCase {
    static let pool = SmolLM2LoRAGoldenTests.pool

    /// Window 0 of the golden's WikiText windows (512 tokens of wiki.test.raw).
    func wikitextWindow() throws -> [Int] {
        let ppl = try XCTUnwrap(try TestPaths.json("golden/smollm2-logits/goldens.json")["perplexity"] as? [String: Any])
        let windows = try XCTUnwrap(ppl["windows"] as? [[String: Any]])
        return try XCTUnwrap(windows.first?["ids"] as? [Int])
    }

    func nllSum(_ model: LlamaModel, _ delta: ProjectionDelta?, _ ids: [Int]) throws -> Double {
        let v = model.config.vocabSize
        let logits = try model.forward(ids, cache: model.makeCache(), options: ForwardOptions(precision: .fast, pool: Self.pool, logits: .all), delta: delta)
        return (0..<(ids.count - 1)).reduce(0.0) { $0 + Compare.nll(logits[($1 * v)..<(($1 + 1) * v)], target: ids[$1 + 1]) }
    }

    /// `MergeFormat.base` on Q4_1: every touched matrix stays Q4_1 with the base's byte count (decode
    /// reads exactly the base's bytes), and the trained WikiText adapter keeps most of its gain on a
    /// held-out window (unbiased rounding onto each block's grid; rounding to nearest would keep none).
    /// Measured over 16 windows: PPL base 36.08, unmerged 27.20, merged in Q4_1 29.29 (README).
    func testMergeInTheBaseEncodingKeepsQ4_1AndMostOfTheGain() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let stack = try LoRAStack(model: model, adapter: adapter, storage: .q8)
        let merged = try stack.merge(format: .base)
        XCTAssertEqual(merged.touched.count, 210)
        var baseBytes = 0
        for t in merged.touched {
            let o = model.weights.layers[t.layer].matrix(t.projection), m = merged.model.weights.layers[t.layer].matrix(t.projection)
            XCTAssertEqual(m.type, .q4_1, "layer \(t.layer) \(t.projection)")
            XCTAssertEqual(m.byteCount, o.byteCount)
            baseBytes += o.byteCount
        }
        XCTAssertEqual(merged.extraBytes, baseBytes)
        // Deterministic: merging again gives the same bytes.
        let again = try stack.merge(format: .base)
        let m0 = merged.model.weights.layers[7].matrix(.down), m1 = again.model.weights.layers[7].matrix(.down)
        XCTAssertEqual(memcmp(m0.base, m1.base, m0.byteCount), 0)

        let ids = try wikitextWindow()
        let base = try nllSum(model, nil, ids), unmerged = try nllSum(model, stack, ids), inQ4_1 = try nllSum(merged.model, nil, ids)
        let kept = (base - inQ4_1) / (base - unmerged)
        print("[merge base-format] window 0 NLL: base \(base), unmerged \(unmerged), merged in Q4_1 \(inQ4_1); share of the gain kept \(kept)")
        XCTAssertGreaterThan(base - unmerged, 100, "the adapter helps on WikiText")
        XCTAssertGreaterThan(kept, 0.5)
        XCTAssertLessThan(kept, 1.05)
    }

    /// `writeMergedGGUF`: the source file with the touched tensors' data replaced — same size, same
    /// tensor table; loading it gives the in-memory base-encoding merge's logits bit for bit.
    /// Refuses an existing output file and a model that is not GGUF, naming the problem.
    func testMergedGGUFIsTheSourceWithMergedTensors() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cw-merged-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        let out = dir.appendingPathComponent("merged.gguf").path
        let merged = try writeMergedGGUF(model: model, adapters: [AdapterBinding(adapter)], to: out)
        let src = try TestPaths.smolLM2Path()
        XCTAssertEqual(try FileManager.default.attributesOfItem(atPath: out)[.size] as? Int,
                       try FileManager.default.attributesOfItem(atPath: src)[.size] as? Int)
        let reloaded = try LlamaModel(gguf: GGUFFile(path: out))
        let ids = [504, 3575, 282, 4649, 314, 260, 1238]
        let opts = ForwardOptions(precision: .fast, pool: Self.pool, logits: .all)
        let a = try reloaded.forward(ids, cache: reloaded.makeCache(maxContext: 32), options: opts)
        let b = try merged.model.forward(ids, cache: merged.model.makeCache(maxContext: 32), options: opts)
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
        let base = try model.forward(ids, cache: model.makeCache(maxContext: 32), options: opts)
        XCTAssertNotEqual(a, base, "the file holds the merged weights")
        XCTAssertThrowsError(try writeMergedGGUF(model: model, adapters: [AdapterBinding(adapter)], to: out)) { e in
            XCTAssertTrue("\(e)".contains("exists"), "\(e)")
        }
        let stories = try Stories.llama2c()
        let sa = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-random-r8"))
        XCTAssertThrowsError(try writeMergedGGUF(model: stories, adapters: [AdapterBinding(sa)], to: dir.appendingPathComponent("s.gguf").path)) { e in
            XCTAssertTrue("\(e)".contains("from a GGUF model"), "\(e)")
        }
    }

    /// Hides `isAdditive`, so the model applies the deltas after the base product (the old path).
    final class AfterProduct: ProjectionDelta, @unchecked Sendable {
        let inner: LoRAStack
        init(_ inner: LoRAStack) { self.inner = inner }
        func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
                   y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
            inner.apply(layer: layer, projection: projection, x: x, tokens: tokens, positions: positions, y: y, pool: pool)
        }
        var isPositionIndependent: Bool { true }
        var isReentrant: Bool { true }
    }

    /// Small steps run a plain adapter's products as side tasks of the base product's pool job (into
    /// zeroed buffers, added afterwards): bit-identical to applying them after the product, for one
    /// token, a few tokens and a batch of sequences, fast and exact, every factor storage.
    func testDeltasBesideTheProductAreBitIdentical() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let prompt = [504, 3575, 282, 4649, 314, 260, 1238]
        for storage in LowRankFactor.Storage.allCases {
            let stack = try LoRAStack(model: model, adapter: adapter, storage: storage)
            XCTAssertTrue(stack.isAdditive && stack.isReentrant)
            let old = AfterProduct(stack)
            for precision in [Precision.fast, .exact] {
                let opts = ForwardOptions(precision: precision, pool: Self.pool, logits: .all)
                let c1 = model.makeCache(maxContext: 64), c2 = model.makeCache(maxContext: 64)
                for step in [Array(prompt[0..<5]), [42], [7, 9, 11]] {
                    let a = try model.forward(step, cache: c1, options: opts, delta: stack)
                    let b = try model.forward(step, cache: c2, options: opts, delta: old)
                    XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(storage) \(precision) step of \(step.count)")
                }
                // Two sequences in one batched step, each with the adapter.
                let d1 = model.makeCache(maxContext: 64), d2 = model.makeCache(maxContext: 64)
                let e1 = model.makeCache(maxContext: 64), e2 = model.makeCache(maxContext: 64)
                let a = try model.forward(batch: [LlamaModel.BatchItem(tokens: prompt, cache: d1, delta: stack), LlamaModel.BatchItem(tokens: [5, 6], cache: d2, delta: stack)], options: opts)
                let b = try model.forward(batch: [LlamaModel.BatchItem(tokens: prompt, cache: e1, delta: old), LlamaModel.BatchItem(tokens: [5, 6], cache: e2, delta: old)], options: opts)
                XCTAssertEqual(a.map { $0.map(\.bitPattern) }, b.map { $0.map(\.bitPattern) }, "\(storage) \(precision) batch")
                // A sequence without a delta between two with it (two runs; its rows get no delta).
                let f = (0..<3).map { _ in model.makeCache(maxContext: 64) }, g = (0..<3).map { _ in model.makeCache(maxContext: 64) }
                let mixedA = try model.forward(batch: [LlamaModel.BatchItem(tokens: [5, 6], cache: f[0], delta: stack),
                                                       LlamaModel.BatchItem(tokens: [7], cache: f[1]),
                                                       LlamaModel.BatchItem(tokens: [9, 10, 11], cache: f[2], delta: stack)], options: opts)
                let mixedB = try model.forward(batch: [LlamaModel.BatchItem(tokens: [5, 6], cache: g[0], delta: old),
                                                       LlamaModel.BatchItem(tokens: [7], cache: g[1]),
                                                       LlamaModel.BatchItem(tokens: [9, 10, 11], cache: g[2], delta: old)], options: opts)
                XCTAssertTrue(mixedA.map { $0.map(\.bitPattern) } == mixedB.map { $0.map(\.bitPattern) }, "\(storage) \(precision) mixed batch")
            }
        }
    }

    /// q8 factors (the default under fast precision) change the adapter's output by less than the
    /// fast path's own rounding: logits of a WikiText prefix within 2e-3 relative L2 of fp32 factors.
    func testQ8FactorsStayCloseToFP32() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let ids = Array(try wikitextWindow().prefix(64))
        let opts = ForwardOptions(precision: .fast, pool: Self.pool, logits: .all)
        let s32 = try LoRAStack(model: model, adapter: adapter, storage: .f32), s8 = try LoRAStack(model: model, adapter: adapter, storage: .q8)
        XCTAssertLessThan(Double(s8.boundBytes), 0.3 * Double(s32.boundBytes))
        let a = try model.forward(ids, cache: model.makeCache(maxContext: 128), options: opts, delta: s32)
        let b = try model.forward(ids, cache: model.makeCache(maxContext: 128), options: opts, delta: s8)
        let base = try model.forward(ids, cache: model.makeCache(maxContext: 128), options: opts, delta: nil)
        let rel = Compare.relativeL2(b[...], a[...]), adapterEffect = Compare.relativeL2(base[...], a[...])
        print("[q8 factors] relative L2 vs fp32 factors \(rel) (the adapter itself moves logits by \(adapterEffect))")
        XCTAssertLessThan(rel, 2e-3)
        XCTAssertLessThan(rel, adapterEffect / 50)
    }
}
