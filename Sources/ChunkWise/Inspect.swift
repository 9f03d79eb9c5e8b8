import CWFormats
import CWKernels
import CWTokenizers
import CWTransformer
import Foundation

/// What `chunkwise inspect` shows about a model file.
public struct ModelReport: Sendable, Codable {
    public var path: String
    public var format: String
    public var architecture: String
    public var parameters: Int
    public var weightBytes: Int
    public var layers: Int
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var heads: Int
    public var kvHeads: Int
    public var headDim: Int
    public var vocabSize: Int
    public var contextLength: Int
    public var ropeTheta: Double
    public var ropeStyle: String
    public var ropeScaling: String?
    public var rmsNormEps: Float
    public var tiedEmbeddings: Bool
    public var tensorTypes: [String: Int]
    public var tokenizer: String?
    public var tokenizerVocabulary: Int?
    public var bos: Int?
    public var eos: [Int]
    public var chatTemplate: Bool
    public var metadata: [String: String]
}

public enum ModelInspector {
    /// Loads the model (mapped, nothing copied) and describes it.
    public static func inspect(path: String, tokenizerPath: String? = nil) throws -> ModelReport {
        let kind = try ModelLoader.detect(path)
        let model: LlamaModel
        var metadata: [String: String] = [:]
        var tensorTypes: [String: Int] = [:]
        var tokenizer: (any Tokenizer)? = nil
        var tokenizerName: String? = nil
        var chatTemplate = false
        var parameters = 0
        switch kind {
        case .gguf:
            let f = try GGUFFile(path: path)
            model = try LlamaModel(gguf: f)
            for (k, v) in f.metadata { metadata[k] = summarize(v) }
            for t in f.tensors {
                tensorTypes[t.type?.description ?? TensorType.ggmlName(t.typeID), default: 0] += 1
                parameters += t.elementCount
            }
            tokenizer = try? tokenizerPath.map(ModelLoader.loadTokenizer) ?? TokenizerLoader.load(gguf: f)
            tokenizerName = f.metadata["tokenizer.ggml.model"]?.string.map { "GGUF \($0)" }
            chatTemplate = f.metadata["tokenizer.chat_template"] != nil
        case .huggingFace, .llama2c:
            let loaded = try? ModelLoader.load(path: path, tokenizerPath: tokenizerPath)
            if kind == .huggingFace {
                model = try loaded?.model ?? LlamaModel(huggingFaceDirectory: path)
                if case .huggingFace(_, _, let files) = model.source {
                    for n in files.names {
                        if let i = files.info(n) {
                            tensorTypes[i.dtype, default: 0] += 1
                            parameters += i.shape.reduce(1, *)
                        }
                    }
                }
                tokenizerName = loaded == nil ? "none found (pass --tokenizer)" : "tokenizer.json"
            } else {
                model = try loaded?.model ?? LlamaModel(llama2c: Llama2cFile(path: path))
                let c = model.config
                tensorTypes["F32"] = 9 + 0
                parameters = c.vocabSize * c.hiddenSize + c.layers * (2 * c.hiddenSize + c.hiddenSize * (c.qDim + 2 * c.kvDim) + c.qDim * c.hiddenSize + 3 * c.hiddenSize * c.intermediateSize) + c.hiddenSize
                tokenizerName = loaded == nil ? "none found (pass --tokenizer)" : "llama2.c"
            }
            tokenizer = loaded?.tokenizer
            chatTemplate = loaded?.chatTemplate != nil
        }
        let c = model.config
        return ModelReport(
            path: path, format: model.source.formatName, architecture: c.architecture, parameters: parameters,
            weightBytes: model.weights.byteCount, layers: c.layers, hiddenSize: c.hiddenSize,
            intermediateSize: c.intermediateSize, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim,
            vocabSize: c.vocabSize, contextLength: c.maxContext, ropeTheta: c.ropeTheta, ropeStyle: c.ropeStyle.rawValue,
            ropeScaling: c.ropeScaling.map { "\($0.kind.rawValue) ×\($0.factor)" }, rmsNormEps: c.rmsNormEps,
            tiedEmbeddings: model.weights.outputIsTied, tensorTypes: tensorTypes, tokenizer: tokenizerName,
            tokenizerVocabulary: tokenizer?.vocabularySize, bos: tokenizer?.bosTokenID, eos: tokenizer?.eosTokenIDs ?? [],
            chatTemplate: chatTemplate, metadata: metadata)
    }

    static func summarize(_ v: GGUFValue) -> String {
        if let a = v.array {
            let head = a.prefix(3).map { summarize($0) }.joined(separator: ", ")
            return "[\(a.count) items: \(head)\(a.count > 3 ? ", …" : "")]"
        }
        if let s = v.string { return s.count > 80 ? String(s.prefix(77)) + "…" : s }
        if let b = v.bool { return String(b) }
        if let i = v.int { return String(i) }
        if let d = v.double { return String(d) }
        return "?"
    }
}
