import CWKernels
import CWTransformer
import Foundation

/// The signals of one token, each normalized to [0, 1] (nil = not available for this token).
public struct DifficultySignals: Codable, Sendable, Equatable {
    public var entropy: Double?
    public var novelty: Double?
    public var attention: Double?
    public var position: Double?
    public var response: Double?
}

/// Causal per-token difficulty from switchable, weighted signals (weights in
/// `SchedulerConfig.weights`; 0 switches a signal off). The score is the weighted mean of the
/// signals available for the token, in [0, 1].
///
/// Signals (all depend only on the token and the tokens before it):
/// - **entropy**: entropy of the model's next-token distribution at the previous position (the one
///   that predicted this token), ÷ log(vocab). Needs `observe(logits:)`; in decode it is there for
///   every token. In prefill it is there only for the first token of a forward call (from the last
///   call's logits): the other prompt tokens' distributions come out of the same forward pass
///   whose adapter ranks we are choosing, so they cannot be used without a second pass.
/// - **novelty**: 0.5·[token id unseen in the last `noveltyWindow` tokens] + 0.5·[n-gram ending here
///   unseen in that window] — a cheap "is this text new" signal.
/// - **attention**: entropy of layer 0's attention for this token (mean over heads, ÷ log(#keys),
///   keys limited to the last 256 positions). Why layer 0 and computed here, not layer 1 from the
///   delta hook: every layer's tier has to be fixed before layer 0's projections run, and layer 1's
///   q/k only exist after layer 0 has been applied with some rank. Layer 0's q/k depend on the
///   token embeddings alone, so we recompute them (one extra q/k matmul of layer 0 with the base
///   weights, plus RoPE and a windowed attention — a small fraction of a forward pass) with our
///   own key store. Diffuse attention = the token has no single obvious antecedent.
/// - **position**: 1 / (1 + t/32): the first tokens have little context and are the hardest.
/// - **response**: ‖S·Vᵀx‖ / (σ_max‖x‖) at the first adapted layer-0 q/k/v module, x = the
///   attention-normed embedding (the input that module sees): how strongly the adapter reacts to
///   this token (= ‖ΔW x‖ relative to its maximum).
///
/// For prefill the score uses novelty, attention, position and response (+ entropy on the first
/// token of a call when the engine observed the previous logits); for decode all five.
public final class DifficultyEstimator: @unchecked Sendable {
    public let model: LlamaModel
    public let ladder: RankLadder?
    public private(set) var config: SchedulerConfig
    var recent: [Int] = []
    var lastEntropy: Double?
    /// Counts of token ids and n-grams (hashed) in the novelty window.
    var unigramCounts: [Int: Int] = [:]
    var ngramCounts: [UInt64: Int] = [:]
    /// Layer-0 keys (RoPE applied), the most recent `keyRows` of them in order, contiguous, so that
    /// every token's window is one slice (capacity ≥ 2 × `attentionWindow` rows: when full, the last
    /// window is moved to the front — a copy of W rows every ~W tokens, not per call).
    var keyBuffer: [Float] = []
    var keyRows = 0
    var keyCount = 0
    public private(set) var position = 0
    public private(set) var nanoseconds: UInt64 = 0
    public private(set) var tokensScored = 0
    let responseModule: LadderModule?
    static let attentionWindow = 256

    public init(model: LlamaModel, ladder: RankLadder?, config: SchedulerConfig) {
        self.model = model
        self.ladder = ladder
        self.config = config
        responseModule = [Projection.q, .k, .v].lazy.compactMap { ladder?.module(layer: 0, projection: $0) }.first
    }

    /// Forgets the sequence (new KV cache).
    public func reset() {
        recent = []
        lastEntropy = nil
        unigramCounts = [:]
        ngramCounts = [:]
        keyCount = 0
        keyRows = 0
        position = 0
    }

    /// Records the next-token distribution of the last position run (raw logits).
    /// Skipped (no cost) when the entropy signal's weight is 0, as in the presets: a vocabulary-wide
    /// softmax per decoded token for a signal that is not used.
    public func observe(logits: UnsafeBufferPointer<Float>) {
        guard config.weights.entropy != 0 else { lastEntropy = nil; return }
        let t0 = DispatchTime.now().uptimeNanoseconds
        lastEntropy = Self.normalizedEntropy(logits)
        nanoseconds += DispatchTime.now().uptimeNanoseconds - t0
    }

    /// Entropy of softmax(logits) ÷ log(count), in [0, 1]; nil for fewer than 2 logits or when
    /// they are not all finite-or-−∞ (a NaN/+∞ logit, or every logit −∞).
    ///
    /// H = log Z − Σ eᵢ dᵢ / Z with dᵢ = xᵢ − max, eᵢ = exp(dᵢ), Z = Σ eᵢ: a max pass and one exp
    /// pass in the kernels (`VectorOps.normalizedEntropy`: the same vector exp as SiLU and
    /// sampling, fp32 lanes carried into Double every 64 vectors). Nothing is allocated. Against a
    /// Double evaluation with the libm exp it differs by < 1e-5 (normalized), see
    /// `EntropyTests`. Deterministic: the same logits always give the same value.
    public static func normalizedEntropy(_ logits: UnsafeBufferPointer<Float>) -> Double? {
        guard logits.count > 1, let base = logits.baseAddress else { return nil }
        return VectorOps.normalizedEntropy(base, n: logits.count)
    }

    /// Scores the next tokens (which the model is about to run) and advances.
    public func score(tokens: [Int], pool: ThreadPool) -> [(Double, DifficultySignals)] {
        let t0 = DispatchTime.now().uptimeNanoseconds
        defer {
            nanoseconds += DispatchTime.now().uptimeNanoseconds - t0
            tokensScored += tokens.count
        }
        let w = config.weights
        let n = tokens.count
        let c = model.config
        // Layer-0 normed embeddings (needed by attention and response).
        var attn = [Double?](repeating: nil, count: n)
        var resp = [Double?](repeating: nil, count: n)
        let needX = (w.attention != 0) || (w.response != 0 && responseModule != nil)
        if needX, n > 0 {
            let d = c.hiddenSize
            let xb = UnsafeMutablePointer<Float>.allocate(capacity: n * d)
            let raw = UnsafeMutablePointer<Float>.allocate(capacity: d)
            defer { xb.deallocate(); raw.deallocate() }
            let lw = model.weights.layers[0]
            lw.attentionNorm.withUnsafeBufferPointer { g in
                for (t, id) in tokens.enumerated() {
                    model.weights.tokenEmbedding.dequantizeRow(id, into: raw)
                    if let gb = g.baseAddress { VectorOps.rmsNorm(raw, gb, xb + t * d, n: d, eps: c.rmsNormEps) }
                }
            }
            if w.attention != 0 { attentionEntropy(xb, n: n, into: &attn, pool: pool) }
            if w.response != 0, let m = responseModule { response(m, xb, n: n, into: &resp, pool: pool) }
        }
        var out: [(Double, DifficultySignals)] = []
        out.reserveCapacity(n)
        for (t, id) in tokens.enumerated() {
            var s = DifficultySignals()
            if t == 0, let e = lastEntropy { s.entropy = e }
            // novelty: counts over the last `noveltyWindow` tokens (and the n-grams ending in them)
            let k = max(1, config.ngram)
            let uniNew = (unigramCounts[id] ?? 0) == 0
            let gram = recent.count >= k - 1 ? Self.hashGram(recent.suffix(k - 1), id) : nil
            let ngNew = k == 1 ? uniNew : (gram.map { (ngramCounts[$0] ?? 0) == 0 } ?? true)
            s.novelty = 0.5 * (uniNew ? 1 : 0) + 0.5 * (ngNew ? 1 : 0)
            s.attention = attn[t]
            s.position = 1 / (1 + Double(position) / 32)
            s.response = resp[t]
            var num = 0.0, den = 0.0
            func add(_ v: Double?, _ wt: Double) { if let v, wt != 0 { num += wt * v; den += abs(wt) } }
            add(s.entropy, w.entropy); add(s.novelty, w.novelty); add(s.attention, w.attention)
            add(s.position, w.position); add(s.response, w.response)
            out.append((den > 0 ? max(0, min(1, num / den)) : 0, s))
            recent.append(id)
            unigramCounts[id, default: 0] += 1
            if let g = gram { ngramCounts[g, default: 0] += 1 }
            let win = config.noveltyWindow
            if recent.count > win {
                // Drop the token leaving the window and the n-gram ending at it.
                let leaving = recent.count - 1 - win
                let old = recent[leaving]
                if let c = unigramCounts[old] { unigramCounts[old] = c > 1 ? c - 1 : nil }
                if k > 1, leaving >= k - 1 {
                    let og = Self.hashGram(recent[(leaving - k + 1)..<leaving], old)
                    if let c = ngramCounts[og] { ngramCounts[og] = c > 1 ? c - 1 : nil }
                }
                if recent.count > 4 * win + 64 { recent.removeFirst(recent.count - win - 64) }
            }
            position += 1
        }
        lastEntropy = nil
        return out
    }

    static func hashGram<S: Sequence>(_ prefix: S, _ last: Int) -> UInt64 where S.Element == Int {
        var h: UInt64 = 0xcbf2_9ce4_8422_2325
        for v in prefix { h = (h ^ UInt64(bitPattern: Int64(v))) &* 0x100_0000_01b3 }
        return (h ^ UInt64(bitPattern: Int64(last))) &* 0x100_0000_01b3
    }

    /// Layer-0 attention entropy per token (base weights, RoPE, windowed keys).
    func attentionEntropy(_ xb: UnsafeMutablePointer<Float>, n: Int, into out: inout [Double?], pool: ThreadPool) {
        let c = model.config
        let lw = model.weights.layers[0]
        let q = UnsafeMutablePointer<Float>.allocate(capacity: n * c.qDim)
        let k = UnsafeMutablePointer<Float>.allocate(capacity: n * c.kvDim)
        defer { q.deallocate(); k.deallocate() }
        // exact precision: a prompt planned in one call and token by token gets the same plans (tested)
        Kernels.matmul(lw.wq, xb, tokens: n, q, precision: .exact, pool: pool)
        Kernels.matmul(lw.wk, xb, tokens: n, k, precision: .exact, pool: pool)
        // RoPE as the model applies it (its tables, the kernels' rotation).
        let hd = c.headDim, half = hd / 2
        if let b = lw.bq { for t in 0..<n { for i in 0..<c.qDim { q[t * c.qDim + i] += b[i] } } }
        if let b = lw.bk { for t in 0..<n { for i in 0..<c.kvDim { k[t * c.kvDim + i] += b[i] } } }
        let cosT = UnsafeMutablePointer<Float>.allocate(capacity: n * half), sinT = UnsafeMutablePointer<Float>.allocate(capacity: n * half)
        defer { cosT.deallocate(); sinT.deallocate() }
        model.ropeTables(start: position, count: n, cos: cosT, sin: sinT)
        let inter = c.ropeStyle == .interleaved
        VectorOps.rope(q, tokens: n, heads: c.heads, headDim: hd, cos: cosT, sin: sinT, interleaved: inter)
        VectorOps.rope(k, tokens: n, heads: c.kvHeads, headDim: hd, cos: cosT, sin: sinT, interleaved: inter)
        // The keys a token sees: the buffer's (earlier calls, oldest first) then this call's, one
        // contiguous run, so that every token's window is a slice and the tokens run in parallel
        // (each one computed whole by one thread: the result does not depend on the pool).
        let W = Self.attentionWindow, kv = c.kvDim
        let prev = min(keyCount, W)
        if (keyRows + n) * kv > keyBuffer.count {
            // Keep the last `prev` rows at the front; grow when they and this call's do not fit.
            let from = keyRows - prev
            if from > 0 {
                keyBuffer.withUnsafeMutableBufferPointer { kb in
                    guard let base = kb.baseAddress else { return }
                    // (the two ranges may overlap: copyMemory is a memmove)
                    UnsafeMutableRawPointer(base).copyMemory(from: base + from * kv, byteCount: prev * kv * MemoryLayout<Float>.stride)
                }
            }
            keyRows = prev
            if (prev + n) * kv > keyBuffer.count {
                keyBuffer.append(contentsOf: repeatElement(0, count: max(prev + n, 2 * W) * kv - keyBuffer.count))
            }
        }
        let scale = 1 / Float(hd).squareRoot()
        let result = UnsafeMutablePointer<Double>.allocate(capacity: n)
        defer { result.deallocate() }
        let start0 = keyRows - prev
        keyBuffer.withUnsafeMutableBufferPointer { kb in
            guard let buf = kb.baseAddress else { return }
            (buf + keyRows * kv).update(from: k, count: n * kv)
            let keys = buf + start0 * kv
            pool.parallelFor(n) { lo, hi in
                let scores = UnsafeMutablePointer<Float>.allocate(capacity: W * max(1, c.heads / c.kvHeads))
                defer { scores.deallocate() }
                for t in lo..<hi {
                    // Per head: scores q·k/√d over the window, entropy of their softmax ÷ log(nk)
                    // (the kernels' vector exp), averaged over heads — one C call per token.
                    let end = prev + t + 1, start = max(0, end - W), nk = end - start
                    result[t] = VectorOps.attentionEntropy(query: q + t * c.qDim, keys: keys + start * kv, keyStride: kv, keyCount: nk,
                                                           heads: c.heads, kvHeads: c.kvHeads, headDim: hd, scale: scale, scratch: scores)
                }
            }
        }
        keyRows += n
        for t in 0..<n { out[t] = result[t] }
        keyCount += n
    }

    /// ‖S·Vᵀx‖ / (σ_max ‖x‖) for the given module.
    func response(_ m: LadderModule, _ xb: UnsafeMutablePointer<Float>, n: Int, into out: inout [Double?], pool: ThreadPool) {
        guard m.inFeatures == model.config.hiddenSize, let smax = m.singularValues.first, smax > 0 else { return }
        var acc = [Double](repeating: 0, count: n)
        let r = m.rank
        let u = UnsafeMutablePointer<Float>.allocate(capacity: n * r)
        defer { u.deallocate() }
        LowRank.down(m.vtFactor, rows: 0..<r, x: xb, ldx: m.inFeatures, tokens: n, u: u, ldu: r, pool: pool)
        for t in 0..<n {
            for j in 0..<r {
                let v = Double(u[t * r + j]) * m.singularValues[j]
                acc[t] += v * v
            }
        }
        for t in 0..<n {
            let x = Double(VectorOps.dot(xb + t * m.inFeatures, xb + t * m.inFeatures, n: m.inFeatures)).squareRoot()
            out[t] = x > 0 ? max(0, min(1, acc[t].squareRoot() / (smax * x))) : 0
        }
    }
}
