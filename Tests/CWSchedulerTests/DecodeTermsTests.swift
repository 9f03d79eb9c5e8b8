import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// A decode step's delta as low-rank terms of the base product (`ProjectionDelta.lowRankTerms`,
/// `Kernels.matmul(…, terms:)`) gives the same logits, bit for bit, as the side-task path it
/// replaced for one-token steps — for plain LoRA (q8 and fp32 factors), for ChunkWise plans with
/// fades and α, and with a merged floor.
final class DecodeTermsTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    /// Declines `lowRankTerms`, so the model runs the side-task path.
    final class WithoutTerms: ForwardingDelta, @unchecked Sendable {
        override func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                                   scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int? {
            nil
        }
    }

    /// Counts the terms `inner` gives (so the test knows the terms path ran).
    final class CountingTerms: ForwardingDelta, @unchecked Sendable {
        var terms = 0, declined = 0
        override func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                                   scratch: UnsafeMutablePointer<Float>, capacity: Int, terms t: inout [LowRankTerm], pool: ThreadPool) -> Int? {
            let before = t.count
            let r = inner.lowRankTerms(layer: layer, projection: projection, x: x, position: position, target: target,
                                       scratch: scratch, capacity: capacity, terms: &t, pool: pool)
            if r == nil { declined += 1 } else { terms += t.count - before }
            return r
        }
    }

    func prompt() throws -> [Int] {
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let windows = try XCTUnwrap((g["perplexity"] as? [String: Any])?["windows"] as? [[String: Any]])
        return Array(try XCTUnwrap(windows.first?["ids"] as? [Int]).prefix(20))
    }

    /// Greedy decode of `steps` tokens after the prompt with `delta` on `model`; every step's logits.
    func decode(_ model: LlamaModel, _ delta: ProjectionDelta, scheduler: ChunkWiseDelta?, precision: Precision, steps: Int) throws -> [[Float]] {
        let cache = model.makeCache()
        let opts = ForwardOptions(precision: precision, pool: pool)
        scheduler?.beginSequence()
        func step(_ ids: [Int]) throws -> [Float] {
            scheduler?.prepare(tokens: ids, cache: cache, pool: pool)
            let out = try model.forward(ids, cache: cache, options: opts, delta: delta)
            scheduler?.observe(logits: out)
            return out
        }
        var all = [try step(try prompt())]
        for _ in 0..<steps { all.append(try step([Compare.argmax(all[all.count - 1][...])])) }
        return all
    }

    func assertSameBits(_ a: [[Float]], _ b: [[Float]], _ what: String, file: StaticString = #filePath, line: UInt = #line) {
        XCTAssertEqual(a.count, b.count, what, file: file, line: line)
        for (i, (x, y)) in zip(a, b).enumerated() where x.map(\.bitPattern) != y.map(\.bitPattern) {
            XCTFail("\(what): step \(i) differs", file: file, line: line)
            return
        }
    }

    func testPlainLoRATermsEqualTheSidePath() throws {
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        for (storage, precision) in [(LowRankFactor.Storage.q8, Precision.fast), (.f32, .exact)] {
            let stack = try LoRAStack(model: model, adapter: adapter, storage: storage)
            let counted = CountingTerms(stack)
            let withTerms = try decode(model, counted, scheduler: nil, precision: precision, steps: 24)
            let side = try decode(model, WithoutTerms(stack), scheduler: nil, precision: precision, steps: 24)
            assertSameBits(withTerms, side, "LoRA \(storage) \(precision)")
            XCTAssertEqual(counted.declined, 0)
            XCTAssertGreaterThan(counted.terms, 24 * 7 * model.config.layers - 1, "every decode step's projections ran as terms")
        }
    }

    func testChunkWiseTermsEqualTheSidePath() throws {
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let floor = TestPaths.packageRoot().appendingPathComponent("docs/policies/balanced-merged-floor4.json").path
        // balanced (fades between tiers), a config with α ≠ 1, and the merged floor in Q4_1.
        var scaled = try SchedulerConfig.preset("balanced")
        scaled.alphas = scaled.tiers.enumerated().map { 0.75 + 0.1 * Double($0.offset) }
        let configs: [(String, SchedulerConfig, MergeFormat)] = [
            ("balanced", try SchedulerConfig.preset("balanced"), .f32),
            ("balanced with alphas", scaled, .f32),
            ("merged floor 4", try SchedulerConfig.resolve(policy: nil, configFile: floor, maxRank: 16), .base),
        ]
        for (name, config, format) in configs {
            let a = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: format)
            let b = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: format)
            let counted = CountingTerms(a)
            let withTerms = try decode(a.forwardModel, counted, scheduler: a, precision: .fast, steps: 64)
            let side = try decode(b.forwardModel, WithoutTerms(b), scheduler: b, precision: .fast, steps: 64)
            assertSameBits(withTerms, side, name)
            XCTAssertEqual(a.plans, b.plans, name)
            XCTAssertEqual(counted.declined, 0, name)
            XCTAssertGreaterThan(counted.terms, 0, name)
            XCTAssertTrue(a.plans.contains { !$0.isUniform }, "\(name): some steps fade between tiers")
        }
    }
}
