import ChunkWise
import CWScheduler
import Foundation
import Metrics
import Logging

/// What one sequence asks of the batch scheduler (already validated and tokenized).
public struct SequenceRequest: Sendable {
    public var prompt: [Int]
    public var maxTokens: Int
    public var sampling: SamplingParameters
    public var stopStrings: [String]
    public var stopAtEOS: Bool
    /// The adapter binding (nil = base model). Held for the whole life of the sequence.
    public var delta: BoundDelta?
    /// Prompt-cache entries are shared only between requests with the same salt (vLLM's `cache_salt`).
    public var cacheSalt: String?
    /// false: the prompt neither takes cached blocks nor leaves its own (llama.cpp's `cache_prompt`).
    public var usesPromptCache: Bool

    public init(prompt: [Int], maxTokens: Int, sampling: SamplingParameters = .greedy, stopStrings: [String] = [],
                stopAtEOS: Bool = true, delta: BoundDelta? = nil, cacheSalt: String? = nil, usesPromptCache: Bool = true) {
        self.prompt = prompt
        self.maxTokens = maxTokens
        self.sampling = sampling
        self.stopStrings = stopStrings
        self.stopAtEOS = stopAtEOS
        self.delta = delta
        self.cacheSalt = cacheSalt
        self.usesPromptCache = usesPromptCache
    }
}

/// Events of one sequence, as the engine's `GenerationEvent`, plus failure.
public enum SequenceEvent: Sendable {
    case token(id: Int, text: String)
    case text(String)
    case finished(text: String, tokens: [Int], stats: GenerationStats)
    case failed(APIError)
}

/// Limits of the batch scheduler.
public struct SchedulerLimits: Sendable {
    /// Sequences decoded together in one step.
    public var maxRunning: Int = 8
    /// Requests waiting for a slot; beyond this a request is refused at once (429).
    public var maxWaiting: Int = 64
    /// Bytes of KV cache all running sequences may hold (each reserves prompt + max_tokens positions).
    public var kvBudgetBytes: Int = 1 << 30
    /// Prompt tokens pushed through per step (across all prefilling sequences); bounds step time.
    public var prefillTokensPerStep: Int = 256
    /// Bytes of finished prompts' KV blocks kept for reuse by later requests that start the same
    /// way (`PrefixCache`); part of `kvBudgetBytes` (entries are evicted before a request would
    /// wait for budget). 0 turns prompt caching off.
    public var prefixCacheBytes: Int = 128 << 20

    public init(maxRunning: Int = 8, maxWaiting: Int = 64, kvBudgetBytes: Int = 1 << 30, prefillTokensPerStep: Int = 256,
                prefixCacheBytes: Int = 128 << 20) {
        self.maxRunning = maxRunning
        self.maxWaiting = maxWaiting
        self.kvBudgetBytes = kvBudgetBytes
        self.prefillTokensPerStep = prefillTokensPerStep
        self.prefixCacheBytes = prefixCacheBytes
    }
}

/// Runs forward passes on a dedicated serial queue, so the long CPU-bound pass does not hold a
/// thread of Swift's cooperative pool (HTTP handlers keep running while the model steps).
final class ForwardRunner: @unchecked Sendable {
    let model: LlamaModel
    let pool: ThreadPool
    let precision: Precision
    private let queue = DispatchQueue(label: "chunkwise.server.forward")

    init(model: LlamaModel, threads: Int, precision: Precision) {
        self.model = model
        self.pool = ThreadPool(threads: threads)
        self.precision = precision
    }

    /// The KV caches inside are touched only by this pass while it runs (the scheduler does not
    /// use them until it returns).
    struct Items: @unchecked Sendable { let items: [LlamaModel.BatchItem] }

    /// One forward pass over the step's sequences, then their sampling on the same thread and pool,
    /// while the workers are still awake; then the pool rests until the next step (its workers
    /// would otherwise spin on a core the scheduler and the HTTP handlers need) — before the actor
    /// resumes, so that the rest cannot fall into the next step's jobs. Returns the logits and the
    /// forward pass's own duration (without the sampling).
    func forward(_ box: Items, sampling work: SamplingWork) async throws -> (logits: [[Float]], forward: Duration) {
        return try await withCheckedThrowingContinuation { (c: CheckedContinuation<([[Float]], Duration), Error>) in
            queue.async {
                let result = Result { () throws -> ([[Float]], Duration) in
                    let start = ContinuousClock.now
                    let logits = try self.model.forward(batch: box.items, options: ForwardOptions(precision: self.precision, pool: self.pool, logits: .last))
                    let forward = ContinuousClock.now - start
                    self.pool.parallelFor(work.seqs.count) { s, e in work.run(s..<e, logits: logits) }
                    return (logits, forward)
                }
                self.pool.rest()
                c.resume(with: result)
            }
        }
    }
}

/// Continuous batching: owns the running sequences and, each step, runs ONE
/// `model.forward(batch:)` over all of them — the next token of every decoding sequence plus
/// a chunk of the prompt of each sequence still in prefill (chunked prefill shares the step with
/// the decodes; at most `prefillTokensPerStep` prompt tokens per step, so a long prompt cannot
/// stall the others for long). New requests are admitted between steps while there are free
/// slots and KV budget. Every sequence carries its own adapter delta, so requests with different
/// adapters share a step. Sampling is per sequence.
///
/// A sequence whose consumer goes away (client disconnect, cancelled task) is marked and removed,
/// with its KV cache, before the next step.
public actor BatchScheduler {
    final class SeqState {
        let id: Int
        let request: SequenceRequest
        let continuation: AsyncStream<SequenceEvent>.Continuation
        let reservedBytes: Int
        let enqueued: ContinuousClock.Instant
        var cache: KVCache? = nil
        var pending: ArraySlice<Int>
        var lastToken = 0
        var sampler: Sampler
        var history: [Int]
        var generated: [Int] = []
        var decoder: StreamingDecoder
        var stop: StopMatcher
        var fullText = ""
        var stats = GenerationStats()
        var started: ContinuousClock.Instant? = nil
        var firstToken: ContinuousClock.Instant? = nil
        var lastTokenTime: ContinuousClock.Instant? = nil
        var cancelled = false

        init(id: Int, request: SequenceRequest, continuation: AsyncStream<SequenceEvent>.Continuation, reservedBytes: Int, tokenizer: any Tokenizer) {
            self.id = id
            self.request = request
            self.continuation = continuation
            self.reservedBytes = reservedBytes
            self.enqueued = .now
            self.pending = request.prompt[...]
            self.sampler = Sampler(request.sampling)
            self.history = request.prompt
            self.decoder = StreamingDecoder(tokenizer: tokenizer, skipSpecialTokens: true)
            self.stop = StopMatcher(stops: request.stopStrings)
            self.stats.promptTokens = request.prompt.count
        }

        var adapterLabel: String { request.delta?.adapterNames.joined(separator: "+") ?? "" }
    }

    public nonisolated let model: LlamaModel
    public nonisolated let tokenizer: any Tokenizer
    public nonisolated let limits: SchedulerLimits
    /// Positions a sequence may use.
    public nonisolated let contextLength: Int
    let runner: ForwardRunner
    let metrics: ServerMetrics
    private var loraInfo: LoRAInfoGauge
    private let eos: Set<Int>
    private var waiting: [SeqState] = []
    private var running: [SeqState] = []
    private var nextID = 1
    private let prefixCache: PrefixCache
    private var loop: Task<Void, Never>? = nil
    private var wake: CheckedContinuation<Void, Never>? = nil
    private var shuttingDown = false
    private let logger = Logger(label: "chunkwise.server.scheduler")
    /// Forward passes run so far (for tests and logs).
    public private(set) var steps = 0
    /// The largest number of sequences in one step so far.
    public private(set) var peakBatch = 0

    public init(model: LlamaModel, tokenizer: any Tokenizer, contextLength: Int, threads: Int, precision: Precision,
                limits: SchedulerLimits, metrics: ServerMetrics) {
        self.model = model
        self.tokenizer = tokenizer
        self.contextLength = contextLength
        self.limits = limits
        self.metrics = metrics
        self.runner = ForwardRunner(model: model, threads: threads, precision: precision)
        self.eos = Set(tokenizer.eosTokenIDs)
        self.loraInfo = LoRAInfoGauge(registry: metrics.registry, maxLora: limits.maxRunning)
        self.prefixCache = PrefixCache(maxBytes: min(limits.prefixCacheBytes, limits.kvBudgetBytes))
    }

    /// KV bytes one position takes (fp32 keys and values over all layers).
    public nonisolated var kvBytesPerPosition: Int { 2 * model.config.layers * model.config.kvDim * MemoryLayout<Float>.size }

    /// Queues a sequence. Refuses at once (429) when the waiting queue is full, and (400) when it
    /// could never fit the KV budget. The stream ends after `.finished` or `.failed`; dropping it
    /// (or cancelling its consumer) cancels the sequence.
    public func submit(_ request: SequenceRequest) throws(APIError) -> (id: Int, events: AsyncStream<SequenceEvent>) {
        if shuttingDown { throw .unavailable("the server is shutting down") }
        let positions = min(contextLength, request.prompt.count + request.maxTokens)
        let bytes = positions * kvBytesPerPosition
        guard bytes <= limits.kvBudgetBytes else {
            throw .badRequest("the request needs \(bytes) bytes of KV cache (\(positions) positions) but the server's KV budget is \(limits.kvBudgetBytes) bytes; lower max_tokens or the prompt",
                              param: "max_tokens", code: "kv_budget_exceeded")
        }
        guard waiting.count < limits.maxWaiting || (waiting.isEmpty && running.count < limits.maxRunning) else {
            throw .queueFull(running: running.count, waiting: waiting.count)
        }
        let id = nextID
        nextID += 1
        let (stream, continuation) = AsyncStream<SequenceEvent>.makeStream()
        let seq = SeqState(id: id, request: request, continuation: continuation, reservedBytes: bytes, tokenizer: tokenizer)
        continuation.onTermination = { [weak self] reason in
            if case .cancelled = reason { Task { await self?.cancel(id) } }
        }
        waiting.append(seq)
        updateGauges()
        if loop == nil { loop = Task { await self.runLoop() } }
        wake?.resume()
        wake = nil
        return (id, stream)
    }

    /// Marks a sequence cancelled; it is removed (and its KV cache freed) before the next step.
    public func cancel(_ id: Int) {
        if let i = waiting.firstIndex(where: { $0.id == id }) {
            waiting.remove(at: i)
            updateGauges()
            return
        }
        if let s = running.first(where: { $0.id == id }) { s.cancelled = true }
        wake?.resume()
        wake = nil
    }

    /// Running and waiting counts and KV bytes held (for `/health`, tests).
    public func snapshot() -> (running: Int, waiting: Int, kvBytes: Int) {
        (running.count, waiting.count, running.reduce(0) { $0 + ($1.cache?.byteCount ?? 0) })
    }

    /// The prompt cache's entries (prompt positions each) and bytes (for tests).
    public func prefixCacheSnapshot() -> (positions: [Int], bytes: Int) {
        (prefixCache.entries.map(\.tokens.count), prefixCache.bytes)
    }

    /// Drops the prompt cache's entries made with adapter `name` (after it is unloaded).
    public func forgetCachedPrompts(adapter name: String) {
        prefixCache.forget { $0?.adapterNames.contains(name) ?? false }
        updateGauges()
    }

    /// Stops admitting, fails what waits (503), cancels what runs, and ends the loop.
    public func shutdown() async {
        shuttingDown = true
        for s in waiting { s.continuation.yield(.failed(.unavailable("the server is shutting down"))); s.continuation.finish() }
        waiting.removeAll()
        for s in running { s.cancelled = true }
        wake?.resume()
        wake = nil
        if let loop { await loop.value }
    }

    private func runLoop() async {
        while true {
            reap()
            if shuttingDown && running.isEmpty { break }
            admit()
            if running.isEmpty {
                if shuttingDown { break }
                await withCheckedContinuation { (c: CheckedContinuation<Void, Never>) in wake = c }
                continue
            }
            await step()
        }
        loop = nil
    }

    /// Removes cancelled sequences (frees their KV caches).
    private func reap() {
        let before = running.count
        running.removeAll { s in
            if s.cancelled { s.continuation.finish(); s.cache = nil; return true }
            return false
        }
        if running.count != before {
            logger.debug("cancelled sequences removed", metadata: ["count": "\(before - running.count)"])
            updateGauges()
        }
    }

    /// Moves waiting sequences into free slots, in order, while the KV budget allows.
    private func admit() {
        guard !shuttingDown else { return }
        var reserved = running.reduce(0) { $0 + $1.reservedBytes }
        while running.count < limits.maxRunning, let s = waiting.first {
            // Cached prompts give way to requests (least recently used first).
            while reserved + s.reservedBytes + prefixCache.bytes > limits.kvBudgetBytes, prefixCache.evictOldest() {}
            guard reserved + s.reservedBytes <= limits.kvBudgetBytes else { break }
            waiting.removeFirst()
            let positions = min(contextLength, s.request.prompt.count + s.request.maxTokens)
            let cache = model.makeCache(maxContext: contextLength, initialCapacity: positions)
            let reused = s.request.usesPromptCache
                ? prefixCache.reuse(prompt: s.request.prompt, binding: s.request.delta, salt: s.request.cacheSalt, into: cache) : 0
            s.cache = cache
            s.pending = s.request.prompt[reused...]
            s.stats.cachedPromptTokens = reused
            s.started = .now
            reserved += s.reservedBytes
            running.append(s)
            metrics.promptTokens.increment(by: s.request.prompt.count)
            if PrefixCache.cacheable(s.request.delta) && prefixCache.maxBytes > 0 {
                metrics.prefixQueries.increment(by: s.request.prompt.count)
                metrics.prefixHits.increment(by: reused)
            }
        }
        updateGauges()
    }

    private func updateGauges() {
        metrics.running.record(running.count)
        metrics.waiting.record(waiting.count)
        metrics.kvBytes.record(running.reduce(0) { $0 + ($1.cache?.byteCount ?? 0) })
        metrics.prefixCacheBytes.record(prefixCache.bytes)
        loraInfo.update(running: running.map(\.adapterLabel).filter { !$0.isEmpty },
                        waiting: waiting.map(\.adapterLabel).filter { !$0.isEmpty })
    }

    /// One forward pass over every running sequence, then sampling and events.
    private func step() async {
        var items: [LlamaModel.BatchItem] = []
        var members: [(seq: SeqState, sample: Bool)] = []
        var prefillBudget = limits.prefillTokensPerStep
        for s in running {
            guard let cache = s.cache else { continue }
            if !s.pending.isEmpty {
                guard prefillBudget > 0 else { continue }
                let n = min(prefillBudget, s.pending.count)
                let chunk = Array(s.pending.prefix(n))
                s.pending = s.pending.dropFirst(n)
                prefillBudget -= n
                let last = s.pending.isEmpty
                (s.request.delta?.delta as? ChunkWiseDelta)?.prepare(tokens: chunk, cache: cache, pool: runner.pool)
                items.append(.init(tokens: chunk, cache: cache, delta: s.request.delta?.delta, logits: last ? .last : .none))
                members.append((s, last))
            } else {
                (s.request.delta?.delta as? ChunkWiseDelta)?.prepare(tokens: [s.lastToken], cache: cache, pool: runner.pool)
                items.append(.init(tokens: [s.lastToken], cache: cache, delta: s.request.delta?.delta, logits: .last))
                members.append((s, true))
            }
        }
        // (The estimators above ran their layer-0 products on the forward pool, idle until the
        // pass below starts.)
        guard !items.isEmpty else { return }
        // Sequences sharing an adapter binding sit next to each other, so the forward pass applies
        // that adapter once to all of their rows (stable: arrival order within an adapter).
        let order = items.indices.sorted { a, b in
            let ka = items[a].delta.map(ObjectIdentifier.init), kb = items[b].delta.map(ObjectIdentifier.init)
            if ka == kb { return a < b }
            guard let ka else { return true }
            guard let kb else { return false }
            return ka < kb
        }
        items = order.map { items[$0] }
        members = order.map { members[$0] }
        steps += 1
        peakBatch = max(peakBatch, items.count)
        metrics.batchSequences.record(items.count)
        // Every sequence's next token, sampled side by side on the forward pool right after the pass
        // (each sequence's sampler is used by one thread; the actor does not touch the samplers while
        // it waits). One after another, 8 sequences' samplers (temperature 0.8, 49k vocabulary) took
        // 0.82–0.86 ms of a ~37 ms step on an AVX2 host.
        let sampling = members.indices.filter { members[$0].sample && !members[$0].seq.cancelled }
        let work = SamplingWork(seqs: sampling.map { members[$0].seq }, rows: sampling)
        let logits: [[Float]]
        do {
            let result = try await runner.forward(ForwardRunner.Items(items: items), sampling: work)
            logits = result.logits
            metrics.stepTime.recordDuration(result.forward)
        } catch {
            logger.error("forward pass failed", metadata: ["error": "\(error)", "batch": "\(items.count)"])
            for m in members {
                m.seq.continuation.yield(.failed(.internalError("the forward pass failed: \(error)")))
                m.seq.cancelled = true
            }
            return
        }
        let now = ContinuousClock.now
        var finishedIDs = Set<Int>()
        var next = [Int](repeating: 0, count: members.count)
        for (j, i) in sampling.enumerated() { next[i] = work.next[j] }
        for i in sampling where !members[i].seq.cancelled {
            let m = members[i]
            // The ChunkWise scheduler reads the last row's distribution (entropy signal).
            (m.seq.request.delta?.delta as? ChunkWiseDelta)?.observe(logits: logits[i])
            if advance(m.seq, next: next[i], now: now) {
                finishedIDs.insert(m.seq.id)
                if let cw = m.seq.request.delta?.delta as? ChunkWiseDelta {
                    for chunk in cw.statistics.chunks { metrics.chunkRank.record(chunk.rank) }
                }
            }
        }
        if !finishedIDs.isEmpty {
            let done = running.filter { finishedIDs.contains($0.id) }
            running.removeAll { finishedIDs.contains($0.id) }
            // Their prompts' blocks go to the prompt cache, within what the running sequences leave of the budget.
            let reserved = running.reduce(0) { $0 + $1.reservedBytes }
            for s in done {
                if let cache = s.cache, s.request.usesPromptCache {
                    prefixCache.donate(prompt: s.request.prompt, binding: s.request.delta, salt: s.request.cacheSalt, cache: cache,
                                       room: limits.kvBudgetBytes - reserved - prefixCache.bytes)
                }
                s.cache = nil
            }
            updateGauges()
        }
    }

    /// Emits a sequence's next token (sampled); true when the sequence has finished.
    private func advance(_ s: SeqState, next: Int, now: ContinuousClock.Instant) -> Bool {
        if s.generated.isEmpty, let started = s.started {
            s.stats.prefillSeconds = seconds(now - started)
            s.stats.timeToFirstTokenSeconds = seconds(now - s.enqueued)
            metrics.ttft.recordInterval(since: s.enqueued, now: now)
            s.firstToken = now
        } else if let last = s.lastTokenTime {
            metrics.perToken.recordInterval(since: last, now: now)
        }
        s.lastTokenTime = now
        if s.request.stopAtEOS && eos.contains(next) { return finish(s, .eos, now: now) }
        s.generated.append(next)
        s.history.append(next)
        metrics.generationTokens.increment()
        let piece = s.decoder.append(next)
        let (release, stopped) = s.stop.append(piece)
        s.fullText += release
        s.continuation.yield(.token(id: next, text: release))
        if stopped { return finish(s, .stop, now: now) }
        if s.generated.count >= s.request.maxTokens { return finish(s, .length, now: now) }
        guard let cache = s.cache, cache.count + 1 <= contextLength else { return finish(s, .length, now: now) }
        s.lastToken = next
        return false
    }

    private func finish(_ s: SeqState, _ reason: FinishReason, now: ContinuousClock.Instant) -> Bool {
        var reason = reason
        if reason != .stop {
            let (release, stopped) = s.stop.append(s.decoder.flush())
            let tail = stopped ? release : release + s.stop.flush()
            if stopped { reason = .stop }
            s.fullText += tail
            if !tail.isEmpty { s.continuation.yield(.text(tail)) }
        }
        if let f = s.firstToken { s.stats.decodeSeconds = seconds(now - f) }
        s.stats.generatedTokens = s.generated.count
        s.stats.finishReason = reason
        s.continuation.yield(.finished(text: s.fullText, tokens: s.generated, stats: s.stats))
        s.continuation.finish()
        return true
    }
}

/// The samplers of one step's sequences, run side by side on the pool: part [s, e) samples sequences
/// s..<e (each sequence's sampler by one thread) while the scheduler actor waits for the step.
final class SamplingWork: @unchecked Sendable {
    let seqs: [BatchScheduler.SeqState]
    /// Sequence j's row in the forward pass's logits.
    let rows: [Int]
    /// The sampled tokens (one buffer, written at distinct indices by the parts: no exclusive
    /// access to a property is held across threads).
    let next: UnsafeMutableBufferPointer<Int>

    init(seqs: [BatchScheduler.SeqState], rows: [Int]) {
        self.seqs = seqs
        self.rows = rows
        self.next = .allocate(capacity: seqs.count)
        next.initialize(repeating: 0)
    }

    deinit { next.deallocate() }

    func run(_ range: Range<Int>, logits: [[Float]]) {
        for j in range { next[j] = seqs[j].sampler.sample(logits[rows[j]], history: seqs[j].history) }
    }
}

func seconds(_ d: Duration) -> Double {
    Double(d.components.seconds) + Double(d.components.attoseconds) * 1e-18
}

extension CoreMetrics.Timer {
    func recordInterval(since start: ContinuousClock.Instant, now: ContinuousClock.Instant) {
        recordDuration(now - start)
    }

    func recordDuration(_ d: Duration) {
        recordNanoseconds(d.components.seconds * 1_000_000_000 + d.components.attoseconds / 1_000_000_000)
    }
}
