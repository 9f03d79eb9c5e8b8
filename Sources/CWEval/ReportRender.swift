import Foundation

/// Text formatting of report values; nil → "n/a".
enum Cell {
    static func num(_ v: Double?, _ digits: Int) -> String { v.map { pyFormat($0, digits) } ?? "n/a" }
    static func mib(_ b: Int?) -> String { b.map { pyFormat(Double($0) / 1_048_576, 1) } ?? "n/a" }
    static func shares(_ s: [PolicyRow.RankShare]?) -> String {
        guard let s else { return "n/a" }
        return s.map { "r\($0.rank): \(pyFormat(100 * $0.share, 1))%" }.joined(separator: ", ")
    }
}

/// report.md and report.html.
public enum ReportRenderer {
    static func columns(_ r: PolicyReport) -> [String] {
        let depths = depthList(r)
        return ["policy", "status", "perplexity", "EM", "F1", "BLEU vs \(r.reference_policy)", "prefill tok/s"]
            + depths.map { "decode ms/token @\($0)" }
            + ["TTFT ms", "peak RSS MiB", "KV MiB", "adapter MiB", "avg rank", "rank-tier share"]
    }

    static func depthList(_ r: PolicyReport) -> [Int] {
        Array(Set(r.rows.flatMap { $0.decode.map(\.depth) })).sorted()
    }

    static func cells(_ row: PolicyRow, depths: [Int]) -> [String] {
        [row.policy, row.ran ? "ok" : String(row.status.prefix { $0 != ":" }), Cell.num(row.perplexity, 4), Cell.num(row.squad_exact, 2), Cell.num(row.squad_f1, 2),
         Cell.num(row.bleu_vs_reference, 2), Cell.num(row.prefill_tok_s, 1)]
            + depths.map { d in Cell.num(row.decode.first { $0.depth == d }?.decode_ms_per_token, 2) }
            + [Cell.num(row.ttft_ms, 1), Cell.mib(row.peak_rss_bytes), Cell.mib(row.kv_bytes), Cell.mib(row.adapter_bytes),
               Cell.num(row.average_rank, 2), Cell.shares(row.rank_shares)]
    }

    static func setupLines(_ r: PolicyReport) -> [String] {
        ["model: \(r.model)" + (r.adapters.isEmpty ? "" : " + " + r.adapters.joined(separator: ", ")),
         "precision: \(r.precision), threads: \(r.threads)",
         "perplexity: \(r.perplexity_setup)",
         "SQuAD: \(r.squad_setup)",
         "speed: \(r.bench_setup)",
         "generated: \(r.generated_at)"]
    }

    static let notes = [
        "n/a = not measured or not available in this build (never estimated).",
        "BLEU = corpus BLEU (sacrebleu 13a) of the policy's SQuAD answers against the reference policy's answers.",
        "Peak RSS is the process's high-water mark while the policy ran (reset before each policy on Linux).",
        "Average rank and rank-tier shares come from the scheduler's statistics; base/static/merged are fixed by construction.",
    ]

    public static func markdown(_ r: PolicyReport, charts: [String]) -> String {
        let depths = depthList(r)
        func esc(_ s: String) -> String { s.replacingOccurrences(of: "|", with: "\\|").replacingOccurrences(of: "\n", with: " ") }
        var s = "# ChunkWise policy report\n\n"
        for l in setupLines(r) { s += "- \(esc(l))\n" }
        s += "\n| " + columns(r).map(esc).joined(separator: " | ") + " |\n"
        s += "|" + columns(r).map { _ in "---" }.joined(separator: "|") + "|\n"
        for row in r.rows { s += "| " + cells(row, depths: depths).map(esc).joined(separator: " | ") + " |\n" }
        s += "\n"
        for row in r.rows where !row.ran { s += "- \(esc(row.policy)): \(esc(row.status))\n" }
        for n in notes { s += "- \(n)\n" }
        s += "\n"
        for c in charts { s += "![\(c)](\(c))\n\n" }
        return s
    }

    public static func html(_ r: PolicyReport, charts: [(String, String)]) -> String {
        let depths = depthList(r)
        var s = """
        <!DOCTYPE html>
        <html lang="en"><head><meta charset="utf-8"><title>ChunkWise policy report</title>
        <style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:4px 8px;text-align:right}td:first-child,th:first-child{text-align:left}.na{color:#999}</style>
        </head><body><h1>ChunkWise policy report</h1><ul>
        """
        for l in setupLines(r) { s += "<li>\(xml(l))</li>" }
        s += "</ul><table><thead><tr>" + columns(r).map { "<th>\(xml($0))</th>" }.joined() + "</tr></thead><tbody>\n"
        for row in r.rows {
            s += "<tr>" + cells(row, depths: depths).map { $0 == "n/a" ? "<td class=\"na\">n/a</td>" : "<td>\(xml($0))</td>" }.joined() + "</tr>\n"
        }
        s += "</tbody></table><ul>" + r.rows.filter { !$0.ran }.map { "<li>\(xml($0.policy)): \(xml($0.status))</li>" }.joined() + notes.map { "<li>\(xml($0))</li>" }.joined() + "</ul>\n"
        for (name, svg) in charts {
            // Inline the SVG (without its XML declaration) and link the file.
            let body = svg.hasPrefix("<?xml") ? String(svg.drop { $0 != "\n" }.dropFirst()) : svg
            s += "<figure>\(body)<figcaption><a href=\"\(xml(name))\">\(xml(name))</a></figcaption></figure>\n"
        }
        return s + "</body></html>\n"
    }
}

func xml(_ s: String) -> String {
    var o = ""
    for c in s.unicodeScalars {
        switch c {
        case "&": o += "&amp;"
        case "<": o += "&lt;"
        case ">": o += "&gt;"
        case "\"": o += "&quot;"
        case "'": o += "&apos;"
        default:
            // XML 1.0 forbids most control characters.
            if c.value < 0x20 && c != "\n" && c != "\t" && c != "\r" { o += "?" } else { o.unicodeScalars.append(c) }
        }
    }
    return o
}

/// The SVG charts.
public enum ReportCharts {
    static let palette = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948", "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"]

    public static func all(_ r: PolicyReport) -> [(String, String)] {
        [("quality_latency.svg", qualityLatency(r)), ("memory.svg", memory(r)), ("rank_tiers.svg", rankTiers(r))]
    }

    static func f(_ x: Double) -> String { pyFormat(x, 1) }

    static func svg(_ w: Int, _ h: Int, title: String, _ body: String) -> String {
        """
        <?xml version="1.0" encoding="UTF-8"?>
        <svg xmlns="http://www.w3.org/2000/svg" width="\(w)" height="\(h)" viewBox="0 0 \(w) \(h)" font-family="sans-serif" font-size="12">
        <title>\(xml(title))</title>
        <rect x="0" y="0" width="\(w)" height="\(h)" fill="white"/>
        <text x="\(w / 2)" y="20" text-anchor="middle" font-size="14">\(xml(title))</text>
        \(body)</svg>

        """
    }

    static func text(_ x: Double, _ y: Double, _ s: String, anchor: String = "start", size: Int = 12) -> String {
        "<text x=\"\(f(x))\" y=\"\(f(y))\" text-anchor=\"\(anchor)\" font-size=\"\(size)\">\(xml(s))</text>\n"
    }

    /// Quality (perplexity, else F1) against decode latency at the deepest depth; the
    /// `static:K` points (with base = K 0 and static = full rank) joined as the frontier.
    public static func qualityLatency(_ r: PolicyReport) -> String {
        let w = 640, h = 420, l = 70.0, rt = 20.0, top = 40.0, bot = 50.0
        let usePPL = r.rows.contains { $0.perplexity != nil }
        func quality(_ row: PolicyRow) -> Double? { usePPL ? row.perplexity : row.squad_f1 }
        func latency(_ row: PolicyRow) -> Double? { row.decode.max { $0.depth < $1.depth }?.decode_ms_per_token }
        let pts: [(PolicyRow, Double, Double)] = r.rows.compactMap { row in
            guard let q = quality(row), let t = latency(row), q.isFinite, t.isFinite else { return nil }
            return (row, t, q)
        }
        let title = "Quality vs decode latency (\(usePPL ? "perplexity, lower is better" : "SQuAD F1, higher is better"))"
        var b = ""
        let pw = Double(w) - l - rt, ph = Double(h) - top - bot
        b += "<line x1=\"\(f(l))\" y1=\"\(f(top + ph))\" x2=\"\(f(l + pw))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        b += "<line x1=\"\(f(l))\" y1=\"\(f(top))\" x2=\"\(f(l))\" y2=\"\(f(top + ph))\" stroke=\"black\"/>\n"
        b += text(l + pw / 2, Double(h) - 12, "decode ms/token (deepest context)", anchor: "middle")
        b += "<text x=\"16\" y=\"\(f(top + ph / 2))\" text-anchor=\"middle\" transform=\"rotate(-90 16 \(f(top + ph / 2)))\">\(usePPL ? "perplexity" : "F1")</text>\n"
        if pts.isEmpty {
            b += text(l + pw / 2, top + ph / 2, "no policy has both a quality and a latency measurement", anchor: "middle")
            return svg(w, h, title: title, b)
        }
        var x0 = pts.map(\.1).min() ?? 0, x1 = pts.map(\.1).max() ?? 1
        var y0 = pts.map(\.2).min() ?? 0, y1 = pts.map(\.2).max() ?? 1
        if x1 - x0 < 1e-9 { x0 -= 1; x1 += 1 }
        if y1 - y0 < 1e-9 { y0 -= 1; y1 += 1 }
        let px = (x1 - x0) * 0.08, py = (y1 - y0) * 0.08
        x0 -= px; x1 += px; y0 -= py; y1 += py
        func X(_ v: Double) -> Double { l + (v - x0) / (x1 - x0) * pw }
        func Y(_ v: Double) -> Double { top + ph - (v - y0) / (y1 - y0) * ph }
        for i in 0...4 {
            let xv = x0 + (x1 - x0) * Double(i) / 4, yv = y0 + (y1 - y0) * Double(i) / 4
            b += text(X(xv), top + ph + 16, pyFormat(xv, 2), anchor: "middle", size: 10)
            b += text(l - 6, Y(yv) + 4, pyFormat(yv, 2), anchor: "end", size: 10)
        }
        // Frontier: static:K by K, with base (K = 0) and static (full rank) when present.
        var frontier: [(Int, Double, Double)] = []
        for (row, t, q) in pts {
            if let k = Policies.staticRank(row.policy) { frontier.append((k, t, q)) }
            else if row.policy == "base" { frontier.append((0, t, q)) }
            else if row.policy == "static" { frontier.append((Int.max, t, q)) }
        }
        frontier.sort { $0.0 < $1.0 }
        if frontier.count >= 2 {
            let d = frontier.map { "\(f(X($0.1))),\(f(Y($0.2)))" }.joined(separator: " ")
            b += "<polyline points=\"\(d)\" fill=\"none\" stroke=\"#888\" stroke-dasharray=\"4 3\"/>\n"
            b += text(l + pw - 4, top + 12, "dashed: static:K frontier", anchor: "end", size: 10)
        }
        for (i, (row, t, q)) in pts.enumerated() {
            let c = palette[i % palette.count]
            b += "<circle cx=\"\(f(X(t)))\" cy=\"\(f(Y(q)))\" r=\"5\" fill=\"\(c)\"/>\n"
            b += text(X(t) + 7, Y(q) - 6, row.policy, size: 11)
        }
        return svg(w, h, title: title, b)
    }

    /// Stacked bars of bytes per component and policy.
    public static func memory(_ r: PolicyReport) -> String {
        let rows = r.rows
        let barH = 22.0, gap = 10.0, l = 110.0, top = 60.0
        let w = 640, h = Int(top + Double(max(rows.count, 1)) * (barH + gap) + 40)
        let comps: [(String, (PolicyRow) -> Int?)] = [("weights", \.weights_bytes), ("adapter", \.adapter_bytes), ("KV cache", \.kv_bytes), ("scratch", \.scratch_bytes)]
        let maxTotal = rows.map { row in comps.reduce(0) { $0 + ($1.1(row) ?? 0) } }.max() ?? 0
        let pw = Double(w) - l - 30
        var b = ""
        for (i, c) in comps.enumerated() {
            let x = l + Double(i) * 120
            b += "<rect x=\"\(f(x))\" y=\"32\" width=\"12\" height=\"12\" fill=\"\(palette[i])\"/>\n" + text(x + 16, 42, c.0, size: 11)
        }
        for (i, row) in rows.enumerated() {
            let y = top + Double(i) * (barH + gap)
            b += text(l - 6, y + barH * 0.7, row.policy, anchor: "end")
            guard row.weights_bytes != nil, maxTotal > 0 else { b += text(l + 4, y + barH * 0.7, "n/a", size: 11); continue }
            var x = l
            for (k, c) in comps.enumerated() {
                let v = Double(c.1(row) ?? 0), wd = v / Double(maxTotal) * pw
                if wd > 0 {
                    b += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(wd))\" height=\"\(f(barH))\" fill=\"\(palette[k])\"><title>\(xml("\(c.0): \(Cell.mib(c.1(row))) MiB"))</title></rect>\n"
                }
                x += wd
            }
            let total = comps.reduce(0) { $0 + ($1.1(row) ?? 0) }
            b += text(x + 4, y + barH * 0.7, "\(Cell.mib(total)) MiB", size: 10)
        }
        return svg(w, h, title: "Memory by component (MiB)", b)
    }

    /// Stacked bars of the share of tokens per rank tier.
    public static func rankTiers(_ r: PolicyReport) -> String {
        let rows = r.rows
        let barH = 22.0, gap = 10.0, l = 110.0, top = 60.0
        let w = 640, h = Int(top + Double(max(rows.count, 1)) * (barH + gap) + 40)
        let ranks = Array(Set(rows.flatMap { $0.rank_shares?.map(\.rank) ?? [] })).sorted()
        let pw = Double(w) - l - 30
        var b = ""
        for (i, k) in ranks.enumerated() {
            let x = l + Double(i) * 80
            b += "<rect x=\"\(f(x))\" y=\"32\" width=\"12\" height=\"12\" fill=\"\(palette[i % palette.count])\"/>\n" + text(x + 16, 42, "rank \(k)", size: 11)
        }
        for (i, row) in rows.enumerated() {
            let y = top + Double(i) * (barH + gap)
            b += text(l - 6, y + barH * 0.7, row.policy, anchor: "end")
            guard let shares = row.rank_shares else { b += text(l + 4, y + barH * 0.7, "n/a", size: 11); continue }
            var x = l
            for s in shares {
                let idx = ranks.firstIndex(of: s.rank) ?? 0
                let wd = s.share * pw
                if wd > 0 {
                    b += "<rect x=\"\(f(x))\" y=\"\(f(y))\" width=\"\(f(wd))\" height=\"\(f(barH))\" fill=\"\(palette[idx % palette.count])\"><title>\(xml("rank \(s.rank): \(pyFormat(100 * s.share, 1))%"))</title></rect>\n"
                }
                x += wd
            }
        }
        return svg(w, h, title: "Share of tokens per rank tier", b)
    }
}
