import CWKernels
import CWLoRA
import CWTransformer
@testable import CWScheduler
import Foundation
import XCTest

/// Deterministic pseudo-random numbers for the tests.
struct TestRNG: RandomNumberGenerator {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &+ 0x9E37_79B9_7F4A_7C15 }
    mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
    mutating func normal() -> Double {
        let u1 = Double.random(in: 1e-12..<1, using: &self), u2 = Double.random(in: 0..<1, using: &self)
        return (-2 * log(u1)).squareRoot() * cos(2 * .pi * u2)
    }
}

func randomModule(layer: Int, _ p: Projection, out: Int, inF: Int, rank: Int, scale: Double, rng: inout TestRNG, deficient: Bool = false) -> LoRAModule {
    var a = (0..<(rank * inF)).map { _ in Float(rng.normal()) }
    var b = (0..<(out * rank)).map { _ in Float(rng.normal() * 0.1) }
    if deficient && rank >= 3 {
        // B column 1 = 2 × column 0; A row 2 = 0.
        for o in 0..<out { b[o * rank + 1] = 2 * b[o * rank] }
        for c in 0..<inF { a[2 * inF + c] = 0 }
    }
    return LoRAModule(layer: layer, projection: p, rank: rank, inFeatures: inF, outFeatures: out, a: a, b: b, scale: scale, alpha: nil,
                      aTensor: "a\(layer)\(p)", bTensor: "b\(layer)\(p)")
}

func denseDelta(_ m: LoRAModule) -> [Double] {
    var d = [Double](repeating: 0, count: m.outFeatures * m.inFeatures)
    for o in 0..<m.outFeatures {
        for k in 0..<m.rank {
            let bv = Double(m.b[o * m.rank + k]) * m.scale
            for c in 0..<m.inFeatures { d[o * m.inFeatures + c] += bv * Double(m.a[k * m.inFeatures + c]) }
        }
    }
    return d
}

final class RankLadderTests: XCTestCase {
    func testThinSVDAgreesWithFullJacobiSVD() {
        var rng = TestRNG(1)
        for (out, inF, r, deficient) in [(24, 40, 6, false), (40, 24, 5, false), (17, 9, 8, false), (30, 30, 7, true), (12, 50, 4, true)] {
            let m = randomModule(layer: 0, .q, out: out, inF: inF, rank: r, scale: 1.7, rng: &rng, deficient: deficient)
            let (us, vt, s) = SmallLinearAlgebra.lowRankSVD(b: m.b, a: m.a, out: out, inFeatures: inF, rank: r, scale: m.scale)
            let full = denseDelta(m)
            let ref = SmallLinearAlgebra.jacobiSVD(full, rows: out, cols: inF)
            let smax = ref.s[0]
            for i in 0..<r { XCTAssertEqual(s[i], ref.s[i], accuracy: 1e-10 * smax, "σ_\(i) of \(out)x\(inF) r\(r)") }
            for i in r..<ref.s.count { XCTAssertLessThan(ref.s[i], 1e-10 * smax) }
            // Reconstruction and orthonormality of V.
            var err = 0.0
            for o in 0..<out { for c in 0..<inF {
                var acc = 0.0
                for i in 0..<r { acc += us[o * r + i] * vt[i * inF + c] }
                err = max(err, abs(acc - full[o * inF + c]))
            } }
            XCTAssertLessThan(err, 1e-10 * smax)
            for i in 0..<r where s[i] > 1e-8 * smax {
                for j in 0..<r where s[j] > 1e-8 * smax {
                    var dot = 0.0
                    for c in 0..<inF { dot += vt[i * inF + c] * vt[j * inF + c] }
                    XCTAssertEqual(dot, i == j ? 1 : 0, accuracy: 1e-9)
                }
            }
        }
    }

    func testTruncationErrorEqualsTailSingularValues() throws {
        var rng = TestRNG(2)
        let mods = [randomModule(layer: 0, .q, out: 32, inF: 24, rank: 8, scale: 2, rng: &rng),
                    randomModule(layer: 0, .down, out: 24, inF: 40, rank: 8, scale: 0.5, rng: &rng),
                    randomModule(layer: 1, .v, out: 16, inF: 24, rank: 8, scale: 1, rng: &rng, deficient: true)]
        let adapter = LoRAAdapter(format: .memory, path: "memory", modules: mods, qkRowOrder: .halves, rank: 8, alpha: nil)
        let ladder = try RankLadder(adapter: adapter)
        XCTAssertEqual(ladder.modules.count, 3)
        for m in mods {
            let lm = try XCTUnwrap(ladder.module(layer: m.layer, projection: m.projection))
            XCTAssertEqual(lm.boundaries, [1, 2, 4, 8])
            let full = denseDelta(m)
            let total = lm.singularValues.reduce(0) { $0 + $1 * $1 }
            for k in 0...8 {
                let approx = lm.dense(rank: k)
                var e = 0.0
                for i in full.indices { e += (full[i] - approx[i]) * (full[i] - approx[i]) }
                let expected = lm.singularValues[k...].reduce(0) { $0 + $1 * $1 }.squareRoot()
                // fp32 storage of U·S and Vᵀ: relative error ~1e-6 of ‖ΔW‖.
                XCTAssertEqual(e.squareRoot(), expected, accuracy: 2e-6 * total.squareRoot() + 1e-12, "\(lm.moduleName) k=\(k)")
                XCTAssertEqual(lm.energy(rank: k), 1 - expected * expected / total, accuracy: 1e-12)
            }
        }
    }

    func testLadderFileRoundTripAndCorruption() throws {
        var rng = TestRNG(3)
        let mods = [randomModule(layer: 0, .q, out: 16, inF: 8, rank: 4, scale: 2, rng: &rng),
                    randomModule(layer: 2, .up, out: 20, inF: 8, rank: 4, scale: 2, rng: &rng)]
        let adapter = LoRAAdapter(format: .memory, path: "memory", modules: mods, qkRowOrder: .halves, rank: 4, alpha: nil)
        let ladder = try RankLadder(adapter: adapter, tierRanks: [2])
        let path = FileManager.default.temporaryDirectory.appendingPathComponent("ladder-\(UUID().uuidString).cwl").path
        defer { try? FileManager.default.removeItem(atPath: path) }
        try ladder.write(to: path)
        let back = try RankLadder.load(from: path)
        XCTAssertEqual(back.adapterHash, adapter.contentHash)
        XCTAssertEqual(back.modules.count, 2)
        for (a, b) in zip(ladder.modules, back.modules) {
            XCTAssertEqual(a.boundaries, b.boundaries)
            XCTAssertEqual(a.singularValues, b.singularValues)
            XCTAssertEqual(a.dense(rank: 4), b.dense(rank: 4))
        }
        // Flip one data byte: the checksum must catch it.
        var d = try Data(contentsOf: URL(fileURLWithPath: path))
        d[d.count - 20] ^= 0x5A
        try d.write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RankLadder.load(from: path)) { XCTAssertTrue("\($0)".contains("checksum"), "\($0)") }
        try Data("CWLADDR1xx".utf8).write(to: URL(fileURLWithPath: path))
        XCTAssertThrowsError(try RankLadder.load(from: path))
    }
}
