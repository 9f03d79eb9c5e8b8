import ChunkWise
import Foundation

/// Greedy extractive question answering on SQuAD, scored with ``SQuADMetric``.
///
/// Harness (as the smollm2-squad-r16 adapter's README): prompt = the template with `{context}`
/// and `{question}` filled in, tokenized without special tokens (no BOS, no chat template);
/// greedy decoding of at most `maxTokens` (24) tokens, stopping when the generated text contains a
/// newline or at an end-of-sequence token; the text is cut at its first newline and stripped.
public enum SQuADEval {
    public static let defaultTemplate = "Context: {context}\nQuestion: {question}\nAnswer:"

    public struct Config: Sendable {
        public var template: String
        public var maxTokens: Int

        public init(template: String = SQuADEval.defaultTemplate, maxTokens: Int = 24) {
            self.template = template; self.maxTokens = maxTokens
        }
    }

    public struct Prediction: Sendable, Codable, Equatable {
        public var id: String
        public var prediction: String
        public var raw: String
        public var generated_tokens: Int
        public var finish: String
        public var exact: Int
        public var f1: Double
    }

    public struct Timing: Sendable, Codable, Equatable {
        public var prompt_tokens: Int = 0
        public var generated_tokens: Int = 0
        public var prefill_seconds: Double = 0
        public var decode_seconds: Double = 0
        public var wall_seconds: Double = 0
    }

    public struct Result: Sendable, Codable, Equatable {
        public var metric: SQuADMetric.Result
        public var predictions: [Prediction]
        public var timing: Timing
        /// `{id: text}`, the official predictions format.
        public var predictionMap: [String: String] {
            Dictionary(predictions.map { ($0.id, $0.prediction) }, uniquingKeysWith: { a, _ in a })
        }
    }

    public static func prompt(_ q: SQuADQuestion, template: String) -> String {
        template.replacingOccurrences(of: "{context}", with: q.context).replacingOccurrences(of: "{question}", with: q.question)
    }

    /// Cut at the first newline, strip (Python `str.strip()`).
    public static func postprocess(_ raw: String) -> String {
        let firstLine = raw.unicodeScalars.split(separator: "\n", maxSplits: 1, omittingEmptySubsequences: false).first.map { String($0) } ?? ""
        return PyText.strip(firstLine)
    }

    /// Generates an answer for each question and scores them.
    public static func run(engine: Engine, questions: [SQuADQuestion], config: Config = Config(),
                           progress: ((_ done: Int, _ total: Int) -> Void)? = nil) async throws -> Result {
        guard config.maxTokens >= 1 else { throw EvalError.invalidInput("max tokens must be at least 1") }
        var preds: [Prediction] = []
        var timing = Timing()
        let t0 = Date()
        for q in questions {
            try Task.checkCancellation()
            let req = GenerationRequest(prompt: .text(prompt(q, template: config.template)), maxTokens: config.maxTokens,
                                        sampling: .greedy, stopStrings: ["\n"], stopAtEOS: true,
                                        addSpecialTokens: false, parseSpecialTokens: true)
            let r = try await engine.complete(req)
            let text = postprocess(r.text)
            let s = SQuADMetric.score(answers: q.answers, prediction: text)
            preds.append(Prediction(id: q.id, prediction: text, raw: r.text, generated_tokens: r.tokens.count,
                                    finish: r.stats.finishReason.rawValue, exact: s.exact, f1: s.f1))
            timing.prompt_tokens += r.stats.promptTokens
            timing.generated_tokens += r.tokens.count
            timing.prefill_seconds += r.stats.prefillSeconds
            timing.decode_seconds += r.stats.decodeSeconds
            progress?(preds.count, questions.count)
        }
        timing.wall_seconds = Date().timeIntervalSince(t0)
        let map = Dictionary(preds.map { ($0.id, $0.prediction) }, uniquingKeysWith: { a, _ in a })
        let metric = SQuADMetric.evaluate(questions: questions, predictions: map).result
        return Result(metric: metric, predictions: preds, timing: timing)
    }
}
