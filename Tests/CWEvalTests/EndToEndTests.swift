import ChunkWise
import CWEval
import CWTestSupport
import Foundation
import XCTest
#if canImport(FoundationXML)
import FoundationXML
#endif

final class EndToEndTests: XCTestCase {
    /// `eval squad --limit 5` on SmolLM2 + the squad adapter: runs, answers are short spans, scored.
    func testSQuADSmokeWithAdapter() async throws {
        let model = try TestPaths.smolLM2Path()
        let adapter = try TestPaths.sharedFile("adapters/smollm2-squad-r16")
        let data = try SQuADDataset(path: try TestPaths.sharedFile("data/squad/squad-v2.0-dev-first5-articles.json"))
        let qs = data.select(articles: [3, 4], answerableOnly: true, limit: 5)
        XCTAssertEqual(qs.count, 5)
        XCTAssertEqual(data.select(articles: [3, 4], answerableOnly: true).count, 232)
        let engine = try Engine(modelPath: model, options: EngineOptions(adapters: [AdapterSpec(path: adapter)]))
        let r = try await SQuADEval.run(engine: engine, questions: qs)
        XCTAssertEqual(r.metric.total, 5)
        XCTAssertEqual(r.predictions.count, 5)
        for p in r.predictions {
            XCTAssertFalse(p.prediction.contains("\n"))
            XCTAssertEqual(p.prediction, PyText.strip(p.prediction))
            XCTAssertLessThanOrEqual(p.generated_tokens, 24)
        }
        // The adapter answers with short spans (mean ~5 tokens in its README) and gets some right.
        XCTAssertGreaterThan(r.metric.f1, 0)
        // Re-scoring the predictions with the metric gives the same totals.
        XCTAssertEqual(SQuADMetric.evaluate(questions: qs, predictions: r.predictionMap).result, r.metric)
    }

    func testPostprocessAndPrompt() {
        XCTAssertEqual(SQuADEval.postprocess(" Paris \nmore"), "Paris")
        XCTAssertEqual(SQuADEval.postprocess("  "), "")
        let q = SQuADQuestion(id: "x", question: "Q?", context: "C.", answers: [], isImpossible: true, article: 0, title: "")
        XCTAssertEqual(SQuADEval.prompt(q, template: SQuADEval.defaultTemplate), "Context: C.\nQuestion: Q?\nAnswer:")
    }

    /// Report on stories260K with a tiny workload: files exist, SVGs parse as XML, one row per policy.
    func testReportOnStories() async throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let tok = try TestPaths.sharedFile("models/stories260K/tok512.bin")
        let adapter = try TestPaths.sharedFile("adapters/stories260K-shakespeare-r16")
        let text = try String(contentsOfFile: try TestPaths.sharedFile("data/tinyshakespeare/input.txt"), encoding: .utf8)
        let loaded = try ModelLoader.load(path: bin, tokenizerPath: tok)
        let base = EngineOptions(threads: 1, contextLength: 256, adapters: [AdapterSpec(path: adapter)])
        let policies = ["base", "static", "static:2", "balanced", "merged"]
        let runners: [any PolicyRunner] = policies.map { EnginePolicyRunner(policy: $0, model: loaded, baseOptions: base) }
        var cfg = ReportConfig()
        cfg.perplexityText = String(text.prefix(20_000))
        cfg.perplexity = Perplexity.Config(context: 256, maxWindows: 2, bos: true)
        cfg.squadQuestions = (0..<3).map { i in
            SQuADQuestion(id: "q\(i)", question: "Who is it?", context: "Once upon a time there was a girl named Lily \(i).",
                          answers: ["Lily"], isImpossible: false, article: 0, title: "t")
        }
        cfg.squad.maxTokens = 8
        cfg.benchPromptTokens = 16; cfg.benchGenTokens = 8; cfg.benchRepetitions = 1; cfg.benchDepths = [16, 128]
        let report = try await PolicyReportRunner.run(runners: runners, config: cfg, model: "stories260K", adapters: ["shakespeare"],
                                                      precision: "fast", threads: 1)
        XCTAssertEqual(report.rows.map(\.policy), policies)
        let byName = Dictionary(uniqueKeysWithValues: report.rows.map { ($0.policy, $0) })
        for p in ["base", "static", "merged"] {
            let row = try XCTUnwrap(byName[p])
            XCTAssertEqual(row.status, "ok", p)
            XCTAssertNotNil(row.perplexity, p)
            XCTAssertEqual(row.decode.count, 2, p)
            XCTAssertNotNil(row.average_rank, p)
        }
        XCTAssertEqual(byName["static"]?.average_rank, 16)
        XCTAssertEqual(byName["base"]?.average_rank, 0)
        // BLEU against the static policy's answers exists for every policy that ran (the tiny model's
        // answers may share no n-gram at all, which BLEU scores 0, even against themselves).
        XCTAssertNotNil(byName["static"]?.bleu_vs_reference)
        XCTAssertNotNil(byName["base"]?.bleu_vs_reference)
        XCTAssertNil(byName["balanced"]?.bleu_vs_reference)
        // The adapter helps on Shakespeare; merged ≈ unmerged.
        XCTAssertLessThan(try XCTUnwrap(byName["static"]?.perplexity), try XCTUnwrap(byName["base"]?.perplexity))
        XCTAssertEqual(try XCTUnwrap(byName["merged"]?.perplexity), try XCTUnwrap(byName["static"]?.perplexity), accuracy: 0.05 * (byName["static"]?.perplexity ?? 1))
        // Policies that need the scheduler are reported as n/a, with no numbers.
        for p in ["static:2", "balanced"] {
            let row = try XCTUnwrap(byName[p])
            XCTAssertTrue(row.status.hasPrefix("n/a"), row.status)
            XCTAssertNil(row.perplexity); XCTAssertNil(row.average_rank); XCTAssertNil(row.prefill_tok_s)
        }

        let dir = FileManager.default.temporaryDirectory.appendingPathComponent("cw-report-\(UUID().uuidString)").path
        defer { try? FileManager.default.removeItem(atPath: dir) }
        let files = try PolicyReportRunner.write(report, to: dir)
        for name in ["report.md", "report.html", "report.json", "quality_latency.svg", "memory.svg", "rank_tiers.svg"] {
            XCTAssertTrue(files.contains((dir as NSString).appendingPathComponent(name)), name)
            XCTAssertTrue(FileManager.default.fileExists(atPath: (dir as NSString).appendingPathComponent(name)), name)
        }
        for svg in ["quality_latency.svg", "memory.svg", "rank_tiers.svg"] {
            let data = try Data(contentsOf: URL(fileURLWithPath: (dir as NSString).appendingPathComponent(svg)))
            XCTAssertTrue(XMLParser(data: data).parse(), "\(svg) is not well-formed XML")
            XCTAssertTrue(String(decoding: data, as: UTF8.self).contains("<svg xmlns=\"http://www.w3.org/2000/svg\""), svg)
        }
        let md = try String(contentsOfFile: (dir as NSString).appendingPathComponent("report.md"), encoding: .utf8)
        for p in policies { XCTAssertTrue(md.contains("| \(p) |"), p) }
        let tableRows = md.split(separator: "\n").filter { $0.hasPrefix("| ") }
        XCTAssertEqual(tableRows.count, policies.count + 1) // header + one per policy
        let html = try String(contentsOfFile: (dir as NSString).appendingPathComponent("report.html"), encoding: .utf8)
        XCTAssertEqual(html.components(separatedBy: "<tr>").count - 1, policies.count + 1)
        XCTAssertTrue(XMLParser(data: Data(html.replacingOccurrences(of: "<!DOCTYPE html>", with: "").utf8)).parse(), "report.html is not well-formed")
    }
}
