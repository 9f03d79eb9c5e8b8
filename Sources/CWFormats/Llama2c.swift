import CWKernels
import Foundation

// llama2.c legacy checkpoint (run.c): 7 × int32 header (dim, hidden_dim, n_layers, n_heads,
// n_kv_heads, vocab_size, seq_len; a negative vocab_size means a separate classifier follows),
// then fp32 arrays: token_embedding [vocab][dim], rms_att [L][dim], wq [L][heads·hd][dim],
// wk [L][kvh·hd][dim], wv [L][kvh·hd][dim], wo [L][dim][heads·hd], rms_ffn [L][dim],
// w1 [L][hidden][dim], w2 [L][dim][hidden], w3 [L][hidden][dim], rms_final [dim],
// freq_cis_real [seq][hd/2], freq_cis_imag [seq][hd/2], then wcls [vocab][dim] if not shared.

/// The header of a llama2.c checkpoint.
public struct Llama2cHeader: Sendable, Equatable {
    public let dim, hiddenDim, layers, heads, kvHeads, vocabSize, seqLen: Int
    /// True when the file's vocab_size is positive: the classifier is the token embedding.
    public let sharedClassifier: Bool

    public init(dim: Int, hiddenDim: Int, layers: Int, heads: Int, kvHeads: Int, vocabSize: Int, seqLen: Int, sharedClassifier: Bool) {
        self.dim = dim
        self.hiddenDim = hiddenDim
        self.layers = layers
        self.heads = heads
        self.kvHeads = kvHeads
        self.vocabSize = vocabSize
        self.seqLen = seqLen
        self.sharedClassifier = sharedClassifier
    }

    public var headDim: Int { dim / heads }
}

/// A llama2.c `.bin` checkpoint (legacy export format, fp32), memory-mapped.
public final class Llama2cFile: @unchecked Sendable {
    public enum Matrix: Sendable { case wq, wk, wv, wo, w1, w2, w3 }
    public enum Norm: Sendable { case attention, ffn }

    public let path: String
    public let header: Llama2cHeader
    public let file: MappedFile
    public let tokenEmbedding: WeightMatrix
    public let classifier: WeightMatrix
    public let finalNorm: [Float]

    /// Float offsets (from the start of the weights) of each per-layer array.
    private let offsets: [String: Int]

    public init(path: String) throws {
        let file = try MappedFile(path: path)
        self.file = file
        self.path = path
        func fail(_ m: String) -> FormatError { FormatError(path: path, message: m) }

        guard file.size >= 28 else {
            throw fail("truncated llama2.c checkpoint: \(file.size) bytes, the header alone takes 28")
        }
        var h = [Int](repeating: 0, count: 7)
        for i in 0..<7 { h[i] = Int(Int32(littleEndian: file.base.loadUnaligned(fromByteOffset: 4 * i, as: Int32.self))) }
        if h[0] == 0x616b_3432 {
            throw fail("llama2.c export version 1/2 (magic \"ak42\") is not supported; export with the legacy format (version 0)")
        }
        let names = ["dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"]
        for i in 0..<7 where (i == 5 ? abs(h[i]) : h[i]) <= 0 {
            throw fail("bad llama2.c header: \(names[i]) = \(h[i]) must be positive")
        }
        let (dim, hidden, layers, heads, kvHeads, seqLen) = (h[0], h[1], h[2], h[3], h[4], h[6])
        let shared = h[5] > 0
        let vocab = abs(h[5])
        guard dim % heads == 0 else { throw fail("bad llama2.c header: n_heads \(heads) does not divide dim \(dim)") }
        guard heads % kvHeads == 0 else { throw fail("bad llama2.c header: n_kv_heads \(kvHeads) does not divide n_heads \(heads)") }
        let hd = dim / heads
        guard hd % 2 == 0 else { throw fail("bad llama2.c header: head size \(hd) is odd") }
        let header = Llama2cHeader(dim: dim, hiddenDim: hidden, layers: layers, heads: heads, kvHeads: kvHeads,
                                   vocabSize: vocab, seqLen: seqLen, sharedClassifier: shared)
        self.header = header
        let kvDim = kvHeads * hd

        // Sizes in floats, in file order.
        let parts: [(String, [Int])] = [
            ("token_embedding", [vocab, dim]), ("rms_att", [layers, dim]), ("wq", [layers, dim, dim]),
            ("wk", [layers, kvDim, dim]), ("wv", [layers, kvDim, dim]), ("wo", [layers, dim, dim]),
            ("rms_ffn", [layers, dim]), ("w1", [layers, hidden, dim]), ("w2", [layers, dim, hidden]),
            ("w3", [layers, hidden, dim]), ("rms_final", [dim]), ("freq_cis_real", [seqLen, hd / 2]),
            ("freq_cis_imag", [seqLen, hd / 2]), ("wcls", shared ? [0] : [vocab, dim]),
        ]
        var offsets: [String: Int] = [:]
        var total = 0
        for (name, dims) in parts {
            offsets[name] = total
            guard let n = checkedProduct(dims), let t = checkedAdd(total, n) else {
                throw fail("bad llama2.c header: size of \(name) overflows")
            }
            total = t
        }
        guard let floatBytes = checkedMul(total, 4), let expected = checkedAdd(28, floatBytes) else {
            throw fail("bad llama2.c header: total size overflows")
        }
        guard file.size == expected else {
            var msg = "file size \(file.size) bytes does not match the header (dim \(dim), hidden_dim \(hidden), n_layers \(layers), n_heads \(heads), n_kv_heads \(kvHeads), vocab_size \(h[5]), seq_len \(seqLen)): expected \(expected) bytes"
            msg += shared ? " with a shared classifier" : " with a separate classifier"
            let other = shared ? expected + vocab * dim * 4 : expected - vocab * dim * 4
            if file.size == other {
                msg += "; the size fits a \(shared ? "separate" : "shared") classifier, so the sign of vocab_size is wrong"
            }
            throw fail(msg)
        }
        self.offsets = offsets

        let w = file.base + 28
        func at(_ name: String) -> UnsafeRawPointer { w + 4 * (offsets[name] ?? 0) }
        let embedding = try makeMatrix(type: .f32, rows: vocab, cols: dim, base: at("token_embedding"), owner: file, path: path, name: "token_embedding")
        self.tokenEmbedding = embedding
        self.classifier = shared ? embedding
            : try makeMatrix(type: .f32, rows: vocab, cols: dim, base: at("wcls"), owner: file, path: path, name: "wcls")
        self.finalNorm = Array(UnsafeBufferPointer(start: at("rms_final").assumingMemoryBound(to: Float.self), count: dim))
    }

    private func pointer(_ name: String, layer: Int, floatsPerLayer: Int) throws -> UnsafeRawPointer {
        guard layer >= 0, layer < header.layers else {
            throw FormatError(path: path, message: "\(name): layer \(layer) out of range (the model has \(header.layers) layers)")
        }
        return file.base + 28 + 4 * ((offsets[name] ?? 0) + layer * floatsPerLayer)
    }

    /// A per-layer projection as a row-major `[out, in]` f32 matrix.
    public func matrix(_ m: Matrix, layer: Int) throws -> WeightMatrix {
        let h = header
        let kvDim = h.kvHeads * h.headDim
        let (name, rows, cols): (String, Int, Int)
        switch m {
        case .wq: (name, rows, cols) = ("wq", h.heads * h.headDim, h.dim)
        case .wk: (name, rows, cols) = ("wk", kvDim, h.dim)
        case .wv: (name, rows, cols) = ("wv", kvDim, h.dim)
        case .wo: (name, rows, cols) = ("wo", h.dim, h.heads * h.headDim)
        case .w1: (name, rows, cols) = ("w1", h.hiddenDim, h.dim)
        case .w2: (name, rows, cols) = ("w2", h.dim, h.hiddenDim)
        case .w3: (name, rows, cols) = ("w3", h.hiddenDim, h.dim)
        }
        let p = try pointer(name, layer: layer, floatsPerLayer: rows * cols)
        return try makeMatrix(type: .f32, rows: rows, cols: cols, base: p, owner: file, path: path, name: "\(name) of layer \(layer)")
    }

    /// A per-layer RMSNorm weight (`dim` floats).
    public func norm(_ n: Norm, layer: Int) throws -> [Float] {
        let name = n == .attention ? "rms_att" : "rms_ffn"
        let p = try pointer(name, layer: layer, floatsPerLayer: header.dim)
        return Array(UnsafeBufferPointer(start: p.assumingMemoryBound(to: Float.self), count: header.dim))
    }
}
