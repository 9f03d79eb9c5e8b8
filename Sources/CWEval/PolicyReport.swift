import ChunkWise
import Foundation

/// What the report runs for every policy (the same work for each).
public struct ReportConfig: Sendable {
    /// Text for perplexity (nil = skip).
    public var perplexityText: String?
    public var perplexity = Perplexity.Config(context: 512, maxWindows: 4)
    /// SQuAD questions to answer (empty = skip).
    public var squadQuestions: [SQuADQuestion] = []
    public var squad = SQuADEval.Config()
    /// Benchmark: prompt length, generated tokens, repetitions, and the two context depths at
    /// which decode latency is measured.
    public var benchPromptTokens = 128
    public var benchGenTokens = 32
    public var benchRepetitions = 3
    public var benchDepths = [128, 1024]
    /// The policy whose SQuAD answers are the BLEU reference.
    public var referencePolicy = "static"

    public init() {}
}

/// One policy's row of the table. nil = not measured / not available (shown as n/a).
public struct PolicyRow: Sendable, Codable, Equatable {
    public struct DepthLatency: Sendable, Codable, Equatable {
        public var depth: Int
        public var decode_ms_per_token: Double
    }

    public struct RankShare: Sendable, Codable, Equatable {
        public var rank: Int
        public var share: Double
    }

    public var policy: String
    /// "ok", or why the policy did not run.
    public var status: String = "ok"
    public var perplexity: Double?
    public var perplexity_tokens: Int?
    public var squad_exact: Double?
    public var squad_f1: Double?
    public var squad_questions: Int?
    /// Corpus BLEU of this policy's SQuAD answers against the reference policy's.
    public var bleu_vs_reference: Double?
    public var prefill_tok_s: Double?
    public var ttft_ms: Double?
    public var decode: [DepthLatency] = []
    /// Peak RSS of the process while this policy ran (the peak is reset before each policy where
    /// the OS allows it, see `peak_rss_reset`).
    public var peak_rss_bytes: Int?
    public var peak_rss_reset: Bool = false
    public var weights_bytes: Int?
    public var adapter_bytes: Int?
    public var kv_bytes: Int?
    public var scratch_bytes: Int?
    public var average_rank: Double?
    public var rank_shares: [RankShare]?
    public var squad_predictions: [String]?
    public var seconds: Double = 0

    public init(policy: String) { self.policy = policy }

    public var ran: Bool { status == "ok" }
}

/// The whole report.
public struct PolicyReport: Sendable, Codable, Equatable {
    public var model: String
    public var adapters: [String]
    public var precision: String
    public var threads: Int
    public var perplexity_setup: String
    public var squad_setup: String
    public var bench_setup: String
    public var reference_policy: String
    public var rows: [PolicyRow]
    public var generated_at: String
}

/// Runs the policies and writes report.md, report.html, report.json and the SVG charts.
public enum PolicyReportRunner {
    /// Resets the kernel's peak-RSS mark of this process (Linux: `echo 5 > /proc/self/clear_refs`).
    static func resetPeakRSS() -> Bool {
        #if os(Linux)
        guard let h = FileHandle(forWritingAtPath: "/proc/self/clear_refs") else { return false }
        defer { try? h.close() }
        do { try h.write(contentsOf: Data("5".utf8)) } catch { return false }
        return true
        #else
        return false
        #endif
    }

    public static func run(runners: [any PolicyRunner], config: ReportConfig, model: String, adapters: [String],
                           precision: String, threads: Int, progress: ProgressPrinter? = nil) async throws -> PolicyReport {
        var rows: [PolicyRow] = []
        for (i, runner) in runners.enumerated() {
            try Task.checkCancellation()
            progress?.message("[\(i + 1)/\(runners.count)] policy \(runner.policy)")
            rows.append(await runOne(runner, config: config, progress: progress))
        }
        // BLEU of each policy's answers against the reference policy's.
        if let ref = rows.first(where: { $0.policy == config.referencePolicy && $0.ran })?.squad_predictions {
            for i in rows.indices {
                guard let hyp = rows[i].squad_predictions, hyp.count == ref.count, !hyp.isEmpty else { continue }
                rows[i].bleu_vs_reference = try? BLEU().corpusScore(hypotheses: hyp, references: ref).score
            }
        }
        let ppl = config.perplexityText == nil ? "skipped"
            : "context \(config.perplexity.context), stride \(config.perplexity.effectiveStride), \(config.perplexity.maxWindows.map { "first \($0) windows" } ?? "all windows")\(config.perplexity.bos ? ", BOS" : "")"
        let sq = config.squadQuestions.isEmpty ? "skipped" : "\(config.squadQuestions.count) questions, greedy ≤\(config.squad.maxTokens) tokens"
        let bench = "prompt \(config.benchPromptTokens) tokens, \(config.benchGenTokens) generated, \(config.benchRepetitions) repetitions, decode depths \(config.benchDepths.map(String.init).joined(separator: "/"))"
        let fmt = ISO8601DateFormatter()
        return PolicyReport(model: model, adapters: adapters, precision: precision, threads: threads, perplexity_setup: ppl,
                            squad_setup: sq, bench_setup: bench, reference_policy: config.referencePolicy, rows: rows,
                            generated_at: fmt.string(from: Date()))
    }

    static func runOne(_ runner: any PolicyRunner, config: ReportConfig, progress: ProgressPrinter?) async -> PolicyRow {
        var row = PolicyRow(policy: runner.policy)
        let t0 = Date()
        row.peak_rss_reset = resetPeakRSS()
        let engine: Engine
        do {
            engine = try await runner.makeEngine()
        } catch let e as EvalError {
            row.status = "n/a: \(e.description)"
            progress?.message("  \(row.status)")
            return row
        } catch {
            row.status = "failed: \(error)"
            progress?.message("  \(row.status)")
            return row
        }
        do {
            if let text = config.perplexityText {
                let r = try await Perplexity.evaluate(engine: engine, text: text, config: config.perplexity) { d, t in
                    progress?.update("  perplexity", done: d, total: t)
                }
                row.perplexity = r.perplexity
                row.perplexity_tokens = r.tokens_scored
            }
            if !config.squadQuestions.isEmpty {
                let r = try await SQuADEval.run(engine: engine, questions: config.squadQuestions, config: config.squad) { d, t in
                    progress?.update("  squad", done: d, total: t)
                }
                row.squad_exact = r.metric.exact
                row.squad_f1 = r.metric.f1
                row.squad_questions = r.metric.total
                row.squad_predictions = r.predictions.map(\.prediction)
            }
            let limit = engine.contextLength
            let depths = Array(Set(config.benchDepths.map { min(max(0, $0), max(0, limit - config.benchGenTokens)) })).sorted()
            let prompt = min(config.benchPromptTokens, max(1, limit - config.benchGenTokens))
            for (k, d) in depths.enumerated() {
                progress?.update("  bench", done: k, total: depths.count)
                let b = try await engine.benchmark(BenchmarkConfig(promptTokens: prompt, genTokens: config.benchGenTokens,
                                                                   repetitions: config.benchRepetitions, decodeDepth: d))
                row.decode.append(.init(depth: b.decode_depth, decode_ms_per_token: b.decode_ms_per_token))
                if k == 0 { row.prefill_tok_s = b.prefill_tok_s; row.ttft_ms = b.ttft_ms }
                // Memory as allocated at the deepest context.
                row.weights_bytes = b.memory.weights_bytes
                row.adapter_bytes = b.memory.adapter_bytes
                row.kv_bytes = b.memory.kv_bytes
                row.scratch_bytes = b.memory.scratch_bytes
            }
            progress?.update("  bench", done: depths.count, total: depths.count)
            if let s = await runner.statistics(engine: engine) {
                row.average_rank = s.averageRank
                row.rank_shares = s.rankShares.sorted { $0.key < $1.key }.map { .init(rank: $0.key, share: $0.value) }
            }
            row.peak_rss_bytes = ProcessMemory.peakRSS()
        } catch {
            row.status = "failed: \(error)"
            progress?.message("  \(row.status)")
        }
        row.seconds = Date().timeIntervalSince(t0)
        return row
    }

    /// Writes report.md, report.html, report.json, quality_latency.svg, memory.svg, rank_tiers.svg.
    /// Returns the paths written.
    @discardableResult
    public static func write(_ report: PolicyReport, to dir: String) throws -> [String] {
        try FileManager.default.createDirectory(atPath: dir, withIntermediateDirectories: true)
        let charts = ReportCharts.all(report)
        var written: [String] = []
        func put(_ name: String, _ s: String) throws {
            let p = (dir as NSString).appendingPathComponent(name)
            try Data(s.utf8).write(to: URL(fileURLWithPath: p))
            written.append(p)
        }
        for (name, svg) in charts { try put(name, svg) }
        try put("report.md", ReportRenderer.markdown(report, charts: charts.map(\.0)))
        try put("report.html", ReportRenderer.html(report, charts: charts))
        let enc = JSONEncoder()
        enc.outputFormatting = [.prettyPrinted, .sortedKeys, .withoutEscapingSlashes]
        try put("report.json", String(decoding: try enc.encode(report), as: UTF8.self))
        return written
    }
}
