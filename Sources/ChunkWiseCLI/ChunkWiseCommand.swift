import ArgumentParser
import ChunkWise
import CWKernels
import CWLoRA
import Foundation

@main
struct ChunkWiseCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "chunkwise",
        abstract: "Run LoRA-adapted language models on the CPU, with the LoRA rank chosen per chunk of tokens.",
        subcommands: [Generate.self, Tokenize.self, Logits.self, Inspect.self, Bench.self, Merge.self, Ladder.self, Explain.self, Eval.self, Report.self, Serve.self]
    )
}

/// Options shared by every command that runs a model.
struct ModelOptions: ParsableArguments {
    @Option(name: .long, help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var model: String

    @Option(name: .long, help: "Tokenizer to use instead of the model's own (tokenizer.json, llama2.c tok*.bin or GGUF).")
    var tokenizer: String?

    @Option(name: .long, help: "exact: fp32 activations; fast: 16-bit activations with integer dot products (decode).")
    var precision: PrecisionArgument = .fast

    @Option(name: .long, help: "Worker threads (default: the number of cores).")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    @Option(name: .long, help: "Context length in tokens (default: the model's).")
    var context: Int?

    @Option(name: .customLong("adapter"), help: "A LoRA adapter (PEFT folder, GGUF LoRA or MLX folder), optionally with a weight: PATH[:WEIGHT]. Repeatable.")
    var adapters: [String] = []

    @Option(name: .customLong("adapter-scale"), help: "A multiplier on every adapter's scale.")
    var adapterScale: Float = 1

    @Flag(name: .customLong("allow-partial-adapter"), help: "Accept an adapter some of whose modules are not in the model.")
    var allowPartialAdapter = false

    @Flag(name: .customLong("merge-adapters"), help: "Merge adapters into copies of the touched weights (fp32 with --precision exact, fp16 with fast) instead of applying them unmerged.")
    var mergeAdapters = false

    @Option(name: .customLong("factor-storage"), help: "How unmerged adapter factors are stored: f32, f16, or q8 (int8 with a scale per 32 elements). Default: f32 with --precision exact, q8 with fast.")
    var factorStorage: FactorStorageArgument?

    @Option(name: .customLong("merge-format"), help: "Encoding of merged copies (--merge-adapters, --policy merged, a merged floor): f32, f16, or base = the base matrix's own encoding (a Q4_1 model stays Q4_1 and reads no extra bytes per token; the delta is rounded stochastically onto each block's grid, which costs some of its quality). Default: f32 with --precision exact, f16 with fast.")
    var mergeFormat: MergeFormatArgument?

    @Option(name: .long, help: "ChunkWise policy: static (plain LoRA), static:K, balanced, aggressive, quality, base, merged.")
    var policy: String?

    @Option(name: .customLong("policy-config"), help: "A scheduler config file (YAML or JSON) with every knob.")
    var policyConfig: String?

    @Option(name: .long, help: "A cached rank ladder written by `chunkwise ladder --out`.")
    var ladder: String?

    @Option(name: .customLong("kv-policy"), help: "KV cache: full, half, int8, window:SINKS:RECENT, h2o:BUDGET:RECENT, dedupe:COSINE (retention ones may end in :half or :int8).")
    var kvPolicy: String = "full"

    @Option(name: .customLong("kv-budget"), help: "Most KV-cache bytes per sequence (easy blocks are degraded first; beyond that the request is refused).")
    var kvBudget: Int?

    @Flag(name: .customLong("no-prompt-cache"),
          help: "Compute every prompt in full (by default a request that starts like the one before takes that prompt's whole KV blocks; the output is the same).")
    var noPromptCache = false

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
        if let context, context < 1 { throw ValidationError("--context must be at least 1") }
        for a in adapters { _ = try AdapterSpec.parse(a) }
        if KVPolicy(parsing: kvPolicy) == nil { throw ValidationError("--kv-policy: unknown policy '\(kvPolicy)'") }
        if let kvBudget, kvBudget < 1 { throw ValidationError("--kv-budget must be positive") }
    }

    func engineOptions() throws -> EngineOptions {
        var o = try baseEngineOptions()
        o.kvPolicy = KVPolicy(parsing: kvPolicy) ?? .full
        o.kvBudget = kvBudget
        o.promptCache = !noPromptCache
        return o
    }

    func baseEngineOptions() throws -> EngineOptions {
        var o = EngineOptions(precision: precision.value, threads: threads, contextLength: context,
                              adapters: try adapters.map(AdapterSpec.parse), adapterScale: adapterScale,
                              allowPartialAdapter: allowPartialAdapter, mergeAdapters: mergeAdapters,
                              policy: policy, policyConfig: policyConfig, ladderFile: ladder)
        o.mergeFormat = mergeFormat?.value
        o.factorStorage = factorStorage?.value
        return o
    }

    func makeEngine() throws -> Engine {
        try Engine(modelPath: model, tokenizerPath: tokenizer, options: engineOptions())
    }
}

enum FactorStorageArgument: String, ExpressibleByArgument, CaseIterable {
    case f32, f16, q8
    var value: LowRankFactor.Storage {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .q8: return .q8
        }
    }
}

enum MergeFormatArgument: String, ExpressibleByArgument, CaseIterable {
    case f32, f16, base
    var value: MergeFormat {
        switch self {
        case .f32: return .f32
        case .f16: return .f16
        case .base: return .base
        }
    }
}

enum PrecisionArgument: String, ExpressibleByArgument, CaseIterable {
    case exact, fast
    var value: Precision { self == .exact ? .exact : .fast }
}

/// A prompt given inline or in a file (strict UTF-8).
struct PromptOptions: ParsableArguments {
    @Option(name: .long, help: "The prompt text.")
    var prompt: String?

    @Option(name: .customLong("prompt-file"), help: "Read the prompt from a UTF-8 file.")
    var promptFile: String?

    func validate() throws {
        if prompt == nil && promptFile == nil { throw ValidationError("give --prompt TEXT or --prompt-file PATH") }
        if prompt != nil && promptFile != nil { throw ValidationError("give either --prompt or --prompt-file, not both") }
    }

    func text() throws -> String {
        if let promptFile { return try PromptInput.readUTF8File(promptFile) }
        return prompt ?? ""
    }
}

/// Prints a JSON value on one line.
func printJSON<T: Encodable>(_ value: T) throws {
    let enc = JSONEncoder()
    enc.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    let data = try enc.encode(value)
    FileHandle.standardOutput.write(data)
    FileHandle.standardOutput.write(Data("\n".utf8))
}

func printError(_ s: String) {
    FileHandle.standardError.write(Data((s + "\n").utf8))
}

