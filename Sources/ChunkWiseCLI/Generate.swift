import ArgumentParser
import ChunkWise
import Foundation

struct Generate: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Generate text from a prompt, streaming it to stdout.")

    @OptionGroup var modelOptions: ModelOptions
    @OptionGroup var promptOptions: PromptOptions

    @Option(name: .customLong("max-tokens"), help: "Most tokens to generate.")
    var maxTokens: Int = 128
    @Option(help: "Sampling temperature (0 = greedy).")
    var temperature: Float = 0
    @Option(name: .customLong("top-k"), help: "Sample among the k most likely tokens (0 = off).")
    var topK: Int = 0
    @Option(name: .customLong("top-p"), help: "Nucleus sampling threshold (1 = off).")
    var topP: Float = 1
    @Option(name: .customLong("min-p"), help: "Drop tokens below min-p × the top probability (0 = off).")
    var minP: Float = 0
    @Option(name: .customLong("repeat-penalty"), help: "Repetition penalty (1 = off).")
    var repeatPenalty: Float = 1
    @Option(help: "Random seed.")
    var seed: UInt64 = 0
    @Option(name: .customLong("stop"), help: "Stop when this text appears (repeatable).")
    var stop: [String] = []
    @Flag(name: .customLong("ignore-eos"), help: "Keep generating past end-of-sequence tokens.")
    var ignoreEOS = false
    @Flag(name: .customLong("no-special"), help: "Treat special-token text in the prompt as plain text.")
    var noSpecial = false
    @Flag(help: "Print one JSON object with the text and the statistics instead of streaming.")
    var json = false

    func validate() throws {
        if maxTokens < 0 { throw ValidationError("--max-tokens must be ≥ 0") }
    }

    func run() async throws {
        let prompt = try promptOptions.text()
        let engine = try modelOptions.makeEngine()
        var request = GenerationRequest(prompt: .text(prompt), maxTokens: maxTokens,
                                        sampling: SamplingParameters(temperature: temperature, topK: topK, topP: topP, minP: minP,
                                                                     repetitionPenalty: repeatPenalty, seed: seed),
                                        stopStrings: stop, stopAtEOS: !ignoreEOS)
        request.parseSpecialTokens = !noSpecial
        try request.sampling.validate()
        let out = FileHandle.standardOutput
        for try await event in engine.generate(request) {
            switch event {
            case .token(_, let text), .text(let text):
                if !json && !text.isEmpty { out.write(Data(text.utf8)) }
            case .finished(let text, let tokens, let stats):
                if json {
                    try printJSON(GenerateOutput(text: text, tokens: tokens, stats: .init(stats)))
                } else {
                    out.write(Data("\n".utf8))
                    printError(String(format: "[prompt %d tokens, %.1f tok/s | generated %d tokens, %.1f tok/s | TTFT %.0f ms | %@]",
                                      stats.promptTokens, stats.prefillTokensPerSecond, stats.generatedTokens,
                                      stats.decodeTokensPerSecond, stats.timeToFirstTokenSeconds * 1000, stats.finishReason.rawValue))
                }
            }
        }
    }
}

struct StatsOutput: Encodable {
    var prompt_tokens: Int
    var generated_tokens: Int
    var prefill_tok_s: Double
    var decode_tok_s: Double
    var ttft_ms: Double
    var prefill_seconds: Double
    var decode_seconds: Double
    var finish_reason: String
    var memory: MemoryBreakdown?
    var peak_rss_bytes: Int

    init(_ s: GenerationStats) {
        memory = s.memory
        peak_rss_bytes = ProcessMemory.peakRSS()
        prompt_tokens = s.promptTokens
        generated_tokens = s.generatedTokens
        prefill_tok_s = s.prefillTokensPerSecond
        decode_tok_s = s.decodeTokensPerSecond
        ttft_ms = s.timeToFirstTokenSeconds * 1000
        prefill_seconds = s.prefillSeconds
        decode_seconds = s.decodeSeconds
        finish_reason = s.finishReason.rawValue
    }
}

struct GenerateOutput: Encodable {
    var text: String
    var tokens: [Int]
    var stats: StatsOutput
}
