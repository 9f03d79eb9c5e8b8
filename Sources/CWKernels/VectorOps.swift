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

    /// `gate[i] = silu(gate[i]) * up[i]`.
    public static func siluMul(_ gate: UnsafeMutablePointer<Float>, _ up: UnsafePointer<Float>, n: Int) {
        cw_silu_mul(gate, up, Int64(n))
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
