import CWKernels
import CWLoRA
import CWScheduler
import CWTokenizers
import CWTransformer
import Foundation
import Logging

/// Settings of an engine.
public struct EngineOptions: Sendable {
    public var precision: Precision = .fast
    public var threads: Int = ProcessInfo.processInfo.activeProcessorCount
    /// Positions a sequence may use (nil = the model's context length).
    public var contextLength: Int? = nil
    /// LoRA adapters to apply, each with a weight (`path[:weight]`).
    public var adapters: [AdapterSpec] = []
    /// A multiplier on every adapter's scale.
    public var adapterScale: Float = 1
    /// Accept adapters that target modules the model lacks (they are skipped, with a log line).
    public var allowPartialAdapter = false
    /// Merge the adapters into (fp32 copies of) the touched base matrices instead of applying
    /// them unmerged.
    public var mergeAdapters = false
    /// How unmerged adapter factors are stored (`--factor-storage`): nil = fp32 under exact
    /// precision, int8 blocks (`.q8`) under fast.
    public var factorStorage: LowRankFactor.Storage? = nil
    /// The encoding of merged copies (`--merge-format`; also the scheduler's merged floor): nil =
    /// fp32 under exact precision, fp16 under fast; `.base` keeps each matrix in the base's own
    /// encoding (a Q4_1 model stays Q4_1: no extra bytes per token, lossy rounding of the delta).
    public var mergeFormat: MergeFormat? = nil
    /// The ChunkWise policy: nil or `static` = the adapters at full rank (plain LoRA), `base` =
    /// no adapter, `merged` = merged adapters, `static:K`, `balanced`, `aggressive`, `quality`
    /// = the scheduler (rank ladder, chunker, per-chunk rank and scale).
    public var policy: String? = nil
    /// A scheduler config file (YAML or JSON) with every knob; overrides the preset's values.
    public var policyConfig: String? = nil
    /// A cached rank ladder (`chunkwise ladder --out`) to skip the SVD at load time.
    public var ladderFile: String? = nil
    /// How the KV cache stores and keeps positions (default `full`: fp32, everything).
    public var kvPolicy: KVPolicy = .full
    /// A cap on KV-cache bytes per sequence: degradable blocks are degraded first, then the
    /// request is refused with an error naming the bytes needed.
    public var kvBudget: Int? = nil
    /// Keep the whole KV blocks of the last request's prompt for the next request that starts the
    /// same way (questions on one paragraph, a chat sent again with one more turn): it takes them
    /// and computes only the rest, with the same logits bit for bit (`KVCache.adoptPrefix`). Not
    /// with a ChunkWise scheduler, whose ranks depend on the whole prefix.
    public var promptCache = true

    public init(precision: Precision = .fast, threads: Int = ProcessInfo.processInfo.activeProcessorCount, contextLength: Int? = nil,
                adapters: [AdapterSpec] = [], adapterScale: Float = 1, allowPartialAdapter: Bool = false, mergeAdapters: Bool = false,
                policy: String? = nil, policyConfig: String? = nil, ladderFile: String? = nil) {
        self.policy = policy
        self.policyConfig = policyConfig
        self.ladderFile = ladderFile
        self.precision = precision
        self.threads = threads
        self.contextLength = contextLength
        self.adapters = adapters
        self.adapterScale = adapterScale
        self.allowPartialAdapter = allowPartialAdapter
        self.mergeAdapters = mergeAdapters
    }
}

/// Runs a loaded model. The actor owns the mutable state (KV cache, worker pool); requests are
/// served one at a time, and a cancelled task stops between tokens.
public actor Engine {
    public let loaded: LoadedModel
    public let options: EngineOptions
    let pool: ThreadPool
    let logger = Logger(label: "chunkwise.engine")
    /// What is added to the base projections (LoRA adapters), if anything.
    let delta: ProjectionDelta?
    /// The ChunkWise scheduler, when the policy is adaptive or a ladder truncation.
    let scheduler: ChunkWiseDelta?
    /// The last request's prompt, cut back to its whole KV blocks (`EngineOptions.promptCache`).
    private var lastPrompt: (tokens: [Int], cache: KVCache)? = nil
    /// Names of the active adapters, for reports.
    public nonisolated let adapterNames: [String]
    /// Bytes held by the active adapters.
    public nonisolated let adapterByteCount: Int

    /// Binds `options.adapters` (if any) to the model: unmerged as a `LoRAStack`, or merged into
    /// copies of the touched matrices (fp32 under exact precision, fp16 under fast).
    public init(model: LoadedModel, options: EngineOptions = EngineOptions()) throws {
        self.options = options
        self.pool = ThreadPool(threads: options.threads)
        self.adapterNames = options.policy == "base" ? [] : options.adapters.map { spec in
            let name = (spec.path as NSString).lastPathComponent
            return spec.weight == 1 ? name : "\(name):\(spec.weight)"
        }
        let policy = options.policy ?? "static"
        if options.adapters.isEmpty || policy == "base" {
            if options.adapters.isEmpty && !["static", "base"].contains(policy) {
                throw EngineError.invalidParameter("policy \(policy) needs an adapter (--adapter)")
            }
            self.loaded = model
            self.delta = nil
            self.scheduler = nil
            self.adapterByteCount = 0
            return
        }
        let bindings = try options.adapters.map { try $0.load() }
        // Adapter factors follow the engine's precision: fp32 for exact (golden parity), fp16 for
        // fast (half the bytes each token reads).
        let factorStorage: LowRankFactor.Storage = options.factorStorage ?? (options.precision == .exact ? .f32 : .q8)
        if policy != "static" && policy != "merged" || options.policyConfig != nil {
            guard bindings.count == 1, let only = bindings.first else {
                throw EngineError.invalidParameter("policy \(policy) schedules one adapter; \(bindings.count) were given")
            }
            guard only.weight == 1, options.adapterScale == 1 else {
                throw EngineError.invalidParameter("policy \(policy) sets the adapter scale per chunk; drop the :WEIGHT and --adapter-scale")
            }
            let s = try ChunkWiseDelta(model: model.model, adapter: only.adapter, policy: options.policy,
                                       configFile: options.policyConfig, ladderFile: options.ladderFile, storage: factorStorage,
                                       mergeFormat: options.mergeFormat)
            // An explicit --kv-policy holds for every chunk; otherwise the policy's per-tier KV applies.
            s.managesKVPolicy = options.kvPolicy == .full
            self.loaded = LoadedModel(model: s.forwardModel, tokenizer: model.tokenizer, name: model.name, chatTemplate: model.chatTemplate)
            self.delta = s
            self.scheduler = s
            self.adapterByteCount = s.adapterByteCount
            return
        }
        self.scheduler = nil
        if options.mergeAdapters || policy == "merged" {
            let merged = try LoRAStack.merged(model: model.model, adapters: bindings, scale: options.adapterScale,
                                              allowPartial: options.allowPartialAdapter,
                                              format: options.mergeFormat ?? MergeFormat(factorStorage))
            self.loaded = LoadedModel(model: merged.model, tokenizer: model.tokenizer, name: model.name, chatTemplate: model.chatTemplate)
            self.delta = nil
            self.adapterByteCount = merged.extraBytes
        } else {
            let stack = try LoRAStack(model: model.model, adapters: bindings, scale: options.adapterScale,
                                      allowPartial: options.allowPartialAdapter, storage: factorStorage)
            self.loaded = model
            self.delta = stack
            self.adapterByteCount = stack.boundBytes
        }
    }

    /// Loads a model from a path (GGUF file, HF folder, llama2.c .bin) and its adapters.
    public init(modelPath: String, tokenizerPath: String? = nil, options: EngineOptions = EngineOptions()) throws {
        try self.init(model: try ModelLoader.load(path: modelPath, tokenizerPath: tokenizerPath), options: options)
    }

    public nonisolated var tokenizer: any Tokenizer { loaded.tokenizer }
    public nonisolated var model: LlamaModel { loaded.model }

    /// The context limit of this engine's sequences.
    public nonisolated var contextLength: Int { min(options.contextLength ?? loaded.model.config.maxContext, loaded.model.config.maxContext) }

    /// Token ids of a prompt.
    public nonisolated func tokenize(_ text: String, addSpecialTokens: Bool = true, parseSpecial: Bool = true) -> [Int] {
        loaded.tokenizer.encode(text, addSpecialTokens: addSpecialTokens, parseSpecial: parseSpecial)
    }

    func promptTokens(_ p: GenerationRequest.Prompt, addSpecial: Bool, parseSpecial: Bool) throws -> [Int] {
        let ids: [Int]
        switch p {
        case .text(let s): ids = tokenize(s, addSpecialTokens: addSpecial, parseSpecial: parseSpecial)
        case .tokens(let t): ids = t
        }
        guard !ids.isEmpty else { throw InferenceError.emptyInput }
        guard ids.count <= contextLength else { throw InferenceError.contextOverflow(needed: ids.count, limit: contextLength) }
        return ids
    }

    /// Logits of every requested position for a token sequence, from a fresh context.
    public func logits(tokens: [Int], mode: LogitsMode = .last, precision: Precision? = nil) throws -> [Float] {
        guard tokens.count <= contextLength else { throw InferenceError.contextOverflow(needed: tokens.count, limit: contextLength) }
        let cache = makeCache(initialCapacity: tokens.count)
        beginSequence()
        return try step(tokens, cache: cache, options: ForwardOptions(precision: precision ?? options.precision, pool: pool, logits: mode))
    }

    /// A KV cache with this engine's policy and budget.
    public func makeCache(initialCapacity: Int) -> KVCache {
        let cache = loaded.model.makeCache(maxContext: contextLength, initialCapacity: initialCapacity)
        if options.kvPolicy != .full { cache.setPolicy(options.kvPolicy, forPositionsFrom: 0) }
        cache.kvBudget = options.kvBudget
        return cache
    }

    /// One forward pass of the engine's model, through the scheduler when there is one (it plans
    /// the positions before the pass and reads the logits after it).
    func step(_ tokens: [Int], cache: KVCache, options fwd: ForwardOptions) throws -> [Float] {
        if let s = scheduler { return try s.forward(tokens, cache: cache, options: fwd) }
        return try loaded.model.forward(tokens, cache: cache, options: fwd, delta: delta)
    }

    /// What the scheduler decided for the last sequence (nil without a scheduler).
    public func schedulerStatistics() -> SchedulerStatistics? { scheduler?.statistics }

    /// Rank decisions summed over every sequence this engine has run (nil without a scheduler).
    public func cumulativeSchedulerStatistics() -> (averageRank: Double, tokensPerRank: [Int: Int])? {
        guard let s = scheduler else { return nil }
        var tokens = finishedTokensPerRank
        var rankSum = finishedRankSum, count = finishedTokens
        let last = s.statistics
        for (r, n) in last.tokensPerRank { tokens[r, default: 0] += n }
        rankSum += last.averageRank * Double(last.tokens)
        count += last.tokens
        return (count > 0 ? rankSum / Double(count) : 0, tokens)
    }

    private var finishedTokensPerRank: [Int: Int] = [:]
    private var finishedRankSum = 0.0
    private var finishedTokens = 0

    /// Starts a new sequence in the scheduler, folding the previous one into the totals.
    func beginSequence() {
        guard let s = scheduler else { return }
        let last = s.statistics
        for (r, n) in last.tokensPerRank { finishedTokensPerRank[r, default: 0] += n }
        finishedRankSum += last.averageRank * Double(last.tokens)
        finishedTokens += last.tokens
        s.beginSequence()
    }

    /// The scheduler's decisions for the last sequence, for `explain`.
    public func withScheduler<T>(_ body: (ChunkWiseDelta?) throws -> T) rethrows -> T { try body(scheduler) }

    /// Streams a generation. Cancelling the consuming task stops it between tokens.
    public nonisolated func generate(_ request: GenerationRequest) -> AsyncThrowingStream<GenerationEvent, Error> {
        AsyncThrowingStream { continuation in
            let task = Task {
                do {
                    try await self.run(request) { continuation.yield($0) }
                    continuation.finish()
                } catch {
                    continuation.finish(throwing: error)
                }
            }
            continuation.onTermination = { _ in task.cancel() }
        }
    }

    /// Generates to the end and returns the whole result.
    public func complete(_ request: GenerationRequest) throws -> GenerationResult {
        var result: GenerationResult? = nil
        try run(request) { event in
            if case .finished(let text, let tokens, let stats) = event { result = GenerationResult(text: text, tokens: tokens, stats: stats) }
        }
        guard let result else { throw CancellationError() }
        return result
    }

    func run(_ request: GenerationRequest, emit: (GenerationEvent) -> Void) throws {
        try request.sampling.validate()
        guard request.maxTokens >= 0 else { throw EngineError.invalidParameter("max tokens must be ≥ 0, got \(request.maxTokens)") }
        let tok = loaded.tokenizer
        let prompt = try promptTokens(request.prompt, addSpecial: request.addSpecialTokens, parseSpecial: request.parseSpecialTokens)
        let limit = contextLength
        let cache = makeCache(initialCapacity: min(limit, prompt.count + request.maxTokens))
        let reusing = options.promptCache && scheduler == nil
        var reused = 0
        if reusing, let last = lastPrompt {
            reused = cache.adoptPrefix(from: last.cache, tokens: prompt, limit: prompt.count - KVCache.minTokensAfterAdoptedPrefix)
        }
        var sampler = Sampler(request.sampling)
        var stats = GenerationStats()
        stats.promptTokens = prompt.count
        stats.cachedPromptTokens = reused
        var history = prompt
        var generated: [Int] = []
        var decoder = StreamingDecoder(tokenizer: tok, skipSpecialTokens: true)
        var stop = StopMatcher(stops: request.stopStrings)
        var fullText = ""
        let eos = Set(tok.eosTokenIDs)
        let fwd = ForwardOptions(precision: options.precision, pool: pool, logits: .last)

        let t0 = Date()
        beginSequence()
        var logits = try step(Array(prompt[reused...]), cache: cache, options: fwd)
        stats.prefillSeconds = Date().timeIntervalSince(t0)
        let tDecode = Date()
        var reason = FinishReason.length
        while generated.count < request.maxTokens {
            if Task.isCancelled { reason = .cancelled; break }
            let next = sampler.sample(logits, history: history)
            if generated.isEmpty { stats.timeToFirstTokenSeconds = Date().timeIntervalSince(t0) }
            if request.stopAtEOS && eos.contains(next) { reason = .eos; break }
            generated.append(next)
            history.append(next)
            let piece = decoder.append(next)
            let (release, stopped) = stop.append(piece)
            fullText += release
            emit(.token(id: next, text: release))
            if stopped { reason = .stop; break }
            if generated.count == request.maxTokens { break }
            if cache.count + 1 > limit { reason = .length; break }
            logits = try step([next], cache: cache, options: fwd)
        }
        if reason != .stop {
            let (release, stopped) = stop.append(decoder.flush())
            let tail = stopped ? release : release + stop.flush()
            if stopped { reason = .stop }
            fullText += tail
            if !tail.isEmpty { emit(.text(tail)) }
        }
        stats.decodeSeconds = Date().timeIntervalSince(tDecode)
        stats.generatedTokens = generated.count
        stats.finishReason = reason
        stats.memory = memoryBreakdown(cache: cache, tokens: prompt.count)
        emit(.finished(text: fullText, tokens: generated, stats: stats))
        // This prompt's whole blocks serve the next request, unless the ones kept already cover it.
        let whole = min(prompt.count, cache.count) / cache.blockSize * cache.blockSize
        if reusing, whole > 0, !(lastPrompt.map { $0.tokens.count >= whole && $0.tokens.starts(with: prompt.prefix(whole)) } ?? false) {
            cache.truncate(to: whole)
            lastPrompt = (Array(prompt.prefix(whole)), cache)
        }
    }
}
