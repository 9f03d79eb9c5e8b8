import CWKernels
import CWTokenizers
import CWTransformer
import Foundation

/// What to generate.
public struct GenerationRequest: Sendable {
    public enum Prompt: Sendable {
        case text(String)
        case tokens([Int])
    }

    public var prompt: Prompt
    public var maxTokens: Int = 128
    public var sampling: SamplingParameters = .greedy
    /// Generation ends when the text contains one of these (the stop string is not returned).
    public var stopStrings: [String] = []
    /// Stop at the tokenizer's end-of-sequence tokens.
    public var stopAtEOS: Bool = true
    /// Prepend BOS when the tokenizer does so by default.
    public var addSpecialTokens: Bool = true
    /// Match special tokens such as `<|im_start|>` written in the prompt text.
    public var parseSpecialTokens: Bool = true

    public init(prompt: Prompt, maxTokens: Int = 128, sampling: SamplingParameters = .greedy, stopStrings: [String] = [],
                stopAtEOS: Bool = true, addSpecialTokens: Bool = true, parseSpecialTokens: Bool = true) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopAtEOS = stopAtEOS
        self.addSpecialTokens = addSpecialTokens
        self.parseSpecialTokens = parseSpecialTokens
    }
}

/// Why generation ended.
public enum FinishReason: String, Sendable, Codable {
    case length, eos, stop, cancelled
}

/// Timings and counts of one generation.
public struct GenerationStats: Sendable, Codable, Equatable {
    public var promptTokens: Int = 0
    /// Prompt tokens whose keys and values came from a cache instead of being computed (the
    /// server's prompt cache).
    public var cachedPromptTokens: Int = 0
    public var generatedTokens: Int = 0
    public var prefillSeconds: Double = 0
    public var decodeSeconds: Double = 0
    public var timeToFirstTokenSeconds: Double = 0
    public var finishReason: FinishReason = .length
    /// Bytes held while this sequence ran (weights, adapters, KV cache, scratch).
    public var memory: MemoryBreakdown? = nil

    public var prefillTokensPerSecond: Double { prefillSeconds > 0 ? Double(promptTokens) / prefillSeconds : 0 }
    /// Tokens per second over the decode steps (the first generated token comes from prefill).
    public var decodeTokensPerSecond: Double {
        decodeSeconds > 0 && generatedTokens > 1 ? Double(generatedTokens - 1) / decodeSeconds : 0
    }

    public init() {}
}

/// One event of a generation stream.
public enum GenerationEvent: Sendable {
    /// A generated token and the text it completed (may be empty while UTF-8 or a possible stop
    /// string is pending).
    case token(id: Int, text: String)
    /// Text released at the end without a new token (bytes or a possible stop-string prefix that
    /// were held back).
    case text(String)
    /// The end, with the full text and statistics.
    case finished(text: String, tokens: [Int], stats: GenerationStats)
}

/// The result of a whole (non-streaming) generation.
public struct GenerationResult: Sendable {
    public var text: String
    public var tokens: [Int]
    public var stats: GenerationStats
}

/// Holds back text that might be the start of a stop string, and finds stop strings that
/// straddle token boundaries. Shared by the engine and the server, so both release the same text.
public struct StopMatcher: Sendable {
    public let stops: [String]
    public private(set) var text = ""
    private var emitted = 0 // characters of `text` already released

    public init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Adds text; returns what can be released and whether a stop string was found.
    public mutating func append(_ piece: String) -> (release: String, stopped: Bool) {
        text += piece
        if let cut = earliestStop() {
            // Never slice backwards, whatever the stop strings (they come from requests).
            let start = text.index(text.startIndex, offsetBy: min(emitted, text.count))
            let out = start <= cut ? String(text[start..<cut]) : ""
            text = String(text[..<cut])
            emitted = text.count
            return (out, true)
        }
        var hold = 0
        for s in stops {
            var k = min(s.count - 1, text.count)
            while k > hold {
                if text.hasSuffix(String(s.prefix(k))) { hold = k; break }
                k -= 1
            }
        }
        let releasable = text.count - hold
        guard releasable > emitted else { return ("", false) }
        let a = text.index(text.startIndex, offsetBy: emitted), b = text.index(text.startIndex, offsetBy: releasable)
        emitted = releasable
        return (String(text[a..<b]), false)
    }

    /// Everything not yet released.
    public mutating func flush() -> String {
        let out = String(text.dropFirst(emitted))
        emitted = text.count
        return out
    }

    private func earliestStop() -> String.Index? {
        var best: String.Index? = nil
        for s in stops {
            if let r = text.range(of: s) {
                if let b = best { if r.lowerBound < b { best = r.lowerBound } } else { best = r.lowerBound }
            }
        }
        return best
    }
}
