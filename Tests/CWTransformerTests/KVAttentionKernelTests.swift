import CKernels
import CWKernels
import XCTest

/// The paged attention kernel on caches with fp16 / int8 blocks (its fast path) against the
/// all-fp32 kernel (bit-identical to `cw_attention`, see KVCacheTests) run on the same entries
/// widened to fp32: both see exactly the same numbers, so they must agree to rounding — on every
/// kernel path, for odd head counts and head sizes, partial and one-row blocks, blocks and heads
/// of mixed formats, prefill and decode (split across threads), with and without attention mass.
final class KVAttentionKernelTests: XCTestCase {
    static let F32 = Int32(KV_FMT_F32.rawValue), F16 = Int32(KV_FMT_F16.rawValue), I8 = Int32(KV_FMT_I8.rawValue)
    struct RNG {
        var s: UInt64
        mutating func next() -> Float {
            s = s &* 6364136223846793005 &+ 1442695040888963407
            return Float(Int64(bitPattern: s >> 11) % 2_000_001 - 1_000_000) / 1_000_000
        }
    }

    /// Slabs in the given formats and the same entries widened to fp32 (owns its memory).
    final class Cache {
        var quantized: [kv_slab] = []
        var widened: [kv_slab] = []
        var blocks = 0
        private var buffers: [UnsafeMutableRawPointer] = []

        private func alloc(_ bytes: Int) -> UnsafeMutableRawPointer {
            let p = UnsafeMutableRawPointer.allocate(byteCount: max(bytes, 1), alignment: 64)
            buffers.append(p)
            return p
        }

        /// `format(block, head, isValue)` gives each slab's formats.
        init(total: Int, blockSize: Int, kvHeads: Int, headDim hd: Int, keyScale: Float, rng: inout RNG,
             format: (Int, Int, Bool) -> Int32) {
            blocks = (total + blockSize - 1) / blockSize
            for b in 0..<blocks {
                let n = min(blockSize, total - b * blockSize)
                for h in 0..<kvHeads {
                    var slab = kv_slab(), wide = kv_slab()
                    slab.n = Int32(n)
                    wide.n = Int32(n)
                    for isValue in [false, true] {
                        let f = format(b, h, isValue)
                        let src = alloc(n * hd * 4).assumingMemoryBound(to: Float.self)
                        for i in 0..<(n * hd) { src[i] = rng.next() * (isValue ? 1 : keyScale) }
                        let data: UnsafeMutableRawPointer
                        var scale: UnsafeMutablePointer<Float>? = nil
                        switch f {
                        case KVAttentionKernelTests.F32:
                            data = alloc(n * hd * 4)
                            data.copyMemory(from: src, byteCount: n * hd * 4)
                        case KVAttentionKernelTests.F16:
                            data = alloc(n * hd * 2)
                            kv_f32_to_f16(src, data.assumingMemoryBound(to: UInt16.self), Int64(n * hd))
                        default:
                            data = alloc(n * hd)
                            let s = alloc((isValue ? n : hd) * 4).assumingMemoryBound(to: Float.self)
                            if isValue { kv_quantize_per_row(src, Int64(n), Int32(hd), data.assumingMemoryBound(to: Int8.self), s) }
                            else { kv_quantize_per_channel(src, Int64(n), Int32(hd), data.assumingMemoryBound(to: Int8.self), s) }
                            scale = s
                        }
                        let w = alloc(n * hd * 4).assumingMemoryBound(to: Float.self)
                        kv_widen(f, isValue ? 0 : 1, data, scale, Int64(n), Int32(hd), w)
                        if isValue {
                            slab.v = UnsafeRawPointer(data); slab.v_scale = scale.map { UnsafePointer($0) }; slab.v_fmt = f
                            wide.v = UnsafeRawPointer(w); wide.v_fmt = KVAttentionKernelTests.F32
                        } else {
                            slab.k = UnsafeRawPointer(data); slab.k_scale = scale.map { UnsafePointer($0) }; slab.k_fmt = f
                            wide.k = UnsafeRawPointer(w); wide.k_fmt = KVAttentionKernelTests.F32
                        }
                    }
                    quantized.append(slab)
                    widened.append(wide)
                }
            }
        }

        deinit { for p in buffers { p.deallocate() } }
    }

    func attention(_ slabs: [kv_slab], blocks: Int, q: [Float], tokens: Int, total: Int, heads: Int, kvHeads: Int, hd: Int,
                   mass: Bool, pool: ThreadPool?, fast: Bool = false) -> (out: [Float], mass: [Float]) {
        var out = [Float](repeating: .nan, count: tokens * heads * hd)
        var m = [Float](repeating: 0, count: mass ? heads * total : 0)
        let rc = slabs.withUnsafeBufferPointer { sp in
            m.withUnsafeMutableBufferPointer { mp in
                kv_attention(q, &out, Int64(tokens), Int64(total - tokens), Int32(heads), Int32(kvHeads), Int32(hd), sp.baseAddress,
                             Int64(blocks), 1 / Float(hd).squareRoot(), mass ? mp.baseAddress : nil, fast ? 1 : 0, pool?.handle)
            }
        }
        XCTAssertEqual(rc, 0)
        return (out, m)
    }

    typealias Shape = (total: Int, tokens: Int, blockSize: Int, kvHeads: Int, heads: Int, hd: Int)

    /// Runs `body` for every kernel path × shape × format pattern with a fresh cache and queries
    /// (the kernel path is restored afterwards); `body` returns false to stop.
    func forEachCase(_ shapes: [Shape], _ patterns: [(String, (Int, Int, Bool) -> Int32)], seed: UInt64,
                     _ body: (KernelPath, Shape, String, Cache, [Float]) -> Bool) {
        let saved = KernelPath.current
        defer { KernelPath.current = saved }
        var rng = RNG(s: seed)
        for path in KernelPath.supported {
            KernelPath.current = path
            for shape in shapes {
                for (name, pattern) in patterns {
                    let cache = Cache(total: shape.total, blockSize: shape.blockSize, kvHeads: shape.kvHeads, headDim: shape.hd,
                                      keyScale: 3, rng: &rng, format: pattern)
                    let q = (0..<(shape.tokens * shape.heads * shape.hd)).map { _ in rng.next() }
                    if !body(path, shape, name, cache, q) { return }
                }
            }
        }
    }

    func testFastPathMatchesWidenedFP32OnEveryKernelPath() {
        let pools: [ThreadPool?] = [nil, ThreadPool(threads: 2), ThreadPool(threads: 4)]
        // (entries, queries, block size, KV heads, heads, head size)
        let cases = [(300, 1, 32, 3, 9, 64), (300, 5, 32, 3, 9, 64), (301, 37, 7, 3, 9, 64), (77, 1, 16, 2, 8, 32),
                     (90, 3, 5, 1, 4, 24), (129, 2, 32, 4, 4, 128), (500, 1, 32, 1, 7, 48), (65, 65, 32, 2, 10, 16),
                     (1, 1, 32, 3, 9, 64), (2, 2, 1, 1, 5, 20), (200, 1, 100, 1, 1, 8), (1000, 1, 32, 3, 9, 64)]
        // Format patterns: all int8, all fp16, mixed per block / head / K-V, mostly fp32 with one int8 block.
        let patterns: [(String, (Int, Int, Bool) -> Int32)] = [
            ("int8", { _, _, _ in Self.I8 }),
            ("fp16", { _, _, _ in Self.F16 }),
            ("mixed", { b, h, v in Int32((b + 2 * h + (v ? 1 : 0)) % 3) }),
            ("fp32+int8", { b, _, v in b == 1 && !v ? Self.I8 : Self.F32 }),
            ("fp32 (blocked kernel, fast precision)", { _, _, _ in Self.F32 }),
        ]
        var worst: Float = 0
        forEachCase(cases.map { Shape($0.0, $0.1, $0.2, $0.3, $0.4, $0.5) }, patterns, seed: 11) { path, c, name, cache, q in
            for mass in [false, true] {
                for pool in pools {
                    let what = "\(path) \(name) entries \(c.total) queries \(c.tokens) block \(c.blockSize) heads \(c.heads)/\(c.kvHeads)×\(c.hd) mass \(mass) threads \(pool?.threads ?? 1)"
                    let a = attention(cache.quantized, blocks: cache.blocks, q: q, tokens: c.tokens, total: c.total, heads: c.heads,
                                      kvHeads: c.kvHeads, hd: c.hd, mass: mass, pool: pool, fast: name.hasPrefix("fp32 ("))
                    let b = attention(cache.widened, blocks: cache.blocks, q: q, tokens: c.tokens, total: c.total, heads: c.heads,
                                      kvHeads: c.kvHeads, hd: c.hd, mass: mass, pool: pool)
                    let e = zip(a.out, b.out).map { abs($0 - $1) }.max() ?? 0
                    let em = zip(a.mass, b.mass).map { abs($0 - $1) }.max() ?? 0
                    XCTAssertLessThanOrEqual(e, 2e-5, what)
                    XCTAssertLessThanOrEqual(em, 2e-5, what)
                    XCTAssertFalse(a.out.contains { !$0.isFinite }, what)
                    worst = max(worst, e, em)
                }
            }
            return true
        }
        print("KV fast path vs widened fp32, all paths: max |diff| \(worst)")
    }

    /// A prefill takes tiles of several tokens per item (each cached row read once for all their
    /// queries); every query's result must be the one it gets alone (one token, same entries), to
    /// the bit — for group sizes that fill a tile exactly or not, tiles that end inside a chunk or
    /// a block, every format and kernel path, one thread or several (tiles in zigzag order).
    func testPrefillTilesEqualOneTokenAtATime() {
        // (entries, queries, block size, KV heads, heads, head size)
        let cases = [(300, 37, 32, 3, 9, 64), (130, 130, 16, 2, 8, 32), (77, 20, 7, 1, 5, 24), (96, 33, 100, 4, 4, 16),
                     (65, 65, 64, 1, 16, 8)]
        let patterns: [(String, (Int, Int, Bool) -> Int32)] = [
            ("int8", { _, _, _ in Self.I8 }), ("fp16", { _, _, _ in Self.F16 }),
            ("mixed", { b, h, v in Int32((b + 2 * h + (v ? 1 : 0)) % 3) }), ("fp32", { _, _, _ in Self.F32 }),
        ]
        forEachCase(cases.map { Shape($0.0, $0.1, $0.2, $0.3, $0.4, $0.5) }, patterns, seed: 5) { path, c, name, cache, q in
            for pool in [nil, ThreadPool(threads: 2), ThreadPool(threads: 3)] {
                let all = attention(cache.quantized, blocks: cache.blocks, q: q, tokens: c.tokens, total: c.total, heads: c.heads,
                                    kvHeads: c.kvHeads, hd: c.hd, mass: false, pool: pool, fast: true).out
                let row = c.heads * c.hd
                for t in 0..<c.tokens {
                    // Query t alone sees entries 0 ..< total − tokens + t + 1 (one thread: no splits).
                    let one = attention(cache.quantized, blocks: cache.blocks, q: Array(q[(t * row)..<((t + 1) * row)]), tokens: 1,
                                        total: c.total - c.tokens + t + 1, heads: c.heads, kvHeads: c.kvHeads, hd: c.hd, mass: false,
                                        pool: nil, fast: true).out
                    let same = zip(one, all[(t * row)..<((t + 1) * row)]).allSatisfy { $0 == $1 }
                    XCTAssertTrue(same, "\(path) \(name) entries \(c.total) queries \(c.tokens) block \(c.blockSize) heads \(c.heads)/\(c.kvHeads)×\(c.hd) threads \(pool?.threads ?? 1): token \(t)")
                    if !same { return false }
                }
            }
            return true
        }
    }
}
