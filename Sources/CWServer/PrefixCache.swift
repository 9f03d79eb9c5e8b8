import CWLoRA
import CWTransformer

/// The server's prompt cache (vLLM's "automatic prefix caching", llama.cpp's `cache_prompt`): the
/// KV blocks that held finished requests' prompts, kept so that a later request whose prompt starts
/// the same way — a shared system prompt, a chat whose earlier turns are resent — with the same
/// adapter binding takes those positions instead of computing them (`KVCache.adoptPrefix`: the
/// block objects are shared, not copied).
///
/// What is kept and reused, and why the output does not change:
/// - Whole blocks of a prompt only (`KVCache.blockSize` positions each), never generated positions:
///   a prompt's keys and values come from a prefill, whose batched kernels give every token the
///   bits a prefill of the whole prompt gives it; decoded positions came from one-token kernels
///   and would not match a prefill of the same text bit for bit.
/// - At least `KVCache.minTokensAfterAdoptedPrefix` (4) prompt tokens are always computed, so the
///   rest of a prompt goes through the same kernels (1–3 tokens take the per-pair ones) and the
///   request's logits are those of a fresh prefill bit for bit (`PrefixReuseTests`, the server's).
/// - Only the base model and plain adapter bindings (`LoRAStack`, the same object: a combination
///   rebuilt after an unload/reload is another key), and only between requests with the same
///   `cache_salt` (none is a salt of its own). ChunkWise policies are not cached: their ranks per
///   position and their estimator's state depend on the whole prefix.
///
/// The cache holds at most `maxBytes` and counts against the server's KV budget: admission evicts
/// entries, least recently used first, before a request would wait for budget; unloading an
/// adapter drops its entries. Owned by the batch scheduler actor.
final class PrefixCache {
    /// What an entry may be shared under: the binding's identity and the requests' salt.
    struct Key: Hashable {
        let binding: ObjectIdentifier?
        let salt: String?
    }

    struct Entry {
        /// Keeps the binding (and so its identity) alive while the entry lives.
        let binding: BoundDelta?
        let key: Key
        let tokens: [Int]
        let cache: KVCache
        let bytes: Int
        var lastUse: UInt64
    }

    let maxBytes: Int
    private(set) var entries: [Entry] = []
    private(set) var bytes = 0
    private var clock: UInt64 = 0

    init(maxBytes: Int) { self.maxBytes = max(0, maxBytes) }

    /// Whether a binding's prompts may be cached (the base model, or a plain `LoRAStack`).
    static func cacheable(_ binding: BoundDelta?) -> Bool {
        binding == nil || binding?.delta is LoRAStack
    }

    /// The key of a request's entries; nil = not cacheable.
    static func key(_ binding: BoundDelta?, salt: String?) -> Key? {
        guard cacheable(binding) else { return nil }
        return Key(binding: binding.map { ObjectIdentifier($0.delta) }, salt: salt)
    }

    /// Starts `cache` (empty) with the longest cached prefix of `prompt` for `binding`; returns the
    /// positions taken (0 when none).
    func reuse(prompt: [Int], binding: BoundDelta?, salt: String?, into cache: KVCache) -> Int {
        guard maxBytes > 0, let key = Self.key(binding, salt: salt), prompt.count > KVCache.minTokensAfterAdoptedPrefix else { return 0 }
        let limit = prompt.count - KVCache.minTokensAfterAdoptedPrefix
        var best = -1, bestLength = 0
        for (i, e) in entries.enumerated() where e.key == key {
            var n = 0
            let m = min(e.tokens.count, limit)
            while n < m && e.tokens[n] == prompt[n] { n += 1 }
            if n > bestLength { best = i; bestLength = n }
        }
        guard best >= 0, bestLength >= cache.blockSize else { return 0 }
        let taken = cache.adoptPrefix(from: entries[best].cache, tokens: prompt, limit: bestLength)
        if taken > 0 {
            clock += 1
            entries[best].lastUse = clock
        }
        return taken
    }

    /// Keeps the whole blocks of a finished sequence's prompt (`cache` holds it and what was
    /// generated after it; it is cut back to the prompt's whole blocks here and must not be used by
    /// the caller afterwards), if they fit in `room` bytes beyond what the cache already holds
    /// (after evicting older entries within `maxBytes`).
    func donate(prompt: [Int], binding: BoundDelta?, salt: String?, cache: KVCache, room: Int) {
        guard maxBytes > 0, let key = Self.key(binding, salt: salt) else { return }
        let n = min(prompt.count, cache.count) / cache.blockSize * cache.blockSize
        guard n > 0 else { return }
        let tokens = Array(prompt.prefix(n))
        // Already held (the same prompt, or a longer one starting with it): just mark it used.
        if let i = entries.firstIndex(where: { $0.key == key && $0.tokens.count >= n && $0.tokens.starts(with: tokens) }) {
            clock += 1
            entries[i].lastUse = clock
            return
        }
        cache.truncate(to: n)
        let size = cache.byteCount
        // An entry this one extends is replaced (its blocks live on in this one).
        entries.removeAll { e in
            guard e.key == key, e.tokens.count < n, tokens.starts(with: e.tokens) else { return false }
            bytes -= e.bytes
            return true
        }
        let limit = min(maxBytes, bytes + max(0, room))
        guard size <= limit else { return }
        while bytes + size > limit, evictOldest() {}
        guard bytes + size <= limit else { return }
        clock += 1
        entries.append(Entry(binding: binding, key: key, tokens: tokens, cache: cache, bytes: size, lastUse: clock))
        bytes += size
    }

    /// Drops the entries whose binding matches.
    func forget(where match: (BoundDelta?) -> Bool) {
        entries.removeAll { e in
            guard match(e.binding) else { return false }
            bytes -= e.bytes
            return true
        }
    }

    /// Drops the least recently used entry; false when there is none.
    @discardableResult
    func evictOldest() -> Bool {
        guard let i = entries.indices.min(by: { entries[$0].lastUse < entries[$1].lastUse }) else { return false }
        bytes -= entries[i].bytes
        entries.remove(at: i)
        return true
    }
}
