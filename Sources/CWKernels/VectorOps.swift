import CKernels
import Foundation

/// Element-wise and reduction operations on fp32 activation vectors (C loops, vectorized by clang).
public enum VectorOps {
    /// `out = x / sqrt(mean(x²) + eps) * weight` over `n` elements (sum of squares in fp64).
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, n: Int, eps: Float) {
        cw_rms_norm(x, weight, out, Int64(n), eps)
    }

    /// In-place numerically safe softmax over `n` elements.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        cw_softmax(x, Int64(n))
    }

    /// `w[i] = exp((x[i] − shift) / div)` with the kernels' vector exp (within 2 ulp of libm's
    /// `expf` above 2⁻¹²⁶, flushing below); returns Σ w[i] accumulated in Double.
    public static func expWeights(_ x: UnsafePointer<Float>, n: Int, shift: Float, div: Float, into w: UnsafeMutablePointer<Float>) -> Double {
        cw_exp_weights(x, Int64(n), shift, div, w)
    }

    /// The kernels' vector exp of one value (as `expWeights` computes it).
    public static func exp(_ x: Float) -> Float { cw_expf(x) }

    /// Entropy of softmax(x) ÷ log(n), in [0, 1]; nil for n < 2 or logits that are not all
    /// finite-or-−∞ (see `cw_normalized_entropy`).
    public static func normalizedEntropy(_ x: UnsafePointer<Float>, n: Int) -> Double? {
        let h = cw_normalized_entropy(x, Int64(n))
        return h < 0 ? nil : h
    }

    /// Mean over query heads of the normalized entropy of softmax(scale · q_h·k_j) over `keyCount`
    /// key rows `keyStride` floats apart (head h reads kv head h / (heads / kvHeads)); each score
    /// has the bits of `dot(q_h, k_j) * scale`. 0 for fewer than 2 keys. `scratch`: `max(1, heads / kvHeads) ×
    /// keyCount` floats (the scores of one KV head's query heads).
    public static func attentionEntropy(query q: UnsafePointer<Float>, keys k: UnsafePointer<Float>, keyStride: Int, keyCount nk: Int,
                                        heads: Int, kvHeads: Int, headDim: Int, scale: Float, scratch: UnsafeMutablePointer<Float>) -> Double {
        cw_attention_entropy(q, k, Int64(keyStride), Int64(nk), Int32(heads), Int32(kvHeads), Int32(headDim), scale, scratch)
    }

    /// The largest element (NaNs skipped; −∞ when there is none).
    public static func max(_ x: UnsafePointer<Float>, n: Int) -> Float { cw_max_f32(x, Int64(n)) }

    /// The first `i` with `r < w[0] + … + w[i]` (sums in Double, in index order); `n − 1` if none.
    public static func cumulativeIndex(_ w: UnsafePointer<Float>, n: Int, reaching r: Double) -> Int {
        Int(cw_cumulative_index(w, Int64(n), r))
    }

    /// `gate[i] = silu(gate[i]) * up[i]` (the kernels' vector exp).
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        cw_silu_mul(gate, up, Int64(n))
    }

    /// Rotary position embedding in place over `tokens` rows of `heads` × `headDim` (see `cw_rope`):
    /// pairs (2i, 2i+1) when `interleaved`, else (i, i + headDim/2); `cos`/`sin` hold
    /// `tokens` × `headDim/2` angles' values.
    public static func rope(_ x: UnsafeMutablePointer<Float>, tokens: Int, heads: Int, headDim: Int,
                            cos: UnsafePointer<Float>, sin: UnsafePointer<Float>, interleaved: Bool) {
        cw_rope(x, Int64(tokens), Int32(heads), Int32(headDim), cos, sin, interleaved ? 1 : 0)
    }

    /// `a[i] += b[i]`.
    public static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, n: Int) {
        cw_add(a, b, Int64(n))
    }

    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, n: Int) -> Float {
        cw_dot_f32(a, b, Int64(n))
    }
}
