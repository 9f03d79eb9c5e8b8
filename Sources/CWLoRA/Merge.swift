import CWFormats
import CWKernels
import CWTransformer
import Foundation

/// A model with adapters merged into its weights, and what it takes to undo that.
public struct MergedModel: Sendable {
    /// The merged model: touched matrices are copies holding `W + s·B·A` (fp32, fp16 or the base's
    /// encoding, see `MergeFormat`); the rest stay mapped.
    public let model: LlamaModel
    /// The model the adapters were merged into.
    public let base: LlamaModel
    /// Bytes of the copies (what merging costs in memory).
    public let extraBytes: Int
    /// The (layer, projection) matrices replaced.
    public let touched: [TouchedMatrix]

    public struct TouchedMatrix: Sendable, Hashable {
        public let layer: Int
        public let projection: Projection
    }

    /// The base weights back: the merged model's weights with every touched matrix (and bias,
    /// embedding, head) replaced by the original `WeightMatrix` — the same bytes, bit for bit,
    /// because they are the original mapped tensors, never a subtraction.
    public func unmerge() -> LlamaModel {
        var w = model.weights
        for t in touched {
            w.layers[t.layer].setMatrix(t.projection, base.weights.layers[t.layer].matrix(t.projection))
        }
        for l in w.layers.indices {
            w.layers[l].bq = base.weights.layers[l].bq
            w.layers[l].bk = base.weights.layers[l].bk
            w.layers[l].bv = base.weights.layers[l].bv
        }
        w.tokenEmbedding = base.weights.tokenEmbedding
        w.output = base.weights.output
        w.outputIsTied = base.weights.outputIsTied
        return LlamaModel(config: base.config, weights: w, source: base.source, ropeFrequencyFactors: ropeFrequencyFactors(of: base))
    }
}

/// The rope_freqs factors of a GGUF model (llama3-style RoPE), needed to rebuild a `LlamaModel`.
public func ropeFrequencyFactors(of model: LlamaModel) -> [Float]? {
    if case .gguf(let g) = model.source, g.tensor("rope_freqs.weight") != nil {
        return try? g.floats("rope_freqs.weight")
    }
    return nil
}

extension LoRAStack {
    /// Binds and merges in one step (allows `modules_to_save` replacements, which only merging can apply).
    public static func merged(model: LlamaModel, adapters: [AdapterBinding], scale: Float = 1, allowPartial: Bool = false,
                              format: MergeFormat = .f32) throws -> MergedModel {
        try LoRAStack(model: model, adapters: adapters, scale: scale, allowPartial: allowPartial, allowSaved: true).merge(format: format)
    }

    /// A new model with every bound adapter merged: `W' = W + s·B·A` (DoRA: `m ⊙ (W + s·B·A) / ‖·‖_row`),
    /// biases folded into q/k/v biases, `modules_to_save` tensors replacing embeddings / head.
    ///
    /// Each touched matrix becomes a copy in `format`: `W` is dequantized to fp32 and the delta
    /// added in fp32, then stored as fp32 (exact), rounded once to fp16 (half the memory and the
    /// bytes read per token; relative rounding ≤ 2⁻¹¹ of each merged weight), or — `.base` — kept
    /// in the base matrix's own encoding (a Q4_1 base stays Q4_1: decode reads exactly the base's
    /// bytes) with the delta rounded stochastically onto each block's grid (`cw_grid_merge_row`).
    /// Rounding to nearest would keep nothing: on SmolLM2 Q4_1 a rank-16 delta is ~1/100 of a
    /// quantization step; the unbiased rounding keeps its effect on average at a stated noise cost
    /// (WikiText PPL, README).
    public func merge(format: MergeFormat = .f32) throws -> MergedModel {
        let c = model.config
        var w = model.weights
        var touched: [MergedModel.TouchedMatrix] = []
        var extra = 0
        let pool = ThreadPool()
        for l in 0..<c.layers {
            for p in Projection.allCases {
                let mods = table[l][p.index]
                guard !mods.isEmpty else { continue }
                let orig = model.weights.layers[l].matrix(p)
                let cols = orig.cols
                let (m, bytes) = try mergedCopy(of: orig, format: format, pool: pool, seed: UInt64(l * Projection.count + p.index)) { o, row in
                    for m in mods {
                        BoundModule.addDeltaRow(o, module: m.module, scale: m.scale * self.scale, sign: 1, row: row)
                        if let f = m.doraFactor { for c in 0..<cols { row[c] *= f[o] } }
                    }
                }
                w.layers[l].setMatrix(p, m)
                extra += bytes
                touched.append(.init(layer: l, projection: p))

                // Biases: lora_B.bias · s and replaced base biases fold into the model's bias.
                var biasDelta: [Float]? = nil
                for m in mods {
                    for d in [m.biasDelta?.map { $0 * self.scale }, m.replacedBiasDelta] {
                        guard let d else { continue }
                        biasDelta = biasDelta.map { zip($0, d).map { $0 + $1 } } ?? d
                    }
                }
                if let d = biasDelta {
                    let adapterPath = bindings[mods[0].adapterIndex].adapter.path
                    func fold(_ b: [Float]?) -> [Float] { zip(b ?? [Float](repeating: 0, count: d.count), d).map { $0 + $1 } }
                    switch p {
                    case .q: w.layers[l].bq = fold(w.layers[l].bq)
                    case .k: w.layers[l].bk = fold(w.layers[l].bk)
                    case .v: w.layers[l].bv = fold(w.layers[l].bv)
                    default:
                        throw LoRAError(.unsupported, path: adapterPath, "\(p.hfModuleName(layer: l)) has an adapter bias, but the model has no \(p.rawValue) bias to merge it into; apply the adapter unmerged")
                    }
                }
            }
        }
        for (s, _) in savedModules {
            let storage = FloatStorage(s.data)
            let m = try storage.matrix(rows: s.rows, cols: s.cols)
            extra += s.data.count * 4
            switch s.target {
            case .lmHead:
                w.output = m
                w.outputIsTied = false
            case .embedTokens:
                // PEFT replaces the embedding module only; a tied head keeps the original weights.
                if w.outputIsTied { w.output = model.weights.tokenEmbedding }
                w.tokenEmbedding = m
                w.outputIsTied = false
            }
        }
        let merged = LlamaModel(config: c, weights: w, source: model.source, ropeFrequencyFactors: ropeFrequencyFactors(of: model))
        return MergedModel(model: merged, base: model, extraBytes: extra, touched: touched)
    }
}

/// The element type of merged copies.
public enum MergeFormat: String, Sendable, CaseIterable {
    /// fp32: `W + s·B·A` exactly as computed (parity with PEFT's merge).
    case f32
    /// fp16: half the memory (the engine's choice under `--precision fast`).
    case f16
    /// The base matrix's own encoding (Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 keep their block scales and move
    /// each index by an unbiased stochastic rounding of δ/step; F32 adds exactly, F16 rounds the
    /// sum): a merged model that reads exactly the base's bytes per token. Lossy on 4-bit bases
    /// (the rounding noise is ~sqrt(step·|δ|) per weight); K-quant and BF16 matrices get fp16.
    case base

    /// The merge format matching a factor storage: `.f32` → `.f32`; `.f16` and `.q8` (fast
    /// precision) → `.f16`.
    public init(_ storage: LowRankFactor.Storage) { self = storage == .f32 ? .f32 : .f16 }

    /// What a matrix of `type` is stored as: `.base` falls back to fp16 for encodings
    /// `cw_grid_merge_row` cannot merge into.
    public func resolved(for type: TensorType) -> MergeFormat {
        guard self == .base else { return self }
        switch type {
        case .f32, .f16, .q4_0, .q4_1, .q5_0, .q5_1, .q8_0: return .base
        case .bf16, .q4_K, .q5_K, .q6_K: return .f16
        }
    }
}

/// A copy of `orig` with `addDelta(row index, row)` applied to each dequantized fp32 row (`cols` floats), stored as
/// `format` (fp16 rounds each merged weight once; `.base` rounds the change onto the base's grid with
/// draws seeded by `seed` and the row, so the bytes do not depend on the thread count). Returns the
/// matrix (owning its storage) and its bytes. Shared by `LoRAStack.merge` and the scheduler's merged floor.
public func mergedCopy(of orig: WeightMatrix, format requested: MergeFormat, pool: ThreadPool, seed: UInt64 = 0,
                       addDelta: (Int, UnsafeMutablePointer<Float>) -> Void) throws -> (WeightMatrix, Int) {
    let rows = orig.rows, cols = orig.cols
    let format = requested.resolved(for: orig.type)
    let bytes: Int
    switch format {
    case .f32: bytes = rows * cols * 4
    case .f16: bytes = rows * cols * 2
    case .base: bytes = orig.byteCount
    }
    let storage = FloatStorage(count: (bytes + 3) / 4)
    let f32 = storage.pointer
    let f16 = UnsafeMutableRawPointer(storage.pointer).assumingMemoryBound(to: UInt16.self)
    let raw = UnsafeMutableRawPointer(storage.pointer)
    let failed = FailureFlag()
    pool.parallelFor(rows, granularity: 8) { start, end in
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: 2 * cols)
        defer { tmp.deallocate() }
        for o in start..<end {
            let row = format == .f32 ? f32 + o * cols : tmp
            orig.dequantizeRow(o, into: row)
            if format == .base {
                let merged = tmp + cols
                merged.update(from: row, count: cols)
                addDelta(o, merged)
                for c in 0..<cols { merged[c] -= row[c] }
                if !orig.gridMergeRow(o, delta: merged, into: raw + o * orig.rowBytes, seed: seed) { failed.set() }
                continue
            }
            addDelta(o, row)
            if format == .f16 { for c in 0..<cols { f16[o * cols + c] = Float16(row[c]).bitPattern } }
        }
    }
    if failed.isSet { throw KernelError.unsupportedType("cannot merge into \(orig.type) in its own encoding") }
    let type: TensorType = format == .f32 ? .f32 : format == .f16 ? .f16 : orig.type
    let m = try WeightMatrix(type: type, rows: rows, cols: cols, base: UnsafeRawPointer(storage.pointer), owner: storage)
    return (m, bytes)
}

/// A flag set from pool threads (any thread may set it; read after the parallel loop).
private final class FailureFlag: @unchecked Sendable {
    private let lock = NSLock()
    private var value = false
    func set() { lock.lock(); value = true; lock.unlock() }
    var isSet: Bool { lock.lock(); defer { lock.unlock() }; return value }
}

extension LoRAAdapter {
    /// This adapter merged into `model` (weight 1).
    public func merged(model: LlamaModel, weight: Double = 1) throws -> MergedModel {
        try LoRAStack.merged(model: model, adapters: [AdapterBinding(self, weight: weight)])
    }
}
