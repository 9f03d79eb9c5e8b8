/// CWEval — evaluation of ChunkWise engines and the policy report.
///
/// - ``Perplexity``: token-level perplexity over non-overlapping or sliding windows (the
///   HuggingFace perplexity guide's window rule), per-window NLL sums.
/// - ``SQuADMetric`` / ``SQuADEval``: the official SQuAD v2.0 normalization, EM / F1 (max over the
///   gold answers, HasAns / NoAns splits) and greedy extractive-QA generation.
/// - ``BLEU`` / ``CHRF``: corpus and sentence BLEU and chrF, reproducing sacrebleu 2.x exactly
///   (13a tokenizer, exp smoothing, effective order, signature and formatted line).
/// - ``PolicyReport``: runs each scheduler policy (through a ``PolicyRunner``) on the same work
///   and renders report.md / report.html with SVG charts.
///
/// String handling follows Python where the reference implementations are Python: texts are
/// compared as sequences of Unicode scalars (code points), never as Swift `Character`s, and
/// "whitespace" is Python's `str.isspace()` set.
import Foundation

/// Python `str` behaviour on Unicode scalars.
public enum PyText {
    /// Python's `str.isspace()`.
    @inline(__always)
    public static func isSpace(_ c: UInt32) -> Bool {
        switch c {
        case 0x09...0x0D, 0x1C...0x20, 0x85, 0xA0, 0x1680, 0x2000...0x200A, 0x2028, 0x2029, 0x202F, 0x205F, 0x3000: return true
        default: return false
        }
    }

    /// Code points of a string.
    public static func scalars(_ s: String) -> [UInt32] { s.unicodeScalars.map { $0.value } }

    public static func string(_ cps: some Sequence<UInt32>) -> String {
        var s = String.UnicodeScalarView()
        for c in cps { if let u = Unicode.Scalar(c) { s.append(u) } }
        return String(s)
    }

    /// Python's `s.split()`: runs of whitespace separate, no empty pieces.
    public static func split(_ cps: [UInt32]) -> [ArraySlice<UInt32>] {
        var out: [ArraySlice<UInt32>] = []
        var i = 0
        let n = cps.count
        while i < n {
            while i < n && isSpace(cps[i]) { i += 1 }
            if i >= n { break }
            let start = i
            while i < n && !isSpace(cps[i]) { i += 1 }
            out.append(cps[start..<i])
        }
        return out
    }

    /// Python's `s.rstrip()`.
    public static func rstrip(_ cps: [UInt32]) -> [UInt32] {
        var end = cps.count
        while end > 0 && isSpace(cps[end - 1]) { end -= 1 }
        return Array(cps[0..<end])
    }

    /// Python's `s.strip()` on a String.
    public static func strip(_ s: String) -> String {
        let cps = scalars(s)
        var a = 0, b = cps.count
        while a < b && isSpace(cps[a]) { a += 1 }
        while b > a && isSpace(cps[b - 1]) { b -= 1 }
        return string(cps[a..<b])
    }

    /// Lines of a UTF-8 text file as Python's text mode reads them (universal newlines: `\r\n` and
    /// `\r` become `\n`), each with only its trailing newline removed.
    public static func readLines(_ path: String) throws -> [String] {
        lines(try readUTF8(path))
    }

    public static func lines(_ text: String) -> [String] {
        var out: [String] = []
        var cur = String.UnicodeScalarView()
        var prevCR = false
        var pending = false
        for u in text.unicodeScalars {
            if u == "\r" { out.append(String(cur)); cur = .init(); prevCR = true; pending = false; continue }
            if u == "\n" {
                if prevCR { prevCR = false; continue }
                out.append(String(cur)); cur = .init(); pending = false; continue
            }
            prevCR = false
            cur.append(u)
            pending = true
        }
        if pending { out.append(String(cur)) }
        return out
    }
}

/// Errors of the evaluation code.
public enum EvalError: Error, CustomStringConvertible, Equatable {
    case invalidInput(String)
    case unsupportedPolicy(String)

    public var description: String {
        switch self {
        case .invalidInput(let s): return s
        case .unsupportedPolicy(let s): return s
        }
    }
}

/// Reads a UTF-8 file strictly.
func readUTF8(_ path: String) throws -> String {
    let data: Data
    do { data = try Data(contentsOf: URL(fileURLWithPath: path)) } catch { throw EvalError.invalidInput("cannot read \(path): \(error.localizedDescription)") }
    // Validate strictly, but keep a leading byte-order mark as U+FEFF, like Python's
    // `open(path, encoding="utf-8")` (Foundation's decoder would drop it).
    guard String(data: data, encoding: .utf8) != nil else { throw EvalError.invalidInput("\(path) is not valid UTF-8") }
    return String(decoding: data, as: UTF8.self)
}
