import CKernels
import Foundation

/// Element-wise and reduction operations on fp32 activation vectors.
public enum VectorOps {
    /// `out = x / sqrt(mean(x²) + eps) * weight` over `n` elements.
    public static func rmsNorm(_ x: UnsafePointer<Float>, _ weight: UnsafePointer<Float>, _ out: UnsafeMutablePointer<Float>, n: Int, eps: Float) {
        var ss: Float = 0
        for i in 0..<n { ss += x[i] * x[i] }
        let scale = 1 / (ss / Float(n) + eps).squareRoot()
        for i in 0..<n { out[i] = x[i] * scale * weight[i] }
    }

    /// In-place numerically safe softmax over `n` elements.
    public static func softmax(_ x: UnsafeMutablePointer<Float>, n: Int) {
        var m = -Float.infinity
        for i in 0..<n { m = max(m, x[i]) }
        var s: Float = 0
        for i in 0..<n { let e = expf(x[i] - m); x[i] = e; s += e }
        let inv = 1 / s
        for i in 0..<n { x[i] *= inv }
    }

    /// `gate[i] = silu(gate[i]) * up[i]`.
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        for i in 0..<n {
            let g = gate[i]
            gate[i] = g / (1 + expf(-g)) * up[i]
        }
    }

    /// `a[i] += b[i]`.
    public static func add(_ a: UnsafeMutablePointer<Float>, _ b: UnsafePointer<Float>, n: Int) {
        for i in 0..<n { a[i] += b[i] }
    }

    @inline(__always)
    public static func dot(_ a: UnsafePointer<Float>, _ b: UnsafePointer<Float>, n: Int) -> Float {
        cw_dot_f32(a, b, Int64(n))
    }
}
