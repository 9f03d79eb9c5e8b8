import CWFormats
import CWKernels
import Foundation
import XCTest

/// Synthetic GGUF files: round trips of every value type, and each kind of damage.
final class GGUFFixtureTests: XCTestCase {
    let allTypes: [(String, GGUFValue)] = [
        ("general.architecture", .string("llama")),
        ("t.u8", .uint8(200)), ("t.i8", .int8(-5)), ("t.u16", .uint16(60000)), ("t.i16", .int16(-300)),
        ("t.u32", .uint32(4_000_000_000)), ("t.i32", .int32(-7)), ("t.f32", .float32(1.5)), ("t.bool", .bool(true)),
        ("t.str", .string("héllo ✓")), ("t.u64", .uint64(1 << 40)), ("t.i64", .int64(-(1 << 40))), ("t.f64", .float64(0.1)),
        ("t.strs", .array([.string("a"), .string(""), .string("ß")])),
        ("t.ints", .array([.int32(1), .int32(-2), .int32(3)])),
        ("t.floats", .array([.float32(0.5), .float32(-1)])),
        ("t.nested", .array([.array([.uint8(1), .uint8(2)]), .array([.uint8(3)])])),
        ("t.empty", .array([])),
    ]

    func f32Tensor(_ name: String, _ dims: [UInt64], _ values: [Float]) -> FixtureTensor {
        FixtureTensor(name: name, dims: dims, typeID: 0, data: f32Bytes(values))
    }

    func testRoundTripAllValueTypes() throws {
        let dir = try makeTempDir(self)
        var halves = ByteWriter()
        for h: UInt16 in [0x3C00, 0x4000, 0xC000, 0x3800] { withUnsafeBytes(of: h.littleEndian) { halves.raw(Array($0)) } }
        let path = try writeFile(dir, "ok.gguf", writeGGUF(metadata: allTypes + [("general.alignment", .uint32(64))], tensors: [
            f32Tensor("w", [3, 2], [1, 2, 3, 4, 5, 6]),
            FixtureTensor(name: "h", dims: [2, 2], typeID: 1, data: halves.bytes),
            f32Tensor("norm", [3], [7, 8, 9]),
        ], version: 2, alignment: 64))
        let g = try GGUFFile(path: path)
        XCTAssertEqual(g.version, 2)
        XCTAssertEqual(g.alignment, 64)
        for (k, v) in allTypes { XCTAssertEqual(g.metadata[k], v, k) }
        XCTAssertEqual(g.metadata["t.u32"]?.int, 4_000_000_000)
        XCTAssertEqual(g.metadata["t.i8"]?.int, -5)
        XCTAssertEqual(g.metadata["t.f64"]?.double, 0.1)
        XCTAssertEqual(g.metadata["t.u8"]?.double, 200)
        XCTAssertNil(g.metadata["t.str"]?.int)
        XCTAssertEqual(g.metadata["t.strs"]?.stringArray, ["a", "", "ß"])
        XCTAssertNil(g.metadata["t.ints"]?.stringArray)
        XCTAssertEqual(g.metadata["t.ints"]?.intArray, [1, -2, 3])
        XCTAssertEqual(g.metadata["t.floats"]?.floatArray, [0.5, -1])
        XCTAssertEqual(g.metadata["t.nested"]?.array?.count, 2)
        XCTAssertEqual(g.metadata["t.empty"]?.array, [])
        XCTAssertEqual(g.tensors.map(\.name), ["w", "h", "norm"])
        for t in g.tensors { XCTAssertEqual(t.offset % 64, 0, t.name) }
        let w = try g.matrix("w")
        XCTAssertEqual([w.rows, w.cols], [2, 3])
        XCTAssertEqual(rows(w), [[1, 2, 3], [4, 5, 6]])
        XCTAssertEqual(try g.floats("h"), [1, 2, -2, 0.5])
        XCTAssertEqual(try g.floats("norm"), [7, 8, 9])
    }

    func testBadMagicAndVersion() throws {
        let dir = try makeTempDir(self)
        let t = [f32Tensor("x", [4], [1, 2, 3, 4])]
        assertFormatError(try GGUFFile(path: try writeFile(dir, "m.gguf", writeGGUF(metadata: [], tensors: t, magic: Array("GGML".utf8)))),
                          contains: ["m.gguf", "bad magic", "GGML", "GGUF"])
        for v: UInt32 in [1, 4, 0xFFFF] {
            assertFormatError(try GGUFFile(path: try writeFile(dir, "v\(v).gguf", writeGGUF(metadata: [], tensors: t, version: v))),
                              contains: ["unsupported GGUF version \(v)", "2 and 3"])
        }
        assertFormatError(try GGUFFile(path: try writeFile(dir, "empty.gguf", [])), contains: ["empty"])
        assertFormatError(try GGUFFile(path: dir.appendingPathComponent("nope.gguf").path), contains: ["nope.gguf", "not found"])
    }

    func testTruncatedSyntheticHeader() throws {
        let dir = try makeTempDir(self)
        let full = writeGGUF(metadata: [("general.architecture", .string("llama")), ("k", .array([.string("abc"), .string("de")]))],
                             tensors: [f32Tensor("blk.0.w", [4, 2], [Float](repeating: 1, count: 8))])
        let p = try writeFile(dir, "cut5.gguf", Array(full.prefix(5)))
        assertFormatError(try GGUFFile(path: p), contains: ["truncated GGUF: expected 4 bytes for version at offset 4, file has 5"])
        let p12 = try writeFile(dir, "cut12.gguf", Array(full.prefix(12)))
        assertFormatError(try GGUFFile(path: p12), contains: ["truncated GGUF: expected 8 bytes for tensor count at offset 8, file has 12"])
        // Every cut inside the header fails with a FormatError mentioning truncation or the end of the file.
        for n in 1..<full.count - 32 {
            let path = try writeFile(dir, "cut.gguf", Array(full.prefix(n)))
            do {
                _ = try GGUFFile(path: path)
                XCTFail("cut at \(n) parsed")
            } catch let e as FormatError {
                XCTAssertTrue(e.message.contains("truncated") || e.message.contains("past the end"), "cut at \(n): \(e)")
            }
        }
    }

    func testTruncatedRealFile() throws {
        let model = try TestPaths.require(TestPaths.smolLM2, "SmolLM2 GGUF model")
        let dir = try makeTempDir(self)
        let mapped = try MappedFile(path: model)
        let expectations: [(Int, [String])] = [
            (5, ["truncated GGUF", "version at offset 4", "file has 5"]),
            (20, ["truncated GGUF", "metadata count at offset 16", "file has 20"]),
            (30, ["truncated GGUF", "key of metadata entry 0"]),
            (120, ["truncated GGUF", "key of metadata entry 2 at offset 106"]),
            (600_000, ["truncated GGUF", "tokenizer.ggml.tokens"]),
            (1_700_000, ["truncated GGUF", "tokenizer.ggml."]),
            (mapped.size - 1000, ["ends at byte", "past the end of the file (\(mapped.size - 1000) bytes)"]),
        ]
        for (n, fragments) in expectations {
            let bytes = Array(UnsafeRawBufferPointer(start: mapped.base, count: n))
            let path = try writeFile(dir, "cut-\(n).gguf", bytes)
            assertFormatError(try GGUFFile(path: path), contains: fragments + ["cut-\(n).gguf"])
        }
    }

    func testTensorPastEndOfFile() throws {
        let dir = try makeTempDir(self)
        var t = f32Tensor("blk.3.attn_q.weight", [8, 2], [Float](repeating: 0, count: 16))
        t.offsetOverride = 4096
        let bytes = writeGGUF(metadata: [], tensors: [t])
        let path = try writeFile(dir, "past.gguf", bytes)
        assertFormatError(try GGUFFile(path: path),
                          contains: ["tensor 'blk.3.attn_q.weight' ends at byte", "past the end of the file (\(bytes.count) bytes)"])
        // Data cut short by a few bytes.
        let short = writeGGUF(metadata: [], tensors: [f32Tensor("w", [8, 2], [Float](repeating: 0, count: 16))])
        let path2 = try writeFile(dir, "short.gguf", Array(short.dropLast(4)))
        assertFormatError(try GGUFFile(path: path2), contains: ["tensor 'w' ends at byte \(short.count)", "(\(short.count - 4) bytes)"])
    }

    func testUnknownAndUnsupportedTypes() throws {
        let dir = try makeTempDir(self)
        // Q2_K: known layout (256 elements in 84 bytes) but unsupported: the file parses, using the tensor fails.
        let q2k = FixtureTensor(name: "blk.0.ffn_down.weight", dims: [256, 2], typeID: 10, data: [UInt8](repeating: 0, count: 168))
        let path = try writeFile(dir, "q2k.gguf", writeGGUF(metadata: [], tensors: [q2k, f32Tensor("n", [2], [1, 2])]))
        let g = try GGUFFile(path: path)
        let info = try XCTUnwrap(g.tensor("blk.0.ffn_down.weight"))
        XCTAssertNil(info.type)
        XCTAssertEqual(info.typeID, 10)
        XCTAssertEqual(info.byteCount, 168)
        assertFormatError(try g.matrix("blk.0.ffn_down.weight"), contains: ["unsupported tensor type Q2_K for tensor 'blk.0.ffn_down.weight'"])
        assertFormatError(try g.floats("blk.0.ffn_down.weight"), contains: ["Q2_K", "blk.0.ffn_down.weight"])
        XCTAssertEqual(try g.floats("n"), [1, 2])
        // Other known layouts parse with the right sizes.
        for (id, bytes) in [(UInt32(11), 110), (15, 292), (23, 136), (16, 66)] {
            let t = FixtureTensor(name: "t", dims: [256], typeID: id, data: [UInt8](repeating: 0, count: bytes))
            let gg = try GGUFFile(path: try writeFile(dir, "k\(id).gguf", writeGGUF(metadata: [], tensors: [t])))
            XCTAssertEqual(gg.tensors.first?.byteCount, bytes, "type \(id)")
        }
        // A type id with no known size cannot be parsed past.
        let bad = FixtureTensor(name: "blk.1.attn_k.weight", dims: [32], typeID: 99, data: [UInt8](repeating: 0, count: 128))
        assertFormatError(try GGUFFile(path: try writeFile(dir, "t99.gguf", writeGGUF(metadata: [], tensors: [bad]))),
                          contains: ["tensor 'blk.1.attn_k.weight'", "unknown type id 99"])
        // A row length that is not a whole number of blocks.
        let ragged = FixtureTensor(name: "r", dims: [20, 2], typeID: 8, data: [UInt8](repeating: 0, count: 68))
        assertFormatError(try GGUFFile(path: try writeFile(dir, "ragged.gguf", writeGGUF(metadata: [], tensors: [ragged]))),
                          contains: ["tensor 'r'", "row length 20", "Q8_0"])
    }

    func testOtherHeaderDamage() throws {
        let dir = try makeTempDir(self)
        let a = f32Tensor("a", [8], [Float](repeating: 0, count: 8))
        assertFormatError(try GGUFFile(path: try writeFile(dir, "dup.gguf", writeGGUF(metadata: [], tensors: [a, a]))),
                          contains: ["duplicate tensor name 'a'"])
        assertFormatError(try GGUFFile(path: try writeFile(dir, "dupk.gguf", writeGGUF(metadata: [("k", .uint8(1)), ("k", .uint8(2))], tensors: [a]))),
                          contains: ["duplicate metadata key 'k'"])
        var mis = a
        mis.offsetOverride = 4
        assertFormatError(try GGUFFile(path: try writeFile(dir, "mis.gguf", writeGGUF(metadata: [], tensors: [mis]))),
                          contains: ["tensor 'a'", "offset 4", "alignment 32"])
        assertFormatError(try GGUFFile(path: try writeFile(dir, "al.gguf", writeGGUF(metadata: [("general.alignment", .uint32(48))], tensors: [a]))),
                          contains: ["general.alignment", "power of two"])
        let fiveD = FixtureTensor(name: "five", dims: [1, 1, 1, 1, 8], typeID: 0, data: f32Bytes([Float](repeating: 0, count: 8)))
        assertFormatError(try GGUFFile(path: try writeFile(dir, "5d.gguf", writeGGUF(metadata: [], tensors: [fiveD]))),
                          contains: ["tensor 'five'", "5 dimensions"])
        // Invalid UTF-8 in a string value.
        var bytes = writeGGUF(metadata: [("general.name", .string("abcd"))], tensors: [])
        let needle = Array("abcd".utf8)
        let at = try XCTUnwrap((0...(bytes.count - 4)).first { Array(bytes[$0..<$0 + 4]) == needle })
        bytes[at + 1] = 0xFF
        assertFormatError(try GGUFFile(path: try writeFile(dir, "utf8.gguf", bytes)), contains: ["general.name", "UTF-8"])
        // An absurd string length.
        var w = ByteWriter()
        w.raw(Array("GGUF".utf8)); w.u32(3); w.u64(0); w.u64(1)
        w.u64(UInt64.max - 3)
        w.raw(Array("key".utf8))
        assertFormatError(try GGUFFile(path: try writeFile(dir, "len.gguf", w.bytes)),
                          contains: ["truncated GGUF", "key of metadata entry 0", "past the end of the file"])
        // An absurd array count.
        var w2 = ByteWriter()
        w2.raw(Array("GGUF".utf8)); w2.u32(3); w2.u64(0); w2.u64(1)
        w2.ggufString("arr"); w2.u32(9); w2.u32(4); w2.u64(1 << 60)
        assertFormatError(try GGUFFile(path: try writeFile(dir, "cnt.gguf", w2.bytes)), contains: ["'arr'", "elements"])
        // An absurd tensor count.
        var w3 = ByteWriter()
        w3.raw(Array("GGUF".utf8)); w3.u32(3); w3.u64(1 << 50); w3.u64(0)
        assertFormatError(try GGUFFile(path: try writeFile(dir, "tc.gguf", w3.bytes)), contains: ["truncated GGUF", "name of tensor 0"])
        // An unknown value type.
        var w4 = ByteWriter()
        w4.raw(Array("GGUF".utf8)); w4.u32(3); w4.u64(0); w4.u64(1)
        w4.ggufString("odd"); w4.u32(13); w4.u32(0)
        assertFormatError(try GGUFFile(path: try writeFile(dir, "vt.gguf", w4.bytes)), contains: ["'odd'", "unknown value type 13"])
    }
}

final class SafetensorsBadInputTests: XCTestCase {
    func testOverlappingOffsets() throws {
        let dir = try makeTempDir(self)
        let bytes = try safetensorsBytes([("a", "F32", [4], f32Bytes([1, 2, 3, 4])), ("b", "F32", [2], f32Bytes([5, 6]))],
                                         offsets: [[0, 16], [8, 16]])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "ov.safetensors", bytes)), contains: ["ov.safetensors", "tensors 'a' and 'b' overlap"])
    }

    func testBadHeaderLength() throws {
        let dir = try makeTempDir(self)
        var ok = try safetensorsBytes([("a", "F32", [2], f32Bytes([1, 2]))])
        // Larger than the file.
        withUnsafeBytes(of: UInt64(ok.count).littleEndian) { for i in 0..<8 { ok[i] = $0[i] } }
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "len.safetensors", ok)), contains: ["bad header length \(ok.count)"])
        var huge = ByteWriter()
        huge.u64(UInt64.max)
        huge.raw(Array("{}".utf8))
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "huge.safetensors", huge.bytes)), contains: ["bad header length"])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "tiny.safetensors", [1, 2, 3])), contains: ["truncated"])
        var notJSON = ByteWriter()
        notJSON.u64(4)
        notJSON.raw(Array("{no}".utf8))
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "nj.safetensors", notJSON.bytes)), contains: ["not valid JSON"])
    }

    func testOffsetsPastEndAndSizeMismatch() throws {
        let dir = try makeTempDir(self)
        let past = try safetensorsBytes([("w", "F32", [4], f32Bytes([1, 2, 3, 4]))], offsets: [[16, 32]])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "past.safetensors", past)),
                          contains: ["tensor 'w'", "data_offsets [16, 32)", "past the end of the data area (16 bytes)"])
        let mismatch = try safetensorsBytes([("w", "F16", [4], f32Bytes([1, 2, 3, 4]))])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "mm.safetensors", mismatch)),
                          contains: ["tensor 'w'", "16 bytes", "F16 [4] needs 8"])
        let dtype = try safetensorsBytes([("w", "Q9", [4], f32Bytes([1, 2, 3, 4]))])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "dt.safetensors", dtype)), contains: ["tensor 'w'", "unknown dtype 'Q9'"])
        let reversed = try safetensorsBytes([("w", "F32", [0], [])], offsets: [[8, 4]])
        assertFormatError(try SafetensorsFile(path: try writeFile(dir, "rev.safetensors", reversed + [0, 0, 0, 0, 0, 0, 0, 0])),
                          contains: ["tensor 'w'", "[8, 4)"])
    }
}

final class Llama2cBadInputTests: XCTestCase {
    /// A tiny llama2.c checkpoint: dim 8, hidden 16, 2 layers, 2 heads, 1 KV head, vocab 4, seq 4.
    func tiny(vocab: Int32 = 4, extraFloats: Int = 0, dropFloats: Int = 0) -> [UInt8] {
        let (dim, hidden, layers, heads, kvh, seq) = (8, 16, 2, 2, 1, 4)
        let hd = dim / heads, kvDim = kvh * hd, v = Int(abs(vocab))
        var n = v * dim + layers * dim + layers * dim * dim + 2 * layers * kvDim * dim + layers * dim * dim
        n += layers * dim + 3 * layers * dim * hidden + dim + 2 * seq * hd / 2
        if vocab < 0 { n += v * dim }
        n += extraFloats - dropFloats
        var w = ByteWriter()
        for x in [Int32(dim), Int32(hidden), Int32(layers), Int32(heads), Int32(kvh), vocab, Int32(seq)] { w.i32(x) }
        for i in 0..<n { w.f32(Float(i)) }
        return w.bytes
    }

    func testTinyFileLayout() throws {
        let dir = try makeTempDir(self)
        let f = try Llama2cFile(path: try writeFile(dir, "ok.bin", tiny()))
        XCTAssertEqual(f.header, Llama2cHeader(dim: 8, hiddenDim: 16, layers: 2, heads: 2, kvHeads: 1, vocabSize: 4, seqLen: 4, sharedClassifier: true))
        // Values are their float index, so each array's position is checkable.
        XCTAssertEqual(rows(f.tokenEmbedding)[1][0], 8)
        XCTAssertEqual(try f.norm(.attention, layer: 1), (40..<48).map(Float.init))  // 32 + 8
        let wq1 = try f.matrix(.wq, layer: 1)
        XCTAssertEqual(rows(wq1)[0][0], Float(48 + 64))
        let wk0 = try f.matrix(.wk, layer: 0)
        XCTAssertEqual([wk0.rows, wk0.cols], [4, 8])
        XCTAssertEqual(rows(wk0)[0][0], Float(48 + 128))
        let sep = try Llama2cFile(path: try writeFile(dir, "sep.bin", tiny(vocab: -4)))
        XCTAssertFalse(sep.header.sharedClassifier)
        XCTAssertNotEqual(sep.classifier.base, sep.tokenEmbedding.base)
    }

    func testWrongSize() throws {
        let dir = try makeTempDir(self)
        let short = try writeFile(dir, "short.bin", tiny(dropFloats: 1))
        assertFormatError(try Llama2cFile(path: short), contains: ["short.bin", "file size", "does not match the header", "expected"])
        assertFormatError(try Llama2cFile(path: try writeFile(dir, "long.bin", tiny(extraFloats: 3))), contains: ["does not match the header"])
        // vocab_size says separate classifier but the file has none: the message says so.
        let sharedData = tiny()
        var flipped = sharedData
        withUnsafeBytes(of: Int32(-4).littleEndian) { for i in 0..<4 { flipped[20 + i] = $0[i] } }
        assertFormatError(try Llama2cFile(path: try writeFile(dir, "flip.bin", flipped)), contains: ["shared classifier", "sign of vocab_size"])
        assertFormatError(try Llama2cFile(path: try writeFile(dir, "hdr.bin", [1, 2, 3])), contains: ["truncated"])
        var badHeads = tiny()
        withUnsafeBytes(of: Int32(3).littleEndian) { for i in 0..<4 { badHeads[12 + i] = $0[i] } }
        assertFormatError(try Llama2cFile(path: try writeFile(dir, "heads.bin", badHeads)), contains: ["n_heads 3", "dim 8"])
        var zero = tiny()
        for i in 0..<4 { zero[8 + i] = 0 }
        assertFormatError(try Llama2cFile(path: try writeFile(dir, "zero.bin", zero)), contains: ["n_layers = 0"])
        if FileManager.default.fileExists(atPath: TestPaths.stories260KBin) {
            let real = try Data(contentsOf: URL(fileURLWithPath: TestPaths.stories260KBin))
            assertFormatError(try Llama2cFile(path: try writeFile(dir, "cut260k.bin", Array(real.dropLast(4)))), contains: ["does not match the header"])
        }
    }
}

final class MappedFileTests: XCTestCase {
    func testBoundsAndErrors() throws {
        let dir = try makeTempDir(self)
        let path = try writeFile(dir, "ten.bin", Array(0..<10))
        let f = try MappedFile(path: path)
        XCTAssertEqual(f.size, 10)
        XCTAssertEqual(try f.bytes(at: 2, count: 8, what: "tail").load(as: UInt8.self), 2)
        assertFormatError(try f.bytes(at: 4, count: 7, what: "the widget table"), contains: ["ten.bin", "the widget table", "past the end of the file (10 bytes)"])
        assertFormatError(try f.bytes(at: Int.max, count: 2, what: "far"), contains: ["far"])
        assertFormatError(try f.bytes(at: -1, count: 2, what: "neg"), contains: ["neg", "negative"])
        assertFormatError(try MappedFile(path: try writeFile(dir, "zero.bin", [])), contains: ["zero.bin", "empty"])
        assertFormatError(try MappedFile(path: dir.path), contains: ["not a regular file"])
        assertFormatError(try MappedFile(path: dir.appendingPathComponent("missing").path), contains: ["missing", "not found"])
        XCTAssertEqual(FormatError(path: "/a/b", message: "bad").description, "/a/b: bad")
    }
}
