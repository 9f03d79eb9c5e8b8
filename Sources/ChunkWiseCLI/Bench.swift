import ArgumentParser
import ChunkWise
import Foundation

struct Bench: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Measure prefill and decode speed, time to first token and memory (random tokens, after a warm-up).")

    @OptionGroup var modelOptions: ModelOptions
    @Option(name: .customLong("prompt-tokens"), help: "Prompt length for the prefill test (pp).")
    var promptTokens: Int = 512
    @Option(name: .customLong("gen-tokens"), help: "Tokens generated for the decode test (tg).")
    var genTokens: Int = 128
    @Option(help: "Measured repetitions (after one warm-up).")
    var repetitions: Int = 5
    @Option(help: "Tokens in the context when decoding starts (default: the prompt length; 0 = fresh context, as llama-bench's tg).")
    var depth: Int?
    @Option(help: "Also measure decode with this many sequences stepping together (continuous batching; aggregate tok/s).")
    var batch: Int = 1
    @Option(name: .customLong("prompt-file"), help: "Take the prompt (and the decode-depth context) from this text file instead of random tokens.")
    var promptFile: String?
    @Option(name: .customLong("versus"), help: ArgumentHelp("Also run the model with this policy (static, base = no adapter, merged, static:K, balanced, …, or a config file) and compare side by side in this process: the runs take turns, one repetition each, and the ratios are taken within each repetition. Repeatable.", valueName: "POLICY"))
    var versus: [String] = []
    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        if promptTokens < 1 || genTokens < 1 || repetitions < 1 {
            throw ValidationError("--prompt-tokens, --gen-tokens and --repetitions must each be at least 1")
        }
        if let depth, depth < 0 { throw ValidationError("--depth must be ≥ 0") }
        if batch < 1 || batch > 256 { throw ValidationError("--batch must be between 1 and 256") }
        if !versus.isEmpty && repetitions < 2 { throw ValidationError("--versus needs --repetitions of at least 2 (ratios are taken per repetition)") }
    }

    func run() async throws {
        var mo = modelOptions
        if mo.context == nil { mo.context = max(promptTokens, depth ?? promptTokens) + genTokens }
        // Side by side: the model is loaded once and bound under each policy.
        let shared = versus.isEmpty ? nil : try ModelLoader.load(path: mo.model, tokenizerPath: mo.tokenizer)
        let engine = try shared.map { try Engine(model: $0, options: mo.engineOptions()) } ?? mo.makeEngine()
        let quiet = json
        var cfg = BenchmarkConfig(promptTokens: promptTokens, genTokens: genTokens, repetitions: repetitions, decodeDepth: depth, batch: batch)
        if let f = promptFile {
            let text: String
            do { text = try String(contentsOfFile: f, encoding: .utf8) } catch { throw ValidationError("--prompt-file \(f): cannot read: \(error.localizedDescription)") }
            // Enough text for the longest prompt (tokenizing a whole corpus would take a while).
            let ids = engine.tokenize(String(text.prefix(16 * max(promptTokens, depth ?? 0) + 4096)))
            guard ids.count > 1 else { throw ValidationError("--prompt-file \(f): no text to tokenize") }
            cfg.textTokens = ids
        }
        if let shared {
            try await runSideBySide(mo, model: shared, first: engine, cfg)
            return
        }
        let report = try await engine.benchmark(cfg,
            progress: { line in if !quiet { printError(line) } })
        if json { try printJSON(report); return }
        func batchRow(_ r: BenchmarkReport) -> String {
            guard let b = r.batch, let v = r.batch_decode_tok_s else { return "" }
            let label = "decode ×\(b) (aggregate)".padding(toLength: 21, withPad: " ", startingAt: 0)
            return "\n| \(label) | \(String(format: "%8.1f ± %6.1f tok/s", v, r.batch_decode_tok_s_sd ?? 0)) |"
        }
        func mib(_ b: Int) -> String { String(format: "%.1f MiB", Double(b) / 1_048_576) }
        print("""
        model     \(report.model)\(report.adapters.isEmpty ? "" : " + " + report.adapters.joined(separator: ", "))
        setup     \(report.precision) precision, \(report.threads) threads, \(report.kernels)
        | test                  | result              |
        |-----------------------|---------------------|
        | prefill pp\(String(report.prompt_tokens).padding(toLength: 11, withPad: " ", startingAt: 0)) | \(String(format: "%8.1f ± %6.1f tok/s", report.prefill_tok_s, report.prefill_tok_s_sd)) |
        | decode tg\(String(report.gen_tokens).padding(toLength: 4, withPad: " ", startingAt: 0)) @ d\(String(report.decode_depth).padding(toLength: 5, withPad: " ", startingAt: 0)) | \(String(format: "%8.1f ± %6.1f tok/s", report.decode_tok_s, report.decode_tok_s_sd)) |
        | time to first token   | \(String(format: "%8.1f ± %6.1f ms   ", report.ttft_ms, report.ttft_ms_sd)) |\(batchRow(report))
        memory    weights \(mib(report.memory.weights_bytes)), adapters \(mib(report.memory.adapter_bytes)), KV \(mib(report.memory.kv_bytes)), scratch \(mib(report.memory.scratch_bytes)) = \(mib(report.memory.total_bytes)); peak RSS \(mib(report.peak_rss_bytes))
        """)
    }

    /// `--versus`: the same model under other policies, measured in turns with this one.
    func runSideBySide(_ mo: ModelOptions, model: LoadedModel, first: Engine, _ cfg: BenchmarkConfig) async throws {
        var engines: [(label: String, engine: Engine)] = [(Self.label(mo.policy ?? mo.policyConfig, adapters: mo.adapters), first)]
        for spec in versus {
            var o = try mo.engineOptions()
            o.policy = spec
            o.policyConfig = nil
            do {
                engines.append((Self.label(spec, adapters: mo.adapters), try Engine(model: model, options: o)))
            } catch {
                throw ValidationError("--versus \(spec): \(error)")
            }
        }
        let quiet = json
        let r = try await SideBySideReport.run(engines, cfg, progress: { line in if !quiet { printError(line) } })
        if json { try printJSON(r); return }
        func pct(_ x: Double) -> String { String(format: "%+.1f%%", (x - 1) * 100) }
        func row(_ name: String, _ q: SideBySideReport.Ratio) -> String {
            let ci = q.median_ci95.map { pct($0[0]) + " … " + pct($0[1]) } ?? "(n < 6)"
            return "| \(name.padding(toLength: 14, withPad: " ", startingAt: 0)) | \(pct(q.median).padding(toLength: 8, withPad: " ", startingAt: 0)) | \(ci.padding(toLength: 17, withPad: " ", startingAt: 0)) | \((pct(q.min) + " … " + pct(q.max)).padding(toLength: 17, withPad: " ", startingAt: 0)) | \(String(format: "%2d of %2d", q.faster, q.per_repetition.count)) | \(String(format: "%.2g", q.sign_test_p).padding(toLength: 7, withPad: " ", startingAt: 0)) |"
        }
        var lines: [String] = []
        lines.append("model     \(model.name)\(mo.adapters.isEmpty ? "" : " + " + mo.adapters.joined(separator: ", "))")
        lines.append("setup     \(cfg.repetitions) repetitions each, taking turns (order reversed every repetition); pp\(cfg.promptTokens), tg\(cfg.genTokens) @ d\(cfg.decodeDepth ?? cfg.promptTokens)\(cfg.batch > 1 ? ", batch \(cfg.batch)" : "")")
        for e in r.entries {
            let rep = e.report
            let b = rep.batch_decode_tok_s.map { String(format: ", decode ×%d %.1f ± %.1f", cfg.batch, $0, rep.batch_decode_tok_s_sd ?? 0) } ?? ""
            lines.append(String(format: "%@  prefill %.1f ± %.1f, decode %.1f ± %.1f tok/s%@; adapters %.1f MiB, KV %.1f MiB",
                                e.label.padding(toLength: 24, withPad: " ", startingAt: 0), rep.prefill_tok_s, rep.prefill_tok_s_sd,
                                rep.decode_tok_s, rep.decode_tok_s_sd, b, Double(rep.memory.adapter_bytes) / 1_048_576,
                                Double(rep.memory.kv_bytes) / 1_048_576))
        }
        for c in r.comparisons {
            lines.append("")
            lines.append("\(c.label) vs \(c.versus) (speed ratio per repetition; + = \(c.label) faster)")
            lines.append("| test           | median   | 95% CI of median  | range             | faster   | sign p  |")
            lines.append("|----------------|----------|-------------------|-------------------|----------|---------|")
            lines.append(row("prefill", c.prefill))
            lines.append(row("decode", c.decode))
            if let b = c.batch_decode { lines.append(row("decode ×\(cfg.batch)", b)) }
        }
        print(lines.joined(separator: "\n"))
    }

    /// A policy's name in the report (a config file by its base name).
    static func label(_ policy: String?, adapters: [String]) -> String {
        guard let p = policy else { return adapters.isEmpty ? "base model" : "static" }
        if p == "base" { return "base (no adapter)" }
        if p.contains("/") || [".json", ".yaml", ".yml"].contains(where: { p.lowercased().hasSuffix($0) }) {
            return ((p as NSString).lastPathComponent as NSString).deletingPathExtension
        }
        return p
    }
}
