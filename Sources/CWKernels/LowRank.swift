import CKernels

/// One factor of a low-rank update, stored as `rows` rows of `cols` elements (fp32, fp16 or int8
/// blocks) so that a rank-k slice of an ordered factorization is its first k rows (see `lora_kernels.h`):
/// a LoRA `A` / ladder `Vᵀ` is `rank × in`; a LoRA `B` / ladder `U·S` is kept transposed, `rank × out`.
public struct LowRankFactor: @unchecked Sendable {
    /// Element type of the stored factor.
    public enum Storage: String, Sendable, CaseIterable {
        /// fp32: exact (golden parity runs use it).
        case f32
        /// fp16: half the bytes read per token (relative rounding ≤ 2⁻¹¹ of each element).
        case f16
        /// int8 with one fp32 scale per 32 elements of a row (max|x|/127; `--precision fast`):
        /// 0.56× the bytes of fp16 at 576 columns; each element within half a step, i.e.
        /// ≤ max|block|/254.
        case q8
    }

    public let storage: Storage
    public let rows: Int
    public let cols: Int
    let buffer: FactorBuffer

    /// Bytes of one stored row.
    public var rowBytes: Int { Int(cw_lora_row_bytes(cType, Int64(cols))) }

    /// From row-major `rows × cols` fp32 values (missing values read as 0; callers check shapes).
    public init(rows: Int, cols: Int, storage: Storage, values: UnsafeBufferPointer<Float>) {
        self.rows = rows
        self.cols = cols
        self.storage = storage
        let rb = Int(cw_lora_row_bytes(Self.cType(storage), Int64(cols)))
        buffer = FactorBuffer(bytes: rows * rb)
        let n = min(values.count, rows * cols)
        guard let src = values.baseAddress, n > 0 else { return }
        switch storage {
        case .f32: buffer.raw.copyMemory(from: src, byteCount: n * 4)
        case .f16: cw_f32_to_f16_row(src, buffer.raw.assumingMemoryBound(to: UInt16.self), Int64(n))
        case .q8:
            let row = UnsafeMutablePointer<Float>.allocate(capacity: max(1, cols))
            defer { row.deallocate() }
            for r in 0..<rows {
                let have = max(0, min(cols, n - r * cols))
                row.update(repeating: 0, count: cols)
                if have > 0 { row.update(from: src + r * cols, count: have) }
                cw_lora_q8_row(row, buffer.raw + r * rb, Int64(cols))
            }
        }
    }

    /// Rows `rows` of this factor as an fp32 factor holding the values the kernels multiply by
    /// (fp16 exactly, int8 times its block's scale): products with it give the same bits as with
    /// this one, without widening the factor again in every call. Itself when already fp32 and whole.
    public func widened(rows r: Range<Int>) -> LowRankFactor {
        if storage == .f32 && r == 0..<rows { return self }
        let f = LowRankFactor(rows: r.count, cols: cols, storage: .f32, values: UnsafeBufferPointer<Float>(start: nil, count: 0))
        _ = cw_lora_to_f32(cType, buffer.raw, Int64(cols), Int64(r.lowerBound), Int64(r.upperBound),
                           f.buffer.raw.assumingMemoryBound(to: Float.self))
        return f
    }

    /// From row-major `rows × cols` fp32 values.
    public init(rows: Int, cols: Int, storage: Storage, values: [Float]) {
        self = values.withUnsafeBufferPointer { LowRankFactor(rows: rows, cols: cols, storage: storage, values: $0) }
    }

    /// The transpose of a row-major `rows × cols` matrix, i.e. a factor of `cols` rows × `rows`.
    public init(transposing m: [Float], rows: Int, cols: Int, storage: Storage) {
        var t = [Float](repeating: 0, count: rows * cols)
        for r in 0..<rows { for c in 0..<cols { t[c * rows + r] = m[r * cols + c] } }
        self.init(rows: cols, cols: rows, storage: storage, values: t)
    }

    /// Bytes held.
    public var bytes: Int { buffer.bytes }

    /// The stored elements, for prefetching (`Kernels.matmul(…, prefetch:)`); valid while this
    /// factor (or a copy of it) lives.
    public var memory: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: buffer.raw, count: buffer.bytes) }

    /// The stored rows `r` (for prefetching a slice).
    public func memory(rows r: Range<Int>) -> UnsafeRawBufferPointer {
        let lo = max(0, min(r.lowerBound, rows)), hi = max(lo, min(r.upperBound, rows))
        return UnsafeRawBufferPointer(start: buffer.raw + lo * rowBytes, count: (hi - lo) * rowBytes)
    }

    /// Element (r, c) as fp32.
    public func value(_ r: Int, _ c: Int) -> Float {
        switch storage {
        case .f32: return buffer.raw.assumingMemoryBound(to: Float.self)[r * cols + c]
        case .f16: return cw_fp16_to_fp32(buffer.raw.assumingMemoryBound(to: UInt16.self)[r * cols + c])
        case .q8:
            let row = buffer.raw + r * rowBytes
            // rows are 4·⌈cols/32⌉ + cols bytes apart: not 4-byte aligned when cols is not
            let scale = row.loadUnaligned(fromByteOffset: 4 * (c / 32), as: Float.self)
            let q = row.load(fromByteOffset: 4 * ((cols + 31) / 32) + c, as: Int8.self)
            return Float(q) * scale
        }
    }

    /// All elements, row-major, as fp32.
    public func floats() -> [Float] {
        [Float](unsafeUninitializedCapacity: rows * cols) { out, count in
            if let p = out.baseAddress, rows * cols > 0 {
                _ = cw_lora_to_f32(cType, buffer.raw, Int64(cols), 0, Int64(rows), p)
            }
            count = rows * cols
        }
    }

    static func cType(_ s: Storage) -> Int32 {
        switch s {
        case .f32: return Int32(CW_LORA_F32.rawValue)
        case .f16: return Int32(CW_LORA_F16.rawValue)
        case .q8: return Int32(CW_LORA_Q8.rawValue)
        }
    }
    var cType: Int32 { Self.cType(storage) }
    func rowPointer(_ r: Int) -> UnsafeRawPointer { UnsafeRawPointer(buffer.raw + r * rowBytes) }
}

/// Heap storage of a factor (64-byte aligned), freed with the last value that refers to it.
final class FactorBuffer: @unchecked Sendable {
    let raw: UnsafeMutableRawPointer
    let bytes: Int
    init(bytes: Int) {
        self.bytes = bytes
        raw = .allocate(byteCount: max(64, bytes), alignment: 64)
        raw.initializeMemory(as: UInt8.self, repeating: 0, count: max(64, bytes))
    }
    deinit { raw.deallocate() }
}

/// The two thin products of a low-rank update `y += Bᵀᵀ·(A·x)` (LoRA, rank-ladder slices).
public enum LowRank {
    /// `u[t·ldu + j] = Σ_c A[rows.lowerBound + j][c] · x[row(t)·ldx + c]` for `j < rows.count`;
    /// `row(t) = xRows?[t] ?? t`. Small products run on the calling thread.
    public static func down(_ a: LowRankFactor, rows: Range<Int>, x: UnsafePointer<Float>, ldx: Int, xRows: UnsafePointer<Int32>? = nil,
                            tokens: Int, u: UnsafeMutablePointer<Float>, ldu: Int, pool: ThreadPool) {
        guard !rows.isEmpty, tokens > 0, rows.upperBound <= a.rows else { return }
        _ = cw_lora_down(a.cType, a.rowPointer(rows.lowerBound), Int64(a.cols), Int64(rows.count), Int64(a.cols),
                         x, Int64(ldx), xRows, Int64(tokens), u, Int64(ldu), pool.handle)
    }

    /// `up` for the output columns `columns` only, on the calling thread (for use inside another
    /// pool job, e.g. a product's `after` hook); the same bits as `up` for those columns.
    public static func up(_ bt: LowRankFactor, rows: Range<Int>, u: UnsafePointer<Float>, ldu: Int, tokens: Int,
                          y: UnsafeMutablePointer<Float>, ldy: Int, yRows: UnsafePointer<Int32>? = nil, columns: Range<Int>) {
        guard !rows.isEmpty, tokens > 0, rows.upperBound <= bt.rows, columns.lowerBound >= 0, columns.upperBound <= bt.cols else { return }
        _ = cw_lora_up_range(bt.cType, bt.rowPointer(rows.lowerBound), Int64(bt.cols), Int64(rows.count), Int64(bt.cols),
                             u, Int64(ldu), Int64(tokens), y, Int64(ldy), yRows, Int64(columns.lowerBound), Int64(columns.upperBound))
    }

    /// `y[row(t)·ldy + o] += Σ_j u[t·ldu + j] · Bt[rows.lowerBound + j][o]`; `row(t) = yRows?[t] ?? t`.
    public static func up(_ bt: LowRankFactor, rows: Range<Int>, u: UnsafePointer<Float>, ldu: Int, tokens: Int,
                          y: UnsafeMutablePointer<Float>, ldy: Int, yRows: UnsafePointer<Int32>? = nil, pool: ThreadPool) {
        guard !rows.isEmpty, tokens > 0, rows.upperBound <= bt.rows else { return }
        _ = cw_lora_up(bt.cType, bt.rowPointer(rows.lowerBound), Int64(bt.cols), Int64(rows.count), Int64(bt.cols),
                       u, Int64(ldu), Int64(tokens), y, Int64(ldy), yRows, pool.handle)
    }
}
