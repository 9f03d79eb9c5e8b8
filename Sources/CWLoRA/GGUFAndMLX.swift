import CWFormats
import CWKernels
import CWTransformer
import Foundation

extension LoRAAdapter {
    // MARK: GGUF (llama.cpp convert_lora_to_gguf.py)

    /// Loads a llama.cpp GGUF LoRA: `general.type = adapter`, `adapter.type = lora`,
    /// `adapter.lora.alpha`, tensors `blk.{i}.attn_q.weight.lora_a` (ne0 = in, ne1 = r) and
    /// `.lora_b` (ne0 = r, ne1 = out). Scale = alpha / r (alpha 0: scale 1, as llama.cpp).
    public static func loadGGUF(path: String) throws -> LoRAAdapter {
        let g: GGUFFile
        do { g = try GGUFFile(path: path) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        func fail(_ m: String) -> LoRAError { LoRAError(.format, path: path, m) }
        let gtype = g.metadata["general.type"]?.string
        guard gtype == "adapter" else {
            throw fail("general.type is \(gtype.map { "'\($0)'" } ?? "missing"); a GGUF LoRA has 'adapter' (is this a model rather than an adapter?)")
        }
        let atype = g.metadata["adapter.type"]?.string
        guard atype == "lora" else {
            throw LoRAError(.unsupported, path: path, "adapter.type is \(atype.map { "'\($0)'" } ?? "missing"); only 'lora' is supported")
        }
        let alpha = g.metadata["adapter.lora.alpha"]?.double ?? 0
        let arch = g.architecture ?? "llama"
        func floats(_ name: String) throws -> [Float] {
            do { return try g.floats(name) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        }
        var modules: [LoRAModule] = []
        var unplaced: [UnplacedTensor] = []
        for t in g.tensors where t.name.hasSuffix(".lora_a") {
            let base = String(t.name.dropLast(".lora_a".count))
            let bName = base + ".lora_b"
            guard let bi = g.tensor(bName) else { throw fail("tensor '\(t.name)' has no matching '\(bName)'") }
            let comps = base.split(separator: ".").map(String.init)
            guard comps.count >= 3, comps[0] == "blk", let layer = Int(comps[1]), let proj = Projection(ggufComponent: comps[2]) else {
                unplaced.append(UnplacedTensor(tensor: t.name, module: base))
                continue
            }
            guard t.dims.count == 2, bi.dims.count == 2 else { throw fail("'\(t.name)' is \(t.dims) and '\(bName)' is \(bi.dims); both must be 2-D") }
            let inF = t.dims[0], r = t.dims[1], outF = bi.dims[1]
            guard bi.dims[0] == r else {
                throw fail("'\(t.name)' has rank \(r) (ne1) but '\(bName)' has \(bi.dims[0]) (ne0)")
            }
            let scale = alpha != 0 ? alpha / Double(r) : 1
            modules.append(LoRAModule(layer: layer, projection: proj, rank: r, inFeatures: inF, outFeatures: outF,
                                      a: try floats(t.name), b: try floats(bName), scale: scale, alpha: alpha,
                                      aTensor: t.name, bTensor: bName))
        }
        for t in g.tensors where t.name.hasSuffix(".lora_b") && g.tensor(String(t.name.dropLast(7)) + ".lora_a") == nil {
            throw fail("tensor '\(t.name)' has no matching lora_a")
        }
        guard !modules.isEmpty || !unplaced.isEmpty else { throw fail("no '.lora_a' / '.lora_b' tensors found") }
        let order: RopeStyle = arch == "qwen2" ? .halves : .interleaved
        return LoRAAdapter(format: .gguf, path: path, modules: modules, qkRowOrder: order, rank: modules.first?.rank,
                           alpha: alpha, baseModel: g.metadata["general.name"]?.string, unplaced: unplaced)
    }

    /// One alpha for the whole file: per-module scales that differ from alpha / r are folded into B.
    func fileScale() -> (alpha: Double, bFactor: [Double]) {
        guard let first = modules.first else { return (0, []) }
        let alpha = first.scale * Double(first.rank)
        return (alpha, modules.map { m in
            let fileScale = alpha / Double(m.rank)
            return m.scale == fileScale ? 1 : m.scale / fileScale
        })
    }

    func inOrder(_ order: RopeStyle, config: LlamaConfig?) throws -> LoRAAdapter {
        if order == qkRowOrder || !modules.contains(where: { $0.projection == .q || $0.projection == .k }) { return self }
        guard let c = config else {
            throw LoRAError(.unsupported, path: path, "converting q/k rows between HF and GGUF order needs the model's head layout: pass its config")
        }
        return try withRowOrder(order, heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim)
    }

    /// Writes a llama.cpp-compatible GGUF LoRA (F32; q/k `lora_b` rows in GGUF order for llama-style
    /// models, so `config` is needed when the adapter is in HF order). Biases, DoRA and
    /// `modules_to_save` have no place in the format and are refused.
    public func writeGGUF(to path: String, config: LlamaConfig? = nil) throws {
        if let m = modules.first(where: { $0.bias != nil || $0.replacedBias != nil || $0.magnitude != nil }) {
            throw LoRAError(.unsupported, path: path, "\(m.moduleName) has a bias or DoRA magnitude, which a GGUF LoRA cannot hold")
        }
        if !savedModules.isEmpty { throw LoRAError(.unsupported, path: path, "modules_to_save tensors cannot be written to a GGUF LoRA") }
        let arch = config?.architecture ?? "llama"
        let a = try inOrder(arch == "qwen2" ? .halves : .interleaved, config: config)
        let (alpha, factors) = a.fileScale()
        var tensors: [OutputTensor] = []
        for (m, f) in zip(a.modules, factors) {
            let base = m.projection.ggufName(layer: m.layer) + ".weight"
            tensors.append(OutputTensor(name: base + ".lora_a", shape: [m.rank, m.inFeatures], values: m.a))
            tensors.append(OutputTensor(name: base + ".lora_b", shape: [m.outFeatures, m.rank], values: f == 1 ? m.b : m.b.map { Float(Double($0) * f) }))
        }
        let meta: [(String, GGUFValue)] = [
            ("general.architecture", .string(arch)),
            ("general.type", .string("adapter")),
            ("general.name", .string(baseModel ?? URL(fileURLWithPath: self.path).lastPathComponent)),
            ("adapter.type", .string("lora")),
            ("adapter.lora.alpha", .float32(Float(alpha))),
        ]
        try GGUFWriter.write(metadata: meta, tensors: tensors, to: path)
    }

    // MARK: MLX (mlx-lm)

    /// Loads an mlx-lm adapter folder: `adapter_config.json` (`lora_parameters: {rank, scale, ...}`,
    /// `num_layers`) + `adapters.safetensors` (`….lora_a` [in, r], `….lora_b` [r, out]). The scale is absolute.
    public static func loadMLX(directory: String) throws -> LoRAAdapter {
        let dir = URL(fileURLWithPath: directory)
        let cfgPath = dir.appendingPathComponent("adapter_config.json").path
        let cfg = FileManager.default.fileExists(atPath: cfgPath) ? try readJSON(cfgPath) : JSON.object([])
        func cfgFail(_ m: String) -> LoRAError { LoRAError(.format, path: cfgPath, m) }
        let ftype = cfg["fine_tune_type"]?.string ?? "lora"
        guard ftype == "lora" else { throw LoRAError(.unsupported, path: cfgPath, "MLX fine_tune_type '\(ftype)' is not supported (only 'lora')") }
        let params = cfg["lora_parameters"]
        var scale = 20.0  // mlx-lm's default
        if let s = params?["scale"], !s.isNull {
            guard let d = s.double else { throw cfgFail("lora_parameters.scale must be a number, got \(s.kind)") }
            scale = d
        }
        let keys = params?["keys"]?.array?.compactMap(\.string) ?? []
        let stPath = dir.appendingPathComponent("adapters.safetensors").path
        let st: SafetensorsFile
        do { st = try SafetensorsFile(path: stPath) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        func fail(_ m: String) -> LoRAError { LoRAError(.format, path: stPath, m) }
        func floats(_ name: String) throws -> [Float] {
            do { return try st.floats(name) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        }
        var modules: [LoRAModule] = []
        var unplaced: [UnplacedTensor] = []
        for name in st.tensors.keys.sorted() where name.hasSuffix(".lora_a") {
            let module = String(name.dropLast(".lora_a".count))
            let bName = module + ".lora_b"
            guard let ai = st.tensors[name], let bi = st.tensors[bName] else { throw fail("tensor '\(name)' has no matching '\(bName)'") }
            let (layer, proj) = placeModule(module)
            guard let layer, let proj else { unplaced.append(UnplacedTensor(tensor: name, module: module)); continue }
            guard ai.shape.count == 2, bi.shape.count == 2, ai.shape[1] == bi.shape[0] else {
                throw fail("'\(name)' is \(ai.shape) and '\(bName)' is \(bi.shape); expected [in, r] and [r, out]")
            }
            let inF = ai.shape[0], r = ai.shape[1], outF = bi.shape[1]
            modules.append(LoRAModule(layer: layer, projection: proj, rank: r, inFeatures: inF, outFeatures: outF,
                                      a: transpose(try floats(name), rows: inF, cols: r),
                                      b: transpose(try floats(bName), rows: r, cols: outF),
                                      scale: scale, alpha: nil, aTensor: name, bTensor: bName))
        }
        guard !modules.isEmpty || !unplaced.isEmpty else { throw fail("no '.lora_a' / '.lora_b' tensors found") }
        if let n = cfg["num_layers"]?.int ?? cfg["lora_layers"]?.int {
            loraLogger.debug("\(cfgPath): num_layers \(n); the tensors present decide which layers are adapted")
        }
        return LoRAAdapter(format: .mlx, path: directory, modules: modules, qkRowOrder: .halves,
                           rank: params?["rank"]?.int ?? modules.first?.rank, alpha: nil,
                           targetModules: keys, baseModel: cfg["model"]?.string, unplaced: unplaced)
    }

    /// Writes an mlx-lm adapter folder. MLX has one scale: modules whose scale differs from the first
    /// module's have it folded into B.
    public func writeMLX(to directory: String, config: LlamaConfig? = nil) throws {
        if let m = modules.first(where: { $0.bias != nil || $0.replacedBias != nil || $0.magnitude != nil }) {
            throw LoRAError(.unsupported, path: directory, "\(m.moduleName) has a bias or DoRA magnitude, which an MLX LoRA cannot hold")
        }
        if !savedModules.isEmpty { throw LoRAError(.unsupported, path: directory, "modules_to_save tensors cannot be written to an MLX adapter") }
        let a = try inOrder(.halves, config: config)
        guard let first = a.modules.first else { throw LoRAError(.format, path: directory, "the adapter has no modules") }
        try FileManager.default.createDirectory(atPath: directory, withIntermediateDirectories: true)
        let scale = first.scale
        var tensors: [OutputTensor] = []
        for m in a.modules {
            let f = m.scale / scale
            let b = f == 1 ? m.b : m.b.map { Float(Double($0) * f) }
            tensors.append(OutputTensor(name: m.moduleName + ".lora_a", shape: [m.inFeatures, m.rank], values: transpose(m.a, rows: m.rank, cols: m.inFeatures)))
            tensors.append(OutputTensor(name: m.moduleName + ".lora_b", shape: [m.rank, m.outFeatures], values: transpose(b, rows: m.outFeatures, cols: m.rank)))
        }
        let layers = Set(a.modules.map(\.layer))
        let keys = Set(a.modules.map { m in (m.projection.hfModuleName(layer: 0).split(separator: ".").suffix(2)).joined(separator: ".") }).sorted()
        let cfg = JSON.object([
            ("fine_tune_type", .string("lora")),
            ("num_layers", .int((layers.max() ?? 0) + 1 - (layers.min() ?? 0))),
            ("lora_parameters", .object([("rank", .int(a.modules.map(\.rank).max() ?? 0)), ("scale", .double(scale)),
                                          ("dropout", .double(0)), ("keys", .array(keys.map { .string($0) }))])),
        ])
        let dir = URL(fileURLWithPath: directory)
        do { try Data(cfg.text.utf8).write(to: dir.appendingPathComponent("adapter_config.json")) } catch {
            throw LoRAError(.format, path: directory, "cannot write adapter_config.json: \(error.localizedDescription)")
        }
        try SafetensorsWriter.write(tensors, to: dir.appendingPathComponent("adapters.safetensors").path)
    }
}
