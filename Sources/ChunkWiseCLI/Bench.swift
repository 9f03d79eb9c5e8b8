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
    @Flag(help: "Print one JSON object.")
    var json = false

    func validate() throws {
        if promptTokens < 1 || genTokens < 1 || repetitions < 1 {
            throw ValidationError("--prompt-tokens, --gen-tokens and --repetitions must each be at least 1")
        }
        if let depth, depth < 0 { throw ValidationError("--depth must be ≥ 0") }
        if batch < 1 || batch > 256 { throw ValidationError("--batch must be between 1 and 256") }
    }

    func run() async throws {
        var mo = modelOptions
        if mo.context == nil { mo.context = max(promptTokens, depth ?? promptTokens) + genTokens }
        let engine = try mo.makeEngine()
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
}
