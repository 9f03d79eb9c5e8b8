@testable import CWTokenizers
import Foundation
import XCTest

/// The hand-written scanners split exactly like the regexes in HF `tokenizers` (Fixtures/pretokenizer_splits.json).
final class PreTokenizerTests: XCTestCase {
    func testScannersMatchRegexes() throws {
        let all = try TestPaths.json(TestPaths.fixtures.appendingPathComponent("pretokenizer_splits.json"))
        let kinds: [String: PreTokenizerKind] = ["gpt2": .gpt2, "llama3": .llama3, "qwen2": .qwen2]
        for (name, kind) in kinds {
            let cases = try XCTUnwrap(all[name] as? [[String: Any]])
            XCTAssertGreaterThan(cases.count, 20)
            for c in cases {
                let text = try XCTUnwrap(c["text"] as? String)
                let expected = try XCTUnwrap(c["pieces"] as? [String])
                let scalars = Array(text.unicodeScalars)
                let got = preTokenize(scalars, kind: kind).map { r -> String in
                    var v = String.UnicodeScalarView()
                    v.append(contentsOf: scalars[r])
                    return String(v)
                }
                XCTAssertEqual(got, expected, "\(name): \(text.debugDescription)")
            }
        }
    }

    func testIndividualDigits() {
        let scalars = Array("a 123b".unicodeScalars)
        let pieces = preTokenize(scalars, kind: .gpt2IndividualDigits).map { String(String.UnicodeScalarView(scalars[$0])) }
        XCTAssertEqual(pieces, ["a", " ", "1", "2", "3", "b"])
    }

    func testMergeStringSplit() {
        XCTAssertTrue(TokenizerLoader.splitMerge("Ġ t")! == ("Ġ", "t"))
        XCTAssertTrue(TokenizerLoader.splitMerge("  x")! == (" ", "x"), "a leading space belongs to the first token")
        XCTAssertNil(TokenizerLoader.splitMerge("abc"))
    }
}
