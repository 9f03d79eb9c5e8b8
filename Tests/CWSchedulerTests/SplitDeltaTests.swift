import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// A prefill's deltas split around the base product (`ProjectionDelta.split`: down products first,
/// each range of rows getting its up products right after the product wrote it) give the same
/// logits, bit for bit, as applying them after the product — for plain LoRA and for ChunkWise
/// policies with several rank groups and cross-faded rows, in `fast` (the batched integer kernel)
/// and `exact` precision.
final class SplitDeltaTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    /// Counts how often the model took the split path (forwards everything to `inner`).
    final class Counting: ForwardingDelta, @unchecked Sendable {
        let lock = NSLock()
        var splits = 0
        override func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
                            pool: ThreadPool) -> SplitDelta? {
            let s = inner.split(layer: layer, projection: projection, x: x, tokens: tokens, positions: positions, pool: pool)
            if s != nil { lock.lock(); splits += 1; lock.unlock() }
            return s
        }
    }

    func logits(_ model: LlamaModel, _ ids: [Int], _ delta: ProjectionDelta, _ prec: Precision, split: Bool) throws -> [Float] {
        let opts = ForwardOptions(precision: prec, pool: pool, logits: .all, splitDeltas: split)
        if let cw = delta as? ChunkWiseDelta {
            cw.beginSequence()
            return try cw.forward(ids, cache: model.makeCache(), options: opts)
        }
        return try model.forward(ids, cache: model.makeCache(), options: opts, delta: delta)
    }

    func testSmolLM2PrefillSplitIsBitIdentical() throws {
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let windows = try XCTUnwrap((g["perplexity"] as? [String: Any])?["windows"] as? [[String: Any]])
        let ids = Array(try XCTUnwrap(windows.first?["ids"] as? [Int]).prefix(160))
        // Plain LoRA (q8 factors, as `fast` runs it), counted: every projection of every layer splits.
        let stack = Counting(try LoRAStack(model: model, adapter: adapter, storage: .q8))
        let a = try logits(model, ids, stack, .fast, split: false)
        XCTAssertEqual(stack.splits, 0)
        let b = try logits(model, ids, stack, .fast, split: true)
        XCTAssertEqual(stack.splits, model.config.layers * 7, "one split per adapted projection")
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "static LoRA")
        // ChunkWise: balanced (several rank groups, cross-faded rows) and its merged floor.
        var floor4 = try SchedulerConfig.preset("balanced")
        floor4.mergedFloor = 4
        for (name, config, merge) in [("balanced", try SchedulerConfig.preset("balanced"), MergeFormat?.none),
                                      ("aggressive", try SchedulerConfig.preset("aggressive"), nil),
                                      ("balanced + merged floor 4 in Q4_1", floor4, .base)] {
            let cw = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: merge)
            let x = try logits(cw.forwardModel, ids, cw, .fast, split: false)
            let y = try logits(cw.forwardModel, ids, cw, .fast, split: true)
            XCTAssertGreaterThan(cw.statistics.tokensPerRank.count, 1, "\(name): several rank groups exercised")
            XCTAssertEqual(x.map(\.bitPattern), y.map(\.bitPattern), name)
        }
    }

    func testStoriesSplitIsBitIdenticalInExactPrecision() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let model = try LlamaModel(llama2c: Llama2cFile(path: bin))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-shakespeare-r16"))
        let ids = (0..<96).map { ($0 * 37 + 11) % model.config.vocabSize }
        let stack = try LoRAStack(model: model, adapter: adapter)
        XCTAssertEqual(try logits(model, ids, stack, .exact, split: false).map(\.bitPattern),
                       try logits(model, ids, stack, .exact, split: true).map(\.bitPattern))
        let cw = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("balanced"))
        XCTAssertEqual(try logits(cw.forwardModel, ids, cw, .exact, split: false).map(\.bitPattern),
                       try logits(cw.forwardModel, ids, cw, .exact, split: true).map(\.bitPattern))
    }
}
