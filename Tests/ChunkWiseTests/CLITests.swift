import ChunkWise
import CWTestSupport
import Foundation
import XCTest

/// The `chunkwise` binary end to end: the JSON shapes scripts rely on, and errors on bad input.
final class CLITests: XCTestCase {
    /// The binary built next to this test bundle (`swift build --build-tests` builds it too).
    func binary() throws -> String {
        let bundleDir = Bundle.main.bundleURL.deletingLastPathComponent()
        for dir in [bundleDir, TestPaths.packageRoot().appendingPathComponent(".build/release"),
                    TestPaths.packageRoot().appendingPathComponent(".build/debug")] {
            let p = dir.appendingPathComponent("chunkwise").path
            if FileManager.default.isExecutableFile(atPath: p) { return p }
        }
        throw XCTSkip("SKIPPED: the chunkwise binary is not built next to the tests")
    }

    struct Run { var status: Int32; var stdout: String; var stderr: String }

    func run(_ args: [String]) throws -> Run {
        let p = Process()
        p.executableURL = URL(fileURLWithPath: try binary())
        p.arguments = args
        let out = Pipe(), err = Pipe()
        p.standardOutput = out
        p.standardError = err
        try p.run()
        let o = out.fileHandleForReading.readDataToEndOfFile()
        let e = err.fileHandleForReading.readDataToEndOfFile()
        p.waitUntilExit()
        return Run(status: p.terminationStatus, stdout: String(decoding: o, as: UTF8.self), stderr: String(decoding: e, as: UTF8.self))
    }

    func jsonObject(_ s: String) throws -> [String: Any] {
        try XCTUnwrap(JSONSerialization.jsonObject(with: Data(s.utf8)) as? [String: Any], s)
    }

    func testTokenizeJSONMatchesGolden() throws {
        let model = try TestPaths.smolLM2Path()
        let cases = try XCTUnwrap(TestPaths.json("golden/smollm2-tokenizer/cases.json")["cases"] as? [[String: Any]])
        for c in cases.prefix(6) {
            let text = c["text"] as! String
            if text.isEmpty { continue }
            let r = try run(["tokenize", "--model", model, "--text", text, "--json"])
            XCTAssertEqual(r.status, 0, r.stderr)
            XCTAssertEqual(try jsonObject(r.stdout)["ids"] as? [Int], c["ids"] as? [Int], text)
        }
    }

    func testLogitsJSONTopMatchesGolden() throws {
        let model = try TestPaths.smolLM2Path()
        let r = try run(["logits", "--model", model, "--prompt", "The capital of France is", "--top", "5", "--precision", "exact", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let top = try XCTUnwrap(try jsonObject(r.stdout)["top"] as? [[String: Any]])
        XCTAssertEqual(top.count, 5)
        XCTAssertEqual(top[0]["id"] as? Int, 7042, "' Paris'")
        XCTAssertEqual(top[0]["logit"] as? Double ?? 0, 17.371261596679688, accuracy: 2e-3)
    }

    func testGenerateJSONHasTextAndStats() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let r = try run(["generate", "--model", bin, "--prompt", "Once upon a time", "--max-tokens", "32", "--json", "--ignore-eos"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try jsonObject(r.stdout)
        XCTAssertEqual(o["text"] as? String, ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw")
        let stats = try XCTUnwrap(o["stats"] as? [String: Any])
        XCTAssertEqual(stats["prompt_tokens"] as? Int, 5)
        XCTAssertEqual(stats["generated_tokens"] as? Int, 32)
        XCTAssertNotNil(stats["decode_tok_s"] as? Double)
    }

    func testGenerateStreamsTextAndPrintsStatsToStderr() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let r = try run(["generate", "--model", bin, "--prompt", "Once upon a time", "--max-tokens", "8"])
        XCTAssertEqual(r.status, 0, r.stderr)
        XCTAssertTrue(r.stdout.hasPrefix(", there was a little girl"), r.stdout)
        XCTAssertTrue(r.stderr.contains("prompt 5 tokens") && r.stderr.contains("generated 8 tokens"), r.stderr)
    }

    func testBenchJSONHasTheDocumentedKeys() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let r = try run(["bench", "--model", bin, "--prompt-tokens", "16", "--gen-tokens", "4", "--repetitions", "2", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try jsonObject(r.stdout)
        for k in ["prefill_tok_s", "decode_tok_s", "ttft_ms", "peak_rss_bytes"] { XCTAssertNotNil(o[k] as? Double ?? (o[k] as? Int).map(Double.init), k) }
        let mem = try XCTUnwrap(o["memory"] as? [String: Any])
        for k in ["weights_bytes", "adapter_bytes", "kv_bytes", "scratch_bytes", "total_bytes"] { XCTAssertNotNil(mem[k] as? Int, k) }
        XCTAssertEqual(mem["total_bytes"] as? Int,
                       ["weights_bytes", "adapter_bytes", "kv_bytes", "scratch_bytes"].reduce(0) { $0 + (mem[$1] as? Int ?? 0) })
    }

    func testBenchWithFewerGeneratedTokensThanTheWarmUpDecodes() throws {
        // The warm-up decoded 4 tokens whatever --gen-tokens was: with 2, the cache (sized for the
        // measured runs) overflowed and bench failed with a context error.
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        for gen in ["1", "2", "3"] {
            let r = try run(["bench", "--model", bin, "--prompt-tokens", "16", "--gen-tokens", gen, "--repetitions", "1", "--json"])
            XCTAssertEqual(r.status, 0, "--gen-tokens \(gen): \(r.stderr)")
            XCTAssertNotNil(try jsonObject(r.stdout)["decode_tok_s"] as? Double, gen)
        }
    }

    func testBenchVersusRunsThePoliciesInTurnsAndRatiosMatchTheSamples() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let adapter = try TestPaths.sharedFile("adapters/stories260K-shakespeare-r16")
        let r = try run(["bench", "--model", bin, "--adapter", adapter, "--policy", "balanced", "--versus", "static",
                         "--versus", "base", "--prompt-tokens", "24", "--gen-tokens", "6", "--repetitions", "6", "--json"])
        XCTAssertEqual(r.status, 0, r.stderr)
        let o = try jsonObject(r.stdout)
        let entries = try XCTUnwrap(o["entries"] as? [[String: Any]])
        XCTAssertEqual(entries.map { $0["label"] as? String }, ["balanced", "static", "base (no adapter)"])
        // The no-adapter engine holds no adapter bytes; the others do.
        let adapterBytes = entries.map { (($0["report"] as? [String: Any])?["memory"] as? [String: Any])?["adapter_bytes"] as? Int }
        XCTAssertEqual(adapterBytes[2], 0)
        XCTAssertGreaterThan(adapterBytes[0] ?? 0, 0)
        func rates(_ e: [String: Any], _ key: String) throws -> [Double] {
            try XCTUnwrap(e["samples"] as? [[String: Any]]).map { try XCTUnwrap($0[key] as? Double) }
        }
        let comparisons = try XCTUnwrap(o["comparisons"] as? [[String: Any]])
        XCTAssertEqual(comparisons.map { $0["versus"] as? String }, ["static", "base (no adapter)"])
        for (c, other) in zip(comparisons, entries.dropFirst()) {
            for (test, key) in [("prefill", "prefill_tok_s"), ("decode", "decode_tok_s")] {
                let q = try XCTUnwrap(c[test] as? [String: Any])
                let per = try XCTUnwrap(q["per_repetition"] as? [Double])
                let a = try rates(entries[0], key), b = try rates(other, key)
                XCTAssertEqual(per.count, 6)
                for i in 0..<6 { XCTAssertEqual(per[i], a[i] / b[i], accuracy: 1e-9 * per[i]) }
                XCTAssertEqual(q["faster"] as? Int, per.filter { $0 > 1 }.count)
                let ci = try XCTUnwrap(q["median_ci95"] as? [Double])
                XCTAssertEqual(ci, [per.min()!, per.max()!], "6 repetitions: the 95% interval is the whole range")
            }
        }
        // The human-readable form names each comparison.
        let text = try run(["bench", "--model", bin, "--adapter", adapter, "--versus", "static:4", "--prompt-tokens", "16",
                            "--gen-tokens", "4", "--repetitions", "2"])
        XCTAssertEqual(text.status, 0, text.stderr)
        XCTAssertTrue(text.stdout.contains("static vs static:4"), text.stdout)
        let bad = try run(["bench", "--model", bin, "--adapter", adapter, "--versus", "nonsense", "--repetitions", "2"])
        XCTAssertNotEqual(bad.status, 0)
        XCTAssertTrue(bad.stderr.contains("--versus nonsense") && bad.stderr.contains("unknown policy"), bad.stderr)
    }

    func testInspectEveryModelKind() throws {
        let paths = [try TestPaths.smolLM2Path(), try TestPaths.sharedFile("models/stories260K/stories260K.bin"),
                     try TestPaths.sharedFile("models/stories260K-hf")]
        for p in paths {
            let r = try run(["inspect", p, "--json"])
            XCTAssertEqual(r.status, 0, "\(p): \(r.stderr)")
            let o = try jsonObject(r.stdout)
            XCTAssertEqual(o["architecture"] as? String, "llama", p)
            XCTAssertNotNil(o["layers"] as? Int, p)
            let human = try run(["inspect", p])
            XCTAssertTrue(human.stdout.contains("architecture"), human.stdout)
        }
    }

    func testBadInputsExitNonZeroWithAMessage() throws {
        let bin = try TestPaths.sharedFile("models/stories260K/stories260K.bin")
        let missing = try run(["generate", "--model", "/no/such/model.gguf", "--prompt", "x"])
        XCTAssertNotEqual(missing.status, 0)
        XCTAssertTrue(missing.stderr.contains("/no/such/model.gguf"), missing.stderr)
        let long = try run(["generate", "--model", bin, "--context", "4", "--prompt", "Once upon a time there was a girl"])
        XCTAssertNotEqual(long.status, 0)
        XCTAssertTrue(long.stderr.contains("context"), long.stderr)
        let badTemp = try run(["generate", "--model", bin, "--prompt", "x", "--temperature", "-1"])
        XCTAssertNotEqual(badTemp.status, 0)
        XCTAssertTrue(badTemp.stderr.contains("temperature"), badTemp.stderr)
    }
}

final class InspectTests: XCTestCase {
    func testInspectReports() throws {
        let g = try ModelInspector.inspect(path: TestPaths.smolLM2Path())
        XCTAssertEqual(g.layers, 30)
        XCTAssertEqual(g.tensorTypes["Q4_1"], 210)
        XCTAssertEqual(g.tensorTypes["Q8_0"], 1)
        XCTAssertEqual(g.tokenizerVocabulary, 49152)
        XCTAssertTrue(g.chatTemplate)
        let s = try ModelInspector.inspect(path: TestPaths.sharedFile("models/stories260K/stories260K.bin"))
        XCTAssertEqual(s.format, "llama2.c")
        XCTAssertEqual(s.vocabSize, 512)
        XCTAssertEqual(s.tokenizerVocabulary, 512)
        let h = try ModelInspector.inspect(path: TestPaths.sharedFile("models/stories260K-hf"))
        XCTAssertEqual(h.format, "HuggingFace safetensors")
        XCTAssertEqual(h.kvHeads, 4)
        XCTAssertEqual(h.ropeStyle, "halves")
    }
}
