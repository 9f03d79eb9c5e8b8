import CWFormats
import CWKernels
import CWTransformer
import Foundation

/// An adapter and the weight it is applied with (effective scale = weight × the adapter's s).
public struct AdapterBinding: Sendable {
    public let adapter: LoRAAdapter
    public let weight: Double

    public init(_ adapter: LoRAAdapter, weight: Double = 1) {
        self.adapter = adapter
        self.weight = weight
    }
}

/// fp32 storage owned by a `WeightMatrix` (freed with the last matrix that refers to it).
final class FloatStorage: @unchecked Sendable {
    let pointer: UnsafeMutablePointer<Float>
    let count: Int

    init(count: Int) {
        self.count = count
        pointer = .allocate(capacity: max(1, count))
        pointer.initialize(repeating: 0, count: max(1, count))
    }

    convenience init(_ v: [Float]) {
        self.init(count: v.count)
        v.withUnsafeBufferPointer { b in
            if let base = b.baseAddress { pointer.update(from: base, count: v.count) }
        }
    }

    deinit { pointer.deallocate() }

    func matrix(rows: Int, cols: Int) throws -> WeightMatrix {
        try WeightMatrix(type: .f32, rows: rows, cols: cols, base: UnsafeRawPointer(pointer), owner: self)
    }
}

/// One adapter module ready to run against one model: A (`rank × in`) and Bᵀ (`rank × out`) in
/// the model's row order, fp32 or fp16 (`LowRankFactor`), run by the low-rank kernels.
final class BoundModule: @unchecked Sendable {
    let module: LoRAModule
    let adapterIndex: Int
    let a: LowRankFactor
    let bt: LowRankFactor
    /// weight × s.
    let scale: Float
    /// weight × s × lora_B.bias.
    let biasDelta: [Float]?
    /// replaced base bias − the model's bias (not scaled).
    let replacedBiasDelta: [Float]?
    /// DoRA: m / ‖W + s·B·A‖ per output row.
    let doraFactor: [Float]?

    init(module: LoRAModule, adapterIndex: Int, weight: Double, model: LlamaModel, storage: LowRankFactor.Storage) throws {
        self.module = module
        self.adapterIndex = adapterIndex
        a = LowRankFactor(rows: module.rank, cols: module.inFeatures, storage: storage, values: module.a)
        bt = LowRankFactor(transposing: module.b, rows: module.outFeatures, cols: module.rank, storage: storage)
        let s = Float(weight * module.scale)
        scale = s
        biasDelta = module.bias.map { $0.map { $0 * s } }
        if let rb = module.replacedBias {
            let base = BoundModule.modelBias(model, module.layer, module.projection) ?? [Float](repeating: 0, count: rb.count)
            replacedBiasDelta = zip(rb, base).map { $0 - $1 }
        } else {
            replacedBiasDelta = nil
        }
        if let m = module.magnitude {
            let w = model.weights.layers[module.layer].matrix(module.projection)
            var f = [Float](repeating: 0, count: module.outFeatures)
            let row = UnsafeMutablePointer<Float>.allocate(capacity: w.cols)
            defer { row.deallocate() }
            for o in 0..<w.rows {
                w.dequantizeRow(o, into: row)
                BoundModule.addDeltaRow(o, module: module, scale: s, sign: 1, row: row)
                var ss: Float = 0
                for c in 0..<w.cols { ss += row[c] * row[c] }
                f[o] = m[o] / ss.squareRoot()
            }
            doraFactor = f
        } else {
            doraFactor = nil
        }
    }

    /// Bytes of the stored factors.
    var bytes: Int { a.bytes + bt.bytes }

    static func modelBias(_ model: LlamaModel, _ layer: Int, _ p: Projection) -> [Float]? {
        let l = model.weights.layers[layer]
        switch p {
        case .q: return l.bq
        case .k: return l.bk
        case .v: return l.bv
        default: return nil
        }
    }

    /// `row[c] += sign · fl(fl(Σ_k B[o][k]·A[k][c]) · s)` — PEFT's `(B @ A) * scaling` for one row.
    static func addDeltaRow(_ o: Int, module m: LoRAModule, scale s: Float, sign: Float, row: UnsafeMutablePointer<Float>) {
        let cols = m.inFeatures, r = m.rank
        let acc = UnsafeMutablePointer<Float>.allocate(capacity: cols)
        defer { acc.deallocate() }
        acc.initialize(repeating: 0, count: cols)
        m.a.withUnsafeBufferPointer { ap in
            m.b.withUnsafeBufferPointer { bp in
                guard let A = ap.baseAddress, let B = bp.baseAddress else { return }
                for k in 0..<r {
                    let coef = B[o * r + k]
                    let arow = A + k * cols
                    for c in 0..<cols { acc[c] += coef * arow[c] }
                }
            }
        }
        for c in 0..<cols { row[c] += sign * (acc[c] * s) }
    }

    /// Plain LoRA without bias terms: `apply` is a down product then an up product (`split`).
    var isSplittable: Bool { doraFactor == nil && biasDelta == nil && replacedBiasDelta == nil }

    /// `apply`'s down half: u = s·(A x), `tokens × rank` (what `up(u:…)` then adds).
    func down(x: UnsafePointer<Float>, tokens: Int, u: UnsafeMutablePointer<Float>, callScale: Float, pool: ThreadPool) {
        let r = module.rank, s = scale * callScale
        LowRank.down(a, rows: 0..<r, x: x, ldx: module.inFeatures, tokens: tokens, u: u, ldu: r, pool: pool)
        for i in 0..<(tokens * r) { u[i] *= s }
    }

    /// `apply`'s up half for output columns `columns` of tokens `tokens`, on the calling thread,
    /// with `bt` or its widened copy (`LowRankFactor.widened`: the same values).
    func up(_ bt: LowRankFactor, u: UnsafePointer<Float>, tokens: Range<Int>, y: UnsafeMutablePointer<Float>, columns: Range<Int>) {
        let r = module.rank, out = module.outFeatures
        LowRank.up(bt, rows: 0..<r, u: u + tokens.lowerBound * r, ldu: r, tokens: tokens.count,
                   y: y + tokens.lowerBound * out, ldy: out, columns: columns)
    }

    /// `y += s · B (A x)` for `tokens` rows (plus the bias terms; DoRA rescales the rows).
    func apply(x: UnsafePointer<Float>, tokens: Int, y: UnsafeMutablePointer<Float>, callScale: Float, pool: ThreadPool) {
        let r = module.rank, out = module.outFeatures
        withUnsafeTemporaryAllocation(of: Float.self, capacity: max(1, tokens * r)) { ub in
            guard let u = ub.baseAddress else { return }
            down(x: x, tokens: tokens, u: u, callScale: callScale, pool: pool)
            if let f = doraFactor {
                let v = UnsafeMutablePointer<Float>.allocate(capacity: tokens * out)
                defer { v.deallocate() }
                v.initialize(repeating: 0, count: tokens * out)
                LowRank.up(bt, rows: 0..<r, u: u, ldu: r, tokens: tokens, y: v, ldy: out, pool: pool)
                for t in 0..<tokens {
                    let yr = y + t * out, vr = v + t * out
                    for o in 0..<out { yr[o] = f[o] * (yr[o] + vr[o]) }
                }
            } else {
                LowRank.up(bt, rows: 0..<r, u: u, ldu: r, tokens: tokens, y: y, ldy: out, pool: pool)
            }
        }
        if biasDelta == nil && replacedBiasDelta == nil { return }
        for t in 0..<tokens {
            let yr = y + t * out
            if let bd = biasDelta { for o in 0..<out { yr[o] += bd[o] * callScale } }
            if let rb = replacedBiasDelta { for o in 0..<out { yr[o] += rb[o] } }
        }
    }
}

/// One or more adapters bound to a model, applied unmerged (`y += s · B (A x)` per module) as the
/// model's `ProjectionDelta`. Immutable; `scaled(_:)` gives a view with another per-call scale.
///
/// Several adapters on one projection are applied in binding order (for plain LoRA the order does
/// not matter; a DoRA module rescales what the earlier ones produced, as PEFT's stacking does).
public final class LoRAStack: ProjectionDelta, @unchecked Sendable {
    public let model: LlamaModel
    public let bindings: [AdapterBinding]
    /// Multiplies every adapter's effective scale (the CLI's `--lora-scale`). DoRA row factors stay
    /// those computed at binding time.
    public let scale: Float
    /// Modules left out under `allowPartial` ("tensor: reason").
    public let skipped: [String]
    /// Element type of the bound factors.
    public let storage: LowRankFactor.Storage
    let table: [[[BoundModule]]]
    /// table's factors' memory, per layer and projection (for `memory(layer:projection:)`).
    let spans: [[[UnsafeRawBufferPointer]]]
    let savedModules: [(SavedModule, Double)]

    /// Binds adapters to `model`, checking every module against the model's shapes.
    /// Binds adapters to `model`, checking every module against the model's shapes. `storage` is
    /// the element type of the bound A/B factors: `.f32` (exact, the default) or `.f16` (half the
    /// bytes read per token; the engine uses it with `--precision fast`).
    public convenience init(model: LlamaModel, adapters: [AdapterBinding], scale: Float = 1, allowPartial: Bool = false,
                            storage: LowRankFactor.Storage = .f32) throws {
        try self.init(model: model, adapters: adapters, scale: scale, allowPartial: allowPartial, allowSaved: false, storage: storage)
    }

    public convenience init(model: LlamaModel, adapter: LoRAAdapter, weight: Double = 1, scale: Float = 1, allowPartial: Bool = false,
                            storage: LowRankFactor.Storage = .f32) throws {
        try self.init(model: model, adapters: [AdapterBinding(adapter, weight: weight)], scale: scale, allowPartial: allowPartial, storage: storage)
    }

    init(model: LlamaModel, adapters: [AdapterBinding], scale: Float, allowPartial: Bool, allowSaved: Bool,
         storage: LowRankFactor.Storage = .f32) throws {
        self.model = model
        self.storage = storage
        self.bindings = adapters
        self.scale = scale
        var table = [[[BoundModule]]](repeating: [[BoundModule]](repeating: [], count: 7), count: model.config.layers)
        var skipped: [String] = []
        var saved: [(SavedModule, Double)] = []
        for (idx, binding) in adapters.enumerated() {
            let checked = try LoRAStack.validate(binding.adapter, model: model, allowPartial: allowPartial, allowSaved: allowSaved)
            skipped += checked.skipped
            saved += binding.adapter.savedModules.map { ($0, binding.weight) }
            for m in checked.adapter.modules {
                table[m.layer][m.projection.index].append(try BoundModule(module: m, adapterIndex: idx, weight: binding.weight, model: model, storage: storage))
            }
        }
        self.table = table
        self.spans = table.map { $0.map { $0.flatMap { [$0.a.memory, $0.bt.memory] } } }
        self.isAdditive = table.allSatisfy { $0.allSatisfy { $0.allSatisfy { $0.doraFactor == nil } } }
        self.skipped = skipped
        self.savedModules = saved
    }

    private init(copying other: LoRAStack, scale: Float) {
        model = other.model
        bindings = other.bindings
        self.scale = scale
        storage = other.storage
        skipped = other.skipped
        table = other.table
        spans = other.spans
        isAdditive = other.isAdditive
        savedModules = other.savedModules
    }

    /// The same binding with another per-call scale (shares the bound matrices).
    public func scaled(_ s: Float) -> LoRAStack { LoRAStack(copying: self, scale: s) }

    /// Bytes of the bound A/B factors (what the unmerged adapter costs in memory).
    public var boundBytes: Int { table.reduce(0) { $0 + $1.reduce(0) { $0 + $1.reduce(0) { $0 + $1.bytes } } } }

    /// Number of bound modules.
    public var moduleCount: Int { table.reduce(0) { $0 + $1.reduce(0) { $0 + $1.count } } }

    /// Effective scale (weight × s) of each bound module, keyed by HF module name, per adapter.
    public func effectiveScales(adapter index: Int = 0) -> [String: Float] {
        var out: [String: Float] = [:]
        for l in table { for p in l { for m in p where m.adapterIndex == index { out[m.module.moduleName] = m.scale } } }
        return out
    }

    /// Rows are independent and positions unused: batches group sequences sharing this stack.
    public var isPositionIndependent: Bool { true }

    /// Immutable: `apply` keeps nothing between calls (temporaries are per call).
    public var isReentrant: Bool { true }
    /// Plain LoRA only adds `s·B·A·x` (and bias deltas); a DoRA module rescales the output.
    public let isAdditive: Bool

    /// Every bound module's A and Bᵀ of `(layer, projection)`.
    public func memory(layer: Int, projection: Projection) -> [UnsafeRawBufferPointer] {
        guard layer >= 0, layer < spans.count else { return [] }
        return spans[layer][projection.index]
    }

    public func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
                      positions: Range<Int>, y: UnsafeMutablePointer<Float>, pool: ThreadPool) {
        guard layer >= 0, layer < table.count else { return }
        for m in table[layer][projection.index] { m.apply(x: x, tokens: tokens, y: y, callScale: scale, pool: pool) }
    }

    /// Every module's down product now; their up products (in binding order, as `apply`) per
    /// column range later. nil with a DoRA module or bias terms (`apply` then runs).
    public func split(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
                      positions: Range<Int>, pool: ThreadPool) -> SplitDelta? {
        guard layer >= 0, layer < table.count, tokens > 0 else { return nil }
        let mods = table[layer][projection.index]
        guard mods.allSatisfy(\.isSplittable) else { return nil }
        let us = mods.map { m -> UnsafeMutablePointer<Float> in
            let u = UnsafeMutablePointer<Float>.allocate(capacity: max(1, tokens * m.module.rank))
            m.down(x: x, tokens: tokens, u: u, callScale: scale, pool: pool)
            return u
        }
        // Bᵀ widened to fp32 once here: the up product then runs in many small parts, each of
        // which would widen its columns of an fp16/int8 factor again.
        let bts = mods.map { $0.bt.widened(rows: 0..<$0.bt.rows) }
        return SplitDelta(finish: { columns, part, y in
            for (i, m) in mods.enumerated() { m.up(bts[i], u: us[i], tokens: part, y: y, columns: columns) }
        }, release: { for u in us { u.deallocate() } })
    }

    /// A one-token call as terms: every module's down product now (u = s·(A x), as `apply`), its
    /// up product a term, in binding order. nil with a DoRA module or bias terms.
    public func lowRankTerms(layer: Int, projection: Projection, x: UnsafePointer<Float>, position: Int, target: Int,
                             scratch: UnsafeMutablePointer<Float>, capacity: Int, terms: inout [LowRankTerm], pool: ThreadPool) -> Int? {
        guard layer >= 0, layer < table.count else { return 0 }
        let mods = table[layer][projection.index]
        var used = 0
        for m in mods {
            let r = m.module.rank
            guard m.isSplittable, used + r <= capacity else { return nil }
            m.down(x: x, tokens: 1, u: scratch + used, callScale: scale, pool: pool)
            terms.append(LowRankTerm(target: target, factor: m.bt, rows: 0..<r, u: scratch + used))
            used += r
        }
        return used
    }

    /// Adds (sign = 1) or subtracts (sign = -1) every bound plain-LoRA delta of `(layer, projection)`
    /// to an fp32 row-major `[out × in]` matrix in place: `W += sign · fl(fl(B·A) · s)`. The delta is
    /// computed identically each time, so subtracting after adding gives back W up to two roundings
    /// (`|W'' − W| ≤ 2⁻²⁴ (|W'| + |W''|)` per element). DoRA modules are refused (not additive).
    public func addDelta(layer: Int, projection: Projection, to w: UnsafeMutablePointer<Float>, rows: Int, cols: Int, sign: Float = 1) throws {
        guard layer >= 0, layer < table.count else { return }
        for m in table[layer][projection.index] {
            guard m.doraFactor == nil else {
                throw LoRAError(.unsupported, path: bindings[m.adapterIndex].adapter.path, "\(m.module.moduleName) is a DoRA module: its merge is not additive")
            }
            guard m.module.outFeatures == rows, m.module.inFeatures == cols else {
                throw LoRAError(.shapeMismatch, path: bindings[m.adapterIndex].adapter.path,
                                "\(m.module.moduleName) is [\(m.module.outFeatures), \(m.module.inFeatures)]; the matrix given is [\(rows), \(cols)]")
            }
            for o in 0..<rows { BoundModule.addDeltaRow(o, module: m.module, scale: m.scale * scale, sign: sign, row: w + o * cols) }
        }
    }

    // MARK: - validation

    struct Checked {
        let adapter: LoRAAdapter
        let skipped: [String]
    }

    static let projectionList = Projection.allCases.map(\.rawValue).joined(separator: ", ")

    /// Checks an adapter against a model and returns it in the model's row order, with the modules
    /// that are not in the model removed (`allowPartial`) — or throws naming the first problem.
    static func validate(_ adapter: LoRAAdapter, model: LlamaModel, allowPartial: Bool, allowSaved: Bool) throws -> Checked {
        let c = model.config
        let path = adapter.path
        if let s = adapter.savedModules.first {
            if !allowSaved {
                throw LoRAError(.unsupported, path: path, "the adapter replaces \(s.target.rawValue) (modules_to_save, tensor '\(s.tensor)'); a replaced tensor cannot be applied unmerged — merge the adapter (LoRAStack.merged / writeMergedHF)")
            }
            guard s.rows == c.vocabSize, s.cols == c.hiddenSize else {
                throw LoRAError(.shapeMismatch, path: path, "modules_to_save tensor '\(s.tensor)' is [\(s.rows), \(s.cols)]; the model's \(s.target.rawValue) is [\(c.vocabSize), \(c.hiddenSize)]")
            }
        }
        let total = adapter.modules.count + adapter.unplaced.count
        var offending: [String] = []
        for u in adapter.unplaced {
            offending.append("adapter tensor '\(u.tensor)' targets module '\(u.module)', which is not one of the model's projections (\(projectionList) in model.layers.N)")
        }
        var kept: [LoRAModule] = []
        let base = adapter.baseModel.map { " (base_model_name_or_path '\($0)')" } ?? ""
        for m in adapter.modules {
            guard m.layer >= 0, m.layer < c.layers else {
                offending.append("adapter tensor '\(m.aTensor)' targets layer \(m.layer), the model has \(c.layers)")
                continue
            }
            let w = model.weights.layers[m.layer].matrix(m.projection)
            let name = m.projection.rawValue
            if m.inFeatures != w.cols {
                let hiddenInput = [.q, .k, .v, .gate, .up].contains(m.projection)
                if hiddenInput {
                    throw LoRAError(.architectureMismatch, path: path, "lora_A of \(m.moduleName) is [\(m.rank), \(m.inFeatures)]; the model's \(name) has \(w.cols) input features: the adapter was made for a model with hidden size \(m.inFeatures)\(base), this model's hidden size is \(c.hiddenSize)")
                }
                throw LoRAError(.shapeMismatch, path: path, "lora_A of \(m.moduleName) is [\(m.rank), \(m.inFeatures)]; the model's \(name) has \(w.cols) input features")
            }
            if m.outFeatures != w.rows {
                throw LoRAError(.shapeMismatch, path: path, "lora_B of \(m.moduleName) is [\(m.outFeatures), \(m.rank)]; the model's \(name) has \(w.rows) output features")
            }
            if m.bias != nil || m.replacedBias != nil, ![.q, .k, .v].contains(m.projection) {
                // Unmerged application adds it after the matmul; only merging needs a bias slot.
                loraLogger.debug("\(m.moduleName): adapter bias applied unmerged (the model has no \(name) bias)")
            }
            kept.append(m)
        }
        if let first = offending.first {
            if kept.isEmpty {
                throw LoRAError(.noMatch, path: path, "none of the adapter's \(total) modules is in the model: \(first)")
            }
            if !allowPartial {
                throw LoRAError(.partialMatch, path: path, "\(first) (\(offending.count) of \(total) adapter modules are not in the model; bind with allowPartial: true to apply the other \(kept.count))")
            }
            for o in offending { loraLogger.warning("\(path): skipped: \(o)") }
        }
        if kept.isEmpty && adapter.savedModules.isEmpty {
            throw LoRAError(.noMatch, path: path, "the adapter has no modules")
        }
        let trimmed = LoRAAdapter(format: adapter.format, path: path, peftType: adapter.peftType, modules: kept, qkRowOrder: adapter.qkRowOrder,
                                  rank: adapter.rank, alpha: adapter.alpha, useRslora: adapter.useRslora, useDora: adapter.useDora,
                                  targetModules: adapter.targetModules, baseModel: adapter.baseModel, unplaced: [], savedModules: adapter.savedModules)
        let ordered = try trimmed.withRowOrder(c.ropeStyle, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
        return Checked(adapter: ordered, skipped: offending)
    }
}
