/// Storage formats of cached keys and values.
public enum KVFormat: Int32, Sendable, CaseIterable, CustomStringConvertible {
    /// 4 bytes per element; exact.
    case fp32 = 0
    /// 2 bytes per element (IEEE half, round to nearest even).
    case fp16 = 1
    /// 1 byte per element plus fp32 scales: keys per channel within a block (`headDim` scales per
    /// head per block), values per token (one scale per head per entry). Symmetric, ±127.
    case int8 = 2

    public var bytesPerElement: Int {
        switch self {
        case .fp32: return 4
        case .fp16: return 2
        case .int8: return 1
        }
    }

    public var description: String {
        switch self {
        case .fp32: return "fp32"
        case .fp16: return "fp16"
        case .int8: return "int8"
        }
    }
}

/// How the KV entries of a range of positions are stored and which of them are kept.
///
/// A policy is chosen per chunk of positions (`KVCache.setPolicy(_:forPositionsFrom:)`).
/// `storage` says the format a block takes once it is sealed (full, or closed by a retention or
/// provenance change); until then the block being filled is fp32. A change of storage alone
/// (between keep-all policies, as the ChunkWise presets' per-chunk full/int8) does not close the
/// block: it keeps filling and is sealed in the finer storage of its rows (`Storage.finer`), so a
/// hard chunk's rows are never stored coarser than `.full`, and blocks stay whole — a block cut
/// at every chunk edge leaves short blocks, whose attention costs up to twice as much per row. `retention` says which entries
/// survive; it is applied after every forward pass (`KVCache.advance(to:)`), so the queries of a
/// chunk always see every entry that was retained before the chunk plus the whole chunk.
///
/// "Hard" chunks should use `.full` (the default): exact fp32, never evicted, never degraded by
/// the memory budget. Every other policy is "easy": its sealed blocks may be degraded
/// (fp32 → fp16 → int8) and, when retention allows eviction, shrunk further, when `kvBudget`
/// would otherwise be exceeded.
public struct KVPolicy: Hashable, Sendable, CustomStringConvertible {
    public enum Storage: Hashable, Sendable {
        case fp32
        case fp16
        /// int8 for the listed KV heads (nil: all heads); the other heads stay fp32.
        case int8(heads: [Int]?)

        /// The storage that keeps every head at least as precise as both: fp32 if either is,
        /// fp16 over all-heads int8, int8 on the heads both quantize; otherwise fp32.
        public static func finer(_ a: Storage, _ b: Storage) -> Storage {
            switch (a, b) {
            case _ where a == b: return a
            case (.fp32, _), (_, .fp32): return .fp32
            case (.fp16, .int8(nil)), (.int8(nil), .fp16): return .fp16
            case (.int8(let x), .int8(let y)):
                guard let x else { return .int8(heads: y) }
                guard let y else { return .int8(heads: x) }
                let both = x.filter { y.contains($0) }
                return both.isEmpty ? .fp32 : .int8(heads: both)
            default: return .fp32
            }
        }
    }

    public enum Retention: Hashable, Sendable {
        /// Keep every entry.
        case all
        /// Attention sinks + sliding window (StreamingLLM): keep positions `< sinks` and the last
        /// `recent` positions of the sequence; evict the others. RoPE positions stay absolute
        /// (keys were rotated at their original positions and are not re-rotated).
        case window(sinks: Int, recent: Int)
        /// Heavy hitters (H2O): per layer, among this policy's entries keep at most `budget`:
        /// the last `recent` positions plus the entries with the largest attention mass
        /// accumulated over all query heads and all queries since they were cached.
        case heavyHitters(budget: Int, recent: Int)
        /// Merge an entry into its predecessor in the same block when their keys (all KV heads of
        /// the layer, as one vector) have cosine similarity ≥ `threshold`. The surviving entry keeps
        /// the earlier key and position; its value becomes the mean of the merged values weighted
        /// by how many original positions each already stands for (so a run of m near-duplicates
        /// ends as their plain average). The merged entry gets one softmax slot (no log m bias).
        case dedupe(threshold: Float)
    }

    public var storage: Storage
    public var retention: Retention

    /// Whether rows of `self` and `other` may share a block: both keep every entry (the block then
    /// takes the finer storage of the two). Retention policies keep their own blocks: eviction,
    /// heavy-hitter budgets and merging work per policy.
    func sharesBlocks(with other: KVPolicy) -> Bool { retention == .all && other.retention == .all }

    public init(storage: Storage, retention: Retention = .all) {
        self.storage = storage
        self.retention = retention
    }

    /// Exact fp32, every entry kept: bit-identical to a plain fp32 cache.
    public static let full = KVPolicy(storage: .fp32)
    /// fp16 storage, every entry kept.
    public static let half = KVPolicy(storage: .fp16)
    /// int8 storage for all KV heads (nil) or the listed ones.
    public static func int8(heads: [Int]? = nil) -> KVPolicy { KVPolicy(storage: .int8(heads: heads)) }
    /// Sinks + recent window, stored as `storage`.
    public static func window(sinks: Int, recent: Int, storage: Storage = .fp32) -> KVPolicy {
        KVPolicy(storage: storage, retention: .window(sinks: max(0, sinks), recent: max(1, recent)))
    }
    /// Heavy hitters within `budget` entries per layer, the last `recent` always kept.
    public static func h2o(budget: Int, recent: Int, storage: Storage = .fp32) -> KVPolicy {
        let b = max(1, budget)
        return KVPolicy(storage: storage, retention: .heavyHitters(budget: b, recent: min(max(0, recent), b)))
    }
    /// Near-duplicate keys merged (cosine ≥ threshold).
    public static func dedupe(threshold: Float, storage: Storage = .fp32) -> KVPolicy {
        KVPolicy(storage: storage, retention: .dedupe(threshold: threshold))
    }

    /// Whether the memory budget may degrade blocks of this policy.
    public var isDegradable: Bool { self != .full }

    /// Format of KV head `head` once a block is sealed.
    func format(head: Int) -> KVFormat {
        switch storage {
        case .fp32: return .fp32
        case .fp16: return .fp16
        case .int8(let heads): return heads.map { $0.contains(head) } ?? true ? .int8 : .fp32
        }
    }

    public var description: String {
        let s: String
        switch storage {
        case .fp32: s = "fp32"
        case .fp16: s = "fp16"
        case .int8(let h): s = h.map { "int8\($0)" } ?? "int8"
        }
        switch retention {
        case .all: return s
        case .window(let a, let b): return "\(s)+window(\(a),\(b))"
        case .heavyHitters(let a, let b): return "\(s)+h2o(\(a),\(b))"
        case .dedupe(let t): return "\(s)+dedupe(\(t))"
        }
    }
}

/// Which weights produced a range of cached keys and values: the adapter (identity + version),
/// its rank and scale. Blocks record it so that a cached prefix is reused only by a request whose
/// positions would have been computed by the same weights (`KVCache.reusablePrefix`).
public struct Provenance: Hashable, Sendable {
    /// Adapter identity ("" for the base model alone).
    public var adapter: String
    public var version: Int
    public var rank: Int
    public var scale: Float

    public init(adapter: String, version: Int, rank: Int, scale: Float) {
        self.adapter = adapter
        self.version = version
        self.rank = rank
        self.scale = scale
    }

    /// The base model, no adapter.
    public static let base = Provenance(adapter: "", version: 0, rank: 0, scale: 0)
}

/// Errors from the KV cache.
public enum KVCacheError: Error, CustomStringConvertible, Equatable {
    /// Appending would exceed `kvBudget` even after degrading and evicting every easy block.
    case overBudget(neededBytes: Int, budgetBytes: Int)
    /// A shape the cache or kernel does not support.
    case unsupportedShape(String)

    public var description: String {
        switch self {
        case .overBudget(let n, let b):
            return "the KV cache needs \(n) bytes but its budget is \(b) bytes, even after degrading and evicting every non-full block (raise kvBudget, shorten the context, or mark fewer chunks full)"
        case .unsupportedShape(let s): return "unsupported KV cache shape: \(s)"
        }
    }
}

extension KVPolicy {
    /// Parses the CLI/config spelling: `full`, `half`, `int8`, `window:SINKS:RECENT`,
    /// `h2o:BUDGET:RECENT`, `dedupe:THRESHOLD`; retention policies may end in `:half` or `:int8`
    /// for their storage. Nil for anything else.
    public init?(parsing s: String) {
        let p = s.split(separator: ":").map(String.init)
        func storage(_ i: Int) -> Storage? {
            guard p.count > i else { return .fp32 }
            switch p[i] { case "full", "fp32": return .fp32; case "half", "fp16": return .fp16; case "int8": return .int8(heads: nil); default: return nil }
        }
        switch p.first {
        case "full": guard p.count == 1 else { return nil }; self = .full
        case "half": guard p.count == 1 else { return nil }; self = .half
        case "int8": guard p.count == 1 else { return nil }; self = .int8()
        case "window":
            guard p.count >= 3, p.count <= 4, let a = Int(p[1]), let b = Int(p[2]), a >= 0, b >= 1, let st = storage(3) else { return nil }
            self = .window(sinks: a, recent: b, storage: st)
        case "h2o":
            guard p.count >= 3, p.count <= 4, let a = Int(p[1]), let b = Int(p[2]), a >= 1, b >= 0, let st = storage(3) else { return nil }
            self = .h2o(budget: a, recent: b, storage: st)
        case "dedupe":
            guard p.count >= 2, p.count <= 3, let t = Float(p[1]), t > 0, t <= 1, let st = storage(2) else { return nil }
            self = .dedupe(threshold: t, storage: st)
        default: return nil
        }
    }
}
