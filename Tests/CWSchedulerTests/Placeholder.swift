import XCTest
final class PlaceholderScheduler: XCTestCase { func testNothing() {} }
