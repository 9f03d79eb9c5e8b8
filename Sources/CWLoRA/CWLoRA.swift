/// # CWLoRA — LoRA adapters for ChunkWise
///
/// What's here:
/// - `LoRAAdapter`: an immutable, `Sendable` set of low-rank modules (per layer and projection:
///   A `[r × in]`, B `[out × r]`, fp32, a scale, optional bias / DoRA magnitude), loaded from a
///   PEFT folder (`adapter_config.json` + `adapter_model.safetensors`), a llama.cpp GGUF LoRA
///   (`convert_lora_to_gguf.py`), or an MLX folder (`adapters.safetensors`); `LoRAAdapter.load(path:)`
///   detects which. Writers for GGUF LoRA (`writeGGUF`) and MLX (`writeMLX`) files.
/// - `LoRAStack`: one or more adapters bound to a `LlamaModel` (validated: layers, module names,
///   shapes, architecture), applied unmerged as a `ProjectionDelta`: `y += s · B (A x)` through
///   `Kernels.matmul` (A, then B). `merge()` builds a `MergedModel` (touched matrices as fp32
///   copies with `W + s·B·A`; `unmerge()` hands back the original, untouched `WeightMatrix`es).
/// - `writeMergedHF(model:adapters:to:)`: a merged HF folder (config.json + fp32 model.safetensors).
/// - `AdapterSpec.parse("path[:scale]")` and `LoRAAdapter.summary` for the CLI.
///
/// Scaling conventions (the effective scale of a module is `callScale × weight × s`):
/// - PEFT LoRA: `s = lora_alpha / r`; with `use_rslora`, `s = lora_alpha / sqrt(r)`. `rank_pattern`
///   and `alpha_pattern` override r / alpha per module, keys matched as PEFT does: the regex
///   `(.*\.)?(KEY)$` against the module name relative to the base model
///   (`model.layers.3.self_attn.q_proj`).
/// - PEFT AdaLoRA: `ΔW = B · (A ⊙ E)`, `s = lora_alpha / (ranknum + 1e-5)` exactly as PEFT computes it
///   (ranknum = the saved rank).
/// - PEFT DoRA: `y = m ⊙ (W + sBA) x / ‖W + sBA‖_row` (+ bias); the row norms come from the base weights.
/// - GGUF LoRA (llama.cpp): `s = adapter.lora.alpha / r` (`r` = rows of `lora_a`); alpha 0 means s = 1.
/// - MLX: `lora_parameters.scale` is the absolute scale (not divided by r).
///
/// Row order: PEFT and MLX deltas for q_proj/k_proj are in HF (rotate_half) row order; GGUF LoRA
/// files are in GGUF (interleaved) order. Binding permutes B's rows (and per-row vectors) to the
/// model's `RopeStyle`: HF → GGUF is `B.reshape(n_head, 2, head_dim/2, r).swapaxes(1, 2)`.
///
/// Why we parse PEFT ourselves: PEFT's on-disk format is a JSON config plus safetensors whose
/// meaning lives in PEFT's Python code (scaling rules, pattern matching, name prefixes, float16
/// storage); there is no Swift implementation, and depending on Python at inference time is not an
/// option. Everything read is untrusted: shapes, ranks and names are checked, and errors name the
/// offending tensor and what was expected.
import CWFormats
import CWKernels
import CWTransformer
import Foundation
import Logging

let loraLogger = Logger(label: "chunkwise.lora")

/// A problem with an adapter, or with an adapter and a model together.
public struct LoRAError: Error, CustomStringConvertible, Equatable {
    public enum Kind: String, Sendable, Equatable {
        /// The file or folder is malformed or unreadable.
        case format
        /// A tensor targets a layer the model does not have.
        case layerOutOfRange
        /// A tensor targets a module that is not one of the model's projections.
        case unknownModule
        /// A tensor's shape does not fit the model's projection.
        case shapeMismatch
        /// The adapter was made for a different architecture (hidden size, layer count).
        case architectureMismatch
        /// Some modules are not in the model (binding refused without `allowPartial`).
        case partialMatch
        /// No adapter module matches anything in the model.
        case noMatch
        /// A valid feature this engine does not support in the requested mode.
        case unsupported
    }

    public let kind: Kind
    public let path: String
    public let message: String

    public init(_ kind: Kind, path: String, _ message: String) {
        self.kind = kind
        self.path = path
        self.message = message
    }

    public var description: String { path.isEmpty ? message : "\(path): \(message)" }
}

// MARK: - JSON

/// A parsed JSON value that keeps integers, numbers and booleans apart, and object key order
/// (PEFT's pattern dictionaries are matched in order).
indirect enum JSON: Equatable {
    case null, bool(Bool), int(Int), double(Double), string(String), array([JSON])
    case object([(String, JSON)])

    static func == (a: JSON, b: JSON) -> Bool {
        switch (a, b) {
        case (.null, .null): return true
        case (.bool(let x), .bool(let y)): return x == y
        case (.int(let x), .int(let y)): return x == y
        case (.double(let x), .double(let y)): return x == y
        case (.string(let x), .string(let y)): return x == y
        case (.array(let x), .array(let y)): return x == y
        case (.object(let x), .object(let y)): return x.count == y.count && zip(x, y).allSatisfy { $0.0 == $1.0 && $0.1 == $1.1 }
        default: return false
        }
    }

    subscript(key: String) -> JSON? {
        if case .object(let o) = self { return o.first { $0.0 == key }?.1 }
        return nil
    }

    var int: Int? {
        switch self {
        case .int(let i): return i
        case .double(let d): return d.rounded() == d ? Int(exactly: d) : nil
        default: return nil
        }
    }
    var double: Double? {
        switch self {
        case .int(let i): return Double(i)
        case .double(let d): return d
        default: return nil
        }
    }
    var string: String? { if case .string(let s) = self { return s }; return nil }
    var bool: Bool? { if case .bool(let b) = self { return b }; return nil }
    var array: [JSON]? { if case .array(let a) = self { return a }; return nil }
    var object: [(String, JSON)]? { if case .object(let o) = self { return o }; return nil }
    var isNull: Bool { if case .null = self { return true }; return false }

    var kind: String {
        switch self {
        case .null: return "null"
        case .bool: return "a boolean"
        case .int: return "an integer"
        case .double: return "a number"
        case .string: return "a string"
        case .array: return "an array"
        case .object: return "an object"
        }
    }

    /// Parses UTF-8 JSON text (RFC 8259; NaN/Infinity accepted as numbers, as Python writes them).
    static func parse(_ data: Data) throws -> JSON {
        var p = JSONParser(bytes: [UInt8](data))
        p.skipSpace()
        let v = try p.value(depth: 0)
        p.skipSpace()
        guard p.i == p.bytes.count else { throw p.error("unexpected text after the JSON value") }
        return v
    }

    /// Serialises (compact; keys in stored order).
    var text: String {
        switch self {
        case .null: return "null"
        case .bool(let b): return b ? "true" : "false"
        case .int(let i): return String(i)
        case .double(let d):
            if d.isNaN { return "NaN" }
            if d.isInfinite { return d > 0 ? "Infinity" : "-Infinity" }
            return "\(d)"
        case .string(let s): return JSON.quote(s)
        case .array(let a): return "[" + a.map(\.text).joined(separator: ", ") + "]"
        case .object(let o): return "{" + o.map { JSON.quote($0.0) + ": " + $0.1.text }.joined(separator: ", ") + "}"
        }
    }

    static func quote(_ s: String) -> String {
        var out = "\""
        for u in s.unicodeScalars {
            switch u {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case "\n": out += "\\n"
            case "\r": out += "\\r"
            case "\t": out += "\\t"
            default:
                if u.value < 0x20 { out += String(format: "\\u%04x", u.value) } else { out.unicodeScalars.append(u) }
            }
        }
        return out + "\""
    }
}

struct JSONParseError: Error, CustomStringConvertible {
    let description: String
}

struct JSONParser {
    let bytes: [UInt8]
    var i = 0

    func error(_ m: String) -> JSONParseError { JSONParseError(description: "\(m) at byte \(i)") }

    mutating func skipSpace() {
        while i < bytes.count, bytes[i] == 0x20 || bytes[i] == 0x0A || bytes[i] == 0x0D || bytes[i] == 0x09 { i += 1 }
    }

    mutating func literal(_ s: String) -> Bool {
        let u = Array(s.utf8)
        guard i + u.count <= bytes.count, Array(bytes[i..<(i + u.count)]) == u else { return false }
        i += u.count
        return true
    }

    mutating func value(depth: Int) throws -> JSON {
        guard depth < 64 else { throw error("JSON nested too deeply") }
        guard i < bytes.count else { throw error("unexpected end of JSON") }
        switch bytes[i] {
        case UInt8(ascii: "{"):
            i += 1
            var out: [(String, JSON)] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
            while true {
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: "\"") else { throw error("expected a string key") }
                let k = try string()
                skipSpace()
                guard i < bytes.count, bytes[i] == UInt8(ascii: ":") else { throw error("expected ':'") }
                i += 1
                skipSpace()
                out.append((k, try value(depth: depth + 1)))
                skipSpace()
                guard i < bytes.count else { throw error("unterminated object") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "}") { i += 1; return .object(out) }
                throw error("expected ',' or '}'")
            }
        case UInt8(ascii: "["):
            i += 1
            var out: [JSON] = []
            skipSpace()
            if i < bytes.count, bytes[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
            while true {
                skipSpace()
                out.append(try value(depth: depth + 1))
                skipSpace()
                guard i < bytes.count else { throw error("unterminated array") }
                if bytes[i] == UInt8(ascii: ",") { i += 1; continue }
                if bytes[i] == UInt8(ascii: "]") { i += 1; return .array(out) }
                throw error("expected ',' or ']'")
            }
        case UInt8(ascii: "\""):
            return .string(try string())
        default:
            if literal("true") { return .bool(true) }
            if literal("false") { return .bool(false) }
            if literal("null") { return .null }
            if literal("NaN") { return .double(.nan) }
            if literal("Infinity") { return .double(.infinity) }
            if literal("-Infinity") { return .double(-.infinity) }
            return try number()
        }
    }

    mutating func number() throws -> JSON {
        let start = i
        var isInt = true
        while i < bytes.count {
            let c = bytes[i]
            if (c >= 0x30 && c <= 0x39) || c == UInt8(ascii: "-") || c == UInt8(ascii: "+") {
                i += 1
            } else if c == UInt8(ascii: ".") || c == UInt8(ascii: "e") || c == UInt8(ascii: "E") {
                isInt = false
                i += 1
            } else {
                break
            }
        }
        guard i > start, let s = String(bytes: bytes[start..<i], encoding: .utf8) else { throw error("invalid value") }
        if isInt, let v = Int(s) { return .int(v) }
        guard let d = Double(s) else { throw error("invalid number '\(s)'") }
        return .double(d)
    }

    mutating func string() throws -> String {
        i += 1  // opening quote
        var out = [UInt8]()
        while true {
            guard i < bytes.count else { throw error("unterminated string") }
            let c = bytes[i]
            i += 1
            if c == UInt8(ascii: "\"") { break }
            if c != UInt8(ascii: "\\") { out.append(c); continue }
            guard i < bytes.count else { throw error("unterminated escape") }
            let e = bytes[i]
            i += 1
            switch e {
            case UInt8(ascii: "n"): out.append(0x0A)
            case UInt8(ascii: "t"): out.append(0x09)
            case UInt8(ascii: "r"): out.append(0x0D)
            case UInt8(ascii: "b"): out.append(0x08)
            case UInt8(ascii: "f"): out.append(0x0C)
            case UInt8(ascii: "u"):
                var code = try hex4()
                if (0xD800..<0xDC00).contains(code), literal("\\u") {
                    let low = try hex4()
                    code = 0x10000 + ((code - 0xD800) << 10) + (low - 0xDC00)
                }
                let scalar = Unicode.Scalar(code) ?? "\u{FFFD}"
                out.append(contentsOf: Array(String(Character(scalar)).utf8))
            default: out.append(e)
            }
        }
        guard let s = String(bytes: out, encoding: .utf8) else { throw error("string is not valid UTF-8") }
        return s
    }

    mutating func hex4() throws -> UInt32 {
        guard i + 4 <= bytes.count, let v = UInt32(String(decoding: bytes[i..<(i + 4)], as: UTF8.self), radix: 16) else {
            throw error("bad \\u escape")
        }
        i += 4
        return v
    }
}

/// Reads and parses a JSON file; errors are `LoRAError.format` naming the file.
func readJSON(_ path: String) throws -> JSON {
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch {
        throw LoRAError(.format, path: path, FileManager.default.fileExists(atPath: path) ? "cannot read: \(error.localizedDescription)" : "file not found")
    }
    do { return try JSON.parse(data) } catch {
        throw LoRAError(.format, path: path, "not valid JSON: \(error)")
    }
}
