import CWTokenizers
import XCTest

final class Llama2cTokenizerTests: XCTestCase {
    private func load() throws -> any Tokenizer {
        let url = try TestPaths.requireShared("models/stories260K/tok512.bin")
        return try TokenizerLoader.load(llama2c: url.path)
    }

    private func goldens() throws -> [String: Any] {
        try TestPaths.json(try TestPaths.requireShared("golden/stories260k/goldens.json"))
    }

    func testBasics() throws {
        let tok = try load()
        XCTAssertEqual(tok.vocabularySize, 512)
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.eosTokenIDs, [2])
        XCTAssertTrue(tok.addsBOSByDefault)
        XCTAssertTrue(tok.isSpecial(1) && tok.isSpecial(2) && !tok.isSpecial(403))
        XCTAssertEqual(tok.tokenString(403), " Once")
        XCTAssertEqual(tok.id(of: " Once"), 403)
        XCTAssertEqual(tok.encode("", addSpecialTokens: true, parseSpecial: true), [1])
        XCTAssertEqual(tok.encode("", addSpecialTokens: false, parseSpecial: true), [])
    }

    func testPromptIDs() throws {
        let tok = try load()
        let g = try goldens()
        let prompts = try XCTUnwrap(g["prompts"] as? [[String: Any]])
        XCTAssertEqual(prompts.count, 3)
        for p in prompts {
            let text = try XCTUnwrap(p["text"] as? String)
            let ids = ints(p["ids"])
            XCTAssertEqual(tok.encode(text, addSpecialTokens: true, parseSpecial: true), ids, "prompt \(text)")
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), text)
        }
        let fox = try XCTUnwrap(g["fox_perplexity"] as? [String: Any])
        let foxText = try XCTUnwrap(fox["text"] as? String)
        XCTAssertEqual(tok.encode(foxText, addSpecialTokens: true, parseSpecial: true), ints(fox["ids"]))
        XCTAssertEqual(tok.decode(ints(fox["ids"]), skipSpecialTokens: true), foxText)
    }

    /// greedy_text is what run.c prints for the generated tokens, i.e. decoded in context (the token before the
    /// first generated one is the prompt's last token — BOS for the empty prompt, which drops the leading space).
    func testGreedyTexts() throws {
        let tok = try load()
        let prompts = try XCTUnwrap(try goldens()["prompts"] as? [[String: Any]])
        var checked = 0
        for p in prompts {
            let promptIDs = ints(p["ids"])
            let variants = try XCTUnwrap(p["variants"] as? [String: [String: Any]])
            for (name, v) in variants {
                let greedy = ints(v["greedy_ids"])
                let text = try XCTUnwrap(v["greedy_text"] as? String)
                let full = try XCTUnwrap(v["greedy_full_text"] as? String)
                let prefix = tok.decode(promptIDs, skipSpecialTokens: true)
                let all = tok.decode(promptIDs + greedy, skipSpecialTokens: true)
                XCTAssertEqual(all, full, "\(p["name"] ?? "") \(name)")
                XCTAssertEqual(String(all.dropFirst(prefix.count)), text, "\(p["name"] ?? "") \(name)")
                // Without context, decode keeps the first token's leading space (run.c strips it only after BOS).
                if promptIDs.count > 1 {
                    XCTAssertEqual(tok.decode(greedy, skipSpecialTokens: true), text)
                } else {
                    XCTAssertEqual(tok.decode([1] + greedy, skipSpecialTokens: true), text)
                }
                // Streaming reproduces it.
                var sd = StreamingDecoder(tokenizer: tok, skipSpecialTokens: true)
                var streamed = ""
                for id in promptIDs + greedy { streamed += sd.append(id) }
                streamed += sd.flush()
                XCTAssertEqual(streamed, full)
                checked += 1
            }
        }
        XCTAssertEqual(checked, 9)
    }

    func testByteFallbackAndRoundTrip() throws {
        let tok = try load()
        for text in ["Hello 世界 🙂!", "a\tb\nc", "naïve café", "  two  spaces"] {
            let ids = tok.encode(text, addSpecialTokens: true, parseSpecial: true)
            XCTAssertEqual(ids.first, 1)
            XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), text, "\(ids)")
            var sd = StreamingDecoder(tokenizer: tok, skipSpecialTokens: true)
            var out = ""
            for id in ids {
                let piece = sd.append(id)
                XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"), "broken UTF-8 in streamed piece for \(text)")
                out += piece
            }
            out += sd.flush()
            XCTAssertEqual(out, text)
        }
        // 世 is not in the 512-token vocabulary: byte fallback (id = byte + 3).
        let ids = tok.encode("世", addSpecialTokens: false, parseSpecial: true)
        XCTAssertEqual(Array(ids.suffix(3)), Array("世".utf8).map { Int($0) + 3 })
    }

    func testMalformedFileThrows() throws {
        let dir = FileManager.default.temporaryDirectory
        let url = dir.appendingPathComponent("cw-bad-tok-\(getpid()).bin")
        try Data([7, 0, 0, 0, 0, 0, 0, 0, 200, 0, 0, 0, 65]).write(to: url)
        defer { try? FileManager.default.removeItem(at: url) }
        XCTAssertThrowsError(try TokenizerLoader.load(llama2c: url.path)) { error in
            XCTAssertEqual((error as? TokenizerError)?.field, "token[0].length")
        }
    }
}
