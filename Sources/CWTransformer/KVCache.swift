import CWKernels

/// The keys and values of every processed position, per layer, in fp32.
///
/// Rows are `kvDim` floats (all KV heads of one position); storage grows by doubling up to the
/// model's context length, so a short chat does not reserve the whole context.
public final class KVCache {
    public let layers: Int
    public let kvDim: Int
    public let maxCapacity: Int
    public private(set) var capacity: Int
    /// Positions stored (the next token goes at position `count`).
    public private(set) var count: Int = 0
    private var keys: [UnsafeMutablePointer<Float>] = []
    private var values: [UnsafeMutablePointer<Float>] = []

    public init(layers: Int, kvDim: Int, maxCapacity: Int, initialCapacity: Int = 256) {
        self.layers = layers
        self.kvDim = kvDim
        self.maxCapacity = maxCapacity
        self.capacity = max(1, min(initialCapacity, maxCapacity))
        for _ in 0..<layers {
            keys.append(.allocate(capacity: capacity * kvDim))
            values.append(.allocate(capacity: capacity * kvDim))
        }
    }

    deinit {
        for p in keys { p.deallocate() }
        for p in values { p.deallocate() }
    }

    /// Bytes allocated for keys and values.
    public var byteCount: Int { 2 * layers * capacity * kvDim * MemoryLayout<Float>.size }
    /// Bytes holding stored positions.
    public var usedByteCount: Int { 2 * layers * count * kvDim * MemoryLayout<Float>.size }

    /// Makes room for `needed` positions in total. Returns false if that exceeds `maxCapacity`.
    public func reserve(_ needed: Int) -> Bool {
        if needed <= capacity { return true }
        if needed > maxCapacity { return false }
        var newCap = capacity
        while newCap < needed { newCap *= 2 }
        newCap = min(newCap, maxCapacity)
        for l in 0..<layers {
            for which in 0..<2 {
                let old = which == 0 ? keys[l] : values[l]
                let fresh = UnsafeMutablePointer<Float>.allocate(capacity: newCap * kvDim)
                fresh.update(from: old, count: count * kvDim)
                old.deallocate()
                if which == 0 { keys[l] = fresh } else { values[l] = fresh }
            }
        }
        capacity = newCap
        return true
    }

    @inline(__always) public func keys(layer: Int) -> UnsafeMutablePointer<Float> { keys[layer] }
    @inline(__always) public func values(layer: Int) -> UnsafeMutablePointer<Float> { values[layer] }

    /// Records that positions up to `newCount` are filled.
    public func advance(to newCount: Int) { count = newCount }

    /// Forgets positions from `newCount` on (e.g. to reuse a common prefix).
    public func truncate(to newCount: Int) { count = max(0, min(count, newCount)) }
}
