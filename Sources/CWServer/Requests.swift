import ChunkWise
import Foundation

/// The generation settings common to `/v1/completions` and `/v1/chat/completions`, parsed and
/// validated from the request body.
///
/// Supported sampling fields: `temperature` (0 = greedy), `top_p`, `top_k` (0 or -1 = off), `min_p`,
/// `repetition_penalty` (llama.cpp/vLLM style multiplicative penalty on the last 64 tokens;
/// `repeat_penalty` is accepted as an alias), `seed` (random when absent), `max_tokens` (chat also `max_completion_tokens`),
/// `stop` (a string or a list of up to 16), `n` (1 only), `ignore_eos`, `cache_salt` (vLLM's: only
/// requests with the same salt share prompt-cache entries — tenants that must not see each other's
/// cached prompts, even through timing, use different salts), `cache_prompt` (llama.cpp's: `false`
/// computes the whole prompt and leaves nothing in the prompt cache). `frequency_penalty` and
/// `presence_penalty` are accepted only as 0 (400 otherwise: use `repetition_penalty`); `logprobs`,
/// `echo`, `best_of` > 1, `suffix`, `tools` are refused with 400.
public struct GenerationSettings: Sendable {
    public var model: String?
    public var lora: [(name: String, scale: Double)] = []
    public var policy: ChunkWisePolicy = .staticFull
    public var sampling = SamplingParameters.greedy
    public var maxTokens: Int? = nil
    public var stop: [String] = []
    public var stream = false
    public var includeUsage = false
    public var ignoreEOS = false
    public var cacheSalt: String? = nil
    public var cachePrompt = true

    /// Parses the shared fields.
    public static func parse(_ o: JSONObject, chat: Bool) throws(APIError) -> GenerationSettings {
        var g = GenerationSettings()
        g.model = try o.string("model")
        if let n = try o.int("n"), n != 1 { throw .badRequest("only n = 1 is supported, got \(n)", param: "n", code: "unsupported_parameter") }
        if let b = try o.int("best_of"), b != 1 { throw .badRequest("best_of > 1 is not supported", param: "best_of", code: "unsupported_parameter") }
        if let e = try o.bool("echo"), e { throw .badRequest("echo is not supported", param: "echo", code: "unsupported_parameter") }
        if o["suffix"] != nil { throw .badRequest("suffix is not supported", param: "suffix", code: "unsupported_parameter") }
        if let l = o["logprobs"], l != .bool(false) { throw .badRequest("logprobs are not supported", param: "logprobs", code: "unsupported_parameter") }
        if let t = o["tools"], t != .array([]) { throw .badRequest("tools are not supported", param: "tools", code: "unsupported_parameter") }
        for key in ["frequency_penalty", "presence_penalty"] {
            if let v = try o.double(key), v != 0 {
                throw .badRequest("'\(key)' is not supported (only 0); use 'repetition_penalty'", param: key, code: "unsupported_parameter")
            }
        }
        var s = SamplingParameters.greedy
        if let t = try o.double("temperature") {
            guard t >= 0, t <= 100, t.isFinite else { throw .badRequest("'temperature' must be in [0, 100], got \(t)", param: "temperature") }
            s.temperature = Float(t)
        }
        if let p = try o.double("top_p") {
            guard p > 0, p <= 1 else { throw .badRequest("'top_p' must be in (0, 1], got \(p)", param: "top_p") }
            s.topP = Float(p)
        }
        if let k = try o.int("top_k") {
            guard k >= -1, k <= 1_000_000 else { throw .badRequest("'top_k' must be ≥ -1 (-1 or 0 = off), got \(k)", param: "top_k") }
            s.topK = max(0, Int(k))
        }
        if let m = try o.double("min_p") {
            guard m >= 0, m < 1 else { throw .badRequest("'min_p' must be in [0, 1), got \(m)", param: "min_p") }
            s.minP = Float(m)
        }
        for key in ["repetition_penalty", "repeat_penalty"] {
            if let r = try o.double(key) {
                guard r > 0, r <= 100 else { throw .badRequest("'\(key)' must be in (0, 100], got \(r)", param: key) }
                s.repetitionPenalty = Float(r)
            }
        }
        // Without a seed, sampling differs from request to request (as OpenAI's); with one it is reproducible.
        if let seed = try o.int("seed") { s.seed = UInt64(bitPattern: seed) } else { s.seed = UInt64.random(in: 0...UInt64.max) }
        g.sampling = s

        let maxKeys = chat ? ["max_completion_tokens", "max_tokens"] : ["max_tokens"]
        for key in maxKeys {
            if let m = try o.int(key) {
                guard m >= 1 else { throw .badRequest("'\(key)' must be at least 1, got \(m)", param: key, code: "invalid_max_tokens") }
                g.maxTokens = Int(clamping: m)
                break
            }
        }
        if let v = o["stop"] {
            switch v {
            case .string(let s): g.stop = [s]
            case .array(let a):
                guard a.count <= 16 else { throw .badRequest("'stop' may hold at most 16 strings", param: "stop") }
                for (i, e) in a.enumerated() {
                    guard case .string(let s) = e else { throw .badRequest("'stop[\(i)]' must be a string, got \(e.typeName)", param: "stop", code: "invalid_type") }
                    g.stop.append(s)
                }
            default: throw .badRequest("'stop' must be a string or a list of strings, got \(v.typeName)", param: "stop", code: "invalid_type")
            }
        }
        g.stream = try o.bool("stream") ?? false
        if let so = try o.object("stream_options") { g.includeUsage = try so.bool("include_usage") ?? false }
        g.ignoreEOS = try o.bool("ignore_eos") ?? false
        if let salt = try o.string("cache_salt") {
            guard !salt.isEmpty else { throw .badRequest("'cache_salt' must not be empty", param: "cache_salt") }
            g.cacheSalt = salt
        }
        g.cachePrompt = try o.bool("cache_prompt") ?? true

        if let l = try o.array("lora") {
            for (i, e) in l.enumerated() {
                let eo = try JSONObject(e, path: "lora[\(i)].")
                guard let name = try eo.string("name") else { throw .badRequest("'lora[\(i)].name' is required", param: "lora[\(i)].name") }
                let scale = try eo.double("scale") ?? 1
                guard scale.isFinite, abs(scale) <= 100 else { throw .badRequest("'lora[\(i)].scale' must be in [-100, 100]", param: "lora[\(i)].scale") }
                g.lora.append((name, scale))
            }
        }
        if let cw = try o.object("chunkwise") {
            if let name = try cw.string("policy") {
                guard let p = ChunkWisePolicy(name: name) else {
                    throw .badRequest("unknown chunkwise policy '\(name)' (known: static, static:K, balanced, aggressive, quality)",
                                      param: "chunkwise.policy", code: "unknown_policy")
                }
                g.policy = p
            }
        }
        return g
    }
}

/// A completions prompt: text, or token ids (`"prompt": [1, 2, 3]`); a list of one prompt is accepted.
public enum PromptField: Sendable, Equatable {
    case text(String)
    case tokens([Int])

    public static func parse(_ v: JSONValue?) throws(APIError) -> PromptField {
        guard let v else { throw .badRequest("'prompt' is required", param: "prompt", code: "missing_field") }
        switch v {
        case .string(let s): return .text(s)
        case .array(let a):
            if a.count == 1, case .string(let s) = a[0] { return .text(s) }
            if a.count == 1, case .array(let inner) = a[0] { return try tokens(inner) }
            if a.contains(where: { if case .string = $0 { return true }; if case .array = $0 { return true }; return false }) {
                throw .badRequest("batched prompts are not supported: send one prompt per request", param: "prompt", code: "unsupported_parameter")
            }
            return try tokens(a)
        default:
            throw .badRequest("'prompt' must be a string or a list of token ids, got \(v.typeName)", param: "prompt", code: "invalid_type")
        }
    }

    static func tokens(_ a: [JSONValue]) throws(APIError) -> PromptField {
        var ids: [Int] = []
        for e in a {
            guard case .int(let i) = e, let id = Int(exactly: i) else {
                throw .badRequest("'prompt' token ids must be integers", param: "prompt", code: "invalid_type")
            }
            ids.append(id)
        }
        return .tokens(ids)
    }
}

/// Parses `messages` of a chat request (text content: a string or a list of `{"type": "text"}` parts).
public func parseMessages(_ o: JSONObject) throws(APIError) -> [ChatMessage] {
    guard let list = try o.array("messages") else { throw .badRequest("'messages' is required", param: "messages", code: "missing_field") }
    guard !list.isEmpty else { throw .badRequest("'messages' must not be empty", param: "messages") }
    var out: [ChatMessage] = []
    for (i, e) in list.enumerated() {
        let m = try JSONObject(e, path: "messages[\(i)].")
        guard let role = try m.string("role") else { throw .badRequest("'messages[\(i)].role' is required", param: "messages[\(i)].role", code: "missing_field") }
        var content = ""
        switch m["content"] {
        case nil: content = ""
        case .string(let s)?: content = s
        case .array(let parts)?:
            for (j, p) in parts.enumerated() {
                let po = try JSONObject(p, path: "messages[\(i)].content[\(j)].")
                guard try po.string("type") == "text", let t = try po.string("text") else {
                    throw .badRequest("'messages[\(i)].content[\(j)]': only text parts are supported", param: "messages[\(i)].content", code: "unsupported_parameter")
                }
                content += t
            }
        case let v?:
            throw .badRequest("'messages[\(i)].content' must be a string or a list of text parts, got \(v.typeName)",
                              param: "messages[\(i)].content", code: "invalid_type")
        }
        out.append(ChatMessage(role: role, content: content))
    }
    return out
}
