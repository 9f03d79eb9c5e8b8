import XCTest
final class PlaceholderCWTransformerTests: XCTestCase { func testNothing() {} }
