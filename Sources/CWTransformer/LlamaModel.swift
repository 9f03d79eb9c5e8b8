import CWFormats
import CWKernels
import Foundation

/// Something that adds to a projection's output — a LoRA adapter, a mix of adapters, or the
/// ChunkWise scheduler choosing a rank per token. `positions` are the sequence positions of the
/// `tokens` rows of `x`/`y`.
public protocol ProjectionDelta: AnyObject {
    func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
               positions: Range<Int>, y: UnsafeMutablePointer<Float>, pool: ThreadPool)
    /// True when `apply` ignores `positions` and treats rows independently (plain LoRA): a batch
    /// then hands the rows of consecutive sequences sharing this delta to ONE call, so the
    /// adapter's factors are read once per step for all of them.
    var isPositionIndependent: Bool { get }
    /// True when `apply` may run concurrently with itself (other projections, other rows): it
    /// keeps no mutable state between calls. A batched step then runs all its sequences' (and a
    /// shared input's projections') deltas as one pool job instead of one after another.
    var isReentrant: Bool { get }
    /// True when `apply` only adds to `y` something computed from `x` (plain LoRA; not DoRA, which
    /// rescales `y`): a small step may then compute it into a zeroed buffer while the base product
    /// is still writing `y`, and add it afterwards.
    var isAdditive: Bool { get }
    /// The memory `apply(layer:projection:…)` will read (its factors), for the batched kernel to
    /// prefetch while the base product computes. Empty by default.
    func memory(layer: Int, projection: Projection) -> [UnsafeRawBufferPointer]
    /// `apply` in two halves, for a large call (prefill): everything that reads `x` now (LoRA's
    /// down product), and the rest — adding to some output columns of some tokens — as the
    /// returned `SplitDelta`, which the model calls from inside the base product's pool job for
    /// each part of y just written (it is then in that core's cache: the up product's cost was
    /// reading and writing y, not its multiply-adds). nil when the delta cannot split (the model
    /// then calls `apply`). The result must equal `apply`'s bit for bit.
    func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
               positions: Range<Int>, pool: ThreadPool) -> SplitDelta?
    /// False when `apply` would add nothing to any row of these positions (a ChunkWise plan at
    /// rank 0, or at or below its merged floor): the step then runs them as if they had no delta —
    /// the base product alone, without the side tasks, buffers and adds of a delta that does
    /// nothing. Asked once per forward call, before any projection. True by default.
    func acts(on positions: Range<Int>) -> Bool
    /// A one-token call (a decode step) as low-rank terms for the base product to add to each part
    /// of y as soon as it is written (`Kernels.matmul(…, terms:)`): runs the down products now —
    /// weighted and scaled as `apply` does — into `scratch` (room for `capacity` floats) and appends
    /// one `LowRankTerm` per up product, with `target`, in `apply`'s order. Returns the floats of
    /// `scratch` used (0 and no term: nothing to add), or nil when the delta is not of that form
    /// (DoRA, bias terms) or needs more room: the model then runs its other paths. The terms must
    /// add `apply`'s bits. nil by default.
    func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                      scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int?
    /// What a one-token call at `position` will read (the factor slices of its down and up
    /// products), for the product before it to prefetch: a decode step's factor reads are short
    /// and each begins with a miss. `memory(layer:projection:)` by default.
    func stepMemory(layer: Int, projection: Projection, position: Int) -> [UnsafeRawBufferPointer]
}

extension ProjectionDelta {
    public var isPositionIndependent: Bool { false }
    public var isReentrant: Bool { false }
    public var isAdditive: Bool { false }
    public func memory(layer: Int, projection: Projection) -> [UnsafeRawBufferPointer] { [] }
    public func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
                      positions: Range<Int>, pool: ThreadPool) -> SplitDelta? { nil }
    public func acts(on positions: Range<Int>) -> Bool { true }
    public func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                             scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int? { nil }
    public func stepMemory(layer: Int, projection: Projection, position: Int) -> [UnsafeRawBufferPointer] {
        memory(layer: layer, projection: projection)
    }
}

/// The second half of a split `ProjectionDelta.apply`: `finish(columns, tokens, y)` adds the delta
/// to those output columns of those tokens (rows of the call) of `y` (row-major, one row per token,
/// as `apply`'s). Calls for disjoint parts may run at the same time; each runs on the calling thread.
public final class SplitDelta: @unchecked Sendable {
    public let finish: (Range<Int>, Range<Int>, UnsafeMutablePointer<Float>) -> Void
    private let release: () -> Void

    /// `release` frees what `finish` reads; it runs when the value is dropped.
    public init(finish: @escaping (Range<Int>, Range<Int>, UnsafeMutablePointer<Float>) -> Void, release: @escaping () -> Void = {}) {
        self.finish = finish
        self.release = release
    }

    deinit { release() }
}

/// Which logits a forward pass returns.
public enum LogitsMode: Sendable {
    case none, last, all
}

/// Errors from running the model on user input.
public enum InferenceError: Error, CustomStringConvertible, Equatable {
    case emptyInput
    case tokenOutOfRange(id: Int, vocabularySize: Int)
    case contextOverflow(needed: Int, limit: Int)
    case duplicateCache

    public var description: String {
        switch self {
        case .duplicateCache: return "a batch holds the same KV cache twice (one sequence per cache)"

        case .emptyInput: return "the prompt is empty: at least one token is needed"
        case .tokenOutOfRange(let id, let v): return "token id \(id) is outside the vocabulary (0..<\(v))"
        case .contextOverflow(let needed, let limit):
            return "the sequence needs \(needed) positions but the context holds \(limit) (use a shorter prompt or fewer new tokens)"
        }
    }
}

/// Options for one forward pass.
public struct ForwardOptions {
    public var precision: Precision
    public var pool: ThreadPool
    public var logits: LogitsMode
    /// Largest number of tokens pushed through the layers at once (bounds scratch memory).
    public var microBatch: Int
    /// Projections that keep fp32 activations even in `fast` precision (sensitive to outliers).
    public var exactProjections: Set<Projection>
    /// Whether the output head keeps fp32 activations in `fast` precision. Off by default: with
    /// 16-bit activation blocks the head's integer product moves SmolLM2-135M's logits by ~1e-4
    /// relative L2 (8-bit blocks cost 1–2%, which is why it used to be on), and the fp32 path
    /// (dequantizing the 49,152 × 576 Q8_0 head every step) cost ~15% of decode speed.
    public var exactOutput: Bool
    /// Whether large calls (prefill) split their deltas around the base product (`ProjectionDelta
    /// .split`): the same bits either way; off only to measure or test the difference.
    public var splitDeltas: Bool

    public init(precision: Precision = .exact, pool: ThreadPool, logits: LogitsMode = .last, microBatch: Int = 256,
                exactProjections: Set<Projection> = [], exactOutput: Bool = false, splitDeltas: Bool = true) {
        self.precision = precision
        self.pool = pool
        self.logits = logits
        self.microBatch = max(1, microBatch)
        self.exactProjections = exactProjections
        self.exactOutput = exactOutput
        self.splitDeltas = splitDeltas
    }
}

/// A Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied head.
///
/// Read `forward` top to bottom for the whole model, as in llama2.c's run.c.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let source: ModelSource
    let ropeInvFreq: [Double]

    public init(config: LlamaConfig, weights: LlamaWeights, source: ModelSource, ropeFrequencyFactors: [Float]?) {
        self.config = config
        self.weights = weights
        self.source = source
        var inv = config.ropeInverseFrequencies()
        if let f = ropeFrequencyFactors { for i in inv.indices { inv[i] /= Double(f[i]) } }
        self.ropeInvFreq = inv
    }

    /// RoPE tables for `count` consecutive positions from `start`: row t (`headDim/2` values at
    /// cos/sin + t·headDim/2) holds cos and sin of (start + t)·θᵢ, θ with the model's frequency
    /// factors, computed in Double and rounded once — what the forward pass rotates q and k by.
    public func ropeTables(start: Int, count: Int, cos: UnsafeMutablePointer<Float>, sin: UnsafeMutablePointer<Float>) {
        let half = config.headDim / 2
        for t in 0..<count {
            let p = Double(start + t)
            for j in 0..<half {
                let a = p * ropeInvFreq[j]
                cos[t * half + j] = Float(Foundation.cos(a))
                sin[t * half + j] = Float(Foundation.sin(a))
            }
        }
    }

    /// A fresh KV cache for this model.
    public func makeCache(maxContext: Int? = nil, initialCapacity: Int = 256) -> KVCache {
        KVCache(layers: config.layers, kvDim: config.kvDim, maxCapacity: min(maxContext ?? config.maxContext, config.maxContext),
                initialCapacity: initialCapacity, kvHeads: config.kvHeads)
    }

    /// Runs `tokens` at positions `cache.count ..< cache.count + tokens.count`, appends their keys
    /// and values to `cache`, and returns the logits asked for (`vocab` floats per returned
    /// position, row-major). Long prompts go through in micro-batches of `options.microBatch`.
    public func forward(_ tokens: [Int], cache: KVCache, options: ForwardOptions, delta: ProjectionDelta? = nil) throws -> [Float] {
        try validate(tokens, cache: cache)
        let vocab = config.vocabSize
        var result: [Float] = []
        if options.logits == .all { result.reserveCapacity(vocab * tokens.count) }
        var start = 0
        // (the blocks a micro-batch closes stay fp32 through the next one: KVCache.pendingSeal)
        defer { cache.endCall() }
        while start < tokens.count {
            cache.beginMicroBatch()
            let end = min(tokens.count, start + options.microBatch)
            let mode: LogitsMode = options.logits == .all ? .all : (options.logits == .last && end == tokens.count ? .last : .none)
            let item = BatchItem(tokens: Array(tokens[start..<end]), cache: cache, delta: delta, logits: mode)
            let out = try forwardSegments([item], options: options)
            if mode != .none { result.append(contentsOf: out[0]) }
            start = end
        }
        return result
    }

    /// One sequence's share of a batched forward pass.
    public struct BatchItem {
        public var tokens: [Int]
        public var cache: KVCache
        public var delta: ProjectionDelta?
        public var logits: LogitsMode

        public init(tokens: [Int], cache: KVCache, delta: ProjectionDelta? = nil, logits: LogitsMode = .last) {
            self.tokens = tokens
            self.cache = cache
            self.delta = delta
            self.logits = logits
        }
    }

    /// Runs several sequences in one pass: every weight matrix is read once for all of their
    /// rows (continuous batching), while RoPE, the KV cache, attention and each sequence's delta
    /// (its adapter and ranks) stay per sequence. Returns each item's logits.
    public func forward(batch items: [BatchItem], options: ForwardOptions) throws -> [[Float]] {
        guard !items.isEmpty else { return [] }
        var seen = Set<ObjectIdentifier>()
        for it in items {
            guard seen.insert(ObjectIdentifier(it.cache)).inserted else {
                throw InferenceError.duplicateCache
            }
            try validate(it.tokens, cache: it.cache)
        }
        return try forwardSegments(items, options: options)
    }

    private func validate(_ tokens: [Int], cache: KVCache) throws {
        guard !tokens.isEmpty else { throw InferenceError.emptyInput }
        for t in tokens where t < 0 || t >= config.vocabSize {
            throw InferenceError.tokenOutOfRange(id: t, vocabularySize: config.vocabSize)
        }
        let needed = cache.count + tokens.count
        guard cache.reserve(needed) else { throw InferenceError.contextOverflow(needed: needed, limit: cache.maxCapacity) }
    }

    /// Steps of fewer tokens than this run their deltas side by side (and, when additive, beside
    /// the base product); larger ones (prefill) keep each delta call's own split over the pool.
    static let smallStepTokens = 32
    /// From this many tokens a call's RMSNorm and SwiGLU run on the pool. (From 4 they did, and
    /// an 8-sequence decode step was no faster — 0.97× median over eight alternating `bench
    /// --batch 8` rounds: two more pool jobs per layer for a few microseconds of work each.)
    static let poolElementwiseTokens = 32

    /// Scratch activations for a micro-batch of `n` tokens.
    struct Scratch {
        let n: Int
        var x, xb, q, k, v, att, hb, hb2: UnsafeMutablePointer<Float>
        /// Small steps: the deltas' outputs of one input's projections (q+k+v or gate+up or one).
        var dz: UnsafeMutablePointer<Float>

        init(config c: LlamaConfig, tokens n: Int) {
            self.n = n
            x = Self.lineAligned(n * c.hiddenSize)
            xb = Self.lineAligned(n * max(c.hiddenSize, c.qDim))
            q = Self.lineAligned(n * c.qDim)
            k = Self.lineAligned(n * c.kvDim)
            v = Self.lineAligned(n * c.kvDim)
            att = Self.lineAligned(n * c.qDim)
            hb = Self.lineAligned(n * c.intermediateSize)
            hb2 = Self.lineAligned(n * c.intermediateSize)
            dz = Self.lineAligned(Self.deltaFloats(config: c, tokens: n))
        }

        /// 64-byte aligned: a pool job's parts cut an output at multiples of 16 rows, which then
        /// fall on cache-line boundaries, so two threads never write one line (malloc's 16-byte
        /// alignment split a line at every cut).
        static func lineAligned(_ n: Int) -> UnsafeMutablePointer<Float> {
            UnsafeMutableRawPointer.allocate(byteCount: max(1, n) * MemoryLayout<Float>.stride, alignment: 64)
                .bindMemory(to: Float.self, capacity: max(1, n))
        }

        func free() {
            for p in [x, xb, q, k, v, att, hb, hb2, dz] { UnsafeMutableRawPointer(p).deallocate() }
        }

        static func deltaFloats(config c: LlamaConfig, tokens n: Int) -> Int {
            n < LlamaModel.smallStepTokens ? n * max(c.qDim + 2 * c.kvDim, 2 * c.intermediateSize, c.hiddenSize) : 0
        }

        static func byteCount(config c: LlamaConfig, tokens n: Int) -> Int {
            4 * n * (2 * c.hiddenSize + max(c.hiddenSize, c.qDim) + 2 * c.qDim + 2 * c.kvDim + 2 * c.intermediateSize)
                + 4 * deltaFloats(config: c, tokens: n)
        }
    }

    /// Bytes of scratch activations a forward pass of `tokens` tokens holds (excluding logits).
    public func scratchByteCount(tokens: Int, microBatch: Int = 256) -> Int {
        Scratch.byteCount(config: config, tokens: min(tokens, microBatch))
    }

    /// The whole model over the rows of several sequences (segments), read top to bottom.
    private func forwardSegments(_ items: [BatchItem], options: ForwardOptions) throws -> [[Float]] {
        let c = config, w = weights, pool = options.pool, prec = options.precision
        let d = c.hiddenSize, ff = c.intermediateSize, half = c.headDim / 2
        // `fast` precision also takes the blocked attention kernel for fp32 cache blocks (equal to
        // rounding); `exact` keeps the kernel that is bit-identical to contiguous attention.
        let fastAttention = prec == .fast
        // Row ranges and positions of each segment.
        var rowStart: [Int] = [], pos0: [Int] = []
        var n = 0
        for it in items { rowStart.append(n); pos0.append(it.cache.count); n += it.tokens.count }
        let s = Scratch(config: c, tokens: n)
        defer { s.free() }

        // Embedding lookup.
        for (i, it) in items.enumerated() {
            for (t, id) in it.tokens.enumerated() { w.tokenEmbedding.dequantizeRow(id, into: s.x + (rowStart[i] + t) * d) }
        }

        // RoPE tables for every row's position.
        var cosT = [Float](repeating: 0, count: n * half), sinT = [Float](repeating: 0, count: n * half)
        cosT.withUnsafeMutableBufferPointer { cb in
            sinT.withUnsafeMutableBufferPointer { sb in
                guard let cp = cb.baseAddress, let sp = sb.baseAddress else { return }
                for (i, it) in items.enumerated() {
                    ropeTables(start: pos0[i], count: it.tokens.count, cos: cp + rowStart[i] * half, sin: sp + rowStart[i] * half)
                }
            }
        }

        // Runs of consecutive segments sharing one position-independent delta: one call each.
        // A segment whose delta adds nothing at its positions (`acts(on:)`) runs as the base model.
        var deltaRuns: [(delta: ProjectionDelta, first: Int, last: Int)] = []
        for (i, it) in items.enumerated() {
            guard let delta = it.delta, delta.acts(on: pos0[i]..<(pos0[i] + it.tokens.count)) else { continue }
            if let prev = deltaRuns.last, prev.last == i - 1, prev.delta === delta, delta.isPositionIndependent {
                deltaRuns[deltaRuns.count - 1].last = i
            } else {
                deltaRuns.append((delta, i, i))
            }
        }
        // Small steps (decode) run their deltas' calls side by side; large ones (prefill) keep
        // each call's own split over the pool.
        let concurrentDeltas = n < Self.smallStepTokens && deltaRuns.allSatisfy { $0.delta.isReentrant }
        // ... and, when they only add to the output, inside the base product's pool job (`side`
        // tasks): their small, latency-bound factor reads overlap the weight stream instead of
        // running on one thread after it while the other threads wait.
        let sideDeltas = concurrentDeltas && !deltaRuns.isEmpty && deltaRuns.allSatisfy { $0.delta.isAdditive }
        let sideAdds = SideDeltaAdds()
        // A one-token step of one sequence whose delta can be written as low-rank terms: their down
        // products run first, on the calling thread (a few thousand multiply-adds each), and the base
        // product adds their up products to each part of y as it writes it, in C (`linearTerms`),
        // with the next product's factor slices prefetched meanwhile — no delta buffers, adds,
        // locks or Swift closures inside the pool job. Merged-floor-4 `balanced` decoded 12.8–17.6%
        // below the base model's speed with the side tasks, 8.9–13.0% with terms (2 threads, Zen 3,
        // four runs of `DecodeTermsBench`; terms ahead in three); its factor reads, short and
        // latency-bound while the weights stream, are most of what is left.
        let termsStep = n == 1 && deltaRuns.count == 1
        let termCapacity = 8192
        let termScratch: UnsafeMutablePointer<Float>? = termsStep ? .allocate(capacity: termCapacity) : nil
        defer { termScratch?.deallocate() }
        var terms: [LowRankTerm] = []
        // A batched step (the integer kernel, compute-bound) pulls the deltas' factors into cache
        // while it computes (one token streams the weights; prefetching there made no difference).
        let prefetchDeltas = !deltaRuns.isEmpty && prec == .fast && n >= 4
        // Likewise the KV blocks of a step of several sequences (evicted by the weights since the
        // last step); one sequence's step is not compute-bound enough to hide them.
        let prefetchCaches = items.count > 1 && prec == .fast && n >= 4
        // A large call of one delta run covering every row (a prefill) splits its deltas around the
        // base product (`linearSplit`).
        let splitDeltas = options.splitDeltas && n >= Self.smallStepTokens && deltaRuns.count == 1
            && deltaRuns[0].first == 0 && deltaRuns[0].last == items.count - 1
        let splitPositions = items.count == 1 ? pos0[0]..<(pos0[0] + n) : 0..<n

        /// RMSNorm of each token's row (a prefill-sized call: over the pool; each row alone, the same bits).
        func rmsNorm(_ weight: [Float], _ x: UnsafeMutablePointer<Float>, _ out: UnsafeMutablePointer<Float>, tokens: Int) {
            weight.withUnsafeBufferPointer { g in
                guard let gp = g.baseAddress else { return }
                if tokens >= Self.poolElementwiseTokens {
                    pool.parallelFor(tokens) { lo, hi in
                        for t in lo..<hi { VectorOps.rmsNorm(x + t * d, gp, out + t * d, n: d, eps: c.rmsNormEps) }
                    }
                } else {
                    for t in 0..<tokens { VectorOps.rmsNorm(x + t * d, gp, out + t * d, n: d, eps: c.rmsNormEps) }
                }
            }
        }

        /// y = W·x for all rows, then each segment's (or run of segments') delta on its own rows.
        func linear(_ layer: Int, _ p: Projection, _ m: WeightMatrix, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
            let exact = options.exactProjections.contains(p)
            if termsStep && !exact && linearTerms(layer, x, [(p, m, y)]) { return }
            if sideDeltas && !exact {
                linearWithSideDeltas(layer, x, [(p, m, y)], alsoPrefetch: [])
                return
            }
            if !exact && linearSplit(layer, x, [(p, m, y)], alsoPrefetch: []) { return }
            if prefetchDeltas && !exact {
                Kernels.matmul([(w: m, y: y)], x, tokens: n, precision: prec, prefetch: deltaMemory(layer, [p]), pool: pool)
            } else {
                Kernels.matmul(m, x, tokens: n, y, precision: exact ? .exact : prec, pool: pool)
            }
            applyDeltas(layer, p, m, x, y)
        }

        /// The deltas' factors for these projections (prefetched during a batched product).
        func deltaMemory(_ layer: Int, _ ps: [Projection]) -> [UnsafeRawBufferPointer] {
            var spans: [UnsafeRawBufferPointer] = []
            for run in deltaRuns { for p in ps { spans += run.delta.memory(layer: layer, projection: p) } }
            return spans
        }

        /// Several projections of the same input (q/k/v, gate/up): one matmul call for all of
        /// them (activations quantized once, one pool job), then each one's deltas.
        func linear(_ layer: Int, _ x: UnsafeMutablePointer<Float>, _ outs: [(Projection, WeightMatrix, UnsafeMutablePointer<Float>)],
                    alsoPrefetch: [UnsafeRawBufferPointer] = []) {
            if outs.contains(where: { options.exactProjections.contains($0.0) }) {
                for (p, m, y) in outs { linear(layer, p, m, x, y) }
                return
            }
            if termsStep && linearTerms(layer, x, outs) { return }
            if sideDeltas {
                linearWithSideDeltas(layer, x, outs, alsoPrefetch: alsoPrefetch)
                return
            }
            if linearSplit(layer, x, outs, alsoPrefetch: alsoPrefetch) { return }
            Kernels.matmul(outs.map { (w: $0.1, y: $0.2) }, x, tokens: n, precision: prec,
                           prefetch: (prefetchDeltas ? deltaMemory(layer, outs.map(\.0)) : []) + alsoPrefetch, pool: pool)
            if concurrentDeltas && deltaRuns.count * outs.count > 1 {
                // Every (run, projection) pair writes its own rows of its own output: one job.
                let pairs = deltaRuns.count * outs.count
                pool.parallelFor(pairs) { lo, hi in
                    for i in lo..<hi {
                        let (p, m, y) = outs[i % outs.count]
                        applyDelta(deltaRuns[i / outs.count], layer, p, m, x, y)
                    }
                }
                return
            }
            for (p, m, y) in outs { applyDeltas(layer, p, m, x, y) }
        }

        /// A one-token step's projections of one input with their delta as low-rank terms of the base
        /// product (`ProjectionDelta.lowRankTerms`). False (nothing written to y) when the delta
        /// cannot give terms for one of them.
        func linearTerms(_ layer: Int, _ x: UnsafeMutablePointer<Float>, _ outs: [(Projection, WeightMatrix, UnsafeMutablePointer<Float>)]) -> Bool {
            guard let run = deltaRuns.first, let termScratch else { return false }
            terms.removeAll(keepingCapacity: true)
            var used = 0
            for (j, out) in outs.enumerated() {
                guard let u = run.delta.lowRankTerms(layer: layer, projection: out.0, x: x, position: pos0[run.first], target: j,
                                                     scratch: termScratch + used, capacity: termCapacity - used, terms: &terms, pool: pool)
                else { return false }
                used += u
            }
            // What the next product's delta reads (its factors), pulled in while this one runs.
            let next: (Int, [Projection])
            switch outs[0].0 {
            case .q, .k, .v: next = (layer, [.o])
            case .o: next = (layer, [.gate, .up])
            case .gate, .up: next = (layer, [.down])
            case .down: next = (layer + 1, [.q, .k, .v])
            }
            var pf: [UnsafeRawBufferPointer] = []
            if next.0 < c.layers { for p in next.1 { pf += run.delta.stepMemory(layer: next.0, projection: p, position: pos0[run.first]) } }
            Kernels.matmul(outs.map { (w: $0.1, y: $0.2) }, x, tokens: n, precision: prec, terms: terms, prefetch: pf, pool: pool)
            return true
        }

        /// The projections of one input with every (run, projection) delta as a side task of the
        /// product's pool job, each into its own zeroed buffer, added to the outputs inside the same
        /// job — bit-identical to adding in place when a projection has one low-rank term (the up
        /// kernel sums from zero, then adds); with several adapters or bias deltas on one projection
        /// the terms are summed before they meet y (last-bit differences).
        func linearWithSideDeltas(_ layer: Int, _ x: UnsafeMutablePointer<Float>, _ outs: [(Projection, WeightMatrix, UnsafeMutablePointer<Float>)],
                                  alsoPrefetch: [UnsafeRawBufferPointer]) {
            // outs[j]'s deltas go to s.dz at n · (rows of outs[0..<j]). Each task zeroes only its
            // run's rows (the runs' rows are disjoint), and only those rows are added to y: rows of
            // sequences without a delta are neither cleared nor added.
            let base = outs.reduce(into: [0]) { $0.append($0[$0.count - 1] + n * $1.1.rows) }
            func dz(_ j: Int) -> UnsafeMutablePointer<Float> { s.dz + base[j] }
            // The runs' deltas on rows r0..<r1 × tokens t0..<t1 of outs[j].
            func add(_ j: Int, _ r0: Int, _ r1: Int, _ t0: Int, _ t1: Int) {
                let rows = outs[j].1.rows
                for run in deltaRuns {
                    for t in runRows(run).clamped(to: t0..<t1) {
                        VectorOps.add(outs[j].2 + t * rows + r0, dz(j) + t * rows + r0, n: r1 - r0)
                    }
                }
            }
            // Each part of the product, once written, gets its deltas from the thread that wrote it
            // while it is in that core's cache — or, while side tasks are still running, from the
            // last of them (the adds were a serial pass on the calling thread after the job, ~2%
            // of its time in an 8-sequence server step).
            sideAdds.reset(tasks: deltaRuns.count * outs.count)
            Kernels.matmul(outs.map { (w: $0.1, y: $0.2) }, x, tokens: n, precision: prec,
                           prefetch: (prefetchDeltas ? deltaMemory(layer, outs.map(\.0)) : []) + alsoPrefetch,
                           side: (deltaRuns.count * outs.count, { i in
                               let j = i % outs.count, run = deltaRuns[i / outs.count], rows = outs[j].1.rows, t = runRows(run)
                               (dz(j) + t.lowerBound * rows).initialize(repeating: 0, count: t.count * rows)
                               applyDelta(run, layer, outs[j].0, outs[j].1, x, dz(j))
                               sideAdds.taskDone(add)
                           }),
                           after: { j, r0, r1, t0, t1 in sideAdds.written(j, r0, r1, t0, t1, add) }, pool: pool)
        }

        /// A large call whose rows all belong to one delta run (a prefill): the deltas' down products
        /// first, then the base product, each range of its rows getting its deltas' up products as
        /// soon as it is written (`ProjectionDelta.split`). False (nothing done) when this does not
        /// apply or a delta cannot split.
        func linearSplit(_ layer: Int, _ x: UnsafeMutablePointer<Float>, _ outs: [(Projection, WeightMatrix, UnsafeMutablePointer<Float>)],
                         alsoPrefetch: [UnsafeRawBufferPointer]) -> Bool {
            guard splitDeltas, let run = deltaRuns.first else { return false }
            var splits: [SplitDelta] = []
            for (p, _, _) in outs {
                guard let sd = run.delta.split(layer: layer, projection: p, x: x, tokens: n, positions: splitPositions, pool: pool)
                else { return false }
                splits.append(sd)
            }
            Kernels.matmul(outs.map { (w: $0.1, y: $0.2) }, x, tokens: n, precision: prec, prefetch: alsoPrefetch,
                           after: { j, r0, r1, t0, t1 in splits[j].finish(r0..<r1, t0..<t1, outs[j].2) }, pool: pool)
            return true
        }

        /// The batch rows of a run of segments.
        func runRows(_ run: (delta: ProjectionDelta, first: Int, last: Int)) -> Range<Int> {
            rowStart[run.first]..<(rowStart[run.last] + items[run.last].tokens.count)
        }

        func applyDelta(_ run: (delta: ProjectionDelta, first: Int, last: Int), _ layer: Int, _ p: Projection, _ m: WeightMatrix,
                        _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
            let rows = runRows(run), r = rows.lowerBound, len = rows.count
            let positions = run.first == run.last ? pos0[run.first]..<(pos0[run.first] + len) : 0..<len
            run.delta.apply(layer: layer, projection: p, x: x + r * m.cols, tokens: len,
                            positions: positions, y: y + r * m.rows, pool: pool)
        }

        func applyDeltas(_ layer: Int, _ p: Projection, _ m: WeightMatrix, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
            if concurrentDeltas && deltaRuns.count > 1 {
                pool.parallelFor(deltaRuns.count) { lo, hi in
                    for i in lo..<hi { applyDelta(deltaRuns[i], layer, p, m, x, y) }
                }
                return
            }
            for run in deltaRuns { applyDelta(run, layer, p, m, x, y) }
        }

        var kvSpans: [UnsafeRawBufferPointer] = []
        for (l, lw) in w.layers.enumerated() {
            // Attention block.
            rmsNorm(lw.attentionNorm, s.x, s.xb, tokens: n)
            // A batched step's caches for this layer are pulled in while q/k/v compute — up to 2 MiB
            // (an L2's worth; long contexts would only evict what was prefetched first).
            kvSpans.removeAll(keepingCapacity: true)
            if prefetchCaches { for it in items { it.cache.appendMemory(layer: l, to: &kvSpans) } }
            if kvSpans.reduce(0, { $0 + $1.count }) > 2 << 20 { kvSpans.removeAll(keepingCapacity: true) }
            linear(l, s.xb, [(.q, lw.wq, s.q), (.k, lw.wk, s.k), (.v, lw.wv, s.v)], alsoPrefetch: kvSpans)
            if let b = lw.bq { addBias(s.q, b, n) }
            if let b = lw.bk { addBias(s.k, b, n) }
            if let b = lw.bv { addBias(s.v, b, n) }
            applyRope(s.q, heads: c.heads, n: n, cos: cosT, sin: sinT)
            applyRope(s.k, heads: c.kvHeads, n: n, cos: cosT, sin: sinT)
            for (i, it) in items.enumerated() {
                try it.cache.append(layer: l, keys: s.k + rowStart[i] * c.kvDim, values: s.v + rowStart[i] * c.kvDim,
                                    rows: it.tokens.count, tokens: l == 0 ? it.tokens : nil)
            }
            // One sequence: the attention kernel splits its heads/positions over the pool. Several
            // (a batched decode step): the sequences are split over the pool instead, one job
            // (each sequence's kernel then runs on its worker's thread), not one job per sequence.
            let scale = 1 / Float(c.headDim).squareRoot()
            if items.count == 1 {
                try items[0].cache.attention(layer: l, q: s.q, out: s.att, tokens: n, heads: c.heads, scale: scale, fast: fastAttention, pool: pool)
            } else {
                var errors = [Error?](repeating: nil, count: items.count)
                errors.withUnsafeMutableBufferPointer { eb in
                    pool.parallelFor(items.count) { lo, hi in
                        for i in lo..<hi {
                            let r = rowStart[i]
                            do {
                                try items[i].cache.attention(layer: l, q: s.q + r * c.qDim, out: s.att + r * c.qDim,
                                                             tokens: items[i].tokens.count, heads: c.heads, scale: scale, fast: fastAttention, pool: pool)
                            } catch { eb[i] = error }
                        }
                    }
                }
                if let e = errors.lazy.compactMap({ $0 }).first { throw e }
            }
            linear(l, .o, lw.wo, s.att, s.xb)
            VectorOps.add(s.x, s.xb, n: n * d)

            // Feed-forward block (SwiGLU).
            rmsNorm(lw.ffnNorm, s.x, s.xb, tokens: n)
            linear(l, s.xb, [(.gate, lw.wGate, s.hb), (.up, lw.wUp, s.hb2)])
            // (split at multiples of 1,024 elements: each part's vector/tail split is the whole
            // call's, so the same bits)
            if n >= Self.poolElementwiseTokens {
                pool.parallelFor(n * ff, granularity: 1024) { lo, hi in VectorOps.siluMul(s.hb + lo, s.hb2 + lo, n: hi - lo) }
            } else {
                VectorOps.siluMul(s.hb, s.hb2, n: n * ff)
            }
            linear(l, .down, lw.wDown, s.hb, s.xb)
            VectorOps.add(s.x, s.xb, n: n * d)
        }
        for (i, it) in items.enumerated() { it.cache.advance(to: pos0[i] + it.tokens.count) }

        // Final norm and output head over the rows whose logits are wanted, in one matmul.
        var rows: [Int] = []
        for (i, it) in items.enumerated() {
            switch it.logits {
            case .none: break
            case .last: rows.append(rowStart[i] + it.tokens.count - 1)
            case .all: rows.append(contentsOf: rowStart[i]..<(rowStart[i] + it.tokens.count))
            }
        }
        var results = [[Float]](repeating: [], count: items.count)
        guard !rows.isEmpty else { return results }
        w.finalNorm.withUnsafeBufferPointer { g in
            for (j, row) in rows.enumerated() { VectorOps.rmsNorm(s.x + row * d, g.baseAddress!, s.xb + j * d, n: d, eps: c.rmsNormEps) }
        }
        let vocab = c.vocabSize
        // (every element is written by the product: no zero fill; one sequence's rows are
        // returned as they are, without a copy)
        let all = [Float](unsafeUninitializedCapacity: rows.count * vocab) { out, count in
            if let base = out.baseAddress {
                Kernels.matmul(w.output, s.xb, tokens: rows.count, base, precision: options.exactOutput ? .exact : prec, pool: pool)
            }
            count = rows.count * vocab
        }
        if items.count == 1 { return [all] }
        var j = 0
        for (i, it) in items.enumerated() {
            let count = it.logits == .all ? it.tokens.count : (it.logits == .last ? 1 : 0)
            if count > 0 { results[i] = Array(all[(j * vocab)..<((j + count) * vocab)]) }
            j += count
        }
        return results
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, _ b: [Float], _ n: Int) {
        b.withUnsafeBufferPointer { bp in
            for t in 0..<n { VectorOps.add(y + t * bp.count, bp.baseAddress!, n: bp.count) }
        }
    }

    private func applyRope(_ x: UnsafeMutablePointer<Float>, heads: Int, n: Int, cos: [Float], sin: [Float]) {
        // (the tables hold n × headDim/2 values: forwardSegments builds them for these rows)
        assert(cos.count >= n * (config.headDim / 2) && sin.count >= n * (config.headDim / 2))
        cos.withUnsafeBufferPointer { c in
            sin.withUnsafeBufferPointer { s in
                guard let cp = c.baseAddress, let sp = s.baseAddress else { return }
                VectorOps.rope(x, tokens: n, heads: heads, headDim: config.headDim, cos: cp, sin: sp,
                               interleaved: config.ropeStyle == .interleaved)
            }
        }
    }
}

/// When a batched product's parts get their side deltas (`linearWithSideDeltas`): a part written
/// after every side task has finished is added at once by the thread that wrote it; one written
/// before is queued, and the last side task adds the queue. The lock orders the writes: a part's
/// y and a task's delta buffer are both complete before whoever adds them takes it.
final class SideDeltaAdds: @unchecked Sendable {
    typealias Part = (j: Int, r0: Int, r1: Int, t0: Int, t1: Int)
    private let lock = NSLock()
    private var remaining = 0
    private var pending: [Part] = []

    func reset(tasks: Int) {
        lock.lock()
        remaining = tasks
        pending.removeAll(keepingCapacity: true)
        lock.unlock()
    }

    /// A side task has finished; the last one adds the parts queued before it.
    func taskDone(_ add: (Int, Int, Int, Int, Int) -> Void) {
        lock.lock()
        remaining -= 1
        var queued: [Part] = []
        if remaining == 0 { swap(&queued, &pending) }
        lock.unlock()
        for p in queued { add(p.j, p.r0, p.r1, p.t0, p.t1) }
    }

    /// Rows r0..<r1 × tokens t0..<t1 of target j are written.
    func written(_ j: Int, _ r0: Int, _ r1: Int, _ t0: Int, _ t1: Int, _ add: (Int, Int, Int, Int, Int) -> Void) {
        lock.lock()
        if remaining > 0 {
            pending.append((j, r0, r1, t0, t1))
            lock.unlock()
            return
        }
        lock.unlock()
        add(j, r0, r1, t0, t1)
    }
}
