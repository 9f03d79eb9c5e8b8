import ChunkWise
import CWServer
import CWTestSupport
import Foundation
import Hummingbird
import HummingbirdTesting
import Logging
import XCTest

/// Builders shared by the server tests (stories260K: tiny and fast).
enum Fixture {
    static func storiesPath() throws -> String { try TestPaths.sharedFile("models/stories260K/stories260K.bin") }
    static func adapterPath(_ name: String) throws -> String { try TestPaths.sharedFile("adapters/\(name)") }

    static func config(_ edit: (inout ServerConfiguration) -> Void = { _ in }) -> ServerConfiguration {
        var c = ServerConfiguration()
        c.precision = .exact
        c.threads = 2
        c.servedModelName = "stories"
        edit(&c)
        return c
    }

    static func state(_ edit: (inout ServerConfiguration) -> Void = { _ in }) async throws -> ServerState {
        let loaded = try ModelLoader.load(path: try storiesPath())
        return try await ServerState(loaded: loaded, config: config(edit))
    }

    /// The application with a quiet logger (warnings and errors only).
    static func app(_ state: ServerState) -> some ApplicationProtocol {
        var logger = Logger(label: "chunkwise.server.test")
        logger.logLevel = .warning
        return makeApplication(state: state, logger: logger)
    }

    static func engine(adapters: [AdapterSpec] = []) throws -> Engine {
        try Engine(modelPath: try storiesPath(), options: EngineOptions(precision: .exact, threads: 2, adapters: adapters))
    }
}

extension TestClientProtocol {
    /// POSTs a JSON body given as text.
    func post(_ uri: String, _ json: String, headers: HTTPFields = [:]) async throws -> TestResponse {
        var h = headers
        h[.contentType] = "application/json"
        return try await execute(uri: uri, method: .post, headers: h, body: ByteBuffer(string: json))
    }
}

extension TestResponse {
    var text: String { String(buffer: body) }
    /// The body as a JSON object.
    func object(file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        let o = try JSONSerialization.jsonObject(with: Data(text.utf8))
        return try XCTUnwrap(o as? [String: Any], "not a JSON object: \(text)", file: file, line: line)
    }
    /// The `error` object of an OpenAI-style error body.
    func error(file: StaticString = #filePath, line: UInt = #line) throws -> [String: Any] {
        try XCTUnwrap(try object(file: file, line: line)["error"] as? [String: Any], "no error object: \(text)", file: file, line: line)
    }
    /// `choices[0].text` (completions) or `choices[0].message.content` (chat).
    func choiceText() throws -> String {
        let choices = try XCTUnwrap(try object()["choices"] as? [[String: Any]])
        if let t = choices.first?["text"] as? String { return t }
        let m = try XCTUnwrap(choices.first?["message"] as? [String: Any])
        return try XCTUnwrap(m["content"] as? String)
    }
    /// The SSE `data:` payloads of a streaming body.
    var events: [String] {
        text.components(separatedBy: "\n\n").filter { !$0.isEmpty }.map { $0.hasPrefix("data: ") ? String($0.dropFirst(6)) : "MALFORMED:" + $0 }
    }
}

/// Escapes a string for a JSON literal.
func jsonString(_ s: String) -> String {
    String(decoding: try! JSONEncoder().encode(s), as: UTF8.self)
}
