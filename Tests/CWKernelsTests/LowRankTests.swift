import CWKernels
import Foundation
import XCTest

/// The low-rank (LoRA / rank-ladder) kernels against a Double reference: fp32 and fp16 factors,
/// ranges of rows (ladder slices), row maps (token groups), odd sizes, 1 and N threads, every path.
final class LowRankTests: XCTestCase {
    /// Reference `y[row(t)] += Bt[lo..<hi]ᵀ · (A[lo..<hi] · x[row(t)])` with the factors' stored values.
    func reference(a: LowRankFactor, bt: LowRankFactor, rows: Range<Int>, x: [Float], rowMap: [Int], y: [Float]) -> (y: [Float], u: [Double], bound: [Double]) {
        let inF = a.cols, out = bt.cols, k = rows.count
        var y2 = y.map(Double.init)
        var bound = y.map { abs(Double($0)) }
        var uAll = [Double](repeating: 0, count: rowMap.count * k)
        var uAbs = [Double](repeating: 0, count: k)
        let af = a.floats(), bf = bt.floats()
        for (t, r) in rowMap.enumerated() {
            for j in 0..<k {
                var s = 0.0, ab = 0.0
                for c in 0..<inF {
                    let term = Double(af[(rows.lowerBound + j) * inF + c]) * Double(x[r * inF + c])
                    s += term
                    ab += abs(term)
                }
                uAll[t * k + j] = s
                uAbs[j] = ab
            }
            for o in 0..<out {
                var s = 0.0, b = 0.0
                for j in 0..<k {
                    let bv = Double(bf[(rows.lowerBound + j) * out + o])
                    s += uAll[t * k + j] * bv
                    b += uAbs[j] * abs(bv)
                }
                y2[r * out + o] += s
                bound[r * out + o] += b
            }
        }
        return (y2.map { $0 }.map { Float($0) }, uAll, bound)
    }

    func testDownAndUpMatchReference() throws {
        let shapes: [(rank: Int, inF: Int, out: Int)] = [(1, 5, 7), (3, 64, 33), (16, 576, 192), (17, 129, 1000), (16, 1536, 576)]
        var rng = RNG(42)
        for pool in [ThreadPool(threads: 1), ThreadPool(threads: 3)] {
            forEachPath { path in
                for (si, sh) in shapes.enumerated() {
                    for storage in LowRankFactor.Storage.allCases {
                        let a = LowRankFactor(rows: sh.rank, cols: sh.inF, storage: storage, values: (0..<(sh.rank * sh.inF)).map { _ in rng.float() })
                        let bt = LowRankFactor(rows: sh.rank, cols: sh.out, storage: storage, values: (0..<(sh.rank * sh.out)).map { _ in rng.float() })
                        // slices: full rank, a prefix, a middle range (merged floor)
                        let slices = Set([0..<sh.rank, 0..<max(1, sh.rank / 2), min(1, sh.rank - 1)..<sh.rank]).filter { !$0.isEmpty }
                        for rows in slices {
                            for (tokens, mapped) in [(1, false), (3, true), (9, false), (13, true)] {
                                let total = mapped ? 2 * tokens + 1 : tokens
                                let rowMap = mapped ? (0..<tokens).map { 2 * (tokens - 1 - $0) + 1 } : Array(0..<tokens)
                                XCTAssertEqual(Set(rowMap).count, tokens)
                                let x = (0..<(total * sh.inF)).map { _ in rng.float() }
                                let y0 = (0..<(total * sh.out)).map { _ in rng.float() }
                                let k = rows.count
                                var u = [Float](repeating: .nan, count: tokens * k)
                                var y = y0
                                let map32 = rowMap.map { Int32($0) }
                                x.withUnsafeBufferPointer { xb in
                                    map32.withUnsafeBufferPointer { mb in
                                        u.withUnsafeMutableBufferPointer { ub in
                                            LowRank.down(a, rows: rows, x: xb.baseAddress!, ldx: sh.inF, xRows: mapped ? mb.baseAddress : nil,
                                                         tokens: tokens, u: ub.baseAddress!, ldu: k, pool: pool)
                                        }
                                        u.withUnsafeBufferPointer { ub in
                                            y.withUnsafeMutableBufferPointer { yb in
                                                LowRank.up(bt, rows: rows, u: ub.baseAddress!, ldu: k, tokens: tokens, y: yb.baseAddress!, ldy: sh.out,
                                                           yRows: mapped ? mb.baseAddress : nil, pool: pool)
                                            }
                                        }
                                    }
                                }
                                let ref = reference(a: a, bt: bt, rows: rows, x: x, rowMap: rowMap, y: y0)
                                let where_ = "\(path) threads \(pool.threads) shape \(si) \(storage) rows \(rows) tokens \(tokens) mapped \(mapped)"
                                for i in 0..<u.count {
                                    XCTAssertEqual(Double(u[i]), ref.u[i], accuracy: 1e-5 * Double(sh.inF), "u \(i) \(where_)")
                                }
                                var bad = 0
                                for i in 0..<y.count {
                                    let tol = 1e-5 * (ref.bound[i] + 1)
                                    if abs(Double(y[i]) - Double(ref.y[i])) > tol { bad += 1 }
                                    if !rowMap.contains(i / sh.out), y[i] != y0[i] { bad += 1 }  // rows outside the map untouched
                                }
                                XCTAssertEqual(bad, 0, where_)
                            }
                        }
                    }
                }
            }
        }
    }

    func testF16StorageRoundsEachElement() {
        let v: [Float] = [1, -2.5, 1e-3, 65504, 0.1, -0.333333]
        let f = LowRankFactor(rows: 2, cols: 3, storage: .f16, values: v)
        XCTAssertEqual(f.bytes, 12)
        for (i, x) in v.enumerated() {
            XCTAssertEqual(f.value(i / 3, i % 3), Float(Float16(x)))
        }
        let t = LowRankFactor(transposing: v, rows: 2, cols: 3, storage: .f32)
        XCTAssertEqual(t.rows, 3)
        XCTAssertEqual(t.value(2, 1), v[1 * 3 + 2])
        XCTAssertEqual(t.floats(), [v[0], v[3], v[1], v[4], v[2], v[5]])
    }

    /// q8 storage: one fp32 scale per 32 elements of a row (max|x|/127), each element within half a
    /// step of its value; rows of any length (a partial last block), 0.56× fp16's bytes at 576 columns.
    func testQ8StorageRoundsEachBlock() {
        var rng = RNG(5)
        for cols in [1, 31, 33, 172, 576] {
            let rows = 3
            let v = (0..<(rows * cols)).map { i in rng.float(-1, 1) * (i % 7 == 0 ? 10 : 0.1) }
            let f = LowRankFactor(rows: rows, cols: cols, storage: .q8, values: v)
            XCTAssertEqual(f.bytes, rows * (4 * ((cols + 31) / 32) + cols))
            for r in 0..<rows {
                for b in stride(from: 0, to: cols, by: 32) {
                    let block = (b..<min(cols, b + 32)).map { v[r * cols + $0] }
                    let amax = block.map(abs).max() ?? 0
                    for c in b..<min(cols, b + 32) {
                        XCTAssertEqual(f.value(r, c), v[r * cols + c], accuracy: amax / 254 * 1.0001 + 1e-12, "cols \(cols) [\(r),\(c)]")
                    }
                }
            }
        }
        let f16 = LowRankFactor(rows: 16, cols: 576, storage: .f16, values: [Float](repeating: 1, count: 16 * 576))
        let q8 = LowRankFactor(rows: 16, cols: 576, storage: .q8, values: [Float](repeating: 1, count: 16 * 576))
        XCTAssertEqual(Double(q8.bytes) / Double(f16.bytes), 0.5625, accuracy: 1e-9)
    }

    /// The up product sums from zero and then adds to y, so accumulating into a zeroed buffer and
    /// adding that to y gives the same bits as accumulating into y (the model's side-task path).
    func testUpIntoZeroThenAddEqualsInPlace() {
        var rng = RNG(8)
        let pool = ThreadPool(threads: 2)
        for storage in LowRankFactor.Storage.allCases {
            for (k, out, tokens) in [(16, 576, 1), (7, 1000, 3), (16, 1536, 9)] {
                let bt = LowRankFactor(rows: k, cols: out, storage: storage, values: (0..<(k * out)).map { _ in rng.float() })
                let u = (0..<(tokens * k)).map { _ in rng.float() }
                let y0 = (0..<(tokens * out)).map { _ in rng.float(-3, 3) }
                var inPlace = y0, z = [Float](repeating: 0, count: tokens * out)
                u.withUnsafeBufferPointer { ub in
                    inPlace.withUnsafeMutableBufferPointer { LowRank.up(bt, rows: 0..<k, u: ub.baseAddress!, ldu: k, tokens: tokens, y: $0.baseAddress!, ldy: out, pool: pool) }
                    z.withUnsafeMutableBufferPointer { LowRank.up(bt, rows: 0..<k, u: ub.baseAddress!, ldu: k, tokens: tokens, y: $0.baseAddress!, ldy: out, pool: pool) }
                }
                let later = zip(y0, z).map { $0 + $1 }
                XCTAssertEqual(later.map(\.bitPattern), inPlace.map(\.bitPattern), "\(storage) k \(k) out \(out) tokens \(tokens)")
            }
        }
    }

    /// `widened(rows:)` holds exactly the values the kernels multiply by (those `floats()` gives).
    func testWidenedHoldsTheStoredValues() {
        var rng = RNG(13)
        for storage in LowRankFactor.Storage.allCases {
            for (rows, cols) in [(16, 576), (5, 70), (3, 31)] {
                let f = LowRankFactor(rows: rows, cols: cols, storage: storage, values: (0..<(rows * cols)).map { _ in rng.float(-2, 2) })
                let all = f.floats()
                for r in [0..<rows, 1..<rows, 0..<1, 2..<3] where r.upperBound <= rows {
                    let w = f.widened(rows: r)
                    XCTAssertEqual(w.storage, .f32)
                    XCTAssertEqual(w.rows, r.count)
                    XCTAssertEqual(w.floats().map(\.bitPattern), all[(r.lowerBound * cols)..<(r.upperBound * cols)].map(\.bitPattern),
                                   "\(storage) \(rows)×\(cols) rows \(r)")
                }
            }
        }
    }

    /// `up(columns:)` (a prefill's up product run per range of rows the base product just wrote)
    /// gives each output the bits of the whole call, for any cut of the columns, with row maps and
    /// ladder slices, at every kernel level.
    func testUpOverColumnRangesEqualsTheWholeCall() {
        var rng = RNG(12)
        let pool = ThreadPool(threads: 2)
        let original = KernelPath.current
        defer { KernelPath.current = original }
        for path in KernelPath.supported {
            KernelPath.current = path
            for storage in LowRankFactor.Storage.allCases {
                for (k, out, tokens, slice) in [(16, 1000, 37, 0..<16), (12, 200, 5, 4..<12), (16, 576, 3, 0..<7), (8, 72, 64, 2..<8)] {
                    let bt = LowRankFactor(rows: k, cols: out, storage: storage, values: (0..<(k * out)).map { _ in rng.float() })
                    let w = slice.count
                    let u = (0..<(tokens * w)).map { _ in rng.float() }
                    let y0 = (0..<(tokens * out + 3 * out)).map { _ in rng.float(-3, 3) }
                    // Tokens land on scattered rows of y (a rank group's rows).
                    let map: [Int32] = (0..<tokens).map { Int32(($0 * 5 + 2) % (tokens + 3)) }
                    for mapped in [false, true] {
                        if mapped && Set(map).count != tokens { continue }
                        var whole = y0, pieces = y0
                        map.withUnsafeBufferPointer { mb in
                            u.withUnsafeBufferPointer { ub in
                                let rows = mapped ? mb.baseAddress : nil
                                whole.withUnsafeMutableBufferPointer {
                                    LowRank.up(bt, rows: slice, u: ub.baseAddress!, ldu: w, tokens: tokens, y: $0.baseAddress!, ldy: out, yRows: rows, pool: pool)
                                }
                                // Uneven cuts: 16-row units as the product's parts give, and odd ones.
                                let cuts = [0, 16, 48, 49, 130, out / 2, out - 5, out].filter { $0 <= out }.sorted()
                                pieces.withUnsafeMutableBufferPointer { yb in
                                    for (c0, c1) in zip(cuts, cuts.dropFirst()) where c0 < c1 {
                                        LowRank.up(bt, rows: slice, u: ub.baseAddress!, ldu: w, tokens: tokens, y: yb.baseAddress!, ldy: out, yRows: rows, columns: c0..<c1)
                                    }
                                }
                            }
                        }
                        XCTAssertEqual(pieces.map(\.bitPattern), whole.map(\.bitPattern), "\(path) \(storage) k \(k) out \(out) tokens \(tokens) slice \(slice) mapped \(mapped)")
                    }
                }
            }
        }
    }

    /// Many tokens widen fp16/int8 factors to fp32 once per call (down) or per strip (up); one token
    /// widens per vector. Same values, same order: each token's u and y are bit-identical either way.
    func testATokensResultDoesNotDependOnTheBatch() {
        var rng = RNG(11)
        let pool = ThreadPool(threads: 2)
        for storage in LowRankFactor.Storage.allCases {
            let k = 16, inF = 200, out = 1000, tokens = 13
            let a = LowRankFactor(rows: k, cols: inF, storage: storage, values: (0..<(k * inF)).map { _ in rng.float() })
            let bt = LowRankFactor(rows: k, cols: out, storage: storage, values: (0..<(k * out)).map { _ in rng.float() })
            let x = (0..<(tokens * inF)).map { _ in rng.float() }
            let y0 = (0..<(tokens * out)).map { _ in rng.float() }
            func run(_ t0: Int, _ n: Int) -> ([Float], [Float]) {
                var u = [Float](repeating: 0, count: n * k), y = Array(y0[(t0 * out)..<((t0 + n) * out)])
                x.withUnsafeBufferPointer { xb in
                    u.withUnsafeMutableBufferPointer { LowRank.down(a, rows: 0..<k, x: xb.baseAddress! + t0 * inF, ldx: inF, tokens: n, u: $0.baseAddress!, ldu: k, pool: pool) }
                    u.withUnsafeBufferPointer { ub in
                        y.withUnsafeMutableBufferPointer { LowRank.up(bt, rows: 0..<k, u: ub.baseAddress!, ldu: k, tokens: n, y: $0.baseAddress!, ldy: out, pool: pool) }
                    }
                }
                return (u, y)
            }
            let (uAll, yAll) = run(0, tokens)
            var single: [(u: [Float], y: [Float])] = []
            for t in 0..<tokens {
                let (u1, y1) = run(t, 1)
                single.append((u1, y1))
                XCTAssertEqual(u1.map(\.bitPattern), uAll[(t * k)..<((t + 1) * k)].map(\.bitPattern), "\(storage) u of token \(t)")
                XCTAssertEqual(y1.map(\.bitPattern), yAll[(t * out)..<((t + 1) * out)].map(\.bitPattern), "\(storage) y of token \(t)")
            }
            // 2 and 3 tokens (a batched step's adapter group) share each widened factor vector.
            for n in 2...3 {
                for t0 in stride(from: 0, through: tokens - n, by: n) {
                    let (_, yn) = run(t0, n)
                    for j in 0..<n {
                        XCTAssertEqual(yn[(j * out)..<((j + 1) * out)].map(\.bitPattern), single[t0 + j].y.map(\.bitPattern),
                                       "\(storage) y of token \(t0 + j) in a call of \(n)")
                    }
                }
            }
        }
    }

    func testShortValuesAreZeroFilledNotTrapped() {
        let f = LowRankFactor(rows: 2, cols: 2, storage: .f32, values: [1, 2, 3])
        XCTAssertEqual(f.floats(), [1, 2, 3, 0])
    }
}


/// `Kernels.matmul(…, terms:)`: the low-rank terms added to each part of the outputs as it is
/// written give the same bits as the product followed by `LowRank.up` of each term in order.
final class MatmulTermsTests: XCTestCase {
    func testTermsEqualTheProductThenTheUpProducts() throws {
        let pool = ThreadPool(threads: 3)
        let cols = 96
        let cases = [makeCase(.q4_1, rows: 200, cols: cols, seed: 1), makeCase(.q4_1, rows: 72, cols: cols, seed: 2)]
        try forEachPath { path in
            for storage in LowRankFactor.Storage.allCases {
                for tokens in [1, 3] {
                    for precision in [Precision.fast, .exact] {
                        let x = randomX(tokens * cols, seed: 3)
                        // Two terms on target 0 (slices of one factor, then another), one on target 1.
                        let f0 = LowRankFactor(rows: 6, cols: 200, storage: storage, values: randomX(6 * 200, seed: 4))
                        let f1 = LowRankFactor(rows: 3, cols: 200, storage: storage, values: randomX(3 * 200, seed: 5))
                        let f2 = LowRankFactor(rows: 4, cols: 72, storage: storage, values: randomX(4 * 72, seed: 6))
                        let specs: [(target: Int, factor: LowRankFactor, rows: Range<Int>)] = [(0, f0, 2..<6), (0, f1, 0..<3), (1, f2, 0..<4)]
                        let us = specs.map { randomX(tokens * $0.rows.count, seed: 7 &+ UInt64($0.rows.count)) }
                        var expect = try cases.map { try runMatmul($0, x, tokens: tokens, precision: precision, pool: pool) }
                        for (i, s) in specs.enumerated() {
                            us[i].withUnsafeBufferPointer { ub in
                                expect[s.target].withUnsafeMutableBufferPointer { yb in
                                    LowRank.up(s.factor, rows: s.rows, u: ub.baseAddress!, ldu: s.rows.count, tokens: tokens,
                                               y: yb.baseAddress!, ldy: cases[s.target].rows, pool: pool)
                                }
                            }
                        }
                        var got0 = [Float](repeating: .nan, count: tokens * 200), got1 = [Float](repeating: .nan, count: tokens * 72)
                        try cases[0].bytes.withUnsafeBytes { w0 in
                            try cases[1].bytes.withUnsafeBytes { w1 in
                                let m0 = try WeightMatrix(type: .q4_1, rows: 200, cols: cols, base: w0.baseAddress!, owner: nil)
                                let m1 = try WeightMatrix(type: .q4_1, rows: 72, cols: cols, base: w1.baseAddress!, owner: nil)
                                let u0 = us[0], u1 = us[1], u2 = us[2]
                                u0.withUnsafeBufferPointer { a in
                                    u1.withUnsafeBufferPointer { b in
                                        u2.withUnsafeBufferPointer { c in
                                            got0.withUnsafeMutableBufferPointer { y0 in
                                                got1.withUnsafeMutableBufferPointer { y1 in
                                                    let terms = [LowRankTerm(target: 0, factor: f0, rows: 2..<6, u: a.baseAddress!),
                                                                 LowRankTerm(target: 0, factor: f1, rows: 0..<3, u: b.baseAddress!),
                                                                 LowRankTerm(target: 1, factor: f2, rows: 0..<4, u: c.baseAddress!)]
                                                    x.withUnsafeBufferPointer { xb in
                                                        Kernels.matmul([(w: m0, y: y0.baseAddress!), (w: m1, y: y1.baseAddress!)], xb.baseAddress!,
                                                                       tokens: tokens, precision: precision, terms: terms,
                                                                       prefetch: [f0.memory(rows: 0..<6)], pool: pool)
                                                    }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                        for (t, got) in [got0, got1].enumerated() {
                            XCTAssertEqual(got.map(\.bitPattern), expect[t].map(\.bitPattern),
                                           "\(path) \(storage) tokens \(tokens) \(precision) target \(t)")
                        }
                    }
                }
            }
        }
    }
}
