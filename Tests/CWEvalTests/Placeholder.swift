import XCTest
final class PlaceholderEval: XCTestCase { func testNothing() {} }
