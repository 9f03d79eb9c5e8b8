import CKernels

/// One block of one layer: up to `rowCapacity` consecutive retained entries (positions ascending).
///
/// Layout: one allocation; for each KV head `h` a region
/// `K rows | V rows | K scales (int8 K: headDim floats) | V scales (int8 V: one float per row)`,
/// rows `headDim` elements each in that head's formats. The block being filled ("staging") is
/// fp32 with `rowCapacity == blockSize`; a sealed block is re-encoded in its policy's formats with
/// exactly as many rows as it holds.
///
/// Bytes counted per block (`byteCount`): the allocation above, plus metadata counted as 4 bytes per
/// row slot for the position table, 4 more per slot for h2o mass or dedupe weights when the policy
/// keeps them, and 8 bytes for its entry in the layer's block table.
final class KVBlock {
    let kvHeads: Int
    let headDim: Int
    let rowCapacity: Int
    /// The policy of its rows; a staging block that takes rows of another storage (same keep-all
    /// retention, `KVCache.append`) holds the finer of the two (`KVPolicy.Storage.finer`).
    private(set) var policy: KVPolicy
    let provenance: Provenance
    private(set) var sealed: Bool
    private(set) var kFormat: [KVFormat]
    private(set) var vFormat: [KVFormat]
    private(set) var raw: UnsafeMutableRawPointer
    private(set) var allocatedBytes: Int
    private var kOff: [Int] = [], vOff: [Int] = [], ksOff: [Int] = [], vsOff: [Int] = []
    /// Absolute positions of the rows (ascending).
    var positions: [Int32] = []
    /// h2o: attention mass per row. dedupe: original positions each row stands for.
    var mass: [Float] = []
    var weight: [Float] = []
    /// dedupe: rows before this one were already compared with their predecessor.
    var dedupeChecked = 0

    var n: Int { positions.count }
    var isFull: Bool { n >= rowCapacity }

    var tracksMass: Bool { if case .heavyHitters = policy.retention { return true }; return false }
    var tracksWeight: Bool { if case .dedupe = policy.retention { return true }; return false }

    init(kvHeads: Int, headDim: Int, rowCapacity: Int, policy: KVPolicy, provenance: Provenance,
         kFormat: [KVFormat], vFormat: [KVFormat], sealed: Bool) {
        self.kvHeads = kvHeads
        self.headDim = headDim
        self.rowCapacity = rowCapacity
        self.policy = policy
        self.provenance = provenance
        self.kFormat = kFormat
        self.vFormat = vFormat
        self.sealed = sealed
        var off = 0
        for h in 0..<kvHeads {
            kOff.append(off); off += rowCapacity * headDim * kFormat[h].bytesPerElement
            vOff.append(off); off += rowCapacity * headDim * vFormat[h].bytesPerElement
            off = (off + 3) & ~3
            ksOff.append(off); if kFormat[h] == .int8 { off += headDim * 4 }
            vsOff.append(off); if vFormat[h] == .int8 { off += rowCapacity * 4 }
        }
        allocatedBytes = off
        raw = .allocate(byteCount: max(off, 1), alignment: 64)
        positions.reserveCapacity(rowCapacity)
    }

    deinit { raw.deallocate() }

    /// A fresh fp32 staging block.
    static func staging(kvHeads: Int, headDim: Int, blockSize: Int, policy: KVPolicy, provenance: Provenance) -> KVBlock {
        KVBlock(kvHeads: kvHeads, headDim: headDim, rowCapacity: blockSize, policy: policy, provenance: provenance,
                kFormat: Array(repeating: .fp32, count: kvHeads), vFormat: Array(repeating: .fp32, count: kvHeads), sealed: false)
    }

    static func metadataBytes(rows: Int, policy: KVPolicy) -> Int {
        var b = rows * 4 + 8
        switch policy.retention {
        case .heavyHitters, .dedupe: b += rows * 4
        default: break
        }
        return b
    }

    /// The block's storage (every head's K and V rows and scales), for prefetching.
    var memory: UnsafeRawBufferPointer { UnsafeRawBufferPointer(start: raw, count: allocatedBytes) }

    /// Bytes counted for this block (storage + metadata).
    var byteCount: Int { allocatedBytes + KVBlock.metadataBytes(rows: rowCapacity, policy: policy) }

    /// Bytes of rows in use (storage of the `n` rows and their scales, plus their metadata).
    var usedByteCount: Int {
        var b = 0
        for h in 0..<kvHeads {
            b += n * headDim * (kFormat[h].bytesPerElement + vFormat[h].bytesPerElement)
            if kFormat[h] == .int8 { b += headDim * 4 }
            if vFormat[h] == .int8 { b += n * 4 }
        }
        return b + KVBlock.metadataBytes(rows: n, policy: policy)
    }

    /// Bytes per format (storage of K and V data only) and of scales.
    func bytesByFormat(into d: inout [KVFormat: Int], scales: inout Int) {
        for h in 0..<kvHeads {
            d[kFormat[h], default: 0] += rowCapacity * headDim * kFormat[h].bytesPerElement
            d[vFormat[h], default: 0] += rowCapacity * headDim * vFormat[h].bytesPerElement
            if kFormat[h] == .int8 { scales += headDim * 4 }
            if vFormat[h] == .int8 { scales += rowCapacity * 4 }
        }
    }

    @inline(__always) func kPtr(_ h: Int) -> UnsafeMutableRawPointer { raw + kOff[h] }
    @inline(__always) func vPtr(_ h: Int) -> UnsafeMutableRawPointer { raw + vOff[h] }
    @inline(__always) func ksPtr(_ h: Int) -> UnsafeMutablePointer<Float> { (raw + ksOff[h]).assumingMemoryBound(to: Float.self) }
    @inline(__always) func vsPtr(_ h: Int) -> UnsafeMutablePointer<Float> { (raw + vsOff[h]).assumingMemoryBound(to: Float.self) }

    func slab(_ h: Int) -> kv_slab {
        kv_slab(k: UnsafeRawPointer(kPtr(h)), v: UnsafeRawPointer(vPtr(h)),
                k_scale: kFormat[h] == .int8 ? UnsafePointer(ksPtr(h)) : nil,
                v_scale: vFormat[h] == .int8 ? UnsafePointer(vsPtr(h)) : nil,
                k_fmt: kFormat[h].rawValue, v_fmt: vFormat[h].rawValue, n: Int32(n), reserved: 0)
    }

    /// Appends one entry to a staging block: `k`, `v` are `kvHeads·headDim` floats (all heads).
    func append(position: Int, k: UnsafePointer<Float>, v: UnsafePointer<Float>) {
        let r = n
        for h in 0..<kvHeads {
            (kPtr(h).assumingMemoryBound(to: Float.self) + r * headDim).update(from: k + h * headDim, count: headDim)
            (vPtr(h).assumingMemoryBound(to: Float.self) + r * headDim).update(from: v + h * headDim, count: headDim)
        }
        positions.append(Int32(position))
        if tracksMass { mass.append(0) }
        if tracksWeight { weight.append(1) }
    }

    /// Head `h`'s keys (or values) of every row, widened to fp32 (`n·headDim` floats).
    func widen(head h: Int, values: Bool, into dst: UnsafeMutablePointer<Float>) {
        let f = values ? vFormat[h] : kFormat[h]
        let src = values ? vPtr(h) : kPtr(h)
        kv_widen(f.rawValue, values ? 0 : 1, src, values ? vsPtr(h) : ksPtr(h), Int64(n), Int32(headDim), dst)
    }

    /// A new block holding rows `keep` of this one, in formats `kFmt`/`vFmt`, sealed or not (a
    /// staging result keeps `blockSize` slots). Rows whose format does not change are copied as
    /// stored (int8 keys keep the block's per-channel scales); others are widened and re-encoded.
    /// `vOverride(h, rows)` may replace the widened fp32 values (dedupe merges).
    func rebuilt(keep: [Int], kFmt: [KVFormat], vFmt: [KVFormat], sealed: Bool, rowCapacity cap: Int,
                 vOverride: [[Float]]? = nil) -> KVBlock {
        let b = KVBlock(kvHeads: kvHeads, headDim: headDim, rowCapacity: max(cap, keep.count), policy: policy,
                        provenance: provenance, kFormat: kFmt, vFormat: vFmt, sealed: sealed)
        let hd = headDim, m = keep.count
        // Every row, in order (sealing a staging block): fp32 rows are encoded from where they lie.
        let allRows = m == n && keep.enumerated().allSatisfy { $0.offset == $0.element }
        let tmp = UnsafeMutablePointer<Float>.allocate(capacity: max(1, n * hd))
        let selected = UnsafeMutablePointer<Float>.allocate(capacity: max(1, m * hd))
        defer { tmp.deallocate(); selected.deallocate() }
        for h in 0..<kvHeads {
            for values in [false, true] {
                let from = values ? vFormat[h] : kFormat[h], to = values ? vFmt[h] : kFmt[h]
                let src = values ? vPtr(h) : kPtr(h), dst = values ? b.vPtr(h) : b.kPtr(h)
                let override = values ? vOverride?[h] : nil
                if from == to && override == nil {
                    let rowBytes = hd * from.bytesPerElement
                    for (i, r) in keep.enumerated() { (dst + i * rowBytes).copyMemory(from: src + r * rowBytes, byteCount: rowBytes) }
                    if to == .int8 {
                        if values { for (i, r) in keep.enumerated() { b.vsPtr(h)[i] = vsPtr(h)[r] } }
                        else { b.ksPtr(h).update(from: ksPtr(h), count: hd) }
                    }
                    continue
                }
                let sel: UnsafePointer<Float>
                if override == nil && from == .fp32 && allRows {
                    sel = UnsafePointer(src.assumingMemoryBound(to: Float.self))
                } else {
                    if let o = override {
                        o.withUnsafeBufferPointer { p in if let base = p.baseAddress { tmp.update(from: base, count: min(p.count, n * hd)) } }
                    } else {
                        widen(head: h, values: values, into: tmp)
                    }
                    for (i, r) in keep.enumerated() { (selected + i * hd).update(from: tmp + r * hd, count: hd) }
                    sel = UnsafePointer(selected)
                }
                switch to {
                case .fp32: dst.assumingMemoryBound(to: Float.self).update(from: sel, count: m * hd)
                case .fp16: kv_f32_to_f16(sel, dst.assumingMemoryBound(to: UInt16.self), Int64(m * hd))
                case .int8:
                    if values { kv_quantize_per_row(sel, Int64(m), Int32(hd), dst.assumingMemoryBound(to: Int8.self), b.vsPtr(h)) }
                    else { kv_quantize_per_channel(sel, Int64(m), Int32(hd), dst.assumingMemoryBound(to: Int8.self), b.ksPtr(h)) }
                }
            }
        }
        b.positions = keep.map { positions[$0] }
        if tracksMass { b.mass = keep.map { mass[$0] } }
        if tracksWeight { b.weight = keep.map { weight[$0] } }
        b.dedupeChecked = keep.filter { $0 < dedupeChecked }.count
        return b
    }

    /// Lets this staging block take rows of `other` too (`KVCache.append`): its storage becomes the
    /// finer of the two, so no row is stored coarser than its own policy says.
    func share(with other: KVPolicy) {
        guard !sealed else { return }
        policy = KVPolicy(storage: .finer(policy.storage, other.storage), retention: policy.retention)
    }

    /// Closes this staging block to appends, in its fp32 staging form (`KVCache` encodes it with
    /// `sealedForm` after the layer's attention).
    func close() { sealed = true }

    /// The sealed form of this staging block in its policy's formats (self when already fp32 and full).
    func sealedForm() -> KVBlock {
        let kf = (0..<kvHeads).map { policy.format(head: $0) }
        if kf.allSatisfy({ $0 == .fp32 }) && n == rowCapacity {
            sealed = true
            return self
        }
        return rebuilt(keep: Array(0..<n), kFmt: kf, vFmt: kf, sealed: true, rowCapacity: n)
    }

    /// This block with every head one step coarser (fp32 → fp16 → int8), or nil when all are int8.
    func degraded() -> KVBlock? {
        func next(_ f: KVFormat) -> KVFormat { f == .fp32 ? .fp16 : .int8 }
        guard sealed, kFormat.contains(where: { $0 != .int8 }) || vFormat.contains(where: { $0 != .int8 }) else { return nil }
        // Coarsen the finest heads only, so fp32 → fp16 happens everywhere before fp16 → int8.
        let finest = (kFormat + vFormat).map(\.rawValue).min() ?? 2
        let kf = kFormat.map { $0.rawValue == finest ? next($0) : $0 }
        let vf = vFormat.map { $0.rawValue == finest ? next($0) : $0 }
        return rebuilt(keep: Array(0..<n), kFmt: kf, vFmt: vf, sealed: true, rowCapacity: n)
    }

    /// Finest format held (for the budget's degradation order).
    var finestFormat: KVFormat { KVFormat(rawValue: (kFormat + vFormat).map(\.rawValue).min() ?? 2) ?? .int8 }
}
