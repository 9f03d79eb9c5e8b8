import CWFormats
import CWKernels
import Foundation
import XCTest

/// Rows of a matrix dequantized to fp32.
func rows(_ m: WeightMatrix) -> [[Float]] {
    (0..<m.rows).map { r in
        var row = [Float](repeating: 0, count: m.cols)
        row.withUnsafeMutableBufferPointer { m.dequantizeRow(r, into: $0.baseAddress!) }
        return row
    }
}

/// A safetensors file from (name, dtype, shape, bytes) entries laid out in order.
func safetensorsBytes(_ entries: [(String, String, [Int], [UInt8])], metadata: [String: String]? = nil, offsets: [[Int]]? = nil) throws -> [UInt8] {
    var header: [String: Any] = [:]
    var data: [UInt8] = []
    for (i, (name, dtype, shape, bytes)) in entries.enumerated() {
        let offs = offsets?[i] ?? [data.count, data.count + bytes.count]
        header[name] = ["dtype": dtype, "shape": shape, "data_offsets": offs]
        data += bytes
    }
    if let m = metadata { header["__metadata__"] = m }
    var json = Array(try JSONSerialization.data(withJSONObject: header, options: [.sortedKeys]))
    while (json.count + 8) % 8 != 0 { json.append(0x20) }
    var w = ByteWriter()
    w.u64(UInt64(json.count))
    w.raw(json)
    w.raw(data)
    return w.bytes
}

final class SafetensorsTests: XCTestCase {
    func testStories260KFolder() throws {
        let dir = try TestPaths.require(TestPaths.stories260KHF, "stories260K-hf model folder")
        let c = try SafetensorsCollection(directory: dir)
        XCTAssertEqual(c.names.count, 47)
        func shape(_ n: String) -> [Int]? { c.info(n)?.shape }
        XCTAssertEqual(shape("model.embed_tokens.weight"), [512, 64])
        XCTAssertEqual(shape("model.norm.weight"), [64])
        XCTAssertNil(c.info("lm_head.weight"), "tied embeddings: no lm_head")
        for l in 0..<5 {
            let p = "model.layers.\(l)."
            let expect: [(String, [Int])] = [
                ("self_attn.q_proj.weight", [64, 64]), ("self_attn.k_proj.weight", [32, 64]),
                ("self_attn.v_proj.weight", [32, 64]), ("self_attn.o_proj.weight", [64, 64]),
                ("mlp.gate_proj.weight", [172, 64]), ("mlp.up_proj.weight", [172, 64]),
                ("mlp.down_proj.weight", [64, 172]), ("input_layernorm.weight", [64]),
                ("post_attention_layernorm.weight", [64]),
            ]
            for (n, s) in expect {
                let info = try XCTUnwrap(c.info(p + n), p + n)
                XCTAssertEqual(info.shape, s, p + n)
                XCTAssertEqual(info.dtype, "F32", p + n)
                XCTAssertEqual(info.byteCount, s.reduce(4, *), p + n)
            }
        }
        let down = try c.matrix("model.layers.0.mlp.down_proj.weight")
        XCTAssertEqual(down.rows, 64)
        XCTAssertEqual(down.cols, 172)
        XCTAssertEqual(try c.floats("model.layers.2.input_layernorm.weight").count, 64)
        let single = try SafetensorsFile(path: dir + "/model.safetensors")
        XCTAssertEqual(single.metadata, ["format": "pt"])
        assertFormatError(try c.matrix("model.norm.weight"), contains: ["model.norm.weight", "not 2-D"])
        assertFormatError(try c.floats("missing.weight"), contains: ["missing.weight", "not found"])
    }

    func testShardedIndex() throws {
        let dir = try makeTempDir(self)
        let a: [Float] = [1, 2, 3, 4, 5, 6]
        let halves: [UInt16] = [0x3C00, 0x4000, 0xC000, 0x3800]  // f16 1, 2, -2, 0.5
        let bf: [UInt16] = [0x3F80, 0x4040]  // bf16 1, 3
        var h16 = ByteWriter(); for x in halves { withUnsafeBytes(of: x.littleEndian) { h16.raw(Array($0)) } }
        var b16 = ByteWriter(); for x in bf { withUnsafeBytes(of: x.littleEndian) { b16.raw(Array($0)) } }
        try writeFile(dir, "model-00001-of-00002.safetensors", safetensorsBytes([
            ("layer.0.w", "F32", [2, 3], f32Bytes(a)), ("layer.0.ids", "I64", [2], [UInt8](repeating: 0, count: 16)),
        ], metadata: ["format": "pt"]))
        try writeFile(dir, "model-00002-of-00002.safetensors", safetensorsBytes([
            ("layer.1.w", "F16", [2, 2], h16.bytes), ("norm", "BF16", [2], b16.bytes),
        ]))
        let index: [String: Any] = ["metadata": ["total_size": 48], "weight_map": [
            "layer.0.w": "model-00001-of-00002.safetensors", "layer.0.ids": "model-00001-of-00002.safetensors",
            "layer.1.w": "model-00002-of-00002.safetensors", "norm": "model-00002-of-00002.safetensors",
        ]]
        try JSONSerialization.data(withJSONObject: index).write(to: dir.appendingPathComponent("model.safetensors.index.json"))

        let c = try SafetensorsCollection(directory: dir.path)
        XCTAssertEqual(c.names, ["layer.0.ids", "layer.0.w", "layer.1.w", "norm"])
        XCTAssertEqual(c.files.count, 2)
        let m0 = try c.matrix("layer.0.w")
        XCTAssertEqual([m0.rows, m0.cols], [2, 3])
        XCTAssertEqual(rows(m0), [[1, 2, 3], [4, 5, 6]])
        let m1 = try c.matrix("layer.1.w")
        XCTAssertEqual(m1.type, .f16)
        XCTAssertEqual(rows(m1), [[1, 2], [-2, 0.5]])
        XCTAssertEqual(try c.floats("norm"), [1, 3])
        XCTAssertEqual(try c.floats("layer.1.w"), [1, 2, -2, 0.5])
        XCTAssertEqual(c.info("layer.0.ids")?.dtype, "I64")
        assertFormatError(try c.floats("layer.0.ids"), contains: ["layer.0.ids", "I64"])

        // A name mapped to a shard that lacks it.
        let bad1: [String: Any] = ["weight_map": ["layer.0.w": "model-00001-of-00002.safetensors", "ghost": "model-00002-of-00002.safetensors"]]
        try JSONSerialization.data(withJSONObject: bad1).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        assertFormatError(try SafetensorsCollection(directory: dir.path), contains: ["ghost", "model-00002-of-00002.safetensors", "does not contain"])
        // A missing shard.
        let bad2: [String: Any] = ["weight_map": ["layer.0.w": "model-00001-of-00009.safetensors"]]
        try JSONSerialization.data(withJSONObject: bad2).write(to: dir.appendingPathComponent("model.safetensors.index.json"))
        assertFormatError(try SafetensorsCollection(directory: dir.path), contains: ["model-00001-of-00009.safetensors", "missing"])
        // Neither file.
        let empty = try makeTempDir(self)
        assertFormatError(try SafetensorsCollection(directory: empty.path), contains: ["model.safetensors"])
    }
}

final class HFConfigTests: XCTestCase {
    func parse(_ json: String) throws -> HFModelConfig {
        try HFModelConfig.parse(data: Data(json.utf8), path: "/x/config.json")
    }

    static let base = """
    "hidden_size": 576, "intermediate_size": 1536, "num_hidden_layers": 30, "num_attention_heads": 9,
    "vocab_size": 49152
    """

    func testStories260KConfig() throws {
        let dir = try TestPaths.require(TestPaths.stories260KHF, "stories260K-hf model folder")
        let c = try HFModelConfig.load(path: dir + "/config.json")
        XCTAssertEqual(c.modelType, "llama")
        XCTAssertEqual(c.architectures, ["LlamaForCausalLM"])
        XCTAssertEqual(c.hiddenSize, 64)
        XCTAssertEqual(c.intermediateSize, 172)
        XCTAssertEqual(c.numHiddenLayers, 5)
        XCTAssertEqual(c.numAttentionHeads, 8)
        XCTAssertEqual(c.numKeyValueHeads, 4)
        XCTAssertEqual(c.headDim, 8)
        XCTAssertEqual(c.vocabSize, 512)
        XCTAssertEqual(c.rmsNormEps, 1e-5)
        XCTAssertEqual(c.ropeTheta, 10000)
        XCTAssertNil(c.ropeScaling, "rope_type default means no scaling")
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertFalse(c.attentionBias)
        XCTAssertFalse(c.mlpBias)
        XCTAssertEqual(c.maxPositionEmbeddings, 512)
        XCTAssertEqual(c.bosTokenID, 1)
        XCTAssertEqual(c.eosTokenIDs, [2])
        XCTAssertEqual(c.hiddenAct, "silu")
        XCTAssertNil(c.slidingWindow)
    }

    func testRopeThetaAndLinearScaling() throws {
        let c = try parse("""
        {"model_type": "llama", \(Self.base), "rope_theta": 500000.0, "rope_scaling": {"type": "linear", "factor": 4.0},
         "tie_word_embeddings": true, "num_key_value_heads": 3, "eos_token_id": 2}
        """)
        XCTAssertEqual(c.ropeTheta, 500000)
        XCTAssertEqual(c.ropeScaling, RopeScaling(kind: .linear, factor: 4))
        XCTAssertTrue(c.tieWordEmbeddings)
        XCTAssertEqual(c.numKeyValueHeads, 3)
        XCTAssertEqual(c.headDim, 64)
        XCTAssertEqual(c.eosTokenIDs, [2])
        XCTAssertEqual(c.rmsNormEps, 1e-6, "llama default")
    }

    func testLlama3Scaling() throws {
        let c = try parse("""
        {"model_type": "llama", \(Self.base), "rope_theta": 500000, "eos_token_id": [128001, 128008, 128009],
         "rope_scaling": {"rope_type": "llama3", "factor": 32.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                          "original_max_position_embeddings": 8192}, "max_position_embeddings": 131072}
        """)
        XCTAssertEqual(c.ropeScaling, RopeScaling(kind: .llama3, factor: 32, lowFreqFactor: 1, highFreqFactor: 4, originalMaxPositionEmbeddings: 8192))
        XCTAssertEqual(c.eosTokenIDs, [128001, 128008, 128009])
        XCTAssertEqual(c.maxPositionEmbeddings, 131072)
        XCTAssertFalse(c.tieWordEmbeddings)
        // The same in transformers 5's rope_parameters form.
        let d = try parse("""
        {"model_type": "llama", \(Self.base), "rope_parameters": {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0,
         "low_freq_factor": 1.0, "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}}
        """)
        XCTAssertEqual(d.ropeTheta, 500000)
        XCTAssertEqual(d.ropeScaling?.kind, .llama3)
        XCTAssertEqual(d.ropeScaling?.factor, 8)
        assertFormatError(try parse("""
        {"model_type": "llama", \(Self.base), "rope_scaling": {"rope_type": "longrope", "factor": 2.0}}
        """), contains: ["longrope", "linear"])
    }

    func testQwen2AndMistral() throws {
        let q = try parse("""
        {"architectures": ["Qwen2ForCausalLM"], "model_type": "qwen2", "hidden_size": 896, "intermediate_size": 4864,
         "num_hidden_layers": 24, "num_attention_heads": 14, "num_key_value_heads": 2, "vocab_size": 151936,
         "rms_norm_eps": 1e-06, "rope_theta": 1000000.0, "sliding_window": 32768, "use_sliding_window": false,
         "tie_word_embeddings": true, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu",
         "max_position_embeddings": 32768, "rope_scaling": null}
        """)
        XCTAssertTrue(q.attentionBias, "Qwen2 has q/k/v biases")
        XCTAssertEqual(q.headDim, 64)
        XCTAssertEqual(q.numKeyValueHeads, 2)
        XCTAssertNil(q.slidingWindow, "use_sliding_window is false")
        XCTAssertNil(q.ropeScaling)
        XCTAssertEqual(q.ropeTheta, 1_000_000)
        XCTAssertEqual(q.eosTokenIDs, [151645])

        let m = try parse("""
        {"architectures": ["MistralForCausalLM"], "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336,
         "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8, "vocab_size": 32000,
         "rms_norm_eps": 1e-05, "rope_theta": 10000.0, "sliding_window": 4096, "max_position_embeddings": 32768,
         "bos_token_id": 1, "eos_token_id": 2}
        """)
        XCTAssertEqual(m.modelType, "mistral")
        XCTAssertEqual(m.slidingWindow, 4096)
        XCTAssertFalse(m.attentionBias)
        XCTAssertEqual(m.headDim, 128)
        XCTAssertEqual(m.numKeyValueHeads, 8)
    }

    func testErrors() throws {
        assertFormatError(try parse("""
        {"model_type": "llama", "hidden_size": 64, "intermediate_size": 172, "num_attention_heads": 8, "vocab_size": 512}
        """), contains: ["config.json", "missing required field 'num_hidden_layers'"])
        assertFormatError(try parse("""
        {"model_type": "llama", "hidden_size": "576", "intermediate_size": 1536, "num_hidden_layers": 30,
         "num_attention_heads": 9, "vocab_size": 49152}
        """), contains: ["field 'hidden_size' must be an integer"])
        assertFormatError(try parse("""
        {"model_type": "gpt2", \(Self.base)}
        """), contains: ["unsupported model_type 'gpt2'", "llama", "mistral", "qwen2"])
        assertFormatError(try parse("{\"model_type\": \"llama\", "), contains: ["not valid JSON"])
        assertFormatError(try parse("""
        {"model_type": "llama", \(Self.base), "num_key_value_heads": 4}
        """), contains: ["num_key_value_heads 4", "divide"])
        assertFormatError(try HFModelConfig.load(path: "/nonexistent/config.json"), contains: ["not found"])
    }
}

final class Llama2cTests: XCTestCase {
    func testStories260KHeaderAndCrossFormat() throws {
        let binPath = try TestPaths.require(TestPaths.stories260KBin, "stories260K.bin")
        let hfDir = try TestPaths.require(TestPaths.stories260KHF, "stories260K-hf model folder")
        let f = try Llama2cFile(path: binPath)
        XCTAssertEqual(f.header, Llama2cHeader(dim: 64, hiddenDim: 172, layers: 5, heads: 8, kvHeads: 4, vocabSize: 512, seqLen: 512, sharedClassifier: true))
        XCTAssertEqual(f.tokenEmbedding.rows, 512)
        XCTAssertEqual(f.tokenEmbedding.cols, 64)
        XCTAssertEqual(f.classifier.base, f.tokenEmbedding.base)
        XCTAssertEqual(f.finalNorm.count, 64)

        let hf = try SafetensorsCollection(directory: hfDir)
        XCTAssertEqual(rows(f.tokenEmbedding), rows(try hf.matrix("model.embed_tokens.weight")))
        XCTAssertEqual(f.finalNorm, try hf.floats("model.norm.weight"))
        let hd = f.header.dim / f.header.heads
        // HF rows within a head are llama2.c rows 0,2,4,...,1,3,5,... (rotate_half permutation).
        func unpermuted(_ hfRows: [[Float]], heads: Int) -> [[Float]] {
            var out = hfRows
            for h in 0..<heads {
                for j in 0..<2 {
                    for i in 0..<(hd / 2) { out[h * hd + 2 * i + j] = hfRows[h * hd + j * (hd / 2) + i] }
                }
            }
            return out
        }
        for l in 0..<f.header.layers {
            let p = "model.layers.\(l)."
            let wq = rows(try f.matrix(.wq, layer: l))
            let hq = rows(try hf.matrix(p + "self_attn.q_proj.weight"))
            XCTAssertEqual(wq.count, 64)
            XCTAssertEqual(wq, unpermuted(hq, heads: f.header.heads), "wq layer \(l)")
            XCTAssertNotEqual(wq, hq, "the HF copy really is permuted")
            XCTAssertEqual(rows(try f.matrix(.wk, layer: l)), unpermuted(rows(try hf.matrix(p + "self_attn.k_proj.weight")), heads: f.header.kvHeads), "wk layer \(l)")
            for (m, n) in [(Llama2cFile.Matrix.wv, "self_attn.v_proj"), (.wo, "self_attn.o_proj"), (.w1, "mlp.gate_proj"),
                           (.w2, "mlp.down_proj"), (.w3, "mlp.up_proj")] {
                let a = try f.matrix(m, layer: l), b = try hf.matrix(p + n + ".weight")
                XCTAssertEqual([a.rows, a.cols], [b.rows, b.cols], "\(n) layer \(l)")
                XCTAssertEqual(rows(a), rows(b), "\(n) layer \(l)")
            }
            XCTAssertEqual(try f.norm(.attention, layer: l), try hf.floats(p + "input_layernorm.weight"))
            XCTAssertEqual(try f.norm(.ffn, layer: l), try hf.floats(p + "post_attention_layernorm.weight"))
        }
        assertFormatError(try f.matrix(.wq, layer: 5), contains: ["layer 5", "out of range"])
        assertFormatError(try f.norm(.ffn, layer: -1), contains: ["layer -1"])
    }
}
