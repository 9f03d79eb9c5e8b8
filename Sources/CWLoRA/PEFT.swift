import CWFormats
import CWKernels
import CWTransformer
import Foundation

/// The parts of a PEFT `adapter_config.json` that change what the weights mean.
struct PEFTConfig {
    var peftType = "LORA"
    var r = 8
    var loraAlpha = 8.0
    var useRslora = false
    var useDora = false
    var rankPattern: [(String, Int)] = []
    var alphaPattern: [(String, Double)] = []
    /// A list of names, or one regex (`targetRegex`), or "all-linear".
    var targetModules: [String] = []
    var targetRegex: String?
    var excludeModules: [String] = []
    var excludeRegex: String?
    var layersToTransform: [Int]?
    var layersPattern: [String] = []
    var fanInFanOut = false
    var bias = "none"
    var loraBias = false
    var modulesToSave: [String] = []
    var baseModel: String?
    var initR: Int?

    static let known: Set<String> = [
        "peft_type", "r", "lora_alpha", "use_rslora", "use_dora", "rank_pattern", "alpha_pattern", "target_modules",
        "exclude_modules", "layers_to_transform", "layers_pattern", "fan_in_fan_out", "bias", "lora_bias",
        "modules_to_save", "base_model_name_or_path", "init_r", "target_r", "task_type", "inference_mode",
        "lora_dropout", "revision", "init_lora_weights", "auto_mapping",
    ]

    static func parse(_ json: JSON, path: String) throws -> PEFTConfig {
        func fail(_ m: String) -> LoRAError { LoRAError(.format, path: path, m) }
        guard let obj = json.object else { throw fail("top level is \(json.kind), expected an object") }
        var c = PEFTConfig()
        func present(_ k: String) -> JSON? { guard let v = json[k], !v.isNull else { return nil }; return v }
        func int(_ k: String) throws -> Int? {
            guard let v = present(k) else { return nil }
            guard let i = v.int else { throw fail("'\(k)' must be an integer, got \(v.kind)") }
            return i
        }
        func double(_ k: String) throws -> Double? {
            guard let v = present(k) else { return nil }
            guard let d = v.double else { throw fail("'\(k)' must be a number, got \(v.kind)") }
            return d
        }
        func bool(_ k: String) throws -> Bool? {
            guard let v = present(k) else { return nil }
            guard let b = v.bool else { throw fail("'\(k)' must be a boolean, got \(v.kind)") }
            return b
        }
        func strings(_ k: String) throws -> (list: [String], regex: String?) {
            guard let v = present(k) else { return ([], nil) }
            if let s = v.string { return ([], s) }
            guard let a = v.array else { throw fail("'\(k)' must be a string or a list of strings, got \(v.kind)") }
            var out: [String] = []
            for e in a {
                guard let s = e.string else { throw fail("'\(k)' must be a list of strings; found \(e.kind)") }
                out.append(s)
            }
            return (out, nil)
        }
        if let t = present("peft_type") {
            guard let s = t.string else { throw fail("'peft_type' must be a string") }
            c.peftType = s.uppercased()
        }
        guard c.peftType == "LORA" || c.peftType == "ADALORA" else {
            throw LoRAError(.unsupported, path: path, "peft_type '\(c.peftType)' is not supported (supported: LORA, ADALORA)")
        }
        c.initR = try int("init_r")
        c.r = try int("r") ?? c.initR ?? 8
        guard c.r > 0 else { throw fail("'r' must be positive, got \(c.r)") }
        c.loraAlpha = try double("lora_alpha") ?? Double(c.r)
        c.useRslora = try bool("use_rslora") ?? false
        c.useDora = try bool("use_dora") ?? false
        if let rp = present("rank_pattern") {
            guard let o = rp.object else { throw fail("'rank_pattern' must be an object") }
            for (k, v) in o {
                guard let i = v.int, i > 0 else {
                    if c.peftType == "ADALORA" { continue }  // AdaLoRA stores boolean masks here; tensors are already pruned
                    throw fail("rank_pattern['\(k)'] must be a positive integer, got \(v.kind)")
                }
                c.rankPattern.append((k, i))
            }
        }
        if let ap = present("alpha_pattern") {
            guard let o = ap.object else { throw fail("'alpha_pattern' must be an object") }
            for (k, v) in o {
                guard let d = v.double else { throw fail("alpha_pattern['\(k)'] must be a number, got \(v.kind)") }
                c.alphaPattern.append((k, d))
            }
        }
        let t = try strings("target_modules")
        c.targetModules = t.list
        c.targetRegex = t.regex == "all-linear" ? nil : t.regex
        if t.regex == "all-linear" { c.targetModules = ["all-linear"] }
        let e = try strings("exclude_modules")
        c.excludeModules = e.list
        c.excludeRegex = e.regex
        if let l = present("layers_to_transform") {
            if let i = l.int { c.layersToTransform = [i] } else if let a = l.array {
                var out: [Int] = []
                for x in a {
                    guard let i = x.int else { throw fail("'layers_to_transform' must be an integer or a list of integers") }
                    out.append(i)
                }
                c.layersToTransform = out
            } else {
                throw fail("'layers_to_transform' must be an integer or a list of integers, got \(l.kind)")
            }
        }
        c.layersPattern = try strings("layers_pattern").list + (try strings("layers_pattern").regex.map { [$0] } ?? [])
        c.fanInFanOut = try bool("fan_in_fan_out") ?? false
        if let b = present("bias") {
            guard let s = b.string, ["none", "all", "lora_only"].contains(s) else { throw fail("'bias' must be \"none\", \"all\" or \"lora_only\"") }
            c.bias = s
        }
        c.loraBias = try bool("lora_bias") ?? false
        c.modulesToSave = try strings("modules_to_save").list
        c.baseModel = present("base_model_name_or_path")?.string
        for (k, v) in obj where !known.contains(k) && !v.isNull {
            loraLogger.debug("\(path): ignoring adapter_config.json field '\(k)'")
        }
        return c
    }

    /// PEFT's pattern key lookup: the regex `(.*\.)?(KEY)$` must match the module name from its
    /// start. Where several keys match, the first in file order wins (PEFT iterates the dict).
    static func patternKey<T>(_ pattern: [(String, T)], _ module: String) -> T? {
        for (k, v) in pattern where regexMatch("^(.*\\.)?(\(k))$", module) { return v }
        return nil
    }

    func rank(for module: String) -> Int { PEFTConfig.patternKey(rankPattern, module) ?? r }
    func alpha(for module: String) -> Double { PEFTConfig.patternKey(alphaPattern, module) ?? loraAlpha }

    /// Whether PEFT would have adapted `module` (used to drop tensors that exclude/layers filters reject).
    func excluded(_ module: String, layer: Int?) -> Bool {
        if let re = excludeRegex, regexMatch("^(?:\(re))$", module) { return true }
        for k in excludeModules where module == k || module.hasSuffix("." + k) { return true }
        if let layers = layersToTransform, let l = layer, !layers.contains(l) { return true }
        return false
    }
}

func regexMatch(_ pattern: String, _ s: String) -> Bool {
    guard let re = try? NSRegularExpression(pattern: pattern) else { return false }
    return re.firstMatch(in: s, range: NSRange(s.startIndex..., in: s)) != nil
}

/// Splits a module path like `model.layers.3.self_attn.q_proj` into (layer, projection).
func placeModule(_ module: String, layersPattern: [String] = []) -> (layer: Int?, projection: Projection?) {
    let parts = module.split(separator: ".").map(String.init)
    var layer: Int? = nil
    let names = ["layers", "h", "blocks", "layer"] + layersPattern
    for (i, p) in parts.enumerated() where names.contains(p) && i + 1 < parts.count {
        if let l = Int(parts[i + 1]) { layer = l; break }
    }
    return (layer, parts.last.flatMap { Projection(rawValue: $0) })
}

extension LoRAAdapter {
    /// Loads a PEFT adapter folder: `adapter_config.json` + `adapter_model.safetensors`.
    public static func loadPEFT(directory: String) throws -> LoRAAdapter {
        let dir = URL(fileURLWithPath: directory)
        let configPath = dir.appendingPathComponent("adapter_config.json").path
        let cfg = try PEFTConfig.parse(readJSON(configPath), path: configPath)
        let stPath = dir.appendingPathComponent("adapter_model.safetensors").path
        guard FileManager.default.fileExists(atPath: stPath) else {
            if FileManager.default.fileExists(atPath: dir.appendingPathComponent("adapter_model.bin").path) {
                throw LoRAError(.unsupported, path: directory, "adapter_model.bin (PyTorch pickle) is not supported; save the adapter with safe_serialization=True (adapter_model.safetensors)")
            }
            throw LoRAError(.format, path: directory, "missing adapter_model.safetensors")
        }
        let st: SafetensorsFile
        do { st = try SafetensorsFile(path: stPath) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        func floats(_ name: String) throws -> [Float] {
            do { return try st.floats(name) } catch let e as FormatError { throw LoRAError(.format, path: e.path, e.message) }
        }
        func fail(_ m: String) -> LoRAError { LoRAError(.format, path: stPath, m) }

        // Group tensors by module.
        struct Parts { var a, b, e, mag, loraBias, baseBias, ranknum: String? }
        var groups: [String: Parts] = [:]
        var saved: [SavedModule] = []
        var unplaced: [UnplacedTensor] = []
        for name in st.tensors.keys.sorted() {
            var rel = name
            for prefix in ["base_model.model.", "base_model."] where rel.hasPrefix(prefix) { rel = String(rel.dropFirst(prefix.count)); break }
            let comps = rel.split(separator: ".").map(String.init)
            if let li = comps.firstIndex(where: { $0.hasPrefix("lora_") }) {
                let module = comps[..<li].joined(separator: ".")
                let kind = comps[li]
                let tail = comps[(li + 1)...].last ?? ""
                var p = groups[module] ?? Parts()
                switch (kind, tail) {
                case ("lora_A", "weight"), ("lora_A", "lora_A"): p.a = name
                case ("lora_B", "weight"), ("lora_B", "lora_B"): p.b = name
                case ("lora_B", "bias"): p.loraBias = name
                case ("lora_E", _): p.e = name
                case ("lora_magnitude_vector", _): p.mag = name
                default:
                    loraLogger.debug("\(stPath): ignoring tensor '\(name)'")
                    continue
                }
                groups[module] = p
                continue
            }
            if comps.last == "ranknum" {
                let module = comps.dropLast().joined(separator: ".")
                groups[module, default: Parts()].ranknum = name
                continue
            }
            // modules_to_save (whole replaced tensors) and trained base biases.
            let module = comps.dropLast().joined(separator: ".")
            if comps.last == "bias", placeModule(module).projection != nil {
                groups[module, default: Parts()].baseBias = name
                continue
            }
            if comps.last == "weight", let leaf = comps.dropLast().last, leaf == "lm_head" || leaf == "embed_tokens" {
                guard let info = st.tensors[name], info.shape.count == 2 else { throw fail("tensor '\(name)' must be 2-D") }
                let target: SavedModule.Target = leaf == "lm_head" ? .lmHead : .embedTokens
                saved.append(SavedModule(target: target, tensor: name, rows: info.shape[0], cols: info.shape[1], data: try floats(name)))
                continue
            }
            loraLogger.debug("\(stPath): ignoring tensor '\(name)'")
        }

        var modules: [LoRAModule] = []
        for module in groups.keys.sorted() {
            guard let p = groups[module] else { continue }
            guard let aName = p.a, let bName = p.b else {
                if p.a == nil && p.b == nil { continue }  // only a bias / ranknum: nothing to apply
                throw fail("module '\(module)' has \(p.a == nil ? "lora_B but no lora_A" : "lora_A but no lora_B") tensor")
            }
            let (layer, proj) = placeModule(module, layersPattern: cfg.layersPattern)
            if cfg.excluded(module, layer: layer) {
                loraLogger.debug("\(stPath): skipping '\(module)' (exclude_modules / layers_to_transform)")
                continue
            }
            guard let layer, let proj else {
                unplaced.append(UnplacedTensor(tensor: aName, module: module))
                continue
            }
            guard let ai = st.tensors[aName], let bi = st.tensors[bName] else { continue }
            guard ai.shape.count == 2, bi.shape.count == 2 else {
                throw fail("'\(aName)' is \(ai.shape) and '\(bName)' is \(bi.shape); both must be 2-D")
            }
            var a = try floats(aName), b = try floats(bName)
            var r = ai.shape[0], inF = ai.shape[1], outF = bi.shape[0]
            if bi.shape[1] != r {
                // PEFT itself saves [r, in] / [out, r] whatever fan_in_fan_out says (the flag only
                // transposes the merged delta of Conv1D bases, which Llama models do not have; PEFT
                // turns it off for nn.Linear). With the flag set we also accept the transposed
                // ([in, r] / [r, out], Conv1D-style) layout that some converters write.
                if cfg.fanInFanOut, ai.shape[1] == bi.shape[0] {
                    r = ai.shape[1]; inF = ai.shape[0]; outF = bi.shape[1]
                    a = transpose(a, rows: inF, cols: r)
                    b = transpose(b, rows: r, cols: outF)
                } else {
                    throw fail("lora_A of \(module) is \(ai.shape) and lora_B is \(bi.shape): their ranks disagree (expected [r, in] and [out, r])")
                }
            }
            var scale: Double
            let alpha = cfg.alpha(for: module)
            if cfg.peftType == "ADALORA" {
                guard let eName = p.e, let ei = st.tensors[eName], ei.elementCount == r else {
                    throw fail("AdaLoRA module '\(module)' needs lora_E with \(r) elements")
                }
                let e = try floats(eName)
                for k in 0..<r { for c in 0..<inF { a[k * inF + c] *= e[k] } }
                var ranknum = Double(r)
                if let rn = p.ranknum, let v = try floats(rn).first { ranknum = Double(v) }
                scale = alpha / (ranknum + 1e-5)
            } else {
                let configured = cfg.rank(for: module)
                guard configured == r else {
                    throw fail("lora_A of \(module) has rank \(r) but adapter_config.json gives r = \(configured) for it\(cfg.rankPattern.isEmpty ? "" : " (with rank_pattern)")")
                }
                scale = cfg.useRslora ? alpha / Double(r).squareRoot() : alpha / Double(r)
            }
            var bias: [Float]? = nil
            if let n = p.loraBias {
                let v = try floats(n)
                guard v.count == outF else { throw fail("'\(n)' has \(v.count) elements; lora_B has \(outF) rows") }
                bias = v
            }
            var rb: [Float]? = nil
            if let n = p.baseBias {
                let v = try floats(n)
                guard v.count == outF else { throw fail("'\(n)' has \(v.count) elements; lora_B has \(outF) rows") }
                rb = v
            }
            var mag: [Float]? = nil
            if let n = p.mag {
                let v = try floats(n)
                guard v.count == outF else { throw fail("'\(n)' has \(v.count) elements; lora_B has \(outF) rows") }
                mag = v
            } else if cfg.useDora {
                throw fail("use_dora is set but module '\(module)' has no lora_magnitude_vector")
            }
            if cfg.peftType == "ADALORA" { scale = scale.isFinite ? scale : 0 }
            modules.append(LoRAModule(layer: layer, projection: proj, rank: r, inFeatures: inF, outFeatures: outF, a: a, b: b,
                                      scale: scale, alpha: alpha, bias: bias, replacedBias: rb, magnitude: mag,
                                      aTensor: aName, bTensor: bName))
        }
        for m in cfg.modulesToSave where !saved.contains(where: { $0.target.rawValue == m }) {
            loraLogger.debug("\(stPath): modules_to_save entry '\(m)' has no tensor in the file")
        }
        guard !modules.isEmpty || !saved.isEmpty || !unplaced.isEmpty else {
            throw fail("no LoRA tensors (…lora_A.weight / …lora_B.weight) found")
        }
        var targets = cfg.targetModules
        if let re = cfg.targetRegex { targets = [re] }
        return LoRAAdapter(format: .peft, path: directory, peftType: cfg.peftType, modules: modules, qkRowOrder: .halves,
                           rank: cfg.r, alpha: cfg.loraAlpha, useRslora: cfg.useRslora, useDora: cfg.useDora,
                           targetModules: targets, baseModel: cfg.baseModel, unplaced: unplaced, savedModules: saved)
    }
}

func transpose(_ v: [Float], rows: Int, cols: Int) -> [Float] {
    var out = [Float](repeating: 0, count: v.count)
    for r in 0..<rows { for c in 0..<cols { out[c * rows + r] = v[r * cols + c] } }
    return out
}
