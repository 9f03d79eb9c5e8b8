import CWKernels
import Foundation
import XCTest

/// Runs `body` once per kernel level this CPU supports, restoring the level afterwards.
func forEachPath(_ body: (KernelPath) throws -> Void) rethrows {
    let saved = KernelPath.current
    defer { KernelPath.current = saved }
    for p in KernelPath.supported {
        KernelPath.current = p
        try body(p)
    }
}

struct Case {
    let type: TensorType
    let rows: Int
    let cols: Int
    let bytes: [UInt8]
    let w: [Float] // reference dequantized, rows × cols
}

func makeCase(_ type: TensorType, rows: Int, cols: Int, seed: UInt64) -> Case {
    var rng = RNG(seed)
    let bytes = randomMatrix(type, rows: rows, cols: cols, rng: &rng)
    let rb = type.byteCount(elements: cols)
    var w = [Float]()
    w.reserveCapacity(rows * cols)
    for r in 0..<rows { w += refDequantRow(type, bytes, r * rb, cols) }
    return Case(type: type, rows: rows, cols: cols, bytes: bytes, w: w)
}

func randomX(_ n: Int, seed: UInt64) -> [Float] {
    var rng = RNG(seed)
    return (0..<n).map { _ in rng.float(-1, 1) }
}

/// Runs the kernel on a case; returns y (tokens × rows).
func runMatmul(_ c: Case, _ x: [Float], tokens: Int, precision: Precision, pool: ThreadPool) throws -> [Float] {
    var y = [Float](repeating: .nan, count: tokens * c.rows)
    try c.bytes.withUnsafeBytes { wb in
        let m = try WeightMatrix(type: c.type, rows: c.rows, cols: c.cols, base: wb.baseAddress!, owner: nil)
        x.withUnsafeBufferPointer { xb in
            y.withUnsafeMutableBufferPointer { yb in
                Kernels.matmul(m, xb.baseAddress!, tokens: tokens, yb.baseAddress!, precision: precision, pool: pool)
            }
        }
    }
    return y
}

let quantTypes: [TensorType] = [.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .q4_K, .q5_K, .q6_K]

final class DequantTests: XCTestCase {
    func testDequantizeMatchesGGMLBitExactly() throws {
        try forEachPath { path in
            for type in TensorType.allCases {
                let cols = type.blockElements == 1 ? 77 : type.blockElements * 3
                let c = makeCase(type, rows: 3, cols: cols, seed: 7 &+ UInt64(type.rawValue))
                try c.bytes.withUnsafeBytes { wb in
                    let m = try WeightMatrix(type: type, rows: c.rows, cols: cols, base: wb.baseAddress!, owner: nil)
                    var out = [Float](repeating: .nan, count: cols)
                    for r in 0..<c.rows {
                        m.dequantizeRow(r, into: &out)
                        for i in 0..<cols where out[i].bitPattern != c.w[r * cols + i].bitPattern {
                            XCTFail("\(path) \(type) row \(r) [\(i)]: \(out[i]) != \(c.w[r * cols + i])")
                            return
                        }
                    }
                }
            }
        }
    }

    func testBadShapesThrow() throws {
        let buf = [UInt8](repeating: 0, count: 1024)
        try buf.withUnsafeBytes { b in
            XCTAssertThrowsError(try WeightMatrix(type: .q4_0, rows: 1, cols: 33, base: b.baseAddress!, owner: nil))
            XCTAssertThrowsError(try WeightMatrix(type: .q4_K, rows: 1, cols: 128, base: b.baseAddress!, owner: nil))
            XCTAssertThrowsError(try WeightMatrix(type: .f32, rows: 0, cols: 4, base: b.baseAddress!, owner: nil))
        }
    }
}

final class MatmulTests: XCTestCase {
    let pool1 = ThreadPool(threads: 1)
    let pool4 = ThreadPool(threads: 4)

    /// Exact mode: |y - ref| ≤ 1e-5 · Σ|w·x| against a float64 dot of the dequantized weights.
    func checkExact(_ c: Case, tokens: Int, label: String) throws {
        let x = randomX(tokens * c.cols, seed: UInt64(c.rows * 31 + tokens))
        let y1 = try runMatmul(c, x, tokens: tokens, precision: .exact, pool: pool1)
        let y4 = try runMatmul(c, x, tokens: tokens, precision: .exact, pool: pool4)
        for t in 0..<tokens {
            for r in 0..<c.rows {
                var ref = 0.0, mag = 0.0
                for k in 0..<c.cols {
                    let p = Double(c.w[r * c.cols + k]) * Double(x[t * c.cols + k])
                    ref += p; mag += abs(p)
                }
                let got = y1[t * c.rows + r]
                if !(abs(Double(got) - ref) <= 1e-5 * mag + 1e-30) {
                    XCTFail("\(label) \(c.type) \(c.rows)x\(c.cols) t=\(tokens) y[\(t)][\(r)]=\(got) ref=\(ref) mag=\(mag)")
                    return
                }
                if y4[t * c.rows + r].bitPattern != got.bitPattern {
                    XCTFail("\(label) \(c.type) thread count changed y[\(t)][\(r)]: \(got) vs \(y4[t * c.rows + r])")
                    return
                }
            }
        }
    }

    /// Fast mode: the only approximation is rounding x to int16 (|x - x̂| ≤ amax_block/65534), so
    /// |y - ref| ≤ Σ_blocks (amax_b/65534)·Σ_{i∈b}|w_i| (+1e-5·Σ|w·x| for fp32 accumulation).
    func checkFast(_ c: Case, tokens: Int, label: String, pool: ThreadPool, x given: [Float]? = nil) throws {
        let x = given ?? randomX(tokens * c.cols, seed: UInt64(c.rows * 17 + tokens))
        let y = try runMatmul(c, x, tokens: tokens, precision: .fast, pool: pool)
        let qb = c.type.blockElements == 256 ? 256 : 32
        for t in 0..<tokens {
            let xr = Array(x[(t * c.cols)..<((t + 1) * c.cols)])
            for r in 0..<c.rows {
                var ref = 0.0, mag = 0.0, bound = 0.0
                for b in 0..<(c.cols / qb) {
                    var amax = 0.0, wsum = 0.0
                    for k in (b * qb)..<((b + 1) * qb) {
                        let wk = Double(c.w[r * c.cols + k]), xk = Double(xr[k])
                        ref += wk * xk; mag += abs(wk * xk); wsum += abs(wk); amax = max(amax, abs(xk))
                    }
                    bound += amax / 65534 * 1.001 * wsum
                }
                let got = Double(y[t * c.rows + r])
                if !(abs(got - ref) <= bound + 1e-5 * mag + 1e-30) {
                    XCTFail("\(label) fast \(c.type) \(c.rows)x\(c.cols) t=\(tokens) y[\(t)][\(r)]=\(got) ref=\(ref) bound=\(bound)")
                    return
                }
            }
        }
    }

    func testExactAllTypesOddShapes() throws {
        try forEachPath { path in
            for type in TensorType.allCases {
                let be = type.blockElements
                let colsList = be == 1 ? [1, 3, 17, 64, 100] : (be == 32 ? [32, 64, 96, 320] : [256, 512, 768])
                for (i, cols) in colsList.enumerated() {
                    let rows = [1, 5, 17, 23, 67][i % 5]
                    let c = makeCase(type, rows: rows, cols: cols, seed: UInt64(i * 100) + UInt64(type.rawValue))
                    for tokens in [1, 2, 3, 7] { try checkExact(c, tokens: tokens, label: "\(path)") }
                }
            }
        }
    }

    func testExactPrefill64Tokens() throws {
        try forEachPath { path in
            for type in [TensorType.f32, .f16, .q4_1, .q8_0, .q6_K] {
                let cols = type.blockElements == 256 ? 256 : 96
                try checkExact(makeCase(type, rows: 37, cols: cols, seed: 5), tokens: 64, label: "\(path)")
            }
        }
    }

    func testFastAllQuantTypes() throws {
        try forEachPath { path in
            for type in quantTypes {
                let be = type.blockElements
                let colsList = be == 32 ? [32, 64, 96, 320] : [256, 512, 768]
                for (i, cols) in colsList.enumerated() {
                    let rows = [1, 5, 17, 23][i % 4]
                    let c = makeCase(type, rows: rows, cols: cols, seed: UInt64(i * 7) + UInt64(type.rawValue))
                    for tokens in [1, 2, 3, 4, 7, 8, 9, 16] {
                        try checkFast(c, tokens: tokens, label: "\(path)", pool: i % 2 == 0 ? pool1 : pool4)
                    }
                }
                try checkFast(makeCase(type, rows: 19, cols: be == 32 ? 64 : 256, seed: 3), tokens: 64, label: "\(path)", pool: pool4)
            }
        }
    }

    /// Largest quants and scales with every activation at ±amax (int16 ±32767): the integer
    /// sums must not overflow (Q5_K's per-lane block sum comes within 5% of 2^31; Q6_K's signed
    /// scales of -128 would overflow a block-wide int32 sum).
    func testFastExtremeValuesDoNotOverflow() throws {
        try forEachPath { path in
            for type in quantTypes {
                let be = type.blockElements, cols = 2 * (be == 32 ? 64 : 256), rows = 3
                let bb = type.byteCount(elements: be)
                // 0xFF: every quant and 6-bit scale/min at its maximum; Q8_0 and Q6_K get 0x80
                // (-128), the largest magnitude of a signed byte.
                var bytes = [UInt8](repeating: type == .q8_0 || type == .q6_K ? 0x80 : 0xFF, count: rows * cols / be * bb)
                let halves: [Int] = switch type {
                case .q4_1, .q5_1, .q4_K, .q5_K: [0, 2]
                case .q6_K: [208]
                default: [0]
                }
                for b in stride(from: 0, to: bytes.count, by: bb) {
                    for h in halves { bytes[b + h] = 0x00; bytes[b + h + 1] = 0x3C } // 1.0
                    if type == .q6_K { for i in 0..<128 { bytes[b + i] = 0xFF }; for i in 128..<192 { bytes[b + i] = 0xFF } }
                }
                var w = [Float]()
                for r in 0..<rows { w += refDequantRow(type, bytes, r * cols / be * bb, cols) }
                let c = Case(type: type, rows: rows, cols: cols, bytes: bytes, w: w)
                for sign: Float in [1, -1] {
                    // one token (per-pair kernel) and a batch of eight (tiled kernel for the 32-blocks)
                    for tokens in [1, 8] {
                        try checkFast(c, tokens: tokens, label: "\(path) extreme", pool: pool1,
                                      x: [Float](repeating: sign, count: tokens * cols))
                    }
                }
            }
        }
    }

    /// The batched (tiled) fast kernel computes each token's outputs with the same sequence of
    /// operations whatever the other tokens in the call, their number or order, and the thread
    /// count: a token's result is bit-identical across batches (at the AVX2 level every batch takes
    /// the rotated layout, and one of 4–8 tokens widens Q4 weights in registers). The AVX2 and
    /// AVX-512 levels agree bit for bit (integer sums are exact; the float steps are the same
    /// instructions).
    func testFastBatchedTokensAreIndependentOfTheBatch() throws {
        for type in [TensorType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0] {
            let c = makeCase(type, rows: 37, cols: 96, seed: 40 + UInt64(type.rawValue))
            let n = 16, cols = c.cols
            let x = randomX(n * cols, seed: 77)
            func rows(_ order: [Int]) -> [Float] { order.flatMap { Array(x[($0 * cols)..<(($0 + 1) * cols)]) } }
            var byPath: [[Float]] = []
            try forEachPath { path in
                let all = try runMatmul(c, x, tokens: n, precision: .fast, pool: pool4)
                for order in [Array((0..<n).reversed()), [3, 9, 1, 12, 5], [15, 2, 8, 0, 11, 6, 4, 13, 7], [10, 14, 1, 3],
                              [6, 0, 13, 2, 9, 4, 11, 15]] {
                    let y = try runMatmul(c, rows(order), tokens: order.count, precision: .fast, pool: order.count % 2 == 0 ? pool1 : pool4)
                    for (i, t) in order.enumerated() {
                        for r in 0..<c.rows where y[i * c.rows + r].bitPattern != all[t * c.rows + r].bitPattern {
                            XCTFail("\(path) \(type): token \(t) row \(r) in a batch of \(order.count): \(y[i * c.rows + r]) vs \(all[t * c.rows + r])")
                            return
                        }
                    }
                }
                if path != .portable { byPath.append(all) }
            }
            for other in byPath.dropFirst() where other.map(\.bitPattern) != byPath[0].map(\.bitPattern) {
                XCTFail("\(type): the AVX2 and AVX-512 batched kernels differ")
            }
        }
    }

    /// Several matrices times the same activations in one call (q/k/v, gate/up): bit-identical to
    /// one call per matrix, for every kernel (per-pair, batched, exact, F16, K-quants, mixed types).
    func testMatmulManyEqualsSeparateCalls() throws {
        let groups: [[(TensorType, Int)]] = [
            [(.q4_1, 40), (.q8_0, 13), (.q4_0, 16)], [(.q5_0, 7), (.q5_1, 33)], [(.q4_K, 9), (.q6_K, 20)],
            [(.f16, 11), (.q4_1, 5)], [(.q8_0, 64)],
        ]
        try forEachPath { path in
            for (gi, group) in groups.enumerated() {
                let cols = group.contains { $0.0.blockElements == 256 } ? 256 : 96
                let cases = group.enumerated().map { makeCase($1.0, rows: $1.1, cols: cols, seed: UInt64(gi * 10 + $0)) }
                for tokens in [1, 2, 5, 8, 17] {
                    let x = randomX(tokens * cols, seed: UInt64(tokens))
                    for precision in [Precision.fast, .exact] {
                        let separate = try cases.map { try runMatmul($0, x, tokens: tokens, precision: precision, pool: pool4) }
                        // Weights copied to raw memory that outlives the call; outputs pre-filled with NaN.
                        let raws = cases.map { c -> UnsafeMutableRawPointer in
                            let p = UnsafeMutableRawPointer.allocate(byteCount: c.bytes.count, alignment: 64)
                            c.bytes.withUnsafeBytes { p.copyMemory(from: $0.baseAddress!, byteCount: c.bytes.count) }
                            return p
                        }
                        let ys = cases.map { c -> UnsafeMutablePointer<Float> in
                            let p = UnsafeMutablePointer<Float>.allocate(capacity: tokens * c.rows)
                            p.initialize(repeating: .nan, count: tokens * c.rows)
                            return p
                        }
                        defer { raws.forEach { $0.deallocate() }; ys.forEach { $0.deallocate() } }
                        let mats = try zip(cases, raws).map { try WeightMatrix(type: $0.type, rows: $0.rows, cols: $0.cols, base: UnsafeRawPointer($1), owner: nil) }
                        // Half the calls also prefetch memory (odd sizes, unaligned): no effect on results.
                        let extra = UnsafeMutableRawPointer.allocate(byteCount: 100_003, alignment: 64)
                        defer { extra.deallocate() }
                        let spans = gi % 2 == 0 ? [] : [UnsafeRawBufferPointer(start: extra + 3, count: 100_000),
                                                         UnsafeRawBufferPointer(start: raws[0], count: 77), UnsafeRawBufferPointer(start: nil, count: 0)]
                        // Some calls also run side tasks in the same job: each exactly once, results unchanged.
                        let sideCount = gi % 3 == 0 ? 0 : 2 * gi + 1
                        let ran = UnsafeMutablePointer<Int>.allocate(capacity: max(1, sideCount))
                        ran.initialize(repeating: 0, count: max(1, sideCount))
                        defer { ran.deallocate() }
                        x.withUnsafeBufferPointer { xb in
                            Kernels.matmul(zip(mats, ys).map { (w: $0.0, y: $0.1) }, xb.baseAddress!, tokens: tokens, precision: precision,
                                           prefetch: spans, side: sideCount == 0 ? nil : (sideCount, { ran[$0] += 1 }), pool: pool4)
                        }
                        for i in 0..<sideCount where ran[i] != 1 {
                            XCTFail("\(path) \(precision) group \(gi), \(tokens) tokens: side task \(i) ran \(ran[i]) times")
                        }
                        let outs = zip(cases, ys).map { Array(UnsafeBufferPointer(start: $1, count: tokens * $0.rows)) }
                        for i in cases.indices where outs[i].map(\.bitPattern) != separate[i].map(\.bitPattern) {
                            XCTFail("\(path) \(precision) \(cases[i].type) in group \(gi), \(tokens) tokens: differs from a separate call")
                        }
                    }
                }
            }
        }
    }

    /// Merging a delta into a row in its own encoding (`WeightMatrix.gridMergeRow`): block scales
    /// and mins unchanged; every weight moves to one of the two grid points around W + δ (or stops
    /// at the end of the index range); over many seeds the change averages to δ (unbiased);
    /// the same seed gives the same bytes. F32 adds exactly, F16 rounds the sum once.
    func testGridMergeKeepsScalesAndIsUnbiased() throws {
        let rows = 8, cols = 64
        for type in [TensorType.q4_0, .q4_1, .q5_0, .q5_1, .q8_0, .f16, .f32] {
            let c = makeCase(type, rows: rows, cols: cols, seed: 7 + UInt64(type.rawValue))
            var rng = RNG(99)
            let delta = (0..<(rows * cols)).map { _ in rng.float(-0.03, 0.03) }
            let rb = type.byteCount(elements: cols)
            var sumSteps = 0.0, sumTarget = 0.0, unclamped = 0
            var first: [UInt8] = []
            try c.bytes.withUnsafeBytes { wb in
                let m = try WeightMatrix(type: type, rows: rows, cols: cols, base: wb.baseAddress!, owner: nil)
                let seeds: [UInt64] = type.isQuantized ? Array(0..<200) : [0]
                var clamped = Set<Int>()
                var steps = [Double](repeating: 0, count: rows * cols)
                for seed in seeds {
                    var out = [UInt8](repeating: 0, count: rows * rb)
                    for r in 0..<rows {
                        let ok = delta.withUnsafeBufferPointer { d in
                            out.withUnsafeMutableBytes { ob in m.gridMergeRow(r, delta: d.baseAddress! + r * cols, into: ob.baseAddress! + r * rb, seed: seed) }
                        }
                        XCTAssertTrue(ok)
                    }
                    if seed == 0 { first = out }
                    if seed == 1 {  // the same seed again gives the same bytes
                        var again = [UInt8](repeating: 0, count: rows * rb)
                        for r in 0..<rows {
                            _ = delta.withUnsafeBufferPointer { d in
                                again.withUnsafeMutableBytes { ob in m.gridMergeRow(r, delta: d.baseAddress! + r * cols, into: ob.baseAddress! + r * rb, seed: 0) }
                            }
                        }
                        XCTAssertEqual(again, first, "\(type): same seed, same bytes")
                        XCTAssertNotEqual(out, first, "\(type): another seed, other draws")
                    }
                    for r in 0..<rows {
                        let merged = refDequantRow(type, out, r * rb, cols)
                        for col in 0..<cols {
                            let i = r * cols + col
                            let w = c.w[i], d = delta[i]
                            switch type {
                            case .f32: XCTAssertEqual(merged[col], w + d)
                            case .f16: XCTAssertEqual(merged[col], Float(Float16(w + d)))
                            default:
                                let blockStart = r * rb + col / 32 * type.blockBytes
                                let headerBytes = type == .q4_1 || type == .q5_1 ? 4 : 2
                                XCTAssertEqual(Array(out[blockStart..<(blockStart + headerBytes)]), Array(c.bytes[blockStart..<(blockStart + headerBytes)]),
                                               "\(type): block scale (and min) unchanged")
                                let step = Double(f16(UInt16(c.bytes[blockStart]) | UInt16(c.bytes[blockStart + 1]) << 8))
                                let k = ((Double(merged[col]) - Double(w)) / step).rounded()
                                let t = Double(d) / step
                                if k == t.rounded(.down) || k == t.rounded(.down) + 1 {
                                    steps[i] += k
                                } else {
                                    // only the end of the index range may stop a move short
                                    XCTAssertTrue(abs(k) < abs(t) + 1 && (k == 0 || k.sign == t.sign), "\(type) [\(r),\(col)]: moved \(k) steps for \(t)")
                                    clamped.insert(i)
                                }
                            }
                        }
                    }
                }
                if type.isQuantized {
                    for r in 0..<rows {
                        for col in 0..<cols where !clamped.contains(r * cols + col) {
                            let i = r * cols + col
                            let blockStart = r * rb + col / 32 * type.blockBytes
                            let step = Double(f16(UInt16(c.bytes[blockStart]) | UInt16(c.bytes[blockStart + 1]) << 8))
                            sumSteps += steps[i] / Double(seeds.count)
                            sumTarget += Double(delta[i]) / step
                            unclamped += 1
                        }
                    }
                    XCTAssertGreaterThan(unclamped, rows * cols / 2, "\(type)")
                    // mean over seeds and weights of (steps moved − δ/step): 0 ± a few σ/√(200·n)
                    XCTAssertEqual(sumSteps / Double(unclamped), sumTarget / Double(unclamped), accuracy: 0.01, "\(type): unbiased")
                }
            }
        }
        // K-quants are refused (the merge then keeps an fp16 copy).
        let k = makeCase(.q4_K, rows: 1, cols: 256, seed: 1)
        try k.bytes.withUnsafeBytes { wb in
            let m = try WeightMatrix(type: .q4_K, rows: 1, cols: 256, base: wb.baseAddress!, owner: nil)
            var out = [UInt8](repeating: 0, count: k.bytes.count)
            let d = [Float](repeating: 0, count: 256)
            XCTAssertFalse(d.withUnsafeBufferPointer { db in out.withUnsafeMutableBytes { m.gridMergeRow(0, delta: db.baseAddress!, into: $0.baseAddress!, seed: 0) } })
        }
    }

    func testModelSizedShapes() throws {
        // SmolLM2-135M FFN shapes: several row tiles per thread, 18/48 blocks per row.
        for (type, rows, cols) in [(TensorType.q4_1, 1536, 576), (.q8_0, 576, 1536), (.q6_K, 576, 1536)] {
            let c = makeCase(type, rows: rows, cols: cols, seed: 21)
            try checkExact(c, tokens: 2, label: "model")
            try checkFast(c, tokens: 1, label: "model", pool: pool4)
            try checkFast(c, tokens: 8, label: "model", pool: pool4)
        }
    }

    func testFastOnFloatTypesIsExact() throws {
        for type in [TensorType.f32, .f16, .bf16] {
            let c = makeCase(type, rows: 9, cols: 40, seed: 11)
            let x = randomX(3 * 40, seed: 2)
            XCTAssertEqual(try runMatmul(c, x, tokens: 3, precision: .fast, pool: pool4), try runMatmul(c, x, tokens: 3, precision: .exact, pool: pool4))
        }
    }

    func testAllPathsAgreeExactly() throws {
        // Different levels may round differently, but all must stay within the exact-mode bound.
        let c = makeCase(.q4_K, rows: 33, cols: 512, seed: 9)
        try forEachPath { path in try checkExact(c, tokens: 5, label: "\(path)") }
    }
}

final class ThreadPoolTests: XCTestCase {
    func testCoversRangeOnceWithGranularity() {
        let pool = ThreadPool(threads: 4)
        for count in [1, 2, 3, 15, 16, 17, 100, 1000] {
            for g in [1, 4, 16] {
                var hits = [Int](repeating: 0, count: count)
                let lock = NSLock()
                hits.withUnsafeMutableBufferPointer { h in
                    pool.parallelFor(count, granularity: g) { s, e in
                        XCTAssert(s % g == 0)
                        lock.lock(); for i in s..<e { h[i] += 1 }; lock.unlock()
                    }
                }
                XCTAssertEqual(hits, [Int](repeating: 1, count: count), "count \(count) g \(g)")
            }
        }
    }

    func testRepeatedNestedAndConcurrentCallsDoNotDeadlock() {
        let pool = ThreadPool(threads: 4)
        var total = 0
        let lock = NSLock()
        for _ in 0..<5000 {
            pool.parallelFor(8) { s, e in lock.lock(); total += e - s; lock.unlock() }
        }
        XCTAssertEqual(total, 40000)
        // nested: inner calls run serially on the calling worker
        total = 0
        pool.parallelFor(4) { s, e in
            for _ in s..<e { pool.parallelFor(10) { a, b in lock.lock(); total += b - a; lock.unlock() } }
        }
        XCTAssertEqual(total, 40)
        // several threads sharing one pool
        total = 0
        final class Counter: @unchecked Sendable { var n = 0; let lock = NSLock() }
        let counter = Counter()
        DispatchQueue.concurrentPerform(iterations: 8) { _ in
            for _ in 0..<500 { pool.parallelFor(6) { s, e in counter.lock.lock(); counter.n += e - s; counter.lock.unlock() } }
        }
        XCTAssertEqual(counter.n, 8 * 500 * 6)
    }

    func testSleepAndWake() {
        let pool = ThreadPool(threads: 3)
        var n = 0
        let lock = NSLock()
        for _ in 0..<3 {
            pool.parallelFor(3) { s, e in lock.lock(); n += e - s; lock.unlock() }
            usleep(50_000) // workers fall asleep
        }
        XCTAssertEqual(n, 9)
    }

    /// `rest` (the waiting workers sleep at once instead of spinning) before jobs of every size,
    /// repeated and with pauses, never loses a job or a part of one: the calls race with workers
    /// that are spinning, falling asleep or asleep.
    func testRestNeverLosesAJob() {
        let pool = ThreadPool(threads: 3)
        final class Counter: @unchecked Sendable { var n = 0; let lock = NSLock() }
        let counter = Counter()
        var expected = 0
        for i in 0..<3000 {
            switch i % 6 {
            case 0: pool.rest()
            case 1: pool.rest(); pool.rest()
            case 4: pool.rest(); usleep(200)   // let the workers reach their sleep
            default: break
            }
            let count = 1 + i % 40
            pool.parallelFor(count) { s, e in counter.lock.lock(); counter.n += e - s; counter.lock.unlock() }
            expected += count
            if i % 500 == 499 { pool.rest(); usleep(20_000) }  // long rests: every worker asleep
        }
        XCTAssertEqual(counter.n, expected)
        // Resting an idle pool, then work from several threads at once.
        pool.rest(); usleep(1000); pool.rest()
        DispatchQueue.concurrentPerform(iterations: 4) { _ in
            for _ in 0..<200 { pool.parallelFor(5) { s, e in counter.lock.lock(); counter.n += e - s; counter.lock.unlock() } }
        }
        XCTAssertEqual(counter.n, expected + 4 * 200 * 5)
    }
}

final class AttentionAndVectorTests: XCTestCase {
    func naive(q: [Float], k: [Float], v: [Float], tokens: Int, startPos: Int, heads: Int, kvHeads: Int, headDim: Int, kvStride: Int, scale: Float) -> [Double] {
        var out = [Double](repeating: 0, count: tokens * heads * headDim)
        for t in 0..<tokens {
            for h in 0..<heads {
                let kvh = h / (heads / kvHeads), n = startPos + t + 1
                var s = [Double](repeating: 0, count: n)
                for j in 0..<n {
                    var d = 0.0
                    for i in 0..<headDim { d += Double(q[(t * heads + h) * headDim + i]) * Double(k[j * kvStride + kvh * headDim + i]) }
                    s[j] = d * Double(scale)
                }
                let m = s.max()!
                let e = s.map { Foundation.exp($0 - m) }
                let sum = e.reduce(0, +)
                for i in 0..<headDim {
                    var acc = 0.0
                    for j in 0..<n { acc += e[j] / sum * Double(v[j * kvStride + kvh * headDim + i]) }
                    out[(t * heads + h) * headDim + i] = acc
                }
            }
        }
        return out
    }

    /// The estimator's attention statistic in one C call has exactly the bits of the loop it
    /// replaced (a `dot` per key and head, × scale, normalized entropy per head, mean over heads),
    /// at every kernel level, with grouped kv heads, odd head sizes and padded key rows.
    func testAttentionEntropyEqualsThePerKeyLoop() {
        var seed: UInt64 = 0
        forEachPath { path in
            for (headDim, heads, kvHeads) in [(64, 9, 3), (8, 4, 2), (13, 2, 2), (16, 3, 1), (24, 12, 2), (64, 5, 5)] {
                for nk in [0, 1, 2, 7, 37, 256] {
                    let stride = kvHeads * headDim + 5
                    seed += 2
                    let q = randomX(heads * headDim, seed: seed).map { 2 * $0 }
                    let k = randomX(max(1, nk) * stride, seed: seed + 1).map { 2 * $0 }
                    let scale = 1 / Float(headDim).squareRoot()
                    var scores = [Float](repeating: 0, count: max(1, nk))
                    var expected = 0.0
                    if nk > 1 {
                        var hsum = 0.0
                        for h in 0..<heads {
                            for j in 0..<nk {
                                scores[j] = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in
                                    VectorOps.dot(qp.baseAddress! + h * headDim, kp.baseAddress! + j * stride + (h / (heads / kvHeads)) * headDim, n: headDim)
                                } } * scale
                            }
                            hsum += scores.withUnsafeBufferPointer { VectorOps.normalizedEntropy($0.baseAddress!, n: nk) } ?? 0
                        }
                        expected = hsum / Double(heads)
                    }
                    var scratch = [Float](repeating: 0, count: max(1, nk) * max(1, heads / kvHeads))
                    let got = q.withUnsafeBufferPointer { qp in k.withUnsafeBufferPointer { kp in scratch.withUnsafeMutableBufferPointer { sp in
                        VectorOps.attentionEntropy(query: qp.baseAddress!, keys: kp.baseAddress!, keyStride: stride, keyCount: nk, heads: heads,
                                                   kvHeads: kvHeads, headDim: headDim, scale: scale, scratch: sp.baseAddress!)
                    } } }
                    XCTAssertEqual(got.bitPattern, expected.bitPattern, "\(path) d=\(headDim) h=\(heads)/\(kvHeads) nk=\(nk): \(got) vs \(expected)")
                    if nk > 1 { XCTAssertGreaterThan(got, 0) }
                }
            }
        }
    }

    func testCausalAttentionMatchesNaive() {
        let pool = ThreadPool(threads: 4)
        forEachPath { path in
            for (headDim, heads, kvHeads) in [(64, 9, 3), (8, 4, 2), (13, 2, 2)] {
                for (tokens, startPos) in [(1, 0), (1, 20), (5, 0), (7, 3)] {
                    let kvStride = kvHeads * headDim + 3
                    let ctx = startPos + tokens
                    let q = randomX(tokens * heads * headDim, seed: 1).map { $0 * 4 }
                    let k = randomX(ctx * kvStride, seed: 2), v = randomX(ctx * kvStride, seed: 3)
                    var out = [Float](repeating: .nan, count: q.count)
                    let scale = 1 / Float(headDim).squareRoot()
                    Attention.causal(q: q, k: k, v: v, out: &out, tokens: tokens, startPos: startPos, heads: heads,
                                     kvHeads: kvHeads, headDim: headDim, kvStride: kvStride, scale: scale, pool: pool)
                    let ref = naive(q: q, k: k, v: v, tokens: tokens, startPos: startPos, heads: heads, kvHeads: kvHeads,
                                    headDim: headDim, kvStride: kvStride, scale: scale)
                    for i in out.indices where !(abs(Double(out[i]) - ref[i]) <= 1e-5) {
                        XCTFail("\(path) attention hd=\(headDim) t=\(tokens) sp=\(startPos) [\(i)] \(out[i]) vs \(ref[i])")
                        return
                    }
                }
            }
        }
    }

    func testVectorOps() {
        let n = 1000
        let x = randomX(n, seed: 4).map { $0 * 30 }, w = randomX(n, seed: 5)
        var out = [Float](repeating: 0, count: n)
        VectorOps.rmsNorm(x, w, &out, n: n, eps: 1e-5)
        let ms = x.reduce(0.0) { $0 + Double($1) * Double($1) } / Double(n)
        for i in 0..<n { XCTAssertEqual(Double(out[i]), Double(x[i]) / (ms + 1e-5).squareRoot() * Double(w[i]), accuracy: 1e-5) }
        var s = x
        VectorOps.softmax(&s, n: n)
        XCTAssertEqual(s.reduce(0.0) { $0 + Double($1) }, 1, accuracy: 1e-5)
        XCTAssert(s.allSatisfy { $0.isFinite && $0 >= 0 })
        var g = x
        VectorOps.siluMul(&g, w, n: n)
        for i in 0..<n { XCTAssertEqual(Double(g[i]), Double(x[i]) / (1 + exp(-Double(x[i]))) * Double(w[i]), accuracy: 1e-4) }
        var a = x
        VectorOps.add(&a, w, n: n)
        for i in 0..<n { XCTAssertEqual(a[i], x[i] + w[i]) }
        forEachPath { _ in
            let d = VectorOps.dot(x, w, n: n)
            let ref = zip(x, w).reduce(0.0) { $0 + Double($1.0) * Double($1.1) }
            XCTAssertEqual(Double(d), ref, accuracy: 1e-4 * x.reduce(0.0) { $0 + Double(abs($1)) })
        }
    }

    /// The kernels' vector exp (SiLU, sampling weights): within 2 ulp of libm above 2⁻¹²⁶, the same
    /// bits on the x86 levels; expWeights' sum and cumulativeIndex agree with plain loops.
    func testVectorExpAndSamplingHelpers() {
        var byPath: [[UInt32]] = []
        forEachPath { path in
            var worst = 0.0
            var bits: [UInt32] = []
            var d: Float = -87.3
            while d < 88.7 {
                let e = VectorOps.exp(d), ref = Foundation.exp(Double(d))
                worst = max(worst, abs(Double(e) - ref) / ref)
                bits.append(e.bitPattern)
                d += 0.0137
            }
            XCTAssertLessThan(worst, 2.5e-7, "\(path)")
            XCTAssertEqual(VectorOps.exp(0), 1)
            XCTAssertEqual(VectorOps.exp(100), .infinity)
            XCTAssertEqual(VectorOps.exp(-100), 0)
            if path != .portable { byPath.append(bits) }
        }
        for other in byPath.dropFirst() where other != byPath[0] { XCTFail("exp differs between the AVX2 and AVX-512 levels") }
        let x = randomX(1003, seed: 9).map { $0 * 20 }
        var w = [Float](repeating: 0, count: x.count)
        let m = VectorOps.max(x, n: x.count)
        XCTAssertEqual(m, x.max())
        XCTAssertEqual(VectorOps.max([.nan, -3, .nan, -1], n: 4), -1)
        let total = VectorOps.expWeights(x, n: x.count, shift: m, div: 0.7, into: &w)
        for i in x.indices {
            let ref = Foundation.exp(Double((x[i] - m) / 0.7))  // the argument as the kernel rounds it
            XCTAssertEqual(Double(w[i]), ref, accuracy: 2.5e-7 * ref)
        }
        XCTAssertEqual(total, w.reduce(0.0) { $0 + Double($1) }, accuracy: 1e-9 * total)
        for r in [0.0, 0.3 * total, 0.999 * total, 2 * total] {
            var acc = 0.0, expected = x.count - 1
            for i in w.indices { acc += Double(w[i]); if r < acc { expected = i; break } }
            XCTAssertEqual(VectorOps.cumulativeIndex(w, n: w.count, reaching: r), expected)
        }
    }

    func testCPUFeatures() {
        XCTAssert(KernelPath.supported.contains(.portable))
        XCTAssertFalse(CPUFeatures.current.isEmpty)
        print("CPU:", CPUFeatures.current, "supported:", KernelPath.supported)
    }
}
