import CWEval
import CWTestSupport
import Foundation
import XCTest

final class BLEUTests: XCTestCase {
    func testCorpusBLEUAndChrFMatchSacrebleuForEverySystem() throws {
        let golden = try TestPaths.json("golden/bleu/scores.json")
        let dir = try TestPaths.sharedFile("data/bleu")
        let refs = try PyText.readLines(dir + "/newstest2017.ref.en-de.txt")
        let systems = try XCTUnwrap(golden["systems"] as? [[String: Any]])
        XCTAssertGreaterThanOrEqual(systems.count, 8)
        let bleu = BLEU()
        XCTAssertEqual(bleu.signature, golden["bleu_signature"] as? String)
        XCTAssertEqual(CHRF().signature, golden["chrf_signature"] as? String)
        for sys in systems {
            let file = try XCTUnwrap(sys["file"] as? String)
            let hyps = try PyText.readLines(dir + "/" + file)
            XCTAssertEqual(hyps.count, refs.count, file)
            let s = try bleu.corpusScore(hypotheses: hyps, references: refs)
            let g = try XCTUnwrap(sys["bleu"] as? [String: Any])
            XCTAssertEqual(s.counts, g["counts"] as? [Int], file)
            XCTAssertEqual(s.totals, g["totals"] as? [Int], file)
            XCTAssertEqual(s.sys_len, g["sys_len"] as? Int, file)
            XCTAssertEqual(s.ref_len, g["ref_len"] as? Int, file)
            XCTAssertEqual(s.score, try XCTUnwrap(g["score"] as? Double), accuracy: 1e-6, file)
            XCTAssertEqual(s.bp, try XCTUnwrap(g["bp"] as? Double), accuracy: 1e-6, file)
            XCTAssertEqual(s.ratio, try XCTUnwrap(g["ratio"] as? Double), accuracy: 1e-9, file)
            let gp = try XCTUnwrap(g["precisions"] as? [Double])
            for (a, b) in zip(s.precisions, gp) { XCTAssertEqual(a, b, accuracy: 1e-6, file) }
            XCTAssertEqual(s.formatted, sys["bleu_str"] as? String, file)
            let chrf = try CHRF().corpusScore(hypotheses: hyps, references: refs)
            let gc = try XCTUnwrap((sys["chrf"] as? [String: Any])?["score"] as? Double)
            XCTAssertEqual(chrf, gc, accuracy: 1e-6, file)
            XCTAssertEqual(CHRF().formatted(chrf), sys["chrf_str"] as? String, file)
        }
    }

    func testSentenceBLEUAndChrF() throws {
        let golden = try TestPaths.json("golden/bleu/scores.json")
        let sl = try XCTUnwrap(golden["sentence_level"] as? [String: Any])
        let sentences = try XCTUnwrap(sl["sentences"] as? [[String: Any]])
        XCTAssertEqual(sl["bleu_signature"] as? String, BLEU(effectiveOrder: true).signature)
        XCTAssertFalse(sentences.isEmpty)
        for s in sentences {
            let hyp = try XCTUnwrap(s["hyp"] as? String), ref = try XCTUnwrap(s["ref"] as? String)
            let b = BLEU.sentenceScore(hypothesis: hyp, reference: ref)
            let g = try XCTUnwrap(s["bleu"] as? [String: Any])
            XCTAssertEqual(b.counts, g["counts"] as? [Int], hyp)
            XCTAssertEqual(b.totals, g["totals"] as? [Int], hyp)
            XCTAssertEqual(b.sys_len, g["sys_len"] as? Int)
            XCTAssertEqual(b.ref_len, g["ref_len"] as? Int)
            XCTAssertEqual(b.score, try XCTUnwrap(g["score"] as? Double), accuracy: 1e-6, hyp)
            XCTAssertEqual(b.bp, try XCTUnwrap(g["bp"] as? Double), accuracy: 1e-6)
            for (x, y) in zip(b.precisions, try XCTUnwrap(g["precisions"] as? [Double])) { XCTAssertEqual(x, y, accuracy: 1e-6, hyp) }
            let c = CHRF().sentenceScore(hypothesis: hyp, reference: ref)
            XCTAssertEqual(c, try XCTUnwrap(s["chrf"] as? Double), accuracy: 1e-6, hyp)
        }
    }

    func testTokenizer13aEdgeCases() {
        // Values from sacrebleu 2.6.0's Tokenizer13a (after BLEU's rstrip).
        XCTAssertEqual(Tokenizer13a.tokenizeString("Hello, world. 3.14 and 1,000 items-x 5-3 &amp; <skipped>"),
                       "Hello , world . 3.14 and 1,000 items-x 5 - 3 &")
    }

    func testEdgeCasesNoMatchAndEmpty() throws {
        let s = try BLEU().corpusScore(hypotheses: ["a b c"], references: ["x y z"])
        XCTAssertEqual(s.score, 0)
        let e = try BLEU().corpusScore(hypotheses: [""], references: ["x y z"])
        XCTAssertEqual(e.score, 0)
        XCTAssertEqual(e.bp, 0)
        XCTAssertThrowsError(try BLEU().corpusScore(hypotheses: ["a"], references: []))
    }
}
