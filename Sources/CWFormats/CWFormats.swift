/// # CWFormats — the file-format layer of ChunkWise
///
/// Readers for the model files ChunkWise loads: GGUF (v2/v3), safetensors (single file or a
/// sharded `model.safetensors.index.json` folder), HuggingFace `config.json`, and llama2.c
/// `.bin` checkpoints.
///
/// Every reader memory-maps its file read-only (`MAP_PRIVATE`) and hands out `WeightMatrix`
/// views that point straight into the mapping, so a model is never copied into memory; only small
/// tensors (norm weights) are dequantized into `[Float]` on request.
///
/// Why our own parsers: no maintained Swift GGUF or safetensors reader exists for Linux that
/// memory-maps the file and validates it. Everything read from a file is untrusted: lengths,
/// counts, offsets and shapes are bounds- and overflow-checked before use, nothing traps on bad
/// input, and every error is a `FormatError` naming the file, the field or tensor, and the problem.
import CKernels
import CWKernels
import Foundation
import Logging

#if canImport(Glibc)
import Glibc
#elseif canImport(Musl)
import Musl
#elseif canImport(Darwin)
import Darwin
#endif

let formatsLogger = Logger(label: "chunkwise.formats")

/// A problem with a model file: which file, and what is wrong with it.
public struct FormatError: Error, CustomStringConvertible, Equatable {
    public let path: String
    public let message: String

    public init(path: String, message: String) {
        self.path = path
        self.message = message
    }

    public var description: String { "\(path): \(message)" }
}

/// A whole file memory-mapped read-only (`MAP_PRIVATE`); unmapped when the object goes away.
/// Immutable after `init`, hence safe to share between threads.
public final class MappedFile: @unchecked Sendable {
    public let path: String
    public let size: Int
    public let base: UnsafeRawPointer

    public init(path: String) throws {
        self.path = path
        let fd = open(path, O_RDONLY | O_CLOEXEC)
        if fd < 0 {
            let e = errno
            let reason = e == ENOENT ? "file not found" : "cannot open file: \(String(cString: strerror(e)))"
            throw FormatError(path: path, message: reason)
        }
        defer { close(fd) }
        var st = stat()
        guard fstat(fd, &st) == 0 else {
            throw FormatError(path: path, message: "cannot stat file: \(String(cString: strerror(errno)))")
        }
        guard (st.st_mode & S_IFMT) == S_IFREG else {
            throw FormatError(path: path, message: "not a regular file")
        }
        guard st.st_size > 0 else { throw FormatError(path: path, message: "file is empty") }
        guard let size = Int(exactly: st.st_size) else {
            throw FormatError(path: path, message: "file too large to map (\(st.st_size) bytes)")
        }
        guard let p = mmap(nil, size, PROT_READ, MAP_PRIVATE, fd, 0), p != MAP_FAILED else {
            throw FormatError(path: path, message: "mmap of \(size) bytes failed: \(String(cString: strerror(errno)))")
        }
        self.size = size
        self.base = UnsafeRawPointer(p)
    }

    deinit {
        munmap(UnsafeMutableRawPointer(mutating: base), size)
    }

    /// `count` bytes at `offset`, after checking they lie inside the file; errors name `what`.
    public func bytes(at offset: Int, count: Int, what: String) throws -> UnsafeRawPointer {
        guard offset >= 0, count >= 0 else {
            throw FormatError(path: path, message: "\(what): negative offset \(offset) or length \(count)")
        }
        guard offset <= size, count <= size - offset else {
            throw FormatError(path: path, message: "\(what): bytes \(offset)..<\(offset &+ count) lie past the end of the file (\(size) bytes)")
        }
        return base + offset
    }
}

// MARK: - helpers shared by the readers

/// `a * b`, or nil on overflow or negative input.
@inline(__always)
func checkedMul(_ a: Int, _ b: Int) -> Int? {
    guard a >= 0, b >= 0 else { return nil }
    let (r, o) = a.multipliedReportingOverflow(by: b)
    return o ? nil : r
}

/// `a + b`, or nil on overflow.
@inline(__always)
func checkedAdd(_ a: Int, _ b: Int) -> Int? {
    let (r, o) = a.addingReportingOverflow(b)
    return o ? nil : r
}

/// Product of dimensions, or nil on overflow / negative.
func checkedProduct(_ xs: [Int]) -> Int? {
    var p = 1
    for x in xs {
        guard let q = checkedMul(p, x) else { return nil }
        p = q
    }
    return p
}

/// Dequantizes `count` elements of a supported type into a new array, through the C kernels.
func dequantizeToFloats(type: TensorType, src: UnsafeRawPointer, count: Int, path: String, name: String) throws -> [Float] {
    guard count % type.blockElements == 0 else {
        throw FormatError(path: path, message: "tensor '\(name)' has \(count) elements, not a multiple of the \(type) block size \(type.blockElements)")
    }
    if count == 0 { return [] }
    var out = [Float](repeating: 0, count: count)
    let rc: Int32 = out.withUnsafeMutableBufferPointer { buf in
        guard let dst = buf.baseAddress else { return -1 }
        return cw_dequantize_row(Int32(type.rawValue), src, dst, Int64(count))
    }
    guard rc == 0 else {
        throw FormatError(path: path, message: "cannot dequantize tensor '\(name)': type \(type) is not supported by the kernels")
    }
    return out
}

/// Builds a `WeightMatrix`, turning kernel-layer shape errors into a `FormatError` naming the tensor.
func makeMatrix(type: TensorType, rows: Int, cols: Int, base: UnsafeRawPointer, owner: AnyObject, path: String, name: String) throws -> WeightMatrix {
    do {
        return try WeightMatrix(type: type, rows: rows, cols: cols, base: base, owner: owner)
    } catch {
        throw FormatError(path: path, message: "tensor '\(name)': \(error)")
    }
}
