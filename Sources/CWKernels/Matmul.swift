import CKernels

/// Matrix products of a weight matrix with activations.
public enum Kernels {
    /// `y[t][r] = Σ_c W[r][c] · x[t][c]` for `tokens` activation rows.
    /// `x` holds `tokens × W.cols` floats, `y` receives `tokens × W.rows` floats.
    ///
    /// `.exact` dequantizes weights to fp32 and accumulates fp32 FMAs (results independent of the
    /// thread count). `.fast` quantizes the activations to 16-bit blocks and uses integer dot
    /// products for the quantized types (decode, batched decode steps and, for the 32-element
    /// block types on x86, prefill; F32/F16/BF16 weights run the exact path); see `cw_matmul` in
    /// ckernels.h for the kernels and their error bound.
    public static func matmul(
        _ w: WeightMatrix, _ x: UnsafePointer<Float>, tokens: Int, _ y: UnsafeMutablePointer<Float>,
        precision: Precision = .exact, pool: ThreadPool
    ) {
        _ = cw_matmul(
            Int32(w.type.rawValue), w.base, Int64(w.rows), Int64(w.cols), Int64(w.rowBytes),
            x, Int64(tokens), y, precision == .fast ? Int32(CW_PRECISION_FAST.rawValue) : Int32(CW_PRECISION_EXACT.rawValue),
            pool.handle)
    }

    /// `matmul` for several matrices with the same `cols` and the same activations (a layer's
    /// q/k/v, or gate/up): the same results as one call per matrix, with the activations
    /// quantized once and one thread-pool job for all the rows.
    ///
    /// `prefetch`: memory the caller reads right after (e.g. the LoRA factors of these
    /// projections), pulled into cache while the batched integer kernel computes (4+ tokens in
    /// `fast`; ignored otherwise). It changes no result.
    ///
    /// `side`: `count` tasks run in the same pool job as the product, each whole on one thread and
    /// handed out first (a decode step's LoRA products, which then overlap the weight stream). They
    /// must not touch the targets' outputs; the call returns after all of them.
    ///
    /// `after(m, r0, r1, t0, t1)`: called once rows r0..<r1 × tokens t0..<t1 of target m are written,
    /// on the thread that wrote them, possibly at the same time as calls for other parts (each part
    /// once) — a prefill's LoRA up product adds to that part of y while it is in that core's cache.
    public static func matmul(
        _ targets: [(w: WeightMatrix, y: UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>, tokens: Int,
        precision: Precision = .exact, prefetch: [UnsafeRawBufferPointer] = [],
        side: (count: Int, run: (Int) -> Void)? = nil, after: ((Int, Int, Int, Int, Int) -> Void)? = nil, pool: ThreadPool
    ) {
        guard let cols = targets.first?.w.cols, targets.allSatisfy({ $0.w.cols == cols }) else {
            if let side { for i in 0..<side.count { side.run(i) } }
            for (m, t) in targets.enumerated() {
                matmul(t.w, x, tokens: tokens, t.y, precision: precision, pool: pool)
                after?(m, 0, t.w.rows, 0, tokens)
            }
            return
        }
        let mats = targets.map { cw_mat(type: Int32($0.w.type.rawValue), w: $0.w.base, rows: Int64($0.w.rows), row_bytes: Int64($0.w.rowBytes), y: $0.y) }
        let spans = prefetch.compactMap { b in b.baseAddress.map { cw_span(p: $0, bytes: Int64(b.count)) } }
        let prec = precision == .fast ? Int32(CW_PRECISION_FAST.rawValue) : Int32(CW_PRECISION_EXACT.rawValue)
        withoutActuallyEscaping(side?.run ?? { _ in }) { run in
            withoutActuallyEscaping(after ?? { _, _, _, _, _ in }) { afterRun in
                var box = SideTasks(run: run, after: afterRun)
                withUnsafeMutablePointer(to: &box) { bp in
                    // count 0: no side tasks (the C side then takes none); after: NULL when not given
                    typealias AfterFn = @convention(c) (UnsafeMutableRawPointer?, Int32, Int64, Int64, Int64, Int64) -> Void
                    let afterFn: AfterFn = { ctx, m, r0, r1, t0, t1 in
                        ctx?.assumingMemoryBound(to: SideTasks.self).pointee.after(Int(m), Int(r0), Int(r1), Int(t0), Int(t1))
                    }
                    var c = cw_side(fn: { ctx, i in ctx?.assumingMemoryBound(to: SideTasks.self).pointee.run(Int(i)) },
                                    ctx: UnsafeMutableRawPointer(bp), count: Int64(side?.count ?? 0),
                                    after: after == nil ? nil : afterFn)
                    mats.withUnsafeBufferPointer { mp in
                        spans.withUnsafeBufferPointer { sp in
                            _ = cw_matmul_many_side(mp.baseAddress, Int32(mats.count), Int64(cols), x, Int64(tokens), prec,
                                                    sp.baseAddress, Int32(sp.count), &c, pool.handle)
                        }
                    }
                }
            }
        }
    }
}

extension Kernels {
    /// `matmul` of several targets that adds low-rank `terms` to each part of the outputs as soon as
    /// the thread that computed it has written it — a one-token step's LoRA / rank-ladder up
    /// products, whose down products the caller has run (`u`): no delta buffers, no adds after the
    /// product, no Swift inside the pool job. The same bits as the product followed by
    /// `LowRank.up` of each term, in order. The terms' factor slices and `prefetch` (e.g. what the
    /// next step's delta reads first) are prefetched as the call starts; that changes no result.
    public static func matmul(
        _ targets: [(w: WeightMatrix, y: UnsafeMutablePointer<Float>)], _ x: UnsafePointer<Float>, tokens: Int,
        precision: Precision = .exact, terms: [LowRankTerm], prefetch: [UnsafeRawBufferPointer] = [], pool: ThreadPool
    ) {
        let prec = precision == .fast ? Int32(CW_PRECISION_FAST.rawValue) : Int32(CW_PRECISION_EXACT.rawValue)
        let spans = prefetch.compactMap { b in b.baseAddress.map { cw_span(p: $0, bytes: Int64(b.count)) } }
        func run(_ mats: [cw_mat], cols: Int, _ cterms: [cw_lowrank_term]) {
            mats.withUnsafeBufferPointer { mp in
                cterms.withUnsafeBufferPointer { tp in
                    spans.withUnsafeBufferPointer { sp in
                        _ = cw_matmul_many_terms(mp.baseAddress, Int32(mats.count), Int64(cols), x, Int64(tokens), prec,
                                                 tp.baseAddress, Int32(tp.count), sp.baseAddress, Int32(sp.count), pool.handle)
                    }
                }
            }
        }
        func mat(_ t: (w: WeightMatrix, y: UnsafeMutablePointer<Float>)) -> cw_mat {
            cw_mat(type: Int32(t.w.type.rawValue), w: t.w.base, rows: Int64(t.w.rows), row_bytes: Int64(t.w.rowBytes), y: t.y)
        }
        func cterm(_ t: LowRankTerm, mat: Int) -> cw_lowrank_term {
            cw_lowrank_term(mat: Int32(mat), type: t.factor.cType, bt: t.factor.rowPointer(t.rows.lowerBound),
                            ldb: Int64(t.factor.cols), k: Int64(t.rows.count), u: t.u)
        }
        // The terms' factors (and their buffers) live in `terms` for the whole call.
        for t in terms {
            precondition(t.rows.lowerBound >= 0 && t.rows.upperBound <= t.factor.rows && t.target >= 0 && t.target < targets.count
                         && t.factor.cols >= targets[t.target].w.rows, "low-rank term outside its factor or targets")
        }
        let usable = terms.filter { !$0.rows.isEmpty }
        guard let cols = targets.first?.w.cols, targets.allSatisfy({ $0.w.cols == cols }) else {
            for (m, t) in targets.enumerated() {
                run([mat(t)], cols: t.w.cols, usable.filter { $0.target == m }.map { cterm($0, mat: 0) })
            }
            return
        }
        run(targets.map(mat), cols: cols, usable.map { cterm($0, mat: $0.target) })
    }
}

/// One low-rank term of a product's output (`Kernels.matmul(_:_:tokens:precision:terms:pool:)`):
/// `y_target[t][o] += Σ_j u[t·rows.count + j] · factor[rows.lowerBound + j][o]`.
public struct LowRankTerm {
    public var target: Int
    /// An up factor (`rank × out`, e.g. a LoRA `Bᵀ` or a ladder's `(U·S)ᵀ`); `rows` its slice.
    public var factor: LowRankFactor
    public var rows: Range<Int>
    /// `tokens × rows.count` values, read during the call.
    public var u: UnsafePointer<Float>

    public init(target: Int, factor: LowRankFactor, rows: Range<Int>, u: UnsafePointer<Float>) {
        self.target = target
        self.factor = factor
        self.rows = rows
        self.u = u
    }
}

/// The side tasks and the after-rows hook of a product, reached from C through a context pointer.
private struct SideTasks {
    let run: (Int) -> Void
    let after: (Int, Int, Int, Int, Int) -> Void
}

/// The kernel implementation levels, chosen at run time from the CPU's features.
public enum KernelPath: String, Sendable, CaseIterable, CustomStringConvertible {
    case portable, avx2, avx512

    var cValue: Int32 {
        switch self {
        case .portable: return Int32(CW_PATH_PORTABLE.rawValue)
        case .avx2: return Int32(CW_PATH_AVX2.rawValue)
        case .avx512: return Int32(CW_PATH_AVX512.rawValue)
        }
    }

    /// Whether this CPU can run the level.
    public var isSupported: Bool { cw_path_supported(cValue) != 0 }

    /// The levels this CPU can run.
    public static var supported: [KernelPath] { allCases.filter(\.isSupported) }

    /// The level in use: the best the CPU supports, or `CHUNKWISE_KERNELS=portable|avx2|avx512`.
    /// Setting it (tests, benchmarks) is process-wide; unsupported levels are ignored.
    public static var current: KernelPath {
        get {
            switch UInt32(cw_kernel_path()) {
            case CW_PATH_AVX512.rawValue: return .avx512
            case CW_PATH_AVX2.rawValue: return .avx2
            default: return .portable
            }
        }
        set { _ = cw_set_kernel_path(newValue.cValue) }
    }

    public var description: String { rawValue }
}

/// What the kernels found on this CPU.
public enum CPUFeatures {
    /// Raw `cw_cpu_feature` bits.
    public static var bits: UInt32 { cw_cpu_features() }

    /// Feature names found on this CPU.
    public static var names: [String] {
        let all: [(UInt32, String)] = [
            (CW_CPU_AVX2.rawValue, "AVX2"), (CW_CPU_FMA.rawValue, "FMA"), (CW_CPU_F16C.rawValue, "F16C"),
            (CW_CPU_AVX512F.rawValue, "AVX512F"), (CW_CPU_AVX512BW.rawValue, "AVX512BW"),
            (CW_CPU_AVX512VL.rawValue, "AVX512VL"), (CW_CPU_AVX512DQ.rawValue, "AVX512DQ"),
            (CW_CPU_AVX512VNNI.rawValue, "AVX512_VNNI"), (CW_CPU_AVX512BF16.rawValue, "AVX512_BF16"),
            (CW_CPU_NEON.rawValue, "NEON"), (CW_CPU_DOTPROD.rawValue, "DOTPROD"),
        ]
        let b = bits
        return all.filter { b & $0.0 != 0 }.map(\.1)
    }

    /// One line for logs and `--version`-style output, e.g. `kernels=avx512 (AVX2 FMA … AVX512_VNNI)`.
    public static var current: String {
        let n = names
        return "kernels=\(KernelPath.current) (\(n.isEmpty ? "baseline" : n.joined(separator: " ")))"
    }
}

extension Kernels {
    /// Reads `count` floats once, split over the pool, and returns their sum: a STREAM-like
    /// read-bandwidth probe (bytes = 4·count over the elapsed time) for benchmarks and the CLI.
    public static func readProbe(_ a: UnsafePointer<Float>, count: Int, pool: ThreadPool) -> Double {
        cw_read_probe(a, Int64(count), pool.handle)
    }
}
