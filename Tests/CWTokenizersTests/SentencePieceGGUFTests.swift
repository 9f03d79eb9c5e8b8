import CWFormats
import CWTokenizers
import Foundation
import XCTest

/// SentencePiece BPE from GGUF ("llama" model) on a tiny synthetic vocabulary (Fixtures/make_gguf_fixtures.py).
/// Expected ids are derived by hand from llama.cpp's algorithm: highest score merges first (ties → leftmost),
/// "▁" for spaces and as prefix (start of text and after every special token), unknown characters → <0xXX>.
final class SentencePieceGGUFTests: XCTestCase {
    private func load(_ name: String) throws -> any Tokenizer {
        try TokenizerLoader.load(gguf: try GGUFFile(path: TestPaths.fixtures.appendingPathComponent(name).path))
    }

    func testGreedyScoreMerges() throws {
        let tok = try load("spm-tiny.gguf")
        func id(_ s: String) -> Int { tok.id(of: s) ?? -1 }
        XCTAssertEqual(tok.bosTokenID, 1)
        XCTAssertEqual(tok.eosTokenIDs, [2])
        XCTAssertTrue(tok.addsBOSByDefault)
        XCTAssertTrue(tok.isSpecial(1) && tok.isSpecial(0) && !tok.isSpecial(id("<tool>")) && !tok.isSpecial(id("▁hello")))
        // "▁w" (score -0.5) wins over "wo" (-6), so "▁world" is never reached.
        let ids = tok.encode("hello world", addSpecialTokens: false, parseSpecial: true)
        XCTAssertEqual(ids, [id("▁hello"), id("▁w"), id("o"), id("rld")])
        XCTAssertEqual(tok.encode("hello world", addSpecialTokens: true, parseSpecial: true).first, 1)
        XCTAssertEqual(tok.decode(ids, skipSpecialTokens: false), "hello world")
        XCTAssertEqual(tok.decode([1] + ids, skipSpecialTokens: false), "<s> hello world")
        XCTAssertEqual(tok.decode([1] + ids, skipSpecialTokens: true), "hello world")
        XCTAssertEqual(tok.encode("", addSpecialTokens: true, parseSpecial: true), [1])
        XCTAssertEqual(tok.encode("", addSpecialTokens: false, parseSpecial: true), [])
    }

    func testByteFallbackAndSpecials() throws {
        let tok = try load("spm-tiny.gguf")
        func id(_ s: String) -> Int { tok.id(of: s) ?? -1 }
        // é is not in the vocabulary → its UTF-8 bytes.
        let e = tok.encode("hé", addSpecialTokens: false, parseSpecial: true)
        XCTAssertEqual(e, [id("▁"), id("h"), id("<0xC3>"), id("<0xA9>")])
        XCTAssertEqual(tok.decode(e, skipSpecialTokens: false), "hé")
        // Special tokens are matched, and the text after them gets the "▁" prefix again.
        let s = tok.encode("<s>hello", addSpecialTokens: false, parseSpecial: true)
        XCTAssertEqual(s, [1, id("▁hello")])
        // Not parsed: "<s>" is plain text (bytes), "hello" follows ">" without a space.
        let p = tok.encode("<s>hello", addSpecialTokens: false, parseSpecial: false)
        XCTAssertEqual(p, [id("▁"), id("<0x3C>"), id("<0x73>"), id("<0x3E>"), id("hello")])
        XCTAssertEqual(tok.decode(p, skipSpecialTokens: true), "<s>hello")
        // User-defined tokens are always matched and are not skipped.
        let u = tok.encode("hello<tool>hello", addSpecialTokens: false, parseSpecial: false)
        XCTAssertEqual(u, [id("▁hello"), id("<tool>"), id("▁hello")])
        XCTAssertEqual(tok.decode(u, skipSpecialTokens: true), "hello<tool> hello")
        // Streaming over byte tokens never yields half a character.
        var sd = StreamingDecoder(tokenizer: tok)
        let ids = tok.encode("hé 😀 world", addSpecialTokens: true, parseSpecial: true)
        var out = ""
        for i in ids {
            let piece = sd.append(i)
            XCTAssertFalse(piece.unicodeScalars.contains("\u{FFFD}"))
            out += piece
        }
        out += sd.flush()
        XCTAssertEqual(out, tok.decode(ids, skipSpecialTokens: false))
        XCTAssertEqual(tok.decode(ids, skipSpecialTokens: true), "hé 😀 world")
    }

    func testLoaderErrorsNameTheField() throws {
        XCTAssertThrowsError(try load("bad-model.gguf")) { e in
            XCTAssertEqual((e as? TokenizerError)?.field, "tokenizer.ggml.model")
        }
        XCTAssertThrowsError(try load("gpt2-no-merges.gguf")) { e in
            XCTAssertEqual((e as? TokenizerError)?.field, "tokenizer.ggml.merges")
        }
    }
}

final class StreamingDecoderTests: XCTestCase {
    /// A byte-level tokenizer whose tokens are single bytes, so multi-byte characters always span several tokens.
    private func byteTokenizer() -> BPETokenizer {
        let tokens = (0..<256).map { String(Character(ByteLevelMapTestHelper.scalar(UInt8($0)))) } + ["<|end|>"]
        return BPETokenizer(tokens: tokens, merges: [], mode: .byteLevel(.gpt2, addPrefixSpace: false),
                            addedTokens: [(256, true)], eosTokenIDs: [256])
    }

    func testMultiByteCharactersAcrossTokens() {
        let tok = byteTokenizer()
        for text in ["日本語テキスト", "emoji 👨‍👩‍👧 and 🍕!", "mixed é ñ ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "<|end|>after"] {
            let ids = tok.encode(text, addSpecialTokens: false, parseSpecial: true)
            var sd = StreamingDecoder(tokenizer: tok)
            var pieces: [String] = []
            for id in ids { pieces.append(sd.append(id)) }
            pieces.append(sd.flush())
            XCTAssertEqual(pieces.joined(), text)
            XCTAssertEqual(pieces.joined(), tok.decode(ids, skipSpecialTokens: false))
            XCTAssertFalse(pieces.contains { $0.unicodeScalars.contains("\u{FFFD}") })
            XCTAssertTrue(pieces.contains(""), "partial characters must be held back")
        }
    }

    func testInvalidBytesFlushAsReplacement() {
        let tok = byteTokenizer()
        // 0xF0 0x9F (incomplete 4-byte sequence), then 'a': same result as decode().
        let ids = [0xF0, 0x9F, 0x61].map { tok.id(of: String(Character(ByteLevelMapTestHelper.scalar(UInt8($0))))) ?? -1 }
        var sd = StreamingDecoder(tokenizer: tok)
        var out = ""
        for id in ids { out += sd.append(id) }
        out += sd.flush()
        XCTAssertEqual(out, tok.decode(ids, skipSpecialTokens: false))
        XCTAssertEqual(out, "\u{FFFD}a")
        // Held-back bytes at the end come out on flush.
        var sd2 = StreamingDecoder(tokenizer: tok)
        XCTAssertEqual(sd2.append(ids[0]), "")
        XCTAssertEqual(sd2.flush(), "\u{FFFD}")
    }
}

/// GPT-2 byte → unicode map, reimplemented independently for the tests.
enum ByteLevelMapTestHelper {
    static func scalar(_ b: UInt8) -> Unicode.Scalar {
        var n: UInt32 = 0
        for x in 0..<256 {
            let printable = (0x21...0x7E).contains(x) || (0xA1...0xAC).contains(x) || (0xAE...0xFF).contains(x)
            if x == Int(b) { return Unicode.Scalar(printable ? UInt32(x) : 256 + n) ?? " " }
            if !printable { n += 1 }
        }
        return " "
    }
}
