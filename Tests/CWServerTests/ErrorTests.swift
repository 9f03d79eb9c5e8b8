import ChunkWise
import CWServer
import CWTestSupport
import Foundation
import HTTPTypes
import Hummingbird
import HummingbirdTesting
import XCTest

/// Every limit and bad input gets an OpenAI-style error with the right status, and the server
/// keeps serving afterwards.
func assertError(_ r: TestResponse, _ status: HTTPResponse.Status, code: String? = nil, param: String? = nil,
                 file: StaticString = #filePath, line: UInt = #line) throws {
    XCTAssertEqual(r.status, status, r.text, file: file, line: line)
    XCTAssertEqual(r.headers[.contentType], "application/json", file: file, line: line)
    let e = try r.error(file: file, line: line)
    XCTAssertNotNil(e["message"] as? String, file: file, line: line)
    XCTAssertNotNil(e["type"] as? String, file: file, line: line)
    XCTAssertTrue(e.keys.contains("param") && e.keys.contains("code"), "\(e)", file: file, line: line)
    if let code { XCTAssertEqual(e["code"] as? String, code, "\(e)", file: file, line: line) }
    if let param { XCTAssertEqual(e["param"] as? String, param, "\(e)", file: file, line: line) }
}

final class ErrorTests: XCTestCase {

    func testBadRequests() async throws {
        let state = try await Fixture.state { $0.maxTokensLimit = 100; $0.maxBodyBytes = 2000 }
        try await Fixture.app(state).test(.router) { client in
            let c = "/v1/completions"
            try assertError(try await client.post(c, #"{"prompt": "Once", "#), .badRequest, code: "invalid_json")
            try assertError(try await client.post(c, #"[1, 2]"#), .badRequest, code: "invalid_type")
            try assertError(try await client.post(c, #"{"prompt": "Once", "temperature": "hot"}"#), .badRequest, code: "invalid_type", param: "temperature")
            try assertError(try await client.post(c, #"{"prompt": "Once", "max_tokens": "9"}"#), .badRequest, code: "invalid_type", param: "max_tokens")
            try assertError(try await client.post(c, #"{"prompt": "Once", "max_tokens": 1.5}"#), .badRequest, param: "max_tokens")
            try assertError(try await client.post(c, #"{"prompt": "Once", "stream": "yes"}"#), .badRequest, param: "stream")
            try assertError(try await client.post(c, #"{"prompt": 5}"#), .badRequest, param: "prompt")
            try assertError(try await client.post(c, #"{"max_tokens": 5}"#), .badRequest, code: "missing_field", param: "prompt")
            try assertError(try await client.post(c, #"{"prompt": "Once", "max_tokens": 101}"#), .badRequest, code: "invalid_max_tokens")
            try assertError(try await client.post(c, #"{"prompt": "Once", "max_tokens": 0}"#), .badRequest, code: "invalid_max_tokens")
            try assertError(try await client.post(c, #"{"prompt": "Once", "max_tokens": -3}"#), .badRequest, code: "invalid_max_tokens")
            try assertError(try await client.post(c, #"{"prompt": "Once", "n": 2}"#), .badRequest, param: "n")
            try assertError(try await client.post(c, #"{"prompt": "Once", "top_p": 0}"#), .badRequest, param: "top_p")
            try assertError(try await client.post(c, #"{"prompt": "Once", "temperature": -1}"#), .badRequest, param: "temperature")
            try assertError(try await client.post(c, #"{"prompt": "Once", "presence_penalty": 0.5}"#), .badRequest, param: "presence_penalty")
            try assertError(try await client.post(c, #"{"prompt": "Once", "stop": [1]}"#), .badRequest, param: "stop")
            try assertError(try await client.post(c, #"{"prompt": [99999]}"#), .badRequest, param: "prompt")
            try assertError(try await client.post(c, #"{"prompt": []}"#), .badRequest, param: "prompt")
            // Context: stories260K holds 512 positions.
            let long = String(repeating: "a b ", count: 700)
            try assertError(try await client.post(c, #"{"prompt": \#(jsonString(String(long.prefix(1900))))}"#), .badRequest, code: "context_length_exceeded")
            let ids = Array(repeating: 1, count: 500)
            try assertError(try await client.post(c, #"{"prompt": \#(ids), "max_tokens": 50}"#), .badRequest, code: "context_length_exceeded")
            try assertError(try await client.post(c, #"{"prompt": \#(jsonString(String(repeating: "x", count: 3000)))}"#), .contentTooLarge,
                                 code: "request_too_large")
            try assertError(try await client.post(c, #"{"model": "nope", "prompt": "Once"}"#), .notFound, code: "model_not_found", param: "model")
            try assertError(try await client.post(c, #"{"prompt": "Once", "lora": [{"name": "nope"}]}"#), .notFound, code: "adapter_not_found")
            try assertError(try await client.post(c, #"{"prompt": "Once", "lora": [{"scale": 1}]}"#), .badRequest, param: "lora[0].name")
            try assertError(try await client.post(c, #"{"prompt": "Once", "chunkwise": {"policy": "fastest"}}"#), .badRequest, code: "unknown_policy")
            for p in ["balanced", "aggressive", "quality", "static:4"] {
                try assertError(try await client.post(c, #"{"prompt": "Once", "chunkwise": {"policy": "\#(p)"}}"#), .badRequest,
                                     code: "policy_needs_one_adapter", param: "chunkwise.policy")
            }
            try assertError(try await client.execute(uri: "/v1/nothing", method: .get), .notFound, code: "not_found")
            // Still serving, and the static policy is accepted.
            let ok = try await client.post(c, #"{"prompt": "Once", "max_tokens": 3, "chunkwise": {"policy": "static"}}"#)
            XCTAssertEqual(ok.status, .ok, ok.text)
        }
    }

    /// Odd stop strings (combining marks, emoji, whitespace, long) never break a request.
    func testOddStopStringsAreSafe() async throws {
        let state = try await Fixture.state()
        try await Fixture.app(state).test(.router) { client in
            for stops in [["\u{301}"], ["e\u{301}", "é"], ["👩‍👩‍👧", " "], ["\n\n", "\n"], [String(repeating: "the ", count: 50)], ["", "a"], ["ce", "e"]] {
                let list = "[" + stops.map(jsonString).joined(separator: ",") + "]"
                let r = try await client.post("/v1/completions", #"{"prompt": "Once upon a time", "max_tokens": 40, "stop": \#(list)}"#)
                XCTAssertEqual(r.status, .ok, "\(stops): \(r.text)")
                for s in stops where !s.isEmpty { XCTAssertFalse(try r.choiceText().contains(s), "\(stops)") }
            }
        }
    }

    func testAPIKey() async throws {
        let state = try await Fixture.state { $0.apiKey = "sekret" }
        try await Fixture.app(state).test(.router) { client in
            let body = #"{"prompt": "Once", "max_tokens": 2}"#
            try assertError(try await client.post("/v1/completions", body), .unauthorized, code: "invalid_api_key")
            try assertError(try await client.post("/v1/completions", body, headers: [.authorization: "Bearer wrong"]), .unauthorized)
            try assertError(try await client.execute(uri: "/v1/models", method: .get), .unauthorized)
            let ok = try await client.post("/v1/completions", body, headers: [.authorization: "Bearer sekret"])
            XCTAssertEqual(ok.status, .ok)
            let h = try await client.execute(uri: "/health", method: .get)
            XCTAssertEqual(h.status, .ok)
        }
    }

    func testFullQueueAnswers429AtOnce() async throws {
        let state = try await Fixture.state { $0.maxConcurrent = 1; $0.maxQueue = 0 }
        try await Fixture.app(state).test(.router) { client in
            let long = Task { try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 400, "ignore_eos": true}"#) }
            var running = 0
            for _ in 0..<500 where running == 0 {
                running = await state.scheduler.snapshot().running
                try await Task.sleep(for: .milliseconds(2))
            }
            XCTAssertEqual(running, 1)
            let r = try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 2}"#)
            try assertError(r, .tooManyRequests, code: "queue_full")
            XCTAssertEqual(r.headers[HTTPField.Name("Retry-After")!], "1")
            let first = try await long.value
            XCTAssertEqual(first.status, .ok)
            let after = try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 2}"#)
            XCTAssertEqual(after.status, .ok)
        }
    }

    func testKVBudget() async throws {
        let state = try await Fixture.state { $0.kvBudgetBytes = 100_000 }
        try await Fixture.app(state).test(.router) { client in
            try assertError(try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 400}"#), .badRequest,
                                 code: "kv_budget_exceeded")
            let ok = try await client.post("/v1/completions", #"{"prompt": "Once", "max_tokens": 4}"#)
            XCTAssertEqual(ok.status, .ok, ok.text)
        }
    }
}
