import Foundation

/// One chunk of the plan: tokens `[start, end)` at one tier.
public struct Chunk: Codable, Sendable, Equatable {
    public var start: Int
    public var end: Int
    /// Index into `SchedulerConfig.tiers`.
    public var tier: Int
    /// Ladder rank of the tier (0 = base model).
    public var rank: Int
    /// Scale α applied to the adapter output.
    public var alpha: Double
    /// Mean per-token difficulty over the chunk's tokens so far.
    public var meanDifficulty: Double
    public var length: Int { end - start }
}

/// The causal adaptive chunker: consumes per-token difficulties one at a time and assigns each
/// token to a chunk with a tier. Decisions for a token depend only on the difficulties of it and
/// the tokens before it, and are never revised (appending tokens cannot change them).
///
/// Rules (with `c = config`):
/// - a token's difficulty is smoothed by an EMA (`c.smoothing`);
/// - the open chunk is closed before token t when it has reached its length cap (`c.maxChunk`, or
///   a smaller cap set by the top-tier budget), or when it has at least `c.minChunk` tokens, the
///   smoothed difficulty has moved at least `c.shiftThreshold` away from the chunk's running mean,
///   and the tier chosen for the smoothed difficulty (with hysteresis) differs from the chunk's;
/// - a new chunk takes the tier of the smoothed difficulty at its first token; moving up needs the
///   threshold plus `c.hysteresis`, moving down needs the threshold minus `c.hysteresis`;
/// - top-tier budget: a top-tier chunk may start at t only if after `c.minChunk` tokens the share
///   of top-tier tokens would still be ≤ `c.topTierBudget`, and its cap is the largest length that
///   keeps the share ≤ budget. Hence the share of top-tier tokens is ≤ budget at every prefix,
///   and chunk lengths stay in [minChunk, maxChunk] (except the last chunk, cut by the end).
///
/// The same machine serves prefill (all prompt tokens pushed at once) and decode (one generated
/// token per step): a decode chunk is a run of generated tokens at one tier, and the hysteresis
/// plus `minChunk` keep the rank from flapping.
public struct Chunker: Sendable {
    public let config: SchedulerConfig
    public private(set) var chunks: [Chunk] = []
    public private(set) var count = 0
    public private(set) var topTokens = 0
    var ema: Double = 0
    var sum: Double = 0
    var cap: Int = 0

    public init(config: SchedulerConfig) { self.config = config }

    var topTier: Int { config.tiers.count - 1 }

    /// Tier for a smoothed difficulty relative to the current tier, with hysteresis.
    func tierFor(_ d: Double, current: Int?) -> Int {
        let raw = config.tierIndex(difficulty: d)
        guard let cur = current else { return raw }
        if raw > cur {
            // Highest tier whose threshold is exceeded by the margin.
            var t = cur
            for i in (cur + 1)...raw where d >= config.thresholds[i - 1] + config.hysteresis { t = i }
            return t
        }
        if raw < cur {
            var t = cur
            for i in stride(from: cur, to: raw, by: -1) where d < config.thresholds[i - 1] - config.hysteresis { t = i - 1 }
            return t
        }
        return cur
    }

    /// Largest top-tier chunk length allowed from position `t` by the budget (0 = none).
    func topCap(at t: Int) -> Int {
        let b = config.topTierBudget
        if b >= 1 { return config.maxChunk }
        // top + L ≤ b (t + L)  ⇔  L ≤ (b t − top) / (1 − b)
        let l = Int(((b * Double(t) - Double(topTokens)) / (1 - b)).rounded(.down) + 1e-9)
        let capped = min(config.maxChunk, l)
        return capped >= config.minChunk ? capped : 0
    }

    /// Pushes the next token's difficulty; returns its chunk's index in `chunks`.
    @discardableResult
    public mutating func push(_ difficulty: Double) -> Int {
        let d = difficulty.isFinite ? difficulty : 0
        let t = count
        ema = t == 0 ? d : (1 - config.smoothing) * ema + config.smoothing * d
        var open = chunks.last
        if let c = open {
            let len = c.length
            let mean = sum / Double(max(1, len))
            var cut = len >= cap
            if !cut, len >= config.minChunk, abs(ema - mean) >= config.shiftThreshold {
                cut = startTier(t, current: c.tier) != c.tier
            }
            if cut { open = nil }
        }
        if open == nil {
            let tier = startTier(t, current: chunks.last?.tier)
            cap = tier == topTier ? topCap(at: t) : config.maxChunk
            if tier == topTier && cap == 0 { cap = config.maxChunk }  // unreachable: startTier checked it
            chunks.append(Chunk(start: t, end: t, tier: tier, rank: config.tiers[tier], alpha: config.alphas[tier], meanDifficulty: 0))
            sum = 0
        }
        let i = chunks.count - 1
        chunks[i].end = t + 1
        sum += d
        chunks[i].meanDifficulty = sum / Double(chunks[i].length)
        if chunks[i].tier == topTier { topTokens += 1 }
        count += 1
        return i
    }

    /// The tier a chunk starting at `t` gets: the smoothed difficulty's tier, lowered while the
    /// top tier is over budget.
    func startTier(_ t: Int, current: Int?) -> Int {
        var tier = tierFor(ema, current: current)
        if tier == topTier && topTier > 0 && topCap(at: t) == 0 { tier = topTier - 1 }
        return tier
    }
}
