import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// A forward call whose planned positions need no ladder direction above the merged floor
/// (`ProjectionDelta.acts(on:)` false) runs as the base model — no side tasks, buffers or adds —
/// and gives the same logits, bit for bit, as running the delta's machinery for nothing.
final class IdleDeltaTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    /// Forwards everything to `inner` but always claims to act (the behaviour before `acts(on:)`),
    /// and records what `inner` answered.
    final class AlwaysActing: ForwardingDelta, @unchecked Sendable {
        var answers: [Bool] = []
        override func acts(on positions: Range<Int>) -> Bool {
            answers.append(inner.acts(on: positions))
            return true
        }
    }

    func testIdleStepsRunAsTheBaseModelWithTheSameBits() throws {
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let policy = TestPaths.packageRoot().appendingPathComponent("docs/policies/balanced-merged-floor4.json").path
        var config = try SchedulerConfig.resolve(policy: nil, configFile: policy, maxRank: 16)
        // Higher thresholds than the file's: on this text its chunks sit at ranks 6–12; here some
        // sit at the floor tier (rank 4) and some above it.
        config.thresholds = [0.45, 0.55, 0.7]
        XCTAssertEqual(config.mergedFloor, 4)
        XCTAssertEqual(config.tiers.first, 4, "the lowest tier is the floor: its chunks add nothing unmerged")
        // Two schedulers with the same config: one as it runs, one wrapped to act on every call.
        let a = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: .base)
        let b = try ChunkWiseDelta(model: model, adapter: adapter, config: config, storage: .q8, mergeFormat: .base)
        let wrapped = AlwaysActing(b)
        let g = try TestPaths.json("golden/smollm2-logits/goldens.json")
        let windows = try XCTUnwrap((g["perplexity"] as? [String: Any])?["windows"] as? [[String: Any]])
        let prompt = Array(try XCTUnwrap(windows.first?["ids"] as? [Int]).prefix(24))
        let opts = ForwardOptions(precision: .fast, pool: pool)
        let ca = a.forwardModel.makeCache(), cb = b.forwardModel.makeCache()
        a.beginSequence(); b.beginSequence()
        func stepB(_ ids: [Int]) throws -> [Float] {
            b.prepare(tokens: ids, cache: cb, pool: pool)
            let out = try b.forwardModel.forward(ids, cache: cb, options: opts, delta: wrapped)
            b.observe(logits: out)
            return out
        }
        var la = try a.forward(prompt, cache: ca, options: opts)
        var lb = try stepB(prompt)
        for step in 0..<96 {
            XCTAssertEqual(la.map(\.bitPattern), lb.map(\.bitPattern), "step \(step)")
            let next = Compare.argmax(la[...])
            la = try a.forward([next], cache: ca, options: opts)
            lb = try stepB([next])
        }
        XCTAssertEqual(la.map(\.bitPattern), lb.map(\.bitPattern))
        XCTAssertEqual(a.plans, b.plans)
        let idle = wrapped.answers.filter { !$0 }.count
        print("[idle delta] \(idle) of \(wrapped.answers.count) forward calls ran as the base model")
        XCTAssertGreaterThan(idle, 0, "some decode steps sit at the floor tier (otherwise this test checks nothing)")
        XCTAssertGreaterThan(wrapped.answers.count - idle, 0, "some steps use directions above the floor")
        // What acts(on:) answers follows the plans.
        for p in 0..<a.plans.count {
            XCTAssertEqual(a.acts(on: p..<(p + 1)), a.plans[p].effectiveRank > 4, "position \(p)")
        }
        XCTAssertTrue(a.acts(on: a.plans.count..<(a.plans.count + 1)), "a position not planned yet acts (full rank)")
    }

    func testPlainLoRAAndStaticAlwaysAct() throws {
        let model = try LlamaModel(gguf: GGUFFile(path: TestPaths.smolLM2Path()))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/smollm2-wikitext-r16"))
        let stack = try LoRAStack(model: model, adapter: adapter)
        XCTAssertTrue(stack.acts(on: 0..<1))
        let s = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("static"))
        XCTAssertTrue(s.acts(on: 0..<1))
        let base = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("base"))
        base.beginSequence()
        base.prepare(tokens: [1, 2, 3])
        XCTAssertFalse(base.acts(on: 0..<3), "rank 0 everywhere: nothing to add")
    }
}
