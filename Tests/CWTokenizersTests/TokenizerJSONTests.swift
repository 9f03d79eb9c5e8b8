import CWTokenizers
import Foundation
import XCTest

/// Parity with the Python `tokenizers` library on small trained fixtures (see Fixtures/make_fixtures.py).
final class TokenizerJSONTests: XCTestCase {
    private func expected(_ name: String) throws -> [[String: Any]] {
        let all = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("expected.json"))
        return try XCTUnwrap(all[name] as? [[String: Any]], "expected.json has no \(name)")
    }

    private func check(_ tok: any Tokenizer, _ name: String, file: StaticString = #filePath, line: UInt = #line) throws {
        let cases = try expected(name)
        XCTAssertGreaterThanOrEqual(cases.count, 20)
        for c in cases {
            let text = try XCTUnwrap(c["text"] as? String)
            let ids = ints(c["ids"])
            let label = "\(name): \(text.debugDescription)"
            XCTAssertEqual(tok.encode(text, addSpecialTokens: false, parseSpecial: true), ids, label, file: file, line: line)
            XCTAssertEqual(tok.encode(text, addSpecialTokens: true, parseSpecial: true), ints(c["ids_add_special_tokens"]),
                           label, file: file, line: line)
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: false), c["decoded"] as? String, label, file: file, line: line)
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), c["decoded_skip_special"] as? String, label, file: file, line: line)
            for skip in [false, true] {
                var sd = StreamingDecoder(tokenizer: tok, skipSpecialTokens: skip)
                var out = ""
                for id in ids {
                    let piece = sd.append(id)
                    XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "\(label): broken UTF-8 streamed", file: file, line: line)
                    out += piece
                }
                out += sd.flush()
                XCTAssertEqual(out, tok.decode(ids, skipSpecialTokens: skip), label, file: file, line: line)
            }
        }
    }

    func testByteLevelPairMerges() throws {
        let tok = try TokenizerLoader.load(tokenizerJSON: TestPaths.fixtures.appendingPathComponent("bytelevel.tokenizer.json").path)
        XCTAssertTrue(tok.isSpecial(0) && tok.isSpecial(2))
        XCTAssertFalse(tok.isSpecial(400), "[NOTE] is a non-special added token")
        XCTAssertEqual(tok.eosTokenIDs.sorted(), [0, 2])
        XCTAssertFalse(tok.addsBOSByDefault)
        try check(tok, "bytelevel")
        // parseSpecial=false: specials become text, non-special added tokens still match.
        let ids = tok.encode("<|im_end|>[NOTE]", addSpecialTokens: false, parseSpecial: false)
        XCTAssertFalse(ids.contains(2))
        XCTAssertEqual(ids.last, 400)
        XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), "<|im_end|>[NOTE]")
    }

    func testByteLevelStringMerges() throws {
        let a = try TokenizerLoader.load(tokenizerJSON: TestPaths.fixtures.appendingPathComponent("bytelevel-strings.tokenizer.json").path)
        try check(a, "bytelevel")
    }

    func testMetaspaceLlamaLayoutWithConfig() throws {
        // tokenizer_config.json must sit beside tokenizer.json: copy both into a temporary directory.
        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cw-tokjson-\(getpid())-\(UInt32.random(in: 0...UInt32.max))")
        try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
        defer { try? FileManager.default.removeItem(at: dir) }
        try FileManager.default.copyItem(at: TestPaths.fixtures.appendingPathComponent("metaspace.tokenizer.json"),
                                         to: dir.appendingPathComponent("tokenizer.json"))
        try FileManager.default.copyItem(at: TestPaths.fixtures.appendingPathComponent("metaspace.tokenizer_config.json"),
                                         to: dir.appendingPathComponent("tokenizer_config.json"))
        let tok = try TokenizerLoader.load(tokenizerJSON: dir.appendingPathComponent("tokenizer.json").path)
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.eosTokenIDs, [2])
        XCTAssertTrue(tok.addsBOSByDefault)
        XCTAssertEqual(tok.tokenBytes(tok.id(of: "<0xE4>") ?? -1), [0xE4])
        try check(tok, "metaspace")
    }

    func testMetaspacePreTokenizerPairMerges() throws {
        let tok = try TokenizerLoader.load(tokenizerJSON: TestPaths.fixtures.appendingPathComponent("metaspace-pretok.tokenizer.json").path)
        XCTAssertFalse(tok.addsBOSByDefault)
        try check(tok, "metaspace-pretok")
    }

    func testMalformedJSON() throws {
        let url = FileManager.default.temporaryDirectory.appendingPathComponent("cw-bad-\(getpid()).json")
        defer { try? FileManager.default.removeItem(at: url) }
        try Data(#"{"model": {"type": "Unigram", "vocab": []}}"#.utf8).write(to: url)
        XCTAssertThrowsError(try TokenizerLoader.load(tokenizerJSON: url.path)) { e in
            XCTAssertEqual((e as? TokenizerError)?.field, "model.type")
        }
        try Data(#"{"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": [7]}}"#.utf8).write(to: url)
        XCTAssertThrowsError(try TokenizerLoader.load(tokenizerJSON: url.path)) { e in
            XCTAssertEqual((e as? TokenizerError)?.field, "model.merges")
        }
    }
}
