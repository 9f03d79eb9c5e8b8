import Foundation

/// sacrebleu's `13a` tokenizer (mteval-v13a), on code points exactly as sacrebleu's regexes do it.
public enum Tokenizer13a {
    /// Tokenizes one segment; returns the tokens (sacrebleu returns them joined by single spaces).
    public static func tokenize(_ line: String) -> [ArraySlice<UInt32>] {
        PyText.split(tokenizedScalars(line))
    }

    /// sacrebleu's output string.
    public static func tokenizeString(_ line: String) -> String {
        tokenize(line).map { PyText.string($0) }.joined(separator: " ")
    }

    static func replace(_ s: [UInt32], _ a: String, _ b: String) -> [UInt32] {
        let pa = PyText.scalars(a), pb = PyText.scalars(b)
        guard !pa.isEmpty, s.count >= pa.count else { return s }
        var out: [UInt32] = []
        out.reserveCapacity(s.count)
        var i = 0
        while i < s.count {
            if s[i] == pa[0] && i + pa.count <= s.count && s[i..<(i + pa.count)].elementsEqual(pa) {
                out.append(contentsOf: pb); i += pa.count
            } else { out.append(s[i]); i += 1 }
        }
        return out
    }

    @inline(__always) static func isDigit(_ c: UInt32) -> Bool { c >= 0x30 && c <= 0x39 }
    @inline(__always) static func isPeriodComma(_ c: UInt32) -> Bool { c == 0x2E || c == 0x2C }

    /// `[\{-\~\[-\` -\&\(-\+\:-\@\/]`
    @inline(__always) static func isRule1(_ c: UInt32) -> Bool {
        switch c {
        case 0x7B...0x7E, 0x5B...0x60, 0x20...0x26, 0x28...0x2B, 0x3A...0x40, 0x2F: return true
        default: return false
        }
    }

    /// The line after the 13a regex passes, before the final whitespace split.
    static func tokenizedScalars(_ line: String) -> [UInt32] {
        // BLEU._preprocess_segment: sent.rstrip(); then Tokenizer13a.__call__.
        var s = PyText.rstrip(PyText.scalars(line))
        s = replace(s, "<skipped>", "")
        s = replace(s, "-\n", "")
        s = replace(s, "\n", " ")
        if s.contains(0x26) {
            s = replace(s, "&quot;", "\"")
            s = replace(s, "&amp;", "&")
            s = replace(s, "&lt;", "<")
            s = replace(s, "&gt;", ">")
        }
        s = [0x20] + s + [0x20]
        // 1: ([\{-\~\[-\` -\&\(-\+\:-\@\/]) -> ' \1 '
        var r: [UInt32] = []
        r.reserveCapacity(s.count * 2)
        for c in s { if isRule1(c) { r.append(0x20); r.append(c); r.append(0x20) } else { r.append(c) } }
        s = r
        // 2: ([^0-9])([\.,]) -> '\1 \2 '   (non-overlapping, left to right, like re.sub)
        r = []
        var i = 0
        while i < s.count {
            if i + 1 < s.count && !isDigit(s[i]) && isPeriodComma(s[i + 1]) {
                r.append(s[i]); r.append(0x20); r.append(s[i + 1]); r.append(0x20); i += 2
            } else { r.append(s[i]); i += 1 }
        }
        s = r
        // 3: ([\.,])([^0-9]) -> ' \1 \2'
        r = []
        i = 0
        while i < s.count {
            if i + 1 < s.count && isPeriodComma(s[i]) && !isDigit(s[i + 1]) {
                r.append(0x20); r.append(s[i]); r.append(0x20); r.append(s[i + 1]); i += 2
            } else { r.append(s[i]); i += 1 }
        }
        s = r
        // 4: ([0-9])(-) -> '\1 \2 '
        r = []
        i = 0
        while i < s.count {
            if i + 1 < s.count && isDigit(s[i]) && s[i + 1] == 0x2D {
                r.append(s[i]); r.append(0x20); r.append(0x2D); r.append(0x20); i += 2
            } else { r.append(s[i]); i += 1 }
        }
        return r
    }
}

/// A BLEU score with sacrebleu's fields.
public struct BLEUScore: Sendable, Codable, Equatable {
    public var score: Double
    public var counts: [Int]
    public var totals: [Int]
    /// Modified n-gram precisions in percent.
    public var precisions: [Double]
    public var bp: Double
    public var sys_len: Int
    public var ref_len: Int
    public var ratio: Double { ref_len > 0 ? Double(sys_len) / Double(ref_len) : 0 }

    /// sacrebleu's formatted line: `BLEU = 26.33 59.3/32.3/19.9/12.6 (BP = 1.000 ratio = 1.003 hyp_len = … ref_len = …)`.
    public var formatted: String { formatted(signature: "") }

    public func formatted(signature: String, width: Int = 2) -> String {
        let name = signature.isEmpty ? "BLEU" : "BLEU|\(signature)"
        let prec = precisions.map { pyFormat($0, 1) }.joined(separator: "/")
        return "\(name) = \(pyFormat(score, width)) \(prec) (BP = \(pyFormat(bp, 3)) ratio = \(pyFormat(ratio, 3)) hyp_len = \(sys_len) ref_len = \(ref_len))"
    }

    enum CodingKeys: String, CodingKey { case score, counts, totals, precisions, bp, sys_len, ref_len, ratio }

    public init(score: Double, counts: [Int], totals: [Int], precisions: [Double], bp: Double, sys_len: Int, ref_len: Int) {
        self.score = score; self.counts = counts; self.totals = totals; self.precisions = precisions
        self.bp = bp; self.sys_len = sys_len; self.ref_len = ref_len
    }

    public init(from decoder: Decoder) throws {
        let c = try decoder.container(keyedBy: CodingKeys.self)
        score = try c.decode(Double.self, forKey: .score)
        counts = try c.decode([Int].self, forKey: .counts)
        totals = try c.decode([Int].self, forKey: .totals)
        precisions = try c.decode([Double].self, forKey: .precisions)
        bp = try c.decode(Double.self, forKey: .bp)
        sys_len = try c.decode(Int.self, forKey: .sys_len)
        ref_len = try c.decode(Int.self, forKey: .ref_len)
    }

    public func encode(to encoder: Encoder) throws {
        var c = encoder.container(keyedBy: CodingKeys.self)
        try c.encode(score, forKey: .score); try c.encode(counts, forKey: .counts); try c.encode(totals, forKey: .totals)
        try c.encode(precisions, forKey: .precisions); try c.encode(bp, forKey: .bp)
        try c.encode(sys_len, forKey: .sys_len); try c.encode(ref_len, forKey: .ref_len); try c.encode(ratio, forKey: .ratio)
    }
}

/// Python's `f"{x:.{p}f}"` (correctly rounded, like C's printf).
func pyFormat(_ x: Double, _ p: Int) -> String {
    if x.isNaN { return "nan" }
    if x.isInfinite { return x > 0 ? "inf" : "-inf" }
    return String(format: "%.\(p)f", x)
}

/// Corpus and sentence BLEU exactly as sacrebleu 2.x computes it (`tokenize='13a'`,
/// `smooth_method='exp'`, `lowercase=False`, max order 4, one reference per segment).
public struct BLEU: Sendable {
    public let maxOrder = 4
    public var effectiveOrder = false
    /// sacrebleu version written into the signature (the implementation reproduces 2.x).
    public var version = "2.6.0"

    public init(effectiveOrder: Bool = false) { self.effectiveOrder = effectiveOrder }

    public var signature: String {
        "nrefs:1|case:mixed|eff:\(effectiveOrder ? "yes" : "no")|tok:13a|smooth:exp|version:\(version)"
    }

    /// Interns tokens so n-grams are small integer tuples.
    final class Vocab {
        var ids: [[UInt32]: Int32] = [:]
        func id(_ t: ArraySlice<UInt32>) -> Int32 {
            let k = Array(t)
            if let v = ids[k] { return v }
            let v = Int32(ids.count)
            ids[k] = v
            return v
        }
    }

    struct NGram: Hashable { var a: Int32, b: Int32, c: Int32, d: Int32, n: Int8 }

    static func ngrams(_ toks: [Int32], maxOrder: Int) -> [Int: [NGram: Int]] {
        var out: [Int: [NGram: Int]] = [:]
        for n in 1...maxOrder where toks.count >= n {
            var m: [NGram: Int] = [:]
            for i in 0...(toks.count - n) {
                let g = NGram(a: toks[i], b: n > 1 ? toks[i + 1] : -1, c: n > 2 ? toks[i + 2] : -1, d: n > 3 ? toks[i + 3] : -1, n: Int8(n))
                m[g, default: 0] += 1
            }
            out[n] = m
        }
        return out
    }

    /// Sufficient statistics of one segment: (counts, totals, sys_len, ref_len).
    func stats(_ hyp: String, _ ref: String, vocab: Vocab) -> (counts: [Int], totals: [Int], sys: Int, ref: Int) {
        let h = Tokenizer13a.tokenize(hyp).map(vocab.id)
        let r = Tokenizer13a.tokenize(ref).map(vocab.id)
        let hg = Self.ngrams(h, maxOrder: maxOrder), rg = Self.ngrams(r, maxOrder: maxOrder)
        var counts = [Int](repeating: 0, count: maxOrder), totals = counts
        for n in 1...maxOrder {
            guard let hm = hg[n] else { continue }
            let rm = rg[n] ?? [:]
            for (g, c) in hm {
                totals[n - 1] += c
                if let rc = rm[g] { counts[n - 1] += min(c, rc) }
            }
        }
        return (counts, totals, h.count, r.count)
    }

    /// sacrebleu's `compute_bleu` with `smooth_method='exp'`.
    public func compute(counts: [Int], totals: [Int], sysLen: Int, refLen: Int) -> BLEUScore {
        var bp = 1.0
        if sysLen < refLen { bp = sysLen > 0 ? Foundation.exp(1 - Double(refLen) / Double(sysLen)) : 0 }
        var precisions = [Double](repeating: 0, count: maxOrder)
        if !counts.contains(where: { $0 != 0 }) {
            return BLEUScore(score: 0, counts: counts, totals: totals, precisions: precisions, bp: bp, sys_len: sysLen, ref_len: refLen)
        }
        var smooth = 1.0
        var eff = maxOrder
        for n in 1...maxOrder {
            if totals[n - 1] == 0 { break }
            if effectiveOrder { eff = n }
            if counts[n - 1] == 0 {
                smooth *= 2
                precisions[n - 1] = 100.0 / (smooth * Double(totals[n - 1]))
            } else {
                precisions[n - 1] = 100.0 * Double(counts[n - 1]) / Double(totals[n - 1])
            }
        }
        var sum = 0.0
        for p in precisions.prefix(eff) { sum += p != 0 ? Foundation.log(p) : -9999999999 }
        let score = bp * Foundation.exp(sum / Double(eff))
        return BLEUScore(score: score, counts: counts, totals: totals, precisions: precisions, bp: bp, sys_len: sysLen, ref_len: refLen)
    }

    /// Corpus BLEU of hypotheses against one reference each.
    public func corpusScore(hypotheses: [String], references: [String]) throws -> BLEUScore {
        guard hypotheses.count == references.count else {
            throw EvalError.invalidInput("\(hypotheses.count) hypotheses but \(references.count) references")
        }
        let vocab = Vocab()
        var counts = [Int](repeating: 0, count: maxOrder), totals = counts
        var sys = 0, ref = 0
        for (h, r) in zip(hypotheses, references) {
            let s = stats(h, r, vocab: vocab)
            for n in 0..<maxOrder { counts[n] += s.counts[n]; totals[n] += s.totals[n] }
            sys += s.sys; ref += s.ref
        }
        return compute(counts: counts, totals: totals, sysLen: sys, refLen: ref)
    }

    /// `sacrebleu.sentence_bleu(hyp, [ref])`: effective order on, exp smoothing.
    public static func sentenceScore(hypothesis: String, reference: String) -> BLEUScore {
        let b = BLEU(effectiveOrder: true)
        let s = b.stats(hypothesis, reference, vocab: Vocab())
        return b.compute(counts: s.counts, totals: s.totals, sysLen: s.sys, refLen: s.ref)
    }
}

/// chrF exactly as sacrebleu 2.x's `CHRF()` defaults: character order 6, word order 0, beta 2,
/// whitespace removed, no eps smoothing (effective-order averaging of precision and recall).
public struct CHRF: Sendable {
    public let charOrder = 6
    public let beta = 2
    public var version = "2.6.0"

    public init() {}

    public var signature: String { "nrefs:1|case:mixed|eff:yes|nc:\(charOrder)|nw:0|space:no|version:\(version)" }
    public var name: String { "chrF\(beta)" }

    /// Up to 6 code points packed into two words (21 bits each).
    struct Key: Hashable { var lo: UInt64, hi: UInt64 }

    func ngrams(_ s: String) -> [[Key: Int]] {
        // ''.join(line.split())
        let cps = PyText.scalars(s).filter { !PyText.isSpace($0) }
        var out: [[Key: Int]] = []
        for n in 1...charOrder {
            var m: [Key: Int] = [:]
            if cps.count >= n {
                for i in 0...(cps.count - n) {
                    var lo: UInt64 = 0, hi: UInt64 = 0
                    for j in 0..<n {
                        let v = UInt64(cps[i + j])
                        if j < 3 { lo |= v << UInt64(21 * j) } else { hi |= v << UInt64(21 * (j - 3)) }
                    }
                    m[Key(lo: lo, hi: hi), default: 0] += 1
                }
            }
            out.append(m)
        }
        return out
    }

    /// [hyp, ref, match] per order, flattened.
    func stats(_ hyp: String, _ ref: String) -> [Int] {
        let h = ngrams(hyp), r = ngrams(ref)
        var out: [Int] = []
        for (hm, rm) in zip(h, r) {
            var match = 0, hc = 0
            for (g, c) in hm {
                hc += c
                if let rc = rm[g] { match += min(c, rc) }
            }
            out.append(rm.isEmpty ? 0 : hc)
            out.append(rm.values.reduce(0, +))
            out.append(match)
        }
        return out
    }

    /// sacrebleu's `_compute_f_score`.
    public func fScore(_ st: [Int]) -> Double {
        let factor = Double(beta * beta)
        var avgPrec = 0.0, avgRec = 0.0
        var eff = 0
        for i in 0..<charOrder {
            let nh = st[3 * i], nr = st[3 * i + 1], nm = st[3 * i + 2]
            let prec = nh > 0 ? Double(nm) / Double(nh) : 1e-16
            let rec = nr > 0 ? Double(nm) / Double(nr) : 1e-16
            if nh > 0 && nr > 0 { avgPrec += prec; avgRec += rec; eff += 1 }
        }
        if eff == 0 { avgPrec = 0; avgRec = 0 } else { avgPrec /= Double(eff); avgRec /= Double(eff) }
        if avgPrec + avgRec != 0 {
            var score = (1 + factor) * avgPrec * avgRec
            score /= (factor * avgPrec) + avgRec
            return 100 * score
        }
        return 0
    }

    public func corpusScore(hypotheses: [String], references: [String]) throws -> Double {
        guard hypotheses.count == references.count else {
            throw EvalError.invalidInput("\(hypotheses.count) hypotheses but \(references.count) references")
        }
        var tot = [Int](repeating: 0, count: 3 * charOrder)
        for (h, r) in zip(hypotheses, references) {
            for (i, v) in stats(h, r).enumerated() { tot[i] += v }
        }
        return fScore(tot)
    }

    public func sentenceScore(hypothesis: String, reference: String) -> Double {
        fScore(stats(hypothesis, reference))
    }

    /// sacrebleu's formatted line, e.g. `chrF2 = 54.72`.
    public func formatted(_ score: Double) -> String { "\(name) = \(pyFormat(score, 2))" }
}
