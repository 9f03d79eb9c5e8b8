import CKernels

/// Matrix products of a weight matrix with activations.
public enum Kernels {
    /// `y[t][r] = Σ_c W[r][c] · x[t][c]` for `tokens` activation rows.
    /// `x` holds `tokens × W.cols` floats, `y` receives `tokens × W.rows` floats.
    public static func matmul(
        _ w: WeightMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>,
        precision: Precision = .exact, pool: ThreadPool
    ) {
        let cols = w.cols, rows = w.rows
        pool.parallelFor(rows, granularity: 4) { start, end in
            let scratch = UnsafeMutablePointer<Float>.allocate(capacity: cols)
            defer { scratch.deallocate() }
            for r in start..<end {
                w.dequantizeRow(r, into: scratch)
                for t in 0..<tokens {
                    y[t * rows + r] = cw_dot_f32(scratch, x + t * cols, Int64(cols))
                }
            }
        }
    }
}
