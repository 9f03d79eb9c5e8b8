import CWFormats
import CWKernels
import CWTransformer
import Foundation

/// One adapted projection: `ΔW = s · B · A` (plus optional bias and DoRA magnitude).
public struct LoRAModule: Sendable {
    public let layer: Int
    public let projection: Projection
    public let rank: Int
    public let inFeatures: Int
    public let outFeatures: Int
    /// `rank × inFeatures`, row-major (PEFT's `lora_A.weight` layout).
    public let a: [Float]
    /// `outFeatures × rank`, row-major (PEFT's `lora_B.weight` layout), rows in the adapter's
    /// `qkRowOrder` for q/k.
    public let b: [Float]
    /// The adapter's own scale for this module (PEFT `scaling`).
    public let scale: Double
    /// alpha as configured for this module (nil where the format has none, e.g. MLX).
    public let alpha: Double?
    /// `lora_B.bias` (PEFT `lora_bias`): added as `s · bias`.
    public let bias: [Float]?
    /// The base layer's bias as trained with `bias: all / lora_only`: replaces the model's bias.
    public let replacedBias: [Float]?
    /// DoRA `lora_magnitude_vector` (`outFeatures`).
    public let magnitude: [Float]?
    /// Tensor names in the source file, for error messages.
    public let aTensor: String
    public let bTensor: String

    public init(layer: Int, projection: Projection, rank: Int, inFeatures: Int, outFeatures: Int, a: [Float], b: [Float],
                scale: Double, alpha: Double?, bias: [Float]? = nil, replacedBias: [Float]? = nil, magnitude: [Float]? = nil,
                aTensor: String, bTensor: String) {
        self.layer = layer
        self.projection = projection
        self.rank = rank
        self.inFeatures = inFeatures
        self.outFeatures = outFeatures
        self.a = a
        self.b = b
        self.scale = scale
        self.alpha = alpha
        self.bias = bias
        self.replacedBias = replacedBias
        self.magnitude = magnitude
        self.aTensor = aTensor
        self.bTensor = bTensor
    }

    /// The HF module name, e.g. `model.layers.3.self_attn.q_proj`.
    public var moduleName: String { projection.hfModuleName(layer: layer) }

    /// Parameter bytes held (fp32).
    public var byteCount: Int { 4 * (a.count + b.count + (bias?.count ?? 0) + (replacedBias?.count ?? 0) + (magnitude?.count ?? 0)) }

    func with(b newB: [Float], bias newBias: [Float]?, replacedBias newRB: [Float]?, magnitude newM: [Float]?) -> LoRAModule {
        LoRAModule(layer: layer, projection: projection, rank: rank, inFeatures: inFeatures, outFeatures: outFeatures, a: a, b: newB,
                   scale: scale, alpha: alpha, bias: newBias, replacedBias: newRB, magnitude: newM, aTensor: aTensor, bTensor: bTensor)
    }
}

/// A tensor of the adapter that names a module this engine cannot place (not a Llama projection).
public struct UnplacedTensor: Sendable, Equatable {
    public let tensor: String
    public let module: String
}

/// A whole tensor replaced by the adapter (PEFT `modules_to_save`): `lm_head` or `embed_tokens`.
public struct SavedModule: Sendable {
    public enum Target: String, Sendable, Codable { case lmHead = "lm_head", embedTokens = "embed_tokens" }
    public let target: Target
    public let tensor: String
    public let rows: Int
    public let cols: Int
    public let data: [Float]
}

/// A LoRA adapter, immutable once loaded. See the module documentation for scaling conventions.
public struct LoRAAdapter: Sendable {
    public enum Format: String, Sendable, Codable { case peft, gguf, mlx, memory }

    public let format: Format
    public let path: String
    /// "LORA", "ADALORA" (PEFT), "LORA" for GGUF/MLX.
    public let peftType: String
    /// Modules sorted by (layer, projection).
    public let modules: [LoRAModule]
    /// Row order of q/k `b` (and per-row vectors): `.halves` = HF order, `.interleaved` = GGUF order.
    public let qkRowOrder: RopeStyle
    /// Default r and alpha from the config (per-module values are in `modules`).
    public let rank: Int?
    public let alpha: Double?
    public let useRslora: Bool
    public let useDora: Bool
    public let targetModules: [String]
    public let baseModel: String?
    public let unplaced: [UnplacedTensor]
    public let savedModules: [SavedModule]
    /// FNV-1a 64 over names, shapes, scales and values: identifies the adapter's content.
    public let contentHash: String

    public init(format: Format, path: String, peftType: String = "LORA", modules: [LoRAModule], qkRowOrder: RopeStyle,
                rank: Int?, alpha: Double?, useRslora: Bool = false, useDora: Bool = false, targetModules: [String] = [],
                baseModel: String? = nil, unplaced: [UnplacedTensor] = [], savedModules: [SavedModule] = []) {
        let sorted = modules.sorted { ($0.layer, $0.projection.index) < ($1.layer, $1.projection.index) }
        self.format = format
        self.path = path
        self.peftType = peftType
        self.modules = sorted
        self.qkRowOrder = qkRowOrder
        self.rank = rank
        self.alpha = alpha
        self.useRslora = useRslora
        self.useDora = useDora
        self.targetModules = targetModules.isEmpty ? Array(Set(sorted.map { $0.projection.rawValue })).sorted() : targetModules
        self.baseModel = baseModel
        self.unplaced = unplaced
        self.savedModules = savedModules
        var h = FNV64()
        h.add(qkRowOrder.rawValue)
        for m in sorted {
            h.add(m.moduleName)
            h.add(m.rank); h.add(m.inFeatures); h.add(m.outFeatures)
            h.add(m.scale.bitPattern)
            h.add(m.a); h.add(m.b)
            if let v = m.bias { h.add("bias"); h.add(v) }
            if let v = m.replacedBias { h.add("rbias"); h.add(v) }
            if let v = m.magnitude { h.add("mag"); h.add(v) }
        }
        for s in savedModules { h.add(s.target.rawValue); h.add(s.data) }
        self.contentHash = h.hex
    }

    /// Parameter bytes (fp32) held by the adapter.
    public var byteCount: Int { modules.reduce(0) { $0 + $1.byteCount } + savedModules.reduce(0) { $0 + 4 * $1.data.count } }

    /// The module for a layer and projection, if the adapter has one.
    public func module(layer: Int, projection: Projection) -> LoRAModule? {
        modules.first { $0.layer == layer && $0.projection == projection }
    }

    /// The module named like PEFT names it (`model.layers.3.self_attn.q_proj`).
    public func module(named name: String) -> LoRAModule? { modules.first { $0.moduleName == name } }

    /// Loads a PEFT folder, a GGUF LoRA file or an MLX adapter folder (detected from the contents).
    public static func load(path: String) throws -> LoRAAdapter {
        let fm = FileManager.default
        var isDir: ObjCBool = false
        guard fm.fileExists(atPath: path, isDirectory: &isDir) else {
            throw LoRAError(.format, path: path, "adapter not found")
        }
        let dir = URL(fileURLWithPath: path)
        if isDir.boolValue {
            if fm.fileExists(atPath: dir.appendingPathComponent("adapters.safetensors").path) {
                return try loadMLX(directory: path)
            }
            if fm.fileExists(atPath: dir.appendingPathComponent("adapter_config.json").path) {
                return try loadPEFT(directory: path)
            }
            let ggufs = ((try? fm.contentsOfDirectory(atPath: path)) ?? []).filter { $0.hasSuffix(".gguf") }.sorted()
            if ggufs.count == 1 { return try loadGGUF(path: dir.appendingPathComponent(ggufs[0]).path) }
            throw LoRAError(.format, path: path, "not an adapter folder: expected adapter_config.json + adapter_model.safetensors (PEFT), adapters.safetensors (MLX) or a single .gguf file")
        }
        // A file: GGUF by magic; a safetensors file inside a PEFT/MLX folder means that folder.
        if let h = FileHandle(forReadingAtPath: path) {
            let magic = (try? h.read(upToCount: 4)) ?? Data()
            try? h.close()
            if magic == Data("GGUF".utf8) { return try loadGGUF(path: path) }
        }
        let parent = dir.deletingLastPathComponent().path
        if path.hasSuffix(".safetensors") {
            if dir.lastPathComponent == "adapters.safetensors" { return try loadMLX(directory: parent) }
            if fm.fileExists(atPath: dir.deletingLastPathComponent().appendingPathComponent("adapter_config.json").path) {
                return try loadPEFT(directory: parent)
            }
        }
        if dir.lastPathComponent == "adapter_config.json" { return try load(path: parent) }
        throw LoRAError(.format, path: path, "not a recognised adapter: expected a GGUF LoRA file, a PEFT folder or an MLX adapter folder")
    }

    /// This adapter with q/k rows converted to `order` (needs the head layout of the target model).
    public func withRowOrder(_ order: RopeStyle, heads: Int, kvHeads: Int, headDim: Int) throws -> LoRAAdapter {
        if order == qkRowOrder { return self }
        let mods = try modules.map { m -> LoRAModule in
            guard m.projection == .q || m.projection == .k else { return m }
            let nHead = m.projection == .q ? heads : kvHeads
            guard nHead * headDim == m.outFeatures else {
                throw LoRAError(.shapeMismatch, path: path, "lora_B of \(m.moduleName) has \(m.outFeatures) output features; \(nHead) heads of \(headDim) need \(nHead * headDim)")
            }
            let toGGUF = order == .interleaved
            let perm = { (v: [Float], width: Int) in RowOrder.permute(v, width: width, heads: nHead, headDim: headDim, toInterleaved: toGGUF) }
            return m.with(b: perm(m.b, m.rank), bias: m.bias.map { perm($0, 1) }, replacedBias: m.replacedBias.map { perm($0, 1) },
                          magnitude: m.magnitude.map { perm($0, 1) })
        }
        return LoRAAdapter(format: format, path: path, peftType: peftType, modules: mods, qkRowOrder: order, rank: rank, alpha: alpha,
                           useRslora: useRslora, useDora: useDora, targetModules: targetModules, baseModel: baseModel,
                           unplaced: unplaced, savedModules: savedModules)
    }
}

extension Projection {
    /// Maps a GGUF tensor base name (`attn_q`, `ffn_down`, ...) to a projection.
    init?(ggufComponent s: String) {
        switch s {
        case "attn_q": self = .q
        case "attn_k": self = .k
        case "attn_v": self = .v
        case "attn_output": self = .o
        case "ffn_gate": self = .gate
        case "ffn_up": self = .up
        case "ffn_down": self = .down
        default: return nil
        }
    }
}

/// Q/K row permutations between HF (rotate_half) order and GGUF (interleaved) order.
public enum RowOrder {
    /// Permutes the `heads × headDim` rows of a row-major `[rows × width]` array.
    /// HF → GGUF (`toInterleaved`): `reshape(n_head, 2, hd/2, width).swapaxes(1, 2)`;
    /// GGUF → HF is the inverse.
    public static func permute(_ v: [Float], width: Int, heads: Int, headDim: Int, toInterleaved: Bool) -> [Float] {
        // Callers bind shapes against the model first; a mismatch here would be a bug, never a
        // trap on file data: leave such an array as it is.
        guard width > 0, v.count == heads * headDim * width else { return v }
        var out = [Float](repeating: 0, count: v.count)
        let half = headDim / 2
        for h in 0..<heads {
            for i in 0..<half {
                for j in 0..<2 {
                    let gguf = h * headDim + 2 * i + j
                    let hf = h * headDim + j * half + i
                    let (dst, src) = toInterleaved ? (gguf, hf) : (hf, gguf)
                    for c in 0..<width { out[dst * width + c] = v[src * width + c] }
                }
            }
        }
        return out
    }
}

/// FNV-1a, 64-bit.
struct FNV64 {
    var h: UInt64 = 0xcbf2_9ce4_8422_2325

    mutating func byte(_ b: UInt8) {
        h ^= UInt64(b)
        h = h &* 0x100_0000_01b3
    }
    mutating func add(_ s: String) { for b in s.utf8 { byte(b) }; byte(0) }
    mutating func add(_ i: Int) { add(UInt64(bitPattern: Int64(i))) }
    mutating func add(_ x: UInt64) { for k in 0..<8 { byte(UInt8(truncatingIfNeeded: x >> (8 * UInt64(k)))) } }
    mutating func add(_ v: [Float]) {
        for f in v {
            let x = f.bitPattern
            byte(UInt8(truncatingIfNeeded: x)); byte(UInt8(truncatingIfNeeded: x >> 8))
            byte(UInt8(truncatingIfNeeded: x >> 16)); byte(UInt8(truncatingIfNeeded: x >> 24))
        }
    }
    var hex: String {
        let s = String(h, radix: 16)
        return String(repeating: "0", count: 16 - s.count) + s
    }
}
