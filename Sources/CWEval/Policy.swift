import ChunkWise
import CWLoRA
import Foundation

/// What the scheduler reports about the ranks it chose.
public struct PolicyStatistics: Sendable, Codable, Equatable {
    /// Mean adapter rank applied per token.
    public var averageRank: Double
    /// Share of tokens (0…1) per ladder rank (0 = base model).
    public var rankShares: [Int: Double]

    public init(averageRank: Double, rankShares: [Int: Double]) {
        self.averageRank = averageRank; self.rankShares = rankShares
    }

    /// From the scheduler's per-rank token counts.
    public init(averageRank: Double, tokensPerRank: [Int: Int]) {
        let total = Double(max(tokensPerRank.values.reduce(0, +), 1))
        self.init(averageRank: averageRank, rankShares: tokensPerRank.mapValues { Double($0) / total })
    }
}

/// Runs one scheduler policy: builds its engine and reports its rank statistics.
///
/// The report only talks to this protocol, so the scheduler's statistics plug in when it lands.
public protocol PolicyRunner: Sendable {
    /// The policy string (`base`, `static`, `static:K`, `balanced`, `aggressive`, `quality`, `merged`, …).
    var policy: String { get }
    /// The engine that runs this policy. Throws ``EvalError/unsupportedPolicy(_:)`` when this
    /// build cannot run it.
    func makeEngine() async throws -> Engine
    /// Rank statistics of the work run on `engine` since it was made (nil = not available).
    func statistics(engine: Engine) async -> PolicyStatistics?
}

/// A ``PolicyRunner`` that maps the policy string to `EngineOptions` through a closure.
public struct EnginePolicyRunner: PolicyRunner {
    /// Turns a policy string and the shared options (model settings, `--adapter`s) into the
    /// options of the engine that runs it. Once the scheduler is wired into `EngineOptions`,
    /// pass a closure that sets its `policy` field.
    public typealias Configure = @Sendable (_ policy: String, _ base: EngineOptions) throws -> EngineOptions
    /// Reads the scheduler's statistics from an engine (nil when there are none).
    public typealias Statistics = @Sendable (_ policy: String, _ engine: Engine) async -> PolicyStatistics?

    public let policy: String
    public let model: LoadedModel
    public let baseOptions: EngineOptions
    public let configure: Configure
    public let readStatistics: Statistics

    public init(policy: String, model: LoadedModel, baseOptions: EngineOptions,
                configure: @escaping Configure = EnginePolicyRunner.configureWithoutScheduler,
                statistics: @escaping Statistics = EnginePolicyRunner.fixedRankStatistics) {
        self.policy = policy; self.model = model; self.baseOptions = baseOptions
        self.configure = configure; self.readStatistics = statistics
    }

    public func makeEngine() async throws -> Engine {
        try Engine(model: model, options: try configure(policy, baseOptions))
    }

    public func statistics(engine: Engine) async -> PolicyStatistics? { await readStatistics(policy, engine) }

    /// What this build can run without the scheduler: `base` (no adapter), `static` (the
    /// adapters unmerged at full rank) and `merged` (merged into the weights). Every other policy
    /// throws ``EvalError/unsupportedPolicy(_:)``.
    public static let configureWithoutScheduler: Configure = { policy, base in
        var o = base
        switch policy {
        case "base":
            o.adapters = []
        case "static":
            guard !o.adapters.isEmpty else { throw EvalError.invalidInput("policy static needs --adapter") }
            o.mergeAdapters = false
        case "merged":
            guard !o.adapters.isEmpty else { throw EvalError.invalidInput("policy merged needs --adapter") }
            o.mergeAdapters = true
        default:
            throw EvalError.unsupportedPolicy("policy \(policy) needs the ChunkWise scheduler, which this build does not wire into EngineOptions")
        }
        return o
    }

    /// Statistics that are facts without a scheduler: `base` runs every token at rank 0;
    /// `static` and `merged` at the adapter's full rank. Adaptive policies: nil (n/a).
    public static let fixedRankStatistics: Statistics = { policy, engine in
        switch policy {
        case "base":
            return PolicyStatistics(averageRank: 0, rankShares: [0: 1])
        case "static", "merged":
            guard let r = adapterRank(await engine.options.adapters) else { return nil }
            return PolicyStatistics(averageRank: Double(r), rankShares: [r: 1])
        default:
            return nil
        }
    }

    /// The largest module rank of the adapters (nil if they cannot be read).
    public static func adapterRank(_ specs: [AdapterSpec]) -> Int? {
        var best: Int? = nil
        for s in specs {
            guard let a = try? LoRAAdapter.load(path: s.path) else { return nil }
            let r = a.rank ?? a.modules.map(\.rank).max() ?? 0
            best = max(best ?? 0, r)
        }
        return best
    }
}

/// The policies of the paper's table.
public enum Policies {
    public static let defaultList = ["base", "static", "static:2", "static:4", "static:8", "balanced", "aggressive"]

    /// Parses a comma-separated list; rejects empty and malformed entries.
    public static func parse(_ s: String) throws -> [String] {
        let items = s.split(separator: ",", omittingEmptySubsequences: false).map { PyText.strip(String($0)) }
        var out: [String] = []
        for p in items {
            guard !p.isEmpty else { throw EvalError.invalidInput("empty policy in \"\(s)\"") }
            if p.hasPrefix("static:") {
                guard let k = Int(p.dropFirst(7)), k >= 0 else { throw EvalError.invalidInput("static:K needs a rank K ≥ 0, got \(p)") }
            }
            if !out.contains(p) { out.append(p) }
        }
        return out
    }

    /// The K of `static:K` (nil for other policies).
    public static func staticRank(_ p: String) -> Int? {
        p.hasPrefix("static:") ? Int(p.dropFirst(7)) : nil
    }
}
