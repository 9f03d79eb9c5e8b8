import CWKernels
import Foundation

// safetensors: u64 little-endian header length N, N bytes of JSON
// ({"name": {"dtype": "F32", "shape": [..], "data_offsets": [begin, end]}, "__metadata__": {..}}),
// then the data area; offsets are relative to the start of the data area.

/// One tensor described in a safetensors header.
public struct SafetensorsTensorInfo: Sendable {
    public let name: String
    /// "F32", "F16", "BF16", "I64", ...
    public let dtype: String
    public let shape: [Int]
    /// Absolute offset of the data in the file.
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { shape.reduce(1, *) }
}

/// Bytes per element of the safetensors dtypes.
func safetensorsDTypeSize(_ dtype: String) -> Int? {
    switch dtype {
    case "F64", "I64", "U64": return 8
    case "F32", "I32", "U32": return 4
    case "F16", "BF16", "I16", "U16": return 2
    case "I8", "U8", "BOOL", "F8_E4M3", "F8_E5M2", "F8_E8M0": return 1
    default: return nil
    }
}

/// A safetensors file, memory-mapped; tensor data stays in the mapping.
public final class SafetensorsFile: @unchecked Sendable {
    public let path: String
    public let tensors: [String: SafetensorsTensorInfo]
    public let metadata: [String: String]
    public let file: MappedFile

    /// Largest header we accept (the format's reference implementation uses 100 MB).
    static let maxHeaderBytes = 100_000_000

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        func fail(_ m: String) -> FormatError { FormatError(path: path, message: m) }

        guard file.size >= 8 else {
            throw fail("truncated safetensors: file has \(file.size) bytes, too short for the 8-byte header length")
        }
        let n64 = UInt64(littleEndian: file.base.loadUnaligned(as: UInt64.self))
        guard n64 <= UInt64(file.size - 8) else {
            throw fail("bad header length \(n64): the file has only \(file.size - 8) bytes after the length field")
        }
        let n = Int(n64)
        guard n >= 2, n <= SafetensorsFile.maxHeaderBytes else {
            throw fail("bad header length \(n) (must be 2...\(SafetensorsFile.maxHeaderBytes) bytes)")
        }
        let dataStart = 8 + n
        let dataSize = file.size - dataStart

        let json: JSONValue
        do {
            json = try JSONValue.parse(Data(bytes: file.base + 8, count: n))
        } catch {
            throw fail("header is not valid JSON: \(describeJSONError(error))")
        }
        guard let top = json.object else { throw fail("header JSON is \(json.kind), expected an object") }

        var metadata: [String: String] = [:]
        var tensors: [String: SafetensorsTensorInfo] = [:]
        for (name, value) in top {
            if name == "__metadata__" {
                guard let obj = value.object else { throw fail("__metadata__ is \(value.kind), expected an object of strings") }
                for (k, v) in obj {
                    guard let s = v.string else { throw fail("__metadata__ value '\(k)' is \(v.kind), expected a string") }
                    metadata[k] = s
                }
                continue
            }
            guard let obj = value.object else { throw fail("tensor '\(name)': entry is \(value.kind), expected an object") }
            guard let dtype = obj["dtype"]?.string else { throw fail("tensor '\(name)': missing or non-string 'dtype'") }
            guard let elemSize = safetensorsDTypeSize(dtype) else { throw fail("tensor '\(name)': unknown dtype '\(dtype)'") }
            guard let shapeVals = obj["shape"]?.array else { throw fail("tensor '\(name)': missing or non-array 'shape'") }
            var shape: [Int] = []
            for s in shapeVals {
                guard let d = s.int, d >= 0 else { throw fail("tensor '\(name)': shape \(shapeVals.map { "\($0)" }) has a non-integer or negative dimension") }
                shape.append(d)
            }
            guard let offs = obj["data_offsets"]?.array, offs.count == 2,
                  let begin = offs[0].int, let end = offs[1].int else {
                throw fail("tensor '\(name)': 'data_offsets' must be two integers [begin, end]")
            }
            guard begin >= 0, begin <= end else {
                throw fail("tensor '\(name)': data_offsets [\(begin), \(end)) are not an increasing pair")
            }
            guard end <= dataSize else {
                throw fail("tensor '\(name)': data_offsets [\(begin), \(end)) lie past the end of the data area (\(dataSize) bytes)")
            }
            guard let elements = checkedProduct(shape), let expected = checkedMul(elements, elemSize) else {
                throw fail("tensor '\(name)': shape \(shape) overflows")
            }
            guard end - begin == expected else {
                throw fail("tensor '\(name)': data_offsets [\(begin), \(end)) hold \(end - begin) bytes but \(dtype) \(shape) needs \(expected)")
            }
            tensors[name] = SafetensorsTensorInfo(name: name, dtype: dtype, shape: shape, offset: dataStart + begin, byteCount: expected)
        }

        // No two tensors may share bytes.
        let sorted = tensors.values.filter { $0.byteCount > 0 }.sorted { ($0.offset, $0.name) < ($1.offset, $1.name) }
        for (a, b) in zip(sorted, sorted.dropFirst()) where a.offset + a.byteCount > b.offset {
            throw fail("tensors '\(a.name)' and '\(b.name)' overlap (bytes \(a.offset - dataStart)..<\(a.offset - dataStart + a.byteCount) and \(b.offset - dataStart)..<\(b.offset - dataStart + b.byteCount) of the data area)")
        }
        self.tensors = tensors
        self.metadata = metadata
        formatsLogger.debug("safetensors \(path): \(tensors.count) tensors")
    }

    private func required(_ name: String) throws -> SafetensorsTensorInfo {
        guard let t = tensors[name] else { throw FormatError(path: path, message: "tensor '\(name)' not found") }
        return t
    }

    private func floatType(_ t: SafetensorsTensorInfo) throws -> TensorType {
        switch t.dtype {
        case "F32": return .f32
        case "F16": return .f16
        case "BF16": return .bf16
        default: throw FormatError(path: path, message: "tensor '\(t.name)' has dtype \(t.dtype); only F32, F16 and BF16 are supported")
        }
    }

    /// A 2-D tensor `[out, in]` as a matrix view: rows = out, cols = in.
    public func matrix(_ name: String) throws -> WeightMatrix {
        let t = try required(name)
        let type = try floatType(t)
        guard t.shape.count == 2 else {
            throw FormatError(path: path, message: "tensor '\(name)' is not 2-D (shape \(t.shape))")
        }
        return try makeMatrix(type: type, rows: t.shape[0], cols: t.shape[1], base: file.base + t.offset, owner: file, path: path, name: name)
    }

    /// A whole F32/F16/BF16 tensor as fp32.
    public func floats(_ name: String) throws -> [Float] {
        let t = try required(name)
        let type = try floatType(t)
        return try dequantizeToFloats(type: type, src: file.base + t.offset, count: t.elementCount, path: path, name: name)
    }

    /// Pointer to a tensor's data in the mapping.
    public func data(_ info: SafetensorsTensorInfo) -> UnsafeRawPointer { file.base + info.offset }
}

/// The weights of a HuggingFace model folder: `model.safetensors`, or the shards listed in
/// `model.safetensors.index.json`.
public final class SafetensorsCollection: @unchecked Sendable {
    public let directory: String
    /// The open files, one per shard.
    public let files: [SafetensorsFile]
    private let owner: [String: Int]

    public init(directory: String) throws {
        self.directory = directory
        let dir = URL(fileURLWithPath: directory)
        let indexURL = dir.appendingPathComponent("model.safetensors.index.json")
        let singleURL = dir.appendingPathComponent("model.safetensors")
        let fm = FileManager.default
        if fm.fileExists(atPath: indexURL.path) {
            let ip = indexURL.path
            func fail(_ m: String) -> FormatError { FormatError(path: ip, message: m) }
            let data: Data
            do { data = try Data(contentsOf: indexURL) } catch { throw fail("cannot read: \(error.localizedDescription)") }
            let json: JSONValue
            do { json = try JSONValue.parse(data) } catch { throw fail("not valid JSON: \(describeJSONError(error))") }
            guard let map = json.object?["weight_map"]?.object else { throw fail("missing or non-object 'weight_map'") }
            guard !map.isEmpty else { throw fail("'weight_map' is empty") }
            var shardIndex: [String: Int] = [:]
            var files: [SafetensorsFile] = []
            var owner: [String: Int] = [:]
            for name in map.keys.sorted() {
                guard let shard = map[name]?.string else { throw fail("weight_map entry '\(name)' is not a string") }
                guard !shard.contains("/"), !shard.isEmpty, shard != "..", shard != "." else {
                    throw fail("weight_map entry '\(name)' names shard '\(shard)' outside the model folder")
                }
                let idx: Int
                if let i = shardIndex[shard] {
                    idx = i
                } else {
                    let sp = dir.appendingPathComponent(shard).path
                    guard fm.fileExists(atPath: sp) else {
                        throw fail("shard '\(shard)' (holding '\(name)') is missing from \(directory)")
                    }
                    files.append(try SafetensorsFile(path: sp))
                    idx = files.count - 1
                    shardIndex[shard] = idx
                }
                guard files[idx].tensors[name] != nil else {
                    throw fail("tensor '\(name)' is mapped to shard '\(shard)' but that file does not contain it")
                }
                owner[name] = idx
            }
            self.files = files
            self.owner = owner
        } else if fm.fileExists(atPath: singleURL.path) {
            let f = try SafetensorsFile(path: singleURL.path)
            self.files = [f]
            var owner: [String: Int] = [:]
            for name in f.tensors.keys { owner[name] = 0 }
            self.owner = owner
        } else {
            throw FormatError(path: directory, message: "no model.safetensors or model.safetensors.index.json in the folder")
        }
    }

    /// All tensor names, sorted.
    public var names: [String] { owner.keys.sorted() }

    public func info(_ name: String) -> SafetensorsTensorInfo? {
        owner[name].flatMap { files[$0].tensors[name] }
    }

    /// The file holding a tensor.
    public func file(for name: String) -> SafetensorsFile? { owner[name].map { files[$0] } }

    private func required(_ name: String) throws -> SafetensorsFile {
        guard let f = file(for: name) else { throw FormatError(path: directory, message: "tensor '\(name)' not found in the model's safetensors") }
        return f
    }

    public func matrix(_ name: String) throws -> WeightMatrix { try required(name).matrix(name) }

    public func floats(_ name: String) throws -> [Float] { try required(name).floats(name) }
}
