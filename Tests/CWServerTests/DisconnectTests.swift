import CWServer
import CWTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import XCTest
#if canImport(Glibc)
import Glibc
#elseif canImport(Darwin)
import Darwin
#endif

/// A streaming client that hangs up mid-stream (a real socket on a live server) frees its slot
/// and KV cache: the server notices the failed write and cancels the sequence.
final class DisconnectTests: XCTestCase {
    /// Sends a raw HTTP request to 127.0.0.1:port, reads until `marker` shows up, then closes.
    static func hangUpAfter(_ marker: String, port: Int, path: String, body: String) throws {
        let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue), 0)
        XCTAssertGreaterThanOrEqual(fd, 0)
        defer { close(fd) }
        var addr = sockaddr_in()
        addr.sin_family = sa_family_t(AF_INET)
        addr.sin_port = in_port_t(UInt16(port).bigEndian)
        addr.sin_addr.s_addr = inet_addr("127.0.0.1")
        let rc = withUnsafePointer(to: &addr) { $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) } }
        XCTAssertEqual(rc, 0)
        let request = "POST \(path) HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: \(body.utf8.count)\r\n\r\n\(body)"
        _ = request.withCString { send(fd, $0, strlen($0), 0) }
        var received = ""
        var buf = [UInt8](repeating: 0, count: 4096)
        while !received.contains(marker) {
            let n = recv(fd, &buf, buf.count, 0)
            guard n > 0 else { XCTFail("connection ended before '\(marker)'"); return }
            received += String(decoding: buf[0..<n], as: UTF8.self)
        }
    }

    func testStreamingClientHangUpFreesTheSlot() async throws {
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.live) { client in
            let port = try XCTUnwrap(client.port)
            try DisconnectTests.hangUpAfter("data: {", port: port, path: "/v1/completions",
                                 body: #"{"prompt": "Once", "max_tokens": 500, "ignore_eos": true, "stream": true}"#)
            var snap = await state.scheduler.snapshot()
            for _ in 0..<1000 where snap.running > 0 {
                try await Task.sleep(for: .milliseconds(2))
                snap = await state.scheduler.snapshot()
            }
            XCTAssertEqual(snap.running, 0)
            XCTAssertEqual(snap.kvBytes, 0)
            let generated = state.metrics.render().split(separator: "\n").first { $0.hasPrefix("vllm:generation_tokens_total ") }
            let count = generated.flatMap { Double($0.split(separator: " ").last ?? "") } ?? 0
            XCTAssertGreaterThan(count, 0)
            XCTAssertLessThan(count, 500, "the sequence should have been cancelled, not run to max_tokens")
            // The server still answers.
            let ok = try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 3}"#)
            XCTAssertEqual(ok.status, .ok)
        }
    }
}
