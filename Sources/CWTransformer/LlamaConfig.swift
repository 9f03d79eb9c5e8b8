import CWFormats

/// How RoPE pairs the dimensions of a head.
public enum RopeStyle: String, Sendable {
    /// Adjacent pairs (2i, 2i+1) — llama.cpp's NORM mode and llama2.c, whose Q/K rows are stored
    /// in that interleaved order.
    case interleaved
    /// Pairs (i, i + headDim/2) — HF `rotate_half` (and llama.cpp's NEOX mode, used for Qwen2).
    case halves
}

/// The shape and hyper-parameters of a Llama-family decoder, whatever file it came from.
public struct LlamaConfig: Sendable, Equatable {
    public var architecture: String
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var layers: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var maxContext: Int
    public var rmsNormEps: Float
    public var ropeTheta: Double
    public var ropeScaling: RopeScaling?
    public var ropeStyle: RopeStyle
    public var attentionBias: Bool

    public init(
        architecture: String, hiddenSize: Int, intermediateSize: Int, layers: Int, heads: Int, kvHeads: Int,
        headDim: Int, vocabSize: Int, maxContext: Int, rmsNormEps: Float, ropeTheta: Double,
        ropeScaling: RopeScaling?, ropeStyle: RopeStyle, attentionBias: Bool
    ) {
        self.architecture = architecture
        self.hiddenSize = hiddenSize
        self.intermediateSize = intermediateSize
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.vocabSize = vocabSize
        self.maxContext = maxContext
        self.rmsNormEps = rmsNormEps
        self.ropeTheta = ropeTheta
        self.ropeScaling = ropeScaling
        self.ropeStyle = ropeStyle
        self.attentionBias = attentionBias
    }

    public var qDim: Int { heads * headDim }
    public var kvDim: Int { kvHeads * headDim }

    /// Checks the internal consistency of the numbers; `source` names the file for the error.
    public func validate(source: String) throws {
        func bad(_ m: String) -> FormatError { FormatError(path: source, message: m) }
        for (name, v) in [("hidden size", hiddenSize), ("intermediate size", intermediateSize), ("layer count", layers),
                          ("head count", heads), ("KV head count", kvHeads), ("head dimension", headDim),
                          ("vocabulary size", vocabSize), ("context length", maxContext)] where v <= 0 {
            throw bad("\(name) must be positive, got \(v)")
        }
        if heads % kvHeads != 0 { throw bad("head count \(heads) is not a multiple of the KV head count \(kvHeads)") }
        if headDim % 2 != 0 { throw bad("head dimension \(headDim) must be even for RoPE") }
        if !(rmsNormEps > 0) { throw bad("RMSNorm epsilon must be positive, got \(rmsNormEps)") }
        if !(ropeTheta > 0) { throw bad("RoPE theta must be positive, got \(ropeTheta)") }
    }

    /// RoPE inverse frequencies for one head (headDim/2 of them), with any scaling applied.
    public func ropeInverseFrequencies() -> [Double] {
        let half = headDim / 2
        var inv = (0..<half).map { i in 1.0 / pow(ropeTheta, Double(2 * i) / Double(headDim)) }
        guard let s = ropeScaling else { return inv }
        switch s.kind {
        case .linear:
            inv = inv.map { $0 / s.factor }
        case .llama3:
            let low = s.lowFreqFactor ?? 1, high = s.highFreqFactor ?? 4
            let original = Double(s.originalMaxPositionEmbeddings ?? 8192)
            let lowWavelen = original / low, highWavelen = original / high
            inv = inv.map { f in
                let wavelen = 2 * Double.pi / f
                if wavelen < highWavelen { return f }
                if wavelen > lowWavelen { return f / s.factor }
                let smooth = (original / wavelen - low) / (high - low)
                return (1 - smooth) * f / s.factor + smooth * f
            }
        default:
            break
        }
        return inv
    }
}

#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif
