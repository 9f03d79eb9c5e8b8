import XCTest
final class PlaceholderServer: XCTestCase { func testNothing() {} }
