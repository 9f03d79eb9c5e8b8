import CWFormats
import CWTokenizers
import Foundation
import XCTest

/// Parity with HF `tokenizers` for the SmolLM2-135M-Instruct GGUF tokenizer (shared/golden/smollm2-tokenizer).
final class SmolLM2TokenizerTests: XCTestCase {
    nonisolated(unsafe) private static var cached: (any Tokenizer)?

    private func load() throws -> any Tokenizer {
        if let t = Self.cached { return t }
        guard FileManager.default.fileExists(atPath: TestPaths.smolGGUF.path) else {
            throw XCTSkip("missing \(TestPaths.smolGGUF.path) (link .cache/models to the model cache)")
        }
        let gguf = try GGUFFile(path: TestPaths.smolGGUF.path)
        let t = try TokenizerLoader.load(gguf: gguf)
        Self.cached = t
        return t
    }

    func testMetadata() throws {
        let tok = try load()
        XCTAssertEqual(tok.vocabularySize, 49152)
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertFalse(tok.addsBOSByDefault)
        XCTAssertEqual(tok.eosTokenIDs.first, 2)
        XCTAssertTrue(tok.eosTokenIDs.contains(0), "<|endoftext|> also ends generation")
        XCTAssertTrue((0...16).allSatisfy { tok.isSpecial($0) })
        XCTAssertFalse(tok.isSpecial(17))
        XCTAssertEqual(tok.tokenString(2), "<|im_end|>")
        XCTAssertEqual(tok.id(of: "<|im_start|>"), 1)
        XCTAssertEqual(tok.tokenBytes(tok.id(of: "Ġthe") ?? -1), Array(" the".utf8))
    }

    func testGoldenCases() throws {
        let tok = try load()
        let g = try TestPaths.json(try TestPaths.requireShared("golden/smollm2-tokenizer/cases.json"))
        let cases = try XCTUnwrap(g["cases"] as? [[String: Any]])
        XCTAssertGreaterThan(cases.count, 30)
        for c in cases {
            let name = c["name"] as? String ?? "?"
            let text = try XCTUnwrap(c["text"] as? String)
            let ids = ints(c["ids"])
            XCTAssertEqual(tok.encode(text, addSpecialTokens: false, parseSpecial: true), ids, name)
            XCTAssertEqual(tok.encode(text, addSpecialTokens: true, parseSpecial: true), ints(c["ids_add_special_tokens"]), name)
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: false), c["decoded"] as? String, name)
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), c["decoded_skip_special"] as? String, name)
            for skip in [false, true] {
                var sd = StreamingDecoder(tokenizer: tok, skipSpecialTokens: skip)
                var out = ""
                for id in ids {
                    let piece = sd.append(id)
                    XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "\(name): streamed a broken UTF-8 sequence")
                    out += piece
                }
                out += sd.flush()
                XCTAssertEqual(out, tok.decode(ids, skipSpecialTokens: skip), name)
            }
        }
    }

    func testParseSpecialOff() throws {
        let tok = try load()
        let text = "<|im_start|>user"
        let literal = tok.encode(text, addSpecialTokens: false, parseSpecial: false)
        XCTAssertFalse(literal.contains(1))
        XCTAssertGreaterThan(literal.count, 2)
        XCTAssertEqual(tok.decode(literal, skipSpecialTokens: true), text)
        XCTAssertEqual(tok.encode(text, addSpecialTokens: false, parseSpecial: true).first, 1)
    }

    func testWikitextSliceAndTiming() throws {
        let g = try TestPaths.json(try TestPaths.requireShared("golden/smollm2-tokenizer/wikitext_first20000.json"))
        let raw = try String(contentsOf: try TestPaths.requireShared("data/wikitext-2/wiki.test.raw"), encoding: .utf8)
        var view = String.UnicodeScalarView()
        view.append(contentsOf: raw.unicodeScalars.prefix(20000))
        let slice = String(view)
        XCTAssertEqual(slice.unicodeScalars.count, g["n_chars"] as? Int)
        XCTAssertEqual(slice.utf8.count, g["n_utf8_bytes"] as? Int)
        XCTAssertEqual(sha256Hex(Array(slice.utf8)), g["sha256_utf8"] as? String)

        guard FileManager.default.fileExists(atPath: TestPaths.smolGGUF.path) else {
            throw XCTSkip("missing \(TestPaths.smolGGUF.path)")
        }
        let gguf = try GGUFFile(path: TestPaths.smolGGUF.path)
        let t0 = Date()
        let tok = try TokenizerLoader.load(gguf: gguf)
        let loadTime = Date().timeIntervalSince(t0)
        let t1 = Date()
        let ids = tok.encode(slice, addSpecialTokens: false, parseSpecial: true)
        let encodeTime = Date().timeIntervalSince(t1)
        print(String(format: "SmolLM2 tokenizer: load %.3f s, encode 20,000 chars → %d tokens %.3f s", loadTime, ids.count, encodeTime))
        let expected = ints(g["ids"])
        XCTAssertEqual(ids.count, expected.count)
        if let i = zip(ids, expected).enumerated().first(where: { $0.element.0 != $0.element.1 })?.offset {
            XCTFail("first mismatch at token \(i): got \(ids[i..<min(i + 8, ids.count)]) expected \(expected[i..<min(i + 8, expected.count)])")
        }
        XCTAssertEqual(tok.decode(ids, skipSpecialTokens: false), slice)
        if isReleaseBuild {
            XCTAssertLessThan(loadTime, 2.0)
            XCTAssertLessThan(encodeTime, 2.0)
        }
    }
}
