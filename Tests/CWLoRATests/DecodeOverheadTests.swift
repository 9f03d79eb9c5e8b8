import CWFormats
import CWKernels
import CWLoRA
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// Wraps a delta and accumulates the wall time spent inside it.
final class TimedDelta: ProjectionDelta, @unchecked Sendable {
    let inner: ProjectionDelta
    var nanoseconds: UInt64 = 0
    init(_ inner: ProjectionDelta) { self.inner = inner }
    func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int, positions: Range<Int>,
               y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        let t0 = DispatchTime.now().uptimeNanoseconds
        inner.apply(layer: layer, projection: projection, x: x, tokens: tokens, positions: positions, y: y, pool: pool)
        nanoseconds += DispatchTime.now().uptimeNanoseconds - t0
    }
}

/// Prints decode time per token for SmolLM2 with and without adapter a (rank 16, all 7 projections
/// of all 30 layers) applied unmerged. Informational: timings are not asserted (the machine is shared).
/// Two measures: (1) min-of-reps wall time base vs LoRA, interleaved; (2) the time spent inside the
/// LoRA delta itself relative to the rest of the same forward passes (robust to load from others).
final class DecodeOverheadTests: XCTestCase {
    func testDecodeOverheadRank16AllLinear() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("golden/smollm2-lora/adapter-a-r16-all-linear"))
        let stack = try LoRAStack(model: model, adapter: adapter)
        let pool = SmolLM2LoRAGoldenTests.pool
        let prompt = [504, 3575, 282, 4649, 314]
        let steps = 8
        func decode(_ delta: ProjectionDelta?) throws -> Double {
            let cache = model.makeCache()
            var logits = try model.forward(prompt, cache: cache, options: ForwardOptions(precision: .exact, pool: pool), delta: delta)
            (delta as? TimedDelta)?.nanoseconds = 0
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps {
                logits = try model.forward([Compare.argmax(logits[...])], cache: cache, options: ForwardOptions(precision: .exact, pool: pool), delta: delta)
            }
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(steps)
        }
        _ = try decode(nil)
        var base = [Double](), lora = [Double](), inside = [Double]()
        for _ in 0..<5 {
            base.append(try decode(nil))
            let timed = TimedDelta(stack)
            let total = try decode(timed)
            lora.append(total)
            let deltaMs = Double(timed.nanoseconds) / 1e6 / Double(steps)
            inside.append(deltaMs / (total - deltaMs))
        }
        let b = base.min() ?? 0, l = lora.min() ?? 0
        print(String(format: "[decode overhead] SmolLM2 Q4_1 exact, %d threads: base %.2f ms/token, LoRA r16 all-linear unmerged %.2f ms/token (min of 5: %+.1f%%); time inside the LoRA delta / rest of the pass: median %.1f%%",
                     pool.threads, b, l, (l / b - 1) * 100, inside.sorted()[inside.count / 2] * 100))
    }
}
