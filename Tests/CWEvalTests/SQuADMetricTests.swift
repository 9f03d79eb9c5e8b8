import CWEval
import CWTestSupport
import Foundation
import XCTest

final class SQuADMetricTests: XCTestCase {
    func testTotalsAndSplitsMatchOfficialScript() throws {
        let data = try SQuADDataset(path: try TestPaths.sharedFile("data/squad/squad-v2.0-dev-first5-articles.json"))
        let preds = try SQuADMetric.readPredictions(try TestPaths.sharedFile("golden/squad-metric/predictions.json"))
        let expected = try TestPaths.json("golden/squad-metric/expected.json")
        let m = try XCTUnwrap(expected["metric"] as? [String: Any])
        let cli = try XCTUnwrap(expected["official_cli"] as? [String: Any])
        let (r, per) = SQuADMetric.evaluate(questions: data.questions, predictions: preds)
        XCTAssertEqual(r.missing, 0)
        for ref in [m, cli] {
            XCTAssertEqual(r.total, ref["total"] as? Int)
            XCTAssertEqual(r.HasAns_total, ref["HasAns_total"] as? Int)
            XCTAssertEqual(r.NoAns_total, ref["NoAns_total"] as? Int)
            XCTAssertEqual(r.exact, try XCTUnwrap(ref["exact"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(r.f1, try XCTUnwrap(ref["f1"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(r.HasAns_exact), try XCTUnwrap(ref["HasAns_exact"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(r.HasAns_f1), try XCTUnwrap(ref["HasAns_f1"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(r.NoAns_exact), try XCTUnwrap(ref["NoAns_exact"] as? Double), accuracy: 1e-9)
            XCTAssertEqual(try XCTUnwrap(r.NoAns_f1), try XCTUnwrap(ref["NoAns_f1"] as? Double), accuracy: 1e-9)
        }
        // Every question's raw scores (the official get_raw_scores).
        let pq = try TestPaths.json("golden/squad-metric/per_question.json")
        XCTAssertEqual(per.count, pq.count)
        var checked = 0
        for q in per {
            let g = try XCTUnwrap(pq[q.id] as? [String: Any], q.id)
            XCTAssertEqual(q.exact, g["exact"] as? Int, "\(q.id) \(q.prediction)")
            XCTAssertEqual(q.f1, try XCTUnwrap((g["f1"] as? NSNumber)?.doubleValue), accuracy: 1e-9, "\(q.id) \(q.prediction)")
            checked += 1
        }
        XCTAssertEqual(checked, 1407)
    }

    func testNormalization() {
        XCTAssertEqual(SQuADMetric.normalize("The  IN THE 10TH AND 11TH CENTURIES ."), "in 10th and 11th centuries")
        XCTAssertEqual(SQuADMetric.normalize("an apple, a pear & the banana"), "apple pear banana")
        XCTAssertEqual(SQuADMetric.normalize("Theatre antler"), "theatre antler")
        XCTAssertEqual(SQuADMetric.normalize("éa a"), "éa")
        XCTAssertEqual(SQuADMetric.score(answers: [], prediction: "").exact, 1)
        XCTAssertEqual(SQuADMetric.score(answers: [], prediction: "x").f1, 0)
        XCTAssertEqual(SQuADMetric.score(answers: ["Denmark, Iceland and Norway"], prediction: "Denmark, Iceland").f1, 2.0 / 3.0, accuracy: 1e-12)
    }

    func testMissingPredictionsAreCountedNotScored() throws {
        let q = [SQuADQuestion(id: "a", question: "q", context: "c", answers: ["x"], isImpossible: false, article: 0, title: "t"),
                 SQuADQuestion(id: "b", question: "q", context: "c", answers: [], isImpossible: true, article: 0, title: "t")]
        let (r, _) = SQuADMetric.evaluate(questions: q, predictions: ["a": "x"])
        XCTAssertEqual(r.total, 1)
        XCTAssertEqual(r.missing, 1)
        XCTAssertEqual(r.exact, 100)
        XCTAssertNil(r.NoAns_total)
        XCTAssertThrowsError(try SQuADDataset(data: Data("{}".utf8)))
    }
}
