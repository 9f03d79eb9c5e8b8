import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// ChunkWiseDelta on stories260K (llama2.c checkpoint, interleaved RoPE) with the random r8 PEFT
/// adapter against the PEFT goldens in ../shared/golden/stories260k.
final class StoriesSchedulerTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    func load() throws -> (LlamaModel, LoRAAdapter) {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let model = try LlamaModel(llama2c: Llama2cFile(path: bin))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-random-r8"))
        return (model, adapter)
    }

    /// All-position logits of `ids` in one call (via delta.forward when it is a ChunkWiseDelta).
    func logits(_ model: LlamaModel, _ ids: [Int], _ delta: ProjectionDelta?) throws -> [Float] {
        let cache = model.makeCache()
        let opts = ForwardOptions(precision: .exact, pool: pool, logits: .all)
        if let cw = delta as? ChunkWiseDelta {
            cw.beginSequence()
            return try cw.forward(ids, cache: cache, options: opts)
        }
        return try model.forward(ids, cache: cache, options: opts, delta: delta)
    }

    func prompts() throws -> [(String, [Int], [Float])] {
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let ps = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        return try ps.map { p in
            let ids = try XCTUnwrap(p["ids"] as? [Int])
            let v = try XCTUnwrap((p["variants"] as? [String: Any])?["lora"] as? [String: Any])
            let file = try XCTUnwrap(v["logits_file"] as? String)
            return ("\(p["name"] ?? "?")", ids, try TestPaths.floats("golden/stories260k/" + file))
        }
    }

    func testFullRankLadderReproducesAdapterLogits() throws {
        let (model, adapter) = try load()
        let delta = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("static:8", maxRank: 8))
        for (name, ids, golden) in try prompts() {
            let out = try logits(model, ids, delta)
            let diff = Compare.maxAbsDiff(out[...], golden[...])
            print("[ladder k=8 '\(name)'] max|diff| vs PEFT lora \(diff)")
            XCTAssertLessThanOrEqual(diff, 1e-4, name)
            XCTAssertEqual(delta.statistics.averageRank, 8)
        }
    }

    func testStaticPolicyIsBitIdenticalToPlainLoRA() throws {
        let (model, adapter) = try load()
        let stack = try LoRAStack(model: model, adapter: adapter)
        let delta = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("static"))
        for (name, ids, golden) in try prompts() {
            let a = try logits(model, ids, stack)
            let b = try logits(model, ids, delta)
            XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern), "\(name): static must be bit-identical to LoRAStack")
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(b[...], golden[...]), 1e-4)
        }
        // Decode steps too.
        let ids = try prompts()[1].1
        let c1 = model.makeCache(), c2 = model.makeCache()
        let opts = ForwardOptions(precision: .exact, pool: pool)
        delta.beginSequence()
        var la = try model.forward(ids, cache: c1, options: opts, delta: stack)
        var lb = try delta.forward(ids, cache: c2, options: opts)
        for _ in 0..<8 {
            XCTAssertEqual(la.map(\.bitPattern), lb.map(\.bitPattern))
            let next = Compare.argmax(la[...])
            la = try model.forward([next], cache: c1, options: opts, delta: stack)
            lb = try delta.forward([next], cache: c2, options: opts)
        }
    }

    func testRankZeroIsBaseAndMergedFloorMatchesUnmerged() throws {
        let (model, adapter) = try load()
        let (_, ids, _) = try prompts()[2]
        let base = try logits(model, ids, nil)
        let k0 = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("base"))
        XCTAssertEqual(try logits(model, ids, k0).map(\.bitPattern), base.map(\.bitPattern))
        var cfg = try SchedulerConfig.preset("static:8", maxRank: 8)
        let plain = try logits(model, ids, ChunkWiseDelta(model: model, adapter: adapter, config: cfg))
        cfg.mergedFloor = 4
        let floor = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
        XCTAssertNotNil(floor.mergedFloor)
        let merged = try logits(floor.forwardModel, ids, floor)
        XCTAssertLessThanOrEqual(Compare.maxAbsDiff(merged[...], plain[...]), 1e-4)
    }

    /// The estimator's signals do not depend on how a long sequence is split into calls — past the
    /// attention window (256 keys), with calls of 1 token (its key buffer moved to the front every
    /// ~256 tokens) and calls longer than the window (the buffer grown): bit for bit.
    func testEstimatorSignalsDoNotDependOnHowTheSequenceIsSplit() throws {
        let (model, adapter) = try load()
        let ladder = try RankLadder(adapter: adapter)
        let cfg = try SchedulerConfig.preset("balanced", maxRank: 8)
        let ids = (0..<1300).map { ($0 * 7919 + 13) % model.config.vocabSize }
        func run(_ sizes: [Int]) -> [DifficultySignals] {
            let e = DifficultyEstimator(model: model, ladder: ladder, config: cfg)
            var out: [DifficultySignals] = [], i = 0, j = 0
            while i < ids.count {
                let n = min(sizes[j % sizes.count], ids.count - i)
                out += e.score(tokens: Array(ids[i..<(i + n)]), pool: pool).map(\.1)
                i += n; j += 1
            }
            return out
        }
        let whole = run([ids.count])
        XCTAssertEqual(whole.count, ids.count)
        for sizes in [[1], [300, 1, 1, 7], [600], [5, 700]] {
            let split = run(sizes)
            let attention = zip(split, whole).filter { $0.attention?.bitPattern != $1.attention?.bitPattern }.count
            let response = zip(split, whole).filter { $0.response?.bitPattern != $1.response?.bitPattern }.count
            XCTAssertEqual(split.count, whole.count, "split \(sizes)")
            XCTAssertEqual(attention, 0, "split \(sizes): tokens whose attention signal differs")
            XCTAssertEqual(response, 0, "split \(sizes): tokens whose response signal differs")
        }
        XCTAssertGreaterThan(Set(whole.compactMap(\.attention)).count, 100)
    }

    /// Causality + grouping: an adaptive plan computed in one prefill call equals the plan made
    /// token by token, and so do the logits (rows grouped by tier = each row alone).
    func testAdaptivePrefillEqualsTokenByToken() throws {
        let (model, adapter) = try load()
        var cfg = try SchedulerConfig.preset("balanced", maxRank: 8)
        cfg.weights.entropy = 0; cfg.minChunk = 2; cfg.maxChunk = 6; cfg.crossFade = 2; cfg.thresholds = [0.3, 0.4, 0.5]; cfg.topTierBudget = 0.6
        cfg.kvPolicies = nil  // ranks only here (int8 KV on easy chunks is tested below)
        let (_, ids, _) = try prompts()[2]
        let d1 = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
        let all = try logits(model, ids, d1)
        let d2 = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
        d2.beginSequence()
        let cache = model.makeCache()
        var rows: [Float] = []
        for id in ids { rows += try d2.forward([id], cache: cache, options: ForwardOptions(precision: .exact, pool: pool, logits: .all)) }
        XCTAssertEqual(d1.plans, d2.plans)
        XCTAssertEqual(d1.statistics.chunks, d2.statistics.chunks)
        XCTAssertGreaterThan(Set(d1.plans.map(\.inRank)).count, 1, "the test should exercise several tiers: \(d1.statistics.chunks)")
        // Entropy is only seen in token-by-token mode, so compare with the entropy weight off.
        XCTAssertLessThanOrEqual(Compare.maxAbsDiff(all[...], rows[...]), 1e-4)
        print("[adaptive] chunks \(d1.statistics.chunks.map { "\($0.start)-\($0.end):r\($0.rank)" }) avg rank \(d1.statistics.averageRank) estimator \(d1.statistics.estimatorNanosecondsPerToken) ns/token")
    }

    /// KV policy per chunk: every position is cached in its chunk's tier policy (int8 below the
    /// top tier, fp32 on top), the same whether the prompt runs in one call or token by token,
    /// and an explicit engine-wide policy switches it off.
    func testKVPolicyFollowsTheChunks() throws {
        let (model, adapter) = try load()
        var cfg = try SchedulerConfig.preset("balanced", maxRank: 8)
        cfg.weights.entropy = 0; cfg.minChunk = 2; cfg.maxChunk = 6; cfg.crossFade = 2; cfg.thresholds = [0.3, 0.4, 0.5]; cfg.topTierBudget = 0.6
        XCTAssertEqual(cfg.kvPolicies?.last, "full")
        XCTAssertEqual(Set(cfg.kvPolicies?.dropLast() ?? []), ["int8"])
        let (_, ids, _) = try prompts()[2]
        func run(oneCall: Bool) throws -> (ChunkWiseDelta, KVCache) {
            let d = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
            d.beginSequence()
            let cache = model.makeCache()
            let opts = ForwardOptions(precision: .exact, pool: pool, logits: .last)
            if oneCall { _ = try d.forward(ids, cache: cache, options: opts) } else { for id in ids { _ = try d.forward([id], cache: cache, options: opts) } }
            return (d, cache)
        }
        let (d1, c1) = try run(oneCall: true)
        let (d2, c2) = try run(oneCall: false)
        XCTAssertEqual(d1.plans, d2.plans)
        let top = cfg.tiers.count - 1
        XCTAssertTrue(d1.statistics.chunks.contains { $0.tier < top } && d1.statistics.chunks.contains { $0.tier == top },
                      "the test needs easy and hard chunks: \(d1.statistics.chunks)")
        for (p, plan) in d1.plans.enumerated() {
            let want: KVPolicy = d1.statistics.chunks[plan.chunk].tier == top ? .full : .int8()
            XCTAssertEqual(c1.policy(at: p), want, "position \(p)")
            XCTAssertEqual(c2.policy(at: p), want, "position \(p)")
        }
        // Sealed blocks are stored in their policy's format.
        for b in c2.blocks(layer: 0) where b.sealed {
            XCTAssertEqual(Set(b.keyFormats), b.policy == .full ? [.fp32] : [.int8], "\(b.positions)")
        }
        let off = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
        off.managesKVPolicy = false
        off.beginSequence()
        let c3 = model.makeCache()
        _ = try off.forward(ids, cache: c3, options: ForwardOptions(precision: .exact, pool: pool, logits: .last))
        XCTAssertTrue((0..<ids.count).allSatisfy { c3.policy(at: $0) == .full })
    }

    /// A ladder written to disk and loaded back gives the same logits as a freshly built one, and a
    /// ladder of another adapter is refused.
    func testLadderFileThroughDelta() throws {
        let (model, adapter) = try load()
        let ladder = try RankLadder.build(adapter: adapter, model: model)
        XCTAssertEqual(ladder.adapterHash, adapter.contentHash)
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("stories-\(UUID().uuidString).cwl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ladder.write(to: path)
        let cfg = try SchedulerConfig.preset("static:4", maxRank: 8)
        let (_, ids, _) = try prompts()[1]
        let a = try logits(model, ids, ChunkWiseDelta(model: model, adapter: adapter, config: cfg))
        let b = try logits(model, ids, ChunkWiseDelta(model: model, adapter: adapter, config: cfg, ladder: RankLadder.load(from: path)))
        XCTAssertEqual(a.map(\.bitPattern), b.map(\.bitPattern))
        let other = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-shakespeare-r16"))
        XCTAssertThrowsError(try ChunkWiseDelta(model: model, adapter: other, config: cfg, ladder: ladder))
    }
}
