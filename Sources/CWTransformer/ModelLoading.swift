import CWFormats
import CWKernels
import Foundation

/// Where a model's weights came from.
public enum ModelSource: Sendable {
    case gguf(GGUFFile)
    case huggingFace(directory: String, config: HFModelConfig, weights: SafetensorsCollection)
    case llama2c(Llama2cFile)

    public var path: String {
        switch self {
        case .gguf(let f): return f.path
        case .huggingFace(let d, _, _): return d
        case .llama2c(let f): return f.path
        }
    }

    public var formatName: String {
        switch self {
        case .gguf(let f): return "GGUF v\(f.version)"
        case .huggingFace: return "HuggingFace safetensors"
        case .llama2c: return "llama2.c"
        }
    }
}

extension LlamaModel {
    /// Architectures whose GGUF layout this engine runs.
    public static let supportedGGUFArchitectures = ["llama", "mistral", "qwen2"]

    /// Loads a Llama-family model from a GGUF file (weights stay mapped and quantized).
    public convenience init(gguf: GGUFFile) throws {
        let src = gguf.path
        func fail(_ m: String) -> FormatError { FormatError(path: src, message: m) }
        guard let arch = gguf.architecture else { throw fail("missing metadata 'general.architecture'") }
        guard Self.supportedGGUFArchitectures.contains(arch) else {
            throw fail("architecture '\(arch)' is not supported (supported: \(Self.supportedGGUFArchitectures.joined(separator: ", ")))")
        }
        func int(_ key: String, default d: Int? = nil) throws -> Int {
            if let v = gguf.metadata["\(arch).\(key)"] {
                guard let i = v.int else { throw fail("metadata '\(arch).\(key)' must be an integer") }
                return i
            }
            if let d { return d }
            throw fail("missing metadata '\(arch).\(key)'")
        }
        func double(_ key: String, default d: Double) throws -> Double {
            guard let v = gguf.metadata["\(arch).\(key)"] else { return d }
            guard let x = v.double else { throw fail("metadata '\(arch).\(key)' must be a number") }
            return x
        }
        let hidden = try int("embedding_length")
        let heads = try int("attention.head_count")
        let kvHeads = try int("attention.head_count_kv", default: heads)
        guard heads > 0 else { throw fail("metadata '\(arch).attention.head_count' must be positive") }
        let headDim = try int("attention.key_length", default: hidden / heads)
        let embedInfo = gguf.tensor("token_embd.weight")
        let vocab = gguf.metadata["\(arch).vocab_size"]?.int
            ?? gguf.metadata["tokenizer.ggml.tokens"]?.array?.count
            ?? embedInfo?.dims.last ?? 0
        var scaling: RopeScaling? = nil
        if let type = gguf.metadata["\(arch).rope.scaling.type"]?.string, type == "linear" {
            let factor = try double("rope.scaling.factor", default: 1)
            if factor != 1 {
                scaling = RopeScaling(kind: .linear, factor: factor, lowFreqFactor: nil, highFreqFactor: nil, originalMaxPositionEmbeddings: nil)
            }
        } else if let type = gguf.metadata["\(arch).rope.scaling.type"]?.string, type != "none" {
            throw fail("RoPE scaling type '\(type)' is not supported (supported: none, linear, llama3 via rope_freqs)")
        }
        let config = LlamaConfig(
            architecture: arch,
            hiddenSize: hidden,
            intermediateSize: try int("feed_forward_length"),
            layers: try int("block_count"),
            heads: heads, kvHeads: kvHeads, headDim: headDim,
            vocabSize: vocab,
            maxContext: try int("context_length", default: 2048),
            rmsNormEps: Float(try double("attention.layer_norm_rms_epsilon", default: 1e-5)),
            ropeTheta: try double("rope.freq_base", default: 10000),
            ropeScaling: scaling,
            ropeStyle: arch == "qwen2" ? .halves : .interleaved,
            attentionBias: arch == "qwen2"
        )
        try config.validate(source: src)
        let check = ShapeChecker(source: src)
        let d = config.hiddenSize, ff = config.intermediateSize
        let embed = try check.matrix(gguf.matrix("token_embd.weight"), "token_embd.weight", rows: config.vocabSize, cols: d)
        var layers: [LayerWeights] = []
        layers.reserveCapacity(config.layers)
        for i in 0..<config.layers {
            func m(_ p: Projection, _ rows: Int, _ cols: Int) throws -> WeightMatrix {
                let name = p.ggufName(layer: i) + ".weight"
                return try check.matrix(gguf.matrix(name), name, rows: rows, cols: cols)
            }
            func vec(_ name: String, _ n: Int) throws -> [Float] { try check.vector(gguf.floats(name), name, count: n) }
            func bias(_ p: Projection, _ n: Int) throws -> [Float]? {
                let name = p.ggufName(layer: i) + ".bias"
                guard gguf.tensor(name) != nil else {
                    if config.attentionBias { throw fail("missing tensor '\(name)' (\(arch) has attention biases)") }
                    return nil
                }
                return try vec(name, n)
            }
            layers.append(LayerWeights(
                attentionNorm: try vec("blk.\(i).attn_norm.weight", d),
                wq: try m(.q, config.qDim, d), wk: try m(.k, config.kvDim, d), wv: try m(.v, config.kvDim, d),
                wo: try m(.o, d, config.qDim),
                bq: try bias(.q, config.qDim), bk: try bias(.k, config.kvDim), bv: try bias(.v, config.kvDim),
                ffnNorm: try vec("blk.\(i).ffn_norm.weight", d),
                wGate: try m(.gate, ff, d), wUp: try m(.up, ff, d), wDown: try m(.down, d, ff)))
        }
        let tied = gguf.tensor("output.weight") == nil
        let output = tied ? embed : try check.matrix(gguf.matrix("output.weight"), "output.weight", rows: config.vocabSize, cols: d)
        let weights = LlamaWeights(
            tokenEmbedding: embed, layers: layers,
            finalNorm: try check.vector(gguf.floats("output_norm.weight"), "output_norm.weight", count: d),
            output: output, outputIsTied: tied)
        var freqFactors: [Float]? = nil
        if gguf.tensor("rope_freqs.weight") != nil {
            freqFactors = try check.vector(gguf.floats("rope_freqs.weight"), "rope_freqs.weight", count: headDim / 2)
        }
        self.init(config: config, weights: weights, source: .gguf(gguf), ropeFrequencyFactors: freqFactors)
    }

    /// Loads a HuggingFace model folder (config.json + model.safetensors or a sharded index).
    public convenience init(huggingFaceDirectory dir: String) throws {
        let configPath = (dir as NSString).appendingPathComponent("config.json")
        let hf = try HFModelConfig.load(path: configPath)
        let files = try SafetensorsCollection(directory: dir)
        let config = LlamaConfig(
            architecture: hf.modelType,
            hiddenSize: hf.hiddenSize, intermediateSize: hf.intermediateSize, layers: hf.numHiddenLayers,
            heads: hf.numAttentionHeads, kvHeads: hf.numKeyValueHeads, headDim: hf.headDim,
            vocabSize: hf.vocabSize, maxContext: hf.maxPositionEmbeddings,
            rmsNormEps: Float(hf.rmsNormEps), ropeTheta: hf.ropeTheta, ropeScaling: hf.ropeScaling,
            ropeStyle: .halves, attentionBias: hf.attentionBias)
        try config.validate(source: configPath)
        let check = ShapeChecker(source: dir)
        let d = config.hiddenSize, ff = config.intermediateSize
        let embed = try check.matrix(files.matrix("model.embed_tokens.weight"), "model.embed_tokens.weight", rows: config.vocabSize, cols: d)
        var layers: [LayerWeights] = []
        for i in 0..<config.layers {
            func m(_ p: Projection, _ rows: Int, _ cols: Int) throws -> WeightMatrix {
                let name = p.hfModuleName(layer: i) + ".weight"
                return try check.matrix(files.matrix(name), name, rows: rows, cols: cols)
            }
            func vec(_ name: String, _ n: Int) throws -> [Float] { try check.vector(files.floats(name), name, count: n) }
            func bias(_ p: Projection, _ n: Int) throws -> [Float]? {
                let name = p.hfModuleName(layer: i) + ".bias"
                guard files.info(name) != nil else {
                    if config.attentionBias { throw FormatError(path: dir, message: "missing tensor '\(name)' (config.json says attention_bias)") }
                    return nil
                }
                return try vec(name, n)
            }
            layers.append(LayerWeights(
                attentionNorm: try vec("model.layers.\(i).input_layernorm.weight", d),
                wq: try m(.q, config.qDim, d), wk: try m(.k, config.kvDim, d), wv: try m(.v, config.kvDim, d),
                wo: try m(.o, d, config.qDim),
                bq: try bias(.q, config.qDim), bk: try bias(.k, config.kvDim), bv: try bias(.v, config.kvDim),
                ffnNorm: try vec("model.layers.\(i).post_attention_layernorm.weight", d),
                wGate: try m(.gate, ff, d), wUp: try m(.up, ff, d), wDown: try m(.down, d, ff)))
        }
        let hasHead = files.info("lm_head.weight") != nil
        let tied = !hasHead
        if !hasHead && !hf.tieWordEmbeddings {
            throw FormatError(path: dir, message: "missing tensor 'lm_head.weight' and config.json does not set tie_word_embeddings")
        }
        let output = tied ? embed : try check.matrix(files.matrix("lm_head.weight"), "lm_head.weight", rows: config.vocabSize, cols: d)
        let weights = LlamaWeights(
            tokenEmbedding: embed, layers: layers,
            finalNorm: try check.vector(files.floats("model.norm.weight"), "model.norm.weight", count: d),
            output: output, outputIsTied: tied)
        self.init(config: config, weights: weights, source: .huggingFace(directory: dir, config: hf, weights: files), ropeFrequencyFactors: nil)
    }

    /// Loads a llama2.c checkpoint (`.bin`, fp32).
    public convenience init(llama2c file: Llama2cFile) throws {
        let h = file.header
        let config = LlamaConfig(
            architecture: "llama", hiddenSize: h.dim, intermediateSize: h.hiddenDim, layers: h.layers,
            heads: h.heads, kvHeads: h.kvHeads, headDim: h.dim / h.heads, vocabSize: h.vocabSize,
            maxContext: h.seqLen, rmsNormEps: 1e-5, ropeTheta: 10000, ropeScaling: nil,
            ropeStyle: .interleaved, attentionBias: false)
        try config.validate(source: file.path)
        var layers: [LayerWeights] = []
        for i in 0..<h.layers {
            layers.append(LayerWeights(
                attentionNorm: try file.norm(.attention, layer: i),
                wq: try file.matrix(.wq, layer: i), wk: try file.matrix(.wk, layer: i),
                wv: try file.matrix(.wv, layer: i), wo: try file.matrix(.wo, layer: i),
                bq: nil, bk: nil, bv: nil,
                ffnNorm: try file.norm(.ffn, layer: i),
                wGate: try file.matrix(.w1, layer: i), wUp: try file.matrix(.w3, layer: i),
                wDown: try file.matrix(.w2, layer: i)))
        }
        let weights = LlamaWeights(
            tokenEmbedding: file.tokenEmbedding, layers: layers, finalNorm: file.finalNorm,
            output: file.classifier, outputIsTied: h.sharedClassifier)
        self.init(config: config, weights: weights, source: .llama2c(file), ropeFrequencyFactors: nil)
    }
}
