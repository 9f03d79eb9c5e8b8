import Foundation

/// What one token applies: a blend of the outgoing configuration (`outRank`, `outAlpha`) and the
/// incoming one (`inRank`, `inAlpha`) with weight `lambda` on the incoming. Outside a fade window
/// `lambda == 1` and the outgoing half is unused.
///
/// Direction i gets the weight `(i < inRank ? λ·inAlpha : 0) + (i < outRank ? (1−λ)·outAlpha : 0)`,
/// which is exactly: directions below min(k_out, k_in) get (1−λ)α_out + λα_in, directions only in
/// the incoming rank λα_in, directions only in the outgoing rank (1−λ)α_out.
public struct TokenPlan: Codable, Sendable, Equatable {
    public var inRank: Int
    public var inAlpha: Float
    public var outRank: Int
    public var outAlpha: Float
    public var lambda: Float
    /// Chunk index of the token.
    public var chunk: Int

    public init(inRank: Int, inAlpha: Float, outRank: Int = 0, outAlpha: Float = 0, lambda: Float = 1, chunk: Int = 0) {
        self.inRank = inRank
        self.inAlpha = inAlpha
        self.outRank = outRank
        self.outAlpha = outAlpha
        self.lambda = lambda
        self.chunk = chunk
    }

    /// The weight of ladder direction i.
    @inline(__always)
    public func weight(_ i: Int) -> Float {
        (i < inRank ? lambda * inAlpha : 0) + (i < outRank && lambda < 1 ? (1 - lambda) * outAlpha : 0)
    }

    /// True outside a fade window: every direction below `inRank` gets `inAlpha`.
    public var isUniform: Bool { lambda >= 1 }

    /// The number of ladder directions this token needs computed.
    public var effectiveRank: Int {
        let a = lambda > 0 && inAlpha != 0 ? inRank : 0
        let b = lambda < 1 && outAlpha != 0 ? outRank : 0
        return max(a, b)
    }
}

/// Boundary-safe composition: over a window of w tokens after each chunk edge the adapter output
/// moves linearly from the outgoing chunk's configuration to the incoming one.
///
/// The window lies after the edge (the first tokens of the incoming chunk) because the scheduler is
/// causal: when the tokens before an edge were planned, the edge was not known yet. λ for the j-th
/// token of the window (j = 0..<w) is (j+1)/(w+1), so adjacent tokens' per-direction weights
/// differ by at most max|α|/(w+1) ≤ 1/w for |α| ≤ 1, and the ramp ends inside the chunk
/// (w is clamped to `minChunk`). There is no fade at the sequence start (no outgoing chunk), and
/// none is needed at the end (nothing follows).
public enum CrossFade {
    /// Effective window for a config.
    public static func window(_ config: SchedulerConfig) -> Int { max(0, min(config.crossFade, config.minChunk)) }

    /// The plan of token `t`, which lies in `chunks[index]`.
    public static func plan(token t: Int, chunkIndex index: Int, chunks: [Chunk], window w: Int) -> TokenPlan {
        let c = chunks[index]
        var p = TokenPlan(inRank: c.rank, inAlpha: Float(c.alpha), chunk: index)
        guard w > 0, index > 0 else { return p }
        let j = t - c.start
        guard j >= 0, j < w else { return p }
        let prev = chunks[index - 1]
        p.outRank = prev.rank
        p.outAlpha = Float(prev.alpha)
        p.lambda = Float(j + 1) / Float(w + 1)
        return p
    }
}
