import CWFormats
import CWKernels

/// The linear projections of a decoder layer, named as in HF's Llama modules.
public enum Projection: String, Sendable, CaseIterable {
    case q = "q_proj", k = "k_proj", v = "v_proj", o = "o_proj"
    case gate = "gate_proj", up = "up_proj", down = "down_proj"

    /// Number of projections per layer (the range of `index`).
    public static let count = 7

    /// Position in `allCases` (q, k, v, o, gate, up, down): per-layer tables of adapters and
    /// ladder modules index by it.
    @inline(__always)
    public var index: Int {
        switch self {
        case .q: return 0
        case .k: return 1
        case .v: return 2
        case .o: return 3
        case .gate: return 4
        case .up: return 5
        case .down: return 6
        }
    }

    /// The HF module path of this projection in layer `layer` (as PEFT names it).
    public func hfModuleName(layer: Int) -> String {
        switch self {
        case .q, .k, .v, .o: return "model.layers.\(layer).self_attn.\(rawValue)"
        case .gate, .up, .down: return "model.layers.\(layer).mlp.\(rawValue)"
        }
    }

    /// The GGUF tensor base name of this projection in layer `layer`.
    public func ggufName(layer: Int) -> String {
        switch self {
        case .q: return "blk.\(layer).attn_q"
        case .k: return "blk.\(layer).attn_k"
        case .v: return "blk.\(layer).attn_v"
        case .o: return "blk.\(layer).attn_output"
        case .gate: return "blk.\(layer).ffn_gate"
        case .up: return "blk.\(layer).ffn_up"
        case .down: return "blk.\(layer).ffn_down"
        }
    }
}

/// One decoder layer's weights, in their storage encodings.
public struct LayerWeights: Sendable {
    public var attentionNorm: [Float]
    public var wq: WeightMatrix, wk: WeightMatrix, wv: WeightMatrix, wo: WeightMatrix
    public var bq: [Float]?, bk: [Float]?, bv: [Float]?
    public var ffnNorm: [Float]
    public var wGate: WeightMatrix, wUp: WeightMatrix, wDown: WeightMatrix

    public func matrix(_ p: Projection) -> WeightMatrix {
        switch p {
        case .q: return wq
        case .k: return wk
        case .v: return wv
        case .o: return wo
        case .gate: return wGate
        case .up: return wUp
        case .down: return wDown
        }
    }

    public mutating func setMatrix(_ p: Projection, _ m: WeightMatrix) {
        switch p {
        case .q: wq = m
        case .k: wk = m
        case .v: wv = m
        case .o: wo = m
        case .gate: wGate = m
        case .up: wUp = m
        case .down: wDown = m
        }
    }
}

/// All weights of a Llama-family model. Matrices point into memory-mapped files; only the small
/// norm vectors (and biases) are copied out as fp32.
public struct LlamaWeights: Sendable {
    public var tokenEmbedding: WeightMatrix
    public var layers: [LayerWeights]
    public var finalNorm: [Float]
    public var output: WeightMatrix
    public var outputIsTied: Bool

    /// Bytes of the weights in their storage encodings (what decode streams per token).
    public var byteCount: Int {
        var n = tokenEmbedding.byteCount + finalNorm.count * 4
        if !outputIsTied { n += output.byteCount }
        for l in layers {
            n += (l.attentionNorm.count + l.ffnNorm.count) * 4
            for p in Projection.allCases { n += l.matrix(p).byteCount }
            n += ((l.bq?.count ?? 0) + (l.bk?.count ?? 0) + (l.bv?.count ?? 0)) * 4
        }
        return n
    }
}

/// Shape checks with errors that name the tensor, the file and what was expected.
struct ShapeChecker {
    let source: String

    func matrix(_ m: WeightMatrix, _ name: String, rows: Int, cols: Int) throws -> WeightMatrix {
        guard m.rows == rows, m.cols == cols else {
            throw FormatError(path: source, message: "tensor '\(name)' has shape [\(m.rows), \(m.cols)] (out, in); expected [\(rows), \(cols)]")
        }
        return m
    }

    func vector(_ v: [Float], _ name: String, count: Int) throws -> [Float] {
        guard v.count == count else {
            throw FormatError(path: source, message: "tensor '\(name)' has \(v.count) elements; expected \(count)")
        }
        return v
    }
}
