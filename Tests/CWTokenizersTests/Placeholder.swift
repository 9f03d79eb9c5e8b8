import XCTest
final class PlaceholderCWTokenizersTests: XCTestCase { func testNothing() {} }
