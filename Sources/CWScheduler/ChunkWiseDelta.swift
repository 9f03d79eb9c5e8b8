/// # CWScheduler — ChunkWise LoRA: the adapter's rank chosen per chunk of tokens at run time
///
/// Pipeline (per forward call of the engine):
/// 1. `RankLadder` (once per adapter, cacheable on disk): every module's `s·B·A` re-factored as
///    `U·S·Vᵀ` from the small problem only (QR of B and Aᵀ, Jacobi SVD of the r×r core, in Double),
///    directions sorted by σ so the first k are the best rank-k approximation (Eckart–Young), stored
///    as row factors (Vᵀ and (U·S)ᵀ, `LowRankFactor`) so rank k is a prefix of rows and costs rank k.
/// 2. `DifficultyEstimator`: a causal score in [0, 1] per token from entropy of the previous
///    prediction (decode), n-gram novelty, layer-0 attention entropy, a position prior and the
///    adapter's response energy. Computed in `prepare(tokens:)` *before* the forward pass, because
///    every layer's rank has to be known before layer 0 runs.
/// 3. `Chunker`: smoothed difficulty → chunks in [minChunk, maxChunk] cut where the running mean
///    shifts, with hysteresis and a top-tier budget that holds at every prefix. Causal: decisions
///    are made token by token and never revised.
/// 4. Policy (`SchedulerConfig`, presets `static`, `static:K`, `base`, `balanced`, `aggressive`,
///    `quality`, or a YAML/JSON file): chunk → tier (ladder rank, 0 = base) and scale α.
/// 5. `CrossFade`: over w tokens after each edge the per-direction weights ramp linearly from the
///    outgoing to the incoming configuration.
/// 6. `ChunkWiseDelta` (a `ProjectionDelta`): in prefill token rows are grouped by the rank they
///    need and each group runs only its slice; in decode the single token runs its slice — one down and
///    one up low-rank product either way (`LowRank`), with the per-token direction weights between them.
///
/// Design decisions:
/// - `static` does not go through the ladder at all: it delegates to `LoRAStack` (A then B), so it
///   is bit-identical to plain LoRA. `static:K` and adaptive policies use the ladder.
/// - Causality over lookahead: the estimator, chunker and fade use only past and current tokens, so
///   prefill in one call, prefill in pieces and token-by-token decode make the same decisions, and a
///   KV cache never holds keys computed under a rank that would later be revised.
/// - Merged floor (`mergedFloor = k₀`): the first k₀ directions are merged into fp32 (fp16 under fast
///   precision, or the base's own encoding with `mergeFormat: .base`) copies of the touched base
///   matrices (`MergedFloor`); the delta adds only directions ≥ k₀ on chunks whose rank
///   is above k₀. Every token then gets at least rank k₀ at zero per-token cost; α does not apply to
///   the merged part.
/// - Any rank costs exactly that rank (a prefix of the factors' rows); the ladder's tier boundaries
///   only group directions in the cache file and the energy report.
/// - KV per chunk: with `kvPolicies`, `prepare(tokens:cache:)` sets each new chunk's tier policy on
///   the cache from the chunk's first position (easy chunks int8, hard chunks fp32 in the presets).
///
/// Thread safety: a `ChunkWiseDelta` holds per-sequence state (plan, estimator). Use one per
/// sequence from one task at a time (the engine actor); it is `@unchecked Sendable` for that reason.
import CWFormats
import CWKernels
import CWLoRA
import CWTransformer
import Foundation

/// Running statistics of a sequence.
public struct SchedulerStatistics: Codable, Sendable, Equatable {
    /// Tokens per ladder rank (the rank of the token's chunk).
    public var tokensPerRank: [Int: Int] = [:]
    /// Σ computed rank (incl. the merged floor; fade tokens count max(k_in, k_out)) / tokens.
    public var averageRank: Double = 0
    /// Σ nominal chunk rank / tokens.
    public var averageChunkRank: Double = 0
    public var tokens: Int = 0
    public var chunks: [Chunk] = []
    /// Estimator cost.
    public var estimatorNanosecondsPerToken: Double = 0
}

/// The ChunkWise scheduler as a `ProjectionDelta`.
///
/// Engine API (one sequence at a time):
/// ```
/// let delta = try ChunkWiseDelta(model: model, adapter: adapter, config: .preset("balanced"))
/// let runModel = delta.forwardModel          // the merged-floor model, or `model`
/// delta.beginSequence()                      // with every fresh KV cache
/// delta.prepare(tokens: prompt)              // plans the rank of these positions
/// var logits = try runModel.forward(prompt, cache: cache, options: opts, delta: delta)
/// delta.observe(logits: lastRow)             // next-token distribution → entropy signal
/// loop: delta.prepare(tokens: [next]); logits = forward([next]); delta.observe(logits: logits)
/// ```
/// or `try delta.forward(tokens, cache:, options:)`, which does prepare + forward + observe.
/// `statistics` and `explain(...)` report what was decided.
public final class ChunkWiseDelta: ProjectionDelta, @unchecked Sendable {
    public let model: LlamaModel
    public let ladder: RankLadder
    public let config: SchedulerConfig
    /// Plain LoRA for the `static` policy (delegated to, bit for bit).
    public let staticStack: LoRAStack?
    /// The merged-floor model when `config.mergedFloor > 0`.
    public let mergedFloor: MergedFloor?
    public let estimator: DifficultyEstimator
    public private(set) var chunker: Chunker
    public private(set) var plans: [TokenPlan] = []
    public private(set) var difficulties: [Double] = []
    public private(set) var signals: [DifficultySignals] = []
    let window: Int
    let floorRank: Int
    /// Parsed `config.kvPolicies` (nil: the scheduler does not touch the KV policy).
    public let kvPolicies: [KVPolicy]?
    /// False when the user chose one KV policy for the whole sequence (the engine's `--kv-policy`).
    public var managesKVPolicy = true
    let estimatorPool = ThreadPool(threads: 1)

    /// Binds `adapter` to `model` under `config`. `ladder` may be a cached one (checked against the
    /// adapter's content hash and the model's shapes); otherwise it is built.
    ///
    /// `storage` is the element type of the factors applied per token (`.f16` halves the bytes read;
    /// the engine uses it with `--precision fast`); the merged floor is always built from fp32.
    public init(model: LlamaModel, adapter: LoRAAdapter, config: SchedulerConfig, ladder: RankLadder? = nil,
                storage: LowRankFactor.Storage = .f32, mergeFormat: MergeFormat? = nil) throws {
        try config.validate()
        self.model = model
        self.config = config
        let c = model.config
        var lad: RankLadder
        if let l = ladder {
            guard l.adapterHash == adapter.contentHash else {
                throw SchedulerError("the ladder was built from another adapter (hash \(l.adapterHash), adapter \(adapter.contentHash))")
            }
            lad = try l.withRowOrder(c.ropeStyle, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
            try lad.check(model: model)
        } else {
            let needed = config.tiers + [config.staticRank, config.mergedFloor]
            let maxRank = adapter.modules.map(\.rank).max() ?? 0
            let tiers = Array(Set(RankLadder.defaultTiers(maxRank: maxRank) + needed.filter { $0 > 0 && $0 <= maxRank })).sorted()
            lad = try RankLadder.build(adapter: adapter, model: model, tierRanks: tiers)
        }
        staticStack = config.mode == .static ? try LoRAStack(model: model, adapter: adapter, storage: storage) : nil
        if config.mode != .static, config.mergedFloor > 0 {
            mergedFloor = try MergedFloor(model: model, ladder: lad, rank: config.mergedFloor, format: mergeFormat ?? MergeFormat(storage))
        } else {
            mergedFloor = nil
        }
        self.ladder = try lad.converted(to: storage)
        floorRank = mergedFloor?.rank ?? 0
        estimator = DifficultyEstimator(model: model, ladder: self.ladder, config: config)
        chunker = Chunker(config: config)
        window = CrossFade.window(config)
        kvPolicies = try config.kvPolicies.map { names in
            try names.map { n in
                guard let p = KVPolicy(parsing: n) else { throw SchedulerError("scheduler config: '\(n)' is not a KV policy") }
                return p
            }
        }
    }

    /// From a policy name (or config file) as the CLI gives them.
    public convenience init(model: LlamaModel, adapter: LoRAAdapter, policy: String?, configFile: String?, ladderFile: String? = nil,
                            storage: LowRankFactor.Storage = .f32, mergeFormat: MergeFormat? = nil) throws {
        let maxRank = adapter.modules.map(\.rank).max() ?? 0
        let cfg = try SchedulerConfig.resolve(policy: policy, configFile: configFile, maxRank: maxRank)
        let lad = try ladderFile.map { try RankLadder.load(from: $0) }
        try self.init(model: model, adapter: adapter, config: cfg, ladder: lad, storage: storage, mergeFormat: mergeFormat)
    }

    /// Bytes held for the adapter: the ladder's factors (or the static stack's), plus the merged floor's copies.
    public var adapterByteCount: Int {
        (staticStack?.boundBytes ?? ladder.byteCount) + (mergedFloor?.extraBytes ?? 0)
    }

    /// The model the forward pass must run: the merged-floor copy, or `model`.
    public var forwardModel: LlamaModel { mergedFloor?.model ?? model }

    /// Starts a new sequence (a fresh KV cache): forgets the plan and the estimator's history.
    public func beginSequence() {
        chunker = Chunker(config: config)
        callGroups.valid = false
        plans = []
        difficulties = []
        signals = []
        estimator.reset()
    }

    /// Plans the next positions and, when the config has `kvPolicies`, sets the KV policy of each
    /// new chunk on `cache` from the chunk's first position (the cache must hold exactly the
    /// positions planned before this call; otherwise its policy is left alone).
    public func prepare(tokens: [Int], cache: KVCache, pool: ThreadPool? = nil) {
        let first = plans.count
        prepare(tokens: tokens, pool: pool)
        guard managesKVPolicy, let kv = kvPolicies, config.mode == .adaptive, cache.count == first else { return }
        for p in first..<plans.count {
            let chunk = chunker.chunks[plans[p].chunk]
            guard chunk.tier >= 0, chunk.tier < kv.count else { continue }
            let want = kv[chunk.tier]
            if cache.policy(at: p) != want { cache.setPolicy(want, forPositionsFrom: p) }
        }
    }

    /// Plans the next `tokens.count` positions (call before each forward with exactly its tokens).
    /// `pool` runs the estimator's layer-0 q/k products (default: a one-thread pool of the delta's
    /// own); the scores do not depend on the pool's thread count (each output row is computed by
    /// one thread, in the same order).
    public func prepare(tokens: [Int], pool: ThreadPool? = nil) {
        guard !tokens.isEmpty else { return }
        callGroups.valid = false
        switch config.mode {
        case .static:
            for _ in tokens { plans.append(TokenPlan(inRank: ladder.maxRank, inAlpha: 1)); difficulties.append(0); signals.append(DifficultySignals()) }
            return
        case .staticRank:
            for _ in tokens { plans.append(TokenPlan(inRank: config.staticRank, inAlpha: Float(config.staticAlpha))); difficulties.append(0); signals.append(DifficultySignals()) }
            return
        case .adaptive:
            break
        }
        let scored = estimator.score(tokens: tokens, pool: pool ?? estimatorPool)
        for (d, s) in scored {
            let t = plans.count
            let ci = chunker.push(d)
            plans.append(CrossFade.plan(token: t, chunkIndex: ci, chunks: chunker.chunks, window: window))
            difficulties.append(d)
            signals.append(s)
        }
    }

    /// Feeds the logits of the last position run (for the entropy signal of the next token).
    public func observe(logits: [Float]) {
        let v = model.config.vocabSize
        guard logits.count >= v else { return }
        logits.withUnsafeBufferPointer { b in
            estimator.observe(logits: UnsafeBufferPointer(rebasing: b[(logits.count - v)...]))
        }
    }

    /// prepare (with the chunk KV policies) + forward (on `forwardModel`) + observe.
    public func forward(_ tokens: [Int], cache: KVCache, options: ForwardOptions) throws -> [Float] {
        prepare(tokens: tokens, cache: cache, pool: options.pool)
        let out = try forwardModel.forward(tokens, cache: cache, options: options, delta: self)
        if !out.isEmpty { observe(logits: out) }
        return out
    }

    /// What has been decided so far.
    public var statistics: SchedulerStatistics {
        var s = SchedulerStatistics()
        s.tokens = plans.count
        var sumRank = 0, sumChunk = 0
        for p in plans {
            let nominal = config.mode == .adaptive ? chunker.chunks[p.chunk].rank : p.inRank
            s.tokensPerRank[nominal, default: 0] += 1
            sumRank += max(p.effectiveRank, floorRank)
            sumChunk += nominal
        }
        if config.mode == .static { sumRank = plans.count * ladder.maxRank }
        s.averageRank = plans.isEmpty ? 0 : Double(sumRank) / Double(plans.count)
        s.averageChunkRank = plans.isEmpty ? 0 : Double(sumChunk) / Double(plans.count)
        s.chunks = config.mode == .adaptive ? chunker.chunks
            : (plans.isEmpty ? [] : [Chunk(start: 0, end: plans.count, tier: 0, rank: plans[0].inRank, alpha: 1, meanDifficulty: 0)])
        s.estimatorNanosecondsPerToken = estimator.tokensScored > 0 ? Double(estimator.nanoseconds) / Double(estimator.tokensScored) : 0
        return s
    }

    // MARK: ProjectionDelta

    /// The rank groups of one call's rows, built by the first projection of a forward pass and
    /// reused by the other projections (every projection of a pass asks for the same positions):
    /// no arrays or dictionaries are built per projection call.
    struct CallGroups {
        struct Group {
            var rank: Int
            /// Its rows are `rows[start..<start + count]` (ascending); with one group covering
            /// every row, `rows` is empty and the rows are 0..<n.
            var start: Int
            var count: Int
            /// False when every row of the group is outside a fade with α = 1 (nothing to scale).
            var weighted: Bool
        }
        var valid = false
        var positions: Range<Int> = 0..<0
        var moduleRank = 0
        var plans: [TokenPlan] = []
        var groups: [Group] = []
        var rows: [Int32] = []
        /// Scratch: each row's rank, then the counting sort's group offsets.
        var rowRank: [Int] = []
        var offsets: [Int] = []
    }
    var callGroups = CallGroups()
    let groupsLock = NSLock()

    /// Between `prepare` and the end of the forward pass the plans are fixed: `apply` only reads
    /// them (and builds the call's groups once, under a lock), so a small step may run this
    /// sequence's projections side by side, beside the base product.
    public var isReentrant: Bool { true }
    /// The ladder slices only add to the output; `static` is plain LoRA (additive unless DoRA).
    public var isAdditive: Bool { staticStack?.isAdditive ?? true }

    /// The plan of `position` (full rank, α = 1 for positions never prepared).
    @inline(__always)
    func plan(at position: Int, moduleRank: Int) -> TokenPlan {
        position >= 0 && position < plans.count ? plans[position] : TokenPlan(inRank: moduleRank, inAlpha: 1)
    }

    /// False when every planned position of the call needs no ladder direction above the merged
    /// floor (tier rank 0, or a tier at the floor, outside any fade): `apply` would add nothing, so
    /// the model skips the delta's machinery for the call. Positions not planned yet count as
    /// acting (full rank), as `apply` treats them.
    public func acts(on positions: Range<Int>) -> Bool {
        if staticStack != nil { return true }
        for p in positions where plan(at: p, moduleRank: Int.max).effectiveRank > floorRank { return true }
        return false
    }

    /// A decode step as a term: the plan's ladder slice above the merged floor, its down product
    /// (weighted by the plan) now, `(U·S)ᵀ`'s rows of the slice the term — `apply`'s one-row path.
    public func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                             scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int? {
        if let s = staticStack {
            return s.lowRankTerms(layer: layer, projection: projection, x: x, position: position, target: target,
                                  scratch: scratch, capacity: capacity, terms: &terms, pool: pool)
        }
        guard let m = ladder.module(layer: layer, projection: projection),
              let (p, slice) = oneRowSlice(m, position: position) else { return 0 }
        guard slice.count <= capacity else { return nil }
        oneRowDown(m, p, slice, x: x, u: scratch, pool: pool)
        terms.append(LowRankTerm(target: target, factor: m.usFactor, rows: slice, u: scratch))
        return slice.count
    }

    /// The slices of `Vᵀ` and `(U·S)ᵀ` a decode step at `position` reads (`lowRankTerms`).
    public func stepMemory(layer: Int, projection: Projection, position: Int) -> [UnsafeRawBufferPointer] {
        if let s = staticStack { return s.stepMemory(layer: layer, projection: projection, position: position) }
        guard let m = ladder.module(layer: layer, projection: projection),
              let (_, slice) = oneRowSlice(m, position: position) else { return [] }
        return [m.vtFactor.memory(rows: slice), m.usFactor.memory(rows: slice)]
    }

    /// The plan of a one-row call at `position` and the ladder directions it computes (above the
    /// merged floor); nil when it adds nothing.
    private func oneRowSlice(_ m: LadderModule, position: Int) -> (TokenPlan, Range<Int>)? {
        let p = plan(at: position, moduleRank: m.rank)
        let k = min(p.effectiveRank, m.rank)
        return k > floorRank ? (p, floorRank..<k) : nil
    }

    /// The one-row down product of `slice`, weighted by the plan (`apply` and `lowRankTerms`).
    private func oneRowDown(_ m: LadderModule, _ p: TokenPlan, _ slice: Range<Int>, x: UnsafePointer<Float>,
                            u: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        LowRank.down(m.vtFactor, rows: slice, x: x, ldx: m.inFeatures, tokens: 1, u: u, ldu: slice.count, pool: pool)
        Self.weigh(u, width: slice.count, lo: slice.lowerBound, plan: p)
    }

    /// `static` reads its plain LoRA factors (prefetched during batched products); the ladder
    /// policies choose their slices per call and prefetch nothing.
    public func memory(layer: Int, projection: Projection) -> [UnsafeRawBufferPointer] {
        staticStack?.memory(layer: layer, projection: projection) ?? []
    }

    public func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens n: Int,
                      positions: Range<Int>, y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        if let s = staticStack {
            s.apply(layer: layer, projection: projection, x: x, tokens: n, positions: positions, y: y, pool: pool)
            return
        }
        guard n > 0, let m = ladder.module(layer: layer, projection: projection) else { return }
        if n == 1 {
            // Decode: one row, one slice; nothing allocated.
            guard let (p, slice) = oneRowSlice(m, position: positions.lowerBound) else { return }
            withUnsafeTemporaryAllocation(of: Float.self, capacity: slice.count) { ub in
                guard let u = ub.baseAddress else { return }
                oneRowDown(m, p, slice, x: x, u: u, pool: pool)
                LowRank.up(m.usFactor, rows: slice, u: u, ldu: slice.count, tokens: 1, y: y, ldy: m.outFeatures, pool: pool)
            }
            return
        }
        // Projections of one pass may run side by side (`isReentrant`); they all ask for the same
        // positions, so the first builds the groups and the others only read them.
        groupsLock.lock()
        if !callGroups.valid || callGroups.positions != positions || callGroups.moduleRank != m.rank || callGroups.plans.count != n {
            buildGroups(positions: positions, tokens: n, moduleRank: m.rank)
        }
        groupsLock.unlock()
        let lo = floorRank
        for g in callGroups.groups where g.count > 0 && g.rank > lo {
            let w = g.rank - lo
            callGroups.rows.withUnsafeBufferPointer { all in
                // (one group over every row: no row list)
                let rows = g.count == n ? nil : all.baseAddress.map { UnsafePointer($0 + g.start) }
                withUnsafeTemporaryAllocation(of: Float.self, capacity: g.count * w) { ub in
                    guard let u = ub.baseAddress else { return }
                    callGroups.plans.withUnsafeBufferPointer { tp in
                        groupDown(m, rank: g.rank, weighted: g.weighted, rows: rows, entries: 0..<g.count, x: x, u: u, plans: tp, pool: pool)
                    }
                    LowRank.up(m.usFactor, rows: lo..<g.rank, u: u, ldu: w, tokens: g.count, y: y, ldy: m.outFeatures, yRows: rows, pool: pool)
                }
            }
        }
    }

    /// The down product of a rank group's entries `entries` into their rows of u (the group's u:
    /// `count × (rank − floorRank)`), scaled by their plans (fades, α) when the group is `weighted`;
    /// `rows`: the group's rows, nil for rows 0..<n in order. An entry's result does not depend on
    /// which entries share the call.
    func groupDown(_ m: LadderModule, rank: Int, weighted: Bool, rows: UnsafePointer<Int32>?, entries: Range<Int>,
                   x: UnsafePointer<Float>, u: UnsafeMutablePointer<Float>, plans: UnsafeBufferPointer<TokenPlan>, pool: ThreadPool) {
        let lo = floorRank, w = rank - lo, a = entries.lowerBound, ub = u + a * w
        guard !entries.isEmpty else { return }
        if let rows {
            LowRank.down(m.vtFactor, rows: lo..<rank, x: x, ldx: m.inFeatures, xRows: rows + a, tokens: entries.count, u: ub, ldu: w, pool: pool)
        } else {
            LowRank.down(m.vtFactor, rows: lo..<rank, x: x + a * m.inFeatures, ldx: m.inFeatures, tokens: entries.count, u: ub, ldu: w, pool: pool)
        }
        guard weighted else { return }
        for j in entries { Self.weigh(u + j * w, width: w, lo: lo, plan: plans[rows.map { Int($0[j]) } ?? j]) }
    }

    /// `apply` for a large call in two halves: each rank group's down product (and its weights)
    /// now, its up product per column range later (`SplitDelta`). Decode (one row) does not split.
    public func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens n: Int,
                      positions: Range<Int>, pool: ThreadPool) -> SplitDelta? {
        if let s = staticStack { return s.split(layer: layer, projection: projection, x: x, tokens: n, positions: positions, pool: pool) }
        guard n > 1, let m = ladder.module(layer: layer, projection: projection) else { return nil }
        groupsLock.lock()
        if !callGroups.valid || callGroups.positions != positions || callGroups.moduleRank != m.rank || callGroups.plans.count != n {
            buildGroups(positions: positions, tokens: n, moduleRank: m.rank)
        }
        groupsLock.unlock()
        let lo = floorRank
        // Per group: its rank, its rows (nil = all n, in order) and its weighted u, owned here.
        var parts: [(rank: Int, count: Int, rows: UnsafeMutablePointer<Int32>?, u: UnsafeMutablePointer<Float>, weighted: Bool)] = []
        for g in callGroups.groups where g.count > 0 && g.rank > lo {
            let u = UnsafeMutablePointer<Float>.allocate(capacity: g.count * (g.rank - lo))
            var rows: UnsafeMutablePointer<Int32>? = nil
            if g.count < n {  // a copy: the row list must outlive this call
                let r = UnsafeMutablePointer<Int32>.allocate(capacity: g.count)
                callGroups.rows.withUnsafeBufferPointer { all in
                    if let base = all.baseAddress { r.initialize(from: base + g.start, count: g.count) }
                }
                rows = r
            }
            parts.append((g.rank, g.count, rows, u, g.weighted))
        }
        // Every group's down product in one pool job: the groups' entries laid end to end, each
        // part of the job running its share of each group it overlaps on its own thread (one job
        // instead of one per rank group; each entry's u is computed as alone: the kernel's result
        // for a row does not depend on which rows share its call).
        var ends: [Int] = []
        var total = 0
        for p in parts { total += p.count; ends.append(total) }
        callGroups.plans.withUnsafeBufferPointer { tp in
            pool.parallelFor(total, granularity: 8) { s, e in
                var start = 0
                for (i, p) in parts.enumerated() {
                    let a = max(s, start) - start, b = min(e, ends[i]) - start
                    start = ends[i]
                    guard b > a else { continue }
                    groupDown(m, rank: p.rank, weighted: p.weighted, rows: p.rows.map { UnsafePointer($0) }, entries: a..<b, x: x, u: p.u,
                              plans: tp, pool: pool)
                }
            }
        }
        // U·S widened to fp32 once (up to the largest rank a group needs; the same values): the up
        // product then runs in many small parts, each of which would widen its columns again.
        let out = m.outFeatures, us = m.usFactor.widened(rows: 0..<(parts.map(\.rank).max() ?? 0))
        return SplitDelta(finish: { columns, part, y in
            for p in parts {
                let w = p.rank - lo
                // The group's entries whose rows lie in `part` (rows ascend within a group).
                var j0 = part.lowerBound, j1 = part.upperBound
                if let rows = p.rows {
                    j0 = Self.lowerBound(rows, p.count, Int32(part.lowerBound))
                    j1 = Self.lowerBound(rows, p.count, Int32(part.upperBound))
                }
                guard j1 > j0 else { continue }
                // (with a row list y is addressed through it; without, entry j is row j)
                LowRank.up(us, rows: lo..<p.rank, u: p.u + j0 * w, ldu: w, tokens: j1 - j0, y: p.rows == nil ? y + j0 * out : y,
                           ldy: out, yRows: p.rows.map { UnsafePointer($0 + j0) }, columns: columns)
            }
        }, release: {
            for p in parts { p.u.deallocate(); p.rows?.deallocate() }
        })
    }

    /// The first index i < n with rows[i] ≥ value (rows ascending).
    static func lowerBound(_ rows: UnsafePointer<Int32>, _ n: Int, _ value: Int32) -> Int {
        var lo = 0, hi = n
        while lo < hi {
            let mid = (lo + hi) / 2
            if rows[mid] < value { lo = mid + 1 } else { hi = mid }
        }
        return lo
    }

    /// Groups the rows of `positions` by the rank they need above the merged floor (ascending rank,
    /// rows ascending within a group), reusing the buffers of the last call.
    func buildGroups(positions: Range<Int>, tokens n: Int, moduleRank r: Int) {
        var cg = callGroups
        callGroups = CallGroups()  // hand the buffers over without copying them
        cg.plans.removeAll(keepingCapacity: true)
        cg.groups.removeAll(keepingCapacity: true)
        cg.rows.removeAll(keepingCapacity: true)
        cg.rowRank.removeAll(keepingCapacity: true)
        var lo = Int.max, hi = Int.min
        for t in 0..<n {
            let p = plan(at: positions.lowerBound + t, moduleRank: r)
            cg.plans.append(p)
            let k = min(p.effectiveRank, r)
            cg.rowRank.append(k)
            if k > floorRank { lo = min(lo, k); hi = max(hi, k) }
        }
        if lo == hi, cg.rowRank.allSatisfy({ $0 == lo }) {
            // Every row at one rank: one group over rows 0..<n.
            cg.groups.append(.init(rank: lo, start: 0, count: n, weighted: cg.plans.contains { !$0.isUniform || $0.inAlpha != 1 }))
        } else if lo <= hi {
            // Counting sort of the rows by rank (stable: rows stay ascending within a rank).
            cg.offsets.removeAll(keepingCapacity: true)
            cg.offsets.append(contentsOf: repeatElement(0, count: hi - lo + 2))
            for k in cg.rowRank where k > floorRank { cg.offsets[k - lo + 1] += 1 }
            for i in 0..<(hi - lo + 1) {
                let c = cg.offsets[i + 1]
                if c > 0 { cg.groups.append(.init(rank: lo + i, start: cg.offsets[i], count: c, weighted: false)) }
                cg.offsets[i + 1] += cg.offsets[i]
            }
            cg.rows.append(contentsOf: repeatElement(0, count: cg.offsets[hi - lo + 1]))
            for (t, k) in cg.rowRank.enumerated() where k > floorRank {
                cg.rows[cg.offsets[k - lo]] = Int32(t)
                cg.offsets[k - lo] += 1
            }
            for gi in cg.groups.indices {
                let g = cg.groups[gi]
                cg.groups[gi].weighted = cg.rows[g.start..<(g.start + g.count)].contains { let p = cg.plans[Int($0)]; return !p.isUniform || p.inAlpha != 1 }
            }
        }
        cg.positions = positions
        cg.moduleRank = r
        cg.valid = true
        callGroups = cg
    }

    /// The per-direction weights of one row's directions [lo, lo + w) (α, cross-fade).
    @inline(__always)
    static func weigh(_ u: UnsafeMutablePointer<Float>, width w: Int, lo: Int, plan p: TokenPlan) {
        if p.isUniform {
            let a = p.inAlpha
            if a != 1 { for i in 0..<w { u[i] *= a } }
        } else {
            for i in 0..<w { u[i] *= p.weight(lo + i) }
        }
    }
}

/// The first `rank` ladder directions merged into copies of the touched base matrices (fp32, fp16 or
/// the base's encoding: `MergeFormat`).
public struct MergedFloor: Sendable {
    public let model: LlamaModel
    public let rank: Int
    /// Bytes of the copies.
    public let extraBytes: Int

    public init(model base: LlamaModel, ladder: RankLadder, rank k0: Int, format: MergeFormat = .f32) throws {
        var w = base.weights
        var extra = 0
        let pool = ThreadPool()
        for m in ladder.modules {
            let orig = base.weights.layers[m.layer].matrix(m.projection)
            let cols = orig.cols
            let kk = min(k0, m.rank)
            let us = m.usMatrix(), vt = m.vtMatrix(), r = m.rank
            let seed = UInt64(m.layer * Projection.count + m.projection.index)
            let (copy, bytes) = try mergedCopy(of: orig, format: format, pool: pool, seed: seed) { o, row in
                for j in 0..<kk {
                    let u = us[o * r + j]
                    if u == 0 { continue }
                    for c in 0..<cols { row[c] += u * vt[j * cols + c] }
                }
            }
            w.layers[m.layer].setMatrix(m.projection, copy)
            extra += bytes
        }
        model = LlamaModel(config: base.config, weights: w, source: base.source, ropeFrequencyFactors: ropeFrequencyFactors(of: base))
        rank = k0
        extraBytes = extra
    }
}

