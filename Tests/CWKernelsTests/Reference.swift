import CWKernels
import Foundation

/// Deterministic xorshift generator so failures reproduce.
struct RNG {
    var s: UInt64
    init(_ seed: UInt64) { s = seed &* 0x9E37_79B9_7F4A_7C15 | 1 }
    mutating func next() -> UInt64 { s ^= s << 13; s ^= s >> 7; s ^= s << 17; return s }
    mutating func byte() -> UInt8 { UInt8(truncatingIfNeeded: next() >> 24) }
    /// Uniform in [lo, hi).
    mutating func float(_ lo: Float = -1, _ hi: Float = 1) -> Float {
        lo + (hi - lo) * Float(next() >> 40) / Float(1 << 24)
    }
}

func f16bits(_ f: Float) -> UInt16 { Float16(f).bitPattern }
func f16(_ b: UInt16) -> Float { Float(Float16(bitPattern: b)) }

/// Random, valid bytes for a `rows × cols` matrix of `type`: random quants, sane fp16 scales.
func randomMatrix(_ type: TensorType, rows: Int, cols: Int, rng: inout RNG) -> [UInt8] {
    let rowBytes = type.byteCount(elements: cols)
    var bytes = [UInt8](repeating: 0, count: rows * rowBytes)
    for i in bytes.indices { bytes[i] = rng.byte() }
    func put16(_ off: Int, _ v: UInt16) { bytes[off] = UInt8(v & 0xFF); bytes[off + 1] = UInt8(v >> 8) }
    let nblocks = rows * cols / type.blockElements
    for b in 0..<nblocks {
        let o = b * type.blockBytes
        switch type {
        case .f32:
            let bits = rng.float(-2, 2).bitPattern
            for k in 0..<4 { bytes[o + k] = UInt8((bits >> (8 * UInt32(k))) & 0xFF) }
        case .f16: put16(o, f16bits(rng.float(-2, 2)))
        case .bf16: put16(o, UInt16(rng.float(-2, 2).bitPattern >> 16))
        case .q4_0, .q5_0, .q8_0: put16(o, f16bits(rng.float(0.001, 0.05) * (rng.byte() & 1 == 0 ? 1 : -1)))
        case .q4_1, .q5_1:
            put16(o, f16bits(rng.float(0.001, 0.05)))
            put16(o + 2, f16bits(rng.float(-0.3, 0.3)))
        case .q4_K, .q5_K:
            put16(o, f16bits(rng.float(0.0005, 0.005)))
            put16(o + 2, f16bits(rng.float(0.0005, 0.005)))
        case .q6_K: put16(o + 208, f16bits(rng.float(0.0005, 0.005)))
        }
    }
    return bytes
}

/// ggml's dequantization, written independently of the C kernels (fp32 arithmetic as ggml does).
func refDequantRow(_ type: TensorType, _ p: [UInt8], _ off: Int, _ n: Int) -> [Float] {
    var y = [Float](repeating: 0, count: n)
    func u16(_ i: Int) -> UInt16 { UInt16(p[off + i]) | UInt16(p[off + i + 1]) << 8 }
    func u32(_ i: Int) -> UInt32 { (0..<4).reduce(UInt32(0)) { $0 | UInt32(p[off + i + $1]) << (8 * UInt32($1)) } }
    func kscale(_ base: Int, _ j: Int) -> (Float, Float) {
        let q = { (i: Int) -> Int in Int(p[off + base + i]) }
        if j < 4 { return (Float(q(j) & 63), Float(q(j + 4) & 63)) }
        return (Float((q(j + 4) & 0xF) | ((q(j - 4) >> 6) << 4)), Float((q(j + 4) >> 4) | ((q(j) >> 6) << 4)))
    }
    switch type {
    case .f32:
        for i in 0..<n { y[i] = Float(bitPattern: u32(4 * i)) }
    case .f16:
        for i in 0..<n { y[i] = f16(u16(2 * i)) }
    case .bf16:
        for i in 0..<n { y[i] = Float(bitPattern: UInt32(u16(2 * i)) << 16) }
    default:
        let be = type.blockElements, bb = type.blockBytes
        for b in 0..<(n / be) {
            let o = b * bb, e = b * be
            func byte(_ i: Int) -> Int { Int(p[off + o + i]) }
            func h(_ i: Int) -> Float { f16(u16(o + i)) }
            switch type {
            case .q4_0:
                let d = h(0)
                for j in 0..<16 { y[e + j] = Float((byte(2 + j) & 15) - 8) * d; y[e + j + 16] = Float((byte(2 + j) >> 4) - 8) * d }
            case .q4_1:
                let d = h(0), m = h(2)
                for j in 0..<16 { y[e + j] = Float(byte(4 + j) & 15) * d + m; y[e + j + 16] = Float(byte(4 + j) >> 4) * d + m }
            case .q5_0, .q5_1:
                let hasMin = type == .q5_1
                let d = h(0), m: Float = hasMin ? h(2) : 0
                let qh = u32(o + (hasMin ? 4 : 2)), qs = hasMin ? 8 : 6
                for j in 0..<32 {
                    let nib = j < 16 ? byte(qs + j) & 15 : byte(qs + j - 16) >> 4
                    let v = nib | Int((qh >> UInt32(j)) & 1) << 4
                    y[e + j] = hasMin ? Float(v) * d + m : Float(v - 16) * d
                }
            case .q8_0:
                let d = h(0)
                for j in 0..<32 { y[e + j] = Float(Int8(bitPattern: UInt8(byte(2 + j)))) * d }
            case .q4_K, .q5_K:
                let d = h(0), dmin = h(2)
                let isQ5 = type == .q5_K
                let qs = isQ5 ? 48 : 16
                for sub in 0..<8 {
                    let (sc, mn) = kscale(o + 4, sub)
                    let d1 = d * sc, m1 = dmin * mn
                    for l in 0..<32 {
                        let byteV = byte(qs + (sub / 2) * 32 + l)
                        var q = sub % 2 == 0 ? byteV & 15 : byteV >> 4
                        if isQ5, (byte(16 + l) >> sub) & 1 == 1 { q += 16 }
                        y[e + sub * 32 + l] = d1 * Float(q) - m1
                    }
                }
            case .q6_K:
                let d = h(208)
                for i in 0..<256 {
                    let half = i / 128, r = i % 128, quarter = r / 32, l = r % 32
                    let qlByte = byte(64 * half + (quarter & 1) * 32 + l)
                    let lo = quarter < 2 ? qlByte & 15 : qlByte >> 4
                    let hi = (byte(128 + 32 * half + l) >> (2 * quarter)) & 3
                    let sc = Float(Int8(bitPattern: UInt8(byte(192 + 8 * half + 2 * quarter + l / 16))))
                    y[e + i] = d * sc * Float((lo | hi << 4) - 32)
                }
            default: break
            }
        }
    }
    return y
}
