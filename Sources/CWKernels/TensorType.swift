import CKernels

/// The element encodings a weight tensor can have, with GGML's type ids (as stored in GGUF).
///
/// Quantized types store blocks of `blockElements` weights in `blockBytes` bytes; a row of a
/// matrix is a whole number of blocks.
public enum TensorType: UInt32, Sendable, CaseIterable, CustomStringConvertible {
    case f32 = 0
    case f16 = 1
    case q4_0 = 2
    case q4_1 = 3
    case q5_0 = 6
    case q5_1 = 7
    case q8_0 = 8
    case q4_K = 12
    case q5_K = 13
    case q6_K = 14
    case bf16 = 30

    /// Weights per block.
    public var blockElements: Int {
        switch self {
        case .f32, .f16, .bf16: return 1
        case .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: return 32
        case .q4_K, .q5_K, .q6_K: return 256
        }
    }

    /// Bytes per block.
    public var blockBytes: Int {
        switch self {
        case .f32: return 4
        case .f16, .bf16: return 2
        case .q4_0: return 18
        case .q4_1: return 20
        case .q5_0: return 22
        case .q5_1: return 24
        case .q8_0: return 34
        case .q4_K: return 144
        case .q5_K: return 176
        case .q6_K: return 210
        }
    }

    /// Bytes taken by `elements` weights (which must be a multiple of `blockElements`).
    public func byteCount(elements: Int) -> Int { elements / blockElements * blockBytes }

    public var isQuantized: Bool { blockElements > 1 }

    public var description: String {
        switch self {
        case .f32: return "F32"
        case .f16: return "F16"
        case .bf16: return "BF16"
        case .q4_0: return "Q4_0"
        case .q4_1: return "Q4_1"
        case .q5_0: return "Q5_0"
        case .q5_1: return "Q5_1"
        case .q8_0: return "Q8_0"
        case .q4_K: return "Q4_K"
        case .q5_K: return "Q5_K"
        case .q6_K: return "Q6_K"
        }
    }

    /// GGML's name for a type id, for error messages about types we do not support.
    public static func ggmlName(_ id: UInt32) -> String {
        let names: [UInt32: String] = [
            0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
            10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
            17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S",
            23: "IQ4_XS", 24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16",
        ]
        return names[id] ?? "type \(id)"
    }
}

/// How activations meet the weights in matrix products.
public enum Precision: String, Sendable, CaseIterable {
    /// fp32 activations against dequantized weights (golden-parity mode).
    case exact
    /// Activations quantized to 16-bit blocks for integer dot products (decode-step logits within
    /// ~1e-3 relative L2 of `exact` on SmolLM2-135M). Prefill takes the integer path too for the
    /// 32-element block types on x86; K-quant prefill runs the exact path.
    case fast
}
