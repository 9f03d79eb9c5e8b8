@testable import CWScheduler
import Foundation
import PropertyBased
import Testing

func makeConfig(minChunk: Int, extra: Int, budget: Double, fade: Int, hysteresis: Double, shift: Double, alphas: [Double]? = nil) -> SchedulerConfig {
    var c = SchedulerConfig()
    c.minChunk = minChunk
    c.maxChunk = minChunk + extra
    c.topTierBudget = budget
    c.crossFade = fade
    c.hysteresis = hysteresis
    c.shiftThreshold = shift
    if let alphas { c.alphas = alphas }
    return c
}

func runChunker(_ c: SchedulerConfig, _ d: [Double]) -> (Chunker, [TokenPlan]) {
    var ch = Chunker(config: c)
    var plans: [TokenPlan] = []
    let w = CrossFade.window(c)
    for (t, x) in d.enumerated() {
        let i = ch.push(x)
        plans.append(CrossFade.plan(token: t, chunkIndex: i, chunks: ch.chunks, window: w))
    }
    return (ch, plans)
}

@Suite struct ChunkerProperties {
    static let difficulties = Gen.double(in: 0...1).array(of: 1...300)

    @Test func chunksTileTheSequenceWithinBoundsAndBudget() async {
        await propertyCheck(count: 200, input: Self.difficulties, Gen.int(in: 1...10), Gen.int(in: 0...30), Gen.double(in: 0.05...1)) { d, minC, extra, budget in
            let c = makeConfig(minChunk: minC, extra: extra, budget: budget, fade: 3, hysteresis: 0.02, shift: 0.05)
            let (ch, _) = runChunker(c, d)
            let chunks = ch.chunks
            #expect(chunks.first?.start == 0)
            #expect(chunks.last?.end == d.count)
            for (a, b) in zip(chunks, chunks.dropFirst()) { #expect(a.end == b.start) }
            for (i, k) in chunks.enumerated() {
                #expect(k.length <= c.maxChunk)
                if i < chunks.count - 1 { #expect(k.length >= c.minChunk, "chunk \(i) \(k) of \(chunks.count)") }
                #expect(k.rank == c.tiers[k.tier])
            }
            // Top-tier share ≤ budget at every prefix.
            var top = 0
            var t = 0
            for k in chunks {
                for _ in k.start..<k.end {
                    t += 1
                    if k.tier == c.tiers.count - 1 { top += 1 }
                    #expect(Double(top) <= budget * Double(t) + 1e-9, "prefix \(t): \(top) top tokens, budget \(budget)")
                }
            }
        }
    }

    @Test func appendingTokensNeverChangesEarlierDecisions() async {
        await propertyCheck(count: 150, input: Self.difficulties, Gen.int(in: 0...299), Gen.int(in: 1...8), Gen.double(in: 0.1...1)) { d, cutRaw, minC, budget in
            let cut = cutRaw % d.count + 1
            let c = makeConfig(minChunk: minC, extra: 8, budget: budget, fade: 4, hysteresis: 0.05, shift: 0.1)
            let (_, full) = runChunker(c, d)
            let (_, prefix) = runChunker(c, Array(d.prefix(cut)))
            #expect(Array(full.prefix(cut)) == prefix)
        }
    }

    @Test func crossFadeIsContinuous() async {
        await propertyCheck(count: 150, input: Self.difficulties, Gen.int(in: 1...8), Gen.int(in: 1...12), Gen.double(in: 0...1)) { d, minC, fade, a0 in
            let alphas = [1, a0, 1 - a0 * 0.5, 0.8]
            let c = makeConfig(minChunk: minC, extra: 6, budget: 1, fade: fade, hysteresis: 0, shift: 0, alphas: alphas)
            let w = CrossFade.window(c)
            let (_, plans) = runChunker(c, d)
            guard w > 0 else { return }
            let maxRank = c.tiers.last ?? 0
            for (p, q) in zip(plans, plans.dropFirst()) {
                for i in 0..<maxRank {
                    #expect(abs(p.weight(i) - q.weight(i)) <= 1 / Float(w) + 1e-6, "direction \(i): \(p) → \(q)")
                }
            }
            // No fade at the start.
            #expect(plans.first?.lambda == 1)
        }
    }
}

@Suite struct PolicyTests {
    @Test func presetsAndConfigFiles() throws {
        for name in ["static", "static:4", "base", "balanced", "aggressive", "quality"] {
            let c = try SchedulerConfig.preset(name, maxRank: 16)
            try c.validate()
        }
        #expect(try SchedulerConfig.preset("balanced", maxRank: 16).tiers == [4, 6, 8, 12])
        #expect(try SchedulerConfig.preset("static:4").mode == .staticRank)
        #expect(throws: SchedulerError.self) { try SchedulerConfig.preset("nope") }
        let yaml = "tiers: [0, 2, 16]\nthresholds: [0.3, 0.6]\nminChunk: 4\nweights:\n  novelty: 0\n"
        let dir = FileManager.default.temporaryDirectory
        let p = dir.appendingPathComponent("cw-\(UUID().uuidString).yaml").path
        defer { try? FileManager.default.removeItem(atPath: p) }
        try yaml.write(toFile: p, atomically: true, encoding: .utf8)
        let c = try SchedulerConfig.load(path: p)
        #expect(c.tiers == [0, 2, 16])
        #expect(c.alphas == [1, 1, 1])
        #expect(c.minChunk == 4)
        #expect(c.weights.novelty == 0 && c.weights.entropy == 1)
        // `--policy FILE.yaml` resolves like `--policy-config FILE.yaml`.
        #expect(try SchedulerConfig.resolve(policy: p, configFile: nil, maxRank: 16) == c)
        #expect(throws: SchedulerError.self) { try SchedulerConfig.resolve(policy: "nope", configFile: nil, maxRank: 16) }
        try "tiers: [0, 2]\nthresholds: [0.3, 0.6]\n".write(toFile: p, atomically: true, encoding: .utf8)
        #expect(throws: SchedulerError.self) { try SchedulerConfig.load(path: p) }
        // YAML round trip.
        let back = try SchedulerConfig.decode(yaml: try c.yaml())
        #expect(back == c)
    }
}

