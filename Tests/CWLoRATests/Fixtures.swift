import CWFormats
import CWKernels
@testable import CWLoRA
import CWTestSupport
import CWTransformer
import Foundation
import XCTest

/// Deterministic pseudo-random floats (LCG), for crafted adapters.
struct Rand {
    var state: UInt64
    init(_ seed: UInt64) { state = seed &* 6364136223846793005 &+ 1442695040888963407 }
    mutating func next() -> Float {
        state = state &* 6364136223846793005 &+ 1442695040888963407
        return Float(Int64(bitPattern: state >> 11) % 2_000_001 - 1_000_000) / 1_000_000
    }
    mutating func floats(_ n: Int, scale: Float = 1) -> [Float] { (0..<n).map { _ in next() * scale } }
}

/// Writes small PEFT / MLX adapters for stories260K-shaped models into a temp folder.
enum Craft {
    static func tempDir(_ name: String) throws -> String {
        let d = FileManager.default.temporaryDirectory.appendingPathComponent("cwlora-\(name)-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: d, withIntermediateDirectories: true)
        return d.path
    }

    /// stories260K projection shapes: [out, in].
    static func shape(_ p: Projection) -> (out: Int, in: Int) {
        switch p {
        case .q, .o: return (64, 64)
        case .k, .v: return (32, 64)
        case .gate, .up: return (172, 64)
        case .down: return (64, 172)
        }
    }

    static func name(_ module: String, _ part: String) -> String { "base_model.model.\(module).\(part)" }

    /// A PEFT folder: `config` is the adapter_config.json text; `tensors` the safetensors content.
    static func peft(_ dir: String, config: String, tensors: [OutputTensor]) throws -> String {
        try Data(config.utf8).write(to: URL(fileURLWithPath: dir).appendingPathComponent("adapter_config.json"))
        try SafetensorsWriter.write(tensors, to: URL(fileURLWithPath: dir).appendingPathComponent("adapter_model.safetensors").path)
        return dir
    }

    /// lora_A [r, in] / lora_B [out, r] for a module, random.
    static func loraPair(_ module: String, r: Int, out: Int, in inF: Int, rng: inout Rand, bScale: Float = 0.3) -> [OutputTensor] {
        [OutputTensor(name: name(module, "lora_A.weight"), shape: [r, inF], values: rng.floats(r * inF, scale: 0.3)),
         OutputTensor(name: name(module, "lora_B.weight"), shape: [out, r], values: rng.floats(out * r, scale: bScale))]
    }

    static func config(r: Int, alpha: Double, targets: [String], extra: String = "") -> String {
        let t = targets.map { "\"\($0)\"" }.joined(separator: ", ")
        return "{\"peft_type\": \"LORA\", \"r\": \(r), \"lora_alpha\": \(alpha), \"target_modules\": [\(t)], \"bias\": \"none\"\(extra.isEmpty ? "" : ", " + extra)}"
    }
}

enum Stories {
    static func hf() throws -> LlamaModel { try LlamaModel(huggingFaceDirectory: TestPaths.sharedFile("models/stories260K-hf")) }
    static func llama2c() throws -> LlamaModel { try LlamaModel(llama2c: Llama2cFile(path: TestPaths.sharedFile("models/stories260K/stories260K.bin"))) }
    static let ids = [1, 403, 407, 261, 378, 432, 383, 286, 261, 376]

    static func logits(_ m: LlamaModel, _ d: ProjectionDelta?, ids: [Int] = ids, pool: ThreadPool) throws -> [Float] {
        try m.forward(ids, cache: m.makeCache(), options: ForwardOptions(precision: .exact, pool: pool, logits: .all), delta: d)
    }
}

/// Row-major fp32 copy of a matrix.
func dense(_ m: WeightMatrix) -> [Float] {
    var out = [Float](repeating: 0, count: m.rows * m.cols)
    out.withUnsafeMutableBufferPointer { b in for r in 0..<m.rows { m.dequantizeRow(r, into: b.baseAddress! + r * m.cols) } }
    return out
}

func fp32Matrix(_ v: [Float], rows: Int, cols: Int) throws -> WeightMatrix {
    try FloatStorage(v).matrix(rows: rows, cols: cols)
}
