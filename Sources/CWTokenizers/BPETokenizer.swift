// Rank-merge BPE (HF `tokenizers` BPE model, llama.cpp BPE vocab): byte-level (GPT-2 family) and Metaspace.

/// Text normalization steps (tokenizer.json normalizers that SentencePiece-era Llama files use).
public enum NormalizerStep: Sendable, Equatable {
    case prepend(String)
    case replace(String, String)
}

/// Metaspace (SentencePiece-style) handling for `BPETokenizer`.
public struct MetaspaceOptions: Sendable {
    public enum PrependScheme: String, Sendable { case always, first, never }
    /// Normalizer steps, applied first (e.g. Prepend("▁"), Replace(" ", "▁")).
    public var normalizers: [NormalizerStep] = []
    /// Metaspace pre-tokenizer: nil when there is none.
    public var preTokenizer: (prependScheme: PrependScheme, split: Bool)? = nil
    public var replacement: String = "▁"
    /// Decoder strips one leading space from the very start of the output.
    public var stripLeadingSpace: Bool = true
    public init() {}
}

public final class BPETokenizer: Tokenizer {
    public enum Mode: Sendable {
        case byteLevel(PreTokenizerKind, addPrefixSpace: Bool)
        case metaspace(MetaspaceOptions)
    }

    public let mode: Mode
    public let vocabularySize: Int
    public let bosTokenID: Int?
    public let eosTokenIDs: [Int]
    public let addsBOSByDefault: Bool
    public let unknownTokenID: Int?
    public let byteFallback: Bool
    public let ignoreMerges: Bool

    private let tokens: [String]
    private let tokenToID: [String: Int]
    /// (left id << 32 | right id) → (rank << 32 | merged id)
    private let merges: [UInt64: UInt64]
    private let bytesTable: [[UInt8]]
    private let specialFlags: [Bool]
    private let added: AddedTokenMatcher
    /// Byte-level: id of the single-byte token for each byte (-1: none). Metaspace: id of `<0xXX>` (-1: none).
    private let byteIDs: [Int32]

    /// - Parameters:
    ///   - merges: merge pairs in rank order (rank = index).
    ///   - addedTokens: tokens matched verbatim before BPE, with whether they are special (skippable, and only
    ///     matched when `parseSpecial`).
    public init(tokens: [String], merges: [(String, String)], mode: Mode,
                addedTokens: [(id: Int, special: Bool)] = [],
                bosTokenID: Int? = nil, eosTokenIDs: [Int] = [], addsBOSByDefault: Bool = false,
                unknownTokenID: Int? = nil, byteFallback: Bool = false, ignoreMerges: Bool = false) {
        self.mode = mode
        self.tokens = tokens
        self.vocabularySize = tokens.count
        self.bosTokenID = bosTokenID
        self.eosTokenIDs = eosTokenIDs
        self.addsBOSByDefault = addsBOSByDefault
        self.unknownTokenID = unknownTokenID
        self.byteFallback = byteFallback
        self.ignoreMerges = ignoreMerges

        var t2i = [String: Int](minimumCapacity: tokens.count)
        for (i, t) in tokens.enumerated() where t2i[t] == nil { t2i[t] = i }
        self.tokenToID = t2i

        var m = [UInt64: UInt64](minimumCapacity: merges.count)
        for (rank, pair) in merges.enumerated() {
            guard let a = t2i[pair.0], let b = t2i[pair.1], let c = t2i[pair.0 + pair.1] else { continue }
            let key = UInt64(a) << 32 | UInt64(b)
            if m[key] == nil { m[key] = UInt64(rank) << 32 | UInt64(c) }
        }
        self.merges = m

        var flags = [Bool](repeating: false, count: tokens.count)
        var addedIDs = Set<Int>()
        var entries: [AddedTokenMatcher.Entry] = []
        for a in addedTokens where a.id >= 0 && a.id < tokens.count {
            flags[a.id] = a.special
            addedIDs.insert(a.id)
            entries.append(.init(bytes: Array(tokens[a.id].utf8), id: a.id, special: a.special))
        }
        self.specialFlags = flags
        self.added = AddedTokenMatcher(entries)

        var table: [[UInt8]] = []
        table.reserveCapacity(tokens.count)
        var byteIDs = [Int32](repeating: -1, count: 256)
        switch mode {
        case .byteLevel:
            for (i, t) in tokens.enumerated() {
                if addedIDs.contains(i) { table.append(Array(t.utf8)); continue }
                table.append(ByteLevelMap.decode(t) ?? Array(t.utf8))
            }
            for b in 0..<256 {
                if let id = t2i[String(Character(ByteLevelMap.byteToScalar[b]))] { byteIDs[b] = Int32(id) }
            }
        case .metaspace(let opts):
            for (i, t) in tokens.enumerated() {
                if addedIDs.contains(i) { table.append(Array(t.utf8)); continue }
                if byteFallback, let b = parseByteToken(t) {
                    table.append([b])
                    if byteIDs[Int(b)] < 0 { byteIDs[Int(b)] = Int32(i) }
                    continue
                }
                table.append(Array(t.replacingOccurrences(of: opts.replacement, with: " ").utf8))
            }
        }
        self.bytesTable = table
        self.byteIDs = byteIDs
    }

    // MARK: Tokenizer

    public func tokenBytes(_ id: Int) -> [UInt8] {
        guard id >= 0 && id < bytesTable.count else { return [] }
        return bytesTable[id]
    }
    public func isSpecial(_ id: Int) -> Bool { id >= 0 && id < specialFlags.count && specialFlags[id] }
    public func tokenString(_ id: Int) -> String? { id >= 0 && id < tokens.count ? tokens[id] : nil }
    public func id(of token: String) -> Int? { tokenToID[token] }

    public func pieceBytes(_ id: Int, previous: Int?, atStartOfOutput: Bool, skipSpecialTokens: Bool) -> [UInt8] {
        if skipSpecialTokens && isSpecial(id) { return [] }
        let b = tokenBytes(id)
        if case .metaspace(let opts) = mode, opts.stripLeadingSpace, atStartOfOutput, b.first == 0x20 {
            return Array(b.dropFirst())
        }
        return b
    }

    public func encode(_ text: String, addSpecialTokens: Bool, parseSpecial: Bool) -> [Int] {
        var out: [Int] = []
        if addSpecialTokens && addsBOSByDefault, let bos = bosTokenID { out.append(bos) }
        let bytes = Array(text.utf8)
        var cache: [[UInt8]: [Int32]] = [:]
        for segment in added.split(bytes, parseSpecial: parseSpecial) {
            switch segment {
            case .token(let id): out.append(id)
            case .text(let r):
                let s = String(decoding: bytes[r], as: UTF8.self)
                switch mode {
                case .byteLevel(let kind, let addPrefixSpace):
                    encodeByteLevel(addPrefixSpace && !s.hasPrefix(" ") ? " " + s : s, kind: kind, cache: &cache, into: &out)
                case .metaspace(let opts):
                    encodeMetaspace(s, isFirst: r.lowerBound == 0, opts: opts, into: &out)
                }
            }
        }
        return out
    }

    // MARK: Encoding internals

    private func encodeByteLevel(_ s: String, kind: PreTokenizerKind, cache: inout [[UInt8]: [Int32]], into out: inout [Int]) {
        let scalars = Array(s.unicodeScalars)
        var offsets = [Int](repeating: 0, count: scalars.count + 1)
        for (i, sc) in scalars.enumerated() { offsets[i + 1] = offsets[i] + UTF8.width(sc) }
        let bytes = Array(s.utf8)
        for r in preTokenize(scalars, kind: kind) {
            let word = Array(bytes[offsets[r.lowerBound]..<offsets[r.upperBound]])
            if let hit = cache[word] {
                for id in hit { out.append(Int(id)) }
                continue
            }
            var ids: [Int32]
            if ignoreMerges, let whole = tokenToID[ByteLevelMap.encode(word)] {
                ids = [Int32(whole)]
            } else {
                ids = []
                ids.reserveCapacity(word.count)
                for b in word where byteIDs[Int(b)] >= 0 { ids.append(byteIDs[Int(b)]) }
                ids = rankMerge(ids)
            }
            cache[word] = ids
            for id in ids { out.append(Int(id)) }
        }
    }

    private func encodeMetaspace(_ input: String, isFirst: Bool, opts: MetaspaceOptions, into out: inout [Int]) {
        var s = input
        for step in opts.normalizers {
            switch step {
            case .prepend(let p): if !s.isEmpty { s = p + s }
            case .replace(let a, let b): s = s.replacingOccurrences(of: a, with: b)
            }
        }
        var words: [String] = [s]
        if let pre = opts.preTokenizer {
            s = s.replacingOccurrences(of: " ", with: opts.replacement)
            let prepend: Bool
            switch pre.prependScheme {
            case .always: prepend = true
            case .first: prepend = isFirst
            case .never: prepend = false
            }
            if prepend && !s.hasPrefix(opts.replacement) { s = opts.replacement + s }
            words = [s]
            if pre.split, let rep = opts.replacement.unicodeScalars.first {
                words = []
                var current = String.UnicodeScalarView()
                for sc in s.unicodeScalars {
                    if sc == rep && !current.isEmpty { words.append(String(current)); current = .init() }
                    current.append(sc)
                }
                if !current.isEmpty { words.append(String(current)) }
            }
        }
        for word in words where !word.isEmpty {
            if ignoreMerges, let whole = tokenToID[word] { out.append(whole); continue }
            var ids: [Int32] = []
            var lastWasUnk = false
            for sc in word.unicodeScalars {
                if let id = tokenToID[String(Character(sc))] {
                    ids.append(Int32(id)); lastWasUnk = false
                    continue
                }
                if byteFallback {
                    let utf8 = Array(String(Character(sc)).utf8)
                    if utf8.allSatisfy({ byteIDs[Int($0)] >= 0 }) {
                        for b in utf8 { ids.append(byteIDs[Int(b)]) }
                        lastWasUnk = false
                        continue
                    }
                }
                if let unk = unknownTokenID, !lastWasUnk {
                    ids.append(Int32(unk)); lastWasUnk = true
                }
            }
            for id in rankMerge(ids) { out.append(Int(id)) }
        }
    }

    /// Applies merges by rank (lowest first; ties → leftmost), as HF `Word::merge_all` and llama.cpp.
    func rankMerge(_ input: [Int32]) -> [Int32] {
        let n = input.count
        if n < 2 { return input }
        var ids = input
        var prev = [Int32](repeating: -1, count: n)
        var next = [Int32](repeating: -1, count: n)
        var alive = [Bool](repeating: true, count: n)
        for i in 0..<n {
            prev[i] = Int32(i - 1)
            next[i] = i + 1 < n ? Int32(i + 1) : -1
        }
        // Heap key: rank << 32 | left position.
        var heap = MinHeap<UInt64>()
        @inline(__always) func lookup(_ a: Int32, _ b: Int32) -> UInt64? {
            merges[UInt64(UInt32(bitPattern: a)) << 32 | UInt64(UInt32(bitPattern: b))]
        }
        for i in 0..<(n - 1) {
            if let m = lookup(ids[i], ids[i + 1]) { heap.push((m >> 32) << 32 | UInt64(i)) }
        }
        while let top = heap.pop() {
            let left = Int(top & 0xFFFF_FFFF)
            let rank = top >> 32
            guard alive[left] else { continue }
            let right = Int(next[left])
            guard right >= 0, let m = lookup(ids[left], ids[right]), m >> 32 == rank else { continue }
            ids[left] = Int32(truncatingIfNeeded: m & 0xFFFF_FFFF)
            alive[right] = false
            let nr = next[right]
            next[left] = nr
            if nr >= 0 { prev[Int(nr)] = Int32(left) }
            let p = prev[left]
            if p >= 0, let pm = lookup(ids[Int(p)], ids[left]) { heap.push((pm >> 32) << 32 | UInt64(p)) }
            if nr >= 0, let nm = lookup(ids[left], ids[Int(nr)]) { heap.push((nm >> 32) << 32 | UInt64(left)) }
        }
        var out: [Int32] = []
        out.reserveCapacity(n)
        var i: Int32 = 0
        while i >= 0 { out.append(ids[Int(i)]); i = next[Int(i)] }
        return out
    }
}
