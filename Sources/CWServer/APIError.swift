import Foundation
import HTTPTypes
import Hummingbird
import NIOCore

/// An OpenAI-style error: `{"error": {"message", "type", "param", "code"}}` with an HTTP status.
///
/// Thrown from handlers (Hummingbird turns it into the response through `HTTPResponseError`), and
/// produced by `OpenAIErrorMiddleware` for any other error so that every failure has this shape.
public struct APIError: Error, Sendable, Equatable, CustomStringConvertible {
    public var status: HTTPResponse.Status
    public var message: String
    public var type: String
    public var param: String?
    public var code: String?
    /// Extra response headers (e.g. `Retry-After`).
    public var extraHeaders: [String: String] = [:]

    public init(status: HTTPResponse.Status, message: String, type: String, param: String? = nil, code: String? = nil) {
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
    }

    public var description: String { "\(status.code) \(type): \(message)" }

    public static func badRequest(_ message: String, param: String? = nil, code: String? = "invalid_request") -> APIError {
        APIError(status: .badRequest, message: message, type: "invalid_request_error", param: param, code: code)
    }
    public static func notFound(_ message: String, param: String? = "model", code: String = "model_not_found") -> APIError {
        APIError(status: .notFound, message: message, type: "invalid_request_error", param: param, code: code)
    }
    public static func forbidden(_ message: String, param: String? = nil) -> APIError {
        APIError(status: .forbidden, message: message, type: "permission_error", param: param, code: "forbidden")
    }
    public static let unauthorized = APIError(status: .unauthorized, message: "missing or invalid API key (send 'Authorization: Bearer KEY')",
                                              type: "authentication_error", code: "invalid_api_key")
    public static func tooLarge(_ limit: Int) -> APIError {
        APIError(status: .contentTooLarge, message: "the request body is larger than \(limit) bytes", type: "invalid_request_error",
                 code: "request_too_large")
    }
    /// The server is full (running and waiting slots taken): 429 at once, never an unbounded queue.
    public static func queueFull(running: Int, waiting: Int) -> APIError {
        var e = APIError(status: .tooManyRequests,
                         message: "the server is busy (\(running) running, \(waiting) waiting, queue full); retry later",
                         type: "rate_limit_error", code: "queue_full")
        e.extraHeaders["Retry-After"] = "1"
        return e
    }
    public static func unavailable(_ message: String) -> APIError {
        APIError(status: .serviceUnavailable, message: message, type: "server_error", code: "unavailable")
    }
    public static func internalError(_ message: String) -> APIError {
        APIError(status: .internalServerError, message: message, type: "server_error", code: "internal_error")
    }

    /// The JSON body.
    public var body: [String: JSONValue] {
        ["error": .object([
            "message": .string(message),
            "type": .string(type),
            "param": param.map(JSONValue.string) ?? .null,
            "code": code.map(JSONValue.string) ?? .null,
        ])]
    }

    /// The HTTP response.
    public func makeResponse() -> Response {
        let data = (try? jsonEncoder.encode(body)) ?? Data("{\"error\":{\"message\":\"error\"}}".utf8)
        var headers: HTTPFields = [.contentType: "application/json"]
        for (k, v) in extraHeaders { if let name = HTTPField.Name(k) { headers[name] = v } }
        return Response(status: status, headers: headers, body: .init(byteBuffer: ByteBuffer(bytes: data)))
    }
}

extension APIError: HTTPResponseError {
    public var headers: HTTPFields { [:] }
    public func response(from request: Request, context: some RequestContext) throws -> Response { makeResponse() }
}

/// The encoder for response bodies (sorted keys for stable output; slashes unescaped).
let jsonEncoder: JSONEncoder = {
    let e = JSONEncoder()
    e.outputFormatting = [.sortedKeys, .withoutEscapingSlashes]
    return e
}()

/// Turns every error that escapes a handler — Hummingbird's own (404 route, 413 body), or an
/// unexpected one — into an OpenAI-style JSON error, and logs 5xx.
struct OpenAIErrorMiddleware<Context: RequestContext>: RouterMiddleware {
    func handle(_ request: Request, context: Context, next: (Request, Context) async throws -> Response) async throws -> Response {
        do {
            return try await next(request, context)
        } catch let e as APIError {
            if e.status.code >= 500 { context.logger.error("request failed", metadata: ["error": "\(e)"]) }
            return e.makeResponse()
        } catch is NIOTooManyBytesError {
            return APIError.tooLarge(-1).withMessage("the request body is too large").makeResponse()
        } catch let e as HTTPError {
            let type = e.status.code == 404 ? "invalid_request_error" : (e.status.code >= 500 ? "server_error" : "invalid_request_error")
            let msg = e.status.code == 404 ? "no route for \(request.method) \(request.uri.path)" : (e.body ?? e.status.reasonPhrase)
            return APIError(status: e.status, message: msg, type: type, code: e.status.code == 404 ? "not_found" : nil).makeResponse()
        } catch let e as HTTPResponseError {
            return APIError(status: e.status, message: e.status.reasonPhrase, type: "invalid_request_error").makeResponse()
        } catch {
            context.logger.error("request failed", metadata: ["error": "\(error)"])
            return APIError.internalError("internal error: \(error)").makeResponse()
        }
    }
}

extension APIError {
    func withMessage(_ m: String) -> APIError { var e = self; e.message = m; return e }
}
