import CWFormats
import CWKernels
import Foundation
import XCTest

final class GGUFSmolLM2Tests: XCTestCase {
    func openModel() throws -> GGUFFile {
        let path = try TestPaths.require(TestPaths.smolLM2, "SmolLM2 GGUF model (set CHUNKWISE_MODEL or link .cache/models)")
        return try GGUFFile(path: path)
    }

    func testHeaderAndMetadata() throws {
        let g = try openModel()
        XCTAssertEqual(g.version, 3)
        XCTAssertEqual(g.architecture, "llama")
        XCTAssertEqual(g.alignment, 32)
        XCTAssertEqual(g.metadata.count, 33)
        XCTAssertEqual(g.metadata["llama.block_count"], .uint32(30))
        XCTAssertEqual(g.metadata["llama.block_count"]?.int, 30)
        XCTAssertEqual(g.metadata["llama.rope.freq_base"]?.float, 100000)
        XCTAssertEqual(g.metadata["llama.rope.freq_base"]?.double, 100000)
        XCTAssertEqual(g.metadata["llama.attention.layer_norm_rms_epsilon"]?.float, Float(1e-5))
        XCTAssertEqual(g.metadata["llama.embedding_length"]?.int, 576)
        XCTAssertEqual(g.metadata["llama.attention.head_count"]?.int, 9)
        XCTAssertEqual(g.metadata["llama.attention.head_count_kv"]?.int, 3)
        XCTAssertEqual(g.metadata["tokenizer.ggml.model"]?.string, "gpt2")
        XCTAssertEqual(g.metadata["tokenizer.ggml.pre"]?.string, "smollm")
        XCTAssertEqual(g.metadata["tokenizer.ggml.add_bos_token"]?.bool, false)
        XCTAssertEqual(g.metadata["general.languages"]?.stringArray, ["en"])
        let tokens = try XCTUnwrap(g.metadata["tokenizer.ggml.tokens"]?.stringArray)
        XCTAssertEqual(tokens.count, 49152)
        XCTAssertEqual(tokens[0], "<|endoftext|>")
        XCTAssertEqual(tokens[1], "<|im_start|>")
        XCTAssertEqual(tokens[2], "<|im_end|>")
        let merges = try XCTUnwrap(g.metadata["tokenizer.ggml.merges"]?.stringArray)
        XCTAssertEqual(merges.count, 48900)
        XCTAssertEqual(merges[0].split(separator: " ").count, 2)
        let types = try XCTUnwrap(g.metadata["tokenizer.ggml.token_type"]?.intArray)
        XCTAssertEqual(types.count, 49152)
        XCTAssertEqual(g.metadata["tokenizer.ggml.eos_token_id"]?.int, 2)
        XCTAssertTrue(g.metadata["tokenizer.chat_template"]?.string?.contains("<|im_start|>") ?? false)
    }

    func testTensors() throws {
        let g = try openModel()
        XCTAssertEqual(g.tensors.count, 272)
        XCTAssertEqual(g.tensors.filter { $0.type == .q4_1 }.count, 210)
        XCTAssertEqual(g.tensors.filter { $0.type == .f32 }.count, 61)
        XCTAssertEqual(g.tensors.filter { $0.type == .q8_0 }.count, 1)
        XCTAssertNil(g.tensor("output.weight"), "SmolLM2 ties embeddings: no output.weight")

        let emb = try XCTUnwrap(g.tensor("token_embd.weight"))
        XCTAssertEqual(emb.dims, [576, 49152])
        XCTAssertEqual(emb.type, .q8_0)
        XCTAssertEqual(emb.byteCount, 576 * 49152 / 32 * 34)
        XCTAssertEqual(emb.offset % 32, 0)
        let m = try g.matrix("token_embd.weight")
        XCTAssertEqual(m.rows, 49152)
        XCTAssertEqual(m.cols, 576)
        XCTAssertEqual(m.type, .q8_0)

        for l in [0, 29] {
            for (n, out, inp) in [("attn_q", 576, 576), ("attn_k", 192, 576), ("attn_v", 192, 576), ("attn_output", 576, 576),
                                  ("ffn_gate", 1536, 576), ("ffn_up", 1536, 576), ("ffn_down", 576, 1536)] {
                let name = "blk.\(l).\(n).weight"
                let t = try XCTUnwrap(g.tensor(name), name)
                XCTAssertEqual(t.type, .q4_1, name)
                XCTAssertEqual(t.dims, [inp, out], name)
                let w = try g.matrix(name)
                XCTAssertEqual(w.rows, out, name)
                XCTAssertEqual(w.cols, inp, name)
                XCTAssertEqual(w.byteCount, t.byteCount, name)
            }
            for n in ["attn_norm", "ffn_norm"] {
                let t = try XCTUnwrap(g.tensor("blk.\(l).\(n).weight"))
                XCTAssertEqual(t.type, .f32)
                XCTAssertEqual(t.dims, [576])
            }
        }
        XCTAssertEqual(try g.floats("output_norm.weight").count, 576)
        // Tensors are laid out in order without overlapping and inside the file.
        let sorted = g.tensors.sorted { $0.offset < $1.offset }
        for (a, b) in zip(sorted, sorted.dropFirst()) { XCTAssertLessThanOrEqual(a.offset + a.byteCount, b.offset) }
        XCTAssertLessThanOrEqual(sorted.last.map { $0.offset + $0.byteCount } ?? 0, g.file.size)
        assertFormatError(try g.matrix("output_norm.weight"), contains: ["output_norm.weight", "not 2-D"])
        assertFormatError(try g.matrix("nope.weight"), contains: ["nope.weight", "not found"])
    }

    /// Dequantization against gguf.dequantize() values recorded in dequant.json.
    func testDequantizationMatchesGolden() throws {
        let g = try openModel()
        let path = try TestPaths.require(TestPaths.dequantJSON, "dequant.json golden")
        let json = try XCTUnwrap(JSONSerialization.jsonObject(with: Data(contentsOf: URL(fileURLWithPath: path))) as? [String: Any])
        let entries = try XCTUnwrap(json["tensors"] as? [[String: Any]])
        XCTAssertEqual(entries.count, 7)
        for e in entries {
            let name = try XCTUnwrap(e["gguf_name"] as? String)
            let t = try XCTUnwrap(g.tensor(name), name)
            XCTAssertEqual(t.dims, try XCTUnwrap(e["gguf_ne"] as? [Int]), name)
            XCTAssertEqual(t.typeName, try XCTUnwrap(e["type"] as? String), name)
            if let hex = e["first_2_blocks_hex"] as? String {
                let raw = UnsafeRawBufferPointer(start: g.data(t), count: hex.count / 2)
                XCTAssertEqual(raw.map { String(format: "%02x", $0) }.joined(), hex, name)
            }
            let values = try g.floats(name)
            XCTAssertEqual(values.count, t.elementCount)
            let first = try XCTUnwrap(e["first_2_blocks_values"] as? [Double])
            // Exact float32 equality. The golden's Q8_0 values carry float64 noise in the last bits
            // (e.g. -0.10654449462890621 for the float32 -0.10654449462890625), so compare after
            // rounding the golden to float32; the raw bytes above are checked exactly.
            for (i, v) in first.enumerated() {
                XCTAssertEqual(values[i], Float(v), "\(name)[\(i)]")
                XCTAssertEqual(Double(values[i]), v, accuracy: 1e-15, "\(name)[\(i)]")
            }
            let row0 = try XCTUnwrap(e["row0_first8"] as? [Double])
            for (i, v) in row0.enumerated() { XCTAssertEqual(values[i], Float(v), "\(name) row0[\(i)]") }
            XCTAssertEqual(values[values.count - 1], Float(try XCTUnwrap(e["last_value"] as? Double)), name)
            var sum = 0.0, sumAbs = 0.0, sumSq = 0.0
            for v in values { let d = Double(v); sum += d; sumAbs += abs(d); sumSq += d * d }
            for (key, got) in [("sum", sum), ("sum_abs", sumAbs), ("sum_sq", sumSq)] {
                let want = try XCTUnwrap(e[key] as? Double)
                XCTAssertEqual(got, want, accuracy: 1e-9 * max(1, abs(want)), "\(name) \(key)")
            }
            // The matrix view dequantizes rows to the same values.
            if t.dims.count == 2 {
                let m = try g.matrix(name)
                var row = [Float](repeating: 0, count: m.cols)
                row.withUnsafeMutableBufferPointer { m.dequantizeRow(m.rows - 1, into: $0.baseAddress!) }
                XCTAssertEqual(row, Array(values[(m.rows - 1) * m.cols ..< m.rows * m.cols]), name)
            }
        }
    }

    func testParseIsFast() throws {
        let path = try TestPaths.require(TestPaths.smolLM2, "SmolLM2 GGUF model")
        _ = try GGUFFile(path: path)
        let start = Date()
        let g = try GGUFFile(path: path)
        let elapsed = Date().timeIntervalSince(start)
        XCTAssertEqual(g.tensors.count, 272)
        #if DEBUG
        let limit = 3.0  // unoptimized builds are far slower; release must stay well under 0.3 s
        #else
        let limit = 0.3
        #endif
        XCTAssertLessThan(elapsed, limit, "parsing took \(elapsed) s")
    }
}
