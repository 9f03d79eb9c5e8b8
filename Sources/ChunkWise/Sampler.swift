import CWKernels
import Foundation

/// How the next token is chosen from the logits.
public struct SamplingParameters: Sendable, Equatable, Codable {
    /// 0 means greedy (argmax).
    public var temperature: Float = 0
    /// Keep only the `topK` most likely tokens (0 = off).
    public var topK: Int = 0
    /// Keep the smallest set of tokens whose probability adds up to `topP` (1 = off).
    public var topP: Float = 1
    /// Drop tokens whose probability is below `minP` × the top probability (0 = off).
    public var minP: Float = 0
    /// Divide positive logits (multiply negative ones) of recently seen tokens by this (1 = off).
    public var repetitionPenalty: Float = 1
    /// How many recent tokens the repetition penalty looks at.
    public var repetitionWindow: Int = 64
    /// Seed of the random generator (same seed, same text).
    public var seed: UInt64 = 0

    public init(temperature: Float = 0, topK: Int = 0, topP: Float = 1, minP: Float = 0,
                repetitionPenalty: Float = 1, repetitionWindow: Int = 64, seed: UInt64 = 0) {
        self.temperature = temperature
        self.topK = topK
        self.topP = topP
        self.minP = minP
        self.repetitionPenalty = repetitionPenalty
        self.repetitionWindow = repetitionWindow
        self.seed = seed
    }

    public static let greedy = SamplingParameters()

    /// Checks ranges; the message names the parameter.
    public func validate() throws {
        func bad(_ m: String) -> EngineError { .invalidParameter(m) }
        if !(temperature >= 0) || !temperature.isFinite { throw bad("temperature must be ≥ 0, got \(temperature)") }
        if topK < 0 { throw bad("top-k must be ≥ 0, got \(topK)") }
        if !(topP > 0 && topP <= 1) { throw bad("top-p must be in (0, 1], got \(topP)") }
        if !(minP >= 0 && minP < 1) { throw bad("min-p must be in [0, 1), got \(minP)") }
        if !(repetitionPenalty > 0) || !repetitionPenalty.isFinite { throw bad("repetition penalty must be > 0, got \(repetitionPenalty)") }
        if repetitionWindow < 0 { throw bad("repetition window must be ≥ 0, got \(repetitionWindow)") }
    }
}

/// A small, fast, seedable generator (xoshiro256**), so sampling is reproducible across runs
/// and platforms.
public struct Xoshiro256: RandomNumberGenerator, Sendable {
    private var s: (UInt64, UInt64, UInt64, UInt64)

    public init(seed: UInt64) {
        var z = seed
        func splitmix() -> UInt64 {
            z &+= 0x9E37_79B9_7F4A_7C15
            var r = z
            r = (r ^ (r >> 30)) &* 0xBF58_476D_1CE4_E5B9
            r = (r ^ (r >> 27)) &* 0x94D0_49BB_1331_11EB
            return r ^ (r >> 31)
        }
        s = (splitmix(), splitmix(), splitmix(), splitmix())
    }

    public mutating func next() -> UInt64 {
        let result = ((s.1 &* 5) << 7 | (s.1 &* 5) >> 57) &* 9
        let t = s.1 << 17
        s.2 ^= s.0
        s.3 ^= s.1
        s.1 ^= s.2
        s.0 ^= s.3
        s.2 ^= t
        s.3 = (s.3 << 45) | (s.3 >> 19)
        return result
    }

    /// Uniform in [0, 1).
    public mutating func nextUnit() -> Double { Double(next() >> 11) * 0x1.0p-53 }
}

/// Picks tokens from logits according to `SamplingParameters`.
public struct Sampler: Sendable {
    public let parameters: SamplingParameters
    private var rng: Xoshiro256

    public init(_ parameters: SamplingParameters) {
        self.parameters = parameters
        self.rng = Xoshiro256(seed: parameters.seed)
    }

    /// The index of the largest logit (the first one on ties, as torch.argmax).
    public static func argmax(_ logits: [Float]) -> Int {
        var best = 0
        var bv = -Float.infinity
        for (i, v) in logits.enumerated() where v > bv { bv = v; best = i }
        return best
    }

    /// Chooses the next token. `history` is the sequence so far (for the repetition penalty).
    public mutating func sample(_ input: [Float], history: [Int]) -> Int {
        let p = parameters
        var logits = input
        if p.repetitionPenalty != 1, p.repetitionWindow > 0 {
            for id in Set(history.suffix(p.repetitionWindow)) where id >= 0 && id < logits.count {
                logits[id] = logits[id] > 0 ? logits[id] / p.repetitionPenalty : logits[id] * p.repetitionPenalty
            }
        }
        if p.temperature == 0 { return Self.argmax(logits) }

        return Self.pick(logits, p, unit: rng.nextUnit())
    }

    /// The token for a uniform `unit` in [0, 1): softmax weights at the temperature; with top-k,
    /// min-p or top-p the tokens are ordered by logit (descending, ties by id), cut, and walked to
    /// the first whose cumulative weight exceeds `unit` × the kept weight; without any cut the
    /// walk runs in token order (the same distribution, no sort). Only a prefix of the sorted order
    /// is ever sorted: tokens with weight ≥ t relative to the top form a prefix of it, so t starts
    /// high and drops only if the cut needs more — the same token as a full sort, at a fraction of
    /// the cost (a full 49k-token sort per token was a third of a batched server step).
    public static func pick(_ logits: [Float], _ p: SamplingParameters, unit: Double) -> Int {
        let n = logits.count
        guard n > 1 else { return 0 }
        let maxLogit = logits.withUnsafeBufferPointer { $0.baseAddress.map { VectorOps.max($0, n: n) } ?? -.infinity }
        guard maxLogit.isFinite else { return argmax(logits) }
        // Weights exp((logit − max) / T) by the kernels' vector exp (a 49k vocabulary per token
        // with libm's expf was ~5% of a batched server step).
        var total = 0.0
        let wf = [Float](unsafeUninitializedCapacity: n) { buf, count in
            guard let wp = buf.baseAddress else { count = 0; return }
            total = logits.withUnsafeBufferPointer { lp in
                lp.baseAddress.map { VectorOps.expWeights($0, n: n, shift: maxLogit, div: p.temperature, into: wp) } ?? 0
            }
            count = n
        }
        let k = p.topK > 0 && p.topK < n ? p.topK : n
        if k == n && p.minP <= 0 && p.topP >= 1 {
            // No cut: the whole distribution, walked in token order (no sort at all).
            return wf.withUnsafeBufferPointer { wp in
                wp.baseAddress.map { VectorOps.cumulativeIndex($0, n: n, reaching: unit * total) } ?? 0
            }
        }
        let w = wf.map(Double.init)
        var t = 1e-3  // the top weight is 1
        while true {
            let complete = t == 0
            var cand: [Int] = []
            cand.reserveCapacity(complete ? n : 256)
            for i in 0..<n where w[i] >= t { cand.append(i) }
            cand.sort { logits[$0] != logits[$1] ? logits[$0] > logits[$1] : $0 < $1 }
            func lower() { t = t < 1e-200 ? 0 : t * 1e-4 }
            // The top-k set (all n tokens when top-k is off); `whole`: cand holds all of it.
            if cand.count < k && !complete { lower(); continue }
            let set = cand.prefix(k)
            let whole = complete || k < n
            let setTotal = k < n ? set.reduce(0) { $0 + w[$1] } : total
            var keep = set.count
            var cut = false
            if p.minP > 0 {
                let floor = Double(p.minP) * w[set[set.startIndex]]
                if !whole && floor < t { lower(); continue }
                keep = max(1, set.prefix { w[$0] >= floor }.count)
                cut = true
            }
            if p.topP < 1 {
                let goal = Double(p.topP) * setTotal
                var acc = 0.0, j = 0
                var reached = false
                for i in set.prefix(keep) { acc += w[i]; j += 1; if acc >= goal { reached = true; break } }
                if !reached && !whole && !cut { lower(); continue }
                keep = max(1, j)
                cut = true
            }
            let kept = set.prefix(keep)
            let keptTotal = cut || k < n ? kept.reduce(0) { $0 + w[$1] } : total
            let r = unit * keptTotal
            var acc = 0.0
            for i in kept {
                acc += w[i]
                if r < acc { return i }
            }
            if !whole && !cut { lower(); continue }  // the walk runs past the sorted prefix
            return kept[kept.index(before: kept.endIndex)]
        }
    }
}
