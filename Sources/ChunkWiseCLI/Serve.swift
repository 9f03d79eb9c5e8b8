import ArgumentParser
import ChunkWise
import CWServer
import Foundation
import Logging

/// `chunkwise serve`: an OpenAI-compatible HTTP server with per-request adapters, ChunkWise
/// policies, streaming and continuous batching.
struct Serve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Serve a model over an OpenAI-compatible HTTP API (completions, chat, streaming, LoRA adapters, metrics)."
    )

    @Option(name: .long, help: "A GGUF file, a HuggingFace model folder or a llama2.c .bin checkpoint.")
    var model: String
    @Option(name: .long, help: "Tokenizer to use instead of the model's own.")
    var tokenizer: String?
    @Option(name: .customLong("adapter"), help: "A LoRA adapter served under a name: NAME=PATH. Repeatable.")
    var adapters: [String] = []
    @Option(name: .customLong("adapter-dir"), help: "Directory from which POST /v1/load_lora_adapter may load adapters (off when not given).")
    var adapterDir: String?
    @Option(name: .long, help: "Address to bind (loopback by default).")
    var host = "127.0.0.1"
    @Option(name: .long, help: "Port to listen on.")
    var port = 8080
    @Option(name: .customLong("api-key"), help: "Require 'Authorization: Bearer KEY' on /v1/* (also read from CHUNKWISE_API_KEY).")
    var apiKey: String?
    @Option(name: .customLong("max-concurrent"), help: "Sequences decoded together (continuous batching slots).")
    var maxConcurrent = 8
    @Option(name: .customLong("max-queue"), help: "Requests that may wait for a slot; beyond this the server answers 429 at once.")
    var maxQueue = 64
    @Option(name: .customLong("kv-budget"), help: "Bytes of KV cache for all running sequences (default 1 GiB).")
    var kvBudget: Int?
    @Option(name: .customLong("prefix-cache"),
            help: "Bytes of finished prompts' KV blocks kept for later requests that start the same way (a shared system prompt, a resent chat); part of the KV budget; 0 turns it off.")
    var prefixCache = 128 << 20
    @Option(name: .customLong("max-tokens-limit"), help: "Largest max_tokens a request may ask for.")
    var maxTokensLimit = 2048
    @Option(name: .customLong("max-body-bytes"), help: "Largest request body in bytes (413 beyond).")
    var maxBodyBytes = 1 << 20
    @Option(name: .long, help: "exact: fp32 activations; fast: 16-bit activations with integer dot products (decode).")
    var precision: PrecisionArgument = .fast
    @Option(name: .long, help: "Worker threads (default: the number of cores).")
    var threads = ProcessInfo.processInfo.activeProcessorCount
    @Option(name: .long, help: "Context length in tokens (default: the model's).")
    var context: Int?
    @Option(name: .customLong("served-model-name"), help: "The base model's id in the API (default: the model file's name).")
    var servedModelName: String?
    @Option(name: .customLong("log-level"), help: "trace, debug, info, notice, warning, error, critical.")
    var logLevel = "info"

    func validate() throws {
        if threads < 1 { throw ValidationError("--threads must be at least 1") }
        if maxConcurrent < 1 { throw ValidationError("--max-concurrent must be at least 1") }
        if maxQueue < 0 { throw ValidationError("--max-queue must be ≥ 0") }
        if maxTokensLimit < 1 { throw ValidationError("--max-tokens-limit must be at least 1") }
        if let kvBudget, kvBudget < 1 { throw ValidationError("--kv-budget must be positive") }
        if prefixCache < 0 { throw ValidationError("--prefix-cache must be ≥ 0 (0 turns it off)") }
        if !(1...65535).contains(port) && port != 0 { throw ValidationError("--port must be in 0...65535") }
        if Logger.Level(rawValue: logLevel) == nil { throw ValidationError("--log-level: unknown level '\(logLevel)'") }
        for a in adapters { _ = try Self.parseAdapter(a) }
        if let adapterDir {
            var isDir: ObjCBool = false
            guard FileManager.default.fileExists(atPath: adapterDir, isDirectory: &isDir), isDir.boolValue else {
                throw ValidationError("--adapter-dir \(adapterDir): not a directory")
            }
        }
    }

    static func parseAdapter(_ s: String) throws -> (name: String, path: String) {
        guard let eq = s.firstIndex(of: "="), eq != s.startIndex, s.index(after: eq) != s.endIndex else {
            throw ValidationError("--adapter expects NAME=PATH, got '\(s)'")
        }
        return (String(s[..<eq]), String(s[s.index(after: eq)...]))
    }

    func run() async throws {
        let level = Logger.Level(rawValue: logLevel) ?? .info
        LoggingSystem.bootstrap { label in
            var h = StreamLogHandler.standardError(label: label)
            h.logLevel = level
            return h
        }
        let logger = Logger(label: "chunkwise.server")
        var config = ServerConfiguration()
        config.host = host
        config.port = port
        config.apiKey = apiKey ?? ProcessInfo.processInfo.environment["CHUNKWISE_API_KEY"]
        config.maxConcurrent = maxConcurrent
        config.maxQueue = maxQueue
        config.kvBudgetBytes = kvBudget
        config.prefixCacheBytes = prefixCache
        config.maxTokensLimit = maxTokensLimit
        config.maxBodyBytes = maxBodyBytes
        config.adapterDir = adapterDir
        config.adapters = try adapters.map(Self.parseAdapter)
        config.precision = precision.value
        config.threads = threads
        config.contextLength = context
        config.servedModelName = servedModelName
        logger.info("loading model", metadata: ["path": "\(model)"])
        let loaded = try ModelLoader.load(path: model, tokenizerPath: tokenizer)
        let state: ServerState
        do {
            state = try await ServerState(loaded: loaded, config: config)
        } catch let e as APIError {
            throw ValidationError(e.message)
        }
        logger.info("serving", metadata: ["model": "\(state.modelID)", "address": "\(host):\(port)", "adapters": "\(config.adapters.map(\.name))",
                                            "max_concurrent": "\(maxConcurrent)", "max_queue": "\(maxQueue)",
                                            "chat_template": "\(state.chatTemplate.map { "\($0)" } ?? "none")"])
        try await runServer(state: state, logger: logger)
        logger.info("stopped")
    }
}
