import CKernels
import CWKernels
import Foundation

// GGUF (v2 and v3): "GGUF" magic, u32 version, u64 tensor count, u64 metadata count, the
// metadata key/value pairs, the tensor infos, padding to `general.alignment`, then tensor data.
// All little-endian. (v1 used u32 counts and lengths and is not supported.)

/// A metadata value from a GGUF file.
public indirect enum GGUFValue: Sendable, Equatable {
    case uint8(UInt8), int8(Int8), uint16(UInt16), int16(Int16), uint32(UInt32), int32(Int32)
    case uint64(UInt64), int64(Int64), float32(Float), float64(Double), bool(Bool), string(String)
    case array([GGUFValue])

    /// Any integer value that fits in `Int`.
    public var int: Int? {
        switch self {
        case .uint8(let v): return Int(v)
        case .int8(let v): return Int(v)
        case .uint16(let v): return Int(v)
        case .int16(let v): return Int(v)
        case .uint32(let v): return Int(v)
        case .int32(let v): return Int(v)
        case .uint64(let v): return Int(exactly: v)
        case .int64(let v): return Int(v)
        default: return nil
        }
    }

    /// Any numeric value (integer or floating point) as a `Double`.
    public var double: Double? {
        switch self {
        case .float32(let v): return Double(v)
        case .float64(let v): return v
        case .uint64(let v): return Double(v)
        default: return int.map(Double.init)
        }
    }

    /// Any numeric value as a `Float`.
    public var float: Float? {
        if case .float32(let v) = self { return v }
        return double.map(Float.init)
    }

    public var string: String? {
        if case .string(let s) = self { return s }
        return nil
    }

    public var bool: Bool? {
        if case .bool(let b) = self { return b }
        return nil
    }

    public var array: [GGUFValue]? {
        if case .array(let a) = self { return a }
        return nil
    }

    /// An array whose elements are all strings.
    public var stringArray: [String]? {
        guard let a = array else { return nil }
        var out: [String] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard case .string(let s) = v else { return nil }
            out.append(s)
        }
        return out
    }

    /// An array whose elements are all integers.
    public var intArray: [Int]? {
        guard let a = array else { return nil }
        var out: [Int] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard let i = v.int else { return nil }
            out.append(i)
        }
        return out
    }

    /// An array whose elements are all numbers.
    public var floatArray: [Float]? {
        guard let a = array else { return nil }
        var out: [Float] = []
        out.reserveCapacity(a.count)
        for v in a {
            guard let f = v.float else { return nil }
            out.append(f)
        }
        return out
    }
}

/// One tensor described in a GGUF header.
public struct GGUFTensorInfo: Sendable {
    public let name: String
    /// Dimensions, `ne0` first (`ne0` is the row length, the fastest-varying index).
    public let dims: [Int]
    /// The GGML type id as stored.
    public let typeID: UInt32
    /// The type, or nil when the engine does not support it.
    public let type: TensorType?
    /// Absolute offset of the tensor's data in the file.
    public let offset: Int
    public let byteCount: Int

    public var elementCount: Int { dims.reduce(1, *) }

    /// GGML's name for this tensor's type.
    public var typeName: String { TensorType.ggmlName(typeID) }
}

/// Elements and bytes per block for every GGML type id whose layout we know, supported or not,
/// so a file holding such tensors still parses (only using them fails).
func ggmlBlockLayout(_ id: UInt32) -> (elements: Int, bytes: Int)? {
    if let t = TensorType(rawValue: id) { return (t.blockElements, t.blockBytes) }
    switch id {
    case 9: return (32, 36)      // Q8_1
    case 10: return (256, 84)    // Q2_K
    case 11: return (256, 110)   // Q3_K
    case 15: return (256, 292)   // Q8_K
    case 16: return (256, 66)    // IQ2_XXS
    case 17: return (256, 74)    // IQ2_XS
    case 18: return (256, 98)    // IQ3_XXS
    case 19: return (256, 50)    // IQ1_S
    case 20: return (32, 18)     // IQ4_NL
    case 21: return (256, 110)   // IQ3_S
    case 22: return (256, 82)    // IQ2_S
    case 23: return (256, 136)   // IQ4_XS
    case 24: return (1, 1)       // I8
    case 25: return (1, 2)       // I16
    case 26: return (1, 4)       // I32
    case 27: return (1, 8)       // I64
    case 28: return (1, 8)       // F64
    case 29: return (256, 56)    // IQ1_M
    case 34: return (256, 54)    // TQ1_0
    case 35: return (256, 66)    // TQ2_0
    case 39: return (32, 17)     // MXFP4
    default: return nil
    }
}

/// A little-endian cursor over the mapped header; every read is bounds-checked and reports
/// truncation as "truncated GGUF: expected N bytes for WHAT at offset O, file has S".
struct GGUFCursor {
    let base: UnsafeRawPointer
    let size: Int
    let path: String
    var offset: Int = 0

    func fail(_ message: String) -> FormatError { FormatError(path: path, message: message) }

    @inline(__always)
    func need(_ n: Int, _ what: @autoclosure () -> String) throws {
        if n > size - offset {
            throw fail("truncated GGUF: expected \(n) bytes for \(what()) at offset \(offset), file has \(size)")
        }
    }

    @inline(__always)
    mutating func load<T: FixedWidthInteger>(_: T.Type, _ what: @autoclosure () -> String) throws -> T {
        try need(MemoryLayout<T>.size, what())
        let v = T(littleEndian: base.loadUnaligned(fromByteOffset: offset, as: T.self))
        offset += MemoryLayout<T>.size
        return v
    }

    /// A u64 that must fit in `Int`.
    mutating func count(_ what: @autoclosure () -> String) throws -> Int {
        let at = offset
        let v = try load(UInt64.self, what())
        guard let n = Int(exactly: v) else { throw fail("\(what()) at offset \(at) is absurd (\(v))") }
        return n
    }

    mutating func string(_ what: @autoclosure () -> String) throws -> String {
        let lenAt = offset
        let len = try load(UInt64.self, "length of \(what())")
        guard len <= UInt64(size - offset) else {
            throw fail("truncated GGUF: \(what()) at offset \(lenAt) claims \(len) bytes, past the end of the file (\(size) bytes)")
        }
        let n = Int(len)
        let buf = UnsafeBufferPointer(start: (base + offset).assumingMemoryBound(to: UInt8.self), count: n)
        guard let s = String(validating: buf, as: UTF8.self) else {
            throw fail("\(what()) at offset \(offset) is not valid UTF-8")
        }
        offset += n
        return s
    }

    static let typeNames = ["uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "bool",
                            "string", "array", "uint64", "int64", "float64"]

    mutating func value(type: UInt32, _ what: @autoclosure () -> String, depth: Int = 0) throws -> GGUFValue {
        switch type {
        case 0: return .uint8(try load(UInt8.self, what()))
        case 1: return .int8(try load(Int8.self, what()))
        case 2: return .uint16(try load(UInt16.self, what()))
        case 3: return .int16(try load(Int16.self, what()))
        case 4: return .uint32(try load(UInt32.self, what()))
        case 5: return .int32(try load(Int32.self, what()))
        case 6: return .float32(Float(bitPattern: try load(UInt32.self, what())))
        case 7:
            let at = offset
            let b = try load(UInt8.self, what())
            guard b <= 1 else { throw fail("\(what()) at offset \(at): bool value \(b) is neither 0 nor 1") }
            return .bool(b == 1)
        case 8: return .string(try string(what()))
        case 9: return .array(try array(what(), depth: depth + 1))
        case 10: return .uint64(try load(UInt64.self, what()))
        case 11: return .int64(try load(Int64.self, what()))
        case 12: return .float64(Double(bitPattern: try load(UInt64.self, what())))
        default:
            throw fail("\(what()) at offset \(offset - 4) has unknown value type \(type)")
        }
    }

    /// Smallest encoded size of one element of a value type (for sanity-checking counts).
    static func minSize(_ type: UInt32) -> Int {
        switch type {
        case 0, 1, 7: return 1
        case 2, 3: return 2
        case 4, 5, 6: return 4
        case 8, 10, 11, 12: return 8
        case 9: return 12
        default: return 1
        }
    }

    mutating func array(_ what: @autoclosure () -> String, depth: Int) throws -> [GGUFValue] {
        guard depth <= 8 else { throw fail("\(what()): arrays nested more than 8 deep") }
        let elemType = try load(UInt32.self, "element type of \(what())")
        guard elemType <= 12 else { throw fail("\(what()) at offset \(offset - 4) has unknown element type \(elemType)") }
        let countAt = offset
        let n = try count("element count of \(what())")
        guard let minBytes = checkedMul(n, GGUFCursor.minSize(elemType)), minBytes <= size - offset else {
            throw fail("truncated GGUF: \(what()) at offset \(countAt) claims \(n) elements of type \(GGUFCursor.typeNames[Int(elemType)]), more than the rest of the file holds")
        }
        var out: [GGUFValue] = []
        out.reserveCapacity(n)
        switch elemType {
        case 8:
            for i in 0..<n { out.append(.string(try string("element \(i) of \(what())"))) }
        case 0...6, 10...12:
            // Fixed-size elements: the count check above already proved they are all in the file.
            for _ in 0..<n { out.append(try value(type: elemType, what())) }
        default:
            for i in 0..<n { out.append(try value(type: elemType, "element \(i) of \(what())", depth: depth)) }
        }
        return out
    }
}

/// A GGUF model file (v2 or v3), memory-mapped; tensor data stays in the mapping.
public final class GGUFFile: @unchecked Sendable {
    public let path: String
    public let version: UInt32
    public let metadata: [String: GGUFValue]
    /// Tensors in file order.
    public let tensors: [GGUFTensorInfo]
    public let alignment: Int
    public let file: MappedFile
    /// Absolute offset of the tensor data section.
    public let dataOffset: Int
    private let index: [String: Int]

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        var c = GGUFCursor(base: file.base, size: file.size, path: path)

        let magic = try c.load(UInt32.self, "magic")
        guard magic == 0x4655_4747 else {  // "GGUF" little-endian
            let bytes = withUnsafeBytes(of: magic.littleEndian) { Array($0) }
            let shown = bytes.map { (0x20...0x7e).contains($0) ? String(UnicodeScalar($0)) : "\\x" + String($0, radix: 16) }.joined()
            throw c.fail("not a GGUF file: bad magic \"\(shown)\" (expected \"GGUF\")")
        }
        let version = try c.load(UInt32.self, "version")
        guard version == 2 || version == 3 else {
            throw c.fail("unsupported GGUF version \(version) (only versions 2 and 3 are supported)")
        }
        self.version = version
        let tensorCount = try c.count("tensor count")
        let kvCount = try c.count("metadata count")
        var metadata: [String: GGUFValue] = [:]
        // Counts are untrusted: reserve no more than the file could hold (13+ bytes per entry,
        // 28+ per tensor info); a false count fails as a truncation when the reads run out.
        metadata.reserveCapacity(min(kvCount, file.size / 13))
        for i in 0..<kvCount {
            let key = try c.string("key of metadata entry \(i)")
            let type = try c.load(UInt32.self, "value type of metadata '\(key)'")
            let value = try c.value(type: type, "value of metadata '\(key)'")
            guard metadata.updateValue(value, forKey: key) == nil else {
                throw c.fail("duplicate metadata key '\(key)'")
            }
        }
        self.metadata = metadata

        var alignment = 32
        if let a = metadata["general.alignment"] {
            guard let v = a.int, v > 0, v & (v - 1) == 0 else {
                throw c.fail("general.alignment must be a positive power of two, got \(a)")
            }
            alignment = v
        }
        self.alignment = alignment

        struct Raw { let name: String; let dims: [Int]; let typeID: UInt32; let rel: Int; let bytes: Int }
        var raws: [Raw] = []
        raws.reserveCapacity(min(tensorCount, file.size / 28))
        var index: [String: Int] = [:]
        index.reserveCapacity(min(tensorCount, file.size / 28))
        for i in 0..<tensorCount {
            let name = try c.string("name of tensor \(i)")
            guard index[name] == nil else { throw c.fail("duplicate tensor name '\(name)'") }
            let nd = try c.load(UInt32.self, "dimension count of tensor '\(name)'")
            guard nd >= 1, nd <= 4 else {
                throw c.fail("tensor '\(name)' has \(nd) dimensions (1 to 4 allowed)")
            }
            var dims: [Int] = []
            for d in 0..<Int(nd) {
                let at = c.offset
                let v = try c.load(UInt64.self, "dimension \(d) of tensor '\(name)'")
                guard let dv = Int(exactly: v), dv > 0 else {
                    throw c.fail("tensor '\(name)' has invalid dimension \(d) = \(v) at offset \(at)")
                }
                dims.append(dv)
            }
            let typeID = try c.load(UInt32.self, "type of tensor '\(name)'")
            let rel = try c.count("data offset of tensor '\(name)'")
            guard let layout = ggmlBlockLayout(typeID) else {
                throw c.fail("tensor '\(name)' has unknown type id \(typeID) (\(TensorType.ggmlName(typeID))) whose size is not known")
            }
            guard dims[0] % layout.elements == 0 else {
                throw c.fail("tensor '\(name)' row length \(dims[0]) is not a multiple of the \(TensorType.ggmlName(typeID)) block size \(layout.elements)")
            }
            guard let elements = checkedProduct(dims),
                  let bytes = checkedMul(elements / layout.elements, layout.bytes) else {
                throw c.fail("tensor '\(name)' dimensions \(dims) overflow")
            }
            guard rel % alignment == 0 else {
                throw c.fail("tensor '\(name)' data offset \(rel) is not a multiple of the alignment \(alignment)")
            }
            index[name] = i
            raws.append(Raw(name: name, dims: dims, typeID: typeID, rel: rel, bytes: bytes))
        }

        // The data section starts at the next multiple of the alignment after the header.
        let headerEnd = c.offset
        let dataOffset = (headerEnd + alignment - 1) / alignment * alignment
        self.dataOffset = dataOffset

        var tensors: [GGUFTensorInfo] = []
        tensors.reserveCapacity(raws.count)
        for r in raws {
            guard let start = checkedAdd(dataOffset, r.rel), let end = checkedAdd(start, r.bytes), end <= file.size else {
                let endText = checkedAdd(dataOffset, r.rel).flatMap { checkedAdd($0, r.bytes) }.map(String.init) ?? "(overflow)"
                throw c.fail("tensor '\(r.name)' ends at byte \(endText) past the end of the file (\(file.size) bytes)")
            }
            tensors.append(GGUFTensorInfo(name: r.name, dims: r.dims, typeID: r.typeID, type: TensorType(rawValue: r.typeID),
                                          offset: start, byteCount: r.bytes))
        }
        self.tensors = tensors
        self.index = index
        formatsLogger.debug("GGUF v\(version) \(path): \(metadata.count) metadata entries, \(tensors.count) tensors")
    }

    /// `general.architecture`, e.g. "llama".
    public var architecture: String? { metadata["general.architecture"]?.string }

    public func tensor(_ name: String) -> GGUFTensorInfo? {
        index[name].map { tensors[$0] }
    }

    /// Pointer to a tensor's data in the mapping.
    public func data(_ info: GGUFTensorInfo) -> UnsafeRawPointer { file.base + info.offset }

    private func required(_ name: String) throws -> GGUFTensorInfo {
        guard let t = tensor(name) else { throw FormatError(path: path, message: "tensor '\(name)' not found") }
        return t
    }

    private func supportedType(_ t: GGUFTensorInfo) throws -> TensorType {
        guard let type = t.type else {
            throw FormatError(path: path, message: "unsupported tensor type \(t.typeName) for tensor '\(t.name)'")
        }
        return type
    }

    /// A 2-D tensor as a matrix view: rows = ne1, cols = ne0.
    public func matrix(_ name: String) throws -> WeightMatrix {
        let t = try required(name)
        let type = try supportedType(t)
        guard t.dims.count >= 2, t.dims.dropFirst(2).allSatisfy({ $0 == 1 }) else {
            throw FormatError(path: path, message: "tensor '\(name)' is not 2-D (dims \(t.dims))")
        }
        return try makeMatrix(type: type, rows: t.dims[1], cols: t.dims[0], base: data(t), owner: file, path: path, name: name)
    }

    /// A whole tensor of any supported type, dequantized to fp32 (for norms and small tensors).
    public func floats(_ name: String) throws -> [Float] {
        let t = try required(name)
        let type = try supportedType(t)
        return try dequantizeToFloats(type: type, src: data(t), count: t.elementCount, path: path, name: name)
    }
}
