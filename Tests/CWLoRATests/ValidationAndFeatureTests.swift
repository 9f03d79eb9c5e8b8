import CWFormats
import CWKernels
@testable import CWLoRA
import CWTestSupport
import CWTransformer
import XCTest

/// Rejections (each message names the tensor and what was expected) and the less common PEFT
/// features: DoRA, AdaLoRA, biases, modules_to_save, pattern matching, target filters.
final class ValidationAndFeatureTests: XCTestCase {
    let pool = ThreadPool(threads: 2)
    var dirs: [String] = []

    override func tearDown() {
        for d in dirs { try? FileManager.default.removeItem(atPath: d) }
        dirs = []
    }

    func make(_ name: String, config: String, tensors: [OutputTensor]) throws -> LoRAAdapter {
        let d = try Craft.tempDir(name)
        dirs.append(d)
        return try LoRAAdapter.load(path: Craft.peft(d, config: config, tensors: tensors))
    }

    func bindError(_ adapter: LoRAAdapter, _ model: LlamaModel, allowPartial: Bool = false, file: StaticString = #filePath, line: UInt = #line) -> LoRAError? {
        do {
            _ = try LoRAStack(model: model, adapter: adapter, allowPartial: allowPartial)
            XCTFail("binding should have failed", file: file, line: line)
            return nil
        } catch let e as LoRAError {
            return e
        } catch {
            XCTFail("unexpected error \(error)", file: file, line: line)
            return nil
        }
    }

    func testWrongShapeNamesModuleAndExpectedFeatures() throws {
        var rng = Rand(1)
        let a = try make("shape", config: Craft.config(r: 4, alpha: 8, targets: ["k_proj"]),
                         tensors: Craft.loraPair("model.layers.0.self_attn.k_proj", r: 4, out: 64, in: 64, rng: &rng))
        let e = try XCTUnwrap(bindError(a, try Stories.hf()))
        XCTAssertEqual(e.kind, .shapeMismatch)
        XCTAssertTrue(e.message.contains("lora_B of model.layers.0.self_attn.k_proj is [64, 4]; the model's k_proj has 32 output features"), e.message)
    }

    func testLayerOutOfRangePartialAndAllowPartial() throws {
        var rng = Rand(2)
        let model = try Stories.hf()
        let tensors = Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng)
            + Craft.loraPair("model.layers.40.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng)
        let a = try make("layer40", config: Craft.config(r: 4, alpha: 8, targets: ["q_proj"]), tensors: tensors)
        let e = try XCTUnwrap(bindError(a, model))
        XCTAssertEqual(e.kind, .partialMatch)
        XCTAssertTrue(e.message.contains("adapter tensor 'base_model.model.model.layers.40.self_attn.q_proj.lora_A.weight' targets layer 40, the model has 5"), e.message)
        XCTAssertTrue(e.message.contains("allowPartial"), e.message)
        let partial = try LoRAStack(model: model, adapter: a, allowPartial: true)
        XCTAssertEqual(partial.moduleCount, 1)
        XCTAssertEqual(partial.skipped.count, 1)

        let only40 = try make("only40", config: Craft.config(r: 4, alpha: 8, targets: ["q_proj"]),
                              tensors: Craft.loraPair("model.layers.40.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng))
        let e2 = try XCTUnwrap(bindError(only40, model, allowPartial: true))
        XCTAssertEqual(e2.kind, .noMatch)
        XCTAssertTrue(e2.message.contains("targets layer 40, the model has 5"), e2.message)
    }

    func testUnknownModuleIsNamed() throws {
        var rng = Rand(3)
        let tensors = Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng)
            + Craft.loraPair("model.layers.0.self_attn.qkv_proj", r: 4, out: 128, in: 64, rng: &rng)
        let a = try make("unknown", config: Craft.config(r: 4, alpha: 8, targets: ["q_proj", "qkv_proj"]), tensors: tensors)
        let e = try XCTUnwrap(bindError(a, try Stories.hf()))
        XCTAssertEqual(e.kind, .partialMatch)
        XCTAssertTrue(e.message.contains("'base_model.model.model.layers.0.self_attn.qkv_proj.lora_A.weight' targets module 'model.layers.0.self_attn.qkv_proj', which is not one of the model's projections"), e.message)
        XCTAssertEqual(try LoRAStack(model: try Stories.hf(), adapter: a, allowPartial: true).moduleCount, 1)
    }

    func testWrongHiddenSizeIsAnArchitectureMismatch() throws {
        var rng = Rand(4)
        let a = try make("hidden", config: Craft.config(r: 4, alpha: 8, targets: ["q_proj"], extra: "\"base_model_name_or_path\": \"some/bigger-model\""),
                         tensors: Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 128, in: 128, rng: &rng))
        let e = try XCTUnwrap(bindError(a, try Stories.llama2c()))
        XCTAssertEqual(e.kind, .architectureMismatch)
        XCTAssertTrue(e.message.contains("lora_A of model.layers.0.self_attn.q_proj is [4, 128]; the model's q_proj has 64 input features"), e.message)
        XCTAssertTrue(e.message.contains("hidden size 128") && e.message.contains("some/bigger-model") && e.message.contains("hidden size is 64"), e.message)
    }

    func testMalformedAdaptersAreRejectedAtLoad() throws {
        var rng = Rand(5)
        let d = try Craft.tempDir("rank")
        dirs.append(d)
        _ = try Craft.peft(d, config: Craft.config(r: 8, alpha: 8, targets: ["q_proj"]),
                           tensors: Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng))
        XCTAssertThrowsError(try LoRAAdapter.load(path: d)) { e in
            XCTAssertTrue("\(e)".contains("lora_A of model.layers.0.self_attn.q_proj has rank 4 but adapter_config.json gives r = 8"), "\(e)")
        }
        let d2 = try Craft.tempDir("badranks")
        dirs.append(d2)
        _ = try Craft.peft(d2, config: Craft.config(r: 4, alpha: 8, targets: ["q_proj"]), tensors: [
            OutputTensor(name: Craft.name("model.layers.0.self_attn.q_proj", "lora_A.weight"), shape: [4, 64], values: rng.floats(256)),
            OutputTensor(name: Craft.name("model.layers.0.self_attn.q_proj", "lora_B.weight"), shape: [64, 3], values: rng.floats(192)),
        ])
        XCTAssertThrowsError(try LoRAAdapter.load(path: d2)) { e in XCTAssertTrue("\(e)".contains("ranks disagree"), "\(e)") }
        let d3 = try Craft.tempDir("badjson")
        dirs.append(d3)
        try Data("{\"r\": 4,".utf8).write(to: URL(fileURLWithPath: d3 + "/adapter_config.json"))
        XCTAssertThrowsError(try LoRAAdapter.load(path: d3)) { e in XCTAssertTrue("\(e)".contains("adapter_config.json: not valid JSON"), "\(e)") }
        let d4 = try Craft.tempDir("vera")
        dirs.append(d4)
        try Data("{\"peft_type\": \"VERA\", \"r\": 4}".utf8).write(to: URL(fileURLWithPath: d4 + "/adapter_config.json"))
        XCTAssertThrowsError(try LoRAAdapter.load(path: d4)) { e in XCTAssertTrue("\(e)".contains("peft_type 'VERA' is not supported"), "\(e)") }
    }

    func testPatternsFiltersAndUnknownConfigKeys() throws {
        var rng = Rand(6)
        var tensors: [OutputTensor] = []
        for l in 0..<5 {
            tensors += Craft.loraPair("model.layers.\(l).self_attn.q_proj", r: l == 3 ? 2 : 4, out: 64, in: 64, rng: &rng)
            tensors += Craft.loraPair("model.layers.\(l).mlp.up_proj", r: 4, out: 172, in: 64, rng: &rng)
        }
        let config = Craft.config(r: 4, alpha: 8, targets: ["q_proj", "up_proj"], extra: """
        "use_rslora": true, "rank_pattern": {"layers.3.self_attn.q_proj": 2}, "alpha_pattern": {"up_proj": 2, "13.self_attn.q_proj": 100},
        "layers_to_transform": [0, 1, 3, 4], "exclude_modules": ["model.layers.4.mlp.up_proj"], "some_future_field": {"x": 1}
        """)
        let a = try make("patterns", config: config, tensors: tensors)
        XCTAssertNil(a.module(named: "model.layers.2.self_attn.q_proj"), "layers_to_transform drops layer 2")
        XCTAssertNil(a.module(named: "model.layers.4.mlp.up_proj"), "exclude_modules")
        XCTAssertEqual(a.modules.count, 7)
        XCTAssertEqual(try XCTUnwrap(a.module(named: "model.layers.3.self_attn.q_proj")).scale, 8 / 2.0.squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(try XCTUnwrap(a.module(named: "model.layers.1.self_attn.q_proj")).scale, 8 / 4.0.squareRoot(), accuracy: 1e-12,
                       "'13.self_attn.q_proj' must not match layer 3 or 1 (whole name components)")
        XCTAssertEqual(try XCTUnwrap(a.module(named: "model.layers.0.mlp.up_proj")).scale, 2 / 4.0.squareRoot(), accuracy: 1e-12)
        XCTAssertEqual(try LoRAStack(model: try Stories.hf(), adapter: a).moduleCount, 7)
    }

    func testFanInFanOutAcceptsTransposedTensors() throws {
        var rng = Rand(11)
        let aVals = rng.floats(4 * 64, scale: 0.3), bVals = rng.floats(32 * 4, scale: 0.3)
        let name = "model.layers.2.self_attn.v_proj"
        let plain = try make("fifo-plain", config: Craft.config(r: 4, alpha: 8, targets: ["v_proj"]), tensors: [
            OutputTensor(name: Craft.name(name, "lora_A.weight"), shape: [4, 64], values: aVals),
            OutputTensor(name: Craft.name(name, "lora_B.weight"), shape: [32, 4], values: bVals)])
        let t = try make("fifo", config: Craft.config(r: 4, alpha: 8, targets: ["v_proj"], extra: "\"fan_in_fan_out\": true"), tensors: [
            OutputTensor(name: Craft.name(name, "lora_A.weight"), shape: [64, 4], values: transpose(aVals, rows: 4, cols: 64)),
            OutputTensor(name: Craft.name(name, "lora_B.weight"), shape: [4, 32], values: transpose(bVals, rows: 32, cols: 4))])
        XCTAssertEqual(t.contentHash, plain.contentHash)
    }

    /// DoRA: y = m ⊙ (W + sBA)x / ‖W + sBA‖_row, unmerged and merged, against weights computed here.
    func testDoRAMatchesReferenceWeights() throws {
        var rng = Rand(7)
        var tensors: [OutputTensor] = []
        let mods: [(Int, Projection)] = [(0, .q), (1, .k), (2, .v), (4, .down)]
        for (l, p) in mods {
            let name = p.hfModuleName(layer: l)
            let (out, inF) = Craft.shape(p)
            tensors += Craft.loraPair(name, r: 4, out: out, in: inF, rng: &rng)
            tensors.append(OutputTensor(name: Craft.name(name, "lora_magnitude_vector.weight"), shape: [out], values: (0..<out).map { _ in 1 + 0.5 * rng.next() }))
        }
        let a = try make("dora", config: Craft.config(r: 4, alpha: 8, targets: ["q_proj", "k_proj", "v_proj", "down_proj"], extra: "\"use_dora\": true"), tensors: tensors)
        XCTAssertTrue(a.useDora)
        for model in [try Stories.hf(), try Stories.llama2c()] {
            // Reference weights (in the model's row order) computed in Double.
            let inModelOrder = try a.withRowOrder(model.config.ropeStyle, heads: 8, kvHeads: 4, headDim: 8)
            var w = model.weights
            for m in inModelOrder.modules {
                let base = dense(model.weights.layers[m.layer].matrix(m.projection))
                var out = [Float](repeating: 0, count: base.count)
                for o in 0..<m.outFeatures {
                    var row = [Double](repeating: 0, count: m.inFeatures)
                    for c in 0..<m.inFeatures {
                        var d = 0.0
                        for k in 0..<m.rank { d += Double(m.b[o * m.rank + k]) * Double(m.a[k * m.inFeatures + c]) }
                        row[c] = Double(base[o * m.inFeatures + c]) + m.scale * d
                    }
                    let norm = row.reduce(0) { $0 + $1 * $1 }.squareRoot()
                    for c in 0..<m.inFeatures { out[o * m.inFeatures + c] = Float(Double(m.magnitude![o]) * row[c] / norm) }
                }
                w.layers[m.layer].setMatrix(m.projection, try fp32Matrix(out, rows: m.outFeatures, cols: m.inFeatures))
            }
            let reference = LlamaModel(config: model.config, weights: w, source: model.source, ropeFrequencyFactors: nil)
            let ref = try Stories.logits(reference, nil, pool: pool)
            let unmerged = try Stories.logits(model, try LoRAStack(model: model, adapter: a), pool: pool)
            let merged = try Stories.logits(try a.merged(model: model).model, nil, pool: pool)
            let base = try Stories.logits(model, nil, pool: pool)
            XCTAssertGreaterThan(Compare.maxAbsDiff(ref[...], base[...]), 1e-2, "the DoRA adapter changes the logits")
            print("[dora] \(model.source.formatName): unmerged \(Compare.maxAbsDiff(unmerged[...], ref[...])) merged \(Compare.maxAbsDiff(merged[...], ref[...]))")
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(unmerged[...], ref[...]), 1e-4)
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(merged[...], ref[...]), 1e-4)
        }
    }

    /// AdaLoRA: ΔW = B (A ⊙ E), scale lora_alpha / (ranknum + 1e-5).
    func testAdaLoRAEqualsEquivalentLoRA() throws {
        var rng = Rand(8)
        let name = "model.layers.1.self_attn.v_proj"
        let aVals = rng.floats(3 * 64, scale: 0.3), bVals = rng.floats(32 * 3, scale: 0.3), e: [Float] = [0.5, -1.5, 2]
        let ada = try make("adalora", config: "{\"peft_type\": \"ADALORA\", \"r\": 8, \"init_r\": 12, \"target_r\": 3, \"lora_alpha\": 6, \"target_modules\": [\"v_proj\"], \"rank_pattern\": {\"model.layers.1.self_attn.v_proj\": [true, false, true, true]}}", tensors: [
            OutputTensor(name: Craft.name(name, "lora_A.weight"), shape: [3, 64], values: aVals),
            OutputTensor(name: Craft.name(name, "lora_B.weight"), shape: [32, 3], values: bVals),
            OutputTensor(name: Craft.name(name, "lora_E.weight"), shape: [3, 1], values: e),
        ])
        XCTAssertEqual(ada.peftType, "ADALORA")
        let m = try XCTUnwrap(ada.module(named: name))
        XCTAssertEqual(m.scale, 6 / (3 + 1e-5))
        var ae = aVals
        for k in 0..<3 { for c in 0..<64 { ae[k * 64 + c] *= e[k] } }
        let plain = LoRAAdapter(format: .memory, path: "plain", modules: [
            LoRAModule(layer: 1, projection: .v, rank: 3, inFeatures: 64, outFeatures: 32, a: ae, b: bVals, scale: 6 / (3 + 1e-5), alpha: 6, aTensor: "A", bTensor: "B"),
        ], qkRowOrder: .halves, rank: 3, alpha: 6)
        let model = try Stories.hf()
        XCTAssertEqual(try Stories.logits(model, try LoRAStack(model: model, adapter: ada), pool: pool),
                       try Stories.logits(model, try LoRAStack(model: model, adapter: plain), pool: pool))
    }

    /// lora_B.bias (lora_bias) and trained base biases (bias: all): unmerged adds them after the
    /// matmul; merging folds q/k/v ones into the model's biases and refuses others.
    func testBiasesUnmergedAndMerged() throws {
        var rng = Rand(9)
        var tensors = Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng)
            + Craft.loraPair("model.layers.2.self_attn.v_proj", r: 4, out: 32, in: 64, rng: &rng)
        tensors.append(OutputTensor(name: Craft.name("model.layers.0.self_attn.q_proj", "lora_B.bias"), shape: [64], values: rng.floats(64)))
        tensors.append(OutputTensor(name: Craft.name("model.layers.2.self_attn.v_proj", "bias"), shape: [32], values: rng.floats(32)))
        let a = try make("bias", config: Craft.config(r: 4, alpha: 4, targets: ["q_proj", "v_proj"], extra: "\"bias\": \"all\", \"lora_bias\": true"), tensors: tensors)
        XCTAssertNotNil(a.module(named: "model.layers.0.self_attn.q_proj")?.bias)
        XCTAssertNotNil(a.module(named: "model.layers.2.self_attn.v_proj")?.replacedBias)
        for model in [try Stories.hf(), try Stories.llama2c()] {
            let merged = try a.merged(model: model)
            XCTAssertNotNil(merged.model.weights.layers[0].bq)
            XCTAssertNotNil(merged.model.weights.layers[2].bv)
            let u = try Stories.logits(model, try LoRAStack(model: model, adapter: a), pool: pool)
            let mm = try Stories.logits(merged.model, nil, pool: pool)
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(u[...], mm[...]), 1e-4, model.source.formatName)
            XCTAssertNil(merged.unmerge().weights.layers[0].bq)
        }
        var t2 = Craft.loraPair("model.layers.0.self_attn.o_proj", r: 4, out: 64, in: 64, rng: &rng)
        t2.append(OutputTensor(name: Craft.name("model.layers.0.self_attn.o_proj", "lora_B.bias"), shape: [64], values: rng.floats(64)))
        let o = try make("obias", config: Craft.config(r: 4, alpha: 4, targets: ["o_proj"], extra: "\"lora_bias\": true"), tensors: t2)
        let model = try Stories.hf()
        XCTAssertNoThrow(try LoRAStack(model: model, adapter: o))
        XCTAssertThrowsError(try o.merged(model: model)) { e in XCTAssertTrue("\(e)".contains("no o_proj bias"), "\(e)") }
    }

    /// modules_to_save: a replaced lm_head is applied by merging; unmerged binding refuses clearly.
    func testModulesToSaveLMHead() throws {
        var rng = Rand(10)
        let model = try Stories.hf()
        let emb = dense(model.weights.tokenEmbedding)
        var tensors = Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng, bScale: 0)
        tensors.append(OutputTensor(name: "base_model.model.lm_head.weight", shape: [512, 64], values: emb.map { $0 * 2 }))
        let a = try make("mts", config: Craft.config(r: 4, alpha: 4, targets: ["q_proj"], extra: "\"modules_to_save\": [\"lm_head\"]"), tensors: tensors)
        XCTAssertEqual(a.savedModules.map(\.target), [.lmHead])
        XCTAssertEqual(a.summary.modulesToSave, ["lm_head"])
        let e = try XCTUnwrap(bindError(a, model))
        XCTAssertEqual(e.kind, .unsupported)
        XCTAssertTrue(e.message.contains("replaces lm_head") && e.message.contains("base_model.model.lm_head.weight"), e.message)
        let merged = try a.merged(model: model)
        XCTAssertFalse(merged.model.weights.outputIsTied)
        let base = try Stories.logits(model, nil, pool: pool)
        let got = try Stories.logits(merged.model, nil, pool: pool)
        XCTAssertLessThanOrEqual(Compare.maxAbsDiff(got[...], base.map { $0 * 2 }[...]), 1e-4, "lm_head doubled → logits doubled")
        XCTAssertEqual(try Stories.logits(merged.unmerge(), nil, pool: pool), base)

        // embed_tokens: replaces the input embedding; a tied head keeps the original weights (PEFT's
        // ModulesToSaveWrapper copies the module, the head still points at the original parameter).
        var t3 = Craft.loraPair("model.layers.0.self_attn.q_proj", r: 4, out: 64, in: 64, rng: &rng, bScale: 0)
        t3.append(OutputTensor(name: "base_model.model.model.embed_tokens.weight", shape: [512, 64], values: emb.map { $0 * 3 }))
        let e2 = try make("mts-embed", config: Craft.config(r: 4, alpha: 4, targets: ["q_proj"], extra: "\"modules_to_save\": [\"embed_tokens\"]"), tensors: t3)
        let m2 = try e2.merged(model: model)
        XCTAssertEqual(dense(m2.model.weights.tokenEmbedding), emb.map { $0 * 3 })
        XCTAssertEqual(dense(m2.model.weights.output), emb)
        XCTAssertEqual(m2.extraBytes, 4 * (64 * 64 + 512 * 64))
    }
}
