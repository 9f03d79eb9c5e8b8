import Foundation

/// The decisions of one scheduled sequence, for people (HTML) and programs (JSON).
public struct ExplainReport: Codable, Sendable {
    public struct Token: Codable, Sendable {
        public var position: Int
        public var id: Int
        public var text: String
        public var difficulty: Double
        public var rank: Int
        public var effectiveRank: Int
        public var lambda: Float
        public var signals: DifficultySignals
    }

    public var policy: String
    public var config: SchedulerConfig
    public var tokens: [Token]
    public var chunks: [Chunk]
    /// Share of tokens per rank (key: rank as a string, for JSON).
    public var rankShare: [String: Double]
    public var averageRank: Double
    public var maxRank: Int
    public var estimatorNanosecondsPerToken: Double

    /// Builds the report from a delta after a sequence has been run; `pieces` are the tokens' texts.
    public init(policy: String, delta: ChunkWiseDelta, ids: [Int], pieces: [String]) {
        self.policy = policy
        config = delta.config
        let stats = delta.statistics
        var toks: [Token] = []
        for (i, p) in delta.plans.enumerated() {
            let nominal = delta.config.mode == .adaptive ? delta.chunker.chunks[p.chunk].rank : p.inRank
            toks.append(Token(position: i, id: i < ids.count ? ids[i] : -1, text: i < pieces.count ? pieces[i] : "",
                              difficulty: delta.difficulties[i], rank: nominal, effectiveRank: p.effectiveRank, lambda: p.lambda,
                              signals: delta.signals[i]))
        }
        tokens = toks
        chunks = stats.chunks
        var share: [String: Double] = [:]
        for (r, n) in stats.tokensPerRank { share[String(r)] = Double(n) / Double(max(1, stats.tokens)) }
        rankShare = share
        averageRank = stats.averageRank
        maxRank = delta.ladder.maxRank
        estimatorNanosecondsPerToken = stats.estimatorNanosecondsPerToken
    }

    public func json() throws -> Data {
        let e = JSONEncoder()
        e.outputFormatting = [.prettyPrinted, .sortedKeys]
        return try e.encode(self)
    }

    static func escape(_ s: String) -> String {
        var o = ""
        for ch in s {
            switch ch {
            case "&": o += "&amp;"
            case "<": o += "&lt;"
            case ">": o += "&gt;"
            case "\"": o += "&quot;"
            case "'": o += "&#39;"
            default: o.append(ch)
            }
        }
        return o
    }

    /// Colour of a rank: base = grey, then blue → green → orange → red with the rank's share of the max.
    func colour(rank: Int) -> String {
        if rank == 0 { return "#e6e6e6" }
        let f = Double(rank) / Double(max(1, maxRank))
        let hue = Int(220 - 220 * f)  // 220 blue … 0 red
        return "hsl(\(hue), 75%, 78%)"
    }

    /// A self-contained HTML page: coloured text, difficulty curve (inline SVG), per-rank shares.
    public func html() -> String {
        var h = """
        <!DOCTYPE html><html><head><meta charset="utf-8"><title>ChunkWise explain</title>
        <style>body{font-family:system-ui,sans-serif;margin:24px;max-width:1100px}
        .txt{white-space:pre-wrap;font-family:ui-monospace,monospace;line-height:1.7;border:1px solid #ccc;padding:12px}
        .txt span{border-radius:3px} table{border-collapse:collapse} td,th{border:1px solid #ccc;padding:3px 8px;text-align:right}
        .key span{display:inline-block;padding:2px 8px;margin-right:6px;border-radius:3px}</style></head><body>
        <h1>ChunkWise explain</h1>
        """
        h += "<p>policy <b>\(Self.escape(policy))</b> · \(tokens.count) tokens · \(chunks.count) chunks · average rank <b>\(String(format: "%.2f", averageRank))</b> of \(maxRank)"
        h += " · estimator \(String(format: "%.0f", estimatorNanosecondsPerToken)) ns/token</p>"
        let ranks = Array(Set(config.tiers + tokens.map(\.rank))).sorted()
        h += "<p class=\"key\">" + ranks.map { "<span style=\"background:\(colour(rank: $0))\">rank \($0)</span>" }.joined() + "</p>"
        h += "<h2>Text</h2><div class=\"txt\">"
        for t in tokens {
            let title = "pos \(t.position) id \(t.id) rank \(t.rank) (computed \(t.effectiveRank), λ \(String(format: "%.2f", t.lambda))) difficulty \(String(format: "%.3f", t.difficulty))"
            h += "<span style=\"background:\(colour(rank: t.rank))\" title=\"\(Self.escape(title))\">\(Self.escape(t.text))</span>"
        }
        h += "</div>"
        // Difficulty curve with chunk bands.
        let W = 1000.0, H = 220.0, pad = 30.0
        let n = max(1, tokens.count)
        func x(_ i: Double) -> Double { pad + (W - 2 * pad) * i / Double(n) }
        func y(_ v: Double) -> Double { H - pad - (H - 2 * pad) * max(0, min(1, v)) }
        h += "<h2>Difficulty</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"\(Int(W))\" height=\"\(Int(H))\" viewBox=\"0 0 \(Int(W)) \(Int(H))\">"
        for c in chunks {
            h += "<rect x=\"\(x(Double(c.start)))\" y=\"\(pad)\" width=\"\(max(0.5, x(Double(c.end)) - x(Double(c.start))))\" height=\"\(H - 2 * pad)\" fill=\"\(colour(rank: c.rank))\" opacity=\"0.6\"><title>chunk \(c.start)-\(c.end) rank \(c.rank) α \(c.alpha) mean \(String(format: "%.3f", c.meanDifficulty))</title></rect>"
        }
        for th in config.thresholds {
            h += "<line x1=\"\(pad)\" x2=\"\(W - pad)\" y1=\"\(y(th))\" y2=\"\(y(th))\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>"
        }
        let pts = tokens.enumerated().map { "\(String(format: "%.1f", x(Double($0.offset) + 0.5))),\(String(format: "%.1f", y($0.element.difficulty)))" }.joined(separator: " ")
        h += "<polyline fill=\"none\" stroke=\"#222\" stroke-width=\"1.2\" points=\"\(pts)\"/>"
        h += "<line x1=\"\(pad)\" x2=\"\(W - pad)\" y1=\"\(H - pad)\" y2=\"\(H - pad)\" stroke=\"#000\"/><line x1=\"\(pad)\" x2=\"\(pad)\" y1=\"\(pad)\" y2=\"\(H - pad)\" stroke=\"#000\"/>"
        h += "<text x=\"4\" y=\"\(pad + 4)\" font-size=\"11\">1</text><text x=\"4\" y=\"\(H - pad)\" font-size=\"11\">0</text>"
        h += "<text x=\"\(W - pad - 60)\" y=\"\(H - 8)\" font-size=\"11\">token →</text></svg>"
        // Share per rank (bar chart + table).
        h += "<h2>Tokens per rank</h2><svg xmlns=\"http://www.w3.org/2000/svg\" width=\"420\" height=\"\(30 * ranks.count + 10)\">"
        for (i, r) in ranks.enumerated() {
            let s = rankShare[String(r)] ?? 0
            h += "<rect x=\"80\" y=\"\(10 + 30 * i)\" width=\"\(300 * s)\" height=\"20\" fill=\"\(colour(rank: r))\" stroke=\"#666\"/>"
            h += "<text x=\"4\" y=\"\(25 + 30 * i)\" font-size=\"12\">rank \(r)</text><text x=\"\(86 + 300 * s)\" y=\"\(25 + 30 * i)\" font-size=\"12\">\(String(format: "%.1f%%", 100 * s))</text>"
        }
        h += "</svg><h2>Chunks</h2><table><tr><th>start</th><th>end</th><th>rank</th><th>α</th><th>mean difficulty</th></tr>"
        for c in chunks {
            h += "<tr><td>\(c.start)</td><td>\(c.end)</td><td>\(c.rank)</td><td>\(String(format: "%.2f", c.alpha))</td><td>\(String(format: "%.3f", c.meanDifficulty))</td></tr>"
        }
        h += "</table></body></html>\n"
        return h
    }
}
