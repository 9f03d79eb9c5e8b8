@testable import ChunkWise
import XCTest

/// The statistics of `chunkwise bench --versus` (no model needed).
final class SideBySideTests: XCTestCase {
    func testSignTestMatchesTheBinomialTail() {
        typealias R = SideBySideReport.Ratio
        XCTAssertEqual(R.signTest(wins: 10, losses: 10), 1)
        // 15 of 20: 2 · P(X ≤ 5), X ~ Bin(20, ½) = 2 · 21700 / 2²⁰
        XCTAssertEqual(R.signTest(wins: 15, losses: 5), 2 * 21700 / 1_048_576, accuracy: 1e-12)
        XCTAssertEqual(R.signTest(wins: 0, losses: 6), 2.0 / 64, accuracy: 1e-12)
        XCTAssertEqual(R.signTest(wins: 0, losses: 0), 1)
    }

    func testMedianIntervalUsesTheRightOrderStatistics() {
        typealias R = SideBySideReport.Ratio
        XCTAssertNil(R.medianInterval([1, 2, 3, 4, 5]), "5 values cannot give 95%: 2/32 > 0.05")
        XCTAssertEqual(R.medianInterval([1, 2, 3, 4, 5, 6]), [1, 6])
        // n = 20: k = 6 (2 · P(X ≤ 5) = 0.041 ≤ 0.05 < 2 · P(X ≤ 6) = 0.115).
        let xs = (1...20).map(Double.init)
        XCTAssertEqual(R.medianInterval(xs), [6, 15])
    }

    func testRatioSummary() {
        let q = SideBySideReport.Ratio([1.1, 0.9, 1.2, 1.0, 1.05, 0.95, 1.3])
        XCTAssertEqual(q.median, 1.05)
        XCTAssertEqual(q.min, 0.9)
        XCTAssertEqual(q.max, 1.3)
        XCTAssertEqual(q.faster, 4)
        // 4 wins, 2 losses (the tie left out): 2 · P(X ≤ 2), X ~ Bin(6, ½) = 2 · 22/64
        XCTAssertEqual(q.sign_test_p, 44.0 / 64, accuracy: 1e-12)
        XCTAssertEqual(SideBySideReport.Ratio([1, 3, 2, 4]).median, 2.5)
    }
}
