import Foundation

/// RoPE frequency scaling from `rope_scaling` / `rope_parameters`.
public struct RopeScaling: Sendable, Equatable {
    public enum Kind: String, Sendable {
        case linear, llama3, dynamic, yarn
        case default_ = "default"
    }

    public let kind: Kind
    public let factor: Double
    public let lowFreqFactor: Double?
    public let highFreqFactor: Double?
    public let originalMaxPositionEmbeddings: Int?

    public init(kind: Kind, factor: Double, lowFreqFactor: Double? = nil, highFreqFactor: Double? = nil, originalMaxPositionEmbeddings: Int? = nil) {
        self.kind = kind
        self.factor = factor
        self.lowFreqFactor = lowFreqFactor
        self.highFreqFactor = highFreqFactor
        self.originalMaxPositionEmbeddings = originalMaxPositionEmbeddings
    }
}

/// The parts of a HuggingFace `config.json` a Llama-family engine needs
/// (Llama, Mistral, Qwen2; SmolLM uses the llama model type).
public struct HFModelConfig: Sendable, Equatable {
    public var modelType: String
    public var architectures: [String]
    public var hiddenSize: Int
    public var intermediateSize: Int
    public var numHiddenLayers: Int
    public var numAttentionHeads: Int
    /// Defaults to `numAttentionHeads`.
    public var numKeyValueHeads: Int
    /// Defaults to `hiddenSize / numAttentionHeads`.
    public var headDim: Int
    public var vocabSize: Int
    public var rmsNormEps: Double
    /// `rope_theta`, or `rope_parameters.rope_theta`; default 10000.
    public var ropeTheta: Double
    /// nil for plain (default) RoPE.
    public var ropeScaling: RopeScaling?
    public var tieWordEmbeddings: Bool
    /// q/k/v (and o, for Llama's `attention_bias`) have biases; always true for Qwen2 (q/k/v).
    public var attentionBias: Bool
    public var mlpBias: Bool
    public var maxPositionEmbeddings: Int
    public var bosTokenID: Int?
    public var eosTokenIDs: [Int]
    public var hiddenAct: String
    public var slidingWindow: Int?

    public static let supportedModelTypes = ["llama", "mistral", "qwen2"]

    public static func load(path: String) throws -> HFModelConfig {
        let data: Data
        do {
            data = try Data(contentsOf: URL(fileURLWithPath: path))
        } catch {
            let reason = FileManager.default.fileExists(atPath: path) ? "cannot read: \(error.localizedDescription)" : "file not found"
            throw FormatError(path: path, message: reason)
        }
        return try parse(data: data, path: path)
    }

    public static func parse(data: Data, path: String) throws -> HFModelConfig {
        let name = URL(fileURLWithPath: path).lastPathComponent
        func fail(_ m: String) -> FormatError { FormatError(path: path, message: "\(name): \(m)") }
        let json: JSONValue
        do { json = try JSONValue.parse(data) } catch { throw fail("not valid JSON: \(describeJSONError(error))") }
        guard let o = json.object else { throw fail("top level is \(json.kind), expected an object") }

        func present(_ key: String) -> JSONValue? {
            guard let v = o[key], !v.isNull else { return nil }
            return v
        }
        func optInt(_ key: String, in obj: [String: JSONValue]? = nil) throws -> Int? {
            guard let v = obj.map({ $0[key] }) ?? present(key), !v.isNull else { return nil }
            guard let i = v.int else { throw fail("field '\(key)' must be an integer, got \(v.kind)") }
            return i
        }
        func reqInt(_ key: String) throws -> Int {
            guard let i = try optInt(key) else { throw fail("missing required field '\(key)'") }
            guard i > 0 else { throw fail("field '\(key)' must be positive, got \(i)") }
            return i
        }
        func optDouble(_ key: String, in obj: [String: JSONValue]? = nil) throws -> Double? {
            guard let v = obj.map({ $0[key] }) ?? present(key), !v.isNull else { return nil }
            guard let d = v.double else { throw fail("field '\(key)' must be a number, got \(v.kind)") }
            return d
        }
        func optBool(_ key: String) throws -> Bool? {
            guard let v = present(key) else { return nil }
            guard let b = v.bool else { throw fail("field '\(key)' must be a boolean, got \(v.kind)") }
            return b
        }
        func optString(_ key: String) throws -> String? {
            guard let v = present(key) else { return nil }
            guard let s = v.string else { throw fail("field '\(key)' must be a string, got \(v.kind)") }
            return s
        }

        guard let modelType = try optString("model_type") else { throw fail("missing required field 'model_type'") }
        guard supportedModelTypes.contains(modelType) else {
            throw fail("unsupported model_type '\(modelType)' (supported: \(supportedModelTypes.joined(separator: ", ")); SmolLM uses llama)")
        }
        var architectures: [String] = []
        if let a = present("architectures") {
            guard let arr = a.array, let names = Optional(arr.compactMap { $0.string }), names.count == arr.count else {
                throw fail("field 'architectures' must be an array of strings")
            }
            architectures = names
        }

        let hidden = try reqInt("hidden_size")
        let intermediate = try reqInt("intermediate_size")
        let layers = try reqInt("num_hidden_layers")
        let heads = try reqInt("num_attention_heads")
        let vocab = try reqInt("vocab_size")
        let kvHeads = try optInt("num_key_value_heads") ?? heads
        guard kvHeads > 0, heads % kvHeads == 0 else {
            throw fail("num_key_value_heads \(kvHeads) must be positive and divide num_attention_heads \(heads)")
        }
        let headDim: Int
        if let hd = try optInt("head_dim") {
            guard hd > 0 else { throw fail("field 'head_dim' must be positive, got \(hd)") }
            headDim = hd
        } else {
            guard hidden % heads == 0 else {
                throw fail("hidden_size \(hidden) is not divisible by num_attention_heads \(heads) and no head_dim is given")
            }
            headDim = hidden / heads
        }

        let defaultEps: Double = modelType == "mistral" ? 1e-5 : 1e-6
        let eps = try optDouble("rms_norm_eps") ?? defaultEps
        guard eps > 0 else { throw fail("field 'rms_norm_eps' must be positive, got \(eps)") }

        // RoPE: transformers 5 puts theta and scaling in `rope_parameters`; older files use
        // `rope_theta` and `rope_scaling`.
        var ropeParams: [String: JSONValue]? = nil
        if let rp = present("rope_parameters") {
            guard let obj = rp.object else { throw fail("field 'rope_parameters' must be an object, got \(rp.kind)") }
            ropeParams = obj
        }
        var ropeTheta = 10000.0
        if let t = try optDouble("rope_theta") {
            ropeTheta = t
        } else if let rp = ropeParams, let t = try optDouble("rope_theta", in: rp) {
            ropeTheta = t
        }
        guard ropeTheta > 0 else { throw fail("rope_theta must be positive, got \(ropeTheta)") }

        var scalingObject: [String: JSONValue]? = nil
        var scalingField = "rope_scaling"
        if let rs = present("rope_scaling") {
            guard let obj = rs.object else { throw fail("field 'rope_scaling' must be an object or null, got \(rs.kind)") }
            scalingObject = obj
        } else if let rp = ropeParams {
            scalingObject = rp
            scalingField = "rope_parameters"
        }
        var ropeScaling: RopeScaling? = nil
        if let s = scalingObject {
            let typeValue = s["rope_type"] ?? s["type"]
            let typeName: String
            if let tv = typeValue, !tv.isNull {
                guard let str = tv.string else { throw fail("field '\(scalingField).rope_type' must be a string, got \(tv.kind)") }
                typeName = str
            } else {
                typeName = "default"
            }
            guard let kind = RopeScaling.Kind(rawValue: typeName) else {
                throw fail("unsupported \(scalingField) type '\(typeName)' (supported: default, linear, dynamic, llama3, yarn)")
            }
            if kind != .default_ {
                guard let factor = try optDouble("factor", in: s) else {
                    throw fail("\(scalingField) of type '\(typeName)' is missing 'factor'")
                }
                guard factor > 0 else { throw fail("\(scalingField).factor must be positive, got \(factor)") }
                let low = try optDouble("low_freq_factor", in: s)
                let high = try optDouble("high_freq_factor", in: s)
                let orig = try optInt("original_max_position_embeddings", in: s)
                if kind == .llama3 {
                    guard low != nil, high != nil, orig != nil else {
                        throw fail("\(scalingField) of type 'llama3' needs low_freq_factor, high_freq_factor and original_max_position_embeddings")
                    }
                }
                ropeScaling = RopeScaling(kind: kind, factor: factor, lowFreqFactor: low, highFreqFactor: high, originalMaxPositionEmbeddings: orig)
            }
        }

        let tie = try optBool("tie_word_embeddings") ?? false
        let attentionBias = modelType == "qwen2" ? true : (try optBool("attention_bias") ?? false)
        let mlpBias = try optBool("mlp_bias") ?? false
        let defaultMaxPos: Int
        switch modelType {
        case "mistral": defaultMaxPos = 131072
        case "qwen2": defaultMaxPos = 32768
        default: defaultMaxPos = 2048
        }
        let maxPos = try optInt("max_position_embeddings") ?? defaultMaxPos
        guard maxPos > 0 else { throw fail("field 'max_position_embeddings' must be positive, got \(maxPos)") }
        let bos = try optInt("bos_token_id")

        var eos: [Int] = []
        if let e = present("eos_token_id") {
            if let i = e.int {
                eos = [i]
            } else if let arr = e.array {
                for v in arr {
                    guard let i = v.int else { throw fail("field 'eos_token_id' must be an integer or a list of integers") }
                    eos.append(i)
                }
            } else {
                throw fail("field 'eos_token_id' must be an integer or a list of integers, got \(e.kind)")
            }
        }
        let act = try optString("hidden_act") ?? "silu"

        var sliding: Int? = nil
        if let w = try optInt("sliding_window") {
            // Qwen2 carries a window but only uses it when use_sliding_window is set.
            let use = try optBool("use_sliding_window") ?? (modelType != "qwen2")
            if use { sliding = w }
        }

        return HFModelConfig(
            modelType: modelType, architectures: architectures, hiddenSize: hidden, intermediateSize: intermediate,
            numHiddenLayers: layers, numAttentionHeads: heads, numKeyValueHeads: kvHeads, headDim: headDim,
            vocabSize: vocab, rmsNormEps: eps, ropeTheta: ropeTheta, ropeScaling: ropeScaling,
            tieWordEmbeddings: tie, attentionBias: attentionBias, mlpBias: mlpBias,
            maxPositionEmbeddings: maxPos, bosTokenID: bos, eosTokenIDs: eos, hiddenAct: act, slidingWindow: sliding)
    }
}
