// Score-merge SentencePiece BPE: llama.cpp's SPM vocab (GGUF "llama") and llama2.c run.c `encode()`.

/// GGUF `tokenizer.ggml.token_type` values (llama.cpp `llama_token_type`).
public enum TokenType: Int, Sendable {
    case undefined = 0, normal = 1, unknown = 2, control = 3, userDefined = 4, unused = 5, byte = 6
}

public final class SentencePieceTokenizer: Tokenizer {
    public enum Flavor: Sendable {
        /// llama.cpp `llm_tokenizer_spm`: spaces → "▁", "▁" prefix (after BOS and after each special token) when
        /// `addSpacePrefix`, unknown characters → `<0xXX>` byte tokens after merging. Decode strips the prefix
        /// space at the start of the output.
        case llamaCpp
        /// karpathy llama2.c `run.c`: pieces use plain spaces, a dummy-prefix " " token when the text is
        /// non-empty, unknown code points → byte tokens (id = byte + 3) before merging. Decode drops a leading
        /// space right after BOS.
        case llama2c
    }

    public let flavor: Flavor
    public let vocabularySize: Int
    public let bosTokenID: Int?
    public let eosTokenIDs: [Int]
    public let addsBOSByDefault: Bool
    public let addSpacePrefix: Bool
    public let unknownTokenID: Int?

    private let tokens: [String]
    private let scores: [Float]
    private let tokenToID: [String: Int]
    private let bytesTable: [[UInt8]]
    private let specialFlags: [Bool]
    private let byteIDs: [Int32]
    private let added: AddedTokenMatcher

    /// - Parameters:
    ///   - tokenTypes: per-token `TokenType` raw values (empty: all normal, except `<0xXX>` pieces → byte).
    ///   - rawPieces: the pieces' bytes as stored (llama2.c pieces need not be valid UTF-8); used for decoding.
    public init(flavor: Flavor, tokens: [String], scores: [Float], tokenTypes: [Int] = [],
                bosTokenID: Int?, eosTokenIDs: [Int], addsBOSByDefault: Bool,
                addSpacePrefix: Bool = true, unknownTokenID: Int? = nil, rawPieces: [[UInt8]]? = nil) {
        self.flavor = flavor
        self.tokens = tokens
        self.vocabularySize = tokens.count
        self.scores = scores.count == tokens.count ? scores : tokens.indices.map { $0 < scores.count ? scores[$0] : 0 }
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
        self.addsBOSByDefault = addsBOSByDefault
        self.addSpacePrefix = addSpacePrefix
        self.unknownTokenID = unknownTokenID

        var t2i = [String: Int](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() where t2i[t] == nil { t2i[t] = i }
        self.tokenToID = t2i

        var types = [TokenType](repeating: .normal, count: tokens.count)
        for i in tokens.indices {
            if i < tokenTypes.count, let t = TokenType(rawValue: tokenTypes[i]) { types[i] = t }
        }
        if flavor == .llama2c {
            // run.c: 0 <unk>, 1 <s>, 2 </s>, then 256 byte pieces.
            for i in 0..<min(3, tokens.count) { types[i] = i == 0 ? .unknown : .control }
        }
        var table: [[UInt8]] = []
        table.reserveCapacity(tokens.count)
        var byteIDs = [Int32](repeating: -1, count: 256)
        var flags = [Bool](repeating: false, count: tokens.count)
        var entries: [AddedTokenMatcher.Entry] = []
        for (i, t) in tokens.enumerated() {
            let type = types[i]
            if let b = parseByteToken(t), type == .byte || tokenTypes.isEmpty || flavor == .llama2c {
                if byteIDs[Int(b)] < 0 { byteIDs[Int(b)] = Int32(i) }
                table.append([b])
                continue
            }
            switch type {
            case .control, .unknown:
                flags[i] = true
                let text = flavor == .llama2c ? t.trimmingCharacters(in: .whitespacesAndNewlines) : t
                table.append(Array(text.utf8))
                if flavor == .llamaCpp { entries.append(.init(bytes: Array(t.utf8), id: i, special: true)) }
            case .userDefined:
                table.append(Array(t.utf8))
                entries.append(.init(bytes: Array(t.utf8), id: i, special: false))
            default:
                if let raw = rawPieces, i < raw.count, flavor == .llama2c {
                    table.append(raw[i])
                } else {
                    table.append(flavor == .llamaCpp ? Array(t.replacingOccurrences(of: "▁", with: " ").utf8) : Array(t.utf8))
                }
            }
        }
        self.bytesTable = table
        self.byteIDs = byteIDs
        self.specialFlags = flags
        self.added = AddedTokenMatcher(entries)
    }

    // MARK: Tokenizer

    public func tokenBytes(_ id: Int) -> [UInt8] {
        guard id >= 0 && id < bytesTable.count else { return [] }
        return bytesTable[id]
    }
    public func isSpecial(_ id: Int) -> Bool { id >= 0 && id < specialFlags.count && specialFlags[id] }
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }
    public func id(of token: String) -> Int? { tokenToID[token] }
    public func score(_ id: Int) -> Float { id >= 0 && id < scores.count ? scores[id] : 0 }

    public func pieceBytes(_ id: Int, previous: Int?, atStartOfOutput: Bool, skipSpecialTokens: Bool) -> [UInt8] {
        if skipSpecialTokens && isSpecial(id) { return [] }
        let b = tokenBytes(id)
        guard b.first == 0x20 else { return b }
        switch flavor {
        case .llama2c:
            if let p = previous, p == bosTokenID { return Array(b.dropFirst()) }
        case .llamaCpp:
            if addSpacePrefix && atStartOfOutput { return Array(b.dropFirst()) }
        }
        return b
    }

    public func encode(_ text: String, addSpecialTokens: Bool, parseSpecial: Bool) -> [Int] {
        var out: [Int] = []
        if addSpecialTokens && addsBOSByDefault, let bos = bosTokenID { out.append(bos) }
        switch flavor {
        case .llama2c:
            if !text.isEmpty { encodePiece(Array((" " + text).utf8), into: &out) }
        case .llamaCpp:
            let bytes = Array(text.utf8)
            var previousWasSpecial = true
            for segment in added.split(bytes, parseSpecial: parseSpecial) {
                switch segment {
                case .token(let id):
                    out.append(id)
                    previousWasSpecial = true
                case .text(let r):
                    var piece: [UInt8] = addSpacePrefix && previousWasSpecial ? [0xE2, 0x96, 0x81] : []
                    for b in bytes[r] {
                        if b == 0x20 { piece += [0xE2, 0x96, 0x81] } else { piece.append(b) }
                    }
                    encodePiece(piece, into: &out)
                    previousWasSpecial = false
                }
            }
        }
        return out
    }

    // MARK: Merge loop

    private struct Bigram: Comparable {
        let score: Float
        let left: Int32
        let size: Int32
        let id: Int32
        /// Min-heap order: highest score first, then leftmost.
        static func < (a: Bigram, b: Bigram) -> Bool {
            a.score > b.score || (a.score == b.score && a.left < b.left)
        }
    }

    private func lookup(_ bytes: [UInt8], _ range: Range<Int>) -> Int? {
        tokenToID[String(decoding: bytes[range], as: UTF8.self)]
    }

    /// Encodes one piece of (already escaped) UTF-8 text with greedy best-score merges.
    private func encodePiece(_ bytes: [UInt8], into out: inout [Int]) {
        // Symbols: byte ranges; `fixed` ids for run.c byte fallback (never merged).
        var start: [Int32] = [], len: [Int32] = [], fixed: [Int32] = []
        var i = 0
        let n = bytes.count
        while i < n {
            let w = utf8Width(bytes[i])
            let l = min(w, n - i)
            if flavor == .llama2c && lookup(bytes, i..<(i + l)) == nil {
                for k in i..<(i + l) {
                    start.append(Int32(k)); len.append(1)
                    fixed.append(byteIDs[Int(bytes[k])] >= 0 ? byteIDs[Int(bytes[k])] : Int32(unknownTokenID ?? 0))
                }
            } else {
                start.append(Int32(i)); len.append(Int32(l)); fixed.append(-1)
            }
            i += l
        }
        let count = start.count
        if count == 0 { return }
        var prev = (0..<count).map { Int32($0 - 1) }
        var next = (0..<count).map { $0 + 1 < count ? Int32($0 + 1) : -1 }
        var merged = [Int32](repeating: -1, count: count)
        var heap = MinHeap<Bigram>()
        func tryAdd(_ l: Int, _ r: Int) {
            guard l >= 0, r >= 0, fixed[l] < 0, fixed[r] < 0 else { return }
            let a = Int(start[l]), e = Int(start[r] + len[r])
            guard let id = lookup(bytes, a..<e) else { return }
            heap.push(Bigram(score: scores[id], left: Int32(l), size: Int32(e - a), id: Int32(id)))
        }
        for k in 0..<(count - 1) { tryAdd(k, k + 1) }
        while let bg = heap.pop() {
            let l = Int(bg.left)
            let r = Int(next[l])
            guard len[l] > 0, r >= 0, len[r] > 0, len[l] + len[r] == bg.size else { continue }
            len[l] += len[r]
            len[r] = 0
            merged[l] = bg.id
            let nr = next[r]
            next[l] = nr
            if nr >= 0 { prev[Int(nr)] = Int32(l) }
            tryAdd(Int(prev[l]), l)
            tryAdd(l, Int(nr))
        }
        var k: Int32 = 0
        while k >= 0 {
            let s = Int(k)
            if fixed[s] >= 0 {
                out.append(Int(fixed[s]))
            } else if merged[s] >= 0 {
                out.append(Int(merged[s]))
            } else {
                let range = Int(start[s])..<Int(start[s] + len[s])
                if let id = lookup(bytes, range) {
                    out.append(id)
                } else {
                    for b in bytes[range] {
                        if byteIDs[Int(b)] >= 0 { out.append(Int(byteIDs[Int(b)])) } else if let u = unknownTokenID { out.append(u) }
                    }
                }
            }
            k = next[s]
        }
    }
}

@inline(__always)
func utf8Width(_ lead: UInt8) -> Int {
    switch lead {
    case 0..<0x80: return 1
    case 0xC0..<0xE0: return 2
    case 0xE0..<0xF0: return 3
    case 0xF0..<0xF8: return 4
    default: return 1
    }
}
