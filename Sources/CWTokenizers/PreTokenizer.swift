// Pre-tokenizers (regex splitters written as scanners) and the GPT-2 byte ⇄ unicode map.

/// The splitting regex family of a byte-level BPE tokenizer.
public enum PreTokenizerKind: String, Sendable {
    /// `'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+`
    case gpt2
    /// GPT-2 regex with every digit on its own (llama.cpp "smollm"; `Digits(individual_digits)` + ByteLevel).
    case gpt2IndividualDigits
    /// `(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+`
    case llama3
    /// As llama3, with `\p{N}` (single digits) instead of `\p{N}{1,3}`.
    case qwen2
    /// No splitting: the whole segment is one word.
    case none
}

enum CharClass: UInt8 {
    case letter, number, whitespace, other
}

@inline(__always)
func charClass(_ s: Unicode.Scalar) -> CharClass {
    let v = s.value
    if v < 0x80 {
        switch v {
        case 0x41...0x5A, 0x61...0x7A: return .letter
        case 0x30...0x39: return .number
        case 0x09...0x0D, 0x20: return .whitespace
        default: return .other
        }
    }
    let p = s.properties
    switch p.generalCategory {
    case .uppercaseLetter, .lowercaseLetter, .titlecaseLetter, .modifierLetter, .otherLetter: return .letter
    case .decimalNumber, .letterNumber, .otherNumber: return .number
    default: return p.isWhitespace ? .whitespace : .other
    }
}

/// Splits `scalars` into pre-token ranges (scalar indices), as the regex of `kind` would with `find_iter`.
func preTokenize(_ scalars: [Unicode.Scalar], kind: PreTokenizerKind) -> [Range<Int>] {
    let n = scalars.count
    if n == 0 { return [] }
    if kind == .none { return [0..<n] }
    if kind == .gpt2IndividualDigits {
        // llama.cpp "smollm": split off every \p{N} scalar first, then the GPT-2 regex on the pieces between.
        var out: [Range<Int>] = []
        var lo = 0
        func flush(_ hi: Int) {
            if lo < hi {
                for r in preTokenize(Array(scalars[lo..<hi]), kind: .gpt2) { out.append((r.lowerBound + lo)..<(r.upperBound + lo)) }
            }
        }
        for i in 0..<n where charClass(scalars[i]) == .number {
            flush(i)
            out.append(i..<(i + 1))
            lo = i + 1
        }
        flush(n)
        return out
    }
    var cls = [CharClass](repeating: .other, count: n)
    for i in 0..<n { cls[i] = charClass(scalars[i]) }
    var out: [Range<Int>] = []
    out.reserveCapacity(n / 4 + 1)
    let llamaStyle = (kind == .llama3 || kind == .qwen2)
    let maxDigits: Int
    switch kind {
    case .llama3: maxDigits = 3
    case .qwen2: maxDigits = 1
    default: maxDigits = Int.max
    }

    @inline(__always) func isNewline(_ i: Int) -> Bool {
        let v = scalars[i].value
        return v == 0x0A || v == 0x0D
    }
    @inline(__always) func lower(_ i: Int) -> UInt32 {
        let v = scalars[i].value
        return (v >= 0x41 && v <= 0x5A) ? v + 32 : v
    }
    /// Contractions: 's 't 'm 'd (2) and 're 've 'll (3). Case-insensitive for llama3/qwen2.
    func contraction(_ i: Int) -> Int {
        guard scalars[i] == "'", i + 1 < n else { return 0 }
        let a = llamaStyle ? lower(i + 1) : scalars[i + 1].value
        switch a {
        case 0x73, 0x74, 0x6D, 0x64: return 2  // s t m d
        default: break
        }
        guard i + 2 < n else { return 0 }
        let b = llamaStyle ? lower(i + 2) : scalars[i + 2].value
        if (a == 0x72 && b == 0x65) || (a == 0x76 && b == 0x65) || (a == 0x6C && b == 0x6C) { return 3 }  // re ve ll
        return 0
    }
    /// `\s+(?!\S)|\s+` starting at i (a whitespace).
    func whitespaceRun(_ i: Int) -> Int {
        var k = i
        while k < n && cls[k] == .whitespace { k += 1 }
        if k == n || k - i == 1 { return k }
        return k - 1
    }

    var i = 0
    while i < n {
        let start = i
        let c = contraction(i)
        if c > 0 { out.append(i..<(i + c)); i += c; continue }
        if !llamaStyle {
            // ` ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+`
            var j = i
            if scalars[i] == " " && i + 1 < n && cls[i + 1] != .whitespace { j = i + 1 }
            let cj = cls[j]
            if cj == .letter {
                var k = j + 1
                while k < n && cls[k] == .letter { k += 1 }
                out.append(start..<k); i = k; continue
            }
            if cj == .number {
                var k = j + 1
                while k < n && cls[k] == .number && k - j < maxDigits { k += 1 }
                out.append(start..<k); i = k; continue
            }
            if cj == .other {
                var k = j + 1
                while k < n && cls[k] == .other { k += 1 }
                out.append(start..<k); i = k; continue
            }
            // whitespace
            let k = whitespaceRun(i)
            out.append(start..<k); i = k; continue
        } else {
            // `[^\r\n\p{L}\p{N}]?\p{L}+`
            if cls[i] == .letter || (cls[i] != .number && !isNewline(i) && i + 1 < n && cls[i + 1] == .letter) {
                var k = cls[i] == .letter ? i + 1 : i + 2
                while k < n && cls[k] == .letter { k += 1 }
                out.append(start..<k); i = k; continue
            }
            // `\p{N}{1,3}`
            if cls[i] == .number {
                var k = i + 1
                while k < n && cls[k] == .number && k - i < maxDigits { k += 1 }
                out.append(start..<k); i = k; continue
            }
            // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
            var j = i
            if scalars[i] == " " && i + 1 < n && cls[i + 1] == .other { j = i + 1 }
            if cls[j] == .other {
                var k = j + 1
                while k < n && cls[k] == .other { k += 1 }
                while k < n && isNewline(k) { k += 1 }
                out.append(start..<k); i = k; continue
            }
            // `\s*[\r\n]+`
            var k = i
            var lastNewline = -1
            while k < n && cls[k] == .whitespace {
                if isNewline(k) { lastNewline = k }
                k += 1
            }
            if lastNewline >= 0 {
                out.append(start..<(lastNewline + 1)); i = lastNewline + 1; continue
            }
            // `\s+(?!\S)|\s+`
            let e = whitespaceRun(i)
            out.append(start..<e); i = e; continue
        }
    }
    return out
}

/// GPT-2's reversible byte → printable unicode scalar map.
enum ByteLevelMap {
    static let byteToScalar: [Unicode.Scalar] = {
        var table = [Unicode.Scalar](repeating: " ", count: 256)
        var extra: UInt32 = 0
        for b in 0..<256 {
            let printable = (0x21...0x7E).contains(b) || (0xA1...0xAC).contains(b) || (0xAE...0xFF).contains(b)
            let value: UInt32 = printable ? UInt32(b) : 256 + extra
            if !printable { extra += 1 }
            table[b] = Unicode.Scalar(value) ?? " "
        }
        return table
    }()

    /// UTF-8 bytes of the mapped scalar for each byte (1 or 2 bytes).
    static let byteToUTF8: [[UInt8]] = byteToScalar.map { Array(String(Character($0)).utf8) }

    static let scalarToByte: [UInt32: UInt8] = {
        var d: [UInt32: UInt8] = [:]
        for (b, s) in byteToScalar.enumerated() { d[s.value] = UInt8(b) }
        return d
    }()

    /// Inverse map of a byte-level token string; nil if some scalar is outside the map.
    static func decode(_ token: String) -> [UInt8]? {
        var out: [UInt8] = []
        out.reserveCapacity(token.unicodeScalars.count)
        for s in token.unicodeScalars {
            guard let b = scalarToByte[s.value] else { return nil }
            out.append(b)
        }
        return out
    }

    static func encode<S: Sequence>(_ bytes: S) -> String where S.Element == UInt8 {
        var s = String.UnicodeScalarView()
        for b in bytes { s.append(byteToScalar[Int(b)]) }
        return String(s)
    }
}
