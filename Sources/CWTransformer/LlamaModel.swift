import CWFormats
import CWKernels
import Foundation

/// Something that adds to a projection's output — a LoRA adapter, a mix of adapters, or the
/// ChunkWise scheduler choosing a rank per token. `positions` are the sequence positions of the
/// `tokens` rows of `x`/`y`.
public protocol ProjectionDelta: AnyObject {
    func apply(layer: Int, projection: Projection, x: UnsafePointer<Float>, tokens: Int,
               positions: Range<Int>, y: UnsafeMutablePointer<Float>, pool: ThreadPool)
}

/// Which logits a forward pass returns.
public enum LogitsMode: Sendable {
    case none, last, all
}

/// Errors from running the model on user input.
public enum InferenceError: Error, CustomStringConvertible, Equatable {
    case emptyInput
    case tokenOutOfRange(id: Int, vocabularySize: Int)
    case contextOverflow(needed: Int, limit: Int)

    public var description: String {
        switch self {
        case .emptyInput: return "the prompt is empty: at least one token is needed"
        case .tokenOutOfRange(let id, let v): return "token id \(id) is outside the vocabulary (0..<\(v))"
        case .contextOverflow(let needed, let limit):
            return "the sequence needs \(needed) positions but the context holds \(limit) (use a shorter prompt or fewer new tokens)"
        }
    }
}

/// Options for one forward pass.
public struct ForwardOptions {
    public var precision: Precision
    public var pool: ThreadPool
    public var logits: LogitsMode
    /// Largest number of tokens pushed through the layers at once (bounds scratch memory).
    public var microBatch: Int

    public init(precision: Precision = .exact, pool: ThreadPool, logits: LogitsMode = .last, microBatch: Int = 256) {
        self.precision = precision
        self.pool = pool
        self.logits = logits
        self.microBatch = max(1, microBatch)
    }
}

/// A Llama-family decoder: RMSNorm, RoPE, grouped-query attention, SwiGLU, tied or untied head.
///
/// Read `forward` top to bottom for the whole model, as in llama2.c's run.c.
public final class LlamaModel: @unchecked Sendable {
    public let config: LlamaConfig
    public let weights: LlamaWeights
    public let source: ModelSource
    let ropeInvFreq: [Double]

    public init(config: LlamaConfig, weights: LlamaWeights, source: ModelSource, ropeFrequencyFactors: [Float]?) {
        self.config = config
        self.weights = weights
        self.source = source
        var inv = config.ropeInverseFrequencies()
        if let f = ropeFrequencyFactors { for i in inv.indices { inv[i] /= Double(f[i]) } }
        self.ropeInvFreq = inv
    }

    /// A fresh KV cache for this model.
    public func makeCache(maxContext: Int? = nil, initialCapacity: Int = 256) -> KVCache {
        KVCache(layers: config.layers, kvDim: config.kvDim, maxCapacity: min(maxContext ?? config.maxContext, config.maxContext),
                initialCapacity: initialCapacity)
    }

    /// Runs `tokens` at positions `cache.count ..< cache.count + tokens.count`, appends their keys
    /// and values to `cache`, and returns the logits asked for (`vocab` floats per returned
    /// position, row-major).
    public func forward(_ tokens: [Int], cache: KVCache, options: ForwardOptions, delta: ProjectionDelta? = nil) throws -> [Float] {
        guard !tokens.isEmpty else { throw InferenceError.emptyInput }
        for t in tokens where t < 0 || t >= config.vocabSize {
            throw InferenceError.tokenOutOfRange(id: t, vocabularySize: config.vocabSize)
        }
        let needed = cache.count + tokens.count
        guard cache.reserve(needed) else { throw InferenceError.contextOverflow(needed: needed, limit: cache.maxCapacity) }

        let vocab = config.vocabSize
        var result: [Float]
        switch options.logits {
        case .none: result = []
        case .last: result = [Float](repeating: 0, count: vocab)
        case .all: result = [Float](repeating: 0, count: vocab * tokens.count)
        }
        let mb = options.microBatch
        var scratch = Scratch(config: config, tokens: min(mb, tokens.count))
        defer { scratch.free() }
        var start = 0
        while start < tokens.count {
            let end = min(tokens.count, start + mb)
            let batch = Array(tokens[start..<end])
            let wantLogits: Bool
            switch options.logits {
            case .none: wantLogits = false
            case .last: wantLogits = end == tokens.count
            case .all: wantLogits = true
            }
            try result.withUnsafeMutableBufferPointer { out in
                let dest: UnsafeMutablePointer<Float>? = {
                    guard wantLogits, let base = out.baseAddress else { return nil }
                    return options.logits == .all ? base + start * vocab : base
                }()
                try forwardBatch(batch, cache: cache, options: options, delta: delta, scratch: &scratch,
                                 logits: dest, allPositions: options.logits == .all)
            }
            start = end
        }
        return result
    }

    /// Scratch activations for a micro-batch of `n` tokens.
    struct Scratch {
        let n: Int
        var x, xb, q, k, v, att, hb, hb2: UnsafeMutablePointer<Float>

        init(config c: LlamaConfig, tokens n: Int) {
            self.n = n
            x = .allocate(capacity: n * c.hiddenSize)
            xb = .allocate(capacity: n * max(c.hiddenSize, c.qDim))
            q = .allocate(capacity: n * c.qDim)
            k = .allocate(capacity: n * c.kvDim)
            v = .allocate(capacity: n * c.kvDim)
            att = .allocate(capacity: n * c.qDim)
            hb = .allocate(capacity: n * c.intermediateSize)
            hb2 = .allocate(capacity: n * c.intermediateSize)
        }

        func free() {
            for p in [x, xb, q, k, v, att, hb, hb2] { p.deallocate() }
        }

        static func byteCount(config c: LlamaConfig, tokens n: Int) -> Int {
            4 * n * (2 * c.hiddenSize + max(c.hiddenSize, c.qDim) + 2 * c.qDim + 2 * c.kvDim + 2 * c.intermediateSize)
        }
    }

    /// Bytes of scratch activations a forward pass of `tokens` tokens holds (excluding logits).
    public func scratchByteCount(tokens: Int, microBatch: Int = 256) -> Int {
        Scratch.byteCount(config: config, tokens: min(tokens, microBatch))
    }

    private func forwardBatch(_ tokens: [Int], cache: KVCache, options: ForwardOptions, delta: ProjectionDelta?,
                              scratch s: inout Scratch, logits: UnsafeMutablePointer<Float>?, allPositions: Bool) throws {
        let c = config, w = weights, pool = options.pool, prec = options.precision
        let n = tokens.count, d = c.hiddenSize, ff = c.intermediateSize
        let pos0 = cache.count
        let positions = pos0..<(pos0 + n)

        // Embedding lookup.
        for (t, id) in tokens.enumerated() { w.tokenEmbedding.dequantizeRow(id, into: s.x + t * d) }

        // RoPE tables for this batch's positions.
        let half = c.headDim / 2
        var cosT = [Float](repeating: 0, count: n * half), sinT = [Float](repeating: 0, count: n * half)
        for t in 0..<n {
            let p = Double(pos0 + t)
            for i in 0..<half {
                let a = p * ropeInvFreq[i]
                cosT[t * half + i] = Float(cos(a))
                sinT[t * half + i] = Float(sin(a))
            }
        }

        func linear(_ layer: Int, _ p: Projection, _ m: WeightMatrix, _ x: UnsafeMutablePointer<Float>, _ y: UnsafeMutablePointer<Float>) {
            Kernels.matmul(m, x, tokens: n, y, precision: prec, pool: pool)
            delta?.apply(layer: layer, projection: p, x: x, tokens: n, positions: positions, y: y, pool: pool)
        }

        for (l, lw) in w.layers.enumerated() {
            // Attention block.
            lw.attentionNorm.withUnsafeBufferPointer { g in
                for t in 0..<n { VectorOps.rmsNorm(s.x + t * d, g.baseAddress!, s.xb + t * d, n: d, eps: c.rmsNormEps) }
            }
            linear(l, .q, lw.wq, s.xb, s.q)
            linear(l, .k, lw.wk, s.xb, s.k)
            linear(l, .v, lw.wv, s.xb, s.v)
            if let b = lw.bq { addBias(s.q, b, n) }
            if let b = lw.bk { addBias(s.k, b, n) }
            if let b = lw.bv { addBias(s.v, b, n) }
            applyRope(s.q, heads: c.heads, n: n, cos: cosT, sin: sinT)
            applyRope(s.k, heads: c.kvHeads, n: n, cos: cosT, sin: sinT)
            let kc = cache.keys(layer: l), vc = cache.values(layer: l)
            (kc + pos0 * c.kvDim).update(from: s.k, count: n * c.kvDim)
            (vc + pos0 * c.kvDim).update(from: s.v, count: n * c.kvDim)
            Attention.causal(q: s.q, k: kc, v: vc, out: s.att, tokens: n, startPos: pos0,
                             heads: c.heads, kvHeads: c.kvHeads, headDim: c.headDim, kvStride: c.kvDim,
                             scale: 1 / Float(c.headDim).squareRoot(), pool: pool)
            linear(l, .o, lw.wo, s.att, s.xb)
            VectorOps.add(s.x, s.xb, n: n * d)

            // Feed-forward block (SwiGLU).
            lw.ffnNorm.withUnsafeBufferPointer { g in
                for t in 0..<n { VectorOps.rmsNorm(s.x + t * d, g.baseAddress!, s.xb + t * d, n: d, eps: c.rmsNormEps) }
            }
            linear(l, .gate, lw.wGate, s.xb, s.hb)
            linear(l, .up, lw.wUp, s.xb, s.hb2)
            VectorOps.siluMul(s.hb, s.hb2, n: n * ff)
            linear(l, .down, lw.wDown, s.hb, s.xb)
            VectorOps.add(s.x, s.xb, n: n * d)
        }
        cache.advance(to: pos0 + n)

        guard let logits else { return }
        let first = allPositions ? 0 : n - 1
        let rows = n - first
        w.finalNorm.withUnsafeBufferPointer { g in
            for t in first..<n { VectorOps.rmsNorm(s.x + t * d, g.baseAddress!, s.xb + (t - first) * d, n: d, eps: c.rmsNormEps) }
        }
        Kernels.matmul(w.output, s.xb, tokens: rows, logits, precision: prec, pool: pool)
    }

    private func addBias(_ y: UnsafeMutablePointer<Float>, _ b: [Float], _ n: Int) {
        b.withUnsafeBufferPointer { bp in
            for t in 0..<n { VectorOps.add(y + t * bp.count, bp.baseAddress!, n: bp.count) }
        }
    }

    private func applyRope(_ x: UnsafeMutablePointer<Float>, heads: Int, n: Int, cos: [Float], sin: [Float]) {
        let hd = config.headDim, half = hd / 2
        let interleaved = config.ropeStyle == .interleaved
        for t in 0..<n {
            let row = x + t * heads * hd
            for h in 0..<heads {
                let v = row + h * hd
                for i in 0..<half {
                    let cs = cos[t * half + i], sn = sin[t * half + i]
                    let a = interleaved ? 2 * i : i
                    let b = interleaved ? 2 * i + 1 : i + half
                    let x0 = v[a], x1 = v[b]
                    v[a] = x0 * cs - x1 * sn
                    v[b] = x0 * sn + x1 * cs
                }
            }
        }
    }
}
