import CWFormats
import CWKernels
import CWLoRA
import CWTestSupport
import CWTransformer
import XCTest

/// Prints decode time per token for SmolLM2 with and without adapter a (rank 16, all 7 projections
/// of all 30 layers) applied unmerged, and merged. Informational: timings are not asserted.
final class DecodeOverheadTests: XCTestCase {
    func testDecodeOverheadRank16AllLinear() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let adapter = try LoRAAdapter.load(path: TestPaths.sharedFile("golden/smollm2-lora/adapter-a-r16-all-linear"))
        let stack = try LoRAStack(model: model, adapter: adapter)
        let pool = SmolLM2LoRAGoldenTests.pool
        let prompt = [504, 3575, 282, 4649, 314]
        let steps = 16
        func decode(_ delta: ProjectionDelta?) throws -> Double {
            let cache = model.makeCache()
            var logits = try model.forward(prompt, cache: cache, options: ForwardOptions(precision: .exact, pool: pool), delta: delta)
            let start = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps {
                logits = try model.forward([Compare.argmax(logits[...])], cache: cache, options: ForwardOptions(precision: .exact, pool: pool), delta: delta)
            }
            return Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6 / Double(steps)
        }
        _ = try decode(nil)
        var base = [Double](), lora = [Double]()
        for _ in 0..<3 {
            base.append(try decode(nil))
            lora.append(try decode(stack))
        }
        let b = base.min()!, l = lora.min()!
        print(String(format: "[decode overhead] SmolLM2 Q4_1 exact, %d threads: base %.2f ms/token, + LoRA r16 all-linear unmerged %.2f ms/token (+%.1f%%)",
                     pool.threads, b, l, (l / b - 1) * 100))
    }
}
