import CWFormats
import CWKernels
import Foundation

/// Buffered sequential writes to a new file (replaced if it exists).
final class BinaryOutput {
    let path: String
    private let handle: FileHandle
    private var buffer = Data()
    private(set) var written = 0

    init(path: String) throws {
        self.path = path
        let fm = FileManager.default
        if fm.fileExists(atPath: path) { try? fm.removeItem(atPath: path) }
        guard fm.createFile(atPath: path, contents: nil), let h = FileHandle(forWritingAtPath: path) else {
            throw LoRAError(.format, path: path, "cannot create file")
        }
        handle = h
    }

    func write(_ d: Data) throws {
        buffer.append(d)
        written += d.count
        if buffer.count >= 1 << 22 { try flush() }
    }

    func write(_ s: String) throws { try write(Data(s.utf8)) }

    func write<T: FixedWidthInteger>(_ v: T) throws {
        var x = v.littleEndian
        try write(Data(bytes: &x, count: MemoryLayout<T>.size))
    }

    func write(floats p: UnsafePointer<Float>, count: Int) throws {
        // Little-endian hosts only (x86-64, arm64): the bytes are the floats.
        try write(Data(bytes: p, count: count * 4))
    }

    func pad(to alignment: Int) throws {
        let r = written % alignment
        if r != 0 { try write(Data(count: alignment - r)) }
    }

    func flush() throws {
        guard !buffer.isEmpty else { return }
        do { try handle.write(contentsOf: buffer) } catch {
            throw LoRAError(.format, path: path, "write failed: \(error.localizedDescription)")
        }
        buffer.removeAll(keepingCapacity: true)
    }

    func close() throws {
        try flush()
        try? handle.close()
    }
}

/// A tensor to write: its shape (outermost first, as numpy) and a producer that fills its fp32 values.
public struct OutputTensor {
    public let name: String
    public let shape: [Int]
    public let fill: (UnsafeMutablePointer<Float>) throws -> Void

    public init(name: String, shape: [Int], fill: @escaping (UnsafeMutablePointer<Float>) throws -> Void) {
        self.name = name
        self.shape = shape
        self.fill = fill
    }

    public init(name: String, shape: [Int], values: [Float]) {
        self.init(name: name, shape: shape) { dst in
            values.withUnsafeBufferPointer { b in if let base = b.baseAddress { dst.update(from: base, count: values.count) } }
        }
    }

    public var elementCount: Int { shape.reduce(1, *) }

    func produce(_ body: (UnsafePointer<Float>) throws -> Void) throws {
        let n = elementCount
        let p = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n))
        defer { p.deallocate() }
        p.initialize(repeating: 0, count: max(1, n))
        try fill(p)
        try body(p)
    }
}

/// A minimal safetensors writer (F32 only): header JSON with tensors in name order, padded to 8 bytes.
public enum SafetensorsWriter {
    public static func write(_ tensors: [OutputTensor], metadata: [String: String] = [:], to path: String) throws {
        let sorted = tensors.sorted { $0.name < $1.name }
        var entries: [(String, JSON)] = []
        if !metadata.isEmpty {
            entries.append(("__metadata__", .object(metadata.sorted { $0.key < $1.key }.map { ($0.key, JSON.string($0.value)) })))
        }
        var offset = 0
        for t in sorted {
            let bytes = t.elementCount * 4
            entries.append((t.name, .object([("dtype", .string("F32")), ("shape", .array(t.shape.map { .int($0) })),
                                             ("data_offsets", .array([.int(offset), .int(offset + bytes)]))])))
            offset += bytes
        }
        var header = Data(JSON.object(entries).text.utf8)
        let padded = (header.count + 7) / 8 * 8
        header.append(Data(repeating: 0x20, count: padded - header.count))
        let out = try BinaryOutput(path: path)
        try out.write(UInt64(header.count))
        try out.write(header)
        for t in sorted { try t.produce { try out.write(floats: $0, count: t.elementCount) } }
        try out.close()
    }
}

/// A minimal GGUF v3 writer: metadata (strings, numbers, bools, arrays of those) and F32 tensors.
public enum GGUFWriter {
    public static let alignment = 32

    /// `tensors` shapes are numpy order (outermost first); they are stored with ne0 = the last.
    public static func write(metadata: [(String, GGUFValue)], tensors: [OutputTensor], to path: String) throws {
        let out = try BinaryOutput(path: path)
        try out.write(UInt32(0x4655_4747))  // "GGUF"
        try out.write(UInt32(3))
        try out.write(UInt64(tensors.count))
        try out.write(UInt64(metadata.count))
        func str(_ s: String) throws { try out.write(UInt64(s.utf8.count)); try out.write(s) }
        func typeID(_ v: GGUFValue) -> UInt32 {
            switch v {
            case .uint8: return 0
            case .int8: return 1
            case .uint16: return 2
            case .int16: return 3
            case .uint32: return 4
            case .int32: return 5
            case .float32: return 6
            case .bool: return 7
            case .string: return 8
            case .array: return 9
            case .uint64: return 10
            case .int64: return 11
            case .float64: return 12
            }
        }
        func value(_ v: GGUFValue) throws {
            switch v {
            case .uint8(let x): try out.write(x)
            case .int8(let x): try out.write(x)
            case .uint16(let x): try out.write(x)
            case .int16(let x): try out.write(x)
            case .uint32(let x): try out.write(x)
            case .int32(let x): try out.write(x)
            case .float32(let x): try out.write(x.bitPattern)
            case .bool(let b): try out.write(UInt8(b ? 1 : 0))
            case .string(let s): try str(s)
            case .uint64(let x): try out.write(x)
            case .int64(let x): try out.write(x)
            case .float64(let x): try out.write(x.bitPattern)
            case .array(let a):
                try out.write(a.first.map(typeID) ?? 4)
                try out.write(UInt64(a.count))
                for e in a { try value(e) }
            }
        }
        for (k, v) in metadata {
            try str(k)
            try out.write(typeID(v))
            try value(v)
        }
        var offset = 0
        for t in tensors {
            try str(t.name)
            try out.write(UInt32(t.shape.count))
            for d in t.shape.reversed() { try out.write(UInt64(d)) }
            try out.write(UInt32(TensorType.f32.rawValue))
            try out.write(UInt64(offset))
            offset += (t.elementCount * 4 + alignment - 1) / alignment * alignment
        }
        try out.pad(to: alignment)
        for t in tensors {
            try t.produce { try out.write(floats: $0, count: t.elementCount) }
            try out.pad(to: alignment)
        }
        try out.close()
    }
}
