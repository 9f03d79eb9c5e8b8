import Foundation

/// A parsed JSON value. Request bodies are decoded into this first so that every field can be
/// type-checked by hand and a wrong type gets a 400 that names the field.
public enum JSONValue: Sendable, Equatable, Codable {
    case null
    case bool(Bool)
    case int(Int64)
    case double(Double)
    case string(String)
    case array([JSONValue])
    case object([String: JSONValue])

    public init(from decoder: Decoder) throws {
        let c = try decoder.singleValueContainer()
        if c.decodeNil() { self = .null; return }
        if let b = try? c.decode(Bool.self) { self = .bool(b); return }
        if let i = try? c.decode(Int64.self) { self = .int(i); return }
        if let d = try? c.decode(Double.self) { self = .double(d); return }
        if let s = try? c.decode(String.self) { self = .string(s); return }
        if let a = try? c.decode([JSONValue].self) { self = .array(a); return }
        if let o = try? c.decode([String: JSONValue].self) { self = .object(o); return }
        throw DecodingError.dataCorruptedError(in: c, debugDescription: "not a JSON value")
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.singleValueContainer()
        switch self {
        case .null: try c.encodeNil()
        case .bool(let b): try c.encode(b)
        case .int(let i): try c.encode(i)
        case .double(let d): try c.encode(d)
        case .string(let s): try c.encode(s)
        case .array(let a): try c.encode(a)
        case .object(let o): try c.encode(o)
        }
    }

    /// Parses a request body; invalid JSON is a 400 `invalid_json`.
    public static func parse(_ data: Data) throws(APIError) -> JSONValue {
        do {
            return try JSONDecoder().decode(JSONValue.self, from: data)
        } catch {
            throw APIError.badRequest("invalid JSON in the request body", code: "invalid_json")
        }
    }

    /// A name for the JSON type of this value, for error messages.
    public var typeName: String {
        switch self {
        case .null: return "null"
        case .bool: return "boolean"
        case .int, .double: return "number"
        case .string: return "string"
        case .array: return "array"
        case .object: return "object"
        }
    }
}

/// Typed access to the fields of a JSON object, each failure a 400 naming the field.
public struct JSONObject: Sendable {
    public let fields: [String: JSONValue]
    /// Prefix for field names in messages (e.g. `messages[0].`).
    public let path: String

    public init(_ value: JSONValue, path: String = "", what: String = "the request body") throws(APIError) {
        guard case .object(let o) = value else {
            throw APIError.badRequest("\(path.isEmpty ? what : String(path.dropLast())) must be a JSON object, got \(value.typeName)",
                                      param: path.isEmpty ? nil : String(path.dropLast()), code: "invalid_type")
        }
        self.fields = o
        self.path = path
    }

    /// The value of a field, nil when absent or null.
    public subscript(_ key: String) -> JSONValue? {
        if let v = fields[key], v != .null { return v }
        return nil
    }

    func typeError(_ key: String, _ expected: String, _ got: JSONValue) -> APIError {
        .badRequest("'\(path)\(key)' must be \(expected), got \(got.typeName)", param: path + key, code: "invalid_type")
    }

    public func string(_ key: String) throws(APIError) -> String? {
        guard let v = self[key] else { return nil }
        guard case .string(let s) = v else { throw typeError(key, "a string", v) }
        return s
    }

    public func bool(_ key: String) throws(APIError) -> Bool? {
        guard let v = self[key] else { return nil }
        guard case .bool(let b) = v else { throw typeError(key, "a boolean", v) }
        return b
    }

    public func double(_ key: String) throws(APIError) -> Double? {
        guard let v = self[key] else { return nil }
        switch v {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: throw typeError(key, "a number", v)
        }
    }

    public func int(_ key: String) throws(APIError) -> Int64? {
        guard let v = self[key] else { return nil }
        switch v {
        case .int(let i): return i
        case .double(let d) where d.rounded() == d && abs(d) < 9e15: return Int64(d)
        default: throw typeError(key, "an integer", v)
        }
    }

    public func array(_ key: String) throws(APIError) -> [JSONValue]? {
        guard let v = self[key] else { return nil }
        guard case .array(let a) = v else { throw typeError(key, "an array", v) }
        return a
    }

    public func object(_ key: String) throws(APIError) -> JSONObject? {
        guard let v = self[key] else { return nil }
        guard case .object = v else { throw typeError(key, "an object", v) }
        return try JSONObject(v, path: path + key + ".")
    }
}
