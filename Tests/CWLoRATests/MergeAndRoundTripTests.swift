import CWFormats
import CWKernels
@testable import CWLoRA
import CWTestSupport
import CWTransformer
import XCTest

/// Merge / unmerge, GGUF and MLX round trips, stacking, the merged HF writer.
final class MergeAndRoundTripTests: XCTestCase {
    let pool = ThreadPool(threads: 2)

    func storiesAdapter() throws -> LoRAAdapter { try LoRAAdapter.load(path: TestPaths.sharedFile("adapters/stories260K-random-r8")) }

    func testMergedEqualsUnmergedAndUnmergeRestoresBaseExactly() throws {
        let adapter = try storiesAdapter()
        for model in [try Stories.llama2c(), try Stories.hf()] {
            let stack = try LoRAStack(model: model, adapter: adapter)
            let merged = try stack.merge()
            XCTAssertEqual(merged.touched.count, 35)
            XCTAssertEqual(merged.extraBytes, 5 * 4 * (64 * 64 * 2 + 32 * 64 * 2 + 172 * 64 * 3))
            let a = try Stories.logits(model, stack, pool: pool)
            let b = try Stories.logits(merged.model, nil, pool: pool)
            let diff = Compare.maxAbsDiff(a[...], b[...])
            print("[merge] \(model.source.formatName): merged vs unmerged max|diff| \(diff)")
            XCTAssertLessThanOrEqual(diff, 1e-4)

            let restored = merged.unmerge()
            for l in 0..<model.config.layers {
                for p in Projection.allCases {
                    let o = model.weights.layers[l].matrix(p), r = restored.weights.layers[l].matrix(p)
                    XCTAssertEqual(o.base, r.base, "layer \(l) \(p): unmerge gives the original mapped matrix back")
                    XCTAssertEqual(memcmp(o.base, r.base, o.byteCount), 0)
                    XCTAssertNotEqual(merged.model.weights.layers[l].matrix(p).base, o.base)
                }
            }
            XCTAssertEqual(try Stories.logits(restored, nil, pool: pool), try Stories.logits(model, nil, pool: pool), "unmerged model runs bit-identically to the base")
        }
    }

    /// fp16 merged copies (the engine's choice under fast precision): half the bytes, logits within
    /// the fp16 rounding of the merged weights of the fp32 merge.
    func testF16MergeHalvesMemoryAndStaysClose() throws {
        let adapter = try storiesAdapter()
        let model = try Stories.hf()
        let stack = try LoRAStack(model: model, adapter: adapter)
        let m32 = try stack.merge(), m16 = try stack.merge(format: .f16)
        XCTAssertEqual(m16.extraBytes * 2, m32.extraBytes)
        XCTAssertEqual(m16.model.weights.layers[0].matrix(.q).type, .f16)
        let a = try Stories.logits(m32.model, nil, pool: pool)
        let b = try Stories.logits(m16.model, nil, pool: pool)
        let rel = Compare.relativeL2(b[...], a[...])
        print("[merge] f16 vs f32 merged: relative L2 \(rel), max|diff| \(Compare.maxAbsDiff(a[...], b[...]))")
        XCTAssertLessThanOrEqual(rel, 2e-3)
        XCTAssertEqual(Compare.argmax(a[...]), Compare.argmax(b[...]))
    }

    /// In-place fp32: W' = W + fl(fl(BA)·s), W'' = W' − (same delta). Per element
    /// |W'' − W| ≤ 2⁻²⁴(|W'| + |W''|) (two round-to-nearest errors of half an ulp each).
    func testInPlaceFP32MergeUnmergeBound() throws {
        let model = try Stories.llama2c()
        let stack = try LoRAStack(model: model, adapter: try storiesAdapter())
        var worst = 0.0, changed = 0
        for l in 0..<model.config.layers {
            for p in Projection.allCases {
                let m = model.weights.layers[l].matrix(p)
                XCTAssertEqual(m.type, .f32)
                let w = dense(m)
                var buf = w
                try buf.withUnsafeMutableBufferPointer { try stack.addDelta(layer: l, projection: p, to: $0.baseAddress!, rows: m.rows, cols: m.cols, sign: 1) }
                let merged = buf
                changed += zip(w, merged).filter { $0 != $1 }.count
                try buf.withUnsafeMutableBufferPointer { try stack.addDelta(layer: l, projection: p, to: $0.baseAddress!, rows: m.rows, cols: m.cols, sign: -1) }
                for i in w.indices {
                    let bound = Double(abs(merged[i]) + abs(buf[i])) * 0x1p-24
                    let err = Double(abs(buf[i] - w[i]))
                    XCTAssertLessThanOrEqual(err, bound, "layer \(l) \(p) element \(i)")
                    worst = max(worst, err)
                }
            }
        }
        print("[in-place fp32] \(changed) elements changed by the merge; unmerge max |W'' - W| = \(worst)")
        XCTAssertGreaterThan(changed, 0)
    }

    func testStackWeightsAndCallScale() throws {
        let model = try Stories.hf()
        let adapter = try storiesAdapter()
        let one = try Stories.logits(model, try LoRAStack(model: model, adapter: adapter), pool: pool)
        let halves = try LoRAStack(model: model, adapters: [AdapterBinding(adapter, weight: 0.5), AdapterBinding(adapter, weight: 0.5)])
        XCTAssertEqual(halves.moduleCount, 70)
        XCTAssertLessThanOrEqual(Compare.maxAbsDiff(try Stories.logits(model, halves, pool: pool)[...], one[...]), 1e-4)
        let base = try Stories.logits(model, nil, pool: pool)
        XCTAssertEqual(try Stories.logits(model, halves.scaled(0), pool: pool), base, "scale 0 is the base model exactly")
        let doubled = try LoRAStack(model: model, adapter: adapter, weight: 2)
        XCTAssertLessThanOrEqual(Compare.maxAbsDiff(try Stories.logits(model, doubled, pool: pool)[...], try Stories.logits(model, halves.scaled(2), pool: pool)[...]), 1e-4)
        XCTAssertEqual(doubled.effectiveScales()["model.layers.0.self_attn.q_proj"], 4)
    }

    /// PEFT → GGUF LoRA (our writer) → load, and PEFT → MLX → load → GGUF → load: same modules, same logits.
    func testGGUFAndMLXRoundTrips() throws {
        let peft = try storiesAdapter()
        let hf = try Stories.hf(), l2c = try Stories.llama2c()
        let dir = try Craft.tempDir("roundtrip")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let ggufPath = dir + "/stories-lora.gguf"
        try peft.writeGGUF(to: ggufPath, config: l2c.config)
        let gguf = try LoRAAdapter.load(path: ggufPath)
        XCTAssertEqual(gguf.format, .gguf)
        XCTAssertEqual(gguf.qkRowOrder, .interleaved)
        XCTAssertEqual(gguf.modules.count, 35)
        XCTAssertTrue(gguf.modules.allSatisfy { $0.scale == 2 && $0.rank == 8 })
        // Back in HF order, the values are the PEFT values bit for bit.
        let back = try gguf.withRowOrder(.halves, heads: 8, kvHeads: 4, headDim: 8)
        XCTAssertEqual(back.contentHash, peft.contentHash)
        XCTAssertNotEqual(gguf.contentHash, peft.contentHash)

        let mlxDir = dir + "/mlx"
        try peft.writeMLX(to: mlxDir)
        let mlx = try LoRAAdapter.load(path: mlxDir)
        XCTAssertEqual(mlx.format, .mlx)
        XCTAssertEqual(mlx.contentHash, peft.contentHash, "MLX round trip keeps every value")
        try mlx.writeGGUF(to: dir + "/from-mlx.gguf", config: hf.config)
        let gguf2 = try LoRAAdapter.load(path: dir + "/from-mlx.gguf")
        XCTAssertEqual(gguf2.contentHash, gguf.contentHash)
        try gguf2.writeMLX(to: dir + "/mlx2", config: hf.config)
        XCTAssertEqual(try LoRAAdapter.load(path: dir + "/mlx2").contentHash, peft.contentHash, "GGUF → MLX back to the PEFT values")

        for model in [hf, l2c] {
            let ref = try Stories.logits(model, try LoRAStack(model: model, adapter: peft), pool: pool)
            for (name, a) in [("gguf", gguf), ("mlx", mlx), ("gguf-from-mlx", gguf2)] {
                let got = try Stories.logits(model, try LoRAStack(model: model, adapter: a), pool: pool)
                XCTAssertEqual(got, ref, "\(model.source.formatName) via \(name): identical logits")
            }
        }
    }

    /// A GGUF LoRA written by gguf-py with llama.cpp's permute (Fixtures/README.md): our reader and
    /// row-order handling reproduce PEFT's golden on both models, and our writer writes the same tensors.
    func testGGUFPyFixtureMatchesPEFTGoldenAndOurWriter() throws {
        let fixture = TestPaths.packageRoot().appendingPathComponent("Tests/CWLoRATests/Fixtures/stories260K-random-r8.lora.gguf").path
        let gguf = try LoRAAdapter.load(path: fixture)
        XCTAssertEqual(gguf.format, .gguf)
        XCTAssertEqual(gguf.modules.count, 35)
        XCTAssertTrue(gguf.modules.allSatisfy { $0.scale == 2 })
        let dir = try Craft.tempDir("ours")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let l2c = try Stories.llama2c()
        try storiesAdapter().writeGGUF(to: dir + "/ours.gguf", config: l2c.config)
        XCTAssertEqual(try LoRAAdapter.load(path: dir + "/ours.gguf").contentHash, gguf.contentHash, "our writer = gguf-py + llama.cpp permute")

        let g = try TestPaths.json("golden/stories260k/goldens.json")
        let p = try XCTUnwrap((g["prompts"] as? [[String: Any]])?.last)
        let ids = try XCTUnwrap(p["ids"] as? [Int])
        let v = try XCTUnwrap((p["variants"] as? [String: Any])?["lora"] as? [String: Any])
        let golden = try TestPaths.floats("golden/stories260k/" + (v["logits_file"] as! String))
        for model in [l2c, try Stories.hf()] {
            let logits = try Stories.logits(model, try LoRAStack(model: model, adapter: gguf), ids: ids, pool: pool)
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(logits[...], golden[...]), 1e-4, "\(model.source.formatName) with the gguf-py LoRA")
        }
    }

    /// SmolLM2 adapter b (per-module scales: rsLoRA + rank/alpha patterns) through our GGUF writer,
    /// applied to the GGUF model with no permutation at binding: still matches PEFT's golden.
    func testSmolLM2AdapterBThroughGGUFMatchesGolden() throws {
        let model = try SmolLM2LoRAGoldenTests.model()
        let peft = try LoRAAdapter.load(path: TestPaths.sharedFile("golden/smollm2-lora/adapter-b-r8-rslora-qv-patterns"))
        let dir = try Craft.tempDir("smol-b")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        try peft.writeGGUF(to: dir + "/b.gguf", config: model.config)
        let gguf = try LoRAAdapter.load(path: dir + "/b.gguf")
        let fileScale = try XCTUnwrap(gguf.module(named: "model.layers.0.self_attn.q_proj")).scale
        XCTAssertEqual(fileScale, 16 / 8.0.squareRoot(), accuracy: 1e-6)
        let g = try TestPaths.json("golden/smollm2-lora/goldens.json")
        let prompt = try XCTUnwrap(((g["adapters"] as? [String: Any])?["b"] as? [String: Any])?["prompts"] as? [[String: Any]]).first!
        let ids = try XCTUnwrap(prompt["ids"] as? [Int])
        let golden = try TestPaths.floats("golden/smollm2-lora/" + ((prompt["unmerged"] as! [String: Any])["final_logits_file"] as! String))
        let logits = try model.forward(ids, cache: model.makeCache(), options: ForwardOptions(precision: .exact, pool: pool),
                                       delta: try LoRAStack(model: model, adapter: gguf))
        let diff = Compare.maxAbsDiff(logits[...], golden[...])
        print("[smollm2 b via GGUF] max|diff| \(diff)")
        XCTAssertLessThanOrEqual(diff, 2e-3)
        XCTAssertLessThanOrEqual(Compare.relativeL2(logits[...], golden[...]), 1e-4)
    }

    /// The merged HF folder of the llama2.c model (interleaved rows → un-permuted to HF order)
    /// loads as an HF model and reproduces PEFT's merged golden.
    func testWriteMergedHFFromInterleavedModel() throws {
        let dir = try Craft.tempDir("merged-hf")
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let merged = try writeMergedHF(model: try Stories.llama2c(), adapters: [AdapterBinding(try storiesAdapter())], to: dir)
        XCTAssertGreaterThan(merged.extraBytes, 0)
        let reloaded = try LlamaModel(huggingFaceDirectory: dir)
        XCTAssertEqual(reloaded.config.ropeStyle, .halves)
        XCTAssertTrue(reloaded.weights.outputIsTied)
        let g = try TestPaths.json("golden/stories260k/goldens.json")
        for p in try XCTUnwrap(g["prompts"] as? [[String: Any]]) {
            let ids = try XCTUnwrap(p["ids"] as? [Int])
            let v = try XCTUnwrap((p["variants"] as? [String: Any])?["merged"] as? [String: Any])
            let golden = try TestPaths.floats("golden/stories260k/" + (v["logits_file"] as! String))
            let logits = try Stories.logits(reloaded, nil, ids: ids, pool: pool)
            XCTAssertLessThanOrEqual(Compare.maxAbsDiff(logits[...], golden[...]), 1e-4, "merged HF '\(p["name"]!)'")
        }
    }

    func testLoadDetectionSpecAndSummary() throws {
        let peftDir = try TestPaths.sharedFile("adapters/stories260K-random-r8")
        XCTAssertEqual(try LoRAAdapter.load(path: peftDir + "/adapter_model.safetensors").format, .peft)
        XCTAssertEqual(try LoRAAdapter.load(path: peftDir + "/adapter_config.json").format, .peft)
        XCTAssertEqual(try AdapterSpec.parse("dir/a:0.5"), AdapterSpec(path: "dir/a", weight: 0.5))
        XCTAssertEqual(try AdapterSpec.parse("dir/a"), AdapterSpec(path: "dir/a", weight: 1))
        XCTAssertEqual(try AdapterSpec.parse("C:dir/a:-1"), AdapterSpec(path: "C:dir/a", weight: -1))
        XCTAssertEqual(try AdapterSpec.parse("dir/a:b"), AdapterSpec(path: "dir/a:b", weight: 1))
        XCTAssertThrowsError(try AdapterSpec.parse(":2"))
        XCTAssertThrowsError(try LoRAAdapter.load(path: "/nonexistent/adapter")) { e in
            XCTAssertTrue("\(e)".contains("not found"), "\(e)")
        }

        let b = try LoRAAdapter.load(path: TestPaths.sharedFile("golden/smollm2-lora/adapter-b-r8-rslora-qv-patterns"))
        let s = b.summary
        XCTAssertEqual(s.ranks, [4, 8])
        XCTAssertEqual(s.moduleCount, 60)
        XCTAssertEqual(s.targetModules.sorted(), ["q_proj", "v_proj"])
        XCTAssertTrue(s.useRslora)
        XCTAssertEqual(s.sizeBytes, b.byteCount)
        XCTAssertEqual(s.scales.count, 3)
        XCTAssertEqual(s.contentHash.count, 16)
        let json = try JSONEncoder().encode(s)
        XCTAssertEqual(try JSONDecoder().decode(AdapterSummary.self, from: json), s)
    }
}
