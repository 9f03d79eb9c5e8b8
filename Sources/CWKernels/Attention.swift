import CKernels
import Foundation

/// Fused causal attention over a KV cache: scores, softmax and the weighted sum of values are
/// computed one query row at a time, so no `tokens × context` score matrix is ever stored.
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
        let group = heads / kvHeads
        let qStride = heads * headDim
        let work = tokens * heads
        pool.parallelFor(work) { s, e in
            var scores = [Float](repeating: 0, count: startPos + tokens)
            scores.withUnsafeMutableBufferPointer { sc in
                for item in s..<e {
                    let t = item / heads, h = item % heads
                    let kvh = h / group
                    let qrow = q + t * qStride + h * headDim
                    let orow = out + t * qStride + h * headDim
                    let n = startPos + t + 1
                    var m = -Float.infinity
                    for j in 0..<n {
                        let sj = cw_dot_f32(qrow, k + j * kvStride + kvh * headDim, Int64(headDim)) * scale
                        sc[j] = sj
                        if sj > m { m = sj }
                    }
                    var sum: Float = 0
                    for j in 0..<n { let ex = expf(sc[j] - m); sc[j] = ex; sum += ex }
                    let inv = 1 / sum
                    for d in 0..<headDim { orow[d] = 0 }
                    for j in 0..<n {
                        let w = sc[j] * inv
                        let vrow = v + j * kvStride + kvh * headDim
                        for d in 0..<headDim { orow[d] += w * vrow[d] }
                    }
                }
            }
        }
    }
}
