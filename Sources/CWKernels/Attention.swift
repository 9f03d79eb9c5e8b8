import CKernels

/// Fused causal attention over a KV cache: scores, softmax and the weighted sum of values are
/// computed one query row at a time (SIMD dot products and axpys in C, parallel over
/// (token, head)), so no `tokens × context` score matrix is ever stored.
public enum Attention {
    /// Causal grouped-query attention.
    ///
    /// - `q`: `tokens × (heads·headDim)` queries; query `t` sits at position `startPos + t` and
    ///   sees keys `0 ... startPos + t`.
    /// - `k`, `v`: cached keys and values, one row of `kvHeads·headDim` floats per position,
    ///   rows `kvStride` floats apart.
    /// - `out`: `tokens × (heads·headDim)`.
    public static func causal(
        q: UnsafePointer<Float>, k: UnsafePointer<Float>, v: UnsafePointer<Float>,
        out: UnsafeMutablePointer<Float>, tokens: Int, startPos: Int,
        heads: Int, kvHeads: Int, headDim: Int, kvStride: Int, scale: Float, pool: ThreadPool
    ) {
        cw_attention(q, k, v, out, Int64(tokens), Int64(startPos), Int32(heads), Int32(kvHeads),
                     Int32(headDim), Int64(kvStride), scale, pool.handle)
    }
}
