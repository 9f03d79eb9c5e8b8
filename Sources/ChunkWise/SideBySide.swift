import Foundation

/// Several engines benchmarked side by side in one process (`chunkwise bench --versus`).
///
/// Speed on a shared or thermally drifting machine moves by more between minutes than the
/// differences worth measuring (a few % between two policies), so separate runs compare badly.
/// Here the engines take turns, one repetition each, in an order that reverses every repetition
/// (A B C, C B A, …: a linear drift weighs on every engine alike), on the same input per
/// repetition; the figure of merit is the ratio of two engines within a repetition, summarised
/// over the repetitions with its median, range, how often one was faster, and a two-sided sign
/// test (is "faster" more often than a coin would say?).
public struct SideBySideReport: Sendable, Codable {
    /// One engine's measurements.
    public struct Entry: Sendable, Codable {
        public var label: String
        public var report: BenchmarkReport
        public var samples: [BenchmarkSample]
    }

    /// Per-repetition ratios of the first engine's rate to another's (> 1: the first is faster).
    public struct Ratio: Sendable, Codable, Equatable {
        public var per_repetition: [Double]
        public var median: Double
        public var min: Double
        public var max: Double
        /// Repetitions in which the first engine was faster.
        public var faster: Int
        /// Two-sided sign-test p-value of `faster` out of the repetitions (ties left out).
        public var sign_test_p: Double
        /// A distribution-free 95% confidence interval of the median ratio (order statistics:
        /// [x₍ₖ₎, x₍ₙ₊₁₋ₖ₎] with the largest k whose coverage is ≥ 95%); nil below 6 repetitions.
        public var median_ci95: [Double]?

        /// (No ratios — nothing measured — reads as no difference: median, min and max 1, p 1.)
        public init(_ ratios: [Double]) {
            per_repetition = ratios
            let s = ratios.sorted()
            median = s.isEmpty ? 1 : (s.count % 2 == 1 ? s[s.count / 2] : (s[s.count / 2 - 1] + s[s.count / 2]) / 2)
            min = s.first ?? 1
            max = s.last ?? 1
            faster = ratios.filter { $0 > 1 }.count
            let ties = ratios.filter { $0 == 1 }.count
            sign_test_p = Self.signTest(wins: faster, losses: ratios.count - faster - ties)
            median_ci95 = Self.medianInterval(s)
        }

        /// [x₍ₖ₎, x₍ₙ₊₁₋ₖ₎] of sorted values, k the largest with 2·P(Bin(n, ½) ≤ k − 1) ≤ 0.05.
        static func medianInterval(_ sorted: [Double]) -> [Double]? {
            let n = sorted.count
            var k = 0, below = 0.0  // below = P(Bin(n, ½) ≤ k − 1) for the next k
            while k < n / 2 {
                let next = below + exp(logChoose(n, k) - Double(n) * log(2.0))
                if 2 * next > 0.05 { break }
                below = next
                k += 1
            }
            return k == 0 ? nil : [sorted[k - 1], sorted[n - k]]
        }

        /// P(a split at least this uneven | wins and losses equally likely), two-sided.
        static func signTest(wins: Int, losses: Int) -> Double {
            let n = wins + losses
            guard n > 0 else { return 1 }
            let k = Swift.min(wins, losses)
            // P(X ≤ k) for X ~ Binomial(n, 1/2), in logs to stay finite for large n.
            var tail = 0.0
            for i in 0...k { tail += exp(logChoose(n, i) - Double(n) * log(2.0)) }
            return Swift.min(1, 2 * tail)
        }

        static func logChoose(_ n: Int, _ k: Int) -> Double {
            lgamma(Double(n + 1)) - lgamma(Double(k + 1)) - lgamma(Double(n - k + 1))
        }
    }

    /// The first engine against one of the others.
    public struct Comparison: Sendable, Codable {
        public var label: String
        public var versus: String
        public var prefill: Ratio
        public var decode: Ratio
        public var batch_decode: Ratio?
    }

    public var entries: [Entry]
    public var comparisons: [Comparison]

    /// Runs `cfg` on every engine: one warm-up each, then `cfg.repetitions` rounds in which each
    /// engine runs one repetition, the order reversing every round.
    public static func run(_ engines: [(label: String, engine: Engine)], _ cfg: BenchmarkConfig,
                           progress: (@Sendable (String) -> Void)? = nil) async throws -> SideBySideReport {
        guard engines.count >= 2 else { throw EngineError.invalidParameter("a side-by-side benchmark needs at least two engines") }
        for (_, e) in engines { try await e.checkBenchmark(cfg) }
        for (_, e) in engines { _ = try await e.benchmarkRepetition(cfg, repetition: 0) }
        var samples = [[BenchmarkSample]](repeating: [], count: engines.count)
        for rep in 1...cfg.repetitions {
            let order = rep % 2 == 1 ? Array(engines.indices) : Array(engines.indices.reversed())
            for i in order {
                try Task.checkCancellation()
                samples[i].append(try await engines[i].engine.benchmarkRepetition(cfg, repetition: rep))
            }
            progress?("repetition \(rep)/\(cfg.repetitions): " + engines.indices.map { i in
                let s = samples[i][rep - 1]
                return "\(engines[i].label) pp \(String(format: "%.1f", s.prefill_tok_s)) tg \(String(format: "%.1f", s.decode_tok_s))"
            }.joined(separator: ", "))
        }
        var entries: [Entry] = []
        for (i, e) in engines.enumerated() {
            entries.append(Entry(label: e.label, report: await e.engine.benchmarkReport(cfg, samples[i]), samples: samples[i]))
        }
        return SideBySideReport(entries: entries)
    }

    /// The comparisons of the first entry with each other one.
    public init(entries: [Entry]) {
        self.entries = entries
        comparisons = []
        guard let first = entries.first else { return }
        for other in entries.dropFirst() {
            func ratio(_ f: (BenchmarkSample) -> Double?) -> Ratio? {
                var r: [Double] = []
                for (a, b) in zip(first.samples, other.samples) {
                    guard let x = f(a), let y = f(b), y > 0 else { return nil }
                    r.append(x / y)
                }
                return Ratio(r)
            }
            comparisons.append(Comparison(label: first.label, versus: other.label,
                                          prefill: ratio { $0.prefill_tok_s } ?? Ratio([]),
                                          decode: ratio { $0.decode_tok_s } ?? Ratio([]),
                                          batch_decode: ratio { $0.batch_decode_tok_s }))
        }
    }
}
