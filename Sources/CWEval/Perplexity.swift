import ChunkWise
import Foundation

/// Token-level perplexity over windows of a token stream.
///
/// Windows follow the HuggingFace perplexity guide ("Perplexity of fixed-length models", strided
/// sliding window) exactly: with `L` = context (minus one when a BOS is prepended) and stride `S`,
/// window k covers stream tokens `[k·S, min(k·S + L, N))`; its targets are its last
/// `trg_len = end − prev_end` tokens (the tokens no earlier window has scored), the others are
/// context only; the loop stops after the window that reaches the end of the stream.
/// - stride = context (the default): non-overlapping windows, each evaluated fresh; the first
///   token of a window has nothing before it, so a window of L tokens scores L − 1 of them
///   (the golden's 511 of 512). With `bos`, every window is BOS + L stream tokens and all L are
///   scored (BOS is the context of the first).
/// - stride < context: each window after the first scores only its last `stride` tokens, with up
///   to `L − stride` tokens of extra left context.
/// Difference from the guide's code: the guide accumulates `mean loss × (valid labels − 1)` per
/// window, which miscounts by one token when stride < context; here the NLL of every scored token
/// is summed and counted exactly (same result whenever stride = context).
/// NLL = −log softmax(logits[pos])[next token], computed in float64 from the float32 logits.
public enum Perplexity {
    public struct Config: Sendable, Codable, Equatable {
        public var context: Int
        public var stride: Int?
        public var maxWindows: Int?
        public var bos: Bool

        public init(context: Int = 512, stride: Int? = nil, maxWindows: Int? = nil, bos: Bool = false) {
            self.context = context; self.stride = stride; self.maxWindows = maxWindows; self.bos = bos
        }

        var streamWindow: Int { context - (bos ? 1 : 0) }
        var effectiveStride: Int { stride ?? streamWindow }

        func validate() throws {
            guard context >= 2 else { throw EvalError.invalidInput("context must be at least 2") }
            guard effectiveStride >= 1 && effectiveStride <= streamWindow else {
                throw EvalError.invalidInput("stride must be in 1...\(streamWindow)")
            }
            if let m = maxWindows, m < 1 { throw EvalError.invalidInput("max windows must be at least 1") }
        }
    }

    /// One window: stream tokens `[begin, end)`, of which `[firstScored, end)` are scored.
    public struct WindowPlan: Sendable, Codable, Equatable {
        public var index: Int
        public var begin: Int
        public var end: Int
        public var firstScored: Int
        public var scored: Int { end - firstScored }
    }

    public struct Window: Sendable, Codable, Equatable {
        public var index: Int
        public var begin: Int
        public var end: Int
        public var first_scored: Int
        public var count: Int
        public var nll_sum: Double
        public var perplexity: Double
    }

    public struct Result: Sendable, Codable, Equatable {
        public var mode: String
        public var context: Int
        public var stride: Int
        public var bos: Bool
        public var stream_tokens: Int
        public var windows_evaluated: Int
        public var tokens_scored: Int
        public var nll_sum: Double
        public var mean_nll: Double
        public var perplexity: Double
        public var windows: [Window]
    }

    /// The windows of a stream of `count` tokens.
    public static func plan(streamCount n: Int, config c: Config) throws -> [WindowPlan] {
        try c.validate()
        let L = c.streamWindow, S = c.effectiveStride
        var out: [WindowPlan] = []
        var prevEnd = 0
        var begin = 0
        while begin < n {
            if let m = c.maxWindows, out.count >= m { break }
            let end = min(begin + L, n)
            let trg = end - prevEnd
            let first = max(end - trg, begin + (c.bos ? 0 : 1))
            if end > first { out.append(WindowPlan(index: out.count, begin: begin, end: end, firstScored: first)) }
            prevEnd = end
            if end == n { break }
            begin += S
        }
        return out
    }

    /// −log softmax(row)[target] in float64.
    @inline(__always)
    static func nll(_ row: UnsafeBufferPointer<Float>, target: Int) -> Double {
        var m = -Float.infinity
        for v in row where v > m { m = v }
        let md = Double(m)
        var s = 0.0
        for v in row { s += Foundation.exp(Double(v) - md) }
        return -(Double(row[target]) - md - Foundation.log(s))
    }

    /// Per-token NLLs of one window, given the logits of every input position.
    public static func windowNLLs(stream: [Int], plan w: WindowPlan, bos: Bool, logits: [Float], vocab: Int) throws -> [Double] {
        let offset = bos ? 1 : 0
        let inputCount = w.end - w.begin + offset
        guard logits.count == inputCount * vocab else {
            throw EvalError.invalidInput("expected \(inputCount * vocab) logits, got \(logits.count)")
        }
        var out: [Double] = []
        out.reserveCapacity(w.scored)
        try logits.withUnsafeBufferPointer { buf in
            for t in w.firstScored..<w.end {
                let pos = t - w.begin + offset - 1
                let target = stream[t]
                guard target >= 0 && target < vocab else { throw EvalError.invalidInput("token \(target) out of the vocabulary (\(vocab))") }
                out.append(nll(UnsafeBufferPointer(rebasing: buf[(pos * vocab)..<((pos + 1) * vocab)]), target: target))
            }
        }
        return out
    }

    /// Evaluates a token stream with a logits function (all positions of a fresh context).
    public static func evaluate(stream: [Int], config: Config, bosID: Int?, vocab: Int,
                                logits: (_ tokens: [Int]) async throws -> [Float],
                                progress: ((_ done: Int, _ total: Int) -> Void)? = nil) async throws -> Result {
        let plans = try plan(streamCount: stream.count, config: config)
        guard !plans.isEmpty else { throw EvalError.invalidInput("the text has \(stream.count) tokens: nothing to score") }
        if config.bos && bosID == nil { throw EvalError.invalidInput("--bos given but the tokenizer has no BOS token") }
        var windows: [Window] = []
        var total = 0.0, count = 0
        for w in plans {
            try Task.checkCancellation()
            let input = (config.bos ? [bosID ?? 0] : []) + Array(stream[w.begin..<w.end])
            let l = try await logits(input)
            let nlls = try windowNLLs(stream: stream, plan: w, bos: config.bos, logits: l, vocab: vocab)
            let s = nlls.reduce(0, +)
            windows.append(Window(index: w.index, begin: w.begin, end: w.end, first_scored: w.firstScored, count: nlls.count,
                                  nll_sum: s, perplexity: Foundation.exp(s / Double(max(nlls.count, 1)))))
            total += s; count += nlls.count
            progress?(windows.count, plans.count)
        }
        let mean = count > 0 ? total / Double(count) : 0
        return Result(mode: config.effectiveStride == config.streamWindow ? "non-overlapping" : "sliding",
                      context: config.context, stride: config.effectiveStride, bos: config.bos, stream_tokens: stream.count,
                      windows_evaluated: windows.count, tokens_scored: count, nll_sum: total, mean_nll: mean,
                      perplexity: count > 0 ? Foundation.exp(mean) : .nan, windows: windows)
    }

    /// Evaluates a text with an engine: the whole text is tokenized without special tokens
    /// (`add_special_tokens=False`). When only the first windows are needed, a prefix of the text
    /// ending at a line break is tokenized instead, provided it yields at least 256 tokens more
    /// than needed (pre-tokens never cross a line break followed by text, and BPE merges never
    /// cross pre-tokens, so the kept tokens equal those of the whole-file tokenization).
    public static func evaluate(engine: Engine, text: String, config: Config,
                                progress: ((_ done: Int, _ total: Int) -> Void)? = nil) async throws -> Result {
        let stream = streamTokens(engine: engine, text: text, config: config)
        return try await evaluate(stream: stream, config: config, bosID: engine.tokenizer.bosTokenID,
                                  vocab: engine.model.config.vocabSize,
                                  logits: { try await engine.logits(tokens: $0, mode: .all) }, progress: progress)
    }

    static func streamTokens(engine: Engine, text: String, config: Config) -> [Int] {
        if let m = config.maxWindows {
            let needed = (m - 1) * config.effectiveStride + config.streamWindow
            let scalars = text.unicodeScalars
            var chars = needed * 8
            while chars < scalars.count {
                var idx = scalars.index(scalars.startIndex, offsetBy: chars)
                while idx < scalars.endIndex && scalars[idx] != "\n" { idx = scalars.index(after: idx) }
                let prefix = String(scalars[scalars.startIndex..<idx])
                let ids = engine.tokenize(prefix, addSpecialTokens: false, parseSpecial: true)
                if ids.count >= needed + 256 { return Array(ids.prefix(needed)) }
                chars *= 2
            }
        }
        return engine.tokenize(text, addSpecialTokens: false, parseSpecial: true)
    }
}
