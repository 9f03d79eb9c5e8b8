import CWFormats
import CWKernels
import CWTestSupport
import CWTransformer
import XCTest

/// Several sequences in one pass (continuous batching) give each sequence the logits it gets alone.
final class BatchedForwardTests: XCTestCase {
    /// Each prompt run alone (prefill, then `decodeSteps` one-token steps), and all of them
    /// batched (all prefills in one pass, then all decode steps in one pass each): the logits of
    /// every step, per sequence, and the batched run's caches.
    func runSeparateAndBatched(_ model: LlamaModel, _ prompts: [[Int]], decodeSteps: Int, _ opts: ForwardOptions) throws
        -> (separate: [[[Float]]], batched: [[[Float]]], caches: [KVCache]) {
        var separate: [[[Float]]] = []
        for p in prompts {
            let cache = model.makeCache()
            var outs = [try model.forward(p, cache: cache, options: opts)]
            for step in 0..<decodeSteps { outs.append(try model.forward([10 + step], cache: cache, options: opts)) }
            separate.append(outs)
        }
        let caches = prompts.map { _ in model.makeCache() }
        var batched = try model.forward(batch: zip(prompts, caches).map { LlamaModel.BatchItem(tokens: $0, cache: $1) }, options: opts).map { [$0] }
        for step in 0..<decodeSteps {
            let outs = try model.forward(batch: caches.map { LlamaModel.BatchItem(tokens: [10 + step], cache: $0) }, options: opts)
            for i in outs.indices { batched[i].append(outs[i]) }
        }
        return (separate, batched, caches)
    }

    func testBatchEqualsSeparateRuns() throws {
        let model = try LlamaModel(llama2c: Llama2cFile(path: TestPaths.sharedFile("models/stories260K/stories260K.bin")))
        let pool = ThreadPool(threads: 2)
        let opts = ForwardOptions(precision: .exact, pool: pool, logits: .last)
        let prompts = [[1, 403, 407, 261, 378], [1, 385, 328], [1, 300, 301, 302, 303, 304, 305]]
        let (separate, batched, caches) = try runSeparateAndBatched(model, prompts, decodeSteps: 2, opts)
        for i in prompts.indices {
            for step in 0..<3 {
                let diff = Compare.maxAbsDiff(batched[i][step][...], separate[i][step][...])
                XCTAssertLessThanOrEqual(diff, 1e-5, "sequence \(i) step \(step)")
            }
            XCTAssertEqual(caches[i].count, prompts[i].count + 2)
        }
    }

    /// `fast`: a step of several sequences takes the batched integer kernel and prefetches their KV
    /// blocks while q/k/v compute; each sequence's logits stay within the fast path's rounding of
    /// its separate run (one token at a time takes the per-pair kernel).
    func testFastBatchOfFiveSequencesMatchesSeparateRuns() throws {
        let model = try LlamaModel(llama2c: Llama2cFile(path: TestPaths.sharedFile("models/stories260K/stories260K.bin")))
        let pool = ThreadPool(threads: 2)
        let opts = ForwardOptions(precision: .fast, pool: pool, logits: .last)
        let prompts = [[1, 403, 407, 261, 378], [1, 385, 328], [1, 300, 301, 302, 303, 304, 305], [1, 290], [1, 411, 412, 413]]
        let (separate, batched, caches) = try runSeparateAndBatched(model, prompts, decodeSteps: 3, opts)
        for i in prompts.indices {
            for step in 0..<4 {
                let a = batched[i][step], b = separate[i][step]
                let num = zip(a, b).reduce(0.0) { $0 + Double($1.0 - $1.1) * Double($1.0 - $1.1) }
                let den = b.reduce(0.0) { $0 + Double($1) * Double($1) }
                XCTAssertLessThanOrEqual((num / den).squareRoot(), 2e-3, "sequence \(i) step \(step)")
            }
            XCTAssertEqual(caches[i].count, prompts[i].count + 3)
        }
    }

    /// A row-wise delta shared by several sequences is applied once per projection for all of
    /// their rows (one adapter read per step), with the same logits as separate runs.
    func testSharedPositionIndependentDeltaIsOneCallPerProjection() throws {
        final class RowDelta: ProjectionDelta, @unchecked Sendable {
            let model: LlamaModel
            var calls = 0
            init(_ m: LlamaModel) { model = m }
            var isPositionIndependent: Bool { true }
            func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
                       y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
                calls += 1
                let m = model.weights.layers[layer].matrix(projection)
                // y[t][0] += 0.1 · x[t][0]: depends on the row only.
                for t in 0..<tokens { y[t * m.rows] += 0.1 * x[t * m.cols] }
            }
        }
        let model = try LlamaModel(llama2c: Llama2cFile(path: TestPaths.sharedFile("models/stories260K/stories260K.bin")))
        let pool = ThreadPool(threads: 2)
        let opts = ForwardOptions(precision: .exact, pool: pool, logits: .last)
        let prompts = [[1, 403, 407, 261, 378], [1, 385, 328], [1, 300, 301]]
        let delta = RowDelta(model)
        let separate = try prompts.map { try model.forward($0, cache: model.makeCache(), options: opts, delta: delta) }
        delta.calls = 0
        let caches = prompts.map { _ in model.makeCache() }
        let batched = try model.forward(batch: zip(prompts, caches).map { LlamaModel.BatchItem(tokens: $0, cache: $1, delta: delta) }, options: opts)
        XCTAssertEqual(delta.calls, model.config.layers * 7, "one call per projection for the three sequences")
        for i in prompts.indices { XCTAssertLessThanOrEqual(Compare.maxAbsDiff(batched[i][...], separate[i][...]), 1e-5) }
    }

    func testBatchRejectsASharedCache() throws {
        let model = try LlamaModel(llama2c: Llama2cFile(path: TestPaths.sharedFile("models/stories260K/stories260K.bin")))
        let cache = model.makeCache()
        XCTAssertThrowsError(try model.forward(batch: [.init(tokens: [1], cache: cache), .init(tokens: [2], cache: cache)],
                                               options: ForwardOptions(pool: ThreadPool(threads: 1)))) { e in
            XCTAssertEqual(e as? InferenceError, .duplicateCache)
        }
    }
}
