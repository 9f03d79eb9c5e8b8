import CWFormats
import CWKernels
import CWTransformer
import Foundation

/// `path[:scale]` from the command line (`--lora adapter-dir:0.5`).
public struct AdapterSpec: Sendable, Equatable {
    public let path: String
    public let weight: Double

    public init(path: String, weight: Double = 1) {
        self.path = path
        self.weight = weight
    }

    /// Splits at the last `:` when what follows is a finite number; otherwise the whole string is the path.
    public static func parse(_ s: String) throws -> AdapterSpec {
        if let i = s.lastIndex(of: ":") {
            let tail = String(s[s.index(after: i)...])
            if let w = Double(tail), w.isFinite, !tail.isEmpty {
                let path = String(s[..<i])
                guard !path.isEmpty else { throw LoRAError(.format, path: s, "adapter spec '\(s)' has a scale but no path") }
                return AdapterSpec(path: path, weight: w)
            }
        }
        guard !s.isEmpty else { throw LoRAError(.format, path: s, "empty adapter spec (expected path[:scale])") }
        return AdapterSpec(path: s, weight: 1)
    }

    /// Loads the adapter and pairs it with the weight.
    public func load() throws -> AdapterBinding { AdapterBinding(try LoRAAdapter.load(path: path), weight: weight) }
}

/// What `chunkwise inspect ADAPTER` prints (Codable, for `--json`).
public struct AdapterSummary: Codable, Sendable, Equatable {
    public struct Module: Codable, Sendable, Equatable {
        public let name: String
        public let layer: Int
        public let projection: String
        public let rank: Int
        public let alpha: Double?
        public let scale: Double
        public let inFeatures: Int
        public let outFeatures: Int
        public let dora: Bool
        public let bias: Bool
    }

    public let format: String
    public let path: String
    public let peftType: String
    public let baseModel: String?
    public let rank: Int?
    public let ranks: [Int]
    public let alpha: Double?
    public let scales: [Double]
    public let useRslora: Bool
    public let useDora: Bool
    public let targetModules: [String]
    public let layers: [Int]
    public let moduleCount: Int
    public let modulesToSave: [String]
    public let unplacedTensors: [String]
    public let qkRowOrder: String
    public let sizeBytes: Int
    public let contentHash: String
    public let modules: [Module]
}

extension LoRAAdapter {
    public var summary: AdapterSummary {
        AdapterSummary(
            format: format.rawValue, path: path, peftType: peftType, baseModel: baseModel, rank: rank,
            ranks: Array(Set(modules.map(\.rank))).sorted(), alpha: alpha, scales: Array(Set(modules.map(\.scale))).sorted(),
            useRslora: useRslora, useDora: useDora, targetModules: targetModules,
            layers: Array(Set(modules.map(\.layer))).sorted(), moduleCount: modules.count,
            modulesToSave: savedModules.map(\.target.rawValue), unplacedTensors: unplaced.map(\.tensor),
            qkRowOrder: qkRowOrder == .halves ? "hf" : "gguf", sizeBytes: byteCount, contentHash: contentHash,
            modules: modules.map {
                AdapterSummary.Module(name: $0.moduleName, layer: $0.layer, projection: $0.projection.rawValue, rank: $0.rank,
                                      alpha: $0.alpha, scale: $0.scale, inFeatures: $0.inFeatures, outFeatures: $0.outFeatures,
                                      dora: $0.magnitude != nil, bias: $0.bias != nil || $0.replacedBias != nil)
            })
    }
}

/// Writes a merged HF model folder: `config.json` + `model.safetensors` (fp32). GGUF / llama.cpp-order
/// (interleaved) models get their Q/K rows (and biases) un-permuted to HF order. Returns the merge
/// (whose `extraBytes` is the in-memory cost).
@discardableResult
public func writeMergedHF(model: LlamaModel, adapters: [AdapterBinding], to directory: String, allowPartial: Bool = false) throws -> MergedModel {
    let merged = try LoRAStack.merged(model: model, adapters: adapters, allowPartial: allowPartial)
    try writeHF(model: merged.model, to: directory)
    return merged
}

/// Writes any `LlamaModel` as an HF folder (fp32). Llama3-style `rope_freqs` factors are not carried over.
public func writeHF(model: LlamaModel, to directory: String) throws {
    let c = model.config, w = model.weights
    try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
    let dir = URL(fileURLWithPath: directory)
    let toHF = c.ropeStyle == .interleaved
    func matrix(_ name: String, _ m: WeightMatrix, heads: Int? = nil) -> OutputTensor {
        OutputTensor(name: name, shape: [m.rows, m.cols]) { dst in
            for r in 0..<m.rows { m.dequantizeRow(r, into: dst + r * m.cols) }
            if toHF, let h = heads {
                let v = Array(UnsafeBufferPointer(start: dst, count: m.rows * m.cols))
                let p = RowOrder.permute(v, width: m.cols, heads: h, headDim: c.headDim, toInterleaved: false)
                p.withUnsafeBufferPointer { b in if let base = b.baseAddress { dst.update(from: base, count: p.count) } }
            }
        }
    }
    func vector(_ name: String, _ v: [Float], heads: Int? = nil) -> OutputTensor {
        let out = (toHF && heads != nil) ? RowOrder.permute(v, width: 1, heads: heads ?? 1, headDim: c.headDim, toInterleaved: false) : v
        return OutputTensor(name: name, shape: [v.count], values: out)
    }
    var tensors: [OutputTensor] = [matrix("model.embed_tokens.weight", w.tokenEmbedding), vector("model.norm.weight", w.finalNorm)]
    let tiedSame = w.outputIsTied || (w.output.base == w.tokenEmbedding.base && w.output.type == w.tokenEmbedding.type)
    if !tiedSame { tensors.append(matrix("lm_head.weight", w.output)) }
    for (i, l) in w.layers.enumerated() {
        let p = "model.layers.\(i)."
        tensors.append(vector(p + "input_layernorm.weight", l.attentionNorm))
        tensors.append(vector(p + "post_attention_layernorm.weight", l.ffnNorm))
        for proj in Projection.allCases {
            let heads: Int? = proj == .q ? c.heads : proj == .k ? c.kvHeads : nil
            tensors.append(matrix(proj.hfModuleName(layer: i) + ".weight", l.matrix(proj), heads: heads))
        }
        if let b = l.bq { tensors.append(vector(Projection.q.hfModuleName(layer: i) + ".bias", b, heads: c.heads)) }
        if let b = l.bk { tensors.append(vector(Projection.k.hfModuleName(layer: i) + ".bias", b, heads: c.kvHeads)) }
        if let b = l.bv { tensors.append(vector(Projection.v.hfModuleName(layer: i) + ".bias", b)) }
    }
    var cfg: [(String, JSON)] = [
        ("architectures", .array([.string(c.architecture == "qwen2" ? "Qwen2ForCausalLM" : c.architecture == "mistral" ? "MistralForCausalLM" : "LlamaForCausalLM")])),
        ("model_type", .string(c.architecture)),
        ("hidden_size", .int(c.hiddenSize)),
        ("intermediate_size", .int(c.intermediateSize)),
        ("num_hidden_layers", .int(c.layers)),
        ("num_attention_heads", .int(c.heads)),
        ("num_key_value_heads", .int(c.kvHeads)),
        ("head_dim", .int(c.headDim)),
        ("vocab_size", .int(c.vocabSize)),
        ("max_position_embeddings", .int(c.maxContext)),
        ("rms_norm_eps", .double(Double(c.rmsNormEps))),
        ("rope_theta", .double(c.ropeTheta)),
        ("hidden_act", .string("silu")),
        ("attention_bias", .bool(w.layers.first?.bq != nil)),
        ("mlp_bias", .bool(false)),
        ("tie_word_embeddings", .bool(tiedSame)),
        ("torch_dtype", .string("float32")),
    ]
    if let s = c.ropeScaling {
        var o: [(String, JSON)] = [("rope_type", .string(s.kind.rawValue)), ("factor", .double(s.factor))]
        if let v = s.lowFreqFactor { o.append(("low_freq_factor", .double(v))) }
        if let v = s.highFreqFactor { o.append(("high_freq_factor", .double(v))) }
        if let v = s.originalMaxPositionEmbeddings { o.append(("original_max_position_embeddings", .int(v))) }
        cfg.append(("rope_scaling", .object(o)))
    }
    do { try Data(JSON.object(cfg).text.utf8).write(to: dir.appendingPathComponent("config.json")) } catch {
        throw LoRAError(.format, path: directory, "cannot write config.json: \(error.localizedDescription)")
    }
    try SafetensorsWriter.write(tensors, metadata: ["format": "pt"], to: dir.appendingPathComponent("model.safetensors").path)
}

/// Merges `adapters` into a GGUF model in the model's own encoding (`MergeFormat.base`) and writes
/// the result as a GGUF file: the same header, metadata, tensor table and size as the source (every
/// merged matrix keeps its type and byte count), with the touched tensors' data replaced. The file
/// loads anywhere the source does (this engine, llama.cpp) and decodes at the base model's speed;
/// the merge's rounding costs some of the adapter's effect (see `MergeFormat.base`).
///
/// Refused, with the reason: a source that is not a GGUF file; a touched matrix whose encoding
/// cannot be merged into in place (K-quants, BF16); adapter biases or `modules_to_save` (they would
/// add or replace tensors — write an HF folder instead).
public func writeMergedGGUF(model: LlamaModel, adapters: [AdapterBinding], to path: String, allowPartial: Bool = false) throws -> MergedModel {
    guard case .gguf(let g) = model.source else {
        throw LoRAError(.unsupported, path: path, "a merged GGUF is written from a GGUF model; this model is \(model.source.formatName) (write an HF folder instead)")
    }
    let fm = FileManager.default
    if fm.fileExists(atPath: path) {
        throw LoRAError(.format, path: path, "the output file exists; remove it or choose another path")
    }
    let merged = try LoRAStack.merged(model: model, adapters: adapters, allowPartial: allowPartial, format: .base)
    let mw = merged.model.weights, bw = model.weights
    for l in mw.layers.indices where mw.layers[l].bq != bw.layers[l].bq || mw.layers[l].bk != bw.layers[l].bk || mw.layers[l].bv != bw.layers[l].bv {
        throw LoRAError(.unsupported, path: path, "the adapters change layer \(l)'s attention biases; a merged GGUF keeps the source's tensors (write an HF folder instead)")
    }
    guard mw.tokenEmbedding.base == bw.tokenEmbedding.base, mw.output.base == bw.output.base else {
        throw LoRAError(.unsupported, path: path, "the adapters replace the embedding or the output head (modules_to_save); a merged GGUF keeps the source's tensors (write an HF folder instead)")
    }
    var writes: [(offset: Int, matrix: WeightMatrix)] = []
    for t in merged.touched {
        let name = t.projection.ggufName(layer: t.layer) + ".weight"
        let m = mw.layers[t.layer].matrix(t.projection)
        guard let info = g.tensor(name) else {
            throw LoRAError(.unsupported, path: g.path, "tensor \(name) is not in the file")
        }
        guard info.type == m.type, info.byteCount == m.byteCount else {
            throw LoRAError(.unsupported, path: g.path, "\(name) is \(info.typeName), which cannot be merged into in its own encoding (Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, F16 and F32 can)")
        }
        writes.append((info.offset, m))
    }
    do {
        try fm.copyItem(atPath: g.path, toPath: path)
        let h = try FileHandle(forUpdating: URL(fileURLWithPath: path))
        defer { try? h.close() }
        for w in writes {
            try h.seek(toOffset: UInt64(w.offset))
            try h.write(contentsOf: Data(bytes: w.matrix.base, count: w.matrix.byteCount))
        }
    } catch {
        try? fm.removeItem(atPath: path)
        throw LoRAError(.format, path: path, "cannot write the merged GGUF: \(error.localizedDescription)")
    }
    return merged
}
