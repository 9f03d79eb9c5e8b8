import CWKernels
import CWTransformer
import Foundation

/// Bytes held by each part of a running model.
public struct MemoryBreakdown: Sendable, Codable, Equatable {
    /// Weights in their storage encodings (memory-mapped; pages are shared with the page cache).
    public var weights_bytes: Int
    /// Adapter tensors (and any merged copies of base matrices).
    public var adapter_bytes: Int
    /// KV cache allocated for the sequence.
    public var kv_bytes: Int
    /// Activations, logits and other per-step buffers.
    public var scratch_bytes: Int
    public var total_bytes: Int { weights_bytes + adapter_bytes + kv_bytes + scratch_bytes }

    public init(weights_bytes: Int, adapter_bytes: Int, kv_bytes: Int, scratch_bytes: Int) {
        self.weights_bytes = weights_bytes
        self.adapter_bytes = adapter_bytes
        self.kv_bytes = kv_bytes
        self.scratch_bytes = scratch_bytes
    }

    enum CodingKeys: String, CodingKey { case weights_bytes, adapter_bytes, kv_bytes, scratch_bytes, total_bytes }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(weights_bytes, forKey: .weights_bytes)
        try c.encode(adapter_bytes, forKey: .adapter_bytes)
        try c.encode(kv_bytes, forKey: .kv_bytes)
        try c.encode(scratch_bytes, forKey: .scratch_bytes)
        try c.encode(total_bytes, forKey: .total_bytes)
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        weights_bytes = try c.decode(Int.self, forKey: .weights_bytes)
        adapter_bytes = try c.decode(Int.self, forKey: .adapter_bytes)
        kv_bytes = try c.decode(Int.self, forKey: .kv_bytes)
        scratch_bytes = try c.decode(Int.self, forKey: .scratch_bytes)
    }
}

/// Mean and standard deviation of repeated measurements.
public struct Stat: Sendable, Codable, Equatable {
    public var mean: Double
    public var sd: Double

    public init(_ xs: [Double]) {
        let n = Double(max(xs.count, 1))
        let m = xs.reduce(0, +) / n
        mean = m
        sd = xs.count > 1 ? (xs.map { ($0 - m) * ($0 - m) }.reduce(0, +) / (n - 1)).squareRoot() : 0
    }
}

/// What `chunkwise bench` measures.
public struct BenchmarkConfig: Sendable {
    public var promptTokens = 512
    public var genTokens = 128
    public var repetitions = 5
    /// Context already in the cache when decoding starts: nil = right after the prompt
    /// (depth = promptTokens); 0 = a fresh context, like llama-bench's tg test.
    public var decodeDepth: Int? = nil
    public var seed: UInt64 = 1
    /// Sequences decoding together (continuous batching): > 1 adds a batched decode test — that
    /// many sequences, each at the decode depth, one `forward(batch:)` per step.
    public var batch = 1
    /// Token ids to take the prompt (and the decode-depth fill) from instead of random tokens,
    /// cycled when shorter than needed — real text makes the scheduler's decisions realistic.
    public var textTokens: [Int]? = nil

    public init(promptTokens: Int = 512, genTokens: Int = 128, repetitions: Int = 5, decodeDepth: Int? = nil, seed: UInt64 = 1, batch: Int = 1) {
        self.batch = batch
        self.promptTokens = promptTokens
        self.genTokens = genTokens
        self.repetitions = repetitions
        self.decodeDepth = decodeDepth
        self.seed = seed
    }
}

public struct BenchmarkReport: Sendable, Codable {
    public var model: String
    public var adapters: [String]
    public var precision: String
    public var threads: Int
    public var kernels: String
    public var prompt_tokens: Int
    public var gen_tokens: Int
    public var decode_depth: Int
    public var repetitions: Int
    public var prefill_tok_s: Double
    public var prefill_tok_s_sd: Double
    public var decode_tok_s: Double
    public var decode_tok_s_sd: Double
    public var decode_ms_per_token: Double
    public var ttft_ms: Double
    public var ttft_ms_sd: Double
    public var peak_rss_bytes: Int
    public var memory: MemoryBreakdown
    public var memory_sd: MemoryBreakdown
    /// Sequences in the batched decode test (absent when 1).
    public var batch: Int?
    /// Aggregate decode tokens/s of `batch` sequences stepping together (mean, sd).
    public var batch_decode_tok_s: Double?
    public var batch_decode_tok_s_sd: Double?
}

/// Resident-set figures of this process (Linux /proc; getrusage elsewhere).
public enum ProcessMemory {
    /// Peak resident set size in bytes.
    public static func peakRSS() -> Int {
        if let kb = procStatusValue("VmHWM") { return kb * 1024 }
        var u = rusage()
        getrusage(0, &u) // RUSAGE_SELF
        #if os(Linux)
        return Int(u.ru_maxrss) * 1024
        #else
        return Int(u.ru_maxrss)
        #endif
    }

    /// Current resident set size in bytes.
    public static func currentRSS() -> Int { (procStatusValue("VmRSS") ?? 0) * 1024 }

    static func procStatusValue(_ key: String) -> Int? {
        guard let s = try? String(contentsOfFile: "/proc/self/status", encoding: .utf8) else { return nil }
        for line in s.split(separator: "\n") where line.hasPrefix(key + ":") {
            let digits = line.split(separator: " ").compactMap { Int($0) }
            return digits.first
        }
        return nil
    }
}

extension Engine {
    /// Prefill and decode speed on random tokens, after one warm-up run, `repetitions` times.
    public func benchmark(_ cfg: BenchmarkConfig, progress: (@Sendable (String) -> Void)? = nil) throws -> BenchmarkReport {
        guard cfg.promptTokens >= 1, cfg.genTokens >= 1, cfg.repetitions >= 1 else {
            throw EngineError.invalidParameter("prompt tokens, gen tokens and repetitions must each be at least 1")
        }
        let model = loaded.model
        let depth = cfg.decodeDepth ?? cfg.promptTokens
        let needed = max(cfg.promptTokens, depth) + cfg.genTokens
        guard needed <= contextLength else { throw InferenceError.contextOverflow(needed: needed, limit: contextLength) }
        var rng = Xoshiro256(seed: cfg.seed)
        let vocab = model.config.vocabSize
        func randomTokens(_ n: Int) -> [Int] { (0..<n).map { _ in Int(rng.next() % UInt64(vocab)) } }
        if let t = cfg.textTokens, t.isEmpty { throw EngineError.invalidParameter("the prompt text has no tokens") }
        func textPrefix(_ n: Int) -> [Int] {
            guard let t = cfg.textTokens else { return randomTokens(n) }
            return (0..<n).map { t[$0 % t.count] }
        }
        let prompt = textPrefix(cfg.promptTokens)
        let fwd = ForwardOptions(precision: options.precision, pool: pool, logits: .last)

        guard cfg.batch >= 1 else { throw EngineError.invalidParameter("batch must be at least 1") }
        if cfg.batch > 1, scheduler != nil {
            throw EngineError.invalidParameter("the batched decode test runs one shared adapter binding (policies static, base, merged); a ChunkWise policy keeps state per sequence")
        }
        var pp: [Double] = [], tg: [Double] = [], ttft: [Double] = [], mem: [MemoryBreakdown] = [], btg: [Double] = []
        for rep in 0...cfg.repetitions {
            let warmup = rep == 0
            let cache = makeCache(initialCapacity: needed)
            let t0 = DispatchTime.now().uptimeNanoseconds
            beginSequence()
            var logits = try step(warmup ? Array(prompt.prefix(32)) : prompt, cache: cache, options: fwd)
            var next = Sampler.argmax(logits)
            let t1 = DispatchTime.now().uptimeNanoseconds
            if depth != cache.count {
                // Decode from a given depth: refill the cache with `depth` random tokens (untimed).
                cache.truncate(to: 0)
                beginSequence()
                if depth > 0 { _ = try step(textPrefix(depth), cache: cache, options: ForwardOptions(precision: options.precision, pool: pool, logits: .none)) }
            }
            // (the warm-up decodes a few tokens, never more than the measured runs reserve room for)
            let steps = warmup ? min(4, cfg.genTokens) : cfg.genTokens
            let t2 = DispatchTime.now().uptimeNanoseconds
            for _ in 0..<steps {
                logits = try step([next], cache: cache, options: fwd)
                next = Sampler.argmax(logits)
            }
            let t3 = DispatchTime.now().uptimeNanoseconds
            if cfg.batch > 1 {
                // The same decode, `batch` sequences at once (each filled to the depth, untimed).
                let caches = (0..<cfg.batch).map { _ in makeCache(initialCapacity: depth + steps + 1) }
                var last: [Int] = []
                for c in caches {
                    let fill = randomTokens(max(1, depth))
                    _ = try loaded.model.forward(fill, cache: c, options: ForwardOptions(precision: options.precision, pool: pool, logits: .none), delta: delta)
                    last.append(fill[fill.count - 1])
                }
                let b0 = DispatchTime.now().uptimeNanoseconds
                for _ in 0..<steps {
                    let items = zip(last, caches).map { LlamaModel.BatchItem(tokens: [$0], cache: $1, delta: delta, logits: .last) }
                    let outs = try loaded.model.forward(batch: items, options: fwd)
                    last = outs.map { Sampler.argmax($0) }
                }
                let b1 = DispatchTime.now().uptimeNanoseconds
                if !warmup { btg.append(Double(steps * cfg.batch) / (Double(b1 - b0) / 1e9)) }
            }
            if warmup { continue }
            pp.append(Double(cfg.promptTokens) / (Double(t1 - t0) / 1e9))
            ttft.append(Double(t1 - t0) / 1e6)
            tg.append(Double(steps) / (Double(t3 - t2) / 1e9))
            mem.append(memoryBreakdown(cache: cache, tokens: cfg.promptTokens))
            progress?("repetition \(rep)/\(cfg.repetitions): pp \(String(format: "%.1f", pp.last!)) tok/s, tg \(String(format: "%.1f", tg.last!)) tok/s")
        }
        let tgs = Stat(tg)
        func memStat(_ f: (MemoryBreakdown) -> Int) -> (Int, Int) {
            let s = Stat(mem.map { Double(f($0)) })
            return (Int(s.mean.rounded()), Int(s.sd.rounded()))
        }
        let w = memStat { $0.weights_bytes }, a = memStat { $0.adapter_bytes }, k = memStat { $0.kv_bytes }, s = memStat { $0.scratch_bytes }
        return BenchmarkReport(
            model: loaded.name, adapters: adapterNames, precision: options.precision.rawValue, threads: pool.threads,
            kernels: kernelDescription(),
            prompt_tokens: cfg.promptTokens, gen_tokens: cfg.genTokens, decode_depth: depth, repetitions: cfg.repetitions,
            prefill_tok_s: Stat(pp).mean, prefill_tok_s_sd: Stat(pp).sd,
            decode_tok_s: tgs.mean, decode_tok_s_sd: tgs.sd, decode_ms_per_token: 1000 / max(tgs.mean, 1e-9),
            ttft_ms: Stat(ttft).mean, ttft_ms_sd: Stat(ttft).sd,
            peak_rss_bytes: ProcessMemory.peakRSS(),
            memory: MemoryBreakdown(weights_bytes: w.0, adapter_bytes: a.0, kv_bytes: k.0, scratch_bytes: s.0),
            memory_sd: MemoryBreakdown(weights_bytes: w.1, adapter_bytes: a.1, kv_bytes: k.1, scratch_bytes: s.1),
            batch: cfg.batch > 1 ? cfg.batch : nil,
            batch_decode_tok_s: cfg.batch > 1 ? Stat(btg).mean : nil, batch_decode_tok_s_sd: cfg.batch > 1 ? Stat(btg).sd : nil)
    }

    /// The bytes held while running a sequence in `cache` (prefill of `tokens` tokens).
    public func memoryBreakdown(cache: KVCache, tokens: Int) -> MemoryBreakdown {
        let model = loaded.model
        let scratch = model.scratchByteCount(tokens: tokens) + model.config.vocabSize * MemoryLayout<Float>.size
        return MemoryBreakdown(weights_bytes: model.weights.byteCount, adapter_bytes: adapterByteCount,
                               kv_bytes: cache.byteCount, scratch_bytes: scratch)
    }
}


/// The kernel path and CPU features in use, for reports.
func kernelDescription() -> String { CPUFeatures.current }
