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
    /// Token ids to take the prompt, the decode-depth fill and the batched test's fills from instead of
    /// random tokens, cycled when shorter than needed — real text makes the scheduler's decisions realistic.
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

/// One repetition of `chunkwise bench`: prefill, decode and (with a batch) batched decode.
public struct BenchmarkSample: Sendable, Codable, Equatable {
    public var prefill_tok_s: Double
    public var ttft_ms: Double
    public var decode_tok_s: Double
    public var batch_decode_tok_s: Double?
    public var memory: MemoryBreakdown
}

extension Engine {
    /// Prefill and decode speed on random tokens (or `textTokens`), after one warm-up run,
    /// `repetitions` times.
    public func benchmark(_ cfg: BenchmarkConfig, progress: (@Sendable (String) -> Void)? = nil) throws -> BenchmarkReport {
        _ = try benchmarkRepetition(cfg, repetition: 0)  // (checks cfg first)
        var samples: [BenchmarkSample] = []
        for rep in 1...cfg.repetitions {
            let s = try benchmarkRepetition(cfg, repetition: rep)
            samples.append(s)
            progress?("repetition \(rep)/\(cfg.repetitions): pp \(String(format: "%.1f", s.prefill_tok_s)) tok/s, tg \(String(format: "%.1f", s.decode_tok_s)) tok/s")
        }
        return benchmarkReport(cfg, samples)
    }

    /// The decode depth and the cache room a benchmark needs; throws on a bad config.
    func checkBenchmark(_ cfg: BenchmarkConfig) throws {
        guard cfg.promptTokens >= 1, cfg.genTokens >= 1, cfg.repetitions >= 1 else {
            throw EngineError.invalidParameter("prompt tokens, gen tokens and repetitions must each be at least 1")
        }
        let depth = cfg.decodeDepth ?? cfg.promptTokens
        let needed = max(cfg.promptTokens, depth) + cfg.genTokens
        guard needed <= contextLength else { throw InferenceError.contextOverflow(needed: needed, limit: contextLength) }
        if let t = cfg.textTokens, t.isEmpty { throw EngineError.invalidParameter("the prompt text has no tokens") }
        guard cfg.batch >= 1 else { throw EngineError.invalidParameter("batch must be at least 1") }
        if cfg.batch > 1, scheduler != nil {
            throw EngineError.invalidParameter("the batched decode test runs one shared adapter binding (policies static, base, merged); a ChunkWise policy keeps state per sequence")
        }
    }

    /// One repetition (0 = the warm-up: a short prefill and a few decode steps). Its random
    /// tokens depend only on the seed and the repetition, so engines compared side by side see
    /// the same input in each repetition.
    public func benchmarkRepetition(_ cfg: BenchmarkConfig, repetition rep: Int) throws -> BenchmarkSample {
        try checkBenchmark(cfg)
        let model = loaded.model
        let depth = cfg.decodeDepth ?? cfg.promptTokens
        let needed = max(cfg.promptTokens, depth) + cfg.genTokens
        var rng = Xoshiro256(seed: cfg.seed &+ UInt64(rep))
        let vocab = model.config.vocabSize
        func randomTokens(_ n: Int) -> [Int] { (0..<n).map { _ in Int(rng.next() % UInt64(vocab)) } }
        func textPrefix(_ n: Int, from start: Int = 0) -> [Int] {
            guard let t = cfg.textTokens else { return randomTokens(n) }
            return (0..<n).map { t[(start + $0) % t.count] }
        }
        let prompt = textPrefix(cfg.promptTokens)
        let fwd = ForwardOptions(precision: options.precision, pool: pool, logits: .last)
        let warmup = rep == 0
        let cache = makeCache(initialCapacity: needed)
        let t0 = DispatchTime.now().uptimeNanoseconds
        beginSequence()
        var logits = try step(warmup ? Array(prompt.prefix(32)) : prompt, cache: cache, options: fwd)
        var next = Sampler.argmax(logits)
        let t1 = DispatchTime.now().uptimeNanoseconds
        if depth != cache.count {
            // Decode from a given depth: refill the cache with `depth` tokens (untimed).
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
        var batchRate: Double? = nil
        if cfg.batch > 1 {
            // The same decode, `batch` sequences at once (each filled to the depth, untimed; with
            // a prompt text, sequence i takes the text from i·depth on).
            let caches = (0..<cfg.batch).map { _ in makeCache(initialCapacity: depth + steps + 1) }
            var last: [Int] = []
            for (i, c) in caches.enumerated() {
                let fill = textPrefix(max(1, depth), from: i * max(1, depth))
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
            batchRate = Double(steps * cfg.batch) / (Double(b1 - b0) / 1e9)
        }
        return BenchmarkSample(prefill_tok_s: Double(warmup ? min(32, cfg.promptTokens) : cfg.promptTokens) / (Double(t1 - t0) / 1e9),
                               ttft_ms: Double(t1 - t0) / 1e6,
                               decode_tok_s: Double(steps) / (Double(t3 - t2) / 1e9),
                               batch_decode_tok_s: batchRate,
                               memory: memoryBreakdown(cache: cache, tokens: cfg.promptTokens))
    }

    /// Means and standard deviations of measured repetitions.
    public func benchmarkReport(_ cfg: BenchmarkConfig, _ samples: [BenchmarkSample]) -> BenchmarkReport {
        let tgs = Stat(samples.map(\.decode_tok_s)), pp = Stat(samples.map(\.prefill_tok_s)), ttft = Stat(samples.map(\.ttft_ms))
        let btg = Stat(samples.compactMap(\.batch_decode_tok_s))
        func memStat(_ f: (MemoryBreakdown) -> Int) -> (Int, Int) {
            let s = Stat(samples.map { Double(f($0.memory)) })
            return (Int(s.mean.rounded()), Int(s.sd.rounded()))
        }
        let w = memStat { $0.weights_bytes }, a = memStat { $0.adapter_bytes }, k = memStat { $0.kv_bytes }, s = memStat { $0.scratch_bytes }
        return BenchmarkReport(
            model: loaded.name, adapters: adapterNames, precision: options.precision.rawValue, threads: pool.threads,
            kernels: kernelDescription(),
            prompt_tokens: cfg.promptTokens, gen_tokens: cfg.genTokens, decode_depth: cfg.decodeDepth ?? cfg.promptTokens,
            repetitions: samples.count,
            prefill_tok_s: pp.mean, prefill_tok_s_sd: pp.sd,
            decode_tok_s: tgs.mean, decode_tok_s_sd: tgs.sd, decode_ms_per_token: 1000 / max(tgs.mean, 1e-9),
            ttft_ms: ttft.mean, ttft_ms_sd: ttft.sd,
            peak_rss_bytes: ProcessMemory.peakRSS(),
            memory: MemoryBreakdown(weights_bytes: w.0, adapter_bytes: a.0, kv_bytes: k.0, scratch_bytes: s.0),
            memory_sd: MemoryBreakdown(weights_bytes: w.1, adapter_bytes: a.1, kv_bytes: k.1, scratch_bytes: s.1),
            batch: cfg.batch > 1 ? cfg.batch : nil,
            batch_decode_tok_s: cfg.batch > 1 ? btg.mean : nil, batch_decode_tok_s_sd: cfg.batch > 1 ? btg.sd : nil)
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
