import XCTest
final class PlaceholderCWKernelsTests: XCTestCase { func testNothing() {} }
