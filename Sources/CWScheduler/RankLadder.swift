import CWKernels
import CWLoRA
import CWTransformer
import Foundation

/// A problem building, loading or applying a scheduler artefact.
public struct SchedulerError: Error, CustomStringConvertible, Equatable {
    public let message: String
    public init(_ message: String) { self.message = message }
    public var description: String { message }
}

/// One tier block of a module's ladder: directions `[start, end)` (what a policy's tier covers).
public struct LadderBlock: Sendable, Equatable {
    public let start: Int
    public let end: Int
    public var width: Int { end - start }
}

/// The ladder of one adapted projection: `s·B·A = U·S·Vᵀ`, directions ordered by singular value
/// (or in the adapter's own order when `ordered`).
///
/// Stored as two row factors (`LowRankFactor`): `Vᵀ` (`rank × in`) and `(U·S)ᵀ` (`rank × out`), so
/// that the rank-k slice — or any direction range `[lo, hi)` — is a prefix/range of rows: applying
/// rank k is one down and one up product of width k, whatever tier boundaries the ladder has.
public final class LadderModule: @unchecked Sendable {
    public let layer: Int
    public let projection: Projection
    public let inFeatures: Int
    public let outFeatures: Int
    public let rank: Int
    /// σ_i of `s·B·A` (descending), or for an order-preserving ladder ‖s·B_i‖·‖A_i‖ (a proxy).
    public let singularValues: [Double]
    /// Tier block ends (ascending, last == rank).
    public let boundaries: [Int]
    public let blocks: [LadderBlock]
    /// `Vᵀ`: direction i is row i (`rank × in`).
    public let vtFactor: LowRankFactor
    /// `(U·S)ᵀ`: direction i is row i (`rank × out`).
    public let usFactor: LowRankFactor

    /// `us`: `U·S`, row-major `out × rank`; `vt`: `Vᵀ`, row-major `rank × in`.
    init(layer: Int, projection: Projection, inFeatures: Int, outFeatures: Int, singularValues: [Double],
         boundaries: [Int], us: [Float], vt: [Float], storage: LowRankFactor.Storage = .f32) throws {
        let r = singularValues.count
        guard us.count == outFeatures * r, vt.count == r * inFeatures else {
            throw SchedulerError("ladder of \(projection.hfModuleName(layer: layer)): U·S has \(us.count) values, Vᵀ \(vt.count); rank \(r) needs \(outFeatures * r) and \(r * inFeatures)")
        }
        guard boundaries.last == r, zip(boundaries, [0] + boundaries).allSatisfy({ $0 > $1 }) else {
            throw SchedulerError("ladder of \(projection.hfModuleName(layer: layer)): tier boundaries \(boundaries) do not cut rank \(r)")
        }
        self.layer = layer
        self.projection = projection
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.rank = r
        self.singularValues = singularValues
        self.boundaries = boundaries
        blocks = zip([0] + boundaries, boundaries).map { LadderBlock(start: $0, end: $1) }
        usFactor = LowRankFactor(transposing: us, rows: outFeatures, cols: r, storage: storage)
        vtFactor = LowRankFactor(rows: r, cols: inFeatures, storage: storage, values: vt)
    }

    /// `U·S` as row-major `out × rank` fp32.
    public func usMatrix() -> [Float] {
        var m = [Float](repeating: 0, count: outFeatures * rank)
        for i in 0..<rank { for o in 0..<outFeatures { m[o * rank + i] = usFactor.value(i, o) } }
        return m
    }

    /// `Vᵀ` as row-major `rank × in` fp32.
    public func vtMatrix() -> [Float] { vtFactor.floats() }

    /// The same module with its factors stored as `storage`.
    public func converted(to storage: LowRankFactor.Storage) throws -> LadderModule {
        if storage == vtFactor.storage { return self }
        return try LadderModule(layer: layer, projection: projection, inFeatures: inFeatures, outFeatures: outFeatures,
                                singularValues: singularValues, boundaries: boundaries, us: usMatrix(), vt: vtMatrix(), storage: storage)
    }

    /// Bytes of the stored factors.
    public var byteCount: Int { vtFactor.bytes + usFactor.bytes }

    public var moduleName: String { projection.hfModuleName(layer: layer) }

    /// Σ_{i<k} σ_i² / Σ σ_i² (1 for an all-zero module).
    public func energy(rank k: Int) -> Double {
        let total = singularValues.reduce(0) { $0 + $1 * $1 }
        guard total > 0 else { return 1 }
        return singularValues.prefix(max(0, k)).reduce(0) { $0 + $1 * $1 } / total
    }

    /// Element `(o, i)` of `U·S` (test/diagnostic access).
    public func us(_ o: Int, _ i: Int) -> Float {
        guard i >= 0, i < rank, o >= 0, o < outFeatures else { return 0 }
        return usFactor.value(i, o)
    }

    /// Element `(i, c)` of `Vᵀ`.
    public func vt(_ i: Int, _ c: Int) -> Float {
        guard i >= 0, i < rank, c >= 0, c < inFeatures else { return 0 }
        return vtFactor.value(i, c)
    }

    /// The rank-k approximation `Σ_{i<k} US_i Vt_i` as a dense `out × in` Double matrix (diagnostics, tests,
    /// merging). Never used on the inference path.
    public func dense(rank k: Int) -> [Double] {
        var m = [Double](repeating: 0, count: outFeatures * inFeatures)
        let kk = min(k, rank)
        for i in 0..<kk {
            for o in 0..<outFeatures {
                let u = Double(us(o, i))
                if u == 0 { continue }
                for c in 0..<inFeatures { m[o * inFeatures + c] += u * Double(vt(i, c)) }
            }
        }
        return m
    }
}

// MARK: - Dense linear algebra in Double (small problems only)

/// Small dense factorizations used to build the ladder. Matrices are row-major `[Double]`.
public enum SmallLinearAlgebra {
    /// Thin QR of a `rows × cols` matrix (rows ≥ cols not required) by classical Gram–Schmidt with
    /// re-orthogonalization (CGS2). Columns that vanish (rank deficiency) get a zero Q column and a
    /// zero R row, so `Q·R` still equals the input. Returns Q (`rows × cols`) and R (`cols × cols`).
    public static func thinQR(_ a: [Double], rows: Int, cols: Int) -> (q: [Double], r: [Double]) {
        var q = [Double](repeating: 0, count: rows * cols)
        var r = [Double](repeating: 0, count: cols * cols)
        var v = [Double](repeating: 0, count: rows)
        for j in 0..<cols {
            var orig = 0.0
            for i in 0..<rows { v[i] = a[i * cols + j]; orig += v[i] * v[i] }
            orig = orig.squareRoot()
            for _ in 0..<2 {
                for p in 0..<j {
                    var c = 0.0
                    for i in 0..<rows { c += q[i * cols + p] * v[i] }
                    r[p * cols + j] += c
                    for i in 0..<rows { v[i] -= c * q[i * cols + p] }
                }
            }
            var n = 0.0
            for i in 0..<rows { n += v[i] * v[i] }
            n = n.squareRoot()
            if n > 1e-13 * orig && n > 0 {
                r[j * cols + j] = n
                for i in 0..<rows { q[i * cols + j] = v[i] / n }
            }
        }
        return (q, r)
    }

    /// One-sided (Hestenes) Jacobi SVD of a `rows × cols` matrix: `A = U·diag(s)·Vᵀ` with
    /// `min(rows, cols)` singular values in descending order. U is `rows × n`, V is `cols × n`
    /// (row-major), n = min(rows, cols). Zero singular values get zero U columns.
    public static func jacobiSVD(_ a: [Double], rows: Int, cols: Int) -> (u: [Double], s: [Double], v: [Double]) {
        if rows < cols {
            // SVD of Aᵀ, then swap.
            var t = [Double](repeating: 0, count: rows * cols)
            for i in 0..<rows { for j in 0..<cols { t[j * rows + i] = a[i * cols + j] } }
            let r = jacobiSVD(t, rows: cols, cols: rows)
            return (r.v, r.s, r.u)
        }
        let m = rows, n = cols
        var g = a  // m × n, columns get orthogonalized
        var v = [Double](repeating: 0, count: n * n)
        for i in 0..<n { v[i * n + i] = 1 }
        let eps = 1e-15
        for _ in 0..<80 {
            var rotated = false
            for p in 0..<max(0, n - 1) {
                for qq in (p + 1)..<n {
                    var alpha = 0.0, beta = 0.0, gamma = 0.0
                    for i in 0..<m {
                        let x = g[i * n + p], y = g[i * n + qq]
                        alpha += x * x; beta += y * y; gamma += x * y
                    }
                    if gamma == 0 || abs(gamma) <= eps * (alpha * beta).squareRoot() { continue }
                    rotated = true
                    let zeta = (beta - alpha) / (2 * gamma)
                    let t = (zeta >= 0 ? 1.0 : -1.0) / (abs(zeta) + (1 + zeta * zeta).squareRoot())
                    let c = 1 / (1 + t * t).squareRoot(), s = c * t
                    for i in 0..<m {
                        let x = g[i * n + p], y = g[i * n + qq]
                        g[i * n + p] = c * x - s * y
                        g[i * n + qq] = s * x + c * y
                    }
                    for i in 0..<n {
                        let x = v[i * n + p], y = v[i * n + qq]
                        v[i * n + p] = c * x - s * y
                        v[i * n + qq] = s * x + c * y
                    }
                }
            }
            if !rotated { break }
        }
        var sv = [Double](repeating: 0, count: n)
        for j in 0..<n {
            var s = 0.0
            for i in 0..<m { s += g[i * n + j] * g[i * n + j] }
            sv[j] = s.squareRoot()
        }
        let order = (0..<n).sorted { sv[$0] > sv[$1] || (sv[$0] == sv[$1] && $0 < $1) }
        var u = [Double](repeating: 0, count: m * n), vs = [Double](repeating: 0, count: n * n), ss = [Double](repeating: 0, count: n)
        for (k, j) in order.enumerated() {
            ss[k] = sv[j]
            for i in 0..<n { vs[i * n + k] = v[i * n + j] }
            if sv[j] > 0 { for i in 0..<m { u[i * n + k] = g[i * n + j] / sv[j] } }
        }
        return (u, ss, vs)
    }

    /// Thin SVD of `s·B·A` (B `out × r`, A `r × in`, row-major fp32) from the small problem only:
    /// QR of B and of Aᵀ, Jacobi SVD of the r×r core `s·R_B·R_Aᵀ`. Never forms `out × in`.
    /// Returns U·S (`out × r`), Vᵀ (`r × in`) and σ (descending).
    public static func lowRankSVD(b: [Float], a: [Float], out: Int, inFeatures: Int, rank r: Int, scale: Double)
        -> (us: [Double], vt: [Double], s: [Double]) {
        let bd = b.map(Double.init)
        var at = [Double](repeating: 0, count: inFeatures * r)
        for k in 0..<r { for c in 0..<inFeatures { at[c * r + k] = Double(a[k * inFeatures + c]) } }
        let (qb, rb) = thinQR(bd, rows: out, cols: r)
        let (qa, ra) = thinQR(at, rows: inFeatures, cols: r)
        // core = s · R_B · R_Aᵀ
        var core = [Double](repeating: 0, count: r * r)
        for i in 0..<r {
            for j in 0..<r {
                var acc = 0.0
                for k in 0..<r { acc += rb[i * r + k] * ra[j * r + k] }
                core[i * r + j] = scale * acc
            }
        }
        let (uc, sc, vc) = jacobiSVD(core, rows: r, cols: r)
        var us = [Double](repeating: 0, count: out * r)
        for o in 0..<out {
            for i in 0..<r {
                var acc = 0.0
                for k in 0..<r { acc += qb[o * r + k] * uc[k * r + i] }
                us[o * r + i] = acc * sc[i]
            }
        }
        var vt = [Double](repeating: 0, count: r * inFeatures)
        for i in 0..<r {
            for c in 0..<inFeatures {
                var acc = 0.0
                for k in 0..<r { acc += qa[c * r + k] * vc[k * r + i] }
                vt[i * inFeatures + c] = acc
            }
        }
        return (us, vt, sc)
    }
}

// MARK: - The ladder

/// Per-module SVD rank ladders for a whole adapter, in one model's q/k row order.
///
/// Rank-k application of a module costs rank k: one down product with the first k rows of Vᵀ and
/// one up product with the first k rows of (U·S)ᵀ (`LowRank`), for any k. The tier boundaries only
/// say which ranks policies use and how the cache file groups directions.
public final class RankLadder: @unchecked Sendable {
    public let modules: [LadderModule]
    public let maxRank: Int
    /// Tier ranks the blocks are cut at (before clipping to each module's rank).
    public let tierRanks: [Int]
    /// q/k row order of the U·S rows.
    public let qkRowOrder: RopeStyle
    /// The `contentHash` of the adapter it was built from.
    public let adapterHash: String
    /// True when directions keep the adapter's own order (AdaLoRA/DyLoRA), not sorted by σ.
    public let ordered: Bool
    /// Module of (layer, projection) at `layer · Projection.count + projection.index` (nil: not adapted).
    /// A flat array, not a keyed dictionary: `module(layer:projection:)` runs for every projection
    /// of every forward call.
    let table: [LadderModule?]

    init(modules: [LadderModule], tierRanks: [Int], qkRowOrder: RopeStyle, adapterHash: String, ordered: Bool) {
        self.modules = modules.sorted { ($0.layer, $0.projection.index) < ($1.layer, $1.projection.index) }
        self.maxRank = modules.map(\.rank).max() ?? 0
        self.tierRanks = tierRanks
        self.qkRowOrder = qkRowOrder
        self.adapterHash = adapterHash
        self.ordered = ordered
        let layers = (modules.map(\.layer).max() ?? -1) + 1
        var t = [LadderModule?](repeating: nil, count: layers * Projection.count)
        for m in modules where m.layer >= 0 { t[m.layer * Projection.count + m.projection.index] = m }
        self.table = t
    }

    @inline(__always)
    public func module(layer: Int, projection: Projection) -> LadderModule? {
        let i = layer * Projection.count + projection.index
        return layer >= 0 && i < table.count ? table[i] : nil
    }

    /// Powers of two up to `maxRank` (and maxRank itself).
    public static func defaultTiers(maxRank: Int) -> [Int] {
        var t: [Int] = []
        var k = 1
        while k < maxRank { t.append(k); k *= 2 }
        if maxRank > 0 { t.append(maxRank) }
        return t
    }

    /// Builds the ladder of `adapter` in its own q/k row order. `preserveOrder` (default: true for
    /// AdaLoRA adapters) keeps the adapter's direction order instead of an SVD.
    public convenience init(adapter: LoRAAdapter, tierRanks: [Int]? = nil, preserveOrder: Bool? = nil) throws {
        let ordered = preserveOrder ?? (adapter.peftType.uppercased() == "ADALORA")
        let maxRank = adapter.modules.map(\.rank).max() ?? 0
        guard maxRank > 0 else { throw SchedulerError("\(adapter.path): the adapter has no modules with rank > 0") }
        let tiers = Array(Set((tierRanks ?? RankLadder.defaultTiers(maxRank: maxRank)).filter { $0 > 0 } + [maxRank])).sorted()
        var mods: [LadderModule] = []
        for m in adapter.modules {
            if m.magnitude != nil { throw SchedulerError("\(m.moduleName) is a DoRA module: its delta is not low-rank additive, no ladder") }
            if m.bias != nil || m.replacedBias != nil { throw SchedulerError("\(m.moduleName) has an adapter bias: not supported by the rank ladder") }
            guard m.a.count == m.rank * m.inFeatures, m.b.count == m.outFeatures * m.rank, m.rank > 0 else {
                throw SchedulerError("\(m.moduleName): A/B sizes do not match rank \(m.rank)")
            }
            let r = m.rank, out = m.outFeatures, inF = m.inFeatures
            var us: [Double], vt: [Double], s: [Double]
            if ordered {
                us = [Double](repeating: 0, count: out * r)
                for o in 0..<out { for i in 0..<r { us[o * r + i] = m.scale * Double(m.b[o * r + i]) } }
                vt = m.a.map(Double.init)
                s = (0..<r).map { i in
                    var nb = 0.0, na = 0.0
                    for o in 0..<out { nb += us[o * r + i] * us[o * r + i] }
                    for c in 0..<inF { na += vt[i * inF + c] * vt[i * inF + c] }
                    return (nb * na).squareRoot()
                }
            } else {
                (us, vt, s) = SmallLinearAlgebra.lowRankSVD(b: m.b, a: m.a, out: out, inFeatures: inF, rank: r, scale: m.scale)
            }
            let bounds = Array(Set(tiers.map { min($0, r) } + [r])).sorted()
            mods.append(try LadderModule(layer: m.layer, projection: m.projection, inFeatures: inF, outFeatures: out,
                                         singularValues: s, boundaries: bounds, us: us.map { Float($0) }, vt: vt.map { Float($0) }))
        }
        self.init(modules: mods, tierRanks: tiers, qkRowOrder: adapter.qkRowOrder, adapterHash: adapter.contentHash, ordered: ordered)
    }

    /// Builds the ladder for `model`: the adapter's q/k rows put in the model's RoPE order first.
    public static func build(adapter: LoRAAdapter, model: LlamaModel, tierRanks: [Int]? = nil, preserveOrder: Bool? = nil) throws -> RankLadder {
        let c = model.config
        let a = try adapter.withRowOrder(c.ropeStyle, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        let built = try RankLadder(adapter: a, tierRanks: tierRanks, preserveOrder: preserveOrder)
        // Identified by the adapter as loaded (not by its row-permuted copy).
        let ladder = RankLadder(modules: built.modules, tierRanks: built.tierRanks, qkRowOrder: built.qkRowOrder,
                                adapterHash: adapter.contentHash, ordered: built.ordered)
        try ladder.check(model: model)
        return ladder
    }

    /// Checks shapes against a model.
    public func check(model: LlamaModel) throws {
        for m in modules {
            guard m.layer >= 0, m.layer < model.config.layers else { throw SchedulerError("\(m.moduleName): the model has \(model.config.layers) layers") }
            let w = model.weights.layers[m.layer].matrix(m.projection)
            guard w.rows == m.outFeatures, w.cols == m.inFeatures else {
                throw SchedulerError("\(m.moduleName) is [\(m.outFeatures), \(m.inFeatures)]; the model's matrix is [\(w.rows), \(w.cols)]")
            }
        }
    }

    /// This ladder with U·S rows of q/k permuted to `order` (SVD is equivariant to row permutations).
    public func withRowOrder(_ order: RopeStyle, heads: Int, kvHeads: Int, headDim: Int) throws -> RankLadder {
        if order == qkRowOrder { return self }
        let mods = try modules.map { m -> LadderModule in
            guard m.projection == .q || m.projection == .k else { return m }
            let nHead = m.projection == .q ? heads : kvHeads
            guard nHead * headDim == m.outFeatures else { throw SchedulerError("\(m.moduleName) has \(m.outFeatures) rows; \(nHead)×\(headDim) expected") }
            let p = RowOrder.permute(m.usMatrix(), width: m.rank, heads: nHead, headDim: headDim, toInterleaved: order == .interleaved)
            return try LadderModule(layer: m.layer, projection: m.projection, inFeatures: m.inFeatures, outFeatures: m.outFeatures,
                                    singularValues: m.singularValues, boundaries: m.boundaries, us: p, vt: m.vtMatrix(),
                                    storage: m.vtFactor.storage)
        }
        return RankLadder(modules: mods, tierRanks: tierRanks, qkRowOrder: order, adapterHash: adapterHash, ordered: ordered)
    }

    /// The same ladder with every module's factors stored as `storage` (fp16 halves the bytes read
    /// per token; the engine uses it with `--precision fast`).
    public func converted(to storage: LowRankFactor.Storage) throws -> RankLadder {
        RankLadder(modules: try modules.map { try $0.converted(to: storage) }, tierRanks: tierRanks, qkRowOrder: qkRowOrder,
                   adapterHash: adapterHash, ordered: ordered)
    }

    /// Bytes of all modules' factors.
    public var byteCount: Int { modules.reduce(0) { $0 + $1.byteCount } }

    /// Energy kept per module at each rank in `ranks`.
    public func energyReport(ranks: [Int]) -> [(module: String, energy: [Double])] {
        modules.map { m in (m.moduleName, ranks.map { m.energy(rank: $0) }) }
    }

    /// Mean over modules of the energy kept at rank k.
    public func meanEnergy(rank k: Int) -> Double {
        guard !modules.isEmpty else { return 0 }
        return modules.reduce(0) { $0 + $1.energy(rank: k) } / Double(modules.count)
    }

    // MARK: cache file

    struct FileHeader: Codable {
        var format: String
        var version: Int
        var qkRowOrder: String
        var adapterHash: String
        var ordered: Bool
        var tierRanks: [Int]
        var modules: [ModuleHeader]
    }

    struct ModuleHeader: Codable {
        var layer: Int
        var projection: String
        var inFeatures: Int
        var outFeatures: Int
        var boundaries: [Int]
        var singularValues: [Double]
        var offset: Int
        var count: Int
    }

    static let magic = Data("CWLADDR1".utf8)

    /// Writes the ladder: `CWLADDR1`, UInt32 LE header length, JSON header, fp32 LE data (each
    /// module's blocks, US then Vt), UInt64 LE FNV-1a of everything before it.
    public func write(to path: String) throws {
        var offset = 0
        var headers: [ModuleHeader] = []
        for m in modules {
            headers.append(ModuleHeader(layer: m.layer, projection: m.projection.rawValue, inFeatures: m.inFeatures, outFeatures: m.outFeatures,
                                        boundaries: m.boundaries, singularValues: m.singularValues, offset: offset, count: m.rank * (m.inFeatures + m.outFeatures)))
            offset += m.rank * (m.inFeatures + m.outFeatures)
        }
        let header = FileHeader(format: "chunkwise-rank-ladder", version: 1, qkRowOrder: qkRowOrder.rawValue, adapterHash: adapterHash,
                                ordered: ordered, tierRanks: tierRanks, modules: headers)
        let enc = JSONEncoder()
        enc.outputFormatting = [.sortedKeys]
        let h = try enc.encode(header)
        var d = RankLadder.magic
        var len = UInt32(h.count).littleEndian
        d.append(Data(bytes: &len, count: 4))
        d.append(h)
        d.reserveCapacity(d.count + 4 * offset + 8)
        // Per module, per tier block: U·S columns [start, end) (`out × w`), then Vᵀ rows [start, end).
        for m in modules {
            var vals: [Float] = []
            vals.reserveCapacity(m.rank * (m.inFeatures + m.outFeatures))
            for b in m.blocks {
                for o in 0..<m.outFeatures { for j in b.start..<b.end { vals.append(m.us(o, j)) } }
                for j in b.start..<b.end { for c in 0..<m.inFeatures { vals.append(m.vt(j, c)) } }
            }
            vals.withUnsafeBufferPointer { vb in
                for v in vb {
                    var bits = v.bitPattern.littleEndian
                    d.append(Data(bytes: &bits, count: 4))
                }
            }
        }
        var sum = RankLadder.fnv(d).littleEndian
        d.append(Data(bytes: &sum, count: 8))
        try d.write(to: URL(fileURLWithPath: path), options: .atomic)
    }

    static func fnv(_ d: Data) -> UInt64 {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        d.withUnsafeBytes { raw in
            for b in raw { h ^= UInt64(b); h = h &* 0x100_0000_01b3 }
        }
        return h
    }

    /// Loads a ladder written by `write(to:)`, validating magic, header, sizes and checksum.
    public static func load(from path: String) throws -> RankLadder {
        let d: Data
        do { d = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw SchedulerError("\(path): cannot read: \(error)") }
        func bad(_ s: String) -> SchedulerError { SchedulerError("\(path): not a valid rank-ladder file: \(s)") }
        guard d.count >= 8 + 4 + 8, d.prefix(8) == magic else { throw bad("bad magic (expected CWLADDR1)") }
        let body = d.prefix(d.count - 8)
        let stored = d.suffix(8).withUnsafeBytes { UInt64(littleEndian: $0.loadUnaligned(as: UInt64.self)) }
        guard stored == fnv(Data(body)) else { throw bad("checksum mismatch (file truncated or corrupted)") }
        let hlen = Int(d.subdata(in: 8..<12).withUnsafeBytes { UInt32(littleEndian: $0.loadUnaligned(as: UInt32.self)) })
        guard 12 + hlen <= body.count else { throw bad("header length \(hlen) exceeds the file") }
        let header: FileHeader
        do { header = try JSONDecoder().decode(FileHeader.self, from: d.subdata(in: 12..<(12 + hlen))) } catch { throw bad("header: \(error)") }
        guard header.format == "chunkwise-rank-ladder", header.version == 1 else { throw bad("format \(header.format) version \(header.version)") }
        guard let order = RopeStyle(rawValue: header.qkRowOrder) else { throw bad("row order \(header.qkRowOrder)") }
        let dataStart = 12 + hlen
        let nFloats = (body.count - dataStart) / 4
        guard (body.count - dataStart) % 4 == 0 else { throw bad("data is not a whole number of floats") }
        var mods: [LadderModule] = []
        try d.withUnsafeBytes { raw in
            for mh in header.modules {
                guard let p = Projection(rawValue: mh.projection) else { throw bad("projection \(mh.projection)") }
                let r = mh.singularValues.count
                guard r > 0, mh.inFeatures > 0, mh.outFeatures > 0, mh.count == r * (mh.inFeatures + mh.outFeatures),
                      mh.offset >= 0, mh.offset + mh.count <= nFloats,
                      let last = mh.boundaries.last, last == r, zip(mh.boundaries, [0] + mh.boundaries).allSatisfy({ $0 > $1 })
                else { throw bad("module \(p.hfModuleName(layer: mh.layer)): inconsistent sizes") }
                let out = mh.outFeatures, inF = mh.inFeatures
                var us = [Float](repeating: 0, count: out * r), vt = [Float](repeating: 0, count: r * inF)
                func at(_ i: Int) -> Float {
                    Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: dataStart + 4 * (mh.offset + i), as: UInt32.self)))
                }
                var i = 0, start = 0
                for end in mh.boundaries {
                    for o in 0..<out { for j in start..<end { us[o * r + j] = at(i); i += 1 } }
                    for j in start..<end { for c in 0..<inF { vt[j * inF + c] = at(i); i += 1 } }
                    start = end
                }
                mods.append(try LadderModule(layer: mh.layer, projection: p, inFeatures: inF, outFeatures: out,
                                             singularValues: mh.singularValues, boundaries: mh.boundaries, us: us, vt: vt))
            }
        }
        return RankLadder(modules: mods, tierRanks: header.tierRanks, qkRowOrder: order, adapterHash: header.adapterHash, ordered: header.ordered)
    }
}
