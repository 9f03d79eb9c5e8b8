import XCTest
final class PlaceholderLoRA: XCTestCase { func testNothing() {} }
