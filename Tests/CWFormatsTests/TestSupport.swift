import CWFormats
import CWKernels
import Foundation
import XCTest

/// Where the test data lives: the package root is two levels above this file.
enum TestPaths {
    static let packageRoot: URL = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    static let shared: URL = packageRoot.deletingLastPathComponent().appendingPathComponent("shared")
    static var smolLM2: String {
        if let env = ProcessInfo.processInfo.environment["CHUNKWISE_MODEL"], !env.isEmpty { return env }
        return packageRoot.appendingPathComponent(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf").path
    }
    static let stories260KBin = shared.appendingPathComponent("models/stories260K/stories260K.bin").path
    static let stories260KHF = shared.appendingPathComponent("models/stories260K-hf").path
    static let dequantJSON = shared.appendingPathComponent("golden/smollm2-logits/dequant.json").path

    static func require(_ path: String, _ what: String) throws -> String {
        guard FileManager.default.fileExists(atPath: path) else {
            throw XCTSkip("\(what) not found at \(path)")
        }
        return path
    }
}

/// A fresh temporary directory, removed by the test's teardown.
func makeTempDir(_ test: XCTestCase) throws -> URL {
    let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cwformats-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: dir, withIntermediateDirectories: true)
    test.addTeardownBlock { try? FileManager.default.removeItem(at: dir) }
    return dir
}

/// Runs `body`, expecting a `FormatError` whose description ("path: message") contains every
/// one of `fragments`.
func assertFormatError<T>(_ body: @autoclosure () throws -> T, contains fragments: [String], file: StaticString = #filePath, line: UInt = #line) {
    do {
        _ = try body()
        XCTFail("expected a FormatError containing \(fragments)", file: file, line: line)
    } catch let e as FormatError {
        for f in fragments where !e.description.contains(f) {
            XCTFail("error \"\(e)\" does not contain \"\(f)\"", file: file, line: line)
        }
    } catch {
        XCTFail("expected a FormatError, got \(error)", file: file, line: line)
    }
}

/// Little-endian byte buffer builder for fixtures.
struct ByteWriter {
    var bytes: [UInt8] = []
    mutating func u8(_ v: UInt8) { bytes.append(v) }
    mutating func u32(_ v: UInt32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func i32(_ v: Int32) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func u64(_ v: UInt64) { withUnsafeBytes(of: v.littleEndian) { bytes.append(contentsOf: $0) } }
    mutating func f32(_ v: Float) { u32(v.bitPattern) }
    mutating func raw(_ b: [UInt8]) { bytes.append(contentsOf: b) }
    mutating func ggufString(_ s: String) { u64(UInt64(s.utf8.count)); bytes.append(contentsOf: Array(s.utf8)) }
    mutating func pad(to alignment: Int) { while bytes.count % alignment != 0 { bytes.append(0) } }
}

/// A tensor for the GGUF fixture writer.
struct FixtureTensor {
    var name: String
    var dims: [UInt64]
    var typeID: UInt32
    var data: [UInt8]
    /// Overrides the relative offset written in the header (for broken fixtures).
    var offsetOverride: UInt64? = nil
}

/// Writes a small GGUF file from metadata and tensors (data laid out in order, 32-byte aligned).
func writeGGUF(metadata: [(String, GGUFValue)], tensors: [FixtureTensor], version: UInt32 = 3, alignment: Int = 32, magic: [UInt8] = Array("GGUF".utf8)) -> [UInt8] {
    var w = ByteWriter()
    w.raw(magic)
    w.u32(version)
    w.u64(UInt64(tensors.count))
    w.u64(UInt64(metadata.count))
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
    func value(_ v: GGUFValue, _ w: inout ByteWriter) {
        switch v {
        case .uint8(let x): w.u8(x)
        case .int8(let x): w.u8(UInt8(bitPattern: x))
        case .uint16(let x): withUnsafeBytes(of: x.littleEndian) { w.raw(Array($0)) }
        case .int16(let x): withUnsafeBytes(of: x.littleEndian) { w.raw(Array($0)) }
        case .uint32(let x): w.u32(x)
        case .int32(let x): w.i32(x)
        case .float32(let x): w.f32(x)
        case .bool(let x): w.u8(x ? 1 : 0)
        case .string(let s): w.ggufString(s)
        case .uint64(let x): w.u64(x)
        case .int64(let x): w.u64(UInt64(bitPattern: x))
        case .float64(let x): w.u64(x.bitPattern)
        case .array(let a):
            w.u32(a.first.map(typeID) ?? 4)
            w.u64(UInt64(a.count))
            for e in a { value(e, &w) }
        }
    }
    for (k, v) in metadata {
        w.ggufString(k)
        w.u32(typeID(v))
        value(v, &w)
    }
    var rel: UInt64 = 0
    var offsets: [UInt64] = []
    for t in tensors {
        offsets.append(rel)
        rel += UInt64(t.data.count)
        rel = (rel + UInt64(alignment) - 1) / UInt64(alignment) * UInt64(alignment)
    }
    for (i, t) in tensors.enumerated() {
        w.ggufString(t.name)
        w.u32(UInt32(t.dims.count))
        for d in t.dims { w.u64(d) }
        w.u32(t.typeID)
        w.u64(t.offsetOverride ?? offsets[i])
    }
    w.pad(to: alignment)
    for t in tensors {
        w.raw(t.data)
        w.pad(to: alignment)
    }
    return w.bytes
}

func f32Bytes(_ xs: [Float]) -> [UInt8] {
    var w = ByteWriter()
    for x in xs { w.f32(x) }
    return w.bytes
}

@discardableResult
func writeFile(_ dir: URL, _ name: String, _ bytes: [UInt8]) throws -> String {
    let url = dir.appendingPathComponent(name)
    try Data(bytes).write(to: url)
    return url.path
}
