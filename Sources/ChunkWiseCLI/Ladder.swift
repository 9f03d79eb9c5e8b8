import ArgumentParser
import ChunkWise
import CWLoRA
import CWScheduler
import Foundation

/// `chunkwise ladder`: builds an adapter's SVD rank ladder, prints the energy kept per tier, writes
/// the laddered adapter, and (with `--eval-text`) measures held-out perplexity per policy.
struct Ladder: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Build an adapter's rank ladder (SVD per module), print the energy per tier, optionally write it and evaluate policies.")

    @Option(name: .long, help: "The adapter (PEFT folder, GGUF LoRA or MLX folder).")
    var adapter: String
    @Option(name: .long, help: "The model (puts q/k rows in its RoPE order and checks shapes).")
    var model: String
    @Option(name: .long, help: "Tokenizer to use instead of the model's own (for --eval-text).")
    var tokenizer: String?
    @Option(name: .long, help: "Write the laddered adapter to this file (loads without the SVD).")
    var out: String?
    @Option(name: .long, help: "Tier ranks to cut the ladder at, comma-separated (default: powers of two).")
    var tiers: String?
    @Flag(name: .long, help: "Keep the adapter's direction order (AdaLoRA/DyLoRA) instead of sorting by singular value.")
    var preserveOrder = false
    @Flag(help: "Print JSON.")
    var json = false

    @Option(name: .customLong("eval-text"), help: "Evaluate perplexity on this UTF-8 text file.")
    var evalText: String?
    @Option(name: .customLong("eval-start-char"), help: "Character offset where the held-out text starts.")
    var evalStartChar: Int = 0
    @Option(name: .customLong("eval-skip-tokens"), help: "Stream tokens to skip before the first window (e.g. a tuning split).")
    var evalSkipTokens: Int = 0
    @Option(name: .long, help: "Number of windows.")
    var windows: Int = 20
    @Option(name: .customLong("window-tokens"), help: "Stream tokens per window.")
    var windowTokens: Int = 255
    @Flag(name: .customLong("no-bos"), help: "Windows without a BOS token (score window-1 tokens).")
    var noBOS = false
    @Option(name: .long, help: "Policies to evaluate, comma-separated (base, static, static:K, balanced, aggressive, quality, or a .yaml/.json config).")
    var policies: String = "base,static,static:2,static:4,static:8,balanced,aggressive,quality"
    @Flag(name: .customLong("token-by-token"), help: "Evaluate as decode: one forward per token (the entropy signal is then available for every token).")
    var tokenByToken = false
    @Option(name: .long, help: "Worker threads.")
    var threads: Int = ProcessInfo.processInfo.activeProcessorCount

    func run() async throws {
        let loaded = try ModelLoader.load(path: model, tokenizerPath: tokenizer)
        let lora = try LoRAAdapter.load(path: adapter)
        let tierList = try tiers.map { s in
            try s.split(separator: ",").map { v -> Int in
                guard let k = Int(v.trimmingCharacters(in: .whitespaces)), k > 0 else { throw ValidationError("--tiers: '\(v)' is not a positive integer") }
                return k
            }
        }
        let start = DispatchTime.now().uptimeNanoseconds
        let ladder = try RankLadder.build(adapter: lora, model: loaded.model, tierRanks: tierList, preserveOrder: preserveOrder ? true : nil)
        let buildMs = Double(DispatchTime.now().uptimeNanoseconds - start) / 1e6
        if let out { try ladder.write(to: out) }
        let ranks = [0] + ladder.tierRanks
        struct ModuleOut: Encodable { var module: String; var rank: Int; var singular_values: [Double]; var energy: [String: Double] }
        struct EvalRow: Encodable { var policy: String; var ppl: Double; var nll: Double; var count: Int; var average_rank: Double; var average_chunk_rank: Double; var tokens_per_rank: [String: Int]; var estimator_ns_per_token: Double; var seconds: Double }
        struct Out: Encodable { var adapter: String; var modules: [ModuleOut]; var mean_energy: [String: Double]; var build_ms: Double; var written: String?; var eval: [EvalRow]? }
        let mods = ladder.modules.map { m in
            ModuleOut(module: m.moduleName, rank: m.rank, singular_values: m.singularValues,
                      energy: Dictionary(uniqueKeysWithValues: ranks.map { (String($0), m.energy(rank: $0)) }))
        }
        let mean = Dictionary(uniqueKeysWithValues: ranks.map { (String($0), ladder.meanEnergy(rank: $0)) })
        var evalRows: [EvalRow]?
        if let evalText {
            let text = try String(contentsOfFile: evalText, encoding: .utf8)
            let held = String(text.dropFirst(evalStartChar))
            let stream = loaded.tokenizer.encode(held, addSpecialTokens: false, parseSpecial: false)
            let bos = noBOS ? nil : loaded.tokenizer.bosTokenID
            if !json { print("eval stream: \(stream.count) tokens from char \(evalStartChar); windows \(windows) × \(windowTokens) after \(evalSkipTokens)") }
            var wins: [[Int]] = []
            for w in 0..<windows {
                let a = evalSkipTokens + w * windowTokens, b = a + windowTokens
                guard b <= stream.count else { break }
                wins.append((bos.map { [$0] } ?? []) + Array(stream[a..<b]))
            }
            let pool = ThreadPool(threads: threads)
            var rows: [EvalRow] = []
            for name in policies.split(separator: ",").map(String.init) {
                let t0 = DispatchTime.now().uptimeNanoseconds
                let isFile = name.hasSuffix(".yaml") || name.hasSuffix(".yml") || name.hasSuffix(".json")
                let delta: ChunkWiseDelta? = name == "base" ? nil : try ChunkWiseDelta(
                    model: loaded.model, adapter: lora,
                    config: SchedulerConfig.resolve(policy: isFile ? nil : name, configFile: isFile ? name : nil, maxRank: ladder.maxRank),
                    ladder: ladder)
                var nll = 0.0, count = 0, rankSum = 0.0, chunkRankSum = 0.0, ns = 0.0
                var perRank: [String: Int] = [:]
                for ids in wins {
                    let m = delta?.forwardModel ?? loaded.model
                    let cache = m.makeCache()
                    let opts = ForwardOptions(precision: .exact, pool: pool, logits: .all)
                    let logits: [Float]
                    if let delta {
                        delta.beginSequence()
                        if tokenByToken {
                            var rows: [Float] = []
                            rows.reserveCapacity(ids.count * loaded.model.config.vocabSize)
                            for id in ids { rows += try delta.forward([id], cache: cache, options: opts) }
                            logits = rows
                        } else {
                            logits = try delta.forward(ids, cache: cache, options: opts)
                        }
                        let s = delta.statistics
                        rankSum += s.averageRank * Double(s.tokens)
                        chunkRankSum += s.averageChunkRank * Double(s.tokens)
                        ns += s.estimatorNanosecondsPerToken * Double(s.tokens)
                        for (r, n) in s.tokensPerRank { perRank[String(r), default: 0] += n }
                    } else {
                        logits = try loaded.model.forward(ids, cache: cache, options: opts)
                    }
                    let v = loaded.model.config.vocabSize
                    for j in 0..<(ids.count - 1) {
                        nll += Self.nll(logits, row: j, vocab: v, target: ids[j + 1])
                        count += 1
                    }
                }
                let tokensRun = Double(wins.reduce(0) { $0 + $1.count })
                let row = EvalRow(policy: name, ppl: Foundation.exp(nll / Double(max(1, count))), nll: nll, count: count,
                                  average_rank: rankSum / max(1, tokensRun), average_chunk_rank: chunkRankSum / max(1, tokensRun),
                                  tokens_per_rank: perRank, estimator_ns_per_token: ns / max(1, tokensRun),
                                  seconds: Double(DispatchTime.now().uptimeNanoseconds - t0) / 1e9)
                rows.append(row)
                if !json {
                    print(name.padding(toLength: 26, withPad: " ", startingAt: 0) + String(format: "PPL %10.4f  avg rank %6.3f (chunk %6.3f)  estimator %7.0f ns/tok  %6.1f s  %@", row.ppl,
                                 row.average_rank, row.average_chunk_rank, row.estimator_ns_per_token, row.seconds,
                                 row.tokens_per_rank.sorted { (Int($0.key) ?? 0) < (Int($1.key) ?? 0) }.map { "r\($0.key):\($0.value)" }.joined(separator: " ") as NSString))
                }
            }
            evalRows = rows
        }
        if json {
            let enc = JSONEncoder()
            enc.outputFormatting = [.sortedKeys, .prettyPrinted]
            FileHandle.standardOutput.write(try enc.encode(Out(adapter: adapter, modules: mods, mean_energy: mean, build_ms: buildMs, written: out, eval: evalRows)))
            FileHandle.standardOutput.write(Data("\n".utf8))
        } else if evalText == nil {
            print("ladder of \(adapter): \(ladder.modules.count) modules, max rank \(ladder.maxRank), built in \(String(format: "%.1f", buildMs)) ms\(ladder.ordered ? " (adapter order kept)" : "")")
            print("energy kept (Σ_{i<k} σ_i² / Σ σ_i²) at k = " + ranks.map(String.init).joined(separator: ", "))
            for m in mods {
                print(String(format: "%-36@ r%-3d ", m.module as NSString, m.rank) + ranks.map { String(format: "%.3f", m.energy[String($0)] ?? 0) }.joined(separator: " "))
            }
            print(String(format: "%-36@      ", "mean" as NSString) + ranks.map { String(format: "%.3f", mean[String($0)] ?? 0) }.joined(separator: " "))
            if let out { print("wrote \(out)") }
        }
    }

    static func nll(_ logits: [Float], row: Int, vocab v: Int, target: Int) -> Double {
        let base = row * v
        var m = -Float.infinity
        for i in 0..<v where logits[base + i] > m { m = logits[base + i] }
        var s = 0.0
        for i in 0..<v { s += Foundation.exp(Double(logits[base + i] - m)) }
        return -(Double(logits[base + target] - m) - Foundation.log(s))
    }
}
