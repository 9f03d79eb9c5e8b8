import CKernels

/// Errors raised by the kernel layer for malformed shapes or unsupported encodings.
public enum KernelError: Error, CustomStringConvertible, Equatable {
    case unsupportedType(String)
    case badShape(String)

    public var description: String {
        switch self {
        case .unsupportedType(let s): return "unsupported tensor type: \(s)"
        case .badShape(let s): return "bad tensor shape: \(s)"
        }
    }
}

/// A read-only view of a 2-D weight matrix in its storage encoding: `rows` rows (output
/// features) of `cols` elements (input features) each, rows contiguous, `rowBytes` apart.
///
/// The memory belongs to someone else (a memory-mapped file, usually); `owner` keeps it alive.
public struct WeightMatrix: @unchecked Sendable {
    public let type: TensorType
    public let rows: Int
    public let cols: Int
    public let base: UnsafeRawPointer
    public let rowBytes: Int
    public let owner: AnyObject?

    public init(type: TensorType, rows: Int, cols: Int, base: UnsafeRawPointer, owner: AnyObject?) throws {
        guard rows > 0, cols > 0 else { throw KernelError.badShape("\(rows)x\(cols)") }
        guard cols % type.blockElements == 0 else {
            throw KernelError.badShape("row length \(cols) is not a multiple of the \(type) block size \(type.blockElements)")
        }
        self.type = type
        self.rows = rows
        self.cols = cols
        self.base = base
        self.rowBytes = type.byteCount(elements: cols)
        self.owner = owner
    }

    /// Total bytes of the matrix in its encoding.
    public var byteCount: Int { rows * rowBytes }

    @inline(__always)
    public func row(_ r: Int) -> UnsafeRawPointer { base + r * rowBytes }

    /// Dequantizes row `r` into `dst` (`cols` floats).
    @inline(__always)
    public func dequantizeRow(_ r: Int, into dst: UnsafeMutablePointer<Float>) {
        _ = cw_dequantize_row(Int32(type.rawValue), row(r), dst, Int64(cols))
    }

    /// Row `r` with `delta` (`cols` floats) merged in, written in this matrix's own encoding to
    /// `dst` (`rowBytes` bytes): quantized blocks keep their scales and each index moves by an
    /// unbiased stochastic rounding of δ/step, drawn from `seed` and the row and column (see
    /// `cw_grid_merge_row`); F32 adds exactly, F16 rounds. False for K-quants and BF16.
    public func gridMergeRow(_ r: Int, delta: UnsafePointer<Float>, into dst: UnsafeMutableRawPointer, seed: UInt64) -> Bool {
        cw_grid_merge_row(Int32(type.rawValue), row(r), delta, dst, Int64(cols), seed, Int64(r)) == 0
    }
}
