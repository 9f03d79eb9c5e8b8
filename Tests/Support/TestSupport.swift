import Foundation
import XCTest

/// Where the tests find the shared goldens and the default model.
///
/// `../shared` sits beside the checkout (read-only, present in CI). The SmolLM2 GGUF is fetched
/// by the README's test command into `.cache/models/`; `CHUNKWISE_MODEL` overrides its path.
public enum TestPaths {
    public static func packageRoot(_ file: String = #filePath) -> URL {
        // Tests/<Target>/<File>.swift → package root
        URL(fileURLWithPath: file).deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    }

    public static var shared: URL {
        if let s = ProcessInfo.processInfo.environment["CHUNKWISE_SHARED"] { return URL(fileURLWithPath: s) }
        return packageRoot().deletingLastPathComponent().appendingPathComponent("shared")
    }

    public static var smolLM2: URL {
        if let s = ProcessInfo.processInfo.environment["CHUNKWISE_MODEL"] { return URL(fileURLWithPath: s) }
        return packageRoot().appendingPathComponent(".cache/models/SmolLM2-135M-Instruct.Q4_1.gguf")
    }

    /// The path of a file under ../shared, or a visible skip when ../shared is absent.
    public static func sharedFile(_ relative: String) throws -> String {
        let u = shared.appendingPathComponent(relative)
        guard FileManager.default.fileExists(atPath: u.path) else {
            throw XCTSkip("SKIPPED: \(u.path) not found — ../shared (goldens and small models) is missing beside the checkout")
        }
        return u.path
    }

    /// The SmolLM2 GGUF, or a visible skip when it has not been fetched.
    public static func smolLM2Path() throws -> String {
        guard FileManager.default.fileExists(atPath: smolLM2.path) else {
            throw XCTSkip("SKIPPED: \(smolLM2.path) not found — run scripts/fetch-model.sh (the README's test command does)")
        }
        return smolLM2.path
    }

    public static func json(_ relative: String) throws -> [String: Any] {
        let p = try sharedFile(relative)
        let d = try Data(contentsOf: URL(fileURLWithPath: p))
        guard let o = try JSONSerialization.jsonObject(with: d) as? [String: Any] else {
            throw NSError(domain: "TestPaths", code: 1, userInfo: [NSLocalizedDescriptionKey: "\(p) is not a JSON object"])
        }
        return o
    }

    /// A little-endian float32 array file.
    public static func floats(_ relative: String) throws -> [Float] {
        let p = try sharedFile(relative)
        let d = try Data(contentsOf: URL(fileURLWithPath: p))
        return d.withUnsafeBytes { raw in
            (0..<(d.count / 4)).map { Float(bitPattern: UInt32(littleEndian: raw.loadUnaligned(fromByteOffset: $0 * 4, as: UInt32.self))) }
        }
    }
}

/// Comparisons with the goldens' stated tolerances.
public enum Compare {
    public static func maxAbsDiff(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Float {
        zip(a, b).reduce(0) { max($0, abs($1.0 - $1.1)) }
    }

    public static func relativeL2(_ a: ArraySlice<Float>, _ b: ArraySlice<Float>) -> Double {
        var num = 0.0, den = 0.0
        for (x, y) in zip(a, b) { num += Double(x - y) * Double(x - y); den += Double(y) * Double(y) }
        return (num / max(den, 1e-30)).squareRoot()
    }

    public static func argmax(_ a: ArraySlice<Float>) -> Int {
        var best = a.startIndex
        for i in a.indices where a[i] > a[best] { best = i }
        return best - a.startIndex
    }

    /// Negative log-likelihood of `target` under `logits` (log-softmax in float64).
    public static func nll(_ logits: ArraySlice<Float>, target: Int) -> Double {
        let m = Double(logits.max() ?? 0)
        var s = 0.0
        for v in logits { s += Foundation.exp(Double(v) - m) }
        return -(Double(logits[logits.startIndex + target]) - m - Foundation.log(s))
    }
}
