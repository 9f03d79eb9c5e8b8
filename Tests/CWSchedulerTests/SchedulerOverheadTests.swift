import CWFormats
import CWKernels
import CWLoRA
@testable import CWScheduler
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// The cheap paths of the scheduler's per-token work: the entropy signal's single-precision
/// evaluation, and `ChunkWiseDelta.apply`'s decode fast path and reused row groups, each checked
/// against the straightforward evaluation it replaced.
final class SchedulerOverheadTests: XCTestCase {
    // MARK: Entropy

    /// The Double/libm evaluation the estimator used before (the reference).
    static func referenceEntropy(_ logits: [Float]) -> Double {
        var m = -Float.infinity
        for v in logits where v > m { m = v }
        var z = 0.0, ez = 0.0
        for v in logits where v != -.infinity {
            let e = Foundation.exp(Double(v - m))
            z += e
            ez += e * Double(v - m)
        }
        let h = Foundation.log(z) - ez / z
        return max(0, min(1, h / Foundation.log(Double(logits.count))))
    }

    func entropy(_ logits: [Float]) -> Double? {
        logits.withUnsafeBufferPointer { DifficultyEstimator.normalizedEntropy($0) }
    }

    /// Stated tolerance: |fast − reference| ≤ 1e-5 on the normalized entropy (∈ [0, 1]).
    static let entropyTolerance = 1e-5

    func testEntropyMatchesDoubleReference() throws {
        var rng = TestRNG(7)
        var cases: [(String, [Float])] = []
        for (n, spread) in [(49_152, Float(3)), (49_152, 12), (49_152, 40), (32_000, 1), (1_000 + 7, 5), (17, 2), (2, 1)] {
            cases.append(("n=\(n) spread=\(spread)", (0..<n).map { _ in Float.random(in: -spread...spread, using: &rng) }))
        }
        var peaked = [Float](repeating: -20, count: 49_152)
        peaked[123] = 15
        cases.append(("peaked", peaked))
        cases.append(("uniform", [Float](repeating: 0.25, count: 49_152)))
        var masked = (0..<4_099).map { _ in Float.random(in: -8...8, using: &rng) }
        for i in stride(from: 0, to: masked.count, by: 3) { masked[i] = -.infinity }
        cases.append(("with −∞", masked))
        var worst = 0.0
        for (name, l) in cases {
            let fast = try XCTUnwrap(entropy(l), name)
            let ref = Self.referenceEntropy(l)
            worst = max(worst, abs(fast - ref))
            XCTAssertLessThanOrEqual(abs(fast - ref), Self.entropyTolerance, "\(name): fast \(fast), reference \(ref)")
            XCTAssertEqual(entropy(l), fast, "\(name): deterministic")
        }
        print("[entropy] worst |fast − Double reference| \(worst)")
        XCTAssertEqual(try XCTUnwrap(entropy([Float](repeating: 3, count: 4_096))), 1, accuracy: 1e-6)
        XCTAssertNil(entropy([1]))
        XCTAssertNil(entropy([1, .nan, 2]))
        XCTAssertNil(entropy([1, .infinity, 2]))
        XCTAssertNil(entropy([-.infinity, -.infinity]))
    }

    // MARK: apply

    /// The apply of the previous release: per call, every row's plan in an array, rows grouped
    /// by rank in a dictionary, one slice per group — kept here as the reference.
    final class ReferenceDelta: ProjectionDelta {
        let d: ChunkWiseDelta
        init(_ d: ChunkWiseDelta) { self.d = d }
        func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens n: Int,
                   positions: Range<Int>, y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
            guard n > 0, let m = d.ladder.module(layer: layer, projection: projection) else { return }
            let floorRank = d.floorRank
            let fallback = TokenPlan(inRank: m.rank, inAlpha: 1)
            let tokenPlans = (0..<n).map { t -> TokenPlan in
                let p = positions.lowerBound + t
                return p >= 0 && p < d.plans.count ? d.plans[p] : fallback
            }
            var groups: [Int: [Int]] = [:]
            for (t, p) in tokenPlans.enumerated() {
                let k = min(p.effectiveRank, m.rank)
                if k > floorRank { groups[k, default: []].append(t) }
            }
            for (k, rows) in groups.sorted(by: { $0.key < $1.key }) {
                let g = rows.count, lo = floorRank, w = k - lo
                let identity = g == n
                let rowIndex = identity ? [] : rows.map { Int32($0) }
                rowIndex.withUnsafeBufferPointer { ri in
                    let map = identity ? nil : ri.baseAddress
                    var u = [Float](repeating: 0, count: g * w)
                    u.withUnsafeMutableBufferPointer { ub in
                        let u = ub.baseAddress!
                        LowRank.down(m.vtFactor, rows: lo..<k, x: x, ldx: m.inFeatures, xRows: map, tokens: g, u: u, ldu: w, pool: pool)
                        for (j, t) in rows.enumerated() {
                            let p = tokenPlans[t]
                            if p.isUniform {
                                if p.inAlpha != 1 { for i in 0..<w { u[j * w + i] *= p.inAlpha } }
                            } else {
                                for i in 0..<w { u[j * w + i] *= p.weight(lo + i) }
                            }
                        }
                        LowRank.up(m.usFactor, rows: lo..<k, u: u, ldu: w, tokens: g, y: y, ldy: m.outFeatures, yRows: map, pool: pool)
                    }
                }
            }
        }
    }

    let pool = ThreadPool(threads: 2)

    /// stories260K, its random rank-8 adapter and a golden prompt's ids.
    func storiesWithRandomAdapter() throws -> (LlamaModel, LoRAAdapter, [Int]) {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let model = try LlamaModel(llama2c: Llama2cFile(path: bin))
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-random-r8"))
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let ps = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        return (model, adapter, try XCTUnwrap(ps[2]["ids"] as? [Int]))
    }

    /// Prefill in one call (several ranks and cross-fades among the rows, with and without a merged
    /// floor, α ≠ 1 on one tier) and token-by-token decode: bit-identical to the reference apply,
    /// for fp32 factors under exact precision and fp16 factors under fast precision.
    func testApplyIsBitIdenticalToReferenceGrouping() throws {
        let (model, adapter, ids) = try storiesWithRandomAdapter()
        for (floor, storage, precision) in [(0, LowRankFactor.Storage.f32, Precision.exact), (2, .f32, .exact), (0, .f16, .fast), (3, .f16, .fast)] {
            var cfg = try SchedulerConfig.preset("balanced", maxRank: 8)
            cfg.minChunk = 2; cfg.maxChunk = 6; cfg.crossFade = 2; cfg.thresholds = [0.3, 0.4, 0.5]; cfg.topTierBudget = 0.6
            cfg.kvPolicies = nil
            cfg.mergedFloor = floor
            cfg.alphas = cfg.alphas.enumerated().map { $0.offset == 1 ? 0.75 : $0.element }
            let d = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg, storage: storage)
            let name = "floor \(floor) \(storage) \(precision)"
            d.beginSequence()
            let c1 = d.forwardModel.makeCache(), c2 = d.forwardModel.makeCache()
            let opts = ForwardOptions(precision: precision, pool: pool, logits: .all)
            var a = try d.forward(ids, cache: c1, options: opts)
            var decoded: [Int] = []
            var steps: [[Float]] = []
            for _ in 0..<12 {
                let next = Compare.argmax(Array(a.suffix(model.config.vocabSize))[...])
                decoded.append(next)
                a = try d.forward([next], cache: c1, options: opts)
                steps.append(a)
            }
            XCTAssertGreaterThan(Set(d.plans.map(\.effectiveRank)).count, 1, "\(name): several ranks needed: \(d.statistics.chunks)")
            XCTAssertTrue(d.plans.contains { !$0.isUniform }, "\(name): a cross-fade needed")
            // The reference, on the plans the delta made.
            let ref = ReferenceDelta(d)
            let prefill = try d.forwardModel.forward(ids, cache: c2, options: opts, delta: ref)
            let d0 = try d.forwardModel.forward(ids, cache: d.forwardModel.makeCache(), options: opts, delta: d)
            XCTAssertEqual(prefill.map(\.bitPattern), d0.map(\.bitPattern), "\(name): prefill")
            for (i, t) in decoded.enumerated() {
                let r = try d.forwardModel.forward([t], cache: c2, options: opts, delta: ref)
                XCTAssertEqual(r.map(\.bitPattern), steps[i].map(\.bitPattern), "\(name): decode step \(i)")
            }
        }
    }

    /// The estimator's scores (and so the plans) do not depend on the thread count of the pool
    /// that runs its layer-0 q/k products: `forward` hands it the forward pass's pool.
    func testScoresDoNotDependOnThePool() throws {
        let (model, adapter, ids) = try storiesWithRandomAdapter()
        let cfg = try SchedulerConfig.preset("balanced", maxRank: 8)
        var runs: [ChunkWiseDelta] = []
        for (threads, oneCall) in [(1, true), (2, true), (2, false), (3, false)] {
            let d = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
            let p = ThreadPool(threads: threads)
            d.beginSequence()
            if oneCall { d.prepare(tokens: ids, pool: p) } else { for id in ids { d.prepare(tokens: [id], pool: p) } }
            runs.append(d)
        }
        // The default (the delta's one-thread pool).
        let d0 = try ChunkWiseDelta(model: model, adapter: adapter, config: cfg)
        d0.beginSequence()
        d0.prepare(tokens: ids)
        for d in runs {
            XCTAssertEqual(d.difficulties.map(\.bitPattern), d0.difficulties.map(\.bitPattern))
            XCTAssertEqual(d.signals, d0.signals)
            XCTAssertEqual(d.plans, d0.plans)
        }
    }
}
