/// CWTokenizers — the tokenizers ChunkWise needs to turn text into token ids and back.
///
/// What's here:
/// - `BPETokenizer`: rank-merge BPE as in HuggingFace `tokenizers` and llama.cpp's BPE vocab —
///   GPT-2 style byte-level BPE (SmolLM2, Llama 3, Qwen2 pre-tokenizers; GGUF `tokenizer.ggml.model = gpt2`
///   and tokenizer.json `ByteLevel`) and Metaspace/byte-fallback BPE from tokenizer.json.
/// - `SentencePieceTokenizer`: score-merge SentencePiece BPE as in llama.cpp's SPM vocab (GGUF
///   `tokenizer.ggml.model = llama`) and karpathy's llama2.c `run.c` (`tok*.bin`).
/// - `StreamingDecoder`: incremental decoding that never emits a partial UTF-8 sequence.
/// - `TokenizerLoader`: builds the right tokenizer from a GGUF file, a HF tokenizer.json or a llama2.c tokenizer.
///
/// Why our own: no maintained pure-Swift tokenizer library is available to this project, and the engine
/// needs byte-exact parity with the reference implementations (HF `tokenizers` and llama.cpp) — every id must
/// match the goldens. The pre-tokenizer regexes are implemented as hand-written scanners over Unicode scalars
/// (fast, and no regex-engine lookahead differences).
///
/// All tokenizers are immutable and `Sendable`; none of them traps on malformed input files.
import Foundation

/// A text ⇄ token-id converter.
public protocol Tokenizer: Sendable {
    var vocabularySize: Int { get }
    var bosTokenID: Int? { get }
    /// All ids that end generation (e.g. `<|im_end|>`, `<|endoftext|>`; llama2.c: 2).
    var eosTokenIDs: [Int] { get }
    /// Whether `encode(_:addSpecialTokens: true, ...)` prepends BOS.
    var addsBOSByDefault: Bool { get }
    /// - Parameters:
    ///   - addSpecialTokens: prepend BOS when the tokenizer does so by default.
    ///   - parseSpecial: match special/added tokens literally in the text (HF default). When false, special
    ///     (control) tokens are tokenized as plain text; non-special added tokens are still matched (as HF and
    ///     llama.cpp do).
    func encode(_ text: String, addSpecialTokens: Bool, parseSpecial: Bool) -> [Int]
    func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String
    /// The raw bytes the token contributes when decoded in the middle of a text.
    func tokenBytes(_ id: Int) -> [UInt8]
    func isSpecial(_ id: Int) -> Bool
    /// The vocabulary entry (e.g. "Ġthe").
    func tokenString(_ id: Int) -> String?
    func id(of token: String) -> Int?
    /// The bytes token `id` contributes to a decode, given the token before it (`nil` at the start of the
    /// sequence) and whether it is the first token decoded (`atStartOfOutput`; skipped special tokens don't count). `decode` concatenates these; position-dependent rules
    /// (SentencePiece's leading-space strip, llama2.c's "no space after BOS") live here so that
    /// `StreamingDecoder` reproduces `decode` exactly.
    func pieceBytes(_ id: Int, previous: Int?, atStartOfOutput: Bool, skipSpecialTokens: Bool) -> [UInt8]
}

extension Tokenizer {
    public func encode(_ text: String) -> [Int] {
        encode(text, addSpecialTokens: true, parseSpecial: true)
    }

    public func decode(_ ids: [Int]) -> String { decode(ids, skipSpecialTokens: false) }

    /// The decoded bytes (before UTF-8 validation).
    public func decodeBytes(_ ids: [Int], skipSpecialTokens: Bool) -> [UInt8] {
        var out: [UInt8] = []
        var previous: Int? = nil
        var atStart = true
        for id in ids {
            out += pieceBytes(id, previous: previous, atStartOfOutput: atStart, skipSpecialTokens: skipSpecialTokens)
            if !(skipSpecialTokens && isSpecial(id)) { atStart = false }
            previous = id
        }
        return out
    }

    /// Default decode: concatenated piece bytes, invalid UTF-8 replaced by U+FFFD (maximal subparts, like Rust's
    /// `from_utf8_lossy`).
    public func decode(_ ids: [Int], skipSpecialTokens: Bool) -> String {
        String(decoding: decodeBytes(ids, skipSpecialTokens: skipSpecialTokens), as: UTF8.self)
    }
}

/// Errors from the tokenizer loaders; `field` names the offending metadata field / JSON key.
public struct TokenizerError: Error, CustomStringConvertible, Equatable, Sendable {
    public let path: String
    public let field: String
    public let message: String
    public init(path: String, field: String, message: String) {
        self.path = path
        self.field = field
        self.message = message
    }
    public var description: String { "\(path): \(field): \(message)" }
}

/// Streaming-safe decoding: feed ids one at a time, get text as soon as it is complete UTF-8.
/// Concatenating all `append` results and the final `flush()` equals `tokenizer.decode(ids, skipSpecialTokens:)`.
public struct StreamingDecoder: Sendable {
    public let tokenizer: any Tokenizer
    public let skipSpecialTokens: Bool
    private var pending: [UInt8] = []
    private var previous: Int? = nil
    private var producedAny = false

    public init(tokenizer: any Tokenizer, skipSpecialTokens: Bool = false) {
        self.tokenizer = tokenizer
        self.skipSpecialTokens = skipSpecialTokens
    }

    /// Text completed by this token (may be "").
    public mutating func append(_ id: Int) -> String {
        let bytes = tokenizer.pieceBytes(id, previous: previous, atStartOfOutput: !producedAny,
                                         skipSpecialTokens: skipSpecialTokens)
        previous = id
        if !(skipSpecialTokens && tokenizer.isSpecial(id)) { producedAny = true }
        pending += bytes
        let cut = StreamingDecoder.completePrefixLength(pending)
        if cut == 0 { return "" }
        let text = String(decoding: pending[0..<cut], as: UTF8.self)
        pending.removeFirst(cut)
        return text
    }

    /// Whatever bytes remain (invalid sequences → U+FFFD).
    public mutating func flush() -> String {
        defer { pending.removeAll() }
        return String(decoding: pending, as: UTF8.self)
    }

    /// Length of the prefix of `bytes` that can be decoded now: everything except a trailing sequence that is a
    /// valid-so-far but incomplete UTF-8 encoding (which a later token may complete). Cutting before a lead byte
    /// never changes how the prefix decodes (a lead byte always ends a maximal invalid subpart).
    static func completePrefixLength(_ bytes: [UInt8]) -> Int {
        let n = bytes.count
        var i = n - 1
        let lowest = max(0, n - 4)
        while i >= lowest && (bytes[i] & 0xC0) == 0x80 { i -= 1 }
        if i < lowest { return n }  // only continuation bytes at the end: invalid anyway
        let lead = bytes[i]
        let need: Int
        switch lead {
        case 0xC2...0xDF: need = 2
        case 0xE0...0xEF: need = 3
        case 0xF0...0xF4: need = 4
        default: return n
        }
        let have = n - i
        if have >= need { return n }
        if have >= 2 {
            let b1 = bytes[i + 1]
            let ok: Bool
            switch lead {
            case 0xE0: ok = (0xA0...0xBF).contains(b1)
            case 0xED: ok = (0x80...0x9F).contains(b1)
            case 0xF0: ok = (0x90...0xBF).contains(b1)
            case 0xF4: ok = (0x80...0x8F).contains(b1)
            default: ok = (0x80...0xBF).contains(b1)
            }
            if !ok { return n }
        }
        return i
    }
}

// MARK: - Shared helpers

/// A binary min-heap.
struct MinHeap<T: Comparable> {
    private(set) var items: [T] = []
    init() { items.reserveCapacity(64) }
    var isEmpty: Bool { items.isEmpty }
    mutating func push(_ x: T) {
        items.append(x)
        var i = items.count - 1
        while i > 0 {
            let p = (i - 1) / 2
            if items[i] < items[p] { items.swapAt(i, p); i = p } else { break }
        }
    }
    mutating func pop() -> T? {
        guard let top = items.first else { return nil }
        let last = items.removeLast()
        if !items.isEmpty {
            items[0] = last
            var i = 0
            let n = items.count
            while true {
                let l = 2 * i + 1, r = l + 1
                var m = i
                if l < n && items[l] < items[m] { m = l }
                if r < n && items[r] < items[m] { m = r }
                if m == i { break }
                items.swapAt(i, m)
                i = m
            }
        }
        return top
    }
}

/// Leftmost-longest literal matcher for added/special tokens, on UTF-8 bytes.
struct AddedTokenMatcher: Sendable {
    struct Entry: Sendable {
        let bytes: [UInt8]
        let id: Int
        let special: Bool
    }
    enum Segment: Equatable {
        case text(Range<Int>)
        case token(Int)
    }
    /// Candidates by first byte, longest first.
    private let byFirstByte: [[Entry]]
    let isEmpty: Bool

    init(_ entries: [Entry]) {
        var table = [[Entry]](repeating: [], count: 256)
        for e in entries where !e.bytes.isEmpty { table[Int(e.bytes[0])].append(e) }
        for i in 0..<256 { table[i].sort { $0.bytes.count > $1.bytes.count } }
        byFirstByte = table
        isEmpty = entries.allSatisfy { $0.bytes.isEmpty }
    }

    func split(_ bytes: [UInt8], parseSpecial: Bool) -> [Segment] {
        if isEmpty { return bytes.isEmpty ? [] : [.text(0..<bytes.count)] }
        var segments: [Segment] = []
        var textStart = 0
        var i = 0
        let n = bytes.count
        outer: while i < n {
            let candidates = byFirstByte[Int(bytes[i])]
            if !candidates.isEmpty {
                for e in candidates where (parseSpecial || !e.special) && e.bytes.count <= n - i {
                    var match = true
                    var k = 1
                    while k < e.bytes.count {
                        if bytes[i + k] != e.bytes[k] { match = false; break }
                        k += 1
                    }
                    if match {
                        if textStart < i { segments.append(.text(textStart..<i)) }
                        segments.append(.token(e.id))
                        i += e.bytes.count
                        textStart = i
                        continue outer
                    }
                }
            }
            i += 1
        }
        if textStart < n { segments.append(.text(textStart..<n)) }
        return segments
    }
}

/// Parses "<0xAB>" → 0xAB.
func parseByteToken(_ s: String) -> UInt8? {
    let u = Array(s.utf8)
    guard u.count == 6, u[0] == 0x3C, u[1] == 0x30, u[2] == 0x78, u[5] == 0x3E else { return nil }
    func hex(_ c: UInt8) -> UInt8? {
        switch c {
        case 0x30...0x39: return c - 0x30
        case 0x41...0x46: return c - 0x41 + 10
        case 0x61...0x66: return c - 0x61 + 10
        default: return nil
        }
    }
    guard let h = hex(u[3]), let l = hex(u[4]) else { return nil }
    return h << 4 | l
}

/// Token texts llama.cpp treats as end-of-generation when they are control tokens.
let knownEndOfGenerationTexts: Set<String> = [
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>", "<EOT>", "_<EOT>",
    "<｜end▁of▁sentence｜>", "<|eom_id|>",
]

func warn(_ message: String) {
    FileHandle.standardError.write(Data("CWTokenizers warning: \(message)\n".utf8))
}
