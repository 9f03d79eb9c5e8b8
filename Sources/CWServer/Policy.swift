import CWKernels
import CWLoRA
import CWScheduler
import CWTransformer
import Foundation

/// A ChunkWise rank policy named in a request (`"chunkwise": {"policy": "balanced"}`).
///
/// Names are validated against the presets the scheduler will ship: `static` (always the full
/// rank), `static:K` (always rank K), `balanced`, `aggressive` and `quality`.
public enum ChunkWisePolicy: Sendable, Equatable, CustomStringConvertible {
    case staticFull
    case staticRank(Int)
    case balanced, aggressive, quality

    /// Parses a policy name; nil when it is not one of the presets.
    public init?(name: String) {
        switch name {
        case "static": self = .staticFull
        case "balanced": self = .balanced
        case "aggressive": self = .aggressive
        case "quality": self = .quality
        default:
            guard name.hasPrefix("static:"), let k = Int(name.dropFirst("static:".count)), k >= 1 else { return nil }
            self = .staticRank(k)
        }
    }

    public var description: String {
        switch self {
        case .staticFull: return "static"
        case .staticRank(let k): return "static:\(k)"
        case .balanced: return "balanced"
        case .aggressive: return "aggressive"
        case .quality: return "quality"
        }
    }
}

/// Turns a request's policy and its bound adapter delta into the delta a sequence runs with.
///
/// This is the one place the ChunkWise scheduler (`CWScheduler`, branch `scheduler`) will plug
/// in: today only `static` (the adapters at their full rank) is available and every other preset
/// answers 400 "policy not available yet" — there is no silent fallback.
public typealias PolicyResolver = @Sendable (_ policy: ChunkWisePolicy, _ delta: BoundDelta?) throws(APIError) -> BoundDelta?

public enum PolicyResolvers {
    /// The ChunkWise scheduler per request: `static` keeps the bound `LoRAStack`; every other
    /// preset gets a fresh `ChunkWiseDelta` (its own plan and estimator state) over a rank
    /// ladder built once per adapter version (content hash) and shared between requests.
    /// Merged-floor configs are refused: a batch shares one set of base weights.
    public static let current: PolicyResolver = scheduler()

    public static func scheduler() -> PolicyResolver {
        let ladders = LadderCache()
        return { (policy: ChunkWisePolicy, delta: BoundDelta?) throws(APIError) -> BoundDelta? in
            if case .staticFull = policy { return delta }
            guard let delta, let stack = delta.delta as? LoRAStack, stack.bindings.count == 1, let binding = stack.bindings.first else {
                throw APIError.badRequest("chunkwise policy '\(policy)' schedules exactly one adapter: name it in 'model' (or one 'lora' entry)",
                                          param: "chunkwise.policy", code: "policy_needs_one_adapter")
            }
            guard binding.weight == 1, stack.scale == 1 else {
                throw APIError.badRequest("chunkwise policy '\(policy)' sets the adapter scale per chunk; drop the lora scale",
                                          param: "lora", code: "policy_with_scale")
            }
            do {
                let adapter = binding.adapter
                let maxRank = adapter.modules.map(\.rank).max() ?? 0
                let config = try SchedulerConfig.resolve(policy: policy.description, configFile: nil, maxRank: maxRank)
                guard config.mergedFloor == 0 else {
                    throw SchedulerError("merged-floor policies are not served (a batch shares one set of base weights)")
                }
                let ladder = try ladders.ladder(for: adapter, model: stack.model, storage: stack.storage)
                let cw = try ChunkWiseDelta(model: stack.model, adapter: adapter, config: config, ladder: ladder, storage: stack.storage)
                return BoundDelta(delta: cw, adapterNames: delta.adapterNames)
            } catch {
                throw APIError.badRequest("chunkwise policy '\(policy)': \(error)", param: "chunkwise.policy", code: "policy_failed")
            }
        }
    }

    /// Only `static`, as before the scheduler was wired (kept for tests of the plain path).
    public static let staticOnly: PolicyResolver = { (policy: ChunkWisePolicy, delta: BoundDelta?) throws(APIError) -> BoundDelta? in
        switch policy {
        case .staticFull: return delta
        case .staticRank, .balanced, .aggressive, .quality:
            throw APIError.badRequest("chunkwise policy '\(policy)' is not available yet (only 'static' is)", param: "chunkwise.policy",
                                      code: "policy_not_available")
        }
    }
}


/// Rank ladders by adapter content hash: the SVD runs once per adapter version.
final class LadderCache: @unchecked Sendable {
    private let lock = NSLock()
    private var ladders: [String: RankLadder] = [:]

    /// The ladder of `adapter` for `model`, with factors stored as `storage` (built and converted
    /// once per adapter content and storage, then shared by every request).
    func ladder(for adapter: LoRAAdapter, model: LlamaModel, storage: LowRankFactor.Storage = .f32) throws -> RankLadder {
        lock.lock()
        defer { lock.unlock() }
        let key = "\(adapter.contentHash)/\(storage.rawValue)"
        if let l = ladders[key] { return l }
        let maxRank = adapter.modules.map(\.rank).max() ?? 0
        let l = try RankLadder.build(adapter: adapter, model: model, tierRanks: RankLadder.defaultTiers(maxRank: maxRank)).converted(to: storage)
        ladders[key] = l
        return l
    }
}
