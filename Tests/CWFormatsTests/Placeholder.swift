import XCTest
final class PlaceholderCWFormatsTests: XCTestCase { func testNothing() {} }
