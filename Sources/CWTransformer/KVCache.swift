import CKernels
import CWKernels

/// The keys and values of every processed position, per layer, in paged blocks.
///
/// ## Layout
/// Each layer has a block table: an ordered list of `KVBlock`s, each holding up to `blockSize`
/// retained entries (positions ascending across the table). Inside a block every KV head has its
/// own contiguous region of K rows and V rows (`headDim` elements each) in that head's format —
/// fp32, fp16 or int8 (see `KVFormat`) — so formats can differ between blocks and between heads.
/// The last block of a layer is the *staging* block: fp32, filled one entry per position. It is
/// *sealed* when full, or when the next position has another retention policy or provenance (a
/// change of storage alone keeps the block, which then takes the finer storage: `KVPolicy`): it is
/// then re-encoded in its policy's formats with exactly its rows (int8 keys get per-channel scales
/// over the block's rows — KIVI-style — and int8 values per-token scales; an unfilled block
/// closed early holds only its rows). The re-encoding of the blocks a pass closes waits until that
/// layer's attention has run — in a `LlamaModel.forward` call of several micro-batches, until the
/// next micro-batch has run too: the queries of a prompt attend to the keys and values of their own
/// and the previous micro-batch in fp32, and only later ones read them in the coarser format. (For `balanced`'s
/// int8 chunks this keeps a prefill's attention at the fp32 kernel's speed: `chunkwise bench
/// --policy balanced --versus static`, README.) Attention (`attention(layer:…)`) reads every block in its
/// own format in one fused C kernel (`kv_attention`); no dequantized copy of the cache is made.
///
/// ## Policies
/// `setPolicy(_:forPositionsFrom:)` chooses a `KVPolicy` for positions from a given one on (the
/// ChunkWise scheduler calls it per chunk); the default is `.full` (fp32, all kept), which is
/// bit-identical to a plain contiguous fp32 cache. Retention (window, h2o, dedupe) is applied in
/// `advance(to:)`, after each forward pass, per layer; evicted entries leave their block, and a
/// block left empty is freed.
///
/// ## Memory
/// `byteCount` is the sum of `KVBlock.byteCount` over all allocated blocks of all layers
/// (storage incl. scales, plus position tables and block-table entries); `usedByteCount` counts
/// the rows in use. `kvBudget` bounds `byteCount`: an append that would exceed it first degrades
/// the oldest sealed easy (non-`.full`) blocks, fp32 → fp16 everywhere then fp16 → int8, then
/// evicts the oldest entries of blocks whose policy evicts (window / h2o; never sinks), and throws
/// `KVCacheError.overBudget` when even that cannot fit.
///
/// Not thread-safe: owned by one sequence (engine actor); the model calls it from one thread.
public final class KVCache {
    public let layers: Int
    public let kvDim: Int
    public let kvHeads: Int
    public let headDim: Int
    public let blockSize: Int
    public let maxCapacity: Int
    /// Upper bound on `byteCount`, or nil for none.
    public var kvBudget: Int?
    /// Positions processed (the next token goes at position `count`).
    public private(set) var count: Int = 0

    private var table: [[KVBlock]]
    /// Per layer, the table indices of blocks closed by this pass's `append` but still in their
    /// fp32 staging form: they are encoded in their policy's formats (`sealPending`) after the
    /// layer's `attention`, so a pass's queries attend to their own pass's keys and values
    /// unquantized, as the fp32 staging block gives every position until its block closes.
    /// Inside one `LlamaModel.forward` call of several micro-batches (`beginMicroBatch`,
    /// `endCall`) they wait one micro-batch longer (`pendingEarlier`): a prompt's queries also
    /// see the micro-batch before theirs in fp32, and at most two micro-batches' blocks are fp32
    /// beyond their policy at any time.
    private var pendingSeal: [[Int]]
    private var pendingEarlier: [[Int]]
    private var inCall = false
    private var tokenIds: [Int32] = []
    private var policyRuns: [(from: Int, policy: KVPolicy)] = [(0, .full)]
    /// Whether a policy that evicts or merges entries was ever set (blocks take their policy from
    /// the runs, so until then `advance` has no retention to apply — and skips the pass over
    /// every layer's blocks that a decode step would otherwise make per sequence).
    private var anyRetention = false
    private var provenanceRuns: [(from: Int, provenance: Provenance)] = [(0, .base)]
    private var slabs: [kv_slab] = []
    private var massBuffer: [Float] = []

    /// - `kvHeads`: KV heads per layer (`kvDim` must be a multiple); 1 treats a row as one head.
    /// - `blockSize`: entries per block.
    public init(layers: Int, kvDim: Int, maxCapacity: Int, initialCapacity: Int = 256, kvHeads: Int = 1,
                blockSize: Int = 32, kvBudget: Int? = nil) {
        self.layers = layers
        self.kvDim = kvDim
        let kh = kvHeads > 0 && kvDim % kvHeads == 0 ? kvHeads : 1
        self.kvHeads = kh
        self.headDim = kvDim / kh
        self.blockSize = max(1, blockSize)
        self.maxCapacity = maxCapacity
        self.kvBudget = kvBudget
        self.table = Array(repeating: [], count: layers)
        self.pendingSeal = Array(repeating: [], count: layers)
        self.pendingEarlier = Array(repeating: [], count: layers)
        _ = initialCapacity // blocks are allocated on demand
    }

    // MARK: Policy and provenance

    /// Stores positions `from...` with `policy` (until another call for a later position).
    /// Positions already cached keep theirs.
    public func setPolicy(_ policy: KVPolicy, forPositionsFrom from: Int) {
        if policy.retention != .all { anyRetention = true }
        policyRuns.removeAll { $0.from >= from }
        policyRuns.append((from, policy))
    }

    /// Records that positions `from...` are computed with `provenance`.
    public func setProvenance(_ provenance: Provenance, forPositionsFrom from: Int) {
        provenanceRuns.removeAll { $0.from >= from }
        provenanceRuns.append((from, provenance))
    }

    public func policy(at position: Int) -> KVPolicy {
        policyRuns.last { $0.from <= position }?.policy ?? .full
    }

    public func provenance(at position: Int) -> Provenance {
        provenanceRuns.last { $0.from <= position }?.provenance ?? .base
    }

    // MARK: Memory

    /// Bytes of every allocated block (storage, scales, position tables, block-table entries).
    public var byteCount: Int { table.reduce(0) { $0 + $1.reduce(0) { $0 + $1.byteCount } } }
    /// Bytes of the rows in use.
    public var usedByteCount: Int { table.reduce(0) { $0 + $1.reduce(0) { $0 + $1.usedByteCount } } }
    /// Positions the allocated blocks of layer 0 can hold.
    public var capacity: Int { table.first?.reduce(0) { $0 + $1.rowCapacity } ?? 0 }

    /// Exact memory figures by format.
    public struct Memory: Sendable, Equatable {
        public var allocatedBytes: Int
        public var usedBytes: Int
        /// K/V element storage per format.
        public var fp32Bytes: Int
        public var fp16Bytes: Int
        public var int8Bytes: Int
        /// int8 scales.
        public var scaleBytes: Int
        /// Position tables, h2o/dedupe per-row values and block-table entries.
        public var metadataBytes: Int
        public var blocks: Int
        /// Entries retained, summed over layers.
        public var entries: Int
    }

    public var memory: Memory {
        var d: [KVFormat: Int] = [:]
        var scales = 0, meta = 0, blocks = 0, entries = 0
        for layer in table {
            for b in layer {
                b.bytesByFormat(into: &d, scales: &scales)
                meta += KVBlock.metadataBytes(rows: b.rowCapacity, policy: b.policy)
                blocks += 1
                entries += b.n
            }
        }
        return Memory(allocatedBytes: byteCount, usedBytes: usedByteCount, fp32Bytes: d[.fp32] ?? 0, fp16Bytes: d[.fp16] ?? 0,
                      int8Bytes: d[.int8] ?? 0, scaleBytes: scales, metadataBytes: meta, blocks: blocks, entries: entries)
    }

    /// One block's description (tests, reports).
    public struct BlockInfo: Sendable, Equatable {
        public var positions: [Int]
        public var keyFormats: [KVFormat]
        public var valueFormats: [KVFormat]
        public var sealed: Bool
        public var policy: KVPolicy
        public var provenance: Provenance
        public var byteCount: Int
    }

    public func blocks(layer: Int) -> [BlockInfo] {
        guard table.indices.contains(layer) else { return [] }
        sealPending(layer: layer)
        return table[layer].map {
            BlockInfo(positions: $0.positions.map(Int.init), keyFormats: $0.kFormat, valueFormats: $0.vFormat, sealed: $0.sealed,
                      policy: $0.policy, provenance: $0.provenance, byteCount: $0.byteCount)
        }
    }

    /// Positions whose entries layer `layer` still holds, ascending.
    public func retainedPositions(layer: Int) -> [Int] {
        guard table.indices.contains(layer) else { return [] }
        return table[layer].flatMap { $0.positions.map(Int.init) }
    }

    // MARK: Model interface

    /// Checks that `needed` positions in total fit the context. Blocks are allocated on append.
    public func reserve(_ needed: Int) -> Bool { needed <= maxCapacity }

    /// Appends the keys and values of positions `count ..< count + rows` to layer `layer`:
    /// `keys`/`values` are `rows × kvDim` floats. At layer 0 this also checks the budget for all
    /// layers (throwing before anything is stored) and records `tokens` for prefix reuse.
    public func append(layer: Int, keys: UnsafePointer<Float>, values: UnsafePointer<Float>, rows: Int, tokens: [Int]? = nil) throws {
        guard table.indices.contains(layer), rows > 0 else { return }
        if layer == 0 {
            // Entries past `count` are left over from a pass that threw (e.g. another sequence of
            // the batch was over budget): drop them.
            if table.contains(where: { ($0.last?.positions.last).map { Int($0) >= count } ?? false }) { truncate(to: count) }
            try makeRoom(forAppending: rows)
            if tokenIds.count > count { tokenIds.removeLast(tokenIds.count - count) }
            while tokenIds.count < count { tokenIds.append(-1) }
            for r in 0..<rows { tokenIds.append(Int32(truncatingIfNeeded: tokens.map { r < $0.count ? $0[r] : -1 } ?? -1)) }
        }
        for r in 0..<rows {
            let pos = count + r
            let pol = policy(at: pos), prov = provenance(at: pos)
            var tail = table[layer].last
            if let t = tail, !t.sealed, t.isFull || (t.policy != pol && !t.policy.sharesBlocks(with: pol)) || t.provenance != prov {
                close(layer: layer)
                tail = nil
            }
            // (a change of storage alone: the staging block takes this row too, in the finer storage)
            if let t = tail, !t.sealed, t.policy != pol { t.share(with: pol) }
            if tail == nil || tail?.sealed == true {
                let b = KVBlock.staging(kvHeads: kvHeads, headDim: headDim, blockSize: blockSize, policy: pol, provenance: prov)
                table[layer].append(b)
                tail = b
            }
            tail?.append(position: pos, k: keys + r * kvDim, v: values + r * kvDim)
            if let t = tail, t.isFull { close(layer: layer) }
        }
    }

    /// Closes the layer's staging block to appends; its encoding waits for the layer's attention.
    private func close(layer: Int) {
        guard let t = table[layer].last, !t.sealed else { return }
        t.close()
        pendingSeal[layer].append(table[layer].count - 1)
    }

    /// Encodes the layer's closed blocks in their policies' formats (see `pendingSeal`).
    private func sealPending(layer: Int, earlierOnly: Bool = false) {
        for i in pendingEarlier[layer] where table[layer].indices.contains(i) { table[layer][i] = table[layer][i].sealedForm() }
        pendingEarlier[layer].removeAll(keepingCapacity: true)
        guard !earlierOnly else { return }
        for i in pendingSeal[layer] where table[layer].indices.contains(i) { table[layer][i] = table[layer][i].sealedForm() }
        pendingSeal[layer].removeAll(keepingCapacity: true)
    }

    private func sealPending() { for l in 0..<layers { sealPending(layer: l) } }

    /// `LlamaModel.forward` is about to run the next micro-batch of one call: the blocks closed
    /// two micro-batches ago are encoded, the last one's wait (see `pendingSeal`).
    func beginMicroBatch() {
        if inCall {
            for l in 0..<layers {
                sealPending(layer: l, earlierOnly: true)
                swap(&pendingEarlier[l], &pendingSeal[l])
            }
        }
        inCall = true
    }

    /// The call is over: every closed block is encoded.
    func endCall() {
        inCall = false
        sealPending()
    }

    /// Layer `layer`'s block storage appended to `spans`, for prefetching before its attention (the
    /// weights streamed through the caches since the last step have evicted it). Appends rather
    /// than returns: a batched step asks every sequence's cache for every layer.
    public func appendMemory(layer: Int, to spans: inout [UnsafeRawBufferPointer]) {
        guard table.indices.contains(layer) else { return }
        for b in table[layer] { spans.append(b.memory) }
    }

    /// Causal attention of `tokens` queries (`q`: `tokens × heads·headDim`, the positions just
    /// appended) over layer `layer`'s retained entries; writes `out` (same shape). `fast`: fp32
    /// blocks go through the blocked kernel as well (equal to rounding); otherwise an all-fp32
    /// layer uses the kernel that is bit-identical to contiguous attention.
    public func attention(layer: Int, q: UnsafePointer<Float>, out: UnsafeMutablePointer<Float>, tokens: Int,
                          heads: Int, scale: Float, fast: Bool = false, pool: ThreadPool) throws {
        guard table.indices.contains(layer), tokens > 0 else { return }
        let blocks = table[layer]
        slabs.removeAll(keepingCapacity: true)
        var total = 0, needMass = false
        for b in blocks {
            for h in 0..<kvHeads { slabs.append(b.slab(h)) }
            total += b.n
            if b.tracksMass { needMass = true }
        }
        let base = total - tokens
        guard base >= 0 else { throw KVCacheError.unsupportedShape("\(tokens) queries but \(total) entries in layer \(layer)") }
        if needMass {
            massBuffer.removeAll(keepingCapacity: true)
            massBuffer.append(contentsOf: repeatElement(0, count: heads * total))
        }
        let rc: Int32 = slabs.withUnsafeBufferPointer { sp in
            if needMass {
                return massBuffer.withUnsafeMutableBufferPointer { mp in
                    kv_attention(q, out, Int64(tokens), Int64(base), Int32(heads), Int32(kvHeads), Int32(headDim), sp.baseAddress,
                                 Int64(blocks.count), scale, mp.baseAddress, fast ? 1 : 0, pool.handle)
                }
            }
            return kv_attention(q, out, Int64(tokens), Int64(base), Int32(heads), Int32(kvHeads), Int32(headDim), sp.baseAddress,
                                Int64(blocks.count), scale, nil, fast ? 1 : 0, pool.handle)
        }
        // (after the mass update below too: an encoded block copies its rows' mass)
        defer { if !inCall { sealPending(layer: layer) } }
        guard rc == 0 else { throw KVCacheError.unsupportedShape("heads \(heads), KV heads \(kvHeads), head size \(headDim)") }
        if needMass {
            var e = 0
            for b in blocks {
                if b.tracksMass {
                    for r in 0..<b.n {
                        var s: Float = 0
                        for h in 0..<heads { s += massBuffer[h * total + e + r] }
                        b.mass[r] += s
                    }
                }
                e += b.n
            }
        }
    }

    /// Records that positions up to `newCount` are filled and applies the retention policies.
    public func advance(to newCount: Int) {
        // (retention rebuilds and removes blocks: the pending indices would not survive it)
        if !inCall || anyRetention { sealPending() }
        count = newCount
        applyRetention()
    }

    /// Forgets positions from `newCount` on (e.g. to reuse a common prefix).
    public func truncate(to newCount: Int) {
        sealPending()
        let n = max(0, min(count, newCount))
        for l in 0..<layers {
            var out: [KVBlock] = []
            for b in table[l] {
                let keep = (0..<b.n).filter { Int(b.positions[$0]) < n }
                if keep.count == b.n { out.append(b); continue }
                if keep.isEmpty { continue }
                out.append(b.rebuilt(keep: keep, kFmt: b.kFormat, vFmt: b.vFormat, sealed: b.sealed,
                                     rowCapacity: b.sealed ? keep.count : b.rowCapacity))
            }
            table[l] = out
        }
        if tokenIds.count > n { tokenIds.removeLast(tokenIds.count - n) }
        count = n
    }

    // MARK: Prefix reuse

    /// Length of the longest prefix of `tokens` this cache can serve to a request whose positions
    /// would be computed with `provenance[p]` (one per position, or one for all): positions whose
    /// token ids match, whose blocks' provenance is exactly equal, and which every layer still
    /// holds unevicted and unmerged. Truncate to it and run the rest.
    public func reusablePrefix(tokens: [Int], provenance: [Provenance]) -> Int {
        var limit = min(tokens.count, count, tokenIds.count)
        for p in 0..<limit where Int(tokenIds[p]) != tokens[p] { limit = p; break }
        for l in 0..<layers {
            var expect = 0
            outer: for b in table[l] {
                for (r, p32) in b.positions.enumerated() {
                    let p = Int(p32)
                    if p >= limit { break outer }
                    let want = provenance.isEmpty ? nil : provenance[min(p, provenance.count - 1)]
                    let merged = b.tracksWeight && r < b.weight.count && b.weight[r] != 1
                    if p != expect || want != b.provenance || merged { limit = min(limit, expect); break outer }
                    expect += 1
                }
            }
            limit = min(limit, expect)
        }
        return limit
    }

    /// Prompt tokens a request should still compute after adopting a prefix, so that they go
    /// through the kernels a prefill of the whole prompt uses: in `fast` precision fewer take the
    /// per-pair kernels, whose bits differ (`cw_matmul_uniform_min_tokens`; `PrefixReuseTests`).
    public static let minTokensAfterAdoptedPrefix = Int(cw_matmul_uniform_min_tokens())

    /// Makes this empty cache start with the first whole blocks of `donor` that hold `tokens`'
    /// leading positions — the same block objects, not copies (the prompt caches of the server and
    /// the engine: requests that share a system prompt or a conversation so far skip its prefill).
    /// Returns the positions taken (a multiple of `blockSize`, at most `limit`; 0 leaves the cache
    /// as it was).
    ///
    /// Only blocks that nothing changes any more are shared: sealed, whole (`blockSize` rows,
    /// positions contiguous from 0 in every layer), kept whole by their policy (no window, h2o or
    /// dedupe: those evict rows or update per-row weights in place) and with matching token ids.
    /// A later degradation under the budget, a truncation or retention in either cache replaces
    /// table entries with new blocks and never writes to a shared one. The caller must know that
    /// the donor's positions were computed with the same weights and adapter (`Provenance` is not
    /// consulted here). Both caches must have the same shape; `byteCount` counts shared blocks in
    /// each cache that holds them.
    @discardableResult
    public func adoptPrefix(from donor: KVCache, tokens: [Int], limit: Int) -> Int {
        guard count == 0, table.allSatisfy({ $0.isEmpty }), donor !== self, donor.layers == layers, donor.kvDim == kvDim,
              donor.kvHeads == kvHeads, donor.blockSize == blockSize else { return 0 }
        donor.sealPending()
        var n = min(limit, tokens.count, donor.count, donor.tokenIds.count, maxCapacity)
        for p in 0..<max(0, n) where Int(donor.tokenIds[p]) != tokens[p] { n = p; break }
        var blocks = max(0, n) / blockSize
        for l in 0..<layers {
            var ok = 0
            for (i, b) in donor.table[l].prefix(blocks).enumerated() {
                guard b.sealed, b.n == blockSize, b.policy.retention == .all, !b.tracksWeight,
                      b.positions.first == Int32(i * blockSize), b.positions.last == Int32((i + 1) * blockSize - 1) else { break }
                ok += 1
            }
            blocks = min(blocks, ok)
        }
        guard blocks > 0 else { return 0 }
        n = blocks * blockSize
        for l in 0..<layers { table[l] = Array(donor.table[l].prefix(blocks)) }
        tokenIds = Array(donor.tokenIds.prefix(n))
        count = n
        return n
    }

    // MARK: Budget

    private func projectedBytes(appending rows: Int) -> Int {
        var extra = 0
        for l in 0..<layers {
            // Free slots of the staging block first; then new fp32 staging blocks.
            var free = 0
            if let t = table[l].last, !t.sealed { free = t.rowCapacity - t.n }
            let newBlocks = max(0, (rows - free + blockSize - 1) / blockSize)
            let per = kvHeads * blockSize * headDim * 8 + KVBlock.metadataBytes(rows: blockSize, policy: policy(at: count))
            extra += newBlocks * per
        }
        return byteCount + extra
    }

    /// Degrades and evicts easy blocks until appending `rows` positions fits `kvBudget`.
    public func makeRoom(forAppending rows: Int) throws {
        guard let budget = kvBudget else { return }
        if projectedBytes(appending: rows) <= budget { return }
        sealPending()
        let projected = projectedBytes(appending: rows)
        if projected <= budget { return }
        // Refuse before touching anything when even the most that degradation and eviction can do is not enough.
        let floor = projected - byteCount + minimalBytes()
        if floor > budget { throw KVCacheError.overBudget(neededBytes: floor, budgetBytes: budget) }
        // 1–2. Coarsen sealed easy blocks, oldest first: every fp32 head to fp16, then fp16 to int8.
        for target in [KVFormat.fp32, .fp16] {
            for (i, layerPos) in oldestFirstEasyBlocks() {
                let b = table[i][layerPos]
                guard b.finestFormat == target, let d = b.degraded() else { continue }
                table[i][layerPos] = d
                let projected = projectedBytes(appending: rows)
        if projected <= budget { return }
        // Refuse before touching anything when even the most that degradation and eviction can do is not enough.
        let floor = projected - byteCount + minimalBytes()
        if floor > budget { throw KVCacheError.overBudget(neededBytes: floor, budgetBytes: budget) }
            }
        }
        // 3. Evict the oldest evictable entries (window / h2o policies; never sinks), block by block.
        var progress = true
        while projectedBytes(appending: rows) > budget && progress {
            progress = false
            for l in 0..<layers {
                guard let idx = table[l].firstIndex(where: { b in b.sealed && evictableRows(b).count > 0 }) else { continue }
                let b = table[l][idx]
                let evict = Set(evictableRows(b))
                let keep = (0..<b.n).filter { !evict.contains($0) }
                if keep.isEmpty { table[l].remove(at: idx) }
                else { table[l][idx] = b.rebuilt(keep: keep, kFmt: b.kFormat, vFmt: b.vFormat, sealed: true, rowCapacity: keep.count) }
                progress = true
            }
        }
        let needed = projectedBytes(appending: rows)
        if needed > budget { throw KVCacheError.overBudget(neededBytes: needed, budgetBytes: budget) }
    }

    /// `byteCount` after every possible degradation and eviction of easy blocks.
    private func minimalBytes() -> Int {
        var total = 0
        for layer in table {
            for b in layer {
                guard b.sealed, b.policy.isDegradable else { total += b.byteCount; continue }
                let rows = b.n - evictableRows(b).count
                if rows == 0 { continue }
                total += b.kvHeads * (rows * b.headDim * 2 + b.headDim * 4 + rows * 4) + KVBlock.metadataBytes(rows: rows, policy: b.policy)
            }
        }
        return total
    }

    /// Rows of `b` the budget may evict: all but sinks, for window and h2o policies.
    private func evictableRows(_ b: KVBlock) -> [Int] {
        switch b.policy.retention {
        case .window(let sinks, _): return (0..<b.n).filter { Int(b.positions[$0]) >= sinks }
        case .heavyHitters: return Array(0..<b.n)
        default: return []
        }
    }

    /// (layer, index) of sealed easy blocks, oldest first positions across layers.
    private func oldestFirstEasyBlocks() -> [(Int, Int)] {
        var out: [(Int, Int, Int32)] = []
        for l in 0..<layers {
            for (i, b) in table[l].enumerated() where b.sealed && b.policy.isDegradable {
                out.append((l, i, b.positions.first ?? 0))
            }
        }
        return out.sorted { ($0.2, $0.0) < ($1.2, $1.0) }.map { ($0.0, $0.1) }
    }

    // MARK: Retention

    private func applyRetention() {
        guard anyRetention else { return }
        for l in 0..<layers {
            var evict: [ObjectIdentifier: Set<Int>] = [:]
            // Window.
            for b in table[l] {
                if case .window(let sinks, let recent) = b.policy.retention {
                    for r in 0..<b.n {
                        let p = Int(b.positions[r])
                        if p >= sinks && p < count - recent { evict[ObjectIdentifier(b), default: []].insert(r) }
                    }
                }
            }
            // Heavy hitters: per distinct h2o policy in this layer.
            var h2oPolicies: [KVPolicy] = []
            for b in table[l] where b.tracksMass && !h2oPolicies.contains(b.policy) { h2oPolicies.append(b.policy) }
            for pol in h2oPolicies {
                guard case .heavyHitters(let budget, let recent) = pol.retention else { continue }
                var cands: [(b: KVBlock, r: Int, pos: Int, mass: Float)] = []
                for b in table[l] where b.policy == pol {
                    for r in 0..<b.n { cands.append((b, r, Int(b.positions[r]), b.mass[r])) }
                }
                guard cands.count > budget else { continue }
                let recentCut = count - recent
                let old = cands.filter { $0.pos < recentCut }
                let keptRecent = cands.count - old.count
                let slots = max(0, budget - keptRecent)
                // Keep the `slots` heaviest old entries (ties: the later position).
                let ranked = old.sorted { ($0.mass, $0.pos) > ($1.mass, $1.pos) }
                for c in ranked.dropFirst(slots) { evict[ObjectIdentifier(c.b), default: []].insert(c.r) }
            }
            var out: [KVBlock] = []
            for b in table[l] {
                var cur = b
                if case .dedupe(let th) = b.policy.retention { cur = dedupe(cur, threshold: th) }
                if let e = evict[ObjectIdentifier(b)], !e.isEmpty {
                    let keep = (0..<cur.n).filter { !e.contains($0) }
                    if keep.isEmpty { continue }
                    cur = cur.rebuilt(keep: keep, kFmt: cur.kFormat, vFmt: cur.vFormat, sealed: cur.sealed,
                                      rowCapacity: cur.sealed ? keep.count : cur.rowCapacity)
                }
                out.append(cur)
            }
            table[l] = out
        }
    }

    /// Merges rows of `b` (from `dedupeChecked` on) into their predecessor when the keys' cosine
    /// similarity is ≥ `threshold` (see `KVPolicy.Retention.dedupe`). Evictions by window/h2o are
    /// never combined with dedupe in one block (one policy per block), so row indices stay valid.
    private func dedupe(_ b: KVBlock, threshold: Float) -> KVBlock {
        let n = b.n, hd = headDim
        guard n >= 2, b.dedupeChecked < n else { b.dedupeChecked = n; return b }
        var k = [[Float]](repeating: [Float](repeating: 0, count: n * hd), count: kvHeads)
        var v = k
        for h in 0..<kvHeads {
            k[h].withUnsafeMutableBufferPointer { p in if let a = p.baseAddress { b.widen(head: h, values: false, into: a) } }
            v[h].withUnsafeMutableBufferPointer { p in if let a = p.baseAddress { b.widen(head: h, values: true, into: a) } }
        }
        var keep: [Int] = [0]
        var weight = b.weight.count == n ? b.weight : [Float](repeating: 1, count: n)
        var merged = false
        for r in 1..<n {
            let prev = keep[keep.count - 1]
            if r >= max(1, b.dedupeChecked) {
                var dot: Double = 0, na: Double = 0, nb: Double = 0
                for h in 0..<kvHeads {
                    for d in 0..<hd {
                        let x = Double(k[h][prev * hd + d]), y = Double(k[h][r * hd + d])
                        dot += x * y; na += x * x; nb += y * y
                    }
                }
                let cos = na > 0 && nb > 0 ? dot / (na * nb).squareRoot() : 0
                if cos >= Double(threshold) {
                    let wa = weight[prev], wb = weight[r]
                    for h in 0..<kvHeads {
                        for d in 0..<hd { v[h][prev * hd + d] = (wa * v[h][prev * hd + d] + wb * v[h][r * hd + d]) / (wa + wb) }
                    }
                    weight[prev] = wa + wb
                    merged = true
                    continue
                }
            }
            keep.append(r)
        }
        b.dedupeChecked = n
        guard merged else { return b }
        b.weight = weight
        let nb = b.rebuilt(keep: keep, kFmt: b.kFormat, vFmt: b.vFormat, sealed: b.sealed,
                           rowCapacity: b.sealed ? keep.count : b.rowCapacity, vOverride: v)
        nb.dedupeChecked = keep.count
        return nb
    }
}
