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
    /// The resolver used until the scheduler lands.
    public static let current: PolicyResolver = { (policy: ChunkWisePolicy, delta: BoundDelta?) throws(APIError) -> BoundDelta? in
        switch policy {
        case .staticFull: return delta
        case .staticRank, .balanced, .aggressive, .quality:
            throw APIError.badRequest("chunkwise policy '\(policy)' is not available yet (only 'static' is)", param: "chunkwise.policy",
                                      code: "policy_not_available")
        }
    }
}
