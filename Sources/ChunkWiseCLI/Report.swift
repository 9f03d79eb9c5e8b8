import ArgumentParser
import ChunkWise
import CWEval
import Foundation

struct Report: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Run each scheduler policy on the same work and write report.md, report.html, report.json and SVG charts.",
        discussion: """
        Per policy: perplexity on --wikitext, greedy SQuAD on --squad (EM/F1, and BLEU of the answers against the
        `static` policy's), speed (prefill tok/s, TTFT, decode ms/token at two context depths), memory, and the
        scheduler's average rank and rank-tier shares. Policies this build cannot run are listed as n/a.
        --limit N is the quick mode: N SQuAD questions, 1 perplexity window, 1 benchmark repetition.
        """)

    @OptionGroup var modelOptions: ModelOptions
    @Option(help: "Comma-separated policies.")
    var policies: String = Policies.defaultList.joined(separator: ",")
    @Option(help: "Text file for perplexity (e.g. wiki.test.raw).")
    var wikitext: String?
    @Option(help: "SQuAD JSON file.")
    var squad: String?
    @Option(help: "Quick mode: at most N SQuAD questions, 1 perplexity window, 1 benchmark repetition.")
    var limit: Int?
    @Option(help: "SQuAD articles (0-based, comma-separated; answerable questions only).")
    var articles: String = "3,4"
    @Option(name: .customLong("ppl-window"), help: "Perplexity window length.")
    var pplWindow: Int = 512
    @Option(name: .customLong("ppl-windows"), help: "Perplexity windows (default 4; 1 with --limit).")
    var pplWindows: Int?
    @Flag(name: .customLong("ppl-bos"), help: "Prepend BOS to every perplexity window.")
    var pplBOS = false
    @Option(name: .customLong("bench-depths"), help: "Two context depths for decode latency.")
    var benchDepths: String = "128,1024"
    @Option(name: .customLong("bench-prompt"), help: "Prompt tokens of the prefill measurement.")
    var benchPrompt: Int = 128
    @Option(name: .customLong("bench-gen"), help: "Generated tokens per decode measurement.")
    var benchGen: Int = 32
    @Option(name: .customLong("bench-repetitions"), help: "Benchmark repetitions (default 3; 1 with --limit).")
    var benchRepetitions: Int?
    @Option(help: "Output folder.")
    var out: String = "report"

    func validate() throws {
        _ = try Policies.parse(policies)
        if let limit, limit < 1 { throw ValidationError("--limit must be at least 1") }
        if pplWindow < 2 { throw ValidationError("--ppl-window must be at least 2") }
        if let pplWindows, pplWindows < 1 { throw ValidationError("--ppl-windows must be at least 1") }
        if benchPrompt < 1 || benchGen < 1 { throw ValidationError("--bench-prompt and --bench-gen must be at least 1") }
        if let benchRepetitions, benchRepetitions < 1 { throw ValidationError("--bench-repetitions must be at least 1") }
        _ = try parseIntList(benchDepths, name: "--bench-depths")
        _ = try parseIntList(articles, name: "--articles")
    }

    func run() async throws {
        let list = try Policies.parse(policies)
        var cfg = ReportConfig()
        if let wikitext { cfg.perplexityText = try PromptInput.readUTF8File(wikitext) }
        cfg.perplexity = Perplexity.Config(context: pplWindow, maxWindows: pplWindows ?? (limit == nil ? 4 : 1), bos: pplBOS)
        if let squad {
            cfg.squadQuestions = try SQuADDataset(path: squad).select(articles: try parseIntList(articles, name: "--articles"), answerableOnly: true, limit: limit)
        }
        cfg.benchDepths = try parseIntList(benchDepths, name: "--bench-depths")
        cfg.benchPromptTokens = benchPrompt
        cfg.benchGenTokens = benchGen
        cfg.benchRepetitions = benchRepetitions ?? (limit == nil ? 3 : 1)
        let loaded = try ModelLoader.load(path: modelOptions.model, tokenizerPath: modelOptions.tokenizer)
        var base = try modelOptions.engineOptions()
        // Every policy's row measured the same way: ChunkWise policies cannot reuse a prompt, so
        // no engine of the report keeps one (it would also add its blocks to the static rows' RSS).
        base.promptCache = false
        if base.contextLength == nil {
            base.contextLength = max(pplWindow, max(benchPrompt, cfg.benchDepths.max() ?? 0) + benchGen, 1024)
        }
        let runners: [any PolicyRunner] = list.map { CLIPolicyHooks.runner(policy: $0, model: loaded, options: base) }
        let progress = ProgressPrinter()
        let report = try await PolicyReportRunner.run(runners: runners, config: cfg, model: loaded.name,
                                                      adapters: base.adapters.map { ($0.path as NSString).lastPathComponent },
                                                      precision: modelOptions.precision.rawValue, threads: base.threads, progress: progress)
        let files = try PolicyReportRunner.write(report, to: out)
        for f in files { print(f) }
    }
}
