import ArgumentParser
import ChunkWise
import CWEval
import CWLoRA
import Foundation

/// How `--policy` strings become engines: `base`, `static` and `merged` as plain engine settings,
/// every other policy through the ChunkWise scheduler (`EngineOptions.policy`).
enum CLIPolicyHooks {
    static let configure: EnginePolicyRunner.Configure = { policy, base in
        switch policy {
        case "base", "static", "merged":
            var o = try EnginePolicyRunner.configureWithoutScheduler(policy, base)
            o.policy = policy == "base" ? "base" : nil
            return o
        default:
            guard !base.adapters.isEmpty else { throw EvalError.invalidInput("policy \(policy) needs --adapter") }
            var o = base
            o.mergeAdapters = false
            o.policy = policy
            return o
        }
    }
    static let statistics: EnginePolicyRunner.Statistics = { policy, engine in
        if let s = await engine.cumulativeSchedulerStatistics() {
            return PolicyStatistics(averageRank: s.averageRank, tokensPerRank: s.tokensPerRank)
        }
        return await EnginePolicyRunner.fixedRankStatistics(policy, engine)
    }

    static func runner(policy: String?, model: LoadedModel, options: EngineOptions) -> EnginePolicyRunner {
        let p = policy ?? (options.adapters.isEmpty ? "base" : options.mergeAdapters ? "merged" : "static")
        return EnginePolicyRunner(policy: p, model: model, baseOptions: options, configure: configure, statistics: statistics)
    }

    static func engine(policy: String?, modelOptions: ModelOptions) async throws -> Engine {
        let loaded = try ModelLoader.load(path: modelOptions.model, tokenizerPath: modelOptions.tokenizer)
        return try await runner(policy: policy, model: loaded, options: try modelOptions.engineOptions()).makeEngine()
    }
}

/// `\n` and `\t` written as two characters in an option become the characters.
func unescapeOption(_ s: String) -> String {
    s.replacingOccurrences(of: "\\n", with: "\n").replacingOccurrences(of: "\\t", with: "\t")
}

func parseIntList(_ s: String, name: String) throws -> [Int] {
    let parts = s.split(separator: ",").map { $0.trimmingCharacters(in: .whitespaces) }
    let ints = parts.compactMap { Int($0) }
    guard !parts.isEmpty, ints.count == parts.count else { throw ValidationError("\(name) must be a comma-separated list of integers, got \"\(s)\"") }
    return ints
}

struct Eval: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Evaluate: perplexity, SQuAD (generate and score), BLEU / chrF.",
        subcommands: [EvalPerplexity.self, EvalSQuAD.self, EvalSQuADScore.self, EvalBLEU.self])
}

struct EvalPerplexity: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "perplexity",
        abstract: "Token-level perplexity of a text file over fixed-length windows.",
        discussion: """
        The whole file is tokenized without special tokens. Windows follow the HuggingFace perplexity guide:
        --context is the window length (default 512); window k covers tokens [k*stride, k*stride + context); it scores only the tokens no earlier window scored
        (all but its first token for the first window; its last `stride` tokens afterwards), the rest is context.
        With stride = context (the default) windows do not overlap and each scores context-1 tokens. With --bos,
        every window is BOS + (context-1) tokens and all of them are scored. NLLs are summed exactly per token.
        """)

    @OptionGroup var modelOptions: ModelOptions
    /// The model options' `--policy` (default: static with --adapter, else base). A second
    /// `--policy` option here used to shadow it, so `--policy balanced` silently ran static.
    var policy: String? { modelOptions.policy }
    @Option(help: "A UTF-8 text file.")
    var file: String
    /// Tokens per window: `--context` of the model options (default 512).
    var window: Int { modelOptions.context ?? 512 }
    @Option(help: "Tokens between window starts (default: the window length, i.e. non-overlapping).")
    var stride: Int?
    @Option(name: .customLong("max-windows"), help: "Evaluate only the first N windows.")
    var maxWindows: Int?
    @Flag(help: "Prepend BOS to every window.")
    var bos = false
    @Flag(help: "Print one JSON object (with per-window NLL sums).")
    var json = false

    func validate() throws {
        if window < 2 { throw ValidationError("--context (the window length) must be at least 2") }
        if let stride, stride < 1 || stride > window { throw ValidationError("--stride must be in 1...\(window)") }
        if let maxWindows, maxWindows < 1 { throw ValidationError("--max-windows must be at least 1") }
    }

    func run() async throws {
        var mo = modelOptions
        mo.context = window
        let engine = try await CLIPolicyHooks.engine(policy: policy, modelOptions: mo)
        let text = try PromptInput.readUTF8File(file)
        let progress = ProgressPrinter()
        let r = try await Perplexity.evaluate(engine: engine, text: text,
                                              config: Perplexity.Config(context: window, stride: stride, maxWindows: maxWindows, bos: bos)) { d, t in
            if !json || progress.isTTY { progress.update("windows", done: d, total: t) }
        }
        if json { try printJSON(r); return }
        print("perplexity \(String(format: "%.4f", r.perplexity)) over \(r.tokens_scored) scored tokens (\(r.windows_evaluated) \(r.mode) windows of \(r.context), stride \(r.stride)\(r.bos ? ", BOS" : ""))")
        for w in r.windows {
            print(String(format: "  window %3d  tokens %7d..<%7d  scored %4d  nll_sum %12.4f  ppl %10.4f", w.index, w.begin, w.end, w.count, w.nll_sum, w.perplexity))
        }
    }
}

struct EvalSQuAD: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "squad",
        abstract: "Answer SQuAD questions greedily and score them (official SQuAD v2.0 EM / F1).",
        discussion: "Prompt tokenized without BOS; greedy, at most --max-tokens tokens, stop at a newline or EOS; the answer is cut at its first newline and stripped.")

    @OptionGroup var modelOptions: ModelOptions
    /// The model options' `--policy` (default: static with --adapter, else base).
    var policy: String? { modelOptions.policy }
    @Option(help: "A SQuAD v1.1/v2.0 JSON file.")
    var file: String
    @Option(help: "Answer at most N questions (after the other filters).")
    var limit: Int?
    @Option(help: "Only these articles (0-based indices, comma-separated), e.g. 3,4.")
    var articles: String?
    @Flag(name: .customLong("answerable-only"), help: "Skip unanswerable questions.")
    var answerableOnly = false
    @Option(name: .customLong("prompt-template"), help: "Prompt with {context} and {question}; \\n is a newline.")
    var promptTemplate: String = SQuADEval.defaultTemplate.replacingOccurrences(of: "\n", with: "\\n")
    @Option(name: .customLong("max-tokens"), help: "Generated tokens per answer at most.")
    var maxTokens: Int = 24
    @Option(help: "Write the predictions ({id: text}) to this file.")
    var predictions: String?
    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
        if let articles { _ = try parseIntList(articles, name: "--articles") }
    }

    func run() async throws {
        let data = try SQuADDataset(path: file)
        let qs = data.select(articles: try articles.map { try parseIntList($0, name: "--articles") }, answerableOnly: answerableOnly, limit: limit)
        guard !qs.isEmpty else { throw ValidationError("no questions selected") }
        let engine = try await CLIPolicyHooks.engine(policy: policy, modelOptions: modelOptions)
        let progress = ProgressPrinter()
        let r = try await SQuADEval.run(engine: engine, questions: qs,
                                        config: SQuADEval.Config(template: unescapeOption(promptTemplate), maxTokens: maxTokens)) { d, t in
            if !json || progress.isTTY { progress.update("questions", done: d, total: t) }
        }
        if let predictions {
            let enc = JSONEncoder()
            enc.outputFormatting = [.prettyPrinted, .sortedKeys]
            try enc.encode(r.predictionMap).write(to: URL(fileURLWithPath: predictions))
        }
        if json { try printJSON(r); return }
        let m = r.metric
        print(String(format: "EM %.2f  F1 %.2f  over %d questions", m.exact, m.f1, m.total))
        if let e = m.HasAns_exact, let f = m.HasAns_f1, let n = m.HasAns_total { print(String(format: "  HasAns EM %.2f  F1 %.2f  (%d)", e, f, n)) }
        if let e = m.NoAns_exact, let n = m.NoAns_total { print(String(format: "  NoAns  EM %.2f  (%d)", e, n)) }
        print(String(format: "  %d generated tokens, %.1f s", r.timing.generated_tokens, r.timing.wall_seconds))
    }
}

struct EvalSQuADScore: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "squad-score",
        abstract: "Score a SQuAD predictions file ({id: text}) with the official SQuAD v2.0 rules.")

    @Option(help: "The SQuAD JSON data file.")
    var data: String
    @Option(help: "Predictions: a JSON object {question_id: answer text}.")
    var predictions: String
    @Flag(name: .customLong("per-question"), help: "Include per-question scores in the JSON.")
    var perQuestion = false
    @Flag(help: "Print one JSON object.")
    var json = false

    func run() async throws {
        let d = try SQuADDataset(path: data)
        let p = try SQuADMetric.readPredictions(predictions)
        let (r, per) = SQuADMetric.evaluate(questions: d.questions, predictions: p)
        if r.missing > 0 { printError("warning: \(r.missing) questions have no prediction (not scored)") }
        if json {
            struct Out: Encodable { var metric: SQuADMetric.Result; var per_question: [SQuADMetric.PerQuestion]? }
            try printJSON(Out(metric: r, per_question: perQuestion ? per : nil))
            return
        }
        print(String(format: "exact %.6f  f1 %.6f  total %d", r.exact, r.f1, r.total))
        if let e = r.HasAns_exact, let f = r.HasAns_f1, let n = r.HasAns_total { print(String(format: "HasAns_exact %.6f  HasAns_f1 %.6f  HasAns_total %d", e, f, n)) }
        if let e = r.NoAns_exact, let f = r.NoAns_f1, let n = r.NoAns_total { print(String(format: "NoAns_exact %.6f  NoAns_f1 %.6f  NoAns_total %d", e, f, n)) }
    }
}

struct EvalBLEU: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bleu",
        abstract: "BLEU and chrF, identical to sacrebleu (13a tokenizer, exp smoothing; chrF2, char order 6).",
        discussion: "Score --hypotheses against --references (one segment per line), or generate the hypotheses with --model from --prompts (one prompt per line; greedy, first line of the output, stripped).")

    @Option(help: "Hypotheses file (one segment per line).")
    var hypotheses: String?
    @Option(help: "References file (one segment per line).")
    var references: String?
    @Option(help: "Tokenizer (only 13a).")
    var tokenize: String = "13a"
    @Flag(help: "Also score every line (sentence BLEU with effective order, sentence chrF).")
    var sentence = false
    @Option(help: "Generate the hypotheses with this model.")
    var model: String?
    @Option(name: .customLong("adapter"), help: "LoRA adapter(s) for generation: PATH[:WEIGHT].")
    var adapters: [String] = []
    @Option(help: "Scheduler policy for generation.")
    var policy: String?
    @Option(help: "exact or fast (generation).")
    var precision: PrecisionArgument = .fast
    @Option(help: "Worker threads (generation).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    @Option(help: "Prompts file for generation (one per line; \\n inside a line is a newline).")
    var prompts: String?
    @Option(name: .customLong("max-tokens"), help: "Generated tokens per prompt at most.")
    var maxTokens: Int = 64
    @Option(name: .customLong("output-hypotheses"), help: "Write generated hypotheses to this file.")
    var outputHypotheses: String?
    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        if tokenize != "13a" { throw ValidationError("only --tokenize 13a is implemented") }
        if model == nil && hypotheses == nil { throw ValidationError("give --hypotheses FILE, or --model M --prompts P") }
        if model != nil && prompts == nil { throw ValidationError("--model needs --prompts") }
        if model != nil && hypotheses != nil { throw ValidationError("give either --hypotheses or --model, not both") }
        if model == nil && references == nil { throw ValidationError("--references is required to score --hypotheses") }
        if maxTokens < 1 { throw ValidationError("--max-tokens must be at least 1") }
        for a in adapters { _ = try AdapterSpec.parse(a) }
    }

    func run() async throws {
        var hyps: [String]
        if let model, let prompts {
            let ps = try PyText.readLines(prompts).map(unescapeOption)
            let loaded = try ModelLoader.load(path: model)
            let opts = EngineOptions(precision: precision.value, threads: threads, adapters: try adapters.map(AdapterSpec.parse))
            let engine = try await CLIPolicyHooks.runner(policy: policy, model: loaded, options: opts).makeEngine()
            let progress = ProgressPrinter()
            hyps = []
            for p in ps {
                let r = try await engine.complete(GenerationRequest(prompt: .text(p), maxTokens: maxTokens, stopStrings: ["\n"], addSpecialTokens: false))
                hyps.append(SQuADEval.postprocess(r.text))
                if !json || progress.isTTY { progress.update("prompts", done: hyps.count, total: ps.count) }
            }
            if let outputHypotheses { try Data((hyps.joined(separator: "\n") + "\n").utf8).write(to: URL(fileURLWithPath: outputHypotheses)) }
            if references == nil {
                if json { try printJSON(["hypotheses": hyps]) } else { hyps.forEach { print($0) } }
                return
            }
        } else {
            hyps = try PyText.readLines(hypotheses ?? "")
        }
        let refs = try PyText.readLines(references ?? "")
        guard hyps.count == refs.count else { throw ValidationError("\(hyps.count) hypotheses but \(refs.count) references") }
        let bleu = BLEU()
        let b = try bleu.corpusScore(hypotheses: hyps, references: refs)
        let chrf = CHRF()
        let c = try chrf.corpusScore(hypotheses: hyps, references: refs)
        struct Sent: Encodable { var line: Int; var bleu: BLEUScore; var chrf: Double }
        struct ChrfOut: Encodable { var score: Double }
        struct Out: Encodable {
            var bleu: BLEUScore; var bleu_str: String; var bleu_signature: String
            var chrf: ChrfOut; var chrf_str: String; var chrf_signature: String
            var n_lines: Int; var sentences: [Sent]?
        }
        let sents: [Sent]? = sentence ? zip(hyps, refs).enumerated().map { i, hr in
            Sent(line: i, bleu: BLEU.sentenceScore(hypothesis: hr.0, reference: hr.1), chrf: chrf.sentenceScore(hypothesis: hr.0, reference: hr.1))
        } : nil
        if json {
            try printJSON(Out(bleu: b, bleu_str: b.formatted, bleu_signature: bleu.signature, chrf: ChrfOut(score: c),
                              chrf_str: chrf.formatted(c), chrf_signature: chrf.signature, n_lines: hyps.count, sentences: sents))
            return
        }
        print(b.formatted(signature: bleu.signature))
        print("\(chrf.name)|\(chrf.signature) = \(String(format: "%.2f", c))")
        for s in sents ?? [] { print(String(format: "%5d  BLEU %6.2f  chrF %6.2f", s.line, s.bleu.score, s.chrf)) }
    }
}
