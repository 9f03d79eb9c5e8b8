import XCTest
final class PlaceholderChunkWiseTests: XCTestCase { func testNothing() {} }
