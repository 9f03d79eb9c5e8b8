import Benchmark
import CWKernels
import Foundation

// Matrix-vector products report weight-bytes throughput ("GB/s ×100" custom metric: the
// framework stores integers), GEMMs report GFLOP/s ×10, and a read probe gives the machine's
// read bandwidth for comparison. Shapes are SmolLM2-135M's (576 hidden, 1536 FFN) plus 4096².

/// Random but valid weight bytes: every 16-bit word is a small positive fp16 (0x1C00 ~ 0.004),
/// so scales are sane for every block type and F16/BF16 values are finite.
final class Matrix: @unchecked Sendable {
    let type: TensorType
    let rows: Int, cols: Int
    let storage: UnsafeMutableRawPointer
    let w: WeightMatrix

    init(_ type: TensorType, rows: Int, cols: Int) {
        self.type = type
        self.rows = rows
        self.cols = cols
        let bytes = type.byteCount(elements: rows * cols)
        storage = UnsafeMutableRawPointer.allocate(byteCount: bytes, alignment: 64)
        var s: UInt64 = 0x9E37_79B9_7F4A_7C15
        let words = storage.bindMemory(to: UInt16.self, capacity: bytes / 2)
        for i in 0..<(bytes / 2) {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17
            words[i] = type == .f32 ? UInt16(truncatingIfNeeded: s) & 0x3BFF : 0x1C00 | UInt16(truncatingIfNeeded: s & 0x3FF)
        }
        w = try! WeightMatrix(type: type, rows: rows, cols: cols, base: UnsafeRawPointer(storage), owner: nil)
    }
    deinit { storage.deallocate() }
}

func floats(_ n: Int) -> UnsafeMutablePointer<Float> {
    let p = UnsafeMutablePointer<Float>.allocate(capacity: n)
    for i in 0..<n { p[i] = Float(i % 17) / 17 - 0.5 }
    return p
}

let gbps = BenchmarkMetric.custom("GB/s x100", polarity: .prefersLarger, useScalingFactor: false)
let gflops = BenchmarkMetric.custom("GFLOP/s x10", polarity: .prefersLarger, useScalingFactor: false)

let benchmarks: @Sendable () -> Void = {
    let threads = Int(ProcessInfo.processInfo.environment["CHUNKWISE_THREADS"] ?? "") ?? ProcessInfo.processInfo.activeProcessorCount
    let pool = ThreadPool(threads: threads)
    print("ChunkWise kernels: \(CPUFeatures.current), threads \(pool.threads)")

    Benchmark.defaultConfiguration = .init(
        metrics: [.wallClock], timeUnits: .microseconds, warmupIterations: 5,
        maxDuration: .seconds(2), maxIterations: 10_000)

    // STREAM-like read bandwidth: 256 MB of floats, summed once per iteration.
    Benchmark("read bandwidth 256MB", configuration: .init(metrics: [.wallClock, gbps], timeUnits: .milliseconds, maxIterations: 50)) { b in
        let n = 64 << 20
        let a = floats(n)
        defer { a.deallocate() }
        b.startMeasurement()
        let t0 = ContinuousClock.now
        var s = 0.0
        for _ in b.scaledIterations { s += Kernels.readProbe(a, count: n, pool: pool) }
        let dt = ContinuousClock.now - t0
        b.stopMeasurement()
        blackHole(s)
        let secs = Double(dt.components.attoseconds) / 1e18 + Double(dt.components.seconds)
        b.measurement(gbps, Int(Double(4 * n * b.scaledIterations.count) / secs / 1e7))
    }

    let shapes = [(576, 1536), (1536, 576), (4096, 4096)]
    for type in [TensorType.q4_1, .q8_0, .q4_K, .q6_K, .f16, .f32] {
        for (rows, cols) in shapes where cols % type.blockElements == 0 {
            for precision in [Precision.fast, .exact] where precision == .exact || type.isQuantized {
                Benchmark("matvec \(type) \(rows)x\(cols) \(precision)", configuration: .init(metrics: [.wallClock, gbps])) { b in
                    let m = Matrix(type, rows: rows, cols: cols)
                    let x = floats(cols), y = floats(rows)
                    defer { x.deallocate(); y.deallocate() }
                    b.startMeasurement()
                    let t0 = ContinuousClock.now
                    for _ in b.scaledIterations { Kernels.matmul(m.w, x, tokens: 1, y, precision: precision, pool: pool) }
                    let dt = ContinuousClock.now - t0
                    b.stopMeasurement()
                    let secs = Double(dt.components.attoseconds) / 1e18 + Double(dt.components.seconds)
                    b.measurement(gbps, Int(Double(m.w.byteCount * b.scaledIterations.count) / secs / 1e7))
                }
            }
        }
    }

    // Prefill: 512 tokens through the SmolLM2 FFN shapes.
    for type in [TensorType.f32, .q4_1, .q8_0, .q4_K] {
        for (rows, cols) in [(576, 1536), (1536, 576)] where cols % type.blockElements == 0 {
            Benchmark("gemm \(type) \(rows)x\(cols) 512 tokens", configuration: .init(metrics: [.wallClock, gflops], timeUnits: .milliseconds, maxIterations: 200)) { b in
                let m = Matrix(type, rows: rows, cols: cols)
                let tokens = 512
                let x = floats(tokens * cols), y = floats(tokens * rows)
                defer { x.deallocate(); y.deallocate() }
                b.startMeasurement()
                let t0 = ContinuousClock.now
                for _ in b.scaledIterations { Kernels.matmul(m.w, x, tokens: tokens, y, precision: .fast, pool: pool) }
                let dt = ContinuousClock.now - t0
                b.stopMeasurement()
                let secs = Double(dt.components.attoseconds) / 1e18 + Double(dt.components.seconds)
                b.measurement(gflops, Int(2.0 * Double(rows * cols * tokens * b.scaledIterations.count) / secs / 1e8))
            }
        }
    }
}
