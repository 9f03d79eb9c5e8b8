import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// Measurements (not a test): set CHUNKWISE_DECODE_BENCH=1. Decode-step time of the base model,
/// merged-floor-4 `balanced` and static LoRA r16 (q8 factors) on SmolLM2 Q4_1, each delta with its
/// low-rank terms and with the side tasks (`DecodeTermsTests.WithoutTerms`), and the merged copies
/// alone: 128 greedy steps after a 16-token prompt per run, 20 rounds in alternating order, medians
/// of the per-round speed ratios against the base model. The README's figures for decode terms:
/// `CHUNKWISE_DECODE_BENCH=1 swift test -c release -Xswiftc -enable-testing --filter DecodeTermsBench`.
final class DecodeTermsBench: XCTestCase {
    func testMeasureDecodeSteps() throws {
        guard ProcessInfo.processInfo.environment["CHUNKWISE_DECODE_BENCH"] == "1" else { throw XCTSkip("set CHUNKWISE_DECODE_BENCH=1") }
        let pool = ThreadPool(threads: 2)
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let policy = TestPaths.packageRoot().appendingPathComponent("docs/policies/balanced-merged-floor4.json").path
        let config = try SchedulerConfig.resolve(policy: nil, configFile: policy, maxRank: 16)
        let opts = ForwardOptions(precision: .fast, pool: pool)
        let cw = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: .base)
        let stack = try LoRAStack(model: model, adapter: adapter, storage: .q8)
        let runs: [(name: String, model: LlamaModel, delta: ProjectionDelta?, scheduler: ChunkWiseDelta?)] = [
            ("base model", model, nil, nil),
            ("merged-floor-4 balanced, terms", cw.forwardModel, cw, cw),
            ("merged-floor-4 balanced, side tasks", cw.forwardModel, DecodeTermsTests.WithoutTerms(cw), cw),
            ("static LoRA r16, terms", model, stack, nil),
            ("static LoRA r16, side tasks", model, DecodeTermsTests.WithoutTerms(stack), nil),
            ("merged copies alone", cw.forwardModel, nil, nil),
        ]
        func msPerStep(_ r: (name: String, model: LlamaModel, delta: ProjectionDelta?, scheduler: ChunkWiseDelta?)) throws -> Double {
            let cache = r.model.makeCache()
            r.scheduler?.beginSequence()
            func step(_ ids: [Int]) throws -> [Float] {
                r.scheduler?.prepare(tokens: ids, cache: cache, pool: pool)
                let out = try r.model.forward(ids, cache: cache, options: opts, delta: r.delta)
                r.scheduler?.observe(logits: out)
                return out
            }
            var logits = try step(Array(1...16))
            let t0 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<128 { logits = try step([Compare.argmax(logits[...])]) }
            return Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e6 / 128
        }
        let rounds = 20
        var ms = [[Double]](repeating: [], count: runs.count)
        for round in 0..<rounds {
            let order = round % 2 == 0 ? Array(runs.indices) : runs.indices.reversed()
            for i in order { ms[i].append(try msPerStep(runs[i])) }
        }
        for (i, r) in runs.enumerated() {
            let speed = zip(ms[i], ms[0]).map { $1 / $0 - 1 }.sorted()
            print(String(format: "[decode terms bench] %@: %.3f ms/step (median), speed vs base model %+.1f%% (median of %d rounds)",
                         r.name, ms[i].sorted()[rounds / 2], 100 * speed[rounds / 2], rounds))
        }
    }
}
