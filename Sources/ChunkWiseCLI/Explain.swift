import ArgumentParser
import ChunkWise
import CWLoRA
import CWScheduler
import Foundation

/// `chunkwise explain`: runs a prompt through the ChunkWise scheduler and writes an HTML page (text
/// coloured by tier, difficulty curve, tokens per tier) and optionally the decisions as JSON.
struct Explain: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show which rank the ChunkWise scheduler gives each chunk of a prompt (HTML report, optional JSON).")

    @Option(name: .long, help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var model: String
    @Option(name: .long, help: "Tokenizer to use instead of the model's own.")
    var tokenizer: String?
    @Option(name: .long, help: "The adapter (PEFT folder, GGUF LoRA or MLX folder).")
    var adapter: String
    @Option(name: .long, help: "A rank ladder written by `chunkwise ladder --out` (skips the SVD).")
    var ladder: String?
    @Option(name: .long, help: "The prompt text.")
    var prompt: String?
    @Option(name: .long, help: "Read the prompt from a UTF-8 file.")
    var file: String?
    @Option(name: .long, help: "Policy: static, static:K, base, balanced, aggressive, quality.")
    var policy: String = "balanced"
    @Option(name: .long, help: "A YAML or JSON scheduler config (overrides --policy).")
    var config: String?
    @Option(name: .long, help: "Also generate this many tokens greedily (decode decisions).")
    var generate: Int = 0
    @Option(name: .long, help: "Where to write the HTML report.")
    var out: String = "report.html"
    @Flag(help: "Also print the decisions as JSON on stdout.")
    var json = false
    @Option(name: .long, help: "Worker threads.")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func validate() throws {
        if (prompt == nil) == (file == nil) { throw ValidationError("give exactly one of --prompt TEXT or --file PATH") }
        if generate < 0 { throw ValidationError("--generate must be ≥ 0") }
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
    }

    func run() async throws {
        let loaded = try ModelLoader.load(path: model, tokenizerPath: tokenizer)
        let lora = try LoRAAdapter.load(path: adapter)
        let text = try file.map { try PromptInput.readUTF8File($0) } ?? prompt ?? ""
        var ids = loaded.tokenizer.encode(text, addSpecialTokens: true, parseSpecial: false)
        guard !ids.isEmpty else { throw ValidationError("the prompt has no tokens") }
        let delta = try ChunkWiseDelta(model: loaded.model, adapter: lora, policy: config == nil ? policy : nil, configFile: config, ladderFile: ladder)
        let pool = ThreadPool(threads: threads)
        let m = delta.forwardModel
        let cache = m.makeCache()
        delta.beginSequence()
        var logits = try delta.forward(ids, cache: cache, options: ForwardOptions(precision: .exact, pool: pool))
        for _ in 0..<generate {
            var best = 0
            for i in logits.indices where logits[i] > logits[best] { best = i }
            ids.append(best)
            logits = try delta.forward([best], cache: cache, options: ForwardOptions(precision: .exact, pool: pool))
        }
        let pieces = ids.map { loaded.tokenizer.decode([$0], skipSpecialTokens: false) }
        let report = ExplainReport(policy: config ?? policy, delta: delta, ids: ids, pieces: pieces)
        try report.html().write(toFile: out, atomically: true, encoding: .utf8)
        let wrote = "wrote \(out): \(ids.count) tokens, \(report.chunks.count) chunks, average rank \(String(format: "%.2f", report.averageRank)) of \(report.maxRank)"
        if json {
            // stdout is the JSON alone; the page was written all the same, which stderr says
            FileHandle.standardOutput.write(try report.json())
            FileHandle.standardOutput.write(Data("\n".utf8))
            FileHandle.standardError.write(Data((wrote + "\n").utf8))
        } else {
            print(wrote)
        }
    }
}
