import Foundation

/// Holds back text that might be the start of a stop string, and finds stop strings that
/// straddle token boundaries. (The same algorithm as the engine's internal `StopMatcher`, so that
/// the server's text equals `Engine.complete`'s.)
struct ServerStopMatcher: Sendable {
    let stops: [String]
    private(set) var text = ""
    private var emitted = 0

    init(stops: [String]) { self.stops = stops.filter { !$0.isEmpty } }

    /// Adds text; returns what can be released and whether a stop string was found.
    mutating func append(_ piece: String) -> (release: String, stopped: Bool) {
        text += piece
        if let cut = earliestStop() {
            // Never slice backwards, whatever the stop strings (they come from requests).
            let start = text.index(text.startIndex, offsetBy: min(emitted, text.count))
            let out = start <= cut ? String(text[start..<cut]) : ""
            text = String(text[..<cut])
            emitted = text.count
            return (out, true)
        }
        var hold = 0
        for s in stops {
            var k = min(s.count - 1, text.count)
            while k > hold {
                if text.hasSuffix(String(s.prefix(k))) { hold = k; break }
                k -= 1
            }
        }
        let releasable = text.count - hold
        guard releasable > emitted else { return ("", false) }
        let a = text.index(text.startIndex, offsetBy: emitted), b = text.index(text.startIndex, offsetBy: releasable)
        emitted = releasable
        return (String(text[a..<b]), false)
    }

    /// Everything not yet released.
    mutating func flush() -> String {
        let out = String(text.dropFirst(emitted))
        emitted = text.count
        return out
    }

    private func earliestStop() -> String.Index? {
        var best: String.Index? = nil
        for s in stops {
            if let r = text.range(of: s) {
                if let b = best { if r.lowerBound < b { best = r.lowerBound } } else { best = r.lowerBound }
            }
        }
        return best
    }
}
